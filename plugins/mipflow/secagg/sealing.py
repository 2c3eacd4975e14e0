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

The plaintext (scheme ``mipflow-seal-v2``, ADR 0055's amendment) is binary: the sealed document's
canonical JSON with each bytes value (a masked vector, :mod:`mipflow.secagg.sealed_masks`) replaced by
``{"$bytes": length}``, a newline, then those bytes in the header's order (:func:`plaintext`).  A
``mipflow-seal-v1`` box (JSON with the masked vector in base64, from a node running an older mipflow)
does not open here: it is refused by name.

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

from mipflow.exceptions import RequestError
from mipflow.secagg.transcript import Transcript, canonical, pair_key, refuse, wire

#: The seal scheme, bound into every ciphertext's associated data (v2: binary plaintext, :func:`plaintext`).
SEAL_SCHEME = "mipflow-seal-v2"
#: The former scheme (JSON plaintext): recognised only to refuse its boxes by name.
SEAL_SCHEME_V1 = "mipflow-seal-v1"
#: AES-GCM nonce bytes (random per ciphertext: 96 bits).
NONCE_BYTES = 12
#: The key of a bytes value's place in a plaintext's header.
BYTES = "$bytes"


def associated_data(*, analysis_id: str, algorithm: str, chain: str, round_no: int, sender: str,
                    recipient: str, scheme: str = SEAL_SCHEME) -> bytes:
    """What a ciphertext is bound to besides its key: scheme, analysis, algorithm, the chain before
    the round, the round, sender and recipient (canonical JSON)."""
    return canonical([scheme, str(analysis_id), algorithm, str(chain), int(round_no), sender, recipient])


def plaintext(doc: Any) -> bytes:
    """What is sealed: the canonical JSON of ``doc`` (its wire form) with every ``bytes`` value replaced
    by ``{"$bytes": length}``, a newline (canonical JSON holds none), then those values' bytes in the
    order of the header's canonical (sorted) form.

    Raises
    ------
    RequestError
        If a mapping in ``doc`` has the key ``"$bytes"`` (it would read as a bytes value) or a value is
        NaN or infinite.
    """
    blobs: list[bytes] = []

    def split(value: Any) -> Any:
        if isinstance(value, (bytes, bytearray, memoryview)):
            blobs.append(bytes(value))
            return {BYTES: len(blobs[-1])}
        if isinstance(value, Mapping):
            named = {str(k): v for k, v in value.items()}
            if BYTES in named:
                raise RequestError(f"sealed sums may not hold the key {BYTES!r}")
            return {k: split(named[k]) for k in sorted(named)}
        if isinstance(value, (list, tuple)):
            return [split(v) for v in value]
        return value

    header = split(doc)
    return canonical(wire(header)) + b"\n" + b"".join(blobs)


def from_plaintext(raw: bytes) -> Any:
    """The document of :func:`plaintext` (bytes values as ``bytes``), or None if ``raw`` is not one."""
    head, newline, blob = raw.partition(b"\n")
    if not newline:
        return None
    try:
        header = json.loads(head)
    except ValueError:
        return None
    offset = 0

    def join(value: Any) -> Any:
        nonlocal offset
        if isinstance(value, dict):
            if BYTES in value:
                size = value[BYTES]
                if (len(value) != 1 or type(size) is not int or size < 0  # noqa: E721 (bool is no size)
                        or offset + size > len(blob)):
                    raise ValueError(BYTES)
                offset += size
                return blob[offset - size:offset]
            return {k: join(v) for k, v in value.items()}
        if isinstance(value, list):
            return [join(v) for v in value]
        return value

    try:
        doc = join(header)
    except ValueError:
        return None
    return doc if offset == len(blob) else None


def seal(own: Any, own_name: str, participants: Mapping[str, bytes], sums: Any, *, analysis_id: str,
         algorithm: str, chain: str, round_no: int) -> dict[str, str]:
    """``sums`` (a JSON document, whose ``bytes`` values travel as they are: :func:`plaintext`) encrypted
    to every participant: name -> base64 of nonce and ciphertext.

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

    content = plaintext(sums)
    out: dict[str, str] = {}
    for name, public in sorted(participants.items()):
        nonce = os.urandom(NONCE_BYTES)
        aad = associated_data(analysis_id=analysis_id, algorithm=algorithm, chain=chain, round_no=round_no,
                              sender=own_name, recipient=name)
        sealed = AESGCM(pair_key(own, public, "seal")).encrypt(nonce, content, aad)
        out[name] = base64.b64encode(nonce + sealed).decode("ascii")
    return out


def _decrypt(own: Any, sender_public: bytes, box: Any, aad: bytes) -> bytes | None:
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
    try:
        return AESGCM(pair_key(own, sender_public, "seal")).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad)
    except InvalidTag:
        return None


def open_one(own: Any, sender_public: bytes, box: Any, *, analysis_id: str, algorithm: str, chain: str,
             round_no: int, sender: str, recipient: str) -> Any:
    """The document sealed by ``sender`` for ``recipient`` (``own``) in ``box`` (bytes values as
    ``bytes``), or None when it does not open (not base64, too short, wrong key, changed, bound to
    another analysis, round, sender or recipient, or another seal scheme)."""
    content = _decrypt(own, sender_public, box, associated_data(
        analysis_id=analysis_id, algorithm=algorithm, chain=chain, round_no=round_no, sender=sender,
        recipient=recipient))
    return None if content is None else from_plaintext(content)


def sealed_v1(own: Any, sender_public: bytes, box: Any, *, analysis_id: str, algorithm: str, chain: str,
              round_no: int, sender: str, recipient: str) -> bool:
    """Whether ``box`` opens under the former scheme ``mipflow-seal-v1`` (a node running an older mipflow)."""
    return _decrypt(own, sender_public, box, associated_data(
        analysis_id=analysis_id, algorithm=algorithm, chain=chain, round_no=round_no, sender=sender,
        recipient=recipient, scheme=SEAL_SCHEME_V1)) is not None


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
        bound = dict(analysis_id=analysis_id, algorithm=algorithm, chain=previous["chain"], round_no=round_no - 1,
                     sender=sender, recipient=own_name)
        doc = open_one(own, transcript.participants[sender], box[own_name], **bound)
        if doc is None and sealed_v1(own, transcript.participants[sender], box[own_name], **bound):
            raise refuse(f"the sealed sums of {sender!r} in round {round_no - 1} are sealed under {SEAL_SCHEME_V1} "
                         f"(a node running an older mipflow): every participant must seal under {SEAL_SCHEME}")
        if doc is None:
            raise refuse(f"the sealed sums of {sender!r} addressed to this node in round {round_no - 1} do not open: "
                         "changed, moved from another slot, or taken from another round or analysis")
        opened.append(doc)
    return opened
