"""A study's histograms suppressed on pooled counts: the computation (ADR 0035, amendment of 2026-12-08).

Per node (ADR 0035) every node hides its own small cells with its own family pattern, and the central site
shows a bin only when every node released it (ADR 0005): on a few hundred patients over three nodes most
bins come out hidden although their pooled counts are large.  Here the pattern is computed on the **pooled**
counts, as Kaplan-Meier's pooled bins are (ADR 0052), and every node derives the same one:

* **Round 0 (sealed, masked).**  Each node counts its study rows of one layout (a numerical study variable,
  records as ``multiple_histograms`` lays them out, the protocol's bins) per **subgroup atom**: the rows alike
  in every subgroup of the protocol (:func:`subgroup_atoms`: bit ``i`` says "in subgroup ``i``"; every row of
  the study is in the population).  The layout, ``(2^k, records, bins)``, comes from the protocol and the data
  model alone, so the masks cancel in the sum (:func:`node_atom_cells`).  It is sealed to every participant
  masked (:func:`mipflow.secagg.sealed_masks.mask_sums`): a peer opens a uniform part per node and only the
  sum over all participants is the pooled atoms' cells.
* **Round 1 (masked release).**  Every node pools what it opened (the same at every node) and derives the
  family's pattern on the pooled cells (:func:`pooled_pattern`): cohorts are the population and each
  subgroup (over all of the study's datasets); the relations between them are those of the pooled atoms
  present (exact, :func:`~mipflow.node.controls.study_suppression.cohort_relations`), and the nested
  differences and atoms that are not cohorts (:func:`~mipflow.node.controls.study_suppression.derived_sets`)
  are unreleased but sensitive, exactly as ADR 0035 does per node; and every cell of a set's record whose
  margin is 0 is known to be 0 (:func:`known_zeros`: counts are not negative, margins are known), which ADR
  0035's relations leave out.  A cell is shown only when its pooled count
  is 0 or at least ``nfilter_tab`` and no small pooled cell (of any cohort, nested difference or atom) follows
  from every cell shown across the family.  The node then releases its **own** counts of the asked cohort on
  the shown cells (0 on the hidden ones) and one "shown" flag per cell, masked (:func:`node_release`); the
  central site unmasks the sum and reads the pooled count of every shown cell (:func:`central_counts`: a flag
  summing to the number of nodes).

This module holds the pure computation (typed, Airflow-free); the step wiring, the binding of a study's layout
to one participant set and one pool, and the exclusion of per-node histograms of a layout answered pooled are
the ADR's "left" part.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mipflow.node.controls.study_suppression import BATCH, Layout, _one_thread, derived_sets, family_relations
from mipflow.node.controls.suppression import suppress


def subgroup_atoms(n_subgroups: int) -> np.ndarray:
    """Every membership pattern of ``n_subgroups`` subgroups, shape ``(2^k, k)``: row ``a`` has bit ``i`` of ``a``
    in column ``i`` (the layout's fixed order, the same at every node)."""
    a = np.arange(1 << n_subgroups, dtype=np.int64)[:, None]
    return ((a >> np.arange(n_subgroups, dtype=np.int64)[None, :]) & 1).astype(bool)


def atom_of(subgroup_masks: np.ndarray) -> np.ndarray:
    """Each row's atom (index into :func:`subgroup_atoms`) from its subgroup membership ``(rows, k)``."""
    member = np.asarray(subgroup_masks, dtype=bool)
    weights = np.left_shift(np.int64(1), np.arange(member.shape[1], dtype=np.int64))
    return member.astype(np.int64) @ weights if member.shape[1] else np.zeros(len(member), dtype=np.int64)


def node_atom_cells(frame: Any, subgroup_masks: np.ndarray, layout: Layout, model: Any) -> np.ndarray:
    """A node's round-0 counts ``(2^k, records, bins)`` (int64) of ``layout`` on its study rows ``frame``, per
    subgroup atom, binned exactly as ``multiple_histograms``' local step bins them."""
    from mipflow.node.controls.study_suppression import cells

    member = np.asarray(subgroup_masks, dtype=bool).reshape(len(frame), -1)
    which = atom_of(member)
    onehot = np.zeros((len(frame), 1 << member.shape[1]), dtype=bool)
    onehot[np.arange(len(frame)), which] = True
    return cells(frame, onehot, layout, model).astype(np.int64)


def pooled_membership(pooled_atoms: np.ndarray, n_subgroups: int) -> tuple[np.ndarray, np.ndarray]:
    """The atoms present in the pool (any cell > 0) and their incidence with the cohorts ``(present atoms,
    1 + k)``: the population (every atom), then each subgroup.  An atom with no counted row adds nothing to any
    cell of the layout, so the relations among the cohorts' cells are those of the present atoms."""
    pooled = np.asarray(pooled_atoms)
    present = np.flatnonzero(pooled.reshape(pooled.shape[0], -1).any(axis=1))
    bits = subgroup_atoms(n_subgroups)[present]
    return present, np.hstack([np.ones((len(present), 1), dtype=bool), bits])


def pooled_pattern(pooled_atoms: np.ndarray, layout: Layout, n_subgroups: int, tab: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The family's pooled cells and hidden flags ``(1 + k, records, bins)``: the population, then each subgroup.

    Parameters
    ----------
    pooled_atoms : numpy.ndarray of int, shape (2^k, records, bins)
        The sum over every participant of :func:`node_atom_cells`.
    layout : Layout
        The variable's layout (:func:`~mipflow.node.controls.study_suppression.layouts`).
    n_subgroups : int
        ``k``, the protocol's subgroups.
    tab : int
        ``nfilter_tab`` (every node's: the central site refuses a pool whose nodes' thresholds differ).

    Raises
    ------
    DisclosureError
        (``nfilter_tab``) if a small pooled cell follows from the known relations whatever is hidden.
    """
    pooled = np.asarray(pooled_atoms, dtype=np.int64)
    present, membership = pooled_membership(pooled, n_subgroups)
    cohorts = 1 + n_subgroups
    if not len(present):  # no counted row anywhere: every cell is an empty 0
        shape = (cohorts, len(layout.records), layout.n_bins)
        return np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=bool)
    derived = derived_sets(membership)
    system = np.hstack([membership, derived])  # (present atoms, cohorts + derived)
    counts = np.einsum("ac,arj->crj", system.astype(np.int64), pooled[present])
    unreleased = np.zeros(counts.shape, dtype=bool)
    unreleased[cohorts:] = True
    known = known_zeros(counts, ZEROS)
    relations = np.vstack([family_relations(system, layout), np.eye(counts.size)[known.reshape(-1)]])
    with _one_thread():
        hidden = suppress(counts.reshape(-1).astype(float), relations, tab, batch=BATCH,
                          unreleased=unreleased.reshape(-1)).reshape(counts.shape)
    return counts[:cohorts], hidden[:cohorts]


#: Which zero cells the requester is taken to know (counts are not negative): ``"margins"``, every cell of a
#: set's record whose margin is 0 (margins are taken as known, ADR 0035; a subgroup of women has no rows in the
#: record of men, so each of its cells there is 0); ``"none"``: ADR 0035's per-node relations alone (tests).
ZEROS = "margins"


def known_zeros(counts: np.ndarray, which: str) -> np.ndarray:
    """The cells ``(sets, records, bins)`` known to be 0 (see :data:`ZEROS`)."""
    if which == "none":
        return np.zeros(counts.shape, dtype=bool)
    return np.broadcast_to(counts.sum(axis=2, keepdims=True) == 0, counts.shape).copy()


def cohort_of(cohort: int, n_subgroups: int) -> np.ndarray:
    """Which atoms of :func:`subgroup_atoms` lie in ``cohort`` (0: the population, ``i + 1``: subgroup ``i``)."""
    if cohort == 0:
        return np.ones(1 << n_subgroups, dtype=bool)
    return subgroup_atoms(n_subgroups)[:, cohort - 1]


def node_release(own_atoms: np.ndarray, hidden: np.ndarray, cohort: int, n_subgroups: int) -> dict[str, np.ndarray]:
    """A node's round-1 sums for the asked cohort, to be masked (integers, :func:`mask_sums`): its own counts of
    the cohort on the shown cells (0 on hidden ones, never its own value) and a flag of 1 per shown cell."""
    own = np.asarray(own_atoms, dtype=np.int64)[cohort_of(cohort, n_subgroups)].sum(axis=0)
    shown = ~np.asarray(hidden, dtype=bool)[cohort]
    return {"counts": np.where(shown, own, 0).astype(np.int64), "shown": shown.astype(np.int64)}


def central_counts(summed: dict[str, np.ndarray], n_nodes: int) -> list[list[int | None]]:
    """The central site's reading of the unmasked sum of :func:`node_release`: per record and bin the pooled
    count, None where hidden.

    Raises
    ------
    ValueError
        if some flag is neither 0 nor the number of nodes (the nodes did not derive one pattern).
    """
    shown = np.asarray(summed["shown"], dtype=np.int64)
    if not np.all((shown == 0) | (shown == n_nodes)):
        raise ValueError("the nodes did not derive one suppression pattern from the pool")
    counts = np.asarray(summed["counts"], dtype=np.int64)
    return [[int(c) if s else None for c, s in zip(row_c, row_s)] for row_c, row_s in zip(counts, shown)]


def shown_bins(hidden: np.ndarray, cohort: int, record: int = 0) -> int:
    """How many bins of one cohort's record the pattern shows."""
    return int((~np.asarray(hidden, dtype=bool)[cohort, record]).sum())

