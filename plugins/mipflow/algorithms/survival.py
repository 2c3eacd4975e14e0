"""Shared pieces of the survival algorithms: time grid, outcome coding and safe bins.

Time binning
------------
Event times are never released.  What a node counts and merges must not depend on anything a
requester chooses (issue 14.4): two requests whose bins end at different times give, together,
the counts between an end of one and the next end of the other.  So every exact release of a
node is a function of **one canonical release** per cohort, fixed by the data model:

* the **fine grid** (:func:`fine_grid`) over the time variable's declared range: for an integer
  variable unit steps from its ``minValue`` (0 when undeclared) to its ``maxValue`` (steps of
  ``ceil(range / FINE_BINS)`` when the range is longer than :data:`FINE_BINS`); otherwise
  :data:`FINE_BINS` equal steps over the range.  A row's time is *rounded up* to the first fine
  point at or after it; rows whose rounded time is ``b`` leave the risk set at ``b`` (events
  before censorings, as usual);
* the node counts events and censorings per fine point and (in its disclosure controls,
  :func:`cohort_bins`) merges adjacent points until every count is zero or at least
  ``nfilter_tab``: the canonical release.  Its bins are nested coarsenings of the cohort's own:
  the bins of the rows leaving follow-up (whatever the event), then of the cohort's events and
  censorings (whatever the grouping), then, shared by every group of the release, of each group's;
* the request's grid ``origin + k * bin_width`` only **coarsens** it (:func:`request_points`,
  :func:`coarsen_to`): for each request grid point, the last canonical bin end at or before it
  (deduplicated; the last fine point always).  The released ends are canonical ends, the counts
  sums of canonical counts;
* ``max_time`` then **cuts** the release at its last bin end at or before ``max_time`` rounded up
  to the request's grid (:func:`truncate_bins`): the later bins are folded into censorings there.

Any two releases of a cohort therefore have their bin ends among the cohort's canonical ends,
and every difference of their cumulative counts (groups summed) is a sum of canonical counts: zero
or at least ``nfilter_tab``.  Bin ends travel as fine-grid indices; the central side intersects the ends of
all nodes (each node's bins then nest inside the common bins, whose counts are sums of the
nodes' counts), coarsens them to the request's points the same way and cuts every node at the
last common end at or before ``max_time`` (:func:`follow_up_cut`).  Every number it computes is
the pooled statistic of the rows with their times rounded up to the common bin ends (rows followed
beyond the end of follow-up censored there).

With an integer time variable, unit fine steps, ``bin_width`` at most 1 and no bin merged
anywhere, each distinct time is its own bin and the result is exact; otherwise it is labelled
``binned``.  See ``docs/adr/0008-survival-binning.md``.
"""
from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from mipflow.algorithms.design import category_codes, numeric_values
from mipflow.algorithms.spec import NOMINAL, NUMERICAL, InputSpec, ParamSpec, stattype
from mipflow.algorithms.survival_bins import bin_counts, canonical_bins, cohort_bins, safe_bins
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel, Variable
from mipflow.protocol.request import AnalysisRequest

if TYPE_CHECKING:
    import pandas as pd

#: Most grid points a request may ask for (bounds the size of every aggregate).
MAX_GRID_POINTS = 20_000
#: Steps of the fine grid over a time variable's declared range, unless it is an integer variable
#: with a range of at most this many units (unit steps then).
FINE_BINS = 10_000
#: The level of a bin end that every request may use (a study partition's ends).
MAX_LEVEL = 1 << 62
#: Round 0's key (Kaplan-Meier's and Cox's local steps) for the request's grid on the fine grid over
#: the declared range (:func:`request_points`), read and dropped by the algorithm's
#: ``coarsen_for_release`` (and by the study partition at the node).
POINTS_KEY = "request_points"
#: Round 0's key for the fine index of ``max_time`` rounded up to the request's grid, read and
#: dropped likewise.
FOLLOW_UP_KEY = "follow_up_end"
#: Round 0's key for the level of the canonical bins the request coarsens (:func:`request_level`),
#: read and dropped likewise.
LEVEL_KEY = "request_level"

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
                           description="The time bins end at the last bin end of the node's canonical "
                                       "bins (the data model's fine grid, merged for disclosure control) at "
                                       "or before each point of a grid of this width from the time "
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
    """The request's grid: points ``origin + k * bin_width`` up to the first point at or past the end.

    It only coarsens a node's canonical release (:func:`request_points`) and comes from the request
    and the data model only (issue 14.4): ``origin`` is the declared ``minValue`` (0 when
    undeclared), the end is ``max_time`` when given, else the declared ``maxValue``.  ``max_time`` must lie within
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


def fine_grid(time_var: Variable) -> np.ndarray:
    """The fine grid of a time variable, from the data model alone: every exact survival release of a
    node is counted and merged on it (the canonical release), whatever the request asks.

    From ``origin`` (the declared ``minValue``, 0 when undeclared) to the declared ``maxValue``: unit
    steps for an integer variable (steps of ``ceil(range / FINE_BINS)`` units beyond
    :data:`FINE_BINS`), else :data:`FINE_BINS` equal steps.  The last point is at or after
    ``maxValue``.

    Raises
    ------
    RequestError
        If the time variable declares no ``maxValue`` (neither ``max_time`` nor the rows may set the
        grid: sweeping either would count events up to chosen cut points), or one below its minValue.
    """
    if time_var.max_value is None:
        raise RequestError(f"the time variable {time_var.code!r} declares no maxValue in the data model: "
                           "survival analyses lay their time bins over the declared range (max_time cannot "
                           "set them: sweeping it would count events up to chosen cut points); ask the data "
                           "model's maintainers to declare its maxValue")
    origin = float(time_var.min_value) if time_var.min_value is not None else 0.0
    end = float(time_var.max_value)
    if end < origin:
        raise RequestError(f"the time variable {time_var.code!r} declares a maxValue below its minValue")
    span = end - origin
    if span == 0.0:
        return np.array([origin])
    if time_var.sql_type == "int":
        step = float(max(1, math.ceil(span / FINE_BINS - 1e-12)))
        return origin + step * np.arange(math.ceil(span / step - 1e-12) + 1, dtype=float)
    return np.linspace(origin, end, FINE_BINS + 1)


def request_points(time_var: Variable, bin_width: float, max_time: float | None) -> list[int]:
    """The request's grid on the fine grid: for each point of ``origin + k * bin_width`` (up to the
    first point at or past ``max_time``, else the declared ``maxValue``: :func:`time_grid`), the
    index of the last fine point at or before it (a point at or past ``maxValue``: the last fine
    point), deduplicated and ascending.  Starts at 0; without ``max_time`` it ends at the last fine
    point.  From the request and the data model alone.

    Raises
    ------
    RequestError
        As :func:`time_grid` and :func:`fine_grid`.
    """
    return request_points_array(time_var, bin_width, max_time).tolist()  # a fresh list: callers may change it


def request_points_array(time_var: Variable, bin_width: float, max_time: float | None) -> np.ndarray:
    """:func:`request_points` as a read-only int64 array, computed once per variable, width and ``max_time``."""
    try:
        hash((time_var, bin_width, max_time))
    except TypeError:  # not a key (a malformed parameter): computed, and refused, as it is
        return _request_points(time_var, bin_width, max_time)
    return _cached_points(time_var, bin_width, max_time)


def _request_points(time_var: Variable, bin_width: float, max_time: float | None) -> np.ndarray:
    fine = fine_grid(time_var)
    grid = time_grid(time_var, float(bin_width), max_time)
    step = float(fine[1] - fine[0]) if len(fine) > 1 else 1.0
    tol = 1e-9 * step  # k * bin_width a hair below a fine point (0.29 * 100) is that point
    index = np.searchsorted(fine, grid + tol, side="right") - 1
    index[grid >= float(time_var.max_value) - tol] = len(fine) - 1
    points = np.unique(np.clip(index, 0, len(fine) - 1).astype(np.int64))  # ascending
    points.flags.writeable = False  # kept (:data:`_cached_points`) and shared
    return points


#: :func:`request_points` once per variable (frozen: its declared range is in the key), width and ``max_time``
#: (typed: ``1`` and ``1.0`` apart); a pure function of them, and a refusal is raised again, never kept.
_cached_points = functools.lru_cache(maxsize=64, typed=True)(_request_points)


def coarsen_to(ends: Sequence[int], events: Sequence, censored: Sequence, points: Sequence[int],
               levels: Sequence[int] | None = None, level: int = 1) -> tuple[list[int], list, list]:
    """A release's bins coarsened to the request's ``points`` (fine-grid indices): for each point, the
    last bin end at or before it (with ``levels``: among the ends of level ``level`` or above,
    :func:`canonical_bins`), deduplicated, and the release's last end always; the counts of the bins in
    between summed.  Every end is an end of the release and every count a sum of its counts: a
    function of the release and the request only.

    Raises
    ------
    RequestError
        If a count was suppressed (``None``).
    """
    ends = [int(e) for e in ends]
    if not ends:
        return [], [], []
    if any(v is None for v in (*events, *censored)):
        raise RequestError("a node suppressed survival counts; its bins cannot be combined")
    eligible = ends if levels is None else [e for e, b in zip(ends, levels) if int(b) >= level]
    keep: set[int] = {ends[-1]}
    if eligible:
        # for each point the longest prefix of ``eligible`` at or before it (a running maximum, so that
        # the ends need not be checked ascending), its last end kept: one search for every point
        prefix = np.maximum.accumulate(np.asarray(eligible, dtype=np.int64))
        position = np.searchsorted(prefix, _points_array(points), side="right")
        keep.update(np.unique(np.asarray(eligible, dtype=np.int64)[position[position > 0] - 1]).tolist())
    target = sorted(keep)
    where = np.searchsorted(np.asarray(target), np.asarray(ends), side="left")
    out_events: list = [0] * len(target)
    out_censored: list = [0] * len(target)
    for k, d, c in zip(where.tolist(), events, censored):
        out_events[k] += d  # whole numbers stay whole; a noisy node's signed ones too
        out_censored[k] += c
    return target, out_events, out_censored


def _points_array(points: Sequence[int]) -> np.ndarray:
    """``points`` as int64 (each ``int(p)``); an int64 array is taken as it is (:func:`combine_parts` converts
    the request's points once for every part)."""
    if isinstance(points, np.ndarray) and points.dtype == np.int64:
        return points
    return np.fromiter(map(int, points), dtype=np.int64, count=len(points))


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


def leaving_series(index: np.ndarray, data: pd.DataFrame, request: AnalysisRequest, model: DataModel,
                   grid: np.ndarray, mask: np.ndarray | None = None) -> list[list[int]]:
    """Fine counts of the rows leaving follow-up at each grid point (``index``, :func:`outcome`), one
    series per level of the event variable (rows followed within the grid) and one of the rows followed
    beyond it (censored at its last point whatever the event): what :func:`cohort_bins` merges on, so
    that every level of the event variable gets the same bins.  Node-only: never released."""
    times = numeric_values(data[request.y[0]])
    beyond = np.searchsorted(grid, times, side="left") >= len(grid)
    event_var = model.variable(request.y[1])
    codes = category_codes(data[request.y[1]], event_var).to_numpy()
    keep = np.ones(len(index), dtype=bool) if mask is None else mask
    out = [np.bincount(index[keep & (codes == str(level)) & ~beyond], minlength=len(grid)).tolist()
           for level in event_var.enumeration_codes]
    out.append(np.bincount(index[keep & beyond], minlength=len(grid)).tolist())
    return out


def request_level(time_var: Variable, bin_width: float) -> int:
    """The level of the canonical bins a request coarsens (:func:`canonical_bins`): the largest power of
    two of fine steps at most ``bin_width`` (1 when ``bin_width`` is below one fine step)."""
    fine = fine_grid(time_var)
    step = float(fine[1] - fine[0]) if len(fine) > 1 else 1.0
    block = 1
    while 2 * block * step <= float(bin_width) * (1 + 1e-12) and block < len(fine):
        block *= 2
    return block


def common_ends(end_lists: Sequence[Sequence[int]]) -> list[int]:
    """Bin ends present in every list (the coarsest bins every node's bins nest in)."""
    if not end_lists:
        return []
    # a range (``follow_up_cut``'s whole grid) only bounds the others: tested per end, not made a set
    ranges = [ends for ends in end_lists if isinstance(ends, range)]
    sets = sorted((set(ends) for ends in end_lists if not isinstance(ends, range)), key=len)
    common = set(ranges[0]) if not sets else sets[0].intersection(*sets[1:])
    return sorted(e for e in common if all(e in r for r in ranges))


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


def binning_summary(time_var: Variable, fine: np.ndarray, bin_width: float, used_ends: Sequence[int],
                    points: Sequence[int], level: int) -> dict:
    """How the times were binned, for the result (``exact`` or ``binned``).

    ``fine`` is the fine grid up to the end of follow-up used, ``used_ends`` the common bin ends (fine
    indices), ``points`` the request's grid on the fine grid (:func:`request_points`) and ``level``
    the request's level of the canonical bins (:func:`request_level`).  ``merged_for_disclosure``:
    the bins are not the request's grid points (ends merged by some node, or moved down to a
    canonical bin end).  ``exact``: every fine point up to the end is a bin end and the fine grid has
    unit steps from a whole number over an integer variable.
    """
    used = [int(e) for e in used_ends]
    wanted = [int(p) for p in points if p <= len(fine) - 1]
    step = float(fine[1] - fine[0]) if len(fine) > 1 else 1.0
    merged = used != wanted
    exact = (time_var.sql_type == "int" and step == 1.0 and float(fine[0]).is_integer()
             and used == list(range(len(fine))))
    note = ("every distinct time is its own bin: equal to the unbinned analysis" if exact else
            "times rounded up to the bin ends (timeline): each node's canonical bins on the data model's fine "
            "grid (fine_step), merged for disclosure control, coarsened to the request's grid at their ends on "
            "multiples of level from the origin (the last such end at or before each grid point of bin_width); "
            "equal to the analysis of the rounded times, an approximation of the unbinned analysis")
    return {"method": "exact" if exact else "binned", "origin": float(fine[0]), "bin_width": float(bin_width),
            "fine_step": step, "level": level * step, "grid_points": len(wanted), "bins_used": len(used),
            "merged_for_disclosure": merged, "note": note}


def coarsen_groups(groups: list[dict], min_count: int, bin_count: int | None = None) -> list[dict]:
    """Per-group fine counts -> the canonical release: every group on the cohort's shared bins
    (:func:`cohort_bins`), with each end's level under ``levels``.  Groups already on merged bins
    (``ends``: a study's survival partition) are merged further on those bins with :func:`safe_bins`,
    every end of any level.  The node-only ``series`` never come out."""
    if groups and all(group.get("ends") is None for group in groups):
        ends, levels = cohort_bins(groups, min_count, bin_count)
        return [{**{k: v for k, v in group.items() if k != "series"}, "ends": ends,
                 "events": bin_counts(group["events"], ends), "censored": bin_counts(group["censored"], ends),
                 "levels": levels} for group in groups]
    groups = [{k: v for k, v in group.items() if k != "series"} for group in groups]
    out = []
    for group in groups:
        if group.get("ends") is None:
            ends, events, censored, levels = canonical_bins(group["events"], group["censored"], min_count)
        else:
            merged, events, censored = safe_bins(group["events"], group["censored"], min_count)
            ends = [int(group["ends"][e]) for e in merged]
            levels = [MAX_LEVEL] * len(ends)
        out.append({**group, "ends": ends, "events": events, "censored": censored, "levels": levels})
    return out


def coarsen_groups_to(groups: list[dict], points: Sequence[int], level: int = 1) -> list[dict]:
    """Each group's canonical bins coarsened to the request's points at the request's level
    (:func:`coarsen_to`); the levels stay at the node."""
    out = []
    for group in groups:
        ends, events, censored = coarsen_to(group["ends"], group["events"], group["censored"], points,
                                            group.get("levels"), level)
        out.append({**{k: v for k, v in group.items() if k != "levels"}, "ends": ends, "events": events,
                    "censored": censored})
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


def point_outcome(data: pd.DataFrame, request: AnalysisRequest, model: DataModel, points: Sequence[int],
                  event_level: str) -> tuple[np.ndarray, np.ndarray]:
    """Each row's bin among the request's ``points`` (fine-grid indices, the bin ``(points[k-1],
    points[k]]`` of its fine point) and its event indicator; rows beyond the last point are censored
    there (:func:`outcome`).  For an unmerged (noisy) release on the request's grid."""
    index, event = outcome(data, request, model, fine_grid(model.variable(request.y[0])), event_level)
    where = np.searchsorted(np.asarray(points, dtype=np.int64), index, side="left")
    beyond = where >= len(points)
    where[beyond] = len(points) - 1
    return where.astype(np.int64), event & ~beyond


def shape_release(groups: list[dict], min_count: int, points: Sequence[int] | None, last: int | None,
                  level: int = 1, bin_count: int | None = None) -> tuple[list[dict], list[int]]:
    """What a node releases of its per-group fine counts: the canonical release (:func:`coarsen_groups`),
    coarsened to the request's ``points`` at the request's ``level`` (:func:`coarsen_groups_to`), cut
    at fine index ``last`` (``max_time`` rounded up to the request's grid, :func:`truncate_groups`).
    Also the canonical release's counts, which the node checks (``cell_n``) so that every request is
    refused exactly when the canonical release would be.  ``bin_count``: see :func:`cohort_bins`."""
    merged = coarsen_groups(groups, min_count, bin_count)
    shaped = ([{k: v for k, v in g.items() if k != "levels"} for g in merged] if points is None
              else coarsen_groups_to(merged, points, level))
    if last is not None:
        shaped = truncate_groups(shaped, int(last))
    return shaped, released_cells(merged)


def combine_parts(parts: Sequence[tuple[Sequence[int], Sequence, Sequence]], points: Sequence[int],
                  last: int, fine_points: int) -> tuple[int, list[tuple[list[int], list, list]]]:
    """The central side's view of the nodes' bins ``(ends, events, censored)`` (fine-grid indices):
    each coarsened to the request's ``points`` over the declared range (a node's released bins are
    already; unmerged counts sent in process are not), then every one cut at the end of follow-up,
    the last end common to all at or before fine index ``last`` (:func:`follow_up_cut`).

    Returns
    -------
    cut : int
        The end of follow-up (a fine index).
    parts : list
        Each part's bins up to the cut, the later ones folded into censorings there.
    """
    points = _points_array(points)  # once, not once per part
    coarse = [coarsen_to(ends, events, censored, points) for ends, events, censored in parts]
    cut = follow_up_cut([range(fine_points)] + [ends for ends, _, _ in coarse], last)
    return cut, [truncate_bins(*part, cut) for part in coarse]
