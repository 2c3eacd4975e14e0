"""The longitudinal transformer (issue 17.1) through three real node processes.

The MIP's ``longitudinal_dementia`` CSVs (``../shared/data/longitudinal_dementia_v_0_1``), one
dataset per node, are loaded with their visits as the rows' visit keys.  Every compatible
algorithm runs with a transformer in Exareme2's request shape (``preprocessing``) and is compared
with the same transformation done here with a pandas merge of the pooled rows, fitted by
statsmodels / scikit-learn, to 1e-9 relative (worst errors printed in the terminal summary).
Also: dropped patients counted and released only over the nodes' thresholds, nominal ``diff``
and unknown visits refused from the request alone, an incompatible algorithm refused, and a
cohort a few patients away from an answered one refused by the node's ledger.
"""
from __future__ import annotations

import copy
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from mipflow.central.rounds import run_analysis
from mipflow.exceptions import FederationError, RequestError
from mipflow.node.home import NodeHome
from mipflow.protocol.datamodel import DataModel, load_data_model
from sklearn.naive_bayes import CategoricalNB, GaussianNB

from tests.mipflow.algorithms.helpers import (
    EXACT_RTOL,
    assert_rel_close,
    reported_summary,
)
from tests.nodes import (
    PROJECT,
    RESEARCHER,
    csv_nodes,
    grant_all,
    load_frame,
    served_clients,
    standard_home,
)

pytestmark = pytest.mark.xdist_group("longitudinal")

SUMMARY = reported_summary("mipflow longitudinal transformer: federated via HTTP vs pooled pandas + statsmodels")
FOLDER = "longitudinal_dementia_v_0_1"
DATASETS = ["longitudinal_dementia0", "longitudinal_dementia1", "longitudinal_dementia2"]
NUMERICAL = ("lefthippocampus", "righthippocampus", "leftamygdala", "minimentalstate")


def check(algorithm: str, what: str, actual, expected, *, floor: float = 1e-12) -> None:
    worst = assert_rel_close(actual, expected, rel=EXACT_RTOL, floor=floor, what=f"{algorithm}.{what}")
    SUMMARY.record(algorithm, worst, what)


def request(y, x, strategies, *, visit1="BL", visit2="FL1", **parameters) -> dict:
    return {"inputdata": {"data_model": "longitudinal_dementia:0.1", "datasets": DATASETS, "y": list(y),
                          "x": list(x), "filters": None},
            "parameters": parameters,
            "preprocessing": {"longitudinal_transformer": {"visit1": visit1, "visit2": visit2,
                                                           "strategies": dict(strategies)}}}


# --------------------------------------------------------------------------- the pooled reference


def pooled_transform(raw: pd.DataFrame, visit1: str, visit2: str, strategies: dict[str, str]) -> pd.DataFrame:
    """The transformation on the pooled rows, written independently of mipflow: an inner merge of
    the two visits' rows on (dataset, subjectid), then complete cases of the transformed columns."""
    first = raw[raw["visitid"] == visit1]
    second = raw[raw["visitid"] == visit2]
    merged = first.merge(second, on=["dataset", "subjectid"], suffixes=("_1", "_2"), validate="one_to_one")
    out = merged[["dataset", "subjectid"]].copy()
    for var, strategy in strategies.items():
        if strategy == "first":
            out[var] = merged[f"{var}_1"]
        elif strategy == "second":
            out[var] = merged[f"{var}_2"]
        else:
            out[f"{var}_diff"] = merged[f"{var}_2"] - merged[f"{var}_1"]
    return out.dropna().reset_index(drop=True)


def ours_names(params: pd.Index) -> list[str]:
    """statsmodels' parameter names (``C(var, levels=...)[T.level]``) as mipflow's (``var[level]``)."""
    return [re.sub(r"^C\((\w+)(?:, [^)]*)?\)\[T\.(.*)\]$", r"\1[\2]", name) for name in params]


def levels(frame: pd.DataFrame, var: str, model: DataModel) -> list[str]:
    """The levels of ``var`` present, in the data model's order (mipflow's treatment coding)."""
    present = set(frame[var])
    return [code for code in model.variables[var].enumeration_codes if code in present]


@dataclass
class Federation:
    roots: dict[str, Path]
    clients: list
    raw: pd.DataFrame  # every node's rows, typed
    model: DataModel

    def run(self, algorithm: str, doc: dict):
        return run_analysis(algorithm, doc, self.clients, researcher=RESEARCHER, project=PROJECT)

    def folds(self, visit1: str, visit2: str, strategies: dict[str, str], n_splits: int) -> pd.DataFrame:
        """The pooled transformed rows with each node's folds: the node's fold key of each patient's
        row (identity ``(_pid, dataset, "<visit1>><visit2>")``), ranked within the node."""
        from mipflow.algorithms.crossval import FOLD_KEY
        from mipflow.node.controls.differencing import hash_key
        from mipflow.node.controls.folds import add_fold_keys, fold_key

        parts = []
        for node, dataset in zip(self.roots, DATASETS):
            mine = pooled_transform(self.raw[self.raw["dataset"] == dataset], visit1, visit2, strategies)
            secret = NodeHome(self.roots[node]).key()
            keyed = add_fold_keys(mine.assign(_pid=mine["subjectid"], _visit=f"{visit1}>{visit2}"),
                                  fold_key(secret), hash_key(secret))
            rank = keyed[FOLD_KEY].rank(method="first")
            parts.append(mine.assign(fold=(rank.to_numpy(dtype=np.int64) - 1) % n_splits))
        return pd.concat(parts, ignore_index=True)


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for var in NUMERICAL:
        out[var] = pd.to_numeric(out[var])
    return out


@contextmanager
def _served(base: Path, shared_dir: Path, min_row_count: int) -> Iterator[Federation]:
    folder = shared_dir / "data" / FOLDER
    model = load_data_model(folder / "CDEsMetadata.json")
    roots, raw = csv_nodes(base, "node_l", folder, DATASETS, model,
                           differencing_check=0, min_row_count=min_row_count, nfilter_glm=1, nfilter_tab=1)
    with served_clients(roots) as served:
        yield Federation(roots=roots, clients=list(served.values()), raw=_typed(raw), model=model)


@pytest.fixture(scope="module")
def federation(tmp_path_factory, shared_dir: Path) -> Iterator[Federation]:
    # the analyses below pick cohorts a few patients apart on purpose (visits, a variable with
    # missing values): the ledger's refusal is tested on a node of its own.  ~27 patients per node
    # against Exareme2's 6-parameter case: nfilter_glm's default (0.33 parameters per row) refuses
    # it, as it should; the fidelity tests allow one per row, and cells of 1-2 patients (an age group
    # at one node); min_row_count 5 lets BL -> FL4 (9 patients per node, Exareme2's 27-patient case)
    # through
    with _served(tmp_path_factory.mktemp("longitudinal"), shared_dir, 5) as federation:
        yield federation


@pytest.fixture(scope="module")
def group_federation(tmp_path_factory, shared_dir: Path) -> Iterator[Federation]:
    """The same nodes with ``min_row_count`` 1: two-way ANOVA's cells and naive Bayes's classes are groups
    released with their mean and spread, which hold ``min_row_count`` rows (ADR 0050), and these ~27
    patients per node have cells of 1-4; the fidelity tests of those two algorithms run here."""
    with _served(tmp_path_factory.mktemp("longitudinal-groups"), shared_dir, 1) as federation:
        yield federation


# --------------------------------------------------------------------------- regressions


LINREG_STRATEGIES = {"lefthippocampus": "diff", "righthippocampus": "diff", "agegroup": "second", "gender": "first"}


@pytest.mark.parametrize("visit2, n_obs", [("FL1", 81), ("FL4", 27)])
def test_linear_regression(federation: Federation, visit2: str, n_obs: int) -> None:
    """Exareme2's own longitudinal validation case (n_obs 81 and 27, its variable names)."""
    doc = request(["lefthippocampus"], ["righthippocampus", "agegroup", "gender"], LINREG_STRATEGIES, visit2=visit2)
    outcome = federation.run("linear_regression", doc)
    assert not outcome.excluded
    ours = outcome.result
    pooled = pooled_transform(federation.raw, "BL", visit2, LINREG_STRATEGIES)
    age = levels(pooled, "agegroup", federation.model)
    fit = smf.ols(f"lefthippocampus_diff ~ C(agegroup, levels={age}) + C(gender, levels=['F', 'M']) "
                  "+ righthippocampus_diff", pooled).fit()
    assert ours["n_obs"] == len(pooled) == n_obs
    assert ours["dependent_var"] == "lefthippocampus_diff"
    assert ours["indep_vars"] == ours_names(fit.params.index)
    check("linear_regression", "coefficients", ours["coefficients"], fit.params.to_numpy())
    check("linear_regression", "std_err", ours["std_err"], fit.bse.to_numpy())
    check("linear_regression", "pvalues", ours["pvalues"], fit.pvalues.to_numpy())
    check("linear_regression", "r_squared", ours["r_squared"], fit.rsquared)
    check("linear_regression", "f_stat", ours["f_stat"], fit.fvalue)
    block = ours["longitudinal_transformer"]
    assert block["visit1"] == "BL" and block["visit2"] == visit2 and block["strategies"] == LINREG_STRATEGIES
    assert block["variables"]["lefthippocampus"] == "lefthippocampus_diff"
    assert block["patients_used"] == n_obs == sum(outcome.contributed.values())


def test_patients_dropped_are_counted_over_the_thresholds_only(federation: Federation) -> None:
    """BL -> FL4: every node drops 20 or so patients without FL4 (>= min_row_count 5): released and
    summed.  BL -> FL1: 2 to 4 per node, under the thresholds: never released, at no node."""
    raw = federation.raw
    for visit2 in ("FL4", "FL1"):
        doc = request(["lefthippocampus"], ["righthippocampus", "agegroup", "gender"], LINREG_STRATEGIES,
                      visit2=visit2)
        block = federation.run("linear_regression", doc).result["longitudinal_transformer"]
        seen = raw[raw["visitid"].isin(["BL", visit2])].groupby("dataset")["subjectid"].nunique()
        used = pooled_transform(raw, "BL", visit2, LINREG_STRATEGIES).groupby("dataset").size()
        dropped = (seen - used).to_dict()
        nodes = dict(zip(federation.roots, DATASETS))
        if visit2 == "FL4":
            assert min(dropped.values()) >= 5
            assert block["dropped_by_node"] == {n: dropped[d] for n, d in nodes.items()}
            assert block["patients_dropped"] == sum(dropped.values()) == 63
        else:
            assert 0 < max(dropped.values()) < 5
            assert block["dropped_by_node"] == {n: None for n in nodes}
            assert block["patients_dropped"] is None


def test_a_value_the_strategy_needs_missing_drops_the_patient(federation: Federation) -> None:
    """MMSE is missing at some visits: a diff needs both, a "second" only the later one."""
    for strategy in ("diff", "second"):
        strategies = {"minimentalstate": strategy, "lefthippocampus": "first"}
        ours = federation.run("linear_regression", request(["minimentalstate"], ["lefthippocampus"], strategies)).result
        pooled = pooled_transform(federation.raw, "BL", "FL1", strategies)
        y = "minimentalstate_diff" if strategy == "diff" else "minimentalstate"
        assert len(pooled) < 81 and ours["n_obs"] == len(pooled)
        fit = smf.ols(f"{y} ~ lefthippocampus", pooled).fit()
        check("linear_regression", f"coefficients ({strategy} with missing values)", ours["coefficients"],
              fit.params.to_numpy())


def test_logistic_regression(federation: Federation) -> None:
    strategies = {"gender": "second", "leftamygdala": "first", "lefthippocampus": "diff"}
    ours = federation.run("logistic_regression", request(["gender"], ["lefthippocampus", "leftamygdala"],
                                                         strategies, positive_class="F")).result
    pooled = pooled_transform(federation.raw, "BL", "FL1", strategies)
    pooled["is_f"] = (pooled["gender"] == "F").astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = smf.logit("is_f ~ lefthippocampus_diff + leftamygdala", pooled).fit(method="newton", tol=1e-8,
                                                                                  disp=False)
    assert ours["indep_vars"] == ["Intercept", "lefthippocampus_diff", "leftamygdala"]
    assert ours["n_obs"] == len(pooled)
    check("logistic_regression", "coefficients", ours["coefficients"], fit.params.to_numpy())
    check("logistic_regression", "stderr", ours["stderr"], fit.bse.to_numpy())
    check("logistic_regression", "ll", ours["ll"], fit.llf)


# --------------------------------------------------------------------------- ANOVA


def test_anova_oneway(federation: Federation) -> None:
    strategies = {"gender": "first", "lefthippocampus": "diff"}
    ours = federation.run("anova_oneway", request(["lefthippocampus"], ["gender"], strategies)).result
    pooled = pooled_transform(federation.raw, "BL", "FL1", strategies)
    table = sm.stats.anova_lm(smf.ols("lefthippocampus_diff ~ C(gender)", pooled).fit())
    assert ours["n_obs"] == len(pooled)
    check("anova_oneway", "ss_explained", ours["ss_explained"], table["sum_sq"].iloc[0])
    check("anova_oneway", "ss_residual", ours["ss_residual"], table["sum_sq"].iloc[1])
    check("anova_oneway", "f_stat", ours["f_stat"], table["F"].iloc[0])
    check("anova_oneway", "p_value", ours["p_value"], table["PR(>F)"].iloc[0])


def test_anova_two_way(group_federation: Federation) -> None:
    federation = group_federation
    strategies = {"gender": "first", "alzheimerbroadcategory": "second", "lefthippocampus": "diff"}
    ours = federation.run("anova", request(["lefthippocampus"], ["gender", "alzheimerbroadcategory"], strategies,
                                           sstype=2)).result
    pooled = pooled_transform(federation.raw, "BL", "FL1", strategies)
    assert (pd.crosstab(pooled["gender"], pooled["alzheimerbroadcategory"]) > 0).all(axis=None)
    full = smf.ols("lefthippocampus_diff ~ C(gender) * C(alzheimerbroadcategory)", pooled).fit()
    table = sm.stats.anova_lm(full, typ=2)
    assert ours["n_obs"] == len(pooled)
    check("anova", "sum_sq[Residuals]", ours["sum_sq"]["Residuals"], full.ssr)
    for term, row in (("gender", "C(gender)"), ("alzheimerbroadcategory", "C(alzheimerbroadcategory)"),
                      ("gender:alzheimerbroadcategory", "C(gender):C(alzheimerbroadcategory)")):
        check("anova", f"sum_sq[{term}]", ours["sum_sq"][term], table.loc[row, "sum_sq"])
        check("anova", f"f_stat[{term}]", ours["f_stat"][term], table.loc[row, "F"])


# --------------------------------------------------------------------------- cross-validated


def _design(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    out = []
    for col in columns:
        if col == "Intercept":
            out.append(np.ones(len(frame)))
        elif "[" in col:
            var, level = col[:-1].split("[")
            out.append((frame[var] == level).to_numpy(dtype=float))
        else:
            out.append(frame[col].to_numpy(dtype=float))
    return np.column_stack(out)


def test_linear_regression_cv(federation: Federation) -> None:
    strategies = {"righthippocampus": "first", "lefthippocampus": "diff", "gender": "second"}
    ours = federation.run("linear_regression_cv", request(["righthippocampus"], ["lefthippocampus", "gender"],
                                                          strategies, n_splits=3)).result
    pooled = federation.folds("BL", "FL1", strategies, 3)
    for k in range(3):
        train = pooled[pooled["fold"] != k]
        columns = ours["folds"]["indep_vars"][k]
        assert columns == ["Intercept", "gender[M]", "lefthippocampus_diff"]
        fit = sm.OLS(train["righthippocampus"].to_numpy(float), _design(train, columns)).fit()
        assert ours["folds"]["n_train"][k] == len(train)
        check("linear_regression_cv", "coefficients", ours["folds"]["coefficients"][k], fit.params)


def test_logistic_regression_cv(federation: Federation) -> None:
    strategies = {"gender": "second", "leftamygdala": "first", "lefthippocampus": "diff"}
    ours = federation.run("logistic_regression_cv", request(["gender"], ["lefthippocampus", "leftamygdala"],
                                                            strategies, positive_class="F", n_splits=2)).result
    pooled = federation.folds("BL", "FL1", strategies, 2)
    for k in range(2):
        train = pooled[pooled["fold"] != k]
        columns = ours["folds"]["indep_vars"][k]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = sm.Logit((train["gender"] == "F").to_numpy(float), _design(train, columns)).fit(
                method="newton", tol=1e-8, disp=False)
        check("logistic_regression_cv", "coefficients", ours["folds"]["coefficients"][k], fit.params)


def test_naive_bayes_gaussian_cv(group_federation: Federation) -> None:
    federation = group_federation
    strategies = {"alzheimerbroadcategory": "second", "lefthippocampus": "diff", "leftamygdala": "first"}
    x = ["lefthippocampus_diff", "leftamygdala"]
    ours = federation.run("naive_bayes_gaussian_cv", request(["alzheimerbroadcategory"],
                                                             ["lefthippocampus", "leftamygdala"], strategies,
                                                             n_splits=2)).result
    pooled = federation.folds("BL", "FL1", strategies, 2)
    labels = ours["confusion_matrix"]["labels"]
    for k in range(2):
        train, test = pooled[pooled["fold"] != k], pooled[pooled["fold"] == k]
        nb = GaussianNB().fit(train[x].to_numpy(float), train["alzheimerbroadcategory"].to_numpy())
        cm = pd.crosstab(pd.Categorical(test["alzheimerbroadcategory"], labels),
                         pd.Categorical(nb.predict(test[x].to_numpy(float)), labels), dropna=False).to_numpy()
        assert ours["folds"]["confusion_matrix"][k] == cm.tolist()
    full = GaussianNB().fit(pooled[x].to_numpy(float), pooled["alzheimerbroadcategory"].to_numpy())
    check("naive_bayes_gaussian_cv", "theta", ours["model"]["theta"], full.theta_)
    check("naive_bayes_gaussian_cv", "var", ours["model"]["var"], full.var_)


def test_naive_bayes_categorical_cv(federation: Federation) -> None:
    strategies = {"alzheimerbroadcategory": "second", "gender": "first", "agegroup": "first"}
    x = ["gender", "agegroup"]
    ours = federation.run("naive_bayes_categorical_cv", request(["alzheimerbroadcategory"], x, strategies,
                                                                n_splits=2)).result
    pooled = federation.folds("BL", "FL1", strategies, 2)
    cats = {v: ours["model"]["levels"][i] for i, v in enumerate(x)}
    assert cats == {v: sorted(federation.model.variables[v].enumeration_codes) for v in x}
    codes = np.column_stack([pooled[v].map({c: i for i, c in enumerate(cats[v])}).to_numpy() for v in x])
    full = CategoricalNB(alpha=1.0, min_categories=[len(cats[v]) for v in x]).fit(
        codes, pooled["alzheimerbroadcategory"])
    assert ours["model"]["class_count"] == full.class_count_.astype(int).tolist()
    for i in range(len(x)):
        assert ours["model"]["category_count"][i] == full.category_count_[i].astype(int).tolist()
    SUMMARY.record("naive_bayes_categorical_cv", 0.0, "counts (exact integers)")


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("change, message", [
    (lambda d: d["preprocessing"]["longitudinal_transformer"]["strategies"].update(gender="diff"),
     "cannot take the difference of the nominal variable 'gender'"),
    (lambda d: d["preprocessing"]["longitudinal_transformer"].update(visit2="FL9"),
     "visit2 'FL9' is not a visit of longitudinal_dementia:0.1"),
    (lambda d: d["preprocessing"]["longitudinal_transformer"]["strategies"].pop("gender"),
     "a strategy must be given for every variable in x and y"),
    (lambda d: d["preprocessing"]["longitudinal_transformer"]["strategies"].update(gender="last"),
     "must be one of diff, first, second"),
])
def test_refused_from_the_request_alone(federation: Federation, change, message) -> None:
    doc = request(["lefthippocampus"], ["righthippocampus", "agegroup", "gender"], LINREG_STRATEGIES)
    change(doc)
    with pytest.raises(RequestError, match=re.escape(message)):
        federation.run("linear_regression", doc)
    # and at a node, called directly (a central site that skipped its own checks)
    from mipflow.central.client import NodeRefused

    with pytest.raises(NodeRefused, match=re.escape(message)) as refused:
        federation.clients[0].step("linear_regression", copy.deepcopy(doc), 0, None,
                                   researcher=RESEARCHER, project=PROJECT)
    assert refused.value.status == 400


def test_incompatible_algorithm_refused(federation: Federation) -> None:
    doc = request(["lefthippocampus"], [], {"lefthippocampus": "diff"})
    with pytest.raises(RequestError, match="not available for algorithm 'descriptive_stats'"):
        federation.run("descriptive_stats", doc)


# --------------------------------------------------------------------------- the ledger


def test_a_cohort_a_few_patients_away_is_refused(tmp_path, shared_dir: Path) -> None:
    """The rows used enter the ledger: BL -> FL1 on MMSE (a few patients missing it) after the full
    BL -> FL1 cohort differs by a few patients' rows, and the node refuses it (differencing)."""
    folder = shared_dir / "data" / FOLDER
    model = load_data_model(folder / "CDEsMetadata.json")
    root = tmp_path / "node_ledger"
    standard_home(root, "node_ledger")
    load_frame(root, model, pd.read_csv(folder / f"{DATASETS[0]}.csv", dtype=str), pid_column="subjectid",
               visit_column="visitid")
    grant_all(root)
    with served_clients({"node_ledger": root}) as served:
        clients = list(served.values())
        doc = request(["lefthippocampus"], ["righthippocampus"], {"lefthippocampus": "diff", "righthippocampus": "first"})
        doc["inputdata"]["datasets"] = DATASETS[:1]
        first = run_analysis("linear_regression", doc, clients, researcher=RESEARCHER, project=PROJECT)
        assert first.result["n_obs"] == 27
        near = request(["minimentalstate"], ["lefthippocampus"], {"minimentalstate": "diff", "lefthippocampus": "first"})
        near["inputdata"]["datasets"] = DATASETS[:1]
        raw = _typed(pd.read_csv(folder / f"{DATASETS[0]}.csv", dtype=str))
        assert 0 < 27 - len(pooled_transform(raw, "BL", "FL1", {"minimentalstate": "diff"})) < 10
        with pytest.raises(FederationError, match="differencing"):
            run_analysis("linear_regression", near, clients, researcher=RESEARCHER, project=PROJECT)
