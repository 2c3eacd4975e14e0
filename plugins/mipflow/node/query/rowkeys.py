"""Names and digests of the ledger keys a selection can carry in place of its text identity (ADR 0044).

:func:`mipflow.node.query.read.select_frame` with ``row_key`` hashes each row's store identity
``(_pid, dataset, _visit)`` as it reads it, into the uint64 columns named here; the differencing
controls (:func:`mipflow.node.controls.differencing.row_keys` and ``patient_keys``) read them back
and compute the very same keys from the text identity elsewhere.  Both use these digests, so they
live in the query layer, below the controls.
"""
from __future__ import annotations

import hashlib

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
