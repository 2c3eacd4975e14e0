"""The chain rule's backstop: the atom rule over *every* remembered set of a data model, incrementally.

:func:`mipflow.node.controls.chain.chain_allows` decides over a window of the most recent related sets
(ADR 0051 "Windows and caps"), which a requester can steer: 31 nested decoys push ``A`` out of the window
and ``A - B - C`` is one patient (nineteenth review, hole 1).  Beside the window, this module keeps, per
node (its primes), data model and threshold level ``T``, the atoms of the family of every remembered set of
level ``T`` or more and the reduced row echelon form of their incidence over each prime, and refuses a
release that makes a new atom of fewer than ``T`` rows isolatable (the atom rule of
:func:`mipflow.node.controls.atoms.check_addition`, exact for one patient, over the whole family; ADR 0030
amended).  The same state keyed by patients serves every data model's sets when some are of another model
(:func:`mipflow.node.controls.chain.backstop_allows`, twentieth review hole 2).  At the ``min_row_count`` level the
union rule runs here too (``unions=True``; twentieth review hole 1, twenty-first review hole 2): pivots are taken on
large atoms first, so the rows pivoting on small atoms span ``V`` (the row space on the small atoms), and a new set
living on small atoms only is searched for a vector of ``V`` outside the old one of fewer than ``T`` rows
(:func:`mipflow.node.controls.unions._leak`, its work bounded by :data:`UNION_WORK`, refused past it).

State (:class:`Exact`): the universe of row keys (sorted), each row's atom, the atoms' sizes and, per prime,
``R`` (rank x atoms, int64 residues) whose pivot columns are unit columns.  Adding a set: its rows outside
the universe become one new atom (a zero column); each atom it splits gives its members in the set a new
atom whose column copies the old one; the set's 0/1 vector over the atoms, reduced against ``R``, is
appended (normalised at its first non-zero column, that column eliminated from the other rows) when it is
not zero.  An atom is isolatable when its column is a pivot column whose row is zero on every free column
(:func:`mipflow.node.controls.atoms.alone_pivots`); over several primes, when any says so.  Cost of an
addition: ``O(rank * atoms)`` per prime.

A process-level cache keeps snapshots of the state after the remembered sets it has seen, each with a running
digest of each pool's sets (cohorts, group cells) in order; a call extends the snapshot with the most sets that
begin its pools (the longest matching prefix) by the rest, caches the result as another snapshot, and adds the
request's sets to a copy (arrays shared, never written in place).  A pool that begins with no snapshot (a
correction, a withdrawal, another consent epoch: the keys differ) rebuilds from scratch; a k-means run, whose
latest clusters replace its earlier ones at the end of the cells' pool, extends the snapshot from before it.

Bound: when ``atoms * rank`` over the primes would pass :data:`EXACT_ENTRIES`, the state is dropped and the
backstop allows (says nothing) for that data model and level until the family changes otherwise; the window
rule still decides.  Honest work is never refused for the size of the family (ADR 0030 amended).
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mipflow.node.controls.atoms import alone_pivots
from mipflow.node.controls.unions import UNION_CAP, _Cap, _leak

#: The most ``atoms * rank`` entries (summed over the primes) one state may hold (8 bytes each: 160 MB).
EXACT_ENTRIES = 20_000_000
#: Families kept in the process (data models, levels and nodes), four snapshots each on average.
EXACT_STATES = 8
#: The union search's work: its steps times the entries of the small atoms' space it searches (a step costs about
#: 0.3 us an entry); at most :data:`~mipflow.node.controls.unions.UNION_CAP` steps, fewer over a larger space.
UNION_WORK = 3_000_000


@dataclass
class Exact:
    """The incremental atom rule's state over one family (module docstring)."""

    primes: tuple[int, ...]
    universe: np.ndarray  # sorted unique uint64 row keys
    labels: np.ndarray  # atom of each key of the universe
    sizes: np.ndarray  # rows of each atom
    reduced: list[np.ndarray]  # per prime: rank x atoms, pivot columns unit
    pivots: list[list[int]]  # per prime: the pivot column of each row
    isolatable: np.ndarray  # per atom: some prime isolates it
    over: bool = False  # past EXACT_ENTRIES: not kept
    threshold: int = 0  # atoms of fewer rows are small: pivots are taken on the other atoms first
    leak: bool = False  # an addition with ``search`` found a new combination on small atoms

    @classmethod
    def empty(cls, primes: Sequence[int], threshold: int = 0) -> "Exact":
        return cls(tuple(int(p) for p in primes), np.zeros(0, np.uint64), np.zeros(0, np.int64),
                   np.zeros(0, np.int64), [np.zeros((0, 0), np.int64) for _ in primes], [[] for _ in primes],
                   np.zeros(0, bool), threshold=int(threshold))

    def copy(self) -> "Exact":
        """Another state to add to; the arrays are shared, never written in place (:meth:`add` makes new ones),
        so a copy costs the lists only."""
        return Exact(self.primes, self.universe, self.labels, self.sizes, list(self.reduced),
                     [list(p) for p in self.pivots], self.isolatable, self.over, self.threshold)

    @property
    def atoms(self) -> int:
        return int(self.sizes.size)

    def entries(self) -> int:
        return sum(r.shape[0] for r in self.reduced) * self.atoms

    def add(self, keys: np.ndarray, search: bool = False) -> None:
        """Add one set (sorted unique uint64 keys) to the family; with ``search``, set :attr:`leak` when the
        addition lets a new combination live on small atoms of fewer than :attr:`threshold` rows in all
        (:meth:`_union_leak`)."""
        if self.over or not keys.size:
            return
        n = self.atoms
        at = np.searchsorted(self.universe, keys)
        inside = at < self.universe.size
        inside[inside] = self.universe[at[inside]] == keys[inside]
        counts = np.bincount(self.labels[at[inside]], minlength=n) if n else np.zeros(0, np.int64)
        split = np.flatnonzero((counts > 0) & (counts < self.sizes))
        whole = np.flatnonzero(counts == self.sizes) if n else np.zeros(0, np.int64)
        outside = keys[~inside]
        added = split.size + (1 if outside.size else 0)
        rank = sum(r.shape[0] for r in self.reduced)
        if (n + added) * (rank + len(self.primes)) > EXACT_ENTRIES:
            self.drop()
            return
        # splits: the set's members of atom a become atom n + k, its column a copy of a's
        if split.size:
            fresh = np.full(n, -1, np.int64)
            fresh[split] = n + np.arange(split.size)
            pos = at[inside]
            moved = fresh[self.labels[pos]]
            self.labels = self.labels.copy()
            self.labels[pos[moved >= 0]] = moved[moved >= 0]
            sizes = self.sizes.copy()
            sizes[split] -= counts[split]
            self.sizes = np.concatenate([sizes, counts[split]])
        vector_atoms = [whole, n + np.arange(split.size)]
        if outside.size:  # rows in no earlier set: one atom, a zero column
            new_atom = self.atoms
            merged = np.concatenate([self.universe, outside])
            order = np.argsort(merged, kind="stable")
            self.universe = merged[order]
            self.labels = np.concatenate([self.labels, np.full(outside.size, new_atom, np.int64)])[order]
            self.sizes = np.concatenate([self.sizes, [outside.size]])
            vector_atoms.append(np.array([new_atom], np.int64))
        members = np.concatenate(vector_atoms).astype(np.int64)
        for i, prime in enumerate(self.primes):
            self._append(i, prime, n, split, members, search)
        self.isolatable = self._isolatable()

    def _append(self, i: int, prime: int, n: int, split: np.ndarray, members: np.ndarray,
                search: bool = False) -> None:
        """Widen prime ``i``'s rows to the atoms (the ``n`` old columns, copies of the ``split`` ones, a zero column
        for new rows), reduce the set's 0/1 vector (ones at ``members``) against them and append it when not zero.
        Every array is new: the old ones may be shared (:meth:`copy`).

        Pivots are taken on atoms of :attr:`threshold` rows or more when the row has a non-zero there, so a row
        whose pivot is a small atom is zero on every large one (its rows span the row space's vectors supported on
        the small atoms, ``V``); an atom the addition split under the threshold hands its rows' pivots over
        (:meth:`_repivot`)."""
        old, pivots = self.reduced[i], self.pivots[i]
        rank, width = old.shape[0], self.atoms
        grown = np.zeros((rank + 1, width), np.int64)
        if rank:
            grown[:rank, :n] = old
            grown[:rank, n:n + split.size] = old[:, split]
        reduced = grown[:rank]
        if self.threshold and rank and split.size:
            self._repivot(reduced, pivots, prime, split)
        vector = np.zeros(width, np.int64)
        vector[members] = 1
        if pivots:
            # the pivot columns are unit columns: the coefficients are the vector's 0/1 entries there, so the
            # sum of at most rank residues below 2**31 fits in int64
            uses = vector[np.asarray(pivots)] != 0
            if uses.any():
                vector = (vector - reduced[uses].sum(axis=0)) % prime
        nonzero = np.flatnonzero(vector)
        if not nonzero.size:
            self.reduced[i] = reduced
            return
        large = nonzero[self.sizes[nonzero] >= self.threshold]
        col = int(large[0]) if large.size else int(nonzero[0])
        vector = (vector * pow(int(vector[col]), prime - 2, prime)) % prime
        grows = search and self.threshold > 1 and not large.size and not self.leak
        before = self._small_space(reduced, pivots) if grows else None
        factors = reduced[:, col].copy()
        hit = np.flatnonzero(factors)
        if hit.size:
            reduced[hit] = (reduced[hit] - (factors[hit, None] * vector[None, :]) % prime) % prime
        grown[rank] = vector
        self.reduced[i] = grown
        pivots.append(col)
        if grows:
            self.leak = self._union_leak(before, self._small_space(grown, pivots), prime)

    def _repivot(self, reduced: np.ndarray, pivots: list[int], prime: int, split: np.ndarray) -> None:
        """Rows whose pivot atom was split under the threshold take a pivot on a large atom of theirs, if any
        (normalised there, that column eliminated from the other rows: the pivot columns stay unit, and the rows on
        small atoms, zero on every large one, are untouched); the others now live on small atoms (``V``)."""
        small = self.sizes < self.threshold
        cut = np.zeros(self.atoms, bool)
        cut[split] = True
        for j, col in enumerate(pivots):
            if not (cut[col] and small[col]):
                continue
            row = reduced[j]
            large = np.flatnonzero((row != 0) & ~small)
            if not large.size:
                continue
            new = int(large[0])
            row = (row * pow(int(row[new]), prime - 2, prime)) % prime
            reduced[j] = row
            factors = reduced[:, new].copy()
            factors[j] = 0
            hit = np.flatnonzero(factors)
            if hit.size:
                reduced[hit] = (reduced[hit] - (factors[hit, None] * row[None, :]) % prime) % prime
            pivots[j] = new

    def _small_space(self, reduced: np.ndarray, pivots: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """``V`` over the small atoms' columns: the rows whose pivot is a small atom (unit pivot columns)."""
        small = np.flatnonzero(self.sizes < self.threshold)
        at = np.full(self.atoms, -1, np.int64)
        at[small] = np.arange(small.size)
        keep = [j for j, col in enumerate(pivots[:reduced.shape[0]]) if at[col] >= 0]
        return reduced[keep][:, small], at[np.asarray([pivots[j] for j in keep], np.int64)]

    def _union_leak(self, old: tuple[np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray],
                    prime: int) -> bool:
        """Whether ``new`` (``V`` after the set, one dimension more) holds a vector outside ``old`` (``V`` of the
        sets before it, over the same atoms) supported on fewer than :attr:`threshold` rows: the union rule of
        :mod:`mipflow.node.controls.unions` (its branch and bound; True too past its cap)."""
        sizes = self.sizes[self.sizes < self.threshold]
        steps = max(1, min(UNION_CAP, UNION_WORK // max(1, new[0].size)))
        try:
            return _leak(new, old, sizes, self.threshold - 1, prime, [0, steps])
        except _Cap:
            return True  # refused, as the window's union rule past its cap

    def _isolatable(self) -> np.ndarray:
        """Atoms some prime isolates (:func:`mipflow.node.controls.atoms.alone_pivots` per prime)."""
        found = np.zeros(self.atoms, bool)
        for reduced, pivots in zip(self.reduced, self.pivots):
            found |= alone_pivots(reduced, pivots, self.atoms)
        return found

    def drop(self) -> None:
        """Past the bound: keep nothing but the mark (module docstring)."""
        self.over = True
        self.universe = np.zeros(0, np.uint64)
        self.labels = np.zeros(0, np.int64)
        self.sizes = np.zeros(0, np.int64)
        self.reduced = [np.zeros((0, 0), np.int64) for _ in self.primes]
        self.pivots = [[] for _ in self.primes]
        self.isolatable = np.zeros(0, bool)


def newly_isolatable(before: Exact, after: Exact) -> np.ndarray:
    """Per atom of ``after`` (``before`` with sets added): isolatable now and not by ``before`` with the same members
    (check_addition's rule: a split piece, rows outside every earlier set, or an old atom newly isolatable)."""
    n = before.atoms
    fresh = np.ones(after.atoms, bool)
    if n:
        fresh[:n] = (after.sizes[:n] != before.sizes) | ~before.isolatable
    return after.isolatable & fresh


def new_small_atom(before: Exact, after: Exact, threshold: int) -> bool:
    """Whether ``after`` (``before`` with sets added) newly isolates an atom of fewer than ``threshold`` rows
    (:func:`newly_isolatable`)."""
    return bool(np.any(newly_isolatable(before, after) & (after.sizes < threshold)))


@dataclass
class _Cached:
    key: tuple
    digests: list[list[bytes]]  # per pool: running digest after each of its sets taken
    state: Exact

    def begins(self, running: Sequence[Sequence[bytes]]) -> bool:
        """Whether every pool of the call begins with this snapshot's sets."""
        return len(self.digests) == len(running) and all(
            len(done) <= len(now) and (not done or now[len(done) - 1] == done[-1])
            for done, now in zip(self.digests, running))

    def taken(self) -> int:
        return sum(len(done) for done in self.digests)


#: Snapshots kept, each the state after some remembered sets (several per family: a k-means run replaces its
#: clusters at the end of the cells' pool, and the snapshot from before the run is extended again) ...
_CACHE: "OrderedDict[int, _Cached]" = OrderedDict()
#: ... at most this many entries of the reduced rows in all (least recently used dropped first; 320 MB).
EXACT_CACHE_ENTRIES = 2 * EXACT_ENTRIES
_LOCK = threading.Lock()
_SERIAL = [0]


def _set_digest(previous: bytes, keys: np.ndarray) -> bytes:
    h = hashlib.blake2b(previous, digest_size=16)
    h.update(np.ascontiguousarray(keys, dtype="<u8").tobytes())
    return h.digest()


def _running(pool: Sequence[np.ndarray]) -> list[bytes]:
    out: list[bytes] = []
    previous = b""
    for keys in pool:
        previous = _set_digest(previous, keys)
        out.append(previous)
    return out


def remembered(key: tuple, pools: Sequence[Sequence[np.ndarray]], primes: Sequence[int], threshold: int = 0
               ) -> Exact:
    """The state over every set of ``pools`` (each oldest first, sorted unique keys), from the cached snapshot of
    ``key`` whose sets begin every pool and are the most (extended by the rest, the result cached as another
    snapshot), else built from scratch.  ``key``: the node's primes, data model and level.  The state returned is
    the cache's: add to a :meth:`Exact.copy` of it."""
    running = [_running(pool) for pool in pools]
    with _LOCK:
        matching = [(c.taken(), serial) for serial, c in _CACHE.items() if c.key == key and c.begins(running)]
        best = _CACHE[max(matching)[1]] if matching else None
        if best is not None:
            _CACHE.move_to_end(max(matching)[1])
    start = [len(done) for done in best.digests] if best is not None else [0] * len(pools)
    if best is not None and start == [len(r) for r in running]:
        return best.state
    state = best.state.copy() if best is not None else Exact.empty(primes, threshold)
    for pool, first in zip(pools, start):
        for keys in pool[first:]:
            state.add(keys)
            if state.over:
                break
    with _LOCK:
        _SERIAL[0] += 1
        _CACHE[_SERIAL[0]] = _Cached(key, running, state)
        while len(_CACHE) > 1 and (len(_CACHE) > 4 * EXACT_STATES or
                                   sum(c.state.entries() for c in _CACHE.values()) > EXACT_CACHE_ENTRIES):
            _CACHE.popitem(last=False)
    return state


def extended(key: tuple, pools: Sequence[Sequence[np.ndarray]], new: Sequence[np.ndarray], primes: Sequence[int],
             threshold: int, search: bool = False) -> tuple[Exact, Exact] | None:
    """The state over every set of ``pools`` (:func:`remembered`) and a copy with ``new`` added, each with
    ``search`` (:meth:`Exact.add`; the additions stop at the first that sets :attr:`Exact.leak`); None past
    :data:`EXACT_ENTRIES` (the backstop says nothing: module docstring)."""
    before = remembered(key, pools, primes, threshold)
    if before.over:
        return None
    after = before.copy()
    for keys in new:
        after.add(keys, search=search)
        if after.over:
            return None
        if after.leak:
            break
    return before, after


class Coverage:
    """Whether every backstop asked with it decided (``complete``): False once a family was past
    :data:`EXACT_ENTRIES`, where the backstop says nothing (a caller that relies on it falls back to a
    stricter rule: ADR 0063)."""

    def __init__(self) -> None:
        self.complete = True


def exact_allows(key: tuple, pools: Sequence[Sequence[np.ndarray]], new: Sequence[np.ndarray], threshold: int,
                 primes: Sequence[int], unions: bool = False, coverage: Coverage | None = None) -> bool:
    """Whether adding ``new`` to every set of ``pools`` isolates no new atom of fewer than ``threshold`` rows and,
    with ``unions``, lets no new combination of the family live on small atoms of fewer than ``threshold`` rows in
    all (each new set in turn: a combination new after several is new after one of them; allowed, too, past
    :data:`EXACT_ENTRIES`: module docstring, and then ``coverage.complete`` is set False)."""
    if threshold <= 1 or not new:
        return True
    states = extended(key, pools, new, primes, threshold, search=unions)
    if states is None:
        if coverage is not None:
            coverage.complete = False
        return True
    before, after = states
    return not after.leak and not new_small_atom(before, after, threshold)


def clear() -> None:
    """Forget every cached state (tests)."""
    with _LOCK:
        _CACHE.clear()
