"""The node's side of secure aggregation: mask its released aggregates for a secure sum.

After its disclosure controls (and DP noise), a node asked for a masked
release checks the participant list (its own key, its trust store), rewrites
its aggregates into what is summed (the algorithm's ``secure_aggregates``),
encodes them in the ring and adds its pairwise masks.
"""
from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Iterable, Mapping
from typing import Any

from mipflow.exceptions import DisclosureError, RequestError
from mipflow.secagg.codec import RING, SCHEME, additive_form, encode
from mipflow.secagg.crypto import KeyPair, cached_keypair, context_digest, mask, public_key
from mipflow.secagg.policy import as_request, masked_round, refusal
from mipflow.secagg.trust import TrustStore

#: Largest participant list a node accepts.
MAX_PARTICIPANTS = 64


def participant_keys(items: Any, *, minimum: int, maximum: int, count_error: str, noun: str,
                     subject: str) -> dict[str, bytes]:
    """A participant list ``[{"node": name, "public_key": hex}, ...]`` -> name -> key, checked.

    Shared by secure aggregation (:func:`parse_participants`) and verifiable rounds
    (:func:`mipflow.secagg.transcript.parse`); ``count_error``, ``noun`` and ``subject`` word
    their messages.

    Raises
    ------
    RequestError
        If the list is not ``minimum`` to ``maximum`` entries, an entry has no node name or no
        valid key, or it names a node or key twice.
    """
    if not isinstance(items, list) or not minimum <= len(items) <= maximum:
        raise RequestError(count_error)
    out: dict[str, bytes] = {}
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("node"), str) or not item["node"]:
            raise RequestError(f"each {noun} participant needs a node name and a public key")
        name = item["node"][:128]
        if name in out:
            raise RequestError(f"{subject} lists node {name!r} twice")
        out[name] = public_key(item.get("public_key"), name)
    if len(set(out.values())) != len(out):
        raise RequestError(f"{subject} lists one public key for two nodes")
    return out


def parse_participants(spec: Any) -> dict[str, bytes]:
    """``{"participants": [{"node": name, "public_key": hex}, ...]}`` -> name -> key.

    Raises
    ------
    RequestError
        If the list is malformed, too long, or names a node or key twice.
    """
    if not isinstance(spec, Mapping) or spec.get("scheme") != SCHEME:
        raise RequestError(f"secure_aggregation must name the scheme {SCHEME!r} and list its participants")
    return participant_keys(spec.get("participants"), minimum=2, maximum=MAX_PARTICIPANTS,
                            count_error=f"secure aggregation needs 2 to {MAX_PARTICIPANTS} participants",
                            noun="secure-aggregation", subject="secure aggregation")


def secure_form(algorithm: str, aggregates: Mapping[str, Any], request: Any, model: Any) -> Any:
    """What a node sums for ``algorithm``: the algorithm's ``secure_aggregates`` form of its
    released aggregates (run after the controls; as released unless the algorithm rewrites them)."""
    from mipflow.algorithms import get_algorithm

    return get_algorithm(algorithm).secure_aggregates(aggregates, as_request(request), model)


def mask_release(root: str | Path, node_name: str, algorithm: str, request: Any,
                 round_no: int, state: Any, analysis_id: str | None, spec: Any,
                 aggregates: Mapping[str, Any], *, model: Any = None) -> dict[str, Any]:
    """What a node releases under secure aggregation, in place of ``aggregates``.

    Runs after the node's disclosure controls (``aggregates`` is what they
    released; ``model`` is the data model, for :func:`secure_form`).  ``request`` is
    the node's parsed :class:`~mipflow.protocol.request.AnalysisRequest` (passed on as
    it is; its JSON form only goes into the seed context) or that JSON form.  Returns
    ``{"secure_aggregation": {"scheme", "layout", "masked": [hex, ...]}}``.

    Raises
    ------
    RequestError
        If the algorithm (or this request of it) does not support secure
        aggregation, masks no release in this round (``masked_round``), or the
        call is malformed.
    DisclosureError
        (control ``secure_aggregation``) if the node is not among the
        participants under its own key, or a peer's key is not trusted.
    """
    reason = refusal(algorithm, request)
    if reason is not None:
        raise RequestError(reason)
    if not masked_round(algorithm, round_no, state):  # (the step chain does not call it for such a round)
        raise RequestError(f"round {round_no} of {algorithm} is released in the clear, not masked (ADR 0048)")
    if not analysis_id:
        raise RequestError("secure aggregation needs the analysis_id (it is bound into the masks)")
    participants = parse_participants(spec)
    own = cached_keypair(root)
    if participants.get(node_name) != own.public_bytes:
        raise DisclosureError(f"node {node_name!r} is not among the secure-aggregation participants under its "
                              "own public key", control="secure_aggregation")
    TrustStore(root).check({k: v for k, v in participants.items() if k != node_name})
    document = request.to_dict() if hasattr(request, "to_dict") else request
    context = context_digest(analysis_id=analysis_id, algorithm=algorithm, round_no=round_no,
                             request=document, state=state, participants=participants.values())
    # sealed sums (ciphertexts for the other nodes, ADR 0046) are not summed centrally: kept beside the masks
    from mipflow.algorithms.sealed import SEALED

    rest = {k: v for k, v in aggregates.items() if k != SEALED}
    released = masked_release(own, participants.values(), context, secure_form(algorithm, rest, request, model))
    return {**released, SEALED: aggregates[SEALED]} if SEALED in aggregates else released


def masked_release(own: KeyPair, participants: Iterable[bytes], context: bytes,
                   aggregates: Mapping[str, Any]) -> dict[str, Any]:
    """``aggregates`` in additive form, fixed point, plus node ``own``'s pairwise masks.

    Returns ``{"secure_aggregation": {"scheme", "layout", "masked": [hex, ...]}}``.
    """
    try:
        plain = json.loads(json.dumps(aggregates, allow_nan=False))
    except ValueError:
        raise RequestError("secure aggregation cannot sum NaN or infinite aggregates") from None
    layout, vector = additive_form(plain)
    encoded = [encode(v) for v in vector]
    masks = mask(own, participants, context, len(encoded))
    masked = [(e + m) % RING for e, m in zip(encoded, masks)]
    return {"secure_aggregation": {"scheme": SCHEME, "layout": layout,
                                   "masked": [format(v, "x") for v in masked]}}
