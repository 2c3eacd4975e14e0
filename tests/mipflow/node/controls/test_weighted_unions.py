"""Unions of atoms light in effect (ADR 0058 amended, twenty-second review hole 1): the search against an exhaustive
one over every combination of small random families, and the weighted backstop refusing a union one row in effect."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from mipflow.algorithms.weighted import exp_families
from mipflow.node.controls import chain_exact, weighted_unions
from mipflow.node.controls.atoms import echelon, node_primes
from mipflow.node.controls.unions import _outside
from mipflow.node.controls.weighted_ledger import (
    FamilyRows, _Remembered, backstop_dominated, fingerprint, fingerprint_key,
)
from mipflow.node.controls.weighted_unions import atom_weights, incidence, light_union

GLUCOSE = exp_families(["glucose_mmol"])[0]
KEY = "k" * 16
PRIMES = node_primes(b"\x02" * 32)


def random_family(seed: int) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Row log-weights (most near 0, up to two rows 2-5 above) and 2-5 random sets of 6-30 rows; a small prime."""
    rng = np.random.default_rng(seed)
    n, k, prime = int(rng.integers(6, 30)), int(rng.integers(2, 6)), int(rng.choice([3, 5, 7]))
    k = min(k, 4) if prime == 7 else k
    logw = rng.normal(0, 0.3, n)
    logw[rng.choice(n, int(rng.integers(0, 3)), replace=False)] += rng.uniform(2, 5)
    sets = [np.flatnonzero(rng.random(n) < rng.uniform(0.2, 0.8)).astype(np.uint64) for _ in range(k)]
    return logw, [s for s in sets if s.size] or [np.arange(1, dtype=np.uint64)], prime


def atoms_of(sets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    universe = np.unique(np.concatenate(sets))
    members = [set(s.tolist()) for s in sets]
    seen: dict[tuple, int] = {}
    labels = np.array([seen.setdefault(tuple(int(u) in m for m in members), len(seen)) for u in universe], np.int64)
    return universe, labels, len(seen)


def least_new_union(matrix: np.ndarray, n_old: int, row_atom: np.ndarray, logw: np.ndarray, prime: int) -> float:
    """Exhaustive: over every combination of the sets over GF(prime) outside the old sets' span, the least rows in
    effect (``sum w / max w``) over the rows of its support; inf when the new set adds nothing."""
    reduced, pivots = echelon(matrix[:n_old], prime)
    old = (reduced, np.asarray(pivots, np.int64))
    best = np.inf
    for coefficients in itertools.product(range(prime), repeat=matrix.shape[0]):
        x = (np.asarray(coefficients) @ matrix) % prime
        if x.any() and _outside(x, old, prime):
            w = logw[np.isin(row_atom, np.flatnonzero(x))]
            best = min(best, float(np.exp(w - w.max()).sum()))
    return best


@pytest.mark.parametrize("chunk", range(2))
def test_the_search_agrees_with_every_combination_of_small_random_families(chunk: int) -> None:
    """For 60 random families each: the last set lets a new combination live on a union under ``T`` rows in effect
    exactly when the exhaustive search finds one, ``T`` just above and just below the least such union's size."""
    for seed in range(60 * chunk, 60 * (chunk + 1)):
        logw, sets, prime = random_family(seed)
        universe, labels, n_atoms = atoms_of(sets)
        matrix = incidence(sets, universe, labels, n_atoms)
        rows = np.arange(len(logw), dtype=np.uint64)
        log_total, log_top = atom_weights(universe, labels, n_atoms, rows, logw, logw)
        row_atom = np.full(len(logw), -1)
        row_atom[universe.astype(int)] = labels
        least = least_new_union(matrix, len(sets) - 1, row_atom, logw, prime)
        if not np.isfinite(least):
            assert not light_union(matrix, len(sets) - 1, log_total, log_top, 1e9, (prime,)), seed
            continue
        assert not light_union(matrix, len(sets) - 1, log_total, log_top, least * (1 - 1e-9), (prime,)), seed
        assert light_union(matrix, len(sets) - 1, log_total, log_top, least * (1 + 1e-9), (prime,)), seed


def test_atoms_holding_the_threshold_in_effect_are_never_searched_and_unknown_weights_are_left_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Only an atom itself under the threshold in effect can top a light union: nested bands of 12 equal rows are
    answered even with no room for any work; an atom whose weights are no longer known (``inf``) is not searched."""
    sets = [np.arange(0, 12 * k, dtype=np.uint64) for k in range(1, 6)]
    universe, labels, n_atoms = atoms_of(sets)
    matrix = incidence(sets, universe, labels, n_atoms)
    log_total, log_top = atom_weights(universe, labels, n_atoms, universe, np.zeros(60), np.zeros(60))
    monkeypatch.setattr(weighted_unions, "INCIDENCE_WORK", 0)
    assert not light_union(matrix, 4, log_total, log_top, 10, PRIMES)
    stale = np.full(60, np.inf)
    low = np.where(universe < 12, -np.inf, 0.0)
    log_total, log_top = atom_weights(universe, labels, n_atoms, universe, low, np.where(universe < 12, stale, 0.0))
    assert not np.isfinite(log_top[labels[0]])
    assert not light_union(matrix, 4, log_total, log_top, 10, PRIMES)


def test_past_the_work_bound_a_family_with_a_light_atom_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past :data:`INCIDENCE_WORK` the addition is refused (as the union rule past its cap), only when some atom is
    under the threshold in effect."""
    logw, sets = hole_rows(20.0)
    names = ("A", "C", "B", "D")
    family = [sets[n] for n in names]
    universe, labels, n_atoms = atoms_of(family)
    matrix = incidence(family, universe, labels, n_atoms)
    log_total, log_top = atom_weights(universe, labels, n_atoms, universe, logw[universe.astype(int)],
                                      logw[universe.astype(int)])
    monkeypatch.setattr(weighted_unions, "INCIDENCE_WORK", 0)
    assert light_union(matrix, 3, log_total, log_top, 10, PRIMES)


def hole_rows(target: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Round 22 hole 1's bands by row index: ``P`` 12 rows (glucose 4.0), ``M1`` 12 (5.0), ``M3`` 15 (19.9), ``Q`` the
    lone row 39 at ``target``, ``N`` 15 (19.9), 20 rows in no set; ``A = P ∪ M1``, ``C = M1 ∪ M3``, ``B = M3 ∪ Q ∪ N``,
    ``D = N``: ``A - C + B - D = P ∪ Q``."""
    glucose = np.r_[np.full(12, 4.0), np.full(12, 5.0), np.full(15, 19.9), [target], np.full(15, 19.9), np.full(20, 6.0)]
    glucose = glucose + 0.001 * np.arange(glucose.size)
    r = {"P": range(0, 12), "M1": range(12, 24), "M3": range(24, 39), "Q": range(39, 40), "N": range(40, 55)}

    def union(*names: str) -> np.ndarray:
        return np.concatenate([np.arange(r[n].start, r[n].stop, dtype=np.uint64) for n in names])

    sets = {"A": union("P", "M1"), "C": union("M1", "M3"), "B": union("M3", "Q", "N"), "D": union("N")}
    return GLUCOSE.log_weights({"glucose_mmol": glucose}), sets


def backstop(logw: np.ndarray, sets: dict[str, np.ndarray], olds: tuple[str, ...], new: str) -> bool:
    chain_exact.clear()
    remembered = [_Remembered("stroke:0.1", sets[n], fingerprint(fingerprint_key(KEY), sets[n], logw[sets[n].astype(int)]))
                  for n in olds]

    def used(i: int):
        return logw[remembered[i].rows.astype(int)], None

    rows = sets[new]
    try:
        return backstop_dominated(FamilyRows(GLUCOSE.name, "stroke:0.1", rows, logw[rows.astype(int)]), remembered, used,
                                  10, PRIMES)
    finally:
        chain_exact.clear()


@pytest.mark.parametrize("target", [20.0, 4.05])
def test_the_backstop_refuses_a_union_of_two_atoms_one_row_in_effect(target: float) -> None:
    """Round 22 hole 1 at the backstop: ``D`` is refused when the lone row of ``Q`` outweighs ``P``'s twelve (``P ∪ Q``
    one row in effect), answered when it is as light as they are (13 in effect); ``A``, ``C``, ``B`` pass."""
    logw, sets = hole_rows(target)
    assert not backstop(logw, sets, ("A",), "C") and not backstop(logw, sets, ("A", "C"), "B")
    assert backstop(logw, sets, ("A", "C", "B"), "D") is (target == 20.0)


@pytest.mark.parametrize("rest", [5.0, 19.95])
def test_three_releases_whose_combination_is_a_dominated_atom_less_light_rows_are_refused(rest: float) -> None:
    """``U``, ``U \\ X``, ``U \\ Y``: ``U - (U \\ X) - (U \\ Y) = X ∩ Y - V``.  With ``V``'s rows light beside the
    target (glucose 5 against 20) that is her record after three releases, refused at ``U \\ Y``; with ``V`` heavy
    (19.95) it holds the threshold in effect and is answered (round 21's chain needs its fourth release)."""
    glucose = np.r_[[20.0], np.full(9, 4.0), np.full(15, 19.9), np.full(15, 19.9), np.full(40, rest)]
    glucose = glucose + 0.001 * np.arange(glucose.size)
    logw = GLUCOSE.log_weights({"glucose_mmol": glucose})
    everyone = np.arange(80, dtype=np.uint64)
    x = np.arange(0, 25, dtype=np.uint64)
    y = np.r_[np.arange(0, 10), np.arange(25, 40)].astype(np.uint64)
    sets = {"U": everyone, "U-X": np.setdiff1d(everyone, x), "U-Y": np.setdiff1d(everyone, y)}
    assert not backstop(logw, sets, ("U",), "U-X")
    assert backstop(logw, sets, ("U", "U-X"), "U-Y") is (rest == 5.0)


def test_the_backstop_s_reduced_rows_give_the_decision_of_the_sets_themselves() -> None:
    """The backstop passes its incremental state's reduced rows (the old ones widened to the new atoms) in place of the
    sets: over the node's primes, the same decision on 80 random families, at thresholds around every atom's size."""
    from mipflow.node.controls.weighted_unions import light_span, widened

    for seed in range(80):
        logw, sets, _ = random_family(seed)
        chain_exact.clear()
        states = chain_exact.extended((PRIMES, f"t{seed}", 10), [sets[:-1]], [sets[-1]], PRIMES, 10)
        assert states is not None
        before, after = states
        rows = np.arange(len(logw), dtype=np.uint64)
        log_total, log_top = atom_weights(after.universe, after.labels, after.atoms, rows, logw, logw)
        matrix = incidence(sets, after.universe, after.labels, after.atoms)
        for threshold in (1.5, 2.5, 4.0, 8.0):
            assert light_span(after.reduced, widened(before, after), log_total, log_top, threshold, PRIMES) is \
                light_union(matrix, len(sets) - 1, log_total, log_top, threshold, PRIMES), (seed, threshold)
    chain_exact.clear()
