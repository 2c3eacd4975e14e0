"""Consent epochs of the memories of releases (ADR 0061): after a consent registry change a remembered release
is compared by its rows still held and is no exact repeat, at a holder of the withdrawn patient and at a
non-holder alike; releases at least ``min_row_count`` rows from it are answered alike."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mipflow.algorithms.weighted import exp_families
from mipflow.exceptions import DisclosureError
from mipflow.node.controls.groups import Group, GroupMemory
from mipflow.node.controls.ledger import CohortLedger, cohort_digest
from mipflow.node.controls.weighted_ledger import FamilyRows, Population, WeightedMemory

M = 10
MODEL = "stroke:0.1"
HER = np.uint64(500)  # the withdrawn patient's row (and patient) key at the holder


def keys(*ranges) -> np.ndarray:
    return np.unique(np.concatenate([np.arange(a, b, dtype=np.uint64) for a, b in ranges]))


def nodes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The rows before the change (200) and after it: the holder loses her row, the non-holder nothing."""
    holder = np.append(keys((0, 199)), HER)
    return {"holder": (holder, keys((0, 199))), "non-holder": (keys((0, 199)), keys((0, 199)))}


def current(rows: np.ndarray):
    return lambda data_model: (rows, rows)


def ledger_outcome(tmp: Path, before: np.ndarray, after: np.ndarray, new: np.ndarray) -> str:
    tmp.mkdir()
    ledger = CohortLedger(tmp)
    ledger.record(MODEL, [before], patients=[before], epoch="")
    try:
        ledger.check(MODEL, [new], M, patients=[new], epoch="withdrawn-1", current=current(after))
    except DisclosureError as refused:
        assert refused.control == "differencing" and "consent registry" in str(refused)
        return "refused"
    return "answered"


@pytest.mark.parametrize("new, expected", [
    pytest.param(lambda after: after, "refused", id="the-same-rows-again"),
    pytest.param(lambda after: after[:-3], "refused", id="three-rows-fewer"),
    pytest.param(lambda after: np.union1d(after, keys((1000, 1010))), "answered", id="ten-new-rows"),
    pytest.param(lambda after: after[50:], "answered", id="fifty-rows-fewer"),
])
def test_the_ledger_decides_alike_at_a_holder_and_a_non_holder(tmp_path: Path, new, expected: str) -> None:
    outcomes = {name: ledger_outcome(tmp_path / name, before, after, new(after))
                for name, (before, after) in nodes().items()}
    assert outcomes == {"holder": expected, "non-holder": expected}


def test_the_ledger_keeps_repeats_within_an_epoch_and_reads_the_epoch_back(tmp_path: Path) -> None:
    rows = keys((0, 200))
    CohortLedger(tmp_path).record(MODEL, [rows], epoch="e1")
    again = CohortLedger(tmp_path)  # another process: the epoch is on disk
    assert again.check(MODEL, [rows], M, epoch="e1") == [cohort_digest(MODEL, rows)]
    with pytest.raises(DisclosureError):
        again.check(MODEL, [rows], M, epoch="e2", current=current(rows))


def test_a_ledger_from_before_gains_the_epoch_column_and_counts_as_the_first_epoch(tmp_path: Path) -> None:
    import sqlite3

    rows = keys((0, 200))
    CohortLedger(tmp_path).record(MODEL, [rows])
    with sqlite3.connect(tmp_path / "cohorts.sqlite") as conn:
        conn.execute("UPDATE cohorts SET epoch = NULL")  # as an old ledger wrote it
    ledger = CohortLedger(tmp_path)
    assert ledger.check(MODEL, [rows], M, epoch="") == [cohort_digest(MODEL, rows)]
    with pytest.raises(DisclosureError):
        ledger.check(MODEL, [rows], M, epoch="after-a-registry", current=current(rows))


def group_outcome(before: np.ndarray, after: np.ndarray, new: np.ndarray) -> str:
    memory = GroupMemory(None)
    memory.record([Group("tia", before, cohort_digest("tia", before), MODEL, before)], M, epoch="")
    try:
        memory.check([Group("tia", new, cohort_digest("tia", new), MODEL, new)], M, "min_row_count",
                     epoch="withdrawn-1", current=current(after))
    except DisclosureError as refused:
        assert "consent registry" in str(refused)
        return "refused"
    return "answered"


@pytest.mark.parametrize("new, expected", [
    pytest.param(lambda after: after, "refused", id="the-same-rows-again"),
    pytest.param(lambda after: np.union1d(after, keys((1000, 1004))), "refused", id="four-new-rows"),
    pytest.param(lambda after: np.union1d(after, keys((1000, 1010))), "answered", id="ten-new-rows"),
])
def test_the_group_memory_decides_alike_at_a_holder_and_a_non_holder(new, expected: str) -> None:
    outcomes = {name: group_outcome(before, after, new(after)) for name, (before, after) in nodes().items()}
    assert outcomes == {"holder": expected, "non-holder": expected}


def test_the_group_memory_keeps_repeats_within_an_epoch() -> None:
    rows = keys((0, 200))
    memory = GroupMemory(None)
    group = Group("tia", rows, cohort_digest("tia", rows), MODEL, rows)
    memory.record([group], M, epoch="e1")
    memory.check([group], M, "min_row_count", epoch="e1")  # a repeat: answered


FAMILY = exp_families(["glucose_mmol"])[0]


def weighted_outcome(before: np.ndarray, after: np.ndarray, new: np.ndarray) -> str:
    rng = np.random.default_rng(3)
    universe = np.union1d(before, new)
    glucose = dict(zip(universe.tolist(), rng.normal(7.0, 0.25, len(universe))))  # narrow: rows count in effect

    def release(rows: np.ndarray) -> FamilyRows:
        return FamilyRows(FAMILY.name, MODEL, rows, FAMILY.log_weights(
            {"glucose_mmol": np.array([glucose[k] for k in rows.tolist()])}), rows)

    population = Population(after, after, {"glucose_mmol": np.array([glucose[k] for k in after.tolist()])})
    memory = WeightedMemory(None, "k" * 16)
    memory.record([release(before)], epoch="")
    allowed = memory.check([release(new)], [FAMILY], M, lambda model, variables: population, epoch="withdrawn-1")
    return "answered" if allowed else "refused"


@pytest.mark.parametrize("new, expected", [
    pytest.param(lambda after: after, "refused", id="the-same-rows-again"),
    pytest.param(lambda after: after[:-3], "refused", id="three-rows-fewer"),
    pytest.param(lambda after: after[50:], "answered", id="fifty-rows-fewer"),
])
def test_the_weighted_memory_decides_alike_at_a_holder_and_a_non_holder(new, expected: str) -> None:
    outcomes = {name: weighted_outcome(before, after, new(after)) for name, (before, after) in nodes().items()}
    assert outcomes == {"holder": expected, "non-holder": expected}
