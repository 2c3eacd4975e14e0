"""Run a real central Airflow (``airflow standalone``: api-server, scheduler, dag-processor,
triggerer; LocalExecutor, SQLite) in a temporary home for end-to-end tests.

Importing this module changes nothing in the process (it does not import ``tests.conftest``, whose
import sets the suite's environment): ``bench/trigger.py`` builds its Airflow's environment with
:func:`airflow_env` too."""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from base64 import urlsafe_b64encode
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

from tests.nodes import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@dataclass
class CentralAirflow:
    base_url: str
    users: dict[str, str]
    log: Path
    process: subprocess.Popen
    env: dict[str, str] | None = None  # the environment its components run with

    def client(self, user: str = "admin", timeout: float = 10) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout,
                            headers={"Authorization": "Bearer " + self.token(user)})

    def token(self, user: str = "admin") -> str:
        resp = httpx.post(self.base_url + "/auth/token", json={"username": user, "password": self.users[user]},
                          timeout=10)
        resp.raise_for_status()
        return resp.json()["access_token"]

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group (every component and task process), then SIGKILL: a test
    Airflow in a temporary home has nothing to drain."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    try:  # components and task processes left in the group
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait(what: str, check: Any, timeout: float, server: CentralAirflow) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"airflow standalone exited ({server.process.returncode}):\n{server.tail()}")
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            last = exc
        time.sleep(0.25)
    raise RuntimeError(f"timed out waiting for {what} (last error: {last}):\n{server.tail()}")


def served(server: CentralAirflow, client: httpx.Client, method: str, url: str, *, json: Any = None,
           ok: tuple[int, ...] = (200, 201), timeout: float = 60.0) -> httpx.Response:
    """``method url`` through the REST API, its response once the status is one of ``ok``.  An api-server still
    starting, or its SQLite database busy with the scheduler and dag-processor writing ("Database error"), can
    answer 5xx (the write rolled back): retried until ``timeout`` by :func:`_wait`, then reported with the server's
    log; any other status fails at once."""
    def attempt() -> tuple[httpx.Response]:
        resp = client.request(method, url, json=json)
        if resp.is_server_error:
            resp.raise_for_status()
        if resp.status_code not in ok:
            raise AssertionError(f"{method} {url}: {resp.status_code} {resp.text[:500]}")
        return (resp,)

    return _wait(f"{method} {url}", attempt, timeout, server)[0]


def _unpaused(client: httpx.Client, dag_id: str) -> bool:
    """Unpause ``dag_id``: True once the api-server says so.  An api-server still starting (or its
    SQLite database busy with the scheduler and dag-processor writing) can answer 5xx: raised as
    ``httpx.HTTPStatusError``, which :func:`_wait` retries until its deadline and then reports; any
    other refusal (4xx: a wrong DAG id, a user without the right) fails at once."""
    resp = client.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False})
    if resp.is_server_error:
        resp.raise_for_status()
    if not resp.is_success:
        raise RuntimeError(f"unpausing {dag_id}: {resp.status_code} {resp.text[:500]}")
    return resp.json().get("is_paused") is False


#: What the tests set beyond the shipped airflow.cfg: faster parsing and heartbeats, no retries, a
#: patient execution API on a loaded CI machine.  ``airflow_env(shipped=True)`` (bench/trigger.py)
#: leaves them out, so that a benchmark measures what a deployment runs.
TEST_ONLY_SETTINGS = {
    "AIRFLOW__CORE__PARALLELISM": "4",
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.1",
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
    # a loaded CI machine answers slower than Airflow's 5 s default; a timeout there fails the task
    "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
    "MIPFLOW_TASK_RETRIES": "0",
}
#: The same settings under the name ``bench/standing_latency.py`` uses.
FAST_SETTINGS = TEST_ONLY_SETTINGS


def airflow_env(home: Path, port: int, users: dict[str, str],
                roles: dict[str, str] | None = None, *, fast: bool = True,
                shipped: bool = False) -> dict[str, str]:
    """Environment for a test Airflow in ``home`` (SQLite, LocalExecutor; api-server on ``port``):
    this process's environment without its Airflow and mipflow settings, this checkout's DAGs and
    plugins, fresh keys, fast scheduling (:data:`TEST_ONLY_SETTINGS`; ``fast=False`` or ``shipped``: the repo's
    airflow.cfg and mipflow's defaults only), and the passwords of ``users`` (name -> password; each
    name is also the user's role in the simple auth manager, e.g. "admin" and "viewer", unless ``roles``
    names another: ``{"alice": "user"}``)."""
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps(users), encoding="utf-8")
    base = f"http://127.0.0.1:{port}"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MIPFLOW_", "PYTEST"))}
    full_env.update({
        "PATH": f"{VENV_BIN}{os.pathsep}{full_env.get('PATH', '')}",
        "PYTHONPATH": str(REPO_ROOT / "plugins"),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW_CONFIG": str(REPO_ROOT / "airflow.cfg"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{name}:{(roles or {}).get(name, name)}" for name in users),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),  # >= 64 bytes for HS512
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__CORE__FERNET_KEY": urlsafe_b64encode(os.urandom(32)).decode(),
        "PYTHONUNBUFFERED": "1",
    })
    if fast and not shipped:
        full_env.update(TEST_ONLY_SETTINGS)
    return full_env


@contextmanager
def central_airflow(home: Path, env: dict[str, str], *, dag_ids: list[str], timeout: float = 150.0,
                    roles: dict[str, str] | None = None, fast: bool = True) -> Iterator[Callable[[], CentralAirflow]]:
    """Start ``airflow standalone`` in ``home`` with ``env`` added and yield at once a function that
    waits until ``dag_ids`` are parsed (and unpaused) and returns the server; stop everything on exit.

    The caller prepares the rest of its world (nodes) while Airflow starts.  Users ``admin`` and
    ``viewer`` always exist; ``roles`` adds more (name -> simple auth manager role, e.g. ``{"alice": "user"}``);
    ``fast=False``: the shipped scheduling settings (:func:`airflow_env`).
    """
    home.mkdir(parents=True, exist_ok=True)
    users = {name: secrets.token_urlsafe(12) for name in ("admin", "viewer", *(roles or {}))}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    full_env = airflow_env(home, port, users, roles, fast=fast)
    full_env.update(env)
    log_path = home / "standalone.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(VENV_BIN / "airflow"), "standalone"], cwd=home, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    server = CentralAirflow(base_url=base, users=users, log=log_path, process=proc, env=full_env)
    started = time.monotonic()

    def ready() -> CentralAirflow:
        left = lambda: max(10.0, timeout - (time.monotonic() - started))  # noqa: E731
        _wait("the api-server", lambda: server.token(), left(), server)
        with server.client() as client:
            _wait("the scheduler", lambda: client.get("/api/v2/monitor/health").json()["scheduler"]["status"]
                  == "healthy", left(), server)
            for dag_id in dag_ids:
                _wait(f"{dag_id} to be parsed", lambda: client.get(f"/api/v2/dags/{dag_id}").status_code == 200,
                      left(), server)
                _wait(f"{dag_id} to be unpaused", lambda: _unpaused(client, dag_id), left(), server)
        return server

    try:
        yield ready
    finally:
        _stop(proc)


def run_dag(server: CentralAirflow, dag_id: str, conf: dict[str, Any], timeout: float = 90.0,
            user: str = "admin") -> dict[str, Any]:
    """Trigger ``dag_id`` through the REST API as ``user``; wait for it to end; return the run."""
    with server.client(user) as client:
        resp = served(server, client, "POST", f"/api/v2/dags/{dag_id}/dagRuns",
                      json={"logical_date": None, "conf": conf})
        run_id = resp.json()["dag_run_id"]

        def finished() -> dict | None:
            doc = client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()
            return doc if doc["state"] in ("success", "failed") else None

        return _wait(f"{dag_id} run {run_id}", finished, timeout, server)


@contextmanager
def api_server(central: CentralAirflow, timeout: float = 90.0) -> Iterator[CentralAirflow]:
    """A second api-server (``airflow api-server``, one worker, core API only) on ``central``'s
    database, users and keys: the configured auth manager, which ``airflow standalone`` replaces by
    the plain ``SimpleAuthManager`` ("Forcing auth manager to SimpleAuthManager")."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**(central.env or {}), "AIRFLOW__API__PORT": str(port), "AIRFLOW__API__BASE_URL": base}
    log_path = central.log.with_name(f"api-server-{port}.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(VENV_BIN / "airflow"), "api-server", "--apps", "core", "--workers", "1",
                                 "--port", str(port)], cwd=central.log.parent, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    server = CentralAirflow(base_url=base, users=central.users, log=log_path, process=proc, env=env)
    try:
        _wait("the second api-server", lambda: server.token(), timeout, server)
        yield server
    finally:
        _stop(proc)
