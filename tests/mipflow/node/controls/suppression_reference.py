"""The secondary-suppression search as first written (ADR 0031): one SVD per pass of the relations
over the hidden cells (the row-space test).  Kept as a reference only: the product code
(:mod:`mipflow.node.controls.suppression`) decomposes the null space of the relations once and
tests the released cells' rows of it, and must hide exactly the same cells."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from mipflow.exceptions import DisclosureError

TOLERANCE = 1e-9


def _system(equations: np.ndarray, hidden: np.ndarray) -> tuple[np.ndarray, ...]:
    cols = np.flatnonzero(hidden)
    rows = np.flatnonzero(np.any(equations[:, cols] != 0, axis=1)) if cols.size else np.zeros(0, dtype=int)
    sub = equations[np.ix_(rows, cols)]
    if sub.size == 0:
        return np.zeros((len(rows), 0)), np.zeros(0), np.zeros((0, len(cols))), cols, rows
    u, s, vt = np.linalg.svd(sub, full_matrices=False)
    rank = int(np.sum(s > max(sub.shape) * np.finfo(float).eps * 16 * s[0]))
    return u[:, :rank], s[:rank], vt[:rank], cols, rows


def _determined(system: tuple[np.ndarray, ...], n: int) -> np.ndarray:
    _, _, vt, cols, _ = system
    out = np.zeros(n, dtype=bool)
    out[cols] = np.sum(vt ** 2, axis=0) >= 1.0 - TOLERANCE
    return out


def _in_range(equations: np.ndarray, system: tuple[np.ndarray, ...]) -> np.ndarray:
    u, _, _, _, rows = system
    off = np.ones(len(equations), dtype=bool)
    off[rows] = False
    inside = equations[rows]
    residual = np.sum((inside - u @ (u.T @ inside)) ** 2, axis=0) + np.sum(equations[off] ** 2, axis=0)
    scale = np.maximum(1.0, np.abs(equations).max(axis=0, initial=0.0))
    return np.sqrt(residual) <= TOLERANCE * 1e3 * scale


def _freeing(equations, system, in_range, target, candidates) -> np.ndarray:
    u, s, vt, cols, rows = system
    at = int(np.searchsorted(cols, target))
    w0 = u @ (vt[:, at] / s)
    a = equations[np.ix_(rows, candidates)]
    scale = np.maximum(1.0, np.abs(equations[:, candidates]).max(axis=0, initial=0.0))
    return in_range[candidates] & (np.abs(w0 @ a) > TOLERANCE * 1e3 * scale)


def _cost(value: float) -> tuple[int, float]:
    return (1, 0.0) if value == 0 else (0, float(value))


def suppress(values: Sequence[float], equations: np.ndarray, tab: int, already=None, *, batch: bool = False,
             unreleased=None, sensitive=None) -> np.ndarray:
    cells = np.asarray(values, dtype=float)
    eqs = np.asarray(equations, dtype=float)
    withheld = np.zeros(len(cells), dtype=bool) if already is None else np.asarray(already, dtype=bool)
    kept = np.zeros(len(cells), dtype=bool) if unreleased is None else np.asarray(unreleased, dtype=bool)
    primary = ((cells > 0) & (cells < tab) & ~withheld)
    if sensitive is not None:
        primary |= np.asarray(sensitive, dtype=bool) & ~withheld
    hidden = primary | withheld | kept
    touches = eqs != 0
    while True:
        system = _system(eqs, hidden) if np.any(hidden) else None
        fixed = np.flatnonzero(_determined(system, len(cells)) & primary) if system is not None else np.zeros(0, int)
        if fixed.size == 0:
            return hidden
        chosen_now: list[int] = []
        in_range = _in_range(eqs, system)
        for target in (fixed if batch else fixed[:1]):
            target = int(target)
            if batch and chosen_now and _touches_any(touches, target, chosen_now):
                continue
            chosen = _choose(eqs, touches, hidden, system, in_range, target, cells, tab)
            hidden[chosen] = True
            chosen_now.append(chosen)


def _touches_any(touches, target, cells) -> bool:
    rows = touches[:, target]
    return bool(np.any(touches[np.ix_(rows, cells)]))


def _choose(eqs, touches, hidden, system, in_range, target, cells, tab) -> int:
    own = _neighbours(touches, np.array([target]), hidden)
    frontier = _neighbours(touches, np.flatnonzero(hidden), hidden)
    if own.size == 0 and frontier.size == 0:
        raise DisclosureError(f"a cell under nfilter_tab ({tab}) follows from the released margins whatever "
                              "is suppressed: use coarser bins or fewer grouping variables", control="nfilter_tab")
    for pool in (own, frontier):
        if pool.size:
            frees = pool[_freeing(eqs, system, in_range, target, pool)]
            if frees.size:
                return int(min(frees, key=lambda i: (_cost(cells[i]), i)))
    pool = own if own.size else frontier
    return int(min(pool, key=lambda i: (_cost(cells[i]), i)))


def _neighbours(touches, cells, hidden) -> np.ndarray:
    rows = np.any(touches[:, cells], axis=1)
    return np.flatnonzero(np.any(touches[rows], axis=0) & ~hidden)
