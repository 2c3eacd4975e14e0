"""Failure records of mipflow's scheduled tasks: what is recorded, where, and what may leave a site.

A scheduler (the Airflow package's ``FailureNotifier``, in
``mipflow_airflow.notifications``) reads its own task context and hands the
facts to :func:`failure_record`; this module decides what is safe to keep and
where it goes, with no scheduler code:

1. :func:`failure_record` builds a structured record: DAG, task, run, try, the
   exception's type and, for mipflow's own errors and the scheduler's "fail"
   exceptions, its message (their messages are written by us and carry no data
   values; the message of any other exception, e.g. a pandas error quoting a
   cell, is withheld and stays in the task log);
2. :func:`write_record` appends it as one JSON line to :func:`notify_file`:
   ``MIPFLOW_NOTIFY_FILE``, else ``notifications.jsonl`` in the node home
   (node DAGs) or the central home;
3. :func:`webhook_payload` is what may be POSTed elsewhere (:func:`post_webhook`):
   a node's record *without* the message, since it leaves the node and a
   landing file's name (which can carry a patient's name) may appear in an
   ingestion error.

Used by both sites, so it sits beside ``exceptions`` rather than under ``node`` or ``central``.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

NOTIFY_FILE = "notifications.jsonl"
#: Exception types whose messages are ours (no data values): the scheduler's "fail now" types.
#: mipflow's own (:class:`mipflow.exceptions.MipflowError`) are safe too.
SAFE_MESSAGE_TYPES = ("AirflowFailException", "AirflowTaskTimeout", "AirflowException", "AirflowSensorTimeout")
MAX_MESSAGE = 500
WITHHELD = "withheld (it may quote data values); see the task log"


def message_is_safe(exc: BaseException) -> bool:
    """Whether ``exc``'s message is ours (mipflow's or the scheduler's fail types), so it may be recorded."""
    from mipflow.exceptions import MipflowError

    return isinstance(exc, MipflowError) or any(t.__name__ in SAFE_MESSAGE_TYPES for t in type(exc).__mro__)


def failure_record(*, dag_id: str | None, task_id: str | None, run_id: str | None,
                   map_index: int | None = None, try_number: int | None = None, max_tries: int | None = None,
                   triggered_by: str | None = None, exception: Any = None, log_url: str | None = None,
                   node_home: str = "", now: datetime | None = None) -> dict[str, Any]:
    """A JSON-ready description of one failed task instance (no data values).

    Parameters
    ----------
    dag_id, task_id, run_id, map_index, try_number, max_tries, log_url : optional
        The failed task instance as the scheduler names it.
    triggered_by : str, optional
        The user who triggered the run (``None`` for scheduled runs).
    exception : BaseException or str, optional
        What the task raised; a string (some schedulers hand one over) is always withheld.
    node_home : str
        The node home of a node DAG's run; empty at the central site.
    now : datetime, optional
        The record's time (default: now, UTC).

    Returns
    -------
    dict
        ``event``, ``at``, ``site`` (``"node"`` or ``"central"``), the fields above,
        ``exception`` (the type's name) and ``message`` (``None``, ours, or withheld).
    """
    record: dict[str, Any] = {
        "event": "task_failed",
        "at": (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "site": "node" if node_home else "central",
        "dag_id": dag_id,
        "task_id": task_id,
        "run_id": run_id,
        "map_index": map_index,
        "try_number": try_number,
        "max_tries": max_tries,
        "triggered_by": triggered_by,
        "exception": type(exception).__name__ if exception is not None else None,
        "message": None,
        "log_url": log_url,
    }
    if isinstance(exception, BaseException):
        record["message"] = str(exception)[:MAX_MESSAGE] if message_is_safe(exception) else WITHHELD
    elif exception is not None:
        record["exception"] = "error"
        record["message"] = WITHHELD
    return record


def notify_file(node_home: str = "", environ: Mapping[str, str] | None = None) -> Path:
    """Where failure records are appended (``MIPFLOW_NOTIFY_FILE``, else the node or central home).

    Parameters
    ----------
    node_home : str
        The failed run's node home (empty at the central site); ``MIPFLOW_NODE_HOME`` otherwise.
    environ : mapping, optional
        The environment to read (default ``os.environ``).
    """
    env = os.environ if environ is None else environ
    if env.get("MIPFLOW_NOTIFY_FILE"):
        return Path(env["MIPFLOW_NOTIFY_FILE"])
    home = node_home or env.get("MIPFLOW_NODE_HOME", "")
    if home:
        return Path(home) / NOTIFY_FILE
    return Path(env.get("MIPFLOW_CENTRAL_HOME") or Path.cwd() / "var" / "central") / NOTIFY_FILE


def write_record(path: Path, record: Mapping[str, Any]) -> None:
    """Append ``record`` as one JSON line (the file is created mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True, default=str) + "\n")


def webhook_payload(record: Mapping[str, Any]) -> dict[str, Any]:
    """What of ``record`` may leave the site: a node's record loses its message."""
    payload = dict(record)
    if record.get("site") == "node":
        payload.pop("message", None)
    return payload


def post_webhook(url: str, payload: Mapping[str, Any], *, token: str | None = None, timeout: float = 10.0) -> int:
    """POST ``payload`` as JSON to ``url`` (``token`` as a bearer token); returns the HTTP status code."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(url, json=dict(payload), headers=headers, timeout=timeout)
    return response.status_code
