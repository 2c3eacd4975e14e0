"""Central analysis DAGs through Airflow (dag.test) against three real node services."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from mipflow.node import ops
from mipflow.node.store.feature_store import open_store
from mipflow.protocol.signing import issue_client
from mipflow.central.results import ResultStore
from mipflow.demo.formats import HOSPITALS
from mipflow.demo.synth import generate_export, write_export
from tests.conftest import REPO_ROOT
from tests.nodes import DAG_TEST_USER, PROJECT, RESEARCHER, grant_all, pin_each_other, running_nodes
from tests.nodes import published, standard_home

pytestmark = [pytest.mark.airflow, pytest.mark.xdist_group("airflow")]
#: A researcher whom every node approves for its own dataset only.
OWN_ONLY = "own_only"
STROKE = REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json"


@pytest.fixture(scope="module")
def federation(tmp_path_factory, airflow_db):
    root = tmp_path_factory.mktemp("federation")
    homes = []
    for i, hospital in enumerate(HOSPITALS):
        home = standard_home(root / hospital, hospital)
        # the DAGs here analyse overlapping cohorts on purpose (complete cases of different
        # variables); the differencing control has its own tests (tests/mipflow/node/controls/test_differencing.py)
        home.set_setting("differencing_check", 0)
        ops.add_data_model(home, STROKE)
        path = write_export(root / f"{hospital}.csv", generate_export(hospital, 150, seed=20 + i))
        ops.ingest(home, [path], profile=REPO_ROOT / "include" / "schemas" / "profiles" / f"{hospital}.json")
        homes.append(home)
    env = {}
    pin_each_other([h.root for h in homes])  # the admins pinned each other's keys (ADR 0014)
    with running_nodes([h.root for h in homes]) as urls:
        for home, url in zip(homes, urls):
            cred = issue_client(home.root, "central")
            grant_all(home.root, DAG_TEST_USER, PROJECT)  # dag.test() runs as user "dag_test"
            grant_all(home.root, RESEARCHER, PROJECT)
            grant_all(home.root, OWN_ONLY, PROJECT, datasets=home.name)  # this hospital's dataset only
            env[f"AIRFLOW_CONN_MIPFLOW_NODE_{home.name.upper()}"] = json.dumps(
                {"conn_type": "mipflow_node", "host": url, "login": cred.client_id,
                 "password": cred.secret.hex(), "extra": {"node_name": home.name}})
        env["MIPFLOW_CENTRAL_HOME"] = str(root / "central")
        with pytest.MonkeyPatch.context() as patch:  # the DAGs read their settings from the environment
            for key, value in env.items():
                patch.setenv(key, value)
            yield {"homes": homes, "central": root / "central"}


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
            "nodes": [f"mipflow_node_{h}" for h in HOSPITALS], "min_nodes": 3, "project": PROJECT}
    return base | kw


def test_federated_linear_regression_dag_equals_pooled_ols(dags, federation):
    import statsmodels.api as sm

    run = dags["federated_linear_regression"].test(
        run_conf=conf(y="mrs_90d", x=["age", "nihss_admission"]))
    assert "success" in str(run.state)
    stored = ResultStore(federation["central"]).get(run.run_id)
    assert stored is not None and set(stored["contributed"]) == set(HOSPITALS)
    assert ResultStore(federation["central"]).document(run.run_id)["triggered_by"] == "dag_test"
    result = stored["result"]
    data = pooled(federation["homes"], ["mrs_90d", "age", "nihss_admission"])
    fit = sm.OLS(data["mrs_90d"], sm.add_constant(data[["age", "nihss_admission"]])).fit()
    assert result["n_obs"] == len(data) == sum(stored["contributed"].values())
    np.testing.assert_allclose(result["coefficients"], fit.params.to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(result["std_err"], fit.bse.to_numpy(), rtol=1e-9)
    files = list((federation["central"] / "results").glob("linear_regression__*.json"))
    assert files and json.loads(files[0].read_text())["request"]["inputdata"]["y"] == ["mrs_90d"]
    # provenance: the run's triggering user and the form's project, and the step code at every node
    doc = json.loads(files[0].read_text())
    assert (doc["researcher"], doc["project"]) == (DAG_TEST_USER, PROJECT)
    assert doc["code"]["consistent"] and set(doc["code"]["nodes"]) == set(HOSPITALS)
    from mipflow.node.controls.audit import read_records

    for home in federation["homes"]:
        mine = [r for r in read_records(home.root / "audit.log") if r.get("analysis") and
                r.get("researcher") == DAG_TEST_USER and r["decision"] == "allowed"]
        assert mine and mine[-1]["algorithm_sha256"] == doc["code"]["central"]["algorithm_sha256"]


def test_federated_dag_fails_for_a_project_the_nodes_did_not_approve(dags, federation):
    run = dags["federated_linear_regression"].test(
        run_conf=conf(y="mrs_90d", x=["age"], project="not-approved"))
    assert "failed" in str(run.state)
    failed = ResultStore(federation["central"]).document(run.run_id)  # listed on the results pages
    assert (failed["status"], failed["result"], failed["dag_id"]) == ("failed", {}, "federated_linear_regression")
    assert "no node lists dataset(s)" in failed["error"] and failed["triggered_by"] == DAG_TEST_USER
    from mipflow.node.controls.audit import read_records

    # the nodes list no dataset for this project, so the run fails before any step, saying why
    for home in federation["homes"]:
        mine = [r for r in read_records(home.root / "audit.log") if r.get("project") == "not-approved"]
        assert mine and all(r["endpoint"] == "/v1/metadata" for r in mine)
        assert mine[-1]["researcher"] == DAG_TEST_USER
    records = [json.loads(line) for line in (federation["central"] / "notifications.jsonl").read_text().splitlines()]
    (record,) = [r for r in records if r["run_id"] == run.run_id]
    assert "no node lists dataset(s)" in record["message"] and "project not-approved" in record["message"]


def test_federated_anova_dag_equals_pooled_anova_lm(dags, federation):
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    run = dags["federated_anova"].test(
        run_conf=conf(y="nihss_admission", x=["sex", "hypertension"], sstype=1))  # cells >= min_row_count (ADR 0050)
    assert "success" in str(run.state)
    result = ResultStore(federation["central"]).get(run.run_id)["result"]
    data = pooled(federation["homes"], ["nihss_admission", "sex", "hypertension"])
    assert (pd.crosstab(data["sex"], data["hypertension"]) > 0).all(axis=None)
    table = anova_lm(smf.ols("nihss_admission ~ C(sex) * C(hypertension)", data).fit(), typ=1)
    assert result["n_obs"] == len(data) and result["sstype"] == 1
    ours = [result["sum_sq"][t] for t in ("sex", "hypertension", "sex:hypertension", "Residuals")]
    np.testing.assert_allclose(ours, table["sum_sq"].to_numpy(), rtol=1e-9)
    np.testing.assert_allclose([result["f_pvalue"][t] for t in ("sex", "hypertension", "sex:hypertension")],
                               table["PR(>F)"].to_numpy()[:3], rtol=1e-9)


def test_federated_dag_fails_clearly_when_too_few_nodes_qualify(dags, federation):
    filters = {"condition": "AND", "rules": [{"id": "age", "operator": "greater", "value": 89.5}]}
    run = dags["federated_ttest_onesample"].test(run_conf=conf(y="nihss_admission", filters=filters, mu=5.0))
    assert "failed" in str(run.state)
    refused = ResultStore(federation["central"]).document(run.run_id)
    assert refused["status"] == "refused" and "fewer than min_nodes (3)" in refused["error"]
    assert refused["nodes"] and set(refused["nodes"]) <= set(HOSPITALS) and {
        n["control"] for n in refused["nodes"].values()} <= {"min_row_count", "nfilter_subset"}
    from mipflow.central.report.pages import result_page

    page = result_page(refused, link=lambda r, k: f"run?id={r}", back="./")
    assert "Refused: no result" in page and "widen the filter" in page


def test_federation_metadata_dag_syncs_what_nodes_hold(dags, federation):
    run = dags["federation_metadata"].test(run_conf={"nodes": [f"mipflow_node_{h}" for h in HOSPITALS],
                                                     "project": PROJECT})
    assert "success" in str(run.state)
    from mipflow.central.metadata import datasets_for, load_metadata

    synced = datasets_for(load_metadata(federation["central"]), DAG_TEST_USER, PROJECT)
    for home in federation["homes"]:
        (entry,) = synced[home.name]["stroke:0.1"]
        assert entry["dataset"] == home.name
        held = open_store(home).count_rows(open_store(home).data_model("stroke:0.1"))
        assert entry["row_count"] == published(home, "stroke:0.1", home.name, held)


def test_result_provenance_lists_datasets_and_software(federation):
    from mipflow.central.federation_file import analyze

    fed = federation["central"] / "fed.json"
    # the same nodes through a federation file, as the CLI would use them
    from mipflow.central.federation_file import add_node

    for home in federation["homes"]:
        conn = json.loads(os.environ[f"AIRFLOW_CONN_MIPFLOW_NODE_{home.name.upper()}"])
        add_node(fed, name=home.name, url=conn["host"], credentials_from=home.root)
    request = {"inputdata": {"data_model": "stroke:0.1", "datasets": list(HOSPITALS), "x": [],
                             "y": ["nihss_admission"], "filters": None}, "parameters": {"mu": 5}}
    outcome = analyze("ttest_onesample", request, fed, researcher=RESEARCHER, project=PROJECT,
                      min_nodes=3).to_dict()
    for home in federation["homes"]:
        held = open_store(home).count_rows(open_store(home).data_model("stroke:0.1"))
        assert outcome["datasets"][home.name] == {home.name: published(home, "stroke:0.1", home.name, held)}
    assert outcome["software"].startswith("mipflow ") and outcome["request"]["parameters"] == {"mu": 5}


def test_federated_contingency_table_dag_equals_pooled_scipy(dags, federation):
    from scipy import stats

    run = dags["federated_contingency_table"].test(
        run_conf=conf(y="death_90d", x="sex", yates_correction="no", alt_hypothesis="greater"))
    assert "success" in str(run.state)
    stored = ResultStore(federation["central"]).get(run.run_id)
    assert stored["request"]["parameters"] == {"yates_correction": "no", "alt_hypothesis": "greater",
                                               "alpha": 0.05}
    # every demo hospital's 2x2 table has cells of at least nfilter_tab: none is refused
    assert set(stored["contributed"]) == set(HOSPITALS) and not stored["excluded"]
    data = pooled(federation["homes"], ["sex", "death_90d"])
    table = pd.crosstab(data["sex"], data["death_90d"]).reindex(
        index=["M", "F"], columns=["yes", "no"], fill_value=0).to_numpy()
    result = stored["result"]
    assert result["observed"] == table.tolist()
    ref = stats.chi2_contingency(table, correction=False)
    np.testing.assert_allclose([result["chi2"]["statistic"], result["chi2"]["p_value"]],
                               [ref.statistic, ref.pvalue], rtol=1e-9)
    fisher = stats.fisher_exact(table, alternative="greater")
    np.testing.assert_allclose(result["fisher_exact"]["p_value"], fisher.pvalue, rtol=1e-9)


def test_federated_cox_regression_dag_equals_pooled_phreg(dags, federation):
    """The survival forms (y = [time, event], event_level, bin_width, ties) through the scheduler-free dag.test."""
    from statsmodels.duration.hazard_regression import PHReg

    run = dags["federated_cox_regression"].test(run_conf=conf(
        y=["followup_days", "death_90d"], x=["age", "nihss_admission"], event_level="yes", bin_width=7.0,
        ties="efron"))
    assert "success" in str(run.state)
    result = ResultStore(federation["central"]).get(run.run_id)["result"]
    data = pooled(federation["homes"], ["followup_days", "death_90d", "age", "nihss_admission"])
    timeline = np.asarray(result["binning"]["timeline"])
    times = timeline[np.searchsorted(timeline, data["followup_days"].to_numpy(dtype=float), side="left")]
    fit = PHReg(times, data[["age", "nihss_admission"]].to_numpy(dtype=float),
                status=(data["death_90d"] == "yes").to_numpy(dtype=float), ties="efron").fit(method="newton")
    assert result["binning"]["method"] == "binned" and result["n_obs"] == len(data) and result["ties"] == "efron"
    np.testing.assert_allclose(result["coefficients"], fit.params, rtol=1e-9)
    np.testing.assert_allclose(result["stderr"], fit.bse, rtol=1e-9)


def test_federated_kmeans_dag_equals_pooled_lloyd(dags, federation):
    from mipflow.algorithms.kmeans import principal_axis_centres
    from tests.mipflow.algorithms.test_kmeans import numpy_lloyd

    run = dags["federated_kmeans"].test(run_conf=conf(y=["age"], k=2, maxiter=30, tol=1e-8))  # real only (ADR 0050)
    assert "success" in str(run.state)
    stored = ResultStore(federation["central"]).get(run.run_id)
    assert stored is not None and set(stored["contributed"]) == set(HOSPITALS), stored["excluded"]
    result = stored["result"]
    values = pooled(federation["homes"], ["age"]).to_numpy(dtype=float)
    start = principal_axis_centres(values.mean(axis=0), np.atleast_2d(np.cov(values, rowvar=False)), 2)
    reference = numpy_lloyd(values, start, 1e-8, 30)
    assert result["n_obs"] == len(values) and result["n_iter"] == reference["n_iter"]
    np.testing.assert_allclose(result["centers"], reference["centers"], rtol=1e-9)
    np.testing.assert_allclose(result["inertia"], reference["inertia"], rtol=1e-9)


def test_task_logs_show_progress_summary_and_where_the_result_is_stored(dags, federation, caplog, capfd):
    """The shipped airflow.cfg logs at INFO: a researcher reading the task log sees the rounds, the
    summary and where the result went (the test does not lower any logger's level itself)."""
    run = dags["federated_linear_regression"].test(run_conf=conf(y="mrs_90d", x=["age"]))
    assert "success" in str(run.state)
    out, err = capfd.readouterr()
    text = out + err + caplog.text
    assert "round 1 of at most" in text and "node(s) contributed" in text
    assert "result stored:" in text and run.run_id in text


def test_kaplan_meier_dag_runs_without_a_group_and_min_nodes_defaults_to_every_node(dags, federation):
    """The form's optional grouping variable and min_nodes left out (issue 15): one curve over the
    pooled rows, from every node selected."""
    run_conf = {k: v for k, v in conf(y=["followup_days", "death_90d"], event_level="yes", bin_width=7.0).items()
                if k != "min_nodes"}
    run = dags["federated_kaplan_meier"].test(run_conf=run_conf)
    assert "success" in str(run.state)
    stored = ResultStore(federation["central"]).get(run.run_id)
    assert set(stored["contributed"]) == set(HOSPITALS)
    (curve,) = stored["result"]["curves"]
    data = pooled(federation["homes"], ["followup_days", "death_90d"])
    assert curve["group"] is None and stored["result"]["grouping_variable"] is None
    assert curve["n_obs"] == len(data) and curve["n_events"] == int((data["death_90d"] == "yes").sum())


def _clients():
    from mipflow.central.client import NodeClient, NodeEndpoint

    clients = []
    for hospital in HOSPITALS:
        conn = json.loads(os.environ[f"AIRFLOW_CONN_MIPFLOW_NODE_{hospital.upper()}"])
        clients.append(NodeClient(NodeEndpoint(hospital, conn["host"], conn["login"], conn["password"])))
    return clients


def test_a_grant_for_each_nodes_own_dataset_answers_a_request_across_nodes(federation):
    """Every node approves the researcher for its own dataset only: each answers on it (issue 15),
    and the result is the pooled one."""
    import statsmodels.api as sm

    from mipflow.central.rounds import run_analysis

    request = {"inputdata": {"data_model": "stroke:0.1", "datasets": list(HOSPITALS), "x": ["age"],
                             "y": ["mrs_90d"], "filters": None}, "parameters": {}}
    clients = _clients()
    try:
        outcome = run_analysis("linear_regression", request, clients, researcher=OWN_ONLY, project=PROJECT,
                               min_nodes=3)
    finally:
        for client in clients:
            client.close()
    assert set(outcome.contributed) == set(HOSPITALS) and not outcome.excluded
    assert {node: set(rows) for node, rows in outcome.datasets.items()} == {h: {h} for h in HOSPITALS}
    data = pooled(federation["homes"], ["mrs_90d", "age"])
    fit = sm.OLS(data["mrs_90d"], sm.add_constant(data[["age"]])).fit()
    np.testing.assert_allclose(outcome.result["coefficients"], fit.params.to_numpy(), rtol=1e-9)
    from mipflow.node.controls.audit import read_records

    for home in federation["homes"]:
        (answered,) = [r for r in read_records(home.root / "audit.log")
                       if r.get("analysis") and r.get("researcher") == OWN_ONLY]
        assert answered["decision"] == "allowed" and answered["datasets_answered"] == [home.name]


def test_a_dataset_no_node_holds_fails_the_run_before_any_step(dags, federation):
    from mipflow.node.controls.audit import read_records

    before = {home.name: len(read_records(home.root / "audit.log")) for home in federation["homes"]}
    run = dags["federated_linear_regression"].test(run_conf=conf(y="mrs_90d", x=["age"],
                                                                 datasets=[*HOSPITALS, "hospital_z"]))
    assert "failed" in str(run.state)
    for home in federation["homes"]:
        new = read_records(home.root / "audit.log")[before[home.name]:]
        assert new and all(r.get("endpoint") != "/v1/steps" for r in new)  # metadata only: no step was sent
    from mipflow.central.rounds import run_analysis
    from mipflow.exceptions import RequestError

    clients = _clients()
    try:
        with pytest.raises(RequestError, match=r"no node lists dataset\(s\) hospital_z for researcher"):
            run_analysis("linear_regression", {"inputdata": {"data_model": "stroke:0.1", "datasets": ["hospital_z"],
                                                             "y": ["mrs_90d"], "x": ["age"]}, "parameters": {}},
                         clients, researcher=RESEARCHER, project=PROJECT)
    finally:
        for client in clients:
            client.close()



def test_the_run_analysis_task_links_to_the_runs_results_page(dags, federation):
    """The task's "Result" extra link (pushed when the task ends, succeeded or failed) opens the run's page."""
    from urllib.parse import quote

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    run = dags["federated_ttest_onesample"].test(run_conf=conf(y="nihss_admission", mu=5.0))
    assert "success" in str(run.state)
    with create_session() as session:
        link = session.scalar(XComModel.get_many(run_id=run.run_id, key="_link_ResultLink",
                                                 dag_ids="federated_ttest_onesample",
                                                 task_ids="run_analysis").with_only_columns(XComModel.value))
    assert link is not None and str(link).endswith(f"/mipflow/run?id={quote(run.run_id, safe='')}")


def test_an_unknown_node_connection_fails_the_run_naming_it(dags, federation):
    """Both kinds of central DAG: the failure record (and so the notifier) names the connection."""
    for dag_id, run_conf in (("federation_metadata", {"nodes": ["mipflow_node_nowhere"], "project": PROJECT}),
                             ("federated_ttest_onesample", conf(y="nihss_admission", mu=5.0,
                                                                nodes=["mipflow_node_nowhere"]))):
        run = dags[dag_id].test(run_conf=run_conf)
        assert "failed" in str(run.state)
        records = [json.loads(line) for line in
                   (federation["central"] / "notifications.jsonl").read_text().splitlines()]
        (record,) = [r for r in records if r["run_id"] == run.run_id]
        assert record["exception"] == "AirflowFailException", dag_id  # not retried
        assert "no Airflow connection 'mipflow_node_nowhere'" in record["message"], dag_id


def test_the_analysis_dags_are_created_unpaused_on_a_fresh_central(airflow_db):
    """airflow.cfg creates DAGs paused; the analysis DAGs (no schedule: they only run when triggered) are
    created unpaused, so the "New analysis" page's run (a REST trigger) does not wait in the queue forever."""
    from airflow.api.common.delete_dag import delete_dag
    from airflow.configuration import conf as airflow_conf
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    assert airflow_conf.getboolean("core", "dags_are_paused_at_creation") is True  # the shipped default
    bag = DagBag(dag_folder=str(REPO_ROOT / "dags" / "mipflow_central.py"))
    assert not bag.import_errors
    analyses = sorted(d for d in bag.dags if d.startswith("federated_"))
    assert len(analyses) >= 20
    with create_session() as session:  # a fresh central: none of them known yet (earlier tests' runs go too)
        known = list(session.scalars(sa.select(DagModel.dag_id).where(DagModel.dag_id.in_(list(bag.dags)))))
    for dag_id in known:
        delete_dag(dag_id, keep_records_in_log=False)
    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)
    with create_session() as session:
        paused = dict(session.execute(sa.select(DagModel.dag_id, DagModel.is_paused)
                                      .where(DagModel.dag_id.in_(list(bag.dags)))).all())
    assert paused == {**dict.fromkeys(analyses, False), "federation_metadata": True}
