"""Peers' keys (mipflow.secagg.trust): why they are checked, tofu and pinning, and the node CLI."""
from __future__ import annotations

import json
from fractions import Fraction

import pytest

from mipflow.secagg.codec import SCALE, additive_form, decode
from mipflow.secagg.crypto import KeyPair, fingerprint, load_keypair, mask
from mipflow.secagg.node_side import masked_release
from mipflow.secagg.trust import PEERS_FILE, TrustStore
from mipflow.exceptions import DisclosureError
from tests.mipflow.secagg.helpers import KEYS, PUBLIC, context, node_aggregate


def test_key_substitution_would_unmask_a_node_which_is_why_peers_are_checked(tmp_path) -> None:
    """What the trust store is for: with keys the centre controls for every peer of node 0,
    the centre computes node 0's masks.  The trust store refuses those keys."""
    ctx = context()
    centre = KeyPair.generate()
    fake = [PUBLIC[0], centre.public_bytes]
    aggregate = node_aggregate()
    release = masked_release(KEYS[0], fake, ctx, aggregate)
    layout, truth = additive_form(aggregate)
    theirs = mask(centre, fake, ctx, len(truth))  # the centre's side of the pair
    unmasked = [decode(int(v, 16) + m) for v, m in zip(release["secure_aggregation"]["masked"], theirs)]
    assert all(abs(u - t) <= Fraction(1, SCALE) for u, t in zip(unmasked, truth))

    # trust on first use: a known peer's key may not change
    store = TrustStore(tmp_path)
    store.check({"hospital_b": PUBLIC[1], "hospital_c": PUBLIC[2]})
    store.check({"hospital_b": PUBLIC[1]})
    with pytest.raises(DisclosureError, match="first seen") as err:
        store.check({"hospital_b": centre.public_bytes})
    assert err.value.control == "secure_aggregation"
    # pinned: only keys the admin pinned, so neither substituted nor invented peers
    store.set_policy("pinned")
    with pytest.raises(DisclosureError, match="no pinned"):
        store.check({"hospital_x": centre.public_bytes})
    store.pin("hospital_b", PUBLIC[2].hex())
    with pytest.raises(DisclosureError, match="pinned"):
        store.check({"hospital_b": PUBLIC[1]})
    assert oct((tmp_path / PEERS_FILE).stat().st_mode & 0o777) == "0o600"


def test_cli_key_pin_policy(tmp_path, capsys) -> None:
    from mipflow.cli import main
    from mipflow.node.home import NodeHome

    NodeHome.init(tmp_path / "h", "hospital_a")
    assert main(["secagg", "key", str(tmp_path / "h")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["public_key"] == load_keypair(tmp_path / "h").public_hex
    assert main(["secagg", "pin", str(tmp_path / "h"), "--peer", "hospital_b", "--public-key", PUBLIC[1].hex()]) == 0
    assert json.loads(capsys.readouterr().out)["fingerprint"] == fingerprint(PUBLIC[1])
    assert main(["secagg", "policy", str(tmp_path / "h"), "pinned"]) == 0
    capsys.readouterr()
    assert main(["secagg", "peers", str(tmp_path / "h")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["policy"] == "pinned" and doc["peers"]["hospital_b"]["source"] == "pinned"
    assert main(["secagg", "pin", str(tmp_path / "h"), "--peer", "x", "--public-key", "abcd"]) == 2
