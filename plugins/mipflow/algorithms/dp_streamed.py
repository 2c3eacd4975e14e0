"""Noisy releases from rows left on disk, a chunk at a time (ADR 0062, amendment 17).

A node with differential privacy (ADR 0015, 0021) or a step in explore mode (ADR 0032) adds noise to
exact sums taken with ``math.fsum``.  For an algorithm whose release declares ``streams``
(:class:`mipflow.algorithms.dp_release.DPRelease`) the node keeps the selection on disk
(:class:`mipflow.node.query.snapshot_rows.SnapshotRows`) and the release reads it here: each chunk's
values clamped, centred and scaled by the frame path's own elementwise operations, their products
formed as the frame's columns' are, and summed exactly (:class:`mipflow.algorithms.exact_sum.ExactSum`,
rounded once as ``fsum``): the same floats, so the same noise (keyed or drawn in the same order) gives
the same release.  Counts are integers (any chunking gives the frame's).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mipflow.algorithms.exact_sum import ExactSum

__all__ = ["CHUNK_ROWS", "bounded_columns_on_disk", "dataset_parts", "complete_rows", "clamped_sums"]

#: Rows read at a time by a noisy release from rows on disk.
CHUNK_ROWS = 65_536


def _chunks(source: Any, codes: Sequence[str], chunk: int | None = None):
    n = len(source)
    if not n:
        return
    chunk = int(chunk or CHUNK_ROWS)  # read when called: a test may set CHUNK_ROWS
    next_rows = source.reader(list(codes))
    for start in range(0, n, chunk):
        yield next_rows(min(chunk, n - start))


def bounded_columns_on_disk(source: Any, columns: Sequence[tuple[str, str]], model: Any, algorithm: str,
                            chunk: int | None = None) -> Any:
    """:func:`mipflow.algorithms.dp_release.bounded_columns` of rows on disk: the same centres, halves,
    groups and clamped ranges, no row kept (``values`` of shape ``(0, k)``) and the exact sums of
    :func:`~mipflow.algorithms.dp_release.released_pairs`' products (``exact``), a chunk at a time.

    Raises
    ------
    DisclosureError
        As the frame path: ``dp_unsupported`` for a numerical variable without declared bounds (the
        first in ``columns``' order) and for a missing numerical value.
    """
    from mipflow.algorithms.dp_release import BoundedColumns, declared_bounds, released_pairs
    from mipflow.exceptions import DisclosureError

    k = len(columns)
    centre, half, group = np.zeros(k), np.ones(k), []
    clamped: dict[str, list[float]] = {}
    bounds: list[tuple[float, float] | None] = []
    tables: list[np.ndarray | None] = []
    for j, (name, kind) in enumerate(columns):
        if kind == "numerical":
            lo, hi = declared_bounds(model, name, algorithm)
            clamped[name] = [lo, hi]
            centre[j], half[j] = (lo + hi) / 2.0, (hi - lo) / 2.0
            bounds.append((lo, hi))
            tables.append(None)
            group.append("")
        else:
            level = name[len(kind) + 1:-1]  # "code[level]"
            stored = [str(s) for s in source.levels_of(kind)]
            # category_codes(...) == level, a missing value (code -1, the table's last entry) never equal
            tables.append(np.array([s == level for s in stored] + [False], dtype=bool))
            bounds.append(None)
            group.append(kind)
    codes = list(dict.fromkeys(name if kind == "numerical" else kind for name, kind in columns))
    pairs = released_pairs(group)
    sums = [ExactSum() for _ in pairs]
    for raw in _chunks(source, codes, chunk):
        by_code = dict(zip(codes, raw))
        m = len(raw[0]) if raw else 0
        values = np.empty((m, k))
        for j, (name, kind) in enumerate(columns):
            if bounds[j] is not None:
                lo, hi = bounds[j]
                x = np.clip(by_code[name], lo, hi)
                values[:, j] = (x - centre[j]) / half[j] if half[j] > 0 else 0.0
            else:
                table, stored = tables[j], by_code[kind]
                values[:, j] = table[np.where(stored >= 0, stored, len(table) - 1)]
        if np.isnan(values).any():
            raise DisclosureError("a noisy release needs complete-case rows", control="dp_unsupported")
        w = np.column_stack([np.ones(m), values])
        for total, (j, l) in zip(sums, pairs):
            total.add(w[:, j] * w[:, l])
    return BoundedColumns(tuple(c for c, _ in columns), np.empty((0, k)), centre, half, tuple(group), clamped,
                          exact=tuple(total.value for total in sums))


def dataset_parts(source: Any, dataset: str, parts: Sequence[str]) -> dict[str, Any]:
    """Each of ``parts`` (dataset names) as the rows on disk whose ``dataset`` is it (``labels == part``
    of the frame's ``dataset`` as str): one narrowing pass each, no row when the selection holds none."""
    stored = [str(s) for s in (source.levels_of(dataset) or ())]
    out = {}
    for part in parts:
        table = np.array([s == part for s in stored] + [False], dtype=bool)
        out[part] = source.narrowed([dataset], lambda v, t=table: t[np.where(v[0] >= 0, v[0], len(t) - 1)])
    return out


def complete_rows(source: Any, codes: Sequence[str], model: Any) -> Any:
    """The rows on disk holding a value of every one of ``codes`` (``dropna(subset=codes)``)."""
    codes = list(codes)

    def complete(values: list[np.ndarray]) -> np.ndarray:
        keep = np.ones(len(values[0]) if values else 0, dtype=bool)
        for code, v in zip(codes, values):
            keep &= (v >= 0) if model.variable(code).is_categorical else ~np.isnan(v)
        return keep

    return source.narrowed(codes, complete)


def clamped_sums(source: Any, code: str, lo: float, hi: float, chunk: int | None = None) -> tuple[int, float, float]:
    """``(present rows, fsum(c), fsum(c * c))`` with ``c = clip(value, lo, hi) - (lo + hi) / 2`` over the
    present values of the numerical column ``code`` of rows on disk: the frame path's numbers, bit for bit."""
    middle = (lo + hi) / 2.0
    present, first, second = 0, ExactSum(), ExactSum()
    for (values,) in _chunks(source, [code], chunk):
        c = np.clip(values[~np.isnan(values)], lo, hi) - middle
        present += len(c)
        first.add(c)
        second.add(c * c)
    return present, first.value, second.value
