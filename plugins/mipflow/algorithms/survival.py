"""Shared pieces of the survival algorithms: time grid, outcome coding and safe bins.

Time binning
------------
Event times are never released.  Every request fixes a **grid** of time
points ``origin + k * bin_width`` (``k = 0..K``), where ``origin`` is the time
variable's declared ``minValue`` (0 when undeclared) and the grid reaches the
declared ``maxValue`` (or the ``max_time`` parameter).  A row's time is
*rounded up* to the first grid point at or after it; rows whose rounded time
is ``b`` leave the risk set at ``b`` (events before censorings, as usual).

End of follow-up (``max_time``) in an exact release
---------------------------------------------------
A cut point the requester chooses must not shape what a node counts or merges:
two requests whose ``max_time`` differ by one bin would otherwise give event
totals whose difference is the events of that bin, a cell of one patient
(issue 14).  So a node's exact Kaplan-Meier release is always counted and
merged on the grid over the declared range (:func:`release_grid`, the release
without ``max_time``); with ``max_time`` it is then cut at the last merged bin
end at or before ``max_time`` rounded up to the grid (:func:`truncate_bins`):
the later bins are folded into censorings at that end.  The release with
``max_time`` is thus a function of the release without it and of the request
(post-processing), and the central side reports the end of follow-up actually
used (:func:`follow_up_cut`).

A node counts events and censorings per grid point, then (in its disclosure
controls, :func:`safe_bins`) merges adjacent points until every released count
is zero or at least ``nfilter_tab``.  It releases the merged bins as the grid
indices of their ends.  The central side intersects the ends of all nodes:
each node's bins then nest inside the common bins, whose counts are sums of
the nodes' counts.  Every number the central side computes is the pooled
statistic of the rows with their times rounded up to the common bin ends.

With an integer time variable, ``bin_width`` 1 and no bin merged anywhere,
each distinct time is its own bin and the result is exact; otherwise it is
labelled ``binned``.  See ``docs/adr/0008-survival-binning.md``.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from mipflow.algorithms.design import category_codes, numeric_values
from mipflow.algorithms.spec import NOMINAL, NUMERICAL, InputSpec, ParamSpec, stattype
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel, Variable
from mipflow.protocol.request import AnalysisRequest

if TYPE_CHECKING:
    import pandas as pd

#: Most grid points a request may ask for (bounds the size of every aggregate).
MAX_GRID_POINTS = 20_000

#: y = [time variable, event variable].
SURVIVAL_Y = InputSpec(types=("real", "int", "text"), stattypes=(NUMERICAL, NOMINAL), notblank=True,
                       multiple=True, label="Time and event",
                       description="[time, event]: the numerical follow-up time and the nominal event variable.")

#: Parameters shared by the survival algorithms.
SURVIVAL_PARAMETERS: dict[str, ParamSpec] = {
    "event_level": ParamSpec(types=("text", "int"), notblank=True, label="Event level",
                             description="The level of the event variable that means the event happened "
                                         "(e.g. yes); the other levels mean censored."),
    "bin_width": ParamSpec(types=("real",), default=1.0, min=0.0, min_exclusive=True, label="Time bin width",
                           description="Times are rounded up to a grid of this width from the time "
                                       "variable's minValue (docs/adr/0008-survival-binning.md)."),
    "max_time": ParamSpec(types=("real",), label="End of follow-up",
                          description="The end of follow-up, within the time variable's declared range; "
                                      "rows followed longer are censored there. Kaplan-Meier's exact "
                                      "answers move it down to the last time bin end released at or "
                                      "before it (binning.end_of_follow_up)."),
}


def check_outcome(name: str, request: AnalysisRequest, model: DataModel, event_level: Any) -> None:
    """Raise :class:`RequestError` unless y is [numerical time, nominal event] and
    ``event_level`` is a category of the event variable."""
    if len(request.y) != 2:
        raise RequestError(f"{name} needs y = [time variable, event variable], got {len(request.y)} variable(s)")
    time_var, event_var = (model.variable(c) for c in request.y)
    if stattype(time_var) != NUMERICAL:
        raise RequestError(f"{name}: the time variable {time_var.code!r} (first in y) must be numerical")
    if stattype(event_var) != NOMINAL:
        raise RequestError(f"{name}: the event variable {event_var.code!r} (second in y) must be nominal")
    if str(event_level) not in event_var.enumeration_codes:
        raise RequestError(f"parameter 'event_level' = {event_level!r} is not a category of "
                           f"{event_var.code!r} ({', '.join(event_var.enumeration_codes)})")
    overlap = set(request.y) & set(request.x)
    if overlap:
        raise RequestError(f"{', '.join(sorted(overlap))} cannot be both an outcome (y) and in x")


def time_grid(time_var: Variable, bin_width: float, max_time: float | None) -> np.ndarray:
    """Grid points ``origin + k * bin_width`` up to the first point at or past the end.

    The grid shapes the release, so it comes from the request and the data model only
    (issue 14.4): ``origin`` is the declared ``minValue`` (0 when undeclared), the end is
    ``max_time`` when given, else the declared ``maxValue``.  ``max_time`` must lie within
    the declared range; a time variable without a declared ``maxValue`` needs ``max_time``.
    Whether a request is refused never depends on the rows: rows followed beyond the end are
    censored there (:func:`outcome`).

    Returns
    -------
    numpy.ndarray, shape (K + 1,)

    Raises
    ------
    RequestError
        If the end of follow-up is unknown or outside the declared range, or the grid would be
        too long.
    """
    origin = float(time_var.min_value) if time_var.min_value is not None else 0.0
    if max_time is not None:
        end = float(max_time)
        if end < origin or (time_var.max_value is not None and end > float(time_var.max_value)):
            raise RequestError(f"max_time must lie within the declared range of {time_var.code!r} (from its "
                               "minValue to its maxValue in the data model): choose a max_time inside it")
    elif time_var.max_value is None:
        raise RequestError(f"the time variable {time_var.code!r} declares no maxValue in the data model: give "
                           "the parameter 'max_time' (the end of follow-up; rows followed longer are censored "
                           "there)")
    else:
        end = float(time_var.max_value)
        if end < origin:
            raise RequestError(f"the time variable {time_var.code!r} declares a maxValue below its minValue")
    n_bins = math.ceil((end - origin) / bin_width - 1e-12)
    if n_bins + 1 > MAX_GRID_POINTS:
        raise RequestError(f"bin_width {bin_width:g} over [{origin:g}, {end:g}] gives {n_bins + 1} grid points, "
                           f"more than {MAX_GRID_POINTS}; choose a wider bin")
    return origin + bin_width * np.arange(n_bins + 1, dtype=float)


def grid_for(request: AnalysisRequest, model: DataModel, params: Mapping[str, Any]) -> np.ndarray:
    """The request's time grid (see :func:`time_grid`)."""
    return time_grid(model.variable(request.y[0]), float(params["bin_width"]), params["max_time"])


def release_grid(time_var: Variable, bin_width: float) -> np.ndarray:
    """The grid of an exact release: over the time variable's declared range, whatever ``max_time``.

    A node counts and merges its bins on this grid only, so the requester's ``max_time`` shapes
    nothing it merges (issue 14; :func:`truncate_bins` cuts the release afterwards).  Decided from
    the data model and the request alone.

    Raises
    ------
    RequestError
        If the time variable declares no ``maxValue`` (``max_time`` cannot stand in for it: the
        bins would follow the requester's cut point), or the grid would be too long.
    """
    if time_var.max_value is None:
        raise RequestError(f"the time variable {time_var.code!r} declares no maxValue in the data model: "
                           "Kaplan-Meier lays its time bins over the declared range (max_time cannot set "
                           "them: sweeping it would count events up to chosen cut points); ask the data "
                           "model's maintainers to declare its maxValue")
    return time_grid(time_var, bin_width, None)


def truncate_bins(ends: Sequence[int], events: Sequence[int | None], censored: Sequence[int | None],
                  last: int) -> tuple[list[int], list[int], list[int]]:
    """A release's bins cut at its last bin end at or before grid index ``last``.

    The bins after the cut are folded into censorings at the cut (their rows were at risk there
    and leave follow-up), so every count is a sum of the release's counts: zero or at least
    ``min_count`` when they are.  With no bin end at or before ``last`` nothing is followed:
    three empty lists.  A deterministic function of the release and ``last``.

    Raises
    ------
    RequestError
        If a count to fold was suppressed (``None``).
    """
    keep = [i for i, end in enumerate(ends) if int(end) <= last]
    if not keep:
        return [], [], []
    k = keep[-1]
    tail = [*events[k + 1:], *censored[k + 1:]]
    if censored[k] is None or any(c is None for c in tail):
        raise RequestError("a node suppressed survival counts; its bins cannot be combined")
    out_censored = list(censored[:k + 1])
    out_censored[k] = censored[k] + sum(tail)  # whole numbers stay whole; a noisy node's signed ones too
    return [int(e) for e in ends[:k + 1]], list(events[:k + 1]), out_censored


def follow_up_cut(end_lists: Sequence[Sequence[int]], last: int) -> int:
    """The end of follow-up the central side uses: the last bin end every list holds at or before
    grid index ``last`` (the request's ``max_time`` rounded up to the grid, else the grid's end).

    Raises
    ------
    RequestError
        If there is none (a node merged its first bin past ``max_time``).
    """
    common = [e for e in common_ends(end_lists) if e <= last]
    if not common:
        raise RequestError("max_time lies before the first time bin end that every node releases (bins are "
                           "merged for disclosure control): choose a later max_time, or none")
    return common[-1]


def outcome(data: pd.DataFrame, request: AnalysisRequest, model: DataModel, grid: np.ndarray,
            event_level: str) -> tuple[np.ndarray, np.ndarray]:
    """Grid index of each row's rounded-up time and its event indicator.

    A row followed beyond the last grid point (the end of follow-up, ``max_time``) is
    censored there: it was at risk through the whole grid and its later event, if any, is not
    counted (administrative censoring).  Refusing such rows would make the refusal an oracle
    of the longest follow-up (issue 14.2); censoring them is a rule that does not look at the
    rows, and equals the pooled analysis of the rows censored at ``max_time``.

    Returns
    -------
    index : numpy.ndarray of int, shape (n,)
        ``k`` such that ``grid[k-1] < time <= grid[k]`` (``grid[-1]`` read as -inf), at most
        ``len(grid) - 1``.
    event : numpy.ndarray of bool, shape (n,)
    """
    times = numeric_values(data[request.y[0]])
    index = np.searchsorted(grid, times, side="left")
    event_var = model.variable(request.y[1])
    event = category_codes(data[request.y[1]], event_var).to_numpy() == str(event_level)
    beyond = index >= len(grid)
    index[beyond] = len(grid) - 1
    event = event & ~beyond
    return index.astype(np.int64), event


def grid_counts(index: np.ndarray, event: np.ndarray, n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Events and censorings per grid point, each shape (n_points,)."""
    events = np.bincount(index[event], minlength=n_points)
    censored = np.bincount(index[~event], minlength=n_points)
    return events.astype(np.int64), censored.astype(np.int64)


def safe_bins(events: Sequence[int], censored: Sequence[int], min_count: int
              ) -> tuple[list[int], list[int], list[int]]:
    """Merge adjacent grid points until no count is in ``(0, min_count)``.

    Scans forward, closing a bin as soon as both its event and its censoring
    count are zero or at least ``min_count``; a small remainder at the end is
    merged backwards into the bins before it.  If all rows together still give
    a small count, that one bin is returned as it is (the disclosure control
    then refuses the release).

    Then every at-risk count the central side can derive (rows whose time is
    in this bin or later) is zero or at least ``min_count`` too, and so is
    every difference between two of them.

    Returns
    -------
    ends : list of int
        Grid index of each merged bin's last point; the last is ``len(events) - 1``.
    merged_events, merged_censored : list of int
        Counts per merged bin.
    """
    def ok(count: int) -> bool:
        return count == 0 or count >= min_count

    ends: list[int] = []
    out_events: list[int] = []
    out_censored: list[int] = []
    open_events = open_censored = 0
    for k, (d, c) in enumerate(zip(events, censored)):
        open_events += int(d)
        open_censored += int(c)
        if ok(open_events) and ok(open_censored):
            ends.append(k)
            out_events.append(open_events)
            out_censored.append(open_censored)
            open_events = open_censored = 0
    while (open_events or open_censored) and not (ok(open_events) and ok(open_censored)) and ends:
        ends.pop()
        open_events += out_events.pop()
        open_censored += out_censored.pop()
    if open_events or open_censored or not ends or ends[-1] != len(events) - 1:
        ends.append(len(events) - 1)
        out_events.append(open_events)
        out_censored.append(open_censored)
    return ends, out_events, out_censored


def common_ends(end_lists: Sequence[Sequence[int]]) -> list[int]:
    """Bin ends present in every list (the coarsest bins every node's bins nest in)."""
    if not end_lists:
        return []
    common = set(end_lists[0])
    for ends in end_lists[1:]:
        common &= set(ends)
    return sorted(common)


def rebin(ends: Sequence[int], counts: Sequence[int | None], target: Sequence[int]) -> np.ndarray:
    """Counts on bins ending at ``ends`` summed into the coarser bins ending at ``target``.

    Every bin end in ``target`` must also be in ``ends``.

    Raises
    ------
    RequestError
        If a node's counts were suppressed or do not nest in the target bins.
    """
    if any(c is None for c in counts):
        raise RequestError("a node suppressed survival counts; its bins cannot be combined")
    ends_arr = np.asarray(ends, dtype=np.int64)
    target_arr = np.asarray(target, dtype=np.int64)
    if not set(target_arr.tolist()) <= set(ends_arr.tolist()) or len(ends_arr) != len(counts):
        raise RequestError("a node's survival bins do not nest in the common bins")
    where = np.searchsorted(target_arr, ends_arr, side="left")
    return np.bincount(where, weights=np.asarray(counts, dtype=float), minlength=len(target_arr))


def binning_summary(time_var: Variable, grid: np.ndarray, bin_width: float, used_ends: Sequence[int]) -> dict:
    """How the times were binned, for the result (``exact`` or ``binned``)."""
    merged = len(used_ends) < len(grid)
    exact = (time_var.sql_type == "int" and float(bin_width) == 1.0 and float(grid[0]).is_integer()
             and not merged)
    note = ("every distinct time is its own bin: equal to the unbinned analysis" if exact else
            "times rounded up to the bin ends (timeline); equal to the analysis of the rounded times, "
            "an approximation of the unbinned analysis")
    return {"method": "exact" if exact else "binned", "origin": float(grid[0]), "bin_width": float(bin_width),
            "grid_points": len(grid), "bins_used": len(used_ends), "merged_for_disclosure": merged, "note": note}


def coarsen_groups(groups: list[dict], min_count: int) -> list[dict]:
    """Per-group grid counts -> :func:`safe_bins` (what a node releases).  A group already on
    merged bins (``ends``: a study's survival partition) is merged further on those bins."""
    out = []
    for group in groups:
        ends, events, censored = safe_bins(group["events"], group["censored"], min_count)
        if group.get("ends") is not None:
            ends = [int(group["ends"][e]) for e in ends]
        out.append({**group, "ends": ends, "events": events, "censored": censored})
    return out


def truncate_groups(groups: list[dict], last: int) -> list[dict]:
    """Each group's merged bins cut at grid index ``last`` (:func:`truncate_bins`)."""
    out = []
    for group in groups:
        ends, events, censored = truncate_bins(group["ends"], group["events"], group["censored"], last)
        out.append({**group, "ends": ends, "events": events, "censored": censored})
    return out


def released_cells(groups: Sequence[Mapping[str, Any]]) -> list[int]:
    """Every event and censoring count of the groups (checked by the node's ``group_counts`` control)."""
    return [int(v) for g in groups for key in ("events", "censored") for v in g[key]]
