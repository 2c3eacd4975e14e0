"""A hostile central site against the pinned roster, through three real node processes.

Each hospital's admin pinned the other two hospitals' secure-aggregation keys
(``tests.nodes.pin_each_other``: what they do after comparing fingerprints out
of band).  The central site holds valid credentials for every node and tries to
learn one node's aggregates by making it mask against keys the centre holds: an
invented peer, a substituted key, a key a node learned under trust-on-first-use,
a revoked peer, a key its owner has rotated away.  Every real node asked to mask
refuses with control ``secure_aggregation``, naming the peer and nothing about
its data.  Honest rounds among the pinned nodes go through before and after.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from mipflow.central.client import NodeClient, NodeRefused
from mipflow.central.rounds import run_analysis
from mipflow.cli import main as mipflow
from mipflow.node.controls.audit import AUDIT_FILE
from mipflow.secagg.codec import SCHEME
from mipflow.secagg.crypto import KeyPair
from mipflow.secagg.trust import PEERS_FILE, TrustStore
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request
from tests.nodes import PROJECT, RESEARCHER, grant_all, load_frame, pin_each_other, served_clients
from tests.nodes import standard_home

pytestmark = pytest.mark.xdist_group("roster_attacks")

NODES = ("hospital_a", "hospital_b", "hospital_c")
DATA = make_data(20270113, 240)
SPLIT = np.arange(len(DATA)) % 3
CASE = request(y=("x2",), alt_hypothesis="two-sided", alpha=0.05, mu=0.0)
#: The hostile centre's own key pairs, which it passes off as peers.
CENTRE = [KeyPair.generate() for _ in range(2)]


@dataclass
class Fed:
    roots: dict[str, Path]
    clients: dict[str, NodeClient]

    def keys(self) -> dict[str, str]:
        """Each node's public key as it serves it now (GET /v1/secagg/key)."""
        return {name: client.secagg_key()["public_key"] for name, client in self.clients.items()}

    def honest_run(self):
        return run_analysis("ttest_onesample", CASE.to_dict(), list(self.clients.values()),
                            researcher=RESEARCHER, project=PROJECT, secure_aggregation=True)

    def refused(self, node: str, participants: dict[str, str], peer: str) -> NodeRefused:
        """Ask ``node`` to mask among ``participants``; assert it refuses, naming ``peer``."""
        body = {"scheme": SCHEME, "participants": [{"node": n, "public_key": k} for n, k in participants.items()]}
        with pytest.raises(NodeRefused) as err:
            self.clients[node].step("ttest_onesample", CASE.to_dict(), 0, None, researcher=RESEARCHER,
                                    project=PROJECT, analysis_id=uuid.uuid4().hex, secure_aggregation=body)
        refusal = err.value
        assert refusal.status == 403 and refusal.control == "secure_aggregation", refusal
        assert repr(peer) in refusal.reason, refusal.reason
        assert not any(word in refusal.reason for word in ("rows", "mean", "x2", "aggregate")), refusal.reason
        last = json.loads((self.roots[node] / AUDIT_FILE).read_text().splitlines()[-1])
        assert last["decision"] == "refused" and last.get("control") == "secure_aggregation", last
        return refusal


@pytest.fixture(scope="module")
def fed(tmp_path_factory) -> Iterator[Fed]:
    base = tmp_path_factory.mktemp("roster")
    roots = {}
    data = DATA.assign(subjectcode=[f"p{i}" for i in range(len(DATA))])
    for k, node in enumerate(NODES):
        roots[node] = base / node
        standard_home(roots[node], node)  # default settings; trust policy pinned by default
        load_frame(roots[node], MODEL, data[SPLIT == k].reset_index(drop=True))
        grant_all(roots[node])
    pin_each_other(roots)  # the admins compared fingerprints out of band and pinned each other
    with served_clients(roots) as served:
        yield Fed(roots, served)


@pytest.fixture
def fresh(fed: Fed) -> Iterator[Fed]:
    """Each attack starts from, and leaves, a federation whose nodes pinned each other's current keys."""
    outcome = fed.honest_run()
    assert outcome.secure_aggregation["enabled"] and sorted(outcome.secure_aggregation["participants"]) == list(NODES)
    yield fed
    pin_each_other(fed.roots)


def test_an_invented_peer_among_real_participants_is_refused_by_every_node(fresh: Fed) -> None:
    """(a) The Sybil attack: the centre announces hospital_z, whose key it holds; with it among the
    participants the centre could strip hospital_z's share of each node's mask."""
    participants = {**fresh.keys(), "hospital_z": CENTRE[0].public_hex}
    for node in NODES:
        fresh.refused(node, participants, "hospital_z")
    # also when the invented peer is the only other participant
    keys = fresh.keys()
    fresh.refused("hospital_a", {"hospital_a": keys["hospital_a"], "hospital_z": CENTRE[0].public_hex},
                  "hospital_z")


def test_a_key_substituted_for_a_real_peer_is_refused(fresh: Fed) -> None:
    """(b) Each node is sent a list in which its peers carry the centre's keys."""
    keys = fresh.keys()
    for node in NODES:
        others = [n for n in NODES if n != node]
        fresh.refused(node, {**keys, others[0]: CENTRE[0].public_hex}, others[0])
        fresh.refused(node, {**keys, others[0]: CENTRE[0].public_hex, others[1]: CENTRE[1].public_hex}, others[0])


def test_a_key_learned_under_tofu_is_refused_after_the_switch_to_pinned(fresh: Fed) -> None:
    """(c) The trust-policy-switch finding: hospital_a ran under tofu (development setting) and
    learned whatever keys the centre announced; once its admin switches to pinned, those keys
    are refused until the admin pins them."""
    home = fresh.roots["hospital_a"]
    (home / PEERS_FILE).unlink()
    assert mipflow(["secagg", "policy", str(home), "tofu"]) == 0
    keys = fresh.keys()
    learned = {**keys, "hospital_c": CENTRE[0].public_hex}  # the centre lied while hospital_a trusted on first use
    body = {"scheme": SCHEME, "participants": [{"node": n, "public_key": k} for n, k in learned.items()]}
    reply = fresh.clients["hospital_a"].step("ttest_onesample", CASE.to_dict(), 0, None, researcher=RESEARCHER,
                                             project=PROJECT, analysis_id=uuid.uuid4().hex,
                                             secure_aggregation=body)
    assert set(reply["aggregates"]) == {"secure_aggregation"}  # tofu accepted the centre's key: the weakness
    assert {n: e["source"] for n, e in TrustStore(home).peers().items()} == {"hospital_b": "tofu",
                                                                           "hospital_c": "tofu"}
    assert mipflow(["secagg", "policy", str(home), "pinned"]) == 0
    fresh.refused("hospital_a", learned, "hospital_b")      # learned under tofu, though it is the real key
    fresh.refused("hospital_a", keys, "hospital_b")
    outcome = fresh.honest_run()                             # the centre restarts without hospital_a
    assert "hospital_a" in outcome.excluded and "trust-on-first-use" in outcome.excluded["hospital_a"]
    assert mipflow(["secagg", "pin", str(home), "--peer", "hospital_b", "--public-key", keys["hospital_b"]]) == 0
    fresh.refused("hospital_a", learned, "hospital_c")      # the centre's key stays refused
    fresh.refused("hospital_a", keys, "hospital_c")         # so does the real one, until pinned


def test_a_revoked_peer_is_refused(fresh: Fed) -> None:
    """(d) hospital_a's admin revokes hospital_c: hospital_a takes no part in a round with it."""
    home = fresh.roots["hospital_a"]
    assert mipflow(["secagg", "revoke", str(home), "--peer", "hospital_c"]) == 0
    keys = fresh.keys()
    fresh.refused("hospital_a", keys, "hospital_c")
    outcome = fresh.honest_run()
    assert list(outcome.excluded) == ["hospital_a"] and "revoked" in outcome.excluded["hospital_a"]
    assert sorted(outcome.secure_aggregation["participants"]) == ["hospital_b", "hospital_c"]


def test_after_rotate_peers_refuse_until_they_pin_the_new_key(fresh: Fed, capsys) -> None:
    """(e) hospital_c rotates its key pair; hospital_a and hospital_b, which pinned the old key,
    refuse rounds with it until their admins pin the new one (told out of band)."""
    old = fresh.keys()["hospital_c"]
    capsys.readouterr()
    assert mipflow(["secagg", "rotate", str(fresh.roots["hospital_c"])]) == 0
    rotated = json.loads(capsys.readouterr().out)
    keys = fresh.keys()
    assert keys["hospital_c"] == rotated["public_key"] != old  # the node serves its new key at once
    for node in ("hospital_a", "hospital_b"):
        fresh.refused(node, keys, "hospital_c")
    fresh.refused("hospital_c", {**keys, "hospital_c": old}, "hospital_c")  # its old key is gone: not itself
    for node in ("hospital_a", "hospital_b"):
        assert mipflow(["secagg", "pin", str(fresh.roots[node]), "--peer", "hospital_c", "--public-key",
                        rotated["public_key"], "--fingerprint", rotated["fingerprint"]]) == 0
    outcome = fresh.honest_run()
    assert not outcome.excluded and sorted(outcome.secure_aggregation["participants"]) == list(NODES)
