"""The node's EHR watermark watcher (EhrWatermarkTrigger) run against real source databases: an event after
a row is committed, none while nothing changes, none twice for the same watermark, the cost of a check."""
from __future__ import annotations

import asyncio
import logging
import time

import sqlalchemy as sa

from mipflow.demo.synth import generate_export
from mipflow.node import ops
from mipflow.node.ingest import stages
from mipflow.node.store.feature_store import open_store
from mipflow_airflow.triggers.ehr_watermark import EhrWatermarkTrigger
from tests.mipflow.node.ingest.test_database import PASSWORD, make_home
from tests.mipflow.node.ingest import test_database

POLL = 0.1  # seconds between checks in these tests (the node's default is 10)

source = test_database.source  # the PostgreSQL and MariaDB source fixture


class SourceStatements:
    """Counts the statements and new connections made on the source database (not the feature store), while
    only the watcher uses it."""

    def __init__(self, url: str) -> None:
        self.database = sa.engine.make_url(url).database
        self.statements: list[str] = []
        self.connects = 0

    def __enter__(self) -> "SourceStatements":
        sa.event.listen(sa.engine.Engine, "before_cursor_execute", self._statement)
        sa.event.listen(sa.engine.Engine, "connect", self._connect)
        return self

    def __exit__(self, *exc) -> None:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", self._statement)
        sa.event.remove(sa.engine.Engine, "connect", self._connect)

    def _statement(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if conn.engine.url.database == self.database:
            self.statements.append(" ".join(statement.split()))

    def _connect(self, dbapi_connection, record) -> None:
        # pool events do not name the engine: the driver connection names its database
        dsn = getattr(dbapi_connection, "dsn", "") or ""
        if self.database in dsn or getattr(dbapi_connection, "db", b"") == self.database.encode():
            self.connects += 1


async def _collect(trigger: EhrWatermarkTrigger, events: list) -> None:
    async for event in trigger.run():
        events.append((time.monotonic(), event.payload))


async def _wait_for(events: list, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def test_the_watcher_fires_once_after_a_commit_and_never_while_nothing_changes(tmp_path, source, caplog):
    """A committed row at the source: one event naming the source within a few checks; none before it, none
    again for the same watermark while the capture has not run, none after the load committed it; a deletion
    fires again.  A check is the capture's MAX(watermark) query (one per watermark) on one kept connection."""
    export = generate_export("hospital_a", 30, seed=5)
    source.insert(export.iloc[:20])
    home = make_home(tmp_path, source)
    assert ops.ingest_db(home)["batches"][0]["loaded"] == 20  # the committed watermark
    watermarks = 1 + (source.kind == "postgresql")  # a deleted-rows table has its own; a tombstone shares it
    caplog.set_level(logging.DEBUG)

    trigger = EhrWatermarkTrigger(node_home=str(home.root), poll_seconds=POLL)
    events: list = []

    async def scenario() -> dict:
        task = asyncio.create_task(_collect(trigger, events))
        try:
            with SourceStatements(source.url) as seen:
                await asyncio.sleep(1.0)  # about 10 checks, nothing changed
                quiet = {"events": list(events), "statements": list(seen.statements), "connects": seen.connects}
            assert quiet["events"] == []
            await asyncio.to_thread(source.insert, export.iloc[20:21])  # one row committed
            committed = time.monotonic()
            await _wait_for(events, 1, timeout=10)
            first = list(events)
            await asyncio.sleep(10 * POLL)  # the same watermark, still not captured: no second event
            repeated = len(events)
            await asyncio.to_thread(ops.ingest_db, home)  # the node chain loads it: committed == current
            await asyncio.sleep(10 * POLL)
            after_load = len(events)
            await asyncio.to_thread(source.delete, [export["mrn"][0]])
            await _wait_for(events, 2, timeout=10)
            return {"quiet": quiet, "committed": committed, "first": first, "repeated": repeated,
                    "after_load": after_load}
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    out = asyncio.run(scenario())
    (fired_at, payload), = out["first"]
    assert payload == {"sources": ["ehr_a"]}
    assert fired_at - out["committed"] < 10 * POLL + 2  # within a few checks of the commit
    assert out["repeated"] == 1 and out["after_load"] == 1
    assert [p for _, p in events] == [{"sources": ["ehr_a"]}] * 2  # the deletion
    assert trigger._watch is None  # run() closed its connections when cancelled

    quiet = out["quiet"]
    checks = len(quiet["statements"]) / watermarks
    assert 5 <= checks <= 12, quiet["statements"]  # about one check per interval
    assert all(s.startswith("SELECT MAX(") for s in quiet["statements"]), set(quiet["statements"])
    assert quiet["connects"] <= 1  # one connection kept between checks, not one per check
    assert stages.watermark(open_store(home), "ehr_a")["changes"] is not None

    # neither the URL's password nor a value read from the source is logged or in an event
    text = caplog.text + repr(events)
    for value in (PASSWORD, "2026-01-01", *export["mrn"][:21], *export["last_name"][:21]):
        assert str(value) not in text
    assert "ehr_a" in caplog.text  # the event is logged by source name


def test_the_trigger_serialises_to_an_importable_event_trigger(tmp_path, caplog):
    from airflow.triggers.base import BaseEventTrigger

    from mipflow.node.home import NodeHome

    home = NodeHome.init(tmp_path / "node", "hospital_a")
    trigger = EhrWatermarkTrigger(node_home=str(home.root), poll_seconds=7)
    classpath, kwargs = trigger.serialize()
    module, name = classpath.rsplit(".", 1)
    cls = getattr(__import__(module, fromlist=[name]), name)
    again = cls(**kwargs)
    assert isinstance(again, BaseEventTrigger)
    assert (again.node_home, again.poll_seconds) == (str(home.root), 7.0)
    assert asyncio.run(again.poll()) is None  # no database profile in that home: nothing to watch
    again.close()
    # a path that is no node home (yet): a warning once, no event, no exception (the watcher keeps checking)
    missing = EhrWatermarkTrigger(node_home=str(tmp_path / "nowhere"), poll_seconds=7)
    with caplog.at_level(logging.WARNING):
        assert asyncio.run(missing.poll()) is None and asyncio.run(missing.poll()) is None
    assert caplog.text.count("is not a node home") == 1
