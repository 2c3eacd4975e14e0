"""The federation in containers: the images `make images` builds, run as a site runs them.

Builds ``mipflow-node`` and ``mipflow-central`` with ``docker/build-images.sh`` (podman or docker; the
official Airflow image as base where it can be pulled, else the Debian-built ``mipflow-base``, kept
between runs), then runs on the host network, every port on loopback:

- three node containers (``node-init``, then the node DAGs ``node_capture -> node_depersonalise ->
  node_validate -> node_load`` run by the node image's Airflow with ``airflow dags test``, then the
  node API with HTTPS and mutual TLS, certificates made by ``mipflow tls``), feature stores on the
  machine's PostgreSQL;
- the central site: api-server, scheduler, dag-processor and a Celery worker containers, on the
  machine's PostgreSQL (metadata, Celery results) and Redis (broker), secrets as files from
  ``docker/init-secrets.sh`` read through Airflow's ``*_CMD`` options and ``AIRFLOW_CONN_*_FILE``;

runs ``federated_linear_regression`` through the central DAG (equals pooled OLS on the rows the
nodes loaded) and ``federated_logistic_regression`` while one node container is restarted (the run
keeps the ``min_nodes`` policy: its result equals the pooled fit of exactly the nodes it reports as
contributing). Skips where podman or docker cannot run containers, except in CI (``CI=true``).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from tests.airflow_server import CentralAirflow, _wait, run_dag
from tests.conftest import REPO_ROOT
from tests.integration.test_celery_deployment import (HOSPITALS, PROFILES, Databases, claim_redis_db,
                                                      REDIS_HOST, REDIS_PORT, _require_services)
from tests.nodes import PROJECT, free_port, grant_all, pin_each_other

pytestmark = [pytest.mark.containers, pytest.mark.postgres, pytest.mark.slow]

DOCKER = REPO_ROOT / "docker"
TAG = "test"
CHAIN = ("node_capture", "node_depersonalise", "node_validate", "node_load")
UID = 50000  # the images' user "airflow" (gid 0)
ROWS, BAD_ROWS = 150, 5


def container_engine() -> list[str] | None:
    """podman (with the repository's containers.conf unless CONTAINERS_CONF is set) or docker,
    whichever can run a container here."""
    for name in ("podman", "docker"):
        path = shutil.which(name)
        if path and subprocess.run([path, "info"], capture_output=True, timeout=60).returncode == 0:
            return [path]
    return None


def engine_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(DOCKER / "podman" / "containers.conf"))
    return env


class Engine:
    """The container CLI, and every container this module started (removed at the end)."""

    def __init__(self, cli: list[str], prefix: str) -> None:
        self.cli, self.prefix, self.names = cli, prefix, []

    def __call__(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([*self.cli, *args], capture_output=True, text=True, timeout=timeout, env=engine_env())
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:3])}... exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                               f"{done.stderr[-3000:]}")
        return done

    def run(self, name: str, image: str, *command: str, env: dict[str, str] | None = None,
            volumes: dict[Path, str] | None = None, detach: bool = False, timeout: float = 300):
        """``run`` on the host network (loopback ports only), as the image's user."""
        full = f"{self.prefix}-{name}"
        args = ["run", "--name", full, "--network", "host"]
        args += ["-d"] if detach else []
        for key, value in (env or {}).items():
            args += ["-e", f"{key}={value}"]
        for host, target in (volumes or {}).items():
            args += ["-v", f"{host}:{target}"]
        self.names.append(full)
        return full, self(*args, f"mipflow-{image}:{TAG}", *command, timeout=timeout)

    def logs(self, name: str, lines: int = 60) -> str:
        done = self("logs", "--tail", str(lines), name, check=False)
        return done.stdout + done.stderr

    def remove_all(self) -> None:
        if self.names:
            self("rm", "-f", "-t", "0", *self.names, check=False, timeout=120)


def chown_tree(path: Path) -> None:
    """Give the images' user the host folders it writes (the test runs as root, as podman here does)."""
    for item in [path, *path.rglob("*")]:
        os.chown(item, UID, 0, follow_symlinks=False)


class _Containers:
    """The central containers, seen as one process by ``tests.airflow_server._wait``."""

    def __init__(self, engine: Engine, names: list[str]) -> None:
        self.engine, self.names, self.returncode = engine, names, None

    def poll(self) -> int | None:
        done = self.engine("ps", "--filter", f"name={self.engine.prefix}-central", "--format", "{{.Names}}",
                           check=False)
        running = set(done.stdout.split())
        stopped = [name for name in self.names if name not in running]
        if stopped and done.returncode == 0:
            self.returncode = 1
            return 1
        return None


class ContainerAirflow(CentralAirflow):
    engine: Engine
    names: list[str]

    def tail(self, lines: int = 40) -> str:
        return "\n".join(f"--- {name} ---\n{self.engine.logs(name, lines)}" for name in self.names)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    cli = container_engine()
    if cli is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but neither podman nor docker can run containers (.ci/run installs podman)")
        pytest.skip("neither podman nor docker can run containers here")
    _require_services()
    start = time.monotonic()
    built = subprocess.run(["bash", str(DOCKER / "build-images.sh")], capture_output=True, text=True,
                           env={**engine_env(), "MIPFLOW_VERSION": TAG, "CONTAINER_ENGINE": cli[0]},
                           timeout=1800)
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    print(f"\nimages built in {time.monotonic() - start:.0f} s:\n"
          + "\n".join(line for line in built.stdout.splitlines() if line.startswith(("build-images:", "localhost/",
                                                                                    "mipflow-"))))
    engine = Engine(cli, f"mipflow-test-{uuid.uuid4().hex[:8]}")
    yield engine
    engine.remove_all()


def prepare_node(engine: Engine, root: Path, hospital: str, db_url: str, seed: int) -> tuple[Path, int]:
    """``node-init`` in the node image, then the admin's set-up and the demo export in landing/."""
    from mipflow.demo.synth import generate_consent, generate_export, write_export
    from mipflow.node.home import NodeHome

    data = root / hospital
    data.mkdir()
    chown_tree(data)
    engine.run(f"init-{hospital}", "node", "node-init", volumes={data: "/data"}, env={
        "MIPFLOW_NODE_NAME": hospital, "MIPFLOW_NODE_DB_URL": db_url,
        "MIPFLOW_NODE_DATA_MODELS": "/opt/mipflow/include/schemas/stroke_v_0_1/CDEsMetadata.json"})
    home = NodeHome(data / "node")
    home.set_setting("settle_seconds", "0")
    shutil.copyfile(PROFILES / f"{hospital}.json", home.profiles_dir / f"{hospital}.json")
    export = generate_export(hospital, ROWS, seed=seed, bad_rows=BAD_ROWS)
    (home.landing_dir / hospital).mkdir()
    write_export(home.landing_dir / hospital / "export1.csv", export)
    generate_consent(export, seed=seed).to_csv(home.consent_path, index=False)
    return home.root, len(export)


def ingest_through_node_dags(engine: Engine, root: Path, hospital: str) -> subprocess.Popen:
    """The node image's Airflow runs the four node DAGs once, in order, as ``airflow dags test`` does
    (``dag.test()``; one process for the four; SQLite metadata in the node's volume)."""
    script = ("airflow db migrate >/dev/null && python -c '\n"
              "from airflow.dag_processing.dagbag import DagBag\n"
              "bag = DagBag(dag_folder=\"/opt/mipflow/dags/mipflow_node.py\")\n"
              "assert not bag.import_errors, bag.import_errors\n"
              f"for dag_id in {json.dumps(list(CHAIN))}:\n"
              "    run = bag.dags[dag_id].test()\n"
              "    print(dag_id, run.state, flush=True)\n"
              "    assert run.state == \"success\", dag_id\n'")
    name = f"{engine.prefix}-ingest-{hospital}"
    engine.names.append(name)
    args = [*engine.cli, "run", "--name", name, "--network", "host", "-v", f"{root / hospital}:/data",
            "-e", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=sqlite:////data/airflow.db",
            "-e", "AIRFLOW__CORE__EXECUTOR=LocalExecutor", f"mipflow-node:{TAG}", "bash", "-c", script]
    log = open(root / f"ingest-{hospital}.log", "wb")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=engine_env())


def tls_context(ca: Path, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    """The central side's TLS: trust the federation's CA, show the client certificate when given."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert:
        context.load_cert_chain(*cert)
    return context


def wait_https(url: str, ca: Path, cert: tuple[str, str], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    context = tls_context(ca, cert)
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", verify=context, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer at {url}")


@pytest.fixture(scope="module")
def federation(engine, tmp_path_factory):
    from mipflow.protocol.signing import issue_client

    started = time.monotonic()
    root = tmp_path_factory.mktemp("containers")
    os.chmod(root, 0o755)
    databases = Databases()
    timings: dict[str, float] = {}
    with ExitStack() as stack:
        stack.callback(databases.drop_all)
        redis_db, redis_client = claim_redis_db()
        stack.callback(redis_client.close)
        stack.callback(redis_client.flushdb)

        # --- nodes: init in the image, demo data through the node DAGs, then the node APIs over mutual TLS
        homes, exported = {}, {}
        for i, hospital in enumerate(HOSPITALS):
            homes[hospital], exported[hospital] = prepare_node(engine, root, hospital, databases.create(hospital),
                                                               seed=40 + i)
        ca = root / "ca"
        mipflow = [sys.executable, "-m", "mipflow.cli"]  # the node admin's CLI
        subprocess.run([*mipflow, "tls", "ca", str(ca)], check=True, capture_output=True)
        for home in homes.values():
            subprocess.run([*mipflow, "tls", "node", str(ca), str(home), "--require-client-cert"], check=True,
                           capture_output=True)
        subprocess.run([*mipflow, "tls", "client", str(ca), "--name", "central"], check=True, capture_output=True)
        for home in homes.values():
            grant_all(home, "admin", PROJECT)  # the REST API runs are triggered by "admin"
            # exact answers for this project (the shipped default is explore mode, ADR 0038)
            subprocess.run([*mipflow, "mode", "set", str(home), "--project", PROJECT, "standard"], check=True,
                           capture_output=True)
        pin_each_other(list(homes.values()))  # the admins pinned each other's keys (ADR 0014)
        credentials = {h: issue_client(home, "central") for h, home in homes.items()}
        chown_tree(root)

        t_ingest = time.monotonic()
        ingests = {h: ingest_through_node_dags(engine, root, h) for h in HOSPITALS}  # while the central starts
        ports = {h: free_port() for h in HOSPITALS}

        # --- the central site: secrets from init-secrets.sh, node connections as files
        secrets_dir = root / "secrets"
        subprocess.run(["bash", str(DOCKER / "init-secrets.sh"), "sites"], check=True, capture_output=True,
                       env={**os.environ, "MIPFLOW_SECRETS_DIR": str(secrets_dir)})
        central_secrets = secrets_dir / "central"
        for name in ("ca.crt", "central.crt", "central.key"):
            shutil.copyfile(ca / name, central_secrets / name)
        for hospital in HOSPITALS:
            (central_secrets / f"conn_{hospital}").write_text(json.dumps(
                {"conn_type": "mipflow_node", "host": f"https://127.0.0.1:{ports[hospital]}",
                 "login": credentials[hospital].client_id, "password": credentials[hospital].secret.hex(),
                 "extra": {"node_name": hospital, "ca_cert": "/run/secrets/ca.crt",
                           "client_cert": "/run/secrets/central.crt", "client_key": "/run/secrets/central.key"}}),
                encoding="utf-8")
        (root / "central").mkdir()
        chown_tree(secrets_dir)
        chown_tree(root / "central")
        users = json.loads((central_secrets / "airflow_passwords").read_text())
        metadata_url = databases.create("airflow")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + metadata_url,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port), "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__BASE_URL": base, "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.1",
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__CORE__FERNET_KEY_CMD": "cat /run/secrets/fernet_key",
            "AIRFLOW__API_AUTH__JWT_SECRET_CMD": "cat /run/secrets/jwt_secret",
            "AIRFLOW__API__SECRET_KEY_CMD": "cat /run/secrets/api_secret_key",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": "/run/secrets/airflow_passwords",
            "MIPFLOW_CENTRAL_HOME": "/data/central",
            "MIPFLOW_NODE_CONN_IDS": ",".join(f"mipflow_node_{h}" for h in HOSPITALS),
            "MIPFLOW_TASK_RETRIES": "0",
            **{f"AIRFLOW_CONN_MIPFLOW_NODE_{h.upper()}_FILE": f"/run/secrets/conn_{h}" for h in HOSPITALS},
        }
        volumes = {central_secrets: "/run/secrets:ro", root / "central": "/data/central"}
        t0 = time.monotonic()
        engine.run("central-migrate", "central", "migrate", env=env, volumes=volumes, timeout=600)
        names = [engine.run(f"central-{role}", "central", role, env=env, volumes=volumes, detach=True)[0]
                 for role in ("api-server", "scheduler", "dag-processor", "celery-worker")]
        for hospital, proc in ingests.items():
            assert proc.wait(timeout=900) == 0, (root / f"ingest-{hospital}.log").read_text()[-5000:]
        timings["ingest"] = time.monotonic() - t_ingest
        nodes = {}
        for hospital in HOSPITALS:
            nodes[hospital], _ = engine.run(
                f"node-{hospital}", "node", "node-api", detach=True, volumes={root / hospital: "/data"},
                env={"MIPFLOW_NODE_API_HOST": "127.0.0.1", "MIPFLOW_NODE_API_PORT": str(ports[hospital])})
        client_cert = (str(ca / "central.crt"), str(ca / "central.key"))
        for hospital in HOSPITALS:
            wait_https(f"https://127.0.0.1:{ports[hospital]}", ca / "ca.crt", client_cert, 120, nodes[hospital])
        server = ContainerAirflow(base_url=base, users=users, log=root / "none", process=_Containers(engine, names))
        server.engine, server.names = engine, names
        _wait("the api-server", server.token, 240, server)
        with server.client() as client:
            def healthy() -> bool:
                doc = client.get("/api/v2/monitor/health").json()
                return all(doc[c]["status"] == "healthy" for c in ("metadatabase", "scheduler", "dag_processor"))

            _wait("the scheduler and dag-processor", healthy, 180, server)
            for dag_id in ("federated_linear_regression", "federated_logistic_regression"):
                _wait(f"{dag_id} to be parsed", lambda: client.get(f"/api/v2/dags/{dag_id}").status_code == 200,
                      180, server)
                client.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        timings["central start"] = time.monotonic() - t0
        timings["set-up"] = time.monotonic() - started
        print("\ncontainer federation: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
        yield {"server": server, "engine": engine, "homes": homes, "exported": exported, "nodes": nodes,
               "ports": ports, "ca": ca, "client_cert": client_cert, "central": root / "central",
               "root": root, "metadata_url": metadata_url}


def store_rows(home: Path, columns: list[str]) -> pd.DataFrame:
    from mipflow.node.home import NodeHome

    engine = sa.create_engine(NodeHome(home).db_url)
    try:
        with engine.connect() as conn:
            return pd.read_sql(sa.text(f"SELECT {', '.join(columns)} FROM dm_stroke_0_1"), conn)
    finally:
        engine.dispose()


def analysis_conf(algorithm_inputs: dict, **settings) -> dict:
    return {"data_model": "stroke:0.1", "datasets": list(HOSPITALS), "filters": None, "project": PROJECT,
            "nodes": [f"mipflow_node_{h}" for h in HOSPITALS], **algorithm_inputs, **settings}


def test_the_demo_data_went_through_the_node_dags_in_the_node_image(federation):
    from mipflow.node.home import NodeHome
    from mipflow.node.store.feature_store import open_store

    for hospital, home in federation["homes"].items():
        store = open_store(NodeHome(home))
        try:
            assert store.engine.url.get_backend_name() == "postgresql"
            (batch,) = store.batches()
            assert batch["status"] == "loaded", batch["message"]
            assert batch["rows_in"] == federation["exported"][hospital]
            assert batch["rows_in"] == (batch["loaded"] + batch["quarantined"] + batch["no_consent"]
                                        + batch["duplicates"])
            assert batch["quarantined"] > 0 and batch["loaded"] > 0
            assert store.count_rows(store.data_model("stroke:0.1")) == batch["loaded"]
        finally:
            store.dispose()


def test_the_node_apis_serve_mutual_tls_only(federation):
    url = f"https://127.0.0.1:{federation['ports']['hospital_a']}"
    ca = federation["ca"] / "ca.crt"
    with_cert = tls_context(ca, federation["client_cert"])
    assert httpx.get(url + "/health", verify=with_cert, timeout=5).status_code == 200
    with pytest.raises(httpx.HTTPError):  # no client certificate: the handshake or the request is refused
        httpx.get(url + "/health", verify=tls_context(ca), timeout=5).raise_for_status()
    with pytest.raises(httpx.TransportError):  # plain HTTP is not served
        httpx.get(url.replace("https", "http") + "/health", timeout=5)


#: Both analyses ask the same question (the nodes' differencing control refuses a second cohort that
#: differs from an answered one by a few rows); logistic regression runs several rounds to restart in.
LOGISTIC = {"y": "death_90d", "x": ["age", "nihss_admission"], "positive_class": "yes"}


def pooled_logit(homes: list[Path]) -> tuple[int, np.ndarray]:
    """statsmodels' Logit on the rows the given nodes loaded: (rows, coefficients)."""
    import statsmodels.api as sm

    data = pd.concat([store_rows(h, ["death_90d", "age", "nihss_admission"]) for h in homes],
                     ignore_index=True).dropna()
    fit = sm.Logit((data["death_90d"] == "yes").astype(float), sm.add_constant(data[["age", "nihss_admission"]])
                   ).fit(disp=0, method="newton", tol=1e-12, maxiter=100)
    return len(data), fit.params.to_numpy()


def test_an_analysis_through_the_central_containers_equals_the_pooled_fit(federation):
    from mipflow.central.results import ResultStore

    server = federation["server"]
    t0 = time.monotonic()
    run = run_dag(server, "federated_logistic_regression", analysis_conf(LOGISTIC, min_nodes=3), timeout=240)
    print(f"\nlogistic regression through the central containers: {time.monotonic() - t0:.1f} s")
    assert run["state"] == "success", server.tail()
    stored = ResultStore(federation["central"]).get(run["dag_run_id"])
    assert stored is not None and set(stored["contributed"]) == set(HOSPITALS)
    rows, coefficients = pooled_logit(list(federation["homes"].values()))
    assert stored["result"]["n_obs"] == rows == sum(stored["contributed"].values())
    np.testing.assert_allclose(stored["result"]["coefficients"], coefficients, rtol=1e-6)


def step_requests(home: Path) -> int:
    """The algorithm steps the node's audit log records (allowed or refused)."""
    from mipflow.node.controls.audit import AUDIT_FILE, read_records

    return sum(1 for record in read_records(Path(home) / AUDIT_FILE) if record.get("algorithm"))


def test_a_node_container_restarted_mid_analysis_keeps_the_min_nodes_policy(federation):
    """hospital_b's container is killed right after it answered the analysis's first step and started
    again (min_nodes=2): the run excludes it as unavailable and restarts without it, or finishes with
    it back; either way its result is the pooled fit of exactly the nodes it names as contributing."""
    from mipflow.central.results import ResultStore

    server, engine = federation["server"], federation["engine"]
    victim, home = "hospital_b", federation["homes"]["hospital_b"]
    container = federation["nodes"][victim]
    pid = int(engine("inspect", "--format", "{{.State.Pid}}", container).stdout.strip())
    before = step_requests(home)
    events: dict[str, float] = {}

    def kill_after_first_step() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if step_requests(home) > before:
                os.kill(pid, signal.SIGKILL)  # the container's init: the container stops at once
                events["killed"] = time.time()
                engine("wait", container, timeout=60)
                engine("start", container, timeout=120)
                events["started"] = time.time()
                return
            time.sleep(0.005)

    worker = threading.Thread(target=kill_after_first_step, daemon=True)
    worker.start()
    run = run_dag(server, "federated_logistic_regression", analysis_conf(LOGISTIC, min_nodes=2), timeout=300)
    worker.join(timeout=180)
    assert "started" in events, "the node container was not restarted"
    assert run["state"] == "success", server.tail()
    ended = datetime.fromisoformat(run["end_date"]).timestamp()
    assert events["killed"] < ended  # the node went down while the analysis ran
    stored = ResultStore(federation["central"]).get(run["dag_run_id"])
    contributed, excluded = set(stored["contributed"]), stored.get("excluded") or {}
    print(f"\nrestart mid-analysis: contributed {sorted(contributed)}, excluded {sorted(excluded)}")
    assert len(contributed) >= 2 and contributed | set(excluded) == set(HOSPITALS)
    assert set(excluded) <= {victim}
    assert all(reason.startswith("unavailable") for reason in excluded.values()), excluded
    rows, coefficients = pooled_logit([federation["homes"][h] for h in sorted(contributed)])
    assert stored["result"]["n_obs"] == rows == sum(stored["contributed"].values())
    np.testing.assert_allclose(stored["result"]["coefficients"], coefficients, rtol=1e-6)
    # the restarted container serves again, from the same home
    wait_https(f"https://127.0.0.1:{federation['ports'][victim]}", federation["ca"] / "ca.crt",
               federation["client_cert"], 120, victim)
