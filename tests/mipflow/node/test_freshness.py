"""What the node API caches between requests is dropped exactly when it changes.

Settings, credentials and grants are files in the node home; the rows of a
data selection come from the feature store.  Each test changes one of them
between two rounds of an analysis and checks that the next request sees it.
"""
from __future__ import annotations

import json
import os

import pytest
from fastapi.testclient import TestClient

from mipflow.node.controls.access import AccessRegistry
from mipflow.node.controls.audit import HEAD_WIDTH, AuditLog, head_path, verify_log
from mipflow.protocol.signing import issue_client, signed_headers
from mipflow.node.freshness import DataVersion, file_signature
from mipflow.node.api.app import create_app
from mipflow.node.store.feature_store import FeatureStore
from tests.mipflow.algorithms.synthetic import MODEL, make_data
from tests.nodes import PROJECT, RESEARCHER, grant_all, load_frame
from tests.nodes import standard_home

REQUEST = {"inputdata": {"data_model": MODEL.key, "datasets": ["d0", "d1", "d2"], "x": ["x1"], "y": ["y"],
                         "filters": None}, "parameters": {}}


def _rows(seed: int, n: int, prefix: str):
    frame = make_data(seed, n)[["dataset", "y", "x1", "grp"]]
    frame.insert(0, "subjectcode", [f"{prefix}{i}" for i in range(n)])
    return frame


def _complete(frame) -> int:
    return len(frame[["x1", "y"]].dropna())


# --------------------------------------------------------------------------- unit


def test_file_signature_tells_a_replaced_file_apart_within_one_clock_tick(tmp_path):
    path = tmp_path / "node.json"
    path.write_text('{"a": 1}')
    before = file_signature(path)
    stamp = os.stat(path)
    tmp = tmp_path / "node.tmp"
    tmp.write_text('{"a": 2}')  # same size
    os.utime(tmp, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # same modification time
    tmp.replace(path)  # how mipflow writes node.json, clients.json and access.json
    assert os.stat(path).st_mtime_ns == stamp.st_mtime_ns and os.stat(path).st_size == stamp.st_size
    assert file_signature(path) != before
    assert file_signature(tmp_path / "missing.json") is None


def test_data_version_changes_with_every_load_and_consent_deletion(tmp_path, db_url):
    home = standard_home(tmp_path / "h", "h", "" if db_url.startswith("sqlite") else db_url)
    load_frame(home.root, MODEL, _rows(1, 60, "a"))
    store = FeatureStore(home.db_url)
    watcher = DataVersion(store)
    try:
        assert watcher.mode == store.dialect  # the fast rule, not the fallback, is under test
        first = watcher.token(MODEL.key)
        assert watcher.token(MODEL.key) == first  # nothing changed: the cache may be used
        load_frame(home.root, MODEL, _rows(2, 30, "b"))  # a load by another connection
        loaded = watcher.token(MODEL.key)
        assert loaded != first
        assert watcher.token(MODEL.key) == loaded
        assert store.delete_patients(["b0", "b1"]) > 0  # consent withdrawn
        assert watcher.token(MODEL.key) != loaded
    finally:
        watcher.close()
        store.dispose()


@pytest.mark.postgres
def test_data_version_recovers_from_a_lost_listener(tmp_path, pg_url):
    home = standard_home(tmp_path / "h", "h", pg_url)
    load_frame(home.root, MODEL, _rows(1, 40, "a"))
    store = FeatureStore(home.db_url)
    watcher = DataVersion(store)
    try:
        before = watcher.token(MODEL.key)
        watcher._conn.close()  # the listening connection drops (server restart, network)
        after = watcher.token(MODEL.key)
        assert after != before and watcher.mode == "postgresql"  # invalidated, listening again
        load_frame(home.root, MODEL, _rows(2, 20, "b"))
        assert watcher.token(MODEL.key) != after  # and changes are seen again
    finally:
        watcher.close()
        store.dispose()


def test_audit_head_is_rewritten_in_place_and_the_chain_verifies(tmp_path):
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    for i in range(5):
        log.append(decision="allowed", what="metadata", i=i)
    head = head_path(path)
    assert head.stat().st_size == HEAD_WIDTH and json.loads(head.read_text())["seq"] == 5
    assert verify_log(path).ok and verify_log(path).records == 5
    # an admin rotates the log away: the next record goes to the file now at the path
    path.rename(tmp_path / "audit.log.1")
    head.rename(tmp_path / "audit.log.1.head")
    log.append(decision="allowed", what="metadata", i=5)
    assert len(path.read_text().splitlines()) == 1 and json.loads(head.read_text())["seq"] == 6
    log.close()


# --------------------------------------------------------------------------- the node API, between rounds


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def node(request, tmp_path):
    url = "" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    home = standard_home(tmp_path / "node", "node", url)
    # rounds here see a few rows come and go on purpose; with the differencing control on, the
    # node would refuse the changed cohort (tests/mipflow/node/controls/test_differencing.py), not show the count
    home.set_setting("differencing_check", 0)
    first = _rows(1, 80, "a")
    load_frame(home.root, MODEL, first)
    grant = grant_all(home.root)
    credential = issue_client(home.root, "central")
    with TestClient(create_app(home)) as http:
        yield {"home": home, "http": http, "credential": credential, "grant": grant, "rows": _complete(first)}


def step(node, call: int = 1):
    """The ``call``-th request of one analysis.  Sent as round 0 each time: a later round would need
    the transcript of the one before (ADR 0029), and the selection cache under test is keyed by the
    selection, not the round."""
    path = "/v1/steps/linear_regression"
    body = json.dumps({"request": REQUEST, "round": 0, "researcher": RESEARCHER, "project": PROJECT,
                       "analysis_id": "a1"}).encode()
    cred = node["credential"]
    headers = signed_headers(cred.client_id, cred.secret, "POST", path, body)
    return node["http"].post(path, content=body, headers={**headers, "Content-Type": "application/json"})


def test_a_load_between_rounds_is_seen_by_the_next_round(node):
    assert step(node, 0).json()["rows"] == node["rows"]
    assert step(node, 1).json()["rows"] == node["rows"]  # selection cached
    more = _rows(2, 40, "b")
    load_frame(node["home"].root, MODEL, more)
    assert step(node, 2).json()["rows"] == node["rows"] + _complete(more)


def test_a_consent_deletion_between_rounds_is_seen_by_the_next_round(node):
    assert step(node, 0).json()["rows"] == node["rows"]
    data = _rows(1, 80, "a")
    gone = [pid for pid, ok in zip(data["subjectcode"], data[["x1", "y"]].notna().all(axis=1)) if ok][:3]
    store = FeatureStore(node["home"].db_url)
    assert store.delete_patients(gone) == 3
    store.dispose()
    assert step(node, 1).json()["rows"] == node["rows"] - 3


def test_a_config_change_takes_effect_at_the_next_request(node):
    assert step(node, 0).status_code == 200
    node["home"].set_setting("min_row_count", node["rows"] + 1)  # the admin, while the node serves
    refused = step(node, 1)
    assert refused.status_code == 403 and refused.json()["control"] == "min_row_count"
    node["home"].set_setting("min_row_count", 10)
    assert step(node, 2).status_code == 200


def test_a_grant_revocation_takes_effect_at_the_next_request(node):
    assert step(node, 0).status_code == 200
    AccessRegistry(node["home"].root).revoke(node["grant"].id)
    refused = step(node, 1)
    assert refused.status_code == 403 and refused.json()["control"] == "access"


def test_the_selection_cache_is_bounded_in_bytes(tmp_path, monkeypatch):
    """The node keeps a selection between rounds only within ``frame_cache_mb``; a selection
    larger than the budget is used once and read again for the next round (same answer)."""
    import mipflow.node.query.read

    reads = []

    def counting(real):
        def read(*args, **kwargs):
            reads.append(1)
            return real(*args, **kwargs)
        return read

    # a frame, or the rows left on disk (a linear regression of numerical variables, ADR 0049 amended)
    for name in ("select_frame", "select_rows"):
        monkeypatch.setattr(mipflow.node.query.read, name, counting(getattr(mipflow.node.query.read, name)))
    home = standard_home(tmp_path / "node", "node", "")
    load_frame(home.root, MODEL, _rows(1, 80, "a"))
    grant_all(home.root)
    credential = issue_client(home.root, "central")
    with TestClient(create_app(home)) as http:
        node = {"http": http, "credential": credential}
        first = step(node, 0).json()
        assert step(node, 1).json()["aggregates"] == first["aggregates"] and len(reads) == 1  # kept
        home.set_setting("frame_cache_mb", 0)  # the admin, while the node serves: nothing is kept
        assert step(node, 2).json()["aggregates"] == first["aggregates"] and len(reads) == 2
        assert step(node, 3).json()["aggregates"] == first["aggregates"] and len(reads) == 3
        home.set_setting("frame_cache_mb", 1)
        step(node, 4)
        assert step(node, 5).json()["aggregates"] == first["aggregates"] and len(reads) == 4


def test_selection_bytes_counts_the_frame_and_the_row_keys():
    import numpy as np
    import pandas as pd

    from mipflow.node.controls.differencing import Cohorts
    from mipflow.node.api.app import selection_bytes

    data = pd.DataFrame({"dataset": ["a"] * 1000, "x": np.arange(1000.0)})
    cohorts = Cohorts("m:1", (np.arange(1000, dtype=np.uint64),), ("d",))
    assert selection_bytes(data, cohorts) == data.memory_usage(deep=False).sum() + 8000
    assert selection_bytes(data, cohorts) >= 8 * 1000 * 2  # each column's array at least
