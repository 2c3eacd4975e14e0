"""``gee`` (issue 17.2) through three real node processes on the MIP's ``longitudinal_dementia`` data.

The CSVs of ``../shared/data/longitudinal_dementia_v_0_1`` (one dataset per node, read in place),
loaded with their visits as the rows' visit keys, are fitted by federated GEE and compared with
statsmodels' ``GEE`` on the pooled rows (clusters = ``subjectid`` within dataset, visits in order)
to 1e-8 relative.  With three nodes every round is masked (secure aggregation, automatic from 3
nodes, ADR 0014 / 0036): the central site receives only ring elements, and the masked fit equals the
plain one and statsmodels to the same tolerance; the nodes keep their default disclosure thresholds (``min_row_count``,
``nfilter_glm``, ``nfilter_tab``).  A node with fewer patients than its ``min_row_count`` (but more
rows) refuses and is left out.  The same on three PostgreSQL nodes, whose fast binary read carries
the patient's digest and each visit's rank by visit key in place of ``_pid`` and ``_visit``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from mipflow.central.rounds import run_analysis
from mipflow.node.home import NodeHome
from mipflow.protocol.datamodel import DataModel, load_data_model
from tests.mipflow.algorithms.helpers import assert_rel_close, reported_summary
from tests.nodes import (PROJECT, RESEARCHER, assert_only_masked, assert_round_zero_is_the_plain_sum, csv_nodes,
                         postgresql_databases, recording_clients, served_clients)

pytestmark = pytest.mark.xdist_group("gee")

SUMMARY = reported_summary("mipflow gee: federated via HTTP vs pooled statsmodels GEE")
FOLDER = "longitudinal_dementia_v_0_1"
DATASETS = ["longitudinal_dementia0", "longitudinal_dementia1", "longitudinal_dementia2"]
NUMERICAL = ("lefthippocampus", "righthippocampus", "leftamygdala", "minimentalstate", "timesincebaseline",
             "subjectage")
GEE_RTOL = 1e-8


@dataclass
class Federation:
    roots: dict[str, Path]
    clients: list
    raw: pd.DataFrame
    model: DataModel

    def run(self, doc: dict, clients=None, **kwargs):
        return run_analysis("gee", doc, clients or self.clients, researcher=RESEARCHER, project=PROJECT, **kwargs)


@pytest.fixture(scope="module")
def federation(tmp_path_factory, shared_dir: Path) -> Iterator[Federation]:
    folder = shared_dir / "data" / FOLDER
    model = load_data_model(folder / "CDEsMetadata.json")
    # several analyses of nearly the same rows, on purpose: differencing off
    roots, raw = csv_nodes(tmp_path_factory.mktemp("gee"), "node_g", folder, DATASETS, model,
                           differencing_check=0)
    for var in NUMERICAL:
        raw[var] = pd.to_numeric(raw[var])
    with served_clients(roots) as served:
        yield Federation(roots=roots, clients=list(served.values()), raw=raw, model=model)


def request(y: str, x: list[str], **parameters) -> dict:
    return {"inputdata": {"data_model": "longitudinal_dementia:0.1", "datasets": DATASETS, "y": [y], "x": x,
                          "filters": None}, "parameters": parameters}


def pooled_fit(raw: pd.DataFrame, y: str, x: list[str], family: str, cov_struct: str, *,
               positive: str | None = None, time: str | None = None):
    cols = [y, *x] + ([time] if time else [])
    rows = raw.dropna(subset=cols).copy()
    rows["_cluster"] = rows["dataset"] + "\x1f" + rows["subjectid"]
    rows = rows.sort_values(["_cluster"] + ([time] if time else []) + ["visitid"], kind="stable")
    endog = (rows[y] == positive).astype(float) if positive else rows[y].astype(float)
    parts, names = [np.ones(len(rows))], ["Intercept"]
    for code in x:
        if code in NUMERICAL:
            continue
        levels = sorted(rows[code].unique())
        parts += [(rows[code] == lvl).to_numpy(dtype=float) for lvl in levels[1:]]
        names += [f"{code}[{lvl}]" for lvl in levels[1:]]
    parts += [rows[c].to_numpy(dtype=float) for c in x if c in NUMERICAL]
    names += [c for c in x if c in NUMERICAL]
    fam = {"gaussian": sm.families.Gaussian(), "binomial": sm.families.Binomial(),
           "poisson": sm.families.Poisson()}[family]
    cov = {"independence": sm.cov_struct.Independence(), "exchangeable": sm.cov_struct.Exchangeable(),
           "ar1": sm.cov_struct.Autoregressive(grid=True)}[cov_struct]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sm.GEE(endog.to_numpy(), np.column_stack(parts), groups=pd.factorize(rows["_cluster"])[0],
                     family=fam, cov_struct=cov).fit()
    return fit, names, len(rows), rows["_cluster"].nunique()


CASES = [
    ("lefthippocampus", ["righthippocampus", "gender", "subjectage"], "gaussian", "exchangeable", {}),
    ("lefthippocampus", ["leftamygdala", "gender"], "gaussian", "ar1", {"time": "timesincebaseline"}),
    ("gender", ["lefthippocampus", "leftamygdala"], "binomial", "exchangeable", {"positive_class": "F"}),
    ("minimentalstate", ["lefthippocampus", "subjectage"], "poisson", "independence", {}),
    ("minimentalstate", ["lefthippocampus"], "poisson", "ar1", {}),
]


@pytest.mark.parametrize("y, x, family, cov_struct, extra", CASES,
                         ids=[f"{c[2]}-{c[3]}{'-time' if 'time' in c[4] else ''}" for c in CASES])
def test_equal_to_statsmodels_on_pooled_rows(federation: Federation, y, x, family, cov_struct, extra) -> None:
    outcome = federation.run(request(y, x, family=family, cov_struct=cov_struct, **extra))
    assert not outcome.excluded
    assert outcome.secure_aggregation["enabled"] is True and outcome.secure_aggregation["mode"] == "auto-on"
    ours = outcome.result
    fit, names, n, m = pooled_fit(federation.raw, y, x, family, cov_struct,
                                  positive=extra.get("positive_class"), time=extra.get("time"))
    assert ours["indep_vars"] == names
    assert ours["n_obs"] == n == sum(outcome.contributed.values()) and ours["n_clusters"] == m
    worst = 0.0
    for key, expected in (("coefficients", fit.params), ("stderr", np.sqrt(np.diag(fit.cov_robust))),
                          ("stderr_naive", np.sqrt(np.diag(fit.cov_naive)))):
        worst = max(worst, assert_rel_close(ours[key], expected, rel=GEE_RTOL, floor=1e-12, what=key))
    assert ours["converged"] is True
    SUMMARY.record("gee", worst, f"{family}.{cov_struct}")


def test_a_node_with_too_few_patients_refuses(federation: Federation) -> None:
    """``min_row_count`` above one node's patients (but below its rows): that node refuses, naming
    patients and no count, and the fit is the other two nodes' pooled one."""
    y, x = "lefthippocampus", ["righthippocampus"]
    raw = federation.raw
    first = raw[raw["dataset"] == DATASETS[0]].dropna(subset=[y, *x])
    patients, rows = first["subjectid"].nunique(), len(first)
    assert patients + 1 < rows  # the rule counts patients, not rows
    node = next(iter(federation.roots))
    home = NodeHome(federation.roots[node])
    home.set_setting("min_row_count", patients + 1)
    try:
        outcome = federation.run(request(y, x, family="gaussian", cov_struct="exchangeable"))
    finally:
        home.set_setting("min_row_count", 10)
    assert set(outcome.excluded) == {node}
    reason = str(outcome.excluded[node])
    assert "patients" in reason and str(patients) not in reason.replace(f"({patients + 1})", "")
    fit, _, n, m = pooled_fit(raw[raw["dataset"] != DATASETS[0]], y, x, "gaussian", "exchangeable")
    assert outcome.result["n_clusters"] == m
    assert_rel_close(outcome.result["coefficients"], fit.params, rel=GEE_RTOL, floor=1e-12, what="coefficients")


@pytest.mark.parametrize("y, x, family, cov_struct, extra", [CASES[0], CASES[1], CASES[2]],
                         ids=["gaussian-exchangeable", "gaussian-ar1-time", "binomial-exchangeable"])
def test_masked_equals_plain_and_the_central_sees_only_masked_vectors(federation: Federation, y, x, family,
                                                                      cov_struct, extra) -> None:
    """Every reply of every round, as the central site receives it, is a masked vector (no statistic,
    no dataset name); round 0's masked vectors are far from each node's plain release and sum to the
    plain releases' sum; the masked fit equals the plain fit (1e-9) and pooled statsmodels (1e-8),
    in as many rounds, every round verified by every node (ADR 0029)."""
    doc = request(y, x, family=family, cov_struct=cov_struct, **extra)
    with recording_clients(federation.clients) as (clients, seen):
        secure = federation.run(doc, clients)
        masked = list(seen)
        seen.clear()
        plain = federation.run(doc, clients, secure_aggregation=False)
    assert secure.secure_aggregation["enabled"] is True
    assert sorted(secure.secure_aggregation["participants"]) == sorted(federation.roots)
    assert plain.secure_aggregation["enabled"] is False and not secure.excluded and not plain.excluded
    assert len(masked) == 3 * secure.rounds and secure.rounds == plain.rounds > 4
    assert_only_masked(masked, federation.roots, DATASETS)
    assert all(set(reply["aggregates"]) != {"secure_aggregation"} for _, _, reply in seen)
    assert_round_zero_is_the_plain_sum(masked, seen, "gee", doc, federation.model)
    for key in ("coefficients", "stderr", "stderr_naive", "dep_param", "scale"):
        if plain.result[key] is not None:
            assert_rel_close(secure.result[key], plain.result[key], rel=1e-9, floor=1e-12, what=f"masked {key}")
    assert secure.result["iterations"] == plain.result["iterations"]
    fit, _, _, _ = pooled_fit(federation.raw, y, x, family, cov_struct, positive=extra.get("positive_class"),
                              time=extra.get("time"))
    worst = max(assert_rel_close(secure.result["coefficients"], fit.params, rel=GEE_RTOL, floor=1e-12,
                                 what="coefficients"),
                assert_rel_close(secure.result["stderr"], np.sqrt(np.diag(fit.cov_robust)), rel=GEE_RTOL,
                                 floor=1e-12, what="stderr"))
    SUMMARY.record("gee (masked)", worst, f"{family}.{cov_struct}")


@pytest.fixture(scope="module")
def pg_federation(tmp_path_factory, shared_dir: Path) -> Iterator[Federation]:
    """The same three nodes on PostgreSQL feature stores (databases created and dropped here)."""
    folder = shared_dir / "data" / FOLDER
    model = load_data_model(folder / "CDEsMetadata.json")
    with postgresql_databases(len(DATASETS)) as urls:
        roots, raw = csv_nodes(tmp_path_factory.mktemp("gee_pg"), "node_p", folder, DATASETS, model,
                               db_urls=urls, differencing_check=0)
        for var in NUMERICAL:
            raw[var] = pd.to_numeric(raw[var])
        with served_clients(roots) as served:
            yield Federation(roots=roots, clients=list(served.values()), raw=raw, model=model)


@pytest.mark.parametrize("y, x, family, cov_struct, extra", [
    pytest.param("lefthippocampus", ["leftamygdala", "gender"], "gaussian", "ar1", {}, id="gaussian-ar1-visits"),
    pytest.param("minimentalstate", ["lefthippocampus"], "poisson", "ar1", {}, id="poisson-ar1-visits"),
    pytest.param(*CASES[1], id="gaussian-ar1-time"),
    pytest.param(*CASES[0], id="gaussian-exchangeable"),
])
def test_on_postgresql_nodes_equal_to_statsmodels(pg_federation: Federation, y, x, family, cov_struct,
                                                  extra) -> None:
    """GEE on PostgreSQL nodes (it refused there before: "needs the rows' patient identity"): the
    nodes' binary read carries ``_pid_md5`` and ``_visit_rank``, never ``_pid`` or ``_visit``, and the
    masked fit equals statsmodels on the pooled rows ordered by visit key (AR(1) without a time
    variable depends on that order) to the SQLite nodes' 1e-8."""
    from mipflow.node.query.pgcopy import PID_MD5, VISIT_RANK
    from mipflow.node.query.read import select_frame
    from mipflow.node.store.feature_store import FeatureStore

    store = FeatureStore(NodeHome(next(iter(pg_federation.roots.values()))).db_url)
    try:
        assert store.dialect == "postgresql"
        read = select_frame(store, pg_federation.model, datasets=DATASETS, variables=[y, *x], row_identity=True,
                            visit_order=True)
    finally:
        store.dispose()
    assert {PID_MD5, VISIT_RANK} <= set(read.columns) and not {"_pid", "_visit"} & set(read.columns)
    outcome = pg_federation.run(request(y, x, family=family, cov_struct=cov_struct, **extra))
    assert not outcome.excluded and outcome.secure_aggregation["enabled"] is True
    fit, names, n, m = pooled_fit(pg_federation.raw, y, x, family, cov_struct,
                                  positive=extra.get("positive_class"), time=extra.get("time"))
    ours = outcome.result
    assert ours["indep_vars"] == names and ours["n_obs"] == n and ours["n_clusters"] == m
    worst = 0.0
    for key, expected in (("coefficients", fit.params), ("stderr", np.sqrt(np.diag(fit.cov_robust))),
                          ("stderr_naive", np.sqrt(np.diag(fit.cov_naive))),
                          ("dep_param", fit.model.cov_struct.dep_params)):
        worst = max(worst, assert_rel_close(ours[key], expected, rel=GEE_RTOL, floor=1e-12, what=key))
    assert ours["converged"] is True
    SUMMARY.record("gee (PostgreSQL nodes)", worst, f"{family}.{cov_struct}")
