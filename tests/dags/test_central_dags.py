"""Central analysis DAGs through Airflow (dag.test) against three real node services."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from mipflow import node as ops
from mipflow.auth import issue_client
from mipflow.config import NodeHome
from mipflow.results import ResultStore
from mipflow.synth import HOSPITALS, generate_export, write_export
from tests.conftest import REPO_ROOT
from tests.nodes import running_nodes

pytestmark = [pytest.mark.airflow, pytest.mark.xdist_group("airflow")]
STROKE = REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json"


@pytest.fixture(scope="module")
def federation(tmp_path_factory, airflow_db):
    root = tmp_path_factory.mktemp("federation")
    homes = []
    for i, hospital in enumerate(HOSPITALS):
        home = NodeHome.init(root / hospital, hospital)
        ops.add_data_model(home, STROKE)
        path = write_export(root / f"{hospital}.csv", generate_export(hospital, 150, seed=20 + i))
        ops.ingest(home, [path], profile=REPO_ROOT / "include" / "schemas" / "profiles" / f"{hospital}.json")
        homes.append(home)
    env = {}
    with running_nodes([h.root for h in homes]) as urls:
        for home, url in zip(homes, urls):
            cred = issue_client(home.root, "central")
            env[f"AIRFLOW_CONN_MIPFLOW_NODE_{home.name.upper()}"] = json.dumps(
                {"conn_type": "mipflow_node", "host": url, "login": cred.client_id,
                 "password": cred.secret.hex(), "extra": {"node_name": home.name}})
        env["MIPFLOW_CENTRAL_HOME"] = str(root / "central")
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield {"homes": homes, "central": root / "central"}
        finally:
            for key, value in old.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(scope="module")
def dags(federation):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags" / "mipflow_central.py"))
    assert not bag.import_errors
    return bag.dags


def pooled(homes, columns):
    frames = []
    for home in homes:
        engine = sa.create_engine(home.db_url)
        with engine.connect() as conn:
            frames.append(pd.read_sql(sa.text(f"SELECT {', '.join(columns)} FROM dm_stroke_0_1"), conn))
        engine.dispose()
    return pd.concat(frames, ignore_index=True).dropna()


def conf(**kw):
    base = {"data_model": "stroke:0.1", "datasets": list(HOSPITALS), "filters": None,
            "nodes": [f"mipflow_node_{h}" for h in HOSPITALS], "min_nodes": 3}
    return base | kw


def test_federated_linear_regression_dag_equals_pooled_ols(dags, federation):
    import statsmodels.api as sm

    run = dags["federated_linear_regression"].test(
        run_conf=conf(y="mrs_90d", x=["age", "nihss_admission"]))
    assert "success" in str(run.state)
    stored = ResultStore(federation["central"]).get(run.run_id)
    assert stored is not None and set(stored["contributed"]) == set(HOSPITALS)
    result = stored["result"]
    data = pooled(federation["homes"], ["mrs_90d", "age", "nihss_admission"])
    fit = sm.OLS(data["mrs_90d"], sm.add_constant(data[["age", "nihss_admission"]])).fit()
    assert result["n_obs"] == len(data) == sum(stored["contributed"].values())
    np.testing.assert_allclose(result["coefficients"], fit.params.to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(result["std_err"], fit.bse.to_numpy(), rtol=1e-9)
    files = list((federation["central"] / "results").glob("linear_regression__*.json"))
    assert files and json.loads(files[0].read_text())["request"]["inputdata"]["y"] == ["mrs_90d"]


def test_federated_anova_dag_equals_pooled_anova_lm(dags, federation):
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    run = dags["federated_anova"].test(
        run_conf=conf(y="nihss_admission", x=["sex", "thrombolysis"], sstype=1))
    assert "success" in str(run.state)
    result = ResultStore(federation["central"]).get(run.run_id)["result"]
    data = pooled(federation["homes"], ["nihss_admission", "sex", "thrombolysis"])
    assert (pd.crosstab(data["sex"], data["thrombolysis"]) > 0).all(axis=None)
    table = anova_lm(smf.ols("nihss_admission ~ C(sex) * C(thrombolysis)", data).fit(), typ=1)
    assert result["n_obs"] == len(data) and result["sstype"] == 1
    ours = [result["sum_sq"][t] for t in ("sex", "thrombolysis", "sex:thrombolysis", "Residuals")]
    np.testing.assert_allclose(ours, table["sum_sq"].to_numpy(), rtol=1e-9)
    np.testing.assert_allclose([result["f_pvalue"][t] for t in ("sex", "thrombolysis", "sex:thrombolysis")],
                               table["PR(>F)"].to_numpy()[:3], rtol=1e-9)


def test_federated_dag_fails_clearly_when_too_few_nodes_qualify(dags, federation):
    filters = {"condition": "AND", "rules": [{"id": "age", "operator": "greater", "value": 89.5}]}
    run = dags["federated_ttest_onesample"].test(run_conf=conf(y="nihss_admission", filters=filters, mu=5.0))
    assert "failed" in str(run.state)
    assert ResultStore(federation["central"]).get(run.run_id) is None


def test_federation_metadata_dag_syncs_what_nodes_hold(dags, federation):
    run = dags["federation_metadata"].test(run_conf={"nodes": [f"mipflow_node_{h}" for h in HOSPITALS]})
    assert "success" in str(run.state)
    synced = json.loads((federation["central"] / "federation_metadata.json").read_text())
    for home in federation["homes"]:
        (entry,) = synced[home.name]["stroke:0.1"]
        assert entry["dataset"] == home.name
        assert entry["row_count"] == ops.open_store(home).count_rows(ops.open_store(home).data_model("stroke:0.1"))


def test_result_provenance_lists_datasets_and_software(federation):
    from mipflow.federation import analyze

    fed = federation["central"] / "fed.json"
    # the same nodes through a federation file, as the CLI would use them
    from mipflow.federation import add_node

    for home in federation["homes"]:
        conn = json.loads(os.environ[f"AIRFLOW_CONN_MIPFLOW_NODE_{home.name.upper()}"])
        add_node(fed, name=home.name, url=conn["host"], credentials_from=home.root)
    request = {"inputdata": {"data_model": "stroke:0.1", "datasets": list(HOSPITALS), "x": [],
                             "y": ["nihss_admission"], "filters": None}, "parameters": {"mu": 5}}
    outcome = analyze("ttest_onesample", request, fed, min_nodes=3).to_dict()
    for home in federation["homes"]:
        held = ops.open_store(home).count_rows(ops.open_store(home).data_model("stroke:0.1"))
        assert outcome["datasets"][home.name] == {home.name: held}
    assert outcome["software"].startswith("mipflow ") and outcome["request"]["parameters"] == {"mu": 5}
