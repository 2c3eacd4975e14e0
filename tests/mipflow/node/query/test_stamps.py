"""Value stamps (ADR 0061, hole 2): a cohort answered before whose rows now hold other values in a column the
release reads is no exact repeat; a repeat with no change, or with a change in a column it does not read, is."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.differencing import DifferencingGuard
from mipflow.node.controls.ledger import CohortLedger
from mipflow.node.query.stamps import MISSING, changed, value_bits

SECRET = b"node secret of the stamp tests"
MODEL = "stroke:0.1"
M = 10


def test_value_bits_are_canonical() -> None:
    numbers = value_bits(pd.Series([0.0, -0.0, np.nan, 3]), "k" * 16)
    assert numbers[0] == numbers[1] and numbers[2] == MISSING and numbers[3] == np.float64(3.0).view(np.uint64)
    assert np.array_equal(value_bits(pd.Series([1, 2], dtype="int64"), "k" * 16),
                          value_bits(pd.Series([1.0, 2.0]), "k" * 16))
    levels = value_bits(pd.Series(["tia", None, "tia", "ischaemic"]), "k" * 16)
    assert levels[0] == levels[2] != levels[3] and levels[1] == MISSING
    assert not np.array_equal(levels[[0]], value_bits(pd.Series(["tia"]), "another key....."))


def test_changed_compares_the_columns_both_stamps_cover() -> None:
    assert not changed({"a": 1, "b": 2}, {"a": 1, "c": 9})
    assert changed({"a": 1, "b": 2}, {"a": 1, "b": 3})
    assert not changed({}, {"a": 1})


def frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    return pd.DataFrame({"_pid": [f"p{i}" for i in range(n)], "dataset": np.where(np.arange(n) % 2, "a", "b"),
                         "_visit": "v1", "age": rng.uniform(20, 90, n).round(1),
                         "nihss": rng.integers(0, 30, n).astype(float), "sex": rng.choice(["F", "M"], n),
                         "glucose": rng.normal(7, 1, n)})


def outcome(guard: DifferencingGuard, rows: pd.DataFrame, variables, complete_case=True, by=()) -> str:
    cohorts = guard.cohorts(MODEL, rows, variables, complete_case, by)
    try:
        guard.before_step(cohorts, M)
    except DisclosureError as refused:
        assert refused.control == "differencing"
        words = str(refused)
        assert "corrected" in words and "min_row_count new rows" in words  # what to do, and why
        assert not any(str(v) in words for v in rows["nihss"].unique() if v >= 10)  # no value echoed
        return "refused"
    guard.after_step(cohorts, None, None)
    return "answered"


@pytest.mark.parametrize("complete_case, by", [(True, ()), (False, ("dataset",))], ids=["regression", "descriptive"])
def test_a_repeat_is_answered_unless_a_value_it_reads_was_corrected(tmp_path: Path, complete_case, by) -> None:
    guard = DifferencingGuard(tmp_path, SECRET)
    rows = frame()
    read = ["age", "nihss"]
    assert outcome(guard, rows, read, complete_case, by) == "answered"
    assert outcome(guard, rows.sample(frac=1, random_state=3), read, complete_case, by) == "answered"  # any order
    unread = rows.assign(glucose=rows["glucose"] + 1.0, sex="F")  # columns the release does not read
    assert outcome(guard, unread, read, complete_case, by) == "answered"
    fixed = rows.copy()
    fixed.loc[17, "nihss"] = 33.0 if fixed.loc[17, "nihss"] != 33.0 else 34.0
    assert outcome(guard, fixed, read, complete_case, by) == "refused"
    assert outcome(guard, fixed, ["age"], complete_case, by) == "answered"  # NIHSS not read: nothing differs
    assert outcome(guard, fixed, ["age", "nihss", "sex"], complete_case, by) == "refused"  # another variable set
    assert outcome(guard, rows, read, complete_case, by) == "answered"  # the correction undone: the same values


def test_a_corrected_category_and_a_restarted_node(tmp_path: Path) -> None:
    rows = frame()
    assert outcome(DifferencingGuard(tmp_path, SECRET), rows, ["nihss", "sex"]) == "answered"
    fixed = rows.assign(sex=np.where(rows.index == 5, "M" if rows.loc[5, "sex"] == "F" else "F", rows["sex"]))
    guard = DifferencingGuard(tmp_path, SECRET)  # the stamps are on disk
    assert outcome(guard, fixed, ["nihss", "sex"]) == "refused"
    assert outcome(guard, rows, ["nihss", "sex"]) == "answered"


def test_new_rows_make_another_cohort_and_the_first_stamp_is_kept(tmp_path: Path) -> None:
    """After a correction the repeat waits for new rows (ADR 0061's remedy); once answered on more rows, the
    cohort answered first keeps its first stamp: its repeat stays refused."""
    guard = DifferencingGuard(tmp_path, SECRET)
    rows = frame(60)
    assert outcome(guard, rows, ["nihss"]) == "answered"
    more = frame(80)
    more.loc[17, "nihss"] += 1.0
    assert outcome(guard, more, ["nihss"]) == "answered"  # 20 new rows: at least min_row_count from it
    assert outcome(guard, more.iloc[:60], ["nihss"]) == "refused"
    ledger = CohortLedger(tmp_path)
    cohorts = guard.cohorts(MODEL, rows, ["nihss"], True)
    assert ledger.stamps(MODEL, cohorts.digest) == cohorts.stamps[0]


def test_without_stamps_the_ledger_decides_as_before(tmp_path: Path) -> None:
    ledger = CohortLedger(tmp_path)
    rows = np.arange(50, dtype=np.uint64)
    ledger.record(MODEL, [rows], stamps=[{"nihss": 1}])
    assert ledger.check(MODEL, [rows], M) and ledger.check(MODEL, [rows], M, stamps=[{}])
    with pytest.raises(DisclosureError):
        ledger.check(MODEL, [rows], M, stamps=[{"nihss": 2}])
    ledger.check(MODEL, [rows], 1, stamps=[{"nihss": 2}])  # min_row_count 1: nothing to compare
