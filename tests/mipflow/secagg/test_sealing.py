"""Sealed round sums (ADR 0046): a ciphertext per participant, opened only by its recipient, bound to
its analysis, algorithm, chain, round, sender and recipient; a node's opening of the previous round."""
from __future__ import annotations

import json

import pytest

from mipflow.exceptions import DisclosureError
from mipflow.secagg.crypto import KeyPair
from mipflow.secagg.sealing import open_one, open_previous, seal
from mipflow.secagg.transcript import Transcript, pair_key, tag_key

KEYS = {name: KeyPair.generate() for name in ("a", "b", "c")}
PUBLIC = {name: pair.public_bytes for name, pair in KEYS.items()}
SUMS = {"s0": {"dtype": "<f8", "shape": [2], "base64": "AAAAAAAA8D8AAAAAAAAAQA=="}, "events": [3, 4]}
BOUND = dict(analysis_id="an-1", algorithm="cox_regression", chain="c1", round_no=1)


def _sealed(sender: str = "b") -> dict[str, str]:
    return seal(KEYS[sender], sender, PUBLIC, SUMS, **BOUND)


def test_each_participant_opens_its_own_ciphertext_and_no_other() -> None:
    boxes = _sealed("b")
    assert set(boxes) == set(KEYS)
    for name in KEYS:
        assert open_one(KEYS[name], PUBLIC["b"], boxes[name], **BOUND, sender="b", recipient=name) == SUMS
        for other in set(KEYS) - {name}:
            assert open_one(KEYS[other], PUBLIC["b"], boxes[name], **BOUND, sender="b", recipient=other) is None
    # a key anyone else can derive (an outsider's X25519 with b's public key) opens none
    outsider = KeyPair.generate()
    assert all(open_one(outsider, PUBLIC["b"], box, **BOUND, sender="b", recipient=name) is None
               for name, box in boxes.items())


def test_fresh_nonces_and_separate_keys() -> None:
    assert _sealed("b") != _sealed("b")  # random nonces: the same sums never give the same bytes
    assert pair_key(KEYS["a"], PUBLIC["b"], "seal") == pair_key(KEYS["b"], PUBLIC["a"], "seal")
    assert pair_key(KEYS["a"], PUBLIC["b"], "seal") != tag_key(KEYS["a"], PUBLIC["b"])


@pytest.mark.parametrize("field, value", [
    ("analysis_id", "an-2"), ("algorithm", "kaplan_meier"), ("chain", "c2"), ("round_no", 3),
    ("sender", "c"), ("recipient", "c"),
])
def test_a_ciphertext_opens_only_where_it_was_sealed(field, value) -> None:
    box = _sealed("b")["a"]
    bound = {**BOUND, "sender": "b", "recipient": "a"}
    assert open_one(KEYS["a"], PUBLIC["b"], box, **bound) == SUMS
    assert open_one(KEYS["a"], PUBLIC["b"], box, **{**bound, field: value}) is None


def test_the_reverse_direction_of_a_pair_does_not_open() -> None:
    """b and a share the seal key; what a sealed for b is not b's for a."""
    a_for_b = _sealed("a")["b"]
    assert open_one(KEYS["a"], PUBLIC["b"], a_for_b, **BOUND, sender="b", recipient="a") is None


def _transcript(boxes: dict[str, object]) -> Transcript:
    contributions = [{"node": n, "aggregates": {"n": 10} if box is None else {"n": 10, "sealed": box}, "tags": {}}
                     for n, box in boxes.items()]
    return Transcript(participants=dict(PUBLIC), previous={"chain": "c1", "state": {}, "contributions": contributions})


def test_a_node_opens_every_participants_sums_of_the_previous_round() -> None:
    opened = open_previous(_transcript({n: _sealed(n) for n in KEYS}), own=KEYS["a"], own_name="a",
                           analysis_id="an-1", algorithm="cox_regression", round_no=2, sealed_key="sealed")
    assert opened == [SUMS, SUMS, SUMS]
    nothing = open_previous(_transcript({n: None for n in KEYS}), own=KEYS["a"], own_name="a", analysis_id="an-1",
                            algorithm="cox_regression", round_no=2, sealed_key="sealed")
    assert nothing is None


@pytest.mark.parametrize("change, says", [
    (lambda boxes: {**boxes, "c": None}, "carries no sealed sums while others do"),
    (lambda boxes: {**boxes, "c": {k: v for k, v in boxes["c"].items() if k != "a"}}, "exactly one ciphertext"),
    (lambda boxes: {**boxes, "c": {**boxes["c"], "z": boxes["c"]["a"]}}, "exactly one ciphertext"),
    (lambda boxes: {**boxes, "c": {**boxes["c"], "a": boxes["c"]["b"]}}, "do not open"),
    (lambda boxes: {**boxes, "c": {**boxes["c"], "a": "not base64!"}}, "do not open"),
], ids=["none", "missing", "extra", "moved", "garbage"])
def test_a_missing_extra_or_unopenable_ciphertext_is_refused(change, says) -> None:
    boxes = change({n: _sealed(n) for n in KEYS})
    with pytest.raises(DisclosureError, match=says) as info:
        open_previous(_transcript(boxes), own=KEYS["a"], own_name="a", analysis_id="an-1",
                      algorithm="cox_regression", round_no=2, sealed_key="sealed")
    assert info.value.control == "round_verification"


def test_a_node_is_sent_only_the_ciphertexts_addressed_to_it_and_the_tags_bind_them_the_same():
    """ADR 0046: the central site forwards each node its own ciphertext and the others' digests; the
    contribution's digest (what its tags and the chain bind) is the same either way, and changes with
    any ciphertext."""
    from mipflow.algorithms.sealed import SEALED
    from mipflow.secagg.transcript import SEALED_KEY, addressed_to, aggregates_digest

    assert SEALED == SEALED_KEY
    boxes = {"a": "QUJD" * 1000, "b": "REVG" * 1000, "c": "R0hJ" * 1000}
    aggregates = {"n": 10, SEALED_KEY: boxes}
    previous = {"chain": "x", "state": None, "contributions": [
        {"node": "a", "aggregates": aggregates, "tags": {"a": "t1", "b": "t2", "c": "t3"}}]}
    sent = addressed_to(previous, "b")["contributions"][0]
    assert sent["tags"] == {"b": "t2"}
    assert sent["aggregates"][SEALED_KEY]["b"] == boxes["b"]
    assert all(v.startswith("sha256:") and len(v) == 71 for k, v in sent["aggregates"][SEALED_KEY].items() if k != "b")
    assert aggregates_digest(sent["aggregates"]) == aggregates_digest(aggregates)
    changed = {**aggregates, SEALED_KEY: {**boxes, "c": "R0hK" * 1000}}
    assert aggregates_digest(changed) != aggregates_digest(aggregates)
    # and what the node receives is a fraction of the whole reply
    assert len(json.dumps(sent)) < len(json.dumps(previous["contributions"][0])) / 2


def test_the_central_site_digests_each_ciphertext_once_and_sends_the_same_transcript() -> None:
    """The digests the central site computes once per round (``bound``) give every node the transcript
    that hashing per node gave."""
    from mipflow.secagg.transcript import addressed_to, bound_form

    contributions = [{"node": n, "aggregates": {"n": 10, "sealed": _sealed(n)}, "tags": {m: f"t{m}" for m in KEYS}}
                     for n in KEYS]
    contributions.append({"node": "d", "aggregates": {"n": 3}, "tags": {}})  # one without sealed sums
    previous = {"chain": "x", "state": None, "contributions": contributions}
    bound = [bound_form(c["aggregates"]) for c in contributions]
    for node in KEYS:
        assert addressed_to(previous, node, bound) == addressed_to(previous, node)


# --------------------------------------------------------------------------- the binary plaintext (seal v2)

MASKED = {"scheme": "mipflow-sealed-mask-real-v1:z2^256:f128", "layout": [["s0", [3]]], "masked": bytes(range(96))}


def test_bytes_travel_as_they_are_and_open_as_bytes() -> None:
    from mipflow.secagg.sealing import from_plaintext, plaintext

    doc = {"b": [b"\x00\n\xff", {"x": b""}], "a": MASKED, "c": 1.5}
    raw = plaintext(doc)
    head, _, blob = raw.partition(b"\n")
    assert json.loads(head)["a"]["masked"] == {"$bytes": 96}
    assert blob == bytes(range(96)) + b"\x00\n\xff"  # in the header's (sorted) order, no base64
    assert from_plaintext(raw) == doc
    boxes = seal(KEYS["b"], "b", PUBLIC, MASKED, **BOUND)
    opened = open_one(KEYS["a"], PUBLIC["b"], boxes["a"], **BOUND, sender="b", recipient="a")
    assert opened == MASKED and isinstance(opened["masked"], bytes)
    # 96 bytes cost 128 characters of base64 (nonce and tag included), not 128 inside 171
    assert len(boxes["a"]) < 4 * (len(raw) + 28) / 3 + 4


@pytest.mark.parametrize("raw", [
    b'{"a":1}', b'{"a":{"$bytes":4}}\nabc', b'{"a":{"$bytes":2}}\nabc', b'{"a":{"$bytes":-1}}\n',
    b'{"a":{"$bytes":true}}\nx', b'{"a":{"$bytes":1,"b":2}}\nx', b'not json\n', b'{"a":1}\nextra',
], ids=["no-newline", "short", "long", "negative", "bool", "extra-key", "not-json", "trailing"])
def test_a_malformed_plaintext_does_not_open(raw) -> None:
    from mipflow.secagg.sealing import from_plaintext

    assert from_plaintext(raw) is None


def test_a_document_holding_the_bytes_key_is_not_sealed() -> None:
    from mipflow.exceptions import RequestError
    from mipflow.secagg.sealing import plaintext

    with pytest.raises(RequestError, match=r"\$bytes"):
        plaintext({"a": {"$bytes": 3}})


def test_a_box_sealed_under_the_former_scheme_is_refused_by_name() -> None:
    """A node running an older mipflow seals under mipflow-seal-v1 (JSON plaintext): its boxes do not
    open here, and the refusal says why (no sums, no value)."""
    import base64
    import os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from mipflow.secagg.sealing import SEAL_SCHEME_V1, associated_data
    from mipflow.secagg.transcript import canonical

    def sealed_v1(sender: str) -> dict[str, str]:
        out = {}
        for name, public in PUBLIC.items():
            nonce = os.urandom(12)
            aad = associated_data(**BOUND, sender=sender, recipient=name, scheme=SEAL_SCHEME_V1)
            box = AESGCM(pair_key(KEYS[sender], public, "seal")).encrypt(nonce, canonical(SUMS), aad)
            out[name] = base64.b64encode(nonce + box).decode("ascii")
        return out

    boxes = {n: _sealed(n) for n in KEYS}
    boxes["c"] = sealed_v1("c")
    assert open_one(KEYS["a"], PUBLIC["c"], boxes["c"]["a"], **BOUND, sender="c", recipient="a") is None
    with pytest.raises(DisclosureError, match="mipflow-seal-v1") as info:
        open_previous(_transcript(boxes), own=KEYS["a"], own_name="a", analysis_id="an-1",
                      algorithm="cox_regression", round_no=2, sealed_key="sealed")
    assert info.value.control == "round_verification"
    assert "'c'" in str(info.value) and not any(v in str(info.value) for v in ("events", "s0", "[3", "4]"))


def test_a_reply_in_wire_form_keeps_its_ciphertexts_as_they_are() -> None:
    import numpy as np

    from mipflow.secagg.transcript import wire

    boxes = _sealed("b")
    doc = {"n": np.int64(10), "counts": np.arange(3), "sealed": boxes}
    out = wire(doc)
    assert out == {"n": 10, "counts": [0, 1, 2], "sealed": boxes} == json.loads(json.dumps(
        {"n": 10, "counts": [0, 1, 2], "sealed": boxes}))
    assert list(out) == list(doc)
