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
matrix, hence the principal components, is unchanged by them.  The result adds
``means`` and ``sigmas`` (``ddof=1``) of the transformed variables, as
Exareme2 reports them.
"""
from __future__ import annotations

import dataclasses
import math
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from mipflow.algorithms.contract import Step
from mipflow.algorithms.design import numeric_values
from mipflow.algorithms.moments import Moments, compute_moments, merge_moment_dicts
from mipflow.algorithms.spec import NUMERICAL, InputSpec, ParamSpec, SpecAlgorithm
from mipflow.algorithms.streamed import moments_of
from mipflow.algorithms.weighted import WEIGHTED_ROWS, WeightFamily, exp_families, exp_weighted_rows
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

    def transform_rows(self, data: pd.DataFrame, request: AnalysisRequest, model: DataModel) -> np.ndarray:
        """The variables as a float matrix, shape (n, p) (overridden to transform them)."""
        return np.column_stack([numeric_values(data[code]) for code in request.y]) if len(data) \
            else np.zeros((0, len(request.y)))

    #: Its local step also takes a node's selection left on disk (ADR 0062, amendment 10): the moments of the
    #: variables' own columns (``column_moments``, a frame's; ``streamed_column_moments``, rows read a block
    #: at a time: the same bits).  Not :class:`PCAWithTransformation` (its rows are transformed first).
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


class PCAWithTransformation(PCA):
    streams_rows = False  # its rows transformed as a matrix (log, exp) before their moments
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

    def transform_rows(self, data: pd.DataFrame, request: AnalysisRequest, model: DataModel) -> np.ndarray:
        return self.apply_row_transforms(super().transform_rows(data, request, model), request, model)

    def apply_row_transforms(self, values: np.ndarray, request: AnalysisRequest, model: DataModel) -> np.ndarray:
        """``log`` and ``exp`` of the request's columns of ``values`` (changed in place and returned).

        ``exp`` of a value over ~709.78 is infinite: the release then holds a number that is not
        finite, which the node refuses (control ``non_finite``, ADR 0053) and the global step too."""
        methods = self.params(request, model)["data_transformation"]
        for method in ROW_TRANSFORMS:
            for code in methods.get(method, []):
                j = request.y.index(code)
                if method == "log":
                    if (values[:, j] <= 0).any():
                        raise RequestError(
                            f"Log transformation cannot be applied to non-positive values in column '{code}'."
                        )
                    values[:, j] = np.log(values[:, j])
                else:
                    with np.errstate(over="ignore"):
                        values[:, j] = np.exp(values[:, j])
        return values

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        raw = PCA.transform_rows(self, data, request, model)
        methods = self.params(request, model)["data_transformation"]
        # the rows each exp-weighted sum holds, from the untransformed values (ADR 0053): checked
        # against min_row_count by the node (control dominated_sums), never sent
        held = exp_weighted_rows(raw, [request.y.index(code) for code in methods.get("exp", [])])
        values = self.apply_row_transforms(raw, request, model)
        with np.errstate(invalid="ignore", over="ignore"):
            moments = compute_moments(values, matrix=True)
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


__all__ = ["PCA", "PCAWithTransformation", "parse_transformations", "principal_components",
           "sign_convention"]
