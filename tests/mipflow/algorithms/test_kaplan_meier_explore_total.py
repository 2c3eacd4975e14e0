"""Explore-mode Kaplan-Meier without ``max_time`` (ADR 0032, "the at-risk totals from the decision count"):
the central side's at-risk counts anchored to each node's decision count instead of the sum of every noisy cell.

Issue 14 item 7: two 60-patient nodes on the ten-year weekly grid (2 x 523 noisy cells a node, sd about 65 on
their sum) came out with nobody at risk in several percent of draws, and the analysis failed.  Here the same
releases are post-processed with and without the nodes' decision counts: without them some draws leave no
curve (what used to fail), with them none does, and the anchored totals carry the stated noise.  Rates are
checked against the binomial law of the number of draws (false alarm 1e-4).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mipflow.algorithms import get_algorithm, prepare_local_data
from mipflow.algorithms.survival_noise import ROW_COUNT_KEY, noisy_curve, survival_noise_sd, with_decision_count
from mipflow.central.report.readable import result_warnings
from mipflow.node.controls.explore_decision import decision_split
from mipflow.protocol.wire import transport
from tests.mipflow.algorithms.survival_data import STROKE, make_stroke, request
from tests.mipflow.algorithms.test_kaplan_meier_dp import ExactNoise, pooled_counts

KM = get_algorithm("kaplan_meier")
WEEKLY = {"bin_width": 7.0, "max_time": 364.0}
FALSE_ALARM = 1e-4
#: the shipped split of one explore step (epsilon 1, min_row_count 10): the release gets 0.70
SPLIT = decision_split("laplace", 1.0, 0.0, 10)


class DrawnNoise:
    """Laplace noise of the release's scale from a seeded generator (the keyed noise's law, tested in
    test_kaplan_meier_dp.py; drawn here by numpy to keep hundreds of ten-year releases fast)."""

    mechanism = "laplace"

    def __init__(self, rng: np.random.Generator, epsilon: float) -> None:
        self.rng, self.b = rng, 1.0 / epsilon

    def add(self, values, sensitivity, *, block, part="", integer=False):
        noisy = np.asarray(values, float) + self.rng.laplace(0.0, self.b * sensitivity, len(values))
        return np.rint(noisy).astype(int) if integer else noisy

    def sd(self, sensitivity: float) -> float:
        return self.b * sensitivity * math.sqrt(2.0)


def decision_count(rng: np.random.Generator, rows: int) -> int:
    """The node's decision count (explore_decision.noisy_row_count's law)."""
    return max(int(np.rint(rows + rng.laplace(0.0, SPLIT.count_scale))), 0)


def node_release(rng, data, req) -> tuple[dict, dict | None]:
    """One explore node's aggregates (with the decision count, as release_explore carries it) or None
    when the count refuses the node."""
    aggregates, _ = KM.dp_release.release(KM, data, req, STROKE, DrawnNoise(rng, SPLIT.release_epsilon))
    count = decision_count(rng, len(data))
    if count < SPLIT.threshold:
        return aggregates, None
    return aggregates, {**aggregates, ROW_COUNT_KEY: {"count": count, "sd": SPLIT.count_sd}}


def test_two_sixty_patient_nodes_over_ten_years_always_get_a_curve_with_their_decision_counts():
    """The reproduction and the fix on the same draws: 200 pairs of releases of two 60-patient nodes, weekly
    grid over the declared 0..3650 days, no max_time.  From the cells alone (the old central step) at least
    5 % of draws leave nobody at risk (measured about 12 % at the release's epsilon of 0.70); with the
    decision counts none does, the result says how many nodes anchored it, and it warns of nothing."""
    req = request("kaplan_meier", bin_width=7.0)
    frames = [prepare_local_data(KM, make_stroke(seed, 60), req) for seed in (1, 2)]
    assert [len(f) for f in frames] == [60, 60]
    rng = np.random.default_rng(14)
    trials, old_empty, new_empty, starts = 200, 0, 0, []
    for _ in range(trials):
        released = [node_release(rng, f, req) for f in frames]
        assert all(anchored is not None for _, anchored in released)  # a node of 60 is refused about 1e-7
        old = KM.global_step(0, [transport(a) for a, _ in released], req, STROKE, None).result
        new = KM.global_step(0, [transport(a) for _, a in released], req, STROKE, None).result
        old_empty += not old["curves"]
        assert old["noise"]["decision_counts"] == 0 and new["noise"]["decision_counts"] == 2
        if not new["curves"]:
            new_empty += 1
            continue
        assert new["noise"]["warnings"] == [] and new["noise"]["approximate"] is True
        starts.append(new["curves"][0]["at_risk"][0])
    assert old_empty >= stats.binom.ppf(FALSE_ALARM, trials, 0.05), old_empty
    assert new_empty == 0  # a pooled start under 1 needs the cells 180 sds below their total
    # the pooled start is about the 120 rows: two counts of sd 4.7 (and the isotonic projection's lift)
    assert abs(np.mean(starts) - 120) < 3.0 and np.std(starts) < 2 * math.sqrt(2) * SPLIT.count_sd


def stated_total_sd(cells: int, s2: float, v: float) -> float:
    """The sd of the anchored total (inverse-variance mean of the count and the cells' sum), rounding included."""
    w = cells * s2 / (cells * s2 + v)
    return math.sqrt(w ** 2 * (v + 1 / 12) + (1 - w) ** 2 * cells * (s2 + 1 / 12))


def test_the_anchored_total_carries_the_stated_noise():
    """Calibration of what the central side now computes from the carried count: over 3000 draws of one
    60-patient node's ten-year release, the anchored total has mean 60 and the stated variance (moments
    within 5 of their standard errors), and it falls beyond 3 stated sds no more often than a Laplace
    variable does (binomial bound)."""
    req = request("kaplan_meier", bin_width=7.0)
    data = prepare_local_data(KM, make_stroke(3, 60), req)
    rng = np.random.default_rng(15)
    errors = []
    for _ in range(3000):
        aggregates, _ = KM.dp_release.release(KM, data, req, STROKE, DrawnNoise(rng, SPLIT.release_epsilon))
        count = {"count": int(np.rint(60 + rng.laplace(0.0, SPLIT.count_scale))), "sd": SPLIT.count_sd}
        shifted, weight = with_decision_count({**aggregates, ROW_COUNT_KEY: count})
        cells = sum(len(g["events"]) + len(g["censored"]) for g in shifted["groups"])
        s2 = aggregates["noise"]["sd"] ** 2
        assert weight == pytest.approx(s2 * s2 / (cells * s2 + SPLIT.count_sd ** 2), rel=1e-12)
        errors.append(sum(sum(g["events"]) + sum(g["censored"]) for g in shifted["groups"]) - 60)
    errors = np.asarray(errors)
    sd = stated_total_sd(cells, s2, SPLIT.count_sd ** 2)
    assert sd < 1.05 * SPLIT.count_sd  # against about 65 from the cells alone
    m = len(errors)
    assert abs(errors.mean()) < 5 * sd / math.sqrt(m)
    assert abs(errors.var() / sd ** 2 - 1) < 5 * math.sqrt((6.0 - 1) / m)
    beyond = int(np.sum(np.abs(errors) > 3 * sd))
    assert beyond <= stats.binom.isf(FALSE_ALARM, m, math.exp(-3 * math.sqrt(2))), beyond


def test_the_first_order_noise_sd_takes_the_decision_counts_into_account():
    """Three nodes of 170 on a one-year weekly grid, each node's cells shifted to agree with its decision
    count: over 1500 draws the spread of the survival is the stated first-order sd (within 10 %), which is
    below the sd without the constraint (the totals no longer carry the cells' noise)."""
    req = request("kaplan_meier", **WEEKLY)
    events, censored = pooled_counts(req)
    k = len(events)
    n = np.cumsum((events + censored)[::-1])[::-1]
    exact = np.cumprod(1 - events / n)
    b, s2, v = 1 / SPLIT.release_epsilon, 2 / SPLIT.release_epsilon ** 2, SPLIT.count_sd ** 2
    a = s2 / (2 * k * s2 + v)
    variance = np.full(k, 3 * s2)
    stated = survival_noise_sd(exact, events, n, variance, constraint=3 * a * s2)
    loose = survival_noise_sd(exact, events, n, variance)
    rng = np.random.default_rng(16)
    draws = []
    for _ in range(1500):
        noise = rng.laplace(0, b, (3, 2, k))
        shift = a * (rng.laplace(0, SPLIT.count_scale, 3) - noise.sum(axis=(1, 2)))  # count less cells, a node
        total = noise.sum(axis=0) + shift.sum()
        curve = noisy_curve(events + total[0], censored + total[1], variance, 1.96, constraint=3 * a * s2)
        assert curve is not None and len(curve["survival"]) == k
        draws.append(curve["survival"])
    later = slice(4, None)
    np.testing.assert_allclose(np.std(draws, axis=0)[later], stated[later], rtol=0.1)
    assert np.all(stated[later] < loose[later])


def synthetic_aggregates(rng, ratio: float, nodes: int = 3, per_group: int = 85, weeks: int = 53) -> list[dict]:
    """Explore releases of ``nodes`` nodes on the one-year weekly grid by sex (M, F), F's hazard ``ratio``
    times M's, with the decision count carried."""
    out = []
    for _ in range(nodes):
        groups = []
        for level, scale in (("M", 400 / 7), ("F", 400 / 7 / ratio)):
            time, censor = rng.exponential(scale, per_group), rng.uniform(0, 2400 / 7, per_group)
            seen = np.minimum(time, censor)
            died = (time <= censor) & (seen <= weeks - 1)
            index = np.minimum(np.ceil(seen), weeks - 1).astype(int)
            noisy = DrawnNoise(rng, SPLIT.release_epsilon)
            cells = np.r_[np.bincount(index[died], minlength=weeks), np.bincount(index[~died], minlength=weeks)]
            cells = noisy.add(cells, 1, block="", integer=True).tolist()
            groups.append({"level": level, "events": cells[:weeks], "censored": cells[weeks:]})
        out.append(transport({"group_n": [0, 0], "groups": groups,
                               "noise": {"sd": noisy.sd(1), "unit": "count", "mechanism": "laplace"},
                               ROW_COUNT_KEY: {"count": decision_count(rng, 2 * per_group), "sd": SPLIT.count_sd}}))
    return out


def test_the_log_rank_test_on_anchored_counts_keeps_its_level_and_power():
    """The log-rank test of the central step, on cells shifted by the decision counts (three nodes of 170 by
    sex, one-year weekly grid, the release's epsilon 0.70): under equal hazards it rejects at most 5 %
    (binomial bound over 400 analyses); with a hazard ratio of 2 it rejects most of the time (measured about
    83 %), and on the same releases as often as without the counts (the shift is the same in both groups)."""
    req = request("kaplan_meier", x=("sex",), **WEEKLY)
    rng = np.random.default_rng(17)

    def p_values(ratio: float) -> tuple[float, float]:
        aggregates = synthetic_aggregates(rng, ratio)
        result = KM.global_step(0, aggregates, req, STROKE, None).result
        assert [c["group"] for c in result["curves"]] == ["M", "F"] and result["noise"]["decision_counts"] == 3
        assert result["logrank"]["approximate"] is True and result["logrank"]["df"] == 1
        cells_only = [{k: v for k, v in a.items() if k != ROW_COUNT_KEY} for a in aggregates]
        return result["logrank"]["p_value"], KM.global_step(0, cells_only, req, STROKE, None).result["logrank"]["p_value"]

    null = np.array([p_values(1.0) for _ in range(400)])
    assert np.sum(null[:, 0] < 0.05) <= stats.binom.isf(FALSE_ALARM, 400, 0.05)
    power = np.array([p_values(2.0) for _ in range(60)]) < 0.05
    assert power[:, 0].sum() >= stats.binom.ppf(FALSE_ALARM, 60, 0.75)
    assert abs(int(power[:, 0].sum()) - int(power[:, 1].sum())) <= 3


def test_exact_counts_with_an_exact_decision_count_give_the_exact_curves():
    """Noise-free cells and a count equal to their total: nothing is shifted, the curves are the exact step's."""
    req = request("kaplan_meier", x=("sex",), **WEEKLY)
    frames = [prepare_local_data(KM, make_stroke(s, 170), req) for s in (4, 5)]
    releases = []
    for f in frames:
        aggregates, _ = KM.dp_release.release(KM, f, req, STROKE, ExactNoise())
        releases.append(transport({**aggregates, ROW_COUNT_KEY: {"count": len(f), "sd": SPLIT.count_sd}}))
    noisy = KM.global_step(0, releases, req, STROKE, None).result
    exact = KM.global_step(0, [transport(KM.local_step(0, f, req, STROKE, None)) for f in frames], req, STROKE,
                           None).result
    for mine, theirs in zip(noisy["curves"], exact["curves"]):
        at = np.searchsorted(np.asarray(mine["timeline"]), theirs["timeline"])
        np.testing.assert_allclose(np.asarray(mine["survival"])[at], theirs["survival"], rtol=1e-12)
        np.testing.assert_array_equal(np.asarray(mine["at_risk"])[at], theirs["at_risk"])
    assert noisy["noise"]["decision_counts"] == 0  # sd 0 on the cells: nothing to weigh


def test_a_group_the_noise_leaves_with_nobody_at_risk_is_a_warning_not_a_failure():
    """Cells whose noise sums far below zero (a DP node carries no decision count): the group gets no curve,
    the result says which and what to ask instead, and the results page shows it as a noise warning; with no
    curve at all the result still comes back, labelled."""
    req = request("kaplan_meier", x=("sex",), bin_width=7.0)
    k = len(KM.dp_release.release(KM, prepare_local_data(KM, make_stroke(6, 5), req), req, STROKE,
                                  ExactNoise())[0]["groups"][0]["events"])
    healthy = {"level": "M", "events": [3] * 20 + [0] * (k - 20), "censored": [2] * 20 + [0] * (k - 20)}
    drowned = {"level": "F", "events": [-1] * k, "censored": [-1] * k}
    noise = {"sd": 2.0, "unit": "count", "mechanism": "laplace"}
    one = KM.global_step(0, [{"group_n": [100, 0], "groups": [healthy, drowned], "noise": noise}], req, STROKE,
                         None).result
    assert [c["group"] for c in one["curves"]] == ["M"] and one["logrank"] is None
    (warning,) = one["noise"]["warnings"]
    assert "group(s) F" in warning and "max_time" in warning
    assert any(w.kind == "noise" and w.text == warning for w in result_warnings({"result": one}))
    none = KM.global_step(0, [{"group_n": [0, 0], "groups": [{**drowned, "level": "M"}, drowned], "noise": noise}],
                          req, STROKE, None).result
    assert none["curves"] == [] and none["noise"]["warnings"][0].startswith("no survival curve")
