"""Unions of small atoms: the chain rule's second half (ADR 0030 amended, round 17 hole 1, issue 14).

Whoever holds the released sums of a family of sets learns, for every vector ``x`` of the row space of the
family's sets x atoms incidence ``C``, the ``x``-weighted sum of the atoms' statistics.  The atom rule
(:func:`mipflow.node.controls.atoms.check_addition`) asks this only for ``x = e_a``, one atom.  Any coefficients
disclose: with two one-row atoms, ``(1, 1)`` gives their count and sums, ``(1, -1)`` a difference of two
patients.  **The rule here: after the addition, every non-zero ``x`` of the row space supported on atoms of fewer
than ``threshold`` rows in all lies in the row space of the old sets alone** (what was released before cannot be
taken back; :func:`check_addition`'s excuse, now for every such ``x``).

Why it is decided exactly (ranks over GF(p) as in :mod:`mipflow.node.controls.atoms`):

* such an ``x`` is supported on small atoms only: it lies in ``V = rowspace(C) ∩ span{e_a : a small}``, read off
  one echelon form of ``C`` with the other atoms' columns first (the rows pivoting among the small atoms;
  ``dim V = rank C - rank C_big``).  ``V_old`` is the same for the old sets' rows of ``C`` (the old family over
  the new atoms), ``V_old ⊆ V``.  Equal dimensions: nothing new lives on small atoms; allowed (the everyday case:
  ``V`` is zero).  Each prime is asked this; the first that sees ``V`` grow decides by the search below (a miss
  needs that secret prime to divide a minor of the 0/1 incidence);
* otherwise the search (:func:`_leak`) looks for ``x`` in ``V`` outside ``V_old`` whose support holds at most a
  budget of rows (``threshold - 1``), reducing first: atoms on which every vector of ``V`` vanishes go; atoms
  whose columns are proportional (a *class*: every ``x`` vanishes on all of it or on none) holding more rows than
  the budget are set to zero (``V ∩ {x_class = 0}``, both spaces); an atom whose own indicator is in ``V`` is a
  leak when outside ``V_old``, else left out (``x - x_a e_a`` keeps the answer, a smaller support);
* then it branches: a set ``J`` of atoms such that every vector of ``V`` vanishing on ``J`` lies in ``V_old``
  (greedy, ``|J| = dim V - dim V_old`` when it can, one for a release of one set) meets the support of every
  candidate ``x``; for each ``e`` in ``J`` the search goes on over the projection of both spaces off ``e``, its
  rows paid (exact: ``e``'s indicator is not in ``V`` there, so the projection keeps "outside ``V_old``" both
  ways).  Every step pays an atom of a row or more: at most ``threshold - 1`` levels;
* when the search would take more than :data:`UNION_CAP` steps the addition is refused (the chain rule's
  refusal, no words of its own): a minimum-weight vector is NP-hard to find in general.  What the cap costs
  honest work: a release adding several independent combinations at once over many atoms of one or two rows
  (``|J|`` large at every level); honest families (nested bands, sexes by bands, re-runs, thirty filters of five
  variables over 2 000 rows) stay far below it (``tests/mipflow/node/controls/test_unions.py``).

The decision is a function of the sets' keys alone (the atoms and their counts): the same keys the atom rule
reads, phantom units of stale sets included (:mod:`mipflow.node.controls.epochs`), so it is the same at a node
holding a withdrawn patient's rows and at one never holding them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from mipflow.node.controls.atoms import atom_labels, echelon

#: Steps (nodes of the branch and bound, over one prime) the search may take before it refuses conservatively.
UNION_CAP = 256


#: A subspace over GF(prime): ``(rows, pivots)``, ``rows[i, pivots[j]]`` is 1 when ``i == j`` and 0 otherwise.
Space = tuple[np.ndarray, np.ndarray]


def small_space(incidence: np.ndarray, small: np.ndarray, prime: int) -> Space:
    """The row space of ``incidence`` intersected with the span of the columns ``small``'s unit vectors, over those
    columns: the echelon form's rows whose pivot falls among them, the other columns first."""
    big = np.flatnonzero(~small)
    rref, pivots = echelon(np.concatenate([incidence[:, big], incidence[:, small]], axis=1), prime)
    keep = [i for i, p in enumerate(pivots) if p >= big.size]
    return rref[keep][:, big.size:], np.array([pivots[i] - big.size for i in keep], dtype=np.int64)


def _outside(vector: np.ndarray, space: Space, prime: int) -> bool:
    """Whether ``vector`` is outside ``space``."""
    rows, pivots = space
    rest = vector % prime
    for row, pivot in zip(rows, pivots):
        if vector[pivot]:
            rest = (rest - int(vector[pivot] % prime) * row) % prime
    return bool(rest.any())


def _columns(space: Space, keep: np.ndarray) -> Space:
    """``space`` over the columns ``keep`` only (none of them a pivot left out)."""
    rows, pivots = space
    return rows[:, keep], (np.cumsum(keep) - 1)[pivots]


def _vanish(space: Space, columns: np.ndarray, prime: int) -> Space:
    """The vectors of ``space`` vanishing on ``columns`` (indices), over the other columns."""
    rows, pivots = space[0].copy(), space[1].copy()
    alive = np.ones(rows.shape[0], dtype=bool)
    columns = np.asarray(columns, dtype=np.int64)
    while alive.any():
        ahead = np.flatnonzero(rows[np.ix_(alive, columns)].any(axis=0))  # at most one step per row
        if not ahead.size:
            break
        c = int(columns[ahead[0]])
        hit = np.flatnonzero((rows[:, c] != 0) & alive)
        first, others = hit[0], hit[1:]
        if others.size:
            factors = (rows[others, c] * pow(int(rows[first, c]), prime - 2, prime)) % prime
            rows[others] = (rows[others] - (factors[:, None] * rows[first][None, :]) % prime) % prime
        alive[first] = False  # its pivot column is zero in the others: they keep theirs
    keep = np.ones(rows.shape[1], dtype=bool)
    keep[np.asarray(columns, dtype=np.int64)] = False
    return _columns((rows[alive], pivots[alive]), keep)


def _drop(space: Space, column: int, prime: int) -> Space:
    """``space`` projected on the columns other than ``column``."""
    rows, pivots = space[0].copy(), space[1].copy()
    alive = np.ones(rows.shape[0], dtype=bool)
    at = np.flatnonzero(pivots == column)
    if at.size:
        i = int(at[0])
        rows[i, column] = 0
        rest = np.flatnonzero(rows[i])
        if not rest.size:
            alive[i] = False
        else:
            f = int(rest[0])
            rows[i] = (rows[i] * pow(int(rows[i, f]), prime - 2, prime)) % prime
            others = np.flatnonzero(rows[:, f])
            others = others[others != i]
            if others.size:
                factors = rows[others, f].copy()
                rows[others] = (rows[others] - (factors[:, None] * rows[i][None, :]) % prime) % prime
            pivots[i] = f
    keep = np.ones(rows.shape[1], dtype=bool)
    keep[column] = False
    return _columns((rows[alive], pivots[alive]), keep)


def classes(basis: np.ndarray, sizes: np.ndarray, prime: int) -> tuple[np.ndarray, np.ndarray]:
    """The atoms (columns of ``basis``, none zero) grouped by their column up to a factor: every vector of the span
    vanishes on all of a class or on none of it.  ``(labels, weights)``: each column's class and each class's
    rows in all."""
    lead = basis[np.argmax(basis != 0, axis=0), np.arange(basis.shape[1])]
    values, at = np.unique(lead, return_inverse=True)
    inverse = np.array([pow(int(v), prime - 2, prime) for v in values], dtype=np.int64)[np.asarray(at).reshape(-1)]
    columns = np.ascontiguousarray(((basis * inverse[None, :]) % prime).T)
    seen: dict[bytes, int] = {}
    labels = np.array([seen.setdefault(column.tobytes(), len(seen)) for column in columns], dtype=np.int64)
    return labels, np.bincount(labels, weights=sizes, minlength=len(seen)).astype(np.int64)


class _Cap(Exception):
    """The search would take more steps than its cap."""


def branching_columns(new: Space, old: Space, order: np.ndarray, prime: int, exclude: int | None = None) -> list[int]:
    """Columns ``J`` such that every vector of ``new`` outside ``old`` is non-zero on some column of ``J``: each
    step takes a vector of what is left of ``new`` outside ``old``, one column of its support (one where ``old``
    vanishes when there is one; the largest ``order`` among them; never ``exclude``), and makes both vanish
    there.  The branches of a search over such vectors (:func:`_leak`; the weighted union search,
    :mod:`mipflow.node.controls.weighted_unions`)."""
    branch: list[int] = []
    n_rest, o_rest = new, old
    columns = np.arange(new[0].shape[1])
    while n_rest[0].shape[0] > o_rest[0].shape[0]:
        z = next(row for row in n_rest[0] if _outside(row, o_rest, prime))
        support = np.flatnonzero(z)
        if exclude is not None:
            support = support[columns[support] != exclude]
        quiet = support[~o_rest[0][:, support].any(axis=0)]
        pool = quiet if quiet.size else support
        j = int(pool[np.argmax(order[columns[pool]])])
        branch.append(int(columns[j]))
        n_rest, o_rest = _vanish(n_rest, [j], prime), _vanish(o_rest, [j], prime)
        columns = np.delete(columns, j)
    return branch


def _leak(new: Space, old: Space, sizes: np.ndarray, budget: int, prime: int, visits: list[int]) -> bool:
    """Whether ``new`` (over atoms of ``sizes`` rows) holds a vector outside ``old`` (a subspace of it) whose
    support holds at most ``budget`` rows (module docstring: reduce, then branch)."""
    visits[0] += 1
    if visits[0] > visits[1]:
        raise _Cap
    while True:
        if new[0].shape[0] == old[0].shape[0]:
            return False  # nothing new left
        touched = new[0].any(axis=0)
        if not touched.all():  # columns where every vector vanishes: no pivot there, of either space
            new, old, sizes = _columns(new, touched), _columns(old, touched), sizes[touched]
        labels, weights = classes(new[0], sizes, prime)
        heavy = np.flatnonzero(weights[labels] > budget)
        if not heavy.size:
            break
        # a class of more rows than the budget: the vector vanishes on it
        new, old = _vanish(new, heavy, prime), _vanish(old, heavy, prime)
        sizes = np.delete(sizes, heavy)
    # J: coordinates on which every vector of ``new`` outside ``old`` is non-zero somewhere (larger atoms first)
    branch = branching_columns(new, old, sizes, prime)
    for e in branch:  # an atom whose own indicator is in ``new``: a leak, or in ``old`` and left out
        unit = np.zeros(new[0].shape[1], dtype=np.int64)
        unit[e] = 1
        if not _outside(unit, new, prime):
            if _outside(unit, old, prime):
                return True  # one light atom (the atom rule's case, at this budget)
            visits[0] -= 1  # x - x_e e_e keeps the question (module docstring)
            return _leak(_vanish(new, [e], prime), _vanish(old, [e], prime), np.delete(sizes, e), budget, prime,
                         visits)
    for e in branch:  # the vector is non-zero at e: pay e's rows, look at the others (a projection)
        if _leak(_drop(new, e, prime), _drop(old, e, prime), np.delete(sizes, e), budget - int(sizes[e]), prime,
                 visits):
            return True
    return False


def union_leaks(incidence: np.ndarray, n_old: int, sizes: np.ndarray, threshold: int, primes: Sequence[int],
                cap: int = UNION_CAP) -> bool:
    """Whether the family's row space (``incidence``: its sets x atoms, the first ``n_old`` rows the old sets)
    holds a non-zero vector supported on atoms of fewer than ``threshold`` rows in all that the old sets' row
    space does not (module docstring); True too when the search would take more than ``cap`` steps.  Each prime
    is asked whether anything new lives on the small atoms; the first that says so decides by its search."""
    small = sizes < threshold
    if not small.any():
        return False
    for prime in primes:
        new = small_space(incidence, small, prime)
        if not new[0].shape[0]:
            continue  # the everyday case: no combination lives on small atoms at all
        old = small_space(incidence[:n_old], small, prime) if n_old else (new[0][:0], new[1][:0])
        if old[0].shape[0] == new[0].shape[0]:
            continue
        try:
            return _leak(new, old, sizes[small], threshold - 1, prime, [0, cap])
        except _Cap:
            return True
    return False


def unions_allow(old_sets: Sequence[np.ndarray], new_sets: Sequence[np.ndarray], threshold: int,
                 primes: Sequence[int]) -> bool:
    """Whether adding ``new_sets`` to ``old_sets`` (sorted key arrays) lets no new combination of their sums live
    on atoms of fewer than ``threshold`` rows in all (module docstring)."""
    if threshold <= 1 or not new_sets:
        return True
    whole, _, _ = atom_labels([*old_sets, *new_sets])
    return not union_leaks(whole.incidence, len(old_sets), whole.sizes, threshold, primes)
