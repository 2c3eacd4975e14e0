"""A pooled survival release less another algorithm's count of the other hospitals' rows (ADR 0059, fourteenth review).

A pooled Kaplan-Meier over ``{A, B, C}`` (ADR 0052) releases, for every window ``W = (e1, e2]`` between two
of its bin ends (``-inf``, ``+inf`` included) and every level ``L`` of the event variable, the pooled count
``A(W, L) + B(W, L) + C(W, L)`` in which no node's part is released.  ADR 0059 and its thirteenth-review
amendment keep every later *survival* release of the bound rows from giving ``B(W, L)``.  A count is a
count whatever algorithm releases it: descriptive statistics at B of ``death_90d = yes AND followup_days
<= e`` is ``B((-inf, e], yes)`` exactly, and pooled less B's and C's is A's own deaths by ``e`` (one death,
fourteenth review).

So at a node holding a pooled release ``R`` of rows ``C_R``, every other release is read as counts of the
**sets** of rows it lets anyone form (:func:`count_near_a_window`): its cohort, the part of it where each
of its variables is present, each level of each nominal variable it uses, and the groups it declares
(``Algorithm.released_groups``: cells and margins); and, when it uses ``R``'s time variable, each set's
rows leaving in every window of ``R`` (a histogram of follow-up time may put its edges anywhere: taken as
every point).  It is refused when some set ``Y`` and some bound cell ``S = R(W, L)`` (``L`` one level, or
every level) share a row and differ by fewer than the threshold each way: ``nfilter_tab`` for one level,
``min_row_count`` for every level (the thresholds of the survival rule).  Exempt: ``C_R`` itself over the
whole follow-up (its size is the ``group_n`` the pooled release gave per node in the clear), and near it the
cohort ledger decides (ADR 0013).  A release by group (Kaplan-Meier's curves by sex) gives each group's cells
too: ``R_g(W, L)`` is compared like ``R(W, L)``, and a set that is one whole group is exempt like ``C_R``
(sixteenth review, hole 1: B's and C's women who died less the pooled women's curve).

Why this suffices for one set and one bound release: the attacker's subtraction ``pooled(W, L) - sum over
the other nodes of their count of Y`` is A's part plus, per node, ``|Y \\ S| - |S \\ Y|``; a node that
answers only sets at least the threshold from every bound cell leaves that error unknown and at least the
threshold in rows at that node.  Only the tightest windows need to be looked at: shrinking ``W`` to the bins
of ``R`` holding rows of ``Y ∩ S`` keeps ``|Y ∩ S|`` and does not increase either difference.

Cost: per set, bound release and level, ``O(P^2)`` windows, ``P`` the bins of ``R`` holding the set's bound
rows of that level (at most the set's size), in blocks of :data:`BLOCK_CELLS`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.survival_windows import ReleaseRows, group_masks

#: The most window counts held at once.
BLOCK_CELLS = 1 << 22


def _near_windows(r_bins: np.ndarray, s_bins: np.ndarray, y_bins: np.ndarray | None, y_total: int, bins: int,
                  threshold: int, exempt_full: bool) -> bool:
    """Whether some window ``[lo, hi]`` of bins (``lo``, ``hi`` bins holding shared rows) has shared rows
    and both one-sided differences below ``threshold``.  ``r_bins``: the bound cell's rows' bins;
    ``s_bins``: the shared rows' bins (by the bound times); ``y_bins``: the set's rows' bins (None: the set
    is counted whole, ``y_total``)."""
    if not len(s_bins):
        return False
    r_cum = np.concatenate([[0], np.cumsum(np.bincount(r_bins, minlength=bins))])
    s_cum = np.concatenate([[0], np.cumsum(np.bincount(s_bins, minlength=bins))])
    y_cum = None if y_bins is None else np.concatenate([[0], np.cumsum(np.bincount(y_bins, minlength=bins))])
    points = np.unique(s_bins)
    his = points[None, :]
    rows = max(1, BLOCK_CELLS // len(points))
    for start in range(0, len(points), rows):
        los = points[start:start + rows, None]
        shared = s_cum[his + 1] - s_cum[los]
        bound = r_cum[his + 1] - r_cum[los]
        counted = (y_total if y_cum is None else y_cum[his + 1] - y_cum[los])
        near = (his >= los) & (shared > 0) & (counted - shared < threshold) & (bound - shared < threshold)
        if exempt_full:
            near &= ~((los == 0) & (his == bins - 1))
        if near.any():
            return True
    return False


def count_near_a_window(bound: ReleaseRows, keys: np.ndarray, times: np.ndarray | None, min_row_count: int,
                        nfilter_tab: int) -> bool:
    """Whether a set of rows counted by a release comes near a bound cell of a pooled release (see the module
    docstring).

    Parameters
    ----------
    bound : ReleaseRows
        The pooled release's rows (keyed like ``keys``), their leaving times on the fine grid, levels and the
        release's bin ends.
    keys : numpy.ndarray of uint64, shape (n,)
        The set's rows (any order; repeats counted once).
    times : numpy.ndarray of float, shape (n,), optional
        The set's rows' leaving times on the same grid, when the release lets anyone split the set by the
        bound release's time variable (NaN: a row in no window); None: the set is counted whole.
    min_row_count, nfilter_tab : int
        The thresholds for every level and for one level.

    Returns
    -------
    bool
    """
    min_row_count, nfilter_tab = max(int(min_row_count), 1), max(int(nfilter_tab), 1)
    keys = np.asarray(keys, dtype=np.uint64)
    if not len(keys) or not len(bound.keys):
        return False
    keys, first = np.unique(keys, return_index=True)
    b_keys, b_first = np.unique(np.asarray(bound.keys, dtype=np.uint64), return_index=True)
    groups = [m[b_first] for m in group_masks(bound)]  # the release's groups, in key order
    if times is None and any(np.array_equal(keys, b_keys[m]) for m in [np.ones(len(b_keys), bool), *groups]):
        return False  # the bound cohort or one of its groups itself: its size per node is public (group_n)
    inside = np.isin(b_keys, keys, assume_unique=True)
    shared_total = int(inside.sum())
    if not shared_total:
        return False
    if times is None and len(keys) - shared_total >= max(min_row_count, nfilter_tab):
        return False  # too many rows outside every bound cell
    edges = np.unique(np.asarray(bound.ends, dtype=float))
    bins = len(edges) + 1  # bin k: (edges[k-1], edges[k]]; the last: beyond every end
    b_times = np.asarray(bound.times, dtype=float)[b_first]
    b_levels = np.asarray(bound.levels, dtype=np.int64)[b_first]
    b_bin = np.searchsorted(edges, b_times, side="left")
    y_bin = None
    if times is not None:
        y_times = np.asarray(times, dtype=float)[first]
        y_bin = np.searchsorted(edges, y_times[~np.isnan(y_times)], side="left")
    levels: list[int | None] = [None, *np.unique(b_levels).tolist()]
    for part in [np.ones(len(b_keys), dtype=bool), *groups]:  # over every group, then each group apart
        for level in levels:
            cell = part if level is None else part & (b_levels == level)
            threshold = min_row_count if level is None else nfilter_tab
            if _near_windows(b_bin[cell], b_bin[cell & inside], y_bin, len(keys), bins, threshold,
                             exempt_full=level is None):
                return True
    return False


# --------------------------------------------------------------------------- the step's control


def count_refusal() -> DisclosureError:
    """A release whose counts subtract from a pooled survival release; names the rule, no count, no value."""
    return DisclosureError(
        "pooled time bins (ADR 0052, 0059 fourteenth-review amendment): this analysis counts rows (its cohort, "
        "a level or group of it, or its rows in a window of follow-up time) that come within nfilter_tab rows "
        "(min_row_count over every level of the event variable) of the rows of a cohort, or of one group of its "
        "curves, this node released in a survival analysis on time bins pooled with other nodes, leaving follow-up "
        "in one window of time: its counts here and at the other nodes would subtract from the pooled one to another hospital's own counts. Describe "
        "the survival cohort as a whole or by a variable other than its follow-up time and event (sex, age), choose "
        "a cohort that differs from it in every part of follow-up (a filter on the follow-up time or on the event "
        "variable does not), or run this analysis in explore mode or a study",
        control="pooled_bins")


def _column(data: Any, code: str, variable: Any) -> np.ndarray:
    """A column of the local step's rows: float values (NaN missing) of a numerical variable, enumeration
    codes (None missing) of a categorical one, from a frame or from rows on disk."""
    from mipflow.algorithms.streamed import on_disk

    if on_disk(data):
        values = data.reader([code])(len(data))[0]
        stored = data.levels_of(code)
        if stored is None:
            return np.asarray(values, dtype=float).copy()
        table = np.array(list(stored) + [None], dtype=object)
        codes = np.asarray(values, dtype=np.int64)
        return table[np.where((codes >= 0) & (codes < len(stored)), codes, len(stored))]
    from mipflow.algorithms.design import category_codes, numeric_values

    if variable.is_categorical:
        return category_codes(data[code], variable).to_numpy(dtype=object)
    return numeric_values(data[code])


def step_order(work: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The local step's rows' ledger keys and patient keys in its rows' order (None, None: not known): the
    cohorts' order, or for a complete-case selection left on disk whose cohorts kept none (ADR 0062: split by
    nothing) the snapshot's keys of its rows, read a block at a time: the order its frame's cohorts keep."""
    from mipflow.algorithms.streamed import on_disk

    cohorts, data = work.cohorts, work.data
    if data is None:
        return None, None
    if cohorts.order is not None and len(cohorts.order) == len(data):
        return np.asarray(cohorts.order, dtype=np.uint64), \
            None if cohorts.patient_order is None else np.asarray(cohorts.patient_order)
    if cohorts.order is None and on_disk(data) and getattr(work.algo, "complete_case", False):
        kept = getattr(work, "disk_order", None)  # read once a step (the count rule and the memory both ask)
        if kept is None or kept[0] is not data:
            kept = (data, data.keys("row_key"), data.keys("pid_key"))  # ADR 0062, amendment 11
            work.disk_order = kept
        return kept[1], kept[2]
    return None, None


def counted_sets(request: Any, work: Any) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """The sets of rows a release counts, as ``(rows in the local step's order, patients, row mask or None)``:
    every cohort of the selection; with the rows' order known, the cohort where each variable of the request
    is present and at each level of each nominal one; the groups the algorithm declares (cells and margins).
    The mask (over the local step's rows) is given where the set's rows are known in that order."""
    return [(keys, patients, mask) for keys, patients, mask, _ in counted_sets_unique(request, work)]


def counted_sets_unique(request: Any, work: Any
                        ) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]]:
    """:func:`counted_sets`, each with its rows' sorted unique keys (``numpy.unique`` of them, which tells the
    sets apart): found by a sort (:func:`~mipflow.node.controls.ledger.sorted_unique`), and once for every set
    whose mask keeps every row (their rows are the step's rows, whatever the variable)."""
    from mipflow.node.controls.ledger import sorted_unique

    cohorts, data = work.cohorts, work.data
    sets: list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = []
    for i, keys in enumerate(cohorts.sets):
        sets.append((keys, None if cohorts.patients is None else cohorts.patients[i], None))
    order, people = step_order(work)
    first = len(sets)
    if order is not None:
        sets[0] = (sets[0][0], sets[0][1], np.ones(len(order), dtype=bool))
        for code in work.variables:
            try:
                variable = work.model.variable(code)
                values = _column(data, code, variable)
            except (KeyError, ValueError):
                continue
            masks = [np.array([v is not None for v in values], dtype=bool) if variable.is_categorical
                     else ~np.isnan(values)]
            if variable.is_categorical:
                masks += [values == level for level in {v for v in values if v is not None}]
            for mask in masks:
                mask = np.asarray(mask, dtype=bool)
                if bool(mask.all()):  # every row (a complete-case selection): the rows as they are, not a copy
                    sets.append((order, people, mask))
                else:
                    sets.append((order[mask], None if people is None else people[mask], mask))
    from_order = range(first, len(sets))  # the variables' sets: order[mask]
    release = getattr(work, "groups", None)
    for group in () if release is None else release.groups:
        sets.append((group.rows, group.patients, None))
    seen, out = set(), []
    every: np.ndarray | None = None  # the unique keys of the step's rows, for the masks keeping all of them
    for index, (keys, patients, mask) in enumerate(sets):
        if index in from_order and mask is not None and len(mask) == len(order) and bool(mask.all()):
            if every is None:
                every = sorted_unique(order)
            unique = every
        else:
            unique = sorted_unique(keys)
        ident = unique.tobytes()
        if ident not in seen:
            seen.add(ident)
            out.append((keys, patients, mask, unique))
    return out


def _times(work: Any, time_variable: str) -> np.ndarray | None:
    """The local step's rows' values of ``time_variable`` rounded up to its fine grid (NaN: missing), when
    the request uses it; None otherwise."""
    if time_variable not in work.variables:
        return None
    from mipflow.algorithms.survival import fine_grid

    variable = work.model.variable(time_variable)
    values = _column(work.data, time_variable, variable)
    fine = fine_grid(variable)
    index = np.minimum(np.searchsorted(fine, values, side="left"), len(fine) - 1)
    return np.where(np.isnan(values), np.nan, fine[index])


def check_pooled_counts(request: Any, context: Any, work: Any) -> None:
    """After ``check_pooled_windows``: a release other than a survival one (any algorithm) whose counted sets
    come near a cell of a pooled survival release this node answered is refused (see the module docstring).
    Explore releases are exempt (keyed noise, ADR 0059).

    Raises
    ------
    DisclosureError
        Control ``pooled_bins``.
    """
    from mipflow.node.controls.pooled_bins import POOLED_RELEASE, SURVIVAL_ALGORITHMS
    from mipflow.node.controls.pooled_windows import memory

    if work.explore is not None or work.cohorts is None or request.algorithm in SURVIVAL_ALGORITHMS:
        return
    from mipflow.node.controls.pooled_bins import epoch_view

    # ADR 0061: a binding of an earlier consent epoch by its rows still held, so holders and others decide alike
    bound = memory(context.home.root).releases(POOLED_RELEASE, epoch_view(context, work))
    if not bound:
        return
    model, settings = work.cohorts.data_model, work.settings
    sets = counted_sets(request, work)
    order = step_order(work)[0] if any(mask is not None for _, _, mask in sets) else None
    times: dict[str, np.ndarray | None] = {}
    for other_model, _, _, rows, patients in bound:
        if other_model != model and patients is None:
            continue
        if rows.time_variable not in times:
            times[rows.time_variable] = _times(work, rows.time_variable) if other_model == model else None
        for keys, people, mask in sets:
            if other_model == model:
                split = None if mask is None else times[rows.time_variable]
                if count_near_a_window(rows, keys, None, settings.min_row_count, settings.nfilter_tab) or (
                        split is not None and count_near_a_window(rows, order[mask],
                                                                  split[mask], settings.min_row_count,
                                                                  settings.nfilter_tab)):
                    raise count_refusal()
            elif people is not None:  # another data model: by patients (ADR 0030), counted whole
                from dataclasses import replace

                if count_near_a_window(replace(rows, keys=patients), people, None, settings.min_row_count,
                                       settings.nfilter_tab):
                    raise count_refusal()
