"""Ordinary least squares with an intercept, exact against the pooled fit.

Local step (one round): for the candidate design columns (one indicator per
enumeration level of each categorical covariate, then the numerical
covariates) and ``y``: the row count, the column means and the centred
co-moment matrix, plus the rows per level of each categorical covariate.

Global step: merge the co-moments (Chan et al.), choose the treatment coding
of the pooled data (sorted levels present, first one the reference; same
columns and names as Exareme2 / patsy), and solve the centred normal
equations ``C_xx b = C_xy`` (after scaling to unit diagonal).  The intercept
and its standard error follow from the means, so no uncentred ``X'X`` is ever
formed.

Disclosure (ADR 0031): the co-moments of two categorical covariates' indicators
hold their cross-tabulation; the joint cell counts go under ``cell_n``, which the
node checks against ``nfilter_tab`` (refusing the step) and strips before release.
Across releases the joint cells are released groups (ADR 0051, sixteenth review).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, NamedTuple, Sequence

import numpy as np

from mipflow.algorithms.contract import ReleasedGroups, Step
from mipflow.algorithms.spec import NOMINAL, NUMERICAL, InputSpec, SpecAlgorithm
from mipflow.algorithms.design import (
    dummy_level_groups,
    INTERCEPT,
    DesignSource,
    category_codes,
    design_columns,
    design_columns_of,
    level_counts,
    select_design_columns,
    sorted_levels,
    streamed_counts,
    sum_level_counts,
)
from mipflow.algorithms.dp_release import (DPRelease, Noise, Released, bounded_columns, moment_sensitivity,
                                          moments_from_noisy_sums, moments_rows, noisy_sums, one_block)
from mipflow.algorithms.moments import column_moments, merge_moment_dicts, streamed_column_moments
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd

#: Confidence level of the coefficient intervals (statsmodels' default).
CONFIDENCE = 0.95
#: Above this condition number of the scaled covariance the design is
#: treated as collinear.
MAX_CONDITION = 1e12
#: Co-moments with differential-privacy noise (``mipflow.node.controls.dp``) need not be positive definite.
NOT_POSITIVE_DEFINITE = (
    "the covariates' co-moment matrix is not positive definite: the differential-privacy noise a node added "
    "outweighs the data (more rows, a larger dp_epsilon or fewer covariates help)")


def joint_cell_counts(data: pd.DataFrame, codes: Sequence[str], model: DataModel) -> list[int]:
    """Rows in each joint level of every pair of categorical variables among ``codes`` (ADR 0031).

    The co-moment of two indicator columns is ``n_ab - n * mean_a * mean_b``: released co-moments
    give every such joint count back, a cross-tabulation no table released.  The node checks them
    against ``nfilter_tab`` (key ``cell_n``) and does not send them.  The list's length depends on
    the request and data model only.
    """
    cats = [code for code in dict.fromkeys(codes) if model.variable(code).is_categorical]
    levels = {code: category_codes(data[code], model.variable(code)).to_numpy() for code in cats}
    out: list[int] = []
    for i, a in enumerate(cats):
        for b in cats[i + 1:]:
            for la in sorted_levels(model.variable(a)):
                in_a = levels[a] == la
                out.extend(int(np.count_nonzero(in_a & (levels[b] == lb))) for lb in sorted_levels(model.variable(b)))
    return out


#: Eigenvalues of noisy co-moments are raised to this fraction of their mean magnitude when the noise
#: made the matrix indefinite (:func:`positive_definite_part`).
EIGEN_FLOOR = 1e-3


def positive_definite_part(cxx: np.ndarray) -> np.ndarray:
    """Noisy co-moments made positive definite: the same eigenvectors, the eigenvalues raised to
    ``EIGEN_FLOOR`` times their mean magnitude.

    Post-processing of released co-moments only (no data, no budget): an honest explore-mode regression
    on a few hundred rows is answered, labelled approximate, instead of failing at random with the noise
    draw (ADR 0057).  Only for co-moments only noise can make indefinite (:func:`solve_centred` with
    ``on_noise="positive_definite_part"``): exact ones never come here."""
    sym = (cxx + cxx.T) / 2.0
    values, vectors = np.linalg.eigh(sym)
    values = np.maximum(values, EIGEN_FLOOR * float(np.mean(np.abs(values))))
    return (vectors * values) @ vectors.T


class CentredSolution(NamedTuple):
    """What :func:`solve_centred` returns."""

    #: The solution ``b`` of ``cxx @ b = cxy``.
    coef: np.ndarray
    #: ``inv(cxx)`` (of the positive-definite part when ``projected``).
    inverse: np.ndarray
    #: Whether the noisy ``cxx`` was replaced by its :func:`positive_definite_part` before solving.
    projected: bool = False


def solve_centred(cxx: np.ndarray, cxy: np.ndarray, names: list[str], *,
                  on_noise: Literal["raise", "positive_definite_part"] = "raise") -> CentredSolution:
    """Solve ``cxx @ b = cxy`` and return ``(b, inv(cxx), projected)``, scaling to unit diagonal.

    Parameters
    ----------
    cxx : numpy.ndarray, shape (p, p)
        Centred co-moments of the covariates.
    cxy : numpy.ndarray, shape (p,)
        Centred co-moments of covariates and response.
    names : list of str, length p
        Column names, for error messages.
    on_noise : {"raise", "positive_definite_part"}
        What to do with co-moments that only differential-privacy noise (``mipflow.node.controls.dp``;
        exact ones are sums of squares) can make indefinite: finite, no variance exactly 0, and a
        negative variance, or well conditioned yet not positive definite.  ``"raise"`` refuses them
        (:data:`NOT_POSITIVE_DEFINITE`); ``"positive_definite_part"`` solves on their
        :func:`positive_definite_part` instead (``projected`` is then true; ADR 0057).

    Raises
    ------
    RequestError
        If a covariate is constant, the covariates are collinear, or ``cxx`` is
        not positive definite (only possible with co-moments that carry
        differential-privacy noise; with ``on_noise="positive_definite_part"`` only if they are not finite
        or a negative variance stands beside a variance exactly 0).
    """

    def indefinite_by_noise() -> CentredSolution:
        if on_noise == "positive_definite_part":
            return solve_centred(positive_definite_part(cxx), cxy, names)._replace(projected=True)
        raise RequestError(NOT_POSITIVE_DEFINITE)

    diagonal = np.diagonal(cxx)
    if not np.all(np.isfinite(cxx)):
        raise RequestError(NOT_POSITIVE_DEFINITE)
    if np.any(diagonal < 0):
        if np.any(diagonal == 0):  # beside an exact constant column: refused as before
            raise RequestError(NOT_POSITIVE_DEFINITE)
        return indefinite_by_noise()
    scale = np.sqrt(diagonal)
    constant = [names[i] for i in np.flatnonzero(scale == 0)]
    if constant:
        raise RequestError(f"covariate(s) {', '.join(constant)} are constant in the selected data")
    corr = cxx / np.outer(scale, scale)
    if np.linalg.cond(corr) > MAX_CONDITION:
        raise RequestError("the covariates are collinear in the selected data")
    try:  # well conditioned but indefinite: noise, not data
        np.linalg.cholesky(corr)
    except np.linalg.LinAlgError:
        return indefinite_by_noise()
    corr_inv = np.linalg.inv(corr)
    coef = np.linalg.solve(corr, cxy / scale) / scale
    return CentredSolution(coef, corr_inv / np.outer(scale, scale))


# --------------------------------------------------------------------------- differential privacy
# The noisy release a node with dp_enabled makes (LinearRegression.dp_release, ADR 0021).


def dp_columns(request: AnalysisRequest, model: DataModel) -> list[tuple[str, str]]:
    """The candidate design columns (the local step's order) and ``y``, with their kinds."""
    kinds = {}
    for code in request.x:
        var = model.variable(code)
        if var.is_categorical:
            kinds.update({name: code for name in design_columns([code], model, intercept=False)})
    return [(name, kinds.get(name, "numerical")) for name in design_columns(request.x, model, intercept=False)] + \
        [(request.y[0], "numerical")]


def _dp_release(algo: LinearRegression, data: pd.DataFrame, request: AnalysisRequest, model: DataModel,
                noise: Noise) -> Released:
    """Noisy sufficient statistics of the design columns and ``y``, in the local step's shape, and the
    signed scaled sums they came from with the variance of the noise on each entry (ADR 0057)."""
    from mipflow.algorithms.design import sorted_levels

    from mipflow.algorithms.pearson_correlation import scaled_sums

    cols = bounded_columns(data, dp_columns(request, model), model, algo.name)
    sums = noisy_sums(cols, noise)
    moments = moments_from_noisy_sums(cols, *sums)
    l1, l2 = moment_sensitivity(cols.group)
    variance = noise.sd(l1 if noise.mechanism == "laplace" else l2) ** 2
    # rows per level: the noisy indicator sums, rounded (post-processing)
    s1 = dict(zip(cols.names, np.asarray(moments["mean"]) * moments["n"]))
    counts = {code: [max(int(round(s1[f"{code}[{level}]"])), 0) for level in sorted_levels(model.variable(code))]
              for code in request.x if model.variable(code).is_categorical}
    # the signed scaled sums the moments came from and the noise's variance on each entry (ADR 0057): the
    # central side propagates the noise into the coefficients' errors (regression_noise)
    return {"moments": moments, "level_counts": counts,
            "group_n": [c for code in request.x for c in counts.get(code, [])],
            "noisy_sums": scaled_sums(*sums, noise.mechanism, variance)}, cols.clamped


#: What a noisy linear regression's result is, stated in its privacy label.
DP_NOTE = (
    "linear_regression from noisy sufficient statistics (row count, sums and sums of products of the design "
    "columns and y, values clamped to the declared ranges, indicators in [0, 1]): the coefficients are computed "
    "from the pooled signed sums; their standard errors, t statistics, p-values and confidence intervals combine "
    "the sampling error with the noise's known distribution (first order: coef_noise_sd, coef_noise_low/high, "
    "std_err_sampling, noise_dominates); R-squared, F and the residual standard error are computed from the noisy "
    "statistics as if they were exact and leave out the noise")


def projected_note() -> str:
    """What a result solved on the :func:`positive_definite_part` of its noisy co-moments says."""
    return ("the covariates' noisy co-moments were not positive definite (differential-privacy noise outweighs "
            f"part of the data); their eigenvalues were raised to {EIGEN_FLOOR:g} of their mean magnitude before "
            "solving: the coefficients are approximate and their standard errors leave this out (more rows, a "
            "larger dp_epsilon or fewer covariates help)")


class LinearRegression(SpecAlgorithm):
    name = "linear_regression"
    sums_only = True  # counts, moments and co-moments of the request's columns only (ADR 0063)
    label = "Linear Regression"
    description = ("Ordinary least squares of a numerical variable on covariates: coefficients, standard "
                   "errors, t-tests and intervals, R-squared and the F-test.")
    small_group_hint = (
        "linear_regression checks, at each node, the rows of each level of a nominal covariate and of each pair "
        "of levels of two nominal covariates: select more rows (a wider filter, more datasets), use covariates "
        "with fewer levels or fewer nominal covariates.")
    # Exareme2's spec says "real" only, but its validation suite regresses
    # integer variables (minimentalstate) too.
    y_spec = InputSpec(types=("real", "int"), stattypes=(NUMERICAL,), notblank=True, multiple=False,
                       label="Variable (dependent)", description="A numerical variable.")
    x_spec = InputSpec(types=("real", "int", "text"), stattypes=(NUMERICAL, NOMINAL),
                       notblank=True, multiple=True, label="Covariates (independent)",
                       description="Numerical or nominal variables (nominal ones dummy-encoded).")

    def check(self, request: AnalysisRequest, model: DataModel) -> None:
        if request.y[0] in request.x:
            raise RequestError(f"{request.y[0]!r} cannot be both the dependent variable and a covariate")

    def released_groups(self, request: AnalysisRequest, model: DataModel) -> tuple[ReleasedGroups, ...]:
        # each dummy's co-moments are its level's count and sums of y and of the numerical covariates (first
        # moments: group threshold nfilter_tab); two releases' levels one row apart give that row (ADR 0051);
        # two covariates' dummies' co-moment is their joint cell's count (``cell_n``): the joint cells are the
        # groups, the levels their margins (sixteenth review, hole 3)
        return dummy_level_groups(request.x, model)

    #: Its local step also takes a node's selection left on disk when every variable is numerical
    #: (:class:`mipflow.algorithms.moments.ColumnSource`; ADR 0049 amended): the node then holds no
    #: copy of the rows (:meth:`mipflow.node.api.context.SelectionCache.rows`).
    streams_rows = True

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        # the candidate design columns and y last (y is numerical, so design_columns(x + [y]) puts it after
        # them); their moments are those of the column-major matrix of them, computed without making it
        if hasattr(data, "reader"):  # rows left on disk (streams_rows): a block at a time, dummies from the
            # stored level codes (DesignSource), the same values bit for bit
            moments = streamed_column_moments(DesignSource(data, [*request.x, request.y[0]], model),
                                              design_columns([*request.x, request.y[0]], model, intercept=False),
                                              matrix=True)
            tables = streamed_counts(data, request.x, model)
            counts, cells = tables["level_counts"], tables["joint"]
        else:
            z, _ = design_columns_of(data, [*request.x, request.y[0]], model, intercept=False)
            moments = column_moments(z, matrix=True, rows=len(data))
            counts, cells = level_counts(data, request.x, model), joint_cell_counts(data, request.x, model)
        return {
            "moments": moments.to_dict(),
            "level_counts": counts,
            # rows per dummy column: the co-moments release per-level sums
            "group_n": [c for code in request.x for c in counts.get(code, [])],
            # joint levels of each pair of categorical covariates: checked at the node, not sent
            "cell_n": cells,
        }

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        # scipy.special's t and F functions are what scipy.stats.t.sf / .ppf and f.sf call (same values,
        # bit for bit); importing scipy.stats costs about 1 s of CPU in each analysis task (ADR 0047)
        from scipy import special

        from mipflow.algorithms.regression_noise import is_noisy, noisy_regression

        if is_noisy(aggregates):  # noisy nodes' signed sums: every coefficient carries the noise's error
            return Step(done=True, result=json_ready(noisy_regression(aggregates, request, model, CONFIDENCE)))
        mom = merge_moment_dicts(a["moments"] for a in aggregates)
        counts = sum_level_counts([a["level_counts"] for a in aggregates])
        n = mom.n
        candidates = design_columns(request.x, model, intercept=False)
        columns = select_design_columns(request.x, model, counts)
        slopes = [c for c in columns if c != INTERCEPT]
        idx = [candidates.index(c) for c in slopes]
        p = len(idx)
        df_resid = n - p - 1
        if df_resid <= 0:
            raise RequestError(
                f"linear regression with {p + 1} coefficients needs more than {p + 1} rows, got {n}"
            )
        cxx = mom.m2[np.ix_(idx, idx)]
        cxy = mom.m2[idx, -1]
        cyy = float(mom.m2[-1, -1])
        if cyy == 0.0:
            raise RequestError(f"{request.y[0]} is constant in the selected data")
        if p:  # noisy co-moments (DP, explore mode) may be indefinite
            beta, cxx_inv, projected = solve_centred(cxx, cxy, slopes, on_noise="positive_definite_part")
        else:
            beta, cxx_inv, projected = np.zeros(0), np.zeros((0, 0)), False
        xbar = mom.mean[idx]
        intercept = float(mom.mean[-1] - xbar @ beta)
        ssr = max(cyy - float(cxy @ beta), 0.0)
        sigma2 = ssr / df_resid
        var_intercept = sigma2 * (1.0 / n + float(xbar @ cxx_inv @ xbar))
        coef = np.concatenate([[intercept], beta])
        std_err = np.sqrt(np.concatenate([[var_intercept], sigma2 * np.diagonal(cxx_inv)]))
        with np.errstate(divide="ignore", invalid="ignore"):
            t_stats = coef / std_err
        pvalues = 2.0 * special.stdtr(df_resid, -np.abs(t_stats))  # = 2 * stats.t.sf(|t|, df_resid)
        q = special.stdtrit(df_resid, 1.0 - (1.0 - CONFIDENCE) / 2.0)  # = stats.t.ppf(.., df_resid)
        r_squared = 1.0 - ssr / cyy
        if p:
            f_stat = ((cyy - ssr) / p) / sigma2 if sigma2 > 0 else math.inf
            f_pvalue = float(special.fdtrc(p, df_resid, f_stat))  # = stats.f.sf(f_stat, p, df_resid)
        else:
            f_stat, f_pvalue = math.nan, math.nan
        result = {
            "dependent_var": request.y[0],
            "n_obs": n,
            "df_resid": float(df_resid),
            "df_model": float(p),
            "rse": math.sqrt(sigma2),
            "r_squared": r_squared,
            "r_squared_adjusted": 1.0 - (1.0 - r_squared) * (n - 1) / df_resid,
            "f_stat": f_stat,
            "f_pvalue": f_pvalue,
            "indep_vars": columns,
            "coefficients": coef,
            "std_err": std_err,
            "t_stats": t_stats,
            "pvalues": pvalues,
            "lower_ci": coef - q * std_err,
            "upper_ci": coef + q * std_err,
        }
        if projected:
            result["approximate"] = True
            result["noise_note"] = projected_note()
        return Step(done=True, result=json_ready(result))

    # -- privacy capabilities (mipflow.algorithms.contract) ------------------------------------

    secure_aggregation = "automatic"
    dp_release = DPRelease(one_block, _dp_release, moments_rows, DP_NOTE)

    def secure_aggregates(self, aggregates: dict, request: AnalysisRequest, model: DataModel) -> dict:
        """Under secure aggregation every node sums the same layout: an exact node adds its scaled sums
        (no noise) beside its moments when every numerical variable has a declared range, else no node
        does (as ``pearson_correlation``; ADR 0057)."""
        from mipflow.algorithms.pearson_correlation import sums_of_moments
        from mipflow.algorithms.regression_noise import column_scales

        if model is None or "moments" not in aggregates:  # no data model to scale by: summed as released
            return aggregates
        scales = column_scales(request, model)
        if scales is None:
            return {k: v for k, v in aggregates.items() if k != "noisy_sums"}
        if "noisy_sums" in aggregates:
            return aggregates
        return {**aggregates, "noisy_sums": sums_of_moments(aggregates["moments"], *scales[1:])}

    def parameter_count(self, request: AnalysisRequest, model: DataModel) -> int | None:
        """The model's parameters, checked against ``nfilter_glm``: one per design column."""
        return len(design_columns(request.x, model))
