"""A study's family cells for Kaplan-Meier's pooled bins: the same layout at every node (ADR 0052).

At a node, a study's survival partition (:mod:`mipflow.node.controls.study_survival`) guards every
cohort of the family and every difference of two nested cohorts, by the level cells of
:func:`~mipflow.node.controls.study_cells.survival_base`, at that node.  With pooled bins the central
site reads pooled counts only, so the guard moves to the pooled counts: every node seals its family's
cells on the protocol's grid (masked, :mod:`mipflow.secagg.sealed_masks`), every node derives one
partition from their sum (:func:`~mipflow.algorithms.survival_bins.finest_partition`), and every
pooled Kaplan-Meier release of a subgroup is summed into it; the population's releases into its
finest refinement that keeps the population's own cells safe (ADR 0056,
:func:`~mipflow.algorithms.survival_pooled.family_ends`): the population's cells lead the layout.

The masked sum needs one layout at every node, so the cells come from the protocol and the data
model, never from which levels or nestings a node's rows have: the population and each subgroup;
for every ordered pair of them ``A`` and ``B``, the rows of ``A`` not in ``B`` (a nested difference
where ``B`` lies in ``A``, a superset of the per-node rule's cells elsewhere); each crossed with the
level cells of every enumeration of up to two nominal study variables (or, with the protocol's
event variable, its levels and their crossings with one other nominal variable).  Pooled bins in a
study are answered on all of the study's datasets only (a dataset's own cohorts stay per node).
"""
from __future__ import annotations

from itertools import combinations, product
from typing import Any

import numpy as np

from mipflow.exceptions import DisclosureError

#: Most elements (cells x grid points) of a family's sealed cells; beyond, pooled bins are declined.
MAX_FAMILY_ELEMENTS = 2_000_000


def decline(what: str) -> DisclosureError:
    """The refusal of pooled bins (control ``pooled_bins``): the central site falls back to per-node bins."""
    return DisclosureError(f"pooled time bins are not answered here: {what}; per-node bins are", control="pooled_bins")


def base_levels(model: Any, protocol: Any) -> list[dict[str, str]]:
    """The level cells of the layout, from the data model's enumerations: each a conjunction of
    ``variable == level`` (the empty one: every row).  Without the protocol's event variable, every
    enumeration of up to two nominal study variables; with it, its levels and their crossings with
    one other nominal variable.  The population's cells are the layout's first ``len(base_levels)``."""
    from mipflow.node.controls.study_cells import SURVIVAL_CROSS, nominal_variables

    nominal = nominal_variables(model, protocol.variables)
    codes = {code: [str(level) for level in model.variable(code).enumeration_codes] for code in nominal}
    event = (protocol.survival or {}).get("event")
    if event is None:
        out: list[dict[str, str]] = [{}]
        for width in range(1, min(SURVIVAL_CROSS, len(nominal)) + 1):
            for group in combinations(nominal, width):
                out.extend(dict(zip(group, combo)) for combo in product(*(codes[c] for c in group)))
        return out
    out = []
    for level in codes[event]:
        out.append({event: level})
        for other in (v for v in nominal if v != event):
            out.extend({event: level, other: lv} for lv in codes[other])
    return out


def _base(model: Any, protocol: Any, frame: Any) -> list[np.ndarray]:
    """The level cells (row masks over ``frame``), :func:`base_levels`."""
    out = []
    for levels in base_levels(model, protocol):
        mask = np.ones(len(frame), dtype=bool)
        for code, level in levels.items():
            mask &= frame[code].astype(str).to_numpy() == level
        out.append(mask)
    return out


def family_matrix(cohorts: list[np.ndarray], base: list[np.ndarray], points: np.ndarray,
                  n_points: int) -> np.ndarray:
    """The layout's counts ``(sets x level cells, grid points)``: the cohorts (row masks; the
    population first), then for every ordered pair of them ``A``, ``B`` the rows of ``A`` not in ``B``,
    each by every level cell (``base``); ``points``: each row's grid point."""
    sets = cohorts + [a & ~b for (i, a), (j, b) in product(enumerate(cohorts), enumerate(cohorts)) if i != j]
    cells = np.zeros((len(sets) * len(base), n_points), dtype=np.int64)
    for i, (rows, level) in enumerate(product(sets, base)):
        cells[i] = np.bincount(points[rows & level], minlength=n_points)
    return cells


def family_cells(selection: Any, store: Any, model: Any, hash_key: str) -> tuple[np.ndarray, list[int]]:
    """The family's cells of the study's snapshot on the protocol's survival grid, and that grid's
    points on the fine grid.

    Returns
    -------
    cells : numpy.ndarray of int64, shape (cells, grid points)
    points : list of int

    Raises
    ------
    DisclosureError
        Control ``pooled_bins`` (declined: the central site falls back to per-node bins) if the
        request is not on all of the study's datasets, or the layout would be too large.
    """
    from mipflow.algorithms.survival import request_points
    from mipflow.node.controls.differencing import row_keys
    from mipflow.node.controls.study import StudySelection
    from mipflow.node.controls.study_survival import grid_bins

    study = selection.study
    protocol = study.protocol
    grid = protocol.survival
    if not grid:
        raise decline("the study's protocol has no survival grid")
    if set(selection.datasets) != set(protocol.datasets):
        raise decline("in a study they are answered on all of the study's datasets")
    frame = StudySelection(study, None, tuple(protocol.datasets)).frame(store, model, hash_key)
    keys = row_keys(frame, hash_key)
    cohorts = [np.ones(len(frame), dtype=bool)]
    cohorts += [np.isin(keys, study.subgroups[s.name]) for s in protocol.subgroups]
    base = _base(model, protocol, frame)
    time_var = model.variable(grid["time"])
    points, n_points = grid_bins(frame[grid["time"]].to_numpy(dtype=float), time_var, grid["bin_width"])
    if len(cohorts) ** 2 * len(base) * n_points > MAX_FAMILY_ELEMENTS:
        raise decline("the study's family has too many cells for the protocol's survival grid")
    cells = family_matrix(cohorts, base, points, n_points)
    return cells, [int(p) for p in request_points(time_var, float(grid["bin_width"]), None)]
