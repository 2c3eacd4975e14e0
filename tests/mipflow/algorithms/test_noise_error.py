"""The error a perturbed mean, std or count carries, and its calibration (ADR 0057).

Calibration: over many independent noise draws (numpy seeds; the keyed noise of a node for the
end-to-end test), the stated 95 % intervals cover the exact statistic of the rows at the stated
rate, within a binomial tolerance computed from the number of trials (a two-sided test that fails
an honest rate with probability 1e-4), never tuned by hand.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtri

from mipflow.algorithms import AnalysisRequest, get_algorithm
from mipflow.algorithms.noise_error import (INTERVAL_LEVEL, NoiseTerm, halfwidth, noisy_count_error,
                                            noisy_mean_and_std, pool_sums, propagate)
from mipflow.protocol.datamodel import load_data_model

#: A rate observed in ``trials`` Bernoulli(level) trials is within this of the level but with
#: probability 1e-4 (normal approximation of the binomial).
FALSE_ALARM = 1e-4


def tolerance(trials: int, level: float = INTERVAL_LEVEL) -> float:
    return float(ndtri(1 - FALSE_ALARM / 2)) * math.sqrt(level * (1 - level) / trials)


# the declared range of age in the stroke data model, and the noise of descriptive_stats at
# epsilon 1 with two variables described (9 blocks): what a node in explore mode draws
LO, HI = 18.0, 90.0
CENTRE, HALF = (LO + HI) / 2, (HI - LO) / 2
BLOCKS = 9


def sds(mechanism: str, epsilon: float = 1.0) -> dict[str, float]:
    """The sd of each piece's noise (Laplace ``b sqrt 2``; a Gaussian of the same sd for the other
    mechanism: the calibration is of the propagation, whatever sd the settings give)."""
    scale = BLOCKS / epsilon
    return {"n": scale * math.sqrt(2), "s1": HALF * scale * math.sqrt(2), "s2": HALF * HALF * scale * math.sqrt(2)}


def draw(rng: np.random.Generator, mechanism: str, sd: float) -> float:
    return float(rng.laplace(0, sd / math.sqrt(2)) if mechanism == "laplace" else rng.normal(0, sd))


def noisy_record(rng: np.random.Generator, values: np.ndarray, mechanism: str) -> dict:
    """A node's ``noisy_sums`` of ``values`` (centred sums, signed noise, the count rounded)."""
    x = values - CENTRE
    sd = sds(mechanism)
    return {"n_total": 0, "moments": {}, "noisy_sums": {
        "n": int(round(len(x) + draw(rng, mechanism, sd["n"]))),
        "s1": math.fsum(x) + draw(rng, mechanism, sd["s1"]),
        "s2": math.fsum(x * x) + draw(rng, mechanism, sd["s2"]),
        "centre": CENTRE, "terms": [[piece, mechanism, v] for piece, v in sd.items()]}}


def ages(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.round(rng.normal(62, 12, n).clip(LO, HI), 1)


def test_halfwidth_is_the_exact_quantile_of_one_laplace_and_of_a_gaussian():
    # Laplace of scale b: P(|X| <= h) = 1 - exp(-h / b)
    assert halfwidth([math.sqrt(2)], []) == pytest.approx(math.log(20), rel=1e-12)
    assert halfwidth([], [2.0]) == pytest.approx(2 * 1.959963984540054, rel=1e-12)
    # two equal Laplace terms: by the closed form of their sum's tail, P(X > x) = (1 + x/b/2) e^{-x/b} / 2
    b, h = 1 / math.sqrt(2), halfwidth([1.0, 1.0], [])
    assert 2 * (1 + h / b / 2) * math.exp(-h / b) / 2 == pytest.approx(1 - INTERVAL_LEVEL, abs=2e-5)
    assert halfwidth([], []) == 0.0
    # not the normal interval: a Laplace noise has only 93.7 % of its mass within 1.96 sds
    assert halfwidth([1.0], []) > 2.1


@pytest.mark.parametrize("laplace, gaussian", [
    pytest.param([1.0, 1.0, 0.3], [], id="three-laplace"),
    pytest.param([3.0, 0.7], [1.0], id="laplace-and-gaussian"),
])
def test_the_halfwidth_of_a_sum_of_noises_covers_it_at_its_level(laplace, gaussian):
    rng, trials = np.random.default_rng(7), 200_000
    total = sum(rng.laplace(0, s / math.sqrt(2), trials) for s in laplace) + sum(rng.normal(0, s, trials)
                                                                                  for s in gaussian)
    rate = float(np.mean(np.abs(total) <= halfwidth(laplace, gaussian)))
    assert abs(rate - INTERVAL_LEVEL) < tolerance(trials)


def test_propagate_weights_each_term_by_its_piece():
    terms = [NoiseTerm("a", "gaussian", 2.0), NoiseTerm("b", "gaussian", 1.0), NoiseTerm("a", "gaussian", 2.0)]
    got = propagate({"a": 0.5, "b": -3.0}, terms)
    assert got.sd == pytest.approx(math.sqrt(1 + 9 + 1), rel=1e-12)
    assert got.halfwidth == pytest.approx(1.959963984540054 * got.sd, rel=1e-12)


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
@pytest.mark.parametrize("rows", [300, 2000])
def test_the_intervals_of_a_noisy_mean_and_std_cover_the_exact_values_at_the_stated_rate(mechanism, rows):
    """Two nodes' noisy sums pooled with an exact node's moments, as the central side does."""
    rng, trials = np.random.default_rng(rows), 4000
    parts = [ages(rng, rows), ages(rng, rows), ages(rng, 50)]
    exact_part = parts[2] - CENTRE
    exact = {"n_total": 50, "moments": {"n": 50, "mean": [float(parts[2].mean())],
                                        "m2": [float(((exact_part - exact_part.mean()) ** 2).sum())]}}
    pooled = np.concatenate(parts)
    mean, std = pooled.mean(), pooled.std(ddof=1)
    covered = {"mean": 0, "std": 0}
    for _ in range(trials):
        sums = pool_sums([noisy_record(rng, parts[0], mechanism), noisy_record(rng, parts[1], mechanism), exact])
        got = noisy_mean_and_std(sums, LO, HI)
        covered["mean"] += got["mean_interval"][0] <= mean <= got["mean_interval"][1]
        covered["std"] += got["std_interval"][0] <= std <= got["std_interval"][1]
        assert got["std"] != 0.0
    for name, hits in covered.items():
        assert abs(hits / trials - INTERVAL_LEVEL) < tolerance(trials), (name, hits / trials)


def test_a_small_cohort_is_covered_at_least_at_the_stated_rate():
    """Where the noise is large against the cohort, the first-order interval is cut to the declared
    range (and the variance to >= 0), which covers more, not less: a one-sided check."""
    rng, trials = np.random.default_rng(3), 4000
    values = ages(rng, 60)
    hits = {"mean": 0, "std": 0}
    for _ in range(trials):
        got = noisy_mean_and_std(pool_sums([noisy_record(rng, values, "laplace")]), LO, HI)
        hits["mean"] += got["mean_interval"][0] <= values.mean() <= got["mean_interval"][1]
        hits["std"] += got["std_interval"][0] <= values.std(ddof=1) <= got["std_interval"][1]
    assert all(h / trials > INTERVAL_LEVEL - tolerance(trials) for h in hits.values()), hits


def test_a_noisy_variance_below_zero_gives_no_std_and_says_the_noise_dominates():
    terms = [[p, "laplace", v] for p, v in sds("laplace").items()]
    # 100 values of spread 5 around the centre, and a sum of squares pushed below s1**2 / n by the noise
    got = noisy_mean_and_std({"n": 100, "s1": 100.0, "s2": 50.0, "centre": CENTRE, "terms": terms}, LO, HI)
    assert got["std"] is None and got["noise_dominates"] is True
    assert got["std_interval"][0] == 0.0 and got["std_interval"][1] > 0
    assert got["mean"] == pytest.approx(CENTRE + 1.0) and got["approximate"] is True
    # a noisy count under 2: nothing about the spread, the whole declared range for the mean
    tiny = noisy_mean_and_std({"n": -3, "s1": 10.0, "s2": 10.0, "centre": CENTRE, "terms": terms}, LO, HI)
    assert tiny["mean"] is None and tiny["mean_interval"] == [LO, HI] and tiny["noise_dominates"] is True


def test_exact_records_add_their_sums_and_no_noise():
    values = np.array([20.0, 30.0, 70.0])
    x = values - CENTRE
    exact = {"moments": {"n": 3, "mean": [float(values.mean())], "m2": [float(((values - values.mean()) ** 2).sum())]}}
    noisy = {"noisy_sums": {"n": 2, "s1": 1.0, "s2": 5.0, "centre": CENTRE, "terms": [["n", "laplace", 1.0]]}}
    sums = pool_sums([exact, noisy])
    assert sums["n"] == 5 and sums["terms"] == [["n", "laplace", 1.0]]
    assert sums["s1"] == pytest.approx(x.sum() + 1.0, rel=1e-12)
    assert sums["s2"] == pytest.approx((x * x).sum() + 5.0, rel=1e-12)


def test_a_pooled_count_cell_states_the_error_of_its_summed_noises():
    got = noisy_count_error([["laplace", 1.5], ["laplace", 1.5], ["gaussian", 2.0]])
    assert got["counts_noise_sd"] == pytest.approx(math.sqrt(1.5 ** 2 * 2 + 4.0), rel=1e-12)
    assert got["counts_interval_halfwidth"] > 1.96 * got["counts_noise_sd"]  # Laplace tails are heavier


# --------------------------------------------------------------------------- end to end, keyed noise


@pytest.fixture(scope="module")
def stroke(stroke_model_path):
    return load_data_model(stroke_model_path)


def test_descriptive_stats_in_explore_mode_states_calibrated_intervals_and_never_a_clamped_std(stroke):
    """The node's release (keyed noise, one key per trial) through the global step: every numerical
    cell carries its intervals, no std is 0.0, and the intervals cover the exact values of the rows
    (per dataset and pooled) at the stated rate."""
    from mipflow.node.controls.explore import KeyedNoise
    from mipflow.node.controls.explore_keys import noise_key

    algo = get_algorithm("descriptive_stats")
    rng = np.random.default_rng(11)
    frames = [pd.DataFrame({"dataset": name, "age": ages(rng, 400), "sex": rng.choice(["M", "F"], 400)})
              for name in ("hospital_a", "hospital_b")]
    request = AnalysisRequest.from_dict({"inputdata": {
        "data_model": stroke.key, "datasets": ["hospital_a", "hospital_b"], "x": [], "y": ["age", "sex"],
        "filters": None}, "parameters": {}})
    truth = {"hospital_a": frames[0]["age"], "hospital_b": frames[1]["age"],
             "all datasets": pd.concat([f["age"] for f in frames])}
    blocks = algo.dp_release.blocks(algo, request, stroke)
    assert blocks == BLOCKS
    trials, hits, cells = 150, 0, 0
    for trial in range(trials):
        aggregates = []
        for i, frame in enumerate(frames):
            noise = KeyedNoise("laplace", 1.0, 0.0, blocks, key=noise_key(f"node {i} trial {trial}".encode()),
                               query=b"calibration", version=b"v1")
            aggregates.append(json.loads(json.dumps(algo.dp_release.release(algo, frame, request, stroke, noise)[0])))
        result = algo.global_step(0, aggregates, request, stroke, None).result
        for item in result["variable_based"] + result["model_based"]:
            data = item["data"]
            if item["variable"] == "sex":
                assert data["approximate"] is True and data["counts_noise_sd"] > 0
                assert all(v >= 0 for v in data["counts"].values())
                continue
            assert data["approximate"] is True and data["std"] != 0.0
            exact = truth[item["dataset"]]
            hits += data["mean_interval"][0] <= exact.mean() <= data["mean_interval"][1]
            hits += data["std_interval"][0] <= exact.std(ddof=1) <= data["std_interval"][1]
            cells += 2
    # cells of one trial share draws (a pooled row holds its datasets'): count trials, not cells
    assert abs(hits / cells - INTERVAL_LEVEL) < tolerance(trials), hits / cells
