"""Which peers' public keys a node accepts: its trust store (``HOME/secagg_peers.json``).

Policy ``pinned`` (the default, also when the file is missing: no peer is
trusted until its admin pins one) accepts only keys the node's admin pinned
after comparing fingerprints out of band with the other hospitals' admins.  A
node therefore takes part in a round only when every other participant is
pinned under exactly the key the central site announced: a malicious central
site can neither substitute a key nor invent a peer whose masks it holds.

Policy ``tofu`` (trust on first use) is a **development setting only**: it
accepts any peer's key the first time it is seen and refuses a change later,
which does not stop a centre that lies from the start or invents peers.  Keys
learned under ``tofu`` are recorded with ``source: "tofu"`` and are refused
once the policy is ``pinned`` again, unless the admin pins them.  A revoked
peer (``source: "revoked"``) is refused under either policy until it is
pinned again.

Trust stores written before ``pinned`` became the default carry no
``format``; they are read as policy ``pinned`` (their learned keys stay
listed as ``tofu`` and are refused until pinned).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

from mipflow.exceptions import DisclosureError, RequestError
from mipflow.secagg.crypto import fingerprint, load_keypair, public_key

PEERS_FILE = "secagg_peers.json"
#: The trust policies; the first is the default.
POLICIES = ("pinned", "tofu")
DEFAULT_POLICY = "pinned"
#: What each policy means, as the CLI, ``mipflow node status`` and the docs label it.
POLICY_LABELS = {
    "pinned": "pinned (default): only peers whose keys this node's admin pinned take part",
    "tofu": "tofu: DEVELOPMENT ONLY, trust on first use; does not stop a central site that invents "
            "peers or substitutes keys from the start",
}
#: Format of the trust store; a file without it predates ``pinned`` as the default.
FORMAT = 2
#: Where a peer's entry came from.
SOURCES = ("pinned", "tofu", "revoked")
#: Trust stores as :meth:`TrustStore.check` last parsed them: path -> (file stamp, document).
_PARSED: dict[str, tuple[tuple[int, int, int, int], dict[str, Any]]] = {}


class TrustStore:
    """The peers' public keys a node accepts (``HOME/secagg_peers.json``, mode 0600).

    ``{"format": 2, "policy": "pinned" | "tofu",
    "peers": {name: {"public_key": hex, "source": "pinned" | "tofu" | "revoked", "at": ...}}}``

    Parameters
    ----------
    root : str or Path
        The node home.
    """

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / PEERS_FILE

    def load(self) -> dict[str, Any]:
        """The trust store; a missing file is policy ``pinned`` with no peers."""
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"format": FORMAT, "policy": DEFAULT_POLICY, "peers": {}}
        if doc.get("format") != FORMAT:  # written while tofu was the implicit default: not a choice
            doc["policy"] = DEFAULT_POLICY
            doc["format"] = FORMAT
        if doc.get("policy") not in POLICIES:
            doc["policy"] = DEFAULT_POLICY
        doc.setdefault("peers", {})
        return doc

    def _current(self) -> Mapping[str, Any]:
        """:meth:`load`, parsed again only when the file changes (read-only: what :meth:`check` reads
        every round).  The file's inode, size and times tell a change (:func:`_save` renames a new
        file over it, so even two writes within one clock tick differ by inode; the rule of
        :func:`mipflow.node.freshness.file_signature`, ADR 0019)."""
        key = str(self.path)
        try:
            st = os.stat(key)
        except FileNotFoundError:
            return self.load()
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = _PARSED.get(key)
        if cached is None or cached[0] != stamp:
            cached = (stamp, self.load())
            _PARSED[key] = cached
        return cached[1]

    def _save(self, doc: Mapping[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(doc, handle, indent=2, sort_keys=True)
        tmp.replace(self.path)

    def policy(self) -> str:
        """The policy in force (``pinned`` unless the admin chose ``tofu``)."""
        return self.load()["policy"]

    def set_policy(self, policy: str) -> None:
        """Switch policy; ``tofu`` is a development setting only (:data:`POLICY_LABELS`)."""
        if policy not in POLICIES:
            raise RequestError(f"secure-aggregation trust policy must be one of {', '.join(POLICIES)}")
        doc = self.load()
        doc["policy"] = policy
        self._save(doc)

    def pin(self, name: str, public_key_hex: str, expected_fingerprint: str | None = None) -> str:
        """Pin ``name``'s public key (as its admin told ours out of band); returns its fingerprint.

        Parameters
        ----------
        name : str
            The peer's node name, as the central site announces it.
        public_key_hex : str
            Its X25519 public key (64 hex digits).
        expected_fingerprint : str, optional
            The fingerprint its admin read out; the pin is refused if the key's differs.

        Raises
        ------
        RequestError
            If the name or key is malformed, or the fingerprint does not match.
        """
        if not isinstance(name, str) or not name.strip() or len(name) > 128:
            raise RequestError("a peer needs a node name (at most 128 characters)")
        key = public_key(public_key_hex, name)
        shown = fingerprint(key)
        if expected_fingerprint is not None and expected_fingerprint.strip().lower() != shown:
            raise RequestError(f"the public key given for {name!r} has fingerprint {shown}, not "
                               f"{expected_fingerprint.strip()}: not pinned")
        doc = self.load()
        doc["peers"][name] = {"public_key": key.hex(), "source": "pinned", "at": _now()}
        self._save(doc)
        return shown

    def revoke(self, name: str) -> str:
        """Stop accepting ``name`` (under either policy) until it is pinned again; returns the
        revoked key's fingerprint.

        Raises
        ------
        RequestError
            If the trust store does not know ``name``.
        """
        doc = self.load()
        entry = doc["peers"].get(name)
        if entry is None:
            raise RequestError(f"no peer {name!r} in the trust store")
        doc["peers"][name] = {"public_key": entry["public_key"], "source": "revoked", "at": _now()}
        self._save(doc)
        return fingerprint(bytes.fromhex(entry["public_key"]))

    def peers(self) -> dict[str, dict[str, Any]]:
        """Every known peer with its key, fingerprint, source, time and whether it is accepted now."""
        doc = self.load()
        return {name: {**entry, "fingerprint": fingerprint(bytes.fromhex(entry["public_key"])),
                       "accepted": _accepted(doc["policy"], entry.get("source"))}
                for name, entry in sorted(doc["peers"].items())}

    def check(self, peers: Mapping[str, bytes]) -> None:
        """Accept the peers' keys or refuse the step.

        Parameters
        ----------
        peers : mapping
            Every other participant's name and announced public key.

        Raises
        ------
        DisclosureError
            (control ``secure_aggregation``, naming the first peer refused) if a
            peer was revoked, if its key differs from the one pinned or first
            seen, or, under policy ``pinned``, if it is not pinned under exactly
            that key (a key learned under ``tofu`` included).
        """
        doc = self._current()
        known = doc["peers"]
        pinned = doc["policy"] == "pinned"
        new: dict[str, bytes] = {}
        for name, key in peers.items():
            entry = known.get(name)
            source = entry.get("source") if entry else None
            if source == "revoked":
                raise DisclosureError(f"peer {name!r} was revoked at this node: not taking part",
                                      control="secure_aggregation")
            if entry is None:
                if pinned:
                    raise DisclosureError(f"peer {name!r} has no pinned secure-aggregation key at this node: "
                                          "not taking part", control="secure_aggregation")
                new[name] = key
            elif entry["public_key"] != key.hex():
                raise DisclosureError(f"peer {name!r} presented a secure-aggregation key other than the one "
                                      f"{'pinned' if source == 'pinned' else 'first seen'} at this node "
                                      "(key substitution?): not taking part", control="secure_aggregation")
            elif pinned and source != "pinned":
                raise DisclosureError(f"peer {name!r} has a key learned under trust-on-first-use, not pinned, at "
                                      "this node: not taking part", control="secure_aggregation")
        if new:
            doc = self.load()  # a fresh copy: the cached one is not written to
            for name, key in new.items():
                doc["peers"].setdefault(name, {"public_key": key.hex(), "source": "tofu", "at": _now()})
            self._save(doc)


def _accepted(policy: str, source: str | None) -> bool:
    return source == "pinned" or (source == "tofu" and policy == "tofu")


def summary(root: str | Path) -> dict[str, Any]:
    """What ``mipflow node status`` shows of secure aggregation: policy (labelled), own fingerprint,
    the peers accepted now and those listed but not accepted (no keys, no data)."""
    store = TrustStore(root)
    doc = store.load()
    try:
        own = fingerprint(load_keypair(root, create=False).public_bytes)
    except FileNotFoundError:
        own = None
    peers = store.peers()
    return {"policy": doc["policy"], "policy_note": POLICY_LABELS[doc["policy"]], "fingerprint": own,
            "peers_accepted": sorted(n for n, e in peers.items() if e["accepted"]),
            "peers_not_accepted": {n: e["source"] for n, e in peers.items() if not e["accepted"]}}


def pin_each_other(roots: Mapping[str, str | Path]) -> dict[str, str]:
    """Every node pins every other node's current public key; returns name -> fingerprint.

    What the hospitals' admins do by exchanging fingerprints out of band
    (``mipflow secagg key`` at each, ``mipflow secagg pin`` at the others), for
    a demo or test federation whose homes are all on one machine.

    Parameters
    ----------
    roots : mapping
        Node name (as the central site announces it) -> node home.
    """
    keys = {name: load_keypair(root) for name, root in roots.items()}
    for name, root in roots.items():
        store = TrustStore(root)
        for peer, pair in keys.items():
            if peer != name:
                store.pin(peer, pair.public_hex)
    return {name: fingerprint(pair.public_bytes) for name, pair in keys.items()}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
