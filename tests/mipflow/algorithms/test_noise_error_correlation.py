"""A correlation from noisy sufficient statistics: its noise interval, confidence interval and
p-value account for the noise, and are calibrated (ADR 0057).

The noise-only interval is checked through the node's own keyed release and the global step (it is
about the exact sample correlation of the rows); the confidence interval of the population
correlation and the p-value under no correlation by simulating the rows *and* the noise (numpy
seeds), with the release's noise sd.  Tolerances are binomial in the number of trials
(:mod:`calibration`).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import AnalysisRequest, get_algorithm
from mipflow.algorithms.dp_release import moment_sensitivity
from mipflow.algorithms.noise_error import INTERVAL_LEVEL
from mipflow.algorithms.pearson_correlation import correlation_tests, noisy_correlation, scaled_sums
from mipflow.node.controls.explore import KeyedNoise
from mipflow.node.controls.explore_keys import noise_key
from mipflow.protocol.datamodel import load_data_model
from tests.mipflow.algorithms.calibration import tolerance


@pytest.fixture(scope="module")
def stroke(stroke_model_path):
    return load_data_model(stroke_model_path)


def test_the_noise_interval_of_r_covers_the_rows_exact_correlation_through_the_nodes_release(stroke):
    algo = get_algorithm("pearson_correlation")
    req = AnalysisRequest.from_dict({"inputdata": {"data_model": stroke.key, "datasets": ["hospital_a"], "x": [],
                                                   "y": ["age", "nihss_admission"], "filters": None},
                                     "parameters": {"alpha": 0.05}})
    rng = np.random.default_rng(21)
    parts = []
    for _ in range(2):
        age = rng.normal(62, 12, 2500).clip(18, 90)
        parts.append(pd.DataFrame({"dataset": "hospital_a", "age": np.round(age, 1),
                                   "nihss_admission": np.round((4 + 0.15 * age + rng.normal(0, 6, 2500)).clip(0, 42))}))
    pooled = pd.concat(parts)
    exact = float(np.corrcoef(pooled["age"], pooled["nihss_admission"])[0, 1])
    trials, hits = 300, 0
    for trial in range(trials):
        aggregates = [json.loads(json.dumps(algo.dp_release.release(algo, f, req, stroke, KeyedNoise(
            "laplace", 1.0, 0.0, 1, key=noise_key(f"{i} {trial}".encode()), query=b"r", version=b"v"))[0]))
            for i, f in enumerate(parts)]
        result = algo.global_step(0, aggregates, req, stroke, None).result
        noise = result["noise"]
        assert noise["approximate"] and noise["p_values_account_for_noise"] and noise["noisy_nodes"] == 2
        low, high = result["r_noise_low"]["age"][1], result["r_noise_high"]["age"][1]
        hits += low <= exact <= high
        assert result["low_confidence_intervals"]["age"][1] <= result["correlations"]["age"][1] \
            <= result["high_confidence_intervals"]["age"][1]
    assert abs(hits / trials - INTERVAL_LEVEL) < tolerance(trials, INTERVAL_LEVEL), hits / trials


# two numerical columns scaled into [-1, 1], one Laplace block at epsilon 1: the release's noise
SD = moment_sensitivity(("", ""))[0] * math.sqrt(2)


def simulated(rng: np.random.Generator, rho: float, rows: int, nodes: int = 2) -> dict:
    """Pooled noisy scaled sums of ``nodes`` nodes' rows drawn with population correlation ``rho``."""
    parts = []
    for _ in range(nodes):
        z = rng.multivariate_normal([0.1, -0.1], 0.09 * np.array([[1, rho], [rho, 1]]), rows).clip(-1, 1)
        s2 = z.T @ z
        noise = rng.laplace(0, SD / math.sqrt(2), 6)  # n, s1 (2), s2 (3 distinct entries)
        s2n = s2 + np.array([[noise[3], noise[4]], [noise[4], noise[5]]])
        parts.append(scaled_sums(rows + noise[0], z.sum(axis=0) + noise[1:3], s2n, "laplace", SD ** 2))
    return {"n": sum(p["n"] for p in parts), "s1": np.sum([p["s1"] for p in parts], axis=0),
            "s2": np.sum([p["s2"] for p in parts], axis=0),
            "noise": {k: sum(p["noise"][k] for p in parts) for k in parts[0]["noise"]}}


def test_the_confidence_interval_covers_the_population_correlation_with_the_noise_in_it():
    rng, trials, rho, hits = np.random.default_rng(8), 3000, 0.3, 0
    for _ in range(trials):
        got = noisy_correlation(simulated(rng, rho, 1500), 0, 1, alpha=0.05)
        hits += got["ci_low"] <= rho <= got["ci_high"]
    assert abs(hits / trials - 0.95) < tolerance(trials, 0.95), hits / trials


def test_the_p_value_of_no_correlation_accounts_for_the_noise_and_the_old_one_did_not():
    """Under no correlation, p < 0.05 in 5 % of the trials; the p-value of the noisy statistics taken
    as exact (the old one) rejects far more often: the noise dominates at this size, and says so."""
    rng, trials = np.random.default_rng(9), 3000
    rejected = old = dominated = 0
    for _ in range(trials):
        sums = simulated(rng, 0.0, 1500)
        got = noisy_correlation(sums, 0, 1, alpha=0.05)
        rejected += got["p_value"] < 0.05
        dominated += got["noise_dominates"]
        old += float(correlation_tests(np.array(got["r"]), int(round(sums["n"])), 0.05)[0]) < 0.05
    assert abs(rejected / trials - 0.05) < tolerance(trials, 0.05), rejected / trials
    assert old / trials > 0.05 + tolerance(trials, 0.05)
    assert dominated > trials / 2
