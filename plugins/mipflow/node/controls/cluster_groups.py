"""K-means clusters are released groups: the group memory and the chain rule hold them (ADR 0050, 0051 amended).

Every Lloyd round of k-means releases each cluster's count and sums (its centre) over the rows the node
assigns to the round's centres; the central site sees every round's, not only the last.  The partition
memory (:mod:`mipflow.node.controls.partitions`, ADR 0013/0050) compares two assignments *of one cohort*;
a cluster is as much a set of rows released with its sums as a level's group, and the seventeenth review
(hole 2) subtracted descriptive statistics of a later cohort (49 of a converged cluster's 50 rows) from it.
So each round's clusters are handed to the group memory as the groups of the release
(:func:`cluster_release`, control :func:`derive_clusters` right after ``check_partition``), and
``check_released_groups`` then holds them as every other release's groups (ADR 0051): by rows (and patients
across data models) against every group and cohort released before, and in the chain rule with the step's
cohorts; ``remember_groups`` keeps them, so every later cohort meets them (``check_groups``).

* **Kinds**: a cluster's kind is its cohort, its assignment (canonical labels' digest) and its label there
  (:func:`cluster_kind`), so no two clusters are of one kind unless they are the same rows: the same-kind
  pairwise rule (``|A ∩ B|`` too) never compares two assignments, which the partition rule governs (a
  cycle with a one-row cell and no small cut is answered there and must not be refused here).  The
  same assignment again (a repeat, another round that did not move) is known and costs nothing.
* **No double refusal of one cohort's assignments**: a cluster ``A`` of one assignment and ``B`` of another
  of the same rows a few rows apart is ``S(A) - S(B)`` over those rows, a combination the partition check
  (run before, same threshold) refuses already.  So by rows the group memory adds refusals only against
  other cohorts, other cohorts' clusters and other groups.
* **The chain sees each run's latest assignment** (:func:`latest_clusters`, applied by
  ``GroupMemory.chain_sets``; a run is one analysis, its analysis key): every Lloyd round is another
  partition; handing all of them over would fill the chain's cell window (``CHAIN_GROUPS``) with one
  analysis's rounds and push other groups out of it.  Until the eighteenth review the latest was per cohort,
  so a second k-means of the same rows (other variables) took the first one's clusters out of the chain and
  two cohorts then subtracted to one patient; another run's clusters now stay, as any other release's cells
  (only the window of 32 cells pushes them out).  A round's own clusters are always the chain's new sets
  when first released.
* **Rows unknown** (a local step whose rows' order is not kept): no clusters are derived (ADR 0051's
  longitudinal residual); the partition memory still compares the assignments.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Sequence, TypeVar

import numpy as np

from mipflow.node.controls.groups import Group, GroupRelease, _digest, kind_of
from mipflow.node.controls.ledger import cohort_digest, sorted_unique
from mipflow.node.controls.partitions import _digest as assignment_digest
from mipflow.node.controls.partitions import canonical_labels

if TYPE_CHECKING:
    import pandas as pd

#: The (variable, level) names a cluster's kind is made of; never a data model's variable (a space in each).
ASSIGNMENT, COHORT, CLUSTER, RUN = "k-means assignment", "k-means cohort", "k-means cluster", "k-means run"


def cluster_kind(data_model: str, cohort: str, assignment: str, label: int, run: str = "") -> str:
    """The kind of cluster ``label`` of an ``assignment`` (digest of its canonical labels) of the ``cohort``
    (its digest) in the k-means ``run`` (its analysis key; none: a kind remembered before runs were named)."""
    pairs = [(COHORT, cohort[:32]), (ASSIGNMENT, assignment[:32]), (CLUSTER, str(label))]
    return kind_of(data_model, pairs + [(RUN, run[:32])] if run else pairs)


def cluster_of(kind: str) -> tuple[str, str] | None:
    """``(cohort and run, assignment)`` of a cluster's kind (:func:`cluster_kind`), None for any other kind."""
    if CLUSTER not in kind:
        return None
    data_model, pairs = json.loads(kind)
    named = dict(map(tuple, pairs))
    if set(named) - {RUN} != {COHORT, ASSIGNMENT, CLUSTER}:
        return None
    run = f"|{named[RUN]}" if RUN in named else ""
    return f"{data_model}|{named[COHORT]}{run}", named[ASSIGNMENT]


def cluster_groups(labels: np.ndarray, keys: np.ndarray, patients: np.ndarray | None, data_model: str,
                   cohort: str, run: str = "") -> tuple[list[Group], np.ndarray]:
    """Each cluster of an assignment as a group (a cell), and their union.

    Parameters
    ----------
    labels : numpy.ndarray of int, shape (n,)
        The node's assignment of the rows (any numbering; renumbered canonically).
    keys : numpy.ndarray of uint64, shape (n,)
        The rows' ledger keys, in ``labels``' order.
    patients : numpy.ndarray of uint64, shape (n,), optional
        The rows' patient keys, in ``labels``' order.
    data_model, cohort : str
        The data model and the digest of the cohort assigned.
    run : str
        The k-means run (its analysis key): the chain keeps each run's latest assignment.
    """
    labels = canonical_labels(labels)
    keys = np.asarray(keys, dtype=np.uint64)
    if len(labels) != len(keys):
        raise ValueError("an assignment needs one label per row key")
    assignment = assignment_digest(labels)
    groups = []
    for label in range(int(labels.max(initial=-1)) + 1):
        member = labels == label
        rows = sorted_unique(keys[member])
        kind = cluster_kind(data_model, cohort, assignment, label, run)
        people = None if patients is None else sorted_unique(np.asarray(patients, dtype=np.uint64)[member])
        groups.append(Group(kind, rows, _digest(kind, rows), data_model, people, cell=True))
    return groups, sorted_unique(keys)


def cluster_release(algo: Any, round_no: int, data: pd.DataFrame, request: Any, state: Any, cohorts: Any,
                    settings: Any, labels: np.ndarray | None = None, key: str | None = None,
                    run: str = "") -> GroupRelease | None:
    """The clusters a k-means round releases at this node as a :class:`GroupRelease` (None: the step releases
    no partition, or its rows' keys are not known).  ``labels``: the assignment ``check_partition`` computed,
    in the cohort's canonical row order (None: computed here, e.g. while ``differencing_check`` is off).
    ``suppressed``: checked by ``check_released_groups``, after the release check (a cluster under the
    threshold is the release check's refusal, control ``min_row_count``, ADR 0050)."""
    from mipflow.node.controls.disclosure import group_threshold
    from mipflow.node.controls.group_stamps import frame_group_stamps

    order = getattr(cohorts, "order", None)
    if order is None or len(order) != len(data):
        return None
    canonical = cohorts.canonical
    if labels is None:
        if not hasattr(algo, "differencing_partition"):
            return None
        raw = algo.differencing_partition(round_no, data, request, state)
        if raw is None:
            return None
        labels = np.asarray(raw)[canonical]
    if len(labels) != len(order) or not len(labels):
        return None
    keys = np.asarray(order, dtype=np.uint64)
    people = getattr(cohorts, "patient_order", None)
    people = None if people is None or len(people) != len(keys) else np.asarray(people, dtype=np.uint64)
    groups, union = cluster_groups(labels, keys[canonical], None if people is None else people[canonical],
                                   cohorts.data_model, cohorts.digest, run)
    union_stamps = None
    if key is not None and cohorts.stamps and hasattr(data, "reader"):  # rows on disk (ADR 0062, amendment 12)
        groups, union_stamps = _disk_group_stamps(data, labels, canonical, groups, list(cohorts.stamps[0]), key)
    elif key is not None and cohorts.stamps:  # their value stamps of the stamped columns (ADR 0061)
        groups, union_stamps = frame_group_stamps(data, keys, groups, union, list(cohorts.stamps[0]), key)
    setting, threshold = group_threshold(algo, settings)
    return GroupRelease(tuple(groups), union, cohort_digest(cohorts.data_model, union), threshold, setting,
                        suppressed=True, union_stamps=union_stamps)


def _disk_group_stamps(rows: Any, labels: np.ndarray, canonical: np.ndarray, groups: list[Group],
                       columns: list[str], key: str) -> tuple[list[Group], dict[str, int]]:
    """:func:`~mipflow.node.controls.group_stamps.frame_group_stamps` of clusters of rows on disk: each cluster's
    stamps (the canonical ``labels`` put back in the rows' order, a mask a cluster) and the union's (every row),
    from :meth:`~mipflow.node.query.snapshot_rows.SnapshotRows.masked_stamps`, a block at a time: the same
    wrapping sums of the same rows' cell hashes."""
    import dataclasses

    in_order = np.empty(len(labels), dtype=np.intp)
    in_order[canonical] = canonical_labels(labels)  # the groups' numbering (cluster_groups)
    columns = [c for c in dict.fromkeys(columns) if c in rows.columns]
    stamps = rows.masked_stamps(key, [*(in_order == j for j in range(len(groups))), None], columns)
    return [dataclasses.replace(g, stamps=s) for g, s in zip(groups, stamps)], stamps[-1]


def with_step_order(request: Any, work: Any) -> Any:
    """``work.cohorts``, given the rows' order when a k-means round's rows are on disk (ADR 0062, amendment 12):
    a complete-case selection split by nothing keeps none, so its snapshot's row and patient keys are read in
    the rows' order (:func:`mipflow.node.controls.pooled_counts.step_order`, the order its frame's cohorts keep)
    and ``work.cohorts`` holds them from then on.  The partition memory then compares the same canonical labels
    and the clusters are the same rows as on the frame path."""
    import dataclasses

    from mipflow.algorithms.streamed import on_disk
    from mipflow.node.controls.pooled_counts import step_order

    cohorts, data = work.cohorts, work.data
    if (cohorts is None or data is None or cohorts.order is not None or not on_disk(data) or request.round < 1
            or not getattr(work.algo, "releases_partitions", False)):
        return cohorts
    order, people = step_order(work)
    if order is not None:
        work.cohorts = dataclasses.replace(cohorts, order=order, patient_order=people)
    return work.cohorts


def derive_clusters(request: Any, context: Any, work: Any) -> None:
    """Control (after ``check_partition``): a k-means round's clusters become the step's released groups
    (``work.groups``), which ``check_released_groups`` holds and ``remember_groups`` keeps (ADR 0051 amended).
    Computed even while ``differencing_check`` is off or in a study, as every release's groups are; explore
    releases are DP (k-means is refused there, ADR 0032)."""
    if work.explore is not None or work.groups is not None or work.data is None:
        return
    work.groups = cluster_release(work.algo, request.round, work.data, request.analysis, work.state,
                                  with_step_order(request, work), work.settings, work.labels, context.differencing.key,
                                  getattr(work, "analysis_key", "") or "")


Kept = TypeVar("Kept")


def latest_clusters(cells: Sequence[Kept]) -> list[Kept]:
    """``cells`` (remembered groups with ``kind``, oldest first) less the k-means clusters of any but each
    run's most recently remembered assignment of its cohort: what the chain rule is handed (the module docstring)."""
    latest: dict[str, str] = {}
    found = [cluster_of(getattr(c, "kind")) for c in cells]
    for of in found:
        if of is not None:
            latest[of[0]] = of[1]
    return [c for c, of in zip(cells, found) if of is None or latest[of[0]] == of[1]]
