"""A pooled survival release and another survival release of rows near it in a window of time (ADR 0059, amended).

ADR 0059 binds a cohort released on pooled bins by its **rows**: any other survival release of those
rows, or of rows within ``min_row_count`` of them over the whole cohort, is refused
(:func:`mipflow.node.controls.pooled_bins.check_pooled_parts`).  A survival release's counts up to a
time ``e`` depend only on the rows leaving follow-up by ``e`` (and its at-risk numbers on the rows
leaving after ``e``): ``{B, C}`` with ``followup_days < 410`` leaves out twelve rows censored at day
420, far from the bound cohort by rows, yet its weeks 0-12 are the bound cohort's, and pooled less
``{B, C}`` is hospital A's own deaths (thirteenth review).  So this control compares the two
releases in every **window** of time both let anyone form, by level of the event variable
(:func:`mipflow.node.controls.survival_windows.near_in_a_window`):

* at a node holding a pooled release of cohort ``C`` (any binding), a survival release of ``C'``
  (Kaplan-Meier or Cox; per-node bins, another participant set, other datasets, masked or not) is
  refused (``pooled_bins``) when in some window the rows of ``C`` and ``C'`` leaving there share a row
  and differ by fewer than ``min_row_count`` rows each way, or their rows of one level of the event
  variable (the events; the censorings) share a row and differ by fewer than ``nfilter_tab`` rows;
* the other way round, a pooled release of rows near a per-node release in a window (or near a
  pooled release of another binding) is declined: the central site falls back to per-node bins,
  which this node answers only if no pooled release binds them.

The check runs after the node's controls shaped the release (:func:`check_pooled_windows`, after
``check_release``): a per-node release's bin ends are known only then (they are merged on the rows).
A pooled release's ends are known at its masked round; at round 0 (nothing bound yet, nothing
released but ``group_n`` and sealed parts) its ends are taken as every point of the fine grid, the
finest its pooled bins could be, so a node declines before any peer binds.  The rows, their leaving
times and levels and the release's ends are remembered after the release
(:func:`remember_pooled_windows`, ``HOME/survival_windows.sqlite``; about 26 bytes a row, never sent).
Explore releases are exempt (keyed noise, ADR 0059).  Releases of other algorithms are compared with the
pooled releases' cells by :mod:`mipflow.node.controls.pooled_counts` (fourteenth review); a pooled release near
a cohort of the ledger, or near any set an earlier release counted (:mod:`mipflow.node.controls.counted_memory`,
split by the time variable where it used it), in some window is declined here (:func:`_decline_near_counts`).
Each group of a release by group (Kaplan-Meier's ``x``) is compared too (:func:`_near_by_cells`; sixteenth review).
"""
from __future__ import annotations

import json
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.epochs import ROWS, EpochView
from mipflow.node.controls.keycodec import decode_keys, encode_keys
from mipflow.node.controls.pooled_bins import (
    PER_NODE_RELEASE,
    POOLED_RELEASE,
    _cohort_key,
    epoch_view,
    is_pooled,
    is_survival,
    participants_of,
)
from mipflow.node.controls.sqlite_state import SqliteState
from mipflow.node.controls.survival_windows import BEYOND, ReleaseRows, near_in_a_window, release_cells

#: The file of the remembered survival releases' rows by time, in the node home.
WINDOWS_FILE = "survival_windows.sqlite"


def _window_refusal() -> DisclosureError:
    """A survival release near a pooled one in a window of time; names the rule, no count, no value."""
    return DisclosureError(
        "pooled time bins (ADR 0052, 0059 thirteenth-review amendment): in some window of follow-up time, the "
        "rows of this cohort leaving follow-up there come within min_row_count rows (or, for one level of the "
        "event variable, nfilter_tab rows) of those of a cohort this node released in a survival analysis on "
        "time bins pooled with other nodes, so this release would subtract from the pooled one to another "
        "hospital's own counts. Re-run the pooled analysis itself (all its original datasets, on the same nodes), "
        "or choose a cohort that differs from it in every part of follow-up (a filter on the follow-up time or "
        "on the event variable, or one that leaves out only a few early or late rows, does not)",
        control="pooled_bins")


def _declined(what: str) -> DisclosureError:
    return DisclosureError(f"pooled time bins: {what}; per-node bins are answered", control="pooled_bins")


def _pack(array: np.ndarray, dtype: str) -> bytes:
    return zlib.compress(np.ascontiguousarray(array, dtype=dtype).tobytes(), 1)


def _unpack(blob: bytes | None, dtype: str) -> np.ndarray | None:
    return None if blob is None else np.frombuffer(zlib.decompress(blob), dtype=dtype)


class WindowMemory(SqliteState):
    """Survival releases' rows with their leaving times and levels, and the releases' bin ends, by kind
    (:data:`~mipflow.node.controls.pooled_bins.POOLED_RELEASE`, ``PER_NODE_RELEASE``), durable."""

    def __init__(self, root: str | Path) -> None:
        super().__init__(Path(root) / WINDOWS_FILE)

    @staticmethod
    def _table(conn: Any) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS releases (kind TEXT NOT NULL, data_model TEXT NOT NULL, "
                     "digest TEXT NOT NULL, binding TEXT NOT NULL, time_variable TEXT NOT NULL, "
                     "event_variable TEXT NOT NULL, keys BLOB NOT NULL, patients BLOB, times BLOB NOT NULL, "
                     "levels BLOB NOT NULL, ends BLOB NOT NULL, PRIMARY KEY (kind, data_model, digest, binding, "
                     "time_variable, event_variable))")
        columns = {row[1] for row in conn.execute("PRAGMA table_info(releases)")}
        if "epoch" not in columns:
            conn.execute("ALTER TABLE releases ADD COLUMN epoch TEXT")  # before ADR 0061's amendment: the epoch ""
        if "groupings" not in columns:  # before the sixteenth review: no group remembered
            conn.execute("ALTER TABLE releases ADD COLUMN groupings TEXT")
            conn.execute("ALTER TABLE releases ADD COLUMN groups BLOB")

    def remember(self, kind: str, data_model: str, digest: str, binding: str, rows: ReleaseRows,
                 patients: np.ndarray | None, epoch: str = "") -> None:
        """Remember a release (its ends joined to those remembered for the same rows and kind) under the consent
        ``epoch`` (ADR 0061; the earliest it was answered under is kept)."""
        order = np.argsort(rows.keys, kind="stable")
        keys, first = np.unique(rows.keys[order], return_index=True)
        order = order[first]
        ident = (kind, data_model, digest, binding, rows.time_variable, rows.event_variable)
        groupings = list(rows.groupings)
        groups = [] if rows.groups is None else [g[order] for g in np.asarray(rows.groups).reshape(-1, len(rows.keys))]
        with self._lock, self._connect() as conn:
            self._table(conn)
            old = conn.execute("SELECT ends, epoch, groupings, groups FROM releases WHERE kind = ? AND data_model = ? "
                               "AND digest = ? AND binding = ? AND time_variable = ? AND event_variable = ?",
                               ident).fetchone()
            ends = np.unique(np.asarray(rows.ends, dtype=float))
            if old is not None:
                ends = np.union1d(ends, _unpack(old[0], "<f8"))
                epoch = old[1] or ""
                # the same rows released by another grouping (a chain's pools by sex, then by stroke type): both kept
                for name, codes in zip(*_groups_of(old[2], old[3], len(keys))):
                    if name not in groupings:
                        groupings.append(name)
                        groups.append(codes)
            conn.execute("INSERT OR REPLACE INTO releases (kind, data_model, digest, binding, time_variable, "
                         "event_variable, keys, patients, times, levels, ends, epoch, groupings, groups) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (*ident, encode_keys(keys),
                          None if patients is None else _pack(np.asarray(patients)[order], "<u8"),
                          _pack(rows.times[order], "<f8"), _pack(rows.levels[order], "<i2"), _pack(ends, "<f8"),
                          epoch, json.dumps(groupings) if groupings else None,
                          _pack(np.concatenate(groups), "<i2") if groupings else None))

    def releases(self, kind: str, view: EpochView | None = None
                 ) -> list[tuple[str, str, str, ReleaseRows, np.ndarray | None]]:
        """Every remembered release of ``kind``: data model, digest, binding, rows and patients (by row); seen
        through the epoch ``view`` (ADR 0061: one of an earlier consent epoch keeps its rows still held, at
        every node alike; a window's same rows are near already)."""
        with self._lock, self._connect() as conn:
            self._table(conn)
            found = conn.execute("SELECT data_model, digest, binding, time_variable, event_variable, keys, "
                                 "patients, times, levels, ends, epoch, groupings, groups FROM releases "
                                 "WHERE kind = ?", (kind,)).fetchall()
        out = []
        for (model, digest, binding, time_var, event_var, keys, patients, times, levels, ends, epoch, names,
             codes) in found:
            keys = decode_keys(keys)
            names, groups = _groups_of(names, codes, len(keys))
            rows = ReleaseRows(keys, _unpack(times, "<f8"), _unpack(levels, "<i2").astype(np.int64),
                               _unpack(ends, "<f8"), time_var, event_var,
                               np.stack(groups) if groups else None, tuple(names))
            people = _unpack(patients, "<u8")
            kept = None if view is None else view.held_mask(rows.keys, model, ROWS, epoch)
            if kept is not None:
                rows = replace(rows, keys=rows.keys[kept], times=rows.times[kept], levels=rows.levels[kept],
                               groups=None if rows.groups is None else rows.groups[:, kept])
                people = None if people is None else people[kept]
            out.append((model, digest, binding, rows, people))
        return out


def _groups_of(names: str | None, blob: bytes | None, n: int) -> tuple[list[str], list[np.ndarray]]:
    """The remembered groupings of a release and each row's group under each (key order)."""
    if not names or blob is None:
        return [], []
    codes = _unpack(blob, "<i2").astype(np.int64).reshape(-1, n)
    return list(json.loads(names)), list(codes)


def memory(root: str | Path) -> WindowMemory:
    """The node home's window memory (one object per home and process)."""
    return WindowMemory.of_home(root)


def _fine(work: Any, request: Any, code: str | None = None) -> np.ndarray:
    from mipflow.algorithms.survival import fine_grid

    return fine_grid(work.model.variable(request.analysis.y[0] if code is None else code))


def _release_ends(request: Any, work: Any, fine: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The bin ends (time values) the step's release lets anyone form: a pooled masked round's (every
    group's slots), round 0 of pooled bins: every time its rows leave (its bins are not known yet: the
    finest they could be); a per-node release's merged ends (Cox's later rounds: the state's common
    bins); a noisy release on the request's grid: every point of it."""
    aggregates = work.aggregates if isinstance(work.aggregates, dict) else {}
    if is_pooled(work, request):
        slots = aggregates.get("slots")
        if not slots:  # round 0: the pooled bins may end at any point of the fine grid
            return fine
        return fine[sorted({int(e) for s in slots for e, used in zip(s["end"], s["is_end"]) if used})]
    ends: set[int] = set()
    for group in aggregates.get("groups", []) or []:
        if isinstance(group, dict) and group.get("ends") is not None:
            ends.update(int(e) for e in group["ends"])
    if aggregates.get("ends") is not None:
        ends.update(int(e) for e in aggregates["ends"])
    if isinstance(work.state, dict) and work.state.get("ends") is not None:
        ends.update(int(e) for e in work.state["ends"])
    if not ends or work.settings.dp_enabled:  # unmerged counts: every point of the request's grid
        from mipflow.algorithms.survival import request_points

        params = work.algo.params(request.analysis, work.model)
        ends.update(request_points(work.model.variable(request.analysis.y[0]), params["bin_width"], None))
    return fine[sorted(e for e in ends if 0 <= e < len(fine))]


def release_rows(request: Any, work: Any) -> ReleaseRows | None:
    """The step's release as :class:`ReleaseRows` (None: the rows' order is not known).  Rows left on disk
    (Cox, ADR 0062 amendment 16) whose cohorts keep no order: ``work.cohorts`` is given the snapshot's row
    and patient keys in the rows' order (``pooled_counts.step_order``, the order the frame's cohorts keep) and
    the time and event columns are read whole (16 B a row, the frame path's columns of them)."""
    from mipflow.algorithms.streamed import on_disk
    from mipflow.node.controls.pooled_counts import _column, step_order

    cohorts = work.cohorts
    if cohorts.order is None and work.data is not None and on_disk(work.data):
        order, people = step_order(work)
        if order is not None:
            cohorts = work.cohorts = replace(cohorts, order=order, patient_order=people)
    if cohorts.order is None or len(cohorts.order) != len(work.data):
        return None
    time_code, event_code = request.analysis.y[0], request.analysis.y[1]
    fine = _fine(work, request)
    event_var = work.model.variable(event_code)
    # the frame path's ``outcome``: each time's fine point (rounded up; beyond the grid: its last point)
    index = np.searchsorted(fine, _column(work.data, time_code, work.model.variable(time_code)), side="left")
    beyond = index >= len(fine)
    index = np.where(beyond, len(fine) - 1, index).astype(np.int64)
    codes = _column(work.data, event_code, event_var)
    levels = np.full(len(codes), BEYOND, dtype=np.int64)
    for position, level in enumerate(event_var.enumeration_codes):
        levels[codes == str(level)] = position
    levels[beyond] = BEYOND
    times = fine[index]
    groupings, groups = _grouping(request, work)
    return ReleaseRows(np.asarray(cohorts.order, dtype=np.uint64), times, levels,
                       _release_ends(request, work, fine, times), time_code, event_code, groups, groupings)


def _grouping(request: Any, work: Any) -> tuple[tuple[str, ...], np.ndarray | None]:
    """The release's groups (sixteenth review): Kaplan-Meier's curves by the levels of ``x`` give each group's
    counts apart; each row's group is the index of its level (-1: missing, in no curve).  Cox's ``x`` are
    covariates (no counts by group)."""
    if request.algorithm != "kaplan_meier" or not request.analysis.x:
        return (), None
    from mipflow.algorithms.design import category_codes

    code = request.analysis.x[0]
    variable = work.model.variable(code)
    values = category_codes(work.data[code], variable).to_numpy()
    groups = np.full(len(values), -1, dtype=np.int64)
    for position, level in enumerate(variable.enumeration_codes):
        groups[values == str(level)] = position
    return (code,), groups[None, :]


def _compared(mine: ReleaseRows, patients: np.ndarray | None, model: str, other_model: str, other: ReleaseRows,
              other_patients: np.ndarray | None) -> tuple[ReleaseRows, ReleaseRows] | None:
    """The two releases keyed alike: by rows under one data model, by patients across two (ADR 0030)."""
    if model == other_model:
        return mine, other
    if patients is None or other_patients is None:
        return None
    return replace(mine, keys=np.asarray(patients, dtype=np.uint64)), replace(other, keys=other_patients)


def _binding(request: Any, work: Any) -> str:
    """A pooled release's identity here: outside a study its pool chain (ADR 0060: the participants and
    the request but for the grouping), whose earlier pools the chain rule compares with this one at the
    masked round (nested bins, every pooled difference 0 or at least ``nfilter_tab``), so they are not
    compared again by window: a node whose rows grew would otherwise decline the chain's next pool at
    round 0; in a study the binding of ADR 0059 (its snapshot)."""
    if work.study is not None or getattr(work, "transcript", None) is None:
        return _cohort_key(request, work)
    from mipflow.node.controls.pool_chain import chain_key

    return chain_key(request, participants_of(work))


def check_pooled_windows(request: Any, context: Any, work: Any) -> None:
    """After the release is shaped (``check_release``): refuse a survival release near a pooled one in a
    window of time, and decline a pooled release near a per-node one or another binding's (see the
    module docstring).  Keeps the release's rows for :func:`remember_pooled_windows`.

    Raises
    ------
    DisclosureError
        Control ``pooled_bins``.
    """
    if not is_survival(work, request) or not isinstance(work.aggregates, dict):
        return
    mine = release_rows(request, work)
    model = work.cohorts.data_model
    patients = work.cohorts.patient_order
    store = memory(context.home.root)
    view = epoch_view(context, work)  # ADR 0061: releases of an earlier consent epoch by their rows still held
    pooled = is_pooled(work, request)
    own = _binding(request, work) if pooled else None
    settings = work.settings
    if mine is None:  # rows not in order (a longitudinal transformer): any shared row is near
        kinds = (POOLED_RELEASE, PER_NODE_RELEASE) if pooled else (POOLED_RELEASE,)
        for kind in kinds:
            for other_model, _, binding, rows, _ in store.releases(kind, view):
                if other_model == model and (not pooled or binding != own) \
                        and np.isin(work.cohorts.sets[0], rows.keys).any():
                    raise _window_refusal() if not pooled else _declined("these rows were answered before")
        return
    # the same rows' earlier releases of this kind add their ends: together they form every window of both
    kind = POOLED_RELEASE if pooled else PER_NODE_RELEASE
    for other_model, digest, binding, rows, _ in store.releases(kind):
        if (other_model, digest, rows.time_variable) == (model, work.cohorts.digest, mine.time_variable) \
                and (not pooled or binding == own):
            mine = replace(mine, ends=np.union1d(mine.ends, rows.ends))
    work.windows = mine
    against = [(POOLED_RELEASE, r) for r in store.releases(POOLED_RELEASE, view) if not pooled or r[2] != own]
    if pooled:
        against += [(PER_NODE_RELEASE, r) for r in store.releases(PER_NODE_RELEASE, view)]
        _decline_near_counts(context, work, mine)
    for other_kind, (other_model, _, _, rows, other_patients) in against:
        pair = _compared(mine, patients, model, other_model, rows, other_patients)
        if pair is None or not _near_by_cells(pair[1], pair[0], settings.min_row_count, settings.nfilter_tab):
            continue
        if not pooled:
            raise _window_refusal()
        raise _declined("in some window of follow-up time these rows come near rows this node answered "
                        + ("on per-node bins" if other_kind == PER_NODE_RELEASE else "on other pooled bins"))


def _near_by_cells(theirs: ReleaseRows, ours: ReleaseRows, min_row_count: int, nfilter_tab: int) -> bool:
    """Two survival releases near in a window (:func:`near_in_a_window`), over every group; and each release's
    groups apart (sixteenth review: a curve by sex gives its group's counts) by rows within ``min_row_count`` over
    every level, or the same rows of one level (not within ``nfilter_tab``: round 13's honest Kaplan-Meier of the
    elderly differs from the women's deaths by two rows in one window; ADR 0059, sixteenth-review amendment)."""
    if near_in_a_window(theirs, ours, min_row_count, nfilter_tab):
        return True
    mine, other = release_cells(ours), release_cells(theirs)
    return any(near_in_a_window(t, o, min_row_count, 1) for t in other for o in mine
               if t is not other[0] or o is not mine[0])


def _decline_near_counts(context: Any, work: Any, mine: ReleaseRows) -> None:
    """The reverse order of :mod:`mipflow.node.controls.pooled_counts`: a pooled release one of whose cells (rows
    in a window, a level, a group) comes near a set this node counted before is declined; the central site falls
    back to per-node bins.  At round 0 its ends are every fine point.  The sets: the cohort ledger's (counted
    whole) and every set an earlier release counted (:mod:`mipflow.node.controls.counted_memory`: its levels and
    groups, and, when it used this time variable, its rows split at every point: a histogram's bins)."""
    from mipflow.node.controls.counted_memory import counted_memory
    from mipflow.node.controls.pooled_counts import count_near_a_window

    settings, model = work.settings, work.cohorts.data_model
    view = epoch_view(context, work)  # ADR 0061: a cohort of an earlier epoch by its rows still held, alike
    near = False
    ledger = getattr(getattr(context, "differencing", None), "ledger", None)
    for entry in [] if ledger is None else ledger.every_release():
        if entry.data_model == model and count_near_a_window(mine, view.held(entry.rows, entry.data_model, ROWS,
                                                                             entry.epoch),
                                                             None, settings.min_row_count, settings.nfilter_tab):
            near = True
            break
    if not near:
        fine = _fine(work, request=None, code=mine.time_variable)
        for keys, times in counted_memory(context.home.root).sets(model, mine.time_variable, fine, view):
            if count_near_a_window(mine, keys, None, settings.min_row_count, settings.nfilter_tab) or (
                    times is not None and count_near_a_window(mine, keys, times, settings.min_row_count,
                                                              settings.nfilter_tab)):
                near = True
                break
    if near:
        raise _declined("in some window of follow-up time these rows come near rows this node counted in "
                        "another analysis")


def remember_pooled_windows(request: Any, context: Any, work: Any) -> None:
    """After a survival release: its rows by time and its ends (per-node bins: every round; pooled bins:
    the masked round, which binds; round 0 of pooled bins binds nothing, ADR 0059)."""
    rows = getattr(work, "windows", None)
    if rows is None or not is_survival(work, request):
        return
    binding = ""
    if is_pooled(work, request):
        from mipflow.algorithms.sealed import POOLED

        if not (isinstance(work.state, dict) and POOLED in work.state):
            return
        binding = _binding(request, work)
    memory(context.home.root).remember(POOLED_RELEASE if binding else PER_NODE_RELEASE, work.cohorts.data_model,
                                       work.cohorts.digest, binding, rows, work.cohorts.patient_order,
                                       epoch=epoch_view(context, work).epoch)
