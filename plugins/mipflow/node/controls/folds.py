"""Cross-validation folds fixed by the node's secret, not by anything a requester sends (ADR 0026).

A cross-validated local step releases statistics of each fold of the node's
rows.  If the requester could choose the assignment (a ``seed``), several
assignments of one cohort would give several systems of fold sums whose
solution is the rows themselves, and an honest-but-curious central site would
collect them from routine analyses.  So the node assigns folds itself: every
row gets a keyed 64-bit hash, under the node's **fold key** (derived from the
node secret by HMAC with its own label, :func:`fold_key`), of its cohort-ledger
key, itself the ledger's keyed hash of the row's feature-store identity ``(_pid,
dataset, _visit)`` (:func:`mipflow.node.controls.differencing.row_keys`); the
folds of every cohort the ledger holds are thus a function of that ledger entry
and the node's secret (:func:`fold_hashes`).  The algorithm
deals the rows in the order of those hashes round robin into folds
(:func:`mipflow.algorithms.crossval.deal_folds`).  The same cohort therefore
always gets the same folds (a repeated analysis releases sums over the same
sets: nothing new), another node's secret gives other folds, and fold sizes
depend on the number of rows only.

The hashes are a column of the rows the node hands the local step
(:data:`mipflow.algorithms.crossval.FOLD_KEY`, added by :func:`add_fold_keys` for
every algorithm that :func:`needs_fold_keys`); like the row identity they never
leave the node.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import numpy as np
import pandas as pd

from mipflow.algorithms.crossval import FOLD_KEY, CrossValidated
from mipflow.node.controls.differencing import row_keys

#: The HMAC label of the fold key (changing it reassigns every fold of the node).
FOLD_KEY_LABEL = b"mipflow cross-validation folds v1"


def fold_key(node_secret: bytes) -> str:
    """The 16-character SipHash key of the node's fold hashes, derived from its secret.

    Its own label keeps it independent of the cohort ledger's key
    (:func:`mipflow.node.controls.differencing.hash_key`): the ledger's row keys
    say nothing about the folds.
    """
    digest = hmac.new(node_secret, FOLD_KEY_LABEL, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")[:16]


def needs_fold_keys(algorithm: Any) -> bool:
    """Whether ``algorithm`` assigns its rows to cross-validation folds (gets :data:`FOLD_KEY`)."""
    return isinstance(algorithm, CrossValidated)


def fold_hashes(ledger_keys: np.ndarray, key: str) -> np.ndarray:
    """The fold hashes (uint64) of rows given by their cohort-ledger keys, under the fold ``key``.

    A keyed SipHash of each ledger row key (:func:`mipflow.node.controls.differencing.row_keys`),
    so the folds of any cohort the ledger holds can be recomputed from the ledger alone.
    """
    ledger_keys = np.asarray(ledger_keys, dtype=np.uint64)
    if not len(ledger_keys):
        return np.zeros(0, dtype=np.uint64)
    return pd.util.hash_array(ledger_keys.astype(str).astype(object), hash_key=key, categorize=False)


def add_fold_keys(frame: pd.DataFrame, key: str, ledger_key: str) -> pd.DataFrame:
    """``frame`` with column :data:`FOLD_KEY`: each row's fold hash (uint64, :func:`fold_hashes`).

    Parameters
    ----------
    frame : pandas.DataFrame, shape (n, ...)
        A selection with the row identity (``_pid``, ``dataset``, ``_visit``, or the store's
        :data:`mipflow.node.query.pgcopy.ROW_MD5`), as :func:`mipflow.node.query.read.select_frame`
        gives it with ``row_identity=True``.
    key : str
        From :func:`fold_key`.
    ledger_key : str
        The cohort ledger's key (:func:`mipflow.node.controls.differencing.hash_key`).

    Returns
    -------
    pandas.DataFrame, shape (n, ... + 1)
        A new frame; ``frame`` is not changed.

    Raises
    ------
    KeyError
        If the frame carries no row identity (a bug of the caller, never a request's fault).
    """
    keys = fold_hashes(row_keys(frame, ledger_key), key)
    out = frame.copy()
    out[FOLD_KEY] = keys
    return out
