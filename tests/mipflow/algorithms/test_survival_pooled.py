"""Kaplan-Meier's pooled time bins in process (ADR 0052): the finest partition under the family rule,
the pooled release and its slots, the choice of bins per attempt, and equality with the pooled
computation on the result's bins (the nodes' controls applied, as a node API does)."""
from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mipflow.algorithms.survival_bins import finest_partition
from mipflow.algorithms.survival_pooled import read_slots, resolve, slot_release
from mipflow.exceptions import RequestError
from mipflow.node.controls.study_survival import merge, partition
from mipflow.node.home import NodeSettings
from tests.mipflow.algorithms.survival_data import complete, make_stroke, request, run_with_controls
from tests.mipflow.algorithms.test_survival import KM_COLUMNS, check_km


def _safe(counts: np.ndarray, ends: list[int], tab: int) -> bool:
    merged = merge(counts[counts.sum(axis=1) >= tab], ends)
    return bool(np.all((merged == 0) | (merged >= tab)))


def _most_bins(counts: np.ndarray, tab: int) -> int:
    """Brute force: the most bins of any partition under the rule (ends at any point, the last fixed)."""
    n = counts.shape[1]
    best = 1
    for k in range(1, n):
        for cuts in combinations(range(n - 1), k):
            if _safe(counts, [*cuts, n - 1], tab):
                best = max(best, k + 1)
    return best


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(3, 9), st.integers(2, 4), st.integers(0, 2 ** 31 - 1))
def test_finest_partition_keeps_every_watched_cell_safe_and_is_as_fine_as_any(cells, points, tab, seed) -> None:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(1.2, size=(cells, points)) * (rng.random((cells, points)) < 0.6)
    ends = finest_partition(counts, tab)
    assert ends == sorted(set(ends)) and ends[-1] == points - 1
    assert _safe(counts, ends, tab)
    busy = [p for p in range(points) if counts[counts.sum(axis=1) >= tab][:, p].any()]
    # as many bins holding rows as the best partition has bins holding rows (empty bins do not matter)
    holding = sum(1 for e, s in zip(ends, [-1, *ends[:-1]]) if any(s < p <= e for p in busy))
    best = max((sum(1 for e, s in zip(c, [-1, *c[:-1]]) if any(s < p <= e for p in busy))
                for k in range(points) for c in ([*cuts, points - 1] for cuts in combinations(range(points - 1), k))
                if _safe(counts, c, tab)), default=1)
    assert holding == best


def test_finest_partition_keeps_bins_where_the_forward_scan_merges_everything_back() -> None:
    """The forward scan closes the first cell's bin at its third row, is left with its fourth alone, and
    merges every bin back into one; the finest partition keeps the first cell's rows together and
    splits the second cell's."""
    counts = np.array([[1, 0, 2, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 2, 2, 2]])
    assert partition(counts, 3) == [7]
    assert finest_partition(counts, 3) == [3, 5, 7]
    assert _safe(counts, [3, 5, 7], 3)


def test_a_small_cell_is_not_watched_and_a_whole_range_is_always_safe() -> None:
    counts = np.array([[1, 0, 0, 1], [5, 5, 5, 5]])  # the first cell holds 2 < tab rows: other rules decide it
    assert finest_partition(counts, 3) == [0, 1, 2, 3]
    assert finest_partition(np.zeros((2, 5), dtype=int), 3) == [4]


@pytest.mark.parametrize("asked, masked, fallback, chosen", [
    pytest.param("auto", 3, False, "pooled", id="auto-3-masked"),
    pytest.param(None, 5, False, "pooled", id="default-5-masked"),
    pytest.param("auto", 2, False, "per_node", id="auto-2-masked"),
    pytest.param("auto", 0, False, "per_node", id="auto-plain"),
    pytest.param("auto", 3, True, "per_node", id="auto-after-a-node-declined"),
    pytest.param("per_node", 4, False, "per_node", id="per-node-asked"),
    pytest.param("pooled", 3, False, "pooled", id="pooled-asked"),
])
def test_the_central_site_decides_the_bins_per_attempt(asked, masked, fallback, chosen) -> None:
    parameters = {"event_level": "yes"} if asked is None else {"event_level": "yes", "survival_bins": asked}
    assert resolve(parameters, masked, fallback)["survival_bins"] == chosen


def test_pooled_bins_asked_without_three_masked_nodes_are_refused() -> None:
    with pytest.raises(RequestError, match="at least 3"):
        resolve({"survival_bins": "pooled"}, 2, False)


def test_slots_sum_to_the_pooled_bins_and_disagreeing_nodes_are_refused() -> None:
    points = [0, 7, 14, 21, 28]
    ends = [5, 14, 28]
    one = slot_release(ends, [1, 0, 2], [0, 1, 1], points)
    two = slot_release(ends, [2, 3, 0], [1, 0, 4], points)
    three = slot_release(ends, [0, 1, 1], [3, 3, 3], points)
    (pooled,) = read_slots([{"nodes": 1, "slots": [s]} for s in (one, two, three)])
    assert pooled == {"ends": ends, "events": [3, 4, 3], "censored": [4, 4, 8]}
    other = slot_release([5, 21, 28], [1, 0, 2], [0, 1, 1], points)  # a node that derived other bins
    with pytest.raises(RequestError, match="different pooled time bins"):
        read_slots([{"nodes": 1, "slots": [s]} for s in (one, two, other)])
    with pytest.raises(RequestError, match="do not fit the request's grid"):
        slot_release([5, 6], [1, 1], [0, 0], points)  # two ends in one slot


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2 ** 31 - 1), st.sampled_from([1.0, 7.0, 30.0]), st.sampled_from([2, 3, 5]),
       st.booleans(), st.sampled_from([None, 400.0]))
def test_pooled_bins_equal_the_pooled_computation_and_release_no_small_pooled_count(seed, width, tab, grouped,
                                                                                     max_time) -> None:
    data = make_stroke(seed, 480)
    nodes = [data[data["dataset"] == d].reset_index(drop=True) for d in sorted(data["dataset"].unique())]
    extra = {} if max_time is None else {"max_time": max_time}
    req = request("kaplan_meier", x=("sex",) if grouped else (), bin_width=width, survival_bins="pooled", **extra)
    result, used, _ = run_with_controls("kaplan_meier", nodes, req, NodeSettings(min_row_count=1, nfilter_tab=tab))
    assume(result is not None and len(used) == len(nodes))
    assert result["binning"]["partition"] == "pooled"
    pooled = complete(pd.concat(nodes, ignore_index=True), KM_COLUMNS)
    if max_time is not None:  # rows followed beyond the end of follow-up are censored there
        end = result["binning"]["end_of_follow_up"]
        pooled = pooled.assign(death_90d=np.where(pooled["followup_days"] > end, "no", pooled["death_90d"]),
                               followup_days=np.minimum(pooled["followup_days"], end))
    check_km(result, pooled, grouped)
    for curve in result["curves"]:
        assert all(v == 0 or v >= tab for v in (*curve["events"], *curve["censored"]))
        # every pooled cell is 0 or at least tab, so nobody derives fewer than tab patients at risk
        assert all(v >= tab for v in curve["at_risk"])
