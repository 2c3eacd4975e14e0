"""Time windows of two survival releases: where one release's counts subtract from the other's (ADR 0059, amended).

A survival release (Kaplan-Meier, Cox, log-rank) of a cohort counts, per bin of time, the rows leaving
follow-up there, by level of the event variable (events and censorings), and the rows still at risk.
Every number it gives, and every sum of its numbers, counts the rows of the cohort whose (rounded-up)
leaving time lies in a **window** ``(e1, e2]`` between two of its bin ends, ``-inf`` and ``+inf``
included (at risk at a bin end: the rows leaving after the previous one), and whose level lies in a
set of levels.  Two releases of a node's rows on different bins (the pooled release of cohort ``C``,
a per-node release of ``C'``) together give every window between ends of either (the counts of one
between its ends, of the other between its own, and their differences where both are known).  So
what one release's counts in a window hide (another hospital's part of a pooled count) the other
may cancel, whatever the two cohorts' difference over the whole follow-up: the rows they do not
share may all leave outside the window (twelve patients censored at day 420 and weeks 0-12).

:func:`near_in_a_window` says whether two releases' rows come within ``threshold`` rows of each other
in some window and some level of the event variable: both one-sided differences below ``threshold``
and at least one row shared (ADR 0059's nearness, applied to the rows leaving in each window).  The
windows are every union of consecutive bins of the partition by **both** releases' ends; counts of
the rows of one level in window ``W`` are additive over levels and over disjoint windows, so when no
(window, level) is near, no union of levels (a release's censorings: every level but the event's,
its at-risk numbers: every level) in any window is near either, nor any sum of disjoint windows (a
release cut at ``max_time`` folds the later rows into its last bin's censorings).

Cost: with ``M`` bins holding rows (at most the number of distinct ends plus one), ``O(M^2)`` window
counts per level, computed in blocks of :data:`BLOCK_CELLS` from cumulative counts of the rows of
``C``, of ``C'`` and of the rows both share (a row shared but leaving at other times in the two, after
a correction, counts as shared only in windows holding both of its times).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

#: The level given to rows followed beyond the time grid (censored at its last point whatever the event).
BEYOND = -1
#: The most window counts held at once (rows of the block times bins).
BLOCK_CELLS = 1 << 22


@dataclass(frozen=True)
class ReleaseRows:
    """One survival release's rows at the node, as its counts see them; never leaves the node.

    Attributes
    ----------
    keys : numpy.ndarray of uint64, shape (n,)
        The rows' identities (keyed row hashes; patients' keyed hashes to compare across data models).
    times : numpy.ndarray of float, shape (n,)
        Each row's leaving time rounded up to the fine grid (rows followed beyond it: its last point).
    levels : numpy.ndarray of int, shape (n,)
        Each row's level of the event variable (index in its enumeration), :data:`BEYOND` beyond the grid.
    ends : numpy.ndarray of float, shape (k,)
        The release's bin ends (time values), every one any release of these rows on these bins gave.
    time_variable, event_variable : str
        The variables of ``y``: windows compare releases on the same time variable, levels on the
        same event variable.
    groups : numpy.ndarray of int, shape (g, n), optional
        Each row's group (the index of its level, -1: in no group) under each of ``groupings``: the
        grouping variables of the release's curves (Kaplan-Meier's ``x``), whose groups' counts it gives
        apart (sixteenth review); None: no grouping.
    groupings : tuple of str
        The grouping variables, one per row of ``groups``.
    """

    keys: np.ndarray
    times: np.ndarray
    levels: np.ndarray
    ends: np.ndarray
    time_variable: str
    event_variable: str
    groups: np.ndarray | None = None
    groupings: tuple[str, ...] = ()


def group_masks(rows: ReleaseRows) -> list[np.ndarray]:
    """One mask over ``rows`` per group the release gives apart (every grouping, every level present)."""
    if rows.groups is None:
        return []
    groups = np.asarray(rows.groups, dtype=np.int64).reshape(-1, len(rows.keys))
    return [codes == code for codes in groups for code in np.unique(codes[codes >= 0]).tolist()]


def release_cells(rows: ReleaseRows) -> list[ReleaseRows]:
    """The release as the windows rule compares it: its rows over every group, then each group's rows alone
    (a release by group gives each group's counts in every window: bound cells of their own)."""
    bare = replace(rows, groups=None, groupings=())
    return [bare] + [replace(bare, keys=rows.keys[m], times=np.asarray(rows.times)[m],
                             levels=np.asarray(rows.levels)[m]) for m in group_masks(rows)]


def _first_of_each(keys: np.ndarray) -> np.ndarray:
    """Positions of the first row of each distinct key, in key order."""
    _, first = np.unique(keys, return_index=True)
    return first


def _shared_counts_block(low: np.ndarray, high: np.ndarray, start: int, stop: int, bins: int,
                         carry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shared rows in every window ``[lo, hi]`` (bins) for ``lo`` in ``[start, stop)``: the rows whose
    earlier bin ``low`` is at least ``lo`` and later bin ``high`` at most ``hi``.  ``carry``: the counts
    for ``lo = stop`` (shape (bins,)).  Returns the block (stop - start, bins) and the carry for ``start``."""
    block = np.zeros((stop - start, bins), dtype=np.int64)
    inside = (low >= start) & (low < stop)
    np.add.at(block, (low[inside] - start, high[inside]), 1)
    block = np.cumsum(block, axis=1)                      # rows starting at lo, ending at or before hi
    block = np.cumsum(block[::-1], axis=0)[::-1] + carry  # rows starting at or after lo
    return block, block[0].copy()


def _formable_edges(edges: np.ndarray, ends: np.ndarray, times: np.ndarray, levels: np.ndarray,
                    level: int | None) -> np.ndarray:
    """For each edge of the partition by both releases' ends: whether one release's cumulative count (of
    ``level``; None: every level) up to it is known from that release: the edge is one of its ``ends``,
    or the release's bin holding the edge holds none of its rows of that level (the count is that at
    the bin's lower end).  Shape (len(edges),)."""
    ends = np.unique(np.asarray(ends, dtype=float))
    where = np.searchsorted(ends, edges, side="left")
    is_end = (where < len(ends)) & (ends[np.minimum(where, max(len(ends) - 1, 0))] == edges) if len(ends) \
        else np.zeros(len(edges), dtype=bool)
    mine = times if level is None else times[levels == level]
    held = np.bincount(np.searchsorted(ends, mine, side="left"), minlength=len(ends) + 1)
    return is_end | (held[where] == 0)


def _window_ends_known(formable: np.ndarray, used: np.ndarray, edges: int) -> tuple[np.ndarray, np.ndarray]:
    """Per dense bin: whether a window may start there (some edge in the gap before it, or -inf, is known
    to both releases) and end there (some edge in the gap after it, or +inf).  ``formable``: per edge,
    known to both; ``used``: the original bins (0..edges) holding rows, ascending."""
    known = np.concatenate([formable.astype(np.int64), [1]])  # edge index ``edges``: +inf
    cum = np.concatenate([[0], np.cumsum(known)])            # cum[j]: known edges among 0..j-1

    def any_known(first: np.ndarray, last: np.ndarray) -> np.ndarray:  # some known edge in [first, last]
        return cum[last + 1] - cum[first] > 0

    start = np.empty(len(used), dtype=bool)
    start[0] = True  # -inf
    start[1:] = any_known(used[:-1], used[1:] - 1)
    nxt = np.concatenate([used[1:] - 1, [edges]])
    end = any_known(used, nxt)
    return start, end


def _near_for_level(c_bins: np.ndarray, n_bins: np.ndarray, shared_low: np.ndarray, shared_high: np.ndarray,
                    bins: int, threshold: int, may_start: np.ndarray, may_end: np.ndarray) -> bool:
    """Whether some window ``[lo, hi]`` of bins both releases let anyone form (``may_start``,
    ``may_end``) holds rows of both (this level) that share at least one row and differ by fewer than
    ``threshold`` rows each way."""
    if not len(shared_low):
        return False
    c_cum = np.concatenate([[0], np.cumsum(np.bincount(c_bins, minlength=bins))])
    n_cum = np.concatenate([[0], np.cumsum(np.bincount(n_bins, minlength=bins))])
    rows = max(1, BLOCK_CELLS // max(bins, 1))
    carry = np.zeros(bins, dtype=np.int64)
    his = np.arange(bins)
    for stop in range(bins, 0, -rows):
        start = max(0, stop - rows)
        shared, carry = _shared_counts_block(shared_low, shared_high, start, stop, bins, carry)
        los = np.arange(start, stop)[:, None]
        in_c = c_cum[his + 1][None, :] - c_cum[los]
        in_n = n_cum[his + 1][None, :] - n_cum[los]
        near = ((his[None, :] >= los) & may_start[start:stop, None] & may_end[None, :] & (shared > 0)
                & (in_c - shared < threshold) & (in_n - shared < threshold))
        if near.any():
            return True
    return False


def near_in_a_window(bound: ReleaseRows, new: ReleaseRows, threshold: int, level_threshold: int | None = None) -> bool:
    """Whether the two releases' rows come near in some window and level (see the module docstring).

    Releases on different time variables are not compared (their windows count other times); on
    different event variables the levels are merged (every window's rows leaving, whatever the event).

    Parameters
    ----------
    bound, new : ReleaseRows
        The two releases (their ends together make the windows).
    threshold : int
        ``min_row_count``: a window is near when both one-sided differences are below it and the two
        share a row there.

    Returns
    -------
    bool
    """
    threshold = max(int(threshold), 1)
    level_threshold = threshold if level_threshold is None else max(int(level_threshold), 1)
    if bound.time_variable != new.time_variable or not len(bound.keys) or not len(new.keys):
        return False
    b_first, n_first = _first_of_each(bound.keys), _first_of_each(new.keys)
    b_keys, n_keys = bound.keys[b_first], new.keys[n_first]
    both_b = np.isin(b_keys, n_keys, assume_unique=True)
    if not both_b.any():
        return False
    both_n = np.isin(n_keys, b_keys, assume_unique=True)  # key order: the shared rows line up
    b_times = np.asarray(bound.times, dtype=float)[b_first]
    n_times = np.asarray(new.times, dtype=float)[n_first]
    edges = np.unique(np.concatenate([np.asarray(bound.ends, dtype=float), np.asarray(new.ends, dtype=float)]))
    b_bin = np.searchsorted(edges, b_times, side="left")
    n_bin = np.searchsorted(edges, n_times, side="left")
    # only bins holding rows make distinct windows: number them densely
    used, dense = np.unique(np.concatenate([b_bin, n_bin]), return_inverse=True)
    b_bin, n_bin, bins = dense[:len(b_bin)], dense[len(b_bin):], len(used)
    if bound.event_variable == new.event_variable:
        b_level = np.asarray(bound.levels, dtype=np.int64)[b_first]
        n_level = np.asarray(new.levels, dtype=np.int64)[n_first]
        levels = [None, *np.unique(np.concatenate([b_level, n_level])).tolist()]
    else:
        b_level = np.zeros(len(b_first), dtype=np.int64)
        n_level = np.zeros(len(n_first), dtype=np.int64)
        levels = [None]
    shared_b_bin, shared_n_bin = b_bin[both_b], n_bin[both_n]
    shared_b_level, shared_n_level = b_level[both_b], n_level[both_n]
    for level in levels:  # None: every level (implied by the levels, kept for a row whose level changed)
        if level is None:
            c_bins, n_bins, same = b_bin, n_bin, np.ones(len(shared_b_bin), dtype=bool)
        else:
            c_bins, n_bins = b_bin[b_level == level], n_bin[n_level == level]
            same = (shared_b_level == level) & (shared_n_level == level)
        formable = (_formable_edges(edges, bound.ends, b_times, b_level, level)
                    & _formable_edges(edges, new.ends, n_times, n_level, level))
        may_start, may_end = _window_ends_known(formable, used, len(edges))
        low = np.minimum(shared_b_bin[same], shared_n_bin[same])
        high = np.maximum(shared_b_bin[same], shared_n_bin[same])
        if _near_for_level(c_bins, n_bins, low, high, bins, threshold if level is None else level_threshold,
                           may_start, may_end):
            return True
    return False
