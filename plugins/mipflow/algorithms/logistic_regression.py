"""Binary logistic regression fitted by federated Newton–Raphson (IRLS).

Round 0: every node sends its row count, how many rows are of the positive
class, the rows per level of each categorical covariate and the means of the
candidate design columns.  The central side picks the treatment coding of
the pooled data (as linear regression) and centres the covariates on their
pooled means (an affine reparametrisation: Newton's iterates are the same,
the Hessian far better conditioned when a covariate has a large mean).
Later rounds: the central side sends the chosen columns, the centre and the
current coefficients; nodes return the log-likelihood, ``X' W X`` and
``X' (y - p)`` of their rows there, and the central side makes a Newton step.

Convergence as statsmodels' ``Logit.fit(method="newton")``, starting from
zero: stop when no coefficient (on the original scale) moved by more than
``tol`` (default 1e-8) in the last step; one more round then evaluates the
standard errors and log-likelihood at the final coefficients.  Not
converging within ``max_iter`` Newton steps (e.g. perfect separation) is an
error.

``y`` is 1 for ``positive_class`` and 0 for every other category.
Intervals are 95% Wald intervals.  ``ll0`` is the intercept-only
log-likelihood in closed form; ``r_squared_cs`` is Cox & Snell's R²
(Exareme2's expected results hold 0.0 there).
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from mipflow.algorithms.contract import ReleasedGroups, Step
from mipflow.algorithms.linear_regression import joint_cell_counts
from mipflow.algorithms.design import (
    class_groups,
    dummy_level_groups,
    DesignSource,
    category_codes,
    design_columns,
    design_columns_of,
    design_matrix,
    level_counts,
    select_design_columns,
    sorted_levels,
    streamed_counts,
    sum_level_counts,
)
from mipflow.algorithms.moments import WeightTotals, column_moments, merge_moment_dicts, streamed_column_moments
from mipflow.algorithms.spec import (
    NOMINAL,
    NUMERICAL,
    InputSpec,
    ParamSpec,
    SpecAlgorithm,
)
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd

CONFIDENCE = 0.95
MAX_CONDITION = 1e14


def _scaled_solve(hessian: np.ndarray, gradient: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(inv(H) g, inv(H))`` for a positive definite ``H``, scaled to unit diagonal."""
    diag = np.diagonal(hessian)
    if np.any(diag <= 0):
        raise RequestError(
            "a covariate is constant in the selected data, or the classes are perfectly separated"
        )
    scale = 1.0 / np.sqrt(diag)
    scaled = hessian * np.outer(scale, scale)
    if np.linalg.cond(scaled) > MAX_CONDITION:
        raise RequestError("the covariates are collinear, or the classes are perfectly separated")
    inv = np.linalg.inv(scaled) * np.outer(scale, scale)
    step = np.linalg.solve(scaled, gradient * scale) * scale
    return step, inv


def _uncentre_map(center: np.ndarray) -> np.ndarray:
    """Matrix taking coefficients on centred covariates to the original scale.

    With ``eta = b0c + (x - center) . b = (b0c - center . b) + x . b`` the
    slopes are unchanged and the intercept is ``b0c - center . b``.
    """
    out = np.eye(len(center) + 1)
    out[0, 1:] = -center
    return out


class LogisticRegression(SpecAlgorithm):
    name = "logistic_regression"
    label = "Logistic Regression"
    description = ("Models a binary outcome (the positive class against the others) on covariates by "
                   "federated Newton iterations: coefficients, standard errors, Wald tests and intervals.")
    small_group_hint = (
        "logistic_regression checks, at each node, the rows of each class (positive and the others), of each "
        "level of a nominal covariate, of each class within each level, and of each pair of levels of two "
        "nominal covariates: select more rows (a wider filter, more datasets), use covariates with fewer "
        "levels or fewer nominal covariates, or choose a positive class that is neither rare nor nearly all.")
    y_spec = InputSpec(types=("int", "text"), stattypes=(NOMINAL,), notblank=True, multiple=False,
                       label="Variable (dependent)",
                       description="A nominal variable, made binary: 1 for the positive class, 0 for the others.")
    x_spec = InputSpec(types=("real", "int", "text"), stattypes=(NUMERICAL, NOMINAL),
                       notblank=True, multiple=True, label="Covariates (independent)",
                       description="Numerical or nominal variables (nominal ones dummy-encoded).")
    parameter_specs = MappingProxyType({
        "positive_class": ParamSpec(types=("text", "int"), notblank=True, enums_from="y", label="Positive class",
                                    description="The level of y that is the positive class; every other "
                                                "level is negative."),
        # mipflow additions (not in Exareme2's spec): convergence control.
        "max_iter": ParamSpec(types=("int",), default=50, min=1, max=1000, label="Maximum iterations",
                              description="The most Newton iterations (one federated round each)."),
        "tol": ParamSpec(types=("real",), default=1e-8, min=1e-14, max=1e-2, label="Tolerance",
                         description="Convergence tolerance of the Newton iterations."),
    })

    def check(self, request: AnalysisRequest, model: DataModel) -> None:
        if request.y[0] in request.x:
            raise RequestError(f"{request.y[0]!r} cannot be both the dependent variable and a covariate")

    def released_groups(self, request: AnalysisRequest, model: DataModel) -> tuple[ReleasedGroups, ...]:
        # the response's classes, alone and within each level of every nominal covariate (ADR 0051, fifteenth
        # review): round 0's n_positive and round 1's gradient at zero, ``X' y - n_positive c``, give the
        # positive class's sums of every covariate (its count per level); and each nominal covariate's levels
        # (issue 14 item 5): round 0's dummy means (the level counts), and round 1's Hessian ``X' W X`` at zero
        # (``W = 1/4``) gives each level's sums of the numerical covariates
        positive = self.params(request, model)["positive_class"]
        return class_groups(request.y[0], request.x, model, (str(positive),)) + dummy_level_groups(request.x, model)

    # -- local ------------------------------------------------------------------

    #: Its local step also takes a node's selection left on disk (ADR 0049 amended, "logistic
    #: regression"): counts, round 0's moments and every Newton round's sums read a block at a time.
    streams_rows = True

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        positive = self.params(request, model)["positive_class"]
        if hasattr(data, "reader"):  # rows left on disk (streams_rows): the same values, bit for bit
            return _streamed_step(data, request, model, state, positive)
        y = _response(data, request, model, positive)
        n_positive = int(y.sum())
        # the class sizes are group sizes too: the gradient holds the covariate sums of each class,
        # so a class of one or two rows at a node would release those patients' values
        out: dict = {"n": len(y), "n_positive": n_positive, "group_n": [n_positive, len(y) - n_positive],
                     # joint levels of categorical covariates, and of each with the class: the Hessian and
                     # gradient hold them; checked by the node against nfilter_tab, not sent (ADR 0031)
                     "cell_n": joint_cell_counts(data, request.x, model) + _class_cells(data, request, model, y)}
        if state is None:
            # the moments of the design's columns, without making the design (the same values, bit for bit)
            design, _ = design_columns_of(data, request.x, model, intercept=False)
            out["level_counts"] = level_counts(data, request.x, model)
            out["group_n"] += [c for code in request.x for c in out["level_counts"].get(code, [])]
            out["moments"] = column_moments(design, rows=len(data)).to_dict()
            return out
        design = _centred_design(data, request, model, state)
        loglik, gradient, hessian = newton_sums(design, y, np.asarray(state["coefficients"], dtype=float))
        out["loglik"] = loglik
        out["gradient"] = gradient.tolist()
        out["hessian"] = hessian.tolist()
        return out

    # -- global -----------------------------------------------------------------

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        params = self.params(request, model)
        n = sum(int(a["n"]) for a in aggregates)
        n_pos = sum(int(a["n_positive"]) for a in aggregates)
        if state is None:
            return Step(done=False, state=self._start(request, model, aggregates, n, n_pos))

        columns = state["columns"]
        center = np.asarray(state["center"], dtype=float)
        beta_c = np.asarray(state["coefficients"], dtype=float)
        gradient = np.sum([np.asarray(a["gradient"], dtype=float) for a in aggregates], axis=0)
        hessian = np.sum([np.asarray(a["hessian"], dtype=float) for a in aggregates], axis=0)
        loglik = float(sum(a["loglik"] for a in aggregates))
        if state["final"]:
            _, cov_c = _scaled_solve(hessian, np.zeros(len(beta_c)))
            to_original = _uncentre_map(center)
            return Step(done=True, result=self._result(
                request, columns, to_original @ beta_c, to_original @ cov_c @ to_original.T,
                loglik, n, n_pos))

        step_c, _ = _scaled_solve(hessian, gradient)
        step = _uncentre_map(center) @ step_c
        iteration = int(state["iteration"]) + 1
        if not np.all(np.isfinite(step)):
            raise RequestError("the fit diverged (perfect separation?)")
        converged = bool(np.all(np.abs(step) <= params["tol"]))
        if not converged and iteration >= params["max_iter"]:
            raise RequestError(
                f"logistic regression did not converge in {params['max_iter']} iterations "
                "(perfect separation?); raise max_iter or remove covariates"
            )
        return Step(done=False, state={**state, "coefficients": (beta_c + step_c).tolist(),
                                       "iteration": iteration, "final": converged})

    @staticmethod
    def _start(request: AnalysisRequest, model: DataModel, aggregates: list[dict],
               n: int, n_pos: int) -> dict:
        """Round 0: coding, centre and zero coefficients."""
        if n == 0:
            raise RequestError("no complete rows to fit")
        if n_pos in (0, n):
            positive = request.parameters.get("positive_class")
            raise RequestError(
                f"{request.y[0]} has only one class in the selected data "
                f"({n_pos} of {n} rows are {positive!r})"
            )
        counts = sum_level_counts([a["level_counts"] for a in aggregates])
        columns = select_design_columns(request.x, model, counts)
        if n <= len(columns):
            raise RequestError(
                f"logistic regression with {len(columns)} coefficients needs more rows than that, got {n}"
            )
        means = merge_moment_dicts(a["moments"] for a in aggregates).mean
        candidates = design_columns(request.x, model, intercept=False)
        center = [float(means[candidates.index(c)]) for c in columns[1:]]
        return {"columns": columns, "center": center, "coefficients": [0.0] * len(columns),
                "iteration": 0, "final": False}

    @staticmethod
    def _result(request: AnalysisRequest, columns: list[str], beta: np.ndarray,
                cov: np.ndarray, loglik: float, n: int, n_pos: int) -> dict:
        from scipy import stats

        stderr = np.sqrt(np.diagonal(cov))
        z = beta / stderr
        q = stats.norm.ppf(1.0 - (1.0 - CONFIDENCE) / 2.0)
        share = n_pos / n
        ll0 = n_pos * math.log(share) + (n - n_pos) * math.log1p(-share)
        k = len(beta)
        df_model = k - 1  # columns[0] is the intercept
        return json_ready({
            "dependent_var": request.y[0],
            "indep_vars": columns,
            "n_obs": n,
            "coefficients": beta,
            "stderr": stderr,
            "lower_ci": beta - q * stderr,
            "upper_ci": beta + q * stderr,
            "z_scores": z,
            "pvalues": 2.0 * stats.norm.sf(np.abs(z)),
            "df_model": df_model,
            "df_resid": n - k,
            "r_squared_cs": -math.expm1(2.0 * (ll0 - loglik) / n),
            "r_squared_mcf": 1.0 - loglik / ll0,
            "ll0": ll0,
            "ll": loglik,
            "aic": -2.0 * loglik + 2.0 * k,
            "bic": -2.0 * loglik + math.log(n) * k,
        })

    # -- privacy capabilities (mipflow.algorithms.contract) ------------------------------------

    secure_aggregation = "automatic"

    def parameter_count(self, request: AnalysisRequest, model: DataModel) -> int | None:
        """The model's parameters, checked against ``nfilter_glm``: one per design column."""
        return len(design_columns(request.x, model))

    def row_weights(self, round: int, data: pd.DataFrame, request: AnalysisRequest, model: DataModel,
                    state: dict | None) -> list[np.ndarray] | None:
        """A Newton round's weights on the rows (ADR 0054): the Hessian's ``p (1 - p)`` and the
        gradient's ``y - p`` at the state's coefficients (round 0: none, its sums are unweighted)."""
        if state is None:
            return None
        positive = self.params(request, model)["positive_class"]
        if hasattr(data, "reader"):  # rows left on disk: the vectors' totals, summed block by block
            return list(_streamed_newton(data, request, model, state, positive)[3])
        return newton_weights(_centred_design(data, request, model, state), _response(data, request, model, positive),
                              np.asarray(state["coefficients"], dtype=float))

    #: What the central site says when nodes refuse a round under ``effective_rows`` (ADR 0054).
    concentrated_fit = ("the classes appear perfectly or almost perfectly separated by the covariates (perfect separation; "
                        "statsmodels raises PerfectSeparationError), so the fit would rest on the few patients "
                        "nearest the boundary; remove or merge the separating covariates, or select "
                        "rows where both classes overlap")


def newton_weights(design: np.ndarray, y: np.ndarray, beta: np.ndarray) -> list[np.ndarray]:
    """The weights :func:`newton_sums` puts on the rows at ``beta``: ``p (1 - p)`` (information) and
    ``|y - p|`` (score), each computed without cancellation (``1 - p = expit(-eta)``)."""
    from scipy import special

    eta = design @ beta
    p, q = special.expit(eta), special.expit(-eta)
    return [p * q, np.where(y == 1.0, q, p)]


#: Rows per block of :func:`newton_sums`: the block's temporaries (a few arrays of
#: ``BLOCK_ROWS`` x p doubles) stay in the CPU cache instead of streaming through memory.
BLOCK_ROWS = 8192


def newton_sums(design: np.ndarray, y: np.ndarray, beta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Log-likelihood, score and information of the logistic model at ``beta``.

    Parameters
    ----------
    design : numpy.ndarray, shape (n, p)
    y : numpy.ndarray, shape (n,)
        1.0 for the positive class, else 0.0.
    beta : numpy.ndarray, shape (p,)

    Returns
    -------
    loglik : float
        ``sum(y * eta - log(1 + exp(eta)))`` with ``eta = design @ beta``.
    gradient : numpy.ndarray, shape (p,)
        ``design' (y - mu)`` with ``mu = expit(eta)``.
    hessian : numpy.ndarray, shape (p, p)
        ``design' W design`` with ``W = diag(mu (1 - mu))``, formed as ``A' A`` with
        ``A = sqrt(W) design`` (a symmetric rank-k update).

    Sums run over blocks of :data:`BLOCK_ROWS` rows (:func:`newton_sums_of`); only the order of the
    additions differs from the one-pass formulas (rounding at the level of machine precision).
    """
    blocks = ((design[start:start + BLOCK_ROWS], y[start:start + BLOCK_ROWS])
              for start in range(0, len(y), BLOCK_ROWS))
    return newton_sums_of(blocks, beta, design.shape[1])


def newton_sums_of(blocks: Iterable[tuple[np.ndarray, np.ndarray]], beta: np.ndarray, p: int,
                   each: Callable[[np.ndarray, np.ndarray], None] | None = None
                   ) -> tuple[float, np.ndarray, np.ndarray]:
    """:func:`newton_sums` of the design's rows given as consecutive ``(design rows, y)`` blocks of
    :data:`BLOCK_ROWS` rows (the last one shorter): the same operations on the same blocks, so the
    same values, whether the blocks are slices of one matrix or built one at a time (rows left on
    disk).  ``each(eta, y)`` is called with every block's linear predictor."""
    from scipy import special

    loglik = 0.0
    gradient = np.zeros(p)
    hessian = np.zeros((p, p))
    for block, outcome in blocks:
        eta = block @ beta
        mu = special.expit(eta)
        loglik += float(np.dot(outcome, eta) - np.sum(np.logaddexp(0.0, eta)))
        gradient += block.T @ (outcome - mu)
        scaled = block * np.sqrt(mu * (1.0 - mu))[:, None]
        hessian += scaled.T @ scaled
        if each is not None:
            each(eta, outcome)
    return loglik, gradient, hessian


# --------------------------------------------------------------------------- rows left on disk


def _positive_levels(rows: Any, request: AnalysisRequest, positive: object) -> tuple[str, np.ndarray]:
    """The response as a lookup of the stored levels of ``y``: ``(code, stored level -> positive)``,
    compared as :func:`_response` compares the rows' codes."""
    code = request.y[0]
    return code, np.array([level == positive for level in rows.levels_of(code)], dtype=bool)


def _streamed_step(rows: Any, request: AnalysisRequest, model: DataModel, state: dict | None,
                   positive: object) -> dict:
    """:meth:`LogisticRegression.local_step` of rows left on disk
    (:class:`mipflow.node.query.snapshot_rows.SnapshotRows`), the same release bit for bit."""
    response = _positive_levels(rows, request, positive)
    counts = streamed_counts(rows, request.x, model, response)
    n, n_positive = len(rows), counts["positives"]
    out: dict = {"n": n, "n_positive": n_positive, "group_n": [n_positive, n - n_positive],
                 "cell_n": counts["joint"] + counts["class_cells"]}
    if state is None:
        out["level_counts"] = counts["level_counts"]
        out["group_n"] += [c for code in request.x for c in out["level_counts"].get(code, [])]
        names = design_columns(request.x, model, intercept=False)
        out["moments"] = streamed_column_moments(DesignSource(rows, request.x, model), names).to_dict()
        return out
    loglik, gradient, hessian, _ = _streamed_newton(rows, request, model, state, positive)
    out["loglik"] = loglik
    out["gradient"] = gradient.tolist()
    out["hessian"] = hessian.tolist()
    return out


#: The last Newton round summed from rows left on disk: :meth:`LogisticRegression.row_weights` of the
#: same rows and state (the node's ``effective_rows`` control, after the local step) reuses its pass.
_STREAMED_MEMO: dict[str, object] = {}


def _streamed_newton(rows: Any, request: AnalysisRequest, model: DataModel, state: dict, positive: object
                     ) -> tuple[float, np.ndarray, np.ndarray, tuple[WeightTotals, WeightTotals]]:
    """:func:`newton_sums` of the centred design (:func:`_centred_design`) of rows left on disk, built
    a block of :data:`BLOCK_ROWS` rows at a time (the same values, bit for bit), and the totals of
    :func:`newton_weights`' two vectors, in one pass over the rows."""
    from scipy import special

    columns = [str(c) for c in state["columns"]]
    center = [float(c) for c in state["center"]]
    beta = np.asarray(state["coefficients"], dtype=float)
    key = (id(rows), len(rows), tuple(request.x), request.y[0], repr(positive), tuple(columns), tuple(center),
           beta.tobytes())
    if _STREAMED_MEMO.get("key") == key and _STREAMED_MEMO.get("rows") is rows:
        return _STREAMED_MEMO["sums"]  # type: ignore[return-value]
    if len(center) != len(columns) - 1:
        raise ValueError("center must have one value per design column after the first")
    response = "\0response"  # not a design column's name
    source = DesignSource(rows, request.x, model, {response: _positive_levels(rows, request, positive)})
    next_rows = source.reader([*columns, response])
    shifts: list[float | None] = [None, *center]
    n, p = len(rows), len(columns)
    block = np.empty((min(n, BLOCK_ROWS), p), order="F")

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, n, BLOCK_ROWS):
            m = min(BLOCK_ROWS, n - start)
            values = next_rows(m)
            out = block[:m] if m == len(block) else np.empty((m, p), order="F")
            for j, shift in enumerate(shifts):  # as design_matrix(..., center=...) writes its columns
                if shift is None:
                    out[:, j] = values[j]
                else:
                    np.subtract(values[j], shift, out=out[:, j])
            yield out, np.array(values[-1])

    totals = [WeightTotals(), WeightTotals()]

    def weigh(eta: np.ndarray, outcome: np.ndarray) -> None:  # newton_weights, a block at a time
        prob, other = special.expit(eta), special.expit(-eta)
        totals[0] = totals[0].add(prob * other)
        totals[1] = totals[1].add(np.where(outcome == 1.0, other, prob))

    loglik, gradient, hessian = newton_sums_of(blocks(), beta, p, weigh)
    sums = (loglik, gradient, hessian, (totals[0], totals[1]))
    _STREAMED_MEMO.update(key=key, rows=rows, sums=sums)
    return sums


#: The last centred design matrix built, for the same rows: Newton rounds reuse it
#: instead of rebuilding it from the frame every round (the node keeps the frame).
_DESIGN_MEMO: dict[str, object] = {}
#: The last response vector built, for the same rows (as the design).
_RESPONSE_MEMO: dict[str, object] = {}


def _class_cells(data: pd.DataFrame, request: AnalysisRequest, model: DataModel, y: np.ndarray) -> list[int]:
    """Positive and negative rows in each level of each categorical covariate (ADR 0031)."""
    out: list[int] = []
    for code in dict.fromkeys(request.x):
        var = model.variable(code)
        if var.is_categorical:
            codes = category_codes(data[code], var).to_numpy()
            for level in sorted_levels(var):
                in_level = codes == level
                positive = int(np.count_nonzero(in_level & (y == 1.0)))
                out += [positive, int(np.count_nonzero(in_level)) - positive]
    return out


def _response(data: pd.DataFrame, request: AnalysisRequest, model: DataModel, positive: object) -> np.ndarray:
    """``y`` as 1.0 (``positive``) / 0.0, built once per frame the node keeps."""
    key = (id(data), len(data), request.y[0], positive)
    if _RESPONSE_MEMO.get("key") == key and _RESPONSE_MEMO.get("data") is data:
        return _RESPONSE_MEMO["y"]  # type: ignore[return-value]
    yvar = model.variable(request.y[0])
    y = (category_codes(data[yvar.code], yvar).to_numpy() == positive).astype(float)
    y.setflags(write=False)
    _RESPONSE_MEMO.update(key=key, data=data, y=y)
    return y


def _centred_design(data: pd.DataFrame, request: AnalysisRequest, model: DataModel, state: dict) -> np.ndarray:
    key = (id(data), len(data), tuple(request.x), tuple(state["columns"]), tuple(state["center"]))
    if _DESIGN_MEMO.get("key") == key and _DESIGN_MEMO.get("data") is data:
        return _DESIGN_MEMO["design"]  # type: ignore[return-value]
    design, _ = design_matrix(data, request.x, model, columns=state["columns"], center=state["center"])
    design.setflags(write=False)
    _DESIGN_MEMO.update(key=key, data=data, design=design)
    return design
