"""Histograms of a variable, overall and within each level of grouping variables.

Numerical ``y``: ``bins`` equal-width bins (numpy's edges) over

* the variable's declared range (``minValue``..``maxValue`` in the data
  model) when it has both bounds: one round, no extreme value released;
* otherwise the pooled range of the data, as Exareme2: nodes first send the
  minimum and maximum of their rows (keys ``min`` / ``max``, which a node's
  raw-extremes disclosure control refuses unless allowed), then counts.

Nominal ``y`` takes one round: counts per enumeration code.

Every local aggregate is a list of ``{"grouping_var", "grouping_enum",
"counts"}`` records (the overall histogram first, then one per level of each
grouping variable, in the data model's order), so a node's disclosure
control can replace any count below its threshold by ``None`` before
release.  The global step sums the counts (:func:`pool_exact_bins`): a bin
that sums to zero is reported as ``None`` (Exareme2's convention); a bin that
any participating node suppressed is reported as ``None`` too, never as the
other nodes' partial sum, and ``bin_status`` (parallel to ``counts``) tells
the two apart: ``"pooled"``, ``"empty"`` or ``"suppressed"``; the result's
``notes`` say what a suppressed bin means (:data:`SUPPRESSED_NOTE`; it names
no node and no number of nodes).  Histograms are not summed under secure
aggregation (``secure_aggregation`` stays ``"unsupported"``), so a node's
``None`` always reaches the central site as it is.

Disclosure note: the bin edges are release-shaping parameters and come from
public metadata only (issue 14.4, ADR 0023): the declared range, split into
equal bins, as many as the allowed count (:data:`GRID_BINS`) nearest the request's
``bins`` (:func:`grid_bins`; the result's ``notes`` say so when it is not the request's).
The allowed counts each divide the next, so every two histograms of one variable have
edges that nest on one public grid: any bin of one is a union of bins of the other and
their releases differ by whole bins, never by a sliver of rows (ADR 0051, the bins
are released groups).  A state naming another range or count is refused.
Without declared bounds, the outer bin edges are the pooled minimum and maximum
of ``y`` (as in Exareme2), which only a node that releases extremes
(``release_extremes`` 1) answers; any other node refuses the request before
reading a row (:meth:`MultipleHistograms.undeclared_ranges`).

Noisy release (explore mode, a DP node; ADR 0057): the bins go out signed with their noise term; the
global step pools them signed and states each bin's noise sd and interval (:func:`pool_bins`);
``counts`` clamps only the pooled bins, for display.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from mipflow.algorithms.contract import ReleasedGroups, Step
from mipflow.algorithms.design import bin_labels, category_codes, numeric_values
from mipflow.algorithms.dp_release import DPRelease, Noise, Released, declared_bounds
from mipflow.algorithms.noise_error import INTERVAL_LEVEL, cell_interval, count_error, integer_noise_kind
from mipflow.algorithms.spec import (
    NOMINAL,
    NUMERICAL,
    InputSpec,
    ParamSpec,
    SpecAlgorithm,
)
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel, Variable
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd


#: The bin counts of a histogram over a declared range: each divides the next, so that the bins of every two
#: histograms of one variable nest (their edges all lie on the finest count's grid; ADR 0051).
GRID_BINS = (1, 5, 10, 20, 40, 80)


def grid_bins(requested: int) -> int:
    """The allowed count (:data:`GRID_BINS`) nearest ``requested`` by ratio (a tie: the finer)."""
    return min(GRID_BINS, key=lambda b: (abs(math.log(b / max(int(requested), 1))), -b))


def level_counter(codes: np.ndarray, levels: Sequence[Any]) -> Callable[[np.ndarray], list[int]]:
    """``count(mask)``: how many of the masked rows' ``codes`` are each of ``levels``, in order."""
    def count(mask: np.ndarray) -> list[int]:
        chosen = codes[mask]
        return [int(np.count_nonzero(chosen == level)) for level in levels]
    return count


def bin_counter(values: np.ndarray, bins: int, value_range: tuple[float, float]) -> Callable[[np.ndarray], list[int]]:
    """``count(mask)``: the masked rows' ``values`` in ``bins`` equal bins over ``value_range``."""
    def count(mask: np.ndarray) -> list[int]:
        return np.histogram(values[mask], bins=bins, range=value_range)[0].astype(int).tolist()
    return count


def extremes(values: Any, code: str) -> tuple[int, float, float]:
    """``(number of values, least, greatest)`` of a numerical column (a frame's values, or column ``code``
    of rows on disk: one pass, a block at a time; the same floats)."""
    from mipflow.algorithms.streamed import COUNT_ROWS, on_disk

    if not on_disk(values):
        return (len(values), float(values.min()), float(values.max())) if len(values) else (0, math.nan, math.nan)
    n, low, high = len(values), math.inf, -math.inf
    next_rows = values.reader([code]) if n else None
    for start in range(0, n, COUNT_ROWS):
        block = next_rows(min(COUNT_ROWS, n - start))[0]  # type: ignore[misc]
        low, high = min(low, float(block.min())), max(high, float(block.max()))
    return n, low, high


# --------------------------------------------------------------------------- differential privacy
# The noisy release a node with dp_enabled makes (MultipleHistograms.dp_release, ADR 0015).


def _dp_blocks(algo: MultipleHistograms, request: AnalysisRequest, model: DataModel) -> int:
    return 1 + len(request.x)


def _dp_release(algo: MultipleHistograms, data: pd.DataFrame, request: AnalysisRequest, model: DataModel,
                noise: Noise) -> Released:
    """Noisy bin counts over the declared range (values clamped into it) or the enumerations."""
    yvar = model.variable(request.y[0])
    clamped: dict[str, list[float]] = {}
    if yvar.is_categorical:
        count = level_counter(category_codes(data[yvar.code], yvar).to_numpy(), yvar.enumeration_codes)
    else:
        lo, hi = declared_bounds(model, yvar.code, algo.name)
        clamped[yvar.code] = [lo, hi]
        count = bin_counter(np.clip(numeric_values(data[yvar.code]), lo, hi),
                            algo.params(request, model)["bins"], (lo, hi))

    records = []
    for grouping_var, level in algo._groups(request, model):
        if grouping_var is None:
            mask, block, part = np.ones(len(data), dtype=bool), "overall", ""
        else:
            codes = category_codes(data[grouping_var], model.variable(grouping_var)).to_numpy()
            mask, block, part = codes == level, f"by/{grouping_var}", str(level)
        # signed: a bin clamped at 0 per node would bias the pooled bin upwards (ADR 0057)
        noisy = noise.add(count(mask), 1, block=block, part=part, integer=True)
        records.append({"grouping_var": grouping_var, "grouping_enum": level, "counts": noisy.tolist(),
                        "noise": {"terms": [[noise.mechanism, noise.sd(1), integer_noise_kind(noise)]]}})
    return {"histograms": records}, clamped


def _dp_rows(aggregates: dict[str, Any]) -> int:
    # the positive noisy cells, as before the bins went out signed (the row count decisions are unchanged)
    return int(sum(max(c, 0) for c in aggregates["histograms"][0]["counts"] if c is not None))


#: ``bin_status`` of a pooled bin: every node released a count and they add up to more than 0; every node released
#: 0 (``counts`` None, Exareme2's convention); at least one node suppressed it (``counts`` None).
POOLED, EMPTY, SUPPRESSED = "pooled", "empty", "suppressed"
#: A noisy bin a noisy node hid and pooled as the middle of its stated range (its interval widened; ADR 0057).
ESTIMATED = "estimated"

#: The result's note when some bin is suppressed (it names no node and no number of nodes).
SUPPRESSED_NOTE = ("Bins with bin_status 'suppressed' show no count (None): at least one participating node "
                   "suppressed its count under its disclosure control (a small cell, or a cell hidden with one), so "
                   "the pooled count is not known; counts_at_least is the sum of the counts that were released, a "
                   "lower bound only. Bins with bin_status 'empty' hold no row at any node.")


def pool_exact_bins(parts: Sequence[Sequence[int | None]]) -> dict[str, list]:
    """One histogram's exact bins pooled over the nodes' released counts (``None``: suppressed by that node).

    Returns ``counts``, ``bin_status`` and ``counts_at_least``: a bin every node released is their sum
    (``None`` when that is 0, status ``"empty"``); a bin any node suppressed is ``None`` with status
    ``"suppressed"``, whatever the others sent: their sum alone would read as the pooled count and understate
    it.  ``counts_at_least`` is that sum of the released counts, a lower bound of the pooled count (equal to it
    when no node suppressed the bin; ``None`` when every node did): the same numbers a plain sum showed
    before, now labelled as what they are.
    """
    counts: list[int | None] = []
    status: list[str] = []
    at_least: list[int | None] = []
    for column in zip(*parts):
        released = [int(c) for c in column if c is not None]
        at_least.append(sum(released) if released else None)
        if len(released) < len(column):
            counts.append(None)
            status.append(SUPPRESSED)
            continue
        total = sum(released)
        counts.append(total if total > 0 else None)
        status.append(POOLED if total > 0 else EMPTY)
    return {"counts": counts, "bin_status": status, "counts_at_least": at_least}


def pool_bins(records: Sequence[dict], level: float = INTERVAL_LEVEL) -> dict[str, Any] | None:
    """One histogram's bins pooled over the nodes' records, with each bin's noise error (ADR 0057).

    A record with ``noise`` is a node's signed noisy bins; a cell it hid (``None``, its noisy value
    in ``suppressed_range``) counts as that range's middle and widens the bin's interval by half the
    range (``bin_status`` ``"estimated"``).  Exact records add their counts; a cell an exact node hid (or a
    noisy node hid without a range) leaves the bin unknown: ``counts`` and ``counts_signed`` ``None``, no
    interval, ``bin_status`` ``"suppressed"`` (never the other nodes' partial sum).  Returns ``None`` when no
    record is noisy.
    """
    noisy = [r for r in records if "noise" in r]
    if not noisy:
        return None
    signed: list[float | None] = []
    sds, intervals, coverage, status = [], [], [], []
    for i in range(len(records[0]["counts"])):
        estimate, unknown, terms, complete = 0.0, 0.0, [], True
        for r in records:
            cell = r["counts"][i]
            if "noise" in r:
                terms.extend(r["noise"]["terms"])
                if cell is None:
                    lo, hi = (float(v) for v in r.get("suppressed_range", (0, 0)))
                    estimate, unknown = estimate + (lo + hi) / 2.0, unknown + (hi - lo) / 2.0
                    complete = complete and "suppressed_range" in r
                    continue
            elif cell is None:
                complete = False
                continue
            estimate += float(cell)
        error = count_error(terms, level)
        signed.append(estimate if complete else None)
        sds.append(error["sd"])
        intervals.append(cell_interval(estimate, error, unknown) if complete else None)
        coverage.append(error["coverage"] if complete else None)
        hidden_noisy = any("noise" in r and r["counts"][i] is None for r in records)
        status.append(SUPPRESSED if not complete else ESTIMATED if hidden_noisy else POOLED)
    return {"counts": [c if c is not None and c > 0 else None for c in signed], "counts_signed": signed,
            "bin_status": status,
            "counts_noise_sd": sds, "counts_interval": intervals, "counts_interval_coverage": coverage,
            # the same bounds as flat columns (a results page shows lists of numbers as a bin's columns)
            "counts_low": [None if v is None else v[0] for v in intervals],
            "counts_high": [None if v is None else v[1] for v in intervals],
            "approximate": True, "interval_level": level,
            "noisy_nodes": len(noisy), "exact_nodes": len(records) - len(noisy), "display": DISPLAY_NOTE}


#: How a noisy histogram's ``counts`` are shown.
DISPLAY_NOTE = ("counts: the pooled signed noisy bins, a bin at or below 0 shown as None (clamped for display only); "
                "counts_signed unclamped; counts_interval: each bin's interval at interval_level (exact for the "
                "integer noise, so it covers at least that: counts_interval_coverage), cut at 0; bin_status "
                "'estimated': a node hid the bin and it counts as the middle of its stated range (interval widened); "
                "'suppressed': a node hid it without a range, so counts and counts_signed are None")


class MultipleHistograms(SpecAlgorithm):
    name = "multiple_histograms"
    label = "Multiple Histograms"
    description = ("Histograms of a variable, overall and per level of grouping variables; bins under "
                   "the nodes' thresholds are suppressed.")
    y_spec = InputSpec(types=("real", "int", "text"), stattypes=(NUMERICAL, NOMINAL),
                       notblank=True, multiple=False, label="Variable",
                       description="The variable to distribute among bins.")
    x_spec = InputSpec(types=("int", "text"), stattypes=(NOMINAL,), notblank=False, multiple=True,
                       label="Grouping variables", description="Nominal variables for grouping bins.")
    parameter_specs = MappingProxyType({
        "bins": ParamSpec(types=("int",), default=20, notblank=False, min=1, max=100, label="Number of bins",
                          description=("The number of bins of a numerical histogram; over a declared range the "
                                       "nearest of 1, 5, 10, 20, 40, 80 (bins that nest), said in the result.")),
    })

    def params(self, request: AnalysisRequest, model: DataModel | None = None) -> dict[str, Any]:
        """The spec's parameters; ``bins`` of a numerical ``y`` with a declared range moved to the nearest allowed
        count (:func:`grid_bins`), the same at the central site and every node (public: the request and the data
        model only)."""
        out = super().params(request, model)
        if model is not None and request.y and request.y[0] in model:
            yvar = model.variable(request.y[0])
            if not yvar.is_categorical and self._declared_range(yvar) is not None:
                out["bins"] = grid_bins(out["bins"])
        return out

    def _grid_note(self, request: AnalysisRequest, model: DataModel) -> list[str]:
        """The result's note when the bins shown are not the count asked for (none otherwise)."""
        asked = SpecAlgorithm.params(self, request, model)["bins"]
        used = self.params(request, model)["bins"]
        if asked == used:
            return []
        allowed = ", ".join(map(str, GRID_BINS))
        return [f"{used} bins instead of the {asked} asked for: a histogram over {request.y[0]!r}'s declared range "
                f"takes one of {allowed} equal bins (the allowed count nearest the request), so that the bins of "
                "every two histograms of a variable nest and no analysis is refused for the rows between their edges"]

    def check(self, request: AnalysisRequest, model: DataModel) -> None:
        if request.y[0] in request.x:
            raise RequestError(f"{request.y[0]!r} cannot be both the variable and a grouping variable")

    @staticmethod
    def _declared_range(var: Variable) -> tuple[float, float] | None:
        """``(minValue, maxValue)`` of the data model, when both are declared."""
        if var.min_value is None or var.max_value is None:
            return None
        return float(var.min_value), float(var.max_value)

    @staticmethod
    def _range_refusal(code: str) -> str:
        return (f"a histogram of {code!r} is binned over its declared range (minValue and maxValue in the "
                "data model) into 'bins' equal bins; a range chosen by the request or the central site is "
                "not accepted")

    def undeclared_ranges(self, request: AnalysisRequest, model: DataModel) -> tuple[str, ...]:
        """The numerical variable to bin, when the data model declares no range for it.

        A node that does not release extremes refuses these requests before reading a row
        (:meth:`mipflow.node.controls.disclosure.DisclosureControls.check_request`): the bin edges
        would otherwise come from the rows' extremes or from the central site (issue 14.4).
        """
        yvar = model.variable(request.y[0])
        if yvar.is_categorical or self._declared_range(yvar) is not None:
            return ()
        return (yvar.code,)

    def _edges(self, request: AnalysisRequest, model: DataModel) -> tuple[float, ...] | None:
        """A numerical ``y``'s bin edges over its declared range (None: nominal, or no declared range)."""
        yvar = model.variable(request.y[0])
        declared = None if yvar.is_categorical else self._declared_range(yvar)
        if declared is None:
            return None
        bins = self.params(request, model)["bins"]
        return tuple(np.histogram_bin_edges(np.zeros(0), bins=bins, range=declared).tolist())

    def released_groups(self, request: AnalysisRequest, model: DataModel) -> tuple[ReleasedGroups, ...]:
        """Every bin and bin x level cell as a released group, suppressed rather than refused (only the cells
        the release leaves, :meth:`hidden_cells`); none for a range not declared (the bins come from the pooled
        extremes)."""
        yvar = model.variable(request.y[0])
        edges = self._edges(request, model)
        if not yvar.is_categorical and edges is None:
            return ()
        bins = None if edges is None else (edges,)
        overall = ReleasedGroups((yvar.code,), bins=bins, suppressed=True)
        return (overall, *(ReleasedGroups((yvar.code, code), bins=None if edges is None else (edges, None),
                                          suppressed=True) for code in request.x))

    def cell_pairs(self, aggregates: dict, request: AnalysisRequest,
                   model: DataModel) -> list[list[tuple[tuple[str, str], ...]]]:
        """Each record's cells (bins, or bin x level cells) as ``(column, level)`` pairs, in the aggregates' order:
        a bin's level is its label (:func:`~mipflow.algorithms.design.bin_labels`)."""
        yvar = model.variable(request.y[0])
        edges = self._edges(request, model)
        labels = list(yvar.enumeration_codes) if edges is None else bin_labels(edges)
        out = []
        for record in aggregates.get("histograms", ()) if isinstance(aggregates, dict) else ():
            by = () if record.get("grouping_var") is None else ((record["grouping_var"], str(record["grouping_enum"])),)
            out.append([((yvar.code, label), *by) for label in labels[:len(record.get("counts", ()))]])
        return out

    def hidden_cells(self, aggregates: dict, request: AnalysisRequest,
                     model: DataModel) -> list[tuple[tuple[str, str], ...]]:
        """The bins (and bin x level cells) the checked aggregates hide (``None``), as ``(column, level)``
        pairs (:meth:`cell_pairs`)."""
        records = aggregates.get("histograms", ()) if isinstance(aggregates, dict) else ()
        return [cell for record, cells in zip(records, self.cell_pairs(aggregates, request, model))
                for cell, count in zip(cells, record.get("counts", ())) if count is None]

    def _groups(self, request: AnalysisRequest, model: DataModel) -> list[tuple[str | None, str | None]]:
        out: list[tuple[str | None, str | None]] = [(None, None)]
        for code in request.x:
            out.extend((code, level) for level in model.variable(code).enumeration_codes)
        return out

    #: Its bins and level counts are sums: at a node without DP or explore mode its rows stay on disk, read a
    #: block at a time (ADR 0062, amendment 11); its bins' released groups come from the snapshot too.
    streams_rows = True

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        from mipflow.algorithms.streamed import on_disk

        yvar = model.variable(request.y[0])
        disk = on_disk(data)
        if yvar.is_categorical:
            count = None if disk else \
                level_counter(category_codes(data[yvar.code], yvar).to_numpy(), yvar.enumeration_codes)
            bins, value_range = 0, None
        else:
            values = data if disk else numeric_values(data[yvar.code])
            declared = self._declared_range(yvar)
            bins = self.params(request, model)["bins"]
            if declared is not None:
                # the declared range and the request's bins are the only ones: a range or bins in
                # the state (a central site's choice, e.g. narrowed around one value) are refused,
                # not silently replaced
                if state is not None and (
                        (state.get("range") is not None and [float(v) for v in state["range"]] != list(declared))
                        or (state.get("bins") is not None and int(state["bins"]) != bins)):
                    raise RequestError(self._range_refusal(yvar.code))
                lo, hi = declared
            elif round == 0:
                n, low, high = extremes(values, yvar.code)
                if n == 0:
                    return {"n": 0, "min": None, "max": None}
                return {"n": n, "min": low, "max": high}
            else:
                assert state is not None
                lo, hi = state["range"]
                if int(state["bins"]) != bins:
                    raise RequestError(f"the state's number of bins is not the request's 'bins' ({bins})")
            value_range = (lo, hi)
            count = None if disk else bin_counter(values, bins, value_range)
        if disk:
            return {"histograms": self._counts_on_disk(data, yvar, bins, value_range, request, model)}

        group_codes = {code: category_codes(data[code], model.variable(code)).to_numpy()
                       for code in request.x}
        records = []
        for grouping_var, level in self._groups(request, model):
            mask = np.ones(len(data), dtype=bool) if grouping_var is None else group_codes[grouping_var] == level
            records.append({"grouping_var": grouping_var, "grouping_enum": level, "counts": count(mask)})
        return {"histograms": records}

    def _counts_on_disk(self, data: Any, yvar: Variable, bins: int, value_range: tuple[float, float] | None,
                        request: AnalysisRequest, model: DataModel) -> list[dict]:
        """The records of :meth:`local_step` from rows on disk: each group's bins (``np.histogram`` of a block's
        values, summed) or level counts, in one pass."""
        from mipflow.algorithms.streamed import enumeration_index, grouped_counts_on_disk

        groups = self._groups(request, model)
        enumerations = {code: model.variable(code).enumeration_codes for code in request.x}
        if yvar.is_categorical:
            levels = list(yvar.enumeration_codes)
            index = enumeration_index(data, yvar.code, levels)

            def count(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
                at = index(values)[mask]
                return np.bincount(at[at >= 0], minlength=len(levels))
            size = len(levels)
        else:
            def count(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
                return np.histogram(values[mask], bins=bins, range=value_range)[0]
            size = bins
        totals = grouped_counts_on_disk(data, yvar.code, count, size, groups, enumerations)
        return [{"grouping_var": grouping_var, "grouping_enum": level, "counts": [int(c) for c in total]}
                for (grouping_var, level), total in zip(groups, totals)]

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        bins = self.params(request, model)["bins"]
        yvar = model.variable(request.y[0])
        declared = None if yvar.is_categorical else self._declared_range(yvar)
        if not yvar.is_categorical and declared is None and round == 0:
            mins = [a["min"] for a in aggregates if a["n"] > 0]
            maxs = [a["max"] for a in aggregates if a["n"] > 0]
            if not mins:
                raise RequestError(f"no rows have a value of {yvar.code}")
            return Step(done=False, state={"range": [min(mins), max(maxs)], "bins": bins})
        if yvar.is_categorical:
            edges: list[Any] = list(yvar.enumeration_codes)
        else:
            bin_range = declared if declared is not None else tuple(state["range"])  # type: ignore[index]
            edges = np.histogram_bin_edges(np.zeros(0), bins=bins, range=bin_range).tolist()
        groups = self._groups(request, model)
        histograms = []
        for i, (grouping_var, level) in enumerate(groups):
            parts = []
            for a in aggregates:
                rec = a["histograms"][i]
                if (rec["grouping_var"], rec["grouping_enum"]) != (grouping_var, level):
                    raise RequestError("a node sent histograms in an unexpected order")
                parts.append(rec["counts"])
            record: dict[str, Any] = {"var": yvar.code, "grouping_var": grouping_var, "grouping_enum": level,
                                      "bins": edges}
            pooled = pool_bins([a["histograms"][i] for a in aggregates])
            if pooled is not None:  # a noisy node: signed bins pooled signed, each with its error
                histograms.append({**record, **pooled})
                continue
            histograms.append({**record, **pool_exact_bins(parts)})
        notes = [] if declared is None else self._grid_note(request, model)
        if any(SUPPRESSED in h["bin_status"] for h in histograms):
            notes.append(SUPPRESSED_NOTE)
        return Step(done=True, result=json_ready({"histogram": histograms, **({"notes": notes} if notes else {})}))

    # -- privacy capabilities (mipflow.algorithms.contract) ------------------------------------

    dp_release = DPRelease(_dp_blocks, _dp_release, _dp_rows)
