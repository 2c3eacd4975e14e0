"""Group memory: groups released with their sums are held to the group threshold across releases (ADR 0051).

A t-test, an ANOVA, Gaussian naive Bayes, a contingency table, a histogram (its bins) or a model that
dummy-encodes a nominal covariate or fits a binary response (linear and logistic regression, GEE, LMM, Cox)
releases sums (count, means, spreads) over cells of rows: groups *inside* a cohort.  The
cohort ledger (ADR 0013) compares cohorts, so two cohorts ``min_row_count`` rows apart could hold
the same level's group 3 rows apart, and a step releasing two large levels beside descriptive
statistics of the same cohort leaves the third level's rows to subtraction (tenth review,
``tests/privacy/test_redteam_round10.py``).  The rule, one for every algorithm that declares its
groups (``Algorithm.released_groups``, :class:`mipflow.algorithms.contract.ReleasedGroups`):

* **the groups a release lets anyone form** are its level cells, every margin of them (two-way
  ANOVA: the sum of a row of cells is that level's group), and their union;
* **by their rows, against every group released before** (:class:`GroupMemory`, one per node, on
  disk in ``HOME/groups.sqlite``, never evicted; the twelfth review's amendment): whatever their
  variables, levels, algorithm or data model, two groups may not be the same rows but for 1 ..
  threshold - 1 (:func:`few_apart`: the size of their symmetric difference; their sums subtract to
  those rows).  Rows are the ledger's keyed row hashes; across data models the groups' patients
  (keyed pseudonym hashes, ADR 0030) are compared too.  The release's own groups are compared with
  each other the same way (two nominal covariates of one regression);
* **the same kind** (data model and (variable, level) pairs) keeps the stricter pairwise rule of the
  ledger: each of ``|A \\ B|``, ``|B \\ A|`` and ``|A ∩ B|`` 0 or at least the threshold.  The threshold of a
  pair is the smaller of the two releases' (their difference carries only the moments both release);
  the same group released again (a repeat, another outcome variable on the same rows) is 0 rows
  apart: allowed;
* **the union of a release's groups is a cohort** of the ledger (it is one: the sums over it are the
  sums of its cells), so it meets descriptive statistics of the cohort (a cohort of the ledger) and
  every other cohort by the ledger's rules; and the rows of the step's cohort outside it (levels not
  released) are none or at least the group threshold (:func:`check_complement`);
* **groups against cohorts**: a group and a cohort of the ledger (any step's rows under any data
  model, e.g. a filter pinning the level, ``stroke_type = tia AND age >= 25``) may not be the same
  rows but for 1 .. threshold - 1 (:func:`few_apart`), checked from either side;
* **value stamps** (ADR 0061; :mod:`mipflow.node.controls.group_stamps`): a group and a group or cohort that are
  the same rows under this consent epoch, in either order, may not hold other values in a column both read
  (a load's correction in place; the fifteenth review's hole 1);
* **groups in the chain rule** (thirteenth review, :mod:`mipflow.node.controls.chain`): every remembered
  cell (the finest groups of a grouping; margins are their sums) is a set of the ledger's chain rule beside
  the cohorts, and a release's fresh cohorts and new cells are one addition
  (:func:`~mipflow.node.controls.released_groups.chain_groups`): a group and two cohorts whose combination
  isolates a few rows are refused though every pair is far apart.

The threshold is :func:`mipflow.node.controls.disclosure.group_threshold`: ``min_row_count`` for the
groups released with their spread (ADR 0050), ``nfilter_tab`` for first moments (regression dummies).
Refusals are control ``differencing`` and name the setting and the rule, never a size.  A study's
groups are checked at approval (``study_cells``), explore releases are DP: neither is checked here
(a study's are remembered).

Storage: per distinct group and kind, its sorted row and patient keys as the ledger stores keys
(:mod:`mipflow.node.controls.keycodec`), about 14 bytes a row on disk.  A check reads only the groups
near in size (:meth:`GroupMemory._near_in_size`); :func:`few_apart` rejects most by a few look-ups.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Sequence

import numpy as np

from mipflow.node.controls.disclosure import cohort_refusal, complement_refusal, group_refusal
from mipflow.node.controls.epochs import PATIENTS, ROWS, Current, EpochView
from mipflow.node.controls.group_stamps import GroupStamps, frame_group_stamps, refuse_corrected_cohorts
from mipflow.node.controls.ledger import (
    _overlap, cohort_digest, decode_keys, encode_keys, pair_conflict, sorted_unique,
)
from mipflow.node.controls.sqlite_state import SqliteState

if TYPE_CHECKING:
    import pandas as pd

    from mipflow.algorithms.contract import ReleasedGroups
    from mipflow.node.controls.chain import ChainSet
    from mipflow.protocol.datamodel import DataModel

#: Group memory file in the node home.
GROUPS_FILE = "groups.sqlite"


@dataclass(frozen=True)
class Group:
    """One released group: its kind, its rows (sorted keyed hashes), their digest and its patients
    (sorted keyed hashes of the pseudonyms, ADR 0030; None: not known)."""

    kind: str
    rows: np.ndarray
    digest: str
    data_model: str = ""
    patients: np.ndarray | None = None
    #: a cell of its grouping (all its columns), not a margin: what the chain rule is handed (a margin
    #: is a sum of cells; ADR 0051, thirteenth review)
    cell: bool = True
    #: its value stamps, ``column -> stamp`` of the columns the step reads (ADR 0061; None: not known)
    stamps: Mapping[str, int] | None = None


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
    #: its cells under the threshold are suppressed, not refused (``ReleasedGroups.suppressed``): the groups
    #: are checked after the release check, less the cells it hid
    #: (:func:`~mipflow.node.controls.released_groups.check_released_groups`)
    suppressed: bool = False
    #: the union's value stamps (ADR 0061; None: not known)
    union_stamps: dict[str, int] | None = None


#: A released set of rows to compare a group with: (data model, sorted row keys, sorted patient keys or None).
Rows = tuple[str, np.ndarray, "np.ndarray | None"]


def kind_of(data_model: str, pairs: Sequence[tuple[str, str]]) -> str:
    """The key of a group: the data model and its defining (variable, level) pairs, sorted."""
    return json.dumps([data_model, sorted([str(c), str(v)] for c, v in pairs)])


def level_groups(data: pd.DataFrame, keys: np.ndarray, groupings: Sequence[ReleasedGroups], model: DataModel,
                 data_model: str, patients: np.ndarray | None = None) -> tuple[list[Group], np.ndarray]:
    """Every group ``groupings`` release on ``data`` (cells, margins), and the union of the cells.

    Parameters
    ----------
    data : pandas.DataFrame, shape (n, ...)
        The local step's rows.
    keys : numpy.ndarray of uint64, shape (n,)
        The rows' ledger keys, in ``data``'s order.
    patients : numpy.ndarray of uint64, shape (n,), optional
        The rows' patient keys, in ``data``'s order (each group's patients then come with it).
    """
    import pandas as pd

    from mipflow.algorithms.design import grouping_codes

    groups: dict[str, Group] = {}
    union = np.zeros(len(data), dtype=bool)
    for grouping in groupings:
        columns = list(grouping.columns)
        # each row's level (a code, a bin, the rest) or None: in no released cell (ADR 0051)
        codes = [grouping_codes(data, grouping, i, model) for i in range(len(columns))]
        released = np.ones(len(data), dtype=bool)
        for column_codes in codes:
            released &= np.array([c is not None for c in column_codes], dtype=bool)
        union |= released
        rows = np.flatnonzero(released)
        for size in range(1, len(columns) + 1):  # the cells (all columns) and every margin of them
            for subset in itertools.combinations(range(len(columns)), size):
                frame = pd.DataFrame({str(i): codes[i][rows] for i in subset})
                for levels, positions in frame.groupby(list(frame.columns), sort=False).indices.items():
                    levels = levels if isinstance(levels, tuple) else (levels,)
                    kind = kind_of(data_model, [(columns[i], level) for i, level in zip(subset, levels)])
                    if kind in groups:
                        continue
                    members = sorted_unique(keys[rows[positions]])
                    people = None if patients is None else sorted_unique(patients[rows[positions]])
                    groups[kind] = Group(kind, members, _digest(kind, members), data_model, people,
                                         cell=size == len(columns))
    return list(groups.values()), sorted_unique(keys[union])


def _digest(kind: str, rows: np.ndarray) -> str:
    return hashlib.sha256(kind.encode() + b"\x1f" + np.ascontiguousarray(rows, dtype="<u8").tobytes()).hexdigest()


def check_complement(cohort: np.ndarray, union: np.ndarray, threshold: int, setting: str) -> None:
    """Refuse when the step's cohort holds 1 .. ``threshold - 1`` rows outside its released groups."""
    outside = len(cohort) - len(np.intersect1d(cohort, union, assume_unique=True))
    if 0 < outside < threshold:
        raise complement_refusal(setting, threshold)


def nested_small(a: np.ndarray, b: np.ndarray, threshold: int) -> bool:
    """Whether one of two sorted unique key sets holds the other but for 1 .. ``threshold - 1`` rows
    (their sums subtract to exactly those rows; a case of :func:`few_apart`)."""
    both = _overlap(a, b)
    if both == len(a):
        return 0 < len(b) - both < threshold
    if both == len(b):
        return 0 < len(a) - both < threshold
    return False


#: :func:`few_apart` looks this many keys (plus the threshold) of one set up in the other before comparing
#: the two whole.
PROBE = 64


def few_apart(a: np.ndarray, b: np.ndarray, threshold: int) -> bool:
    """Whether two sorted unique key sets are the same keys but for 1 .. ``threshold - 1`` (the size of
    their symmetric difference): their sums subtract to the sums over those rows, less or plus; with
    the sums of squares two rows swapped solve too."""
    if abs(len(a) - len(b)) >= threshold:
        return False  # cheap: the symmetric difference is at least the difference of the sizes
    probe = a[:PROBE + threshold]
    if len(probe) < len(a) and len(probe) - _overlap(probe, b) >= threshold:
        return False  # cheap and exact: rows of ``a`` outside ``b`` are at most the symmetric difference
    apart = len(a) + len(b) - 2 * _overlap(a, b)
    return 0 < apart < threshold


def _near_kept(mine: Rows, kept: "_Kept | _Released", threshold: int, view: EpochView) -> bool:
    """A new set (a group or a cohort) against a remembered group, through the epoch ``view`` (ADR 0061): by
    rows, and by patients too across data models, :func:`few_apart` on the keys as the view sees them (of an
    earlier consent epoch: the rows still held, and the same rows again near too)."""
    if view.near(few_apart, mine[1], kept.rows, kept.data_model, ROWS, kept.epoch, threshold):
        return True
    if mine[0] == kept.data_model or mine[2] is None or kept.patients is None:
        return False
    return view.near(few_apart, mine[2], kept.patients, kept.data_model, PATIENTS, kept.epoch, threshold)


def _few_apart(a: Rows, b: Rows, threshold: int) -> bool:
    """:func:`few_apart` by rows, and by patients too when the two are of different data models (the
    same patient's rows under two data models, or two versions of one, have other row keys; ADR 0030)."""
    if few_apart(a[1], b[1], threshold):
        return True
    return a[0] != b[0] and a[2] is not None and b[2] is not None and few_apart(a[2], b[2], threshold)


class _Released(NamedTuple):
    """A released set the group memory compares a group with (a cohort of the ledger), and its consent epoch."""

    data_model: str
    rows: np.ndarray
    patients: np.ndarray | None
    epoch: str


def _as_released(cohort: Any, data_model: str, epoch: str) -> _Released:
    """A cohort handed to :meth:`GroupMemory.check`: rows of ``data_model`` or ``(data model, rows, patients)``
    (taken as of the current ``epoch``), or a ledger entry (with its own epoch)."""
    if isinstance(cohort, np.ndarray):
        return _Released(data_model, cohort, None, epoch)
    if isinstance(cohort, tuple):
        return _Released(cohort[0], cohort[1], cohort[2], epoch)
    return _Released(cohort.data_model, cohort.rows, cohort.patients, cohort.epoch or "")


@dataclass(frozen=True)
class _Kept:
    """One remembered group."""

    data_model: str
    kind: str
    digest: str
    rows: np.ndarray
    patients: np.ndarray | None
    threshold: int
    #: False for a margin (a sum of cells remembered with it); a group from before the thirteenth
    #: review is taken as a cell
    cell: bool = True
    #: The consent epoch it was released under (ADR 0061; "" for a memory from before).
    epoch: str = ""

    @property
    def released(self) -> Rows:
        return self.data_model, self.rows, self.patients


class GroupMemory(SqliteState):
    """Every group a node released, under every data model, in ``HOME/groups.sqlite`` (never evicted).

    Indexed by kind (the stricter rule of the same kind), and by the number of rows and of patients
    (:meth:`_near_in_size`: only groups within the threshold in size can be a few rows apart).

    Parameters
    ----------
    root : path or None
        The node home; None keeps the memory in this process only (tests of the rule).
    """

    def __init__(self, root: str | Path | None = None) -> None:
        super().__init__(Path(root) / GROUPS_FILE if root is not None else None)
        self._kept: list[_Kept] = []
        self._by_kind: dict[str, dict[str, int]] = {}   # kind -> digest -> index in self._kept
        self._by_rows: dict[int, list[int]] = {}        # rows -> indices
        self._by_patients: dict[int, list[int]] = {}    # patients -> indices
        self._largest_threshold = 0
        self._seen = 0  # the file's rows up to this rowid are read
        self.stamps = GroupStamps(self.path)  # the groups' value stamps, by their rows (ADR 0061)
        if self.path is not None:
            with self._lock, self._connect() as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS groups (data_model TEXT NOT NULL, kind TEXT NOT NULL, "
                             "digest TEXT NOT NULL, n_rows INTEGER NOT NULL, threshold INTEGER NOT NULL, "
                             "keys BLOB NOT NULL, first_at TEXT NOT NULL, PRIMARY KEY (kind, digest))")
                if "patients" not in {row[1] for row in conn.execute("PRAGMA table_info(groups)")}:
                    # a memory from before the twelfth review: its groups are compared by rows only
                    conn.execute("ALTER TABLE groups ADD COLUMN patients BLOB")
                if "cell" not in {row[1] for row in conn.execute("PRAGMA table_info(groups)")}:
                    # a memory from before the thirteenth review: its groups are all handed to the chain rule
                    conn.execute("ALTER TABLE groups ADD COLUMN cell INTEGER")
                if "epoch" not in {row[1] for row in conn.execute("PRAGMA table_info(groups)")}:
                    conn.execute("ALTER TABLE groups ADD COLUMN epoch TEXT")  # before ADR 0061: the epoch ""

    def _add(self, kept: _Kept) -> None:
        if kept.digest in self._by_kind.get(kept.kind, {}):
            return
        index = len(self._kept)
        self._kept.append(kept)
        self._by_kind.setdefault(kept.kind, {})[kept.digest] = index
        self._by_rows.setdefault(len(kept.rows), []).append(index)
        if kept.patients is not None:
            self._by_patients.setdefault(len(kept.patients), []).append(index)
        self._largest_threshold = max(self._largest_threshold, kept.threshold)

    def _refresh(self, written: dict[bytes, np.ndarray] | None = None) -> None:
        """Read the groups added since the last look (by any process on the home); ``written``: blobs this
        process has just written -> their keys (not decoded again)."""
        if self.path is None:
            return
        written = written or {}

        def keys_of(blob: bytes) -> np.ndarray:
            known = written.get(blob)
            return decode_keys(blob) if known is None else known

        with self._connect() as conn:
            rows = conn.execute("SELECT rowid, data_model, kind, digest, threshold, keys, patients, cell, epoch "
                                "FROM groups WHERE rowid > ? ORDER BY rowid", (self._seen,)).fetchall()
        for rowid, data_model, kind, digest, threshold, blob, patients, cell, epoch in rows:
            self._add(_Kept(data_model, kind, digest, keys_of(blob),
                            None if patients is None else keys_of(patients), int(threshold), cell != 0, epoch or ""))
            self._seen = max(self._seen, rowid)

    def _near_in_size(self, released: Rows, threshold: int) -> list[_Kept]:
        """The remembered groups whose rows, or patients, number within ``threshold - 1`` of ``released``'s."""
        found: set[int] = set()
        for index, keys in ((self._by_rows, released[1]), (self._by_patients, released[2])):
            if keys is None:
                continue
            for size in range(max(0, len(keys) - threshold + 1), len(keys) + threshold):
                found.update(index.get(size, ()))
        return [self._kept[i] for i in sorted(found)]

    def remembered(self, kind: str | None = None) -> int:
        """How many distinct groups (of ``kind``) are remembered (for the node admin and tests)."""
        with self._lock:
            self._refresh()
            return len(self._kept) if kind is None else len(self._by_kind.get(kind, {}))

    def _candidates(self, mine: Rows, threshold: int, view: EpochView) -> list[_Kept]:
        """The remembered groups that can be near ``mine``: those of this epoch within ``threshold`` in size
        (:meth:`_near_in_size`) and every one of an earlier epoch (its rows still held are fewer)."""
        near = [k for k in self._near_in_size(mine, threshold) if not view.stale(k.epoch)]
        stale = [k for k in self._kept if view.stale(k.epoch)]
        return stale + near

    def check(self, groups: Sequence[Group], threshold: int, setting: str,
              cohorts: Sequence[np.ndarray | Rows] = (), epoch: str = "", current: Current | None = None) -> None:
        """Raise (control ``differencing``) if a new group is a few rows from a remembered group of any
        kind or data model, from another group of the release, or from one of ``cohorts`` (the ledger's:
        ``(data model, rows, patients)``, or rows of the group's data model), or near one of its kind by
        the pairwise rule.  Remembered groups are seen through :class:`~mipflow.node.controls.epochs.EpochView`
        (``epoch``, ``current``: ADR 0061); ``cohorts`` are the ledger's as remembered (the ledger's own rules
        compare the release's union with them by epoch)."""
        if threshold <= 1:
            return
        view = EpochView(epoch, current)
        others = [_as_released(c, g.data_model, epoch) for g in groups[:1] for c in cohorts]
        stale = [o for o in others if view.stale(o.epoch)]  # compared whole: their rows still held are fewer
        others = [o for o in others if not view.stale(o.epoch)]
        # the cohorts' sizes, rows and patients (-threshold: none), to compare only those near in size
        sizes = np.array([[len(c.rows), -threshold if c.patients is None else len(c.patients)] for c in others],
                         dtype=np.int64).reshape(-1, 2)
        with self._lock:
            self._refresh()
            for i, group in enumerate(groups):
                mine: Rows = (group.data_model, group.rows, group.patients)
                if any(_few_apart(mine, (g.data_model, g.rows, g.patients), threshold) for g in groups[:i]):
                    raise group_refusal(setting, threshold)
                at = self._by_kind.get(group.kind, {}).get(group.digest)
                if at is not None and not view.stale(self._kept[at].epoch):
                    continue  # released before, under this consent epoch: nothing new
                for kept in self._candidates(mine, threshold, view):
                    if _near_kept(mine, kept, min(threshold, kept.threshold), view):
                        raise group_refusal(setting, threshold)
                for index in self._by_kind.get(group.kind, {}).values():  # the same kind: the pairwise rule
                    kept = self._kept[index]
                    if view.near(pair_conflict, group.rows, kept.rows, kept.data_model, ROWS, kept.epoch,
                                 min(threshold, kept.threshold)):
                        raise group_refusal(setting, threshold)
                near = np.abs(sizes[:, 0] - len(group.rows)) < threshold
                if group.patients is not None:
                    near |= np.abs(sizes[:, 1] - len(group.patients)) < threshold
                if any(_near_kept(mine, o, threshold, view) for o in [*stale, *(others[j] for j in np.flatnonzero(near))]):
                    raise group_refusal(setting, threshold)

    def known(self, group: Group, epoch: str | None = None) -> bool:
        """Whether ``group`` (its kind and rows) was released before (under the consent ``epoch``, when given:
        one of an earlier epoch is no repeat, ADR 0061)."""
        with self._lock:
            self._refresh()
            at = self._by_kind.get(group.kind, {}).get(group.digest)
            return at is not None and (epoch is None or (self._kept[at].epoch or "") == epoch)

    def of_column(self, data_model: str, column: str) -> list[np.ndarray]:
        """The rows of every remembered group of ``data_model`` one of whose (variable, level) pairs is of
        ``column`` (a histogram's bins, a table's cells: :mod:`mipflow.node.controls.released_groups`)."""
        mark = json.dumps(column)
        with self._lock:
            self._refresh()
            return [k.rows for k in self._kept if k.data_model == data_model and mark in k.kind
                    and any(c == column for c, _ in json.loads(k.kind)[1])]

    def chain_sets(self, epoch: str | None = None, current: Current | None = None) -> list[ChainSet]:
        """Every remembered cell, under every data model, oldest first, with its threshold: what the
        chain rule's family holds besides the cohorts (ADR 0051, thirteenth review).  Margins are sums of
        the cells remembered with them and are left out.  With ``epoch`` (ADR 0061), a cell of an earlier
        consent epoch is its rows still held and a phantom unit (:meth:`EpochView.chain_keys`)."""
        from mipflow.node.controls.chain import ChainSet
        from mipflow.node.controls.cluster_groups import latest_clusters  # k-means: each cohort's latest only

        view = None if epoch is None else EpochView(epoch, current)
        with self._lock:
            self._refresh()
            cells = latest_clusters([k for k in self._kept if k.cell])
        if view is None:
            return [ChainSet(k.data_model, k.rows, k.patients, k.threshold) for k in cells]
        return [ChainSet(k.data_model, view.chain_keys(k.rows, k.data_model, ROWS, k.epoch),
                         view.chain_keys(k.patients, k.data_model, PATIENTS, k.epoch), k.threshold) for k in cells]

    def check_cohorts(self, data_model: str, cohorts: Sequence[np.ndarray],
                      patients: Sequence[np.ndarray] | None = None, epoch: str = "",
                      current: Current | None = None) -> None:
        """Raise (control ``differencing``) if a new cohort is a remembered group of any data model but for
        1 .. (the group's threshold - 1) rows (or patients, across data models): a filter pinning a level
        (``stroke_type = tia AND age >= 25``) against that level's group, whatever algorithm answers it.
        A group of an earlier consent epoch is seen through :class:`~mipflow.node.controls.epochs.EpochView`:
        its rows still held, and the same rows again refused too (ADR 0061; fourteenth review, hole 2: the
        holder of a withdrawn patient and a non-holder decide alike)."""
        view = EpochView(epoch, current)
        with self._lock:
            self._refresh()
            for i, cohort in enumerate(cohorts):
                mine: Rows = (data_model, cohort, None if patients is None else patients[i])
                for kept in self._candidates(mine, self._largest_threshold, view):
                    if kept.threshold > 1 and _near_kept(mine, kept, kept.threshold, view):
                        raise cohort_refusal()

    def record(self, groups: Sequence[Group], threshold: int, epoch: str = "") -> None:
        """Remember released groups (one remembered before costs nothing) and their value stamps."""
        self.stamps.record(groups, epoch)
        with self._lock:
            self._refresh()
            new = [g for g in groups if g.digest not in self._by_kind.get(g.kind, {})]
            if not new:
                return
            if self.path is None:
                for g in new:
                    self._add(_Kept(g.data_model, g.kind, g.digest, g.rows, g.patients, threshold, g.cell, epoch))
                return
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            written: dict[bytes, np.ndarray] = {}

            def blob(keys: np.ndarray | None) -> bytes | None:
                if keys is None:
                    return None
                out = encode_keys(keys)
                written[out] = keys
                return out

            with self._connect() as conn:
                conn.executemany(
                    "INSERT OR IGNORE INTO groups (data_model, kind, digest, n_rows, threshold, keys, first_at, "
                    "patients, cell, epoch) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(g.data_model, g.kind, g.digest, len(g.rows), threshold, blob(g.rows), now, blob(g.patients),
                      int(g.cell), epoch) for g in new])
            self._refresh(written)

    def stats(self) -> dict[str, int]:
        """Distinct groups, their rows and their bytes on disk (for the node admin)."""
        with self._lock:
            if self.path is None:
                return {"groups": len(self._kept), "rows": sum(len(k.rows) for k in self._kept), "bytes": 0}
            with self._connect() as conn:
                count, rows, size = conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(n_rows), 0), COALESCE(SUM(LENGTH(keys) + "
                    "COALESCE(LENGTH(patients), 0)), 0) FROM groups").fetchone()
        return {"groups": int(count), "rows": int(rows), "bytes": int(size)}


def group_release(algo: Any, data: pd.DataFrame, request: Any, model: DataModel, cohorts: Any,
                  settings: Any, key: str | None = None) -> GroupRelease | None:
    """The groups a step releases (None: it declares none, or its rows' keys are not known), from its frame
    and the cohorts' order, or from its rows left on disk (:mod:`mipflow.node.controls.groups_rows`); with the
    ledger ``key``, with their value stamps of the cohort's stamped columns (ADR 0061)."""
    from mipflow.node.controls.disclosure import group_threshold

    groupings = algo.released_groups(request, model) if hasattr(algo, "released_groups") else ()
    if not groupings:
        return None
    stamped, union_stamps = list(cohorts.stamps[0]) if key is not None and cohorts.stamps else [], None
    if hasattr(data, "reader"):  # rows left on disk (ADR 0062): level codes and keys read a block at a time
        from mipflow.node.controls.groups_rows import rows_stamped_groups

        groups, union, union_stamps = rows_stamped_groups(data, groupings, cohorts.data_model, key, stamped)
    else:
        order = getattr(cohorts, "order", None)
        if order is None or len(order) != len(data):
            return None
        from mipflow.node.controls.frame_groups import frame_groups, memo_key

        def build() -> tuple[list[Group], np.ndarray, dict[str, int] | None]:
            keys = np.asarray(order, dtype=np.uint64)
            people = getattr(cohorts, "patient_order", None)
            people = None if people is None or len(people) != len(data) else np.asarray(people, dtype=np.uint64)
            formed, rows = level_groups(data, keys, groupings, model, cohorts.data_model, patients=people)
            if key is None:
                return formed, rows, None
            formed, stamps = frame_group_stamps(data, keys, formed, rows, stamped, key)
            return formed, rows, stamps

        # once per frame and cohorts (the same objects every round of an analysis); checked every round
        groups, union, union_stamps = frame_groups(data, cohorts, memo_key(groupings, model, cohorts.data_model,
                                                                           stamped, key), build)
    if not len(union):
        return None  # no row in a released group: nothing released about any
    setting, threshold = group_threshold(algo, settings)
    return GroupRelease(tuple(groups), union, cohort_digest(cohorts.data_model, union), threshold, setting,
                        any(g.suppressed for g in groupings), union_stamps)


def check_groups(request: Any, context: Any, work: Any) -> None:
    """Control (after ``check_cohort``): every step's new cohorts against the groups released before
    (a few rows apart, any data model), then the groups the step releases, held to the group threshold
    against the cohort's rows outside them, the ledger's cohorts (their union; a few rows apart) and every
    group released before (by rows, whatever its kind; control ``differencing``, ADR 0051).  Computed even
    while ``differencing_check`` is off or in a study, so that :func:`remember_groups` remembers them;
    explore releases are DP."""
    if work.explore is not None:
        return
    work.groups = release = group_release(work.algo, work.data, request.analysis, work.model, work.cohorts,
                                          work.settings, context.differencing.key)
    if not work.settings.differencing_check or work.study is not None:
        return
    guard, cohorts = context.differencing, work.cohorts
    epoch, current, fresh = _fresh(context, work)
    refuse_corrected_cohorts(guard, cohorts, epoch)  # the same rows as a group, other values (ADR 0061)
    # every step's new cohorts against the groups released before: a filter pinning a level
    guard.groups.check_cohorts(cohorts.data_model, [cohorts.sets[i] for i in fresh],
                               None if cohorts.patients is None else [cohorts.patients[i] for i in fresh],
                               epoch=epoch, current=current)
    if release is not None and not release.suppressed:
        from mipflow.node.controls.released_groups import check_release_groups

        check_release_groups(guard, work, release, fresh, epoch, current)


def _fresh(context: Any, work: Any) -> tuple[str, Any, list[int]]:
    """The consent epoch, the current rows (ADR 0061) and the step's cohorts not answered under that epoch."""
    from mipflow.node.controls.differencing import consent_epoch

    epoch, current = consent_epoch(context.store), getattr(work, "current_rows", None)
    answered = context.differencing.ledger.answered(work.cohorts.data_model, epoch)
    return epoch, current, [i for i, d in enumerate(work.cohorts.digests) if d not in answered]


def remember_groups(context: Any, work: Any) -> None:
    """After the release: the union joins the ledger, the groups the group memory."""
    release = work.groups
    if release is None:
        return
    from mipflow.node.controls.differencing import consent_epoch

    guard, epoch = context.differencing, consent_epoch(context.store)  # ADR 0061
    if release.union_digest not in work.cohorts.digests:
        guard.ledger.record(work.cohorts.data_model, [release.union], [release.union_digest], epoch=epoch,
                            stamps=None if release.union_stamps is None else [release.union_stamps],
                            sums_only=getattr(work, "sums_only", False))
    guard.groups.record(release.groups, release.threshold, epoch)
