"""Windows of time of two survival releases (ADR 0059, thirteenth-review amendment): the vectorised check
against a brute force over every window and every set of levels, the round-13 shape, the events-only shape,
and the memory of releases."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mipflow.node.controls.pooled_bins import PER_NODE_RELEASE, POOLED_RELEASE
from mipflow.node.controls.pooled_windows import WindowMemory
from mipflow.node.controls.survival_windows import BEYOND, ReleaseRows, near_in_a_window

MIN_ROWS, TAB = 10, 3
LEVELS = (0, 1, BEYOND)


def release(keys, times, levels, ends, time_variable: str = "followup_days", event_variable: str = "death") -> ReleaseRows:
    return ReleaseRows(np.asarray(keys, dtype=np.uint64), np.asarray(times, dtype=float),
                       np.asarray(levels, dtype=np.int64), np.asarray(ends, dtype=float), time_variable,
                       event_variable)


def _known(side: ReleaseRows, x: float, kinds: frozenset) -> bool:
    """Brute force: the side's count of rows of ``kinds`` up to ``x`` follows from its bins (x infinite, one
    of its ends, or inside a bin of it holding none of those rows)."""
    if math.isinf(x) or x in set(side.ends.tolist()):
        return True
    ends = sorted(side.ends.tolist())
    below = max([e for e in ends if e < x], default=-math.inf)
    above = min([e for e in ends if e > x], default=math.inf)
    return not any(below < t <= above and level in kinds for t, level in zip(side.times, side.levels))


def _members(side: ReleaseRows, lo: float, hi: float, kinds: frozenset) -> set[int]:
    return {int(k) for k, t, level in zip(side.keys, side.times, side.levels) if lo < t <= hi and level in kinds}


def brute_force(bound: ReleaseRows, new: ReleaseRows, points) -> list[tuple[float, float, frozenset, int, int, int]]:
    """Every window ``(lo, hi]`` with ends among ``points`` and +-inf and every non-empty set of levels whose
    counts both releases give: (lo, hi, levels, shared, bound only, new only)."""
    bounds = [-math.inf, *points, math.inf]
    out = []
    for size in range(1, len(LEVELS) + 1):
        for kinds in map(frozenset, itertools.combinations(LEVELS, size)):
            for lo, hi in itertools.combinations(bounds, 2):
                if not all(_known(side, x, kinds) for side in (bound, new) for x in (lo, hi)):
                    continue
                b, n = _members(bound, lo, hi, kinds), _members(new, lo, hi, kinds)
                out.append((lo, hi, kinds, len(b & n), len(b - n), len(n - b)))
    return out


def random_pair(rng: np.random.Generator) -> tuple[ReleaseRows, ReleaseRows]:
    """A node's bound cohort and another cohort: overlapping rows (the same leaving time and level in both),
    times on a grid of 30 points, random ends of each release."""
    universe = rng.permutation(200)[:rng.integers(20, 60)]
    times = {int(k): float(rng.integers(1, 31)) for k in universe}
    levels = {int(k): int(rng.choice(LEVELS, p=[0.45, 0.45, 0.1])) for k in universe}
    for k, level in levels.items():
        if level == BEYOND:
            times[k] = 30.0  # rows followed beyond the grid leave at its last point
    bound_keys = [k for k in times if rng.random() < 0.8]
    style = rng.integers(3)
    if style == 0:  # a subset leaving out the rows after a cut (the round-13 shape)
        cut = rng.integers(5, 30)
        new_keys = [k for k in bound_keys if times[k] <= cut]
    elif style == 1:  # the rows of one level (the events-only shape)
        level = int(rng.choice([0, 1]))
        new_keys = [k for k in bound_keys if levels[k] == level]
    else:  # a random part and some rows of its own
        new_keys = [k for k in times if (k in bound_keys and rng.random() < 0.6) or rng.random() < 0.2]

    def make(keys, n_ends):
        ends = np.sort(rng.choice(np.arange(1, 31), size=n_ends, replace=False)).astype(float)
        return release(keys, [times[k] for k in keys], [levels[k] for k in keys], ends)

    return make(bound_keys, int(rng.integers(1, 12))), make(new_keys, int(rng.integers(1, 12)))


@pytest.mark.parametrize("rows_threshold, level_threshold", [(MIN_ROWS, TAB), (4, 2)], ids=["shipped", "small"])
@pytest.mark.parametrize("seed", range(6))
def test_admitted_pairs_never_let_a_window_subtract_to_fewer_than_the_threshold(seed, rows_threshold,
                                                                               level_threshold) -> None:
    """Brute force over random cohorts, times and bin ends: the vectorised check says near exactly when some
    window both releases give (ends at any grid point, not only theirs; +-inf included) holds rows of both
    that share one and differ by fewer than min_row_count each way (all levels) or fewer than nfilter_tab (one
    level); and for every admitted pair no window and no set of levels (a release's events, its censorings,
    its at-risk numbers) subtracts to fewer than nfilter_tab rows, nor the rows of every level to fewer than
    min_row_count (the shipped thresholds, and small ones under which more pairs are admitted)."""
    rng = np.random.default_rng(seed)
    admitted = refused = 0
    for _ in range(20):
        bound, new = random_pair(rng)
        windows = brute_force(bound, new, np.arange(1, 31, dtype=float).tolist())
        every = frozenset(LEVELS)
        threshold = {kinds: rows_threshold if kinds == every else level_threshold for _, _, kinds, *_ in windows}
        near = any(shared > 0 and only_b < threshold[kinds] and only_n < threshold[kinds]
                   for _, _, kinds, shared, only_b, only_n in windows if len(kinds) in (1, len(LEVELS)))
        assert near_in_a_window(bound, new, rows_threshold, level_threshold) == near
        assert near_in_a_window(new, bound, rows_threshold, level_threshold) == near  # symmetric
        if near:
            refused += 1
            continue
        admitted += 1
        for _, _, kinds, shared, only_b, only_n in windows:
            assert shared == 0 or only_b >= level_threshold or only_n >= level_threshold
            if kinds == every:
                assert shared == 0 or only_b >= rows_threshold or only_n >= rows_threshold
    assert refused and (admitted or rows_threshold == MIN_ROWS)  # both outcomes exercised (small thresholds)


def test_the_round_13_shape_is_near_and_a_subgroup_spread_over_follow_up_is_not() -> None:
    """The bound cohort at B: four deaths a week for twelve weeks, twelve rows censored at day 420.  Without
    those twelve (12 rows apart: ADR 0059's rows rule admits it) its weeks are the bound cohort's: near.  A
    subgroup of half the rows spread over follow-up, on coarser bins of its own, is not."""
    deaths = [7 * w + d for w in range(12) for d in (2, 3, 4, 5)]
    keys = np.arange(60)
    times = np.array(deaths + [420] * 12, dtype=float)
    levels = np.array([1] * 48 + [0] * 12)
    weekly = np.arange(7, 91, 7, dtype=float).tolist() + [420.0]
    bound = release(keys, times, levels, weekly)
    rest = release(keys[:48], times[:48], levels[:48], weekly[:-1])
    assert near_in_a_window(bound, rest, MIN_ROWS, TAB)
    half = keys % 2 == 0
    subgroup = release(keys[half], times[half], levels[half], [56.0, 420.0])
    assert not near_in_a_window(bound, subgroup, MIN_ROWS, TAB)


def test_the_deaths_of_the_bound_cohort_are_near_by_their_level() -> None:
    """The bound cohort's deaths only (a filter on the event variable): every window holds twelve more censored
    rows in the bound cohort (far by rows, in every window), but the deaths are the same rows: near by the level."""
    deaths = np.arange(1, 49, dtype=float)
    censored = np.repeat(np.arange(4, 49, 4, dtype=float), 12)  # twelve censored at each end
    times = np.concatenate([deaths, censored])
    levels = np.array([1] * len(deaths) + [0] * len(censored))
    keys = np.arange(len(times))
    ends = np.arange(4, 49, 4, dtype=float)
    bound = release(keys, times, levels, ends)
    only_deaths = release(keys[levels == 1], times[levels == 1], levels[levels == 1], ends)
    assert near_in_a_window(bound, only_deaths, MIN_ROWS, TAB)
    # the windows by rows alone (levels merged) admit it: every window holds 12 more rows of the bound cohort
    assert not near_in_a_window(bound, ReleaseRows(only_deaths.keys, only_deaths.times, only_deaths.levels,
                                                   only_deaths.ends, "followup_days", "other"), MIN_ROWS, TAB)


def test_releases_on_other_time_variables_or_other_rows_are_not_compared() -> None:
    bound = release(np.arange(30), np.arange(1, 31), np.ones(30), [10.0, 20.0, 30.0])
    assert not near_in_a_window(bound, release(np.arange(30), np.arange(1, 31), np.ones(30), [10.0, 20.0, 30.0],
                                               time_variable="other_days"), MIN_ROWS, TAB)
    assert not near_in_a_window(bound, release(np.arange(100, 130), np.arange(1, 31), np.ones(30), [10.0]),
                                MIN_ROWS, TAB)
    # another event variable: levels merged (rows of every level per window)
    same_rows = release(np.arange(30), np.arange(1, 31), np.zeros(30), [10.0, 20.0, 30.0], event_variable="other")
    assert near_in_a_window(bound, same_rows, MIN_ROWS, TAB)


def test_a_row_that_leaves_at_another_time_in_the_other_release_is_shared_only_where_both_times_are() -> None:
    """A corrected row (same key, another time): shared in the windows holding both of its times only."""
    bound = release([1, 2, 3], [5.0, 5.0, 5.0], [1, 1, 1], [5.0, 10.0])
    moved = release([1, 2, 3], [5.0, 5.0, 10.0], [1, 1, 1], [5.0, 10.0])
    # (-inf, 5]: 2 shared, 1 only in bound -> near; so is (-inf, 10]
    assert near_in_a_window(bound, moved, MIN_ROWS, TAB)
    far = release([3], [10.0], [1], [5.0, 10.0])
    # (-inf, 5]: bound only; (5, 10]: new only; (-inf, 10]: one shared, 2 only in bound (< 10): near
    assert near_in_a_window(bound, far, MIN_ROWS, TAB)
    assert not near_in_a_window(bound, far, 2, 1)


def test_the_memory_keeps_rows_times_levels_and_joins_the_ends_of_a_release_asked_again(tmp_path) -> None:
    store = WindowMemory(tmp_path)
    rows = release([9, 3, 5], [30.0, 10.0, 20.0], [0, 1, BEYOND], [10.0, 30.0])
    store.remember(POOLED_RELEASE, "m:0.1", "d1", "key-1", rows, np.array([90, 30, 50], dtype=np.uint64))
    store.remember(POOLED_RELEASE, "m:0.1", "d1", "key-1", rows.__class__(**{**rows.__dict__, "ends": np.array([20.0])}),
                   np.array([90, 30, 50], dtype=np.uint64))
    store.close()
    again = WindowMemory(tmp_path)  # durable: another process on the home
    assert again.releases(PER_NODE_RELEASE) == []
    [(model, digest, binding, kept, patients)] = again.releases(POOLED_RELEASE)
    assert (model, digest, binding) == ("m:0.1", "d1", "key-1")
    assert kept.keys.tolist() == [3, 5, 9] and kept.times.tolist() == [10.0, 20.0, 30.0]
    assert kept.levels.tolist() == [1, BEYOND, 0] and patients.tolist() == [30, 50, 90]
    assert kept.ends.tolist() == [10.0, 20.0, 30.0]


def test_a_few_hundred_ends_are_checked_quickly() -> None:
    """O(ends^2) windows, vectorised: 600 rows, about 400 ends on each side."""
    import time

    rng = np.random.default_rng(5)
    keys = np.arange(600)
    times = rng.integers(1, 3000, 600).astype(float)
    levels = rng.integers(0, 2, 600)
    bound = release(keys, times, levels, np.unique(rng.integers(1, 3000, 400)).astype(float))
    part = keys % 3 != 0
    new = release(keys[part], times[part], levels[part], np.unique(rng.integers(1, 3000, 400)).astype(float))
    started = time.perf_counter()
    near_in_a_window(bound, new, MIN_ROWS, TAB)
    assert time.perf_counter() - started < 5.0
