"""Cross-validated algorithms: exact against the pooled reference with the same folds,
naive Bayes fits against Exareme2's expected fits and scikit-learn, secure aggregation, and
disclosure.

Each node's rows carry the node's fold keys, as a node hands them to the local step
(:func:`tests.mipflow.algorithms.helpers.fold_keyed`: every "node" its own secret).  The
pooled reference gives each node's complete-case rows their folds from those keys by its
own ranking (rank of the key modulo ``n_splits``, pandas' ``rank``), concatenates the
nodes' fold ``k`` rows (test) and the rest (training) and fits statsmodels /
scikit-learn on them.  The folds no longer depend on any request parameter (ADR 0026).
"""
from __future__ import annotations

import json
import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from hypothesis import given
from hypothesis import strategies as st
from scipy import special
from sklearn.metrics import roc_auc_score
from sklearn.naive_bayes import CategoricalNB, GaussianNB

from mipflow.algorithms import AnalysisRequest, get_algorithm, prepare_local_data, run_in_process
from mipflow.algorithms.crossval import FOLD_KEY, SEED_REFUSAL, deal_folds, fit_folds, score_bins
from mipflow.algorithms.filters_pandas import apply_filters
from mipflow.node.home import NodeSettings
from mipflow.node.controls.disclosure import DisclosureControls
from mipflow.exceptions import DisclosureError, RequestError
from tests.conftest import SHARED_DIR
from tests.mipflow.algorithms.helpers import EXACT_RTOL, POOLED_SUMMARY, assert_rel_close, fold_keyed
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request
from tests.mipflow.algorithms.test_federated_vs_pooled import SETTINGS, split_data


def check(algorithm: str, what: str, actual, expected, *, floor: float = 1e-12) -> None:
    worst = assert_rel_close(actual, expected, rel=EXACT_RTOL, floor=floor, what=f"{algorithm}.{what}")
    POOLED_SUMMARY.record(algorithm, worst, what)


def pooled_folds(name: str, nodes, req: AnalysisRequest, n_splits: int):
    """(pooled complete-case rows, their fold) with each node's own fold assignment.

    ``nodes`` carry their fold keys (:func:`fold_keyed`); a node's row of the ``r``-th
    smallest key among its complete cases is in fold ``r % n_splits``.
    """
    algo = get_algorithm(name)
    parts, folds = [], []
    for frame in nodes:
        local = prepare_local_data(algo, frame, req)
        rank = local[FOLD_KEY].rank(method="first").to_numpy(dtype=np.int64) - 1
        parts.append(local.drop(columns=[FOLD_KEY]))
        folds.append(rank % n_splits)
    return pd.concat(parts, ignore_index=True), np.concatenate(folds)


def dummies(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Design matrix with the given ``Intercept`` / ``var[level]`` / numeric columns, by pandas."""
    out = []
    for col in columns:
        if col == "Intercept":
            out.append(np.ones(len(frame)))
        elif "[" in col:
            var, level = col[:-1].split("[")
            values = frame[var].map(lambda v: str(int(v)) if isinstance(v, float) else str(v))
            out.append((values == level).to_numpy(dtype=float))
        else:
            out.append(frame[col].to_numpy(dtype=float))
    return np.column_stack(out)


def treatment_columns(frame: pd.DataFrame, x: list[str]) -> list[str]:
    """patsy's treatment coding of the frame: sorted levels present, first dropped."""
    cols = ["Intercept"]
    numeric = []
    for var in x:
        if var in ("grp", "sex", "stage"):
            levels = sorted(frame[var].map(lambda v: str(int(v)) if isinstance(v, float) else str(v)).unique())
            cols += [f"{var}[{lvl}]" for lvl in levels[1:]]
        else:
            numeric.append(var)
    return cols + numeric


# --------------------------------------------------------------------------- linear regression


@SETTINGS
@given(split_data(min_rows=60, max_rows=200), st.integers(2, 6))
def test_linear_regression_cv_equals_pooled_ols_per_fold(split, n_splits) -> None:
    _, nodes = split
    nodes = fold_keyed(nodes)
    x = ["grp", "x1", "x2", "age"]
    req = request(x=x, y=("y",), n_splits=n_splits)
    ours = run_in_process(get_algorithm("linear_regression_cv"), nodes, req, MODEL)
    pooled, fold = pooled_folds("linear_regression_cv", nodes, req, n_splits)
    rmse = []
    for k in range(n_splits):
        train, test = pooled[fold != k], pooled[fold == k]
        columns = treatment_columns(train, x)
        assert ours["folds"]["indep_vars"][k] == columns
        fit = sm.OLS(train["y"].to_numpy(float), dummies(train, columns)).fit()
        check("linear_regression_cv", "coefficients", ours["folds"]["coefficients"][k], fit.params,
              floor=1e-4 * float(np.min(fit.bse)))
        resid = test["y"].to_numpy(float) - fit.predict(dummies(test, columns))
        y_test = test["y"].to_numpy(float)
        mse = float(np.mean(resid ** 2))
        assert ours["folds"]["n_train"][k] == len(train) and ours["folds"]["n_test"][k] == len(test)
        check("linear_regression_cv", "mean_sq_error", ours["folds"]["mean_sq_error"][k], mse)
        check("linear_regression_cv", "mean_abs_error", ours["folds"]["mean_abs_error"][k], np.mean(np.abs(resid)))
        r2 = 1 - np.sum(resid ** 2) / np.sum((y_test - y_test.mean()) ** 2)
        check("linear_regression_cv", "r_squared", ours["folds"]["r_squared"][k], r2)
        rmse.append(math.sqrt(mse))
    check("linear_regression_cv", "mean_sq_error mean of RMSE", ours["mean_sq_error"][0], np.mean(rmse))
    # The SD of k nearly equal fold RMSEs is a difference of numbers of size mean(RMSE): its
    # attainable accuracy is relative to that scale (fold RMSEs equal to 1e-12 can move an SD of
    # 1e-4 x the mean by 1e-8 of itself), so it is held to 1e-9 of mean(RMSE).
    check("linear_regression_cv", "mean_sq_error sd of RMSE", ours["mean_sq_error"][1],
          np.std(rmse, ddof=1), floor=float(np.mean(rmse)))


# --------------------------------------------------------------------------- logistic regression


@SETTINGS
@given(split_data(min_rows=120, max_rows=240), st.integers(2, 4), st.sampled_from([10, 50, 200]))
def test_logistic_regression_cv_equals_pooled_logit_per_fold(split, n_splits, bins) -> None:
    _, nodes = split
    nodes = fold_keyed(nodes)
    x = ["sex", "x1"]
    req = request(x=x, y=("outcome",), positive_class="yes", n_splits=n_splits, roc_bins=bins)
    pooled, fold = pooled_folds("logistic_regression_cv", nodes, req, n_splits)
    try:
        ours = run_in_process(get_algorithm("logistic_regression_cv"), nodes, req, MODEL)
    except RequestError as exc:
        assert "fold" in str(exc) and ("converge" in str(exc) or "separated" in str(exc) or "class" in str(exc))
        return
    for k in range(n_splits):
        train, test = pooled[fold != k], pooled[fold == k]
        columns = treatment_columns(train, x)
        assert ours["folds"]["indep_vars"][k] == columns
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = sm.Logit((train["outcome"] == "yes").to_numpy(float), dummies(train, columns)).fit(
                method="newton", tol=1e-8, disp=False)
        check("logistic_regression_cv", "coefficients", ours["folds"]["coefficients"][k], fit.params)
        eta = dummies(test, columns) @ fit.params
        y = (test["outcome"] == "yes").to_numpy()
        pred = eta > 0
        tp, fp = int(np.sum(y & pred)), int(np.sum(~y & pred))
        fn, tn = int(np.sum(y & ~pred)), int(np.sum(~y & ~pred))
        summary = ours["summary"]
        assert summary["n_obs"][k] == len(train)
        check("logistic_regression_cv", "accuracy", summary["accuracy"][k], (tp + tn) / len(test))
        check("logistic_regression_cv", "recall", summary["recall"][k], tp / (tp + fn) if tp + fn else 0.0)
        check("logistic_regression_cv", "precision", summary["precision"][k], tp / (tp + fp) if tp + fp else 0.0)
        if 0 < y.sum() < len(y):
            binned = score_bins(special.expit(eta), bins)
            # the binned AUC is exact for the binned scores ...
            check("logistic_regression_cv", "auc (binned scores)", ours["auc"][k], roc_auc_score(y, binned))
            # ... and within half the share of positive-negative pairs sharing a bin of the raw AUC
            pos, neg = binned[y], binned[~y]
            tied = sum(np.sum(neg == b) for b in pos) / (len(pos) * len(neg))
            assert abs(ours["auc"][k] - roc_auc_score(y, eta)) <= tied / 2 + 1e-12


# --------------------------------------------------------------------------- naive Bayes


@SETTINGS
@given(split_data(min_rows=60, max_rows=200), st.integers(2, 5))
def test_naive_bayes_gaussian_cv_equals_sklearn_per_fold(split, n_splits) -> None:
    _, nodes = split
    nodes = fold_keyed(nodes)
    x = ["x1", "x2", "age"]
    req = request(x=x, y=("grp",), n_splits=n_splits)
    ours = run_in_process(get_algorithm("naive_bayes_gaussian_cv"), nodes, req, MODEL)
    pooled, fold = pooled_folds("naive_bayes_gaussian_cv", nodes, req, n_splits)
    labels = ours["confusion_matrix"]["labels"]
    total = np.zeros((len(labels), len(labels)), dtype=int)
    for k in range(n_splits):
        train, test = pooled[fold != k], pooled[fold == k]
        nb = GaussianNB().fit(train[x].to_numpy(float), train["grp"].to_numpy())
        cm = pd.crosstab(pd.Categorical(test["grp"], labels), pd.Categorical(nb.predict(test[x].to_numpy(float)),
                                                                              labels), dropna=False).to_numpy()
        assert ours["folds"]["confusion_matrix"][k] == cm.tolist()
        total += cm
    assert ours["confusion_matrix"]["data"] == total.tolist()
    full = GaussianNB().fit(pooled[x].to_numpy(float), pooled["grp"].to_numpy())
    assert ours["model"]["classes"] == list(full.classes_)
    check("naive_bayes_gaussian_cv", "theta", ours["model"]["theta"], full.theta_)
    check("naive_bayes_gaussian_cv", "var", ours["model"]["var"], full.var_)
    assert ours["model"]["class_count"] == full.class_count_.tolist()


@SETTINGS
@given(split_data(min_rows=60, max_rows=200), st.integers(2, 5), st.floats(0.1, 3.0))
def test_naive_bayes_categorical_cv_equals_sklearn_per_fold(split, n_splits, alpha) -> None:
    _, nodes = split
    nodes = fold_keyed(nodes)
    x = ["sex", "stage"]
    req = request(x=x, y=("grp",), n_splits=n_splits, alpha=alpha)
    ours = run_in_process(get_algorithm("naive_bayes_categorical_cv"), nodes, req, MODEL)
    pooled, fold = pooled_folds("naive_bayes_categorical_cv", nodes, req, n_splits)
    levels = {"sex": ["F", "M"], "stage": [1.0, 2.0, 3.0]}
    codes = np.column_stack([pooled[v].map({lvl: i for i, lvl in enumerate(levels[v])}).to_numpy() for v in x])
    labels = ours["confusion_matrix"]["labels"]
    for k in range(n_splits):
        train = fold != k
        nb = CategoricalNB(alpha=alpha, min_categories=[2, 3]).fit(codes[train], pooled["grp"][train])
        cm = pd.crosstab(pd.Categorical(pooled["grp"][~train], labels),
                         pd.Categorical(nb.predict(codes[~train]), labels), dropna=False).to_numpy()
        assert ours["folds"]["confusion_matrix"][k] == cm.tolist()
    full = CategoricalNB(alpha=alpha, min_categories=[2, 3]).fit(codes, pooled["grp"])
    assert ours["model"]["class_count"] == full.class_count_.astype(int).tolist()
    for i in range(len(x)):
        assert ours["model"]["category_count"][i] == full.category_count_[i].astype(int).tolist()


def _fit_cases(file: str) -> list:
    cases = json.loads((SHARED_DIR / "exareme2" / "expected" / file).read_text())["test_cases"]
    return [pytest.param(tc["input"], tc["output"], id=f"{file.split('_expected')[0]}-{i}")
            for i, tc in enumerate(cases)]


def _run_validation(validation_nodes, name: str, doc: dict) -> tuple[dict, pd.DataFrame]:
    # n_splits=2 and the fit on all rows: the result's "model" is the fit Exareme2's files hold
    doc = dict(doc, parameters={**(doc.get("parameters") or {}), "n_splits": 2})
    req = AnalysisRequest.from_dict(doc)
    model, nodes = validation_nodes.get(req.data_model)
    frames = fold_keyed(apply_filters(n[n["dataset"].isin(req.datasets)], req.filters, model) for n in nodes)
    algo = get_algorithm(name)
    pooled = pd.concat([prepare_local_data(algo, f, req).drop(columns=[FOLD_KEY]) for f in frames],
                       ignore_index=True)
    return run_in_process(algo, frames, req, model), pooled


@pytest.mark.parametrize("doc, expected", _fit_cases("naive_bayes_gauss_fit_expected.json"))
def test_naive_bayes_gaussian_fit_matches_exareme2_and_sklearn(validation_nodes, doc, expected) -> None:
    ours, pooled = _run_validation(validation_nodes, "naive_bayes_gaussian_cv", doc)
    fit = ours["model"]
    assert fit["class_count"] == expected["class_count"]
    # Exareme2's tolerance is rtol=atol=1e-2; its variances are clipped, not smoothed
    assert_rel_close(fit["theta"], expected["theta"], rel=1e-9, what="theta vs Exareme2")
    assert_rel_close(fit["var"], expected["var"], rel=1e-6, what="var vs Exareme2")
    x = doc["inputdata"]["x"]
    nb = GaussianNB().fit(pooled[x].to_numpy(float), pooled[doc["inputdata"]["y"][0]].to_numpy())
    check("naive_bayes_gaussian_cv", "fit theta (dementia)", fit["theta"], nb.theta_)
    check("naive_bayes_gaussian_cv", "fit var (dementia)", fit["var"], nb.var_)


@pytest.mark.parametrize("doc, expected", _fit_cases("naive_bayes_categorical_fit_expected.json"))
def test_naive_bayes_categorical_fit_matches_exareme2(validation_nodes, doc, expected) -> None:
    ours, _ = _run_validation(validation_nodes, "naive_bayes_categorical_cv", doc)
    fit = ours["model"]
    assert fit["class_count"] == expected["class_count"]
    counts = []
    for code, levels, table in zip(doc["inputdata"]["x"], fit["levels"], fit["category_count"]):
        # Exareme2 takes the dataset levels from the datasets it loaded: not the *_test ones
        keep = [i for i, lvl in enumerate(levels) if not (code == "dataset" and lvl.endswith("_test"))]
        # ... and, as scikit-learn's CategoricalNB without min_categories, only up to the last
        # level observed (mipflow counts every enumeration level, min_categories=levels)
        observed = [i for i in keep if any(row[i] for row in table)]
        keep = [i for i in keep if i <= max(observed)]
        counts.append([[row[i] for i in keep] for row in table])
    assert counts == expected["category_count"]


# --------------------------------------------------------------------------- disclosure and refusals


def _controls(**settings) -> DisclosureControls:
    base = NodeSettings()
    return DisclosureControls(base.__class__(**{**base.__dict__, **settings}))


def test_fit_folds_trains_each_fold_on_every_other_fold_of_every_node() -> None:
    nodes = [{"folds": [f"a{k}" for k in range(3)]}, {"folds": [f"b{k}" for k in range(3)]}]
    assert fit_folds(nodes, 3, lambda training: training) == [
        ["a1", "a2", "b1", "b2"], ["a0", "a2", "b0", "b2"], ["a0", "a1", "b0", "b1"]]


def test_fit_folds_names_the_fold_whose_fit_failed() -> None:
    def fit(training: list[int]) -> int:
        if sum(training) == 0:
            raise RequestError("no rows to fit")
        return sum(training)

    assert fit_folds([{"folds": [1, 2, 0]}], 3, fit) == [2, 1, 3]
    with pytest.raises(RequestError, match=r"^fold 3 of 3: no rows to fit$"):
        fit_folds([{"folds": [0, 0, 5]}], 3, fit)


@pytest.mark.parametrize("name, x, y, params", [
    pytest.param("linear_regression_cv", ("x1",), ("y",), {}, id="linear"),
    pytest.param("logistic_regression_cv", ("x1",), ("outcome",), {"positive_class": "yes"}, id="logistic"),
    pytest.param("naive_bayes_gaussian_cv", ("x1",), ("grp",), {}, id="nb-gaussian"),
    pytest.param("naive_bayes_categorical_cv", ("sex",), ("grp",), {}, id="nb-categorical"),
])
def test_a_fold_under_min_row_count_is_refused(name, x, y, params) -> None:
    """40 rows pass min_row_count 10, but 5 folds of 8 would release statistics of 8 patients."""
    algo = get_algorithm(name)
    req = request(x=x, y=y, n_splits=5, **params)
    controls = _controls(min_row_count=10)
    controls.check_rows(algo, req, MODEL, 50)  # folds of 10: allowed
    with pytest.raises(DisclosureError, match="fold would hold fewer rows than min_row_count") as exc:
        controls.check_rows(algo, req, MODEL, 49)
    assert exc.value.control == "min_row_count"
    assert "9" not in str(exc.value) and "49" not in str(exc.value)  # no fold or row count (issue 14.2)


def test_a_fold_over_the_glm_parameter_limit_is_refused() -> None:
    algo = get_algorithm("linear_regression_cv")
    req = request(x=("grp", "x1"), y=("y",), n_splits=4)  # 6 candidate columns
    controls = _controls(min_row_count=1, nfilter_glm=0.33)
    controls.check_rows(algo, req, MODEL, 4 * 19)  # folds of 19: 6 <= 6.27
    with pytest.raises(DisclosureError, match="fold would hold too few rows for the model") as exc:
        controls.check_rows(algo, req, MODEL, 4 * 18)  # 6 > 5.94
    assert exc.value.control == "nfilter_glm"
    assert "18" not in str(exc.value) and "72" not in str(exc.value)  # no fold or row count (issue 14.2)


def _release(name: str, data: pd.DataFrame, req: AnalysisRequest, tab: int = 3) -> None:
    """Every round of a run at one node, through the node's release controls."""
    algo = get_algorithm(name)
    controls = _controls(min_row_count=1, nfilter_tab=tab)
    local = prepare_local_data(algo, fold_keyed([data])[0], req)
    state = None
    for round_no in range(100):
        aggregates = controls.release(algo, req, MODEL, round_no, algo.local_step(round_no, local, req, MODEL, state))
        step = algo.global_step(round_no, [aggregates], req, MODEL, state)
        if step.done:
            return
        state = step.state


@pytest.mark.parametrize("name, params", [
    pytest.param("naive_bayes_gaussian_cv", {}, id="nb-gaussian"),
    pytest.param("naive_bayes_categorical_cv", {}, id="nb-categorical"),
])
def test_a_class_of_two_patients_in_a_fold_is_refused(name, params) -> None:
    data = make_data(3, 80).dropna()
    data.loc[data.index[:2], "grp"] = "zz"  # two patients of class zz (in one or two folds)
    req = request(x=("x1",) if "gaussian" in name else ("sex",), y=("grp",), n_splits=2, **params)
    with pytest.raises(DisclosureError) as exc:
        _release(name, data, req)
    assert exc.value.control == "nfilter_tab"
    _release(name, data, req, tab=1)  # allowed when the node admin sets nfilter_tab to 1


def test_a_class_within_a_level_of_two_patients_in_a_fold_is_refused() -> None:
    """Categorical naive Bayes releases each fold's class x level counts (issue 14): class ``c`` and the women are
    large, but two women of class ``c`` put a cell of one or two in some fold, refused per release (``nfilter_tab``,
    no size said); across releases the cohort's cells are released groups (``released_groups``,
    ``tests/privacy/test_naive_bayes_cell_attacks.py``)."""
    data = make_data(3, 120).dropna(subset=["grp", "sex"])
    c = data.index[data["grp"] == "c"]
    data.loc[c, "sex"] = "M"
    data.loc[c[:2], "sex"] = "F"
    assert len(c) >= 10 and int((data["sex"] == "F").sum()) >= 10
    req = request(x=("sex",), y=("grp",), n_splits=2)
    with pytest.raises(DisclosureError) as exc:
        _release("naive_bayes_categorical_cv", data, req)
    assert exc.value.control == "nfilter_tab" and set(re.findall(r"\d+", str(exc.value))) == {"3"}
    _release("naive_bayes_categorical_cv", data, req, tab=1)  # the node admin's nfilter_tab 1
    data.loc[c[::2], "sex"] = "F"  # half of class c: every fold's cells at three or more, answered
    folds = deal_folds(fold_keyed([data])[0][FOLD_KEY].to_numpy(), 2)
    cells = pd.crosstab([data["grp"], data["sex"]], folds).to_numpy()
    assert cells.min() >= 3, cells
    _release("naive_bayes_categorical_cv", data, req)


def test_small_confusion_cells_are_refused() -> None:
    """A fold where one or two patients are predicted positive: the 2x2 cell would single them out."""
    rng = np.random.default_rng(5)
    n = 120
    x1 = rng.normal(size=n)
    outcome = np.where(rng.random(n) < special.expit(-3.0 + 0.3 * x1), "yes", "no")
    # two patients far out with the outcome: whichever folds they fall in, they are the only rows
    # a fold's model predicts positive (so the assignment cannot hide the cell)
    x1[:2], outcome[:2] = 40.0, "yes"
    data = pd.DataFrame({"x1": x1, "outcome": outcome, "dataset": "d0"})
    req = request(x=("x1",), y=("outcome",), positive_class="yes", n_splits=2)
    with pytest.raises(DisclosureError) as exc:
        _release("logistic_regression_cv", data, req)
    assert exc.value.control == "nfilter_tab"


def test_small_roc_bins_are_suppressed_and_the_auc_withheld() -> None:
    data = make_data(11, 300).dropna()
    req = request(x=("sex", "x1"), y=("outcome",), positive_class="yes", n_splits=2, roc_bins=200)
    algo = get_algorithm("logistic_regression_cv")
    controls = _controls(min_row_count=1, nfilter_tab=3)
    local = prepare_local_data(algo, fold_keyed([data])[0], req)
    state, step = None, None
    for round_no in range(100):
        raw = algo.local_step(round_no, local, req, MODEL, state)
        if state is not None and state["phase"] == "evaluate":
            raw = {"folds": [{**f, "confusion": {"group_counts": [3, 3, 3, 3]}} for f in raw["folds"]]}
        released = controls.release(algo, req, MODEL, round_no, raw)
        step = algo.global_step(round_no, [released], req, MODEL, state)
        if step.done:
            break
        state = step.state
    assert step.result["auc_suppressed"] == ["fold_1", "fold_2"]
    assert step.result["auc"] == [None, None]


def test_svm_scikit_is_refused_with_the_reason() -> None:
    with pytest.raises(RequestError, match=r"support vectors.*rows.*0007-svm-not-offered"):
        get_algorithm("svm_scikit")


# --------------------------------------------------------------------------- folds from the node (ADR 0026)

CV_REQUESTS = {
    "linear_regression_cv": request(x=("grp", "x1"), y=("y",), n_splits=3),
    "logistic_regression_cv": request(x=("sex", "x1"), y=("outcome",), positive_class="yes", n_splits=3,
                                      roc_bins=20),
    "naive_bayes_gaussian_cv": request(x=("x1", "x2"), y=("grp",), n_splits=3),
    "naive_bayes_categorical_cv": request(x=("sex", "stage"), y=("grp",), n_splits=3),
}


@pytest.mark.parametrize("name", sorted(CV_REQUESTS))
def test_a_seed_is_refused_naming_the_rule(name) -> None:
    req = CV_REQUESTS[name]
    seeded = AnalysisRequest(data_model=req.data_model, datasets=req.datasets, x=req.x, y=req.y,
                             filters=req.filters, parameters={**req.parameters, "seed": 3})
    with pytest.raises(RequestError) as exc:
        get_algorithm(name).validate(seeded, MODEL)
    assert str(exc.value) == SEED_REFUSAL
    assert "seed" not in get_algorithm(name).parameter_specs


@pytest.mark.parametrize("name", sorted(CV_REQUESTS))
def test_rows_without_the_nodes_fold_keys_are_refused(name) -> None:
    """Only the node assigns folds: a local step never falls back to an order of its own."""
    algo, req = get_algorithm(name), CV_REQUESTS[name]
    with pytest.raises(RequestError, match="folds are assigned by the node"):
        algo.local_step(0, prepare_local_data(algo, make_data(1, 90), req), req, MODEL, None)


@pytest.mark.parametrize("name", sorted(CV_REQUESTS))
def test_the_folds_follow_the_rows_not_their_order(name) -> None:
    """The same rows in another order (a node reading its store differently) release the same
    per-fold aggregates: the assignment is a function of the keys alone."""
    algo, req = get_algorithm(name), CV_REQUESTS[name]
    (keyed,) = fold_keyed([make_data(2, 150)])
    local = prepare_local_data(algo, keyed, req)
    shuffled = local.sample(frac=1.0, random_state=4).reset_index(drop=True)
    first, second = algo.local_step(0, local, req, MODEL, None), algo.local_step(0, shuffled, req, MODEL, None)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True) or \
        _close_docs(first, second)


def _close_docs(a, b) -> bool:
    """Equal structure and numbers equal to summation-order rounding (moments of reordered rows)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close_docs(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close_docs(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9)
    return a == b


@pytest.mark.parametrize("name", sorted(CV_REQUESTS))
def test_under_secure_aggregation_the_result_is_the_plain_one(name) -> None:
    """Three nodes' per-fold sums masked and only their sum unmasked give the plain result
    (the same folds, from the nodes' keys) to <= 1e-9 relative."""
    from tests.mipflow.secagg.test_federated_vs_pooled import run_secure

    assert get_algorithm(name).secure_aggregation == "automatic"
    assert get_algorithm(name).secure_aggregation_min_nodes == 2
    nodes = fold_keyed([make_data(40 + i, 120) for i in range(3)])
    req = CV_REQUESTS[name]
    plain = run_in_process(get_algorithm(name), nodes, req, MODEL)
    secure = run_secure(name, nodes, req)
    _assert_docs_close(secure, plain, f"{name} secure vs plain")


def _assert_docs_close(actual, expected, where: str) -> None:
    """Same structure, equal text and None, numbers within EXACT_RTOL (floor 1e-12)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            _assert_docs_close(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            _assert_docs_close(a, e, f"{where}[{i}]")
    elif isinstance(expected, (int, float)) and not isinstance(expected, bool):
        assert_rel_close(actual, expected, rel=EXACT_RTOL, floor=1e-12, what=where)
    else:
        assert actual == expected, where


def test_a_suppressed_roc_bin_withholds_the_folds_auc_under_secure_aggregation_too() -> None:
    algo = get_algorithm("logistic_regression_cv")
    req = CV_REQUESTS["logistic_regression_cv"]
    fold = {"confusion": {"group_counts": [5, 4, 3, 6]}, "roc": {"counts": [[3, None, 0], [4, 5, 0]]}}
    secure = algo.secure_aggregates({"folds": [fold, {**fold, "roc": {"counts": [[3, 3, 0], [4, 5, 0]]}}, None]},
                                    req, MODEL)
    assert secure["folds"][0]["roc"] == {"counts": [[0, 0, 0], [0, 0, 0]], "suppressed": 1}
    assert secure["folds"][1]["roc"] == {"counts": [[3, 3, 0], [4, 5, 0]], "suppressed": 0}
    assert secure["folds"][2] == {}  # a finished fold: nothing to sum, the same layout at every node


def _evaluation(tab: int) -> dict:
    """A 3-fold logistic_regression_cv at one node through its release controls (``nfilter_tab`` = ``tab``)."""
    rng = np.random.default_rng(8)
    n = 90
    x1 = rng.normal(size=n)
    outcome = np.where(rng.random(n) < special.expit(-1.2 + 1.5 * x1), "yes", "no")
    data = pd.DataFrame({"x1": x1, "outcome": outcome, "dataset": "d0"})
    req = request(x=("x1",), y=("outcome",), positive_class="yes", n_splits=3, roc_bins=2)
    algo = get_algorithm("logistic_regression_cv")
    controls = _controls(min_row_count=1, nfilter_tab=tab)
    local = prepare_local_data(algo, fold_keyed([data])[0], req)
    state, released = None, []
    for round_no in range(100):
        aggregates = controls.release(algo, req, MODEL, round_no, algo.local_step(round_no, local, req, MODEL, state))
        released.append(aggregates)
        step = algo.global_step(round_no, [aggregates], req, MODEL, state)
        if step.done:
            return {"result": step.result, "last": released[-1], "n": n}
        state = step.state
    raise AssertionError("did not finish")


def test_a_node_whose_folds_hold_a_small_confusion_cell_sends_its_cells_over_the_folds() -> None:
    """Per fold (30 test rows) a cell is 1 or 2; over the folds every cell holds 3 or more: the node sends the
    sums only, the result gives the metrics over every test row (labelled) and none per fold."""
    exact = _evaluation(tab=1)  # the admin's nfilter_tab 1: every fold's cells as they are
    per_fold = np.array([f["confusion"]["group_counts"] for f in exact["last"]["folds"]])
    assert ((per_fold > 0) & (per_fold < 3)).any() and per_fold.sum(axis=0).min() >= 3
    assert exact["result"]["folds_merged"] is False and None not in exact["result"]["summary"]["accuracy"]
    merged = _evaluation(tab=3)
    sent = merged["last"]
    assert all(f["confusion"] == {"group_counts": [0, 0, 0, 0], "merged": 1} for f in sent["folds"])
    assert sent["confusion_total"]["group_counts"] == per_fold.sum(axis=0).tolist()
    result = merged["result"]
    assert result["folds_merged"] is True and "nfilter_tab" in result["note"]
    assert result["confusion_matrix"] == exact["result"]["confusion_matrix"]
    assert sum(result["confusion_matrix"].values()) == merged["n"]
    assert result["pooled"] == exact["result"]["pooled"]
    tn, fp, fn, tp = per_fold.sum(axis=0)
    assert result["pooled"]["accuracy"] == (tp + tn) / merged["n"]
    assert all(v is None for key in ("accuracy", "precision", "recall", "fscore") for v in result["summary"][key])
    assert result["folds"]["coefficients"] == exact["result"]["folds"]["coefficients"]  # the same fits


def test_merged_and_unmerged_nodes_combine_under_secure_aggregation_as_in_the_plain_path() -> None:
    """The layout is the request's (a fold's cells or zeros, a 0/1 mark, the sums over the folds): summed, the
    marks say how many nodes merged, never which; the result is the plain one."""
    algo = get_algorithm("logistic_regression_cv")
    req = request(x=("x1",), y=("outcome",), positive_class="yes", n_splits=2, roc_bins=2)

    def evaluation(cells):
        return algo.coarsen_for_release(9, {"folds": [{"confusion": {"group_counts": c},
                                                       "roc": {"counts": [[3, 3], [4, 4]]}} for c in cells]}, 3)

    small = evaluation([[5, 1, 4, 6], [6, 2, 5, 5]])
    large = evaluation([[5, 3, 4, 6], [6, 4, 5, 5]])
    assert small["folds"][0]["confusion"]["merged"] == 1 and large["folds"][0]["confusion"]["merged"] == 0
    assert small["confusion_total"]["group_counts"] == [11, 3, 9, 11]
    secure = [algo.secure_aggregates(a, req, MODEL) for a in (small, large)]
    summed = {"folds": [{"confusion": {"group_counts": np.sum([s["folds"][k]["confusion"]["group_counts"]
                                                                for s in secure], axis=0).tolist(),
                                       "merged": sum(s["folds"][k]["confusion"]["merged"] for s in secure)},
                         "roc": {"counts": np.sum([s["folds"][k]["roc"]["counts"] for s in secure], axis=0).tolist(),
                                 "suppressed": 0}} for k in range(2)],
              "confusion_total": {"group_counts": np.sum([s["confusion_total"]["group_counts"] for s in secure],
                                                         axis=0).tolist()}}
    state = {"phase": "evaluate", "models": [{"columns": ["Intercept"], "coefficients": [0.0], "n_train": 40}] * 2,
             "roc_bins": 2}
    plain = algo.global_step(9, [small, large], req, MODEL, state).result
    masked = algo.global_step(9, [summed], req, MODEL, state).result
    assert plain == masked and plain["folds_merged"] is True
    assert plain["confusion_matrix"] == {"tn": 22, "fp": 10, "fn": 18, "tp": 22}
