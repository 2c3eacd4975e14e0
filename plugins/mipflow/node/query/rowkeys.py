"""Names and digests of the ledger keys a selection can carry in place of its text identity (ADR 0044).

:func:`mipflow.node.query.read.select_frame` with ``row_key`` hashes each row's store identity
``(_pid, dataset, _visit)`` as it reads it, into the uint64 columns named here; the differencing
controls (:func:`mipflow.node.controls.differencing.row_keys` and ``patient_keys``) read them back
and compute the very same keys from the text identity elsewhere.  Both use these digests, so they
live in the query layer, below the controls.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

#: Columns of a selection read with its ledger keys already computed (uint64, 8 bytes a row each):
#: the row's key (:func:`mipflow.node.controls.differencing.row_keys`) and its patient's
#: (:func:`mipflow.node.controls.differencing.patient_keys`), in place of the text identity columns.
ROW_KEY = "_row_key"
PID_KEY = "_pid_key"
#: ``frame.attrs`` entry naming the key those columns were computed with (:func:`key_fingerprint`).
KEY_OWNER = "mipflow_ledger_key"


def row_md5(pid: str, dataset: str, visit: str) -> str:
    """MD5 (hex) of a row's store identity, what PostgreSQL keeps as ``_row_md5``."""
    return hashlib.md5(f"{pid}\x1f{dataset}\x1f{visit}".encode("utf-8")).hexdigest()


def pid_md5(pid: str) -> str:
    """MD5 (hex) of a patient pseudonym (PostgreSQL's ``md5(_pid)``)."""
    return hashlib.md5(pid.encode("utf-8")).hexdigest()


def key_fingerprint(key: str) -> str:
    """A short digest naming a ledger key (never the key itself) in ``frame.attrs``."""
    return hashlib.sha256(b"mipflow ledger key\0" + key.encode()).hexdigest()[:16]


def identity_keys(pids: Sequence[str | None], datasets: Sequence[str | None], visits: Sequence[str | None],
                  key: str) -> tuple[np.ndarray, np.ndarray]:
    """The ledger's row and patient keys of rows given by their store identity, in order.

    :func:`row_md5` and :func:`pid_md5` inlined (called a million times), each hashed under ``key``
    as :func:`mipflow.node.controls.differencing.row_keys` and ``patient_keys`` hash them: the same
    uint64 values bit for bit.  A missing part counts as empty text.

    Returns
    -------
    row_keys, patient_keys : numpy.ndarray of uint64, shape (n,)
    """
    import pandas as pd
    from hashlib import md5

    pid_text = ["" if p is None else str(p) for p in pids]
    visit_text = ["" if v is None else str(v) for v in visits]
    digests = np.array([md5(f"{p}\x1f{'' if d is None else d}\x1f{v}".encode("utf-8")).hexdigest()
                        for p, d, v in zip(pid_text, datasets, visit_text)], dtype=object)
    rows = pd.util.hash_array(digests, hash_key=key, categorize=False)
    digests = np.array([md5(p.encode("utf-8")).hexdigest() for p in pid_text], dtype=object)
    return rows, pd.util.hash_array(digests, hash_key=key, categorize=False)


#: Instance attribute (not a column, not ``attrs``: no derived frame inherits it) of a frame read from a
#: columnar snapshot: its row keys and patient keys, each sorted (ADR 0049, amended).
_SORTED = "_mipflow_sorted_keys"


def attach_sorted_keys(frame: object, rows: np.ndarray, patients: np.ndarray) -> None:
    """Hand :func:`sorted_keys_of` the frame's :data:`ROW_KEY` and :data:`PID_KEY` columns' values each
    sorted (repeats kept), as the read found them without a sort (the snapshot's key order)."""
    object.__setattr__(frame, _SORTED, (rows, patients))


def fingerprint(values: np.ndarray) -> tuple[int, int, int, int]:
    """Count, sum, xor and sum of squares (mod 2**64) of uint64 values: equal for a permutation."""
    return (len(values), int(np.add.reduce(values, dtype=np.uint64)),
            int(np.bitwise_xor.reduce(values)) if len(values) else 0,
            int(np.dot(values, values)))  # wraps mod 2**64, no temporary array


def sorted_keys_of(frame: object, rows: np.ndarray, patients: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """The sorted row and patient keys attached to ``frame`` by its read, if they are those of ``rows``
    and ``patients`` (the frame's key columns) in sorted order: non-decreasing, and the same count,
    sum, xor and sum of squares.  None otherwise (no snapshot read, or anything amiss: the caller sorts)."""
    hint = frame.__dict__.get(_SORTED) if hasattr(frame, "__dict__") else None
    if hint is None or patients is None:
        return None
    prints = [fingerprint(np.asarray(values, dtype=np.uint64)) for values in (rows, patients)]
    return verified_sorted(hint, prints)


def verified_sorted(ordered: Sequence[np.ndarray], prints: Sequence[tuple[int, int, int, int]]
                    ) -> tuple[np.ndarray, ...] | None:
    """``ordered`` (key arrays said to be sorted) when each is non-decreasing, uint64 and has the
    :func:`fingerprint` in ``prints`` (that of the keys it claims to sort), else None."""
    for keys, print_ in zip(ordered, prints, strict=True):
        if keys is None or keys.dtype != np.uint64 or len(keys) != print_[0]:
            return None
        if len(keys) > 1 and not bool(np.all(keys[1:] >= keys[:-1])):
            return None
        if fingerprint(keys) != tuple(print_):
            return None
    return tuple(ordered)
