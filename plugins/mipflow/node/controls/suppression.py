"""Consistent (secondary) cell suppression within one released result (issue 14.3, ADR 0031).

A released result often holds cells *and* their sums: a grouped histogram releases the overall
bins and the bins of every level of each grouping variable, and every step reply carries the
node's row count.  Suppressing each small cell on its own leaves it recoverable by subtraction
(the overall bin minus the released group bins).  Here a result is described as a linear system:

* ``values``: the cells, flattened;
* ``equations``: a matrix ``A`` with one row per linear relation the requester knows holds
  between the cells, ``A @ values = b``, where ``b`` is known to the requester (zero, or a released
  margin such as the row count).

A suppressed cell is *determined* when it follows from the released cells and the equations:
its unit vector lies in the row space of ``A`` restricted to the suppressed cells; equivalently
(what is computed), its row of a basis ``K`` of the null space of ``A`` lies in the span of the
released cells' rows of ``K``.  ``K`` is decomposed once per result; each pass then decomposes
only ``K``'s released rows (released cells x nullity), far smaller than the relations over the
hidden cells on a study's family, where most cells are never released (ADR 0035).  Primary
suppression hides every cell in ``(0, nfilter_tab)``; secondary suppression then hides further
cells, cheapest first (small positive counts before zeros), until no primary cell is determined.
This is the linear (exact recovery) protection of tau-ARGUS / sdcTable; interval bounds from
non-negativity and integrality are not computed (ADR 0031 says what that leaves open).

Everything here is a pure function of the cells, the table's structure and the threshold.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mipflow.exceptions import DisclosureError

#: Numerical zero of the tests below.  The relations have small integer coefficients, so the
#: quantities they compare are rationals with small denominators: 0 (or 1) exactly, or far from it.
TOLERANCE = 1e-9


def null_basis(equations: np.ndarray) -> np.ndarray:
    """An orthonormal basis ``K`` (shape ``(n, d)``) of ``{x : A x = 0}``: the ways the cells can
    move while every relation keeps its right-hand side."""
    m, n = equations.shape
    if m == 0 or not np.any(equations):
        return np.eye(n)
    _, s, vt = np.linalg.svd(equations, full_matrices=m < n)
    rank = int(np.sum(s > max(equations.shape) * np.finfo(float).eps * 16 * s[0]))
    return vt[rank:].T.copy()


def _system(null: np.ndarray, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Economy SVD of the null basis' rows at the released cells: ``(u, s, v, released)``.

    The requester knows the true cells ``x`` up to ``x + K z`` with ``K[released] z = 0``; ``s`` is
    cut at the rank, ``u`` (``len(released) x rank``) and ``v`` (``d x rank``) with it.
    """
    released = np.flatnonzero(~hidden)
    sub = null[released]
    d = null.shape[1]
    if sub.size == 0:
        return np.zeros((len(released), 0)), np.zeros(0), np.zeros((d, 0)), released
    u, s, vt = np.linalg.svd(sub, full_matrices=False)
    rank = int(np.sum(s > max(sub.shape) * np.finfo(float).eps * 16 * s[0]))
    return u[:, :rank], s[:rank], vt[:rank].T, released


def determined(equations: np.ndarray, suppressed: np.ndarray) -> np.ndarray:
    """Which cells are determined by the released cells and the equations.

    Parameters
    ----------
    equations : numpy.ndarray, shape (m, n)
        Linear relations ``A @ cells = b`` with ``b`` known to the requester.
    suppressed : numpy.ndarray of bool, shape (n,)
        The cells not released.

    Returns
    -------
    numpy.ndarray of bool, shape (n,)
        True for a suppressed cell whose value follows from the released cells, the equations
        and their known right-hand sides; False for every other cell (released cells included).
    """
    hidden = np.asarray(suppressed, dtype=bool)
    if not np.any(hidden):
        return np.zeros(len(hidden), dtype=bool)
    null = null_basis(np.asarray(equations, dtype=float).reshape(-1, len(hidden)))
    return _determined(null, _system(null, hidden), hidden)


def _determined(null: np.ndarray, system: tuple[np.ndarray, ...], hidden: np.ndarray) -> np.ndarray:
    """A hidden cell ``t`` is determined iff ``K[t]`` lies in the span of the released rows of ``K``
    (every move the released cells allow leaves it unchanged)."""
    _, _, v, _ = system
    cols = np.flatnonzero(hidden)
    rows = null[cols]
    residual = rows - (rows @ v) @ v.T
    out = np.zeros(len(hidden), dtype=bool)
    out[cols] = np.sum(residual ** 2, axis=1) <= TOLERANCE
    return out


def _in_range(system: tuple[np.ndarray, ...], n: int) -> np.ndarray:
    """Which released cells no other released cell can stand in for: their row of ``K`` is outside
    the span of the other released rows (leverage 1 in ``K[released]``).  Only hiding such a cell
    can leave a determined cell undetermined."""
    u, _, _, released = system
    out = np.zeros(n, dtype=bool)
    out[released] = np.sum(u ** 2, axis=1) >= 1.0 - TOLERANCE
    return out


def _freeing(null: np.ndarray, system: tuple[np.ndarray, ...], in_range: np.ndarray, target: int,
             candidates: np.ndarray) -> np.ndarray:
    """Which ``candidates``, hidden too, would leave ``target`` (now determined) undetermined.

    ``K[target] = w @ K[released]``; for a candidate of leverage 1 (``in_range``) its weight is the
    same in every such ``w``, and hiding it frees ``target`` iff that weight is nonzero.  The
    minimum-norm ``w`` is ``(K[target] V / S) U'``.
    """
    u, s, v, released = system
    w0 = (null[target] @ v) / s
    at = np.searchsorted(released, candidates)
    return in_range[candidates] & (np.abs(u[at] @ w0) > TOLERANCE * 1e3)


def _cost(value: float) -> tuple[int, float]:
    """Suppress small positive cells first, zeros last (a zero is information too, but rarer to hide)."""
    return (1, 0.0) if value == 0 else (0, float(value))


def suppress(values: Sequence[float], equations: np.ndarray, tab: int,
             already: Sequence[bool] | None = None, *, batch: bool = False,
             unreleased: Sequence[bool] | None = None, sensitive: Sequence[bool] | None = None,
             null: np.ndarray | None = None) -> np.ndarray:
    """The cells to suppress: those in ``(0, tab)`` and enough others that none of them is determined.

    Parameters
    ----------
    values : sequence of number, length n
        The cells (counts).
    equations : numpy.ndarray, shape (m, n)
        The relations the requester knows (see :func:`determined`).
    tab : int
        ``nfilter_tab``: cells in ``(0, tab)`` are sensitive.
    already : sequence of bool, optional
        Cells already withheld (their ``values`` are ignored; they are hidden, never sensitive).
    unreleased : sequence of bool, optional
        Cells never released that are still sensitive: sums the requester can form from released
        cells (a difference of two nested cohorts, an atom of a family; ADR 0035), added to the
        system as cells of their own with the relation that defines them.  They start hidden;
        their ``values`` count, so a small one must not be determined either.
    sensitive : sequence of bool, optional
        Further cells that must not be determined whatever their value (e.g. a cell whose rows
        added or removed since an earlier release are 1 to ``tab - 1``: its new value minus the
        released old one would give them).
    batch : bool
        Free every determined sensitive cell in one pass (one decomposition per pass, each choice
        on the pass's system; a cell next to one chosen in the pass waits for the next pass)
        instead of one cell per pass: far fewer decompositions on large systems (a study's
        family, ADR 0035), possibly a few more hidden cells.  Either way the loop ends only when
        no sensitive cell is determined.
    null : numpy.ndarray, shape (n, d), optional
        :func:`null_basis` of ``equations``, when the caller has it already (several results over
        the same relations).

    Returns
    -------
    numpy.ndarray of bool, shape (n,)
        The suppression pattern.

    Raises
    ------
    DisclosureError
        (``nfilter_tab``) if a sensitive cell stays determined with every cell suppressed, i.e. the
        equations' known right-hand sides alone fix it.  The message carries no data-derived value.
    """
    cells = np.asarray(values, dtype=float)
    eqs = np.asarray(equations, dtype=float)
    withheld = np.zeros(len(cells), dtype=bool) if already is None else np.asarray(already, dtype=bool)
    kept = np.zeros(len(cells), dtype=bool) if unreleased is None else np.asarray(unreleased, dtype=bool)
    primary = ((cells > 0) & (cells < tab) & ~withheld)
    if sensitive is not None:
        primary |= np.asarray(sensitive, dtype=bool) & ~withheld
    hidden = primary | withheld | kept
    if not np.any(hidden):
        return hidden
    eqs = eqs.reshape(-1, len(cells))
    touches = eqs != 0
    if null is None:  # once: every test below is about the released rows of this basis
        null = null_basis(eqs)
    while True:
        system = _system(null, hidden)
        fixed = np.flatnonzero(_determined(null, system, hidden) & primary)
        if fixed.size == 0:
            return hidden
        chosen_now: list[int] = []
        in_range = _in_range(system, len(cells))
        for target in (fixed if batch else fixed[:1]):
            target = int(target)
            if batch and chosen_now and _touches_any(touches, target, chosen_now):
                continue  # the system around it changed this pass: look again on the next one
            chosen = _choose(null, touches, hidden, system, in_range, target, cells, tab)
            hidden[chosen] = True
            chosen_now.append(chosen)


def _touches_any(touches: np.ndarray, target: int, cells: list[int]) -> bool:
    """Whether ``target`` shares an equation with any of ``cells``."""
    rows = touches[:, target]
    return bool(np.any(touches[np.ix_(rows, cells)]))


def _choose(null: np.ndarray, touches: np.ndarray, hidden: np.ndarray, system: tuple[np.ndarray, ...],
            in_range: np.ndarray, target: int, cells: np.ndarray, tab: int) -> int:
    """The released cell to hide for the determined ``target`` (see :func:`suppress`)."""
    own = _neighbours(touches, np.array([target]), hidden)
    frontier = _neighbours(touches, np.flatnonzero(hidden), hidden)
    if own.size == 0 and frontier.size == 0:
        raise DisclosureError(f"a cell under nfilter_tab ({tab}) follows from the released margins whatever "
                              "is suppressed: use coarser bins or fewer grouping variables", control="nfilter_tab")
    for pool in (own, frontier):
        if pool.size:
            frees = pool[_freeing(null, system, in_range, target, pool)]
            if frees.size:
                return int(min(frees, key=lambda i: (_cost(cells[i]), i)))
    # no single cell frees it: hide the cheapest neighbour and look again
    pool = own if own.size else frontier
    return int(min(pool, key=lambda i: (_cost(cells[i]), i)))


def _neighbours(touches: np.ndarray, cells: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """Released cells sharing an equation with any of ``cells``."""
    rows = np.any(touches[:, cells], axis=1)
    return np.flatnonzero(np.any(touches[rows], axis=0) & ~hidden)


# --------------------------------------------------------------------------- grouped histograms


def histogram_equations(n_bins: int, grouping: Sequence[str | None]) -> np.ndarray:
    """The relations between the cells of one node's grouped histogram.

    Parameters
    ----------
    n_bins : int
        Bins per histogram.
    grouping : sequence of str or None
        The grouping variable of each record in release order (None: the overall histogram).

    Returns
    -------
    numpy.ndarray, shape (m, len(grouping) * n_bins)
        Cell ``(r, j)`` (record ``r``, bin ``j``) is column ``r * n_bins + j``.  Per grouping
        variable and bin: its levels' bins sum to the overall bin (complete cases: the levels
        partition the rows); and the overall bins sum to the node's released row count.  Both are
        assumed exact (values outside a declared range, or a level outside the enumerations, would
        only loosen them: assuming them is conservative).
    """
    n = len(grouping) * n_bins
    overall = [r for r, g in enumerate(grouping) if g is None]
    rows: list[np.ndarray] = []
    for o in overall:
        total = np.zeros(n)
        total[o * n_bins:(o + 1) * n_bins] = 1.0
        rows.append(total)
    for var in dict.fromkeys(g for g in grouping if g is not None):
        members = [r for r, g in enumerate(grouping) if g == var]
        for j in range(n_bins):
            eq = np.zeros(n)
            for r in members:
                eq[r * n_bins + j] = 1.0
            for o in overall:
                eq[o * n_bins + j] = -1.0
            rows.append(eq)
    return np.array(rows).reshape(len(rows), n)


def is_histogram_release(aggregates: Any) -> bool:
    """Whether ``aggregates`` hold grouped histogram records (``multiple_histograms``' layout)."""
    records = aggregates.get("histograms") if isinstance(aggregates, dict) else None
    return (isinstance(records, list) and bool(records)
            and all(isinstance(r, dict) and {"grouping_var", "counts"} <= set(r) and isinstance(r["counts"], list)
                    for r in records)
            and len({len(r["counts"]) for r in records}) == 1)


def suppress_histograms(aggregates: dict[str, Any], tab: int, *, counts: Sequence[Sequence[int]] | None = None,
                        force: Sequence[tuple[int, int]] = ()) -> dict[str, Any]:
    """``aggregates`` with every histogram record's counts consistently suppressed (``None``).

    No count in ``(0, tab)`` is released, and none can be recovered from the released counts,
    the overall bins and the row count by any linear combination (:func:`suppress`); and the hidden
    cells of a record, or of a shown bin's levels, hold no 1 .. ``tab - 1`` rows together
    (:func:`small_remainders`: the record's total less its shown cells would count them).

    ``counts`` (each record's true counts) with ``force`` (``(record, bin)`` cells to hide besides): a
    release already suppressed, suppressed again with more cells hidden (ADR 0051,
    :func:`mipflow.node.controls.released_groups.hide_nested`).
    """
    records = aggregates["histograms"]
    n_bins = len(records[0]["counts"])
    if n_bins == 0:
        return aggregates
    if counts is None:
        flat = [c for r in records for c in r["counts"]]
        withheld = np.array([not isinstance(c, (int, float)) for c in flat], dtype=bool)
        values = np.array([0 if w else c for c, w in zip(flat, withheld)], dtype=float)
    else:
        values = np.array([c for record in counts for c in record], dtype=float)
        withheld = np.zeros(len(values), dtype=bool)
    grouping = [r["grouping_var"] for r in records]
    equations = histogram_equations(n_bins, grouping)
    extra = np.zeros(len(values), dtype=bool)
    for r, b in force:
        extra[r * n_bins + b] = True
    null = null_basis(equations)
    while True:
        # a cell hidden besides must not follow from the others either (it hides a remainder)
        hidden = suppress(values, equations, tab, withheld, sensitive=extra, null=null)
        more = small_remainders(values, hidden, grouping, n_bins, tab)
        if not more.any():
            break
        extra |= more
    out = []
    for i, record in enumerate(records):
        shown = record["counts"] if counts is None else counts[i]
        out.append({**record, "counts": [None if hidden[i * n_bins + j] else c for j, c in enumerate(shown)]})
    return {**aggregates, "histograms": out}


def small_remainders(values: np.ndarray, hidden: np.ndarray, grouping: Sequence[str | None], n_bins: int,
                     tab: int) -> np.ndarray:
    """Cells to hide besides, so that no record's hidden cells, nor the hidden level cells of a shown bin, hold
    1 .. ``tab - 1`` rows together while their record or bin holds ``tab`` or more (ADR 0051): its total is a
    count another release gives (the row count, a level's group in an ANOVA, the shown bin), and the total less
    the shown cells would count those rows.  Per such set, its smallest shown positive cell (one per set and
    pass; the caller suppresses again and asks again)."""
    sets = [np.arange(r * n_bins, (r + 1) * n_bins) for r in range(len(grouping))]
    for var in dict.fromkeys(g for g in grouping if g is not None):
        members = [r for r, g in enumerate(grouping) if g == var]
        for o in (r for r, g in enumerate(grouping) if g is None):
            sets.extend(np.array([m * n_bins + j for m in members]) for j in range(n_bins)
                        if not hidden[o * n_bins + j])
    more = np.zeros(len(values), dtype=bool)
    for cells in sets:
        rest = float(values[cells[hidden[cells]]].sum())
        if not 0 < rest < tab or float(values[cells].sum()) < tab:
            continue
        shown = cells[~hidden[cells] & (values[cells] > 0)]
        if shown.size:
            more[min(shown, key=lambda i: (values[i], i))] = True
    return more
