"""Cox proportional hazards regression, federated Newton on the exact partial likelihood.

``y = [time, event]`` as for :mod:`mipflow.algorithms.kaplan_meier`; ``x``
numerical and nominal covariates (treatment-coded against the first level
present in the pooled data, no intercept).

Round 0: every node sends its event and censoring counts on the request's
time grid (merged by its disclosure controls until no count is below
``nfilter_tab``), its rows per level of each nominal covariate and the means
of the candidate design columns.  The central side intersects the nodes' bin
ends (the common bins ``B``), picks the coding, centres the covariates on
their pooled means (the slopes and the log partial likelihood do not change)
and starts at zero.

Later rounds: the central side sends ``B``, the coding, the centre and the
coefficients.  For each bin of ``B`` holding events, a node returns the sums
over its rows still at risk there (rounded time at or after the bin end) of
``w = exp(x'b)``, ``w x`` and ``w x x'`` (S0, S1, S2), the sum of ``x`` over its
events, and its event and censoring counts per bin of ``B`` (which the node's
controls refuse if any is below ``nfilter_tab``: a grid finer than the node's
own safe bins is refused).  With Breslow's handling of ties the pooled log
partial likelihood, score and information are

    l = sum_events x'b - sum_j d_j log S0_j
    U = sum_events x - sum_j d_j S1_j / S0_j
    I = sum_j d_j (S2_j / S0_j - S1_j S1_j' / S0_j^2)

and the central side makes a Newton step (halved while the likelihood falls).
It stops as statsmodels' Newton (no coefficient moved by more than ``tol``),
and one more round gives the information at the final coefficients.

The estimate equals ``statsmodels.duration.hazard_regression.PHReg(ties=
"breslow")`` on the pooled rows with times rounded up to the bin ends
(``binning``); when every distinct time has its own bin that is the unbinned
fit.  Intervals are Wald intervals; hazard ratios are ``exp(coefficients)``.
"""
from __future__ import annotations

from types import MappingProxyType

import numpy as np
import pandas as pd
from scipy import stats

from mipflow.algorithms.base import (
    NOMINAL, NUMERICAL, AnalysisRequest, InputSpec, ParamSpec, SpecAlgorithm, Step, design_columns,
    design_matrix, json_ready, level_counts, select_design_columns, sum_level_counts,
)
from mipflow.algorithms.moments import compute_moments, merge_moment_dicts
from mipflow.algorithms.survival import (
    SURVIVAL_PARAMETERS, SURVIVAL_Y, binning_summary, check_outcome, common_ends, grid_counts, grid_for,
    outcome, rebin, safe_bins,
)
from mipflow.datamodel import DataModel
from mipflow.exceptions import RequestError

CONFIDENCE = 0.95
MAX_CONDITION = 1e14
MAX_HALVINGS = 30


class CoxRegression(SpecAlgorithm):
    name = "cox_regression"
    label = "Cox proportional hazards regression"
    y_spec = SURVIVAL_Y
    x_spec = InputSpec(types=("real", "int", "text"), stattypes=(NUMERICAL, NOMINAL), notblank=True,
                       multiple=True)
    parameter_specs = MappingProxyType({
        **SURVIVAL_PARAMETERS,
        "max_iter": ParamSpec(types=("int",), default=50, min=1, max=1000),
        "tol": ParamSpec(types=("real",), default=1e-8, min=1e-14, max=1e-2),
    })

    def check(self, request: AnalysisRequest, model: DataModel) -> None:
        params = self.params(request, model)
        check_outcome(self.name, request, model, params["event_level"])
        grid_for(request, model, params)

    # -- local ------------------------------------------------------------------

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        params = self.params(request, model)
        grid = grid_for(request, model, params)
        index, event = outcome(data, request, model, grid, params["event_level"])
        if state is None:
            events, censored = grid_counts(index, event, len(grid))
            design, _ = design_matrix(data, request.x, model, intercept=False)
            counts = level_counts(data, request.x, model)
            return {"n": len(data), "events": events.tolist(), "censored": censored.tolist(),
                    "group_counts": [int(v) for v in (*events, *censored)],
                    "level_counts": counts, "group_n": [c for code in request.x for c in counts.get(code, [])],
                    "moments": compute_moments(design).to_dict()}
        ends = np.asarray(state["ends"], dtype=np.int64)
        event_bins = np.asarray(state["event_bins"], dtype=np.int64)
        bins = np.searchsorted(ends, index, side="left")  # bin of B holding each row's time
        design, _ = design_matrix(data, request.x, model, columns=state["columns"], intercept=False)
        design -= np.asarray(state["center"], dtype=float)
        p = design.shape[1]
        weight = np.exp(design @ np.asarray(state["coefficients"], dtype=float))
        n_bins = len(ends)
        s0 = np.bincount(bins, weights=weight, minlength=n_bins)
        weighted = design * weight[:, None]
        s1 = np.column_stack([np.bincount(bins, weights=weighted[:, a], minlength=n_bins) for a in range(p)])
        s2 = np.empty((n_bins, p, p))
        for a in range(p):
            for b in range(a, p):
                s2[:, a, b] = s2[:, b, a] = np.bincount(bins, weights=weighted[:, a] * design[:, b],
                                                        minlength=n_bins)
        # rows at risk at a bin: their time is in this bin or a later one
        s0, s1, s2 = (np.cumsum(s[::-1], axis=0)[::-1][event_bins] for s in (s0, s1, s2))
        leaving_events = np.bincount(bins[event], minlength=n_bins)
        leaving_censored = np.bincount(bins[~event], minlength=n_bins)
        return {"n": len(data), "n_events": int(event.sum()),
                "group_counts": [int(v) for v in (*leaving_events, *leaving_censored)],
                "events": leaving_events[event_bins].tolist(),
                "event_x_sum": design[event].sum(axis=0).tolist(),
                "s0": s0.tolist(), "s1": s1.tolist(), "s2": s2.tolist()}

    def coarsen_for_release(self, round: int, aggregates: dict, min_count: int) -> dict:
        """Round 0: merge time bins until no count is in ``(0, min_count)`` (node disclosure controls)."""
        if round != 0 or "ends" in aggregates:
            return aggregates
        ends, events, censored = safe_bins(aggregates["events"], aggregates["censored"], min_count)
        return {**aggregates, "ends": ends, "events": events, "censored": censored,
                "group_counts": [*events, *censored]}

    # -- global -----------------------------------------------------------------

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        params = self.params(request, model)
        if state is None:
            return Step(done=False, state=self._start(request, model, aggregates, params))
        p = len(state["columns"])
        beta = np.asarray(state["coefficients"], dtype=float)
        events = np.sum([np.asarray(a["events"], dtype=float) for a in aggregates], axis=0)
        s0 = np.sum([np.asarray(a["s0"], dtype=float) for a in aggregates], axis=0)
        s1 = np.sum([np.asarray(a["s1"], dtype=float).reshape(-1, p) for a in aggregates], axis=0)
        s2 = np.sum([np.asarray(a["s2"], dtype=float).reshape(-1, p, p) for a in aggregates], axis=0)
        event_x = np.sum([np.asarray(a["event_x_sum"], dtype=float) for a in aggregates], axis=0)
        mean = s1 / s0[:, None]
        loglik = float(event_x @ beta - events @ np.log(s0))
        score = event_x - events @ mean
        information = np.einsum("j,jab->ab", events, s2 / s0[:, None, None] - mean[:, :, None] * mean[:, None, :])

        if state["final"]:
            cov = _inverse(information)
            return Step(done=True, result=self._result(request, model, params, state, beta, cov, loglik,
                                                       aggregates))
        accepted = state.get("accepted")
        if accepted is not None and loglik < accepted["loglik"] - 1e-12 * abs(accepted["loglik"]):
            halvings = int(state["halvings"]) + 1
            if halvings > MAX_HALVINGS:
                raise RequestError("the Cox fit does not improve (monotone likelihood?)")
            trial = np.asarray(accepted["beta"]) + np.asarray(accepted["step"]) / 2.0 ** halvings
            return Step(done=False, state={**state, "coefficients": trial.tolist(), "halvings": halvings})
        step = _solve(information, score)
        if not np.all(np.isfinite(step)):
            raise RequestError("the Cox fit diverged (monotone likelihood?)")
        iteration = int(state["iteration"]) + 1
        converged = bool(np.all(np.abs(step) <= params["tol"]))
        if not converged and iteration >= params["max_iter"]:
            raise RequestError(f"Cox regression did not converge in {params['max_iter']} iterations "
                               "(monotone likelihood, e.g. no events in a group?); raise max_iter or "
                               "remove covariates")
        return Step(done=False, state={
            **state, "coefficients": (beta + step).tolist(), "iteration": iteration, "final": converged,
            "halvings": 0, "accepted": {"beta": beta.tolist(), "step": step.tolist(), "loglik": loglik}})

    @staticmethod
    def _start(request: AnalysisRequest, model: DataModel, aggregates: list[dict], params: dict) -> dict:
        grid = grid_for(request, model, params)
        n = sum(int(a["n"]) for a in aggregates)
        if n == 0:
            raise RequestError("no complete rows to fit")
        part_ends = [a.get("ends", list(range(len(grid)))) for a in aggregates]
        ends = common_ends(part_ends)
        events = sum(rebin(e, a["events"], ends) for e, a in zip(part_ends, aggregates))
        if events.sum() == 0:
            raise RequestError(f"no events ({request.y[1]} = {params['event_level']!r}) in the selected data")
        counts = sum_level_counts([a["level_counts"] for a in aggregates])
        columns = select_design_columns(request.x, model, counts, intercept=False)
        if not columns:
            raise RequestError("no covariate varies in the selected data")
        if n <= len(columns):
            raise RequestError(f"Cox regression with {len(columns)} coefficients needs more rows than that, got {n}")
        means = merge_moment_dicts(a["moments"] for a in aggregates).mean
        candidates = design_columns(request.x, model, intercept=False)
        return {"ends": ends, "event_bins": np.flatnonzero(events > 0).tolist(), "columns": columns,
                "center": [float(means[candidates.index(c)]) for c in columns],
                "coefficients": [0.0] * len(columns), "iteration": 0, "final": False,
                "halvings": 0, "accepted": None}

    @staticmethod
    def _result(request: AnalysisRequest, model: DataModel, params: dict, state: dict, beta: np.ndarray,
                cov: np.ndarray, loglik: float, aggregates: list[dict]) -> dict:
        stderr = np.sqrt(np.diagonal(cov))
        z = beta / stderr
        q = stats.norm.ppf(1.0 - (1.0 - CONFIDENCE) / 2.0)
        lower, upper = beta - q * stderr, beta + q * stderr
        grid = grid_for(request, model, params)
        k = len(beta)
        return json_ready({
            "time_variable": request.y[0],
            "event_variable": request.y[1],
            "event_level": params["event_level"],
            "indep_vars": state["columns"],
            "n_obs": sum(int(a["n"]) for a in aggregates),
            "n_events": sum(int(a["n_events"]) for a in aggregates),
            "coefficients": beta,
            "stderr": stderr,
            "z_scores": z,
            "pvalues": 2.0 * stats.norm.sf(np.abs(z)),
            "lower_ci": lower,
            "upper_ci": upper,
            "hazard_ratios": np.exp(beta),
            "hr_lower_ci": np.exp(lower),
            "hr_upper_ci": np.exp(upper),
            "ll": loglik,
            "aic": -2.0 * loglik + 2.0 * k,
            "iterations": int(state["iteration"]),
            "ties": "breslow",
            "binning": {**binning_summary(model.variable(request.y[0]), grid, params["bin_width"], state["ends"]),
                        "timeline": grid[np.asarray(state["ends"], dtype=np.int64)]},
        })


def _unit_diagonal(information: np.ndarray) -> np.ndarray:
    """``1 / sqrt(diag(I))`` after checking that ``I`` is usable."""
    diag = np.diagonal(information)
    if np.any(diag <= 0):
        raise RequestError("a covariate is constant among the rows at risk at every event time")
    scale = 1.0 / np.sqrt(diag)
    if np.linalg.cond(information * np.outer(scale, scale)) > MAX_CONDITION:
        raise RequestError("the covariates are collinear among the rows at risk")
    return scale


def _solve(information: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Newton step ``inv(I) U``, solved with ``I`` scaled to unit diagonal."""
    scale = _unit_diagonal(information)
    return np.linalg.solve(information * np.outer(scale, scale), score * scale) * scale


def _inverse(information: np.ndarray) -> np.ndarray:
    """Inverse of the information matrix, scaled to unit diagonal for accuracy."""
    scale = _unit_diagonal(information)
    return np.linalg.inv(information * np.outer(scale, scale)) * np.outer(scale, scale)
