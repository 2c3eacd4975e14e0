"""Failure notifications for mipflow's Airflow tasks (``on_failure_callback``).

Every node and central DAG has ``on_failure_callback`` in its ``default_args``
(:func:`mipflow_dags.on_failure`, which calls :func:`on_failure` here).  When a
task fails for good (after its retries), :func:`on_failure`

1. builds a structured record (:func:`failure_record`): DAG, task, run, try,
   the exception's type and, for mipflow's own and Airflow's fail exceptions,
   its message (their messages are written by us and carry no data values;
   the message of any other exception, e.g. a pandas error quoting a cell, is
   withheld and stays in the task log);
2. appends it as one JSON line to ``MIPFLOW_NOTIFY_FILE``, by default
   ``notifications.jsonl`` in the node home (node DAGs) or the central home;
3. if ``MIPFLOW_NOTIFY_CONN_ID`` names an Airflow connection, POSTs the record
   as JSON to its URL (connection ``host``, e.g. ``https://chat.example/hook``;
   a ``password`` is sent as a bearer token; extra ``{"timeout": 10}``).  A
   node posts the record *without* the message: it leaves the node, and a
   landing file's name (which can carry a patient's name) may appear in an
   ingestion error.

A notification must never fail the callback: every error is logged and swallowed.
No Airflow import at module level (this module is imported by the callback only).
"""
from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)

NOTIFY_FILE = "notifications.jsonl"
#: Exception types whose messages are ours (no data values): mipflow's, and Airflow's "fail now" types.
SAFE_MESSAGE_TYPES = ("AirflowFailException", "AirflowTaskTimeout", "AirflowException", "AirflowSensorTimeout")
MAX_MESSAGE = 500


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _message_is_safe(exc: BaseException) -> bool:
    from mipflow.exceptions import MipflowError

    return isinstance(exc, MipflowError) or any(t.__name__ in SAFE_MESSAGE_TYPES for t in type(exc).__mro__)


def _node_home(context: Mapping[str, Any]) -> str:
    params = _get(context, "params") or {}
    return str(_get(params, "node_home") or "")


def failure_record(context: Mapping[str, Any], *, now: datetime | None = None) -> dict[str, Any]:
    """A JSON-ready description of one failed task instance (no data values).

    Parameters
    ----------
    context : mapping
        The Airflow task context given to ``on_failure_callback`` (``ti``,
        ``dag_run``, ``exception``, ``params``, ...).  Missing keys are left ``None``.
    """
    ti = _get(context, "ti") or _get(context, "task_instance")
    dag_run = _get(context, "dag_run")
    exc = _get(context, "exception")
    record: dict[str, Any] = {
        "event": "task_failed",
        "at": (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "site": "node" if _node_home(context) else "central",
        "dag_id": _get(ti, "dag_id") or _get(dag_run, "dag_id"),
        "task_id": _get(ti, "task_id"),
        "run_id": _get(ti, "run_id") or _get(dag_run, "run_id"),
        "map_index": _get(ti, "map_index"),
        "try_number": _get(ti, "try_number"),
        "max_tries": _get(ti, "max_tries"),
        "triggered_by": _get(dag_run, "triggering_user_name"),
        "exception": type(exc).__name__ if exc is not None else None,
        "message": None,
        "log_url": _get(ti, "log_url"),
    }
    if isinstance(exc, BaseException):
        record["message"] = (str(exc)[:MAX_MESSAGE] if _message_is_safe(exc) else
                             "withheld (it may quote data values); see the task log")
    elif exc is not None:  # Airflow may hand over a string
        record["exception"] = "error"
        record["message"] = "withheld (it may quote data values); see the task log"
    return record


def notify_file(context: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Path:
    """Where failure records are appended (``MIPFLOW_NOTIFY_FILE``, else the node or central home)."""
    env = os.environ if environ is None else environ
    if env.get("MIPFLOW_NOTIFY_FILE"):
        return Path(env["MIPFLOW_NOTIFY_FILE"])
    home = _node_home(context) or env.get("MIPFLOW_NODE_HOME", "")
    if home:
        return Path(home) / NOTIFY_FILE
    return Path(env.get("MIPFLOW_CENTRAL_HOME") or Path.cwd() / "var" / "central") / NOTIFY_FILE


def write_record(path: Path, record: Mapping[str, Any]) -> None:
    """Append ``record`` as one JSON line (the file is created mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True, default=str) + "\n")


def post_webhook(url: str, record: Mapping[str, Any], *, token: str | None = None, timeout: float = 10.0) -> int:
    """POST ``record`` as JSON to ``url``; returns the HTTP status code."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(url, json=dict(record), headers=headers, timeout=timeout)
    return response.status_code


def webhook_from_connection(conn_id: str) -> tuple[str, str | None, float]:
    """(URL, bearer token or ``None``, timeout) of the Airflow connection ``conn_id``."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    host = conn.host or ""
    if not host.startswith(("http://", "https://")):
        scheme = conn.schema if conn.schema in ("http", "https") else "https"
        host = f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")
    extra = conn.extra_dejson or {}
    return host, conn.password or None, float(extra.get("timeout", 10))


def on_failure(context: Mapping[str, Any]) -> dict[str, Any]:
    """The ``on_failure_callback`` of mipflow's tasks; returns the record written."""
    record = failure_record(context)
    try:
        path = notify_file(context)
        write_record(path, record)
        log.error("mipflow task failed: %s.%s (run %s, try %s): %s; record in %s", record["dag_id"],
                  record["task_id"], record["run_id"], record["try_number"], record["exception"], path)
    except OSError as exc:
        log.warning("could not write the failure record: %s", exc)
    conn_id = os.environ.get("MIPFLOW_NOTIFY_CONN_ID", "").strip()
    if conn_id:
        payload = dict(record)
        if record["site"] == "node":
            payload.pop("message")
        try:
            url, token, timeout = webhook_from_connection(conn_id)
            status = post_webhook(url, payload, token=token, timeout=timeout)
            if status >= 400:
                log.warning("failure webhook %s answered HTTP %s", conn_id, status)
        except Exception as exc:  # noqa: BLE001 - a notification never fails the callback
            log.warning("failure webhook %s not reached: %s", conn_id, type(exc).__name__)
    return record
