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


#: The scheme of a masked sealed payload (``mipflow.secagg.sealed_masks.mask_sums``, ADR 0052).
MASKED_SCHEME = "mipflow-sealed-mask-v1"
#: Bytes per masked element.
ELEMENT_BYTES = 8


def is_masked(part: Any) -> bool:
    """Whether ``part`` is a masked sealed payload (:func:`mask_sums`)."""
    return isinstance(part, Mapping) and part.get("scheme") == MASKED_SCHEME


def unmask_parts(parts: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """The sum of every participant's masked payload, its masks cancelled: name -> int64 array.

    Raises
    ------
    RequestError
        If the parts differ in layout or length, or one is malformed (the masks could not cancel).
    """
    if not parts or not all(is_masked(p) for p in parts):
        raise RequestError("masked sealed sums: every participant's part must be masked")
    layout = parts[0]["layout"]
    if any(p["layout"] != layout for p in parts):
        raise RequestError("masked sealed sums: the participants' parts differ in layout")
    total = None
    for part in parts:
        try:
            vector = np.frombuffer(base64.b64decode(part["masked"], validate=True), dtype="<u8")
        except (ValueError, TypeError):
            raise RequestError("masked sealed sums: a part is not well formed") from None
        if total is not None and len(vector) != len(total):
            raise RequestError("masked sealed sums: the participants' parts differ in length")
        with np.errstate(over="ignore"):
            total = vector.astype(np.uint64) if total is None else total + vector
    values = total.view(np.int64)
    out, offset = {}, 0
    for name, shape in layout:
        size = int(np.prod(shape)) if shape else 1
        out[str(name)] = values[offset:offset + size].reshape(shape).copy()
        offset += size
    if offset != len(values):
        raise RequestError("masked sealed sums: the layout does not fit the masked vector")
    return out
