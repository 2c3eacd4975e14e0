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
