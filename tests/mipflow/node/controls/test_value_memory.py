"""Which remembered rows a correction changed (ADR 0061 "Value stamps", fifteenth review holes 2 and 3): the chain
rule's changed-value units and the patient stamps compared across data-model versions."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.atoms import node_primes
from mipflow.node.controls.chain import units_allow
from mipflow.node.controls.differencing import DifferencingGuard
from mipflow.node.controls.ledger import LEDGER_FILE

SECRET = b"node secret of the value memory tests"
MODEL, OTHER = "stroke:0.1", "stroke:0.2"
M = 10


def rows(n: int = 80, first: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(first + 5)
    ids = np.arange(first, first + n)
    return pd.DataFrame({"_pid": [f"p{i}" for i in ids], "dataset": "a", "_visit": "v1",
                         "age": np.where(ids >= 1000, 87.0, rng.uniform(20, 85, n).round(1)),
                         "nihss": rng.integers(0, 30, n).astype(float), "glucose": rng.normal(7, 1, n)})


def outcome(guard: DifferencingGuard, frame: pd.DataFrame, variables=("nihss",), model: str = MODEL) -> str:
    cohorts = guard.cohorts(model, frame, list(variables), True)
    try:
        guard.before_step(cohorts, M)
    except DisclosureError as refused:
        assert refused.control == "differencing"
        assert not any(f"{v:g}" in str(refused).replace("(10)", "") for v in frame["nihss"] if v >= 11)
        return "refused"
    guard.after_step(cohorts, None, None)
    return "answered"


def three_releases(tmp_path: Path, change: str | None, variables=("nihss",)) -> list[str]:
    """``B`` (everyone), a change, 12 new rows, ``B' ∪ N``, then ``N`` (the new rows alone)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    guard = DifferencingGuard(tmp_path, SECRET)
    before = rows()
    first = outcome(guard, before, variables)
    after = before.copy()
    if change is not None:
        after.loc[17, change] = after.loc[17, change] + 5.0
    union = pd.concat([after, rows(12, first=1000)], ignore_index=True)
    later = DifferencingGuard(tmp_path, SECRET)  # another process: the memory is on disk
    return [first, outcome(later, union, variables), outcome(later, union[union["age"] >= 86], variables)]


def test_three_releases_around_a_correction_refuse_the_new_rows_alone(tmp_path: Path) -> None:
    assert three_releases(tmp_path / "fixed", "nihss") == ["answered", "answered", "refused"]


@pytest.mark.parametrize("change", [None, "glucose"], ids=["no change", "an unread column"])
def test_honest_three_releases_are_answered(tmp_path: Path, change) -> None:
    assert three_releases(tmp_path, change) == ["answered"] * 3


def test_a_correction_in_one_of_the_columns_read_is_a_unit_whatever_the_others(tmp_path: Path) -> None:
    assert three_releases(tmp_path, "nihss", ("age", "nihss"))[2] == "refused"
    assert three_releases(tmp_path / "age only", "nihss", ("age",)) == ["answered"] * 3


def test_a_release_after_the_correction_is_of_the_new_value(tmp_path: Path) -> None:
    """Released after the correction (``B' ∪ N``), the row holds its new value: a later cohort of ``B'``'s rows
    and ``N`` is no combination over its versions (only ``B``'s old value is)."""
    guard = DifferencingGuard(tmp_path, SECRET)
    before = rows()
    assert outcome(guard, before) == "answered"
    after = before.copy()
    after.loc[17, "nihss"] += 5.0
    union = pd.concat([after, rows(12, first=1000)], ignore_index=True)
    assert outcome(guard, union) == "answered"
    with sqlite3.connect(tmp_path / LEDGER_FILE) as conn:
        changes = conn.execute("SELECT COUNT(*), COUNT(DISTINCT row_key) FROM row_changes").fetchone()
    assert changes == (1, 1)  # one row's one earlier value
    assert outcome(guard, union[union["age"] >= 86]) == "refused"


def test_units_allow_refuses_a_combination_on_the_versions_of_one_row() -> None:
    primes = node_primes(SECRET)
    rest = np.arange(100, 140, dtype=np.uint64)
    row, version = np.uint64(7), np.uint64(2 ** 63 + 7)
    new_rows = np.arange(1000, 1012, dtype=np.uint64)
    b = np.sort(np.append(rest, version))
    union = np.sort(np.concatenate([rest, [row], new_rows]))
    units = {int(version): int(row)}
    assert units_allow([b], [union], M, primes, units)  # the union: the new value with 12 new rows
    assert not units_allow([b, union], [new_rows], M, primes, units)  # B - (B' ∪ N) + N: old - new
    plain = np.sort(np.append(rest, row))  # no change: the same row in both
    assert units_allow([plain, union], [new_rows], M, primes, {})
    assert units_allow([b, union], [new_rows], 1, primes, units)
    # released before (the old sets alone already combine to it): not taken back, not refused again
    assert units_allow([b, union, new_rows], [np.arange(100, 130, dtype=np.uint64)], M, primes, units)


def test_the_memory_is_about_ten_bytes_a_row_and_column(tmp_path: Path) -> None:
    guard = DifferencingGuard(tmp_path, SECRET)
    frame = rows(20_000)
    assert outcome(guard, frame, ("age", "nihss")) == "answered"
    with sqlite3.connect(tmp_path / LEDGER_FILE) as conn:
        (size, columns), = conn.execute("SELECT SUM(LENGTH(keys) + LENGTH(digests)), COUNT(*) FROM row_cells")
        (shared, sets), = conn.execute("SELECT SUM(LENGTH(keys)), COUNT(*) FROM row_keysets")
    assert columns == 2 and size / (columns * len(frame)) < 4.1  # 4 bytes a row and column, and a reference
    assert sets == 1 and shared / len(frame) < 8  # both columns' rows: one key set


@pytest.mark.parametrize("change, expected", [(None, "answered"), ("glucose", "answered"), ("nihss", "refused")])
def test_the_same_patients_under_another_version_compare_patient_stamps(tmp_path: Path, change, expected) -> None:
    guard = DifferencingGuard(tmp_path, SECRET)
    frame = rows()
    assert outcome(guard, frame, ("age", "nihss")) == "answered"
    other = frame.assign(dataset="b", _visit="v9")  # another version: other row identities, the same patients
    if change is not None:
        other.loc[17, change] += 5.0
    assert outcome(guard, other, ("age", "nihss"), model=OTHER) == expected
    assert outcome(guard, other, ("age", "glucose"), model=OTHER) == "answered"  # NIHSS not read


def test_before_then_two_halves_after_a_correction_refuse_the_second_half(tmp_path: Path) -> None:
    """``B`` then the two halves of ``B'``: ``B - B'_1 - B'_2`` is ``old - new`` of the corrected row."""
    guard = DifferencingGuard(tmp_path, SECRET)
    before = rows()
    assert outcome(guard, before) == "answered"
    after = before.copy()
    after.loc[17, "nihss"] += 5.0
    young = after["age"] < after["age"].median()
    first_half = after[young] if young[17] else after[~young]
    second_half = after[~young] if young[17] else after[young]
    assert outcome(guard, first_half) == "answered"
    assert outcome(guard, second_half) == "refused"
    (tmp_path / "honest").mkdir()
    honest = DifferencingGuard(tmp_path / "honest", SECRET)  # no correction: the same three are answered
    assert [outcome(honest, f) for f in (before, before[young], before[~young])] == ["answered"] * 3
