"""A linear regression from noisy sufficient statistics: its standard errors, intervals and p-values
account for the noise, and are calibrated (ADR 0057, ADR 0021).

- the closed-form gradient of the coefficients in the released entries against finite differences;
- the noise-only interval (``coef_noise_low`` / ``coef_noise_high``) covers the coefficients of the rows
  themselves (clamped to the declared ranges, pooled OLS) through the node's own keyed release;
- the confidence interval (``lower_ci`` / ``upper_ci``) covers the *population* coefficients when the
  rows and the noise are both drawn (numpy seeds), where the old sampling-only interval (the noisy
  statistics taken as exact, ``std_err_sampling``) does not; the p-value of a zero coefficient rejects at
  its level.

Tolerances are binomial in the number of trials (:mod:`calibration`).
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
from scipy import special

from mipflow.algorithms import AnalysisRequest, get_algorithm
from mipflow.algorithms.design import design_columns
from mipflow.algorithms.dp_release import released_pairs
from mipflow.algorithms.linear_regression import solve_centred
from mipflow.algorithms.noise_error import INTERVAL_LEVEL
from mipflow.algorithms.regression_noise import coefficient_gradients, column_scales, noisy_regression, pooled_sums
from mipflow.node.controls.dp_noise import QueryNoise
from mipflow.node.controls.explore import KeyedNoise
from mipflow.node.controls.explore_keys import noise_key
from mipflow.protocol.datamodel import load_data_model
from tests.mipflow.algorithms.calibration import tolerance

#: The population model: systolic_bp = 140 + 0.5 age + 0.8 nihss_admission + 3 [sex = M] + 0 glucose_mmol
#: + N(0, 15^2), every value well inside the declared ranges (y leaves [60, 300] with probability ~1e-7 per row).
TRUE = {"Intercept": 140.0, "sex[M]": 3.0, "age": 0.5, "nihss_admission": 0.8, "glucose_mmol": 0.0}
X = ["age", "nihss_admission", "sex", "glucose_mmol"]


@pytest.fixture(scope="module")
def stroke(stroke_model_path):
    return load_data_model(stroke_model_path)


@pytest.fixture(scope="module")
def req(stroke):
    return AnalysisRequest.from_dict({"inputdata": {"data_model": stroke.key, "datasets": ["hospital_a"], "x": X,
                                                    "y": ["systolic_bp"], "filters": None}, "parameters": {}})


def rows(rng: np.random.Generator, n: int) -> pd.DataFrame:
    age, nihss = rng.uniform(30, 85, n).round(1), rng.integers(0, 29, n)
    sex, glucose = rng.choice(["M", "F"], n), rng.uniform(3, 15, n).round(1)
    y = TRUE["Intercept"] + TRUE["age"] * age + TRUE["nihss_admission"] * nihss + TRUE["sex[M]"] * (sex == "M")
    return pd.DataFrame({"dataset": "hospital_a", "age": age, "nihss_admission": nihss, "sex": sex,
                         "glucose_mmol": glucose, "systolic_bp": y + rng.normal(0, 15, n)})


class NumpyNoise:
    """The release's noise law (:class:`QueryNoise`'s scale and sd) drawn from a numpy generator: fast, for
    many trials; the node's own keyed draws are checked in the noise-interval test."""

    def __init__(self, mechanism: str, epsilon: float, rng: np.random.Generator) -> None:
        self.law = QueryNoise(mechanism, epsilon, 1e-6, 1)
        self.mechanism, self.rng = mechanism, rng

    def sd(self, sensitivity: float) -> float:
        return self.law.sd(sensitivity)

    def add(self, values, sensitivity, *, block, part="", integer=False):
        scale = self.law.scale(sensitivity)
        draw = self.rng.laplace(0, scale, len(values)) if self.mechanism == "laplace" \
            else self.rng.normal(0, scale, len(values))
        return np.asarray(values, dtype=float) + draw


def release(algo, frame, req, model, noise) -> dict:
    return json.loads(json.dumps(algo.dp_release.release(algo, frame, req, model, noise)[0]))


def test_the_closed_form_gradient_is_the_finite_difference_one(stroke, req):
    algo = get_algorithm("linear_regression")
    rng = np.random.default_rng(3)
    aggs = [release(algo, rows(rng, 4000), req, stroke, NumpyNoise("laplace", 20.0, rng)) for _ in range(2)]
    group, centre, half = column_scales(req, stroke)
    pooled = pooled_sums(aggs, centre, half)
    n, s1, s2 = pooled["n"], np.asarray(pooled["s1"]), np.asarray(pooled["s2"])
    mean, m2 = centre + half * s1 / n, (s2 - np.outer(s1, s1) / n) * np.outer(half, half)
    names = noisy_regression(aggs, req, stroke, 0.95)["indep_vars"][1:]
    idx = [design_columns(X, stroke, intercept=False).index(c) for c in names]
    beta, inverse, projected = solve_centred(m2[np.ix_(idx, idx)], m2[idx, -1], names)
    assert not projected
    closed = coefficient_gradients(n, s1, group, idx, half, mean, beta, inverse)
    step, numeric = 1e-3, []
    for a, b in released_pairs(group):
        ends = []
        for sign in (1.0, -1.0):
            moved = copy.deepcopy(aggs)
            sums = moved[0]["noisy_sums"]
            if a == b == 0:
                sums["n"] += sign * step
            elif a == 0:  # a column's sum (and an indicator's square, the same released value)
                sums["s1"][b - 1] += sign * step
                if group[b - 1]:
                    sums["s2"][b - 1][b - 1] += sign * step
            else:
                sums["s2"][a - 1][b - 1] += sign * step
                if a != b:
                    sums["s2"][b - 1][a - 1] += sign * step
            ends.append(np.asarray(noisy_regression(moved, req, stroke, 0.95)["coefficients"]))
        numeric.append((ends[0] - ends[1]) / (2 * step))
    assert closed.shape == (len(released_pairs(group)), len(idx) + 1)
    assert np.max(np.abs(closed - np.asarray(numeric))) <= 1e-6 * np.max(np.abs(closed))


def test_the_noise_interval_covers_the_rows_own_coefficients_through_the_keyed_release(stroke, req):
    """Fixed rows, 300 node keys: ``coef_noise_low/high`` cover the pooled OLS of the rows (clamped to the
    declared ranges: none is out of them here) at the stated level."""
    algo = get_algorithm("linear_regression")
    rng = np.random.default_rng(11)
    parts = [rows(rng, 3000) for _ in range(2)]
    exact_parts = [algo.local_step(0, f, req, stroke, None) for f in parts]
    exact = np.asarray(algo.global_step(0, exact_parts, req, stroke, None).result["coefficients"])
    trials, hits, n_errors, n_sds = 300, np.zeros(len(exact)), [], set()
    for trial in range(trials):
        aggs = [release(algo, f, req, stroke, KeyedNoise("laplace", 1.0, 0.0, 1, key=noise_key(f"{i} {trial}".encode()),
                                                         query=b"lr", version=b"v")) for i, f in enumerate(parts)]
        result = json.loads(json.dumps(algo.global_step(0, aggs, req, stroke, None).result))
        assert result["approximate"] is True and result["noise"]["noisy_nodes"] == 2
        hits += (np.asarray(result["coef_noise_low"]) <= exact) & (exact <= np.asarray(result["coef_noise_high"]))
        n_errors.append(result["n_obs"] - sum(len(f) for f in parts))
        n_sds.add(round(result["noise"]["n_obs_noise_sd"], 9))
    assert np.all(np.abs(hits / trials - INTERVAL_LEVEL) < tolerance(trials, INTERVAL_LEVEL)), hits / trials
    # the stated sd of n_obs is its noise's: the sample sd within its sampling error (n_obs is rounded: + 1/12)
    (n_sd,) = n_sds
    assert abs(np.std(n_errors) / np.sqrt(n_sd ** 2 + 1 / 12) - 1) < 0.15, (np.std(n_errors), n_sd)


def simulated(algo, req, model, rng: np.random.Generator, mechanism: str, epsilon: float, n: int) -> list[dict]:
    """Two noisy nodes' releases and one exact node's aggregates of ``n`` fresh rows each, the noisy ones made by
    the node's own release from the rows (its clamping, sums, sensitivity and noise placement) with
    :class:`NumpyNoise`'s draws."""
    noisy = [release(algo, rows(rng, n), req, model, NumpyNoise(mechanism, epsilon, rng)) for _ in range(2)]
    exact = algo.local_step(0, rows(rng, n), req, model, None)
    exact.pop("cell_n")  # checked and stripped by the node
    return noisy + [exact]


@pytest.mark.parametrize(("mechanism", "epsilon", "n", "seed"), [
    pytest.param("laplace", 1.0, 3000, 5, id="laplace-noise-5x-sampling"),
    pytest.param("gaussian", 2.0, 3000, 6, id="gaussian-noise-2x-sampling"),
])
def test_the_confidence_interval_covers_the_population_coefficients_with_the_noise_in_it(
        stroke, req, mechanism, epsilon, n, seed):
    """Rows and noise drawn afresh in each trial (two noisy nodes, one exact, ``n`` rows each): every
    coefficient's 95 % interval covers the population coefficient (:data:`TRUE`) at 95 %, and the p-value of
    ``glucose_mmol`` (no effect) is below 0.05 in 5 % of the trials.  The noise's sd is 3 to 25 times the
    sampling error here.  Before (the noisy statistics taken as exact: ``std_err_sampling`` with the t
    quantile, what ``std_err`` and ``lower_ci``/``upper_ci`` were) the intervals covered, with these seeds,
    14 %, 20 %, 22 %, 18 % and 8 % (Laplace; Intercept, sex[M], age, nihss_admission, glucose_mmol) and 29 %,
    48 %, 46 %, 46 % and 19 % (Gaussian), and the test of glucose_mmol rejected in 93 % and 81 % of the trials;
    the new intervals 95.5 to 97 %, the new test 3 %.  The assertions on the old ones only say they fail
    beyond the tolerance."""
    algo = get_algorithm("linear_regression")
    rng, trials = np.random.default_rng(seed), 800
    hits = old = rejected = old_rejected = 0
    ratios = []
    for _ in range(trials):
        result = algo.global_step(0, simulated(algo, req, stroke, rng, mechanism, epsilon, n), req, stroke, None).result
        truth = np.array([TRUE[c] for c in result["indep_vars"]])
        coef, sampling = np.asarray(result["coefficients"]), np.asarray(result["std_err_sampling"])
        hits += (np.asarray(result["lower_ci"]) <= truth) & (truth <= np.asarray(result["upper_ci"]))
        q = special.stdtrit(result["df_resid"], 0.975)
        old += (coef - q * sampling <= truth) & (truth <= coef + q * sampling)
        null = result["indep_vars"].index("glucose_mmol")
        rejected += result["pvalues"][null] < 0.05
        old_rejected += abs(coef[null]) > q * sampling[null]
        with np.errstate(divide="ignore"):  # a noisy residual sum of squares at 0 leaves no sampling error
            ratios.append(np.asarray(result["coef_noise_sd"]) / sampling)
        assert np.allclose(result["std_err"], np.hypot(sampling, result["coef_noise_sd"]), rtol=1e-12)
    assert np.median(ratios) > 1.5  # the noise matters here
    assert np.all(np.abs(hits / trials - 0.95) < tolerance(trials, 0.95)), hits / trials
    assert np.all(old / trials < 0.95 - tolerance(trials, 0.95)), old / trials
    assert abs(rejected / trials - 0.05) < tolerance(trials, 0.05), rejected / trials
    assert old_rejected / trials > 0.05 + tolerance(trials, 0.05)


def test_exact_nodes_sum_the_same_layout_under_secure_aggregation_and_their_result_is_unchanged(stroke, req):
    """An exact node adds its scaled sums, without noise, to what it sums under secure aggregation (so a
    noisy node's signed sums can be summed beside it); with no noisy node the result is the exact one, bit
    for bit.  A variable without a declared range: no node sums scaled sums."""
    algo = get_algorithm("linear_regression")
    rng = np.random.default_rng(12)
    parts = []
    for _ in range(2):
        local = algo.local_step(0, rows(rng, 500), req, stroke, None)
        local.pop("cell_n")
        parts.append(local)
    summed = [algo.secure_aggregates(p, req, stroke) for p in parts]
    assert all(set(s) == set(p) | {"noisy_sums"} for s, p in zip(summed, parts))
    assert all(s["noisy_sums"]["noise"] == {"laplace_var": 0.0, "laplace_nodes": 0, "gaussian_var": 0.0,
                                            "gaussian_nodes": 0} for s in summed)
    noisy = release(algo, rows(rng, 500), req, stroke, NumpyNoise("laplace", 1.0, rng))
    assert set(algo.secure_aggregates(noisy, req, stroke)) == set(summed[0])
    assert json.dumps(algo.global_step(0, summed, req, stroke, None).result) == \
        json.dumps(algo.global_step(0, parts, req, stroke, None).result)
    unbounded = AnalysisRequest.from_dict({"inputdata": {"data_model": stroke.key, "datasets": ["hospital_a"],
                                                         "x": ["age"], "y": ["systolic_bp"], "filters": None},
                                           "parameters": {}})
    model = copy.deepcopy(stroke)
    object.__setattr__(model.variable("age"), "min_value", None)
    assert column_scales(unbounded, model) is None
    assert "noisy_sums" not in algo.secure_aggregates({**parts[0], "noisy_sums": {}}, unbounded, model)


def test_a_noisy_result_is_labelled_and_deterministic(stroke, req):
    """The fields of ADR 0057's convention beside the old ones, the same result from the same releases."""
    algo = get_algorithm("linear_regression")
    rng = np.random.default_rng(13)
    aggs = [release(algo, rows(rng, 2000), req, stroke, NumpyNoise("gaussian", 1.0, rng)) for _ in range(2)]
    first, again = (json.dumps(algo.global_step(0, aggs, req, stroke, None).result) for _ in range(2))
    assert first == again
    result = json.loads(first)
    terms = len(result["indep_vars"])
    for field in ("coefficients", "std_err", "std_err_sampling", "coef_noise_sd", "coef_noise_low", "coef_noise_high",
                  "t_stats", "pvalues", "lower_ci", "upper_ci", "noise_dominates"):
        assert len(result[field]) == terms, field
    assert result["approximate"] is True and result["noise"]["confidence_intervals_account_for_noise"] is True
    assert result["noise"]["noisy_nodes"] == 2 and set(result["noise"]["not_accounted"]) >= {"r_squared", "f_stat"}
    assert np.all(np.asarray(result["std_err"]) > np.asarray(result["std_err_sampling"]))
    assert np.all(np.asarray(result["lower_ci"]) < np.asarray(result["coef_noise_low"]))


def test_noise_outweighing_y_s_variance_gives_coefficients_flagged_and_no_r_squared(stroke, req):
    """An honest explore session once failed here: at a small cohort the pooled noisy variance of y can come out
    at or below zero.  The coefficients need only the x co-moments and ``cxy``, so they are still given, every term
    flagged ``noise_dominates``; R^2 and F, which divide by y's variance, are not given (NaN, null in JSON) with a
    note; no refusal."""
    algo = get_algorithm("linear_regression")
    rng = np.random.default_rng(5)
    parts = [rows(rng, 3000) for _ in range(2)]
    aggs = [release(algo, f, req, stroke, KeyedNoise("laplace", 1.0, 0.0, 1, key=noise_key(f"y {i}".encode()),
                                                     query=b"lr", version=b"v")) for i, f in enumerate(parts)]
    scales = column_scales(req, stroke)
    pooled = pooled_sums(aggs, scales[1], scales[2])
    cyy_scaled = pooled["s2"][-1][-1] - pooled["s1"][-1] ** 2 / pooled["n"]
    assert cyy_scaled > 0
    before = json.loads(json.dumps(algo.global_step(0, aggs, req, stroke, None).result))
    moved = copy.deepcopy(aggs)
    moved[0]["noisy_sums"]["s2"][-1][-1] -= cyy_scaled + 1.0  # as if the noise had drawn that far
    result = json.loads(json.dumps(algo.global_step(0, moved, req, stroke, None).result))
    assert result["noise"]["y_variance_dominated"] is True and all(result["noise_dominates"])
    # NaN in the result is null in its JSON (the results' encoding of a statistic not given)
    assert result["r_squared"] is None and result["f_stat"] is None and "outweighs the variance" in result["noise_note"]
    # y's own variance enters neither the coefficients nor their noise: both as before the move
    assert result["coefficients"] == pytest.approx(before["coefficients"], rel=1e-12)
    assert "y_variance_dominated" not in before["noise"]
