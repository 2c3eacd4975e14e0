"""k-fold cross-validation across nodes: fold assignment and metrics from aggregates.

Folds are assigned *inside* each node and no requester can steer them (ADR
0026): the node hands the local step a column :data:`FOLD_KEY` holding each
row's keyed 64-bit hash (key derived from the node's secret, its own HMAC label;
:mod:`mipflow.node.controls.folds`), and :func:`deal_folds` orders the rows by
it and deals them round robin into ``n_splits`` folds.  A row's fold is thus a
pure function of the node's secret and the cohort: the same cohort always gets
the same folds, whoever asks and however often, and fold sizes depend on the
number of rows only (:func:`fold_sizes`).  There is no ``seed``: a request that
names one is refused (:data:`SEED_REFUSAL`).  No row identifier or key ever
leaves the node.  Fold ``k`` of the federation is the union of every node's
fold ``k``; its model is trained on the aggregates of all the other folds of
all nodes and evaluated on fold ``k`` by aggregates (residual sums, confusion
counts, binned ROC counts).

A node releases statistics of each of its folds, so the smallest released unit
is one fold at one node (``n // n_splits`` rows): the disclosure controls check
that size (:func:`fold_sizes`), not only the node's row count.  The per-fold
aggregates are sums, so they travel masked under secure aggregation (automatic
from :data:`SECURE_AGGREGATION_MIN_NODES` nodes): the central site sees only the
federation's per-fold sums.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar

import numpy as np

from mipflow.algorithms.spec import ParamSpec
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest

if TYPE_CHECKING:
    import pandas as pd

_Model = TypeVar("_Model")

#: The ``n_splits`` parameter (Exareme2's spec).
N_SPLITS = ParamSpec(types=("int",), default=5, notblank=True, min=2, max=20, label="Number of folds",
                     description="The number of cross-validation folds (k); each node assigns its rows to "
                                 "folds itself, fixed by its secret.")
#: The column of the node's fold keys in the rows a cross-validated local step gets (uint64,
#: :mod:`mipflow.node.controls.folds`); dropped before any statistic is computed.
FOLD_KEY = "_fold_key"
#: The refusal of a request that names the former ``seed`` parameter (a 400 from the request alone).
SEED_REFUSAL = ("cross-validation folds are fixed per node by its secret (the same rows always get the "
                "same folds); remove 'seed' from the parameters")
#: Automatic secure aggregation masks the per-fold sums from this many nodes (the others' default is 3:
#: :data:`mipflow.secagg.policy.AUTO_MIN_NODES`): per-node fold sums are never needed centrally.
SECURE_AGGREGATION_MIN_NODES = 2


#: Ranks dealt at a time by :func:`deal_folds` (its temporaries: a block, not a row's worth each).
DEAL_BLOCK = 262_144


def deal_folds(keys: np.ndarray, n_splits: int, dtype: Any = np.int64) -> np.ndarray:
    """Fold of each row from the node's fold keys, shape (n_rows,), values in ``0..n_splits-1``.

    The rows are ordered by key (ties, which a 64-bit keyed hash makes
    improbable, by position) and dealt round robin: the row of rank ``r`` goes
    to fold ``r % n_splits``.  Fold sizes therefore differ by at most one and
    depend on ``n_rows`` only (the first ``n_rows % n_splits`` folds get the
    extra row, as :func:`fold_sizes`); which rows go where depends only on the
    keys, i.e. on the node's secret and the rows' identity.  ``dtype``: the labels' (``np.int8`` for rows on
    disk, ADR 0062 amendment 15: a byte a row beside the sort's 8); the same values.
    """
    keys = np.asarray(keys)
    order = np.argsort(keys, kind="stable")
    labels = np.empty(len(keys), dtype=dtype)
    for start in range(0, len(keys), DEAL_BLOCK):
        stop = min(start + DEAL_BLOCK, len(keys))
        labels[order[start:stop]] = np.arange(start, stop) % n_splits
    return labels


def fold_labels(data: pd.DataFrame, n_splits: int, dtype: Any = np.int64) -> np.ndarray:
    """Fold of each of a node's rows (:func:`deal_folds` of the node's :data:`FOLD_KEY` column).

    Raises
    ------
    RequestError
        If the rows carry no fold keys: only the node assigns folds.
    """
    keys = getattr(data, "fold_keys", None) if hasattr(data, "reader") else \
        (data[FOLD_KEY].to_numpy() if FOLD_KEY in data.columns else None)  # rows on disk: kept beside them
    if keys is None:
        raise RequestError("cross-validation folds are assigned by the node from its secret, and these rows "
                           "carry no fold keys")
    return deal_folds(keys, n_splits, dtype)


def split_folds(data: pd.DataFrame, n_splits: int, dtype: Any = np.int64) -> tuple[np.ndarray, pd.DataFrame]:
    """``(fold of each row, the rows without the fold-key column)``; rows left on disk (ADR 0062, amendment 11)
    are given back as they are (their fold keys are no column of theirs).  ``dtype``: the labels'."""
    labels = fold_labels(data, n_splits, dtype)
    return labels, data if hasattr(data, "reader") else data.drop(columns=[FOLD_KEY])


def fold_rows(data: Any, labels: np.ndarray, k: int, *, training: bool = False) -> Any:
    """The rows left on disk (ADR 0062) of fold ``k`` (``labels``: each selected row's fold, in their order):
    a narrowed selection (one pass over a column of theirs, a bit a snapshot row), the rows ``data[labels ==
    k]`` of a frame would hold, in the same order; ``training``: every other fold's rows instead
    (``data[labels != k]``, amendment 15)."""
    done = [0]

    def keep(values: list[np.ndarray]) -> np.ndarray:
        m = len(values[0])
        chosen = labels[done[0]:done[0] + m]
        done[0] += m
        return chosen != k if training else chosen == k

    return data.narrowed(data.columns[:1], keep)


def fold_sizes(n_rows: int, n_splits: int) -> list[int]:
    """Rows per fold at a node with ``n_rows`` rows (as :func:`deal_folds`): a function of ``n_rows``."""
    return [n_rows // n_splits + (1 if k < n_rows % n_splits else 0) for k in range(n_splits)]


class CrossValidated:
    """What the cross-validation algorithms share: the fold sizes the node's disclosure controls
    check (:mod:`mipflow.node.controls.disclosure`), the refusal of ``seed``, and the folds' secure
    aggregation; mixed in before the algorithm's base class.  The node adds :data:`FOLD_KEY` to
    the rows of every algorithm that is one (:mod:`mipflow.node.controls.folds`)."""

    def fold_sizes(self, request: Any, n_rows: int) -> list[int]:
        """Rows per fold at a node (checked by the node's disclosure controls)."""
        return fold_sizes(n_rows, self.params(request)["n_splits"])  # type: ignore[attr-defined]

    def params(self, request: AnalysisRequest, model: DataModel | None = None) -> dict[str, Any]:
        """The parameters (the algorithm's own), refusing the former ``seed`` by name (:data:`SEED_REFUSAL`)."""
        if "seed" in request.parameters:
            raise RequestError(SEED_REFUSAL)
        return super().params(request, model)  # type: ignore[misc]

    # -- privacy capabilities (mipflow.algorithms.contract) ------------------------------------

    #: Every per-fold aggregate is a sum: masked in automatic mode, from
    #: :data:`SECURE_AGGREGATION_MIN_NODES` nodes.
    secure_aggregation = "automatic"
    secure_aggregation_min_nodes = SECURE_AGGREGATION_MIN_NODES


def fit_folds(aggregates: Sequence[Mapping[str, Any]], n_splits: int,
              fit: Callable[[list[Any]], _Model]) -> list[_Model]:
    """Fit fold ``k``'s model on every other fold of every node, for each ``k``.

    Parameters
    ----------
    aggregates : sequence of mapping
        One per node, each with ``"folds"``: that node's statistics of each of
        its ``n_splits`` folds, in fold order.
    n_splits : int
        Number of folds.
    fit : callable
        Fits a model from a list of fold statistics (the training folds of all
        nodes, node by node).

    Returns
    -------
    list
        ``fit``'s result for each fold, in fold order.

    Raises
    ------
    RequestError
        From ``fit``, prefixed with the fold (``"fold 2 of 5: ..."``).
    """
    models = []
    for k in range(n_splits):
        training = [a["folds"][j] for a in aggregates for j in range(n_splits) if j != k]
        try:
            models.append(fit(training))
        except RequestError as exc:
            raise RequestError(f"fold {k + 1} of {n_splits}: {exc}") from None
    return models


def mean_std(values: Sequence[float | None]) -> list[float | None]:
    """``[mean, sample standard deviation (ddof=1)]`` over folds (Exareme2's ``BasicStats``).

    ``None`` (a fold whose metric is unavailable) makes both ``None``.
    """
    if any(v is None for v in values):
        return [None, None]
    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else math.nan
    return [float(arr.mean()), std]


def ratio(num: float, den: float) -> float:
    """``num / den``, 0 when ``den`` is 0 (sklearn's ``zero_division=0``)."""
    return float(num) / float(den) if den else 0.0


def binary_metrics(tn: int, fp: int, fn: int, tp: int) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of one 2x2 confusion matrix."""
    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    return {
        "accuracy": ratio(tp + tn, tn + fp + fn + tp),
        "precision": precision,
        "recall": recall,
        "fscore": ratio(2 * precision * recall, precision + recall),
    }


def score_bins(scores: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each probability on the shared grid ``[b/n_bins, (b+1)/n_bins)``, shape (n,)."""
    return np.minimum(np.floor(np.asarray(scores) * n_bins), n_bins - 1).astype(int)


def roc_from_bins(negatives: Sequence[int], positives: Sequence[int]) -> tuple[list[float], list[float], float]:
    """ROC curve and AUC from per-bin counts of each class.

    The thresholds are the bin edges, from the top: the curve has a point per
    bin, and the AUC is the trapezoidal area under it, which is the
    Mann-Whitney probability ``P(s_pos > s_neg) + P(tie) / 2`` of the *binned*
    scores (pairs in the same bin count one half).  It equals the exact AUC of
    the raw scores only when no positive and negative share a bin.

    Returns
    -------
    tpr, fpr : list of float, length n_bins + 1
    auc : float (NaN when a class is absent)
    """
    neg = np.asarray(negatives, dtype=float)[::-1]
    pos = np.asarray(positives, dtype=float)[::-1]
    n_neg, n_pos = neg.sum(), pos.sum()
    tp = np.concatenate([[0.0], np.cumsum(pos)])
    fp = np.concatenate([[0.0], np.cumsum(neg)])
    if n_neg == 0 or n_pos == 0:
        return [math.nan] * len(tp), [math.nan] * len(fp), math.nan
    # a positive in a bin beats the negatives in lower bins and ties half of its own bin
    below = n_neg - fp[1:]
    auc = float(np.sum(pos * (below + 0.5 * neg)) / (n_pos * n_neg))
    return (tp / n_pos).tolist(), (fp / n_neg).tolist(), auc


def multiclass_metrics(confusion: np.ndarray) -> dict[str, list[float]]:
    """One-vs-rest accuracy, precision, recall and F1 per class.

    ``confusion[i, j]`` counts rows of true class ``i`` predicted as ``j``.
    """
    cm = np.asarray(confusion, dtype=float)
    total = cm.sum()
    out: dict[str, list[float]] = {"accuracy": [], "precision": [], "recall": [], "fscore": []}
    for c in range(cm.shape[0]):
        tp = cm[c, c]
        fp = cm[:, c].sum() - tp
        fn = cm[c, :].sum() - tp
        tn = total - tp - fp - fn
        for key, value in binary_metrics(tn, fp, fn, tp).items():
            out[key].append(value)
    return out
