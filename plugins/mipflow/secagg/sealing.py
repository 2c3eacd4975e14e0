"""Sealed round sums: a node's sums encrypted to every participant, forwarded but not read by the centre.

An algorithm with ``sealed_rounds`` (:mod:`mipflow.algorithms.sealed`, ADR 0046) returns sums that the
other nodes need and the central site does not (Cox regression's per-bin risk-set sums).  After the
node's disclosure controls have seen them, :func:`seal` replaces them with one ciphertext per
participant of the analysis (the node itself included): AES-256-GCM under the pair's static key
``HKDF(X25519(own, peer), salt=scheme, info="pair-seal|" + both public keys)``
(:func:`mipflow.secagg.transcript.pair_key`; for itself, a key from its own private key, as the round
tags), a random 96-bit nonce, and associated data binding the seal scheme, analysis, algorithm, the
chain before the round (ADR 0029), the round, the sender and the recipient.  The ciphertexts sit inside
the node's aggregates, so its round tags and the hash chain cover them too: the central site can
forward them, not change, drop or swap them without a tag failing.  The associated data also stops a
peer (which shares the pair key) from passing one ciphertext off as another: the one it received,
as its own to the sender; one of another round or analysis.

At the next round, once the node has verified the transcript (:func:`mipflow.secagg.transcript.verify_step`),
:func:`open_previous` opens the ciphertext addressed to it in every participant's contribution of the
previous round (its own included); a missing, extra or unopenable one is refused with control
``round_verification``.  The node adds what it opened (the algorithm's ``pool_sealed``) and hands the
sum to its local step only.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any, Mapping

from mipflow.secagg.transcript import Transcript, canonical, pair_key, refuse, wire

#: The seal scheme, bound into every ciphertext's associated data.
SEAL_SCHEME = "mipflow-seal-v1"
#: AES-GCM nonce bytes (random per ciphertext: 96 bits).
NONCE_BYTES = 12


def associated_data(*, analysis_id: str, algorithm: str, chain: str, round_no: int, sender: str,
                    recipient: str) -> bytes:
    """What a ciphertext is bound to besides its key: scheme, analysis, algorithm, the chain before
    the round, the round, sender and recipient (canonical JSON)."""
    return canonical([SEAL_SCHEME, str(analysis_id), algorithm, str(chain), int(round_no), sender, recipient])


def seal(own: Any, own_name: str, participants: Mapping[str, bytes], sums: Any, *, analysis_id: str,
         algorithm: str, chain: str, round_no: int) -> dict[str, str]:
    """``sums`` (a JSON document) encrypted to every participant: name -> base64 of nonce and ciphertext.

    Parameters
    ----------
    own : KeyPair
        The sealing node's key pair; ``own_name`` its name among ``participants`` (name -> public key).
    sums : Any
        What is sealed (its wire form, :func:`mipflow.secagg.transcript.wire`).
    analysis_id, algorithm, chain, round_no
        The analysis, the algorithm, the chain before this round and the round.
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    plaintext = canonical(wire(sums))
    out: dict[str, str] = {}
    for name, public in sorted(participants.items()):
        nonce = os.urandom(NONCE_BYTES)
        aad = associated_data(analysis_id=analysis_id, algorithm=algorithm, chain=chain, round_no=round_no,
                              sender=own_name, recipient=name)
        sealed = AESGCM(pair_key(own, public, "seal")).encrypt(nonce, plaintext, aad)
        out[name] = base64.b64encode(nonce + sealed).decode("ascii")
    return out


def open_one(own: Any, sender_public: bytes, box: Any, *, analysis_id: str, algorithm: str, chain: str,
             round_no: int, sender: str, recipient: str) -> Any:
    """The document sealed by ``sender`` for ``recipient`` (``own``) in ``box``, or None when it does
    not open (not base64, too short, wrong key, changed, or bound to another analysis, round, sender
    or recipient)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not isinstance(box, str):
        return None
    try:
        raw = base64.b64decode(box, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) <= NONCE_BYTES + 16:
        return None
    aad = associated_data(analysis_id=analysis_id, algorithm=algorithm, chain=chain, round_no=round_no,
                          sender=sender, recipient=recipient)
    try:
        plaintext = AESGCM(pair_key(own, sender_public, "seal")).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad)
    except InvalidTag:
        return None
    return json.loads(plaintext)


def open_previous(transcript: Transcript, *, own: Any, own_name: str, analysis_id: str, algorithm: str,
                  round_no: int, sealed_key: str) -> list[Any] | None:
    """The sums every participant sealed to ``own_name`` in round ``round_no - 1`` (in the
    transcript's order), or None when no contribution of that round carries sealed sums.

    The transcript must have been verified (:func:`mipflow.secagg.transcript.verify_step`): one
    contribution per participant, each with a valid tag for this node.

    Raises
    ------
    DisclosureError
        (control ``round_verification``) if some contributions carry sealed sums and others none,
        a contribution does not hold exactly one ciphertext per participant, or the one addressed
        to this node does not open.
    """
    previous = transcript.previous
    if previous is None:
        return None
    contributions = previous["contributions"]
    boxes = [c.get("aggregates", {}).get(sealed_key) if isinstance(c.get("aggregates"), Mapping) else None
             for c in contributions]
    if all(box is None for box in boxes):
        return None
    opened = []
    for contribution, box in zip(contributions, boxes):
        sender = contribution["node"]
        if not isinstance(box, Mapping):
            raise refuse(f"the contribution of {sender!r} to round {round_no - 1} carries no sealed sums while "
                         "others do")
        if set(box) != set(transcript.participants):
            raise refuse(f"the sealed sums of {sender!r} in round {round_no - 1} must hold exactly one ciphertext "
                         "per participant")
        doc = open_one(own, transcript.participants[sender], box[own_name], analysis_id=analysis_id,
                       algorithm=algorithm, chain=previous["chain"], round_no=round_no - 1, sender=sender,
                       recipient=own_name)
        if doc is None:
            raise refuse(f"the sealed sums of {sender!r} addressed to this node in round {round_no - 1} do not open: "
                         "changed, moved from another slot, or taken from another round or analysis")
        opened.append(doc)
    return opened
