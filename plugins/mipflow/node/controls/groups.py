"""Group memory: groups released with their sums are held to the group threshold across releases (ADR 0051).

A t-test, an ANOVA, Gaussian naive Bayes or a linear regression with a nominal covariate releases
sums (count, means, spreads) over level cells of nominal variables: groups *inside* a cohort.  The
cohort ledger (ADR 0013) compares cohorts, so two cohorts ``min_row_count`` rows apart could hold
the same level's group 3 rows apart, and a step releasing two large levels beside descriptive
statistics of the same cohort leaves the third level's rows to subtraction (tenth review,
``tests/privacy/test_redteam_round10.py``).  The rule, one for every algorithm that declares its
groups (``Algorithm.released_groups``, :class:`mipflow.algorithms.contract.ReleasedGroups`):

* **the groups a release lets anyone form** are its level cells, every margin of them (two-way
  ANOVA: the sum of a row of cells is that level's group), and their union; each group is keyed by
  its **kind**: the data model and the (variable, level) pairs that define it, so that the same
  level's group in another cohort (another filter, other datasets) is compared with it;
* **against the same kind released before** (:class:`GroupMemory`, on disk in
  ``HOME/groups.sqlite``, never evicted): the ledger's pairwise rule at the group threshold, each of
  ``|A \\ B|``, ``|B \\ A|`` and ``|A ∩ B|`` 0 or at least the threshold (the smaller of the two
  releases' thresholds: their difference carries only the moments both release).  The same group
  released again (a repeat, another outcome variable on the same rows) is 0 rows apart: allowed;
* **the union of a release's groups is a cohort** of the ledger (it is one: the sums over it are the
  sums of its cells), so it meets descriptive statistics of the cohort (a cohort of the ledger) and
  every other cohort by the ledger's rules; and the rows of the step's cohort outside it (levels not
  released) are none or at least the group threshold (:func:`check_complement`);
* **groups against cohorts**: a group and a cohort of the ledger (any step's rows, e.g. a filter pinning
  the level, ``stroke_type = tia AND age >= 25``) may not hold each other but for 1 .. threshold - 1
  rows (:func:`nested_small`: their sums subtract to exactly those rows), checked from either side.

The threshold is :func:`mipflow.node.controls.disclosure.group_threshold`: ``min_row_count`` for the
groups released with their spread (ADR 0050), ``nfilter_tab`` for first moments (regression dummies).
Refusals are control ``differencing`` and name the setting and the rule, never a size.  A study's
groups are checked at approval (``study_cells``), explore releases are DP: neither is checked here
(a study's are remembered).
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.ledger import (
    _overlap, cohort_digest, decode_keys, encode_keys, pair_conflict, sorted_unique,
)
from mipflow.node.controls.sqlite_state import SqliteState

if TYPE_CHECKING:
    import pandas as pd

    from mipflow.algorithms.contract import ReleasedGroups
    from mipflow.protocol.datamodel import DataModel

#: Group memory file in the node home.
GROUPS_FILE = "groups.sqlite"


@dataclass(frozen=True)
class Group:
    """One released group: its kind, its rows (sorted keyed hashes) and their digest."""

    kind: str
    rows: np.ndarray
    digest: str
    data_model: str = ""


@dataclass(frozen=True)
class GroupRelease:
    """What one step releases in groups (stays at the node)."""

    groups: tuple[Group, ...]
    #: the union of the released cells: a cohort of the ledger
    union: np.ndarray
    union_digest: str
    #: the group threshold and the setting that names it
    threshold: int
    setting: str


def kind_of(data_model: str, pairs: Sequence[tuple[str, str]]) -> str:
    """The key of a group: the data model and its defining (variable, level) pairs, sorted."""
    return json.dumps([data_model, sorted([str(c), str(v)] for c, v in pairs)])


def level_groups(data: pd.DataFrame, keys: np.ndarray, groupings: Sequence[ReleasedGroups], model: DataModel,
                 data_model: str) -> tuple[list[Group], np.ndarray]:
    """Every group ``groupings`` release on ``data`` (cells, margins), and the union of the cells.

    Parameters
    ----------
    data : pandas.DataFrame, shape (n, ...)
        The local step's rows.
    keys : numpy.ndarray of uint64, shape (n,)
        The rows' ledger keys, in ``data``'s order.
    """
    from mipflow.algorithms.design import category_codes

    groups: dict[str, Group] = {}
    union = np.zeros(len(data), dtype=bool)
    for grouping in groupings:
        columns = list(grouping.columns)
        codes = [category_codes(data[c], model.variable(c)).to_numpy(dtype=object) for c in columns]
        released = np.ones(len(data), dtype=bool)
        for i, column_codes in enumerate(codes):
            present = np.array([c is not None for c in column_codes], dtype=bool)
            if grouping.levels is not None:
                allowed = set(map(str, grouping.levels[i]))
                present &= np.array([c in allowed for c in column_codes], dtype=bool)
            released &= present
        union |= released
        for size in range(1, len(columns) + 1):  # the cells (all columns) and every margin of them
            for subset in itertools.combinations(range(len(columns)), size):
                import pandas as pd

                rows = np.flatnonzero(released)
                frame = pd.DataFrame({str(i): codes[i][rows] for i in subset})
                for levels, positions in frame.groupby(list(frame.columns), sort=False).indices.items():
                    levels = levels if isinstance(levels, tuple) else (levels,)
                    kind = kind_of(data_model, [(columns[i], level) for i, level in zip(subset, levels)])
                    members = sorted_unique(keys[rows[positions]])
                    groups.setdefault(kind, Group(kind, members, _digest(kind, members), data_model))
    return list(groups.values()), sorted_unique(keys[union])


def _digest(kind: str, rows: np.ndarray) -> str:
    return hashlib.sha256(kind.encode() + b"\x1f" + np.ascontiguousarray(rows, dtype="<u8").tobytes()).hexdigest()


def complement_refusal(setting: str, threshold: int) -> DisclosureError:
    return DisclosureError(
        "the rows of this analysis's cohort outside the groups it releases (levels it does not compare) would "
        f"be a group of fewer than {setting} ({threshold}) rows, which the cohort's statistics less these "
        "groups' would single out (differencing control). Filter the rows to the levels compared, or compare "
        "levels that leave none or many rows out", control="differencing")


def group_refusal(setting: str, threshold: int) -> DisclosureError:
    return DisclosureError(
        "a group this analysis releases (the rows of a level of a grouping variable, or of a cell of two) "
        "and the same group released before by this node would combine into a group of fewer than "
        f"{setting} ({threshold}) rows, which could single out patients (differencing control). Use the "
        "same filters and datasets as the earlier analysis, or ones that change each group by many rows; "
        "for subgroups that must all be answered exactly, ask the node's admin for a study protocol",
        control="differencing")


def cohort_refusal() -> DisclosureError:
    return DisclosureError(
        "the selected rows and a group this node released before (the rows of a level of a grouping variable) "
        "hold each other but for a few rows: their statistics would combine into a group of fewer rows than "
        "the group threshold, which could single out patients (differencing control). Use a filter that "
        "selects many more or many fewer rows, or the same rows as the earlier group", control="differencing")


def check_complement(cohort: np.ndarray, union: np.ndarray, threshold: int, setting: str) -> None:
    """Refuse when the step's cohort holds 1 .. ``threshold - 1`` rows outside its released groups."""
    outside = len(cohort) - len(np.intersect1d(cohort, union, assume_unique=True))
    if 0 < outside < threshold:
        raise complement_refusal(setting, threshold)


def nested_small(a: np.ndarray, b: np.ndarray, threshold: int) -> bool:
    """Whether one of two sorted unique key sets holds the other but for 1 .. ``threshold - 1`` rows
    (their sums subtract to exactly those rows)."""
    both = _overlap(a, b)
    if both == len(a):
        return 0 < len(b) - both < threshold
    if both == len(b):
        return 0 < len(a) - both < threshold
    return False


class GroupMemory(SqliteState):
    """Every group a node released, by data model and kind, in ``HOME/groups.sqlite`` (never evicted).

    Parameters
    ----------
    root : path or None
        The node home; None keeps the memory in this process only (tests of the rule).
    """

    def __init__(self, root: str | Path | None = None) -> None:
        super().__init__(Path(root) / GROUPS_FILE if root is not None else None)
        # data model -> kind -> digest -> (rows, threshold); the file's rows up to self._seen are read
        self._groups: dict[str, dict[str, dict[str, tuple[np.ndarray, int]]]] = {}
        self._seen = 0
        if self.path is not None:
            with self._lock, self._connect() as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS groups (data_model TEXT NOT NULL, kind TEXT NOT NULL, "
                             "digest TEXT NOT NULL, n_rows INTEGER NOT NULL, threshold INTEGER NOT NULL, "
                             "keys BLOB NOT NULL, first_at TEXT NOT NULL, PRIMARY KEY (kind, digest))")

    def _refresh(self) -> None:
        if self.path is None:
            return
        with self._connect() as conn:
            rows = conn.execute("SELECT rowid, data_model, kind, digest, threshold, keys FROM groups WHERE rowid > ? "
                                "ORDER BY rowid", (self._seen,)).fetchall()
        for rowid, data_model, kind, digest, threshold, blob in rows:
            self._groups.setdefault(data_model, {}).setdefault(kind, {}).setdefault(
                digest, (decode_keys(blob), int(threshold)))
            self._seen = max(self._seen, rowid)

    def _kind(self, group: Group) -> dict[str, tuple[np.ndarray, int]]:
        return self._groups.get(group.data_model, {}).get(group.kind, {})

    def remembered(self, kind: str) -> int:
        """How many distinct groups of ``kind`` are remembered (for the node admin and tests)."""
        with self._lock:
            self._refresh()
            return sum(len(kinds.get(kind, {})) for kinds in self._groups.values())

    def check(self, groups: Sequence[Group], threshold: int, setting: str,
              cohorts: Sequence[np.ndarray] = ()) -> None:
        """Raise (control ``differencing``) if a new group is near a remembered one of its kind (the
        pairwise rule), or holds or is held by one of ``cohorts`` (the ledger's) but for a few rows."""
        if threshold <= 1:
            return
        with self._lock:
            self._refresh()
            for group in groups:
                known = self._kind(group)
                if group.digest in known:
                    continue  # released before: nothing new
                for rows, old_threshold in known.values():
                    if pair_conflict(group.rows, rows, min(threshold, old_threshold)):
                        raise group_refusal(setting, threshold)
                if any(nested_small(group.rows, cohort, threshold) for cohort in cohorts):
                    raise group_refusal(setting, threshold)

    def check_cohorts(self, data_model: str, cohorts: Sequence[np.ndarray]) -> None:
        """Raise (control ``differencing``) if a new cohort holds, or is held by, a remembered group of
        ``data_model`` but for 1 .. (the group's threshold - 1) rows: a filter pinning a level (``stroke_type
        = tia AND age >= 25``) against that level's group, whatever algorithm answers it."""
        with self._lock:
            self._refresh()
            for known in self._groups.get(data_model, {}).values():
                for rows, group_threshold in known.values():
                    if any(nested_small(c, rows, group_threshold) for c in cohorts):
                        raise cohort_refusal()

    def record(self, groups: Sequence[Group], threshold: int) -> None:
        """Remember released groups (one remembered before costs nothing)."""
        with self._lock:
            self._refresh()
            new = [g for g in groups if g.digest not in self._kind(g)]
            if not new:
                return
            if self.path is None:
                for g in new:
                    self._groups.setdefault(g.data_model, {}).setdefault(g.kind, {})[g.digest] = (g.rows, threshold)
                return
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            with self._connect() as conn:
                conn.executemany("INSERT OR IGNORE INTO groups VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 [(g.data_model, g.kind, g.digest, len(g.rows), threshold, encode_keys(g.rows), now)
                                  for g in new])
            self._refresh()


def group_release(algo: Any, data: pd.DataFrame, request: Any, model: DataModel, cohorts: Any,
                  settings: Any) -> GroupRelease | None:
    """The groups a step releases (None: it declares none, or its rows' keys are not known)."""
    from mipflow.node.controls.disclosure import group_threshold

    groupings = algo.released_groups(request, model) if hasattr(algo, "released_groups") else ()
    order = getattr(cohorts, "order", None)
    if not groupings or order is None or len(order) != len(data):
        return None
    groups, union = level_groups(data, np.asarray(order, dtype=np.uint64), groupings, model, cohorts.data_model)
    if not len(union):
        return None  # no row in a released group: nothing released about any
    setting, threshold = group_threshold(algo, settings)
    return GroupRelease(tuple(groups), union, cohort_digest(cohorts.data_model, union), threshold, setting)


def check_groups(request: Any, context: Any, work: Any) -> None:
    """Control (after ``check_cohort``): every step's new cohorts against the groups released before
    (nested), then the groups the step releases, held to the group threshold against the cohort's rows
    outside them, the ledger's cohorts (their union; nested) and the same groups released before (control ``differencing``, ADR 0051).  Computed even while ``differencing_check``
    is off or in a study, so that :func:`remember_groups` remembers them; explore releases are DP."""
    if work.explore is not None:
        return
    work.groups = release = group_release(work.algo, work.data, request.analysis, work.model, work.cohorts,
                                          work.settings)
    if not work.settings.differencing_check or work.study is not None:
        return
    guard, data_model = context.differencing, work.cohorts.data_model
    answered = guard.ledger.cohorts(data_model)
    # every step's new cohorts against the groups released before: a filter pinning a level
    guard.groups.check_cohorts(data_model, [s for s, d in zip(work.cohorts.sets, work.cohorts.digests)
                                            if d not in answered])
    if release is None or any(0 < len(g.rows) < release.threshold for g in release.groups):
        # a group under the threshold is the release check's refusal (control min_row_count, the node
        # is left out), as for a k-means cluster (ADR 0050): the two refusals stay distinct
        return
    check_complement(work.cohorts.sets[0], release.union, release.threshold, release.setting)
    if release.union_digest not in work.cohorts.digests:
        guard.ledger.check(data_model, [release.union], work.settings.min_row_count,
                           [release.union_digest], primes=guard.primes)
    guard.groups.check(release.groups, release.threshold, release.setting, cohorts=list(answered.values()))


def remember_groups(context: Any, work: Any) -> None:
    """After the release: the union joins the ledger, the groups the group memory."""
    release = work.groups
    if release is None:
        return
    guard = context.differencing
    if release.union_digest not in work.cohorts.digests:
        guard.ledger.record(work.cohorts.data_model, [release.union], [release.union_digest])
    guard.groups.record(release.groups, release.threshold)
