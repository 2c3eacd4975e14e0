"""Differential privacy at a node (ADR 0015), in process: noise, sensitivity, clamping, the ledger.

The noise itself comes from OpenDP, which draws from the operating system's
CSPRNG and cannot be seeded; the statistical tests therefore use many draws
and bounds several standard errors wide (false alarm rate well under 1e-4
each), and would fail for a wrong scale (a factor 2 in variance is tens of
standard errors away).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import AnalysisRequest, get_algorithm, run_in_process
from mipflow.node.home import NodeSettings
from mipflow.protocol.datamodel import load_data_model
from mipflow.node.controls.dp import NodePrivacy
from mipflow.node.controls.dp_noise import QueryNoise
from mipflow.exceptions import ConfigError, DisclosureError
from mipflow.node.controls.privacy_budget import (
    LEDGER_FILE, PrivacyCost, PrivacyLedger, compose, pure_to_rho, rho_to_epsilon,
)



@pytest.fixture(scope="module")
def stroke(stroke_model_path):
    return load_data_model(stroke_model_path)


def stroke_rows(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "dataset": rng.choice(["hospital_a", "hospital_b"], size=n),
        "age": np.round(rng.uniform(18, 90, size=n), 1),
        "nihss_admission": rng.integers(0, 43, size=n).astype(float),
        "sex": rng.choice(["M", "F"], size=n),
        "stroke_type": rng.choice(["ischaemic", "haemorrhagic", "tia"], size=n, p=[0.7, 0.2, 0.1]),
    })


def request(model, algorithm: str, y, x=(), **parameters) -> AnalysisRequest:
    return AnalysisRequest.from_dict({"inputdata": {"data_model": model.key, "datasets": ["hospital_a", "hospital_b"],
                                                    "x": list(x), "y": list(y), "filters": None},
                                      "parameters": parameters})


def dp_settings(**kw) -> NodeSettings:
    return NodeSettings.from_dict({"dp_enabled": 1, **kw})


# --------------------------------------------------------------------------- settings


def test_dp_is_off_by_default_and_settings_are_checked():
    settings = NodeSettings()
    assert settings.dp_enabled == 0 and settings.dp_mechanism == "laplace"
    for key, value in [("dp_mechanism", "exponential"), ("dp_epsilon", 0), ("dp_budget_epsilon", -1),
                       ("dp_budget_delta", 1), ("dp_exempt_algorithms", "a;b")]:
        with pytest.raises(ConfigError):
            settings.with_value(key, value)
    assert settings.with_value("dp_exempt_algorithms", "pca, anova").dp_exempt_algorithms == "anova,pca"


# --------------------------------------------------------------------------- the releases


class ExactNoise(QueryNoise):
    """Test double: the same release with the noise left out, to check the sums and the clamping."""

    def add(self, values, sensitivity, *, block, part="", integer=False):
        super().add(values, sensitivity, block=block, part=part, integer=integer)  # the cost is still counted
        return np.asarray(values, dtype=int if integer else float)


def test_descriptive_stats_release_is_the_exact_statistic_of_clamped_values_plus_noise(stroke):
    data = stroke_rows(1, 400)
    data.loc[3, "age"] = 130.0  # outside the declared 18..90: clamped to 90 before summing
    data.loc[5:20, "nihss_admission"] = np.nan
    algo = get_algorithm("descriptive_stats")
    req = request(stroke, "descriptive_stats", ["age", "nihss_admission", "sex"])
    mech = get_algorithm("descriptive_stats").dp_release
    exact_noise = ExactNoise("laplace", 1.0, 0.0, mech.blocks(algo, req, stroke))
    released, clamped = mech.release(algo, data, req, stroke, exact_noise)
    assert clamped == {"age": [18.0, 90.0], "nihss_admission": [0.0, 42.0]}
    assert exact_noise.cost().epsilon == pytest.approx(1.0, rel=1e-9)
    clipped = data.assign(age=data["age"].clip(18, 90))
    reference = run_in_process(algo, [clipped], req, stroke)
    without_noise = algo.global_step(0, [json.loads(json.dumps(released))], req, stroke, None).result
    for got, want in zip(without_noise["variable_based"] + without_noise["model_based"],
                         reference["variable_based"] + reference["model_based"]):
        assert (got["variable"], got["dataset"]) == (want["variable"], want["dataset"])
        for key, value in want["data"].items():
            if isinstance(value, float):
                assert got["data"][key] == pytest.approx(value, rel=1e-9), (got, key)
            else:
                assert got["data"][key] == value
    # with noise: the same shape, other numbers
    noisy, _ = mech.release(algo, data, req, stroke, QueryNoise("laplace", 1.0, 0.0, mech.blocks(algo, req, stroke)))
    result = algo.global_step(0, [json.loads(json.dumps(noisy))], req, stroke, None).result
    means = [(r["data"] or {}).get("mean") for r in result["variable_based"] if r["variable"] == "age"]
    exact_means = [r["data"]["mean"] for r in reference["variable_based"] if r["variable"] == "age"]
    assert means != exact_means and all(18 <= m <= 90 for m in means)


def test_histogram_release_counts_clamped_values_and_adds_noise(stroke):
    data = stroke_rows(2, 300).dropna()
    data.loc[0, "age"] = 5.0  # below the declared minimum: counted in the first bin
    algo = get_algorithm("multiple_histograms")
    req = request(stroke, "multiple_histograms", ["age"], ["sex", "stroke_type"], bins=5)  # on the grid (ADR 0051)
    mech = get_algorithm("multiple_histograms").dp_release
    assert mech.blocks(algo, req, stroke) == 3
    exact, clamped = mech.release(algo, data, req, stroke, ExactNoise("laplace", 1.0, 0.0, 3))
    assert clamped == {"age": [18.0, 90.0]}
    want = np.histogram(data["age"].clip(18, 90), bins=5, range=(18, 90))[0].tolist()
    assert exact["histograms"][0]["counts"] == want and sum(want) == len(data)
    noisy, _ = mech.release(algo, data, req, stroke, QueryNoise("laplace", 1.0, 0.0, 3))
    assert [h["grouping_enum"] for h in noisy["histograms"]] == [h["grouping_enum"] for h in exact["histograms"]]
    assert noisy["histograms"] != exact["histograms"]
    # signed noisy whole numbers (ADR 0057's amendment: pooled signed, clamped only after pooling), each
    # histogram with the noise it carries
    assert all(isinstance(c, (int, np.integer)) for h in noisy["histograms"] for c in h["counts"])
    assert all(h["noise"]["terms"] for h in noisy["histograms"])


def test_one_patient_changes_the_output_distribution_by_at_most_e_to_the_epsilon(stroke):
    """What a DP histogram reveals about one patient: the released count of the bin a patient joins
    has nearly the same distribution with and without that patient (without noise it would differ surely)."""
    data = stroke_rows(3, 60)
    with_patient = pd.concat([data, data.iloc[[0]].assign(age=89.5)], ignore_index=True)
    algo = get_algorithm("multiple_histograms")
    req = request(stroke, "multiple_histograms", ["age"], bins=5)  # the patient joins the last bin
    mech = get_algorithm("multiple_histograms").dp_release
    epsilon, reps = 1.0, 3000
    outputs = {}
    for name, frame in (("without", data), ("with", with_patient)):
        outputs[name] = pd.Series([mech.release(algo, frame, req, stroke, QueryNoise("laplace", epsilon, 0.0, 1))[0]
                                   ["histograms"][0]["counts"][-1] for _ in range(reps)]).value_counts()
    common = [k for k in outputs["with"].index if outputs["with"][k] >= 150 and outputs["without"].get(k, 0) >= 150]
    assert len(common) >= 3
    for k in common:
        ratio = outputs["with"][k] / outputs["without"][k]
        assert math.exp(-epsilon) / 1.35 <= ratio <= math.exp(epsilon) * 1.35, (k, ratio)


# --------------------------------------------------------------------------- the node's decisions


def test_node_privacy_refuses_what_it_cannot_bound(tmp_path, stroke):
    guard = NodePrivacy(tmp_path)
    data = stroke_rows(4, 100)
    logreg = request(stroke, "logistic_regression", ["sex"], ["age"], positive_class="M")
    with pytest.raises(DisclosureError) as info:
        guard.apply(dp_settings(), get_algorithm("logistic_regression"), logreg, stroke, 0, data, "alice")
    assert info.value.control == "dp_unsupported" and "dp_exempt_algorithms" in str(info.value)
    # exempted by the admin: released exactly, nothing charged
    assert guard.apply(dp_settings(dp_exempt_algorithms="logistic_regression"), get_algorithm("logistic_regression"),
                       logreg, stroke, 0, data, "alice") is None
    assert guard.apply(NodeSettings(), get_algorithm("descriptive_stats"),
                       request(stroke, "descriptive_stats", ["age"]), stroke, 0, data, "alice") is None
    assert not (tmp_path / LEDGER_FILE).exists()
    # a variable without declared bounds has no sensitivity
    unbounded = stroke.to_dict()
    for group in [unbounded] + unbounded.get("groups", []):
        for var in group.get("variables", []):
            if var["code"] == "age":
                var.pop("maxValue")
    from mipflow.protocol.datamodel import DataModel

    model = DataModel.from_dict(unbounded)
    with pytest.raises(DisclosureError, match="no declared minValue and maxValue") as info:
        guard.apply(dp_settings(), get_algorithm("descriptive_stats"), request(model, "descriptive_stats", ["age"]),
                    model, 0, data, "alice")
    assert info.value.control == "dp_unsupported"


def test_budget_is_charged_per_researcher_refused_when_spent_and_survives_restart(tmp_path, stroke):
    settings = dp_settings(dp_epsilon=0.4, dp_budget_epsilon=1.0)
    data = stroke_rows(5, 200)
    algo, req = get_algorithm("descriptive_stats"), request(stroke, "descriptive_stats", ["age", "sex"])
    guard = NodePrivacy(tmp_path)
    first = guard.apply(settings, algo, req, stroke, 0, data, "alice")
    second = guard.apply(settings, algo, req, stroke, 0, data, "alice")
    assert first.label["epsilon"] == pytest.approx(0.4, rel=1e-9)
    assert second.label["spent"] == {"epsilon": pytest.approx(0.8, rel=1e-9), "delta": 0.0, "accountant": "basic"}
    assert first.aggregates != second.aggregates  # fresh noise every time
    with pytest.raises(DisclosureError, match="spent epsilon 0.8") as info:
        guard.apply(settings, algo, req, stroke, 0, data, "alice")
    assert info.value.control == "dp_budget"
    assert guard.apply(settings, algo, req, stroke, 0, data, "bob").label["spent"]["epsilon"] == \
        pytest.approx(0.4, rel=1e-9)  # another researcher has a budget of their own
    restarted = NodePrivacy(tmp_path)
    assert restarted.ledger.spent("alice", 1e-6).epsilon == pytest.approx(0.8, rel=1e-9)
    with pytest.raises(DisclosureError):
        restarted.apply(settings, algo, req, stroke, 0, data, "alice")
    lines = [json.loads(line) for line in (tmp_path / LEDGER_FILE).read_text().splitlines()]
    assert [line["researcher"] for line in lines] == ["alice", "alice", "bob"]
    assert all(line["algorithm"] == "descriptive_stats" for line in lines)
    # a raised budget lets alice go on
    assert restarted.apply(dp_settings(dp_epsilon=0.4, dp_budget_epsilon=1.3), algo, req, stroke, 0, data, "alice")


def test_gaussian_budget_composes_in_zcdp(tmp_path):
    ledger = PrivacyLedger(tmp_path)
    noise = QueryNoise("gaussian", epsilon=0.5, delta=1e-6, blocks=1)
    noise.add([1.0], 1.0, block="x")
    cost = noise.cost()
    spent = [ledger.charge("carol", cost, epsilon_budget=2.0, delta_budget=1e-6).epsilon for _ in range(5)]
    # k Gaussian steps cost rho * k: far less than k * epsilon (basic composition)
    assert spent[-1] == pytest.approx(rho_to_epsilon(5 * cost.rho, 1e-6), rel=1e-12)
    assert spent[0] == pytest.approx(0.5, rel=1e-6) and spent[-1] < 5 * 0.5 / 1.5
    assert all(a < b for a, b in zip(spent, spent[1:]))
    while True:  # spend until refused: the total never exceeds the budget
        try:
            ledger.charge("carol", cost, epsilon_budget=2.0, delta_budget=1e-6)
        except DisclosureError as exc:
            assert exc.control == "dp_budget"
            break
    assert 2.0 * 0.8 < ledger.spent("carol", 1e-6).epsilon <= 2.0 * (1 + 1e-9)
    # a pure step counts as rho = epsilon^2 / 2 once any Gaussian step is in the ledger
    mixed = compose([cost, PrivacyCost("laplace", 0.3)], 1e-6)
    assert pure_to_rho(0.3) == pytest.approx(0.045, rel=1e-12)
    assert mixed.accountant == "zCDP" and mixed.epsilon == pytest.approx(rho_to_epsilon(cost.rho + 0.045, 1e-6))
    assert PrivacyLedger(tmp_path).spent("carol", 1e-6) == ledger.spent("carol", 1e-6)


def test_a_damaged_ledger_stops_the_node_rather_than_forget(tmp_path):
    (tmp_path / LEDGER_FILE).write_text('{"researcher": "alice", "mechanism": "laplace", "epsilon": 0.5}\nnot json\n')
    with pytest.raises(ConfigError, match="line 2"):
        PrivacyLedger(tmp_path)
