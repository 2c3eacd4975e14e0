"""Noisy sufficient statistics (ADR 0021): linear_regression and pearson_correlation at a DP node.

What is checked: the sensitivity formula against the largest change one row
can make (by enumeration, and on real rows with out-of-range values), the
release without its noise against the exact regression on clamped data, the
noise's distribution against the calibration (OpenDP cannot be seeded: many
draws and bounds five standard errors wide, false-alarm rate under 1e-5 each;
a wrong scale, e.g. L2 used for Laplace or a factor 2 in variance, is tens of
standard errors away), the positive-definiteness guard, the refusals and
the labels.
"""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mipflow.algorithms import AnalysisRequest, get_algorithm, run_in_process
from mipflow.algorithms.dp_release import (
    bounded_columns, moment_sensitivity, moments_from_noisy_sums, noisy_sums, released_pairs,
)
from mipflow.algorithms.linear_regression import DP_NOTE as LINEAR_REGRESSION_NOTE
from mipflow.algorithms.linear_regression import NOT_POSITIVE_DEFINITE, dp_columns, solve_centred
from mipflow.node.home import NodeSettings
from mipflow.protocol.datamodel import DataModel, load_data_model
from mipflow.node.controls.dp import NodePrivacy
from mipflow.node.controls.dp_noise import QueryNoise
from mipflow.protocol.privacy import privacy_block
from mipflow.exceptions import DisclosureError, RequestError
from mipflow.node.controls.privacy_budget import LEDGER_FILE


@pytest.fixture(scope="module")
def stroke(stroke_model_path):
    return load_data_model(stroke_model_path)


def stroke_rows(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    nihss = rng.integers(0, 43, size=n).astype(float)
    sex = rng.choice(["M", "F"], size=n)
    return pd.DataFrame({
        "dataset": "hospital_a",
        "age": np.clip(40 + 0.8 * nihss + 5 * (sex == "M") + rng.normal(0, 8, size=n), 18, 90),
        "nihss_admission": nihss, "sex": sex,
        "stroke_type": rng.choice(["ischaemic", "haemorrhagic", "tia"], size=n, p=[0.7, 0.2, 0.1]),
        "glucose_mmol": rng.uniform(1, 40, size=n),
    })


def request(model, y, x=(), **parameters) -> AnalysisRequest:
    return AnalysisRequest.from_dict({"inputdata": {"data_model": model.key, "datasets": ["hospital_a"],
                                                    "x": list(x), "y": list(y), "filters": None},
                                      "parameters": parameters})


class ExactNoise(QueryNoise):
    """Test double: the same release with the noise left out (the cost is still counted)."""

    def add(self, values, sensitivity, *, block, part="", integer=False):
        super().add(values, sensitivity, block=block, part=part, integer=integer)
        return np.asarray(values, dtype=int if integer else float)


# --------------------------------------------------------------------------- sensitivity


def one_row_vector(group: tuple[str, ...], v: np.ndarray) -> np.ndarray:
    """What one row with scaled values ``v`` adds to the released vector."""
    w = np.concatenate([[1.0], v])
    return np.array([w[j] * w[l] for j, l in released_pairs(group)])


def extreme_rows(group: tuple[str, ...]):
    """Every row with numerical values at -1 or 1 and one indicator per categorical variable set."""
    numerical = [j for j, g in enumerate(group) if not g]
    variables = list(dict.fromkeys(g for g in group if g))
    levels = [[j for j, g in enumerate(group) if g == var] for var in variables]
    for signs in itertools.product([-1.0, 1.0], repeat=len(numerical)):
        for chosen in itertools.product(*levels):
            v = np.zeros(len(group))
            v[numerical] = signs
            v[list(chosen)] = 1.0
            yield v


@pytest.mark.parametrize("group", [
    ("",),                                   # pearson of one variable with itself: n, sum, sum of squares
    ("", ""),                                # y ~ x
    ("", "", "", ""),                        # four numerical variables
    ("sex", "sex", ""),                      # y ~ sex (both levels), the candidate design
    ("sex", "sex", "st", "st", "st", "", ""),  # y ~ sex + stroke_type + a number
])
def test_sensitivity_is_the_largest_change_one_row_makes(group):
    l1, l2 = moment_sensitivity(group)
    numerical = sum(1 for g in group if not g)
    groups = 1 + numerical + len({g for g in group if g})
    assert l1 == groups * (groups - 1) / 2 + 1 + numerical and l2 == pytest.approx(math.sqrt(l1), rel=1e-15)
    norms = np.array([[np.abs(u).sum(), np.sqrt((u * u).sum())]
                      for u in (one_row_vector(group, v) for v in extreme_rows(group))])
    assert norms[:, 0].max() == pytest.approx(l1, rel=1e-12)  # attained: the bound is tight
    assert norms[:, 1].max() == pytest.approx(l2, rel=1e-12)
    rng = np.random.default_rng(len(group))  # rows inside the ranges never exceed it
    for v in extreme_rows(group):
        inner = np.where(np.array([bool(g) for g in group]), v, v * rng.uniform(0, 1, size=len(group)))
        u = one_row_vector(group, inner)
        assert np.abs(u).sum() <= l1 + 1e-12 and np.sqrt((u * u).sum()) <= l2 + 1e-12


def test_removing_any_row_changes_the_released_sums_by_at_most_the_sensitivity(stroke):
    data = stroke_rows(1, 300)
    data.loc[0, "age"], data.loc[1, "nihss_admission"], data.loc[2, "age"] = 400.0, -30.0, -5.0  # clamped
    req = request(stroke, ["age"], ["nihss_admission", "sex", "stroke_type"])
    def released(frame):
        cols = bounded_columns(frame, dp_columns(req, stroke), stroke, "linear_regression")
        n, s1, s2 = noisy_sums(cols, ExactNoise("laplace", 1.0, 0.0, 1))
        full = np.block([[np.array([[n]]), s1[None, :]], [s1[:, None], s2]])
        return cols, np.array([full[j, l] for j, l in released_pairs(cols.group)])

    cols, everything = released(data)
    assert cols.group == ("sex", "sex", "stroke_type", "stroke_type", "stroke_type", "", "")
    assert cols.clamped == {"nihss_admission": [0.0, 42.0], "age": [18.0, 90.0]}
    assert np.abs(cols.values).max() == 1.0  # the out-of-range values sit on the bounds
    l1, l2 = moment_sensitivity(cols.group)
    assert l1 == 13.0  # groups: constant, sex, stroke_type, nihss, age -> 5 * 4 / 2 + 1 + 2
    changes = np.array([everything - released(data.drop(index=i))[1] for i in range(20)])
    assert np.abs(changes).sum(axis=1).max() <= l1 + 1e-9
    assert np.sqrt((changes ** 2).sum(axis=1)).max() <= l2 + 1e-9
    assert np.abs(changes[0]).sum() > 0.5 * l1  # an extreme row comes close to the bound


# --------------------------------------------------------------------------- the release


def test_release_without_noise_is_the_exact_regression_of_clamped_values(stroke):
    data = stroke_rows(2, 500)
    data.loc[3, "age"] = 130.0  # outside 18..90: clamped to 90
    algo = get_algorithm("linear_regression")
    req = request(stroke, ["age"], ["nihss_admission", "sex", "stroke_type", "glucose_mmol"])
    mech = get_algorithm("linear_regression").dp_release
    released, clamped = mech.release(algo, data, req, stroke, ExactNoise("laplace", 1.0, 0.0, 1))
    assert clamped == {"nihss_admission": [0.0, 42.0], "glucose_mmol": [1.0, 40.0], "age": [18.0, 90.0]}
    exact = algo.local_step(0, data.assign(age=data["age"].clip(18, 90)), req, stroke, None)
    assert released["level_counts"] == exact["level_counts"] and released["group_n"] == exact["group_n"]
    assert mech.rows(released) == 500
    reference = run_in_process(algo, [data.assign(age=data["age"].clip(18, 90))], req, stroke)
    result = algo.global_step(0, [json.loads(json.dumps(released))], req, stroke, None).result
    assert result["indep_vars"] == reference["indep_vars"]
    for key in ("coefficients", "r_squared", "f_stat", "rse"):
        assert result[key] == pytest.approx(reference[key], rel=1e-9), key
    # the release states its noise law (ExactNoise only leaves the draws out): the sampling part of the
    # standard errors is the exact one, the total adds the stated noise (ADR 0057)
    assert result["std_err_sampling"] == pytest.approx(reference["std_err"], rel=1e-9)
    assert all(total > sampling for total, sampling in zip(result["std_err"], reference["std_err"]))
    # with noise: same shape, other numbers, within the declared ranges
    noisy, _ = mech.release(algo, data, req, stroke, QueryNoise("laplace", 1.0, 0.0, 1))
    assert noisy["moments"]["m2"] != released["moments"]["m2"]
    # cell_n: joint cells the node checks and never sends (ADR 0031)
    assert set(noisy) == set(exact) - {"cell_n"} | {"noisy_sums"}
    assert len(noisy["moments"]["mean"]) == len(exact["moments"]["mean"]) == len(noisy["noisy_sums"]["s1"])
    names = [name for name, _ in dp_columns(req, stroke)]
    age = np.asarray(noisy["moments"]["mean"])[names.index("age")]
    assert 18 <= age <= 90


def test_pearson_release_without_noise_is_exact(stroke):
    data = stroke_rows(3, 400)
    algo = get_algorithm("pearson_correlation")
    req = request(stroke, ["age", "nihss_admission"], ["glucose_mmol"])
    mech = get_algorithm("pearson_correlation").dp_release
    released, clamped = mech.release(algo, data, req, stroke, ExactNoise("gaussian", 1.0, 1e-6, 1))
    assert set(clamped) == {"age", "nihss_admission", "glucose_mmol"}
    reference = run_in_process(algo, [data], req, stroke)
    result = algo.global_step(0, [released], req, stroke, None).result
    for var in req.y:
        assert result["correlations"][var] == pytest.approx(reference["correlations"][var], rel=1e-9)
    # the p-values allow for the noise the release declares (ADR 0057's amendment), which this test
    # double leaves out of the values only: no correlation looks more significant than the exact one
    assert result["noise"]["p_values_account_for_noise"] is True
    for var in req.y:
        assert all(p > q for p, q in zip(result["p-values"][var], reference["p-values"][var]))


def test_moments_are_kept_in_range_after_the_noise(stroke):
    data = stroke_rows(4, 50)
    cols = bounded_columns(data, [("sex[F]", "sex"), ("sex[M]", "sex"), ("age", "numerical")], stroke, "t")
    s1 = np.array([80.0, -5.0, 70.0])  # impossible sums, as noise can make them
    s2 = np.array([[80.0, 3.0, 10.0], [3.0, -5.0, 1.0], [10.0, 1.0, -20.0]])
    out = moments_from_noisy_sums(cols, 49.6, s1, s2)
    assert out["n"] == 50
    assert out["mean"] == pytest.approx([1.0, 0.0, 90.0])  # indicators in [0, 1], age in 18..90
    m2 = np.asarray(out["m2"])
    assert m2[0, 0] == 0.0 and m2[1, 1] == 0.0 and 0.0 <= m2[2, 2] <= 50 * 36.0 ** 2
    assert m2 == pytest.approx(m2.T)
    assert moments_from_noisy_sums(cols, -3.2, s1, s2) == {"n": 0, "mean": [0.0] * 3, "m2": [[0.0] * 3] * 3}


# --------------------------------------------------------------------------- the noise


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_noise_on_the_sufficient_statistics_has_the_calibrated_scale(stroke, mechanism):
    data = stroke_rows(5, 60)
    req = request(stroke, ["age"], ["nihss_admission", "sex"])
    cols = bounded_columns(data, dp_columns(req, stroke), stroke, "linear_regression")
    pairs = released_pairs(cols.group)

    def entries(n, s1, s2):
        full = np.block([[np.array([[n]]), s1[None, :]], [s1[:, None], s2]])
        return np.array([full[j, l] for j, l in pairs])

    exact = entries(*noisy_sums(cols, ExactNoise(mechanism, 0.7, 1e-6, 1)))
    l1, l2 = moment_sensitivity(cols.group)
    assert (l1, len(pairs)) == (9.0, 12)  # constant, sex, nihss, age: 4 * 3 / 2 + 1 + 2; 15 - 3 sex x sex sums
    draws, costs = [], set()
    for draw in range(2500):
        noise = QueryNoise(mechanism, 0.7, 1e-6, 1)
        draws.append(entries(*noisy_sums(cols, noise)) - exact)
        if draw < 5:  # (the zCDP conversion is slow; the cost does not depend on the draw)
            costs.add(round(noise.cost().epsilon, 12))
    draws = np.concatenate(draws)
    assert costs == {0.7}  # what OpenDP's map says for the sensitivity claimed: the whole step's epsilon
    if mechanism == "laplace":
        scale = l1 / 0.7  # Laplace b = L1 / epsilon
        expected_var, kurtosis, reference = 2 * scale ** 2, 6.0, stats.laplace(scale=scale)
    else:
        rho = QueryNoise("gaussian", 0.7, 1e-6, 1).rho
        scale = l2 / math.sqrt(2 * rho)  # sigma = L2 / sqrt(2 rho)
        expected_var, kurtosis, reference = scale ** 2, 3.0, stats.norm(scale=scale)
    assert QueryNoise(mechanism, 0.7, 1e-6, 1).scale(l1 if mechanism == "laplace" else l2) == \
        pytest.approx(scale, rel=1e-12)
    n = len(draws)  # 30,000
    # Var(s^2) ~ (mu4 - sigma^4) / n = (kurtosis - 1) sigma^4 / n: five standard errors
    assert abs(draws.var() / expected_var - 1) < 5 * math.sqrt((kurtosis - 1) / n)
    assert abs(draws.mean()) < 5 * math.sqrt(expected_var / n)
    assert stats.kstest(draws, reference.cdf).pvalue > 1e-5


# --------------------------------------------------------------------------- centre and node


def test_an_indefinite_noisy_matrix_is_a_clear_error():
    names = ["a", "b"]
    with pytest.raises(RequestError, match="not positive definite"):
        solve_centred(np.array([[1.0, 2.0], [2.0, 1.0]]), np.array([1.0, 1.0]), names)  # eigenvalues 3, -1
    with pytest.raises(RequestError, match="not positive definite"):
        solve_centred(np.array([[-1.0, 0.0], [0.0, 1.0]]), np.array([1.0, 1.0]), names)
    assert NOT_POSITIVE_DEFINITE.startswith("the covariates' co-moment matrix")
    # exact paths as before: constant and collinear covariates keep their messages
    with pytest.raises(RequestError, match="constant"):
        solve_centred(np.array([[0.0, 0.0], [0.0, 1.0]]), np.array([0.0, 1.0]), names)
    with pytest.raises(RequestError, match="collinear"):
        solve_centred(np.array([[1.0, 1.0], [1.0, 1.0]]), np.array([1.0, 1.0]), names)
    coef, _, projected = solve_centred(np.array([[2.0, 1.0], [1.0, 2.0]]), np.array([3.0, 3.0]), names)
    assert coef == pytest.approx([1.0, 1.0], rel=1e-12) and not projected


def test_noisy_indefinite_co_moments_are_answered_approximate_and_exact_ones_never_change(stroke):
    """The global step raises the eigenvalues of co-moments only noise can make indefinite (a negative
    variance, or well conditioned but not positive definite) and labels the result; exact co-moments,
    constant and collinear designs are untouched (their errors stay)."""
    from mipflow.algorithms.linear_regression import positive_definite_part

    def solve(cxx, cxy=(1.0, 1.0)):
        return solve_centred(np.array(cxx), np.array(cxy), ["a", "b"], on_noise="positive_definite_part")

    indefinite = [[1.0, 2.0], [2.0, 1.0]]  # eigenvalues 3, -1
    assert solve(indefinite).projected
    assert np.array_equal(solve(indefinite).coef, solve_centred(positive_definite_part(np.array(indefinite)),
                                                                np.array([1.0, 1.0]), ["a", "b"]).coef)
    assert solve([[-1.0, 0.0], [0.0, 1.0]]).projected  # a negative variance
    with pytest.raises(RequestError, match="constant"):  # constant: exact
        solve([[0.0, 0.0], [0.0, 1.0]], (0.0, 1.0))
    with pytest.raises(RequestError, match="not positive definite"):  # a negative variance beside a constant
        solve([[0.0, 0.0], [0.0, -1.0]])
    with pytest.raises(RequestError, match="collinear"):  # collinear: exact
        solve([[1.0, 1.0], [1.0, 1.0]])
    assert not solve([[2.0, 1.0], [1.0, 2.0]]).projected
    fixed = positive_definite_part(np.array(indefinite))
    assert np.all(np.linalg.eigvalsh(fixed) > 0) and np.allclose(fixed, fixed.T)
    # the eigenvector of the positive eigenvalue keeps its eigenvalue
    v = np.array([1.0, 1.0]) / math.sqrt(2.0)
    assert fixed @ v == pytest.approx(3.0 * v, rel=1e-12)

    algo, req = get_algorithm("linear_regression"), request(stroke, ["age"], ["nihss_admission", "glucose_mmol"])
    data = stroke_rows(3, 400)
    exact = algo.local_step(0, data, req, stroke, None)
    answer = algo.global_step(0, [exact], req, stroke, None).result
    assert "approximate" not in answer and "noise_note" not in answer  # exact: as before
    noisy = json.loads(json.dumps(exact))
    m2 = np.array(noisy["moments"]["m2"], dtype=float)
    m2[0, 1] = m2[1, 0] = 1.5 * math.sqrt(m2[0, 0] * m2[1, 1])  # a covariance no data can have
    noisy["moments"]["m2"] = m2.tolist()
    with pytest.raises(RequestError, match="not positive definite"):
        solve_centred(m2[:2, :2], m2[:2, 2], ["nihss_admission", "glucose_mmol"])
    result = algo.global_step(0, [noisy], req, stroke, None).result
    assert result["approximate"] is True and "eigenvalues were raised" in result["noise_note"]
    assert np.all(np.isfinite(result["coefficients"])) and np.all(np.isfinite(result["std_err"]))


def test_node_releases_labels_and_charges_a_noisy_regression(tmp_path, stroke):
    guard = NodePrivacy(tmp_path)
    data = stroke_rows(6, 200)
    algo, req = get_algorithm("linear_regression"), request(stroke, ["age"], ["nihss_admission", "sex"])
    settings = NodeSettings.from_dict({"dp_enabled": 1, "dp_epsilon": 0.6, "dp_budget_epsilon": 1.0})
    release = guard.apply(settings, algo, req, stroke, 0, data, "alice")
    assert release.label["epsilon"] == pytest.approx(0.6, rel=1e-9) and release.label["note"] == LINEAR_REGRESSION_NOTE
    assert release.label["clamped"] == {"nihss_admission": [0.0, 42.0], "age": [18.0, 90.0]}
    assert release.rows == release.aggregates["moments"]["n"]
    with pytest.raises(DisclosureError) as info:  # 0.6 + 0.6 > 1.0
        guard.apply(settings, algo, req, stroke, 0, data, "alice")
    assert info.value.control == "dp_budget"
    lines = [json.loads(line) for line in (tmp_path / LEDGER_FILE).read_text().splitlines()]
    assert [(line["researcher"], line["algorithm"]) for line in lines] == [("alice", "linear_regression")]
    block = privacy_block({"a": [release.label]}, ["a", "b"])
    assert block["derived"] == [LINEAR_REGRESSION_NOTE] and block["noisy_nodes"]["a"]["note"] == LINEAR_REGRESSION_NOTE
    assert "standard errors" in LINEAR_REGRESSION_NOTE


def test_node_refuses_a_regression_on_a_variable_without_bounds(tmp_path, stroke):
    doc = stroke.to_dict()
    for group in [doc] + doc.get("groups", []):
        for var in group.get("variables", []):
            if var["code"] == "glucose_mmol":
                var.pop("minValue")
    model = DataModel.from_dict(doc)
    guard = NodePrivacy(tmp_path)
    settings = NodeSettings.from_dict({"dp_enabled": 1})
    for name, y, x in [("linear_regression", ["age"], ["glucose_mmol", "sex"]),
                       ("pearson_correlation", ["glucose_mmol"], [])]:
        with pytest.raises(DisclosureError, match="'glucose_mmol' has no declared minValue") as info:
            guard.apply(settings, get_algorithm(name), request(model, y, x), model, 0, stroke_rows(7, 100), "alice")
        assert info.value.control == "dp_unsupported"
    assert not (tmp_path / LEDGER_FILE).exists()  # nothing charged
