"""k-fold cross-validated ordinary least squares (Exareme2's ``linear_regression_cv``).

Round 0: each node assigns its rows to folds (:func:`~mipflow.algorithms.crossval.deal_folds`,
fixed by the node's secret) and releases, per fold, what :class:`~mipflow.algorithms.linear_regression.LinearRegression`'s
local step releases for those rows (count, means, centred co-moments, rows per level).
Centrally, fold ``k``'s model is :class:`LinearRegression`'s global step on the
aggregates of every other fold of every node, i.e. exactly OLS on the pooled
training rows (same treatment coding, chosen from the training rows).

Round 1: the central side sends each fold's coefficients; nodes return, per
fold, the number of test rows, the sums of squared and absolute residuals and
the moments of ``y`` there.  Per fold: ``MSE = RSS / n_test``, ``RMSE``,
``MAE = sum|r| / n_test`` and ``R2 = 1 - RSS / TSS`` with TSS around the test
fold's own mean (as Exareme2).  Every number is exact.  A row's residual is added up from the
design's columns elementwise and the sums are numpy's pairwise ones, so a node's rows left on disk
(ADR 0062, amendment 14: each fold narrowed from the node's fold keys) give the frame's bits.

Output: Exareme2's fields, where ``mean_sq_error``, ``r_squared`` and
``mean_abs_error`` are ``[mean, std (ddof=1)]`` over folds and, as in
Exareme2, ``mean_sq_error`` summarises the per-fold *root* mean squared error
(also given as ``root_mean_sq_error``, the name Exareme's later versions use);
``n_obs`` are the training rows per fold.  ``folds`` holds every fold's own
numbers (MSE proper included) and model.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from mipflow.algorithms.contract import Step
from mipflow.algorithms.crossval import (
    N_SPLITS,
    CrossValidated,
    fit_folds,
    fold_rows,
    mean_std,
    split_folds,
)
from mipflow.algorithms.design import (
    DesignSource,
    design_columns_of,
    numeric_values,
    select_design_columns,
    sum_level_counts,
)
from mipflow.algorithms.linear_regression import LinearRegression
from mipflow.algorithms.moments import merge_moment_dicts
from mipflow.algorithms.streamed import moments_of
from mipflow.algorithms.spec import SpecAlgorithm
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd


def base_request(request: AnalysisRequest, keep: tuple[str, ...] = ()) -> AnalysisRequest:
    """The request without the cross-validation parameters (for the plain model's steps)."""
    return AnalysisRequest(data_model=request.data_model, datasets=request.datasets, x=request.x,
                           y=request.y, filters=request.filters,
                           parameters={k: v for k, v in request.parameters.items() if k in keep})


def linear_predictor(columns: Sequence[np.ndarray], coefficients: np.ndarray, n: int) -> np.ndarray:
    """``design @ coefficients`` of ``n`` rows, the design given as its columns, added elementwise in the columns'
    order (no BLAS product, whose accumulation depends on the rows' number): a row's value is its own arithmetic,
    the same whether its rows are a frame's or a block's."""
    prediction = np.zeros(n)
    for column, coefficient in zip(columns, coefficients, strict=True):
        prediction = prediction + coefficient * column
    return prediction


def residuals(columns: Sequence[np.ndarray], coefficients: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``y - design @ coefficients`` (:func:`linear_predictor`): a row's residual is its own arithmetic."""
    return y - linear_predictor(columns, coefficients, len(y))


def fold_errors(data: Any, x: Sequence[str], y: str, model: DataModel, columns: Sequence[str],
                coefficients: np.ndarray) -> dict:
    """A test fold's rows, sums of squared and absolute residuals under a fold's model and the moments of ``y``,
    from a frame or rows on disk (:class:`~mipflow.algorithms.design.DesignSource`, a block at a time): the same
    bits (numpy's pairwise sums, followed block by block, ``moments._pairwise_sum``; the moments as
    :func:`~mipflow.algorithms.streamed.moments_of` takes them).  Memory on disk: a few blocks."""
    from mipflow.algorithms import moments as blocks

    columns = list(columns)
    if len(columns) != len(coefficients):
        raise ValueError("a fold's model has one coefficient per design column")
    n = len(data)
    if hasattr(data, "reader"):
        source = DesignSource(data, [*x, y], model)
        inner = source.reader([*columns, y])

        def next_rows(m: int) -> list[np.ndarray]:
            *design, values = inner(m)
            resid = residuals(design, coefficients, values)
            return [resid * resid, np.abs(resid)]

        sums = blocks._pairwise_sum(next_rows, n, max(blocks.STREAM_BLOCK, blocks._PAIRWISE_LEAF)) if n \
            else np.zeros(2)
    else:
        design, _ = design_columns_of(data, x, model, columns=columns)
        resid = residuals(design, coefficients, numeric_values(data[y]))
        sums = np.array([np.add.reduce(resid * resid), np.add.reduce(np.abs(resid))])
    return {"n": int(n), "sum_sq_resid": float(sums[0]), "sum_abs_resid": float(sums[1]),
            "y": moments_of(data, [y]).to_dict()}


class LinearRegressionCV(CrossValidated, LinearRegression):
    name = "linear_regression_cv"
    label = "Linear Regression Cross-validation"
    description = ("k-fold cross-validation of a linear regression: per-fold and mean error measures "
                   "(mean squared error, its root, mean absolute error, R-squared).")
    parameter_specs = MappingProxyType({"n_splits": N_SPLITS})
    #: Not linear regression's: round 1's errors are of models fitted to the data (ADR 0063).
    sums_only = False
    small_group_hint = (
        "linear_regression_cv checks, at each node, each fold's rows per covariate level and per pair of levels "
        "of two nominal covariates (a fold holds about the node's rows divided by n_splits): use fewer folds "
        "(n_splits, down to its minimum), select more rows (a wider filter, more datasets) or use covariates "
        "with fewer levels.")
    #: Rows on disk too (ADR 0062, amendment 14): each fold's rows narrowed from the node's fold keys kept beside
    #: them (``SnapshotRows.fold_keys``), round 0 :class:`LinearRegression`'s streamed step of each, round 1 each
    #: fold's residuals a block at a time (:func:`fold_errors`); the frame path computes the same bits.
    streams_rows = True

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        params = self.params(request, model)
        streamed = hasattr(data, "reader")  # at most 20 folds: rows on disk take their labels as a byte a row
        folds, data = split_folds(data, params["n_splits"], np.int8 if streamed else np.int64)
        plain = base_request(request)
        parts = (lambda k: fold_rows(data, folds, k)) if streamed else (lambda k: data[folds == k])
        if state is None:
            return {"folds": [LinearRegression.local_step(self, 0, parts(k), plain, model, None)
                              for k in range(params["n_splits"])]}
        return {"folds": [fold_errors(parts(k), request.x, request.y[0], model, fitted["columns"],
                                      np.asarray(fitted["coefficients"], dtype=float))
                          for k, fitted in enumerate(state["models"])]}

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        n_splits = self.params(request, model)["n_splits"]
        if state is None:
            return Step(done=False, state=self._fit_folds(aggregates, request, model, n_splits))
        return Step(done=True, result=self._evaluate(aggregates, request, state, n_splits))

    def _fit_folds(self, aggregates: list[dict], request: AnalysisRequest, model: DataModel,
                   n_splits: int) -> dict:
        plain = base_request(request)

        def fit_fold(training: list[dict]) -> dict:
            fit = LinearRegression.global_step(self, 0, training, plain, model, None).result
            return {"columns": fit["indep_vars"], "coefficients": fit["coefficients"], "n_train": fit["n_obs"]}

        models = fit_folds(aggregates, n_splits, fit_fold)
        counts = sum_level_counts([f["level_counts"] for a in aggregates for f in a["folds"]])
        return {"models": models, "indep_vars": select_design_columns(request.x, model, counts)}

    def _evaluate(self, aggregates: list[dict], request: AnalysisRequest, state: dict,
                  n_splits: int) -> dict:
        per_fold: dict[str, list] = {key: [] for key in (
            "n_train", "n_test", "mean_sq_error", "root_mean_sq_error", "mean_abs_error", "r_squared")}
        for k in range(n_splits):
            parts = [a["folds"][k] for a in aggregates]
            n_test = sum(int(p["n"]) for p in parts)
            if n_test == 0:
                raise RequestError(f"fold {k + 1} of {n_splits} holds no rows; use fewer splits")
            rss = sum(float(p["sum_sq_resid"]) for p in parts)
            tss = float(merge_moment_dicts(p["y"] for p in parts).m2[0])
            mse = rss / n_test
            per_fold["n_train"].append(int(state["models"][k]["n_train"]))
            per_fold["n_test"].append(n_test)
            per_fold["mean_sq_error"].append(mse)
            per_fold["root_mean_sq_error"].append(math.sqrt(mse))
            per_fold["mean_abs_error"].append(sum(float(p["sum_abs_resid"]) for p in parts) / n_test)
            per_fold["r_squared"].append(1.0 - rss / tss if tss > 0 else math.nan)
        return json_ready({
            "dependent_var": request.y[0],
            "indep_vars": state["indep_vars"],
            "n_obs": per_fold["n_train"],
            "mean_sq_error": mean_std(per_fold["root_mean_sq_error"]),
            "root_mean_sq_error": mean_std(per_fold["root_mean_sq_error"]),
            "r_squared": mean_std(per_fold["r_squared"]),
            "mean_abs_error": mean_std(per_fold["mean_abs_error"]),
            "n_splits": n_splits,
            "folds": {**per_fold,
                      "indep_vars": [m["columns"] for m in state["models"]],
                      "coefficients": [m["coefficients"] for m in state["models"]]},
        })

    # -- privacy capabilities (mipflow.algorithms.contract) ------------------------------------

    # per-fold sums, masked from 2 nodes (crossval.CrossValidated); no noisy release (not LinearRegression's)
    secure_aggregation = "automatic"
    dp_release = None
    #: its folds are summed as they are (no noisy release, so no scaled sums: not LinearRegression's form)
    secure_aggregates = SpecAlgorithm.secure_aggregates
