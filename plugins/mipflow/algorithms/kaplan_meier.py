"""Kaplan–Meier survival curves on shared time bins, with a log-rank test.

``y = [time, event]`` (a numerical follow-up time and a nominal variable whose
level ``event_level`` marks the event; every other level is a censoring),
optional ``x`` = one nominal grouping variable.

One round.  Each node counts events and censorings per point of the
request's time grid, per group (:mod:`mipflow.algorithms.survival`); its
disclosure controls merge adjacent points until no released count is below
``nfilter_tab`` (:meth:`KaplanMeier.coarsen_for_release`).  The central side
intersects the nodes' bin ends, sums the counts and computes, at each bin
end where rows leave follow-up:

* at risk ``n_j`` (rows whose rounded time is at or after the bin end),
  events ``d_j``, censorings;
* survival ``S_j = prod_{i<=j} (1 - d_i / n_i)`` and Greenwood's standard
  error ``S_j sqrt(sum_{i<=j} d_i / (n_i (n_i - d_i)))`` (undefined once
  ``S`` reaches 0, as statsmodels' ``SurvfuncRight``);
* a pointwise confidence interval on the log(-log) scale (``ci_method``);

and a log-rank test of equal survival across the groups present (on the
bins common to every group; chi2 with ``groups - 1`` df, as statsmodels'
``survdiff``).  ``binning.method`` is ``exact`` only when every distinct time
had its own bin.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from mipflow.algorithms.contract import Step
from mipflow.algorithms.design import category_codes
from mipflow.algorithms.spec import NOMINAL, InputSpec, ParamSpec, SpecAlgorithm
from mipflow.algorithms.survival import (
    SURVIVAL_PARAMETERS,
    SURVIVAL_Y,
    binning_summary,
    check_outcome,
    coarsen_groups,
    common_ends,
    grid_counts,
    grid_for,
    outcome,
    rebin,
    released_cells,
)
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd


class KaplanMeier(SpecAlgorithm):
    name = "kaplan_meier"
    label = "Kaplan-Meier survival curves and log-rank test"
    description = ("Survival curves per group with Greenwood standard errors and log(-log) confidence "
                   "intervals, and a log-rank test across groups, on binned event times.")
    y_spec = SURVIVAL_Y
    x_spec = InputSpec(types=("int", "text"), stattypes=(NOMINAL,), notblank=False, multiple=False,
                       label="Grouping variable (optional)", description="A nominal variable: one curve per level.")
    parameter_specs = MappingProxyType({
        **SURVIVAL_PARAMETERS,
        # a confidence level here, unlike the tests' alpha; under 0.5 it is most likely a significance
        # level sent by mistake (ADR 0022)
        "alpha": ParamSpec(types=("real",), default=0.95, min=0.5, max=1.0, max_exclusive=True,
                           label="Confidence level (alpha)",
                           description="The confidence level of the survival intervals (0.95: 95 % "
                                       "intervals); at least 0.5 and below 1."),
    })

    def check(self, request: AnalysisRequest, model: DataModel) -> None:
        params = self.params(request, model)
        check_outcome(self.name, request, model, params["event_level"])
        grid_for(request, model, params)

    def _levels(self, request: AnalysisRequest, model: DataModel) -> list[str | None]:
        if not request.x:
            return [None]
        return list(model.variable(request.x[0]).enumeration_codes)

    # -- local ------------------------------------------------------------------

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        params = self.params(request, model)
        grid = grid_for(request, model, params)
        index, event = outcome(data, request, model, grid, params["event_level"])
        levels = self._levels(request, model)
        codes = (category_codes(data[request.x[0]], model.variable(request.x[0])).to_numpy()
                 if request.x else None)
        groups = []
        for level in levels:
            mask = np.ones(len(data), dtype=bool) if codes is None else codes == level
            events, censored = grid_counts(index[mask], event[mask], len(grid))
            groups.append({"level": level, "events": events.tolist(), "censored": censored.tolist()})
        # Fine counts: without coarsen_for_release a node refuses them (group_counts)
        return {"group_n": [int(sum(g["events"]) + sum(g["censored"])) for g in groups],
                "groups": groups, "group_counts": released_cells(groups)}

    def coarsen_for_release(self, round: int, aggregates: dict, min_count: int) -> dict:
        """Merge time bins until no count is in ``(0, min_count)`` (run by the node's disclosure controls)."""
        groups = coarsen_groups(aggregates["groups"], min_count)
        return {**aggregates, "groups": groups, "group_counts": released_cells(groups)}

    # -- global -----------------------------------------------------------------

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        from scipy import stats

        params = self.params(request, model)
        grid = grid_for(request, model, params)
        levels = self._levels(request, model)
        all_ends = [list(range(len(grid)))]
        per_group = []
        for g, level in enumerate(levels):
            parts = [a["groups"][g] for a in aggregates]
            part_ends = [p.get("ends", range(len(grid))) for p in parts]
            all_ends.extend(part_ends)
            ends = common_ends(part_ends)
            events = sum(rebin(e, p["events"], ends) for e, p in zip(part_ends, parts))
            censored = sum(rebin(e, p["censored"], ends) for e, p in zip(part_ends, parts))
            per_group.append((level, parts, part_ends, ends, np.asarray(events), np.asarray(censored)))
        if not any(ev.sum() + ce.sum() > 0 for *_, ev, ce in per_group):
            raise RequestError("no complete rows to estimate survival from")
        shared = common_ends(all_ends)
        q = stats.norm.ppf(0.5 + params["alpha"] / 2.0)
        curves = [_curve(level, grid, ends, events, censored, q)
                  for level, _, _, ends, events, censored in per_group if events.sum() + censored.sum() > 0]
        present = [(parts, part_ends) for level, parts, part_ends, _, ev, ce in per_group if ev.sum() + ce.sum() > 0]
        logrank = None
        if request.x and len(present) >= 2:
            events = np.vstack([sum(rebin(e, p["events"], shared) for e, p in zip(ends, parts))
                                for parts, ends in present])
            censored = np.vstack([sum(rebin(e, p["censored"], shared) for e, p in zip(ends, parts))
                                  for parts, ends in present])
            logrank = _logrank(events, censored)
            used = np.flatnonzero((events + censored).sum(axis=0) > 0)
            logrank["timeline"] = grid[np.asarray(shared)[used]]
        time_var = model.variable(request.y[0])
        return Step(done=True, result=json_ready({
            "time_variable": request.y[0],
            "event_variable": request.y[1],
            "event_level": params["event_level"],
            "grouping_variable": request.x[0] if request.x else None,
            "binning": binning_summary(time_var, grid, params["bin_width"], shared),
            "confidence": params["alpha"],
            "ci_method": "log-log",
            "curves": curves,
            "logrank": logrank,
        }))


def _curve(level: str | None, grid: np.ndarray, ends: list[int], events: np.ndarray, censored: np.ndarray,
           q: float) -> dict:
    """One group's survival curve at the bin ends where rows leave (events or censorings)."""
    leaving = events + censored
    at_risk = np.cumsum(leaving[::-1])[::-1]
    used = np.flatnonzero(leaving > 0)
    d, n = events[used], at_risk[used]
    survival = np.cumprod(1.0 - d / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(n > d, d / (n * (n - d)), np.nan)
        stderr = survival * np.sqrt(np.cumsum(terms))
        log_s = np.log(survival)
        half = q * stderr / (survival * np.abs(log_s))
        lower = np.exp(-np.exp(np.log(-log_s) + half))
        upper = np.exp(-np.exp(np.log(-log_s) - half))
    at_one = survival >= 1.0
    lower[at_one] = upper[at_one] = 1.0
    return {
        "group": level,
        "n_obs": int(leaving.sum()),
        "n_events": int(events.sum()),
        "timeline": grid[np.asarray(ends, dtype=np.int64)[used]],
        "at_risk": n.astype(np.int64),
        "events": d.astype(np.int64),
        "censored": censored[used].astype(np.int64),
        "survival": survival,
        "stderr": stderr,
        "lower_ci": lower,
        "upper_ci": upper,
    }


def _logrank(events: np.ndarray, censored: np.ndarray) -> dict:
    """Log-rank test from per-group counts on common bins, shape (groups, bins)."""
    from scipy import stats

    at_risk = np.cumsum((events + censored)[:, ::-1], axis=1)[:, ::-1].astype(float)
    total_risk = at_risk.sum(axis=0)
    total_events = events.sum(axis=0).astype(float)
    keep = total_risk > 1
    share = at_risk[:, keep] / total_risk[keep]
    d, n = total_events[keep], total_risk[keep]
    observed = events[:, keep].sum(axis=1).astype(float)
    expected = (share * d).sum(axis=1)
    scale = d * (n - d) / (n - 1.0)
    k = events.shape[0]
    cov = np.empty((k, k))
    for g in range(k):
        for h in range(k):
            cov[g, h] = np.sum(scale * share[g] * ((g == h) - share[h]))
    diff = (observed - expected)[1:]
    df = k - 1
    try:
        chi2 = float(diff @ np.linalg.solve(cov[1:, 1:], diff))
    except np.linalg.LinAlgError:  # e.g. no events at all: the test is undefined
        chi2 = float("nan")
    return {"chi2": chi2, "df": df, "p_value": float(stats.chi2.sf(chi2, df)),
            "observed": observed, "expected": expected}
