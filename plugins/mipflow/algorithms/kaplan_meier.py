"""Kaplan–Meier survival curves on shared time bins, with a log-rank test.

``y = [time, event]`` (a numerical follow-up time and a nominal variable whose
level ``event_level`` marks the event; every other level is a censoring),
optional ``x`` = one nominal grouping variable.

One round (per-node bins; pooled bins: below).  Each node counts events and censorings per point of the data
model's **fine grid** of the time variable, per group
(:mod:`mipflow.algorithms.survival`); its disclosure controls merge adjacent
points until no released count is below ``nfilter_tab`` (the canonical
release, which no request parameter shapes), then coarsen it to the
request's grid (for each point of ``origin + k * bin_width``, the last merged
end of the request's level at or before it) and, if the request gives ``max_time``, cut it at the
last bin end at or before it (later bins folded into censorings there)
(:meth:`KaplanMeier.coarsen_for_release`): every release is post-processing
of the canonical one (issue 14.4).  The central side intersects the nodes'
bin ends, cuts every node's bins at the last common end at or before
``max_time`` (``binning.end_of_follow_up``), sums the counts and computes, at
each bin end where rows leave follow-up:

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

Pooled bins (ADR 0052)
----------------------
Per-node bins keep few time points at a few hundred patients per node (each node's own counts
must reach ``nfilter_tab`` and only the ends common to every node survive).  With ``survival_bins =
"pooled"`` (decided by the central site: ``auto`` when secure aggregation masks at least 3 pinned
participants) the analysis takes two rounds: the nodes seal their fine counts to each other, masked
(each learns only the pool), then each derives the same bins from the pooled counts (every pooled
count 0 or at least ``nfilter_tab``) and releases its own counts on them masked
(:mod:`mipflow.algorithms.survival_pooled`; the node's rule: :mod:`mipflow.node.controls.pooled_bins`).
The result says which: ``binning.partition`` is ``pooled`` or ``per_node``.

Noisy release (explore mode, a node with differential privacy; ADR 0032)
-----------------------------------------------------------------------
:data:`KaplanMeier.dp_release`: the node counts events and censorings per group and per point of the
request's grid on the fine grid (:func:`~mipflow.algorithms.survival.request_points`, from the request and
the data model only) and adds noise to every count, with **no
bin merged**: the noise protects the small cells.  One row (add or remove) is in exactly one group
and leaves follow-up at exactly one grid point, as an event or as a censoring, so it changes one
count of the vector ``(events, censored)`` of its group by 1 and nothing else: sensitivity L1 = L2
= 1 per group, and the groups (levels of the grouping variable, complete cases) are disjoint
parts of one block, composed in parallel.  The node releases the noisy counts as they are (signed
integers) and the sd of their noise; the central side (:func:`_noisy_survival`) sums them on the
common grid and post-processes: at risk at a grid point = the noisy total less the noisy events and
censorings before it (= the noisy counts summed from the end), made non-increasing and >= 0;
survival from the signed noisy events (no clamping bias), made non-increasing within [0, 1]; the
counts shown are clamped to >= 0.  Each curve carries the first-order sd of the noise on its
survival (``noise_sd``); its intervals combine Greenwood's variance with that of the noise.  An explore
node also carries its decision count (``row_count``: the reply's ``rows``, ``DPRelease.decision_key``);
its cells are shifted alike to agree with it before summing, which anchors the at-risk totals of a long
grid (:func:`~mipflow.algorithms.survival_noise.with_decision_count`).  A group the noise leaves with
nobody at risk has no curve and the result's ``noise.warnings`` says so: never a failure.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from mipflow.algorithms.contract import ReleasedGroups, Step
from mipflow.algorithms.design import category_codes
from mipflow.algorithms.dp_release import DPRelease, Noise, Released, one_block
from mipflow.algorithms import survival_pooled as pooled_bins
from mipflow.algorithms.sealed import SEALED, pooled_sums
from mipflow.algorithms.spec import NOMINAL, InputSpec, ParamSpec, SpecAlgorithm
from mipflow.algorithms.survival_noise import (ROW_COUNT_KEY, loglog_band, noisy_curve, noisy_logrank,
                                               with_decision_count)
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
    point_outcome,
    rebin,
    released_cells,
    request_level,
    request_points,
    leaving_series,
    shape_release,
)
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd

#: The block of the noisy release (one vector of counts per group, the groups its parts).
DP_BLOCK = "survival_counts"

DP_NOTE = ("survival from noisy counts of events and censorings per time bin (no bin merged): at risk is the noisy "
           "total less the noisy events and censorings before each time, made non-increasing (in explore mode "
           "each node's total is its noisy decision count combined with the sum of its cells by inverse "
           "variance, every cell shifted alike); survival is "
           "post-processed to be non-increasing within [0, 1]; noise_sd is the first-order sd of the noise on "
           "the survival; stderr is Greenwood's (sampling only) and the intervals combine both; the log-rank "
           "test adds the variance of the noise on the events (not on the at-risk counts)")


# --------------------------------------------------------------------------- differential privacy


def _dp_release(algo: KaplanMeier, data: pd.DataFrame, request: AnalysisRequest, model: DataModel,
                noise: Noise) -> Released:
    """Noisy events and censorings per group and grid point (see the module docstring)."""
    params = algo.params(request, model)
    time_var = model.variable(request.y[0])
    points = request_points(time_var, params["bin_width"], params["max_time"])
    index, event = point_outcome(data, request, model, points, params["event_level"])
    levels = algo._levels(request, model)
    codes = (category_codes(data[request.x[0]], model.variable(request.x[0])).to_numpy()
             if request.x else None)
    k = len(points)
    groups = []
    for level in levels:
        mask = np.ones(len(data), dtype=bool) if codes is None else codes == level
        events, censored = grid_counts(index[mask], event[mask], k)
        noisy = noise.add(np.concatenate([events, censored]), 1, block=DP_BLOCK,
                          part="" if level is None else str(level), integer=True)
        groups.append({"level": level, "events": noisy[:k].tolist(), "censored": noisy[k:].tolist()})
    # the times are rounded up to the grid: below its origin into the first point, beyond its end censored there
    fine = fine_grid(time_var)
    clamped = {request.y[0]: [float(fine[points[0]]), float(fine[points[-1]])]}
    return {"group_n": [max(int(sum(g["events"]) + sum(g["censored"])), 0) for g in groups], "groups": groups,
            "noise": {"sd": noise.sd(1), "unit": "count", "mechanism": noise.mechanism}}, clamped


def _dp_rows(aggregates: dict) -> int:
    return max(int(sum(sum(g["events"]) + sum(g["censored"]) for g in aggregates["groups"])), 0)


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
        pooled_bins.BINS_PARAMETER: ParamSpec(
            types=("text",), default=pooled_bins.AUTO, notblank=True,
            enums=(pooled_bins.AUTO, pooled_bins.POOLED, pooled_bins.PER_NODE), label="Time bins",
            description="pooled: one partition derived from the nodes' pooled counts, every pooled count at "
                        "least nfilter_tab, each node's counts masked (needs secure aggregation among at least "
                        "3 nodes); per_node: each node's own safe bins, the ends common to all kept; auto "
                        "(default): pooled when the analysis is masked among at least 3 nodes "
                        "(docs/adr/0052-pooled-survival-bins.md)"),
        "alpha": ParamSpec(types=("real",), central_only=True, default=0.95, min=0.5, max=1.0, max_exclusive=True,
                           label="Confidence level (alpha)",
                           description="The confidence level of the survival intervals (0.95: 95 % "
                                       "intervals); at least 0.5 and below 1."),
    })

    def check(self, request: AnalysisRequest, model: DataModel) -> None:
        params = self.params(request, model)
        check_outcome(self.name, request, model, params["event_level"])
        # the fine grid needs the declared range in every mode; the request's grid is checked too
        request_points(model.variable(request.y[0]), params["bin_width"], params["max_time"])

    def released_groups(self, request: AnalysisRequest, model: DataModel) -> tuple[ReleasedGroups, ...]:
        """One curve per level of the grouping variable: each level's rows are a group whose counts per time
        bin are released, held across releases by the group memory (ADR 0051; twenty-fourth review: two
        cohorts far apart whose ``hospital_a`` curves differ by one patient)."""
        return (ReleasedGroups((request.x[0],)),) if request.x else ()

    def _levels(self, request: AnalysisRequest, model: DataModel) -> list[str | None]:
        if not request.x:
            return [None]
        return list(model.variable(request.x[0]).enumeration_codes)

    # -- local ------------------------------------------------------------------

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        params = self.params(request, model)
        # counted on the data model's fine grid whatever bin_width and max_time: the merge is the canonical
        # release, the request coarsens and cuts it afterwards (issue 14.4)
        time_var = model.variable(request.y[0])
        fine = fine_grid(time_var)
        index, event = outcome(data, request, model, fine, params["event_level"])
        levels = self._levels(request, model)
        codes = (category_codes(data[request.x[0]], model.variable(request.x[0])).to_numpy()
                 if request.x else None)
        groups = []
        for level in levels:
            mask = np.ones(len(data), dtype=bool) if codes is None else codes == level
            events, censored = grid_counts(index[mask], event[mask], len(fine))
            # per level of the event variable: the merge's input, never released (ADR 0008)
            groups.append({"level": level, "events": events.tolist(), "censored": censored.tolist(),
                           "series": leaving_series(index, data, request, model, fine, mask)})
        group_n = [int(sum(g["events"]) + sum(g["censored"])) for g in groups]
        if pooled_bins.is_pooled(params):  # one partition from the pooled counts (ADR 0052)
            if state is None:  # round 0: the fine counts sealed (masked) to the participants, group_n in the clear
                return {"group_n": group_n, SEALED: pooled_bins.sealed_counts(groups)}
            if state.get("phase") != pooled_bins.PHASE:
                raise RequestError(f"state.phase must be {pooled_bins.PHASE!r}")
            pool = pooled_sums(state, "Kaplan-Meier's pooled time bins")
            out = {"group_n": group_n, "nodes": 1,
                   "groups": [{k: g[k] for k in ("events", "censored", "series")} for g in groups],
                   pooled_bins.POOL_KEY: pool, POINTS_KEY: request_points(time_var, params["bin_width"], None),
                   LEVEL_KEY: request_level(time_var, params["bin_width"])}
            if params["max_time"] is not None:
                out[FOLLOW_UP_KEY] = request_points(time_var, params["bin_width"], params["max_time"])[-1]
            return out
        # Fine counts: without coarsen_for_release a node refuses them (group_counts)
        out = {"group_n": group_n,
               "groups": groups, "group_counts": released_cells(groups),
               # the request's grid on the fine grid (from the request and the data model)
               POINTS_KEY: request_points(time_var, params["bin_width"], None),
               LEVEL_KEY: request_level(time_var, params["bin_width"])}
        if params["max_time"] is not None:
            # the fine index of max_time rounded up to the request's grid
            out[FOLLOW_UP_KEY] = request_points(time_var, params["bin_width"], params["max_time"])[-1]
        return out

    def coarsen_for_release(self, round: int, aggregates: dict, min_count: int, bin_count: int | None = None) -> dict:
        """Merge fine time bins until no count is in ``(0, min_count)`` (run by the node's disclosure
        controls: the canonical release, :func:`~mipflow.algorithms.survival.canonical_bins`), coarsen
        them to the request's grid at their merged ends of the request's level
        (:func:`~mipflow.algorithms.survival.coarsen_to`) and, with ``max_time``, cut them there
        (:func:`~mipflow.algorithms.survival.truncate_bins`).

        The merge sees neither ``bin_width`` nor ``max_time``: every release is a function of the
        canonical one.  Its counts are checked too (``cell_n``, checked and not sent), so every request
        is refused exactly when the canonical release would be."""
        if pooled_bins.POOL_KEY in aggregates:  # round 1 of pooled bins: pooled cells checked (ADR 0052)
            return pooled_bins.pooled_release(aggregates, min_count)
        if "groups" not in aggregates:  # round 0 of pooled bins: group_n only in the clear
            return aggregates
        last = aggregates.get(FOLLOW_UP_KEY)
        points = aggregates.get(POINTS_KEY)
        rest = {k: v for k, v in aggregates.items() if k not in (FOLLOW_UP_KEY, POINTS_KEY, LEVEL_KEY)}
        shaped, canonical = shape_release(aggregates["groups"], min_count, points, last,
                                          int(aggregates.get(LEVEL_KEY, 1)), bin_count)
        return {**rest, "groups": shaped, "group_counts": released_cells(shaped), "cell_n": canonical}

    # -- privacy capabilities (mipflow.algorithms.contract) ------------------------------------

    dp_release = DPRelease(one_block, _dp_release, _dp_rows, note=DP_NOTE, decision_key=ROW_COUNT_KEY)

    #: Pooled bins (ADR 0052): round 0's fine counts go to the participating nodes only, masked so
    #: that each learns the pool; round 1 is masked.  Per-node bins: one round in the clear.
    sealed_rounds = True
    sealed_masked = True
    secure_aggregation = "automatic"

    def masked_round(self, round: int, state: dict | None) -> bool:
        """Only round 1 of pooled bins is masked (state phase ``pooled``): round 0 releases per-node
        ``group_n`` (and, with per-node bins, each node's own bins, which the centre intersects)."""
        return isinstance(state, dict) and state.get("phase") == pooled_bins.PHASE

    def secure_aggregates(self, aggregates: dict, request: AnalysisRequest, model: DataModel) -> dict:
        """The masked sum of round 1: the node's counts in slots, ``group_n`` and ``nodes`` (the pooled
        cells the controls checked stay out: every node derived the same)."""
        return {k: v for k, v in aggregates.items() if k in ("slots", "group_n", "nodes")}

    def pool_sealed(self, parts: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """Round 0's fine counts added (their masks cancel in the sum)."""
        return pooled_bins.pool(parts)

    def pooled_threshold(self, request: AnalysisRequest, model: DataModel) -> bool:
        """Whether the request's bins are derived from pooled counts (checked against ``nfilter_tab``
        pooled): the node then requires masking among pinned participants and one participant set and
        pool per cohort (:mod:`mipflow.node.controls.pooled_bins`)."""
        return pooled_bins.is_pooled(self.params(request, model))

    def session_request(self, request: dict, masked_participants: int, fallback: bool) -> dict:
        """The request of one attempt of the central site: ``survival_bins = auto`` decided
        (:func:`mipflow.algorithms.survival_pooled.resolve`)."""
        parameters = pooled_bins.resolve(request.get("parameters") or {}, masked_participants, fallback)
        return {**request, "parameters": parameters}

    # -- global -----------------------------------------------------------------

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        if any("noise" in a for a in aggregates):
            return Step(done=True, result=json_ready(_noisy_survival(self, aggregates, request, model)))
        partition = "per_node"
        if state is None and aggregates and all("groups" not in a for a in aggregates):
            # round 0 of pooled bins: the nodes pool their sealed counts; the masked round follows
            return Step(done=False, state={"phase": pooled_bins.PHASE})
        if state is not None:
            if state.get("phase") != pooled_bins.PHASE:
                raise RequestError(f"state.phase must be {pooled_bins.PHASE!r}")
            if all("slots" in a for a in aggregates):
                aggregates = [{"groups": pooled_bins.read_slots(aggregates)}]
                partition = "pooled"
        elif any("groups" not in a for a in aggregates):
            raise RequestError("some nodes answered with pooled time bins and others with their own")
        params = self.params(request, model)
        time_var = model.variable(request.y[0])
        fine = fine_grid(time_var)
        points = request_points(time_var, params["bin_width"], None)
        asked_end = request_points(time_var, params["bin_width"], params["max_time"])[-1]
        levels = self._levels(request, model)
        by_group = [[_part(a["groups"][g], len(fine)) for a in aggregates] for g in range(len(levels))]
        # one end of follow-up for the whole result, a bin end of every node and group
        cut, _ = combine_parts([p for parts in by_group for p in parts], points, asked_end, len(fine))
        grid = fine[:cut + 1]
        all_ends = [list(range(len(grid)))]
        per_group = []
        for level, full_parts in zip(levels, by_group):
            _, folded = combine_parts(full_parts, points, cut, len(fine))
            parts = [{"events": ev, "censored": ce} for _, ev, ce in folded]
            part_ends = [e for e, _, _ in folded]
            all_ends.extend(part_ends)
            ends = common_ends(part_ends)
            events = sum(rebin(e, p["events"], ends) for e, p in zip(part_ends, parts))
            censored = sum(rebin(e, p["censored"], ends) for e, p in zip(part_ends, parts))
            per_group.append((level, parts, part_ends, ends, np.asarray(events), np.asarray(censored)))
        if not any(ev.sum() + ce.sum() > 0 for *_, ev, ce in per_group):
            raise RequestError("no complete rows to estimate survival from")
        shared = common_ends(all_ends)
        from scipy import stats  # here: a node verifying round 1 goes through the branches above only

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
        return Step(done=True, result=json_ready({
            "time_variable": request.y[0],
            "event_variable": request.y[1],
            "event_level": params["event_level"],
            "grouping_variable": request.x[0] if request.x else None,
            "binning": _partition_label(_with_follow_up(
                binning_summary(time_var, grid, params["bin_width"], shared, points,
                                request_level(time_var, params["bin_width"])),
                params, grid, cut_moved=cut < asked_end), partition),
            "confidence": params["alpha"],
            "ci_method": "log-log",
            "curves": curves,
            "logrank": logrank,
        }))


def _part(group: dict, default_ends: int | Sequence[int]) -> tuple[list[int], list, list]:
    """A node's bins of one group: its bin ends (fine-grid indices; when it sent unmerged counts,
    ``default_ends``: every fine point, as a count, or the request's points of a noisy release) and
    counts."""
    events, censored = group["events"], group["censored"]
    ends = group.get("ends")
    if ends is None:
        ends = range(default_ends) if isinstance(default_ends, int) else default_ends
    if len(ends) != len(events) or len(events) != len(censored):
        raise RequestError("a node's survival counts do not match its time bins")
    return list(ends), list(events), list(censored)


def _partition_label(binning: dict, partition: str) -> dict:
    """``binning`` saying whose bins these are: ``pooled`` (one partition derived from the nodes' pooled
    counts, every pooled count at least nfilter_tab, each node's counts masked: ADR 0052) or
    ``per_node`` (each node's own safe bins, the ends common to every node kept)."""
    how = ("one partition derived by every node from the nodes' pooled counts (every pooled count 0 or at least "
           "nfilter_tab), each node's counts masked" if partition == "pooled" else
           "each node's own bins (every node's counts 0 or at least nfilter_tab), the ends common to every node")
    return {**binning, "partition": partition, "note": f"{binning['note']}; time bins: {how}"}


def _with_follow_up(binning: dict, params: dict, grid: np.ndarray, cut_moved: bool) -> dict:
    """``binning`` with the end of follow-up used, when the request gave ``max_time``."""
    if params["max_time"] is None:
        return binning
    how = ("moved down to the last time bin end every node released at or before max_time rounded up to the "
           "grid (bins merged for disclosure control)" if cut_moved else "max_time rounded up to the grid")
    return {**binning, "max_time": float(params["max_time"]), "end_of_follow_up": float(grid[-1]),
            "note": f"{binning['note']}; rows followed beyond end_of_follow_up ({how}) are censored there"}


def _curve(level: str | None, grid: np.ndarray, ends: list[int], events: np.ndarray, censored: np.ndarray,
           q: float) -> dict:
    """One group's survival curve at the bin ends where rows leave (events or censorings)."""
    leaving = events + censored
    at_risk = np.cumsum(leaving[::-1])[::-1]
    used = np.flatnonzero(leaving > 0)
    d, n = events[used], at_risk[used]
    survival = np.cumprod(1.0 - d / n)
    stderr, lower, upper = loglog_band(survival, d, n, q)
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


# --------------------------------------------------------------------------- noisy counts, combined


def _noisy_survival(algo: KaplanMeier, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel) -> dict:
    """The result from noisy counts (some nodes may have released exact, merged bins).

    The counts are summed on the bins every node's bins nest in (the whole fine grid when every
    node added noise); each summed count carries the variance of the noise of the nodes that added
    noise (their sd squared, times the fine points in the bin).  An explore node's cells are first
    made to agree with its decision count (:func:`~mipflow.algorithms.survival_noise.with_decision_count`).
    A group the noise leaves with nobody at risk has no curve, and the result says so in
    ``noise.warnings`` (also when no group has one): never a failure, as every node was admitted on
    rows it holds.
    """
    from scipy import stats

    shifted = [with_decision_count(a) for a in aggregates]
    aggregates = [a for a, _ in shifted]
    constraint = sum(weight for _, weight in shifted)
    params = algo.params(request, model)
    time_var = model.variable(request.y[0])
    fine = fine_grid(time_var)
    points = request_points(time_var, params["bin_width"], None)
    asked = request_points(time_var, params["bin_width"], params["max_time"])  # a noisy node's bin ends
    levels = algo._levels(request, model)
    by_group = [[_part(a["groups"][g], asked if "noise" in a else len(fine)) for a in aggregates]
                for g in range(len(levels))]
    # exact nodes' bins end at their cut of max_time (ADR 0008): every node's counts are cut at the common end
    cut, _ = combine_parts([p for parts in by_group for p in parts], points, asked[-1], len(fine))
    grid = fine[:cut + 1]
    cut_parts = [combine_parts(by_group[g], points, cut, len(fine))[1] for g in range(len(levels))]
    shared = common_ends([range(cut + 1)] + [part[0] for parts in cut_parts for part in parts])
    # noisy counts per common bin: the noisy nodes' request points in it
    noisy_points = np.asarray([p for p in asked if p <= cut], dtype=np.int64)
    width = np.bincount(np.searchsorted(np.asarray(shared), noisy_points, side="left"), minlength=len(shared))
    variance = width * sum(float(a["noise"]["sd"]) ** 2 for a in aggregates if "noise" in a)
    # the noisy counts after the cut (events and censorings), folded into the censorings there (none unless an
    # exact node cut earlier)
    folded_points = max((len(a["groups"][0]["events"]) - len(noisy_points) for a in aggregates
                         if "noise" in a and a["groups"]), default=0)
    folded_variance = 2 * max(folded_points, 0) * sum(float(a["noise"]["sd"]) ** 2 for a in aggregates
                                                      if "noise" in a)
    q = stats.norm.ppf(0.5 + params["alpha"] / 2.0)
    curves, present, empty = [], [], []
    for g, level in enumerate(levels):
        parts = cut_parts[g]
        events = sum(rebin(e, ev, shared) for e, ev, _ in parts)
        censored = sum(rebin(e, ce, shared) for e, _, ce in parts)
        curve = noisy_curve(events, censored, variance, q, censored_tail=folded_variance, width=width,
                            folded_cells=2 * max(folded_points, 0), constraint=constraint)
        if curve is None:  # nobody at risk in this group (as the noisy counts tell)
            empty.append(level)
            continue
        present.append((np.asarray(events, dtype=float), curve["_at_risk"]))
        used = curve.pop("_used")
        curve.pop("_at_risk")
        curves.append({"group": level, "timeline": grid[np.asarray(shared)[used]], **curve})
    logrank = None
    if request.x and len(present) >= 2:
        logrank = noisy_logrank(np.vstack([e for e, _ in present]), np.vstack([n for _, n in present]), variance)
        logrank["timeline"] = grid[np.asarray(shared)]
    binning = binning_summary(time_var, grid, params["bin_width"], shared, points,
                              request_level(time_var, params["bin_width"]))
    binning["note"] = ("times rounded up to the bin ends (timeline); noisy counts per bin, none merged; "
                       "an approximation of the analysis of the rounded times")
    binning["method"] = "binned"
    binning = _with_follow_up(binning, params, grid, cut_moved=cut < asked[-1])
    noisy = [a["noise"] for a in aggregates if "noise" in a]
    anchored = sum(1 for _, weight in shifted if weight > 0)
    return {
        "time_variable": request.y[0],
        "event_variable": request.y[1],
        "event_level": params["event_level"],
        "grouping_variable": request.x[0] if request.x else None,
        "binning": binning,
        "confidence": params["alpha"],
        "ci_method": "log-log",
        "curves": curves,
        "logrank": logrank,
        "noise": {"approximate": True, "noisy_nodes": len(noisy), "exact_nodes": len(aggregates) - len(noisy),
                  "node_cell_sd": [float(n["sd"]) for n in noisy],
                  "cell_sd": float(math.sqrt(sum(float(n["sd"]) ** 2 for n in noisy))),
                  "decision_counts": anchored, "warnings": _empty_warnings(empty, len(levels), params),
                  "note": DP_NOTE},
    }


def _empty_warnings(empty: list[str | None], groups: int, params: dict) -> list[str]:
    """What the result says when the noise left a group (or every group) with nobody at risk: no curve for
    it, and what to ask instead (noisy cells add up over a long grid)."""
    if not empty:
        return []
    advice = ("; the noisy counts of a long grid add up: give max_time near the end of follow-up or a wider "
              "bin_width" if params["max_time"] is None else "; give a wider bin_width or a shorter max_time")
    if len(empty) == groups:
        return ["no survival curve: the noisy counts leave nobody at risk in any group" + advice]
    names = ", ".join(str(level) for level in empty)
    return [f"no survival curve for group(s) {names}: the noisy counts leave nobody at risk there" + advice]
