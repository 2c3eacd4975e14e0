"""A set of rows any release counts, against a pooled survival release's cells by window and level (ADR 0059, fourteenth
review): the rule equals its definition over every window between the release's ends, and the round-14 shapes."""
from __future__ import annotations

import numpy as np
import pytest

from mipflow.node.controls.pooled_counts import count_near_a_window
from mipflow.node.controls.survival_windows import ReleaseRows

MIN_ROWS, TAB = 10, 3


def bound_release(keys, times, levels, ends) -> ReleaseRows:
    return ReleaseRows(np.asarray(keys, dtype=np.uint64), np.asarray(times, dtype=float),
                       np.asarray(levels, dtype=np.int64), np.asarray(ends, dtype=float), "t", "e")


def by_definition(bound: ReleaseRows, keys: np.ndarray, times: np.ndarray | None) -> bool:
    """Every window ``(a, b]`` with ``a``, ``b`` among the ends and +-inf, every level and every level together, over
    every group and (since the sixteenth review) of each group of the curves apart: the set (its rows in the window,
    when split by time) and the bound cell share a row and differ by fewer than the threshold each way.  A set that
    is the cohort or one group, counted whole, is exempt (its size per node is ``group_n``), as is each part over the
    whole follow-up, every level."""
    keys_u = set(np.unique(keys).tolist())
    codes = None if bound.groups is None else np.asarray(bound.groups)[0]
    parts = [None] if codes is None else [None, *np.unique(codes[codes >= 0]).tolist()]
    member = {p: {int(k) for i, k in enumerate(bound.keys) if p is None or codes[i] == p} for p in parts}
    if times is None and any(keys_u == member[p] for p in parts):
        return False
    points = [-np.inf, *np.unique(bound.ends), np.inf]
    time_of = dict(zip(keys.tolist(), [None] * len(keys) if times is None else times.tolist()))
    for i, a in enumerate(points):
        for b in points[i + 1:]:
            inside = {int(k) for k, t in zip(bound.keys, bound.times) if a < t <= b}
            counted = keys_u if times is None else \
                {k for k, t in time_of.items() if t is not None and not np.isnan(t) and a < t <= b}
            for part in parts:
                for level in [None, *np.unique(bound.levels).tolist()]:
                    if level is None and a == -np.inf and b == np.inf:
                        continue
                    cell = {int(k) for k, lv in zip(bound.keys, bound.levels) if level is None or lv == level}
                    cell &= inside & member[part]
                    threshold = MIN_ROWS if level is None else TAB
                    if cell & counted and len(counted - cell) < threshold and len(cell - counted) < threshold:
                        return True
    return False


@pytest.mark.parametrize("seed", range(60))
def test_the_rule_equals_its_definition_over_every_window(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    keys = rng.choice(10_000, n, replace=False).astype(np.uint64)
    times = rng.integers(0, 30, n).astype(float)
    levels = rng.integers(0, 2, n)
    ends = np.unique(rng.integers(0, 30, int(rng.integers(1, 8)))).astype(float)
    bound = bound_release(keys, times, levels, ends)
    # the set: some bound rows (often those of one window or level) and a few others
    pick = rng.random(n) < rng.uniform(0.1, 1.0)
    if seed % 3 == 0:
        lo, hi = np.sort(rng.integers(0, 30, 2))
        pick = (times > lo) & (times <= hi) & (levels == seed % 2)
    outside = rng.choice(np.arange(20_000, 20_100), int(rng.integers(0, 4)), replace=False).astype(np.uint64)
    chosen = np.concatenate([keys[pick], outside])
    split = np.concatenate([times[pick], rng.integers(0, 30, len(outside)).astype(float)])
    if len(outside) and seed % 4 == 0:
        split[-1] = np.nan  # a row without a time: in no window (a bound row has its time: the same row)
    for set_times in (None, split):
        assert count_near_a_window(bound, chosen, set_times, MIN_ROWS, TAB) == by_definition(bound, chosen, set_times)


def round14_release() -> tuple[ReleaseRows, np.ndarray, np.ndarray, np.ndarray]:
    """B's rows of the round-14 federation: four deaths a week for twelve weeks, twelve censored at day 420; the
    pooled ends weekly."""
    times = np.array([7 * w + d for w in range(12) for d in (2, 3, 4, 5)] + [420] * 12, dtype=float)
    levels = np.array([0] * 48 + [1] * 12)
    keys = np.arange(1, 61, dtype=np.uint64)
    return bound_release(keys, times, levels, np.arange(0, 427, 7)), keys, times, levels


def test_the_deaths_by_a_pooled_end_are_a_bound_cell():
    bound, keys, times, levels = round14_release()
    deaths_by_21 = keys[(levels == 0) & (times <= 21)]
    assert count_near_a_window(bound, deaths_by_21, None, MIN_ROWS, TAB)
    # and near it: two rows fewer, or two other rows more
    assert count_near_a_window(bound, deaths_by_21[2:], None, MIN_ROWS, TAB)
    assert count_near_a_window(bound, np.concatenate([deaths_by_21, [900, 901]]).astype(np.uint64), None,
                               MIN_ROWS, TAB)


def test_the_whole_cohort_is_exempt_as_a_set_but_not_split_by_time():
    bound, keys, times, _ = round14_release()
    assert not count_near_a_window(bound, keys, None, MIN_ROWS, TAB)
    assert count_near_a_window(bound, keys, times, MIN_ROWS, TAB)


def test_honest_subsets_spread_over_follow_up_are_far():
    bound, keys, times, levels = round14_release()
    rng = np.random.default_rng(5)
    for share in (0.3, 0.5, 0.7):  # a subgroup by sex or age: rows of every window, both levels
        subset = keys[rng.random(len(keys)) < share]
        assert not count_near_a_window(bound, subset, None, MIN_ROWS, TAB)
    # rows of another cohort sharing none of the bound rows
    assert not count_near_a_window(bound, np.arange(100, 160, dtype=np.uint64), None, MIN_ROWS, TAB)


def test_the_censored_level_and_the_last_window_are_bound_cells_too():
    bound, keys, _, levels = round14_release()
    assert count_near_a_window(bound, keys[levels == 1], None, MIN_ROWS, TAB)
    assert count_near_a_window(bound, keys[levels == 0], None, MIN_ROWS, TAB)  # every death: (-inf, +inf), yes


# --------------------------------------------------------------------------- groups of the curves (sixteenth review)


@pytest.mark.parametrize("seed", range(60))
def test_with_groups_the_rule_equals_its_definition_over_every_cell(seed):
    rng = np.random.default_rng(1000 + seed)
    n = int(rng.integers(8, 45))
    keys = rng.choice(10_000, n, replace=False).astype(np.uint64)
    times = rng.integers(0, 30, n).astype(float)
    levels = rng.integers(0, 2, n)
    groups = rng.integers(-1, 3, n)  # three levels of the grouping variable, and a few rows without one
    ends = np.unique(rng.integers(0, 30, int(rng.integers(1, 8)))).astype(float)
    bound = ReleaseRows(keys, times, levels, ends, "t", "e", groups[None, :], ("g",))
    pick = groups == seed % 3
    if seed % 2:
        pick &= levels == seed % 4 // 2
    if seed % 5 == 0:
        pick &= rng.random(n) < 0.8
    outside = rng.choice(np.arange(20_000, 20_100), int(rng.integers(0, 3)), replace=False).astype(np.uint64)
    chosen = np.concatenate([keys[pick], outside])
    split = np.concatenate([times[pick], rng.integers(0, 30, len(outside)).astype(float)])
    for set_times in (None, split):
        assert count_near_a_window(bound, chosen, set_times, MIN_ROWS, TAB) == \
            by_definition(bound, chosen, set_times)


def test_a_group_s_events_are_a_bound_cell_its_whole_is_not():
    """Round 16 hole 1 at B: the women who died are a cell of the curve of women (every window, level yes); the
    women as a whole (their ``group_n``) are exempt; the same release without its groups binds neither."""
    bound, keys, times, levels = round14_release()
    sex = np.where(np.arange(len(keys)) % 2 == 0, 0, 1)  # women and men alternately
    grouped = ReleaseRows(bound.keys, bound.times, bound.levels, bound.ends, "t", "e", sex[None, :], ("sex",))
    women_deaths = keys[(sex == 0) & (levels == 0)]
    assert count_near_a_window(grouped, women_deaths, None, MIN_ROWS, TAB)
    assert not count_near_a_window(bound, women_deaths, None, MIN_ROWS, TAB)
    assert not count_near_a_window(grouped, keys[sex == 0], None, MIN_ROWS, TAB)
    assert count_near_a_window(grouped, keys[sex == 0], times[sex == 0], MIN_ROWS, TAB)  # split by time: cells
