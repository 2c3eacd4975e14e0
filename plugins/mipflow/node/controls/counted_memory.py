"""The sets of rows earlier releases counted, with their rows' times: the reverse order of ADR 0059's count rule.

:mod:`mipflow.node.controls.pooled_counts` refuses a count that comes near a cell of a pooled survival release this
node answered (a window of time, a level of the event variable, a group of the curves).  The other order is the
same subtraction: B and C release a histogram of ``followup_days`` on their whole cohorts (its first bin ``[0,
40.6)`` holds their leavings by day 40), then Kaplan-Meier over ``{A, B, C}`` is answered on pooled bins one of
whose ends is day 40: pooled leavings by day 40 less B's and C's first bins is A's own (sixteenth review, hole 2).
So a pooled step must see what earlier releases counted **as the count rule would have read them**: every set of
rows a release lets anyone form (:func:`~mipflow.node.controls.pooled_counts.counted_sets`: its cohorts, where each
variable is present, each level of each nominal one, its declared groups) and, for every numerical variable the
release uses that could be a survival time (a declared ``maxValue``: it has a fine grid), each row's value on that
grid -- a histogram, a filter or a description of the variable may split the set at any point, so the set is taken
as split at every point, as the count rule takes a later release.

:class:`CountedMemory` keeps them (``HOME/counted_sets.sqlite``), after every release but a survival one (those are
the window memory's) and an explore one (keyed noise, ADR 0059); the pooled step compares each with its cells
(:func:`mipflow.node.controls.pooled_windows._decline_near_counts`: declined, per-node bins are answered).

Bounded like the ledger: by the *distinct* sets released (a set is kept once, by its rows, whatever releases it
again; a release already remembered, the same rows and request, is not read again), each as its sorted keys (the
ledger's encoding, about 6 bytes a row) and, per time-like variable, one 4-byte grid index a row (compressed);
never evicted (a memory that forgets lets the refused order through after enough other releases).  Each set keeps
the consent epoch it was first released under and is seen through :class:`~mipflow.node.controls.epochs.EpochView`
(its rows still held), as every memory.  Nothing here leaves the node.
"""
from __future__ import annotations

import hashlib
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mipflow.node.controls.epochs import ROWS, EpochView
from mipflow.node.controls.keycodec import decode_keys, encode_keys
from mipflow.node.controls.sqlite_state import SqliteState

#: The file of the remembered counted sets in the node home.
COUNTED_FILE = "counted_sets.sqlite"
#: The grid index of a row without a value (in no window).
MISSING = -1


class CountedMemory(SqliteState):
    """Counted sets by data model: sorted row keys, the epoch, and per time-like variable each row's grid index."""

    def __init__(self, root: str | Path) -> None:
        super().__init__(Path(root) / COUNTED_FILE)

    @staticmethod
    def _tables(conn: Any) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS sets (data_model TEXT NOT NULL, digest TEXT NOT NULL, "
                     "keys BLOB NOT NULL, epoch TEXT, PRIMARY KEY (data_model, digest))")
        conn.execute("CREATE TABLE IF NOT EXISTS times (data_model TEXT NOT NULL, digest TEXT NOT NULL, "
                     "variable TEXT NOT NULL, grid BLOB NOT NULL, PRIMARY KEY (data_model, digest, variable))")
        conn.execute("CREATE TABLE IF NOT EXISTS releases (ident TEXT PRIMARY KEY)")

    def seen(self, ident: str) -> bool:
        """Whether the release ``ident`` (its rows and request) was remembered already."""
        with self._lock, self._connect() as conn:
            self._tables(conn)
            return conn.execute("SELECT 1 FROM releases WHERE ident = ?", (ident,)).fetchone() is not None

    def remember(self, ident: str, data_model: str, sets: list[tuple[np.ndarray, dict[str, np.ndarray]]],
                 epoch: str = "") -> None:
        """Remember a release's counted sets: each as its sorted unique keys and, per time-like variable, the grid
        index of each key's value (:data:`MISSING`: none); a set remembered before keeps its epoch and times."""
        with self._lock, self._connect() as conn:
            self._tables(conn)
            for keys, grids in sets:
                blob = encode_keys(keys)
                digest = hashlib.sha256(blob).hexdigest()
                conn.execute("INSERT OR IGNORE INTO sets VALUES (?, ?, ?, ?)", (data_model, digest, blob, epoch))
                for variable, grid in grids.items():
                    conn.execute("INSERT OR IGNORE INTO times VALUES (?, ?, ?, ?)",
                                 (data_model, digest, variable,
                                  zlib.compress(np.ascontiguousarray(grid, dtype="<i4").tobytes(), 1)))
            conn.execute("INSERT OR IGNORE INTO releases VALUES (?)", (ident,))

    def sets(self, data_model: str, variable: str, fine: np.ndarray, view: EpochView | None = None
             ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Every set counted under ``data_model``: its keys (those still held, through the epoch ``view``) and,
        when its release used ``variable``, their times on the grid ``fine`` (NaN: no value); else None."""
        with self._lock, self._connect() as conn:
            self._tables(conn)
            found = conn.execute("SELECT s.keys, s.epoch, t.grid FROM sets s LEFT JOIN times t ON t.data_model = "
                                 "s.data_model AND t.digest = s.digest AND t.variable = ? WHERE s.data_model = ?",
                                 (variable, data_model)).fetchall()
        for blob, epoch, grid in found:
            keys = decode_keys(blob)
            times = None
            if grid is not None:
                index = np.frombuffer(zlib.decompress(grid), dtype="<i4").astype(np.int64)
                times = np.where(index >= 0, fine[np.clip(index, 0, len(fine) - 1)], np.nan)
            kept = None if view is None else view.held_mask(keys, data_model, ROWS, epoch)
            if kept is not None:
                keys, times = keys[kept], None if times is None else times[kept]
            if len(keys):
                yield keys, times


def counted_memory(root: str | Path) -> CountedMemory:
    """The node home's counted-set memory (one object per home and process)."""
    return CountedMemory.of_home(root)


def _time_grids(work: Any) -> dict[str, np.ndarray]:
    """Per numerical variable of the request with a fine grid (a declared ``maxValue``: it could be a survival
    time), the grid index of each of the step's rows' values (:data:`MISSING`: none)."""
    from mipflow.algorithms.survival import fine_grid
    from mipflow.exceptions import MipflowError
    from mipflow.node.controls.pooled_counts import _column

    out = {}
    for code in work.variables:
        try:
            variable = work.model.variable(code)
            if variable.is_categorical:
                continue
            fine = fine_grid(variable)
            values = np.asarray(_column(work.data, code, variable), dtype=float)
        except (KeyError, ValueError, MipflowError):
            continue
        index = np.minimum(np.searchsorted(fine, values, side="left"), len(fine) - 1)
        out[code] = np.where(np.isnan(values), MISSING, index).astype(np.int64)
    return out


def _ident(request: Any, work: Any) -> str:
    """A release's identity for the memory: its rows, algorithm, variables and declared groups."""
    h = hashlib.sha256(repr((work.cohorts.data_model, work.cohorts.digest, request.algorithm,
                             sorted(work.variables))).encode())
    release = getattr(work, "groups", None)
    for group in () if release is None else release.groups:
        h.update(np.ascontiguousarray(group.rows, dtype="<u8").tobytes())
    return h.hexdigest()


def remember_counted_sets(request: Any, context: Any, work: Any) -> None:
    """After a release other than a survival or explore one: its counted sets and their rows' times."""
    from mipflow.node.controls.pooled_bins import SURVIVAL_ALGORITHMS, epoch_view
    from mipflow.node.controls.pooled_counts import counted_sets_unique

    if work.explore is not None or work.cohorts is None or request.algorithm in SURVIVAL_ALGORITHMS:
        return
    memory = counted_memory(context.home.root)
    ident = _ident(request, work)
    if memory.seen(ident):
        return
    from mipflow.node.controls.pooled_counts import step_order

    order, _ = step_order(work)
    grids = _time_grids(work) if order is not None else {}
    if grids:
        sort = np.argsort(order, kind="stable")
        ordered = order[sort]
    sets = []
    for _, _, _, keys in counted_sets_unique(request, work):  # each set's sorted unique keys
        timed = {}
        if grids and len(keys):
            at = np.minimum(np.searchsorted(ordered, keys), len(ordered) - 1)
            found = ordered[at] == keys
            rows = sort[at]
            timed = {code: np.where(found, grid[rows], MISSING) for code, grid in grids.items()}
        sets.append((keys, timed))
    memory.remember(ident, work.cohorts.data_model, sets, epoch=epoch_view(context, work).epoch)
