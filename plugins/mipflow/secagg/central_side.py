"""The central side of secure aggregation: a participant set per attempt, and the unmasked sum.

The central site fetches every node's public key (:func:`open_session`), sends
the participant list with every step (:meth:`SecureSession.body`) and sums the
masked releases (:func:`unmask_sum`): the masks cancel and only the pooled
aggregates appear, which the algorithm's own global step then combines.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from typing import Any

from mipflow.exceptions import FederationError, RequestError
from mipflow.secagg.codec import FRACTION_BITS, RING_BITS, SCHEME, decode, from_additive
from mipflow.secagg.crypto import fingerprint, public_key


def unmask_sum(replies: Sequence[Mapping[str, Any]]) -> Any:
    """The pooled aggregates from every participant's masked release.

    Raises
    ------
    FederationError
        If the replies differ in scheme, layout or length (the masks could not cancel).
    """
    if not replies:
        raise FederationError("secure aggregation: no replies to sum")
    parts = []
    for reply in replies:
        part = reply.get("secure_aggregation") if isinstance(reply, Mapping) else None
        if not isinstance(part, Mapping) or part.get("scheme") != SCHEME:
            raise FederationError("secure aggregation: a node answered without a masked release")
        parts.append(part)
    layout = parts[0]["layout"]
    length = len(parts[0]["masked"])
    if any(p["layout"] != layout or len(p["masked"]) != length for p in parts):
        raise FederationError("secure aggregation: the nodes' releases do not have the same layout")
    # each ring element parsed once; the sum reduced modulo the ring once, at the end (by decode)
    total = [0] * length
    for part in parts:
        total = [t + int(v, 16) for t, v in zip(total, part["masked"])]
    return from_additive(layout, [decode(v) for v in total])


@dataclass(frozen=True)
class SecureSession:
    """One participant set of a secure analysis (central side)."""

    participants: dict[str, str]  # node name (as the node names itself) -> public key hex
    node_names: dict[str, str]    # federation's name for the node -> the node's own name

    def body(self) -> dict[str, Any]:
        """What every step call carries."""
        return {"scheme": SCHEME, "participants": [{"node": n, "public_key": k}
                                                   for n, k in sorted(self.participants.items())]}

    def combine(self, replies: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """The one pooled aggregate the algorithm's global step gets."""
        missing = set(self.node_names) - set(replies)
        if missing:
            raise FederationError(f"secure aggregation: no reply from {', '.join(sorted(missing))}")
        return unmask_sum([replies[name]["aggregates"] for name in self.node_names])

    def fingerprints(self) -> dict[str, str]:
        """Each participant's key fingerprint, for a result's provenance."""
        return {n: fingerprint(bytes.fromhex(k)) for n, k in sorted(self.participants.items())}

    def provenance(self) -> dict[str, Any]:
        return {"enabled": True, "scheme": SCHEME, "ring_bits": RING_BITS, "fraction_bits": FRACTION_BITS,
                "participants": self.fingerprints()}


def open_session(clients: Sequence[Any], excluded: dict[str, str], pool: Any) -> SecureSession:
    """Fetch every node's public key (in parallel); nodes that do not answer are excluded."""
    futures = {c.name: pool.submit(c.secagg_key) for c in clients}
    participants: dict[str, str] = {}
    names: dict[str, str] = {}
    for name, future in futures.items():
        try:
            doc = future.result()
            key = public_key(doc.get("public_key"), name).hex()
            own_name = str(doc.get("node") or name)
        except (RequestError, AttributeError) as exc:
            excluded[name] = f"secure aggregation: no valid public key ({exc})"
            continue
        except Exception as exc:  # noqa: BLE001 - a node that cannot give its key is left out with the reason
            excluded[name] = f"secure aggregation: public key unavailable ({exc})"
            continue
        if own_name in participants:
            excluded[name] = f"secure aggregation: node name {own_name!r} is used by another node"
            continue
        participants[own_name] = key
        names[name] = own_name
    return SecureSession(participants=participants, node_names=names)
