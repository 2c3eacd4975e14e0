"""The groups a release forms, from a selection left on disk, a block at a time (ADR 0051, ADR 0062).

:func:`mipflow.node.controls.groups.level_groups` reads each row's level codes from the local step's frame
and its keys from the cohorts' order.  A selection left on disk
(:class:`mipflow.node.query.snapshot_rows.SnapshotRows`) holds level codes as small ints and the ledger's
row and patient keys as columns of the snapshot: :func:`rows_level_groups` reads them together, a block
of :data:`GROUP_ROWS` rows at a time, and gives the same groups (kinds, rows, patients, digests, cells
and margins) in the same order (each grouping's cells, then its margins, each level combination in the
order its first row comes, as ``groupby(sort=False)``), and the same union.

With a ledger key and the columns a step reads (:func:`rows_stamped_groups`), each group's value stamps and the
union's (ADR 0061, the group memory's stamps) are summed in the same pass: the numbers
:func:`mipflow.node.controls.group_stamps.frame_group_stamps` gives on the frame.

Memory: a block, and the keys of the rows each group holds (8 bytes a row and a group for rows, 8 for
patients) until they are sorted: what the frame path holds besides its frame.

A grouping that cuts a numerical column into bins (a histogram's, ``ReleasedGroups.bins``) reads its values and
gives each row its bin as :func:`mipflow.algorithms.design.grouping_codes` does (ADR 0062, amendment 11).
"""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from mipflow.node.controls.groups import Group, _digest, kind_of
from mipflow.node.controls.ledger import sorted_unique

if TYPE_CHECKING:
    from mipflow.algorithms.contract import ReleasedGroups

#: Selected rows read at a time.
GROUP_ROWS = 262_144


def _level_table(rows: Any, column: str) -> tuple[list[str], np.ndarray]:
    """A categorical column's distinct enumeration codes (in the order their stored codes first name
    them) and each stored code's position among them, then -1 (for a missing value, stored code -1)."""
    stored = rows.levels_of(column)
    if stored is None:
        raise ValueError("a released grouping names a numerical column")
    names: list[str] = []
    positions = []
    for level in stored:
        level = str(level)
        if level not in names:
            names.append(level)
        positions.append(names.index(level))
    return names, np.array([*positions, -1], dtype=np.int64)


def rows_level_groups(rows: Any, groupings: Sequence[ReleasedGroups], data_model: str, *, patients: bool = True,
                      block: int | None = None) -> tuple[list[Group], np.ndarray]:
    """:func:`~mipflow.node.controls.groups.level_groups` of a selection left on disk: its rows' keys are
    the snapshot's ``row_key`` (and, with ``patients``, ``pid_key``), in the selection's order."""
    groups, union, _ = rows_stamped_groups(rows, groupings, data_model, patients=patients, block=block)
    return groups, union


def rows_stamped_groups(rows: Any, groupings: Sequence[ReleasedGroups], data_model: str, key: str | None = None,
                        stamped: Sequence[str] = (), *, patients: bool = True, block: int | None = None
                        ) -> tuple[list[Group], np.ndarray, dict[str, int] | None]:
    """:func:`rows_level_groups`, and with a ledger ``key`` each group's value stamps of the ``stamped``
    columns (:mod:`mipflow.node.query.stamps`) and the union's (None without a key)."""
    from mipflow.algorithms.design import REST, bin_labels
    from mipflow.node.query.stamps import cell_hashes, code_table, column_salt, stored_bits

    block = GROUP_ROWS if block is None else int(block)
    columns = list(dict.fromkeys(c for g in groupings for c in g.columns))
    levelled = {c for g in groupings for i, c in enumerate(g.columns) if _cut(g, i) is None}
    tables = {c: _level_table(rows, c) for c in columns if c in levelled}
    stamped = [] if key is None else list(dict.fromkeys(stamped))
    bit_tables = {c: code_table(rows.levels_of(c), key) for c in stamped}
    read = list(dict.fromkeys([*columns, *stamped]))
    # per grouping, per column: its levels (the released ones, then the rest's) and each distinct level's
    # position among them, then -1 (missing); -1 too for a level neither released nor the rest
    levels_of: list[list[list[str]]] = []
    lookup: list[list[np.ndarray]] = []
    for grouping in groupings:
        names_per, per = [], []
        for i, column in enumerate(grouping.columns):
            cut = _cut(grouping, i)
            if cut is not None:  # a bin's label: its position among the bins (grouping_codes' searchsorted)
                names_per.append(bin_labels(cut))
                per.append(np.array([*range(len(cut) - 1), -1], dtype=np.int64))
                continue
            names = tables[column][0]
            wanted = None if grouping.levels is None or grouping.levels[i] is None else set(map(str, grouping.levels[i]))
            if wanted is None:
                names_per.append(list(names))
                per.append(np.array([*range(len(names)), -1], dtype=np.int64))
                continue
            kept = [n for n in names if n in wanted]
            rest = REST + "|".join(sorted(wanted))
            at = [kept.index(n) if n in wanted else (len(kept) if grouping.rest else -1) for n in names]
            names_per.append(kept + ([rest] if grouping.rest else []))
            per.append(np.array([*at, -1], dtype=np.int64))
        levels_of.append(names_per)
        lookup.append(per)
    subsets = [[subset for size in range(1, len(g.columns) + 1)
                for subset in itertools.combinations(range(len(g.columns)), size)] for g in groupings]
    # (grouping, subset) -> combined level id -> [key blocks, patient key blocks, stamps]; ids in the order seen
    found: list[list[dict[int, list]]] = [[{} for _ in per] for per in subsets]
    union_parts: list[np.ndarray] = []
    union_stamps = np.zeros(len(stamped), dtype=np.uint64)
    names = ["row_key", *(["pid_key"] if patients else [])]
    n = len(rows)
    next_rows = rows.reader([*read, *names]) if n else None
    for start in range(0, n, max(1, block)):
        count = min(max(1, block), n - start)
        values = next_rows(count)
        named = dict(zip(read, values))
        position = {c: tables[c][1][np.where((named[c] >= 0) & (named[c] < len(tables[c][1]) - 1), named[c], -1)]
                    for c in columns if c in levelled}
        keys = values[len(read)].copy()
        pids = values[len(read) + 1].copy() if patients else None
        # each row's cell hashes, a column of the stamped ones each (wrapping sums mod 2**64: the stamps)
        hashes = np.zeros((count, len(stamped)), dtype=np.uint64)
        for j, column in enumerate(stamped):
            hashes[:, j] = cell_hashes(keys, stored_bits(named[column], bit_tables[column], key),
                                       column_salt(key, column))
        union = np.zeros(count, dtype=bool)
        for g, grouping in enumerate(groupings):
            released = np.ones(count, dtype=bool)
            local = [lookup[g][i][position[column] if _cut(grouping, i) is None else
                                  _bin_positions(named[column], _cut(grouping, i))]
                     for i, column in enumerate(grouping.columns)]
            for i in range(len(grouping.columns)):
                released &= local[i] >= 0
            union |= released
            at = np.flatnonzero(released)
            if not len(at):
                continue
            for s, subset in enumerate(subsets[g]):
                combined = np.zeros(len(at), dtype=np.int64)
                for i in subset:
                    combined = combined * len(levels_of[g][i]) + local[i][at]
                ids, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
                kept = found[g][s]
                for j in np.argsort(first, kind="stable"):  # first seen first, as groupby(sort=False)
                    members = at[inverse.reshape(-1) == j]
                    lists = kept.setdefault(int(ids[j]), [[], [], np.zeros(len(stamped), dtype=np.uint64)])
                    lists[0].append(keys[members])
                    if pids is not None:
                        lists[1].append(pids[members])
                    lists[2] += np.add.reduce(hashes[members], axis=0, dtype=np.uint64)
        union_parts.append(keys[union])
        union_stamps += np.add.reduce(hashes[union], axis=0, dtype=np.uint64)
    groups: dict[str, Group] = {}
    for g, grouping in enumerate(groupings):
        for s, subset in enumerate(subsets[g]):
            for combined, (key_parts, pid_parts, sums) in found[g][s].items():
                levels = []
                for i in reversed(subset):  # the combined id's digits, last column first
                    combined, digit = divmod(combined, len(levels_of[g][i]))
                    levels.append(levels_of[g][i][digit])
                levels.reverse()
                kind = kind_of(data_model, [(grouping.columns[i], level) for i, level in zip(subset, levels)])
                if kind in groups:
                    continue
                members = sorted_unique(np.concatenate(key_parts))
                people = sorted_unique(np.concatenate(pid_parts)) if patients else None
                groups[kind] = Group(kind, members, _digest(kind, members), data_model, people,
                                     cell=len(subset) == len(grouping.columns), stamps=_stamps(stamped, sums, key))
    union = sorted_unique(np.concatenate(union_parts)) if union_parts else np.zeros(0, dtype=np.uint64)
    return list(groups.values()), union, _stamps(stamped, union_stamps, key)


def _cut(grouping: ReleasedGroups, i: int) -> Sequence[float] | None:
    """The bin edges cutting column ``i`` of ``grouping`` (None: its levels)."""
    return None if grouping.bins is None else grouping.bins[i]


def _bin_positions(values: np.ndarray, cut: Sequence[float]) -> np.ndarray:
    """Each value's bin among ``cut``'s (``[lo, hi)``, the last ``[lo, hi]``), -1 outside them or missing:
    :func:`mipflow.algorithms.design.grouping_codes`' bins, a row at a time."""
    edges = np.asarray(cut, dtype=float)
    values = np.asarray(values, dtype=float)
    at = np.searchsorted(edges, values, side="right") - 1
    at[values == edges[-1]] = len(edges) - 2  # the last bin is closed
    at[(at < 0) | (at > len(edges) - 2) | np.isnan(values)] = -1
    # index -1 of the lookup (its last entry, -1): a row in no bin
    return np.where(at >= 0, at, len(edges) - 1)


def _stamps(columns: Sequence[str], sums: np.ndarray, key: str | None) -> dict[str, int] | None:
    return None if key is None else {c: int(t) for c, t in zip(columns, sums)}
