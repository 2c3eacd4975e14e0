"""Operations settings as Airflow sees them: retries and callbacks on every task, the federation
pool on tasks that call nodes, the failure callback through ``dag.test()``, and the node API
mounted in a node's Airflow api-server (docs/adr/0017-operability.md)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest

from tests.conftest import REPO_ROOT
from tests.nodes import published, standard_home

pytestmark = [pytest.mark.airflow, pytest.mark.xdist_group("airflow")]
STROKE = REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json"


def _dagbag(*files: str):
    from airflow.dag_processing.dagbag import DagBag

    dags = {}
    for name in files:
        bag = DagBag(dag_folder=str(REPO_ROOT / "dags" / name))
        assert not bag.import_errors, bag.import_errors
        dags.update(bag.dags)
    return dags


def test_every_task_takes_retries_delay_timeout_and_callback_from_the_environment(monkeypatch):
    from mipflow_airflow.notifications.failure import FailureNotifier

    monkeypatch.setenv("MIPFLOW_TASK_RETRIES", "3")
    monkeypatch.setenv("MIPFLOW_TASK_RETRY_DELAY_SECONDS", "45")
    monkeypatch.setenv("MIPFLOW_TASK_TIMEOUT_MINUTES", "20")
    dags = _dagbag("mipflow_central.py", "mipflow_node.py", "mipflow_imaging.py")
    assert {"federated_linear_regression", "federation_metadata", "node_load", "imaging_deidentify"} <= set(dags)
    for dag in dags.values():
        for task in dag.tasks:
            where = (dag.dag_id, task.task_id)
            assert task.retries == 3, where
            assert task.retry_delay == timedelta(seconds=45), where
            assert task.execution_timeout == timedelta(minutes=20), where
            callbacks = task.on_failure_callback  # a list, or the notifier itself on mapped tasks
            assert [type(c) for c in (callbacks if isinstance(callbacks, list) else [callbacks])] == [
                FailureNotifier], where


@pytest.mark.parametrize(("env", "pool"), [
    pytest.param({}, "default_pool", id="pools-off"),
    pytest.param({"MIPFLOW_POOLS": "1"}, "mipflow_federation", id="pools-on"),
    pytest.param({"MIPFLOW_POOLS": "1", "MIPFLOW_POOL": "to_nodes"}, "to_nodes", id="named-pool"),
])
def test_tasks_that_call_nodes_run_in_the_federation_pool(monkeypatch, env, pool):
    monkeypatch.delenv("MIPFLOW_POOLS", raising=False)
    monkeypatch.delenv("MIPFLOW_POOL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    dags = _dagbag("mipflow_central.py")
    calling = {(d.dag_id, t.task_id) for d in dags.values() for t in d.tasks
               if t.task_id in ("run_analysis", "sync_metadata")}
    assert len(calling) == len(dags)  # one task per DAG calls nodes
    for dag in dags.values():
        for task in dag.tasks:
            expected = pool if (dag.dag_id, task.task_id) in calling else "default_pool"
            assert task.pool == expected, (dag.dag_id, task.task_id)


@pytest.mark.parametrize(("dag_file", "dag_id", "conf", "exception", "message"), [
    pytest.param("mipflow_central.py", "federated_ttest_onesample",
                 {"data_model": "stroke:0.1", "datasets": ["a"], "y": "age", "nodes": [], "project": "p"},
                 "AirflowFailException", "no nodes: give node connection ids (param 'nodes')", id="central"),
    pytest.param("mipflow_node.py", "node_capture", {"node_home": ""},
                 "AirflowFailException", "no node home: set MIPFLOW_NODE_HOME or the node_home param", id="node"),
])
def test_failure_callback_records_a_failed_task(airflow_db, tmp_path, monkeypatch, dag_file, dag_id, conf,
                                                exception, message):
    notify_file = tmp_path / "notifications.jsonl"
    monkeypatch.setenv("MIPFLOW_NOTIFY_FILE", str(notify_file))
    monkeypatch.delenv("MIPFLOW_NOTIFY_CONN_ID", raising=False)
    run = _dagbag(dag_file)[dag_id].test(run_conf=conf)
    assert "failed" in str(run.state)
    (record,) = [json.loads(line) for line in notify_file.read_text().splitlines()]
    assert record["event"] == "task_failed" and record["dag_id"] == dag_id and record["run_id"] == run.run_id
    assert record["task_id"] in ("run_analysis", "capture_landing")
    assert (record["exception"], record["message"]) == (exception, message)


def test_a_succeeding_run_writes_no_failure_record(airflow_db, tmp_path, monkeypatch):

    home = standard_home(tmp_path / "hospital_a", "hospital_a")
    notify_file = tmp_path / "notifications.jsonl"
    monkeypatch.setenv("MIPFLOW_NOTIFY_FILE", str(notify_file))
    run = _dagbag("mipflow_node.py")["node_capture"].test(run_conf={"node_home": str(home.root)})
    assert "success" in str(run.state) and not notify_file.exists()


# --------------------------------------------------------------------------- node API in the node's Airflow

_MOUNTED = textwrap.dedent("""
    import json, os, sys
    from fastapi.testclient import TestClient
    from airflow.api_fastapi.app import create_app
    from mipflow.central.client import NodeClient, NodeEndpoint, NodeRefused

    app = create_app()
    base = "http://testserver/mipflow-node"
    mounted = [r.path for r in app.routes if getattr(r, "path", "").startswith("/mipflow-node")]
    out = {"mounted": mounted}
    raw = TestClient(app, base_url="http://testserver")
    out["health"] = raw.get("/mipflow-node/health").status_code
    body = json.dumps({"request": json.loads(os.environ["STEP_REQUEST"]), "round": 0, "state": None,
                       "researcher": "tester", "project": "mipflow-tests"})
    unsigned = raw.post("/mipflow-node/v1/steps/descriptive_stats", content=body,
                        headers={"Content-Type": "application/json"})
    out["unsigned"] = [unsigned.status_code, unsigned.json()]
    out["unsigned_metadata"] = raw.get("/mipflow-node/v1/metadata").status_code
    client = NodeClient(NodeEndpoint("hospital_a", base, "central", os.environ["SECRET"]), retries=0)
    client._http.close()
    client._http = TestClient(app, base_url=base)
    out["metadata"] = client.metadata("tester", "mipflow-tests")["data_models"][0]["datasets"]
    reply = client.step("descriptive_stats", json.loads(os.environ["STEP_REQUEST"]), 0, None,
                        researcher="tester", project="mipflow-tests")
    out["step"] = {"node": reply["node"], "rows": reply["rows"]}
    forged = NodeClient(NodeEndpoint("hospital_a", base, "central", "11" * 32), retries=0)
    forged._http.close()
    forged._http = TestClient(app, base_url=base)
    try:
        forged.metadata("tester", "mipflow-tests")
    except NodeRefused as exc:
        out["forged"] = [exc.status, exc.reason]
    print("RESULT " + json.dumps(out))
""")


def _start(script: str, env: dict[str, str]) -> subprocess.Popen:
    import os

    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO_ROOT, env={**os.environ, **env})


def _result(process: subprocess.Popen) -> object:
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    assert process.returncode == 0, stderr[-3000:]
    (line,) = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


@pytest.fixture(scope="module")
def node_home(tmp_path_factory):
    from mipflow.node import ops
    from mipflow.protocol.signing import issue_client
    from mipflow.demo.synth import generate_export, write_export
    from tests.nodes import grant_all

    root = tmp_path_factory.mktemp("mounted")
    home = standard_home(root / "hospital_a", "hospital_a")
    ops.add_data_model(home, STROKE)
    path = write_export(root / "a.csv", generate_export("hospital_a", 60, seed=4))
    ops.ingest(home, [path], profile=REPO_ROOT / "include" / "schemas" / "profiles" / "hospital_a.json")
    grant_all(home.root)
    return home, issue_client(home.root, "central")


@pytest.fixture(scope="module")
def airflow_apps(airflow_db, node_home):
    """Both of the node's Airflow api-servers, each built by ``create_app()`` in a process of its own:
    with the node API mounted (the node admin opted in), the calls made to it; without (the default),
    the routes it mounted.  The two are independent (the second never reaches the node API), so they
    start together: ``create_app()`` takes seconds apiece."""
    home, cred = node_home
    request = {"inputdata": {"data_model": "stroke:0.1", "datasets": ["hospital_a"], "x": [],
                             "y": ["age"], "filters": None}, "parameters": {}}  # one variable: one cohort
    opted_in = _start(_MOUNTED, {"MIPFLOW_NODE_HOME": str(home.root), "MIPFLOW_NODE_API_IN_AIRFLOW": "1",
                                 "SECRET": cred.secret.hex(), "STEP_REQUEST": json.dumps(request)})
    opted_out = _start(_MOUNTED.split("out = {")[0] + "print('RESULT', json.dumps(mounted))",
                       {"MIPFLOW_NODE_HOME": str(home.root), "MIPFLOW_NODE_API_IN_AIRFLOW": "0",
                        "SECRET": cred.secret.hex(), "STEP_REQUEST": "{}"})
    try:
        return {"opted_in": _result(opted_in), "opted_out": _result(opted_out)}
    finally:
        for process in (opted_in, opted_out):
            if process.poll() is None:
                process.kill()
                process.communicate()


def test_node_api_mounted_in_airflow_takes_signed_calls_and_refuses_unsigned(airflow_apps, node_home):
    from mipflow.node.store.feature_store import open_store

    home, _ = node_home
    out = airflow_apps["opted_in"]
    assert out["mounted"] == ["/mipflow-node"] and out["health"] == 200
    assert out["unsigned"][0] == 401 and out["unsigned"][1]["detail"] == "missing authentication headers"
    assert out["unsigned_metadata"] == 401
    assert out["forged"] == [401, "bad signature"]
    held = open_store(home).count_rows(open_store(home).data_model("stroke:0.1"))
    assert out["metadata"] == [{"dataset": "hospital_a", "row_count_approximate": True,
                                "row_count": published(home, "stroke:0.1", "hospital_a", held)}]
    assert out["step"]["node"] == "hospital_a" and 0 < out["step"]["rows"] <= held
    from mipflow.node.controls.audit import read_records

    records = read_records(home.root / "audit.log")
    assert [r["control"] for r in records if r["decision"] == "refused"].count("authentication") == 3
    assert any(r.get("algorithm") == "descriptive_stats" and r["decision"] == "allowed" for r in records)


def test_node_api_is_not_mounted_unless_the_node_admin_opts_in(airflow_apps):
    assert airflow_apps["opted_out"] == []
