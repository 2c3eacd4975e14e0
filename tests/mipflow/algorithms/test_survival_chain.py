"""Pooled Kaplan-Meier bins of a changed pool, by brute force (ADR 0060).

Random pools ``P1`` and ``P2 = P1 + new rows (+ changed rows)`` (and a third ``P3``) of one cohort, two
groups and two event levels on a small fine grid; each pool's canonical partitions derived as the nodes
derive them (:func:`~mipflow.algorithms.survival_chain.chained_bins` against the chain's earlier pools).
From them the test lists every count the central site can form: per kind (each level's rows, the rows
leaving, the rows leaving less a level's: an event level's censorings), per group and summed over the
groups, over every interval between two ends of a release (every request's release ends at some of
the canonical ends, so every interval of every release is among them).  Then, for every two pools:

* the same kind over the same interval in both (the **difference** at common ends): 0 or at least tab;
* a later pool's count over ``(a, b]`` less an earlier pool's over ``(c, d]`` inside it, for the same
  kind or the earlier pool's group inside the later pool's total: 0 or at least tab (the decomposition
  into a run of one partition and the difference at a common end, all non-negative);
* every released cell of each pool: 0 or at least tab.

And the same enumeration finds small counts when the changed pool takes its own canonical bins, or
only the difference rule without the local nesting (the check can fail).
"""
from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from mipflow.algorithms.survival_bins import _safe_runs, cohort_bins
from mipflow.algorithms.survival_chain import ChainRefused, bin_sums, chained_bins, difference_ends

FINE = 40
LEVELS = 3  # died, alive, followed beyond the grid
GROUPS = 2


def pool_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` rows as (group, level, fine point)."""
    return np.stack([rng.integers(0, GROUPS, n), rng.choice(LEVELS, n, p=[0.4, 0.5, 0.1]),
                     rng.integers(0, FINE, n)], axis=1)


def counts(rows: np.ndarray) -> np.ndarray:
    """(groups, levels, fine) counts of the rows."""
    out = np.zeros((GROUPS, LEVELS, FINE), dtype=np.int64)
    np.add.at(out, (rows[:, 0], rows[:, 1], rows[:, 2]), 1)
    return out


def changed(rng: np.random.Generator, rows: np.ndarray, added: int, moved: int) -> np.ndarray:
    """The rows with ``added`` new ones and ``moved`` changed: a censoring later or censored -> died."""
    rows = rows.copy()
    alive = np.flatnonzero(rows[:, 1] == 1)
    for k in rng.choice(alive, min(moved, len(alive)), replace=False):
        if rng.random() < 0.5:
            rows[k, 1] = 0
        rows[k, 2] = min(FINE - 1, rows[k, 2] + int(rng.integers(1, 8)))
    return np.concatenate([rows, pool_rows(rng, added)])


def as_groups(c: np.ndarray, grouped: bool) -> list[dict]:
    """A release's groups (event level 0), with their series, as the pooled groups of a node."""
    c = c if grouped else c.sum(axis=0, keepdims=True)
    return [{"events": g[0].tolist(), "censored": (g[1] + g[2]).tolist(), "series": g.tolist()} for g in c]


def derive(chain: list[np.ndarray], tab: int, difference=difference_ends) -> list[dict]:
    """Each pool's partitions as the nodes derive them along the chain: per pool ``all`` and, per
    grouping (``True``: by group, ``False``: none), the group ends."""
    import mipflow.algorithms.survival_chain as module

    out: list[dict] = []
    saved = module.difference_ends
    module.difference_ends = difference
    try:
        for c in chain:
            entry: dict = {"counts": c}
            fixed = None
            for grouped in (False, True):
                groups = as_groups(c, grouped)
                flat = np.concatenate([np.asarray(g["series"]) for g in groups])
                earlier_all = [(e["counts"].sum(axis=0), e["all"]) for e in out]
                earlier_groups = [(e["flat", grouped], e[grouped]) for e in out]
                parts = chained_bins(groups, tab, earlier_all, earlier_groups, fixed_all=fixed)
                fixed = parts["all"]
                entry["all"], entry[grouped], entry["flat", grouped] = parts["all"], parts["groups"], flat
            out.append(entry)
    finally:
        module.difference_ends = saved
    return out


def kinds(series: np.ndarray) -> dict[str, np.ndarray]:
    """Every kind a release shows of one group's series (levels, fine)."""
    leaving = series.sum(axis=0)
    out = {"leaving": leaving}
    for level in range(LEVELS):
        out[f"level {level}"] = series[level]
        out[f"leaving less level {level}"] = leaving - series[level]
    return out


def intervals(ends: list[int]) -> list[tuple[int, int]]:
    return list(combinations([-1, *ends], 2))


def over(values: np.ndarray, s: int, t: int) -> int:
    return int(values[s + 1:t + 1].sum())


def unsafe(value: int, tab: int) -> bool:
    return value != 0 and value < tab


def small_counts(pools: list[dict], tab: int) -> list[tuple]:
    """Every count formed from the releases (see the module docstring) that is not 0 or at least tab."""
    found = []
    releases = []  # (pool index, grouping, group or "all", kind, values, ends)
    for i, p in enumerate(pools):
        for grouped in (False, True):
            ends = p[grouped]
            per_group = p["counts"] if grouped else p["counts"].sum(axis=0, keepdims=True)
            for g, series in enumerate(per_group):
                for name, values in kinds(series).items():
                    releases.append((i, grouped, g if grouped else "all", name, values, ends))
            for name, values in kinds(p["counts"].sum(axis=0)).items():
                releases.append((i, grouped, "all", name, values, ends))
    for i, grouped, who, name, values, ends in releases:
        for s, t in intervals(ends):
            if unsafe(over(values, s, t), tab):
                found.append(("cell", i, grouped, who, name, s, t))
    for (i, gi, wi, ni, vi, ei), (j, gj, wj, nj, vj, ej) in combinations(releases, 2):
        if i == j or ni != nj:
            continue
        if i > j:
            (i, gi, wi, ni, vi, ei), (j, gj, wj, nj, vj, ej) = (j, gj, wj, nj, vj, ej), (i, gi, wi, ni, vi, ei)
        if not (wi == wj or wj == "all"):  # the later pool's kind holds the earlier one's (same group or total)
            continue
        for a, b in intervals(ej):
            for c, d in intervals(ei):
                if a <= c and d <= b:
                    value = over(vj, a, b) - over(vi, c, d)
                    if unsafe(value, tab) and (wi == wj or value >= 0):
                        found.append(("difference", i, j, wi, wj, ni, (a, b), (c, d), value))
    return found


def chain_of(seed: int, pools: int = 2) -> tuple[list[np.ndarray], int]:
    """A chain of pools and a tab; every group's total of every level 0 or at least tab in each pool
    (else the node refuses the release whatever its bins: the draw is taken again)."""
    rng = np.random.default_rng(seed)
    while True:
        tab = int(rng.integers(2, 5))
        rows = pool_rows(rng, int(rng.integers(40, 120)))
        chain = [counts(rows)]
        for _ in range(pools - 1):
            rows = changed(rng, rows, added=int(rng.integers(3, 90)), moved=int(rng.integers(0, 5)))
            chain.append(counts(rows))
        totals = np.stack([c.sum(axis=2) for c in chain])
        if not np.any((totals > 0) & (totals < tab)):
            return chain, tab


@pytest.mark.parametrize("pools", [pytest.param(2, id="P1-P2"), pytest.param(3, id="P1-P2-P3")])
def test_every_count_formed_from_the_chain_is_0_or_at_least_tab(pools):
    answered = refused = 0
    for seed in range(120 if pools == 2 else 80):
        chain, tab = chain_of(seed, pools)
        try:
            derived = derive(chain, tab)
        except ChainRefused:
            refused += 1
            continue
        answered += 1
        assert small_counts(derived, tab) == [], seed
        for p in derived:
            assert p[True] == [e for e in p[True] if e in set(p["all"])]  # the groups' ends among the total's
    assert answered >= 10 and refused >= 10, (answered, refused)  # the check decides both ways


def test_without_earlier_pools_the_bins_are_adr_0008s():
    for seed in range(40):
        chain, tab = chain_of(seed, 1)
        for grouped in (False, True):
            groups = as_groups(chain[0], grouped)
            ends, levels = cohort_bins(groups, tab)
            parts = chained_bins(groups, tab)
            assert (parts["groups"], parts["levels"]) == (ends, levels)
            assert set(parts["groups"]) <= set(parts["all"])


def own_bins(new, candidate, earlier, tab):
    """A changed pool on its own canonical bins (no rule)."""
    return sorted(candidate)


def without_nesting(new, candidate, earlier, tab):
    """The difference rule on the common ends only: the pools' partitions may interleave."""
    ends = sorted(candidate)
    for old, old_ends in earlier:
        common = [e for e in ends if e in set(old_ends)]
        steps = bin_sums(np.asarray(new) - np.asarray(old), common)
        kept = {common[i] for i in _safe_runs(steps.T, tab)}
        if not np.all(np.isin(bin_sums(np.asarray(new) - np.asarray(old), sorted(kept)), [0]) |
                      (bin_sums(np.asarray(new) - np.asarray(old), sorted(kept)) >= tab)):
            raise ChainRefused("unsafe")
        ends = [e for e in ends if e in kept or e not in set(old_ends)]
    return ends


@pytest.mark.parametrize("weaker", [pytest.param(own_bins, id="own-bins"),
                                    pytest.param(without_nesting, id="no-nesting")])
def test_weaker_rules_leave_small_counts(weaker):
    hits = 0
    for seed in range(120):
        chain, tab = chain_of(seed, 2)
        try:
            derived = derive(chain, tab, weaker)
        except ChainRefused:
            continue
        hits += bool(small_counts(derived, tab))
    assert hits >= 5


def test_a_change_of_one_row_is_refused():
    rng = np.random.default_rng(7)
    rows = pool_rows(rng, 80)
    first = counts(rows)
    second = counts(np.concatenate([rows, pool_rows(rng, 1)]))
    with pytest.raises(ChainRefused):
        derive([first, second], 3)


def test_nothing_changed_keeps_the_bins():
    chain, tab = chain_of(3, 1)
    derived = derive([chain[0], chain[0]], tab)
    assert derived[1]["all"] == derived[0]["all"] and derived[1][True] == derived[0][True]
