"""The ledger rule (ADR 0023): which atoms a family of released sums isolates, against an exact
rational reference, and the chains that the pairwise rule of ADR 0013 does not see."""
from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mipflow.node.controls.atoms import _is_prime, atoms_of, check_family, isolatable, node_primes

PRIMES = node_primes(b"\x01" * 32)
M = 10


def rational_rank(rows: list[list[int]]) -> int:
    """Rank over the rationals by plain Gaussian elimination with Fractions."""
    matrix = [[Fraction(v) for v in row] for row in rows]
    rank, n_cols = 0, len(matrix[0]) if matrix else 0
    for col in range(n_cols):
        pivot = next((r for r in range(rank, len(matrix)) if matrix[r][col] != 0), None)
        if pivot is None:
            continue
        matrix[rank], matrix[pivot] = matrix[pivot], matrix[rank]
        for r in range(len(matrix)):
            if r != rank and matrix[r][col] != 0:
                factor = matrix[r][col] / matrix[rank][col]
                matrix[r] = [a - factor * b for a, b in zip(matrix[r], matrix[rank])]
        rank += 1
    return rank


def reference_isolatable(incidence: np.ndarray) -> np.ndarray:
    """Atom a is isolatable when e_a is in the row space: appending e_a leaves the rank unchanged."""
    rows = incidence.astype(int).tolist()
    base = rational_rank(rows)
    out = []
    for a in range(incidence.shape[1]):
        unit = [1 if j == a else 0 for j in range(incidence.shape[1])]
        out.append(rational_rank(rows + [unit]) == base)
    return np.array(out, dtype=bool)


def pairwise_rule_passes(sets: list[np.ndarray], m: int) -> bool:
    """ADR 0013's rule for every pair: differences and intersection 0 or at least m."""
    for a, b in itertools.combinations(sets, 2):
        a, b = set(a.tolist()), set(b.tolist())
        if any(0 < size < m for size in (len(a - b), len(b - a), len(a & b))):
            return False
    return True


def groups(*sizes: int) -> list[np.ndarray]:
    start, out = 0, []
    for size in sizes:
        out.append(np.arange(start, start + size))
        start += size
    return out


def union(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate(parts)


def test_all_and_all_but_one_isolate_the_one() -> None:
    rest, patient = groups(50, 1)
    verdict = check_family([union(rest, patient), rest], M, PRIMES)
    assert not verdict.allowed
    assert verdict.smallest_isolatable == 1


def test_a_chain_of_four_cohorts_that_the_pairwise_rule_passes() -> None:
    """s(all) - s(G0+G1+G2+G4) - s(G1+G2+G3) + s(G1+G2) = the patient's value: every pair of these
    cohorts differs and overlaps by 0 or at least M rows, yet together they isolate one patient."""
    g0, g1, g2, g3, g4, patient = groups(M, M, M, M, M, 1)
    sets = [union(g0, g1, g2, g3, g4, patient), union(g1, g2, g3), union(g1, g2), union(g0, g1, g2, g4)]
    assert pairwise_rule_passes(sets, M)
    verdict = check_family(sets, M, PRIMES)
    assert not verdict.allowed
    assert verdict.smallest_isolatable == 1


def test_an_honest_study_family_is_allowed() -> None:
    """A population, two subgroup variables and their crossings: every atom is a subgroup cell."""
    rng = np.random.default_rng(7)
    n = 400
    old, female = rng.random(n) < 0.4, rng.random(n) < 0.5
    keys = rng.permutation(10 * n)[:n]
    sets = [keys, keys[old], keys[~old], keys[female], keys[~female], keys[old & female]]
    verdict = check_family(sets, M, PRIMES)
    assert verdict.allowed
    # the four cells are the atoms, and every cell is isolatable from these sums
    assert verdict.atoms == 4 and verdict.isolatable_atoms == 4
    assert verdict.smallest_isolatable == min(int(np.sum(a & b)) for a in (old, ~old) for b in (female, ~female))


def test_a_small_atom_that_no_combination_isolates_is_allowed_until_one_does() -> None:
    """Two cohorts meet in one patient: s(A) and s(B) are sums over X + p and Y + p, and no
    combination of the two is her value (her column (1, 1) is the sum of X's and Y's). The pairwise
    rule refuses the pair to avoid a trap; the ledger rule allows it and refuses the third cohort
    that springs the trap (A | B: s(A) + s(B) - s(A | B) = p)."""
    x, y, patient = groups(M, M, 1)
    sets = [union(x, patient), union(y, patient)]
    assert not pairwise_rule_passes(sets, M)
    verdict = check_family(sets, M, PRIMES)
    assert verdict.allowed and verdict.isolatable_atoms == 0 and verdict.smallest_isolatable is None
    sprung = check_family(sets + [union(x, y, patient)], M, PRIMES)
    assert not sprung.allowed and sprung.smallest_isolatable == 1


def test_unions_refuse_a_family_whose_combination_is_two_one_patient_atoms() -> None:
    """Round 17 hole 1 as a study family (issue 14): S3 women 21-89, S4 men 21-89, S1 20-50, S2 >= 50 and the
    population with twenty younger patients; no atom is isolatable, ``S1 + S2 - S3 - S4`` is the target and the
    oldest.  The atom rule allows it; with ``unions`` it is refused, the honest bands-by-sexes family allowed."""
    young, f1, m1, f2, m2, target, oldest = groups(20, 20, 20, 20, 20, 1, 1)
    s3, s4, s1, s2 = union(f1, f2), union(m1, m2), union(f1, m1, target), union(f2, m2, oldest)
    sets = [union(young, s1, s2), s3, s4, s1, s2]
    single = check_family(sets, M, PRIMES)
    assert single.allowed and single.isolatable_atoms == 1 and not single.small_union  # the young only
    verdict = check_family(sets, M, PRIMES, unions=True)
    assert not verdict.allowed and verdict.small_union
    # two cohorts meeting in one patient: a one-patient atom no combination lives on alone
    x, y, patient = groups(M, M, 1)
    assert check_family([union(x, patient), union(y, patient)], M, PRIMES, unions=True).allowed
    honest = [union(young, s1, s2), s1, s2, union(f1, f2, target), union(m1, m2, oldest)]  # bands and sexes
    assert check_family(honest, M, PRIMES, unions=True).allowed


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 11), min_size=1, max_size=12), min_size=1, max_size=7))
def test_isolatable_atoms_equal_the_rational_reference(sets: list[list[int]]) -> None:
    arrays = [np.array(s, dtype=np.int64) for s in sets]
    atoms = atoms_of(arrays)
    assert atoms.sizes.sum() == len(set().union(*map(set, sets)))
    assert np.array_equal(isolatable(atoms, PRIMES), reference_isolatable(atoms.incidence))


def test_atoms_group_patients_by_membership() -> None:
    atoms = atoms_of([np.array([1, 2, 3, 4]), np.array([3, 4, 5])])
    cells = {tuple(atoms.incidence[:, a]): int(atoms.sizes[a]) for a in range(atoms.sizes.size)}
    assert cells == {(1, 0): 2, (1, 1): 2, (0, 1): 1}


def test_node_primes_are_secret_keyed_distinct_primes_below_2_31() -> None:
    ours, other = node_primes(b"a" * 32), node_primes(b"b" * 32)
    assert ours == node_primes(b"a" * 32) and ours != other
    assert len(set(ours)) == len(ours) == 3
    assert all(2**30 <= p < 2**31 and _is_prime(p) for p in ours + other)
    assert [n for n in range(60) if _is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59]
    assert not _is_prime(2147483647 * 3) and _is_prime(2147483647)


def test_min_row_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="min_row_count"):
        check_family([np.arange(5)], 0, PRIMES)


def test_empty_family() -> None:
    verdict = check_family([], M, PRIMES)
    assert verdict.allowed and verdict.atoms == 0 and verdict.smallest_isolatable is None


@pytest.mark.parametrize("n_sets", [1, 5, 64, 65, 70])
def test_atoms_are_the_patients_grouped_by_the_sets_they_are_in(n_sets) -> None:
    """Both ways of grouping (one 64-bit mask per patient up to 64 sets, packed rows beyond) give the
    atoms counted by hand: each distinct membership pattern once, with its number of patients."""
    from collections import Counter

    from mipflow.node.controls.atoms import atoms_of, sorted_unique

    rng = np.random.default_rng(n_sets)
    universe = rng.integers(0, 2**63, 400, dtype=np.uint64)
    sets = [universe[rng.random(universe.size) < rng.uniform(0.1, 0.9)] for _ in range(n_sets)]
    sets = [np.concatenate([s, s[:3]]) for s in sets]  # a patient listed twice counts once
    pattern = Counter(tuple(int(k in set(s.tolist())) for s in sets) for k in set(np.concatenate(sets).tolist()))
    atoms = atoms_of(sets)
    got = Counter({tuple(int(v) for v in atoms.incidence[:, a]): int(atoms.sizes[a]) for a in range(atoms.sizes.size)})
    assert got == pattern
    keys = np.concatenate(sets)
    assert np.array_equal(sorted_unique(keys), np.unique(keys))


def test_one_set_is_one_atom_as_the_general_grouping_gives_it():
    """A new ledger's check groups one cohort alone (10M keys at a large node): one atom, its size the
    set's distinct members, as the grouping of the set with itself gives (no universe built)."""
    rng = np.random.default_rng(5)
    keys = rng.integers(0, 2 ** 63, 1000, dtype=np.uint64)
    for sets in (np.sort(keys), keys, np.concatenate([keys, keys[:10]])):
        alone, twice = atoms_of([sets]), atoms_of([sets, sets])
        assert alone.sizes.tolist() == twice.sizes.tolist() == [1000]
        assert alone.incidence.tolist() == twice.incidence[:1].tolist() == [[1]]
