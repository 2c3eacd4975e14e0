"""Unions of small atoms in the chain rule (mipflow.node.controls.unions; ADR 0030 amended, round 17 hole 1): the
rule against an exhaustive search over small random families, both enumerations, the cap, and honest families
(nested age bands, sexes by age bands, re-runs after loads of new rows) answered."""
from __future__ import annotations

import numpy as np
import pytest

from mipflow.node.controls.atoms import atom_labels, check_addition, node_primes
from mipflow.node.controls.chain import ChainSet, chain_allows
from mipflow.node.controls.epochs import ROWS, EpochView
from mipflow.node.controls.unions import (
    small_space, union_leaks, unions_allow,
)

PRIMES = node_primes(bytes(range(32)))
M = 10
MODEL = "stroke:0.1"


def keys(positions) -> np.ndarray:
    return np.unique(np.asarray(list(positions), dtype=np.uint64))


def exhaustive(old: list[np.ndarray], new: list[np.ndarray], threshold: int) -> bool:
    """Whether some set T of the family's atoms, fewer than ``threshold`` rows in all, carries a vector of the
    family's row space that the old sets' row space does not carry (every T tried; ranks over the reals)."""
    whole, _, _ = atom_labels([*old, *new])
    c, sizes, n_old = whole.incidence.astype(float), whole.sizes, len(old)
    rank = np.linalg.matrix_rank

    def inside(matrix: np.ndarray, t: np.ndarray) -> int:
        if not matrix.shape[0]:
            return 0
        rest = matrix[:, ~t]
        return rank(matrix) - (rank(rest) if rest.size else 0)

    small = np.flatnonzero(sizes < threshold)
    for bits in range(1, 1 << small.size):
        t = np.zeros(sizes.size, dtype=bool)
        t[small[[(bits >> i) & 1 == 1 for i in range(small.size)]]] = True
        if sizes[t].sum() < threshold and inside(c, t) > inside(c[:n_old], t):
            return True
    return False


def random_family(rng: np.random.Generator, n_rows: int, n_old: int, n_new: int) -> tuple[list, list]:
    """Random cohorts over ``n_rows`` rows: intervals, their unions and random subsets (filters cut intervals)."""
    def one() -> np.ndarray:
        kind = rng.integers(3)
        if kind == 0:
            a, b = sorted(rng.integers(0, n_rows + 1, 2))
            return keys(range(a, max(b, a + 1)))
        if kind == 1:
            a, b = sorted(rng.integers(0, n_rows + 1, 2))
            return keys([i for i in range(n_rows) if not a <= i < b] or [0])
        return keys(np.flatnonzero(rng.random(n_rows) < rng.uniform(0.3, 0.8))) if n_rows else keys([0])

    return [one() for _ in range(n_old)], [one() for _ in range(n_new)]


@pytest.mark.parametrize("seed", range(6))
def test_the_rule_is_the_exhaustive_search_over_small_random_families(seed) -> None:
    """Every refusal is a small-support vector the new sets add; every small-support vector they add refuses."""
    rng = np.random.default_rng(seed)
    refused = answered = 0
    for _ in range(60):
        threshold = int(rng.integers(2, 6))
        old, new = random_family(rng, int(rng.integers(8, 16)), int(rng.integers(0, 5)), int(rng.integers(1, 3)))
        expected = not exhaustive(old, new, threshold)
        assert check_addition(old, new, threshold, PRIMES, unions=True) is expected
        assert unions_allow(old, new, threshold, PRIMES) is expected
        refused, answered = refused + (not expected), answered + expected
    assert refused and answered  # both verdicts met


@pytest.mark.parametrize("seed", range(3))
def test_the_search_agrees_with_the_exhaustive_one_at_every_prime_and_threshold(seed) -> None:
    """The search (one prime at a time) on families that put a new combination on small atoms: found exactly when
    some set of small atoms carries a vector the old sets did not."""
    rng = np.random.default_rng(100 + seed)
    searched = 0
    for _ in range(80):
        old, new = random_family(rng, int(rng.integers(8, 14)), int(rng.integers(1, 5)), 1)
        whole, _, _ = atom_labels([*old, *new])
        for threshold in (2, 3, 5, 8):
            small = whole.sizes < threshold
            expected = exhaustive(old, new, threshold)
            for prime in PRIMES:
                assert union_leaks(whole.incidence, len(old), whole.sizes, threshold, [prime]) is expected
            if small.any():
                b_new = small_space(whole.incidence, small, PRIMES[0])
                b_old = small_space(whole.incidence[:len(old)], small, PRIMES[0])
                searched += b_new[0].shape[0] > b_old[0].shape[0]
    assert searched > 20


def test_the_review_s_four_regressions_are_refused_and_each_three_answered() -> None:
    """S3, S4 (each sex at 21-89), S1 (20-50), S2 (>= 50): S1 + S2 - S3 - S4 is the target and the oldest."""
    women_young, men_young, women_old, men_old = (keys(range(a, a + 20)) for a in (0, 20, 40, 60))
    target, oldest = keys([80]), keys([81])
    s3, s4 = np.union1d(women_young, women_old), np.union1d(men_young, men_old)
    s1 = np.union1d(np.union1d(women_young, men_young), target)
    s2 = np.union1d(np.union1d(women_old, men_old), oldest)
    assert check_addition([s3, s4, s1], [s2], M, PRIMES)  # no single atom: what the atom rule let through
    for order in ([s3, s4, s1, s2], [s1, s2, s3, s4], [s2, s3, s1, s4]):
        assert all(check_addition(order[:i], [order[i]], M, PRIMES, unions=True) for i in range(3))
        assert not check_addition(order[:3], [order[3]], M, PRIMES, unions=True)
        old = [ChainSet(MODEL, s, None, M) for s in order[:3]]
        assert not chain_allows(MODEL, old, [], [ChainSet(MODEL, order[3], None, M)], M, PRIMES)
    # ten patients outside both sexes' ranges: their union is a cohort's worth, answered
    wide_target, wide_oldest = keys(range(80, 85)), keys(range(85, 90))
    s1 = np.union1d(np.union1d(women_young, men_young), wide_target)
    s2 = np.union1d(np.union1d(women_old, men_old), wide_oldest)
    assert check_addition([s3, s4, s1], [s2], M, PRIMES, unions=True)


def test_a_union_the_old_sets_already_gave_does_not_refuse_later_releases() -> None:
    """Released before the rule (or while it was off): what the old family gives cannot be taken back; a release
    adding nothing on the small atoms is answered, one adding a new small combination is refused."""
    a, b, big = keys([0]), keys([1]), keys(range(2, 40))
    old = [np.union1d(big, np.union1d(a, b)), big]  # their difference: the two patients
    assert not check_addition([], old, M, PRIMES, unions=True)
    other = keys(range(40, 80))
    assert check_addition(old, [np.union1d(other, big)], M, PRIMES, unions=True)
    assert not check_addition(old, [np.union1d(big, a)], M, PRIMES, unions=True)  # splits the pair: a alone


def test_the_cap_refuses_when_the_search_would_be_longer() -> None:
    """Three atoms of four rows and three large ones: the new set makes the three small atoms' union (twelve
    rows) a combination, nothing smaller: decided without a search (one class of twelve rows).  A family whose
    small-atom combinations need the search is decided exactly under the cap and refused at a cap of one step."""
    #            L1 L2 L3 a1 a2 a3
    incidence = np.array([[1, 0, 0, 0, 0, 0],   # L1
                          [0, 1, 0, 1, 0, 0],   # L2 + a1
                          [0, 0, 1, 0, 1, 0],   # L3 + a2
                          [1, 0, 0, 1, 1, 1]],  # the new set: L1 + a1 + a2 + a3
                         dtype=np.uint8)
    sizes = np.array([40, 40, 40, 4, 4, 4])
    for prime in PRIMES:
        assert not union_leaks(incidence, 3, sizes, M, [prime], cap=1)  # one step, no branch
        assert union_leaks(incidence, 3, np.array([40, 40, 40, 3, 3, 3]), M, [prime])  # nine rows: refused
        assert not union_leaks(incidence, 4, sizes, M, [prime], cap=0)  # nothing new
    old, new = [keys([2, 7]), keys([3, 4, 5, 6])], [keys([0, 1, 2, 5, 6, 8])]  # atoms of 1, 2, 3, 1, 2 rows
    whole, _, _ = atom_labels([*old, *new])
    assert not exhaustive(old, new, 4)
    for prime in PRIMES:
        assert not union_leaks(whole.incidence, 2, whole.sizes, 4, [prime])
        assert union_leaks(whole.incidence, 2, whole.sizes, 4, [prime], cap=1)


def test_honest_nested_age_bands_and_sexes_by_bands_are_answered() -> None:
    """``age >= a`` for every decade, then each band, then each sex, each sex by band (cells of 6-30 rows), in one
    ledger: every addition answered."""
    rng = np.random.default_rng(5)
    n = 400
    age = rng.uniform(18, 95, n)
    sex = rng.integers(0, 2, n)
    cuts = [18, 30, 40, 50, 60, 70, 80, 95.1]
    family = [keys(np.flatnonzero(age >= a)) for a in cuts[:-1]]
    family += [keys(np.flatnonzero((age >= lo) & (age < hi))) for lo, hi in zip(cuts, cuts[1:])]
    family += [keys(np.flatnonzero(sex == s)) for s in (0, 1)]
    family += [keys(np.flatnonzero((sex == s) & (age >= lo) & (age < hi)))
               for s in (0, 1) for lo, hi in zip(cuts, cuts[1:]) if ((sex == s) & (age >= lo) & (age < hi)).sum() >= M]
    chained: list[ChainSet] = []
    for cohort in family:
        new = ChainSet(MODEL, cohort, None, M)
        assert chain_allows(MODEL, chained, [], [new], M, PRIMES)
        chained.append(new)


def reruns(load: int) -> list[list[np.ndarray]]:
    """Everyone, each sex, each of five age bands, on 300 rows and again after each of four loads of ``load``."""
    rng = np.random.default_rng(11)
    age, sex = rng.uniform(18, 95, 300 + 4 * load), rng.integers(0, 2, 300 + 4 * load)
    bands = [(18, 35), (35, 50), (50, 65), (65, 80), (80, 96)]
    runs = []
    for held in range(300, 300 + 5 * load, load):
        rows = np.arange(held)
        cohorts = [keys(rows)] + [keys(rows[sex[:held] == s]) for s in (0, 1)]
        runs.append(cohorts + [keys(rows[(age[:held] >= lo) & (age[:held] < hi)]) for lo, hi in bands])
    return runs


def test_honest_re_runs_after_loads_of_new_rows_are_answered() -> None:
    """Loads of 100 rows: every band and sex gains ten rows or more a load (the pairwise rule's honest re-run);
    the cells of sex by band by load (5-15 rows) are small atoms on which no combination lives under ten rows."""
    runs = reruns(100)
    chained: list[ChainSet] = []
    for before, after in zip([None, *runs], runs):
        for j, cohort in enumerate(after):
            if before is not None:
                assert len(cohort) - len(before[j]) >= M
            new = ChainSet(MODEL, cohort, None, M)
            assert chain_allows(MODEL, chained, [], [new], M, PRIMES)
            chained.append(new)


def test_a_re_run_that_leaves_a_band_s_few_new_rows_computable_is_refused() -> None:
    """Loads of 60 rows: the second load brings seven rows to the oldest band (split by sex: two atoms, each
    under the atom rule's eye alone).  Once everyone and four bands are re-run, the load less its four bands is
    those seven rows: the fourth band's re-run is refused (before, the oldest band's own re-run was, by the
    pairwise rule, after the seven rows' sums were out)."""
    runs = reruns(60)
    chained = [ChainSet(MODEL, c, None, M) for c in runs[0] + runs[1][:6]]
    fourth = runs[1][6]
    assert check_addition([c.rows for c in chained], [fourth], M, PRIMES)  # the atom rule alone let it through
    assert not chain_allows(MODEL, chained, [], [ChainSet(MODEL, fourth, None, M)], M, PRIMES)


def test_thirty_filters_of_five_variables_over_two_thousand_rows_are_answered() -> None:
    """Thresholds on five variables, alone, by sex or leaving a category out: hundreds of atoms of one or two rows
    (every atom small), every addition answered by the search (none at the cap)."""
    rng = np.random.default_rng(3)
    n = 2000
    x, category, sex = rng.normal(size=(n, 5)), rng.integers(0, 3, n), rng.integers(0, 2, n)
    rng = np.random.default_rng(0)
    old: list[np.ndarray] = []
    for _ in range(30):
        kind, v = rng.integers(3), rng.integers(5)
        if kind == 0:
            chosen = x[:, v] >= rng.normal()
        elif kind == 1:
            chosen = (x[:, v] >= rng.normal()) & (sex == rng.integers(2))
        else:
            chosen = (x[:, v] < rng.normal() * 0.5 + 0.5) & (category != rng.integers(3))
        cohort = np.flatnonzero(chosen).astype(np.uint64)
        if len(cohort) < M:
            continue
        assert check_addition(old, [cohort], M, PRIMES, unions=True)
        old.append(cohort)
    assert len(old) >= 25 and atom_labels(old)[0].sizes.size > 500


def test_a_stale_cohort_s_phantom_unit_and_one_row_are_a_union_refused_alike_at_a_holder_and_a_non_holder() -> None:
    """A cohort ``S`` (rows 0-199) remembered before a consent change, with her row at the holder and without at the
    non-holder, is seen as the rows still held plus one phantom unit (ADR 0061).  Under the new epoch: ``V`` (row 0
    and 51 others), ``U`` (rows 200-260), then ``T`` (rows 1-260): ``S - T + U`` is the phantom and row 0, two
    one-unit atoms (neither alone in the span), refused at both; ``T`` leaving out rows 0-9 is answered at both."""
    her = np.uint64(500)
    held = keys(range(200))
    verdicts = {}
    for node, remembered in {"holder": np.append(held, her), "non-holder": held}.items():
        view = EpochView("withdrawn-1", lambda model: (keys(range(400)), None))  # her row withdrawn
        chained = [ChainSet(MODEL, view.chain_keys(remembered, MODEL, ROWS, ""), None, M)]
        for cohort in (keys([0, *range(300, 351)]), keys(range(200, 261))):
            new = ChainSet(MODEL, cohort, None, M)
            assert chain_allows(MODEL, chained, [], [new], M, PRIMES)
            chained.append(new)
        assert len(chained[0].rows) == 201 and check_addition([c.rows for c in chained], [keys(range(1, 261))], M,
                                                              PRIMES)  # one atom at a time: answered
        verdicts[node] = [chain_allows(MODEL, chained, [], [ChainSet(MODEL, keys(range(first, 261)), None, M)], M,
                                       PRIMES) for first in (1, 10)]
    assert verdicts["holder"] == verdicts["non-holder"] == [False, True]
