"""Generalised estimating equations (``gee``), fitted by federated Fisher scoring as statsmodels' ``GEE``.

Clusters are patients: ``_pid`` within ``dataset``, the node's row identity (a patient's visits all
sit at one node, ADR 0034), ordered by the ``time`` variable when given, else by the visit key.
Every round the central side sends the coefficients (and the working correlation's parameter);
each node returns sums over its clusters only, computed per cluster with numpy group sums
(``np.add.reduceat`` over the rows sorted by cluster), never a per-cluster vector.

The rounds follow ``statsmodels.genmod.generalized_estimating_equations.GEE.fit`` (statsmodels
0.15, default arguments) step for step:

1. **Round 0** -- rows, patients, the sum of ``y`` and the level counts of the nominal covariates:
   the treatment coding of the pooled data (as ``linear_regression``).
2. **Starting values** -- ``GEE._starting_params`` fits a GLM by IRLS (``GLM.fit()``): starting
   means ``(y + mean(y)) / 2`` (binomial: ``(y + 0.5) / 2``), then per round the nodes return the
   deviance, ``X' W X`` and ``X' W z`` at the current coefficients; stop when the deviance moved by
   at most ``1e-8`` (statsmodels' ``atol``), at most 100 rounds.
3. **Scoring** -- per iteration (at most ``maxiter``, 60) the nodes return ``sum_i D_i' V_i^-1 D_i``
   and ``sum_i D_i' V_i^-1 r_i`` at the current coefficients and correlation parameter; the update is
   ``solve(B, score)``.  Stop when ``|score| < ctol`` (1e-6) once the correlation was updated at
   least once; else the correlation is updated at the new coefficients (one round of residual sums):
   exchangeable by statsmodels' moment estimator (``ddof`` = the number of coefficients, in the
   scale and in the pairs), AR(1) as ``Autoregressive(grid=True)`` (lag-1 over lag-0 products of
   the standardised residuals, each cluster weighted by ``1 / (k - 1)`` and ``1 / k``; equally
   spaced visits; the inverse correlation is statsmodels' tridiagonal one).
4. **Covariances** -- one more round at the final coefficients: the bread ``B``, the meat
   ``sum_i u_i u_i'`` with ``u_i = D_i' V_i^-1 r_i`` and the sum of squared Pearson residuals
   (the scale, ``ddof`` = the number of coefficients; 1 for binomial and Poisson).  Robust
   (sandwich) ``B^-1 M B^-1`` and naive ``scale * B^-1`` covariances, Wald z tests.

Privacy: besides the step's row controls, the node counts patients (:meth:`Gee.cluster_count`)
against ``min_row_count`` and ``nfilter_glm``; what a node releases is in
``docs/adr/0036-federated-gee.md``.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from mipflow.algorithms.contract import ReleasedGroups, Step
from mipflow.algorithms.design import (
    class_groups,
    dummy_level_groups,
    category_codes,
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
from mipflow.algorithms.spec import NOMINAL, NUMERICAL, InputSpec, ParamSpec, SpecAlgorithm
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd

FAMILIES = ("gaussian", "binomial", "poisson")
COV_STRUCTS = ("independence", "exchangeable", "ar1")
#: The row identity a cluster is made of (:data:`mipflow.node.query.read.ROW_IDENTITY_COLUMNS`
#: plus the dataset): kept at the node, never released.
PATIENT = ("dataset", "_pid")
VISIT = "_visit"
#: The patient's digest a PostgreSQL node's binary read gives in place of ``_pid``
#: (:data:`mipflow.node.query.pgcopy.PID_MD5`): enough for clusters whose visits need no order.
PATIENT_DIGEST = "_pid_md5"
#: And the visits' order beside it, when the algorithm asks for it (``visit_order``): each row's rank
#: among its patient's rows by visit key (:data:`mipflow.node.query.pgcopy.VISIT_RANK`).
VISIT_RANK = "_visit_rank"
CONFIDENCE = 0.95
#: statsmodels' ``GLM.fit()`` defaults (IRLS): tolerance on the deviance, iterations.
GLM_TOL = 1e-8
GLM_MAXITER = 100


def _family(name: str) -> Any:
    from statsmodels.genmod import families

    return {"gaussian": families.Gaussian, "binomial": families.Binomial, "poisson": families.Poisson}[name]()


class Gee(SpecAlgorithm):
    name = "gee"
    label = "Generalised Estimating Equations"
    description = ("Regression of repeated measures on covariates with patients as clusters (generalised "
                   "estimating equations, Gaussian, binomial or Poisson): coefficients with robust (sandwich) "
                   "and naive standard errors, equal to statsmodels' GEE on the pooled rows.")
    y_spec = InputSpec(types=("real", "int", "text"), stattypes=(NUMERICAL, NOMINAL), notblank=True,
                       multiple=False, label="Variable (dependent)",
                       description="A numerical variable (binomial: values 0 and 1; Poisson: counts), or a "
                                   "nominal one with the binomial family (1 for the positive class).")
    x_spec = InputSpec(types=("real", "int", "text"), stattypes=(NUMERICAL, NOMINAL), notblank=True,
                       multiple=True, label="Covariates (independent)",
                       description="Numerical or nominal variables (nominal ones dummy-encoded).")
    parameter_specs = MappingProxyType({
        "family": ParamSpec(types=("text",), default="gaussian", notblank=True, enums=FAMILIES, label="Family",
                            description="The distribution of y given the covariates, with its canonical link "
                                        "(identity, logit, log)."),
        "cov_struct": ParamSpec(types=("text",), default="exchangeable", notblank=True, enums=COV_STRUCTS,
                                label="Working correlation",
                                description="The working correlation of a patient's visits: independence, "
                                            "exchangeable, or AR(1) over the visits in order (equally spaced)."),
        "time": ParamSpec(types=("text",), label="Time variable",
                          description="A numerical variable ordering each patient's visits; by default the "
                                      "visit order."),
        "positive_class": ParamSpec(types=("text", "int"), enums_from="y", label="Positive class",
                                    description="With a nominal y (binomial family): the level that is 1; every "
                                                "other level is 0."),
        "maxiter": ParamSpec(types=("int",), default=60, min=1, max=500, label="Maximum iterations",
                             description="The most scoring iterations (statsmodels' default, 60)."),
        "ctol": ParamSpec(types=("real",), default=1e-6, min=1e-14, max=1e-2, label="Tolerance",
                          description="Convergence: the norm of the score below it (statsmodels' default)."),
    })

    # -- request ----------------------------------------------------------------------

    def check(self, request: AnalysisRequest, model: DataModel) -> None:
        params = self.params(request, model)
        y = model.variable(request.y[0])
        if request.y[0] in request.x:
            raise RequestError(f"{request.y[0]!r} cannot be both the dependent variable and a covariate")
        if y.is_categorical:
            if params["family"] != "binomial":
                raise RequestError("a nominal dependent variable needs the binomial family")
            if params.get("positive_class") is None:
                raise RequestError("a nominal dependent variable needs positive_class")
        time = params.get("time")
        if time is not None:
            if time not in model:
                raise RequestError(f"variable {time!r} is not in data model {model.key}")
            var = model.variable(time)
            if var.is_categorical or var.sql_type not in ("int", "real"):
                raise RequestError(f"the time variable {time!r} must be numerical")
            if time == request.y[0] or time in request.x:
                raise RequestError(f"the time variable {time!r} is also in x or y")

    def variables(self, request: AnalysisRequest) -> tuple[str, ...]:
        """y, x, then the time variable when given."""
        time = request.parameters.get("time")
        return tuple(dict.fromkeys(request.y + request.x + ((time,) if time else ())))

    #: The node keeps its row identity (``dataset``, ``_pid``, ``_visit``) in the local step's rows:
    #: the clusters (:func:`mipflow.algorithms.local.prepare_local_data`).
    row_identity = True
    #: ... and the visits' order: where the read carries no visit key (PostgreSQL's binary read), the
    #: rows' ranks by visit key within their patient (:data:`VISIT_RANK`; never released either).
    visit_order = True

    # -- privacy capabilities -----------------------------------------------------------

    #: Every round's aggregates are counts and sums over the node's patients whose layout depends on
    #: the request and the data model only (p-vectors, p x p matrices, scalars; ``level_counts`` per
    #: enumeration level): masked from 3 nodes (ADR 0014, 0036), the global step reads only their totals.
    secure_aggregation = "automatic"

    def parameter_count(self, request: AnalysisRequest, model: DataModel) -> int | None:
        """One parameter per design column (checked against rows and patients)."""
        return len(design_columns(request.x, model))

    def released_groups(self, request: AnalysisRequest, model: DataModel) -> tuple[ReleasedGroups, ...]:
        # each nominal covariate's levels are released groups (ADR 0051, issue 14 item 5): rows per level of each
        # nominal covariate in round 0, and every later round's ``X' W X``, score and (GEE) meat hold per-level
        # sums of the weights, residuals and numerical covariates; with the binomial family, the response's
        # classes too (fifteenth review): the first IRLS round's ``X' W z`` at ``mu = (y + 1/2) / 2`` is
        # ``a X'1 + b X' y``, the positive class's sums of every covariate (its count per level)
        levels = dummy_level_groups(request.x, model)
        params = self.params(request, model)
        if params["family"] != "binomial":
            return levels
        if model.variable(request.y[0]).is_categorical:
            return class_groups(request.y[0], request.x, model, (str(params["positive_class"]),)) + levels
        return class_groups(request.y[0], request.x, model, edges=(0.0, 0.5, 1.0)) + levels

    def cluster_count(self, data: pd.DataFrame) -> int | None:
        """Patients among the rows (``min_row_count`` and ``nfilter_glm`` count them too)."""
        return _clusters(data).n_clusters

    def row_weights(self, round: int, data: pd.DataFrame, request: AnalysisRequest, model: DataModel,
                    state: dict | None) -> list[np.ndarray] | None:
        """With a non-identity link (binomial, Poisson), the weights a round's sums put on each patient
        at the state's coefficients (ADR 0054): the variance ``V(mu)`` (``X' W X``, the bread) and the
        residual ``y - mu`` (``X' W z`` less ``X' W eta``, the score), summed over the patient's rows;
        patients are the units, as ``min_row_count`` counts them.  Gaussian: none (its sums are linear
        in ``X' y`` and ``X' X``, which weigh every row alike)."""
        params = self.params(request, model)
        if state is None or params["family"] == "gaussian" or state.get("beta") is None:
            return None
        clusters = _clusters(data, params.get("time"))
        y = _response(data, request, model, params, clusters)
        design = _design(data, request, model, state["columns"], clusters)
        family = _family(params["family"])
        mu = family.fitted(design @ np.asarray(state["beta"], dtype=float))
        return [clusters.sums(family.variance(mu)), clusters.sums(np.abs(y - mu))]

    #: What the central site says when nodes refuse a round under ``effective_rows`` (ADR 0054).
    concentrated_fit = ("the fit appears to separate the outcome (binomial) or to diverge on a few patients "
                        "(Poisson), so it would rest on a few patients' visits; remove or merge covariates")

    # -- local --------------------------------------------------------------------------

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        params = self.params(request, model)
        clusters = _clusters(data, params.get("time"))
        y = _response(data, request, model, params, clusters)
        out: dict[str, Any] = {"n": int(len(y)), "n_clusters": clusters.n_clusters}
        if state is None:
            counts = level_counts(data, request.x, model)
            out["level_counts"] = counts
            out["group_n"] = [c for code in request.x for c in counts.get(code, [])]
            if params["family"] == "binomial":
                positive = int(np.count_nonzero(y == 1.0))
                out["group_n"] += [positive, len(y) - positive]
            # every declared cell (two covariates' joint levels, a class within a level): the sums of later
            # rounds hold their counts (``X' W X`` at a constant weight); checked, never sent (ADR 0031, 0051)
            out["cell_n"] = declared_cell_counts(data, self.released_groups(request, model), model)
            out["sum_y"] = float(y.sum())
            return out
        design = _design(data, request, model, state["columns"], clusters)
        family = _family(params["family"])
        phase = state["phase"]
        if phase == "glm":
            out.update(_irls_sums(family, design, y, state))
        elif phase == "assoc":
            out.update(_assoc_sums(family, design, y, clusters, state, params["cov_struct"]))
        elif phase in ("mean", "final"):
            out.update(_scoring_sums(family, design, y, clusters, state, params["cov_struct"],
                                     meat=phase == "final"))
        else:
            raise RequestError(f"unknown phase {phase!r}")
        return out

    # -- global -------------------------------------------------------------------------

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        params = self.params(request, model)
        n = sum(int(a["n"]) for a in aggregates)
        m = sum(int(a["n_clusters"]) for a in aggregates)
        if state is None:
            if n == 0:
                raise RequestError("no complete rows to fit")
            counts = sum_level_counts([a["level_counts"] for a in aggregates])
            columns = select_design_columns(request.x, model, counts)
            if n <= len(columns):
                raise RequestError(f"gee with {len(columns)} coefficients needs more rows than that")
            ybar = math.fsum(float(a["sum_y"]) for a in aggregates) / n
            return Step(done=False, state={"phase": "glm", "columns": columns, "ybar": ybar, "beta": None,
                                           "deviance": [], "glm_iterations": 0,
                                           "references": reference_levels(request.x, model, counts)})
        p = len(state["columns"])

        def total(key: str) -> np.ndarray:
            return np.sum([np.asarray(a[key], dtype=float) for a in aggregates], axis=0)

        phase = state["phase"]
        if phase == "glm":
            deviance = [*state["deviance"], float(total("deviance"))]
            if len(deviance) >= 2 and abs(deviance[-1] - deviance[-2]) <= GLM_TOL \
                    or len(deviance) > GLM_MAXITER:
                return Step(done=False, state=self._scoring_state(state, params, m))
            beta = _solve(total("xtwx"), total("xtwz"))
            return Step(done=False, state={**state, "beta": beta.tolist(), "deviance": deviance,
                                           "glm_iterations": len(deviance)})
        if phase == "assoc":
            dep = _dependence(params["cov_struct"], params["family"], n, p, total)
            iteration = int(state["iteration"])
            nxt = "final" if iteration >= params["maxiter"] else "mean"
            return Step(done=False, state={**state, "phase": nxt, "dep": dep,
                                           "assoc_updates": int(state["assoc_updates"]) + 1})
        if phase == "mean":
            bmat, score = total("bmat"), total("score")
            beta = np.asarray(state["beta"], dtype=float) + _solve(bmat, score)
            norm = float(np.sqrt(np.sum(score ** 2)))
            iteration = int(state["iteration"]) + 1
            nxt = {**state, "beta": beta.tolist(), "iteration": iteration, "score_norm": norm}
            if norm < params["ctol"] and int(state["assoc_updates"]) > 0:
                return Step(done=False, state={**nxt, "phase": "final"})
            if params["cov_struct"] == "independence":  # statsmodels' update is a no-op, but counts
                nxt["assoc_updates"] = int(state["assoc_updates"]) + 1
                return Step(done=False, state={**nxt, "phase": "final" if iteration >= params["maxiter"]
                                                else "mean"})
            return Step(done=False, state={**nxt, "phase": "assoc"})
        if phase == "final":
            return Step(done=True, result=self._result(request, model, params, state, total, n, m))
        raise RequestError(f"unknown phase {phase!r}")

    @staticmethod
    def _scoring_state(state: dict, params: dict, m: int) -> dict:
        if state["beta"] is None:
            raise RequestError("the starting GLM fit did not start")
        return {"phase": "mean", "columns": state["columns"], "beta": state["beta"],
                "dep": None if params["cov_struct"] == "independence" else 0.0,
                "iteration": 0, "assoc_updates": 0, "score_norm": None,
                "glm_iterations": state["glm_iterations"], "references": state.get("references") or {}}

    @staticmethod
    def _result(request: AnalysisRequest, model: DataModel, params: dict, state: dict, total: Any, n: int,
                m: int) -> dict:
        from scipy import stats

        columns = state["columns"]
        p = len(columns)
        beta = np.asarray(state["beta"], dtype=float)
        bmat, meat = total("bmat"), total("meat")
        try:
            bread = np.linalg.inv(bmat)
        except np.linalg.LinAlgError:
            raise RequestError("the covariates are collinear in the selected data") from None
        scale = 1.0 if params["family"] != "gaussian" else float(total("ssr")) / (n - p)
        robust = bread @ meat @ bread
        naive = bread * scale
        se = np.sqrt(np.diagonal(robust))
        se_naive = np.sqrt(np.diagonal(naive))
        z, z_naive = beta / se, beta / se_naive
        q = stats.norm.ppf(1.0 - (1.0 - CONFIDENCE) / 2.0)
        converged = state["score_norm"] is not None and state["score_norm"] < params["ctol"]
        return json_ready({
            "dependent_var": request.y[0],
            "indep_vars": columns,
            "covariates": covariates_block(request.x, model, columns, state.get("references") or {}),
            "n_obs": n,
            "n_clusters": m,
            "family": params["family"],
            "link": {"gaussian": "identity", "binomial": "logit", "poisson": "log"}[params["family"]],
            "cov_struct": params["cov_struct"],
            "time": params.get("time"),
            "dep_param": state["dep"],
            "scale": scale,
            "coefficients": beta,
            "stderr": se,
            "z_scores": z,
            "pvalues": 2.0 * stats.norm.sf(np.abs(z)),
            "lower_ci": beta - q * se,
            "upper_ci": beta + q * se,
            "stderr_naive": se_naive,
            "z_scores_naive": z_naive,
            "pvalues_naive": 2.0 * stats.norm.sf(np.abs(z_naive)),
            "cov_robust": robust,
            "cov_naive": naive,
            "iterations": state["iteration"],
            "glm_iterations": state["glm_iterations"],
            "converged": bool(converged),
            "note": "statsmodels GEE (0.15) iterations and defaults; robust = sandwich standard errors; "
                    "ar1 is Autoregressive(grid=True) over the visits in order",
        })


# --------------------------------------------------------------------------- node-side helpers


class _Clusters:
    """The rows' order (by patient, then time or visit) and the clusters' boundaries."""

    def __init__(self, order: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> None:
        self.order = order
        self.starts = starts
        self.sizes = sizes
        self.n_clusters = int(len(sizes))
        self.size_of_row = np.repeat(sizes, sizes)
        position = np.arange(len(order)) - np.repeat(starts, sizes)
        self.first = position == 0
        self.last = position == self.size_of_row - 1

    def sums(self, values: np.ndarray) -> np.ndarray:
        """Per-cluster sums of ``values`` (rows in cluster order), shape (clusters, ...)."""
        if not len(values):
            return np.zeros((0,) + values.shape[1:])
        return np.add.reduceat(values, self.starts, axis=0)


_MEMO: dict[str, Any] = {}


def _memo(kind: str, key: tuple, data: Any, make: Any) -> Any:
    slot = _MEMO.get(kind)
    if slot is not None and slot[0] == key and slot[1] is data:
        return slot[2]
    value = make()
    _MEMO[kind] = (key, data, value)
    return value


def _clusters(data: pd.DataFrame, time: str | None = None, *, algorithm: str = "gee",
              ordered: bool = True) -> _Clusters:
    """The rows' patients; with ``ordered`` (GEE) each patient's visits in order (time, then visit key).

    The patient may also be given by :data:`PATIENT_DIGEST` (the MD5 of ``_pid``) and the visits'
    order by :data:`VISIT_RANK` (their ranks by visit key within the patient): what a PostgreSQL
    node's binary read carries instead of ``_pid`` and ``_visit``."""
    pid = "_pid" if "_pid" in data.columns else PATIENT_DIGEST
    visit = VISIT if VISIT in data.columns else VISIT_RANK
    missing = [c for c in ("dataset", pid, *((visit,) if ordered else ())) if c not in data.columns]
    if missing:
        raise RequestError(f"{algorithm} needs the rows' patient identity, which this selection does not carry")

    def make() -> _Clusters:
        import pandas as pd

        patient = pd.factorize(data["dataset"].astype(str).to_numpy() + "\x1f"
                               + data[pid].astype(str).to_numpy(), sort=True)[0]
        if not ordered:
            rank = np.zeros(len(data))
        elif visit == VISIT:
            rank = data[VISIT].astype(str).to_numpy()
        else:  # the server's ranks by the same keys, compared as Python compares them (ADR 0036)
            rank = data[VISIT_RANK].to_numpy(dtype=np.int64)
        keys = [rank]
        if time is not None:
            keys.append(numeric_values(data[time]))
        keys.append(patient)
        order = np.lexsort(keys)  # by patient, then time, then visit key
        sorted_patient = patient[order]
        if len(order):
            starts = np.flatnonzero(np.r_[True, sorted_patient[1:] != sorted_patient[:-1]])
        else:
            starts = np.zeros(0, dtype=int)
        sizes = np.diff(np.r_[starts, len(order)])
        return _Clusters(order, starts, sizes)

    return _memo("clusters", (id(data), len(data), time, ordered), data, make)


def _response(data: pd.DataFrame, request: AnalysisRequest, model: DataModel, params: dict,
              clusters: _Clusters) -> np.ndarray:
    def make() -> np.ndarray:
        var = model.variable(request.y[0])
        if var.is_categorical:
            codes = category_codes(data[var.code], var).to_numpy()
            y = (codes == str(params["positive_class"])).astype(float)
        else:
            y = numeric_values(data[var.code])
            if params["family"] == "binomial" and not np.all((y == 0.0) | (y == 1.0)):
                raise RequestError("the binomial family needs y to take the values 0 and 1 only")
            if params["family"] == "poisson" and np.any(y < 0.0):
                raise RequestError("the Poisson family needs y to be non-negative")
        y = y[clusters.order]
        y.setflags(write=False)
        return y

    key = (id(data), len(data), request.y[0], params["family"], str(params.get("positive_class")),
           params.get("time"))
    return _memo("response", key, data, make)


def _design(data: pd.DataFrame, request: AnalysisRequest, model: DataModel, columns: list[str],
            clusters: _Clusters) -> np.ndarray:
    def make() -> np.ndarray:
        design, _ = design_matrix(data, request.x, model, columns=columns)
        design = np.ascontiguousarray(design[clusters.order])
        design.setflags(write=False)
        return design

    key = (id(data), len(data), tuple(request.x), tuple(columns), id(clusters))
    return _memo("design", key, data, make)


def _irls_sums(family: Any, design: np.ndarray, y: np.ndarray, state: dict) -> dict:
    """One IRLS round of ``GLM.fit()``: deviance at the current means and the WLS sums."""
    if state["beta"] is None:
        mu = (y + 0.5) / 2.0 if family.__class__.__name__ == "Binomial" else (y + float(state["ybar"])) / 2.0
        eta = family.predict(mu)
    else:
        eta = design @ np.asarray(state["beta"], dtype=float)
        mu = family.fitted(eta)
    weights = family.weights(mu)
    z = eta + family.link.deriv(mu) * (y - mu)
    scaled = design * np.sqrt(weights)[:, None]
    return {"deviance": float(family.deviance(y, mu)), "xtwx": (scaled.T @ scaled).tolist(),
            "xtwz": (design.T @ (weights * z)).tolist()}


def _standardised(family: Any, design: np.ndarray, y: np.ndarray, beta: list[float]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``D / sd`` and ``(y - mu) / sd`` at ``beta`` (``sd = sqrt(V(mu))``), rows in cluster order."""
    eta = design @ np.asarray(beta, dtype=float)
    mu = family.link.inverse(eta)
    sdev = np.sqrt(family.variance(mu))
    dmat = design * (family.link.inverse_deriv(eta) / sdev)[:, None]
    return dmat, (y - mu) / sdev


def _inverse_correlation(values: np.ndarray, clusters: _Clusters, cov_struct: str, dep: float | None
                         ) -> np.ndarray:
    """``R_i^-1`` applied to each cluster's block of ``values`` (n, q), as statsmodels'
    ``covariance_matrix_solve`` does between its two divisions by the standard deviations."""
    if cov_struct == "independence":
        return values
    k = clusters.size_of_row.astype(float)[:, None]
    if cov_struct == "exchangeable":
        a = float(dep)
        c = a / (1.0 - a) / (1.0 + a * (k - 1.0))
        return values / (1.0 - a) - c * np.repeat(clusters.sums(values), clusters.sizes, axis=0)
    r = float(dep)
    c0 = (1.0 + r ** 2) / (1.0 - r ** 2)
    c1 = 1.0 / (1.0 - r ** 2)
    c2 = -r / (1.0 - r ** 2)
    ends = (clusters.first | clusters.last)[:, None]
    diagonal = np.where(k == 1.0, 1.0, np.where(ends, c1, c0))
    out = diagonal * values
    below = np.zeros_like(values)  # the previous row of the same cluster
    below[1:] = values[:-1]
    below[clusters.first] = 0.0
    above = np.zeros_like(values)  # the next row of the same cluster
    above[:-1] = values[1:]
    above[clusters.last] = 0.0
    return out + c2 * (below + above)


def _scoring_sums(family: Any, design: np.ndarray, y: np.ndarray, clusters: _Clusters, state: dict,
                  cov_struct: str, *, meat: bool) -> dict:
    """``sum_i D_i' V_i^-1 D_i`` and ``sum_i D_i' V_i^-1 r_i``; with ``meat`` also the meat of the
    sandwich ``sum_i u_i u_i'`` and the sum of squared Pearson residuals."""
    dmat, resid = _standardised(family, design, y, state["beta"])
    solved = _inverse_correlation(np.column_stack([dmat, resid]), clusters, cov_struct, state["dep"])
    bmat = dmat.T @ solved[:, :-1]
    out = {"bmat": bmat.tolist(), "score": (dmat.T @ solved[:, -1]).tolist()}
    if meat:
        u = clusters.sums(dmat * solved[:, -1:])
        out["meat"] = (u.T @ u).tolist()
        out["ssr"] = float(np.sum(resid ** 2))
    return out


def _assoc_sums(family: Any, design: np.ndarray, y: np.ndarray, clusters: _Clusters, state: dict,
                cov_struct: str) -> dict:
    """The sums statsmodels' update of the working correlation reads, at the new coefficients."""
    _, resid = _standardised(family, design, y, state["beta"])
    ssr = float(np.sum(resid ** 2))
    k = clusters.sizes.astype(float)
    if cov_struct == "exchangeable":
        per = clusters.sums(resid)
        ssr_i = clusters.sums(resid ** 2)
        return {"ssr": ssr, "cross": float(np.sum((per ** 2 - ssr_i) / 2.0)),
                "pairs": float(np.sum(0.5 * k * (k - 1.0)))}
    lagged = np.zeros_like(resid)
    lagged[1:] = resid[1:] * resid[:-1]
    lagged[clusters.first] = 0.0
    several = clusters.sizes > 1
    lag1 = clusters.sums(lagged)[several] / (k[several] - 1.0)
    lag0 = clusters.sums(resid ** 2)[several] / k[several]
    return {"ssr": ssr, "lag1": float(np.sum(lag1)), "lag0": float(np.sum(lag0))}


def _dependence(cov_struct: str, family: str, n: int, p: int, total: Any) -> float:
    """The working correlation's parameter from the pooled sums (statsmodels' estimators)."""
    if cov_struct == "exchangeable":  # Exchangeable.update estimates its own scale, whatever the family
        scale = float(total("ssr")) / (n - p)
        pairs = float(total("pairs"))
        if pairs - p <= 0:
            raise RequestError("too few pairs of visits for an exchangeable correlation: use independence")
        return float(total("cross")) / scale / (pairs - p)
    scale = float(total("ssr")) / (n - p) if family == "gaussian" else 1.0  # GEE.estimate_scale
    lag0 = float(total("lag0")) / scale
    if lag0 == 0.0:
        raise RequestError("no patient has two visits: an AR(1) correlation cannot be estimated")
    return (float(total("lag1")) / scale) / lag0


def _solve(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    try:
        out = np.linalg.solve(matrix, rhs)
    except np.linalg.LinAlgError:
        raise RequestError("the covariates are collinear in the selected data (singular matrix)") from None
    if not np.all(np.isfinite(out)):
        raise RequestError("the fit diverged")
    return out
