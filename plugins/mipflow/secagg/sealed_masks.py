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

Integers (counts, :data:`MASKED_SCHEME`): the sum of the parts must stay below 2^63 in absolute value.
Real numbers (Cox regression's risk-set sums, ADR 0055, :data:`REAL_MASKED_SCHEME`): fixed point in
``Z/2^256`` with 128 fractional bits (:func:`encode_real`): a value ``v`` is ``round(v * 2^128)``,
resolution 2.9e-39 absolute; a node refuses a value of magnitude ``2^110`` or more, or one not finite,
without naming it, so sums over up to ``2^16`` nodes decode without wrapping.
"""
from __future__ import annotations

import base64
from typing import Any, Mapping

import numpy as np

from mipflow.exceptions import RequestError

from mipflow.algorithms.packed import unpack
from mipflow.algorithms.sealed import (  # noqa: F401
    ELEMENT_BYTES,
    MASKED_SCHEME,
    REAL_ELEMENT_BYTES,
    REAL_FRACTION_BITS,
    REAL_MAGNITUDE_BITS,
    REAL_MASKED_SCHEME,
    is_masked,
    ring_elements,  # integers of a part, for inspection
    unmask_parts,
)

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
    """``sums`` (name -> integer array) as one masked vector: ``{"scheme", "layout", "masked"}``, the
    vector's little-endian bytes in base64 (:func:`mask_step_sums` seals them as they are).

    ``own`` is the node's :class:`~mipflow.secagg.crypto.KeyPair`, ``participants`` every participant's
    public key (the node's own included), ``context`` the step's context (the same at every node).
    """
    return _base64(_mask_sums(own, participants, context, sums))


def _base64(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "masked": base64.b64encode(payload["masked"]).decode("ascii")}


def _mask_sums(own: Any, participants: Mapping[str, bytes], context: bytes,
               sums: Mapping[str, Any]) -> dict[str, Any]:
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
    return {"scheme": MASKED_SCHEME, "layout": layout, "masked": vector.astype("<u8").tobytes()}


def encode_real(sums: Mapping[str, Any]) -> tuple[list[list[Any]], np.ndarray]:
    """``sums`` (name -> real array, packed or not) in fixed point: the layout and the elements of
    ``Z/2^256`` (``round(v * 2^128)``, negative values as their residue) as limbs, shape (n, 4)
    (:func:`mipflow.algorithms.fixed_point.encode`), names sorted.

    Raises
    ------
    RequestError
        If a value is not finite or its magnitude is ``2^110`` or more (no value is named).
    """
    from mipflow.algorithms import fixed_point

    layout, arrays = [], []
    for name in sorted(sums):
        array = unpack(sums[name])
        if not np.all(np.isfinite(array)) or np.any(np.abs(array) >= 2.0 ** REAL_MAGNITUDE_BITS):
            raise RequestError(f"the sealed sums {name!r} exceed the range of masked fixed point (magnitude "
                               f"below 2^{REAL_MAGNITUDE_BITS}): the fit diverged, or covariates need rescaling")
        layout.append([name, list(array.shape)])
        arrays.append(array.ravel())
    values = np.concatenate(arrays) if arrays else np.zeros(0)
    return layout, fixed_point.encode(values, REAL_FRACTION_BITS)


def _real_stream(seed: bytes, length: int) -> bytes:
    """``length`` uniform elements of ``Z/2^256`` from a ChaCha20 keystream keyed by ``seed`` (each
    element 32 little-endian bytes of the stream)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    encryptor = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None).encryptor()
    return encryptor.update(b"\x00" * (REAL_ELEMENT_BYTES * length))


def mask_real_sums(own: Any, participants: Mapping[str, bytes], context: bytes,
                   sums: Mapping[str, Any]) -> dict[str, Any]:
    """``sums`` (name -> real array) in fixed point (:func:`encode_real`), masked as :func:`mask_sums`
    masks integers: ``{"scheme", "layout", "masked"}`` with 32 little-endian bytes per element (base64)."""
    return _base64(_mask_real_sums(own, participants, context, sums))


def _mask_real_sums(own: Any, participants: Mapping[str, bytes], context: bytes,
                    sums: Mapping[str, Any]) -> dict[str, Any]:
    from mipflow.algorithms import fixed_point
    from mipflow.secagg.crypto import pair_seed

    layout, vector = encode_real(sums)
    me = own.public_bytes
    plus, minus = [], []  # one keystream per peer, added or subtracted by the order of the keys
    for peer in sorted(participants.values()):
        if peer != me:
            (plus if me < peer else minus).append(_real_stream(pair_seed(own, peer, context), len(vector)))
    if plus or minus:
        vector = fixed_point.combine(vector, plus, minus)
    return {"scheme": REAL_MASKED_SCHEME, "layout": layout, "masked": fixed_point.to_bytes(vector)}


def mask_step_sums(own: Any, participants: Mapping[str, bytes], sums: Mapping[str, Any], *, analysis_id: str,
                   algorithm: str, round_no: int, request: Mapping[str, Any], state: Any,
                   scheme: str = MASKED_SCHEME) -> dict[str, Any]:
    """:func:`mask_sums` (or :func:`mask_real_sums`, by ``scheme``) for one step: the seeds bound to the
    analysis, the round, the request, the state and the participants, apart from the round's masked
    release (``algorithm + "|sealed"``).  The masked vector is left as ``bytes``, as the seal carries it
    (:func:`mipflow.secagg.sealing.plaintext`)."""
    from mipflow.secagg.crypto import context_digest

    context = context_digest(analysis_id=analysis_id, algorithm=f"{algorithm}|sealed", round_no=round_no,
                             request=request, state=state, participants=participants.values())
    if scheme == REAL_MASKED_SCHEME:
        return _mask_real_sums(own, participants, context, sums)
    if scheme != MASKED_SCHEME:
        raise RequestError("masked sealed sums: unknown scheme")
    return _mask_sums(own, participants, context, sums)
