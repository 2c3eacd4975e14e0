"""Kaplan-Meier's noisy release (explore mode, DP nodes; ADR 0032): what a node releases, its
sensitivity, how the central side combines noisy counts, and the noise's calibration.

The first-order sd the result states is checked against the spread of the post-processed survival
over many noise draws; the release's noise against the declared mechanism over many keyed draws.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mipflow.algorithms import get_algorithm, prepare_local_data
from mipflow.algorithms.kaplan_meier import DP_BLOCK
from mipflow.algorithms.survival_noise import noisy_at_risk, noisy_curve, survival_noise_sd
from mipflow.algorithms.survival import grid_counts, grid_for, outcome
from mipflow.node.controls.explore import KeyedNoise
from mipflow.node.controls.explore_keys import noise_key
from mipflow.protocol.wire import transport
from tests.mipflow.algorithms.survival_data import STROKE, make_stroke, request

KM = get_algorithm("kaplan_meier")
WEEKLY = {"bin_width": 7.0, "max_time": 364.0}


class ExactNoise:
    """A :class:`~mipflow.algorithms.dp_release.Noise` that adds nothing and records its calls."""

    mechanism = "laplace"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def add(self, values: Sequence[float], sensitivity: float, *, block: str, part: str = "",
            integer: bool = False) -> np.ndarray:
        self.calls.append({"n": len(values), "sensitivity": sensitivity, "block": block, "part": part,
                           "integer": integer})
        return np.asarray(values, dtype=int if integer else float)

    def count(self, value: int, *, block: str, part: str = "") -> int:
        raise AssertionError("not used")

    def sd(self, sensitivity: float) -> float:
        return 0.0


def local(frame: pd.DataFrame, req) -> pd.DataFrame:
    return prepare_local_data(KM, frame, req)


def released(data: pd.DataFrame, req, noise=None) -> dict:
    aggregates, clamped = KM.dp_release.release(KM, data, req, STROKE, noise or ExactNoise())
    assert clamped == {"followup_days": [0.0, float(grid_for(req, STROKE, KM.params(req, STROKE))[-1])]}
    return transport(aggregates)


def flat(aggregates: dict) -> np.ndarray:
    return np.concatenate([np.r_[g["events"], g["censored"]] for g in aggregates["groups"]])


# --------------------------------------------------------------------------- what a node releases


@pytest.mark.parametrize("x", [(), ("sex",)], ids=["overall", "by-sex"])
def test_the_release_is_every_grid_point_of_every_level_from_the_request_and_model_only(x):
    req = request("kaplan_meier", x=x, **WEEKLY)
    grid = grid_for(req, STROKE, KM.params(req, STROKE))
    assert len(grid) == 53 and grid[-1] == 364.0
    short = make_stroke(1, 60)
    short["followup_days"] = np.minimum(short["followup_days"], 30.0)  # the data end long before the grid
    for frame in (make_stroke(2, 170), short):
        noise = ExactNoise()
        out = released(local(frame, req), req, noise)
        levels = [None] if not x else ["M", "F"]  # the data model's enumerations, in its order
        assert [g["level"] for g in out["groups"]] == levels
        assert all(len(g["events"]) == len(g["censored"]) == len(grid) and "ends" not in g for g in out["groups"])
        # one block, sensitivity 1, the levels its parts, counts stay integers
        assert noise.calls == [{"n": 2 * len(grid), "sensitivity": 1, "block": DP_BLOCK,
                                "part": "" if level is None else level, "integer": True} for level in levels]
        assert out["noise"] == {"sd": 0.0, "unit": "count", "mechanism": "laplace"}
        assert KM.dp_release.rows(out) == len(local(frame, req)) == sum(out["group_n"])


def test_one_row_changes_one_count_of_one_group_by_one():
    """The sensitivity the release is calibrated to: L1 = L2 = 1 under adding or removing a row
    (rows beyond max_time included: they are censored at its end)."""
    req = request("kaplan_meier", x=("sex",), **WEEKLY)
    data = local(make_stroke(3, 120), req)
    assert (data["followup_days"] > 364).any()
    whole = flat(released(data, req))
    for i in range(len(data)):
        difference = whole - flat(released(data.drop(index=data.index[i]), req))
        assert np.abs(difference).sum() == 1 and np.sum(difference) == 1


def test_noise_free_counts_give_the_exact_curves():
    """The noisy path's post-processing leaves exact counts unchanged: the same survival as the
    exact global step at every time it reports, constant in between, noise sd 0."""
    req = request("kaplan_meier", x=("sex",), **WEEKLY)
    frames = [local(make_stroke(s, 170), req) for s in (4, 5, 6)]
    noisy = KM.global_step(0, [released(f, req) for f in frames], req, STROKE, None).result
    exact = KM.global_step(0, [transport(KM.local_step(0, f, req, STROKE, None)) for f in frames], req, STROKE,
                           None).result
    assert noisy["noise"]["approximate"] is True and noisy["noise"]["cell_sd"] == 0.0
    for mine, theirs in zip(noisy["curves"], exact["curves"]):
        assert mine["group"] == theirs["group"]
        timeline = np.asarray(mine["timeline"])
        at = np.searchsorted(timeline, theirs["timeline"])
        np.testing.assert_allclose(np.asarray(mine["survival"])[at], theirs["survival"], rtol=1e-12)
        np.testing.assert_array_equal(np.asarray(mine["at_risk"])[at], theirs["at_risk"])
        np.testing.assert_allclose(np.asarray(mine["stderr"])[at], theirs["stderr"], rtol=1e-12)
        assert np.all(np.diff(mine["survival"]) <= 0) and max(mine["noise_sd"]) == 0.0
    assert noisy["logrank"]["chi2"] == pytest.approx(exact["logrank"]["chi2"], rel=1e-9)


def test_at_risk_and_survival_are_post_processed_into_their_ranges():
    rng = np.random.default_rng(0)
    events = np.r_[rng.integers(0, 4, 30), np.zeros(20)] + rng.laplace(0, 3, 50).round()
    censored = np.r_[rng.integers(0, 2, 30), np.zeros(20)] + rng.laplace(0, 3, 50).round()
    at_risk = noisy_at_risk(events, censored)
    assert np.all(np.diff(at_risk) <= 0) and np.all(at_risk >= 0)
    curve = noisy_curve(events + np.r_[np.full(10, 5.0), np.zeros(40)], censored + 40, np.full(50, 18.0), 1.96)
    assert curve is not None
    survival = np.asarray(curve["survival"])
    assert np.all(np.diff(survival) <= 0) and survival.min() >= 0 and survival.max() <= 1
    assert np.all(np.asarray(curve["events"]) >= 0) and np.all(np.asarray(curve["censored"]) >= 0)
    assert np.all(np.asarray(curve["events"]) <= np.asarray(curve["at_risk"]))
    assert np.all((curve["lower_ci"] <= survival + 1e-12) & (survival <= curve["upper_ci"] + 1e-12))
    assert noisy_curve(np.zeros(5) - 3, np.zeros(5), np.ones(5), 1.96) is None  # nobody at risk


# --------------------------------------------------------------------------- the noise it states


def pooled_counts(req, seeds=(7, 8, 9), n=170) -> tuple[np.ndarray, np.ndarray]:
    grid = grid_for(req, STROKE, KM.params(req, STROKE))
    events = censored = 0
    for seed in seeds:
        data = local(make_stroke(seed, n), req)
        index, event = outcome(data, req, STROKE, grid, "yes")
        e, c = grid_counts(index, event, len(grid))
        events, censored = events + e, censored + c
    return np.asarray(events, float), np.asarray(censored, float)


def test_the_first_order_noise_sd_is_the_spread_of_the_noisy_survival():
    """Three nodes' Laplace(1) noise on every count, 1500 draws: the post-processed survival is
    unbiased to well within its sd, its spread is the stated first-order sd, and no draw strays
    beyond 5 of them at any time."""
    req = request("kaplan_meier", **WEEKLY)
    events, censored = pooled_counts(req)
    n = np.cumsum((events + censored)[::-1])[::-1]
    exact = np.cumprod(1 - events / n)
    variance = np.full(len(events), 3 * 2.0)  # three nodes, Laplace b = 1: variance 2 each
    first_order = survival_noise_sd(exact, events, n, variance)
    rng = np.random.default_rng(1)
    draws, worst = [], []
    for _ in range(1500):
        noise = rng.laplace(0, 1, (2, 3, len(events))).sum(axis=1)
        curve = noisy_curve(events + noise[0], censored + noise[1], variance, 1.96)
        assert curve is not None and len(curve["survival"]) == len(events)  # every weekly point kept
        draws.append(curve["survival"])
        worst.append(np.max(np.abs(curve["survival"] - exact)[1:] / np.asarray(curve["noise_sd"])[1:]))
    draws = np.array(draws)
    later = slice(4, None)  # past the first weeks, where survival is pinned near 1
    np.testing.assert_allclose(draws.std(axis=0)[later], first_order[later], rtol=0.1)
    assert np.all(np.abs(draws.mean(axis=0) - exact)[later] < 0.15 * first_order[later])
    assert max(worst) < 5


def keyed(i: int, mechanism: str = "laplace") -> KeyedNoise:
    return KeyedNoise(mechanism, 1.0, 1e-6, 1, key=noise_key(b"km" * 16), query=b"kaplan_meier",
                      version=hashlib.sha256(str(i).encode()).digest())


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_the_released_counts_carry_the_declared_noise(mechanism):
    """Over 600 keyed draws (data versions) of one node's release: every count's noise has mean 0,
    the declared sd (plus 1/12 from rounding) and the declared distribution at the half-integers;
    the release states that sd."""
    req = request("kaplan_meier", x=("sex",), **WEEKLY)
    data = local(make_stroke(10, 170), req)
    exact = flat(released(data, req))
    draws, sds = [], set()
    for i in range(600):
        noise = keyed(i, mechanism)
        out = released(data, req, noise)
        draws.append(flat(out) - exact)
        sds.add(out["noise"]["sd"])
        assert out["noise"]["mechanism"] == mechanism
    draws = np.concatenate(draws)
    scale = noise.scale(1)
    reference = stats.laplace(scale=scale) if mechanism == "laplace" else stats.norm(scale=scale)
    assert len(sds) == 1 and sds.pop() == pytest.approx(reference.std(), rel=1e-12)
    assert scale == pytest.approx(1.0 if mechanism == "laplace" else 1 / math.sqrt(2 * noise.rho))
    m = len(draws)  # every count of every draw has its own keyed uniform: independent
    kurtosis = 6.0 if mechanism == "laplace" else 3.0
    assert abs(draws.mean()) < 5 * reference.std() / math.sqrt(m)
    assert abs(draws.var() / (reference.var() + 1 / 12) - 1) < 5 * math.sqrt((kurtosis - 1) / m)
    for k in (-3, -1, 0, 2):
        assert abs(np.mean(draws <= k) - reference.cdf(k + 0.5)) < 5 * math.sqrt(0.25 / m)
    assert noise.noise_sd() == {DP_BLOCK: {"sd": reference.std(), "unit": "count"}}


def test_the_same_release_on_the_same_version_is_the_same_bytes():
    req = request("kaplan_meier", x=("sex",), **WEEKLY)
    data = local(make_stroke(11, 170), req)
    assert released(data, req, keyed(1)) == released(data, req, keyed(1))
    assert released(data, req, keyed(1)) != released(data, req, keyed(2))


def test_the_noisy_log_rank_test_keeps_its_level_and_sees_a_real_difference():
    """Two groups of 250 on a weekly grid over a year, three nodes' Laplace(1) noise on every count:
    under equal hazards the noisy test rejects at most about 5 % of the time at the 5 % level (the
    noise is in its variance); with a hazard ratio of 2 it rejects almost always."""
    from mipflow.algorithms.survival_noise import noisy_logrank

    rng = np.random.default_rng(5)
    weeks = 53

    def one(ratio: float) -> float:
        events, at_risk = [], []
        for scale in (400 / 7, 400 / 7 / ratio):
            time, censor = rng.exponential(scale, 250), rng.uniform(0, 2400 / 7, 250)
            seen = np.minimum(time, censor)
            died = (time <= censor) & (seen <= weeks - 1)
            index = np.minimum(np.ceil(seen), weeks - 1).astype(int)
            e = np.bincount(index[died], minlength=weeks) + rng.laplace(0, 1, (3, weeks)).sum(axis=0)
            c = np.bincount(index[~died], minlength=weeks) + rng.laplace(0, 1, (3, weeks)).sum(axis=0)
            events.append(e)
            at_risk.append(noisy_at_risk(e, c))
        result = noisy_logrank(np.vstack(events), np.vstack(at_risk), np.full(weeks, 6.0))
        assert result["df"] == 1 and result["approximate"] is True
        return result["p_value"]

    null = np.array([one(1.0) for _ in range(1000)])
    assert np.mean(null < 0.05) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 1000)
    assert np.mean([one(2.0) < 0.05 for _ in range(50)]) >= 0.9


def test_an_exact_node_that_cut_max_time_earlier_cuts_the_noisy_nodes_counts_there():
    """A node without noise releases its merged bins cut at its last bin end before max_time (issue 14);
    the central side cuts the noisy node's counts at the same end (later counts censored there): with
    noise-free counts, the result equals the exact path's on the same two nodes, and it reports the
    end of follow-up used."""
    from mipflow.node.controls.disclosure import DisclosureControls
    from mipflow.node.home import NodeSettings

    req = request("kaplan_meier", **WEEKLY)
    noisy_frame, exact_frame = local(make_stroke(4, 170), req), local(make_stroke(9, 80, scale_days=200), req)
    exact_release = transport(DisclosureControls(NodeSettings(nfilter_tab=5)).release(
        KM, req, STROKE, 0, transport(KM.local_step(0, exact_frame, req, STROKE, None))))
    # bin ends are fine-grid indices: followup_days is an integer variable from 0, so day 364 is index 364
    last = int(grid_for(req, STROKE, KM.params(req, STROKE))[-1])
    assert 0 < exact_release["groups"][0]["ends"][-1] < last  # cut before max_time
    mixed = KM.global_step(0, [released(noisy_frame, req), exact_release], req, STROKE, None).result
    exact = KM.global_step(0, [transport(KM.local_step(0, noisy_frame, req, STROKE, None)), exact_release], req,
                           STROKE, None).result
    end = exact["binning"]["end_of_follow_up"]
    assert mixed["binning"]["end_of_follow_up"] == end < 364.0 and "moved down" in mixed["binning"]["note"]
    assert mixed["noise"]["cell_sd"] == 0.0
    for mine, theirs in zip(mixed["curves"], exact["curves"]):
        assert mine["group"] == theirs["group"] and max(mine["timeline"]) <= end
        assert mine["n_obs"] == theirs["n_obs"] and mine["n_events"] == theirs["n_events"]
        at = np.searchsorted(np.asarray(mine["timeline"]), theirs["timeline"])
        np.testing.assert_allclose(np.asarray(mine["survival"])[at], theirs["survival"], rtol=1e-12)
        np.testing.assert_array_equal(np.asarray(mine["at_risk"])[at], theirs["at_risk"])
        np.testing.assert_array_equal(np.asarray(mine["censored"])[at], theirs["censored"])


def test_noisy_counts_folded_into_the_last_censorings_add_their_variance_to_the_noise_sd():
    """A folded variance (censored_tail) enters each survival's first-order sd as the counts of a later
    bin do: d log S_k / d c = A_k for a censoring count at or after bin k, and a later bin's events
    weigh alike, so a tail of 8 on the censorings equals one more bin with variance 4 on each."""
    events, censored = np.array([5.0, 4.0, 6.0]), np.array([3.0, 2.0, 20.0])
    variance = np.array([2.0, 2.0, 2.0])
    q = stats.norm.ppf(0.975)
    folded = noisy_curve(events, censored, variance, q, censored_tail=8.0)
    # the last bin's 20 censorings moved to a bin of their own after it, variance 4 on its two counts
    spread = noisy_curve(np.r_[events, 0.0], np.r_[censored[:-1], 0.0, censored[-1]], np.r_[variance, 4.0], q)
    plain = noisy_curve(events, censored, variance, q)
    np.testing.assert_allclose(folded["noise_sd"], spread["noise_sd"][:3], rtol=1e-12)
    assert np.all(folded["noise_sd"][1:] > plain["noise_sd"][1:])
