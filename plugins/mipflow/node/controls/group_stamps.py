"""Value stamps of the released groups (ADR 0061, "Value stamps", the group memory; fifteenth review, hole 1).

The cohort ledger compares an exact repeat's value stamps (:mod:`mipflow.node.query.stamps`) with the first
ones it remembered.  A group (ADR 0051) is a set of rows released with its sums too, and the group memory allows
a group and a group or cohort **0 rows apart** (the same rows: nothing new by rows).  After a load corrects a
value in place the same rows hold another value: a one-way ANOVA's TIA group before the correction and
descriptive statistics of ``stroke_type = tia`` after it (a cohort the ledger never held, so no stamp of its own
to compare) differ exactly by the corrected patient's old and new values.

So each released group carries its stamps (per column the step reads: the cohort's stamped columns), computed
alike from the frame (:func:`frame_group_stamps`) and from rows left on disk
(:func:`mipflow.node.controls.groups_rows.rows_stamped_groups`), and the union of a release's cells its own
(a cohort of the ledger: the ledger compares them).  :class:`GroupStamps` keeps the first stamp of each set of
rows and column, keyed by the rows' digest (:func:`mipflow.node.controls.ledger.cohort_digest`, whatever the
group's kind) and with the consent epoch it was released under.  Whenever a group and any group or cohort are the
same rows under this epoch, in either order (:func:`refuse_corrected_cohorts`, :func:`refuse_corrected_groups`),
their stamps of the columns both read are compared and a change is refused
(:func:`mipflow.node.controls.disclosure.stamp_refusal`).  An honest repeat (no change) and a correction of a
column neither reads are answered.  A set of an earlier epoch is no repeat at all (:mod:`~.epochs`): not compared
here.  Storage: a table of ``HOME/groups.sqlite``, about 100 bytes a group and column.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from mipflow.node.controls.disclosure import stamp_refusal
from mipflow.node.controls.ledger import cohort_digest
from mipflow.node.controls.sqlite_state import SqliteState

if TYPE_CHECKING:
    import pandas as pd

    from mipflow.node.controls.groups import Group, GroupRelease


def frame_group_stamps(data: pd.DataFrame, order: np.ndarray, groups: Sequence[Group], union: np.ndarray,
                       columns: Sequence[str], key: str) -> tuple[list[Group], dict[str, int]]:
    """``groups`` with their value stamps of ``columns`` (those ``data`` holds), and the union's: the local step's
    rows ``data``, their ledger keys ``order`` (in ``data``'s order), keyed by the ledger ``key``.

    :func:`~mipflow.node.query.stamps.frame_stamps` of each set's rows, by one sort: each column's cell hashes
    in key order, their running sums (mod 2**64), and each set's rows found by binary search (a set's stamp is
    the sum of its rows' ranges), so a release of many groups costs ``O((n + members) log n)``."""
    import dataclasses

    from mipflow.node.query.stamps import cell_hashes, column_salt, value_bits

    columns = [c for c in dict.fromkeys(columns) if c in data.columns]
    keys = np.asarray(order, dtype=np.uint64)
    by_key = np.argsort(keys, kind="stable")
    ordered = keys[by_key]
    sets = [*(g.rows for g in groups), union]
    ranges = [(np.searchsorted(ordered, rows, "left"), np.searchsorted(ordered, rows, "right")) for rows in sets]
    stamps: list[dict[str, int]] = [{} for _ in sets]
    for column in columns:
        hashes = cell_hashes(keys, value_bits(data[column], key), column_salt(key, column))[by_key]
        running = np.concatenate([np.zeros(1, dtype=np.uint64), np.cumsum(hashes, dtype=np.uint64)])
        for out, (low, high) in zip(stamps, ranges):
            out[column] = int(np.add.reduce(running[high] - running[low], dtype=np.uint64))
    return [dataclasses.replace(g, stamps=s) for g, s in zip(groups, stamps)], stamps[-1]


class GroupStamps(SqliteState):
    """The first value stamp of each released group's rows and column (table ``group_stamps`` of the group
    memory's file; ``path`` None: in this process only)."""

    def __init__(self, path: str | Path | None) -> None:
        super().__init__(None if path is None else Path(path))
        self._kept: dict[tuple[str, str], dict[str, tuple[int, str]]] = {}  # path None: (model, digest) -> ...
        if self.path is not None:
            with self._lock, self._connect() as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS group_stamps (data_model TEXT NOT NULL, digest TEXT NOT "
                             "NULL, variable TEXT NOT NULL, stamp TEXT NOT NULL, epoch TEXT NOT NULL, "
                             "PRIMARY KEY (data_model, digest, variable))")

    def record(self, groups: Sequence[Group], epoch: str = "") -> None:
        """Remember the groups' stamps (the first of each rows and column: what a later release is compared
        with; a column a later release of the same rows reads first is added)."""
        rows = [(g.data_model, cohort_digest(g.data_model, g.rows), v, str(int(t)), epoch)
                for g in groups if g.stamps for v, t in g.stamps.items()]
        if not rows:
            return
        with self._lock:
            if self.path is None:
                for model, digest, variable, stamp, at in rows:
                    self._kept.setdefault((model, digest), {}).setdefault(variable, (int(stamp), at))
                return
            with self._connect() as conn:
                conn.executemany("INSERT OR IGNORE INTO group_stamps (data_model, digest, variable, stamp, epoch) "
                                 "VALUES (?, ?, ?, ?, ?)", rows)

    def of(self, data_model: str, digest: str, epoch: str = "") -> dict[str, int]:
        """The remembered stamps of a group of rows ``digest`` released under the consent ``epoch`` (empty: none)."""
        with self._lock:
            if self.path is None:
                kept = self._kept.get((data_model, digest), {})
                return {v: t for v, (t, at) in kept.items() if at == epoch}
            with self._connect() as conn:
                return {v: int(t) for v, t in conn.execute(
                    "SELECT variable, stamp FROM group_stamps WHERE data_model = ? AND digest = ? AND epoch = ?",
                    (data_model, digest, epoch))}

    def changed(self, data_model: str, digest: str, stamps: Mapping[str, int] | None, epoch: str = "") -> bool:
        """Whether a group of the same rows, released under ``epoch``, held other values in a column both read."""
        from mipflow.node.query.stamps import changed

        return bool(stamps) and changed(stamps, self.of(data_model, digest, epoch))


def refuse_corrected_cohorts(guard: Any, cohorts: Any, epoch: str) -> None:
    """Every cohort of a step against the groups released before with the same rows (under ``epoch``): a change
    of a stamp both cover is refused (:func:`~mipflow.node.controls.disclosure.stamp_refusal`)."""
    if cohorts.stamps is None:
        return
    for digest, stamps in zip(cohorts.digests, cohorts.stamps):
        if guard.groups.stamps.changed(cohorts.data_model, digest, stamps, epoch):
            raise stamp_refusal()


def refuse_corrected_groups(guard: Any, release: GroupRelease, epoch: str) -> None:
    """A release's groups and union against the groups released before with the same rows, and its groups
    against the ledger's cohorts with the same rows (answered under ``epoch``; the union is the ledger's own
    business, :meth:`~mipflow.node.controls.ledger.CohortLedger.check` with its stamps)."""
    memory = guard.groups.stamps
    model = release.groups[0].data_model if release.groups else ""
    if memory.changed(model, release.union_digest, release.union_stamps, epoch):
        raise stamp_refusal()
    from mipflow.node.query.stamps import changed

    answered: dict[str, set[str]] = {}
    for group in release.groups:
        if not group.stamps:
            continue
        digest = cohort_digest(group.data_model, group.rows)
        if memory.changed(group.data_model, digest, group.stamps, epoch):
            raise stamp_refusal()
        if group.data_model not in answered:
            answered[group.data_model] = guard.ledger.answered(group.data_model, epoch)
        if digest in answered[group.data_model] and changed(group.stamps,
                                                             guard.ledger.stamps(group.data_model, digest)):
            raise stamp_refusal()
