"""Injection through request fields, and attacks on request authentication.

SQL metacharacters in variable names, filter values and dataset names must be
refused as bad requests (400) or by access control (403), never reach the
store as SQL: the store keeps every row.  Each authentication attack (no
token, another node's credential, expired timestamp, replayed nonce, tampered
body) gets 401 and an audit record with control ``authentication``.
"""
from __future__ import annotations

import json
import time

import pytest

from mipflow.node.controls.audit import verify_log
from mipflow.protocol.signing import issue_client, signed_headers
from mipflow.node.store.feature_store import FeatureStore
from tests.mipflow.algorithms.survival_data import STROKE
from tests.privacy.conftest import Node, rule, start_node, where
from tests.nodes import standard_home

PAYLOADS = ["age; DROP TABLE mipflow_quarantine; --", "x' OR '1'='1", 'age") OR 1=1 --',
            "hospital_a' --", "1; DELETE FROM sqlite_master", "age/**/UNION/**/SELECT/**/1"]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    yield from start_node(tmp_path_factory.mktemp("inject") / "n")


def _store_rows(node: Node) -> int:
    store = FeatureStore(node.home.db_url)
    try:
        return int(sum(d["row_count"] for d in store.datasets(STROKE.key)))
    finally:
        store.dispose()


def _audited(node: Node) -> list[dict]:
    from mipflow.node.controls.audit import AUDIT_FILE, AuditLog

    return AuditLog(node.home.root / AUDIT_FILE).records()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_sql_in_variable_names_filters_and_datasets_is_refused_and_the_store_is_intact(node, payload):
    before = _store_rows(node)
    assert before == len(node.rows)
    attempts = [
        dict(algorithm="descriptive_stats", y=[payload]),
        dict(algorithm="linear_regression", y=["nihss_admission"], x=[payload]),
        dict(algorithm="descriptive_stats", y=["age"], filters=where(rule(payload, "equal", 1))),
        dict(algorithm="descriptive_stats", y=["age"], filters=where(rule("age", "equal", payload))),
        dict(algorithm="descriptive_stats", y=["age"], filters=where(rule("sex", "equal", payload))),
        dict(algorithm="descriptive_stats", y=["age"], filters=where(rule("age", payload, 1))),
        dict(algorithm="descriptive_stats", y=["age"], datasets=[payload]),
    ]
    for attempt in attempts:
        reply = node.call(**attempt)
        assert reply.status_code in (400, 403), (attempt, reply.status_code, reply.text)
        if reply.status_code == 403:
            # datasets are checked against the grants; a text value is bound as a value, so
            # "x' OR '1'='1" matches no row (and is refused as too few), never every row
            assert reply.json()["control"] in ("access", "nfilter_string", "min_row_count"), reply.text
    assert _store_rows(node) == before
    # and the node still answers a plain request with every row
    assert node.allowed("descriptive_stats", y=["age"])["rows"] == before


def test_an_unknown_algorithm_name_is_a_bad_request(node):
    reply = node.call("descriptive_stats;drop", y=["age"])
    assert reply.status_code in (400, 404)
    assert node.allowed("descriptive_stats", y=["age"])["rows"] == len(node.rows)


def _auth_refusals(node: Node) -> int:
    return sum(1 for r in _audited(node) if r.get("control") == "authentication")


def _body() -> bytes:
    return json.dumps({"request": {"inputdata": {"data_model": STROKE.key, "datasets": ["hospital_a"],
                                                 "x": [], "y": ["age"], "filters": None}, "parameters": {}},
                       "researcher": "tester", "project": "mipflow-tests"}).encode()


PATH = "/v1/steps/descriptive_stats"


def _post(node: Node, body: bytes, headers: dict) -> int:
    return node.http.post(PATH, content=body, headers={**headers, "Content-Type": "application/json"}).status_code


def test_each_authentication_attack_gets_401_and_is_audited(node, tmp_path):
    cred, body = node.credential, _body()
    good = signed_headers(cred.client_id, cred.secret, "POST", PATH, body)
    other_home = standard_home(tmp_path / "other", "hospital_b")
    other = issue_client(other_home.root, "central")  # the credential another node issued
    attacks = {
        "no token": (body, {}),
        "another node's credential": (body, signed_headers(other.client_id, other.secret, "POST", PATH, body)),
        "expired timestamp": (body, signed_headers(cred.client_id, cred.secret, "POST", PATH, body,
                                                   now=time.time() - 3600)),
        "tampered body": (body.replace(b'"age"', b'"nihss_admission"'), good),
    }
    assert _post(node, body, good) == 200  # the genuine request, once
    attacks["replayed nonce"] = (body, good)
    for name, (content, headers) in attacks.items():
        before = _auth_refusals(node)
        assert _post(node, content, headers) == 401, name
        assert _auth_refusals(node) == before + 1, name
    for path in ("/v1/metadata", "/v1/algorithms", "/v1/secagg/key"):
        before = _auth_refusals(node)
        assert node.http.get(path).status_code == 401
        assert _auth_refusals(node) == before + 1
    assert verify_log(node.home.root / "audit.log").ok  # the refusals are in an intact chain
