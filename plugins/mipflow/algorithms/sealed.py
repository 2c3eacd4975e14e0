"""Sealed round sums: sums the nodes exchange among themselves, never readable by the central site.

An algorithm with ``sealed_rounds`` (:mod:`mipflow.algorithms.contract`, privacy capabilities) may
put, in a local step's aggregates, a dict of additive arrays under :data:`SEALED`.  The node's
disclosure controls see it in the clear; then the node seals it to every participant of the analysis
(itself included, :mod:`mipflow.secagg.sealing`) and the central site forwards the ciphertexts in
the next round's transcript.  There each node opens the ones addressed to it, adds them
(:meth:`~mipflow.algorithms.spec.SpecAlgorithm.pool_sealed`, by default :func:`sum_parts`) and hands the
pooled sums to its next local step in the state under :data:`POOLED`, node-side only: the state the
central site sends never carries them (the node computes on its own recomputation of the state,
ADR 0029).  The global step never reads :data:`SEALED`.

In one process (:func:`mipflow.algorithms.local.run_in_process`, the tests' round loops)
:func:`local_state` does the same with the aggregates in the clear, so in-process and federated runs
agree.  See docs/adr/0046-sealed-round-sums.md.
"""
from __future__ import annotations

import base64
from typing import Any, Mapping, Sequence

import numpy as np

from mipflow.algorithms.packed import unpack
from mipflow.exceptions import RequestError

#: The aggregate key of a local step's sealed sums (a dict: name -> additive array, packed or a list).
SEALED = "sealed"
#: The state key under which a node hands its local step the pooled sealed sums of the previous round
#: (a dict: name -> numpy array).  Set by the node after verifying the round, never taken from a request.
POOLED = "sealed_pooled"


def sum_parts(parts: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Every participant's sealed sums added elementwise per key, in the order given.

    Raises
    ------
    RequestError
        If there is no part, or the parts differ in their keys or in an array's shape.
    """
    if not parts:
        raise RequestError("no sealed sums to pool")
    keys = set(parts[0])
    if any(set(part) != keys for part in parts):
        different = sorted(set().union(*parts) - set.intersection(*(set(p) for p in parts)))
        raise RequestError(f"the participants' sealed sums hold different keys ({', '.join(different)} in some "
                           "only): every node must run the same step code")
    pooled: dict[str, np.ndarray] = {}
    for key in sorted(keys):
        arrays = [unpack(part[key]) for part in parts]
        if any(a.shape != arrays[0].shape for a in arrays):
            raise RequestError(f"the participants' sealed sums {key!r} differ in shape")
        total = arrays[0].copy()
        for array in arrays[1:]:
            total += array
        pooled[key] = total
    return pooled


def pooled_sums(state: Mapping[str, Any] | None, what: str) -> dict[str, np.ndarray]:
    """The pooled sealed sums a node handed its local step in ``state`` (:data:`POOLED`).

    Raises
    ------
    RequestError
        If there are none (``what`` says which round needs them).
    """
    pooled = state.get(POOLED) if isinstance(state, Mapping) else None
    if not isinstance(pooled, Mapping):
        raise RequestError(f"{what} needs the participants' pooled sealed sums of the previous round, which "
                           "the node opens from the round's transcript")
    return {key: np.asarray(value, dtype=float) for key, value in pooled.items()}


def local_state(algorithm: Any, state: dict | None, aggregates: Sequence[Mapping[str, Any]]) -> dict | None:
    """The state the next local steps compute on, in one process: ``state`` with the pooled sealed
    sums of ``aggregates`` (the previous round's, in the clear) under :data:`POOLED`, when any carries
    :data:`SEALED`; else ``state`` as it is.

    Raises
    ------
    RequestError
        If some aggregates carry sealed sums and others do not, or they do not pool.
    """
    parts = [a.get(SEALED) for a in aggregates]
    if all(part is None for part in parts):
        return state
    if any(not isinstance(part, Mapping) for part in parts):
        raise RequestError("some nodes sent sealed sums and others none: every node must run the same step code")
    return {**(state or {}), POOLED: algorithm.pool_sealed(parts)}


#: The scheme of a masked sealed payload of integers (``mipflow.secagg.sealed_masks.mask_sums``, ADR 0052).
MASKED_SCHEME = "mipflow-sealed-mask-v1"
#: Bytes per masked element (integers, ``Z/2^64``).
ELEMENT_BYTES = 8
#: The scheme of a masked sealed payload of real numbers in fixed point (ADR 0055): elements of
#: ``Z/2^REAL_RING_BITS``, a value ``v`` encoded as ``round(v * 2^REAL_FRACTION_BITS)``.
REAL_MASKED_SCHEME = "mipflow-sealed-mask-real-v1:z2^256:f128"
REAL_RING_BITS = 256
REAL_FRACTION_BITS = 128
REAL_ELEMENT_BYTES = REAL_RING_BITS // 8
#: A node refuses to encode a value of magnitude ``2^REAL_MAGNITUDE_BITS`` (about 1.3e33) or more, so
#: sums over up to ``2^16`` nodes stay below ``2^254`` (the sign bit) and decode without wrapping.
REAL_MAGNITUDE_BITS = 110


def is_masked(part: Any, scheme: str = MASKED_SCHEME) -> bool:
    """Whether ``part`` is a masked sealed payload of ``scheme`` (:func:`mask_sums`)."""
    return isinstance(part, Mapping) and part.get("scheme") == scheme


def unmask_parts(parts: Sequence[Mapping[str, Any]], scheme: str = MASKED_SCHEME) -> dict[str, np.ndarray]:
    """The sum of every participant's masked payload (its vector as ``bytes``, as opened from a seal, or
    in base64), its masks cancelled: name -> array (int64 for
    :data:`MASKED_SCHEME`; float64 for :data:`REAL_MASKED_SCHEME`, the exact sum of the encoded values
    rounded once to float).

    Raises
    ------
    RequestError
        If a part is not of ``scheme``, the parts differ in layout or length, or one is malformed (the
        masks could not cancel).
    """
    if not parts or not all(is_masked(p, scheme) for p in parts):
        raise RequestError("masked sealed sums: every participant's part must be masked (the same scheme)")
    if scheme not in (MASKED_SCHEME, REAL_MASKED_SCHEME):
        raise RequestError("masked sealed sums: unknown scheme")
    layout = parts[0]["layout"]
    if any(p["layout"] != layout for p in parts):
        raise RequestError("masked sealed sums: the participants' parts differ in layout")
    vectors = []
    for part in parts:
        masked = part["masked"]
        if isinstance(masked, (bytes, bytearray, memoryview)):  # as a seal carries it (binary plaintext)
            vectors.append(bytes(masked))
            continue
        try:
            raw = base64.b64decode(masked, validate=True)
        except (ValueError, TypeError):
            raise RequestError("masked sealed sums: a part is not well formed") from None
        vectors.append(raw)
    if any(len(v) != len(vectors[0]) for v in vectors):
        raise RequestError("masked sealed sums: the participants' parts differ in length")
    values = _sum_integers(vectors) if scheme == MASKED_SCHEME else _sum_real(vectors)
    out, offset = {}, 0
    for name, shape in layout:
        size = int(np.prod(shape)) if shape else 1
        out[str(name)] = values[offset:offset + size].reshape(shape).copy()
        offset += size
    if offset != len(values):
        raise RequestError("masked sealed sums: the layout does not fit the masked vector")
    return out


def _sum_integers(vectors: Sequence[bytes]) -> np.ndarray:
    if len(vectors[0]) % ELEMENT_BYTES:
        raise RequestError("masked sealed sums: a part is not well formed")
    total = None
    for raw in vectors:
        vector = np.frombuffer(raw, dtype="<u8")
        with np.errstate(over="ignore"):
            total = vector.astype(np.uint64) if total is None else total + vector
    return total.view(np.int64)


def _sum_real(vectors: Sequence[bytes]) -> np.ndarray:
    """The parts' elements added in ``Z/2^256`` and decoded: signed, times ``2^-128``, rounded once
    (:mod:`mipflow.algorithms.fixed_point`, the same bits as Python's integers)."""
    from mipflow.algorithms import fixed_point

    if len(vectors[0]) % REAL_ELEMENT_BYTES:
        raise RequestError("masked sealed sums: a part is not well formed")
    return fixed_point.decode(fixed_point.combine(None, list(vectors), []), REAL_FRACTION_BITS)


def ring_elements(raw: bytes) -> list[int]:
    """The little-endian elements of ``Z/2^256`` in ``raw`` (a real masked payload's bytes) as Python
    integers: for inspecting a part (tests), not for pooling."""
    size = REAL_ELEMENT_BYTES
    return [int.from_bytes(raw[i:i + size], "little") for i in range(0, len(raw), size)]
