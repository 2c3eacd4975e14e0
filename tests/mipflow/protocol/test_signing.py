"""Signed requests (:mod:`mipflow.protocol.signing`, ADR 0003): what the node's verifier accepts and
refuses, and the credentials a node issues."""
from __future__ import annotations

import json

import pytest

from mipflow.exceptions import ConfigError
from mipflow.protocol.signing import (
    CLIENTS_FILE, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP, AuthError, Verifier,
    issue_client, load_clients, signature, signed_headers,
)

SECRET = bytes(range(32))
NOW = 1_800_000_000.0
PATH = "/v1/steps/linear_regression"
BODY = b'{"round": 0}'


def verifier(**kw) -> Verifier:
    return Verifier({"central": SECRET}, **kw)


def test_a_signed_request_names_its_client():
    headers = signed_headers("central", SECRET, "POST", PATH, BODY, now=NOW)
    assert verifier().verify(headers, "POST", PATH, BODY, now=NOW) == "central"
    # header names are case-insensitive, as HTTP's
    lower = {k.lower(): v for k, v in headers.items()}
    assert verifier().verify(lower, "post", PATH, BODY, now=NOW + 299) == "central"


@pytest.mark.parametrize("method, path, body, reason", [
    pytest.param("GET", PATH, BODY, "bad signature", id="other-method"),
    pytest.param("POST", "/v1/steps/anova_oneway", BODY, "bad signature", id="other-path"),
    pytest.param("POST", PATH, b'{"round": 1}', "bad signature", id="altered-body"),
    pytest.param("POST", PATH + "?researcher=mallory", BODY, "bad signature", id="added-query"),
])
def test_whatever_was_signed_cannot_change(method, path, body, reason):
    headers = signed_headers("central", SECRET, "POST", PATH, BODY, now=NOW)
    with pytest.raises(AuthError, match=reason):
        verifier().verify(headers, method, path, body, now=NOW)


@pytest.mark.parametrize("change, reason", [
    pytest.param(lambda h: {k: v for k, v in h.items() if k != HEADER_NONCE}, "missing authentication headers",
                 id="no-nonce"),
    pytest.param(lambda h: {}, "missing authentication headers", id="unsigned"),
    pytest.param(lambda h: {**h, "X-Mipflow-Client": "intruder"}, "unknown client", id="unknown-client"),
    pytest.param(lambda h: {**h, HEADER_SIGNATURE: "0" * 64}, "bad signature", id="forged-signature"),
    pytest.param(lambda h: {**h, HEADER_TIMESTAMP: str(int(NOW) + 1)}, "bad signature", id="moved-timestamp"),
])
def test_incomplete_or_forged_headers_are_refused(change, reason):
    headers = change(signed_headers("central", SECRET, "POST", PATH, BODY, now=NOW))
    with pytest.raises(AuthError, match=reason):
        verifier().verify(headers, "POST", PATH, BODY, now=NOW)


@pytest.mark.parametrize("sent_at", [NOW - 301, NOW + 301], ids=["too-old", "from-the-future"])
def test_a_timestamp_outside_the_window_is_expired(sent_at):
    headers = signed_headers("central", SECRET, "POST", PATH, BODY, now=sent_at)
    with pytest.raises(AuthError, match="expired request"):
        verifier(max_skew_seconds=300).verify(headers, "POST", PATH, BODY, now=NOW)


def test_a_timestamp_that_is_no_number_is_refused_even_when_signed():
    headers = {"X-Mipflow-Client": "central", HEADER_TIMESTAMP: "soon", HEADER_NONCE: "n1",
               HEADER_SIGNATURE: signature(SECRET, "POST", PATH, "soon", "n1", BODY)}
    with pytest.raises(AuthError, match="bad timestamp"):
        verifier().verify(headers, "POST", PATH, BODY, now=NOW)


def test_a_nonce_is_accepted_once_per_client():
    check = verifier()
    headers = signed_headers("central", SECRET, "POST", PATH, BODY, now=NOW)
    check.verify(headers, "POST", PATH, BODY, now=NOW)
    with pytest.raises(AuthError, match="replayed request"):
        check.verify(headers, "POST", PATH, BODY, now=NOW + 1)
    # the same nonce from another client is another request
    other = bytes(32)
    check.update_clients({"central": SECRET, "backup": other})
    nonce, stamp = headers[HEADER_NONCE], headers[HEADER_TIMESTAMP]
    theirs = {"X-Mipflow-Client": "backup", HEADER_TIMESTAMP: stamp, HEADER_NONCE: nonce,
              HEADER_SIGNATURE: signature(other, "POST", PATH, stamp, nonce, BODY)}
    assert check.verify(theirs, "POST", PATH, BODY, now=NOW + 1) == "backup"


def test_a_revoked_client_is_unknown_at_once():
    check = verifier()
    check.verify(signed_headers("central", SECRET, "GET", "/v1/metadata", b"", now=NOW), "GET", "/v1/metadata",
                 b"", now=NOW)
    check.update_clients({})
    with pytest.raises(AuthError, match="unknown client"):
        check.verify(signed_headers("central", SECRET, "GET", "/v1/metadata", b"", now=NOW), "GET",
                     "/v1/metadata", b"", now=NOW)


def test_issued_credentials_persist_privately_and_are_reissued_unchanged(tmp_path):
    first = issue_client(tmp_path, "central")
    assert len(first.secret) == 32 and first.client_id == "central"
    assert issue_client(tmp_path, "central") == first  # the same secret, not a new one
    second = issue_client(tmp_path, "backup-1")
    assert second.secret != first.secret
    assert load_clients(tmp_path) == {"central": first.secret, "backup-1": second.secret}
    assert oct((tmp_path / CLIENTS_FILE).stat().st_mode & 0o777) == "0o600"
    assert first.secret.hex() not in repr(first) and "hidden" in repr(first)
    # a request signed with the issued secret verifies against the node's stored clients
    headers = signed_headers(first.client_id, first.secret, "POST", PATH, BODY)
    assert Verifier(load_clients(tmp_path)).verify(headers, "POST", PATH, BODY) == "central"


@pytest.mark.parametrize("client_id", ["", "central site", "a/b", "x;y"])
def test_client_ids_are_plain_names(tmp_path, client_id):
    with pytest.raises(ConfigError, match="letters, digits"):
        issue_client(tmp_path, client_id)
    assert not (tmp_path / CLIENTS_FILE).exists()


@pytest.mark.parametrize("content", ["not json", json.dumps({"central": {"secret": "zz"}}),
                                     json.dumps({"central": {}}), json.dumps(["central"])],
                         ids=["garbled", "secret-not-hex", "no-secret", "not-an-object"])
def test_a_damaged_clients_file_is_a_config_error(tmp_path, content):
    (tmp_path / CLIENTS_FILE).write_text(content)
    with pytest.raises(ConfigError, match="not a valid clients file"):
        load_clients(tmp_path)


def test_no_clients_file_means_no_clients(tmp_path):
    assert load_clients(tmp_path) == {}
