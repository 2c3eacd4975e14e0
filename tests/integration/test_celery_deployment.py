"""Airflow with the CeleryExecutor (Redis broker, PostgreSQL metadata and result backend).

Starts the services the images run, through the same ``docker/entrypoint.sh`` roles
(``migrate``, ``scheduler``, ``dag-processor``, ``api-server``, ``celery-worker``), in a private
AIRFLOW_HOME on a fresh PostgreSQL database and a fresh Redis database number, and runs through
them, triggered over the REST API:

- ``federated_linear_regression`` against three real node services whose feature stores are on
  PostgreSQL: the stored result equals statsmodels OLS on the pooled rows;
- the node ingestion chain ``node_capture -> node_depersonalise -> node_validate -> node_load``
  (Assets) on a node home with a PostgreSQL store, at the same time: every row is accounted for;

and checks that every task was executed by the Celery worker (its state in Celery's result
backend). The node connections reach Airflow as files (``AIRFLOW_CONN_*_FILE``), as in the compose
file. Runs when PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) are reachable; in CI
(``CI=true``) it must run.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from tests.airflow_server import CentralAirflow, _unpaused, _wait, airflow_env, run_dag
from tests.conftest import PG_ADMIN_URL, REPO_ROOT
from tests.nodes import PROJECT, free_port, grant_all, pin_each_other, running_nodes
from tests.nodes import standard_home

pytestmark = [pytest.mark.xdist_group("celery"), pytest.mark.postgres, pytest.mark.slow]

ENTRYPOINT = REPO_ROOT / "docker" / "entrypoint.sh"
#: The Airflow services of a central (or node) site, as the containers start them.
ROLES = ("scheduler", "dag-processor", "api-server", "celery-worker")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
STROKE = REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json"
PROFILES = REPO_ROOT / "include" / "schemas" / "profiles"
HOSPITALS = ("hospital_a", "hospital_b", "hospital_c")
CHAIN = ("node_capture", "node_depersonalise", "node_validate", "node_load")
ANALYSIS_DAG = "federated_linear_regression"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _require_services() -> None:
    missing = [name for name, port in (("PostgreSQL", 5432), ("Redis", REDIS_PORT))
               if not _reachable("127.0.0.1", port)]
    if missing:
        message = f"no {' or '.join(missing)} server on 127.0.0.1"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)


@dataclass
class Databases:
    """PostgreSQL databases made for this module (dropped at the end)."""

    names: list[str] = field(default_factory=list)

    def create(self, purpose: str) -> str:
        name = f"mipflow_celery_{purpose}_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        admin.dispose()
        self.names.append(name)
        return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name

    def drop_all(self) -> None:
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for name in self.names:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def claim_redis_db():
    """A Redis database number nobody uses (empty), claimed with a marker key; flushed afterwards."""
    import redis

    numbers = list(range(1, 16))
    random.shuffle(numbers)
    token = uuid.uuid4().hex
    for number in numbers:
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number)
        if client.dbsize() == 0 and client.set("mipflow:test:claim", token, nx=True, ex=3600):
            return number, client
        client.close()
    pytest.fail("no empty Redis database number (1-15) to run the Celery test in")


class _Services:
    """The Airflow service processes, seen as one process by ``tests.airflow_server._wait``."""

    def __init__(self, procs: dict[str, subprocess.Popen]):
        self.procs = procs
        self.returncode: int | None = None

    def poll(self) -> int | None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                self.returncode = proc.returncode
                return proc.returncode
        return None


class CeleryAirflow(CentralAirflow):
    logs: list[Path]

    def tail(self, lines: int = 40) -> str:
        parts = []
        for log in self.logs:
            text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
            parts.append(f"--- {log.name} ---\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)


def start_role(role: str, env: dict[str, str], home: Path) -> subprocess.Popen:
    """Start one service as the container does: ``docker/entrypoint.sh ROLE``."""
    with open(home / f"{role}.log", "wb") as log:
        return subprocess.Popen(["bash", str(ENTRYPOINT), role], cwd=home, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def stop_all(procs: dict[str, subprocess.Popen]) -> None:
    """SIGTERM to every service's process group at once, SIGKILL to what is left after 5 s."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        for proc in procs.values():
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(proc.poll() is None for proc in procs.values()):
            time.sleep(0.1)
    for proc in procs.values():  # task processes left in a group
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def prepare_analysis_nodes(root: Path, databases: Databases) -> list:
    """Three hospitals' homes with PostgreSQL stores, their synthetic exports ingested in process."""
    from mipflow.node import ops
    from mipflow.demo.synth import generate_export, write_export

    homes = []
    for i, hospital in enumerate(HOSPITALS):
        home = standard_home(root / hospital, hospital, databases.create(hospital))
        ops.add_data_model(home, STROKE)
        path = write_export(root / f"{hospital}.csv", generate_export(hospital, 120, seed=40 + i))
        ops.ingest(home, [path], profile=PROFILES / f"{hospital}.json")
        grant_all(home.root, "admin", PROJECT)  # the REST API runs are triggered by "admin"
        homes.append(home)
    return homes


def prepare_ingestion_node(root: Path, databases: Databases):
    """A node home (PostgreSQL store) with one export and a consent registry in its landing folder."""
    from mipflow.node import ops
    from mipflow.demo.synth import generate_consent, generate_export, write_export

    home = standard_home(root / "ingest_node", "hospital_b", databases.create("ingest"))
    home.set_setting("settle_seconds", "0")
    ops.add_data_model(home, STROKE)
    shutil.copyfile(PROFILES / "hospital_b.json", home.profiles_dir / "hospital_b.json")
    export = generate_export("hospital_b", 60, seed=11, bad_rows=5)
    (home.landing_dir / "hospital_b").mkdir()
    write_export(home.landing_dir / "hospital_b" / "export1.csv", export)
    generate_consent(export, seed=3).to_csv(home.consent_path, index=False)
    return home, len(export)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    _require_services()
    from mipflow.protocol.signing import issue_client

    root = tmp_path_factory.mktemp("celery")
    af_home = root / "airflow"
    af_home.mkdir()
    databases = Databases()
    with ExitStack() as stack:
        stack.callback(databases.drop_all)
        redis_db, redis_client = claim_redis_db()
        stack.callback(redis_client.close)
        stack.callback(redis_client.flushdb)
        metadata_url = databases.create("airflow")
        port = free_port()
        users = {"admin": uuid.uuid4().hex, "viewer": uuid.uuid4().hex}
        env = airflow_env(af_home, port, users)
        env.update({
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + metadata_url,  # postgresql+psycopg2://
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "3600",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),  # others may run Airflow here
            "AIRFLOW__API__WORKERS": "1",
            "MIPFLOW_CENTRAL_HOME": str(root / "central"),
            "MIPFLOW_NODE_CONN_IDS": ",".join(f"mipflow_node_{h}" for h in HOSPITALS),
        })

        # the metadata database is migrated while the nodes are prepared
        migrate = start_role("migrate", env, af_home)
        stack.callback(stop_all, {"migrate": migrate})
        homes = prepare_analysis_nodes(root, databases)
        ingest_home, exported = prepare_ingestion_node(root, databases)
        env["MIPFLOW_NODE_HOME"] = str(ingest_home.root)
        pin_each_other([h.root for h in homes])  # the admins pinned each other's keys (ADR 0014)
        urls = stack.enter_context(running_nodes([h.root for h in homes]))
        secrets_dir = root / "secrets"  # stands in for /run/secrets
        secrets_dir.mkdir(mode=0o700)
        for home, url in zip(homes, urls):
            cred = issue_client(home.root, "central")
            conn_file = secrets_dir / f"conn_{home.name}"
            conn_file.write_text(json.dumps(
                {"conn_type": "mipflow_node", "host": url, "login": cred.client_id,
                 "password": cred.secret.hex(), "extra": {"node_name": home.name}}), encoding="utf-8")
            env[f"AIRFLOW_CONN_MIPFLOW_NODE_{home.name.upper()}_FILE"] = str(conn_file)
        assert migrate.wait(timeout=240) == 0, (af_home / "migrate.log").read_text()[-3000:]

        procs = {}
        stack.callback(stop_all, procs)
        for role in ROLES:
            procs[role] = start_role(role, env, af_home)
        server = CeleryAirflow(base_url=f"http://127.0.0.1:{port}", users=users, log=af_home / "scheduler.log",
                               process=_Services(procs))
        server.logs = [af_home / f"{role}.log" for role in ROLES]
        _wait("the api-server", server.token, 150, server)
        with server.client() as client:
            def healthy() -> bool:
                doc = client.get("/api/v2/monitor/health").json()
                return all(doc[c]["status"] == "healthy" for c in ("metadatabase", "scheduler", "dag_processor"))

            _wait("the scheduler and dag-processor", healthy, 120, server)
            for dag_id in (ANALYSIS_DAG, *CHAIN):
                _wait(f"{dag_id} to be parsed", lambda: client.get(f"/api/v2/dags/{dag_id}").status_code == 200,
                      120, server)
            _wait(f"{ANALYSIS_DAG} to be unpaused", lambda: _unpaused(client, ANALYSIS_DAG), 60, server)
            # the node DAGs are created unpaused; no past nightly run fires: node_capture is triggered
            assert {d: client.get(f"/api/v2/dags/{d}").json()["is_paused"] for d in CHAIN} == dict.fromkeys(
                CHAIN, False)
            client.post("/api/v2/dags/node_capture/dagRuns", json={"logical_date": None}).raise_for_status()
        # the later stages follow node_capture on their Assets, while the analysis test runs
        yield {"server": server, "homes": homes, "central": root / "central", "ingest_home": ingest_home,
               "exported": exported, "metadata_url": metadata_url, "redis": redis_client, "af_home": af_home}


def celery_task_states(metadata_url: str) -> list[str]:
    """States of the tasks the Celery worker ran (Celery's database result backend)."""
    engine = sa.create_engine(metadata_url)
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(sa.text("SELECT status FROM celery_taskmeta"))]
    finally:
        engine.dispose()


def wait_celery_successes(deployment, expected: int) -> None:
    """Wait until Celery's result backend holds ``expected`` successful tasks (the worker stores a
    task's result just after the task instance reports its own state to Airflow)."""
    _wait(f"{expected} successful Celery tasks",
          lambda: celery_task_states(deployment["metadata_url"]).count("SUCCESS") >= expected,
          30, deployment["server"])
    assert celery_task_states(deployment["metadata_url"]).count("SUCCESS") == expected


def task_count(server: CeleryAirflow, dag_id: str, run_id: str) -> int:
    with server.client() as client:
        doc = client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()
    states = {ti["task_id"]: ti["state"] for ti in doc["task_instances"]}
    assert set(states.values()) == {"success"}, states
    return len(states)


@pytest.fixture(scope="module")
def analysis_run(deployment) -> dict:
    """The analysis DAG run through the Celery deployment (once, whichever test asks first)."""
    server = deployment["server"]
    run = run_dag(server, ANALYSIS_DAG, {
        "data_model": "stroke:0.1", "datasets": list(HOSPITALS), "filters": None, "project": PROJECT,
        "nodes": [f"mipflow_node_{h}" for h in HOSPITALS], "min_nodes": 3,
        "y": "mrs_90d", "x": ["age", "nihss_admission"]}, timeout=120)
    assert run["state"] == "success", server.tail()
    return run


def _chain_runs(deployment) -> dict:
    """The node ingestion chain's runs, once node_load has run (or a stage failed)."""
    server = deployment["server"]

    # node_capture was triggered by the fixture; each later stage runs on its predecessor's Asset
    def chain_runs() -> dict | None:
        with server.client() as client:
            runs = {dag_id: client.get(f"/api/v2/dags/{dag_id}/dagRuns").json()["dag_runs"] for dag_id in CHAIN}
        if any(r["state"] == "failed" for rs in runs.values() for r in rs):
            return runs
        done = runs["node_load"] and all(r["state"] == "success" for rs in runs.values() for r in rs)
        return runs if done else None

    return _wait("node_capture -> ... -> node_load", chain_runs, 180, server)


def test_federated_linear_regression_through_celery_equals_pooled_ols(deployment, analysis_run):
    import statsmodels.api as sm

    from mipflow.central.results import ResultStore

    run = analysis_run

    store = ResultStore(deployment["central"])
    stored = store.get(run["dag_run_id"])
    assert stored is not None and set(stored["contributed"]) == set(HOSPITALS)
    assert store.document(run["dag_run_id"])["triggered_by"] == "admin"
    frames = []
    for home in deployment["homes"]:
        assert home.db_url.startswith("postgresql")
        engine = sa.create_engine(home.db_url)
        with engine.connect() as conn:
            frames.append(pd.read_sql(sa.text("SELECT mrs_90d, age, nihss_admission FROM dm_stroke_0_1"), conn))
        engine.dispose()
    data = pd.concat(frames, ignore_index=True).dropna()
    fit = sm.OLS(data["mrs_90d"], sm.add_constant(data[["age", "nihss_admission"]])).fit()
    result = stored["result"]
    assert result["n_obs"] == len(data) == sum(stored["contributed"].values())
    np.testing.assert_allclose(result["coefficients"], fit.params.to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(result["std_err"], fit.bse.to_numpy(), rtol=1e-9)
    worst = max(np.max(np.abs(np.asarray(result[k]) / np.asarray(ref) - 1))
                for k, ref in (("coefficients", fit.params), ("std_err", fit.bse)))
    print(f"worst relative error vs pooled statsmodels OLS: {worst:.2e}")


def test_node_ingestion_chain_through_celery_accounts_for_every_row(deployment):
    from mipflow.node.store.feature_store import open_store

    server = deployment["server"]
    home = deployment["ingest_home"]
    runs = _chain_runs(deployment)
    assert {dag_id: [r["state"] for r in rs] for dag_id, rs in runs.items()} == \
        {dag_id: ["success"] for dag_id in CHAIN}, server.tail()
    assert runs["node_capture"][0]["run_type"] == "manual"  # one run: no surprise nightly run
    assert {runs[dag_id][0]["run_type"] for dag_id in CHAIN[1:]} == {"asset_triggered"}

    store = open_store(home)
    try:
        assert store.engine.url.get_backend_name() == "postgresql"
        (batch,) = store.batches()
        assert batch["status"] == "loaded", batch["message"]
        assert batch["rows_in"] == deployment["exported"]
        assert batch["rows_in"] == batch["loaded"] + batch["quarantined"] + batch["no_consent"] + batch["duplicates"]
        assert batch["quarantined"] > 0 and batch["loaded"] > 0
        assert store.count_rows(store.data_model("stroke:0.1")) == batch["loaded"]
    finally:
        store.dispose()


def test_every_task_ran_on_the_celery_worker(deployment, analysis_run):
    """Each task instance of every run above went through the broker to the worker, whose Celery
    task succeeded (Celery's result backend), and the broker lived in the claimed Redis database."""
    server = deployment["server"]
    _chain_runs(deployment)  # whatever order the tests run in, the chain has finished
    tasks = 0
    with server.client() as client:
        for dag_id in (ANALYSIS_DAG, *CHAIN):
            runs = client.get(f"/api/v2/dags/{dag_id}/dagRuns").json()["dag_runs"]
            assert runs and all(r["state"] == "success" for r in runs), (dag_id, runs)
            tasks += sum(task_count(server, dag_id, r["dag_run_id"]) for r in runs)
    assert tasks >= 3 + len(CHAIN)
    wait_celery_successes(deployment, tasks)
    keys = {key.decode() for key in deployment["redis"].keys("*")}
    assert "mipflow:test:claim" in keys
    assert any(key.startswith("_kombu.binding.") for key in keys), keys
