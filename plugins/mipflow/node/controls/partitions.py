"""Partition memory: a node refuses a k-means assignment a few rows away from one it released.

K-means rounds release per-cluster sums: two rounds whose clusters differ by a
row or two give those rows away.  :class:`PartitionMemory` keeps, on disk in
the node home (``partitions.sqlite``), every cluster assignment released on a
cohort and refuses an assignment when some linear combination of its cluster sums and those of an
earlier assignment would be a sum over ``0 < d < threshold`` rows: exactly
when the bipartite graph of the two assignments (clusters as vertices, shared
rows as weighted edges) has a minimum cut below ``threshold``
(:func:`partition_conflict`, Stoer-Wagner in :func:`min_cut`).  The threshold
is the fewest rows a released cluster holds: ``min_row_count`` for k-means
(``group_count_setting``, ADR 0050), ``nfilter_tab`` for an algorithm whose
groups are held to that.  Which
partition a step releases the algorithm states
(``Algorithm.differencing_partition``); the node's guard
(:class:`mipflow.node.controls.differencing.DifferencingGuard`) asks it and
checks here.  The rule and its proof are in ``docs/adr/0013-differencing.md``.

The memory is never evicted (``docs/adr/0027-masked-releases-and-durable-partitions.md``):
a memory that forgets lets the one-row move it once refused be answered after
enough other partitions (or cohorts) have pushed the first one out, or after a
restart.  It is bounded instead per cohort: once a cohort holds
``partitions_per_cohort`` (a node setting) distinct assignments, a new one on
that cohort is refused; the old ones stay.  Assignments are kept per cohort
(data model and rows), not per variable list: the same rows partitioned over
``(a, b)`` or ``(b, a)`` (or other variables) are the same partition of the
rows, and the counts (and the sums of shared variables) of both combine.
"""
from __future__ import annotations

import hashlib
import zlib
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.sqlite_state import SqliteState

#: Partition memory file in the node home.
PARTITIONS_FILE = "partitions.sqlite"
#: Default of the node setting ``partitions_per_cohort``: distinct assignments one cohort may take.
PARTITIONS_PER_COHORT = 128
#: Cohorts whose assignments a process keeps decoded in memory (a cache only: the file is the memory).
CACHED_COHORTS = 8


def min_cut(weights: np.ndarray) -> tuple[int, np.ndarray]:
    """Global minimum weighted cut of an undirected graph (Stoer-Wagner).

    Parameters
    ----------
    weights : numpy.ndarray of int, shape (n, n)
        Symmetric non-negative edge weights (the diagonal is ignored), ``n >= 2``.
        A disconnected graph has a cut of weight 0.

    Returns
    -------
    weight : int
        The smallest total weight of the edges between ``S`` and its complement,
        over all vertex sets ``S`` with ``0 < |S| < n``.
    side : numpy.ndarray of bool, shape (n,)
        One such ``S``.

    Notes
    -----
    ``n - 1`` phases, each a maximum-adjacency ordering of the (merged)
    vertices: the last vertex ``t`` and its cut from the rest is a candidate,
    then ``t`` is merged into the vertex before it.  ``O(n^3)`` with ``O(n)``
    numpy work per step; k-means graphs have at most ``2 k`` vertices.
    """
    w = np.array(weights, dtype=np.int64)
    n = len(w)
    if w.shape != (n, n) or n < 2:
        raise ValueError(f"min_cut needs a square matrix of at least 2 vertices, got shape {w.shape}")
    np.fill_diagonal(w, 0)
    members = np.eye(n, dtype=bool)  # members[v]: original vertices merged into v
    active = np.ones(n, dtype=bool)
    best, side = -1, members[0].copy()
    for _ in range(n - 1):
        first = int(np.flatnonzero(active)[0])
        outside = active.copy()
        outside[first] = False
        connection = w[first].copy()  # weight from the ordered set to each vertex
        before, last, cut = first, first, 0
        while outside.any():
            # -1: weights are >= 0, so a vertex already ordered (or merged away) never wins
            last_candidates = np.where(outside, connection, -1)
            before, last = last, int(np.argmax(last_candidates))
            cut = int(last_candidates[last])
            outside[last] = False
            connection += w[last]
        if best < 0 or cut < best:
            best, side = cut, members[last].copy()
        # merge the phase's last vertex into the one ordered before it
        w[before] += w[last]
        w[:, before] += w[:, last]
        w[before, before] = 0
        w[last], w[:, last] = 0, 0
        members[before] |= members[last]
        active[last] = False
    return best, side


def assignment_graph(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """The rows shared by each old and new cluster: the bipartite graph of two assignments.

    Parameters
    ----------
    new, old : numpy.ndarray of int, shape (n,)
        Cluster labels of the same rows in the same order.

    Returns
    -------
    numpy.ndarray of int, shape (v, v)
        Symmetric weights on the ``v`` non-empty clusters (old ones first,
        then new ones): ``|old_i ∩ new_j|`` between old ``i`` and new ``j``,
        0 between two clusters of the same assignment.
    """
    new = np.asarray(new, dtype=np.int64)
    old = np.asarray(old, dtype=np.int64)
    k_new, k_old = int(new.max(initial=-1)) + 1, int(old.max(initial=-1)) + 1
    both = np.bincount(old * k_new + new, minlength=k_old * k_new).reshape(k_old, k_new)
    both = both[both.any(axis=1)][:, both.any(axis=0)]  # the non-empty clusters
    a, b = both.shape
    graph = np.zeros((a + b, a + b), dtype=np.int64)
    graph[:a, a:] = both
    graph[a:, :a] = both.T
    return graph


def smallest_released_difference(new: np.ndarray, old: np.ndarray) -> int:
    """Fewest rows that some linear combination of two assignments' cluster sums isolates.

    The central site learns each cluster's sums (and count) under both
    assignments.  A combination ``sum_i a_i S(old_i) + sum_j b_j S(new_j)``
    weighs each row by ``a_i + b_j`` (its old and new clusters); it is not
    zero and vanishes off a set ``C`` of cells ``old_i ∩ new_j`` exactly when
    ``C`` contains an edge cut of the graph :func:`assignment_graph` (see
    ``docs/adr/0013-differencing.md``).  The answer is therefore the minimum
    weighted cut over the graph's connected components.  A cut around one
    vertex is a whole cluster, released anyway.

    Parameters
    ----------
    new, old : numpy.ndarray of int, shape (n,)
        Cluster labels of the same rows in the same order.

    Returns
    -------
    int
        The number of rows (0 for no rows).
    """
    if not len(new):
        return 0
    graph = assignment_graph(new, old)
    best = None
    from scipy.sparse.csgraph import connected_components

    _, labels = connected_components(graph, directed=False)
    for part in (np.flatnonzero(labels == c) for c in range(int(labels.max(initial=-1)) + 1)):
        sub = graph[np.ix_(part, part)]
        weight = int(sub[sub > 0].min()) if len(part) >= 2 else 0
        if best is not None and weight >= best:
            continue  # every cut holds an edge: the lightest edge bounds the cut from below
        cut, _ = min_cut(sub)
        best = cut if best is None else min(best, cut)
    return int(best) if best is not None else 0


def partition_conflict(new: np.ndarray, old: np.ndarray, threshold: int) -> bool:
    """Whether two cluster assignments of the same rows would single out fewer than ``threshold`` rows.

    True when some linear combination of the two assignments' released
    cluster sums is a (signed) sum over ``1`` to ``threshold - 1`` rows, that
    is when a connected component of :func:`assignment_graph` has a minimum
    weighted cut below ``threshold`` (:func:`smallest_released_difference`).
    Labels need not match (the central site chooses the centres' order).
    Examples: one row moves from ``i`` to ``j`` and nothing else moves (a
    bridge of weight 1): refused; one row each way between ``i`` and ``j``
    (their sums' changes give the difference of the two rows): refused; 409
    rows move ``j -> i`` and one ``i -> j`` (a cycle, every cut 410 rows or a
    whole cluster): allowed.

    Parameters
    ----------
    new, old : numpy.ndarray of int, shape (n,)
        Cluster labels of the same rows in the same order.
    threshold : int
        The fewest rows a released group holds (``min_row_count`` for k-means,
        ADR 0050; else ``nfilter_tab``): refuse below it (nothing is refused at 1 or less).
    """
    if threshold <= 1 or not len(new):
        return False
    graph = assignment_graph(new, old)
    if int(graph[graph > 0].min()) >= threshold:
        return False  # every cut holds a cell of at least threshold rows
    return smallest_released_difference(new, old) < threshold


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` renumbered by first occurrence (0, 1, ...): equal for equal partitions.

    The central site chooses the centres' order, so the same partition of the
    rows can come with its clusters numbered differently; it is remembered once.

    Parameters
    ----------
    labels : numpy.ndarray of int, shape (n,)
        Non-negative cluster labels.

    Returns
    -------
    numpy.ndarray of int16 (int64 from 2**15 clusters), shape (n,)
    """
    labels = np.asarray(labels)
    if not len(labels):
        return np.zeros(0, dtype=np.int16)
    narrow = np.int16 if int(labels.max()) < 2**15 else np.int64
    labels = labels.astype(narrow, copy=False)
    if labels.min() < 0:
        raise ValueError("cluster labels must not be negative")
    values = np.flatnonzero(np.bincount(labels))
    if len(values) <= 32:  # k-means' k: one scan per cluster beats a sort
        first = np.array([int(np.argmax(labels == v)) for v in values])
    else:
        order = np.argsort(labels, kind="stable")
        ordered = labels[order]
        starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
        values, first = ordered[starts], order[starts]
    canonical = np.int16 if len(values) < 2**15 else np.int64  # by the clusters, not the labels given
    renumber = np.zeros(int(values.max()) + 1, dtype=canonical)
    renumber[values[np.argsort(first)]] = np.arange(len(values), dtype=canonical)
    return renumber[labels]


def _encode(labels: np.ndarray) -> bytes:
    """Canonical labels -> zlib-compressed little-endian integers (2 bytes each below 2**15 clusters)."""
    width = "<i2" if labels.dtype == np.int16 else "<i8"
    return zlib.compress(np.ascontiguousarray(labels, dtype=width).tobytes(), 1)


def _decode(blob: bytes, n_rows: int) -> np.ndarray:
    """Inverse of :func:`_encode` for ``n_rows`` labels (stored canonical)."""
    raw = zlib.decompress(blob)
    width = "<i2" if n_rows and len(raw) == 2 * n_rows else "<i8"
    return np.frombuffer(raw, dtype=width).astype(np.int16 if width == "<i2" else np.int64)


def _digest(labels: np.ndarray) -> str:
    """SHA-256 of canonical labels: equal digests, equal partitions."""
    width = "<i2" if labels.dtype == np.int16 else "<i8"
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=width).tobytes()).hexdigest()


class PartitionMemory(SqliteState):
    """Every cluster assignment a node released, per cohort, in ``HOME/partitions.sqlite``.

    Labels are given in a canonical row order (the cohort's row keys sorted,
    :meth:`mipflow.node.controls.differencing.Cohorts.canonical`), so that a
    restart, another node process sharing the home or another read order of
    the same rows compares the same rows.  Nothing is ever forgotten: at
    ``limit`` distinct assignments a cohort takes no new one (:meth:`check`
    refuses it), and the assignments already released stay.  Several node
    processes may share one home: each reads what the others added.

    Parameters
    ----------
    root : path or None
        The node home; None keeps the memory in this process only (tests of the rule).
    """

    def __init__(self, root: str | Path | None = None) -> None:
        super().__init__(Path(root) / PARTITIONS_FILE if root is not None else None)
        # key -> (last rowid read, digests, labels): a cache of the file, refreshed before each use
        self._cache: OrderedDict[str, tuple[int, set[str], list[np.ndarray]]] = OrderedDict()
        if self.path is not None:
            with self._lock, self._connect() as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS partitions (key TEXT NOT NULL, digest TEXT NOT NULL, "
                             "n_rows INTEGER NOT NULL, labels BLOB NOT NULL, first_at TEXT NOT NULL, "
                             "PRIMARY KEY (key, digest))")


    def _known(self, key: str) -> tuple[set[str], list[np.ndarray]]:
        """The assignments remembered for ``key`` (read from the file what is new since the last look)."""
        last, digests, labels = self._cache.pop(key, (0, set(), []))
        if self.path is not None:
            with self._connect() as conn:
                rows = conn.execute("SELECT rowid, digest, n_rows, labels FROM partitions WHERE key = ? AND "
                                    "rowid > ? ORDER BY rowid", (key, last)).fetchall()
            for rowid, digest, n_rows, blob in rows:
                if digest not in digests:
                    digests.add(digest)
                    labels.append(_decode(blob, n_rows))
                last = max(last, rowid)
        self._cache[key] = (last, digests, labels)
        if self.path is not None:  # without a file the cache is the memory: never dropped
            while len(self._cache) > CACHED_COHORTS:
                self._cache.popitem(last=False)
        return digests, labels

    def remembered(self, key: str) -> int:
        """How many distinct assignments ``key`` holds (for the node admin and tests)."""
        with self._lock:
            return len(self._known(key)[0])

    def check(self, key: str, labels: np.ndarray, threshold: int, limit: int = PARTITIONS_PER_COHORT,
              setting: str = "nfilter_tab") -> None:
        """Raise (control ``differencing``) if ``labels`` may not be released on cohort ``key``.

        Refused: an assignment that conflicts with a remembered one
        (:func:`partition_conflict` below ``threshold``, the node setting named
        ``setting`` in the message; pairwise, combinations across three or
        more released assignments are not analysed, see ADR 0013), and a new
        assignment on a cohort that already holds ``limit`` of them (0: no
        limit).  An assignment remembered before is answered again.
        """
        labels = canonical_labels(labels)
        with self._lock:
            digests, known = self._known(key)
            if _digest(labels) in digests:
                return  # released before: its sums are known already
            for old in known:
                if len(old) == len(labels) and partition_conflict(labels, old, threshold):
                    raise DisclosureError(
                        "the cluster sums of this assignment and of one this node already released on the "
                        f"same rows would combine into a sum over fewer than {setting} ({threshold}) rows, "
                        "which could single out patients (differencing control)", control="differencing")
            if limit and len(digests) >= limit:
                raise DisclosureError(
                    f"this node has released partitions_per_cohort ({limit}) different cluster assignments of "
                    "these rows and keeps every one to check new ones against, so it takes no new assignment "
                    "of them: use the result of the rounds already run, or choose other rows (filters, "
                    "datasets); the node admin may raise partitions_per_cohort (differencing control)",
                    control="differencing")

    def record(self, key: str, labels: np.ndarray) -> None:
        """Remember a released assignment (one remembered before costs nothing)."""
        labels = canonical_labels(labels)
        digest = _digest(labels)
        with self._lock:
            digests, known = self._known(key)
            if digest in digests:
                return
            if self.path is not None:
                now = datetime.now(timezone.utc).isoformat(timespec="seconds")
                with self._connect() as conn:
                    conn.execute("INSERT OR IGNORE INTO partitions VALUES (?, ?, ?, ?, ?)",
                                 (key, digest, len(labels), _encode(labels), now))
                self._known(key)  # reads the row back
            else:
                digests.add(digest)
                known.append(labels)
