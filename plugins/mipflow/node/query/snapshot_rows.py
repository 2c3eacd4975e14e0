"""A selection of a columnar snapshot's rows left on disk, read a block at a time (ADR 0049, amended).

:func:`mipflow.node.query.snapshot.select_columns` copies the chosen columns of the selected rows into
a frame: ``8 p`` bytes a row for ``p`` numerical variables, 16 more for the ledger's keys, the whole
selection at once (1.1 GB for 11 columns at 10M rows).  An algorithm whose local step only sums over
its rows (:func:`mipflow.algorithms.moments.streamed_column_moments`) needs none of that at once:
:class:`SnapshotRows` keeps the selection as a bit per snapshot row and reads the chosen columns'
files a block of :data:`READ_ROWS` rows at a time (plain reads, no memory map: mapped pages would count
as the node's memory while the mapping lives).

What the node keeps of a selection here: the packed mask (1 bit a snapshot row, none when every row
is selected) and the file names.  The ledger's keys are read block by block too
(:meth:`SnapshotRows.sorted_keys`, :meth:`SnapshotRows.key_fingerprint`): the cohorts need only each
key column sorted, which the snapshot holds, and a fingerprint of it in the rows' order.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mipflow.node.query.snapshot import Snapshot

__all__ = ["KEY_COLUMNS", "READ_ROWS", "SnapshotRows"]

#: The snapshot's key columns a :meth:`SnapshotRows.reader` also reads (the ledger's row and patient keys).
KEY_COLUMNS = ("row_key", "pid_key")

#: Snapshot rows read from a column file at a time (a multiple of 8: the packed mask's bytes).
READ_ROWS = 262_144


def _open_npy(path: Any) -> tuple[Any, np.dtype, int]:
    """A ``.npy`` file opened at its first value: ``(file, dtype, values)``."""
    handle = open(path, "rb")
    try:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
    except BaseException:
        handle.close()
        raise
    if len(shape) != 1 or fortran:
        handle.close()
        raise ValueError("a snapshot column is one-dimensional")
    return handle, dtype, int(shape[0])


class SnapshotRows:
    """The rows of a snapshot a request selects, complete on ``columns``: numerical ones (float64) and
    categorical ones (int32 codes into the snapshot's level table, whose levels as the data model's
    enumeration codes are :meth:`levels_of`).

    Parameters
    ----------
    snapshot : Snapshot
        The snapshot (its folder stays while the selection is used: a newer snapshot is written
        under another name, and a selection is used only at the data version it was read at).
    files : dict of str to str
        Variable code -> the column's file stem.
    mask : numpy.ndarray of bool, shape (snapshot.rows,), or None
        The rows selected (None: every row).
    levels : dict of str to sequence of str, optional
        Categorical variable code -> its snapshot levels as enumeration codes, in the order of the
        codes its file holds (the SQL read's conversion of the stored values, every one an
        enumeration code of the variable).  A variable not named here is numerical.
    """

    def __init__(self, snapshot: Snapshot, files: dict[str, str], mask: np.ndarray | None,
                 levels: dict[str, Sequence[str]] | None = None) -> None:
        self.snapshot = snapshot
        self.files = dict(files)
        self._levels = {code: tuple(values) for code, values in (levels or {}).items()}
        self.total = snapshot.rows
        if mask is not None and bool(mask.all()):
            mask = None
        self.count = self.total if mask is None else int(np.count_nonzero(mask))
        self._packed = None if mask is None else np.packbits(mask)
        #: a cross-validated step's fold keys (uint64, one a selected row, in their order), set by the node
        #: (:mod:`mipflow.node.controls.folds`, ADR 0026); None otherwise (a narrowed selection has none)
        self.fold_keys: np.ndarray | None = None

    def __len__(self) -> int:
        return self.count

    @property
    def columns(self) -> list[str]:
        return list(self.files)

    @property
    def nbytes(self) -> int:
        """Memory the selection holds (what a node's selection cache counts)."""
        folds = 0 if self.fold_keys is None else int(self.fold_keys.nbytes)
        return folds + (0 if self._packed is None else int(self._packed.nbytes))

    def levels_of(self, code: str) -> tuple[str, ...] | None:
        """A categorical variable's snapshot levels as enumeration codes (position = the code its
        column's values hold); None for a numerical variable."""
        return self._levels.get(code)

    def _mask_of(self, start: int, stop: int) -> np.ndarray | None:
        if self._packed is None:
            return None
        return np.unpackbits(self._packed[start // 8:(stop + 7) // 8], count=stop - start).view(bool)

    def mask(self) -> np.ndarray:
        """The rows selected, one bool a snapshot row (a new array)."""
        if self._packed is None:
            return np.ones(self.total, dtype=bool)
        return np.unpackbits(self._packed, count=self.total).view(bool)

    def _blocks(self, stem: str) -> Iterator[tuple[int, np.ndarray]]:
        """``(first snapshot row, selected values)`` of a column file, block by block (each block a new
        array)."""
        handle, dtype, rows = _open_npy(self.snapshot.path / f"{stem}.npy")
        with handle:
            if rows != self.total:
                raise ValueError("a snapshot column of another length")
            for start in range(0, rows, READ_ROWS):
                count = min(READ_ROWS, rows - start)
                values = np.fromfile(handle, dtype=dtype, count=count)
                if len(values) != count:
                    raise ValueError("a snapshot column file is short")
                selected = self._mask_of(start, start + count)
                yield start, values if selected is None else values[selected]

    def reader(self, codes: Sequence[str]) -> Callable[[int], list[np.ndarray]]:
        """A pass over the selected rows: a function giving the next ``m`` values of each of ``codes``
        (float64 arrays for numerical variables, :class:`mipflow.algorithms.moments.ColumnSource`;
        int32 level codes for categorical ones, :meth:`levels_of`; uint64 keys for :data:`KEY_COLUMNS`
        not among the selection's variables).  The arrays it gives are valid until its next call (their
        memory is used again)."""
        if any(code not in self.files and code not in KEY_COLUMNS for code in codes):
            raise KeyError("a column the selection does not hold")
        opened = [_open_npy(self.snapshot.path / f"{self.files.get(code, code)}.npy") for code in codes]
        wanted = [np.dtype(np.int32) if code in self._levels else
                  np.dtype(np.uint64) if code not in self.files else np.dtype(np.float64) for code in codes]
        for (_, dtype, rows), want in zip(opened, wanted):
            if rows != self.total or dtype != want:
                for handle, _, _ in opened:
                    handle.close()
                raise ValueError("a snapshot column of another length or type")
        handles = [handle for handle, _, _ in opened]
        buffers: list[np.ndarray] = [np.empty(0, dtype=want) for want in wanted]
        pending = [np.zeros(0, dtype=want) for want in wanted]
        position = [0]  # snapshot rows read so far

        def read_into(j: int, count: int) -> np.ndarray:
            if len(buffers[j]) < count:
                buffers[j] = np.empty(count, dtype=wanted[j])
            out = buffers[j][:count]
            if handles[j].readinto(memoryview(out).cast("B")) != out.nbytes:
                raise ValueError("a snapshot column file is short")
            return out

        def next_rows(m: int) -> list[np.ndarray]:
            if m < 0:
                raise ValueError("a negative number of rows")
            if self._packed is None:  # every row: the next m values of each file, read in place
                if position[0] + m > self.total:
                    raise ValueError("more rows asked for than the selection holds")
                position[0] += m
                out = [read_into(j, m) for j in range(len(codes))]
            else:
                while pending and len(pending[0]) < m:
                    if position[0] >= self.total:
                        raise ValueError("more rows asked for than the selection holds")
                    start = position[0]
                    count = min(READ_ROWS, self.total - start)
                    selected = self._mask_of(start, start + count)
                    position[0] += count
                    for j in range(len(codes)):
                        values = read_into(j, count)[selected]  # a new array: the buffer is read again
                        pending[j] = np.concatenate([pending[j], values]) if len(pending[j]) else values
                out = []
                for j in range(len(pending)):
                    out.append(pending[j][:m])
                    pending[j] = pending[j][m:]
            if position[0] >= self.total and not (pending and len(pending[0])):
                for handle in handles:
                    handle.close()
            return out

        return next_rows

    def narrowed(self, codes: Sequence[str], keep: Callable[[list[np.ndarray]], np.ndarray]) -> "SnapshotRows":
        """The selected rows where ``keep`` holds, as a new selection of the same files: ``keep`` is given
        the values of ``codes`` (as :meth:`reader` gives them) for the selected rows of a block of the
        snapshot and returns one bool for each.  One pass; memory: a block, and the new packed mask (a bit
        a snapshot row)."""
        parts: list[np.ndarray] = []
        count_kept = 0
        next_rows = self.reader(list(codes)) if codes else None
        for start in range(0, self.total, READ_ROWS):
            count = min(READ_ROWS, self.total - start)
            selected = self._mask_of(start, start + count)
            chosen = count if selected is None else int(np.count_nonzero(selected))
            values = next_rows(chosen) if next_rows is not None else []
            kept = np.asarray(keep(values), dtype=bool)
            if kept.shape != (chosen,):
                raise ValueError("a row condition of another length")
            count_kept += int(np.count_nonzero(kept))
            if selected is None:
                block = kept
            else:
                block = np.zeros(count, dtype=bool)
                block[selected] = kept
            parts.append(np.packbits(block))  # READ_ROWS is a multiple of 8: the parts' bits join
        out = SnapshotRows.__new__(SnapshotRows)
        out.snapshot, out.files, out._levels, out.total = self.snapshot, dict(self.files), dict(self._levels), self.total
        packed = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)
        out.count = count_kept
        out._packed = None if out.count == self.total else packed
        out.fold_keys = None
        return out

    def values(self, code: str) -> np.ndarray:
        """A whole column at the selected rows (8 bytes a row: for tests and small selections)."""
        return np.array(self.reader([code])(self.count)[0])

    def keys(self, name: str) -> np.ndarray:
        """A key column (``row_key`` or ``pid_key``) at the selected rows, in their order."""
        parts = [values for _, values in self._blocks(name)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)

    def key_fingerprint(self, name: str) -> tuple[int, int, int, int]:
        """:func:`mipflow.node.query.rowkeys.fingerprint` of :meth:`keys`, without holding them."""
        from mipflow.node.query.rowkeys import fingerprint

        count, total, xor, squares = 0, 0, 0, 0
        for _, values in self._blocks(name):
            c, s, x, q = fingerprint(values)
            count, total, xor, squares = count + c, (total + s) % 2 ** 64, xor ^ x, (squares + q) % 2 ** 64
        return count, total, xor, squares

    def stamps(self, key: str) -> dict[str, int]:
        """The selection's value stamps, ``column -> stamp`` of each of its columns
        (:mod:`mipflow.node.query.stamps`), a block at a time: the numbers
        :func:`~mipflow.node.query.stamps.frame_stamps` gives for the same rows read into a frame (its
        row keys the snapshot's ``row_key``, its categories their enumeration codes)."""
        return self.masked_stamps(key, [None], list(self.files))[0]

    def masked_stamps(self, key: str, masks: Sequence[np.ndarray | None], columns: Sequence[str]
                      ) -> tuple[dict[str, int], ...]:
        """Per mask (a bool a selected row, in their order; None: every one), ``column -> stamp`` of each
        of ``columns``: :func:`~mipflow.node.query.stamps.frame_stamps` of the same rows and masks read
        into a frame, a block at a time."""
        return self.masked_values(key, masks, columns)[0]

    def masked_values(self, key: str, masks: Sequence[np.ndarray | None], columns: Sequence[str]
                      ) -> tuple[tuple[dict[str, int], ...], tuple[dict[str, int], ...], dict]:
        """:meth:`masked_stamps`, each mask's patient stamps and the selected rows' value digests of each
        column over the union of the masks: :func:`~mipflow.node.query.stamps.frame_values` of the same
        rows read into a frame, a block at a time (4 bytes a row and column, 8 a row for the keys)."""
        from mipflow.node.query.stamps import (
            cell_hashes, code_table, column_salt, digests_of, first_of_sorted, patient_salt, stored_bits,
        )

        out: list[dict[str, int]] = [{} for _ in masks]
        by_patient: list[dict[str, int]] = [{} for _ in masks]
        union = None if any(m is None for m in masks) else np.logical_or.reduce([np.asarray(m) for m in masks])
        cells: dict = {}
        order: np.ndarray | None = None  # the union's rows are the same in every column: sorted once
        ordered_keys = np.zeros(0, np.uint64)
        for code in columns:
            table = code_table(self.levels_of(code), key)
            salt, psalt, done = column_salt(key, code), patient_salt(key, code), 0
            totals, ptotals = [0] * len(masks), [0] * len(masks)
            kept_keys: list[np.ndarray] = []
            kept_digests: list[np.ndarray] = []
            for (_, keys), (_, pids), (_, values) in zip(self._blocks("row_key"), self._blocks("pid_key"),
                                                         self._blocks(self.files[code]), strict=True):
                bits = stored_bits(values, table, key)
                hashes = cell_hashes(keys, bits, salt)
                patient = cell_hashes(pids, bits, psalt)
                for i, mask in enumerate(masks):
                    part = slice(None) if mask is None else mask[done:done + len(hashes)]
                    totals[i] = (totals[i] + int(np.add.reduce(hashes[part], dtype=np.uint64))) % 2 ** 64
                    ptotals[i] = (ptotals[i] + int(np.add.reduce(patient[part], dtype=np.uint64))) % 2 ** 64
                inside = slice(None) if union is None else union[done:done + len(hashes)]
                if order is None:  # the first column's: the union's keys are the same in every column
                    kept_keys.append(np.asarray(keys, dtype=np.uint64)[inside])
                kept_digests.append(digests_of(hashes[inside]))
                done += len(hashes)
            for stamps, patients, total, ptotal in zip(out, by_patient, totals, ptotals):
                stamps[code], patients[code] = total, ptotal
            if order is None:
                union_keys = np.concatenate(kept_keys) if kept_keys else np.zeros(0, np.uint64)
                order = first_of_sorted(union_keys)
                ordered_keys = union_keys[order]
                ordered_keys.flags.writeable = False  # shared by every column's cells
            digests = np.concatenate(kept_digests) if kept_digests else np.zeros(0, np.uint32)
            cells[code] = (ordered_keys, digests[order])  # sorted_cells(union_keys, digests, order)
        return tuple(out), tuple(by_patient), cells

    def sorted_keys(self, name: str) -> np.ndarray | None:
        """The selected rows' keys of ``name`` sorted (repeats kept), from the snapshot's key order
        (a gather, block by block); None when the snapshot has no sorted keys."""
        if not self.snapshot.meta.get("sorted_keys"):
            return None
        mask = None if self._packed is None else self.mask()
        out = np.empty(self.count, dtype=np.uint64)
        filled = 0
        ordered_file, ordered_type, rows = _open_npy(self.snapshot.path / f"{name}_sorted.npy")
        order_file, order_type, order_rows = _open_npy(self.snapshot.path / f"{name}_order.npy")
        with ordered_file, order_file:
            if rows != self.total or order_rows != self.total:
                raise ValueError("a snapshot key file of another length")
            for start in range(0, rows, READ_ROWS):
                count = min(READ_ROWS, rows - start)
                ordered = np.fromfile(ordered_file, dtype=ordered_type, count=count)
                if mask is not None:
                    ordered = ordered[mask[np.fromfile(order_file, dtype=order_type, count=count)]]
                out[filled:filled + len(ordered)] = ordered
                filled += len(ordered)
        if filled != self.count:
            raise ValueError("the snapshot's key order does not match its rows")
        return out
