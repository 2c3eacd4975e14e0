"""``NodeDataVersionTrigger``: the asset watcher that follows the nodes' data versions (ADR 0043).

An Airflow 3 event trigger (:class:`~airflow.triggers.base.BaseEventTrigger`), run by the
triggerer for the Asset :data:`mipflow_airflow.dags.NODE_DATA_ASSET` through an ``AssetWatcher``
(event-driven scheduling).  Every ``poll_seconds`` it asks each node of every active standing
analysis (:mod:`mipflow.central.standing`) for its data version of the analysis's data model,
on behalf of the analysis's researcher and project (signed calls, one per node and project per
poll), and fires an event naming the standing analyses whose versions differ from those of their
last attempt.  The Asset event schedules the ``standing_analyses`` DAG, which re-runs them.

The trigger keeps no state that matters: what was last processed is in the central registry, so
a restarted triggerer fires at most once more for a change not yet processed (the DAG finds it
unchanged and does nothing); within one trigger's life an unchanged set of due analyses fires once.
Node calls are synchronous (:class:`~mipflow.central.client.NodeClient`) and run in threads; the
connections are read asynchronously.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

log = logging.getLogger(__name__)

#: Default seconds between polls (``MIPFLOW_STANDING_POLL_SECONDS``).
POLL_SECONDS = 30.0


class _MemoClient:
    """One node's client for one poll: a metadata reply asked once per researcher and project."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.name = client.name
        self._replies: dict[tuple[str | None, str | None], Any] = {}

    def metadata(self, researcher: str | None = None, project: str | None = None) -> Any:
        key = (researcher, project)
        if key not in self._replies:
            try:
                self._replies[key] = self._client.metadata(researcher, project)
            except Exception as exc:  # noqa: BLE001 - the same failure for every analysis of this poll
                self._replies[key] = exc
        reply = self._replies[key]
        if isinstance(reply, Exception):
            raise reply
        return reply


class NodeDataVersionTrigger(BaseEventTrigger):
    """Fire when some node's data version of an active standing analysis changed.

    Parameters
    ----------
    poll_seconds : float
        Seconds between polls.
    central_home : str, optional
        The central home (default ``MIPFLOW_CENTRAL_HOME`` in the triggerer).
    results_db_url : str, optional
        The result store's database (default ``MIPFLOW_RESULTS_DB_URL``, else the home's SQLite).
    """

    def __init__(self, *, poll_seconds: float = POLL_SECONDS, central_home: str | None = None,
                 results_db_url: str | None = None) -> None:
        super().__init__()
        self.poll_seconds = float(poll_seconds)
        self.central_home = central_home
        self.results_db_url = results_db_url
        self._fired: set[Any] = set()

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("mipflow_airflow.triggers.data_version.NodeDataVersionTrigger",
                {"poll_seconds": self.poll_seconds, "central_home": self.central_home,
                 "results_db_url": self.results_db_url})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            event = await self.poll()
            if event is not None:
                yield event
            await asyncio.sleep(self.poll_seconds)

    async def poll(self) -> TriggerEvent | None:
        """One poll: the event to fire, or None (nothing due, or already fired for this state)."""
        from mipflow.central.standing import StandingRegistry, pending, version_tokens

        registry = await asyncio.to_thread(StandingRegistry, self.central_home, self.results_db_url)
        try:
            active = await asyncio.to_thread(registry.list)
            if not active:
                return None
            observed = await self._observe(active)
            due = await asyncio.to_thread(pending, registry, observed)
        finally:
            registry.dispose()
        if not due:
            return None
        versions = {sid: version_tokens(observed[sid]) for sid in due}
        state = tuple(sorted((sid, tuple(sorted(tokens.items()))) for sid, tokens in versions.items()))
        if state in self._fired:
            return None
        self._fired.add(state)
        log.info("data versions changed for standing analyses %s", ", ".join(due))
        return TriggerEvent({"due": due, "versions": versions})

    async def _observe(self, active: list[Any]) -> dict[str, Any]:
        from mipflow.central.standing import observe
        from mipflow_airflow.hooks.node import NodeHook

        clients: dict[str, Any] = {}
        failed: dict[str, str] = {}
        for conn_id in sorted({c for standing in active for c in standing.nodes}):
            try:
                clients[conn_id] = _MemoClient(await NodeHook(conn_id).aget_conn())
            except Exception as exc:  # noqa: BLE001 - a missing connection must not stop the others
                failed[conn_id] = str(exc)[:300]
        try:
            observed = {}
            for standing in active:
                ours = [clients[c] for c in standing.nodes if c in clients]
                observed[standing.standing_id] = await asyncio.to_thread(observe, standing, ours)
            return observed
        finally:
            for client in clients.values():
                client._client.close()
