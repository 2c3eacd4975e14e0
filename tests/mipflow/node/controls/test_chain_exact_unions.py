"""The chain backstop's union rule (``chain_exact``, ``unions=True``; ADR 0030, twentieth review hole 1): over every
remembered set, no new combination of the family's sums may live on small atoms of fewer than the threshold's rows
in all.  Checked against an exhaustive search over every set of small atoms, and on the review's chain."""
from __future__ import annotations

import numpy as np
import pytest

from mipflow.node.controls import chain_exact
from mipflow.node.controls.atoms import atom_labels
from mipflow.node.controls.chain_exact import Exact, exact_allows
from tests.mipflow.node.controls.test_unions import exhaustive, random_family

PRIMES = (1_000_000_007, 998_244_353)


@pytest.fixture(autouse=True)
def fresh_cache():
    chain_exact.clear()
    yield
    chain_exact.clear()


@pytest.mark.parametrize("seed", range(80))
def test_the_backstop_s_union_rule_is_the_exhaustive_search_over_the_whole_family(seed) -> None:
    """Random families (intervals, complements, random subsets; 1-3 new sets, thresholds 2-6): the backstop with
    unions refuses exactly when some set of atoms of fewer than the threshold's rows carries a new vector of the
    row space (the atom rule's case included)."""
    rng = np.random.default_rng(7000 + seed)
    old, new = random_family(rng, int(rng.integers(8, 16)), int(rng.integers(1, 7)), int(rng.integers(1, 4)))
    threshold = int(rng.integers(2, 7))
    small = np.sum(atom_labels([*old, *new])[0].sizes < threshold)
    if small > 14:
        pytest.skip("too many small atoms for the exhaustive search")  # seeds are fixed: the same ones every run
    expected = not exhaustive(old, new, threshold)
    assert exact_allows(("t", "dm", threshold), [old], new, threshold, PRIMES, unions=True) is expected


@pytest.mark.parametrize("seed", range(30))
def test_rows_pivoting_on_small_atoms_are_zero_on_every_large_one(seed) -> None:
    """The state's invariant, after every addition: pivot columns are unit columns, a row whose pivot is an atom of
    fewer than the threshold's rows is zero on every larger atom, and those rows span the row space's vectors on the
    small atoms (their number is rank C - rank C restricted to the large atoms, over the reals)."""
    rng = np.random.default_rng(9000 + seed)
    threshold = int(rng.integers(3, 8))
    state = Exact.empty(PRIMES, threshold)
    sets: list[np.ndarray] = []
    for step in range(int(rng.integers(5, 14))):
        span = 10 + 4 * step
        new = np.unique(rng.integers(0, span, int(rng.integers(1, span)))).astype(np.uint64)
        state.add(new)
        sets.append(new)
        whole, universe, labels = atom_labels(sets)
        c = whole.incidence.astype(float)
        large = whole.sizes >= threshold
        rank_c = np.linalg.matrix_rank(c)
        rank_large = np.linalg.matrix_rank(c[:, large]) if large.any() else 0
        for reduced, pivots in zip(state.reduced, state.pivots):
            assert reduced.shape[0] == len(pivots) == rank_c
            for j, col in enumerate(pivots):
                column = reduced[:, col]
                assert column[j] == 1 and np.count_nonzero(column) == 1, step
            on_small = [j for j, col in enumerate(pivots) if state.sizes[col] < threshold]
            assert not reduced[on_small][:, state.sizes >= threshold].any(), step
            assert len(on_small) == rank_c - rank_large, step


def decoy_chain(decoys: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The seventeenth review's four regressions (two one-row atoms: S1 + S2 - S3 - S4) with ``decoys`` nested sets
    of ten rows apart inside S2 released before S2: what a window of the most recent sets loses."""
    rows = np.arange(0, 200, dtype=np.uint64)  # rows 0 and 199 are outside both sexes' ranges
    s3, s4 = rows[1:199:2], rows[2:199:2]  # women, men
    s1 = rows[:60]
    s2 = rows[60:]
    decoy_sets = [s2[10 + 10 * i:] for i in range(decoys)]
    return [s3, s4, s1, *decoy_sets], s2


def test_the_review_s_union_beyond_the_window_is_refused_and_without_the_target_answered() -> None:
    """S3, S4, S1, 32 decoys, then S2: S1 + S2 - S3 - S4 is the youngest and the oldest row, refused by the union
    rule over the whole family (the atom rule sees no single small atom); a set far from every other and a repeat of
    the last decoy are answered."""
    pools, s2 = decoy_chain(32)
    assert exact_allows(("t", "dm", 10), [pools], [s2], 10, PRIMES) is True  # the atom rule alone: no single atom
    assert exact_allows(("t", "dm", 10), [pools], [s2], 10, PRIMES, unions=True) is False
    far = np.arange(1000, 1100, dtype=np.uint64)
    assert exact_allows(("t", "dm", 10), [pools], [far], 10, PRIMES, unions=True) is True
    assert exact_allows(("t", "dm", 10), [pools], [pools[-1]], 10, PRIMES, unions=True) is True  # a repeat
