"""Kaplan-Meier on one pooled partition: fine counts sealed and masked among the nodes, released
masked on bins every node derives from the pooled counts (ADR 0052).

Per node, Kaplan-Meier's bins are merged until each node's own counts are safe, and the central
side keeps only the bin ends every node has (:func:`mipflow.algorithms.survival.common_ends`): on a few
hundred patients per node, and in a study whose partition guards every cohort and difference of
its family at each node, a curve keeps a few time points.  With ``survival_bins = "pooled"`` (the
central site sets it when secure aggregation masks at least 3 pinned participants):

* **round 0**: each node counts its events, censorings (and, outside a study, the rows leaving per
  level of the event variable) per group on the data model's fine grid, as for its own release, and
  seals them **masked** to every participant (:data:`~mipflow.algorithms.sealed.SEALED`,
  ``sealed_masked``: :mod:`mipflow.secagg.sealed_masks`); in a study the node adds its family's cells
  on the protocol's grid (:mod:`mipflow.node.controls.study_pooled`).  In the clear only ``group_n``,
  as a per-node release gives it;
* **round 1** (masked): each node opens the pool, identical at every node, and its controls derive
  the **pooled** canonical release (:func:`pooled_release`: :func:`~mipflow.algorithms.survival.shape_release`
  on the pooled counts; in a study the family's pooled partition,
  :func:`~mipflow.algorithms.survival_bins.finest_partition`, first, refined for the population's
  releases, :func:`family_ends`, ADR 0056), check every pooled cell against
  ``nfilter_tab`` and release the node's **own** counts on those bins, masked
  (:func:`slot_release`: one slot per point of the request's grid, so every node's layout is the same).
  The central site reads only the sum.

The node-side rule that makes the relaxation safe (one participant set and one pool per cohort) is
:mod:`mipflow.node.controls.pooled_bins`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from mipflow.algorithms.survival import FOLLOW_UP_KEY, LEVEL_KEY, POINTS_KEY, released_cells, shape_release
from mipflow.algorithms.survival_bins import bin_counts, finest_partition, refine_partition
from mipflow.exceptions import RequestError

#: The request parameter choosing the bins, and its values.
BINS_PARAMETER = "survival_bins"
AUTO, POOLED, PER_NODE = "auto", "pooled", "per_node"
#: The state phase of the masked round.
PHASE = "pooled"
#: Node-only key of a round-1 local step: the pool the node opened (read and dropped by the controls).
POOL_KEY = "_pool"
#: Node-only key (study mode): the protocol grid's points on the fine grid, for the family's partition.
FAMILY_POINTS_KEY = "family_points"
#: Node-only key (study mode): how many of the family's first cells are the population's (0: a subgroup's release).
FAMILY_POPULATION_KEY = "family_population"
#: Node-only key (standard mode, ADR 0060): a changed pool's canonical group ends and their levels, derived
#: by the controls against the request's chain of earlier pools (:mod:`mipflow.node.controls.pool_chain`).
CHAIN_KEY = "chain_ends"
#: The least number of masked participants for pooled bins.
MIN_NODES = 3


def is_pooled(params: Mapping[str, Any]) -> bool:
    """Whether a request's parameters ask for the pooled partition."""
    return params.get(BINS_PARAMETER) == POOLED


def resolve(parameters: Mapping[str, Any], masked_participants: int, fallback: bool) -> dict[str, Any]:
    """The request's parameters with ``survival_bins`` decided for one attempt of the central site:
    ``auto`` becomes ``pooled`` when the attempt masks at least :data:`MIN_NODES` participants and no
    node declined the pooled partition before (``fallback``), else ``per_node``.

    Raises
    ------
    RequestError
        If ``pooled`` is asked for explicitly without secure aggregation among at least
        :data:`MIN_NODES` nodes.
    """
    asked = parameters.get(BINS_PARAMETER) or AUTO
    if asked == AUTO:
        chosen = POOLED if masked_participants >= MIN_NODES and not fallback else PER_NODE
        return {**parameters, BINS_PARAMETER: chosen}
    if asked == POOLED and masked_participants < MIN_NODES:
        raise RequestError(f"survival_bins 'pooled' needs secure aggregation among at least {MIN_NODES} nodes; "
                           "use 'auto' or 'per_node'")
    return dict(parameters)


# --------------------------------------------------------------------------- round 0: what a node seals


def sealed_counts(groups: Sequence[Mapping[str, Any]], with_series: bool = True) -> dict[str, list]:
    """A node's fine counts per group as integer arrays (the sealed sums of round 0): ``events`` and
    ``censored`` (groups, fine points) and, outside a study, ``series`` (groups, event levels + 1,
    fine points: the rows leaving per level of the event variable, and beyond the grid)."""
    out = {"events": [list(map(int, g["events"])) for g in groups],
           "censored": [list(map(int, g["censored"])) for g in groups]}
    if with_series:
        out["series"] = [[list(map(int, s)) for s in g["series"]] for g in groups]
    return out


def pool(parts: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """The participants' sealed counts added (masked parts: their masks cancel,
    :func:`~mipflow.algorithms.sealed.unmask_parts`; in process, parts in the clear).

    Raises
    ------
    RequestError
        If the parts differ in keys or shapes, or masked and clear parts are mixed.
    """
    from mipflow.algorithms.sealed import is_masked, unmask_parts

    if not parts:
        raise RequestError("no sealed counts to pool")
    if any(is_masked(p) for p in parts):
        return unmask_parts(parts)
    keys = set(parts[0])
    if any(set(p) != keys for p in parts):
        raise RequestError("the participants' sealed counts hold different keys: every node must run the same step")
    out = {}
    for key in sorted(keys):
        arrays = [np.asarray(p[key], dtype=np.int64) for p in parts]
        if any(a.shape != arrays[0].shape for a in arrays):
            raise RequestError(f"the participants' sealed counts {key!r} differ in shape")
        out[key] = np.sum(arrays, axis=0)
    return out


# --------------------------------------------------------------------------- round 1: the release


def _own_on(ends: Sequence[int], events: Sequence[int], censored: Sequence[int]) -> tuple[list[int], list[int]]:
    """A node's fine counts on bins ending at ``ends`` (fine indices), the rows after the last end
    folded into the censorings there (as :func:`~mipflow.algorithms.survival.truncate_bins`)."""
    if not ends:
        return [], []
    last = int(ends[-1])
    ev = bin_counts(np.asarray(events, dtype=np.int64)[:last + 1], ends)
    ce = bin_counts(np.asarray(censored, dtype=np.int64)[:last + 1], ends)
    ce[-1] += int(np.sum(events[last + 1:])) + int(np.sum(censored[last + 1:]))
    return ev, ce


def pooled_groups(pooled: Mapping[str, Any], min_count: int) -> list[dict[str, Any]]:
    """The pooled fine counts per group, ready for :func:`~mipflow.algorithms.survival.shape_release`:
    outside a study with their series (one partition per cohort, ADR 0008, on the pooled counts); in a
    study summed into the family's pooled partition (``family``: cells by protocol grid points,
    ``family_points``: those points on the fine grid; on the population, its refinement,
    :func:`family_ends`), merged further per group there as a study's per-node release is."""
    events = np.asarray(pooled["events"], dtype=np.int64)
    censored = np.asarray(pooled["censored"], dtype=np.int64)
    if "family" in pooled:
        points = [int(p) for p in pooled[FAMILY_POINTS_KEY]]
        grid_ends = family_ends(np.asarray(pooled["family"], dtype=np.int64), int(pooled.get(FAMILY_POPULATION_KEY, 0)),
                                min_count)
        ends = [points[e] for e in grid_ends]
        return [{"ends": ends, "events": bin_counts(ev, ends), "censored": bin_counts(ce, ends)}
                for ev, ce in zip(events, censored)]
    series = np.asarray(pooled["series"], dtype=np.int64)
    return [{"events": ev.tolist(), "censored": ce.tolist(), "series": s.tolist()}
            for ev, ce, s in zip(events, censored, series)]


def family_ends(family: np.ndarray, population_cells: int, min_count: int) -> list[int]:
    """The bins (ends: protocol grid points) of a study's pooled Kaplan-Meier release (ADR 0056).

    A subgroup's release: the **family partition** (:func:`~mipflow.algorithms.survival_bins.finest_partition`
    of every family cell: each cohort and each difference of two, by the level cells), as ADR 0052.
    The population's release (``population_cells`` > 0: the family's first ``population_cells`` rows,
    the population by the level cells): the finest refinement of the family partition that keeps the
    population's own cells at 0 or at least ``min_count``
    (:func:`~mipflow.algorithms.survival_bins.refine_partition`).  Every subgroup's bin is then a union
    of the population's, so a difference of the population's and a subgroup's releases is a sum of the
    population's cells over its own bins and of family cells over the family's bins.
    """
    coarse = finest_partition(family, min_count)
    if population_cells <= 0:
        return coarse
    return refine_partition(family[:population_cells], coarse, min_count)


def pooled_release(aggregates: Mapping[str, Any], min_count: int) -> dict[str, Any]:
    """Round 1 at a node's controls: the pooled canonical release shaped by the request (bins every
    node derives alike), the node's own counts on those bins in slots (:func:`slot_release`), the pooled
    cells for the controls' check (``group_counts``, 0 or at least ``min_count``) and the pooled
    canonical cells (``cell_n``, checked, never sent).  The pool and the fine counts stay at the node."""
    pooled = aggregates[POOL_KEY]
    points = [int(p) for p in aggregates[POINTS_KEY]]
    last = aggregates.get(FOLLOW_UP_KEY)
    if CHAIN_KEY in pooled and "family" not in pooled:
        shaped, canonical = _shape_on(pooled, pooled[CHAIN_KEY], points, last, int(aggregates.get(LEVEL_KEY, 1)))
    else:
        shaped, canonical = shape_release(pooled_groups(pooled, min_count), min_count, points, last,
                                          int(aggregates.get(LEVEL_KEY, 1)))
    slots = []
    for own, group in zip(aggregates["groups"], shaped):
        events, censored = _own_on(group["ends"], own["events"], own["censored"])
        slots.append(slot_release(group["ends"], events, censored, points))
    rest = {k: v for k, v in aggregates.items()
            if k not in (POOL_KEY, POINTS_KEY, FOLLOW_UP_KEY, LEVEL_KEY, "groups")}
    return {**rest, "slots": slots, "group_counts": released_cells(shaped), "cell_n": canonical}


def _shape_on(pooled: Mapping[str, Any], chain: Mapping[str, Any], points: Sequence[int], last: int | None,
              level: int) -> tuple[list[dict], list[int]]:
    """:func:`~mipflow.algorithms.survival.shape_release` on canonical group ends given by the chain rule
    (ADR 0060) instead of merged here: coarsened to the request's points, cut at ``last``."""
    from mipflow.algorithms.survival import coarsen_groups_to, truncate_groups

    ends, levels = [int(e) for e in chain["ends"]], [int(v) for v in chain["levels"]]
    merged = [{"ends": ends, "events": bin_counts(ev, ends), "censored": bin_counts(ce, ends), "levels": levels}
              for ev, ce in zip(np.asarray(pooled["events"], dtype=np.int64),
                                np.asarray(pooled["censored"], dtype=np.int64))]
    shaped = coarsen_groups_to(merged, points, level)
    if last is not None:
        shaped = truncate_groups(shaped, int(last))
    return shaped, released_cells(merged)


def slot_release(ends: Sequence[int], events: Sequence[int], censored: Sequence[int],
                 points: Sequence[int]) -> dict[str, list[int]]:
    """Counts on bins ending at ``ends`` laid out on the request's grid ``points`` (fine indices): the
    bin ending at ``e`` in the slot of the first point at or after ``e`` (one bin per slot: the ends
    are each the last canonical end at or before a point).  ``is_end`` and ``end`` (its fine index)
    are the same at every node; summed over ``n`` nodes they read ``n`` and ``n * end``.

    Raises
    ------
    RequestError
        If two ends fall in one slot (the bins are not a coarsening to the request's grid).
    """
    k = len(points)
    where = np.searchsorted(np.asarray(points, dtype=np.int64), np.asarray(ends, dtype=np.int64), side="left")
    where = np.minimum(where, k - 1)
    if len(set(where.tolist())) != len(where):
        raise RequestError("the pooled bins do not fit the request's grid")
    out = {"is_end": [0] * k, "end": [0] * k, "events": [0] * k, "censored": [0] * k}
    for slot, end, d, c in zip(where.tolist(), ends, events, censored):
        out["is_end"][slot], out["end"][slot] = 1, int(end)
        out["events"][slot], out["censored"][slot] = int(d), int(c)
    return out


def read_slots(aggregates: Sequence[Mapping[str, Any]]) -> list[dict[str, list[int]]]:
    """The central side's pooled groups from round 1's aggregates (one masked sum, or each node's in
    process): per group, its bin ends (fine indices) and pooled counts.

    Raises
    ------
    RequestError
        If the nodes did not derive the same bins (a slot's ``is_end`` is neither 0 nor the number of
        nodes) or the aggregates do not fit.
    """
    nodes = int(round(sum(float(a["nodes"]) for a in aggregates)))
    n_groups = len(aggregates[0]["slots"])
    if nodes < 1 or any(len(a["slots"]) != n_groups for a in aggregates):
        raise RequestError("the nodes' pooled Kaplan-Meier counts do not fit together")
    out = []
    for g in range(n_groups):
        total = {key: np.rint(np.sum([np.asarray(a["slots"][g][key], dtype=float) for a in aggregates], axis=0))
                 .astype(np.int64) for key in ("is_end", "end", "events", "censored")}
        if not np.all((total["is_end"] == 0) | (total["is_end"] == nodes)):
            raise RequestError("the nodes derived different pooled time bins: every node must run the same step")
        used = total["is_end"] == nodes
        if np.any(total["end"][used] % nodes):
            raise RequestError("the nodes derived different pooled time bins: every node must run the same step")
        out.append({"ends": (total["end"][used] // nodes).tolist(), "events": total["events"][used].tolist(),
                    "censored": total["censored"][used].tolist()})
    return out
