"""Cox regression's local step over rows left on disk (ADR 0062, amendment 16), a chunk at a time.

:meth:`mipflow.algorithms.cox_regression.CoxRegression.local_step` of a
:class:`mipflow.node.query.snapshot_rows.SnapshotRows` (``streams_rows``): the same release as its frame
path, bit for bit, without the rows ever whole in memory and without keeping anything per row between
rounds.  Every round is a pass (or two) over the selection, :data:`CHUNK_ROWS` rows at a time; each chunk's
rows are worked out again from the snapshot's columns (the time's fine-grid point, the event, the bin of
``B``, the centred covariates, ``w = exp(x'b)``, the product columns), which the frame path builds once
per analysis and keeps (:mod:`mipflow.algorithms.prepared`): the cost is time, not memory.

Why the same bits:

* counts (round 0's events, censorings, series, level and cell counts; every round's counts per bin of
  ``B``) are integer sums: any chunking gives the frame's;
* round 1's moments are :func:`mipflow.algorithms.moments.streamed_column_moments` of the candidate design
  (:class:`mipflow.algorithms.design.DesignSource`), ``compute_moments`` of the frame's Fortran-ordered
  design bit for bit;
* a sums round's per-bin sums: the frame path adds each bin's rows in their order at the node (a CSR
  row-by-vector product over the rows sorted stably by bin, starting from 0); here each chunk's values
  are added to the running totals in the same order, one add a row (:func:`_add_in_order`: ``bincount``
  of the running totals followed by the chunk's values, a sequential loop).  ``w`` is
  :func:`mipflow.algorithms.linear_regression_cv.linear_predictor` (each row's own arithmetic; the frame
  path uses it too since this amendment, where it used ``beta @ design``, a BLAS product);
* ``event_x``: each covariate's values over the event rows added one after another from 0
  (:func:`sums_in_order`), on both paths since this amendment (the frame path's ``design[event].sum(axis=0)``
  did so for two covariates or more, a C-ordered reduction over rows, but for one covariate was numpy's
  pairwise sum, which a chunked pass cannot follow without a second pass).

Memory: a chunk (its columns, ``1 + p + p(p+1)/2`` product columns of it, Efron's as many again) and the
per-bin totals; nothing a row.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from mipflow.algorithms.design import (
    REST,
    DesignSource,
    design_columns,
    level_positions,
    sorted_levels,
    streamed_counts,
)
from mipflow.algorithms.linear_regression_cv import linear_predictor
from mipflow.algorithms.moments import streamed_column_moments
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest

__all__ = ["CHUNK_ROWS", "round_zero", "start_round", "risk_pass", "event_pass", "sums_in_order"]

#: Rows read and worked out at a time (a chunk's columns, its product columns).
CHUNK_ROWS = 65_536


def _looked_up(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``table`` at each stored level code; its last entry for a missing value (code -1)."""
    return table[np.where(codes >= 0, codes, len(table) - 1)]


def _chunks(rows: Any, codes: list[str], size: int | None = None) -> Iterator[list[np.ndarray]]:
    """The selection's columns ``codes`` a chunk at a time (arrays valid until the next chunk)."""
    n, size = len(rows), size or CHUNK_ROWS
    if not n:
        return
    next_rows = rows.reader(codes)
    for start in range(0, n, size):
        yield next_rows(min(size, n - start))


class _Outcome:
    """Each chunk's rows' fine-grid index and event (:func:`mipflow.algorithms.survival.outcome`), their
    event variable's enumeration level and whether they are followed beyond the grid."""

    def __init__(self, rows: Any, request: AnalysisRequest, model: DataModel, grid: np.ndarray,
                 event_level: str) -> None:
        self.grid = grid
        self.time, self.event_code = request.y[0], request.y[1]
        stored = [str(s) for s in rows.levels_of(self.event_code)]
        self.is_event = np.array([s == str(event_level) for s in stored] + [False], dtype=bool)
        levels = [str(c) for c in model.variable(self.event_code).enumeration_codes]
        # each stored code's position among the enumeration codes (-1: none; last: missing)
        self.level_at = np.array([levels.index(s) if s in levels else -1 for s in stored] + [-1], dtype=np.int64)
        self.levels = levels

    def of(self, times: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(index, event, beyond)`` of a chunk (as ``outcome`` gives them)."""
        index = np.searchsorted(self.grid, times, side="left")
        beyond = index >= len(self.grid)
        index[beyond] = len(self.grid) - 1
        return index.astype(np.int64), _looked_up(self.is_event, codes) & ~beyond, beyond


def _label_tables(rows: Any, grouping: Any, model: DataModel) -> list[tuple[str, np.ndarray, list[str]]]:
    """Per column of a nominal grouping: its code, each stored level code's label index (-1: in no released
    cell) and the labels (:func:`mipflow.algorithms.design.grouping_codes`' values)."""
    out = []
    for i, column in enumerate(grouping.columns):
        if grouping.bins is not None and grouping.bins[i] is not None:
            raise RequestError("a binned released group is not read from rows on disk here")
        stored = [str(s) for s in rows.levels_of(column)]
        wanted = None if grouping.levels is None else grouping.levels[i]
        allowed = None if wanted is None else set(map(str, wanted))
        other = None if allowed is None or not grouping.rest else REST + "|".join(sorted(allowed))
        labels: list[str] = []
        table = []
        for s in stored:
            label = s if allowed is None or s in allowed else other
            if label is not None and label not in labels:
                labels.append(label)
            table.append(-1 if label is None else labels.index(label))
        out.append((column, np.array(table + [-1], dtype=np.int64), labels))
    return out


def round_zero(rows: Any, request: AnalysisRequest, model: DataModel, grid: np.ndarray, event_level: str,
               last: int, groupings: tuple) -> dict[str, Any]:
    """Round 0's counts of rows on disk, one pass (the level counts a second, ``streamed_counts``):
    ``events`` / ``censored`` per fine point, the event variable's ``series``, the ``level_counts``, the
    ``declared`` cells of ``groupings`` (sorted as ``groupby(sort=True)``, empty ones left out) and the
    ``class_cells`` (events up to the fine point ``last`` and the rest, per level of each nominal
    covariate), as the frame path computes them."""
    outcome = _Outcome(rows, request, model, grid, event_level)
    nominal = [c for c in dict.fromkeys(request.x) if model.variable(c).is_categorical]
    positions = {c: level_positions(rows, model.variable(c)) for c in nominal}
    sizes = {c: len(sorted_levels(model.variable(c))) for c in nominal}
    tables = [_label_tables(rows, g, model) for g in groupings]
    columns = list(dict.fromkeys([outcome.time, outcome.event_code, *nominal,
                                  *(c for g in groupings for c in g.columns)]))
    points = len(grid)
    events = np.zeros(points, dtype=np.int64)
    censored = np.zeros(points, dtype=np.int64)
    series = np.zeros((len(outcome.levels) + 1, points), dtype=np.int64)
    class_cells = {c: np.zeros((sizes[c], 2), dtype=np.int64) for c in nominal}
    cells = [np.zeros(int(np.prod([len(labels) for _, _, labels in t])), dtype=np.int64) for t in tables]
    for chunk in _chunks(rows, columns):
        at = dict(zip(columns, chunk))
        index, event, beyond = outcome.of(at[outcome.time], at[outcome.event_code])
        events += np.bincount(index[event], minlength=points)
        censored += np.bincount(index[~event], minlength=points)
        level = _looked_up(outcome.level_at, at[outcome.event_code])
        within = ~beyond & (level >= 0)
        series[:-1] += np.bincount(level[within] * points + index[within],
                                   minlength=len(outcome.levels) * points).reshape(-1, points)
        series[-1] += np.bincount(index[beyond], minlength=points)
        positive = event & (index <= last)
        for c in nominal:
            flat = positions[c][at[c]] * 2 + (~positive).astype(np.int64)
            class_cells[c] += np.bincount(flat, minlength=2 * sizes[c]).reshape(-1, 2)
        for total, table in zip(cells, tables):
            flat = np.zeros(len(index), dtype=np.int64)
            inside = np.ones(len(index), dtype=bool)
            for column, lookup, labels in table:
                label = _looked_up(lookup, at[column])
                inside &= label >= 0
                flat = flat * len(labels) + label
            total += np.bincount(flat[inside], minlength=len(total))
    declared: list[int] = []
    for total, table in zip(cells, tables):
        shape = [len(labels) for _, _, labels in table]
        combos = []
        for flat, count in enumerate(total.tolist()):
            if count:
                labels, rest = [], flat
                for (_, _, names), width in zip(reversed(table), reversed(shape)):
                    labels.append(names[rest % width])
                    rest //= width
                combos.append((tuple(reversed(labels)), int(count)))
        declared += [count for _, count in sorted(combos)]
    return {"events": events, "censored": censored, "series": [s.tolist() for s in series],
            "level_counts": streamed_counts(rows, request.x, model)["level_counts"], "declared": declared,
            "class_cells": [int(v) for c in nominal for v in class_cells[c].ravel()]}


def start_round(rows: Any, request: AnalysisRequest, model: DataModel) -> tuple[dict, dict]:
    """The start round's level counts and the candidate design's moments (``compute_moments`` of the frame
    path's Fortran-ordered design, bit for bit)."""
    names = design_columns(request.x, model, intercept=False)
    moments = streamed_column_moments(DesignSource(rows, request.x, model), names)
    return streamed_counts(rows, request.x, model)["level_counts"], moments.to_dict()


def _add_in_order(totals: np.ndarray, bins: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``totals[j]`` plus the ``values`` of the rows in bin ``j``, added one at a time in the rows' order
    (``bincount``'s loop over the totals, then the values)."""
    n_bins = len(totals)
    return np.bincount(np.concatenate([np.arange(n_bins), bins]), weights=np.concatenate([totals, values]),
                       minlength=n_bins)


def sums_in_order(columns: np.ndarray, total: np.ndarray | None = None) -> np.ndarray:
    """Each row of ``columns`` (shape (p, m)) summed one value after another from ``total`` (zeros when
    None): ``bincount``'s sequential loop, the same sum whatever the chunks.  ``event_x`` on both paths
    (the frame path's ``design[event].sum(axis=0)`` was that for two covariates or more, and numpy's
    pairwise sum of the one column for one)."""
    p, m = columns.shape
    total = np.zeros(p) if total is None else total
    at = np.zeros(m + 1, dtype=np.intp)
    return np.array([np.bincount(at, weights=np.concatenate([total[k:k + 1], columns[k]]), minlength=1)[0]
                     for k in range(p)])


class _Chunked:
    """One pass over the rows for a later round: each chunk's bin of ``B``, event (up to the end of
    follow-up) and centred covariates (shape (p, m))."""

    def __init__(self, rows: Any, request: AnalysisRequest, model: DataModel, grid: np.ndarray,
                 event_level: str, ends: list[int], columns: list[str], center: list[float]) -> None:
        self.rows, self.ends = rows, np.asarray(ends, dtype=np.int64)
        self.outcome = _Outcome(rows, request, model, grid, event_level)
        self.source = DesignSource(rows, request.x, model)
        self.columns, self.center = columns, np.asarray(center, dtype=float)
        names = design_columns(request.x, model, intercept=False)
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise RequestError(f"the Cox state names unknown design columns: {', '.join(unknown)}")

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        n = len(self.rows)
        if not n:
            return
        outcomes = self.rows.reader([self.outcome.time, self.outcome.event_code])
        design = self.source.reader(self.columns) if self.columns else None
        n_bins = len(self.ends)
        # a row's fine point k (the first grid point at or after its time) is at or before an end e exactly when
        # grid[e] >= time: so its bin of B, searchsorted(ends, k), is searchsorted(grid[ends], time), and it
        # leaves by the end of follow-up (an event counted; beyond the grid too) exactly when that is < n_bins:
        # the frame path's bins and events, without the fine grid's search (10 001 points) for every row
        edges = self.outcome.grid[self.ends]
        for start in range(0, n, CHUNK_ROWS):
            m = min(CHUNK_ROWS, n - start)
            times, codes = outcomes(m)
            at = np.searchsorted(edges, times, side="left")
            event = _looked_up(self.outcome.is_event, codes) & (at < n_bins)
            bins = np.minimum(at, n_bins - 1)
            values = design(m) if design is not None else []
            # the frame path's ``design[:, columns] - center``, a row's own subtraction
            x = np.empty((len(self.columns), m))
            for k, column in enumerate(values):
                np.subtract(column, self.center[k], out=x[k])
            yield bins, event, x


def risk_pass(rows: Any, request: AnalysisRequest, model: DataModel, grid: np.ndarray, event_level: str,
              ends: list[int], columns: list[str], center: list[float], beta: np.ndarray, tied: bool
              ) -> dict[str, Any]:
    """A sums round's pass: per bin of ``B`` the sums over the rows leaving there of ``w``, ``w x`` and
    ``w x_a x_b`` (shape (bins, 1 + p + p(p+1)/2), the frame path's ``_bin_sums``), Efron's sums over those
    with an event (``tied``), and the rows leaving with an event and censored per bin."""
    n_bins, p = len(ends), len(columns)
    width = 1 + p + p * (p + 1) // 2
    sums = np.zeros((width, n_bins))
    tied_sums = np.zeros((width, n_bins)) if tied else None
    leaving_events = np.zeros(n_bins, dtype=np.int64)
    leaving_censored = np.zeros(n_bins, dtype=np.int64)
    upper_a, upper_b = np.triu_indices(p)
    for bins, event, x in _Chunked(rows, request, model, grid, event_level, ends, columns, center):
        leaving_events += np.bincount(bins[event], minlength=n_bins)
        leaving_censored += np.bincount(bins[~event], minlength=n_bins)
        weight = np.exp(linear_predictor(x, beta, len(bins)))
        weight_events = np.where(event, weight, 0.0) if tied else None
        product = np.empty(len(bins))
        for k in range(width):
            if k == 0:
                column = None
            elif k <= p:
                column = x[k - 1]
            else:
                np.multiply(x[upper_a[k - 1 - p]], x[upper_b[k - 1 - p]], out=product)
                column = product
            # the CSR product's terms: each row's weight times its column value (times 1.0: the weight itself)
            sums[k] = _add_in_order(sums[k], bins, weight if column is None else weight * column)
            if tied_sums is not None:
                tied_sums[k] = _add_in_order(tied_sums[k], bins,
                                             weight_events if column is None else weight_events * column)
    return {"sums": sums.T.copy(), "tied": None if tied_sums is None else tied_sums.T.copy(),
            "leaving_events": leaving_events, "leaving_censored": leaving_censored}


def event_pass(rows: Any, request: AnalysisRequest, model: DataModel, grid: np.ndarray, event_level: str,
               ends: list[int], columns: list[str], center: list[float]) -> dict[str, Any]:
    """A score round's pass: the rows leaving with an event and censored per bin of ``B``, and ``event_x``,
    the sum of the centred covariates over the rows with an event up to the end of follow-up."""
    n_bins = len(ends)
    leaving_events = np.zeros(n_bins, dtype=np.int64)
    leaving_censored = np.zeros(n_bins, dtype=np.int64)
    event_x = np.zeros(len(columns))
    for bins, event, x in _Chunked(rows, request, model, grid, event_level, ends, columns, center):
        leaving_events += np.bincount(bins[event], minlength=n_bins)
        leaving_censored += np.bincount(bins[~event], minlength=n_bins)
        event_x = sums_in_order(x[:, event], event_x)
    return {"leaving_events": leaving_events, "leaving_censored": leaving_censored, "event_x_sum": event_x}


def checked_state(request: AnalysisRequest, model: DataModel, params: dict, state: dict
                  ) -> tuple[list[str], list[float], list[int]]:
    """A later round's design columns, centre and bin ends ``B``, checked (both paths)."""
    from mipflow.algorithms.survival import request_points

    columns, center = list(state["columns"]), [float(c) for c in state["center"]]
    ends = [int(e) for e in state["ends"]]
    if len(center) != len(columns) or len(state["coefficients"]) != len(columns):
        raise RequestError("the Cox state's columns, centre and coefficients differ in length")
    last = request_points(model.variable(request.y[0]), params["bin_width"], params["max_time"])[-1]
    if not ends or ends != sorted(set(ends)) or ends[0] < 0 or ends[-1] > last:
        raise RequestError("state.ends must be increasing grid indices ending at or before the end of follow-up")
    unknown = [c for c in columns if c not in design_columns(request.x, model, intercept=False)]
    if unknown:
        raise RequestError(f"the Cox state names unknown design columns: {', '.join(unknown)}")
    return columns, center, ends


def streamed_step(algo: Any, round: int, rows: Any, request: AnalysisRequest, model: DataModel,
                  state: dict | None, params: dict, grid: np.ndarray) -> dict:
    """:meth:`CoxRegression.local_step` of rows on disk: the frame path's release, key for key."""
    from mipflow.algorithms import cox_regression as cox
    from mipflow.algorithms.packed import pack
    from mipflow.algorithms.sealed import SEALED, pooled_sums
    from mipflow.algorithms.survival import FOLLOW_UP_KEY, LEVEL_KEY, POINTS_KEY, request_level, request_points

    time_var = model.variable(request.y[0])
    event_level = params["event_level"]
    if state is None:
        last = request_points(time_var, params["bin_width"], params["max_time"])[-1]
        zero = round_zero(rows, request, model, grid, event_level, last, algo.released_groups(request, model))
        events, censored, counts = zero["events"], zero["censored"], zero["level_counts"]
        out = {"n": len(rows), "events": events.tolist(), "censored": censored.tolist(), "series": zero["series"],
               "group_counts": [int(v) for v in (*events, *censored)],
               cox.LEVEL_CELLS: [*(c for code in request.x for c in counts.get(code, [])), *zero["declared"],
                                 *zero["class_cells"]],
               POINTS_KEY: request_points(time_var, params["bin_width"], None),
               LEVEL_KEY: request_level(time_var, params["bin_width"])}
        if params["max_time"] is not None:
            out[FOLLOW_UP_KEY] = request_points(time_var, params["bin_width"], params["max_time"])[-1]
        return out
    if state.get("phase") == cox.START:
        counts, moments = start_round(rows, request, model)
        return {"n": len(rows), "level_counts": counts,
                "group_n": [c for code in request.x for c in counts.get(code, [])], "moments": moments}
    columns, center, ends = checked_state(request, model, params, state)
    event_bins = np.asarray(state["event_bins"], dtype=np.int64)
    if event_bins.size and (event_bins.min() < 0 or event_bins.max() >= len(ends)):
        raise RequestError("state.event_bins lies outside the common bins")
    if state["phase"] not in (cox.SUMS, cox.SCORE):
        raise RequestError(f"state.phase must be {cox.SUMS!r} or {cox.SCORE!r}")
    efron = params["ties"] == "efron"
    beta = np.asarray(state["coefficients"], dtype=float)
    p = len(columns)
    if state["phase"] == cox.SUMS:
        risk = risk_pass(rows, request, model, grid, event_level, ends, columns, center, beta, efron)
    else:
        risk = event_pass(rows, request, model, grid, event_level, ends, columns, center)
    own_events = risk["leaving_events"][event_bins]
    out = {"n": len(rows), "n_events": int(risk["leaving_events"].sum()),
           "group_counts": [int(v) for v in (*risk["leaving_events"], *risk["leaving_censored"])]}
    if state["phase"] == cox.SUMS:
        at_risk = np.cumsum(risk["sums"][::-1], axis=0)[::-1][event_bins]
        sealed = {"events": pack(own_events, "the event counts"),
                  "s0": pack(at_risk[:, 0], "the risk-set sum S0"),
                  "s1": pack(at_risk[:, 1:1 + p], "the risk-set sum S1"),
                  "s2": pack(at_risk[:, 1 + p:], "the risk-set sum S2")}
        if efron:
            tied = risk["tied"][event_bins]
            sealed.update({"e0": pack(tied[:, 0], "the tied-event sum E0"),
                           "e1": pack(tied[:, 1:1 + p], "the tied-event sum E1"),
                           "e2": pack(tied[:, 1 + p:], "the tied-event sum E2")})
        return {**out, SEALED: sealed}
    loglik, score, information = cox._node_share(pooled_sums(state, "a Cox score round"), own_events,
                                                 risk["event_x_sum"], beta, efron)
    upper_a, upper_b = np.triu_indices(p)
    return {**out, "loglik": loglik, "score": score.tolist(), "information": information[upper_a, upper_b].tolist()}
