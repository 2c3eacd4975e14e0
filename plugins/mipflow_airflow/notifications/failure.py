"""``FailureNotifier``: the ``on_failure_callback`` of every mipflow task.

When a task fails for good (after its retries) the notifier reads the facts
from Airflow's task context, lets :mod:`mipflow.failures` build the record (no
data values) and append it to ``notifications.jsonl`` in the node or central
home (``MIPFLOW_NOTIFY_FILE``), and, when ``notify_conn_id`` (default:
``MIPFLOW_NOTIFY_CONN_ID`` at the time of the failure) names an Airflow
connection, POSTs what may leave the site to the connection's URL (``host``,
e.g. ``https://chat.example/hook``; a ``password`` is sent as a bearer token;
extra ``{"timeout": 10}``).

A notification never fails the callback: every error is logged (by type only) and swallowed.
No mipflow import at module level: DAG files build the notifier at parse time.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Mapping

from airflow.sdk import BaseNotifier


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


class FailureNotifier(BaseNotifier):
    """Record a failed task instance in the node or central home, and optionally post it to a webhook.

    Parameters
    ----------
    notify_conn_id : str, optional
        Airflow connection of the webhook (templated).  ``None`` reads
        ``MIPFLOW_NOTIFY_CONN_ID`` when a task fails; empty means no webhook.
    """

    template_fields: Sequence[str] = ("notify_conn_id",)

    def __init__(self, *, notify_conn_id: str | None = None) -> None:
        super().__init__()
        self.notify_conn_id = notify_conn_id

    def record(self, context: Mapping[str, Any]) -> dict[str, Any]:
        """The failure record of the task instance in ``context`` (:func:`mipflow.failures.failure_record`)."""
        from mipflow.failures import failure_record

        ti = _get(context, "ti") or _get(context, "task_instance")
        dag_run = _get(context, "dag_run")
        return failure_record(
            dag_id=_get(ti, "dag_id") or _get(dag_run, "dag_id"), task_id=_get(ti, "task_id"),
            run_id=_get(ti, "run_id") or _get(dag_run, "run_id"), map_index=_get(ti, "map_index"),
            try_number=_get(ti, "try_number"), max_tries=_get(ti, "max_tries"),
            triggered_by=_get(dag_run, "triggering_user_name"), exception=_get(context, "exception"),
            log_url=_get(ti, "log_url"), node_home=self._node_home(context))

    @staticmethod
    def _node_home(context: Mapping[str, Any]) -> str:
        """A node DAG's node home (empty for a central DAG): ``MIPFLOW_NODE_HOME`` where set (a run's conf
        cannot redirect the record; the DAGs then have no ``node_home`` param), else the run's param."""
        asked = str(_get(_get(context, "params") or {}, "node_home") or "")
        if not asked and "node" not in (_get(_get(context, "dag"), "tags") or ()):
            return ""
        return os.environ.get("MIPFLOW_NODE_HOME") or asked

    def notify(self, context: Mapping[str, Any]) -> None:
        """Write the record; post it if a webhook connection is set."""
        from mipflow.failures import notify_file, webhook_payload, write_record

        record = self.record(context)
        try:
            path = notify_file(self._node_home(context))
            write_record(path, record)
            self.log.error("mipflow task failed: %s.%s (run %s, try %s): %s; record in %s", record["dag_id"],
                           record["task_id"], record["run_id"], record["try_number"], record["exception"], path)
        except OSError as exc:
            self.log.warning("could not write the failure record: %s", type(exc).__name__)
        conn_id = (os.environ.get("MIPFLOW_NOTIFY_CONN_ID", "") if self.notify_conn_id is None
                   else self.notify_conn_id).strip()
        if conn_id:
            self._post(conn_id, webhook_payload(record))

    def _post(self, conn_id: str, payload: Mapping[str, Any]) -> None:
        from airflow.sdk import BaseHook

        from mipflow.failures import post_webhook

        try:
            conn = BaseHook.get_connection(conn_id)
            url = conn.host or ""
            if not url.startswith(("http://", "https://")):
                scheme = conn.schema if conn.schema in ("http", "https") else "https"
                url = f"{scheme}://{url}" + (f":{conn.port}" if conn.port else "")
            timeout = float((conn.extra_dejson or {}).get("timeout", 10))
            status = post_webhook(url, payload, token=conn.password or None, timeout=timeout)
            if status >= 400:
                self.log.warning("failure webhook %s answered HTTP %s", conn_id, status)
        except Exception as exc:  # noqa: BLE001 - a notification never fails the callback
            self.log.warning("failure webhook %s not reached: %s", conn_id, type(exc).__name__)
