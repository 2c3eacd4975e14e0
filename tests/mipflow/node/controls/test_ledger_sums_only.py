"""Releases of sums only leave the pairwise rule to the chain rule (ADR 0063, mipflow.node.controls.ledger).

``O`` and ``N`` are five rows apart one way and a hundred the other: the pairwise rule refuses ``N`` after ``O``
("each way"), though no linear combination of their sums lives on fewer than a hundred rows.  Between two releases
of sums only, the chain rule and its exact backstop decide; a third cohort that completes ``O - N + T`` (the five
rows) is refused by them."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.atoms import node_primes
from mipflow.node.controls.ledger import CohortLedger, pair_conflict

PRIMES = node_primes(bytes(range(1, 33)))
M = 10
O = np.arange(0, 100, dtype=np.uint64)
N = np.arange(5, 200, dtype=np.uint64)
T = np.arange(100, 200, dtype=np.uint64)  # with O and N: O - N + T is rows 0 .. 4


def ledger(tmp_path, name: str = "home") -> CohortLedger:
    (tmp_path / name).mkdir(parents=True, exist_ok=True)
    return CohortLedger(tmp_path / name)


def answer(book: CohortLedger, rows: np.ndarray, sums_only: bool, epoch: str = "", primes=PRIMES) -> None:
    book.check("dm", [rows], M, primes=primes, sums_only=sums_only, epoch=epoch)
    book.record("dm", [rows], sums_only=sums_only, epoch=epoch)


def refused(book: CohortLedger, rows, sums_only: bool, epoch: str = "", primes=PRIMES) -> None:
    with pytest.raises(DisclosureError) as info:
        book.check("dm", rows if isinstance(rows, list) else [rows], M, primes=primes, sums_only=sums_only,
                   epoch=epoch)
    assert info.value.control == "differencing"


def test_the_pair_is_one_the_pairwise_rule_refuses():
    assert pair_conflict(N, O, M)


def test_two_releases_of_sums_far_apart_by_every_combination_are_answered(tmp_path):
    book = ledger(tmp_path)
    answer(book, O, sums_only=True)
    answer(book, N, sums_only=True)
    assert {e.sums_only for e in book.every_release()} == {True}


def test_the_third_cohort_completing_the_small_difference_is_refused_by_the_chain_rule(tmp_path):
    book = ledger(tmp_path)
    answer(book, O, sums_only=True)
    answer(book, N, sums_only=True)
    refused(book, T, sums_only=True)
    refused(book, T, sums_only=False)


def test_the_backstop_refuses_it_however_many_decoys_come_between(tmp_path):
    book = ledger(tmp_path)
    answer(book, O, sums_only=True)
    answer(book, N, sums_only=True)
    for k in range(40):  # nested decoys far from every other set, more than the chain rule's window
        answer(book, np.arange(10_000, 10_000 + 20 * (k + 1), dtype=np.uint64), sums_only=True)
    refused(book, T, sums_only=True)


@pytest.mark.parametrize("first, second", [(False, True), (True, False), (False, False)])
def test_the_pairwise_rule_stays_when_either_release_is_more_than_sums(tmp_path, first, second):
    book = ledger(tmp_path)
    answer(book, O, sums_only=first)
    refused(book, N, sums_only=second)


def test_a_cohort_once_answered_with_more_than_sums_keeps_the_pairwise_rule(tmp_path):
    book = ledger(tmp_path)
    answer(book, O, sums_only=True)
    book.record("dm", [O], sums_only=False)  # a logistic regression on the same rows
    refused(book, N, sums_only=True)
    book.record("dm", [O], sums_only=True)  # a later release of sums does not give it back
    refused(book, N, sums_only=True)
    assert not ledger(tmp_path).every_release()[0].sums_only  # on disk: another process, a restart


def test_another_process_sees_the_flag_lost(tmp_path):
    one, two = ledger(tmp_path), ledger(tmp_path)
    answer(one, O, sums_only=True)
    assert two.every_release()[0].sums_only
    one.record("dm", [O], sums_only=False)
    refused(two, N, sums_only=True)


def test_within_one_request_the_pair_is_left_to_the_chain_rule_for_sums_only(tmp_path):
    book = ledger(tmp_path)
    assert book.check("dm", [O, N], M, primes=PRIMES, sums_only=True)
    refused(book, [O, N], sums_only=False)
    refused(book, [O, N, T], sums_only=True)  # the request's own chain


def test_without_the_chain_rule_the_pairwise_rule_stays(tmp_path):
    book = ledger(tmp_path)
    answer(book, O, sums_only=True, primes=None)
    refused(book, N, sums_only=True, primes=None)


def test_a_cohort_of_an_earlier_consent_epoch_keeps_the_epoch_rules(tmp_path):
    book = ledger(tmp_path)
    answer(book, O, sums_only=True, epoch="e1")
    refused(book, N, sums_only=True, epoch="e2")


def test_a_ledger_from_before_knows_no_release_as_sums_only(tmp_path):
    book = ledger(tmp_path)
    answer(book, O, sums_only=True)
    path = tmp_path / "home" / "cohorts.sqlite"
    with sqlite3.connect(path) as conn:  # as written before ADR 0063: no such column
        conn.execute("UPDATE cohorts SET sums_only = NULL")
    old = ledger(tmp_path)
    assert not old.every_release()[0].sums_only
    refused(old, N, sums_only=True)


def test_past_the_backstop_s_bound_the_pairwise_rule_decides_again(tmp_path, monkeypatch):
    """Where the exact backstop says nothing (a family past EXACT_ENTRIES), the chain rule's window alone is
    steerable by decoys: the pairs set aside for releases of sums are checked again, as before ADR 0063."""
    from mipflow.node.controls import chain_exact

    book = ledger(tmp_path)
    answer(book, O, sums_only=True)
    monkeypatch.setattr(chain_exact, "EXACT_ENTRIES", 0)  # every family past the bound
    chain_exact.clear()
    refused(book, N, sums_only=True)
    monkeypatch.undo()
    chain_exact.clear()
    answer(book, N, sums_only=True)


def test_a_release_of_more_than_sums_over_a_pair_answered_as_sums_meets_the_pairs_set_aside(tmp_path):
    """Round 23 of the reviews, hole 1: O and N answered as sums, then Kaplan-Meier (not sums only) over O and
    over N were repeats and skipped every pairwise rule: their difference was one patient's curve."""
    book = ledger(tmp_path)
    answer(book, O, sums_only=True)
    answer(book, N, sums_only=True)
    refused(book, O, sums_only=False)
    refused(book, N, sums_only=False)
    answer(book, O, sums_only=True)  # a repeat of sums stays a repeat


def test_a_repeat_of_more_than_sums_over_a_cohort_with_nothing_near_is_answered(tmp_path):
    book = ledger(tmp_path)
    answer(book, O, sums_only=True)
    answer(book, O, sums_only=False)
    assert not book.every_release()[0].sums_only
    answer(book, O, sums_only=False)


def test_the_same_request_of_sums_again_is_a_repeat(tmp_path):
    """Its own cohorts one row apart one way were left to the chain rule the first time: the exact repeat (the
    honest "same analysis again") is answered, not refused by the pairs within it."""
    book = ledger(tmp_path)
    book.check("dm", [O, N], M, primes=PRIMES, sums_only=True)
    book.record("dm", [O, N], sums_only=True)
    assert book.check("dm", [O, N], M, primes=PRIMES, sums_only=True)


# ------------------------------------------------------------------ hidden level counts (ADR 0063, nominal amendment)

from mipflow.node.controls.release_class import HIDDEN, OTHER, SUMS, apart, worse  # noqa: E402


def test_the_classes_order_and_which_pairs_stand_aside():
    assert worse(SUMS, HIDDEN) == HIDDEN and worse(HIDDEN, OTHER) == OTHER and worse(SUMS, SUMS) == SUMS
    assert apart(SUMS, SUMS) and apart(SUMS, HIDDEN) and apart(HIDDEN, SUMS)
    assert not apart(HIDDEN, HIDDEN) and not apart(OTHER, SUMS) and not apart(SUMS, OTHER)


def test_numerical_sums_beside_hidden_counts_leave_the_pair_to_the_chain_rule(tmp_path):
    """Descriptive statistics of a nominal variable over ``O``, then a regression over ``N``: no release of level
    counts over ``N``, so nothing to read a hidden count against; answered, and in the other order too."""
    book = ledger(tmp_path, "one")
    answer(book, O, sums_only=HIDDEN)
    answer(book, N, sums_only=SUMS)
    other = ledger(tmp_path, "two")
    answer(other, O, sums_only=SUMS)
    answer(other, N, sums_only=HIDDEN)


def test_two_releases_of_hidden_counts_keep_the_pairwise_rule(tmp_path):
    book = ledger(tmp_path)
    answer(book, O, sums_only=HIDDEN)
    refused(book, N, sums_only=HIDDEN)  # round 23, hole 2: a hidden count beside a 0
    refused(book, N, sums_only=OTHER)


def test_hidden_counts_over_a_pair_answered_as_sums_meet_the_pair_set_aside(tmp_path):
    """``O`` and ``N`` answered as numerical sums (the pair set aside), then counts of a nominal variable over ``N``
    and over ``O`` (repeats): the second meets ``N``'s hidden counts and is refused."""
    book = ledger(tmp_path)
    answer(book, O, sums_only=SUMS)
    answer(book, N, sums_only=SUMS)
    answer(book, N, sums_only=HIDDEN)  # a repeat; its pair with O (sums) stands aside
    refused(book, O, sums_only=HIDDEN)  # O's hidden counts against N's


def test_the_class_is_remembered_at_its_worst_on_disk(tmp_path):
    book = ledger(tmp_path)
    answer(book, O, sums_only=SUMS)
    book.record("dm", [O], sums_only=HIDDEN)
    book.record("dm", [O], sums_only=SUMS)  # a later release of sums does not give it back
    with sqlite3.connect(tmp_path / "home" / "cohorts.sqlite") as conn:
        assert conn.execute("SELECT sums_only FROM cohorts").fetchall() == [(HIDDEN,)]
    refused(CohortLedger(tmp_path / "home"), N, sums_only=HIDDEN)
