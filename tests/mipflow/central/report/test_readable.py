"""mipflow.central.report.readable: titles, warnings, odds and hazard ratios, search; Kaplan-Meier curves
from real results."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from mipflow.algorithms import get_algorithm, run_in_process
from mipflow.central.report.pages import index_page, result_csv, result_page
from mipflow.central.report.plots import result_plots
from mipflow.central.report.readable import matches, ratio_table, result_title, result_warnings
from tests.mipflow.algorithms.survival_data import STROKE, make_stroke, request as survival_request
from tests.mipflow.central.report.helpers import cells_of


def _doc(algorithm, y, x=(), result=None, **extra):
    return {"run_id": f"manual__{algorithm}", "algorithm": algorithm, "status": "succeeded",
            "request": {"inputdata": {"data_model": "stroke:0.1", "datasets": ["hospital_a"], "y": list(y),
                                      "x": list(x)}},
            "result": result or {}, "contributed": {"hospital_a": 120}, "excluded": {}, **extra}


@pytest.mark.parametrize(("algorithm", "y", "x", "title"), [
    pytest.param("linear_regression", ["mrs_90d"], ["age", "nihss_admission"],
                 "mrs_90d ~ age + nihss_admission (linear regression)", id="regression"),
    pytest.param("kaplan_meier", ["followup_days", "death_90d"], ["sex"],
                 "followup_days, death_90d ~ sex (Kaplan-Meier survival curves and log-rank test)", id="survival"),
    pytest.param("descriptive_stats", ["age"], [], "age (descriptive statistics)", id="no-covariates"),
    pytest.param("ttest_onesample", ["age"], [], "age (T-Test one-sample)", id="acronym-kept"),
    pytest.param("logistic_regression_cv", ["death_90d"], ["age"],
                 "death_90d ~ age (logistic regression cross-validation)", id="hyphenated"),
    pytest.param("pca", [], [], "principal component analysis (PCA)", id="no-variables"),
    pytest.param("not_in_catalogue", "y", None, "y (not in catalogue)", id="unknown-algorithm"),
])
def test_titles_say_what_was_analysed_and_how(algorithm, y, x, title):
    doc = _doc(algorithm, [], [])
    doc["request"]["inputdata"].update(y=y, x=x)
    assert result_title(doc) == title


def test_result_page_and_list_carry_the_title_and_the_list_searches():
    docs = [_doc("linear_regression", ["mrs_90d"], ["age", "nihss_admission"]),
            _doc("logistic_regression", ["death_90d"], ["age"], triggered_by="alice",
                 status="refused", error="refused by every node")]
    page = result_page(docs[0], link=lambda r, k: "run?id=" + r, back="./")
    assert "<h1>mrs_90d ~ age + nihss_admission (linear regression)</h1>" in page
    index = index_page(docs, link=lambda r, k: "run?id=" + r, total=2, algorithms=["a"])
    assert index.count('class="title"') == 2 and "mrs_90d ~ age + nihss_admission (linear regression)" in index
    assert 'name="q"' in index and "2 of 2 runs" in index
    assert [matches(d, text="nihss") for d in docs] == [True, False]
    assert [matches(d, text="AGE alice") for d in docs] == [False, True]  # every word, any field, any case
    assert [matches(d, status="refused") for d in docs] == [False, True]
    assert [matches(d, algorithm="linear_regression") for d in docs] == [True, False]
    assert "No result matches the search." in index_page([], link=lambda r, k: r, total=2)


def test_odds_ratios_are_the_exponentiated_coefficients_and_bounds(results):
    result = results["logistic_regression"]
    doc = _doc("logistic_regression", ["outcome"], ["x1", "sex"], result=result)
    table = ratio_table("logistic_regression", result)
    assert table.title == "Odds ratios" and "Intercept" not in [r[0] for r in table.rows]
    for term, ratio, lower, upper, p in table.rows:
        i = result["indep_vars"].index(term)
        assert ratio == math.exp(result["coefficients"][i]) and p == result["pvalues"][i]
        assert (lower, upper) == (math.exp(result["lower_ci"][i]), math.exp(result["upper_ci"][i]))
        assert lower < ratio < upper
    page = result_page(doc, link=lambda r, k: "run?id=" + r, back="./")
    ratios = page.split('<div id="ratios">', 1)[1].split('<h3>Provenance', 1)[0]
    shown = {float(v) for v, _ in cells_of(ratios)}
    assert {r[1] for r in table.rows} <= shown and "Odds ratios" in ratios and "<svg" in ratios
    assert "Odds ratios," in result_csv(doc)
    assert ratio_table("linear_regression", results["linear_regression"]) is None


@pytest.fixture(scope="module")
def survival_nodes():
    return [make_stroke(seed, 150) for seed in (5, 6, 7)]


def test_hazard_ratios_come_from_the_cox_result(survival_nodes):
    req = survival_request("cox_regression", x=("age", "sex"))
    result = run_in_process(get_algorithm("cox_regression"), survival_nodes, req, STROKE)
    table = ratio_table("cox_regression", result)
    assert table.title == "Hazard ratios"
    assert [r[0] for r in table.rows] == result["indep_vars"]
    assert [r[1] for r in table.rows] == result["hazard_ratios"]
    assert [r[2] for r in table.rows] == result["hr_lower_ci"]
    np.testing.assert_allclose([r[1] for r in table.rows], np.exp(result["coefficients"]), rtol=1e-12)


def test_kaplan_meier_curves_are_drawn_from_a_real_result(survival_nodes):
    """The bug fixed: results name their times ``timeline``, the plot looked for ``time``."""
    req = survival_request("kaplan_meier", x=("sex",), bin_width=30)
    result = run_in_process(get_algorithm("kaplan_meier"), survival_nodes, req, STROKE)
    assert all("timeline" in c and "time" not in c for c in result["curves"])
    (svg,) = result_plots(result)
    assert "Kaplan-Meier" in svg and "followup_days" in svg
    for curve in result["curves"]:
        assert str(curve["group"]) in svg  # one legend entry per group
    # one step path per curve and a band per curve: matplotlib draws each as a <path> in its own group
    assert len(re.findall(r'<g id="line2d_\d+">', svg)) >= len(result["curves"])
    assert len(re.findall(r'<g id="FillBetweenPolyCollection_\d+">|<g id="PolyCollection_\d+">', svg)) \
        == len(result["curves"])


@pytest.mark.parametrize(("doc", "kinds", "text"), [
    pytest.param(_doc("kaplan_meier", ["t", "e"], result={"binning": {"bins_used": 1, "grid_points": 40,
                                                                      "merged_for_disclosure": True,
                                                                      "method": "binned", "note": "rounded"}}),
                 ["bins", "approximate"], "One time bin", id="one-bin"),
    pytest.param(_doc("kaplan_meier", ["t", "e"], result={"binning": {"bins_used": 7, "grid_points": 40,
                                                                      "merged_for_disclosure": True,
                                                                      "method": "binned", "note": "rounded"}}),
                 ["bins", "approximate"], "7 of 40 bins used", id="merged-bins"),
    pytest.param(_doc("linear_regression", ["y"], excluded={"hospital_c": "refused (min_row_count): too few"}),
                 ["left_out"], "hospital_c: refused (min_row_count): too few", id="node-left-out"),
    pytest.param(_doc("multiple_histograms", ["age"], mode={"hospital_a": {"mode": "explore", "epsilon": 1.0}},
                      result={"privacy": {"approximate": True, "noisy_nodes": {
                          "hospital_a": {"mechanism": "gaussian", "epsilon": 2.0, "mode": "explore"}}}}),
                 ["noise"], "hospital_a: gaussian in explore mode, epsilon 2", id="explore-noise"),
    pytest.param(_doc("kaplan_meier", ["t", "e"], result={"noise": {"approximate": True}}),
                 ["noise"], "Perturbed result", id="noisy-counts"),
    pytest.param(_doc("multiple_histograms", ["age"], result={"histogram": [{"var": "age", "bins": [0, 90],
                                                                             "counts": [140]}]}),
                 ["bins"], "One bin in the histogram of age", id="histogram-one-bin"),
    pytest.param(_doc("linear_regression", ["y"], result={"n_obs": 10}), [], "", id="nothing-to-say"),
])
def test_degenerate_results_carry_warnings_on_the_page_and_the_list(doc, kinds, text):
    warnings = result_warnings(doc)
    assert [w.kind for w in warnings] == kinds
    page = result_page(doc, link=lambda r, k: "run?id=" + r, back="./")
    index = index_page([doc], link=lambda r, k: "run?id=" + r)
    if not kinds:
        assert 'id="warnings"' not in page and "badge" not in index.split("<tbody>")[1]
        return
    banner = page.split('<ul class="warnings" id="warnings">', 1)[1].split("</ul>", 1)[0]
    assert text in banner
    assert page.index('id="warnings"') < page.index("<h3>Provenance")  # above everything else
    if "noise" in kinds:
        assert '<li class="noise">' in banner and '<span class="badge noise">perturbed</span>' in index


def test_a_failed_run_has_no_result_warnings():
    doc = _doc("linear_regression", ["y"], status="refused", excluded={"a": "refused (access): no"})
    assert result_warnings(doc) == []


def test_a_std_the_noise_dominates_is_named_in_a_warning_and_its_interval_is_on_the_page():
    """ADR 0057: a perturbed std whose interval reaches 0 is flagged, never shown as 0.0."""
    data = {"num_dtps": 120, "num_na": 0, "num_total": 120, "approximate": True, "interval_level": 0.95,
            "mean": 61.2, "mean_noise_sd": 2.1, "mean_interval": [57.0, 65.4], "std": None,
            "std_interval": [0.0, 19.5], "variance_noise_sd": 150.0, "noise_dominates": True}
    clear = dict(data, std=12.0, std_interval=[9.0, 14.5], noise_dominates=False)
    doc = {"run_id": "r1", "algorithm": "descriptive_stats", "status": "succeeded",
           "result": {"variable_based": [{"variable": "age", "dataset": "hospital_a", "data": data},
                                         {"variable": "age", "dataset": "hospital_b", "data": clear}],
                      "model_based": []}}
    warnings = [w for w in result_warnings(doc) if "dominates" in w.text]
    assert len(warnings) == 1 and "age (hospital_a)" in warnings[0].text and "hospital_b" not in warnings[0].text
    page = result_page(doc, link=lambda run_id, kind: f"/{run_id}.{kind}", back="/")
    assert "std_interval" in page and "noise_dominates" in page and "age (hospital_a)" in page


def test_noisy_bins_cells_and_correlations_show_their_error_on_the_page(stroke_model_path):
    """ADR 0057: a noisy histogram's bins, a noisy table's cells and a noisy correlation carry their
    noise sd and interval into the page's tables; a correlation the noise dominates is named."""
    import json as _json

    import pandas as pd

    from mipflow.algorithms import AnalysisRequest
    from mipflow.node.controls.explore import KeyedNoise
    from mipflow.protocol.datamodel import load_data_model

    model = load_data_model(stroke_model_path)
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"dataset": "hospital_a", "age": rng.normal(60, 10, 200).clip(18, 90),
                          "nihss_admission": rng.integers(0, 42, 200).astype(float),
                          "sex": rng.choice(["M", "F"], 200), "thrombolysis": rng.choice(["yes", "no"], 200)})

    def run(name: str, y: list[str], x: list[str], **parameters) -> dict:
        algo = get_algorithm(name)
        req = AnalysisRequest.from_dict({"inputdata": {"data_model": model.key, "datasets": ["hospital_a"],
                                                       "x": x, "y": y, "filters": None}, "parameters": parameters})
        noise = KeyedNoise("laplace", 1.0, 0.0, algo.dp_release.blocks(algo, req, model), key=b"k" * 32,
                           query=b"q", version=b"v")
        aggregates = _json.loads(_json.dumps(algo.dp_release.release(algo, frame, req, model, noise)[0]))
        result = _json.loads(_json.dumps(algo.global_step(0, [aggregates], req, model, None).result))
        return {"run_id": name, "algorithm": name, "status": "succeeded", "result": result}

    link = lambda run_id, kind: f"/{run_id}.{kind}"  # noqa: E731
    hist = result_page(run("multiple_histograms", ["age"], [], bins=10), link=link, back="/")
    assert all(f">{field}<" in hist for field in ("counts_signed", "counts_noise_sd", "counts_low", "counts_high"))
    table = result_page(run("contingency_table", ["thrombolysis"], ["sex"]), link=link, back="/")
    assert "Noisy Cells Low" in table or "noisy_cells_low" in table.lower().replace(" ", "_")
    doc = run("pearson_correlation", ["age", "nihss_admission"], [], alpha=0.05)
    page = result_page(doc, link=link, back="/")
    assert "r_noise_sd" in page.lower().replace(" ", "_") and "noise_dominates" in page.lower().replace(" ", "_")
    dominated = any(doc["result"]["noise_dominates"]["age"][i] for i in (1,))
    assert any("outweighs" in w.text for w in result_warnings(doc)) == dominated


def test_a_noisy_regression_shows_its_total_and_sampling_errors_and_names_the_terms_the_noise_dominates(
        stroke_model_path):
    """ADR 0057: an explore-mode linear regression's coefficient table carries std_err_sampling,
    coef_noise_sd and noise_dominates; the terms the noise dominates are named in a warning, no others."""
    import json as _json

    import pandas as pd

    from mipflow.algorithms import AnalysisRequest
    from mipflow.node.controls.explore import KeyedNoise
    from mipflow.protocol.datamodel import load_data_model

    model = load_data_model(stroke_model_path)
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"dataset": "hospital_a", "age": rng.normal(60, 10, 3000).clip(18, 90),
                          "sex": rng.choice(["M", "F"], 3000)})
    frame["nihss_admission"] = (0.3 * frame["age"] + rng.normal(0, 3, 3000)).round().clip(0, 42)
    algo = get_algorithm("linear_regression")
    req = AnalysisRequest.from_dict({"inputdata": {"data_model": model.key, "datasets": ["hospital_a"],
                                                   "x": ["age", "sex"], "y": ["nihss_admission"], "filters": None},
                                     "parameters": {}})
    noise = KeyedNoise("laplace", 4.0, 0.0, 1, key=b"k" * 32, query=b"q", version=b"v")
    aggregates = _json.loads(_json.dumps(algo.dp_release.release(algo, frame, req, model, noise)[0]))
    result = _json.loads(_json.dumps(algo.global_step(0, [aggregates], req, model, None).result))
    doc = {"run_id": "lr", "algorithm": "linear_regression", "status": "succeeded", "result": result}
    page = result_page(doc, link=lambda run_id, kind: f"/{run_id}.{kind}", back="/").lower().replace(" ", "_")
    assert all(field in page for field in ("std_err_sampling", "coef_noise_sd", "coef_noise_low", "noise_dominates"))
    dominated = [t for t, flag in zip(result["indep_vars"], result["noise_dominates"]) if flag]
    clear = [t for t, flag in zip(result["indep_vars"], result["noise_dominates"]) if not flag]
    assert dominated and clear  # this seed has both
    warning = [w.text for w in result_warnings(doc) if "coefficient(s)" in w.text]
    assert len(warning) == 1
    assert warning[0].split("coefficient(s) of ", 1)[1].split(": ", 1)[0].split(", ") == dominated
