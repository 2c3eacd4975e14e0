"""Which peers' public keys a node accepts: its trust store (``HOME/secagg_peers.json``).

Keys pinned by its admin (policy ``pinned``: unknown or different keys are
refused, which stops a malicious central site from substituting keys or
inventing peers), or, by default, trust on first use (``tofu``: a peer's key may
not change once seen).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

from mipflow.exceptions import DisclosureError, RequestError
from mipflow.secagg.crypto import fingerprint, public_key

PEERS_FILE = "secagg_peers.json"
POLICIES = ("tofu", "pinned")


class TrustStore:
    """The peers' public keys a node accepts (``HOME/secagg_peers.json``, mode 0600).

    ``{"policy": "tofu" | "pinned", "peers": {name: {"public_key": hex, "source": "pinned" | "tofu", "at": ...}}}``
    """

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / PEERS_FILE

    def load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"policy": "tofu", "peers": {}}
        doc.setdefault("policy", "tofu")
        doc.setdefault("peers", {})
        return doc

    def _save(self, doc: Mapping[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(doc, handle, indent=2, sort_keys=True)
        tmp.replace(self.path)

    def set_policy(self, policy: str) -> None:
        if policy not in POLICIES:
            raise RequestError(f"secure-aggregation trust policy must be one of {', '.join(POLICIES)}")
        doc = self.load()
        doc["policy"] = policy
        self._save(doc)

    def pin(self, name: str, public_key_hex: str) -> str:
        """Pin ``name``'s public key (as its admin told ours out of band); returns its fingerprint."""
        key = public_key(public_key_hex, name)
        doc = self.load()
        doc["peers"][name] = {"public_key": key.hex(), "source": "pinned", "at": _now()}
        self._save(doc)
        return fingerprint(key)

    def check(self, peers: Mapping[str, bytes]) -> None:
        """Accept the peers' keys or refuse the step.

        Raises
        ------
        DisclosureError
            (control ``secure_aggregation``) if a peer's key differs from the
            one pinned or first seen, or, under policy ``pinned``, if a peer is
            not pinned at all.
        """
        doc = self.load()
        known = doc["peers"]
        new: dict[str, bytes] = {}
        for name, key in peers.items():
            entry = known.get(name)
            if entry is None:
                if doc["policy"] == "pinned":
                    raise DisclosureError(f"peer {name!r} has no pinned secure-aggregation key at this node",
                                          control="secure_aggregation")
                new[name] = key
            elif entry["public_key"] != key.hex():
                raise DisclosureError(f"peer {name!r} presented a secure-aggregation key other than the one "
                                      f"{'pinned' if entry.get('source') == 'pinned' else 'first seen'} at this "
                                      "node (key substitution?)", control="secure_aggregation")
        if new:
            for name, key in new.items():
                known[name] = {"public_key": key.hex(), "source": "tofu", "at": _now()}
            self._save(doc)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
