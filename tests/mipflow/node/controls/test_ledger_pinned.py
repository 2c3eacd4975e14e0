"""Cohorts a filter pins (ADR 0064, mipflow.node.controls.ledger): checked pairwise, remembered as pinned, never a
repeat for a release, never a set of a chain."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.ledger import CohortLedger
from tests.mipflow.node.controls.test_ledger_sums_only import PRIMES, M, ledger

WHOLE = np.arange(0, 100, dtype=np.uint64)
PADDED = np.arange(1, 88, dtype=np.uint64)      # the whole less the target (0) and 12 rows pinned at a value
WIDENED = np.arange(1, 100, dtype=np.uint64)    # PADDED with its pinned rows: the whole less the target


def check(book: CohortLedger, rows, sums_only=True, pinned=False) -> None:
    book.check("dm", rows if isinstance(rows, list) else [rows], M, primes=PRIMES, sums_only=sums_only,
               pinned=pinned)


def refused(book: CohortLedger, rows, **kw) -> None:
    with pytest.raises(DisclosureError) as info:
        check(book, rows, **kw)
    assert info.value.control == "differencing"


def release(book: CohortLedger, rows, pinned=(), sums_only=True) -> None:
    """A step: its cohorts, then each pinned family apart, checked; the families remembered first."""
    check(book, rows, sums_only)
    for family in pinned:
        check(book, family, sums_only, pinned=True)
    for family in pinned:
        book.record("dm", [family], sums_only=sums_only, pinned=True)
    book.record("dm", [rows], sums_only=sums_only)


def test_the_padded_pair_is_answered_without_the_pinned_cohort_and_refused_with_it(tmp_path):
    plain = ledger(tmp_path, "plain")
    release(plain, WHOLE)
    release(plain, PADDED)  # 13 rows apart: the rules count rows, not values
    pinned = ledger(tmp_path, "pinned")
    release(pinned, WHOLE)
    refused(pinned, WIDENED, pinned=True)  # one row from the whole, whatever the sums


def test_a_pinned_cohort_remembered_meets_a_later_release_pairwise_even_between_sums(tmp_path):
    book = ledger(tmp_path)
    release(book, PADDED, pinned=[WIDENED])
    refused(book, WHOLE)  # the other order: the whole is the target apart from the widened cohort


def test_a_pinned_cohort_is_no_repeat_for_a_release_and_becomes_one_once_released(tmp_path):
    book = ledger(tmp_path)
    release(book, PADDED, pinned=[WIDENED])
    assert book.answered("dm", "") == {d for d in book.cohorts("dm")} - {_digest(book, WIDENED)}
    release(book, WIDENED)  # released now: compared (nothing near), then answered
    assert _digest(book, WIDENED) in book.answered("dm", "")
    with sqlite3.connect(tmp_path / "home" / "cohorts.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM cohorts WHERE pinned = 1").fetchone()[0] == 0
    again = CohortLedger(tmp_path / "home")  # and so after a restart
    assert _digest(again, WIDENED) in again.answered("dm", "")


def test_a_pinned_cohort_is_held_to_min_row_count_rows_or_none(tmp_path):
    book = ledger(tmp_path)
    refused(book, np.arange(0, 3, dtype=np.uint64), pinned=True)
    check(book, np.arange(0, M, dtype=np.uint64), pinned=True)


def test_pinned_cohorts_are_not_chained_as_released(tmp_path):
    """``S1 + S2 - S3 - S4`` is two rows; a pinned cohort remembered (the whole) must not make the two rows look
    computable before ``S2`` completes the chain (the twentieth review's union chain)."""
    book = ledger(tmp_path)
    s3, s4 = np.arange(1, 50, dtype=np.uint64), np.arange(50, 99, dtype=np.uint64)   # rows 0 and 99 outside both
    s1, s2 = np.arange(0, 30, dtype=np.uint64), np.arange(30, 100, dtype=np.uint64)
    release(book, s3)
    release(book, s4, pinned=[np.arange(0, 100, dtype=np.uint64)])
    release(book, s1)
    refused(book, s2)


def _digest(book: CohortLedger, rows: np.ndarray) -> str:
    from mipflow.node.controls.ledger import cohort_digest

    return cohort_digest("dm", rows)
