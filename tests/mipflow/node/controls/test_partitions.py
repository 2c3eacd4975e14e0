"""K-means partition memory (mipflow.node.controls.partitions, ADR 0013): the minimum-cut rule
against brute force over all bipartitions and over all sets of cells, its examples; the memory on disk,
never evicted, bounded per cohort (ADR 0027).

Over a real node: ``test_differencing.py`` (``test_kmeans_rounds_a_row_apart_are_refused``).
"""
from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.partitions import (
    CACHED_COHORTS, PARTITIONS_FILE, PartitionMemory, canonical_labels, min_cut, partition_conflict,
    smallest_released_difference,
)


def _brute_force_min_cut(weights: np.ndarray) -> int:
    """The lightest cut over every vertex bipartition."""
    n = len(weights)
    best = None
    for mask in range(1, 2 ** (n - 1)):  # vertex n - 1 always on the other side: each cut once
        side = np.array([(mask >> v) & 1 for v in range(n)], dtype=bool)
        cut = int(weights[np.ix_(side, ~side)].sum())
        best = cut if best is None else min(best, cut)
    return best


def _symmetric(n: int, values: list[int]) -> np.ndarray:
    upper = np.zeros((n, n), dtype=np.int64)
    upper[np.triu_indices(n, 1)] = values[: n * (n - 1) // 2]
    return upper + upper.T


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 8).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.integers(0, 6), min_size=n * (n - 1) // 2, max_size=n * (n - 1) // 2))))
def test_min_cut_equals_brute_force(graph):
    n, values = graph
    weights = _symmetric(n, values)
    cut, side = min_cut(weights)
    assert cut == _brute_force_min_cut(weights)
    assert 0 < side.sum() < n and int(weights[np.ix_(side, ~side)].sum()) == cut  # a real cut of that weight


def test_min_cut_examples():
    path = _symmetric(4, [5, 0, 0, 1, 0, 7])  # 0 -5- 1 -1- 2 -7- 3
    assert min_cut(path)[0] == 1
    cycle = _symmetric(4, [409, 0, 1000, 1000, 0, 1])  # 0-1 409, 0-3 1000, 1-2 1000, 2-3 1: cuts 410
    assert min_cut(cycle)[0] == 410
    assert min_cut(_symmetric(3, [0, 0, 4]))[0] == 0  # disconnected
    with pytest.raises(ValueError):
        min_cut(np.zeros((1, 1)))


def _smallest_support(new: np.ndarray, old: np.ndarray) -> int:
    """By linear algebra, not by graphs: the fewest rows on which some combination
    ``sum_i a_i S(old_i) + sum_j b_j S(new_j)`` (weight ``a_i + b_j`` on the rows of cell
    ``old_i ∩ new_j``) is non-zero, over every set of cells; 0 when no combination is non-zero."""
    cells = sorted({(int(i), int(j)) for i, j in zip(old, new)})
    olds, news = sorted({i for i, _ in cells}), sorted({j for _, j in cells})
    count = {c: int(np.sum((old == c[0]) & (new == c[1]))) for c in cells}
    design = np.zeros((len(cells), len(olds) + len(news)))  # cell weights = design @ (a, b)
    for row, (i, j) in enumerate(cells):
        design[row, olds.index(i)] = design[row, len(olds) + news.index(j)] = 1.0
    rank = np.linalg.matrix_rank
    best = 0
    for mask in range(1, 2 ** len(cells)):
        inside = np.array([(mask >> c) & 1 for c in range(len(cells))], dtype=bool)
        rows = int(sum(count[c] for c, keep in zip(cells, inside) if keep))
        if best and rows >= best:
            continue
        # (a, b) with zero weight off the cells: does some such (a, b) weigh a cell inside?
        outside = design[~inside]
        if rank(np.vstack([outside, design])) > (rank(outside) if len(outside) else 0):
            best = rows
    return best


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=30), st.integers(1, 8))
def test_partition_conflict_is_the_smallest_released_combination(pairs, threshold):
    """The graph rule equals its definition: refuse iff some combination of the released
    cluster sums is non-zero on 1 .. threshold - 1 rows.  (Replaces the earlier per-pair set
    rule ``|new_j \\ old_i|, |old_i \\ new_j|`` in (0, threshold), which refused e.g. a
    cluster gaining 409 rows and losing 1, and missed a row isolated by three clusters' sums;
    both are cases below.)"""
    old = np.array([p[0] for p in pairs])
    new = np.array([p[1] for p in pairs])
    support = _smallest_support(new, old)
    assert smallest_released_difference(new, old) == support
    assert partition_conflict(new, old, threshold) == (0 < support < threshold)
    # the central site's labels are its own choice: renaming clusters changes nothing
    assert partition_conflict((new + 1) % 3, old, threshold) == partition_conflict(new, old, threshold)


def _moves(sizes: tuple[int, ...], moves: dict[tuple[int, int], int]) -> tuple[np.ndarray, np.ndarray]:
    """Old clusters of the given sizes; ``moves[(i, j)]`` rows of old ``i`` go to new ``j``."""
    old = np.repeat(np.arange(len(sizes)), sizes)
    new = old.copy()
    for (i, j), count in moves.items():
        at = np.flatnonzero((old == i) & (new == i))[:count]
        assert len(at) == count
        new[at] = j
    return new, old


@pytest.mark.parametrize("sizes, moves, smallest, conflict", [
    # one row moves i -> j and nothing else: a bridge of one row (S(old_i) - S(new_i) is that row)
    pytest.param((1000, 1000), {(0, 1): 1}, 1, True, id="one-row-bridge"),
    pytest.param((1000, 1000), {(0, 1): 2}, 2, True, id="two-row-bridge"),
    pytest.param((1000, 1000), {(0, 1): 3}, 3, False, id="three-row-bridge"),
    # one row each way: S(old_i) - S(new_i) is the difference of the two rows (a cut of 1 + 1)
    pytest.param((1000, 1000), {(0, 1): 1, (1, 0): 1}, 2, True, id="one-row-each-way"),
    # 409 rows j -> i and 1 row i -> j: a 4-cycle, every cut of it is 410 rows or a whole cluster.
    # The earlier per-pair rule refused it (|old_i \ new_i| = 1): over-conservative, no
    # combination of the four sums is a sum over fewer than 410 rows.
    pytest.param((1000, 1000), {(1, 0): 409, (0, 1): 1}, 410, False, id="gain-409-lose-1"),
    # a chain of single moves 0 -> 1 -> 2: two bridges
    pytest.param((500, 500, 500), {(0, 1): 1, (1, 2): 1}, 1, True, id="chain-of-one-row-moves"),
    # rows 0 -> 1 and 1 -> 2 and 2 -> 0, ten each: a 6-cycle, cuts of 20 rows
    pytest.param((500, 500, 500), {(0, 1): 10, (1, 2): 10, (2, 0): 10}, 20, False, id="rotation-of-ten"),
    pytest.param((500, 500), {}, 500, False, id="identical"),
])
def test_partition_conflict_examples(sizes, moves, smallest, conflict):
    new, old = _moves(sizes, moves)
    assert smallest_released_difference(new, old) == smallest
    assert partition_conflict(new, old, 3) is conflict
    assert partition_conflict(old, new, 3) is conflict  # the order of the two releases does not matter


def test_partition_conflict_finds_a_row_no_pair_of_clusters_shows():
    """Old: 0..29 | 30..59 | 60..99; new: 0..9 | 10..28 | 29..99.  Every old and new cluster
    differ by 0 or at least 10 rows (the earlier per-pair rule allowed it), yet
    S(old_0) - S(new_0) - S(new_1) is row 29's value: a bridge of one row."""
    rows = np.arange(100)
    old = np.searchsorted([30, 60], rows, side="right")
    new = np.searchsorted([10, 29], rows, side="right")
    for i in range(3):
        for j in range(3):
            a, b = set(rows[old == i]), set(rows[new == j])
            assert len(a - b) == 0 or len(a - b) >= 10
            assert len(b - a) == 0 or len(b - a) >= 10
    assert smallest_released_difference(new, old) == 1
    assert partition_conflict(new, old, 3)


def test_a_small_cluster_is_a_small_cut():
    """A cluster of 2 rows is a cut of 2 (the rule refuses; at a node the cell control
    nfilter_tab refuses it first, see DifferencingGuard.check_partition)."""
    new, old = _moves((1000, 1000), {(0, 1): 998})
    assert smallest_released_difference(new, old) == 2 and partition_conflict(new, old, 3)


def _slabs(n: int, *ends: int) -> np.ndarray:
    """Labels of ``n`` rows in order cut into slabs at ``ends``."""
    return np.searchsorted(np.asarray(ends), np.arange(n), side="right")


def test_canonical_labels_name_a_partition_not_its_numbering():
    assert canonical_labels(np.array([2, 2, 0, 1, 0])).tolist() == [0, 0, 1, 2, 1]
    assert np.array_equal(canonical_labels(np.array([1, 1, 0])), canonical_labels(np.array([0, 0, 1])))
    assert canonical_labels(np.array([], dtype=int)).tolist() == []
    assert canonical_labels(np.array([40000, 7, 40000])).tolist() == [0, 1, 0]  # the labels' values do not matter
    many = np.random.default_rng(1).integers(0, 100, 2000)  # more clusters than one scan each takes
    assert np.array_equal(canonical_labels(many), canonical_labels(99 - many))


def test_the_memory_never_forgets_a_partition_however_many_others_follow(tmp_path):
    """The eviction attack (issue 13.5): released partitions used to be dropped after 32 on one
    cohort and after 64 other cohorts (least recently used); then the one-row move was answered."""
    memory = PartitionMemory(tmp_path)
    first, moved = _slabs(400, 200), _slabs(400, 201)
    memory.record("m|q", first)
    with pytest.raises(DisclosureError, match="nfilter_tab"):
        memory.check("m|q", moved, 3)
    for end in range(20, 380, 3):  # 120 slabs of the same rows, 3 rows apart: each is a cut of 3 from the next
        labels = _slabs(400, end)
        if abs(end - 200) >= 3:
            memory.check("m|q", labels, 3, limit=0)
            memory.record("m|q", labels)
    for key in range(3 * CACHED_COHORTS + 70):  # other cohorts
        memory.record(f"m|other{key}", _slabs(50, 25))
    assert memory.remembered("m|q") == 120
    with pytest.raises(DisclosureError, match="nfilter_tab"):
        memory.check("m|q", moved, 3, limit=0)
    # a new process (or a restart) reads it from the node home
    memory.close()
    again = PartitionMemory(tmp_path)
    assert (tmp_path / PARTITIONS_FILE).is_file() and again.remembered("m|q") == 120
    with pytest.raises(DisclosureError, match="nfilter_tab"):
        again.check("m|q", moved, 3, limit=0)
    again.check("m|q", 1 - first, 3)  # the first partition renumbered: released already


def test_at_its_limit_a_cohort_takes_no_new_partition_and_keeps_the_old_ones(tmp_path):
    memory = PartitionMemory(tmp_path)
    for end in (20, 40, 60):
        memory.check("m|q", _slabs(100, end), 3, limit=3)
        memory.record("m|q", _slabs(100, end))
    with pytest.raises(DisclosureError, match=r"partitions_per_cohort \(3\)") as err:
        memory.check("m|q", _slabs(100, 80), 3, limit=3)
    assert err.value.control == "differencing"
    memory.check("m|q", _slabs(100, 40), 3, limit=3)  # one released before: answered again
    memory.check("m|other", _slabs(100, 80), 3, limit=3)  # another cohort has its own room
    with pytest.raises(DisclosureError, match="nfilter_tab"):
        memory.check("m|q", _slabs(100, 41), 3, limit=3)  # a conflict is still named as one
    memory.check("m|q", _slabs(100, 80), 3, limit=4)  # the admin raised the limit
    assert memory.remembered("m|q") == 3


def test_processes_sharing_a_home_see_each_others_partitions(tmp_path):
    one, two = PartitionMemory(tmp_path), PartitionMemory(tmp_path)
    two.check("m|q", _slabs(100, 50), 3)  # two has looked at the cohort (and cached it) before one records
    one.record("m|q", _slabs(100, 50))
    with pytest.raises(DisclosureError):
        two.check("m|q", _slabs(100, 51), 3)


def test_at_min_row_count_a_move_of_three_to_nine_rows_is_refused_and_named():
    """k-means checks its partitions at min_row_count (ADR 0050): a slab moved by 3 .. 9 rows, or rows
    moving both ways with a cut of 3 + 3, conflicts there and not at nfilter_tab (3); 9 + 1 does not."""
    memory = PartitionMemory()
    memory.record("k", _slabs(60, 30))
    for moved in range(3, 10):
        assert partition_conflict(_slabs(60, 30 + moved), _slabs(60, 30), 10)
        assert not partition_conflict(_slabs(60, 30 + moved), _slabs(60, 30), 3)
        with pytest.raises(DisclosureError, match=r"fewer than min_row_count \(10\) rows") as err:
            memory.check("k", _slabs(60, 30 - moved), 10, setting="min_row_count")
        assert err.value.control == "differencing" and str(moved) not in str(err.value).replace("(10)", "")
    memory.check("k", _slabs(60, 40), 10, setting="min_row_count")  # 10 rows apart
    old = np.repeat([0, 1], 30)
    both_ways = old.copy()
    both_ways[:3], both_ways[30:33] = 1, 0  # three rows each way: a 4-cycle whose smallest cut is 6
    assert smallest_released_difference(both_ways, old) == 6
    assert partition_conflict(both_ways, old, 10) and not partition_conflict(both_ways, old, 3)
    nine_one = old.copy()
    nine_one[:1], nine_one[30:39] = 1, 0
    assert smallest_released_difference(nine_one, old) == 10 and not partition_conflict(nine_one, old, 10)


def test_a_memory_without_a_home_is_the_rule_in_process():
    memory = PartitionMemory()
    memory.record("k", _slabs(60, 30))
    with pytest.raises(DisclosureError):
        memory.check("k", _slabs(60, 31), 3)
