"""``EhrWatermarkTrigger``: the node's asset watcher of its EHR database sources (ADR 0043, "Latency").

An Airflow 3 event trigger (:class:`~airflow.triggers.base.BaseEventTrigger`), run by the node's
triggerer for the Asset ``mipflow_node_ehr_changed`` through an ``AssetWatcher`` (event-driven
scheduling; ``dags/mipflow_node.py`` defines it only when the node home has a database source).
Every ``poll_seconds`` it reads each database source's current watermark (the capture's own
``SELECT MAX(<watermark column>)``) and compares it with what the feature store committed
(:class:`mipflow.node.ingest.watch.WatermarkWatch`); when a capture would register a new batch it
fires an event naming the sources, which schedules ``node_capture``.  An idle source costs one
query per interval and no DAG run; a value is reported once (and not while its batch is in the chain).

Connections: a profile's ``secret_file`` and ``env`` are read as the EHR source reads them
(:func:`mipflow.node.ingest.database.source_url`); an ``airflow_conn_id`` is read asynchronously
from Airflow's connections.  Neither the URL nor any value read from the source is logged or put
in the event (the event names the sources only).  The checks are synchronous and run in a thread.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

log = logging.getLogger(__name__)

#: Default seconds between checks (``MIPFLOW_NODE_WATCH_SECONDS``).
POLL_SECONDS = 10.0


class EhrWatermarkTrigger(BaseEventTrigger):
    """Fire when an EHR database source of the node has changes no capture registered yet.

    Parameters
    ----------
    node_home : str
        The node home (``MIPFLOW_NODE_HOME`` where the DAG file was parsed).
    poll_seconds : float
        Seconds between checks.
    """

    def __init__(self, *, node_home: str, poll_seconds: float = POLL_SECONDS) -> None:
        super().__init__()
        self.node_home = node_home
        self.poll_seconds = float(poll_seconds)
        self._watch: Any = None
        self._problem: str | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("mipflow_airflow.triggers.ehr_watermark.EhrWatermarkTrigger",
                {"node_home": self.node_home, "poll_seconds": self.poll_seconds})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            while True:
                event = await self.poll()
                if event is not None:
                    yield event
                await asyncio.sleep(self.poll_seconds)
        finally:
            self.close()

    async def poll(self) -> TriggerEvent | None:
        """One check: the event to fire (the sources due), or None."""
        from mipflow.exceptions import MipflowError
        from mipflow.node.ingest.watch import WatermarkWatch

        try:
            if self._watch is None:
                self._watch = await asyncio.to_thread(WatermarkWatch, self.node_home)
            watch = self._watch
            profiles = await asyncio.to_thread(watch.profiles)
        except MipflowError as exc:  # no node home there (yet): say so once, keep checking
            if self._problem != str(exc):
                self._problem = str(exc)
                log.warning("EHR watermark watch: %s", exc)
            return None
        self._problem = None
        if not profiles:
            return None
        urls = await self._airflow_connections(profiles)
        due = await asyncio.to_thread(watch.check, profiles, _resolver(urls))
        if not due:
            return None
        log.info("EHR database source(s) changed since the last capture: %s; node_capture is due", ", ".join(due))
        return TriggerEvent({"sources": due})

    async def _airflow_connections(self, profiles: list[Any]) -> dict[str, str | Exception]:
        """The URLs of the profiles' ``airflow_conn_id`` connections (or why one could not be read)."""
        from mipflow_airflow.hooks.ehr import aehr_connection_url

        urls: dict[str, str | Exception] = {}
        for profile in profiles:
            kind, name = profile.database.connection
            if kind == "airflow_conn_id" and name not in urls:
                try:
                    urls[name] = await aehr_connection_url(name)
                except Exception as exc:  # noqa: BLE001 - one missing connection must not stop the others
                    urls[name] = exc
        return urls

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None


def _resolver(urls: dict[str, str | Exception]) -> Any:
    from mipflow.exceptions import ConfigError

    def resolve(conn_id: str) -> str:
        url = urls.get(conn_id)
        if isinstance(url, str):
            return url
        # the class only: a connection error's message could quote the connection
        what = type(url).__name__ if url is not None else "not read"
        raise ConfigError(f"Airflow connection {conn_id!r} is not available to the triggerer ({what})")

    return resolve
