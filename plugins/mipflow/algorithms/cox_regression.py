"""Cox proportional hazards regression, federated Newton on the exact partial likelihood.

``y = [time, event]`` as for :mod:`mipflow.algorithms.kaplan_meier`; ``x``
numerical and nominal covariates (treatment-coded against the first level
present in the pooled data, no intercept).

Round 0: every node sends its event and censoring counts.  They are
Kaplan-Meier's (one group): counted on the data model's fine grid,
merged by the node's disclosure controls until no count is below
``nfilter_tab`` (the canonical release), coarsened to the request's grid at
the merged ends and cut at ``max_time`` (:mod:`mipflow.algorithms.survival`):
neither ``bin_width`` nor ``max_time`` shapes the merge (issue 14.4).  The
central side intersects the nodes' bin ends and cuts them at the last common end
at or before ``max_time`` (the common bins ``B``; rows followed longer are
censored there).  Round 1 (``"start"``): every node sends its rows, its rows per
level of each nominal covariate and the moments of the candidate design
columns, which the central side needs only summed: under secure aggregation
this round is masked (ADR 0055, amendment), while round 0's bins, which the
central side needs per node, stay in the clear.  The central side picks the
coding, centres the covariates on their pooled means (the slopes and the log
partial likelihood do not change) and starts at zero.

Later rounds come in pairs, one pair per evaluation of the likelihood (ADR 0046).  The central
side sends ``B``, the coding, the centre, the coefficients and the phase.  In a ``"sums"`` round,
for each bin of ``B`` holding events, a node computes the sums over its rows still at risk there
(rounded time at or after the bin end) of ``w = exp(x'b)``, ``w x`` and ``w x x'`` (S0, S1, S2)
and its events there; these go under ``sealed`` (:mod:`mipflow.algorithms.sealed`): the node's
controls check them with its event and censoring counts per bin of ``B`` (refused if any is below
``nfilter_tab``: a grid finer than the node's own safe bins is refused), then the node encrypts
them to every participating node, and the central site only forwards them.  From 3 participants
the node first masks them in fixed point (``Z/2^256``, 128 fractional bits; ADR 0055), so that each
peer opens uniform parts and reads only their pool.  In the ``"score"``
round that follows, each node opens and adds every participant's sums (the pooled ``S0_j``,
``S1_j``, ``S2_j``, ``d_j``) and returns only its share of the pooled log partial likelihood, score
and information: with Breslow's handling of ties, its events ``d_ij`` and the sum ``event_x`` of
``x`` over its events (up to the end of follow-up, the last end of ``B``),

    l_i = event_x'b - sum_j d_ij log S0_j
    U_i = event_x - sum_j d_ij S1_j / S0_j
    I_i = sum_j d_ij (S2_j / S0_j - S1_j S1_j' / S0_j^2)

whose sums over the nodes are the pooled ``l``, ``U`` and ``I``; the central side adds them and
makes a Newton step (halved while the likelihood falls).  Under secure aggregation the score rounds
alone are masked, so the central site reads only that sum (:meth:`CoxRegression.masked_round`, ADR 0048).

With ``ties = "efron"`` a node also seals, per bin of ``B`` holding events,
the sums over its rows *with an event* in that bin of ``w``, ``w x`` and
``w x x'`` (E0, E1, E2).  These are additive too, so Efron's approximation is
exact federated: with ``d_j`` pooled events in bin ``j``, ``f_r = r / d_j``
(``r = 0..d_j-1``) and ``phi_jr = S0_j - f_r E0_j`` (likewise ``S1 - f_r E1``,
``S2 - f_r E2``), the pooled terms are

    l = sum_events x'b - sum_j sum_r log phi_jr
    U = sum_events x - sum_j sum_r (S1_j - f_r E1_j) / phi_jr
    I = sum_j sum_r [(S2_j - f_r E2_j) / phi_jr - (S1_j - f_r E1_j)(S1_j - f_r E1_j)' / phi_jr^2]

and a node returns the terms of its own events (``x'b``, ``x``) and its share ``d_ij / d_j`` of each
bin's other terms (bins with one event give Breslow's terms).  E0..E2 cover the node's events
in a bin of ``B``, a count its controls already check (zero or at least
``nfilter_tab``) as for the risk-set sums.

At a node, a round costs one pass over its rows: the rows sorted by bin of
``B`` with their centred covariates and the product columns ``x_a x_b`` are
built once per analysis and kept between rounds (:mod:`mipflow.algorithms.prepared`);
each round computes ``w`` and one sparse bins-by-rows product per column, then
cumulative sums over the bins.  S2 travels as its upper triangle and the sums
as packed float64 (:mod:`mipflow.algorithms.packed`); see
``docs/adr/0018-cox-performance.md``.  Rows left on disk (``streams_rows``, ADR 0062 amendment 16) keep
nothing a row: every round reads them again a chunk at a time (:mod:`mipflow.algorithms.cox_streamed`).
It stops as statsmodels' Newton (no coefficient moved by more than ``tol``),
and one more pair of rounds gives the information at the final coefficients.

The estimate equals ``statsmodels.duration.hazard_regression.PHReg(ties=
"breslow")`` (``ties = "efron"``: ``PHReg(ties="efron")`` and lifelines'
``CoxPHFitter``) on the pooled rows with times rounded up to the bin ends
(``binning``); when every distinct time has its own bin that is the unbinned
fit.  Intervals are Wald intervals; hazard ratios are ``exp(coefficients)``.
"""
from __future__ import annotations

import json
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from mipflow.algorithms.contract import ReleasedGroups, Step
from mipflow.algorithms.cox_shares import full_s2 as _full_s2
from mipflow.algorithms.cox_shares import node_share as _node_share
from mipflow.algorithms.cox_streamed import checked_state, streamed_step, sums_in_order
from mipflow.algorithms.design import (
    class_groups,
    class_level_counts,
    dummy_level_groups,
    declared_cell_counts,
    design_columns,
    design_matrix,
    level_counts,
    select_design_columns,
    sum_level_counts,
)
from mipflow.algorithms.linear_regression_cv import linear_predictor
from mipflow.algorithms.moments import compute_moments, merge_moment_dicts
from mipflow.algorithms.packed import pack
from mipflow.algorithms.prepared import memo
from mipflow.algorithms.sealed import REAL_FRACTION_BITS, REAL_MASKED_SCHEME, SEALED, pooled_sums
from mipflow.algorithms.spec import (
    NOMINAL,
    NUMERICAL,
    InputSpec,
    ParamSpec,
    SpecAlgorithm,
)
from mipflow.algorithms.survival import (
    FOLLOW_UP_KEY,
    LEVEL_KEY,
    POINTS_KEY,
    SURVIVAL_PARAMETERS,
    SURVIVAL_Y,
    binning_summary,
    check_outcome,
    combine_parts,
    common_ends,
    fine_grid,
    grid_counts,
    outcome,
    rebin,
    request_level,
    request_points,
    request_points_array,
    leaving_series,
    shape_release,
)
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd

CONFIDENCE = 0.95
MAX_CONDITION = 1e14
MAX_HALVINGS = 30
#: Handling of events that share a bin: Breslow's (the default) or Efron's approximation.
TIES = ("breslow", "efron")
#: Largest cached matrix of cross products ``x_a x_b`` per node (bytes); beyond it the product
#: columns are formed anew each round, one at a time.
MAX_PRODUCTS_BYTES = 768 * 1024 ** 2
#: The two rounds of one Newton evaluation (ADR 0046): the nodes exchange their per-bin sums sealed
#: to each other, then each sends its share of the pooled likelihood, score and information.
SUMS, SCORE = "sums", "score"
#: The round after round 0 (ADR 0055, amendment): the sums the central site needs only pooled (rows, level
#: counts, moments of the design columns), masked under secure aggregation; round 0 keeps the bins only.
START = "start"
#: Round 0's node-only key: the level counts the start round releases, checked (``cell_n``) with the bins.
LEVEL_CELLS = "level_cells"
#: The least pooled ``S0`` a masked sums round may give: the fixed point's resolution (2^-128) is then at
#: most float64's (2^-53) relative to it (ADR 0055).
MIN_MASKED_S0 = 2.0 ** (53 - REAL_FRACTION_BITS)


class CoxRegression(SpecAlgorithm):
    name = "cox_regression"
    #: Every bin's events, censorings and risk-set sums enter the node's share of l, U, I, and a
    #: requester who varies ``max_time`` or ``bin_width`` can take differences of those shares bin by
    #: bin (the eighth outside review): so a bin holds 0 or at least ``min_row_count`` events and
    #: censorings, as a cohort does rows (ADR 0046, "requester-shaped bins").
    bin_count_setting = "min_row_count"
    label = "Cox proportional hazards regression"
    description = ("Federated Newton iterations on the partial likelihood of binned event times: "
                   "coefficients, standard errors, Wald tests and intervals, hazard ratios.")
    y_spec = SURVIVAL_Y
    x_spec = InputSpec(types=("real", "int", "text"), stattypes=(NUMERICAL, NOMINAL), notblank=True,
                       multiple=True, label="Covariates",
                       description="Numerical and nominal covariates (nominal ones dummy-encoded).")
    parameter_specs = MappingProxyType({
        **SURVIVAL_PARAMETERS,
        "max_iter": ParamSpec(types=("int",), default=50, min=1, max=1000, label="Maximum iterations",
                              description="The most Newton iterations (one federated round each)."),
        "tol": ParamSpec(types=("real",), default=1e-8, min=1e-14, max=1e-2, label="Tolerance",
                         description="Convergence tolerance of the Newton iterations."),
        "ties": ParamSpec(types=("text",), default="breslow", notblank=True, enums=TIES, label="Tied event times",
                          description="Events sharing a time bin: Breslow's or Efron's approximation."),
    })

    def check(self, request: AnalysisRequest, model: DataModel) -> None:
        params = self.params(request, model)
        check_outcome(self.name, request, model, params["event_level"])
        # the fine grid needs the declared range (a time variable without maxValue is refused)
        request_points(model.variable(request.y[0]), params["bin_width"], params["max_time"])

    # -- local ------------------------------------------------------------------

    def released_groups(self, request: AnalysisRequest, model: DataModel) -> tuple[ReleasedGroups, ...]:
        # the event set, alone and within each level of every nominal covariate (ADR 0051, fifteenth review): a
        # score round's ``event_x`` is the events' first sums of every covariate (their count per level); and
        # each nominal covariate's levels (issue 14 item 5): the start round's level counts and moments, and
        # every sums round's ``S1``, ``S2`` hold per-level sums over the rows at risk
        event = str(self.params(request, model)["event_level"])
        return class_groups(request.y[1], request.x, model, (event,)) + dummy_level_groups(request.x, model)

    #: Its local step also takes a selection left on disk (ADR 0062, amendment 16; mipflow.algorithms.cox_streamed).
    streams_rows = True

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        params = self.params(request, model)
        time_var = model.variable(request.y[0])
        grid = fine_grid(time_var)  # whatever bin_width and max_time (issue 14.4)
        if hasattr(data, "reader"):  # rows left on disk (streams_rows): the same release, a chunk at a time
            return streamed_step(self, round, data, request, model, state, params, grid)
        rows = _rows(data, request, model, params, grid)
        index, event = rows["index"], rows["event"]
        if state is None:
            last = request_points(time_var, params["bin_width"], params["max_time"])[-1]
            events, censored = grid_counts(index, event, len(grid))
            counts = level_counts(data, request.x, model)
            out = {"n": len(data), "events": events.tolist(), "censored": censored.tolist(),
                   # per level of the event variable: the merge's input, never released (ADR 0008)
                   "series": leaving_series(index, data, request, model, grid),
                   "group_counts": [int(v) for v in (*events, *censored)],
                   # checked here, never sent (ADR 0055 amended): the start round's level counts, every declared
                   # cell (two covariates' joint levels: S2 and the information; the events and the rest within
                   # each level: the score's event_x; ADR 0051, issue 14) and the events up to the end of
                   # follow-up within each level (what event_x sums when rows are followed beyond max_time)
                   LEVEL_CELLS: [*(c for code in request.x for c in counts.get(code, [])),
                                 *declared_cell_counts(data, self.released_groups(request, model), model),
                                 *class_level_counts(data, request.x, model, event & (index <= last))],
                   POINTS_KEY: request_points(time_var, params["bin_width"], None),
                   LEVEL_KEY: request_level(time_var, params["bin_width"])}
            if params["max_time"] is not None:
                out[FOLLOW_UP_KEY] = request_points(time_var, params["bin_width"], params["max_time"])[-1]
            return out
        if state.get("phase") == START:  # sums the central site needs pooled only: masked when secure
            counts = level_counts(data, request.x, model)
            return {"n": len(data), "level_counts": counts,
                    "group_n": [c for code in request.x for c in counts.get(code, [])],
                    "moments": compute_moments(rows["design"]).to_dict()}
        risk = _risk_sets(data, request, model, params, grid, state)
        n_bins = len(risk["leaving_events"])
        event_bins = np.asarray(state["event_bins"], dtype=np.int64)
        if event_bins.size and (event_bins.min() < 0 or event_bins.max() >= n_bins):
            raise RequestError("state.event_bins lies outside the common bins")
        efron = params["ties"] == "efron"
        beta = np.asarray(state["coefficients"], dtype=float)
        p = risk["design"].shape[0]
        own_events = risk["leaving_events"][event_bins]
        # every number below covers rows counted here (controls: 0 or >= nfilter_tab per bin)
        out = {"n": len(data), "n_events": int(risk["leaving_events"].sum()),  # up to the end of follow-up
               "group_counts": [int(v) for v in (*risk["leaving_events"], *risk["leaving_censored"])]}
        if state["phase"] == SUMS:
            # the per-bin sums, sealed to the participating nodes (ADR 0046): the central site never reads them
            sums, tied = _bin_sums(risk, beta, efron)
            # rows at risk at a bin: their time is in this bin or a later one
            at_risk = np.cumsum(sums[::-1], axis=0)[::-1][event_bins]
            sealed = {"events": pack(own_events, "the event counts"),
                      "s0": pack(at_risk[:, 0], "the risk-set sum S0"),
                      "s1": pack(at_risk[:, 1:1 + p], "the risk-set sum S1"),
                      "s2": pack(at_risk[:, 1 + p:], "the risk-set sum S2")}
            if efron:
                # the node's events in each event bin: as many rows as its released event count there
                tied = tied[event_bins]
                sealed.update({"e0": pack(tied[:, 0], "the tied-event sum E0"),
                               "e1": pack(tied[:, 1:1 + p], "the tied-event sum E1"),
                               "e2": pack(tied[:, 1 + p:], "the tied-event sum E2")})
            return {**out, SEALED: sealed}
        if state["phase"] != SCORE:
            raise RequestError(f"state.phase must be {SUMS!r} or {SCORE!r}")
        loglik, score, information = _node_share(pooled_sums(state, "a Cox score round"), own_events,
                                                 risk["event_x_sum"], beta, efron)
        upper_a, upper_b = np.triu_indices(p)
        return {**out, "loglik": loglik, "score": score.tolist(),
                "information": information[upper_a, upper_b].tolist()}

    def coarsen_for_release(self, round: int, aggregates: dict, min_count: int, bin_count: int | None = None) -> dict:
        """Round 0 (node disclosure controls): merge fine time bins until no count is in ``(0, min_count)``
        (the canonical release), coarsen them to the request's grid at their merged ends and cut them at
        ``max_time`` (:func:`~mipflow.algorithms.survival.shape_release`, as Kaplan-Meier's): a function
        of the canonical release, whose counts are checked too (``cell_n``, not sent), as are the level
        counts the start round releases (so a node is refused, and left out, at round 0 as before)."""
        series, level_cells = aggregates.get("series"), list(aggregates.get(LEVEL_CELLS, []))
        # node-only, never released (the level counts checked only: ``cell_n``)
        aggregates = {k: v for k, v in aggregates.items() if k not in ("series", LEVEL_CELLS)}
        if round != 0 or "ends" in aggregates:
            return ({**aggregates, "cell_n": [*aggregates.get("cell_n", []), *level_cells]} if level_cells
                    else aggregates)
        rest = {k: v for k, v in aggregates.items() if k not in (POINTS_KEY, FOLLOW_UP_KEY, LEVEL_KEY)}
        (shaped,), canonical = shape_release([{"events": aggregates["events"], "censored": aggregates["censored"],
                                               "series": series}],
                                             min_count, aggregates.get(POINTS_KEY), aggregates.get(FOLLOW_UP_KEY),
                                             int(aggregates.get(LEVEL_KEY, 1)), bin_count)
        return {**rest, "ends": shaped["ends"], "events": shaped["events"], "censored": shaped["censored"],
                "group_counts": [*shaped["events"], *shaped["censored"]], "cell_n": [*canonical, *level_cells]}

    # -- global -----------------------------------------------------------------

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        params = self.params(request, model)
        if state is None:
            return Step(done=False, state=self._bins(request, model, aggregates, params))
        if state["phase"] == START:
            return Step(done=False, state=self._start(request, model, aggregates, state))
        if state["phase"] == SUMS:
            # the nodes pool the sealed sums among themselves; here the round only moves on
            return Step(done=False, state={**state, "phase": SCORE})
        p = len(state["columns"])
        beta = np.asarray(state["coefficients"], dtype=float)
        if any(len(a["score"]) != p or len(a["information"]) != p * (p + 1) // 2 for a in aggregates):
            raise RequestError("a node's share of the Cox score or information does not fit the covariates")
        loglik = float(np.sum([float(a["loglik"]) for a in aggregates]))
        score = np.sum([np.asarray(a["score"], dtype=float) for a in aggregates], axis=0)
        information = _full_s2(np.sum([np.asarray(a["information"], dtype=float) for a in aggregates], axis=0), p)[0]

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
            return Step(done=False, state={**state, "coefficients": trial.tolist(), "halvings": halvings,
                                           "phase": SUMS})
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
            "halvings": 0, "phase": SUMS, "accepted": {"beta": beta.tolist(), "step": step.tolist(), "loglik": loglik}})

    @staticmethod
    def _bins(request: AnalysisRequest, model: DataModel, aggregates: list[dict], params: dict) -> dict:
        """Round 0's state: the common bins ``B`` and those holding events, from each node's bins."""
        time_var = model.variable(request.y[0])
        grid = fine_grid(time_var)
        n = sum(int(a["n"]) for a in aggregates)
        if n == 0:
            raise RequestError("no complete rows to fit")
        parts = [(a["ends"] if "ends" in a else list(range(len(grid))), a["events"], a["censored"]) for a in aggregates]
        if any(len(e) != len(ev) or len(ev) != len(ce) for e, ev, ce in parts):
            raise RequestError("a node's survival counts do not match its time bins")
        # one end of follow-up, a bin end of every node (rows followed longer are censored there)
        _, cut_parts = combine_parts(parts, request_points_array(time_var, params["bin_width"], None),
                                     int(request_points_array(time_var, params["bin_width"], params["max_time"])[-1]),
                                     len(grid))
        part_ends = [e for e, _, _ in cut_parts]
        ends = common_ends(part_ends)
        events = sum(rebin(e, ev, ends) for e, ev, _ in cut_parts)
        if events.sum() == 0:
            raise RequestError(f"no events ({request.y[1]} = {params['event_level']!r}) in the selected data")
        return {"ends": ends, "event_bins": np.flatnonzero(events > 0).tolist(), "phase": START}

    @staticmethod
    def _start(request: AnalysisRequest, model: DataModel, aggregates: list[dict], state: dict) -> dict:
        """The first sums round's state: the coding and the centre from the pooled level counts and
        moments (one pooled aggregate under secure aggregation), the coefficients at zero."""
        n = sum(int(a["n"]) for a in aggregates)
        if n == 0:
            raise RequestError("no complete rows to fit")
        counts = sum_level_counts([a["level_counts"] for a in aggregates])
        columns = select_design_columns(request.x, model, counts, intercept=False)
        if not columns:
            raise RequestError("no covariate varies in the selected data")
        if n <= len(columns):
            raise RequestError(f"Cox regression with {len(columns)} coefficients needs more rows than that, got {n}")
        means = merge_moment_dicts(a["moments"] for a in aggregates).mean
        candidates = design_columns(request.x, model, intercept=False)
        return {"ends": state["ends"], "event_bins": state["event_bins"], "columns": columns,
                "center": [float(means[candidates.index(c)]) for c in columns],
                "coefficients": [0.0] * len(columns), "iteration": 0, "final": False,
                "halvings": 0, "accepted": None, "phase": SUMS}

    @staticmethod
    def _result(request: AnalysisRequest, model: DataModel, params: dict, state: dict, beta: np.ndarray,
                cov: np.ndarray, loglik: float, aggregates: list[dict]) -> dict:
        from scipy import stats

        stderr = np.sqrt(np.diagonal(cov))
        z = beta / stderr
        q = stats.norm.ppf(1.0 - (1.0 - CONFIDENCE) / 2.0)
        lower, upper = beta - q * stderr, beta + q * stderr
        time_var = model.variable(request.y[0])
        ends = [int(e) for e in state["ends"]]
        grid = fine_grid(time_var)[:ends[-1] + 1]  # up to the end of follow-up used
        asked_end = request_points(time_var, params["bin_width"], params["max_time"])[-1]
        binning = {**binning_summary(time_var, grid, params["bin_width"], ends,
                                     request_points(time_var, params["bin_width"], None),
                                     request_level(time_var, params["bin_width"])),
                   "timeline": grid[np.asarray(ends, dtype=np.int64)]}
        if params["max_time"] is not None:
            how = ("moved down to the last time bin end every node released at or before max_time rounded up to "
                   "the grid (bins merged for disclosure control)" if ends[-1] < asked_end
                   else "max_time rounded up to the grid")
            binning.update({"max_time": float(params["max_time"]), "end_of_follow_up": float(grid[-1]),
                            "note": f"{binning['note']}; rows followed beyond end_of_follow_up ({how}) are "
                                    "censored there"})
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
            "ties": params["ties"],
            "binning": binning,
        })

    # -- privacy capabilities (mipflow.algorithms.contract) ------------------------------------

    #: The per-bin sums go to the participating nodes only (ADR 0046), masked in fixed point from 3
    #: participants, so that each peer learns only their pool (ADR 0055).
    sealed_rounds = True
    sealed_masked = True

    def sealed_mask_scheme(self, participants: int) -> str | None:
        """Fixed point in ``Z/2^256`` from 3 participants (ADR 0055); with 2, each node's pool less its
        own part is the other's part, masked or not, and with 1 there is no peer: sealed as they are."""
        return REAL_MASKED_SCHEME if participants >= 3 else None

    def pool_sealed(self, parts: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """The participants' per-bin sums added: masked parts decoded from their exact sum in the ring
        (refused below the fixed point's resolution), parts in the clear added as floats."""
        from mipflow.algorithms.sealed import is_masked, sum_parts, unmask_parts

        if not any(is_masked(part, REAL_MASKED_SCHEME) for part in parts):
            return sum_parts(parts)
        pooled = unmask_parts(parts, REAL_MASKED_SCHEME)
        if "s0" not in pooled or np.any(pooled["s0"] < MIN_MASKED_S0):
            raise RequestError("the pooled risk-set sums at this iterate fall below the resolution of the masked "
                               "fixed point (exp(x'b) too small for every row at risk in some bin)")
        return pooled
    #: Masked from 3 nodes: the score rounds only, whose shares of l, U, I add up (ADR 0048).
    secure_aggregation = "automatic"

    def masked_round(self, round: int, state: dict | None) -> bool:
        """The ``"start"`` round (pooled rows, level counts and moments, ADR 0055 amendment) and the
        ``"score"`` rounds are masked: round 0's bins are each node's own (the centre intersects their
        ends), and a ``"sums"`` round's sums travel sealed beside counts that round 0 already gave."""
        return isinstance(state, dict) and state.get("phase") in (START, SCORE)

    def secure_aggregates(self, aggregates: dict, request: AnalysisRequest, model: DataModel) -> dict:
        """A masked sum leaves out the counts the controls check: a score round's counts per common bin
        (in the clear in the sums round before, unused here) and the start round's level counts as a
        flat list (``group_n``, the same as ``level_counts``): ``n``, ``n_events`` and the share of
        l, U, I; or ``n``, ``level_counts`` and the moments."""
        return {k: v for k, v in aggregates.items() if k not in ("group_counts", "group_n")}

    def parameter_count(self, request: AnalysisRequest, model: DataModel) -> int | None:
        """The model's parameters, checked against ``nfilter_glm``: one per design column."""
        return len(design_columns(request.x, model))

    # No ``row_weights`` (ADR 0054, amendment): a per-risk-set measure refuses honest fits, whose last
    # risk sets and tied events are few rows by nature; Cox awaits a measure on its released shares.


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


# -- the node's arrays, kept between rounds (mipflow.algorithms.prepared) -----------------


def _rows_key(request: AnalysisRequest, model: DataModel, params: dict) -> str:
    # the rows' fine-grid points depend on the data model only; bin_width and max_time shape the bins B
    return json.dumps(["cox_regression", model.key, list(request.x), list(request.y), params["event_level"],
                       params["bin_width"], params["max_time"]], default=str)


def _rows(data: pd.DataFrame, request: AnalysisRequest, model: DataModel, params: dict,
          grid: np.ndarray) -> dict:
    """Grid index and event flag of every row, and the candidate design (all levels), shape (n, q)."""
    def build() -> dict:
        index, event = outcome(data, request, model, grid, params["event_level"])
        design, names = design_matrix(data, request.x, model, intercept=False)
        return {"index": index, "event": event, "design": design, "names": names}
    return memo(data, _rows_key(request, model, params), build)


def _risk_sets(data: pd.DataFrame, request: AnalysisRequest, model: DataModel, params: dict,
               grid: np.ndarray, state: dict) -> dict:
    """What later rounds need and that does not depend on the coefficients.

    Rows sorted (stably) by their bin of the common bins ``B``; ``bounds[j]:bounds[j+1]``
    are the rows leaving in bin ``j``.  ``design`` holds the centred covariates of the
    sorted rows column by column, shape (p, n); ``products`` (when it fits
    :data:`MAX_PRODUCTS_BYTES`) the columns ``x_a x_b (a <= b)``, shape (p(p+1)/2, n).
    """
    rows = _rows(data, request, model, params, grid)
    columns, center, ends = checked_state(request, model, params, state)
    key = json.dumps([_rows_key(request, model, params), ends, columns, center])

    def build() -> dict:
        names = rows["names"]
        design = rows["design"][:, [names.index(c) for c in columns]] - np.asarray(center)
        index, event = rows["index"], rows["event"]
        n_bins = len(ends)
        # rows followed beyond the end of follow-up (the last end) are censored there
        event = event & (index <= ends[-1])
        bins = np.minimum(np.searchsorted(np.asarray(ends, dtype=np.int64), index, side="left"), n_bins - 1)
        # within a bin, rows keep their order (a stable radix sort on 16-bit bin numbers)
        order = np.argsort(bins.astype(np.uint16) if n_bins <= 1 << 16 else bins, kind="stable")
        sorted_design = np.ascontiguousarray(design[order].T)
        out = {"design": sorted_design,
               "bounds": np.searchsorted(bins[order], np.arange(n_bins + 1), side="left"),
               "event": np.ascontiguousarray(event[order]),
               "leaving_events": np.bincount(bins[event], minlength=n_bins),
               "leaving_censored": np.bincount(bins[~event], minlength=n_bins),
               "event_x_sum": sums_in_order(design[event].T)}  # one value after another, as streamed
        p, n = sorted_design.shape
        if n * (p * (p + 1) // 2) * 8 <= MAX_PRODUCTS_BYTES:
            products = out["products"] = np.empty((p * (p + 1) // 2, n))
            for k, (a, b) in enumerate(zip(*np.triu_indices(p))):
                np.multiply(sorted_design[a], sorted_design[b], out=products[k])
        return out
    return memo(data, key, build)


def _product_columns(design: np.ndarray, products: np.ndarray | None):
    """The columns ``1, x_1..x_p, x_a x_b for a <= b`` (``numpy.triu_indices`` order) of a
    column-major design (shape (p, n)), one array of shape (n,) at a time; the cross products
    from ``products`` when they are kept, else formed one at a time."""
    p, n = design.shape
    yield np.ones(n)
    yield from design
    if products is not None:
        yield from products
    else:
        for a, b in zip(*np.triu_indices(p)):
            yield design[a] * design[b]


def _bin_sums(risk: dict, beta: np.ndarray, tied: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Per bin of ``B``: sums over the rows leaving there of ``w``, ``w x`` and ``w x_a x_b``
    (``w = exp(x'beta)``), shape (bins, 1 + p + p(p+1)/2); with ``tied`` also the same sums over
    the rows leaving there with an event (Efron's ties), else None.

    A sparse matrix (bins x rows, the weights as entries) times each product column; each
    bin's rows are added in their order at the node.
    """
    from scipy import sparse

    design, bounds = risk["design"], risk["bounds"]
    weight = np.exp(linear_predictor(design, beta, design.shape[1]))  # a row's own arithmetic, as streamed
    n_bins, (p, n) = len(bounds) - 1, design.shape
    columns = np.arange(n, dtype=np.int64)
    by_bin = sparse.csr_matrix((weight, columns, bounds), shape=(n_bins, n))
    by_bin_events = (sparse.csr_matrix((np.where(risk["event"], weight, 0.0), columns, bounds), shape=(n_bins, n))
                     if tied else None)
    out = np.empty((n_bins, 1 + p + p * (p + 1) // 2))
    out_events = np.empty_like(out) if tied else None
    for k, column in enumerate(_product_columns(design, risk.get("products"))):
        out[:, k] = by_bin @ column
        if by_bin_events is not None:
            out_events[:, k] = by_bin_events @ column
    return out, out_events
