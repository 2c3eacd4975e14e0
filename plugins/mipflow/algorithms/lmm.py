"""Linear mixed model (``linear_mixed_model``), fitted by a federated Newton method on the profiled
likelihood: the optimum of statsmodels' ``MixedLM`` on the pooled rows.

The model, per patient ``i`` (``_pid`` within ``dataset``, whose visits all sit at one node, ADR 0034)::

    y_i = X_i beta + Z_i b_i + e_i,   b_i ~ N(0, scale * Psi),   e_i ~ N(0, scale * I)

with ``Z_i`` a column of ones (random intercept) or ``[1, t]`` (random intercept and slope on the
``time`` variable).  As in statsmodels, ``beta`` and ``scale`` are profiled out: ``beta(Psi)`` is the
GLS estimate and ``scale`` the residual quadratic form over ``n`` (ML) or ``n - p`` (REML).  The
profiled log-likelihood, its gradient and Hessian in ``Psi`` are functions of sums over patients of
small matrices in ``M_i = [X_i y_i]`` and ``V_i = I + Z_i Psi Z_i'`` (``dV_j = Z_i E_j Z_i'``, ``E_j``
the symmetric basis of ``Psi``'s lower triangle in statsmodels' order):

- ``sum M'V^-1 M``, ``sum M'V^-1 dV_j V^-1 M``, ``sum M'V^-1 (dV_j V^-1 dV_k + dV_k V^-1 dV_j) V^-1 M``,
- ``sum log|V_i|``, ``sum tr(V^-1 dV_j)``, ``sum tr(V^-1 dV_j V^-1 dV_k)``.

Each node computes them per patient from ``G_i = Z_i'Z_i``, ``H_i = Z_i'M_i`` (Woodbury:
``V^-1 Z = Z (I + Psi G)^-1``) with batched q x q algebra (q = 1 or 2), never a per-patient vector
leaving the node.  The central side then has the exact profiled log-likelihood, gradient and
Hessian, and statsmodels' ``MixedLM.hessian`` for the standard errors, all from the totals.

Rounds: 0) rows, patients, level counts (the pooled treatment coding, as ``linear_regression``);
then one round per evaluation of the sums at a ``Psi`` the central side chose, by Newton's method
on the Cholesky factor of ``Psi`` (statsmodels' ``use_sqrt`` parameterisation), starting from
``Psi = I`` as statsmodels does, with a backtracking (Armijo) line search and the Hessian's
eigenvalues made positive where it is not negative definite.  Once the Newton decrement
``g' (-H)^-1 g`` (twice the predicted gain in log-likelihood) is at most ``tol`` at a point where
the Hessian is negative definite, it takes one more full Newton step and stops there: the result
is computed from that last round's sums (quadratic convergence: that point's error is about the
square of the previous one's).  Every state is a
pure function of the previous state and the summed aggregates (verifiable rounds, ADR 0029).

Privacy: besides the step's row controls, the node counts patients (:meth:`LinearMixedModel.cluster_count`)
against ``min_row_count`` and ``nfilter_glm``; what a node releases is in
``docs/adr/0041-federated-lmm.md``.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from mipflow.algorithms.contract import ReleasedGroups, Step
from mipflow.algorithms.design import (
    dummy_level_groups,
    INTERCEPT,
    covariates_block,
    declared_cell_counts,
    design_columns,
    design_matrix,
    level_counts,
    numeric_values,
    reference_levels,
    select_design_columns,
    sum_level_counts,
)
from mipflow.algorithms.gee import _clusters, _memo
from mipflow.algorithms.spec import NOMINAL, NUMERICAL, InputSpec, ParamSpec, SpecAlgorithm
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd

RANDOM_EFFECTS = ("intercept", "intercept_slope")
METHODS = ("reml", "ml")
CONFIDENCE = 0.95
#: Armijo's sufficient-increase constant of the line search.
ARMIJO = 1e-4
#: The line search gives up below this step (the last accepted point is then evaluated once more).
MIN_STEP = 2.0 ** -40
#: ``boundary`` in the result: the smallest eigenvalue of ``cov_re / scale`` at most this (relative to the
#: largest, or to 1): a variance (or a correlation of -1 or 1) on the edge of the parameter space.
BOUNDARY = 1e-8
#: A trial point no worse than this relative rounding of the log-likelihood passes the line search.
ROUNDING = 1e-13


class LinearMixedModel(SpecAlgorithm):
    name = "linear_mixed_model"
    label = "Linear Mixed Model"
    description = ("Regression of repeated measures on covariates with a random intercept per patient, or a "
                   "random intercept and slope on a time variable (ML or REML): fixed effects with standard "
                   "errors, variance components and the log-likelihood, equal to statsmodels' MixedLM on the "
                   "pooled rows.")
    y_spec = InputSpec(types=("real", "int"), stattypes=(NUMERICAL,), notblank=True, multiple=False,
                       label="Variable (dependent)", description="A numerical variable measured at each visit.")
    x_spec = InputSpec(types=("real", "int", "text"), stattypes=(NUMERICAL, NOMINAL), notblank=True,
                       multiple=True, label="Covariates (fixed effects)",
                       description="Numerical or nominal variables (nominal ones dummy-encoded).")
    parameter_specs = MappingProxyType({
        "random_effects": ParamSpec(types=("text",), default="intercept", notblank=True, enums=RANDOM_EFFECTS,
                                    label="Random effects",
                                    description="Per patient: a random intercept, or a random intercept and a "
                                                "random slope on the time variable (correlated)."),
        "time": ParamSpec(types=("text",), label="Time variable",
                          description="A numerical variable: the random slope's covariate (needed with "
                                      "intercept_slope). Add it to x for its fixed effect too."),
        "method": ParamSpec(types=("text",), default="reml", notblank=True, enums=METHODS, label="Method",
                            description="Restricted (reml, statsmodels' default) or full (ml) maximum "
                                        "likelihood."),
        "maxiter": ParamSpec(types=("int",), default=100, min=1, max=500, label="Maximum iterations",
                             description="The most Newton iterations."),
        "tol": ParamSpec(types=("real",), default=1e-16, min=1e-30, max=1e-2, label="Tolerance",
                         description="Convergence: the Newton decrement g'(-H)^-1 g of the profiled "
                                     "log-likelihood at most this."),
    })

    # -- request ----------------------------------------------------------------------

    def check(self, request: AnalysisRequest, model: DataModel) -> None:
        params = self.params(request, model)
        if request.y[0] in request.x:
            raise RequestError(f"{request.y[0]!r} cannot be both the dependent variable and a covariate")
        time = params.get("time")
        if params["random_effects"] == "intercept_slope" and time is None:
            raise RequestError("a random slope needs the time variable (parameter 'time')")
        if params["random_effects"] == "intercept" and time is not None:
            raise RequestError("the time variable is the random slope's: give it with random_effects "
                               "intercept_slope (or add it to x for a fixed effect)")
        if time is not None:
            if time not in model:
                raise RequestError(f"variable {time!r} is not in data model {model.key}")
            var = model.variable(time)
            if var.is_categorical or var.sql_type not in ("int", "real"):
                raise RequestError(f"the time variable {time!r} must be numerical")
            if time == request.y[0]:
                raise RequestError(f"the time variable {time!r} is the dependent variable")

    def variables(self, request: AnalysisRequest) -> tuple[str, ...]:
        """y, x, then the time variable of a random slope."""
        time = request.parameters.get("time") if request.parameters.get("random_effects") == "intercept_slope" \
            else None
        return tuple(dict.fromkeys(request.y + request.x + ((time,) if time else ())))

    #: The node keeps its row identity (``dataset``, ``_pid``, ``_visit``) in the local step's rows:
    #: the patients (:func:`mipflow.algorithms.local.prepare_local_data`).
    row_identity = True

    # -- privacy capabilities -----------------------------------------------------------

    #: Every round's aggregates are counts and sums over the node's patients of a fixed shape (set by
    #: the request and the data model; zeros at a node without patients): masked from 3 nodes
    #: (ADR 0014, 0041), the global step reads only their totals.
    secure_aggregation = "automatic"

    def parameter_count(self, request: AnalysisRequest, model: DataModel) -> int | None:
        """The fixed effects (design columns), the random effects' covariance parameters and the scale."""
        q = 2 if request.parameters.get("random_effects") == "intercept_slope" else 1
        return len(design_columns(request.x, model)) + q * (q + 1) // 2 + 1

    def released_groups(self, request: AnalysisRequest, model: DataModel) -> tuple[ReleasedGroups, ...]:
        # each nominal covariate's levels are released groups (ADR 0051, issue 14 item 5): level counts in round 0, and every later round's ``sum M'V^-1 M`` (and its derivatives) holds
        # per-level sums of y and the numerical covariates
        return dummy_level_groups(request.x, model)

    def cluster_count(self, data: pd.DataFrame) -> int | None:
        """Patients among the rows (``min_row_count`` and ``nfilter_glm`` count them too)."""
        return _clusters(data, algorithm=self.name, ordered=False).n_clusters

    #: What a node's :meth:`release_notes` flags mean, in the result (:meth:`result_notes`).
    NOTES = MappingProxyType({
        "single_visit": "contributes to the fixed effects and the random intercept only: its patients have one "
                        "visit each (none has two visits at different times), which says nothing of the random "
                        "slope's variance",
    })

    def release_notes(self, data: pd.DataFrame, request: AnalysisRequest, model: DataModel) -> dict[str, bool] | None:
        """Round 0, at a node whose rows passed its controls (at least ``min_row_count`` patients):
        ``{"single_visit": True}`` when a random slope is fitted and no patient of the selection has two
        visits at different times (so the node's rows carry no information on the slope's variance),
        else None.  One bit about all the node's selected patients, never a count (ADR 0041)."""
        params = self.params(request, model)
        if params["random_effects"] != "intercept_slope" or not len(data):
            return None
        clusters = _clusters(data, algorithm=self.name, ordered=False)
        times = numeric_values(data[params["time"]])[clusters.order]
        flat = np.maximum.reduceat(times, clusters.starts) == np.minimum.reduceat(times, clusters.starts)
        return {"single_visit": True} if bool(np.all(flat)) else None

    def result_notes(self, by_node: dict[str, dict[str, bool]]) -> list[str]:
        """The result's ``notes``: one sentence per node and flag it released (:meth:`release_notes`)."""
        return [f"Node {node} {self.NOTES[flag]}." for node, flags in sorted(by_node.items())
                for flag, on in sorted((flags or {}).items()) if on and flag in self.NOTES]

    # -- local --------------------------------------------------------------------------

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        params = self.params(request, model)
        clusters = _clusters(data, algorithm=self.name, ordered=False)
        out: dict[str, Any] = {"n": int(len(data)), "n_clusters": clusters.n_clusters}
        if state is None:
            counts = level_counts(data, request.x, model)
            out["level_counts"] = counts
            out["group_n"] = [c for code in request.x for c in counts.get(code, [])]
            # the joint levels of two nominal covariates: later rounds' ``M'V^-1 M`` holds their counts;
            # checked, never sent (ADR 0031, 0051)
            out["cell_n"] = declared_cell_counts(data, self.released_groups(request, model), model)
            return out
        if state.get("phase") != "fit":
            raise RequestError(f"unknown phase {state.get('phase')!r}")
        gram, cross, total = _patient_sums(data, request, model, state["columns"], params.get("time")
                                           if params["random_effects"] == "intercept_slope" else None, clusters)
        q = gram.shape[1]
        psi = _psi(np.asarray(state["theta"], dtype=float), q)
        out.update(_round_sums(psi, gram, cross, total))
        return out

    # -- global -------------------------------------------------------------------------

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        params = self.params(request, model)
        n = sum(int(a["n"]) for a in aggregates)
        m = sum(int(a["n_clusters"]) for a in aggregates)
        q = 2 if params["random_effects"] == "intercept_slope" else 1
        if state is None:
            if n == 0:
                raise RequestError("no complete rows to fit")
            counts = sum_level_counts([a["level_counts"] for a in aggregates])
            columns = select_design_columns(request.x, model, counts)
            if n <= len(columns) + q * (q + 1) // 2:
                raise RequestError(f"a linear mixed model with {len(columns)} fixed effects needs more rows "
                                   "than that")
            start = _theta(np.eye(q))  # statsmodels' start: cov_re / scale = I
            return Step(done=False, state={"phase": "fit", "columns": columns, "theta": start.tolist(),
                                           "base": None, "iteration": 0, "finish": False,
                                           "references": reference_levels(request.x, model, counts)})
        if state.get("phase") != "fit":
            raise RequestError(f"unknown phase {state.get('phase')!r}")

        def total(key: str) -> np.ndarray:
            return np.sum([np.asarray(a[key], dtype=float) for a in aggregates], axis=0)

        p = len(state["columns"])
        theta = np.asarray(state["theta"], dtype=float)
        fit = _evaluate(total, _psi(theta, q), n, p, params["method"] == "reml")
        base = state["base"]
        if base is not None and not state["finish"]:  # a trial point of the line search
            llf0, slope, alpha = float(base["llf"]), float(base["slope"]), float(base["alpha"])
            good = fit is not None and \
                fit["llf"] >= llf0 + ARMIJO * alpha * slope - ROUNDING * (1.0 + abs(llf0))
            if not good:
                alpha /= 2.0
                theta0 = np.asarray(base["theta"], dtype=float)
                if alpha < MIN_STEP:  # no increase found: evaluate the last accepted point again, and stop
                    return Step(done=False, state={**state, "theta": theta0.tolist(), "finish": True})
                trial = theta0 + alpha * np.asarray(base["direction"], dtype=float)
                return Step(done=False, state={**state, "theta": trial.tolist(),
                                               "base": {**base, "alpha": alpha}})
        if fit is None:
            raise RequestError("the fit diverged (the covariates may be collinear in the selected data)")
        grad, hess = _cholesky_derivatives(theta, q, fit["grad_psi"], fit["hess_psi"])
        direction, decrement, definite = _newton(grad, hess)
        iteration = int(state["iteration"])
        converged = definite and decrement <= params["tol"]
        if state["finish"] or iteration >= params["maxiter"]:
            return Step(done=True, result=self._result(request, model, params, state, fit, n, m, q, iteration,
                                                       bool(converged), decrement))
        trial = theta + direction
        if converged:  # one more (full) Newton step, the last: its error is about the square of this one's
            return Step(done=False, state={**state, "theta": trial.tolist(), "iteration": iteration + 1,
                                           "finish": True})
        return Step(done=False, state={**state, "theta": trial.tolist(), "iteration": iteration + 1,
                                       "base": {"theta": theta.tolist(), "llf": fit["llf"],
                                                "slope": float(grad @ direction),
                                                "direction": direction.tolist(), "alpha": 1.0}})

    @staticmethod
    def _result(request: AnalysisRequest, model: DataModel, params: dict, state: dict, fit: dict, n: int, m: int,
                q: int,
                iterations: int, converged: bool, decrement: float) -> dict:
        from scipy import stats

        columns = state["columns"]
        p = len(columns)
        beta, scale = fit["beta"], fit["scale"]
        try:
            cov = np.linalg.inv(-fit["hess_full"])  # statsmodels' MixedLM.fit: inv(-hessian)
        except np.linalg.LinAlgError:
            raise RequestError("the covariates are collinear in the selected data") from None
        diagonal = np.diagonal(cov)
        se = np.sqrt(diagonal[:p]) if np.all(diagonal[:p] > 0) else np.full(p, np.nan)
        se_re = np.sqrt(scale * diagonal[p:]) if np.all(diagonal[p:] > 0) else np.full(len(diagonal) - p, np.nan)
        z = beta / se
        quantile = stats.norm.ppf(1.0 - (1.0 - CONFIDENCE) / 2.0)
        names = [INTERCEPT] + ([params["time"]] if q == 2 else [])
        cov_names = [f"{names[a]} Var" if a == b else f"{names[a]} x {names[b]} Cov" for a, b in _basis(q)]
        reml = params["method"] == "reml"
        k = p + q * (q + 1) // 2 + 1  # statsmodels' df of the information criteria
        llf = fit["llf"]
        eigenvalues = np.linalg.eigvalsh(fit["psi"])
        boundary = bool(eigenvalues[0] <= BOUNDARY * max(float(eigenvalues[-1]), 1.0))
        return json_ready({
            "dependent_var": request.y[0],
            "indep_vars": columns,
            "covariates": covariates_block(request.x, model, columns, state.get("references") or {}),
            "n_obs": n,
            "n_groups": m,
            "method": "REML" if reml else "ML",
            "random_effects": names,
            "time": params.get("time") if q == 2 else None,
            "coefficients": beta,
            "stderr": se,
            "z_scores": z,
            "pvalues": 2.0 * stats.norm.sf(np.abs(z)),
            "lower_ci": beta - quantile * se,
            "upper_ci": beta + quantile * se,
            "cov_re": scale * fit["psi"],
            "cov_re_unscaled": fit["psi"],
            "cov_re_names": cov_names,
            "cov_re_params": scale * fit["psi"][tuple(np.array(_basis(q)).T)],
            "cov_re_stderr": se_re,
            "scale": scale,
            "llf": llf,
            "aic": None if reml else -2.0 * (llf - k),
            "bic": None if reml else -2.0 * llf + math.log(n) * k,
            "cov_params": cov,
            "iterations": iterations,
            "newton_decrement": decrement,
            "converged": converged,
            "boundary": boundary,
            "note": "the optimum of statsmodels' MixedLM (0.15) profiled likelihood, by Newton's method on "
                    "the Cholesky factor of cov_re / scale; standard errors from statsmodels' Hessian "
                    "(cov_params = inv(-hessian)); z tests",
        })


# --------------------------------------------------------------------------- parameters of Psi


def _basis(q: int) -> list[tuple[int, int]]:
    """``Psi``'s lower triangle in statsmodels' order: (0, 0), (1, 0), (1, 1)."""
    return [(a, b) for a in range(q) for b in range(a + 1)]


def _basis_matrices(q: int) -> np.ndarray:
    """``E_j``, shape (m, q, q): ``dPsi / dPsi_j`` (both off-diagonal entries move together)."""
    basis = _basis(q)
    out = np.zeros((len(basis), q, q))
    for j, (a, b) in enumerate(basis):
        out[j, a, b] = out[j, b, a] = 1.0
    return out


def _psi(theta: np.ndarray, q: int) -> np.ndarray:
    """``Psi = L L'`` from the lower-triangular ``L``'s entries ``theta`` (statsmodels' order)."""
    if theta.shape != (q * (q + 1) // 2,) or not np.all(np.isfinite(theta)):
        raise RequestError("the state's covariance parameters do not fit the model")
    chol = np.zeros((q, q))
    chol[tuple(np.array(_basis(q)).T)] = theta
    return chol @ chol.T


def _theta(psi: np.ndarray) -> np.ndarray:
    return np.linalg.cholesky(psi)[tuple(np.array(_basis(psi.shape[0])).T)]


def _cholesky_derivatives(theta: np.ndarray, q: int, grad_psi: np.ndarray, hess_psi: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and Hessian in ``theta`` (the Cholesky factor) from those in ``Psi``'s lower triangle."""
    basis = _basis(q)
    chol = np.zeros((q, q))
    chol[tuple(np.array(basis).T)] = theta
    size = len(basis)
    jac = np.zeros((size, size))  # d Psi_j / d theta_k
    second = np.zeros((size, size, size))  # d2 Psi_j / d theta_k d theta_l
    for k, (c, d) in enumerate(basis):
        unit = np.zeros((q, q))
        unit[c, d] = 1.0
        dpsi = unit @ chol.T + chol @ unit.T
        jac[:, k] = [dpsi[a, b] for a, b in basis]
        for l, (e, f) in enumerate(basis):  # d/dL_ef (E_cd L' + L E_dc) = [d == f] (e_c e_e' + e_e e_c')
            if d == f:
                mat = np.zeros((q, q))
                mat[c, e] += 1.0
                mat[e, c] += 1.0
                second[:, k, l] = [mat[a, b] for a, b in basis]
    grad = jac.T @ grad_psi
    hess = jac.T @ hess_psi @ jac + np.einsum("j,jkl->kl", grad_psi, second)
    return grad, hess


def _newton(grad: np.ndarray, hess: np.ndarray) -> tuple[np.ndarray, float, bool]:
    """The ascent direction ``(-H)^-1 g`` (``-H``'s eigenvalues made positive where they are not),
    the Newton decrement ``g' d`` and whether ``-H`` is positive definite."""
    values, vectors = np.linalg.eigh(-(hess + hess.T) / 2.0)
    largest = float(np.max(np.abs(values))) if values.size else 0.0
    definite = bool(values.size) and float(np.min(values)) > 1e-12 * largest
    if largest == 0.0:
        return np.zeros_like(grad), 0.0, False
    floor = max(1e-8 * largest, 1e-300)
    positive = np.maximum(np.abs(values), floor)
    direction = vectors @ ((vectors.T @ grad) / positive)
    return direction, float(grad @ direction), definite


# --------------------------------------------------------------------------- central: the likelihood


def _evaluate(total: Any, psi: np.ndarray, n: int, p: int, reml: bool) -> dict | None:
    """Profiled log-likelihood (statsmodels' ``MixedLM.loglike``), its gradient and Hessian in ``Psi``'s
    lower triangle, the GLS ``beta``, the scale and statsmodels' ``MixedLM.hessian`` at them, from the
    summed aggregates; None where they are not finite (a diverging trial point)."""
    mvm = total("mvm")
    w1 = total("w1")  # (k, p+1, p+1): sum M'V^-1 dV_j V^-1 M
    w2 = total("w2")  # (k, k, p+1, p+1): sum M'V^-1 (dV_j V^-1 dV_k + dV_k V^-1 dV_j) V^-1 M
    trace1, trace2, logdet = total("trace1"), total("trace2"), float(total("logdet"))
    xvx = mvm[:p, :p]
    try:
        beta = np.linalg.solve(xvx, mvm[:p, p])
    except np.linalg.LinAlgError:
        raise RequestError("the covariates are collinear in the selected data (singular matrix)") from None
    u = np.r_[-beta, 1.0]
    qf = float(u @ mvm @ u)
    if not (np.all(np.isfinite(beta)) and math.isfinite(qf) and qf > 0.0):
        return None
    fac = n - p if reml else n
    b = np.einsum("jab,a,b->j", w1, u, u)
    d = np.einsum("jkab,a,b->jk", w2, u, u)
    xvr = w1[:, :p, :] @ u  # (k, p): X'V^-1 dV_j V^-1 r
    grad = -0.5 * trace1 + 0.5 * fac * b / qf
    hess_re = 0.5 * trace2 - 0.5 * fac * (d / qf - np.outer(b, b) / qf ** 2)
    hess_fere = -fac * xvr / qf
    hess_fe = -fac * xvx / qf
    llf = -0.5 * logdet
    if reml:
        xvx_inv = np.linalg.inv(xvx)
        ql = xvx_inv @ w1[:, :p, :p]
        grad = grad + 0.5 * np.trace(ql, axis1=1, axis2=2)
        hess_re = hess_re + 0.5 * (np.einsum("jab,kba->jk", ql, ql)
                                   - np.einsum("ab,jkba->jk", xvx_inv, w2[:, :, :p, :p]))
        sign, xvx_logdet = np.linalg.slogdet(xvx)
        llf -= fac * math.log(qf) / 2.0 + xvx_logdet / 2.0 + fac * math.log(2.0 * math.pi) / 2.0 \
            - fac * math.log(fac) / 2.0 + fac / 2.0
    else:
        llf -= n * math.log(qf) / 2.0 + n * math.log(2.0 * math.pi) / 2.0 - n * math.log(n) / 2.0 + n / 2.0
    size = p + len(grad)
    hess_full = np.zeros((size, size))
    hess_full[:p, :p] = hess_fe
    hess_full[:p, p:] = hess_fere.T
    hess_full[p:, :p] = hess_fere
    hess_full[p:, p:] = hess_re
    # profiled over beta (at the GLS beta, where d/dbeta = 0): the Schur complement
    hess_psi = hess_re - hess_fere @ np.linalg.solve(hess_fe, hess_fere.T)
    if not (math.isfinite(llf) and np.all(np.isfinite(grad)) and np.all(np.isfinite(hess_psi))):
        return None
    return {"llf": float(llf), "grad_psi": grad, "hess_psi": hess_psi, "hess_full": hess_full,
            "beta": beta, "scale": qf / fac, "psi": psi}


# --------------------------------------------------------------------------- node-side sums


def _patient_sums(data: pd.DataFrame, request: AnalysisRequest, model: DataModel, columns: list[str],
                  time: str | None, clusters: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per patient ``G_i = Z_i'Z_i`` (m, q, q) and ``H_i = Z_i'M_i`` (m, q, p+1), and ``sum M_i'M_i``
    ((p+1, p+1)), with ``M = [X y]``: all the rows' contribution to every round (kept at the node)."""
    def make() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        design, _ = design_matrix(data, request.x, model, columns=columns)
        y = numeric_values(data[request.y[0]])
        stacked = np.column_stack([design, y])[clusters.order]
        ones = np.ones(len(stacked))
        z = ones[:, None] if time is None else np.column_stack([ones, numeric_values(data[time])[clusters.order]])
        gram = clusters.sums(z[:, :, None] * z[:, None, :])
        cross = clusters.sums(z[:, :, None] * stacked[:, None, :])
        total = stacked.T @ stacked
        for array in (gram, cross, total):
            array.setflags(write=False)
        return gram, cross, total

    key = (id(data), len(data), tuple(request.x), request.y[0], tuple(columns), time, id(clusters))
    return _memo("lmm_sums", key, data, make)


def _round_sums(psi: np.ndarray, gram: np.ndarray, cross: np.ndarray, total: np.ndarray) -> dict:
    """A node's aggregates at ``Psi``: sums over its patients (see the module's docstring).

    With ``P_i = (I + Psi G_i)^-1``: ``V^-1 Z = Z P``, ``Z'V^-1 M = P'H = N``, ``Z'V^-1 Z = G P = S``,
    ``M'V^-1 M = M'M - H' P Psi H`` and ``log|V| = log|I + Psi G|``.
    """
    q = psi.shape[0]
    basis = _basis_matrices(q)
    shifted = np.eye(q) + psi @ gram  # (m, q, q)
    if not len(gram):
        k, width = len(basis), cross.shape[2]
        return {"mvm": np.zeros((width, width)).tolist(), "w1": np.zeros((k, width, width)).tolist(),
                "w2": np.zeros((k, k, width, width)).tolist(), "trace1": [0.0] * k,
                "trace2": np.zeros((k, k)).tolist(), "logdet": 0.0}
    solved = np.linalg.inv(shifted)  # P_i
    sign, logdets = np.linalg.slogdet(shifted)
    if np.any(sign <= 0):
        raise RequestError("the random effects' covariance is not positive semi-definite")
    def summed(left: np.ndarray, right: np.ndarray) -> np.ndarray:  # sum_i left_i' right_i
        return np.tensordot(left, right, axes=([0, 1], [0, 1]))

    mvm = total - summed(cross, (solved @ psi) @ cross)
    reduced = np.swapaxes(solved, 1, 2) @ cross  # N_i (m, q, p+1)
    within = gram @ solved  # S_i (m, q, q), symmetric
    k = len(basis)
    spread = [basis[j] @ reduced for j in range(k)]  # E_j N_i
    w1 = np.stack([summed(reduced, spread[j]) for j in range(k)])
    w2 = np.stack([np.stack([summed(spread[j], within @ spread[l]) for l in range(k)]) for j in range(k)])
    w2 = w2 + np.swapaxes(w2, 2, 3)
    trace1 = np.array([float(np.sum(basis[j] * within.sum(axis=0).T)) for j in range(k)])
    scaled = [basis[j] @ within for j in range(k)]  # E_j S_i
    trace2 = np.array([[float(np.sum(scaled[j] * np.swapaxes(scaled[l], 1, 2))) for l in range(k)]
                       for j in range(k)])
    return {"mvm": mvm.tolist(), "w1": w1.tolist(), "w2": w2.tolist(), "trace1": trace1.tolist(),
            "trace2": trace2.tolist(), "logdet": float(np.sum(logdets))}
