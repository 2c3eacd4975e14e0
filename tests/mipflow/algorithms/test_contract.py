"""The algorithm contract: requests, registry, design matrices, moments and error paths
(validation against the spec in test_spec.py, the in-process driver in test_local.py)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import ALGORITHMS, AnalysisRequest, Algorithm, get_algorithm, run_in_process
from mipflow.algorithms.contract import Step
from mipflow.algorithms.local import prepare_local_data
from mipflow.algorithms.design import (
    INTERCEPT,
    category_codes,
    design_columns,
    design_matrix,
    level_counts,
    select_design_columns,
)
from mipflow.protocol.wire import json_ready, transport
from mipflow.algorithms.moments import Moments, compute_moments, merge_moments
from mipflow.exceptions import DataModelError, RequestError
from tests.mipflow.algorithms.helpers import assert_rel_close
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request

EXAREME2_INPUT = {
    "inputdata": {
        "y": ["alzheimerbroadcategory"],
        "x": ["rightttgtransversetemporalgyrus", "leftpinsposteriorinsula"],
        "data_model": "dementia:0.1",
        "datasets": ["ppmi0", "desd-synthdata0"],
        "filters": None,
    },
    "parameters": {"positive_class": "Other"},
    "test_case_num": 0,
}

#: A minimal valid request per algorithm on the synthetic model.
VALID = {
    "descriptive_stats": request(x=("grp",), y=("y", "sex")),
    "pearson_correlation": request(y=("y", "x1")),
    "linear_regression": request(x=("grp", "x1"), y=("y",)),
    "logistic_regression": request(x=("x1",), y=("outcome",), positive_class="yes"),
    "ttest_onesample": request(y=("y",), mu=1.0),
    "ttest_independent": request(x=("grp",), y=("y",), groupA="a", groupB="b"),
    "ttest_paired": request(x=("x1",), y=("y",)),
    "anova_oneway": request(x=("grp",), y=("y",)),
    "multiple_histograms": request(x=("sex",), y=("y",), bins=5),
    "contingency_table": request(x=("sex",), y=("outcome",)),
    "linear_regression_cv": request(x=("grp", "x1"), y=("y",), n_splits=3),
    "logistic_regression_cv": request(x=("x1",), y=("outcome",), positive_class="yes", n_splits=3),
    "naive_bayes_gaussian_cv": request(x=("x1", "x2"), y=("grp",), n_splits=3),
    "naive_bayes_categorical_cv": request(x=("sex",), y=("grp",), n_splits=3),
    "kaplan_meier": request(x=("sex",), y=("score", "outcome"), event_level="yes"),
    "cox_regression": request(x=("grp", "x1"), y=("score", "outcome"), event_level="yes"),
    "kmeans": request(y=("x1", "y", "x2"), k=3, maxiter=20, tol=1e-4),  # real variables only (ADR 0050)
    "anova": request(x=("grp", "sex"), y=("y",), sstype=1),
    "pca": request(y=("y", "x1", "x2", "age")),
    "pca_with_transformation": request(y=("y", "x1", "x2", "age"), data_transformation={
        "log": ["age"], "exp": ["x1"], "center": ["y"], "standardize": ["x2"]}),
    "cmh_test": request(x=("sex", "stage"), y=("outcome",), outcome_level="yes"),
    "gee": request(x=("grp", "x1"), y=("y",), family="gaussian", cov_struct="exchangeable"),
    "linear_mixed_model": request(x=("grp", "x1"), y=("y",)),
}


# --------------------------------------------------------------------------- request


def test_request_round_trips_the_exareme2_form() -> None:
    req = AnalysisRequest.from_dict(EXAREME2_INPUT)
    assert req.y == ("alzheimerbroadcategory",)
    assert req.datasets == ("ppmi0", "desd-synthdata0")
    assert req.parameters["positive_class"] == "Other"
    assert AnalysisRequest.from_dict(json.loads(json.dumps(req.to_dict()))) == req


def test_request_x_null_means_no_covariates() -> None:
    doc = json.loads(json.dumps(EXAREME2_INPUT))
    doc["inputdata"]["x"] = None
    assert AnalysisRequest.from_dict(doc).x == ()


@pytest.mark.parametrize("mutate, message", [
    pytest.param(lambda d: d.pop("inputdata"), "inputdata", id="no-inputdata"),
    pytest.param(lambda d: d["inputdata"].update(data_model="dementia"), "CODE:VERSION", id="bad-model"),
    pytest.param(lambda d: d["inputdata"].update(datasets=[]), "at least one dataset", id="no-datasets"),
    pytest.param(lambda d: d["inputdata"].update(y="gender"), "list of variable codes", id="y-string"),
    pytest.param(lambda d: d["inputdata"].update(x=[1]), "not a variable code", id="x-number"),
    pytest.param(lambda d: d["inputdata"].update(filters=[1]), "rule group", id="bad-filters"),
    pytest.param(lambda d: d.update(parameters=[1]), "parameters", id="bad-parameters"),
])
def test_malformed_requests_raise_request_error(mutate, message) -> None:
    doc = json.loads(json.dumps(EXAREME2_INPUT))
    mutate(doc)
    with pytest.raises(RequestError, match=message):
        AnalysisRequest.from_dict(doc)


def test_request_keeps_its_own_copy_of_the_parameters() -> None:
    doc = json.loads(json.dumps(EXAREME2_INPUT))
    req = AnalysisRequest.from_dict(doc)
    doc["parameters"]["positive_class"] = "AD"
    assert req.parameters["positive_class"] == "Other"
    import pickle

    assert pickle.loads(pickle.dumps(req)) == req


# --------------------------------------------------------------------------- registry


def test_registry_holds_the_catalogue() -> None:
    assert sorted(ALGORITHMS) == sorted(VALID)
    for name, alg in ALGORITHMS.items():
        assert alg.name == name
        assert isinstance(alg, Algorithm)
        assert get_algorithm(name) is alg


def test_unknown_algorithm_is_a_request_error() -> None:
    with pytest.raises(RequestError, match="unknown algorithm 'no_such_algorithm'"):
        get_algorithm("no_such_algorithm")


# --------------------------------------------------------------------------- design matrix


def test_design_columns_are_patsy_ordered_with_sorted_levels() -> None:
    cols = design_columns(["x1", "grp", "sex"], MODEL)
    assert cols == [INTERCEPT, "grp[a]", "grp[b]", "grp[c]", "grp[zz]", "sex[F]", "sex[M]", "x1"]


def test_every_node_builds_the_same_columns_even_without_a_level() -> None:
    node_a = pd.DataFrame({"grp": ["a", "a"], "x1": [1.0, 2.0]})
    node_b = pd.DataFrame({"grp": ["b", "c", "c"], "x1": [3.0, 4.0, 5.0]})
    mat_a, names_a = design_matrix(node_a, ["grp", "x1"], MODEL)
    mat_b, names_b = design_matrix(node_b, ["grp", "x1"], MODEL)
    assert names_a == names_b
    assert mat_a.shape == (2, 6) and mat_b.shape == (3, 6)
    np.testing.assert_array_equal(mat_a[:, 1:5], [[1, 0, 0, 0], [1, 0, 0, 0]])


def test_reference_level_is_the_first_sorted_level_present() -> None:
    counts = {"grp": [0, 4, 7, 0]}  # a absent, b and c present, zz absent (sorted order a, b, c, zz)
    assert select_design_columns(["grp", "x1"], MODEL, counts) == [INTERCEPT, "grp[c]", "x1"]
    counts = {"grp": [3, 4, 7, 0]}
    assert select_design_columns(["grp"], MODEL, counts) == [INTERCEPT, "grp[b]", "grp[c]"]


def test_design_matrix_selects_named_columns() -> None:
    frame = pd.DataFrame({"grp": ["a", "b", "c"], "x1": [1.0, 2.0, 3.0]})
    mat, names = design_matrix(frame, ["grp", "x1"], MODEL, columns=[INTERCEPT, "grp[c]", "x1"])
    assert names == [INTERCEPT, "grp[c]", "x1"]
    np.testing.assert_array_equal(mat, [[1, 0, 1], [1, 0, 2], [1, 1, 3]])
    with pytest.raises(RequestError, match="unknown design columns"):
        design_matrix(frame, ["grp"], MODEL, columns=["grp[q]"])


def test_integer_coded_categories_match_their_codes() -> None:
    codes = category_codes(pd.Series([1.0, 3.0, np.nan]), MODEL.variable("stage"))
    assert codes.tolist() == ["1", "3", None]
    assert level_counts(pd.DataFrame({"stage": [1, 1, 2]}), ["stage"], MODEL) == {"stage": [2, 1, 0]}
    with pytest.raises(DataModelError, match="outside its enumerations") as info:
        category_codes(pd.Series([7]), MODEL.variable("stage"))
    assert "7" not in str(info.value)  # the rows' values are not named (issue 14.2)


# --------------------------------------------------------------------------- moments


def test_chan_merge_keeps_precision_where_raw_sums_cancel() -> None:
    rng = np.random.default_rng(1)
    # a mean 1e8 times the spread (e.g. a date in seconds, measured to 10 ms)
    values = 1e6 + rng.normal(0.0, 1e-2, size=3000)
    parts = np.array_split(values, [5, 1200, 1201])
    merged = merge_moments(compute_moments(p) for p in parts)
    exact = float(np.sum((values - values.mean()) ** 2))
    assert merged.n == values.size
    assert_rel_close(merged.m2[0], exact, rel=1e-9)
    # what a naive sum-of-squares protocol would report is useless here
    naive = float(np.sum(values**2) - values.size * values.mean() ** 2)
    assert abs(naive - exact) / exact > 1e-3


def test_matrix_moments_merge_to_the_pooled_comoments() -> None:
    rng = np.random.default_rng(2)
    data = rng.normal(size=(100, 3)) + [1e6, -5.0, 0.0]
    parts = [data[:0], data[:40], data[40:41], data[41:]]
    merged = merge_moments(compute_moments(p, matrix=True) for p in parts)
    centred = data - data.mean(axis=0)
    assert_rel_close(merged.m2, centred.T @ centred, rel=1e-9)
    assert_rel_close(merged.mean, data.mean(axis=0), rel=1e-12)


def test_moments_of_empty_parts() -> None:
    empty = compute_moments(np.zeros(0))
    assert empty.n == 0 and Moments.from_dict(transport(empty.to_dict())).n == 0
    assert merge_moments([empty, empty]).n == 0


def test_json_ready_spells_infinity_and_nan_as_exareme2() -> None:
    out = json_ready({"a": np.float64("inf"), "b": -np.inf, "c": np.nan, "d": np.int64(3),
                      "e": np.array([1.5])})
    assert out == {"a": "Infinity", "b": "-Infinity", "c": None, "d": 3, "e": [1.5]}
    json.dumps(out, allow_nan=False)


# --------------------------------------------------------------------------- data-dependent errors


def test_anova_with_one_level_is_a_request_error() -> None:
    data = make_data(5, 50).assign(grp="a")
    with pytest.raises(RequestError, match="only one level"):
        run_in_process(ALGORITHMS["anova_oneway"], [data], VALID["anova_oneway"], MODEL)


def test_logistic_regression_with_one_class_is_a_request_error() -> None:
    data = make_data(5, 50).assign(outcome="no")
    with pytest.raises(RequestError, match="only one class"):
        run_in_process(ALGORITHMS["logistic_regression"], [data], VALID["logistic_regression"], MODEL)


def test_logistic_regression_under_perfect_separation_is_a_request_error() -> None:
    data = make_data(5, 80)
    data["outcome"] = np.where(data["x1"] > 2.0, "yes", "no")
    with pytest.raises(RequestError, match="converge|separat"):
        run_in_process(ALGORITHMS["logistic_regression"], [data.iloc[:40], data.iloc[40:]],
                       VALID["logistic_regression"], MODEL)


def test_logistic_regression_respects_max_iter() -> None:
    req = request(x=("x1",), y=("outcome",), positive_class="yes", max_iter=1)
    with pytest.raises(RequestError, match="did not converge in 1 iteration"):
        run_in_process(ALGORITHMS["logistic_regression"], [make_data(5, 80)], req, MODEL)


def test_linear_regression_with_collinear_covariates_is_a_request_error() -> None:
    data = make_data(5, 50)
    data["x2"] = 2.0 * data["x1"]
    with pytest.raises(RequestError, match="collinear"):
        run_in_process(ALGORITHMS["linear_regression"], [data],
                       request(x=("x1", "x2"), y=("y",)), MODEL)


def test_histogram_counts_suppressed_by_a_node_hide_the_pooled_bin() -> None:
    """A bin one node suppressed is not the other node's count (that would read as the pooled count): it is None,
    marked suppressed, the released part a lower bound only; a bin both released is their sum."""
    alg = ALGORITHMS["multiple_histograms"]
    req = request(y=("grp",))
    frames = [prepare_local_data(alg, make_data(s, 30), req) for s in (1, 2)]
    aggregates = [transport(alg.local_step(0, f, req, MODEL, None)) for f in frames]
    # node 0's disclosure control suppresses every count below 10
    for rec in aggregates[0]["histograms"]:
        rec["counts"] = [c if c >= 10 else None for c in rec["counts"]]
    step = alg.global_step(0, aggregates, req, MODEL, None)
    assert isinstance(step, Step) and step.done
    counts = step.result["histogram"][0]["counts"]
    node1 = aggregates[1]["histograms"][0]["counts"]
    node0 = aggregates[0]["histograms"][0]["counts"]
    assert any(a is None for a in node0) and any(a is not None for a in node0)  # both cases exercised
    expected = [None if a is None else (a + b) or None for a, b in zip(node0, node1)]
    assert counts == expected
    status = step.result["histogram"][0]["bin_status"]
    assert status == ["suppressed" if a is None else "pooled" if a + b else "empty" for a, b in zip(node0, node1)]
    assert step.result["histogram"][0]["counts_at_least"] == [b if a is None else a + b for a, b in zip(node0, node1)]


def test_histogram_of_a_bounded_variable_bins_over_the_declared_range() -> None:
    alg = ALGORITHMS["multiple_histograms"]
    req = request(y=("score",), bins=5)  # on the public grid (ADR 0051)
    data = make_data(4, 90)
    frame = prepare_local_data(alg, data, req)
    aggregate = alg.local_step(0, frame, req, MODEL, None)
    assert "min" not in aggregate and "max" not in aggregate  # no extreme leaves the node
    result = run_in_process(alg, [data.iloc[:30], data.iloc[30:]], req, MODEL)
    counts, edges = np.histogram(data["score"], bins=5, range=(0, 30))
    assert result["histogram"][0]["bins"] == edges.tolist()
    assert result["histogram"][0]["counts"] == [int(c) or None for c in counts]


def test_descriptive_stats_hides_a_level_a_node_suppressed() -> None:
    alg = ALGORITHMS["descriptive_stats"]
    req = request(y=("grp",))
    frames = [prepare_local_data(alg, make_data(s, 40), req) for s in (1, 2)]
    aggregates = [transport(alg.local_step(0, f, req, MODEL, None)) for f in frames]
    # node 0's disclosure control suppresses every non-empty count below 10
    for record in aggregates[0]["datasets"].values():
        for kind in ("variable_based", "model_based"):
            cells = record[kind]["grp"]["counts"]
            record[kind]["grp"]["counts"] = [c if c == 0 or c >= 10 else None for c in cells]  # 0 is not small
    result = alg.global_step(0, aggregates, req, MODEL, None).result
    json.dumps(result, allow_nan=False)
    total = {r["dataset"]: r["data"] for r in result["variable_based"]}["all datasets"]
    levels = MODEL.variable("grp").enumeration_codes
    both = [int(sum((f["grp"] == level).sum() for f in frames)) for level in levels]
    hidden = [level for i, level in enumerate(levels)
              if any(r["variable_based"]["grp"]["counts"][i] is None for r in aggregates[0]["datasets"].values())]
    assert hidden and len(hidden) < len(levels), "not vacuous: node 0 hid some levels, not all"
    # a level node 0 hid is unknown, never node 1's count alone; the others are the pooled counts
    assert total["suppressed"] == hidden and not set(hidden) & set(total["counts"])
    assert total["counts"] == {level: k for level, k in zip(levels, both) if level not in hidden and k > 0}
    assert total["num_dtps"] is None and total["num_na"] is None
    assert total["num_dtps_at_least"] == sum(total["counts"].values())


def test_descriptive_stats_secure_sum_marks_a_hidden_level_as_the_plain_path() -> None:
    """Under secure aggregation each node's pooled record carries a 0/1 ``hidden`` flag per level (after its
    controls); summed, the central site shows the same "all datasets" rows as the plain path.  A summed
    nominal record without the flags (an older node) is refused, never shown as the others' sum."""
    from mipflow.algorithms.descriptive_stats import POOLED
    from mipflow.exceptions import FederationError
    from mipflow.secagg.codec import additive_form, from_additive

    alg = ALGORITHMS["descriptive_stats"]
    req = request(y=("grp",))
    frames = [prepare_local_data(alg, make_data(s, 40), req) for s in (1, 2, 3)]
    aggregates = [transport(alg.local_step(0, f, req, MODEL, None)) for f in frames]
    for node, tab in ((0, 4), (2, 3)):  # two nodes' controls hide small counts (c at both, b at node 0)
        for record in aggregates[node]["datasets"].values():
            for kind in ("variable_based", "model_based"):
                cells = record[kind]["grp"]["counts"]
                record[kind]["grp"]["counts"] = [c if c == 0 or c >= tab else None for c in cells]
    forms = [transport(alg.secure_aggregates(a, req, MODEL)) for a in aggregates]
    layout = additive_form(forms[0])[0]
    assert all(additive_form(f)[0] == layout for f in forms)  # the same layout at every node
    summed = from_additive(layout, [sum(col) for col in zip(*(additive_form(f)[1] for f in forms))])
    levels = MODEL.variable("grp").enumeration_codes
    hid = [[any(r["variable_based"]["grp"]["counts"][i] is None for r in a["datasets"].values()) for i in
            range(len(levels))] for a in aggregates]
    assert summed[POOLED]["variable_based"]["grp"]["hidden"] == [sum(h[i] for h in hid) for i in range(len(levels))]
    assert 2 in summed[POOLED]["variable_based"]["grp"]["hidden"], "not vacuous: a level hidden at two nodes"
    secure = alg.global_step(0, [summed], req, MODEL, None).result
    plain = alg.global_step(0, aggregates, req, MODEL, None).result
    for kind in ("variable_based", "model_based"):
        got = [r["data"] for r in secure[kind]]
        assert got == [r["data"] for r in plain[kind] if r["dataset"] == "all datasets"]
        assert got[0]["suppressed"] and got[0]["counts"] and got[0]["num_dtps"] is None
    pooled = {kind: [r["data"] for r in secure[kind]] for kind in ("variable_based", "model_based")}
    whole = pd.concat(frames)["grp"].value_counts()
    assert pooled["variable_based"][0]["counts"] == {k: int(whole[k]) for k in levels
                                                     if k not in pooled["variable_based"][0]["suppressed"]
                                                     and whole.get(k, 0) > 0}
    for kind in ("variable_based", "model_based"):
        del summed[POOLED][kind]["grp"]["hidden"]
    with pytest.raises(FederationError, match="no hidden-level flags"):
        alg.global_step(0, [summed], req, MODEL, None)
