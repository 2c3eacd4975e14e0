"""The chain rule over every set a node released sums over: cohorts and the groups inside them.

ADR 0030's chain rule (:func:`mipflow.node.controls.atoms.check_addition`) refuses a release that
lets a linear combination of released sums isolate a new atom of fewer than ``min_row_count`` rows.
Until the thirteenth review it saw cohorts only (the ledger's), while a group released with its sums
(a t-test's, an ANOVA's cell or margin, a regression dummy's level; ADR 0051) is as much a set of rows
whose sums anyone holds: a one-way ANOVA's TIA group on everyone, descriptive statistics on
``age >= 25`` and on ``age >= 25 AND stroke_type != tia`` are pairwise far apart, yet
``TIA - (adults - adult non-TIA)`` is the TIA patients under 25.  Here both kinds of set enter one
family (ADR 0051, thirteenth review):

* **what enters**: every cohort of the ledger (any step's rows, under every data model) and every
  *cell* a release's groups were cut into (the finest groups of a grouping: one level of a one-way
  grouping, one joint level of a two-way one).  Margins and the union of a release are sums of its
  cells, so they add nothing to the span of the family nor to its atoms and are not handed over; a
  release adds its fresh cohorts and its new cells **as one addition**;
* **two windows**: the related sets (:func:`related_pools`: overlap with the new sets or with sets
  taken before, :data:`~mipflow.node.controls.ledger.CHAIN_DEPTH` rounds, most recent first) are at
  most :data:`~mipflow.node.controls.ledger.CHAIN_COHORTS` cohorts, as before, and at most
  :data:`CHAIN_GROUPS` remembered cells besides, so that groups never push cohorts out of the window;
* **atoms cap**: when the family forms more than :data:`~mipflow.node.controls.ledger.CHAIN_ATOMS`
  atoms, only the most recent related sets are kept that can form no more than that many together
  with the new ones (:func:`mipflow.node.controls.ledger.bounded`, the one cap of every chain window, the
  weighted memory's too: ``(atoms of the new sets + 1) * 2**kept - 1`` at most; a release of disjoint
  cells costs as many old sets as its cells need, not one each);
* **thresholds by level**: a set carries the fewest rows an atom isolated with its sums must hold
  (cohorts and groups released with their spread: ``min_row_count``; linear regression's dummy levels,
  first moments only: ``nfilter_tab``, ADR 0051).  An atom that a combination of the sets of threshold
  ``T`` or more isolates must hold ``T`` rows, for every ``T`` the family holds: a combination using a
  dummy level gives the atom's count and first sums only (what a group of ``nfilter_tab`` rows may
  give, ADR 0002), one without any gives its spread too and is held to ``min_row_count``.

* **unions** (round 17, issue 14; ADR 0030 amended): beside each atom, no new combination may live on
  *several* small atoms of fewer than the level's threshold rows in all (``check_addition(unions=True)``,
  :mod:`mipflow.node.controls.unions`): ``S1 + S2 - S3 - S4`` of four far-apart cohorts was two one-row atoms.

* **exact backstop** (nineteenth review hole 1, issue 14 item 5; ADR 0030 amended): the windows are steerable (31
  nested decoys push ``A`` out and ``A - B - C`` is one row), so beside them :func:`backstop_allows` runs the atom
  rule over *every* remembered cohort and cell of the request's data model, by rows, at each level
  (:mod:`mipflow.node.controls.chain_exact`, incremental and cached per process; one atom at every level, unions of
  small atoms at ``min_row_count``: twentieth review hole 1); and, when
  some remembered set carrying patient keys is of another data model (as the window's family by patients), over
  every such set of every data model by patients (twentieth review, hole 2: the same patients under two versions).

Within the request's data model the atoms are of rows; when a related set is of another data model,
the family is compared by patients too (ADR 0030).

* **changed-value units** (ADR 0061, fifteenth review hole 2): a remembered cohort's row released with a value
  since corrected (in a column the new release reads) enters as a row of its own, its key mixed with the old
  value's digest (:mod:`mipflow.node.controls.value_memory`).  Beside the atom rule, no combination of the
  family's sums may live on the versions of fewer than the threshold's rows (:func:`units_allow`):
  ``B - (B' ∪ N) + N`` is zero by rows and ``old - new`` by values, one row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from mipflow.node.controls.atoms import _as_set, atom_labels, check_addition, echelon
from mipflow.node.controls.chain_exact import Coverage, exact_allows
from mipflow.node.controls.ledger import (
    CHAIN_COHORTS, CHAIN_DEPTH, _overlap, bounded, sorted_unique,
)

#: Remembered cells the chain rule looks at besides the cohorts (their own window, ADR 0051 thirteenth review).
CHAIN_GROUPS = 32


@dataclass(frozen=True, eq=False)
class ChainSet:
    """A released set of rows: its data model, sorted row keys, sorted patient keys (None: not known) and
    the fewest rows an atom its sums help isolate must hold; ``versioned``: a remembered cohort whose rows
    released with a value since corrected are changed-value units (a group cell's are not: it enters
    :func:`units_allow` not at all)."""

    data_model: str
    rows: np.ndarray
    patients: np.ndarray | None
    threshold: int
    versioned: bool = False


def related_pools(seeds: Sequence[np.ndarray], pools: Sequence[Sequence[np.ndarray]], caps: Sequence[int],
                  depth: int = CHAIN_DEPTH) -> list[list[int]]:
    """:func:`mipflow.node.controls.ledger.related` over several pools of candidates, each with its cap:
    indices (oldest first) of each pool's candidates sharing members with the seeds or with candidates of
    any pool taken before, most recent first, over ``depth`` rounds."""
    chosen: list[list[int]] = [[] for _ in pools]
    if not any(len(pool) for pool in pools):
        return chosen
    union = sorted_unique(np.concatenate(list(seeds))) if seeds else np.zeros(0, dtype=np.uint64)
    remaining = [list(range(len(pool)))[::-1] for pool in pools]
    for _ in range(depth):
        taken_any: list[np.ndarray] = []
        for p, pool in enumerate(pools):
            room = caps[p] - len(chosen[p])
            if room <= 0:
                continue
            hits: list[int] = []
            for i in remaining[p]:  # most recent first, until the pool's room is filled
                if _overlap(union, pool[i]):
                    hits.append(i)
                    if len(hits) == room:
                        break
            chosen[p] += hits
            taken = set(hits)
            remaining[p] = [i for i in remaining[p] if i not in taken]
            taken_any += [pool[i] for i in hits]
        if not taken_any:
            break
        union = sorted_unique(np.concatenate([union, *taken_any]))
    return [sorted(c) for c in chosen]


def by_recency(pools: Sequence[Sequence[ChainSet]]) -> list[ChainSet]:
    """Several pools (each oldest first) as one list, oldest first, the most recent of each pool last:
    the pools' members interleaved by their rank from the most recent."""
    merged: list[ChainSet] = []
    longest = max((len(p) for p in pools), default=0)
    for rank in range(longest):  # most recent first
        for pool in pools:
            if rank < len(pool):
                merged.append(pool[len(pool) - 1 - rank])
    return merged[::-1]


def _dedupe(sets: Sequence[ChainSet]) -> list[ChainSet]:
    """Sets without repeats of the same rows and data model (a group that is a cohort too: women as a
    filter and as a dummy level), each kept once, at the largest threshold any of its copies carries,
    in the place of its most recent copy."""
    kept: list[ChainSet] = []
    for s in sets:
        same = [k for k in kept if k.data_model == s.data_model and np.array_equal(k.rows, s.rows)]
        for k in same:
            s = ChainSet(s.data_model, s.rows, s.patients if s.patients is not None else k.patients,
                         max(s.threshold, k.threshold), s.versioned or k.versioned)
        kept = [k for k in kept if not any(k is other for other in same)]
        kept.append(s)
    return kept


def _rank(matrix: np.ndarray, prime: int) -> int:
    """The rank of an integer matrix over GF(prime)."""
    return len(echelon(matrix, prime)[1])


def _exposed(sets: Sequence[np.ndarray], units: Mapping[int, int], threshold: int, primes: Sequence[int]
             ) -> set[int]:
    """The changed rows (values of ``units``) of which the family ``sets`` holds two versions or more and on whose
    versions' small atoms, holding fewer than ``threshold`` rows, some non-zero combination of the sets lives
    (the rank of the sets x atoms incidence drops when those atoms' columns are left out, over any prime)."""
    whole, universe, labels = atom_labels(list(sets))
    if not universe.size:
        return set()
    versions = np.array(sorted(units), dtype=np.uint64)
    bases = np.array([units[int(v)] for v in versions], dtype=np.uint64)
    base = universe.copy()
    if versions.size:
        at = np.minimum(np.searchsorted(versions, universe), versions.size - 1)
        is_version = versions[at] == universe
        base[is_version] = bases[at[is_version]]
    found: set[int] = set()
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate(([0], np.cumsum(whole.sizes)))
    ranks: list[int] | None = None
    decided: dict[tuple[int, ...], bool] = {}
    present = np.flatnonzero(np.isin(base, np.unique(bases)))
    by_base = present[np.argsort(base[present], kind="stable")]
    split = np.flatnonzero(np.diff(base[by_base])) + 1
    for members in np.split(by_base, split) if by_base.size else []:
        if members.size < 2:
            continue  # one version only: the atom rule's case
        atoms = np.unique(labels[members])
        small = tuple(int(a) for a in atoms[whole.sizes[atoms] < threshold])
        if not small:
            continue
        if small not in decided:
            inside = np.concatenate([order[starts[a]:starts[a + 1]] for a in small])
            if np.unique(base[inside]).size >= threshold:
                decided[small] = False
            else:
                if ranks is None:
                    ranks = [_rank(whole.incidence, p) for p in primes]
                rest = np.delete(whole.incidence, list(small), axis=1)
                decided[small] = any(r > _rank(rest, p) for r, p in zip(ranks, primes))
        if decided[small]:
            found.add(int(base[members[0]]))
    return found


def units_allow(old_sets: Sequence[np.ndarray], new_sets: Sequence[np.ndarray], threshold: int,
                primes: Sequence[int], units: Mapping[int, int]) -> bool:
    """Whether adding ``new_sets`` to ``old_sets`` lets no combination of their sums live on the versions of a
    changed row (``units``: versioned key -> row key) and fewer than ``threshold`` rows in all (a changed-value
    unit, module docstring), unless the old sets alone already did (what was released cannot be taken back)."""
    if not units or not new_sets or threshold <= 1:
        return True
    exposed = _exposed([*old_sets, *new_sets], units, threshold, primes)
    return not exposed or exposed <= _exposed(list(old_sets), units, threshold, primes)


#: The backstop's family by patients, over every data model (its cache key's data model: no data model's name).
PATIENTS = "*patients*"


def backstop_allows(data_model: str, own: Sequence[Sequence[ChainSet]], new: Sequence[ChainSet],
                    level: Callable[[ChainSet], int], primes: Sequence[int], keys: str = "rows",
                    unions_from: int | None = None, coverage: Coverage | None = None) -> bool:
    """The exact atom rule over every remembered set of ``own`` (the request's data model's cohorts and cells by
    rows, or with ``keys="patients"`` every data model's sets carrying patient keys; each pool oldest first, no
    window), at each threshold level the sets carry: the sets of level ``T`` or more may isolate no new atom of
    fewer than ``T`` rows or patients (:mod:`mipflow.node.controls.chain_exact`, ADR 0030 amended; a repeated set
    adds nothing to the family, as :func:`_dedupe` keeps it once); at the levels of ``unions_from`` or more, no new
    combination may live on several small atoms either (the union rule, twentieth review hole 1).  ``data_model``:
    the cache key's (:data:`PATIENTS` for the family by patients); ``coverage``: told when a family is past the
    backstop's bound (:class:`~mipflow.node.controls.chain_exact.Coverage`)."""
    levels = sorted({level(s) for s in [*(s for pool in own for s in pool), *new]}, reverse=True)
    for threshold in levels:
        if threshold <= 1:
            break
        new_sets = [_as_set(getattr(s, keys)) for s in new if level(s) >= threshold]
        if not new_sets:
            continue
        pools = [[_as_set(getattr(s, keys)) for s in pool if level(s) >= threshold] for pool in own]
        unions = unions_from is not None and threshold >= unions_from
        if not exact_allows((tuple(primes), data_model, threshold), pools, new_sets, threshold, primes, unions,
                            coverage):
            return False
    return True


def chain_allows(data_model: str, cohorts: Sequence[ChainSet], groups: Sequence[ChainSet],
                 new: Sequence[ChainSet], min_row_count: int, primes: Sequence[int],
                 units: Mapping[int, int] | None = None, coverage: Coverage | None = None) -> bool:
    """Whether adding ``new`` (one release's fresh cohorts and new cells, of ``data_model``) to the
    remembered ``cohorts`` and ``groups`` (each oldest first, any data model) isolates no new atom
    smaller than its level's threshold (module docstring).  A set's threshold is taken at most
    ``min_row_count``.  ``units``: versioned row key -> row key of the remembered cohorts' rows released
    with a value since corrected (:func:`units_allow`).  ``coverage``: as :func:`backstop_allows`'s."""
    if not new or min_row_count <= 1:
        return True

    def level(s: ChainSet) -> int:
        return min(int(s.threshold), int(min_row_count))

    def family_allows(old: list[ChainSet], keys: str) -> bool:
        old = _dedupe(old)
        fresh = list(new)
        levels = sorted({level(s) for s in [*old, *fresh]}, reverse=True)
        for t, threshold in enumerate(levels):
            if threshold <= 1:
                break
            if t and not any(level(s) == threshold for s in [*old, *fresh]):
                continue  # the same family as the level above, at a smaller threshold: nothing more to find
            old_sets = [getattr(s, keys) for s in old if level(s) >= threshold]
            new_sets = [getattr(s, keys) for s in fresh if level(s) >= threshold]
            if not new_sets:
                continue
            window = bounded(old_sets, new_sets)
            if not check_addition(window, new_sets, threshold, primes, unions=True):
                return False
            if keys == "rows" and units:  # over the cohorts whose rows carry their versions (not group cells)
                stamped = [s.rows for s in old if s.versioned and level(s) >= threshold]
                if not units_allow(bounded(stamped, new_sets), new_sets, threshold, primes, units):
                    return False
        return True

    own = [[s for s in pool if s.data_model == data_model] for pool in (cohorts, groups)]
    chosen = related_pools([s.rows for s in new], [[s.rows for s in pool] for pool in own],
                           (CHAIN_COHORTS, CHAIN_GROUPS))
    old = by_recency([[pool[i] for i in picked] for pool, picked in zip(own, chosen)])
    if not family_allows(old, "rows"):
        return False
    if not backstop_allows(data_model, own, new, level, primes, unions_from=min_row_count, coverage=coverage):
        return False
    if any(s.patients is None for s in new):
        return True
    known = [[s for s in pool if s.patients is not None] for pool in (cohorts, groups)]
    chosen = related_pools([s.patients for s in new], [[s.patients for s in pool] for pool in known],
                           (CHAIN_COHORTS, CHAIN_GROUPS))
    old = by_recency([[pool[i] for i in picked] for pool, picked in zip(known, chosen)])
    # within one data model the rows decide (a patient's other visits are other rows)
    if any(s.data_model != data_model for s in old) and not family_allows(old, "patients"):
        return False
    if not any(s.data_model != data_model for pool in known for s in pool):
        return True
    return backstop_allows(PATIENTS, known, new, level, primes, keys="patients", unions_from=min_row_count,
                           coverage=coverage)
