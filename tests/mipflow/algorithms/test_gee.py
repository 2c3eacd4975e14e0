"""``gee`` (issue 17.2) in process: equal to statsmodels' ``GEE`` on the pooled rows, whatever the split.

The pooled reference is statsmodels 0.15's ``GEE(...).fit()`` with its defaults (starting values
from a GLM fit, ``maxiter=60``, ``ctol=1e-6``) on the rows sorted by patient, then time or visit;
AR(1) is ``Autoregressive(grid=True)``.  Parameters and both kinds of standard errors to 1e-8
relative (worst errors printed in the terminal summary).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mipflow.algorithms import get_algorithm, run_in_process
from mipflow.algorithms.local import prepare_local_data
from mipflow.exceptions import RequestError
from tests.mipflow.algorithms.helpers import POOLED_SUMMARY, assert_rel_close
from tests.mipflow.algorithms.synthetic import MODEL, request

GEE_RTOL = 1e-8
FAMILIES = ("gaussian", "binomial", "poisson")
STRUCTS = ("independence", "exchangeable", "ar1")


def longitudinal(seed: int, patients: int, *, max_visits: int = 5) -> pd.DataFrame:
    """Patients with 1..max_visits visits each, a patient effect, visit keys in shuffled row order."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(patients):
        k = int(rng.integers(1, max_visits + 1))
        effect = rng.normal(0.0, 0.8)
        ds = rng.choice(["d0", "d1", "d2"])
        grp = rng.choice(["a", "b", "c"], p=[0.5, 0.3, 0.2])
        sex = rng.choice(["M", "F"])
        for v in range(k):
            x1 = rng.normal(2.0, 1.5)
            age = float(rng.integers(20, 90))
            lin = 0.3 + 0.4 * (x1 - 2.0) + 0.2 * (grp == "b") - 0.3 * (grp == "c") + 0.2 * v / max_visits + effect
            rows.append({
                "dataset": ds, "_pid": f"p{i:04d}", "_visit": f"V{v}", "time": float(v) + rng.uniform(0, 0.5),
                "x1": x1, "age": age, "grp": grp, "sex": sex,
                "y": 3.0 + lin + rng.normal(0, 1.0),
                "yb": float(rng.random() < 1.0 / (1.0 + np.exp(-lin))),
                "yc": float(rng.poisson(np.exp(0.5 * lin))),
                "outcome": "yes" if rng.random() < 1.0 / (1.0 + np.exp(-lin)) else rng.choice(["no", "unknown"]),
            })
    df = pd.DataFrame(rows)
    df.loc[rng.random(len(df)) < 0.03, "x1"] = np.nan
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # the node's rows, in no order


def _y(family: str) -> str:
    return {"gaussian": "y", "binomial": "yb", "poisson": "yc"}[family]


def pooled(df: pd.DataFrame, y: str, x: list[str], family: str, cov_struct: str, *, positive=None,
           time: str | None = None):
    """statsmodels' GEE on the pooled complete rows, ordered by patient then time (or visit key)."""
    cols = [y, *x] + ([time] if time else [])
    rows = df.dropna(subset=cols).copy()
    rows["_cluster"] = rows["dataset"].astype(str) + "\x1f" + rows["_pid"].astype(str)
    rows = rows.sort_values(["_cluster"] + ([time] if time else []) + ["_visit"], kind="stable")
    endog = (rows[y] == positive).astype(float) if positive is not None else rows[y].astype(float)
    parts = [pd.Series(1.0, index=rows.index, name="Intercept")]
    nominal = [c for c in x if MODEL_LONG.variable(c).is_categorical]
    for code in nominal:  # treatment coding against the first level present, patsy's names
        levels = sorted(rows[code].astype(str).unique())
        parts += [(rows[code].astype(str) == lvl).astype(float).rename(f"{code}[{lvl}]") for lvl in levels[1:]]
    parts += [rows[c].astype(float) for c in x if c not in nominal]
    exog = pd.concat(parts, axis=1)
    fam = {"gaussian": sm.families.Gaussian(), "binomial": sm.families.Binomial(),
           "poisson": sm.families.Poisson()}[family]
    cov = {"independence": sm.cov_struct.Independence(), "exchangeable": sm.cov_struct.Exchangeable(),
           "ar1": sm.cov_struct.Autoregressive(grid=True)}[cov_struct]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sm.GEE(endog.to_numpy(), exog.to_numpy(), groups=pd.factorize(rows["_cluster"])[0],
                     family=fam, cov_struct=cov).fit()
    return fit, len(rows), rows["_cluster"].nunique()


def check_against(result: dict, fit, n: int, m: int, what: str) -> float:
    assert result["n_obs"] == n and result["n_clusters"] == m
    worst = 0.0
    for key, expected in (("coefficients", fit.params), ("stderr", np.sqrt(np.diag(fit.cov_robust))),
                          ("stderr_naive", np.sqrt(np.diag(fit.cov_naive)))):
        worst = max(worst, assert_rel_close(result[key], expected, rel=GEE_RTOL, floor=1e-12,
                                            what=f"gee.{what}.{key}"))
    if fit.model.cov_struct.dep_params is not None and not isinstance(fit.model.cov_struct,
                                                                      sm.cov_struct.Independence):
        worst = max(worst, assert_rel_close(result["dep_param"], fit.model.cov_struct.dep_params,
                                            rel=GEE_RTOL, floor=1e-12, what=f"gee.{what}.dep_param"))
    assert result["scale"] == pytest.approx(fit.scale, rel=1e-10)
    assert result["converged"] is True
    POOLED_SUMMARY.record("gee", worst, what)
    return worst


def split(df: pd.DataFrame, nodes: int, seed: int) -> list[pd.DataFrame]:
    """Patients (never their visits) dealt at random to ``nodes`` nodes."""
    rng = np.random.default_rng(seed)
    patients = df["_pid"].unique()
    node_of = dict(zip(patients, rng.integers(0, nodes, size=len(patients))))
    where = df["_pid"].map(node_of)
    return [df[where == i].reset_index(drop=True) for i in range(nodes)]


DATA = longitudinal(17, 240)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cov_struct", STRUCTS)
def test_equal_to_statsmodels_on_pooled_rows(family, cov_struct):
    x = ["x1", "grp", "age"]
    req = request(x=x, y=[_y(family)], family=family, cov_struct=cov_struct)
    result = run_in_process(get_algorithm("gee"), split(DATA, 3, 1), req, MODEL_LONG)
    fit, n, m = pooled(DATA, _y(family), x, family, cov_struct)
    assert result["indep_vars"] == ["Intercept", "grp[b]", "grp[c]", "x1", "age"]
    check_against(result, fit, n, m, f"{family}.{cov_struct}")
    assert result["family"] == family and result["cov_struct"] == cov_struct


def test_nominal_y_with_positive_class_and_time_variable():
    x = ["x1", "sex"]
    req = request(x=x, y=["outcome"], family="binomial", cov_struct="ar1", positive_class="yes", time="time")
    result = run_in_process(get_algorithm("gee"), split(DATA, 2, 5), req, MODEL_LONG)
    fit, n, m = pooled(DATA, "outcome", x, "binomial", "ar1", positive="yes", time="time")
    check_against(result, fit, n, m, "binomial.ar1.time")
    assert result["time"] == "time"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nodes=st.integers(2, 4), seed=st.integers(0, 10_000),
       family=st.sampled_from(FAMILIES), cov_struct=st.sampled_from(STRUCTS))
def test_any_split_gives_the_pooled_fit(nodes, seed, family, cov_struct):
    data = longitudinal(seed, 60 + seed % 50)
    x = ["x1", "sex"]
    req = request(x=x, y=[_y(family)], family=family, cov_struct=cov_struct)
    fit, n, m = pooled(data, _y(family), x, family, cov_struct)
    result = run_in_process(get_algorithm("gee"), split(data, nodes, seed), req, MODEL_LONG)
    check_against(result, fit, n, m, f"{family}.{cov_struct}.split")


def test_the_local_step_releases_sums_not_per_patient_vectors():
    algo = get_algorithm("gee")
    req = request(x=["x1", "grp"], y=["y"], family="gaussian", cov_struct="exchangeable")
    data = prepare_local_data(algo, DATA, req)
    first = algo.local_step(0, data, req, MODEL_LONG, None)
    step = algo.global_step(0, [first], req, MODEL_LONG, None)
    p = len(step.state["columns"])
    state = {"phase": "final", "columns": step.state["columns"], "beta": [0.1] * p, "dep": 0.2,
             "iteration": 1, "assoc_updates": 1, "score_norm": None, "glm_iterations": 2}
    out = algo.local_step(5, data, req, MODEL_LONG, state)
    assert set(out) == {"n", "n_clusters", "bmat", "score", "meat", "ssr"}
    assert np.shape(out["meat"]) == (p, p) and np.shape(out["score"]) == (p,)
    assert out["n_clusters"] == algo.cluster_count(data) == DATA.dropna(subset=["x1", "y"])["_pid"].nunique()


def test_rows_without_patient_identity_are_refused():
    req = request(x=["x1"], y=["y"])
    with pytest.raises(RequestError, match="patient identity"):
        run_in_process(get_algorithm("gee"), [DATA.drop(columns=["_pid"])], req, MODEL_LONG)


@pytest.mark.parametrize("params, message", [
    ({"family": "gaussian", "y": ["outcome"]}, "binomial family"),
    ({"family": "binomial", "y": ["outcome"]}, "positive_class"),
    ({"time": "grp"}, "must be numerical"),
    ({"time": "x1"}, "also in x or y"),
    ({"cov_struct": "unstructured"}, "cov_struct"),
])
def test_bad_requests_are_refused(params, message):
    params = dict(params)
    y = params.pop("y", ["y"])
    with pytest.raises(RequestError, match=message):
        get_algorithm("gee").validate(request(x=["x1"], y=y, **params), MODEL_LONG)


def test_binomial_numeric_y_must_be_binary():
    req = request(x=["x1"], y=["y"], family="binomial")
    with pytest.raises(RequestError, match="0 and 1"):
        run_in_process(get_algorithm("gee"), [DATA], req, MODEL_LONG)


def test_a_postgresql_nodes_patient_digest_and_visit_ranks_serve_as_the_clusters():
    """A PostgreSQL node's binary read carries ``_pid_md5`` (bytes) and ``_visit_rank`` (the rows'
    ranks by visit key within the patient) in place of ``_pid`` and ``_visit``: the same fit (AR(1)
    with visits shuffled so that their order matters); without the ranks GEE refuses."""
    import hashlib

    data = DATA.copy()
    data["_visit"] = data["_visit"].map({"V0": "V3", "V1": "V0", "V2": "V4", "V3": "V1", "V4": "V2"})
    ranks = data.groupby(["dataset", "_pid"])["_visit"].rank(method="first").astype("int32")
    digest = data["_pid"].map(lambda pid: hashlib.md5(pid.encode()).hexdigest().encode())
    postgres_like = data.drop(columns=["_pid", "_visit"]).assign(_pid_md5=digest, _visit_rank=ranks)
    req = request(x=["x1", "grp"], y=["y"], family="gaussian", cov_struct="ar1")
    ours = run_in_process(get_algorithm("gee"), split(data, 3, 2), req, MODEL_LONG)
    nodes = [postgres_like[data["dataset"] == d].reset_index(drop=True) for d in ("d0", "d1", "d2")]
    ranked = run_in_process(get_algorithm("gee"), nodes, req, MODEL_LONG)
    fit, n, m = pooled(data, "y", ["x1", "grp"], "gaussian", "ar1")
    check_against(ranked, fit, n, m, "gaussian.ar1.postgresql")
    assert_rel_close(ranked["coefficients"], ours["coefficients"], rel=1e-12, what="coefficients")
    shuffled = pooled(DATA, "y", ["x1", "grp"], "gaussian", "ar1")[0]  # another visit order: another fit
    assert abs(shuffled.model.cov_struct.dep_params - ranked["dep_param"]) > 1e-6
    with pytest.raises(RequestError, match="patient identity"):
        run_in_process(get_algorithm("gee"), [postgres_like.drop(columns=["_visit_rank"])], req, MODEL_LONG)


from mipflow.protocol.datamodel import DataModel  # noqa: E402

MODEL_LONG = DataModel.from_dict({
    **{k: v for k, v in MODEL.to_dict().items() if k != "variables"},
    "variables": [v for v in MODEL.to_dict()["variables"]] + [
        {"code": "yb", "sql_type": "real", "isCategorical": False},
        {"code": "yc", "sql_type": "real", "isCategorical": False},
        {"code": "time", "sql_type": "real", "isCategorical": False},
    ],
})
