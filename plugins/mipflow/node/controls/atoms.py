"""Which groups of patients a family of released sums can isolate (ADR 0023, "the ledger rule").

A node releases aggregates that are sums over sets of patients: a cohort, a group inside an
algorithm, a fold, a k-means cluster. Anyone holding the released sums can form linear
combinations of them. Patients with the same membership in every released set form an *atom*;
every linear combination of the released sums is a combination of the atoms' sums. A combination
equals the sum over atom ``a`` alone exactly when ``a``'s column of the sets x atoms incidence
matrix is not in the span of the other columns (``e_a`` is in the row space). The rule this module
decides: **every atom that some combination isolates holds at least ``min_row_count`` patients.**
It is exact for one patient and for any single atom, whatever the length of the chain of sets that
isolates it; a combination isolating a *union* of several small atoms is caught by
:mod:`mipflow.node.controls.unions`: per request (``check_addition(unions=True)``, the chain rule's; ADR 0030
amended) and at study approval and refresh (``check_family(unions=True)``), not with weighted sizes.

Ranks are computed over GF(p) for several primes drawn from the node's secret. Over a prime field a
rank can only be lower than over the rationals, and only when the prime divides a particular minor
of the 0/1 incidence matrix; with primes the requester cannot know, an atom is reported isolatable
when any of the primes says so, so a miss needs every prime to divide such a minor.

The decision depends on the sets, which depend on the data: in study mode it is taken once, by the
node admin, when a study protocol is approved (ADR 0023), never per request.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from mipflow.node.controls.ledger import sorted_unique  # one sort, not numpy 2.4's hash path

#: Primes are below 2**31, so that a product of two residues fits in a signed 64-bit integer.
PRIME_BITS = 31
#: How many primes decide; a miss needs all of them to divide a minor of the incidence matrix.
PRIME_COUNT = 3


def _is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24 (bases 2..41)."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for p in small:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def node_primes(node_secret: bytes, count: int = PRIME_COUNT) -> tuple[int, ...]:
    """``count`` distinct primes in [2**30, 2**31), derived from the node secret by HMAC."""
    primes: list[int] = []
    counter = 0
    while len(primes) < count:
        digest = hmac.new(node_secret, f"atoms-prime:{counter}".encode(), hashlib.sha256).digest()
        counter += 1
        candidate = (int.from_bytes(digest[:8], "big") % (1 << (PRIME_BITS - 1))) | (1 << (PRIME_BITS - 1)) | 1
        while not _is_prime(candidate):
            candidate += 2
        if candidate < (1 << PRIME_BITS) and candidate not in primes:
            primes.append(candidate)
    return tuple(primes)


@dataclass(frozen=True)
class Atoms:
    """Patients grouped by their membership in a family of sets.

    Attributes
    ----------
    incidence : numpy.ndarray, shape (n_sets, n_atoms), uint8
        ``incidence[j, a]`` is 1 when atom ``a``'s patients are in set ``j``.
    sizes : numpy.ndarray, shape (n_atoms,), int64
        Patients in each atom.
    """

    incidence: np.ndarray
    sizes: np.ndarray


def _as_set(keys: np.ndarray) -> np.ndarray:
    """``keys`` sorted and unique: themselves when they are already (read only here: no copy), else
    :func:`sorted_unique` of them."""
    keys = np.asarray(keys)
    if keys.dtype == np.uint64 and (len(keys) < 2 or bool(np.all(keys[1:] > keys[:-1]))):
        return keys
    return sorted_unique(keys)


def atoms_of(sets: Sequence[np.ndarray]) -> Atoms:
    """Group the patients of ``sets`` (arrays of patient keys) into atoms.

    Patients in none of the sets belong to no atom (nothing about them was released).
    """
    if len(sets) == 1:  # one set: its members are one atom (no universe to build: 10M keys, ~0.5 GB)
        size = _as_set(sets[0]).size
        return Atoms(incidence=np.ones((1, 1 if size else 0), dtype=np.uint8),
                     sizes=np.array([size] if size else [], dtype=np.int64))
    return atom_labels(sets)[0]


def atom_labels(sets: Sequence[np.ndarray]) -> tuple[Atoms, np.ndarray, np.ndarray]:
    """:func:`atoms_of`, with every member's atom: ``(atoms, universe, labels)``, ``universe`` the
    sorted unique members of the sets and ``labels[i]`` the atom (column of the incidence) of
    ``universe[i]`` (for sizing atoms other than by their count, ADR 0058's weighted chain rule)."""
    if not sets:
        empty = np.zeros(0, dtype=np.uint64)
        return Atoms(np.zeros((0, 0), dtype=np.uint8), np.zeros(0, dtype=np.int64)), empty, np.zeros(0, np.int64)
    members = [_as_set(s) for s in sets]
    universe = sorted_unique(np.concatenate(members))
    if len(members) <= 64:  # each patient's sets as one 64-bit mask: atoms are the distinct masks
        code = np.zeros(universe.size, dtype=np.uint64)
        for j, keys in enumerate(members):
            # a set as large as the universe is the universe (both sorted, unique): no search
            at = slice(None) if keys.size == universe.size else np.searchsorted(universe, keys)
            code[at] |= np.uint64(1) << np.uint64(j)
        order = np.argsort(code, kind="stable")
        ordered = code[order]
        first = np.concatenate([[True], ordered[1:] != ordered[:-1]])
        starts = np.flatnonzero(first)
        sizes = np.diff(np.append(starts, ordered.size))
        masks = ordered[starts]
        bits = np.uint64(1) << np.arange(len(members), dtype=np.uint64)
        incidence = ((masks[None, :] & bits[:, None]) != 0).astype(np.uint8)
        labels = np.empty(universe.size, dtype=np.int64)
        labels[order] = np.cumsum(first) - 1
        return Atoms(incidence=incidence, sizes=sizes.astype(np.int64)), universe, labels
    signature = np.zeros((universe.size, len(members)), dtype=bool)
    for j, keys in enumerate(members):
        signature[np.searchsorted(universe, keys), j] = True
    packed = np.packbits(signature, axis=1)
    rows, first, inverse, sizes = np.unique(packed, axis=0, return_index=True, return_inverse=True,
                                            return_counts=True)
    del rows
    incidence = signature[first].T.astype(np.uint8)
    return (Atoms(incidence=incidence, sizes=sizes.astype(np.int64)), universe,
            np.asarray(inverse, dtype=np.int64).reshape(-1))


#: How atoms are sized when not by their count: ``(universe, labels, n_atoms) -> sizes`` (float, one per
#: atom), the arguments as :func:`atom_labels` gives them.
AtomSizes = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def echelon(matrix: np.ndarray, prime: int) -> tuple[np.ndarray, list[int]]:
    """The reduced row echelon form of an integer matrix over GF(prime): its non-zero rows and their pivot
    columns.  The one elimination of the atom rule, the union rule (:mod:`~mipflow.node.controls.unions`) and the
    changed-value units (:mod:`~mipflow.node.controls.chain`); the next pivot column is found in one step (the rank
    is at most the number of sets, so a family with many atoms skips its many dependent columns at once)."""
    m = np.asarray(matrix, dtype=np.int64) % prime
    n_rows, n_cols = m.shape
    pivots: list[int] = []
    row = col = 0
    while row < n_rows and col < n_cols:
        ahead = np.flatnonzero(m[row:, col:].any(axis=0))
        if ahead.size == 0:
            break
        col += int(ahead[0])
        pivot = row + int(np.flatnonzero(m[row:, col])[0])
        if pivot != row:
            m[[row, pivot]] = m[[pivot, row]]
        m[row] = (m[row] * pow(int(m[row, col]), prime - 2, prime)) % prime
        factors = m[:, col].copy()
        factors[row] = 0
        hit = np.flatnonzero(factors)
        if hit.size:
            m[hit] = (m[hit] - (factors[hit, None] * m[row][None, :]) % prime) % prime
        pivots.append(col)
        row += 1
        col += 1
    return m[:row], pivots


def alone_pivots(reduced: np.ndarray, pivots: Sequence[int], width: int) -> np.ndarray:
    """Boolean mask over ``width`` columns: the pivot columns of a reduced row echelon form whose pivot row is
    zero in every free column.  Each row is 1 at its own pivot and 0 at the other pivots, so such a row has one
    non-zero entry (the atom rule's test here and in :mod:`~mipflow.node.controls.chain_exact`)."""
    found = np.zeros(width, dtype=bool)
    if len(pivots):
        found[np.asarray(pivots)[np.count_nonzero(reduced, axis=1) == 1]] = True
    return found


def _isolatable_mod(incidence: np.ndarray, prime: int) -> np.ndarray:
    """Atoms whose column is outside the span of the others over GF(prime): pivot columns of the
    reduced row echelon form whose pivot row is zero in every free column."""
    reduced, pivots = echelon(incidence, prime)
    return alone_pivots(reduced, pivots, incidence.shape[1])


def isolatable(atoms: Atoms, primes: Sequence[int]) -> np.ndarray:
    """Boolean mask over atoms: some linear combination of the sets' sums is the atom's sum."""
    if atoms.sizes.size == 0:
        return np.zeros(0, dtype=bool)
    found = np.zeros(atoms.sizes.size, dtype=bool)
    for prime in primes:
        found |= _isolatable_mod(atoms.incidence, prime)
    return found


@dataclass(frozen=True)
class FamilyCheck:
    """The ledger rule's verdict on a family of sets (never shown to a requester: it is data)."""

    allowed: bool
    #: patients in the smallest isolatable atom (None when no atom can be isolated)
    smallest_isolatable: int | None
    isolatable_atoms: int
    atoms: int
    #: with ``unions``: a combination lives on several small atoms of fewer than ``min_row_count`` rows in all
    #: (checked only when every isolatable atom is large enough)
    small_union: bool = False


def check_family(sets: Sequence[np.ndarray], min_row_count: int, primes: Sequence[int],
                 unions: bool = False) -> FamilyCheck:
    """Every atom that a combination of the sets' sums isolates holds ``min_row_count`` patients.

    ``unions``: and no non-zero combination lives on several small atoms of fewer than ``min_row_count``
    patients in all (:mod:`mipflow.node.controls.unions` over the whole family, none of it excused as released
    before: study approval and refresh, ADR 0030 amended); asked only when the atoms pass.

    Cost: one elimination per prime over the (sets x atoms) matrix, ``O(sets * atoms * rank)``;
    meant for a study protocol's family (tens to hundreds of sets), not for every request.
    """
    if min_row_count < 1:
        raise ValueError("min_row_count must be at least 1")
    atoms = atoms_of(sets)
    mask = isolatable(atoms, primes)
    sizes = atoms.sizes[mask]
    smallest = int(sizes.min()) if sizes.size else None
    allowed = smallest is None or smallest >= min_row_count
    small_union = False
    if unions and allowed and min_row_count > 1 and bool((atoms.sizes < min_row_count).any()):
        from mipflow.node.controls.unions import union_leaks  # it builds on this module

        small_union = union_leaks(atoms.incidence, 0, atoms.sizes, min_row_count, primes)
    return FamilyCheck(allowed=allowed and not small_union, smallest_isolatable=smallest,
                       isolatable_atoms=int(mask.sum()), atoms=int(atoms.sizes.size), small_union=small_union)


def check_addition(old_sets: Sequence[np.ndarray], new_sets: Sequence[np.ndarray], min_row_count: int,
                   primes: Sequence[int], sizes: AtomSizes | None = None, unions: bool = False) -> bool:
    """Whether releasing ``new_sets`` after ``old_sets`` lets no *new* combination isolate a small atom.

    The per-request form of the ledger rule (ADR 0030): an atom of the whole family (old and new)
    that some combination isolates and that holds fewer than ``min_row_count`` members refuses the
    addition, unless the same members already formed an isolatable atom of the old family alone
    (what was released before cannot be taken back, and refusing every later request over those
    members would stop the node without protecting anyone).  The new sets split old atoms or add
    members outside every old set; any such piece that becomes isolatable and is small refuses.

    An atom is small by its count of members, or, with ``sizes``, by the size that gives it (ADR 0058:
    ``sum w / max w`` over its rows, a weighted sum's rows in effect); which members an atom holds is
    still told by their count.

    ``unions`` (atoms sized by their count only): no new combination may live on *several* small atoms of
    fewer than ``min_row_count`` members in all either (:mod:`mipflow.node.controls.unions`, ADR 0030 amended).

    Returns
    -------
    bool
        True when the addition is allowed.
    """
    if min_row_count < 1:
        raise ValueError("min_row_count must be at least 1")
    if min_row_count == 1 or not new_sets:
        return True
    old_sets, new_sets = list(old_sets), list(new_sets)
    whole, universe, labels = atom_labels(old_sets + new_sets)
    measured = whole.sizes if sizes is None else np.asarray(sizes(universe, labels, whole.sizes.size))
    small = isolatable(whole, primes) & (measured < min_row_count)
    if small.any():
        if not old_sets:
            return False
        before = atoms_of(old_sets)
        before_isolatable = isolatable(before, primes)
        # an old atom is identified by its membership in the old sets (its column of the old incidence)
        known = {before.incidence[:, a].tobytes(): (bool(before_isolatable[a]), int(before.sizes[a]))
                 for a in range(before.sizes.size)}
        for a in np.flatnonzero(small):
            signature = whole.incidence[:len(old_sets), a]
            was = known.get(signature.tobytes())
            if was is None or not was[0] or was[1] != int(whole.sizes[a]):
                return False  # new members, a split of an old atom, or newly isolatable
    if unions and sizes is None and bool((whole.sizes < min_row_count).any()):
        from mipflow.node.controls.unions import union_leaks  # it builds on this module

        return not union_leaks(whole.incidence, len(old_sets), whole.sizes, min_row_count, primes)
    return True
