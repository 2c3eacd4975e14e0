"""Pooled Kaplan-Meier bins for a bound cohort after another node's rows changed (ADR 0060).

A node bound to a pool ``P1`` (ADR 0052, 0059) answers a later pool ``P2`` of the same participants and
the same request only on bins derived so that **every count the central site can form from releases
of the two pools is a sum of non-negative cells of 0 or at least ``nfilter_tab``**:

* the **canonical partitions nest locally**: within each bin of their common ends, at most one of the
  two partitions has inner ends (``P2`` refines ``P1`` where ``P1`` was coarse, coarsens it where ``P1``
  was fine), so an interval of one release less an interval of the other inside it is a run of one
  partition plus the pooled difference at a common end;
* the **pooled difference** ``P2 - P1`` of every count series (each level of the event variable and
  the rows followed beyond the grid, summed over the groups; and per group of the same grouping),
  summed over every bin of the common ends, is **0 or at least** ``nfilter_tab``: never negative, so
  the cumulative differences at the common ends rise in steps that are safe cells, and every
  difference of two of them is a sum of such steps.

Rows that changed (a censoring moved later by longer follow-up, censored -> died) make the fine
difference negative somewhere: the common ends are merged until each bin's net difference is 0 or
at least ``nfilter_tab``; where no merge gets there (the difference's total is small or negative,
one row added) the pool is refused (:class:`ChainRefused`).  Against several earlier pools of the
chain the rule holds for each (:func:`difference_ends` iterates to a fixed point: it only drops ends).

Pure functions of the pooled counts: every node derives the same bins from the same chain.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from mipflow.algorithms.survival_bins import bin_counts, close_tail, cohort_bins, nested_bins


class ChainRefused(ValueError):
    """No partition keeps the pooled difference of two pools safe (the refusal carries no count)."""


def _ok(values: np.ndarray, tab: int) -> bool:
    return bool(np.all((values == 0) | (values >= tab)))


def bin_sums(counts: np.ndarray, ends: Sequence[int]) -> np.ndarray:
    """Each row of ``counts`` (kinds, fine points) summed into the bins ending at ``ends``: (kinds, bins)."""
    counts = np.asarray(counts, dtype=np.int64)
    cum = np.zeros((counts.shape[0], counts.shape[1] + 1), dtype=np.int64)
    np.cumsum(counts, axis=1, out=cum[:, 1:])
    edges = np.asarray([-1, *ends], dtype=np.int64) + 1
    return cum[:, edges[1:]] - cum[:, edges[:-1]]


def _most_runs(steps: np.ndarray, tab: int) -> list[int]:
    """The most merged runs of the bins of ``steps`` (kinds, bins; signed) in which every kind sums to 0
    or at least ``tab`` (dynamic programming, the earliest start among equally many runs): the indices
    of the bins closing a run.

    Raises
    ------
    ChainRefused
        If no merge keeps every run safe (the whole grid's sum of some kind is small or negative).
    """
    n = steps.shape[1]
    cum = np.zeros((steps.shape[0], n + 1), dtype=np.int64)
    np.cumsum(steps, axis=1, out=cum[:, 1:])
    best = np.full(n + 1, -1, dtype=np.int64)
    best[0] = 0
    start = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        segment = cum[:, j:j + 1] - cum[:, :j]  # every kind's sum over bins i..j-1, per start i
        ok = np.all((segment == 0) | (segment >= tab), axis=0) & (best[:j] >= 0)
        if ok.any():
            candidates = np.where(ok, best[:j], -1)
            i = int(np.argmax(candidates))
            best[j], start[j] = candidates[i] + 1, i
    if best[n] < 0:
        raise ChainRefused("the pooled difference is not 0 or at least nfilter_tab over the whole grid")
    closing = []
    j = n
    while j > 0:
        closing.append(j - 1)
        j = int(start[j])
    return closing[::-1]


def _against(new: np.ndarray, ends: list[int], old: np.ndarray, old_ends: Sequence[int], tab: int) -> list[int]:
    """``ends`` kept under the rule against one earlier pool (``old`` on its canonical ``old_ends``)."""
    old_set = {int(e) for e in old_ends}
    common = [e for e in ends if e in old_set]
    if not common or common[-1] != ends[-1]:
        raise ChainRefused("the two pools' partitions do not end at the same grid point")
    steps = bin_sums(new - old, common)  # (kinds, common bins), may be negative
    kept_common = [common[i] for i in _most_runs(steps, tab)]
    if not _ok(bin_sums(new - old, kept_common), tab):
        raise ChainRefused("the pooled difference is not 0 or at least nfilter_tab in every bin")
    old_sorted = sorted(old_set)
    out: list[int] = []
    start = -1
    for end in kept_common:  # within each common bin, inner ends of one partition at most
        inner_new = [e for e in ends if start < e < end]
        lo = int(np.searchsorted(old_sorted, start, side="right"))
        hi = int(np.searchsorted(old_sorted, end, side="left"))
        if hi <= lo:  # the earlier pool has no end inside: the new pool may refine it here
            out += inner_new
        out.append(end)
        start = end
    return out


def difference_ends(new: np.ndarray, candidate: Sequence[int], earlier: Sequence[tuple[np.ndarray, Sequence[int]]],
                    tab: int) -> list[int]:
    """The ends of ``candidate`` (a partition safe for ``new``'s own cells, the last the grid's last)
    kept so that, against every earlier pool ``(counts, canonical ends)`` of the same kinds, the two
    partitions nest locally and the pooled difference is 0 or at least ``tab`` in every bin of the
    common ends (the most common bins any merge keeps, :func:`_most_runs`).

    ``new`` and each earlier ``counts``: (kinds, fine points), the same kinds.  A subset of
    ``candidate`` (merging keeps ``new``'s own cells safe).  Deterministic.

    Raises
    ------
    ChainRefused
        If no merge keeps the difference safe (its total over the grid is small or negative).
    """
    ends = sorted(int(e) for e in candidate)
    new = np.asarray(new, dtype=np.int64)
    changed = True
    while changed:  # a later pool's merge may drop a common end of an earlier one: again until stable
        changed = False
        for old, old_ends in earlier:
            kept = _against(new, ends, np.asarray(old, dtype=np.int64), old_ends, tab)
            if kept != ends:
                ends, changed = kept, True
    return ends


def level_counts(groups: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """The kinds the rule watches: the leaving series summed over the groups (levels + 1, fine) and
    every group's series ((groups x (levels + 1)), fine)."""
    series = [np.asarray(g["series"], dtype=np.int64) for g in groups]
    return np.sum(series, axis=0), np.concatenate(series, axis=0)


def _closed(ends: list[int], levels: list[int], events: np.ndarray, censored: np.ndarray, tab: int
            ) -> tuple[list[int], list[int]]:
    if tab <= 1:
        return ends, levels
    kept, _, _ = close_tail(ends, bin_counts(events, ends), bin_counts(censored, ends))
    return kept, [*levels[:len(kept) - 1], levels[-1]]


def chained_bins(groups: Sequence[Mapping[str, Any]], tab: int,
                 earlier_all: Sequence[tuple[np.ndarray, Sequence[int]]] = (),
                 earlier_groups: Sequence[tuple[np.ndarray, Sequence[int]]] = (),
                 fixed_all: Sequence[int] | None = None) -> dict[str, list[int]]:
    """A standard-mode pooled release's canonical partitions (ADR 0008's ``cohort_bins`` steps) with
    the rule against the chain's earlier pools.

    ``all``: the ungrouped partition (every event level's series summed over groups safe), closed at
    its tail, kept under :func:`difference_ends` against ``earlier_all``; every release of this pool
    ends at some of its ends.  ``groups``: the release's shared group bins, a coarsening of ``all``,
    kept against ``earlier_groups`` (the earlier pools asked with the same grouping); ``levels``: each
    group end's level (:func:`~mipflow.algorithms.survival.coarsen_to`).  ``fixed_all``: ``all`` as
    stored for this pool (a request repeated on the chain's latest pool).  Without earlier pools
    ``groups`` equals :func:`~mipflow.algorithms.survival_bins.cohort_bins`.

    Raises
    ------
    ChainRefused
        See :func:`difference_ends`.
    """
    totals, flat = level_counts(groups)
    events = np.sum([np.asarray(g["events"], dtype=np.int64) for g in groups], axis=0)
    censored = np.sum([np.asarray(g["censored"], dtype=np.int64) for g in groups], axis=0)
    leaving, _ = nested_bins([events + censored], tab)
    series_ends, series_levels = nested_bins(totals, tab, allowed=leaving)
    level_of = dict(zip(series_ends, series_levels))
    if fixed_all is not None:
        all_ends = [int(e) for e in fixed_all]
    else:
        all_ends, _ = _closed(series_ends, series_levels, events, censored, tab)
        all_ends = difference_ends(totals, all_ends, earlier_all, tab)
    if not earlier_all and not earlier_groups:  # the chain's first pool: ADR 0008's bins, as they were
        ends, levels = cohort_bins(groups, tab)
        return {"all": all_ends, "groups": ends, "levels": levels}
    if len(groups) > 1:
        ends, levels = nested_bins(flat, tab, allowed=all_ends)
        ends, levels = _closed(ends, levels, events, censored, tab)
    else:
        ends, levels = list(all_ends), [level_of.get(e, 1) for e in all_ends]
    kept = difference_ends(flat, ends, earlier_groups, tab)
    by_end = dict(zip(ends, levels))
    return {"all": all_ends, "groups": kept, "levels": [by_end[e] for e in kept]}
