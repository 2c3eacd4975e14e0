"""One survival partition per study at a node: Kaplan-Meier's bins, merged once, for every cohort.

Outside a study a node merges Kaplan-Meier's time bins per request, per group, until no count is
below ``nfilter_tab`` (:func:`mipflow.algorithms.survival.safe_bins`).  Across a study's cohorts
that is not enough: the population's deaths in a bin less the elderly's are the young's, a cohort
no request may ask for, and two cohorts merged differently give differences over bins finer than
either merge protected (a fourth outside review bounded a young death's time this way).

So approval (and refresh) fixes, on the snapshot, one partition of the protocol's survival grid
(``survival``: time variable, bin width, optionally the event variable; the grid is the request's grid on
the data model's fine grid, :func:`mipflow.algorithms.survival.request_points`, as every Kaplan-Meier
release bins its times) for the whole family:

* the **cells**: every cohort of the family and every difference of two nested cohorts, crossed
  with :func:`~mipflow.node.controls.study_cells.survival_base`'s levels (the event's levels, by
  the levels of one other nominal variable);
* the **partition**: adjacent grid bins merged, scanning forward, until every cell of the open
  bin holds 0 or at least ``nfilter_tab`` rows (a small remainder merged backwards); a cell whose
  total over the whole grid is small is left to the per-request controls (a cohort's group of
  fewer than ``nfilter_tab`` events is refused there) or to the level-cell rule (a difference's);
* the merged bins then join the level-cell rule as cells of their own (differences, the atom rule
  within each merged bin, and the rows added and removed per cell at a refresh).

At a step, every Kaplan-Meier release of the study sums its fine counts into the partition's bins
(:func:`apply_partition`) before the per-request controls, which then find nothing to merge in a
group of at least ``nfilter_tab`` events; every cohort and group at this node shares the bins.
Sums and differences of cells that are each 0 or at least ``nfilter_tab`` over the same bins are
too (the counts are nonnegative), so no subtraction of the study's survival releases gives fewer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from mipflow.exceptions import ConfigError


def grid_bins(times: np.ndarray, time_var: Any, bin_width: float) -> tuple[np.ndarray, int]:
    """Each row's point on the protocol's grid (the request's grid on the fine grid,
    :func:`~mipflow.algorithms.survival.request_points`: the point ``k`` with
    ``points[k-1] < fine point <= points[k]``, as Kaplan-Meier's releases bin it), and the number of
    grid points.

    Raises
    ------
    ConfigError
        If a row's time lies beyond the declared end (validation keeps such rows out; Kaplan-Meier
        would censor them at the end, a cell the partition does not describe).  Admin-facing.
    """
    from mipflow.algorithms.survival import fine_grid, request_points

    fine = fine_grid(time_var)
    points = np.asarray(request_points(time_var, float(bin_width), None), dtype=np.int64)
    index = np.searchsorted(fine, np.asarray(times, dtype=float), side="left")
    if np.any(index >= len(fine)):
        raise ConfigError(f"rows of the study's population have {time_var.code!r} beyond its declared maxValue "
                          f"({fine[-1]:g}): correct the rows or the data model before the study")
    return np.searchsorted(points, index, side="left").astype(np.int64), len(points)


def grid_labels(time_var: Any, bin_width: float, ends: Sequence[int]) -> list[str]:
    """Labels of the merged bins ending at grid points ``ends``."""
    from mipflow.algorithms.survival import fine_grid, request_points

    fine = fine_grid(time_var)
    grid = fine[np.asarray(request_points(time_var, float(bin_width), None), dtype=np.int64)]
    out, start = [], None
    for end in ends:
        out.append(f"{time_var.code} up to {grid[end]:g}" if start is None
                   else f"{time_var.code} in ({grid[start]:g}, {grid[end]:g}]")
        start = end
    return out


def merged_bins(points: np.ndarray, ends: Sequence[int]) -> np.ndarray:
    """Each row's merged bin (index into ``ends``) from its grid point."""
    return np.searchsorted(np.asarray(ends, dtype=np.int64), points, side="left").astype(np.int64)


def labelled_cells(sets: Sequence[tuple[str, np.ndarray]], population: np.ndarray,
                   base: Sequence[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """Every cohort and every difference of two nested cohorts (row masks over the sorted
    ``population``), by every level cell of ``base``: ``(label, mask)``, each set once."""
    from mipflow.node.controls.study_cells import _rows, nested_differences

    masks: list[tuple[str, np.ndarray]] = []
    seen: set[bytes] = set()
    for label, keys in sets:  # cohorts with the same rows (one dataset's population) once
        mask = _rows(population, keys)
        if mask.tobytes() not in seen:
            seen.add(mask.tobytes())
            masks.append((label, mask))
    rows = masks + nested_differences(masks)
    return [(label + suffix, mask & level) for label, mask in rows for suffix, level in base]


def cell_counts(cells: Sequence[tuple[str, np.ndarray]], points: np.ndarray, n_points: int,
                only: np.ndarray | None = None) -> np.ndarray:
    """Counts ``(cells, grid points)``; with ``only`` (a row mask), of those rows only."""
    out = [np.bincount(points[mask if only is None else mask & only], minlength=n_points) for _, mask in cells]
    return np.array(out, dtype=np.int64).reshape(len(out), n_points)


def merge(counts: np.ndarray, ends: Sequence[int]) -> np.ndarray:
    """Counts on the bins ending at ``ends`` (indices along the last axis of ``counts``)."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size == 0:
        return counts.reshape(*counts.shape[:-1], len(ends))
    starts = [0, *[int(e) + 1 for e in ends[:-1]]]
    return np.add.reduceat(counts, starts, axis=-1)


@dataclass(frozen=True)
class Change:
    """A refresh's survival partition: the new ends, the cells' counts on them, and what the
    change would disclose (admin-facing)."""

    ends: list[int]
    counts: dict[str, list[int]]
    problems: list[str]


def refresh_partition(cells: Sequence[tuple[str, np.ndarray]], points: np.ndarray, n_points: int,
                      added: np.ndarray, previous: dict[str, Any], tab: int) -> Change:
    """The partition after a refresh: a coarsening of the one in force such that, in every merged
    bin, every cell holds 0 or at least ``tab`` rows now, and the rows added and the rows removed
    since the snapshot are each 0 or at least ``tab`` too (a study's release before and after the
    refresh differ by exactly those).  ``previous``: the record's ``survival`` (``ends`` and the
    cells' counts on them).  A cell whose rows added or removed over the whole grid are 1 to
    ``tab - 1`` cannot be merged away: a problem."""
    old_ends = [int(e) for e in previous["ends"]]
    now = merge(cell_counts(cells, points, n_points), old_ends)
    plus = merge(cell_counts(cells, points, n_points, added), old_ends)
    labels = [label for label, _ in cells]
    old = np.array([previous["counts"].get(label, [0] * len(old_ends)) for label in labels],
                   dtype=np.int64).reshape(len(labels), len(old_ends))
    minus = old - now + plus
    gone = [label for label in previous["counts"] if label not in set(labels)]
    problems = []
    for label, a, r in zip(labels, plus.sum(axis=1), minus.sum(axis=1)):
        for n, what in ((int(a), "added"), (int(r), "removed")):
            if 0 < n < tab:
                problems.append(f"{label.replace('|', ', ')}: {n} row(s) {what}")
    for label in gone:  # a cell that no longer exists lost all its rows
        n = int(sum(previous["counts"][label]))
        if 0 < n < tab:
            problems.append(f"{label.replace('|', ', ')}: {n} row(s) removed")
    columns = partition(np.vstack([now, plus, minus]), tab)
    ends = [old_ends[c] for c in columns]
    merged = merge(now, columns)
    return Change(ends=ends, counts={label: row.tolist() for label, row in zip(labels, merged)}, problems=problems)


def partition(counts: np.ndarray, tab: int) -> list[int]:
    """Merged bin ends (grid points) such that every cell whose total is at least ``tab`` holds 0
    or at least ``tab`` rows in every merged bin (forward scan, small remainder merged backwards)."""
    n_points = counts.shape[1]
    totals = counts.sum(axis=1)
    watched = counts[totals >= tab]

    def ok(column: np.ndarray) -> bool:
        return bool(np.all((column == 0) | (column >= tab)))

    ends: list[int] = []
    sums: list[np.ndarray] = []
    open_sum = np.zeros(len(watched), dtype=np.int64)
    for k in range(n_points):
        open_sum = open_sum + watched[:, k]
        if ok(open_sum):
            ends.append(k)
            sums.append(open_sum)
            open_sum = np.zeros(len(watched), dtype=np.int64)
    # a small remainder after the last safe end: merged into the bins before it until safe
    while open_sum.any() and not ok(open_sum) and ends:
        ends.pop()
        open_sum = open_sum + sums.pop()
    if not ends or ends[-1] != n_points - 1:
        ends.append(n_points - 1)
    return ends


# --------------------------------------------------------------------------- at a step


def _fine_ends(study: Any, model: Any, what: str) -> list[int]:
    """The study's partition as fine-grid indices (its ends are points of the protocol's grid, which
    every survival request of the study takes, on the fine grid as the local steps count).

    Raises
    ------
    DisclosureError
        (control ``study``) if the study has no partition (approved before partitions existed: its
        node admin refreshes it) or one that does not fit the grid.  Decided without data.
    """
    from mipflow.algorithms.survival import request_points

    ends = study.record.get("survival_ends")
    grid = study.protocol.survival
    points = request_points(model.variable(grid["time"]), grid["bin_width"], None) if grid else None
    if not ends or not points or len(ends) > len(points) or int(ends[-1]) != len(points) - 1:
        raise study._refuse(f"its {what} are answered on the study's survival partition, which this node has not "
                            "computed for the snapshot; it is answered once its node admin refreshes the study "
                            "(mipflow study refresh)")
    return [int(points[int(e)]) for e in ends]


def apply_partition(study: Any, aggregates: dict[str, Any], model: Any) -> dict[str, Any]:
    """Kaplan-Meier's fine counts summed into the study's partition (``ends`` per group, as fine-grid
    indices), before the per-request controls."""
    ends = _fine_ends(study, model, "Kaplan-Meier analyses")
    groups = [{**group, "ends": ends, "events": merge(group["events"], ends).tolist(),
               "censored": merge(group["censored"], ends).tolist()} for group in aggregates["groups"]]
    return {**aggregates, "groups": groups}


def apply_cox(study: Any, round_no: int, aggregates: dict[str, Any], state: Any, model: Any) -> dict[str, Any]:
    """Cox regression in a study: round 0's fine counts summed into the study's partition (as
    :func:`apply_partition`; then released as they are, each count checked per request); later
    rounds only on bins that are unions of the partition's (``state.ends`` among its fine ends), so
    a central site cannot ask for risk sets at finer bins than the family's cells were checked on.
    Decided from the state, the protocol and the stored partition."""
    from mipflow.algorithms.survival import FOLLOW_UP_KEY, LEVEL_KEY, POINTS_KEY

    ends = _fine_ends(study, model, "Cox regressions")
    if round_no == 0:
        events, censored = merge(aggregates["events"], ends).tolist(), merge(aggregates["censored"], ends).tolist()
        rest = {k: v for k, v in aggregates.items() if k not in (POINTS_KEY, FOLLOW_UP_KEY, LEVEL_KEY)}
        # every count is then checked per request (group_counts): a cohort with fewer events than
        # nfilter_tab in a partition bin is refused, not merged further
        return {**rest, "ends": ends, "events": events, "censored": censored, "group_counts": [*events, *censored]}
    asked = state.get("ends") if isinstance(state, dict) else None
    if not isinstance(asked, list) or not set(int(e) for e in asked) <= set(ends):
        raise study._refuse("a later round of Cox regression uses bins that are not unions of the study's survival "
                            "partition (the state's ends must be among the partition's ends)")
    return aggregates


def apply_survival(study: Any, algorithm: str, round_no: int, aggregates: dict[str, Any], state: Any,
                   model: Any) -> dict[str, Any]:
    """A study step's survival release on the study's partition, by algorithm: Kaplan-Meier's
    (:func:`apply_partition`), Cox regression's (:func:`apply_cox`); any other algorithm's
    ``aggregates`` unchanged.  Before the per-request controls."""
    if algorithm == "kaplan_meier":
        if "groups" not in aggregates or "_pool" in aggregates:
            # pooled bins (ADR 0052): the family's pooled partition, applied with the pooled counts
            return aggregates
        return apply_partition(study, aggregates, model)
    if algorithm == "cox_regression":
        return apply_cox(study, round_no, aggregates, state, model)
    return aggregates
