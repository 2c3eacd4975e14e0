"""Fixtures shared by the whole suite.

Airflow reads its configuration when first imported, so the environment for a
private, per-worker Airflow home is set here, before any test imports it.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = (REPO_ROOT.parent / "shared").resolve()
PG_ADMIN_URL = os.environ.get("MIPFLOW_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def _cache_bytecode() -> None:
    """Where the environment says not to write bytecode (``PYTHONDONTWRITEBYTECODE=1``, as the shared
    test machine sets it), every process of the run (each xdist worker, node services, Airflow's
    components and task processes) compiles this checkout's modules from source, and each worker
    rewrites and compiles every test module's asserts again at collection: about 11 s of CPU per worker
    for the collection alone.  Here the bytecode goes instead to a cache outside the checkout
    (``MIPFLOW_TEST_CACHE/pycache``, keyed by each source's absolute path and checked against its
    mtime and size, as any ``__pycache__``), for this process and the ones it starts; the working tree
    stays free of ``__pycache__``.  ``MIPFLOW_TEST_BYTECODE=0`` keeps the environment's choice."""
    if not sys.dont_write_bytecode or os.environ.get("MIPFLOW_TEST_BYTECODE") == "0":
        return
    cache = Path(os.environ.get("MIPFLOW_TEST_CACHE", Path(tempfile.gettempdir()) / "mipflow-test-cache"))
    prefix = str(cache / "pycache")
    sys.pycache_prefix, sys.dont_write_bytecode = prefix, False
    os.environ["PYTHONPYCACHEPREFIX"] = prefix
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


_cache_bytecode()
_worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
_airflow_home = Path(tempfile.mkdtemp(prefix=f"mipflow-airflow-{_worker}-"))
os.environ["AIRFLOW_HOME"] = str(_airflow_home)
os.environ["AIRFLOW_CONFIG"] = str(REPO_ROOT / "airflow.cfg")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO_ROOT / "plugins")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_airflow_home / 'airflow.db'}"
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.pop("MIPFLOW_NODE_HOME", None)
os.environ["MIPFLOW_TASK_RETRIES"] = "0"  # a failing task fails the test at once
if str(REPO_ROOT / "plugins") not in sys.path:  # Airflow puts the plugins folder on sys.path too
    sys.path.insert(0, str(REPO_ROOT / "plugins"))
# subprocesses (node services, Airflow commands) import this checkout's code too, not
# whatever the virtualenv's editable install points at (e.g. another worktree)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO_ROOT / "plugins"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


def _check_each_schema_once() -> None:
    """``jsonschema.validate`` checks the schema itself (``check_schema``, against the metaschema) at every
    call before it validates the value.  Airflow validates every DAG param that way whenever it compares
    or prints a DAG's params, which ``dag.test()`` does for every DAG of the folder on every call (it
    re-serialises the bundle): most of a dag.test() run's CPU went to checking the same few schemas
    again.  Here a schema that passed its check once is not checked again (one that fails is checked,
    and fails, every time); the value is validated at every call, as before."""
    import jsonschema
    from jsonschema import exceptions, validators

    passed: set = set()

    def validate(instance, schema, cls=None, *args, **kwargs):
        if cls is None:
            cls = validators.validator_for(schema)
        try:
            key = (cls, json.dumps(schema, sort_keys=True))
        except (TypeError, ValueError):
            key = None
        if key is None or key not in passed:
            cls.check_schema(schema)
            if key is not None:
                passed.add(key)
        error = exceptions.best_match(cls(schema, *args, **kwargs).iter_errors(instance))
        if error is not None:
            raise error

    validate.__doc__ = validators.validate.__doc__
    jsonschema.validate = validators.validate = validate


_check_each_schema_once()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ``../shared`` folder beside the project (skips where absent)."""
    if not (SHARED_DIR / "data").is_dir():
        pytest.skip("../shared is not present beside the project")
    return SHARED_DIR


@pytest.fixture(scope="session")
def dementia_model(shared_dir: Path):
    from mipflow.protocol.datamodel import load_data_model

    return load_data_model(shared_dir / "data" / "dementia_v_0_1" / "CDEsMetadata.json")


@pytest.fixture(scope="session")
def stroke_model_path() -> Path:
    return REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json"


def _pg_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database (dropped afterwards).

    Skips when no server is reachable, except in CI (``CI=true``), where the
    PostgreSQL tests must run.
    """
    if not _pg_reachable():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but no PostgreSQL server at 127.0.0.1:5432")
        pytest.skip("no PostgreSQL server at 127.0.0.1:5432")
    import sqlalchemy as sa

    name = f"mipflow_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


MARIADB_ADMIN_URL = os.environ.get("MIPFLOW_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/")


def _mariadb_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 3306), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def mariadb_url():
    """A fresh MariaDB database (dropped afterwards).

    Skips when no server is reachable, except in CI (``CI=true``), where the
    MariaDB tests must run.
    """
    if not _mariadb_reachable():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but no MariaDB server at 127.0.0.1:3306")
        pytest.skip("no MariaDB server at 127.0.0.1:3306")
    import sqlalchemy as sa

    name = f"mipflow_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(MARIADB_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    url = MARIADB_ADMIN_URL.rstrip("/") + "/" + name + "?charset=utf8mb4"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """Each store-backed test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated Airflow metadata DB in this worker's private Airflow home.

    Migrating takes seconds per worker; the first worker to need it migrates its own DB and leaves a
    copy as a template (:func:`_airflow_template`), which later workers and runs copy page by page
    into their DB instead.  A template is keyed by what decides its content: the Airflow and provider
    versions and the Airflow configuration."""
    import fcntl

    _dag_test_polls_briskly()
    template = _airflow_template()
    template.parent.mkdir(parents=True, exist_ok=True)
    with open(template.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other worker may be writing it
        if not template.is_file():
            from airflow.utils.db import resetdb

            resetdb()
            _sqlite_copy(_airflow_home / "airflow.db", template.with_suffix(".part"))
            os.replace(template.with_suffix(".part"), template)
            return _airflow_home
    _sqlite_copy(template, _airflow_home / "airflow.db")
    return _airflow_home


#: How long ``DAG.test()`` waits before its next pass when a pass found nothing to run (Airflow: 1 s).
DAG_TEST_POLL_SECONDS = 0.05


def _dag_test_polls_briskly() -> None:
    """``DAG.test()`` runs a DAG's tasks in this process, in passes: each pass asks the run which task
    instances are now schedulable and runs them.  When a pass finds task instances not finished but none
    scheduled (a trigger rule of a task whose upstream has just ended is settled only by the next pass),
    it sleeps a whole second before the next; about one run in three of the node chain did, for nothing,
    since nothing outside the process changes the run between two passes (no sensor, deferral or
    human-in-the-loop task in mipflow's DAGs).  Here those sleeps, and only those (the sleep called from
    ``DAG.test``'s own code), last :data:`DAG_TEST_POLL_SECONDS`; the passes, their order and every task
    run are Airflow's."""
    import time

    from airflow.sdk.definitions.dag import DAG

    if getattr(time.sleep, "_mipflow_dag_test", False):
        return
    code, sleep = DAG.test.__code__, time.sleep

    def brisk(seconds: float) -> None:
        if seconds == 1 and sys._getframe(1).f_code is code:
            seconds = DAG_TEST_POLL_SECONDS
        sleep(seconds)

    brisk._mipflow_dag_test = True
    time.sleep = brisk


def _airflow_template() -> Path:
    """Where the migrated Airflow DB for this Airflow, its providers and ``airflow.cfg`` is kept."""
    import hashlib
    from importlib import metadata

    digest = hashlib.sha256()
    for dist in sorted(metadata.distributions(), key=lambda d: d.metadata["Name"] or ""):
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith("apache-airflow"):
            digest.update(f"{name}=={dist.version}\n".encode())
    digest.update((REPO_ROOT / "airflow.cfg").read_bytes())
    for key in sorted(os.environ):  # the settings the suite adds to airflow.cfg, less the per-worker paths
        if key.startswith("AIRFLOW__") and key not in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",):
            digest.update(f"{key}={os.environ[key]}\n".encode())
    from airflow import __version__

    cache = Path(os.environ.get("MIPFLOW_TEST_CACHE", Path(tempfile.gettempdir()) / "mipflow-test-cache"))
    return cache / f"airflow-{__version__}-{digest.hexdigest()[:16]}.db"


def _sqlite_copy(source: Path, target: Path) -> None:
    """Copy a SQLite database with SQLite's backup API (consistent even while another connection has
    ``target`` open, as this worker's Airflow engine may)."""
    import sqlite3

    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


# --------------------------------------------------------------------------- scheduling: slow files first
# ``--dist loadfile`` hands each worker whole files, in the order of the collection, and refills a worker
# when it has two tests or fewer left, so a slow file with a handful of tests can start last and keep one
# worker busy alone at the end.  Left alone, pytest-xdist orders the files by their number of tests (many
# cheap parametrised cases first, the slow integration files with few tests last); instead the files go
# in decreasing order of their measured run time (``tests/durations.json``: seconds per file, from
# ``--junitxml`` of a whole run, regenerated with ``python -m tests.durations JUNIT.xml``), the longest
# processing time first.  A file not listed counts as quick.  Within a file the order is kept.

DURATIONS_FILE = Path(__file__).with_name("durations.json")


def _file_seconds() -> dict[str, float] | None:
    try:
        return json.loads(DURATIONS_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def pytest_configure(config) -> None:
    if getattr(config.option, "dist", "no") in ("loadfile", "loadscope") and _file_seconds() is not None:
        config.option.loadscopereorder = False  # keep the order below


def pytest_collection_modifyitems(session, config, items) -> None:
    seconds = _file_seconds()
    if seconds is None:
        return
    rank = {}
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        rank.setdefault(path, (-float(seconds.get(path, 0.0)), len(rank)))
    items.sort(key=lambda item: rank[item.nodeid.split("::", 1)[0]])  # stable: a file's order is kept


# --------------------------------------------------------------------------- error summaries
# The algorithm tests record their worst relative errors in ErrorSummary objects
# (tests/mipflow/algorithms/helpers.py, ``REPORTED``), printed at the end of the run. The hooks
# live here because this conftest is the one the pytest-xdist controller loads whatever paths are
# given; under xdist each worker hands its summaries to the controller when it finishes.

_SUMMARIES_MODULE = "tests.mipflow.algorithms.helpers"
_SUMMARIES_KEY = "mipflow_error_summaries"


def pytest_sessionfinish(session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    helpers = sys.modules.get(_SUMMARIES_MODULE)  # not imported: nothing was recorded
    if workeroutput is not None and helpers is not None:
        workeroutput[_SUMMARIES_KEY] = {title: summary.state() for title, summary in helpers.REPORTED.items()}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    states = getattr(node, "workeroutput", {}).get(_SUMMARIES_KEY)
    if states:
        from tests.mipflow.algorithms.helpers import reported_summary

        for title, state in states.items():
            reported_summary(title).merge(state)


def pytest_terminal_summary(terminalreporter) -> None:
    helpers = sys.modules.get(_SUMMARIES_MODULE)
    for title, summary in (helpers.REPORTED.items() if helpers is not None else ()):
        lines = summary.lines()
        if lines:
            terminalreporter.section(title)
            for line in lines:
                terminalreporter.write_line(line)
