"""The EHR watermark watch (mipflow.node.ingest.watch) against real source databases: a source is due exactly
when a capture would register a new batch of it, whatever the watch saw before (a restarted triggerer)."""
from __future__ import annotations

import logging

import pytest

from mipflow.demo.synth import generate_export
from mipflow.node import ops
from mipflow.node.ingest import stages
from mipflow.node.ingest.watch import WatermarkWatch
from mipflow.node.store.feature_store import open_store
from tests.mipflow.node.ingest.test_database import PASSWORD, make_home
from tests.mipflow.node.ingest import test_database
from tests.nodes import free_port

source = test_database.source  # the PostgreSQL and MariaDB source fixture


def fresh_check(home) -> list[str]:
    """What a newly started watch (a restarted triggerer) reports."""
    watch = WatermarkWatch(home)
    try:
        return watch.check()
    finally:
        watch.close()


def test_due_exactly_when_a_capture_would_register_a_new_batch(tmp_path, source):
    export = generate_export("hospital_a", 30, seed=8)
    source.insert(export.iloc[:10])
    home = make_home(tmp_path, source)
    assert fresh_check(home) == ["ehr_a"]  # never captured
    ops.ingest_db(home)
    store = open_store(home)
    assert fresh_check(home) == []  # loaded: the committed watermark is the source's

    watch = WatermarkWatch(home)
    try:
        source.insert(export.iloc[10:12])
        assert watch.check() == ["ehr_a"]
        assert watch.check() == []  # the same watermark is reported once
        assert fresh_check(home) == ["ehr_a"]  # but a restarted watch sees it still uncaptured

        summary = stages.capture(home, landing=False)  # captured, not loaded: in the chain
        (batch_id,) = summary["captured"]
        source.insert(export.iloc[12:13])  # a change while the batch is in the chain: wait for its load
        assert fresh_check(home) == [] and watch.check() == []

        store.update_batch(None, batch_id, status="failed", message="test")  # its range failed
        assert fresh_check(home) == ["ehr_a"]  # a newer change makes a new range
        assert watch.check() == ["ehr_a"]
    finally:
        watch.close()

    # a failed batch whose range is still the source's latest: the nightly capture's to retry, not the watcher's
    summary = stages.capture(home, landing=False)
    (retry_id,) = summary["captured"]
    store.update_batch(None, retry_id, status="failed", message="test")
    assert fresh_check(home) == []
    assert stages.capture(home, landing=False)["captured"] == [retry_id]  # the capture does retry it


@pytest.mark.postgres
def test_an_unreachable_source_is_reported_once_without_its_url(tmp_path, pg_url, caplog):
    from tests.mipflow.node.ingest.test_database import Source

    src = Source("postgresql", pg_url)
    src.url = pg_url
    home = make_home(tmp_path, src)
    (home.root / "secrets" / "ehr.url").write_text(
        f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/nowhere\n")
    watch = WatermarkWatch(home)
    try:
        with caplog.at_level(logging.WARNING):
            assert watch.check() == [] and watch.check() == []
    finally:
        watch.close()
        src.engine.dispose()
    assert caplog.text.count("source ehr_a: cannot read the source's watermark (OperationalError)") == 1
    assert PASSWORD not in caplog.text and "nowhere" not in caplog.text
