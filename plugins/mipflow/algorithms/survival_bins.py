"""Safe bins of the survival algorithms: the merges that make a node's counts releasable.

Counts per point of a time variable's fine grid (events, censorings, or any series of counts) are
merged into adjacent bins until every count of every series is zero or at least ``min_count``:
:func:`safe_bins` (one forward scan), :func:`nested_bins` (top down on nested power-of-two blocks,
so that two nodes' or two groups' bins share their ends where the data are sparse), and from them a
cohort's canonical bins (:func:`canonical_bins`, :func:`cohort_bins`).  Pure functions of the
counts: no request parameter enters them (ADR 0008).  :mod:`mipflow.algorithms.survival` holds the
grids, the outcome coding and the release shaping around them.
"""
from __future__ import annotations

import hashlib
import threading
from typing import Any, Mapping, Sequence

import numpy as np


def safe_bins(events: Sequence[int], censored: Sequence[int], min_count: int
              ) -> tuple[list[int], list[int], list[int]]:
    """Merge adjacent grid points until no count is in ``(0, min_count)``.

    Scans forward, closing a bin as soon as both its event and its censoring
    count are zero or at least ``min_count``; a small remainder at the end is
    merged backwards into the bins before it.  If all rows together still give
    a small count, that one bin is returned as it is (the disclosure control
    then refuses the release).

    Then every at-risk count the central side can derive (rows whose time is
    in this bin or later) is zero or at least ``min_count`` too, and so is
    every difference between two of them.

    Returns
    -------
    ends : list of int
        Grid index of each merged bin's last point; the last is ``len(events) - 1``.
    merged_events, merged_censored : list of int
        Counts per merged bin.
    """
    ends = _safe_runs([(int(d), int(c)) for d, c in zip(events, censored)], min_count)
    return ends, bin_counts(events, ends), bin_counts(censored, ends)


def _safe_runs(columns: Sequence[Sequence[int]] | np.ndarray, min_count: int) -> list[int]:
    """:func:`safe_bins` over any number of count series (``columns``: per piece, its count in each series):
    the indices of the pieces that close a merged bin, every series' count in every merged bin zero or
    at least ``min_count`` (a small remainder merged backwards; one bin if the totals are small).

    Counts are never negative, so only the pieces with a count decide anything: an empty piece closes
    at once when no bin is open and joins the open bin otherwise.  The scan therefore visits the
    non-empty pieces only (survival counts on a fine grid are mostly empty)."""
    pieces = np.asarray(columns, dtype=np.int64)
    total = pieces.shape[0]
    pieces = pieces.reshape(total, -1)

    def ok(values: list[int]) -> bool:
        return all(v == 0 or v >= min_count for v in values)

    busy = np.flatnonzero(pieces.any(axis=1)).tolist()
    closing: list[int] = []
    sums: list[list[int] | None] = []  # None: an empty bin
    open_: list[int] | None = None
    previous = -1
    for k, column in zip(busy, pieces[busy].tolist()):
        if open_ is None:
            closing.extend(range(previous + 1, k))
            sums.extend([None] * (k - previous - 1))
            open_ = column
        else:
            open_ = [a + b for a, b in zip(open_, column)]
        if ok(open_):
            closing.append(k)
            sums.append(open_)
            open_ = None
        previous = k
    if open_ is None:
        closing.extend(range(previous + 1, total))
        sums.extend([None] * (total - previous - 1))
    while open_ is not None and not ok(open_) and closing:
        closing.pop()
        merged = sums.pop()
        if merged is not None:
            open_ = [a + b for a, b in zip(open_, merged)]
    if open_ is not None or not closing or closing[-1] != total - 1:
        closing.append(total - 1)
    return closing


def nested_bins(series: Sequence[Sequence[int]], min_count: int, allowed: Sequence[int] | None = None
                ) -> tuple[list[int], list[int]]:
    """Bins of the fine grid, merged top down on nested blocks, in which **every** series' count is zero
    or at least ``min_count``; with ``allowed``, bins end only at those fine indices (a coarsening of
    the bins that gave them).

    Level ``B`` (a power of two) cuts the fine grid at the indices that are multiples of ``B`` (and at
    its last index).  From one bin over the whole grid (the coarsest level, one block), each level in
    turn cuts every bin of the level above at its multiples of ``B`` (among ``allowed``) and merges the
    pieces back with :func:`_safe_runs`, down to ``B = 1``.  Every bin end of a level stays a bin end
    below it, so the bins of level ``B`` are a coarsening of the final bins and their ends are multiples
    of ``B``: where the data are sparse, bins close at round indices, so the bins of two nodes share
    their ends far more often than bins closed at the first index where the counts allow it.  If the
    totals are small, one bin.

    Returns
    -------
    ends : list of int
        Fine index of each bin's last point; the last is the grid's last index.
    levels : list of int
        For each end, the largest ``B`` whose bins end there.
    """
    matrix = np.ascontiguousarray(np.asarray(series, dtype=np.int64).reshape(len(series), -1))
    digest = hashlib.blake2b(matrix.tobytes(), digest_size=16)
    digest.update(repr((matrix.shape, min_count)).encode())
    if allowed is not None:
        digest.update(np.asarray(list(allowed), dtype=np.int64).tobytes())
    key = digest.digest()
    with _NESTED_LOCK:
        found = _NESTED_MEMO.get(key)
    if found is None:
        found = _nested_bins(matrix, min_count, allowed)
        with _NESTED_LOCK:
            while len(_NESTED_MEMO) >= _NESTED_MEMO_SIZE:
                del _NESTED_MEMO[next(iter(_NESTED_MEMO))]
            _NESTED_MEMO[key] = found
    ends, levels = found
    return list(ends), list(levels)


#: Recent :func:`nested_bins` answers by a digest of their input: a cohort asked again (another
#: ``bin_width`` or ``max_time``, a later round) merges the same counts to the same bins.
_NESTED_MEMO: dict[bytes, tuple[tuple[int, ...], tuple[int, ...]]] = {}
_NESTED_MEMO_SIZE = 64
_NESTED_LOCK = threading.Lock()


def _nested_bins(matrix: np.ndarray, min_count: int, allowed: Sequence[int] | None
                 ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """:func:`nested_bins` without the memo."""
    n = matrix.shape[1]
    cum = np.zeros((matrix.shape[0], n + 1), dtype=np.int64)
    np.cumsum(matrix, axis=1, out=cum[:, 1:])
    busy = np.concatenate([[0], np.cumsum(matrix.any(axis=0))])  # points with a count, cumulated
    permitted = None
    if allowed is not None:
        permitted = np.zeros(n, dtype=bool)
        permitted[np.asarray(list(allowed), dtype=np.int64)] = True
    top = 1
    while top < n - 1:
        top *= 2
    parts = [(0, n - 1)]
    level = {n - 1: top}
    block = top
    while block > 1:
        block //= 2
        refined = []
        for lo, hi in parts:
            cuts = np.arange(-(-lo // block) * block, hi, block)
            if permitted is not None:
                cuts = cuts[permitted[cuts]]
            if not len(cuts):
                refined.append((lo, hi))
                continue
            cuts = np.append(cuts, hi)
            if busy[hi + 1] == busy[lo]:  # no counts here: every piece is a bin of its own
                closing = range(len(cuts))
            else:
                starts = np.concatenate([[lo], cuts[:-1] + 1])
                closing = _safe_runs((cum[:, cuts + 1] - cum[:, starts]).T, min_count)
            start = lo
            for c in cuts[list(closing)].tolist():
                level.setdefault(c, block)
                refined.append((start, c))
                start = c + 1
        parts = refined
    ends = tuple(hi for _, hi in parts)
    return ends, tuple(level[e] for e in ends)


def bin_counts(counts: Sequence[int], ends: Sequence[int]) -> list[int]:
    """Fine counts summed into the bins that end at ``ends`` (fine indices, the last the grid's last)."""
    cum = np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))])
    edges = np.asarray([-1, *ends], dtype=np.int64) + 1
    return [int(v) for v in cum[edges[1:]] - cum[edges[:-1]]]


def canonical_bins(events: Sequence[int], censored: Sequence[int], min_count: int
                   ) -> tuple[list[int], list[int], list[int], list[int]]:
    """A group's canonical bins on the fine grid (:func:`nested_bins` on its events and censorings).

    Every count is zero or at least ``min_count`` unless the whole group's are not (then one bin, as
    :func:`safe_bins`).  The empty bins after the last rows are merged into the last bin with rows
    (:func:`close_tail`).

    Returns
    -------
    ends : list of int
        Fine index of each bin's last point; the last is ``len(events) - 1``.
    merged_events, merged_censored : list of int
    levels : list of int
        For each end, the largest ``B`` whose bins end there.
    """
    ends, levels = nested_bins([events, censored], min_count)
    events_out, censored_out = bin_counts(events, ends), bin_counts(censored, ends)
    if min_count > 1:
        kept, events_out, censored_out = close_tail(ends, events_out, censored_out)
        levels = [*levels[:len(kept) - 1], levels[-1]]
        ends = kept
    return ends, events_out, censored_out, levels


def cohort_bins(groups: Sequence[Mapping[str, Any]], min_count: int, bin_count: int | None = None
                ) -> tuple[list[int], list[int]]:
    """The bins one standard-mode release of a cohort's groups shares (ADR 0008, "one partition per
    cohort"): nested coarsenings of one another, each a function of the cohort's rows and the request's
    event variable and grouping only:

    1. ``L``: :func:`nested_bins` of the rows leaving follow-up (events and censorings of every group
       together), the same whatever the event variable, its level or the grouping;
    2. ``P``: ``L``'s bins merged until the cohort's count of **every level of the event variable** (and
       of the rows followed beyond the grid) is zero or at least ``min_count`` (each group's ``series``,
       :func:`leaving_series`; without them, its events and censorings): the ungrouped release's bins,
       the same whatever the grouping and whichever level is the event (a level's censorings are the
       other series summed);
    3. with two or more groups, ``P``'s bins merged until every group's series are, **shared by all
       the groups of the release**;
    4. with ``bin_count`` above ``min_count`` (Cox regression: ``min_row_count``, ADR 0046), those bins
       merged further until every count is zero or at least ``bin_count``: a coarsening of the above.

    So the cumulative counts of a cohort that any two releases give (summed over their groups) are at
    ends of ``P`` (of ``L`` across event variables), and the difference of two is a sum of ``P``'s
    (``L``'s) counts; and within a release, a group's complement (the cohort less the group) has the
    group's ends too.  The empty bins after the last rows are merged into the last bin with rows.

    Returns the ends (fine indices; the last the grid's last) and their levels (:func:`nested_bins`).
    """
    events = [np.asarray(g["events"], dtype=np.int64) for g in groups]
    censored = [np.asarray(g["censored"], dtype=np.int64) for g in groups]
    total_events, total_censored = np.sum(events, axis=0), np.sum(censored, axis=0)
    if all(g.get("series") is not None for g in groups):
        series = [[np.asarray(v, dtype=np.int64) for v in g["series"]] for g in groups]
    else:
        series = [[e, c] for e, c in zip(events, censored)]
    totals = [np.sum(column, axis=0) for column in zip(*series)]
    ends, levels = nested_bins([total_events + total_censored], min_count)
    ends, levels = nested_bins(totals, min_count, allowed=ends)
    if len(groups) > 1:
        ends, levels = nested_bins([v for g in series for v in g], min_count, allowed=ends)
    if bin_count is not None and bin_count > min_count:
        ends, levels = nested_bins([v for g in series for v in g], bin_count, allowed=ends)
    if min_count > 1:
        kept, _, _ = close_tail(ends, bin_counts(total_events, ends), bin_counts(total_censored, ends))
        levels = [*levels[:len(kept) - 1], levels[-1]]
        ends = kept
    return ends, levels


def close_tail(ends: list[int], events: list[int], censored: list[int]) -> tuple[list[int], list[int], list[int]]:
    """The empty bins after the last bin with rows merged into it: that bin ends at the last point, not
    at the time its last row leaves (the group's longest follow-up, a raw extreme; with ``nfilter_tab``
    1 a node releases single rows' times anyway, and the bins are left as they are)."""
    last = max((k for k, (d, c) in enumerate(zip(events, censored)) if d or c), default=len(ends) - 1)
    return [*ends[:last], ends[-1]], events[:last + 1], censored[:last + 1]


def finest_partition(counts: np.ndarray, tab: int) -> list[int]:
    """The most merged bins (ends: grid points) such that every cell whose total is at least ``tab``
    holds 0 or at least ``tab`` rows in every bin: :func:`~mipflow.node.controls.study_survival.partition`'s rule, with the most bins any
    partition under it has (dynamic programming over the points that hold rows; empty points join
    the bin of the next point with rows, the last bin ends at the last point).

    :func:`~mipflow.node.controls.study_survival.partition`'s forward scan closes a bin only when every cell is safe at once, and a small
    remainder at the end is merged back into the bins before it: with many cells (a family's cohorts,
    differences and levels) it often keeps one or two bins where this keeps hundreds.  The rule and
    so the guarantee are the same.  Deterministic (the earliest start among equally fine
    partitions).  Cost: about ``cells * busy^2 / 2`` comparisons for ``busy`` points holding rows.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n_points = counts.shape[1]
    watched = counts[counts.sum(axis=1) >= tab]
    busy = np.flatnonzero(watched.any(axis=0)) if len(watched) else np.array([], dtype=np.int64)
    if len(busy) <= 1:
        return [n_points - 1]
    columns = watched[:, busy]
    cum = np.zeros((len(watched), len(busy) + 1), dtype=np.int64)
    np.cumsum(columns, axis=1, out=cum[:, 1:])
    best = np.full(len(busy) + 1, -1, dtype=np.int64)
    best[0] = 0
    start = np.zeros(len(busy) + 1, dtype=np.int64)
    for j in range(1, len(busy) + 1):
        segment = cum[:, j:j + 1] - cum[:, :j]  # every cell's rows in (busy[i - 1], busy[j - 1]], per start i
        ok = np.all((segment == 0) | (segment >= tab), axis=0) & (best[:j] >= 0)
        if ok.any():
            candidates = np.where(ok, best[:j], -1)
            i = int(np.argmax(candidates))
            best[j], start[j] = candidates[i] + 1, i
    ends: list[int] = []
    j = len(busy)
    while j > 0:
        ends.append(int(busy[j - 1]))
        j = int(start[j])
    ends.reverse()
    ends[-1] = n_points - 1
    return ends


def refine_partition(counts: np.ndarray, coarse: Sequence[int], tab: int) -> list[int]:
    """The finest partition under :func:`finest_partition`'s rule for the cells ``counts`` (cells, grid
    points) that keeps every end of the partition ``coarse`` (grid points, the last the grid's last):
    :func:`finest_partition` within each of ``coarse``'s bins.

    A refinement, so every bin of ``coarse`` is a union of bins of the result.  Where ``coarse`` keeps
    every cell of ``counts`` at 0 or at least ``tab`` in each of its bins (it was derived with these
    cells among others, ADR 0056), a cell watched over the whole grid (total at least ``tab``) is
    watched in every bin of ``coarse`` in which it has rows, so the result keeps it safe in each of its
    bins too.

    Raises
    ------
    ValueError
        If a watched cell holds 1 to ``tab - 1`` rows in a bin of ``coarse`` (no refinement is safe).
    """
    counts = np.asarray(counts, dtype=np.int64)
    watched = counts[counts.sum(axis=1) >= tab]
    ends: list[int] = []
    start = 0
    for end in (int(e) for e in coarse):
        segment = counts[:, start:end + 1]
        held = watched[:, start:end + 1].sum(axis=1)
        if np.any((held > 0) & (held < tab)):
            raise ValueError("the coarse partition does not keep the cells safe: it cannot be refined under the rule")
        ends += [start + e for e in finest_partition(segment, tab)] if segment.size else [end]
        start = end + 1
    return ends
