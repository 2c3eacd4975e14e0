"""Principal component analysis of standardised variables, exact against the pooled data.

Exareme2 standardises every variable with the pooled mean and sample standard
deviation (``ddof=1``) and eigendecomposes the covariance of the standardised
data, i.e. the correlation matrix; mipflow does the same.

Local step (one round): the row count, the column means and the centred
co-moment matrix of the variables (:mod:`.moments`); the count also goes
under ``group_n`` so that a node with fewer than ``nfilter_tab`` rows refuses
(from one or two rows, a mean and a co-moment matrix give the rows back).

Global step: merge the co-moments (Chan et al.), scale them to the
correlation matrix, and take its symmetric eigendecomposition
(``numpy.linalg.eigh``).  Eigenvalues are sorted in decreasing order;
``eigen_vecs`` holds one eigenvector per row.  An eigenvector's sign is
arbitrary: each is signed so that its component of largest absolute value is
positive (scikit-learn's ``svd_flip`` convention for ``PCA.components_``).

``pca_with_transformation`` first transforms variables, per Exareme2's
``data_transformation`` parameter (``{"log": [...], "exp": [...], "center":
[...], "standardize": [...]}``).  ``log`` and ``exp`` are applied by the nodes
to their rows (``log`` of a value <= 0 is refused with Exareme2's message; the node
also refuses an ``exp``-weighted sum that fewer than ``min_row_count`` rows
dominate, and a release that is not finite, ADR 0053; in a study the protocol
fixes ``log`` and ``exp`` and approval checks them).
``center`` (subtract the pooled mean) and ``standardize`` (subtract the pooled
mean, divide by the pooled population standard deviation, ``ddof=0``, as
Exareme2's expected results show) are affine maps of a column: the moments of
the centred or standardised column follow exactly from those of the column,
so no second round (and no second release) is needed, and the correlation
matrix, hence the principal components, is unchanged by them.  ``log`` and ``exp`` are elementwise: the
node transforms each column alone (a frame's, or rows on disk a block at a time, :class:`TransformedColumns`)
and takes the moments as :class:`PCA` does, the same bits either way (ADR 0062, amendment 13).  The result adds
``means`` and ``sigmas`` (``ddof=1``) of the transformed variables, as
Exareme2 reports them.
"""
from __future__ import annotations

import dataclasses
import math
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from mipflow.algorithms.contract import Step
from mipflow.algorithms.design import numeric_values
from mipflow.algorithms.moments import Moments, column_moments, merge_moment_dicts, streamed_column_moments
from mipflow.algorithms.spec import NUMERICAL, InputSpec, ParamSpec, SpecAlgorithm
from mipflow.algorithms.streamed import moments_of, on_disk
from mipflow.algorithms.weighted import (
    WEIGHTED_ROWS, WeightFamily, exp_families, exp_weighted_rows, exp_weighted_rows_on_disk,
)
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd

#: Transformations of ``pca_with_transformation``: applied at the nodes, or centrally (affine).
ROW_TRANSFORMS = ("log", "exp")
AFFINE_TRANSFORMS = ("center", "standardize")
TRANSFORMS = ROW_TRANSFORMS + AFFINE_TRANSFORMS


def sign_convention(vectors: np.ndarray) -> np.ndarray:
    """Flip each row so that its component of largest absolute value is positive.

    Parameters
    ----------
    vectors : numpy.ndarray, shape (k, p)
        One eigenvector per row.
    """
    largest = np.argmax(np.abs(vectors), axis=1)
    signs = np.sign(vectors[np.arange(len(vectors)), largest])
    signs[signs == 0] = 1.0
    return vectors * signs[:, None]


def principal_components(moments: Moments, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (decreasing) and eigenvectors (rows) of the correlation matrix.

    Parameters
    ----------
    moments : Moments
        Pooled count, means and ``(p, p)`` co-moment matrix.
    names : tuple of str, length p
        Variable codes, for error messages.

    Returns
    -------
    eigen_vals : numpy.ndarray, shape (p,)
    eigen_vecs : numpy.ndarray, shape (p, p)

    Raises
    ------
    RequestError
        With fewer than two rows or a constant variable.
    """
    if moments.n < 2:
        raise RequestError(f"PCA needs at least 2 rows, got {moments.n}")
    if not (np.isfinite(moments.mean).all() and np.isfinite(moments.m2).all()):
        raise RequestError("PCA: the pooled moments are not finite (an overflow of a transformation)")
    scale = np.sqrt(np.diagonal(moments.m2))
    constant = [names[i] for i in np.flatnonzero(scale == 0)]
    if constant:
        raise RequestError(f"cannot standardise: {', '.join(constant)} is constant in the selected data")
    corr = moments.m2 / np.outer(scale, scale)
    corr = (corr + corr.T) / 2.0
    np.fill_diagonal(corr, 1.0)
    values, vectors = np.linalg.eigh(corr)
    order = np.argsort(values)[::-1]
    return values[order], sign_convention(vectors[:, order].T)


class PCA(SpecAlgorithm):
    name = "pca"
    label = "Principal Component Analysis (PCA)"
    description = ("The principal components (eigenvalues and eigenvectors) of the correlation matrix of "
                   "numerical variables.")
    y_spec = InputSpec(types=("real", "int"), stattypes=(NUMERICAL,), notblank=True, multiple=True,
                       label="Variables", description="Numerical variables.")

    #: Its local step also takes a node's selection left on disk (ADR 0062, amendment 10): the moments of the
    #: variables' own columns (``column_moments``, a frame's; ``streamed_column_moments``, rows read a block
    #: at a time: the same bits).  :class:`PCAWithTransformation` too, its columns transformed first (amendment 13).
    streams_rows = True

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        moments = moments_of(data, request.y, matrix=True)
        # group_n: a mean and co-moments of one or two rows give those rows back
        return {"moments": moments.to_dict(), "group_n": [moments.n]}

    def pooled(self, aggregates: list[dict], request: AnalysisRequest) -> Moments:
        moments = merge_moment_dicts(a["moments"] for a in aggregates)
        if moments.n == 0:
            raise RequestError("PCA: no rows in the selected data")
        return moments

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        moments = self.pooled(aggregates, request)
        values, vectors = principal_components(moments, request.y)
        return Step(done=True, result=json_ready({
            "n_obs": moments.n, "eigen_vals": values, "eigen_vecs": vectors,
        }))


def parse_transformations(value: Any, y: tuple[str, ...]) -> dict[str, list[str]]:
    """Check Exareme2's ``data_transformation`` parameter; method -> variable codes.

    Raises
    ------
    RequestError
        For an unknown method, a variable not in ``y``, or a variable given
        more than one transformation (their order would be ambiguous).
    """
    if value is None or value == {}:
        return {}
    if not isinstance(value, Mapping):
        raise RequestError("parameter 'data_transformation' must be an object: method -> list of variables")
    out: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for method, codes in value.items():
        if method not in TRANSFORMS:
            raise RequestError(f"Unknown transformation: {method!r} (known: {', '.join(TRANSFORMS)})")
        if isinstance(codes, str) or not isinstance(codes, (list, tuple)):
            raise RequestError(f"data_transformation.{method} must be a list of variables")
        for code in codes:
            if code not in y:
                raise RequestError(f"data_transformation.{method}: {code!r} is not one of the variables (y)")
            if code in seen:
                raise RequestError(f"variable {code!r} is given two transformations ({seen[code]}, {method})")
            seen[code] = method
        out[method] = list(codes)
    return out


def transformed(code: str, values: np.ndarray, method: str | None, refused: set[str]) -> np.ndarray:
    """A column's (or a block's) values after ``method`` (``log``, ``exp`` or None), a new array for a
    transformation; elementwise, so a column transformed whole or a block at a time gives the same bits.
    A ``log`` of a value <= 0 adds ``code`` to ``refused`` (:func:`refuse_logs` answers it).  ``exp`` of a
    value over ~709.78 is infinite: the release then holds a number that is not finite, which the node
    refuses (control ``non_finite``, ADR 0053) and the global step too."""
    if method == "log":
        if (values <= 0).any():
            refused.add(code)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(values)
    if method == "exp":
        with np.errstate(over="ignore"):
            return np.exp(values)
    return values


def refuse_logs(refused: set[str], transforms: Mapping[str, str]) -> None:
    """Exareme2's refusal of the first ``log`` variable (in the request's order) holding a value <= 0."""
    for code, method in transforms.items():
        if method == "log" and code in refused:
            raise RequestError(f"Log transformation cannot be applied to non-positive values in column '{code}'.")


class TransformedColumns:
    """A :class:`mipflow.algorithms.moments.ColumnSource` of ``source``'s columns, each after its
    transformation in ``transforms`` (code -> ``log`` / ``exp``; others as read), a block at a time
    (:func:`transformed`); ``refused`` collects the ``log`` variables seen holding a value <= 0."""

    def __init__(self, source: Any, transforms: Mapping[str, str]) -> None:
        self.source, self.transforms, self.refused = source, dict(transforms), set()

    def __len__(self) -> int:
        return len(self.source)

    def reader(self, codes: Sequence[str]) -> Callable[[int], list[np.ndarray]]:
        codes = list(codes)
        inner = self.source.reader(codes)

        def next_rows(m: int) -> list[np.ndarray]:
            return [transformed(code, values, self.transforms.get(code), self.refused)
                    for code, values in zip(codes, inner(m))]

        return next_rows


class PCAWithTransformation(PCA):
    #: Rows on disk too (ADR 0062, amendment 13): ``log`` and ``exp`` applied to each column a block at a time
    #: (:class:`TransformedColumns`), the weighted sums' rows held a block at a time
    #: (:func:`mipflow.algorithms.weighted.exp_weighted_rows_on_disk`); the frame path transforms its columns
    #: alone and takes :func:`~mipflow.algorithms.moments.column_moments` of them: the same bits.
    streams_rows = True
    name = "pca_with_transformation"
    label = "Principal Component Analysis (PCA) with transformations"
    description = "PCA after transforming variables by log, exp, centring or standardising."
    parameter_specs = MappingProxyType({
        "data_transformation": ParamSpec(
            types=("dict",), notblank=False, label="Transformations",
            description='Transformation -> variables, e.g. {"log": ["age"], "standardize": ["glucose_mmol"]}; '
                        "transformations: log, exp, center, standardize."),
    })

    def params(self, request: AnalysisRequest, model: DataModel | None = None) -> dict[str, Any]:
        parameters = dict(request.parameters)
        raw = parameters.pop("data_transformation", None)
        out = super().params(dataclasses.replace(request, parameters=parameters), model)
        out["data_transformation"] = parse_transformations(raw, request.y)
        return out

    def weight_families(self, request: AnalysisRequest, model: DataModel) -> tuple[WeightFamily, ...]:
        """The exp-weighted sums' families (ADR 0058): ``exp(x_a)``, ``exp(2 x_a)``, ``exp(x_a + x_b)``
        for the request's ``exp`` variables (from the request alone)."""
        return exp_families(self.params(request, model)["data_transformation"].get("exp", []))

    def row_transforms(self, request: AnalysisRequest, model: DataModel) -> dict[str, str]:
        """Variable code -> ``log`` or ``exp``: the transformations the node applies to its rows."""
        methods = self.params(request, model)["data_transformation"]
        return {code: method for method in ROW_TRANSFORMS for code in methods.get(method, [])}

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        transforms = self.row_transforms(request, model)
        exp_codes = [code for code, method in transforms.items() if method == "exp"]  # the request's order
        # the rows each exp-weighted sum holds, from the untransformed values (ADR 0053): checked
        # against min_row_count by the node (control dominated_sums), never sent
        if on_disk(data):
            held = exp_weighted_rows_on_disk(data, exp_codes)
            source = TransformedColumns(data, transforms)
            with np.errstate(invalid="ignore", over="ignore"):
                moments = streamed_column_moments(source, request.y, matrix=True)
            refuse_logs(source.refused, transforms)
        else:
            raw = {code: numeric_values(data[code]) for code in request.y}
            held = exp_weighted_rows(np.column_stack([raw[c] for c in exp_codes]), range(len(exp_codes))) \
                if exp_codes else None
            refused: set[str] = set()
            columns = [transformed(code, raw[code], transforms.get(code), refused) for code in request.y]
            refuse_logs(refused, transforms)
            with np.errstate(invalid="ignore", over="ignore"):
                moments = column_moments(columns, matrix=True, rows=len(data))
        out = {"moments": moments.to_dict(), "group_n": [moments.n]}
        return out if held is None else {**out, WEIGHTED_ROWS: [held]}

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        moments = self.pooled(aggregates, request)
        n = moments.n
        if n < 2:
            raise RequestError(f"PCA needs at least 2 rows, got {n}")
        methods = self.params(request, model)["data_transformation"]
        means = moments.mean.copy()
        m2 = moments.m2.copy()
        for code in methods.get("center", []) + methods.get("standardize", []):
            means[request.y.index(code)] = 0.0
        for code in methods.get("standardize", []):
            j = request.y.index(code)
            population_var = m2[j, j] / n
            if population_var == 0.0:
                raise RequestError(f"Standardization cannot be applied to column '{code}': it is constant")
            m2[j, :] /= math.sqrt(population_var)
            m2[:, j] /= math.sqrt(population_var)
        final = Moments(n, means, m2)
        values, vectors = principal_components(final, request.y)
        return Step(done=True, result=json_ready({
            "n_obs": n, "eigen_vals": values, "eigen_vecs": vectors,
            "means": means, "sigmas": np.sqrt(final.variance(ddof=1)),
        }))


__all__ = ["PCA", "PCAWithTransformation", "TransformedColumns", "parse_transformations", "principal_components",
           "refuse_logs", "sign_convention", "transformed"]
