"""What the DAG files share: task defaults, timetables, the federation pool, the node home.

Cheap to import (stdlib and ``airflow.sdk`` only, no mipflow logic): DAG files
import it at parse time.

Operations settings are environment variables read when a DAG file is parsed
(the scheduler, dag-processor and workers must see the same values;
:mod:`mipflow_airflow.settings`)::

    MIPFLOW_TASK_RETRIES              retries of every mipflow task (default 1; the tests set 0)
    MIPFLOW_TASK_RETRY_DELAY_SECONDS  wait before a retry (default 30)
    MIPFLOW_TASK_TIMEOUT_MINUTES      execution_timeout of every task (default: none)
    MIPFLOW_POOLS                     1: central tasks that call nodes run in the pool below (default 0)
    MIPFLOW_POOL                      that pool's name (default ``mipflow_federation``)
    MIPFLOW_NODE_DAGS_PAUSED          1: the node and imaging DAGs are created paused (default 0: the chains run by themselves)
    MIPFLOW_NODE_WATCH_SECONDS        seconds between the node's checks of its EHR database sources' watermarks
                                      (default 10; 0: no watcher, node_capture runs nightly only). The watcher
                                      exists only while the node home has a database source profile.
    MIPFLOW_SITE                      central: the node and imaging DAG files define nothing (ADR 0045);
                                      node or local (default): every DAG file defines its DAGs

Airflow Variables are not read at parse time (that is a database call on every
parse); Airflow's own ``AIRFLOW_VAR_*`` variables are environment variables too,
so ``AIRFLOW_VAR_MIPFLOW_TASK_RETRIES`` etc. are honoured as a fallback.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from airflow.sdk import CronTriggerTimetable, Param, get_current_context

from mipflow_airflow.notifications.failure import FailureNotifier
from mipflow_airflow.settings import number, setting

if TYPE_CHECKING:
    from mipflow.node.home import NodeHome

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
DEFAULT_POOL = "mipflow_federation"


def pools_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether central tasks that call nodes run in the federation pool (``MIPFLOW_POOLS``)."""
    return setting("MIPFLOW_POOLS", "0", environ).lower() in ("1", "true", "yes", "on")


def federation_pool(environ: Mapping[str, str] | None = None) -> str | None:
    """The pool of tasks that call nodes, or ``None`` (Airflow's ``default_pool``) when pools are off."""
    return setting("MIPFLOW_POOL", DEFAULT_POOL, environ) if pools_enabled(environ) else None


def default_args(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Retries, retry delay, timeout and the failure notifier of every mipflow task.

    Raises
    ------
    ValueError
        Naming the variable, when a setting is not a valid number (the DAG file then fails to parse).
    """
    args: dict[str, Any] = {
        "retries": number("MIPFLOW_TASK_RETRIES", "1", int, environ),
        "retry_delay": timedelta(seconds=number("MIPFLOW_TASK_RETRY_DELAY_SECONDS", "30", float, environ)),
        "on_failure_callback": FailureNotifier(),
    }
    timeout = setting("MIPFLOW_TASK_TIMEOUT_MINUTES", "", environ)
    if timeout:
        args["execution_timeout"] = timedelta(
            minutes=number("MIPFLOW_TASK_TIMEOUT_MINUTES", timeout, float, environ, minimum=0.01))
    return args


def node_dags_paused(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the node DAGs are created paused (``MIPFLOW_NODE_DAGS_PAUSED``, default no).

    One switch for the whole chain: an Asset event reaches only unpaused DAGs
    (a paused stage never sees it), so the four DAGs are paused or not together.
    """
    return setting("MIPFLOW_NODE_DAGS_PAUSED", "0", environ).lower() in ("1", "true", "yes", "on")


def daily_at(expression: str) -> CronTriggerTimetable:
    """A cron timetable (UTC) for a DAG without ``start_date`` that never runs a past slot.

    Its first run is the next ``expression`` time after the DAG is first seen or unpaused, never the
    one before.  ``run_immediately`` is a zero timedelta, not ``False``: Airflow 3.3 treats ``False``
    like ``None`` and still runs a slot up to 10% of the period in the past at once (2.4 h for a daily
    cron), while a zero timedelta never reaches back (ADR 0037).
    """
    return CronTriggerTimetable(expression, timezone="UTC", run_immediately=timedelta(0))


#: What ``MIPFLOW_SITE`` may say: a central site, a hospital node, or one machine playing both (local).
SITES = ("local", "central", "node")


def site(environ: Mapping[str, str] | None = None) -> str:
    """This Airflow's site (``MIPFLOW_SITE``, default ``local``).

    Raises
    ------
    ValueError
        Naming the variable, for another value (the DAG file then fails to parse, visibly).
    """
    value = setting("MIPFLOW_SITE", "local", environ).lower()
    if value not in SITES:
        raise ValueError(f"MIPFLOW_SITE={value!r} must be one of {', '.join(SITES)}")
    return value


def site_runs(kind: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether DAGs of ``kind`` (``"node"``: capture, imaging) belong to this site: a central site shows
    only the central DAGs; a node, and a local site, show the node's too."""
    here = site(environ)
    return kind == "central" or here in ("local", kind)


#: Default seconds between the node's watermark checks (``MIPFLOW_NODE_WATCH_SECONDS``).
NODE_WATCH_SECONDS = "10"


def database_sources_configured(home: str | Path) -> bool:
    """Whether the node home has a source profile with a ``database`` section (``profiles/*.json``).

    Read when the node DAG file is parsed (a directory listing and a few small
    JSON files, stdlib only; no database, no mipflow import), so that the watcher
    exists exactly while there is a source to watch: adding or removing a
    database profile turns it on or off at the next parse.
    """
    try:
        paths = sorted((Path(home) / "profiles").glob("*.json"))  # NodeHome.profiles_dir
    except OSError:
        return False
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
            if '"database"' in text and isinstance(json.loads(text).get("database"), dict):
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


def node_watch_seconds(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between the node's EHR watermark checks, or ``None`` when there is no watcher.

    ``None`` when ``MIPFLOW_NODE_WATCH_SECONDS`` is 0, when ``MIPFLOW_NODE_HOME``
    is unset, or when that home has no database source profile.

    Raises
    ------
    ValueError
        Naming the variable, when it is not a number, or is below 1 and not 0.
    """
    seconds = number("MIPFLOW_NODE_WATCH_SECONDS", NODE_WATCH_SECONDS, float, environ)
    if seconds == 0:
        return None
    if seconds < 1:
        raise ValueError(f"MIPFLOW_NODE_WATCH_SECONDS={seconds:g} must be at least 1 (0: no watcher)")
    home = (os.environ if environ is None else environ).get("MIPFLOW_NODE_HOME", "")
    return seconds if home and database_sources_configured(home) else None


def node_params(environ: Mapping[str, str] | None = None) -> dict[str, Param]:
    """The node DAGs' trigger-form parameters: none where ``MIPFLOW_NODE_HOME`` is set.

    A node's home is the deployment's (``MIPFLOW_NODE_HOME``), not a run's: where it is set, the
    trigger form has no ``node_home`` field, and :func:`node_home` fails a run whose conf names
    another folder.  Without it (development, ``dag.test()`` in the tests, the demo's several
    hospitals in one Airflow) ``node_home`` is a parameter.
    """
    if (os.environ if environ is None else environ).get("MIPFLOW_NODE_HOME", ""):
        return {}
    return {"node_home": Param("", type="string", title="Node home",
                               description="Folder made by `mipflow node init` (MIPFLOW_NODE_HOME is not set)")}


#: Why a run that names another node home fails (the folder it named is not repeated).
NODE_HOME_FIXED = ("this node's home is set by MIPFLOW_NODE_HOME; a run's conf may not name another "
                   "(remove node_home from the conf)")


def configured_node_home(params: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> str:
    """The folder of the run's node home: ``MIPFLOW_NODE_HOME``, else the run's ``node_home`` param.

    Raises
    ------
    PermissionError
        With :data:`NODE_HOME_FIXED`, when ``MIPFLOW_NODE_HOME`` is set and the run's conf names another folder.
    """
    configured = (os.environ if environ is None else environ).get("MIPFLOW_NODE_HOME", "")
    asked = str(params.get("node_home") or "")
    if not configured:
        return asked
    if asked and os.path.realpath(asked) != os.path.realpath(configured):
        raise PermissionError(NODE_HOME_FIXED)
    return configured


def node_home() -> NodeHome:
    """The running DAG's :class:`mipflow.node.home.NodeHome` (call inside a task).

    Raises
    ------
    AirflowFailException
        When the run has no node home, or names another than ``MIPFLOW_NODE_HOME`` (a retry cannot help).
    """
    from airflow.sdk.exceptions import AirflowFailException

    from mipflow.node.home import NodeHome

    try:
        home = configured_node_home(get_current_context()["params"])
    except PermissionError as exc:
        raise AirflowFailException(str(exc)) from None
    if not home:
        raise AirflowFailException("no node home: set MIPFLOW_NODE_HOME or the node_home param")
    return NodeHome(home)
