"""Unions of atoms light in effect: the weighted backstop's union search (ADR 0058, twenty-second review hole 1).

Whoever holds a weight family's releases learns, for every vector ``x`` of the row space of the family's sets x
atoms incidence, the weighted sums over the union of the atoms ``x`` is non-zero on (its support).  The atom rule in
effect (:func:`mipflow.node.controls.weighted_ledger.backstop_dominated`) asks this for one atom; a union's size in
effect is not the sum of its atoms' (``A - C + B - D = P ∪ Q``: twelve light rows and the target's, one row in
effect).  **The rule here: after the addition, every vector of the row space whose support holds fewer than
``threshold`` rows in effect (``sum w / max w`` over the support's rows) lies in the row space of the old sets.**

Why it is decided exactly (over GF(p), as :mod:`mipflow.node.controls.unions`):

* the support's heaviest row sits in one atom, its *top* ``a`` (atoms ordered by their heaviest row, ties by
  index); the support lies in ``N(a)``, the atoms not above ``a``, and its size in effect is ``sum_b s_b / m_a``
  (``s_b`` an atom's weight, ``m_a`` the top's heaviest row's), at least ``a``'s own: **only an atom itself under
  ``threshold`` in effect can top a light union** (the candidates; an honest family whose atoms hold the threshold
  in effect is never searched); one echelon form per prime and space, the atoms heaviest first, gives every
  candidate's space at once (the rows pivoting at or after ``a`` span its vectors living on ``N(a)``);
* for a set ``S`` of atoms of ``N(a)`` holding ``a``: some ``x`` of the new row space with support in ``S`` is
  outside the old row space *and* non-zero at ``a`` exactly when both hold apart (a vector space is not the union
  of two proper subspaces): ``new_S ⊄ old_S`` and ``new_S ⊄ {x_a = 0}``, both monotone in ``S``.  The search
  (:func:`_search`) looks for such an ``S`` of cost ``sum_{b in S} s_b / m_a`` under ``threshold``: it sets to zero
  the atoms (and classes of proportional atoms) costing the room left or more; takes an atom whose indicator is in
  the new space out (in the old space: dropped; else branching on it, the first condition then met); then branches
  on a set ``J`` of atoms (not ``a``) that every vector of the new space outside the old one touches, paying each
  in turn (a projection, exact since no indicator of ``J`` is in the space; the earlier ones set to zero);
* past :data:`UNION_WORK` (entries of the spaces times the steps, :data:`~mipflow.node.controls.unions.UNION_CAP`
  steps at most) or :data:`INCIDENCE_WORK` the addition is refused (control ``dominated_sums``, no words of its own).

Atoms holding a unit whose weight is no longer known (a stale release, ``[-inf, inf]``) are not searched: they are
set to zero (the atom rule still refuses a newly isolatable atom holding one; the pair rule any release overlapping
such a release).  Only the sets' keys and the units' weights decide: no count or value leaves.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mipflow.node.controls.atoms import echelon
from mipflow.node.controls.unions import (
    UNION_CAP, Space, _Cap, _columns, _drop, _vanish, branching_columns, classes,
)

#: The search's work: its steps times the entries of the spaces it searches (as ``chain_exact.UNION_WORK``).
UNION_WORK = 3_000_000
#: The most entries of the rows spanning a family (per prime and space); past it the addition is refused.  The backstop
#: passes its reduced rows, rank x atoms, already held under ``chain_exact.EXACT_ENTRIES`` in all.
INCIDENCE_WORK = 20_000_000


def atom_weights(universe: np.ndarray, labels: np.ndarray, n_atoms: int, units: np.ndarray, low: np.ndarray,
                 high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per atom: the log of its units' least weights summed and the log of its heaviest unit's largest weight
    (``units``' bounds, :func:`mipflow.node.controls.weighted_ledger.unit_bounds`); ``-inf`` for an empty atom."""
    at = np.searchsorted(units, universe)
    top = np.full(n_atoms, -np.inf)
    np.maximum.at(top, labels, high[at])
    anchor = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        total = np.zeros(n_atoms)
        np.add.at(total, labels, np.exp(low[at] - anchor[labels]))
        log_total = np.log(total) + anchor
    return np.where(np.isnan(log_total), -np.inf, log_total), top


def widened(before: Any, after: Any) -> list[np.ndarray]:
    """``before``'s reduced rows per prime (a :class:`mipflow.node.controls.chain_exact.Exact`) over the atoms of
    ``after`` (``before`` with sets added): an atom split off copies its old atom's column, rows outside every
    earlier set are a zero column."""
    _, first = np.unique(after.labels, return_index=True)
    keys = after.universe[first]
    inside, column = np.zeros(keys.size, bool), np.zeros(keys.size, np.int64)
    if before.universe.size:
        at = np.minimum(np.searchsorted(before.universe, keys), before.universe.size - 1)
        inside, column = before.universe[at] == keys, before.labels[at]
    out = []
    for reduced in before.reduced:
        rows = np.zeros((reduced.shape[0], after.atoms), np.int64)
        rows[:, inside] = reduced[:, column[inside]]
        out.append(rows)
    return out


def incidence(sets: Sequence[np.ndarray], universe: np.ndarray, labels: np.ndarray, n_atoms: int) -> np.ndarray:
    """The sets (sorted unique keys of ``universe``) x atoms 0/1 incidence."""
    out = np.zeros((len(sets), n_atoms), np.int64)
    for i, keys in enumerate(sets):
        out[i, labels[np.searchsorted(universe, keys)]] = 1
    return out


def light_union(matrix: np.ndarray, n_old: int, log_total: np.ndarray, log_top: np.ndarray, threshold: float,
                primes: Sequence[int], work: int = UNION_WORK) -> bool:
    """Whether the row space of ``matrix`` (sets x atoms; the first ``n_old`` rows the old sets) holds a vector
    outside the old sets' row space whose support holds fewer than ``threshold`` rows in effect (module
    docstring), the atoms weighing ``exp(log_total)`` with a heaviest row of ``exp(log_top)``: :func:`light_span`
    over the sets themselves."""
    return light_span([matrix] * len(primes), [matrix[:n_old]] * len(primes), log_total, log_top, threshold, primes,
                      work)


def light_span(new_rows: Sequence[np.ndarray], old_rows: Sequence[np.ndarray], log_total: np.ndarray,
               log_top: np.ndarray, threshold: float, primes: Sequence[int], work: int = UNION_WORK) -> bool:
    """Whether, per prime, the row space of ``new_rows`` (any rows spanning the family after the addition, over its
    atoms) holds a vector outside that of ``old_rows`` (before it) whose support holds fewer than ``threshold`` rows
    in effect; True too past the work bounds.  One echelon form per prime and space, the atoms heaviest first: the
    rows pivoting at or after a candidate ``a`` span the space's vectors living on ``N(a)``.  Each prime is asked
    whether anything new lives under a candidate; the first that says so decides."""
    n = log_top.size
    known = np.isfinite(log_top) & (log_total > -np.inf)
    with np.errstate(over="ignore", invalid="ignore"):
        own = np.exp(np.where(known, log_total - log_top, np.inf))
    candidates = np.flatnonzero(known & (own < threshold))
    if not candidates.size:
        return False
    if any(np.asarray(r).size > INCIDENCE_WORK for r in (*new_rows, *old_rows)):
        return True
    heaviest = np.lexsort((np.arange(n), np.where(known, log_top, np.inf)))[::-1]  # unknown atoms first: never in N(a)
    position = np.empty(n, np.int64)
    position[heaviest] = np.arange(n)
    forms = []
    for prime, new, old in zip(primes, new_rows, old_rows):
        forms.append(tuple(_form(np.asarray(m)[:, heaviest], prime) for m in (new, old)))
    for a in candidates[np.argsort(own[candidates], kind="stable")]:
        k = int(position[a])
        costs = np.exp(log_total[heaviest[k:]] - log_top[a])
        room = float(threshold) - float(costs[0])
        for prime, (new_form, old_form) in zip(primes, forms):
            new, old = _suffix(new_form, k), _suffix(old_form, k)
            if new[0].shape[0] == old[0].shape[0] or not new[0][:, 0].any():
                continue  # nothing new under ``a`` here
            steps = max(1, min(UNION_CAP, work // max(1, new[0].size)))
            try:
                if _search(new, old, 0, costs, room, prime, [0, steps]):
                    return True
            except _Cap:
                return True
            break
    return False


def _form(rows: np.ndarray, prime: int) -> Space:
    if not rows.shape[0]:
        return rows.astype(np.int64), np.zeros(0, np.int64)
    reduced, pivots = echelon(rows, prime)
    return reduced, np.asarray(pivots, np.int64)


def _suffix(form: Space, k: int) -> Space:
    """The vectors of an echelon form's space vanishing on its first ``k`` columns, over the others."""
    rows, pivots = form
    keep = pivots >= k
    return rows[keep][:, k:], pivots[keep] - k


def _unit_rows(space: Space) -> dict[int, bool]:
    """The columns whose indicator is in ``space`` (a pivot row non-zero at its pivot only)."""
    rows, pivots = space
    return {int(p): True for p in np.asarray(pivots)[np.count_nonzero(rows, axis=1) == 1]} if rows.shape[0] else {}


def _keep(new: Space, old: Space, costs: np.ndarray, a: int | None, keep: np.ndarray
          ) -> tuple[Space, Space, np.ndarray, int | None]:
    return _columns(new, keep), _columns(old, keep), costs[keep], None if a is None else int(np.cumsum(keep)[a] - 1)


def _zero(new: Space, old: Space, costs: np.ndarray, a: int | None, columns: np.ndarray, prime: int
          ) -> tuple[Space, Space, np.ndarray, int | None]:
    """Both spaces' vectors vanishing on ``columns`` (never ``a``), over the other columns."""
    keep = np.ones(costs.size, bool)
    keep[columns] = False
    shift = None if a is None else int(np.cumsum(keep)[a] - 1)
    return _vanish(new, columns, prime), _vanish(old, columns, prime), costs[keep], shift


def _pay(new: Space, old: Space, costs: np.ndarray, a: int | None, e: int, prime: int
         ) -> tuple[Space, Space, np.ndarray, int | None]:
    """Both spaces projected off column ``e`` (never ``a``)."""
    return _drop(new, e, prime), _drop(old, e, prime), np.delete(costs, e), None if a is None else a - (e < a)


def _search(new: Space, old: Space, a: int | None, costs: np.ndarray, room: float, prime: int,
            visits: list[int]) -> bool:
    """Whether some set ``S`` of columns (holding ``a``, whose cost is paid; any, when ``a`` is None) costing less
    than ``room`` beside ``a`` has a vector of ``new`` supported in it, outside ``old`` (a subspace of ``new``) and,
    with ``a``, another non-zero at ``a`` (module docstring)."""
    visits[0] += 1
    if visits[0] > visits[1]:
        raise _Cap
    while True:
        if new[0].shape[0] == old[0].shape[0] or room <= 0:
            return False
        if a is not None and not new[0][:, a].any():
            return False
        touched = new[0].any(axis=0)
        if not touched.all():
            new, old, costs, a = _keep(new, old, costs, a, touched)
            continue
        rest = float(costs.sum()) - (float(costs[a]) if a is not None else 0.0)
        if rest < room:
            return True  # every column: both conditions hold
        labels, _ = classes(new[0], np.zeros(costs.size, np.int64), prime)
        weights = np.bincount(labels, weights=costs)
        if a is not None:
            weights[labels[a]] -= costs[a]
            if weights[labels[a]] >= room:
                return False  # a vector non-zero at ``a`` is non-zero on all of its class
        heavy = np.flatnonzero(weights[labels] >= room)
        if a is not None:
            heavy = heavy[labels[heavy] != labels[a]]
        if heavy.size:
            new, old, costs, a = _zero(new, old, costs, a, heavy, prime)
            continue
        units_new, units_old = _unit_rows(new), _unit_rows(old)
        if a is not None and a in units_new:
            if a not in units_old:
                return True  # ``a`` alone: its own cost is under the room
            visits[0] -= 1  # x - x_a e_a keeps the question, without the condition at ``a``
            keep = np.ones(costs.size, bool)
            keep[a] = False
            return _search(_vanish(new, [a], prime), _vanish(old, [a], prime), None, costs[keep], room, prime,
                           visits)
        e = next(iter(units_new), None)
        if e is None:
            break
        if e not in units_old:  # S holding e meets the first condition: only the second is left
            if a is None:
                return True
            rest_new = _drop(new, e, prime)
            zero = (rest_new[0][:0], rest_new[1][:0])
            if _search(rest_new, zero, a - (e < a), np.delete(costs, e), room - float(costs[e]), prime, visits):
                return True
        new, old, costs, a = _zero(new, old, costs, a, np.array([e]), prime)
    # J: columns (not ``a``) every vector of ``new`` outside ``old`` is non-zero somewhere on (costlier first)
    branch = branching_columns(new, old, costs, prime, exclude=a)
    for k, e in enumerate(branch):  # S holds e and none of the earlier ones
        sub = (new, old, costs, a)
        done = np.asarray(branch[:k], np.int64)
        if done.size:
            sub = _zero(*sub, done, prime)
            e -= int(np.sum(done < e))
        spent = float(sub[2][e])
        n_sub, o_sub, c_sub, a_sub = _pay(*sub, e, prime)
        if _search(n_sub, o_sub, a_sub, c_sub, room - spent, prime, visits):
            return True
    return False


__all__ = ["INCIDENCE_WORK", "UNION_WORK", "atom_weights", "incidence", "light_span", "light_union"]
