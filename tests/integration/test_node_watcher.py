"""End to end in a real node Airflow (``airflow standalone``: scheduler, triggerer, dag-processor, api-server):
a row committed at the hospital's EHR database is loaded into the feature store by the node chain that the
node's EHR watermark watcher (EhrWatermarkTrigger, in the triggerer) sets off, without anyone triggering a run,
and an unchanged source sets off nothing (ADR 0043, "Latency")."""
from __future__ import annotations

import json
import time

import pytest
from sqlalchemy.engine import make_url

from mipflow.demo.synth import generate_export
from mipflow.node import ops
from mipflow.node.home import NodeHome
from mipflow.node.store.feature_store import open_store
from tests.airflow_server import central_airflow
from tests.conftest import REPO_ROOT
from tests.mipflow.node.ingest.test_database import PASSWORD, Source, stored

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.postgres, pytest.mark.xdist_group("airflow")]
CHAIN = ["node_capture", "node_depersonalise", "node_validate", "node_load"]
WATCH_SECONDS = 2


def _wait(what: str, check, timeout: float, server) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{server.tail(80)}")


def test_a_committed_row_is_loaded_by_the_chain_the_nodes_watcher_sets_off(tmp_path, pg_url):
    src = Source("postgresql", pg_url)
    export = generate_export("hospital_a", 30, seed=21)
    src.insert(export.iloc[:20])
    url = make_url(pg_url)
    home = NodeHome.init(tmp_path / "hospital_a", "hospital_a")
    ops.add_data_model(home, REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json")
    doc = json.loads((REPO_ROOT / "include" / "schemas" / "profiles" / "hospital_a.json").read_text())
    doc |= {"source": "ehr_a", "database": src.database_section({"airflow_conn_id": "ehr_hospital_a"})}
    (home.profiles_dir / "ehr_a.json").write_text(json.dumps(doc))
    env = {"MIPFLOW_SITE": "node", "MIPFLOW_NODE_HOME": str(home.root),
           "MIPFLOW_NODE_WATCH_SECONDS": str(WATCH_SECONDS),
           "AIRFLOW_CONN_EHR_HOSPITAL_A": json.dumps({
               "conn_type": "postgres", "host": url.host, "port": url.port, "login": url.username,
               "password": PASSWORD, "schema": url.database})}
    store = open_store(home)
    with central_airflow(tmp_path / "airflow", env, dag_ids=CHAIN) as ready:
        server = ready()
        with server.client() as client:
            def capture_runs() -> list[dict]:
                return client.get("/api/v2/dags/node_capture/dagRuns").json()["dag_runs"]

            # the 20 rows were never captured: the watcher's first check sets the chain off by itself
            _wait("the first load", lambda: len(stored(store)) == 20, 240, server)
            runs = capture_runs()
            assert runs and {r["run_type"] for r in runs} == {"asset_triggered"}  # nobody triggered a run

            committed = time.monotonic()
            src.insert(export.iloc[20:21])
            loaded = _wait("the committed row's load", lambda: len(stored(store)) == 21, 120, server)
            print(f"commit -> loaded at the node (watcher every {WATCH_SECONDS}s, four DAG runs): "
                  f"{loaded - committed:.1f}s")
            _wait("the load's runs to end", lambda: all(r["state"] in ("success", "failed") for r in capture_runs()),
                  60, server)
            settled = len(capture_runs())
            time.sleep(4 * WATCH_SECONDS)  # an unchanged source: checks, no run
            assert len(capture_runs()) == settled
            assert all(r["state"] == "success" for r in capture_runs())
    log = server.log.read_text(errors="replace")
    assert PASSWORD not in log and export["last_name"][20] not in log
    src.engine.dispose()
