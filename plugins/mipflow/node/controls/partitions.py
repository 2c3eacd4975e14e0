"""Partition memory: a node refuses a k-means assignment a few rows away from one it released.

K-means rounds release per-cluster sums: two rounds whose clusters differ by a
row or two give those rows away.  :class:`PartitionMemory` keeps, in node
memory, the recent cluster assignments released on a cohort and refuses an
assignment when some linear combination of its cluster sums and those of an
earlier assignment would be a sum over ``0 < d < nfilter_tab`` rows: exactly
when the bipartite graph of the two assignments (clusters as vertices, shared
rows as weighted edges) has a minimum cut below ``nfilter_tab``
(:func:`partition_conflict`, Stoer-Wagner in :func:`min_cut`).  Which
partition a step releases the algorithm states
(``Algorithm.differencing_partition``); the node's guard
(:class:`mipflow.node.controls.differencing.DifferencingGuard`) asks it and
checks here.  The rule and its proof are in ``docs/adr/0013-differencing.md``.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from mipflow.exceptions import DisclosureError

#: Assignments remembered per (data model, cohort, variables) by :class:`PartitionMemory`.
MAX_PARTITIONS = 32
#: Distinct (data model, cohort, variables) keys kept by :class:`PartitionMemory`.
MAX_PARTITION_KEYS = 64


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
        ``nfilter_tab``: refuse below it (nothing is refused at 1 or less).
    """
    if threshold <= 1 or not len(new):
        return False
    graph = assignment_graph(new, old)
    if int(graph[graph > 0].min()) >= threshold:
        return False  # every cut holds a cell of at least threshold rows
    return smallest_released_difference(new, old) < threshold


class PartitionMemory:
    """Recent cluster assignments a node released, per (data model, cohort, variables), in memory.

    Bounded: :data:`MAX_PARTITIONS` assignments per key, :data:`MAX_PARTITION_KEYS`
    keys (least recently used dropped).  Lost at a restart (see the ADR).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._memory: OrderedDict[str, list[np.ndarray]] = OrderedDict()

    def check(self, key: str, labels: np.ndarray, threshold: int) -> None:
        """Raise (control ``differencing``) if ``labels`` conflicts with a remembered assignment.

        Pairwise (:func:`partition_conflict`): combinations across three or
        more released assignments are not analysed (see the ADR).
        """
        with self._lock:
            for old in self._memory.get(key, ()):
                if len(old) == len(labels) and partition_conflict(labels, old, threshold):
                    raise DisclosureError(
                        "the cluster sums of this assignment and of one this node already released on the "
                        f"same rows would combine into a sum over fewer than nfilter_tab ({threshold}) rows, "
                        "which could single out patients (differencing control)", control="differencing")

    def record(self, key: str, labels: np.ndarray) -> None:
        with self._lock:
            known = self._memory.setdefault(key, [])
            self._memory.move_to_end(key)
            if not any(np.array_equal(labels, old) for old in known):
                known.append(np.asarray(labels, dtype=np.int16 if labels.max(initial=0) < 2**15 else np.int64))
                del known[:-MAX_PARTITIONS]
            while len(self._memory) > MAX_PARTITION_KEYS:
                self._memory.popitem(last=False)
