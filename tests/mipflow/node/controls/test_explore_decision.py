"""The decision count of explore mode (ADR 0032, "a decision count of its own"): its false-refusal rate
over many keyed draws, its budget split, and the by-product it replaced (Kaplan-Meier's sum of cells).

Every rate is checked against the binomial law of the number of trials (false alarm 1e-4, two-sided
where the rate is stated exactly, one-sided where it is a bound).
"""
from __future__ import annotations

import hashlib
import math

import pytest
from scipy import stats

from mipflow.algorithms import get_algorithm, prepare_local_data
from mipflow.node.controls.explore import KeyedNoise, step_cost
from mipflow.node.controls.explore_decision import (
    BLOCK,
    CLEAR_MULTIPLE,
    FALSE_REFUSAL,
    MAX_SHARE,
    decision_split,
    false_refusal_rate,
    noisy_row_count,
    refusal_note,
)
from mipflow.node.controls.explore_keys import noise_key
from mipflow.node.home import NodeSettings
from tests.mipflow.algorithms.survival_data import STROKE, make_stroke, request

DELTA = 1e-6
FALSE_ALARM = 1e-4
KEY = noise_key(b"node secret of the decision tests")


def counter(split, trial: int, query: bytes = b"the decision tests") -> KeyedNoise:
    """The decision count's noise of one keyed draw (as ``release_explore`` builds it), ``trial`` its version."""
    return KeyedNoise(split.mechanism, split.count_epsilon, DELTA, 1, rho=split.count_rho, key=KEY, query=query,
                      version=hashlib.sha256(str(trial).encode()).digest())


def refused(split, rows: int, trials: int) -> int:
    return sum(noisy_row_count(counter(split, t), rows) < split.threshold for t in range(trials))


def upper(trials: int, rate: float) -> int:
    """The largest count of events a rate of ``rate`` gives in ``trials`` (false alarm ``FALSE_ALARM``)."""
    return int(stats.binom.isf(FALSE_ALARM, trials, rate))


def bounds(trials: int, rate: float) -> tuple[int, int]:
    return (int(stats.binom.ppf(FALSE_ALARM / 2, trials, rate)), int(stats.binom.isf(FALSE_ALARM / 2, trials, rate)))


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_a_node_of_three_times_the_threshold_is_refused_at_most_once_in_a_thousand(mechanism):
    split = decision_split(mechanism, 1.0, DELTA, 10)  # the shipped epsilon and min_row_count
    assert split.false_refusal() == pytest.approx(FALSE_REFUSAL, rel=1e-9)
    trials = 20000
    seen = refused(split, CLEAR_MULTIPLE * 10, trials)
    assert seen <= upper(trials, FALSE_REFUSAL), seen
    # the node of the thirteenth review: 60 rows, refused about once in eight on Kaplan-Meier's by-product
    assert refused(split, 60, 2000) == 0  # its rate is below 1e-7


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
@pytest.mark.parametrize("rows", [0, 7, 10, 14], ids=["empty", "under", "at", "over"])
def test_the_refusal_rate_is_the_stated_law_near_the_threshold(mechanism, rows):
    """Where refusals are frequent the keyed draws follow the law the bound is computed from (an exact
    rule, or a count that is not the noisy one, is far outside these bounds)."""
    split = decision_split(mechanism, 1.0, DELTA, 10)
    trials = 3000
    rate = false_refusal_rate(mechanism, split.count_scale, rows, 10)
    low, high = bounds(trials, rate)
    assert low <= refused(split, rows, trials) <= high
    assert 0.001 < rate < 0.999  # a decision on noise: neither answer is certain near the threshold


def test_the_count_and_the_release_share_the_steps_budget():
    """Laplace: the epsilons add up to the step's; Gaussian: the rhos; both parts' OpenDP costs are the
    step's cost, charged once at admission."""
    lap = decision_split("laplace", 1.0, DELTA, 10)
    assert lap.count_epsilon + lap.release_epsilon == pytest.approx(1.0, rel=1e-12)
    assert lap.count_scale == pytest.approx((2 * 10 + 0.5) / math.log(1 / (2 * FALSE_REFUSAL)))
    gau = decision_split("gaussian", 1.0, DELTA, 10)
    assert gau.count_rho + gau.release_rho == pytest.approx(step_cost("gaussian", 1.0, DELTA).rho, rel=1e-12)
    for split in (lap, gau):
        count = counter(split, 0)
        noisy_row_count(count, 100)
        release = KeyedNoise(split.mechanism, split.release_epsilon, DELTA, 3, rho=split.release_rho, key=KEY,
                             query=b"q", version=b"v")
        release.add([1.0, 2.0], 1.0, block="a")
        release.add([5], 1, block="b", integer=True)
        release.add([1.0], 2.0, block="c")
        total = step_cost(split.mechanism, 1.0, DELTA)
        if split.mechanism == "laplace":
            assert count.cost().epsilon + release.cost().epsilon == pytest.approx(total.epsilon, rel=1e-9)
        else:
            assert count.cost().rho + release.cost().rho == pytest.approx(total.rho, rel=1e-9)
        assert set(count.noise_sd()) == {BLOCK}
        assert count.noise_sd()[BLOCK] == {"sd": pytest.approx(split.count_sd), "unit": "count"}


@pytest.mark.parametrize("threshold", [1, 3, 5])
def test_a_small_threshold_takes_at_most_half_the_step_and_states_its_rate(threshold):
    for mechanism in ("laplace", "gaussian"):
        split = decision_split(mechanism, 1.0, DELTA, threshold)
        if mechanism == "laplace":
            assert split.count_epsilon <= MAX_SHARE * 1.0 + 1e-12
        else:
            assert split.count_rho <= MAX_SHARE * step_cost("gaussian", 1.0, DELTA).rho * (1 + 1e-12)
        assert split.label()["false_refusal"] == {"rows": CLEAR_MULTIPLE * threshold,
                                                  "at_most": pytest.approx(split.false_refusal())}
        trials = 2000
        rate = split.false_refusal()
        assert refused(split, CLEAR_MULTIPLE * threshold, trials) <= upper(trials, rate)
        if rate > 1e-3:
            assert "once in a thousand" not in refusal_note(split)


def test_the_split_and_the_refusal_depend_on_settings_only():
    settings = NodeSettings()
    split = decision_split(settings.explore_mechanism, settings.explore_epsilon, settings.dp_budget_delta,
                           max(settings.min_row_count, settings.nfilter_subset))
    assert split.threshold == 10 and split.mechanism == "laplace"
    note = refusal_note(split)
    assert not any(ch.isdigit() for ch in note)  # no number a refusal could be read as a count
    assert "once in a thousand" in note


def test_the_by_product_it_replaces_was_far_noisier_for_kaplan_meier():
    """What the thirteenth review saw: a weekly Kaplan-Meier over the declared ten years releases 1046
    noisy cells; their sum (the old decision) has an sd of about 46 rows, so a 60-patient node fell under
    10 about once in eight.  The decision count's sd is 4.7 whatever the grid."""
    km = get_algorithm("kaplan_meier")
    req = request("kaplan_meier", bin_width=7.0)
    data = prepare_local_data(km, make_stroke(1, 60), req)
    assert len(data) == 60
    trials, old = 400, 0
    for t in range(trials):
        noise = KeyedNoise("laplace", 1.0, 0.0, 1, key=KEY, query=b"by-product", version=str(t).encode())
        aggregates, _ = km.dp_release.release(km, data, req, STROKE, noise)
        old += km.dp_release.rows(aggregates) < 10
    cells = sum(2 * len(g["events"]) for g in aggregates["groups"])
    assert cells == 1046
    sd = math.sqrt(2.0 * cells)  # the sum of 1046 Laplace(1): about normal
    by_product = stats.norm.cdf((10 - 0.5 - 60) / sd)
    low, high = bounds(trials, by_product)
    assert by_product > 0.1 and low <= old <= high
    split = decision_split("laplace", 1.0, 0.0, 10)
    assert split.count_sd < sd / 9 and refused(split, 60, trials) == 0
