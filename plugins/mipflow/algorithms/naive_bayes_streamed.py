"""Naive Bayes's local steps over rows left on disk, read a block at a time (ADR 0062, amendment 11).

The node keeps a cross-validated step's fold keys beside its rows on disk (``fold_keys``, one a row: the
frame's :data:`mipflow.algorithms.crossval.FOLD_KEY` column, the same hashes of the same row keys), so
:func:`mipflow.algorithms.crossval.fold_labels` deals the same folds.  Round 0 releases, per fold and
class, what :mod:`mipflow.algorithms.naive_bayes` computes from the frame: the Gaussian classifier's moments
(:func:`~mipflow.algorithms.moments.streamed_column_moments` of the rows narrowed to the fold and class,
bit for bit ``column_moments`` of the frame's), the categorical one's class-by-level counts (one counting
pass).  Round 1 predicts each block's rows with the fold's model (each row's joint log-likelihood is its own
values' arithmetic: the frame's bits) and counts the confusion cells.  Memory: a block, the fold labels (8
bytes a row, as on the frame path) and a packed mask (a bit a snapshot row) at a time.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from mipflow.algorithms.moments import streamed_column_moments
from mipflow.algorithms.streamed import COUNT_ROWS, enumeration_index

if TYPE_CHECKING:
    from mipflow.protocol.datamodel import DataModel
    from mipflow.protocol.request import AnalysisRequest

__all__ = ["narrowed_rows", "gaussian_folds", "categorical_folds", "confusions"]


def narrowed_rows(source: Any, code: str, keep: Callable[[slice, np.ndarray], np.ndarray]) -> Any:
    """The rows on disk where ``keep(positions, values)`` holds: ``positions`` the slice of the selected rows'
    positions a block covers (to index per-row arrays held beside the rows), ``values`` their values of
    ``code``.  One pass; memory: a block and the new packed mask."""
    done = [0]

    def keep_block(values: list[np.ndarray]) -> np.ndarray:
        block = values[0]
        at = slice(done[0], done[0] + len(block))
        done[0] += len(block)
        return keep(at, block)

    return source.narrowed([code], keep_block)


def gaussian_folds(source: Any, folds: np.ndarray, n_splits: int, request: AnalysisRequest,
                   classes: tuple[str, ...]) -> list[dict]:
    """Per fold: each class's row count and the covariates' moments (the frame path's ``fold_statistics``)."""
    y, x = request.y[0], list(request.x)
    index = enumeration_index(source, y, classes)
    out = []
    for k in range(n_splits):
        moments, counts = [], []
        for c in range(len(classes)):
            part = narrowed_rows(source, y, lambda at, v, k=k, c=c: (folds[at] == k) & (index(v) == c))
            counts.append(len(part))
            moments.append(streamed_column_moments(part, x).to_dict())
        out.append({"group_n": counts, "moments": moments})
    return out


def categorical_folds(source: Any, folds: np.ndarray, n_splits: int, request: AnalysisRequest, model: DataModel,
                      classes: tuple[str, ...]) -> list[dict]:
    """Per fold: each class's row count and each covariate's class-by-level counts, in one pass."""
    from mipflow.algorithms.design import sorted_levels

    y, x = request.y[0], list(request.x)
    n_classes = len(classes)
    levels = [sorted_levels(model.variable(code)) for code in x]
    index = [enumeration_index(source, code, lv) for code, lv in zip([y, *x], [classes, *levels])]
    group_n = np.zeros(n_splits * n_classes, dtype=np.int64)
    tables = [np.zeros(n_splits * n_classes * len(lv), dtype=np.int64) for lv in levels]
    n, done = len(source), 0
    next_rows = source.reader([y, *x]) if n else None
    for start in range(0, n, COUNT_ROWS):
        values = next_rows(min(COUNT_ROWS, n - start))  # type: ignore[misc]
        cell = folds[done:done + len(values[0])] * n_classes + index[0](values[0])
        done += len(values[0])
        group_n += np.bincount(cell, minlength=len(group_n))
        for j, lv in enumerate(levels):
            tables[j] += np.bincount(cell * len(lv) + index[j + 1](values[j + 1]), minlength=len(tables[j]))
    out = []
    for k in range(n_splits):
        features = [{"group_counts": t.reshape(n_splits, -1)[k].tolist()} for t in tables]
        out.append({"group_n": group_n.reshape(n_splits, n_classes)[k].tolist(), "category_count": features})
    return out


def confusions(algo: Any, source: Any, folds: np.ndarray, state: dict, request: AnalysisRequest, model: DataModel,
               classes: tuple[str, ...]) -> list[dict]:
    """Per fold ``k``: the confusion cells of its rows predicted by model ``k`` (``algo.joint_log_likelihood`` of
    a frame of each block's rows of the fold, as the frame path predicts them)."""
    import pandas as pd

    y, x = request.y[0], list(request.x)
    n_classes = len(classes)
    index = enumeration_index(source, y, classes)
    names = {code: source.levels_of(code) for code in x}
    tables = {code: None if stored is None else np.array([*map(str, stored), None], dtype=object)
              for code, stored in names.items()}
    cells = np.zeros((len(state["models"]), n_classes, n_classes), dtype=int)
    n, done = len(source), 0
    next_rows = source.reader([y, *x]) if n else None
    for start in range(0, n, COUNT_ROWS):
        values = next_rows(min(COUNT_ROWS, n - start))  # type: ignore[misc]
        m = len(values[0])
        block_folds, cls = folds[done:done + m], index(values[0])
        done += m
        columns = {}
        for code, column in zip(x, values[1:]):
            table = tables[code]
            columns[code] = column.copy() if table is None else table[np.where(column >= 0, column, len(table) - 1)]
        frame = pd.DataFrame(columns)
        for k, fitted in enumerate(state["models"]):
            rows = block_folds == k
            if not rows.any():
                continue
            jll = algo.joint_log_likelihood(frame[rows], fitted, request, model)
            predicted = np.asarray(fitted["class_index"], dtype=int)[np.argmax(jll, axis=1)]
            np.add.at(cells[k], (cls[rows], predicted), 1)
    return [{"confusion": {"group_counts": cells[k].ravel().tolist()}} for k in range(len(state["models"]))]
