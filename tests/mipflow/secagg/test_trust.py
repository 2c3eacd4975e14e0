"""Peers' keys (mipflow.secagg.trust): why they are checked, the pinned roster (default),
tofu as a development setting, revocation, key rotation, and the node admin's CLI."""
from __future__ import annotations

import json
from fractions import Fraction

import pytest

from mipflow.exceptions import DisclosureError, RequestError
from mipflow.secagg.codec import SCALE, additive_form, decode
from mipflow.secagg.crypto import KEY_FILE, KeyPair, fingerprint, load_keypair, mask, rotate_keypair
from mipflow.secagg.node_side import masked_release
from mipflow.secagg.trust import PEERS_FILE, TrustStore, pin_each_other, summary
from tests.mipflow.secagg.helpers import KEYS, PUBLIC, context, node_aggregate
from tests.nodes import standard_home


def _refused(store: TrustStore, peers: dict, match: str) -> DisclosureError:
    with pytest.raises(DisclosureError, match=match) as err:
        store.check(peers)
    assert err.value.control == "secure_aggregation"
    return err.value


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

    store = TrustStore(tmp_path)  # no trust store yet: pinned, nobody trusted
    _refused(store, {"hospital_x": centre.public_bytes}, "'hospital_x' has no pinned")
    store.pin("hospital_b", PUBLIC[1].hex())
    store.check({"hospital_b": PUBLIC[1]})
    _refused(store, {"hospital_b": centre.public_bytes}, "'hospital_b' presented .* other than the one pinned")
    _refused(store, {"hospital_b": PUBLIC[1], "hospital_x": centre.public_bytes}, "'hospital_x'")
    assert oct((tmp_path / PEERS_FILE).stat().st_mode & 0o777) == "0o600"


def test_pinned_is_the_default_and_a_missing_store_trusts_nobody(tmp_path) -> None:
    store = TrustStore(tmp_path)
    assert store.load() == {"format": 2, "policy": "pinned", "peers": {}}
    err = _refused(store, {"hospital_b": PUBLIC[1]}, "hospital_b")
    assert "row" not in str(err) and not (tmp_path / PEERS_FILE).exists()  # nothing learned


def test_tofu_is_explicit_and_its_keys_are_refused_once_pinned_again(tmp_path) -> None:
    """The trust-policy-switch finding: keys learned under tofu do not survive a switch to pinned."""
    store = TrustStore(tmp_path)
    store.set_policy("tofu")
    store.check({"hospital_b": PUBLIC[1], "hospital_c": PUBLIC[2]})  # learned on first use
    assert {n: e["source"] for n, e in store.peers().items()} == {"hospital_b": "tofu", "hospital_c": "tofu"}
    _refused(store, {"hospital_b": PUBLIC[2]}, "first seen")  # tofu still stops a later swap
    store.set_policy("pinned")
    _refused(store, {"hospital_b": PUBLIC[1]}, "'hospital_b' has a key learned under trust-on-first-use")
    assert not any(e["accepted"] for e in store.peers().values())
    store.pin("hospital_b", PUBLIC[1].hex())  # the admin compared fingerprints and pinned it
    store.check({"hospital_b": PUBLIC[1]})
    _refused(store, {"hospital_b": PUBLIC[1], "hospital_c": PUBLIC[2]}, "'hospital_c' has a key learned")


def test_a_store_written_while_tofu_was_the_default_is_read_as_pinned(tmp_path) -> None:
    legacy = {"policy": "tofu", "peers": {"hospital_b": {"public_key": PUBLIC[1].hex(), "source": "tofu",
                                                         "at": "2026-12-01T00:00:00Z"}}}
    (tmp_path / PEERS_FILE).write_text(json.dumps(legacy))
    store = TrustStore(tmp_path)
    assert store.policy() == "pinned"
    _refused(store, {"hospital_b": PUBLIC[1]}, "trust-on-first-use")


def test_a_revoked_peer_is_refused_under_either_policy_until_pinned_again(tmp_path) -> None:
    store = TrustStore(tmp_path)
    store.pin("hospital_b", PUBLIC[1].hex())
    assert store.revoke("hospital_b") == fingerprint(PUBLIC[1])
    _refused(store, {"hospital_b": PUBLIC[1]}, "'hospital_b' was revoked")
    store.set_policy("tofu")
    _refused(store, {"hospital_b": PUBLIC[1]}, "'hospital_b' was revoked")  # not re-learned
    assert store.peers()["hospital_b"]["source"] == "revoked"
    store.set_policy("pinned")
    store.pin("hospital_b", PUBLIC[1].hex())
    store.check({"hospital_b": PUBLIC[1]})
    with pytest.raises(RequestError, match="no peer 'hospital_z'"):
        store.revoke("hospital_z")


def test_a_pin_is_refused_when_the_fingerprint_read_out_differs(tmp_path) -> None:
    store = TrustStore(tmp_path)
    with pytest.raises(RequestError, match="not pinned"):
        store.pin("hospital_b", PUBLIC[1].hex(), fingerprint(PUBLIC[2]))
    assert store.peers() == {}
    assert store.pin("hospital_b", PUBLIC[1].hex(), fingerprint(PUBLIC[1]).upper()) == fingerprint(PUBLIC[1])


def test_rotate_replaces_the_key_pair_and_the_old_one_is_gone(tmp_path) -> None:
    old = load_keypair(tmp_path)
    new = rotate_keypair(tmp_path)
    assert new.public_bytes != old.public_bytes
    assert load_keypair(tmp_path).public_bytes == new.public_bytes
    assert oct((tmp_path / KEY_FILE).stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]
    assert old.public_hex not in (tmp_path / KEY_FILE).read_text()


def test_pin_each_other_is_what_the_admins_do_out_of_band(tmp_path) -> None:
    roots = {name: tmp_path / name for name in ("a", "b", "c")}
    for root in roots.values():
        root.mkdir()
    shown = pin_each_other(roots)
    for name, root in roots.items():
        peers = TrustStore(root).peers()
        assert sorted(peers) == sorted(set(roots) - {name})
        assert all(e["source"] == "pinned" and e["fingerprint"] == shown[n] for n, e in peers.items())
        assert summary(root)["peers_accepted"] == sorted(set(roots) - {name})


# --------------------------------------------------------------------------- the node admin's CLI


def _cli(capsys, *args: str) -> tuple[int, dict]:
    from mipflow.cli import main

    code = main(list(args))
    out = capsys.readouterr().out
    return code, (json.loads(out) if code == 0 else {})


def test_cli_key_peers_pin_revoke_rotate_policy(tmp_path, capsys) -> None:

    standard_home(tmp_path / "h", "hospital_a")
    home = str(tmp_path / "h")
    code, shown = _cli(capsys, "secagg", "key", home)
    assert code == 0 and shown["public_key"] == load_keypair(tmp_path / "h").public_hex
    assert shown["fingerprint"] == fingerprint(bytes.fromhex(shown["public_key"]))

    code, listed = _cli(capsys, "secagg", "peers", home)
    assert code == 0 and listed["policy"] == "pinned" and "default" in listed["policy_note"]
    assert listed["peers"] == {}

    code, pinned = _cli(capsys, "secagg", "pin", home, "--peer", "hospital_b", "--public-key", PUBLIC[1].hex(),
                        "--fingerprint", fingerprint(PUBLIC[1]))
    assert code == 0 and pinned == {"peer": "hospital_b", "fingerprint": fingerprint(PUBLIC[1]), "source": "pinned"}
    assert _cli(capsys, "secagg", "pin", home, "--peer", "hospital_c", "--public-key", PUBLIC[2].hex(),
                "--fingerprint", fingerprint(PUBLIC[1]))[0] == 2
    assert _cli(capsys, "secagg", "pin", home, "--peer", "x", "--public-key", "abcd")[0] == 2

    code, listed = _cli(capsys, "secagg", "peers", home)
    entry = listed["peers"]["hospital_b"]
    assert entry["source"] == "pinned" and entry["accepted"] is True and entry["fingerprint"] == fingerprint(PUBLIC[1])

    code, revoked = _cli(capsys, "secagg", "revoke", home, "--peer", "hospital_b")
    assert code == 0 and revoked == {"peer": "hospital_b", "revoked": fingerprint(PUBLIC[1])}
    entry = _cli(capsys, "secagg", "peers", home)[1]["peers"]["hospital_b"]
    assert entry["source"] == "revoked" and entry["accepted"] is False
    assert _cli(capsys, "secagg", "revoke", home, "--peer", "nobody")[0] == 2

    before = load_keypair(tmp_path / "h")
    code, rotated = _cli(capsys, "secagg", "rotate", home)
    after = load_keypair(tmp_path / "h")
    assert code == 0 and after.public_bytes != before.public_bytes
    assert rotated["fingerprint"] == fingerprint(after.public_bytes) and rotated["public_key"] == after.public_hex
    assert rotated["previous_fingerprint"] == fingerprint(before.public_bytes) and "out of band" in rotated["next"]

    from mipflow.cli import main

    assert main(["secagg", "policy", home, "tofu"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["policy"] == "tofu" and "DEVELOPMENT ONLY" in json.loads(captured.out)["policy_note"]
    assert "development setting" in captured.err
    code, listed = _cli(capsys, "secagg", "peers", home)
    assert listed["policy"] == "tofu" and "DEVELOPMENT ONLY" in listed["policy_note"]
    assert _cli(capsys, "secagg", "policy", home, "pinned")[1]["policy"] == "pinned"


def test_cli_help_labels_tofu_as_development_only(capsys) -> None:
    from mipflow.cli import main

    with pytest.raises(SystemExit):
        main(["secagg", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "tofu (DEVELOPMENT ONLY" in text and "pinned (default" in text
    for command in ("key", "peers", "pin", "revoke", "rotate", "policy"):
        assert command in text


def test_node_status_shows_the_trust_policy_and_accepted_peers(tmp_path, capsys) -> None:

    standard_home(tmp_path / "h", "hospital_a")
    assert _cli(capsys, "node", "status", str(tmp_path / "h"))[1]["secure_aggregation"]["fingerprint"] is None
    load_keypair(tmp_path / "h")  # created when the node first serves, or by `mipflow secagg key`
    TrustStore(tmp_path / "h").pin("hospital_b", PUBLIC[1].hex())
    code, status = _cli(capsys, "node", "status", str(tmp_path / "h"))
    shown = status["secure_aggregation"]
    assert code == 0 and shown["policy"] == "pinned" and shown["peers_accepted"] == ["hospital_b"]
    assert shown["fingerprint"] == fingerprint(load_keypair(tmp_path / "h").public_bytes)
    TrustStore(tmp_path / "h").set_policy("tofu")
    shown = _cli(capsys, "node", "status", str(tmp_path / "h"))[1]["secure_aggregation"]
    assert shown["policy"] == "tofu" and "DEVELOPMENT ONLY" in shown["policy_note"]
