"""Masked sealed sums: what a node seals to its peers hides its own part from them too (ADR 0052).

Sealing (:mod:`mipflow.secagg.sealing`, ADR 0046) keeps sums from the central site, not from the
peers: each participant decrypts every other participant's ciphertext addressed to it, so a curious
peer reads each node's sums one by one.  An algorithm that needs its peers to learn only the **pool**
(``sealed_masked = True``; Kaplan-Meier's fine counts, ADR 0052) has its sealed sums masked first,
as a masked release is (ADR 0014): integer arrays in ``Z/2^64`` plus the node's pairwise masks
``sum_j sign_ij * PRG(seed_ij)`` over the other participants, the seeds bound to the analysis, the
round, the request, the state and the participant set, and separated from the round's masked
release (``algorithm + "|sealed"`` in the context).  Each part a peer opens is uniform to it unless it
knows the node's masks with *every* other participant; the masks cancel only in the sum over all
participants, which every node forms (:func:`unmask_parts`).

Integers only (counts): the sum of the parts must stay below 2^63 in absolute value.
"""
from __future__ import annotations

import base64
from typing import Any, Mapping

import numpy as np

from mipflow.exceptions import RequestError

from mipflow.algorithms.sealed import ELEMENT_BYTES, MASKED_SCHEME, is_masked, unmask_parts  # noqa: F401

# ``is_masked`` and ``unmask_parts`` (adding parts whose masks cancel: no key) live with the algorithms'
# sealed-rounds capability, which pools them (``mipflow.algorithms.survival_pooled``); masking, which
# needs the node's pairwise seeds, stays here.


def _stream(seed: bytes, length: int) -> np.ndarray:
    """``length`` uniform elements of ``Z/2^64`` from a ChaCha20 keystream keyed by ``seed``."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    encryptor = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None).encryptor()
    return np.frombuffer(encryptor.update(b"\x00" * (ELEMENT_BYTES * length)), dtype="<u8").copy()


def mask_sums(own: Any, participants: Mapping[str, bytes], context: bytes,
              sums: Mapping[str, Any]) -> dict[str, Any]:
    """``sums`` (name -> integer array) as one masked vector: ``{"scheme", "layout", "masked"}``.

    ``own`` is the node's :class:`~mipflow.secagg.crypto.KeyPair`, ``participants`` every participant's
    public key (the node's own included), ``context`` the step's context (the same at every node).
    """
    from mipflow.secagg.crypto import pair_seed

    layout, pieces = [], []
    for name in sorted(sums):
        array = np.asarray(sums[name])
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise RequestError(f"masked sealed sums hold integers only ({name!r} does not)")
        layout.append([name, list(array.shape)])
        pieces.append(array.astype(np.int64).ravel().view(np.uint64))
    vector = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint64)
    me = own.public_bytes
    with np.errstate(over="ignore"):
        for peer in sorted(participants.values()):
            if peer == me:
                continue
            stream = _stream(pair_seed(own, peer, context), len(vector))
            vector = vector + stream if me < peer else vector - stream  # wraps modulo 2^64
    return {"scheme": MASKED_SCHEME, "layout": layout,
            "masked": base64.b64encode(vector.astype("<u8").tobytes()).decode("ascii")}


def mask_step_sums(own: Any, participants: Mapping[str, bytes], sums: Mapping[str, Any], *, analysis_id: str,
                   algorithm: str, round_no: int, request: Mapping[str, Any], state: Any) -> dict[str, Any]:
    """:func:`mask_sums` for one step: the seeds bound to the analysis, the round, the request, the
    state and the participants, apart from the round's masked release (``algorithm + "|sealed"``)."""
    from mipflow.secagg.crypto import context_digest

    context = context_digest(analysis_id=analysis_id, algorithm=f"{algorithm}|sealed", round_no=round_no,
                             request=request, state=state, participants=participants.values())
    return mask_sums(own, participants, context, sums)
