"""K-means clusters as released groups (``mipflow.node.controls.cluster_groups``; ADR 0051 amended)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.cluster_groups import (
    cluster_groups, cluster_kind, cluster_of, cluster_release, latest_clusters,
)
from mipflow.node.controls.groups import GroupMemory, kind_of
from mipflow.node.controls.ledger import cohort_digest

MODEL = "dm:1"
KEYS = np.arange(100, 130, dtype=np.uint64)[::-1]  # the rows' keys, not in key order


def test_each_cluster_is_a_cell_of_its_own_kind_whatever_the_numbering() -> None:
    labels = np.r_[np.zeros(10, int), np.ones(20, int)]
    groups, union = cluster_groups(labels, KEYS, KEYS + 1000, MODEL, "c" * 64)
    again, _ = cluster_groups(1 - labels, KEYS, KEYS + 1000, MODEL, "c" * 64)  # the centres in the other order
    assert [g.digest for g in groups] == [g.digest for g in again]
    assert [len(g.rows) for g in groups] == [10, 20] and all(g.cell for g in groups)
    assert np.array_equal(groups[0].rows, np.sort(KEYS[:10])) and np.array_equal(groups[0].patients,
                                                                                    np.sort(KEYS[:10] + 1000))
    assert np.array_equal(union, np.sort(KEYS))
    assert len({g.kind for g in groups}) == 2 and {cluster_of(g.kind) for g in groups} == {
        cluster_of(groups[0].kind)}  # one cohort, one assignment
    other, _ = cluster_groups(np.r_[np.zeros(11, int), np.ones(19, int)], KEYS, None, MODEL, "c" * 64)
    assert cluster_of(other[0].kind)[0] == cluster_of(groups[0].kind)[0]  # the same cohort
    assert cluster_of(other[0].kind)[1] != cluster_of(groups[0].kind)[1]  # another assignment
    with pytest.raises(ValueError):
        cluster_groups(labels[:-1], KEYS, None, MODEL, "c" * 64)


def test_cluster_of_reads_only_cluster_kinds() -> None:
    assert cluster_of(cluster_kind(MODEL, "a" * 64, "b" * 64, 3)) == (f"{MODEL}|{'a' * 32}", "b" * 32)
    assert cluster_of(kind_of(MODEL, [("stroke_type", "tia")])) is None
    assert cluster_of(kind_of(MODEL, [("k-means cluster", "1")])) is None  # a level named so: no cluster


def test_the_chain_sees_each_cohort_s_latest_assignment_and_every_other_cell() -> None:
    level = SimpleNamespace(kind=kind_of(MODEL, [("sex", "F")]))
    old = [SimpleNamespace(kind=cluster_kind(MODEL, "a" * 64, "1" * 64, j)) for j in range(2)]
    new = [SimpleNamespace(kind=cluster_kind(MODEL, "a" * 64, "2" * 64, j)) for j in range(3)]
    elsewhere = [SimpleNamespace(kind=cluster_kind(MODEL, "b" * 64, "1" * 64, 0))]
    assert latest_clusters([*old, level, *elsewhere, *new]) == [level, *elsewhere, *new]
    assert latest_clusters([*new, *old]) == old  # the most recently remembered


def test_the_chain_keeps_the_latest_assignment_of_each_run_of_a_cohort() -> None:
    """Eighteenth review, hole 1: a second run on the same rows (other variables) must not take the first run's
    clusters out of the chain; within one run, each later round's assignment replaces the earlier one's."""
    first = [SimpleNamespace(kind=cluster_kind(MODEL, "a" * 64, "1" * 64, j, run="r1")) for j in range(2)]
    moved = [SimpleNamespace(kind=cluster_kind(MODEL, "a" * 64, "3" * 64, j, run="r1")) for j in range(2)]
    second = [SimpleNamespace(kind=cluster_kind(MODEL, "a" * 64, "2" * 64, j, run="r2")) for j in range(2)]
    assert latest_clusters([*first, *second]) == [*first, *second]
    assert latest_clusters([*first, *second, *moved]) == [*second, *moved]
    assert cluster_of(first[0].kind) != cluster_of(second[0].kind)
    assert cluster_of(first[0].kind)[0] == cluster_of(moved[0].kind)[0]  # one run of one cohort


def test_the_group_memory_holds_clusters_against_later_cohorts_and_hands_the_chain_the_latest() -> None:
    memory = GroupMemory()
    first, _ = cluster_groups(np.r_[np.zeros(10, int), np.ones(20, int)], KEYS, None, MODEL, "c" * 64)
    second, _ = cluster_groups(np.r_[np.zeros(20, int), np.ones(10, int)], KEYS, None, MODEL, "c" * 64)
    memory.record(first, 10)
    memory.record(second, 10)
    assert memory.remembered() == 4
    chain = memory.chain_sets()
    assert sorted(len(s.rows) for s in chain) == [10, 20]  # the second assignment's clusters only
    assert {s.rows.tobytes() for s in chain} == {g.rows.tobytes() for g in second}
    with pytest.raises(DisclosureError) as err:  # a cohort of the first assignment's small cluster but one row
        memory.check_cohorts(MODEL, [np.sort(KEYS[:10])[1:]])
    assert err.value.control == "differencing"
    memory.check_cohorts(MODEL, [np.sort(KEYS[:10])])  # the cluster's own rows: nothing new


def cohorts_of(order: np.ndarray | None) -> SimpleNamespace:
    rows = np.sort(KEYS)
    return SimpleNamespace(order=order, patient_order=None if order is None else order + 1000, data_model=MODEL,
                           digest=cohort_digest(MODEL, rows), stamps=None,
                           canonical=None if order is None else np.argsort(order, kind="stable"))


class Partitioning:
    """An algorithm stating a partition: the rows with ``v`` below 10 and the rest."""

    group_count_setting = "min_row_count"

    def differencing_partition(self, round_no, data, request, state):
        return None if round_no < 1 else (data["v"].to_numpy() >= 10).astype(int)


def test_cluster_release_from_the_step_s_rows_or_the_checked_labels() -> None:
    data = pd.DataFrame({"v": np.arange(30.0)})
    settings = SimpleNamespace(nfilter_tab=3, min_row_count=10)
    release = cluster_release(Partitioning(), 1, data, None, {}, cohorts_of(KEYS), settings)
    assert release is not None and release.suppressed and (release.threshold, release.setting) == (10, "min_row_count")
    # numbered by first row in key order: the keys run against the rows, so the rows v >= 10 come first
    assert [g.rows.tolist() for g in release.groups] == [np.sort(KEYS[10:]).tolist(), np.sort(KEYS[:10]).tolist()]
    assert release.union_digest == cohort_digest(MODEL, np.sort(KEYS))  # the cohort: no new ledger entry
    canonical = cohorts_of(KEYS).canonical
    checked = cluster_release(Partitioning(), 1, data, None, {}, cohorts_of(KEYS), settings,
                              labels=(data["v"].to_numpy() >= 10).astype(int)[canonical])
    assert [g.digest for g in checked.groups] == [g.digest for g in release.groups]
    assert cluster_release(Partitioning(), 0, data, None, {}, cohorts_of(KEYS), settings) is None  # no partition
    assert cluster_release(Partitioning(), 1, data, None, {}, cohorts_of(None), settings) is None  # keys unknown
    assert cluster_release(object(), 1, data, None, {}, cohorts_of(KEYS), settings) is None
