"""What an algorithm needs to release its aggregates under differential privacy (ADR 0015, 0021).

An algorithm that a node with ``dp_enabled`` may run declares a
:class:`DPRelease` (``Algorithm.dp_release``, :mod:`mipflow.algorithms.contract`):
how many blocks its step releases, the noisy release itself (drawing from a
:class:`Noise` the node provides: :class:`mipflow.node.controls.dp_noise.QueryNoise`,
OpenDP's measurements), the row count the noisy aggregates tell and what the
result is, for the label.  The node's policy (whether to add noise, the budget,
the label) is :mod:`mipflow.node.controls.dp`.

Sensitivities come from the data model: a numerical value is clamped to its
declared ``minValue``..``maxValue`` (:func:`declared_bounds`; a variable without
both cannot be released, ``dp_unsupported``).  Here too are the pieces the
releases share: moments rebuilt from noisy centred sums
(:func:`moments_from_sums`) and noisy sufficient statistics of columns scaled
into ``[-1, 1]`` (:func:`bounded_columns`, :func:`noisy_sums`,
:func:`moments_from_noisy_sums`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from mipflow.exceptions import DisclosureError


class Noise(Protocol):
    """Noise for one step, split over its blocks (what the node hands a release).

    ``part`` names rows that do not overlap within a block (a dataset, a
    level): they compose in parallel.
    """

    mechanism: str

    def add(self, values: Sequence[float], sensitivity: float, *, block: str, part: str = "",
            integer: bool = False) -> np.ndarray: ...

    def count(self, value: int, *, block: str, part: str = "") -> int: ...

    def sd(self, sensitivity: float) -> float:
        """The sd of the noise on one value of a block of this ``sensitivity`` (what a release may
        state beside its values: it depends on the settings only)."""
        ...


#: A noisy release: ``(aggregates in the local step's own shape, declared [lo, hi] of each clamped variable)``.
Released = tuple[dict[str, Any], dict[str, list[float]]]


@dataclass(frozen=True)
class DPRelease:
    """How one algorithm's step is released under differential privacy (one round).

    Attributes
    ----------
    blocks : callable ``(algorithm, request, model) -> int``
        How many quantities one row may change at once (the step's budget is split over them).
    release : callable ``(algorithm, data, request, model, noise) -> (aggregates, clamped)``
        The noisy aggregates, in the local step's shape so the global step runs unchanged.
    rows : callable ``(aggregates) -> int``
        The number of rows as the noisy aggregates tell it (post-processing, no extra cost).
    note : str
        What the noisy result is (and is not), for the label; empty where the general note says it all.
    decision_key : str or None
        Explore mode: the aggregates key under which the node also carries its decision count (the noisy
        row count it decided the thresholds on, already the reply's ``rows``, and that count's sd: a
        setting), for a global step that uses it (Kaplan-Meier's at-risk totals, ADR 0032); None: not carried.
    """

    blocks: Callable[[Any, Any, Any], int]
    release: Callable[[Any, Any, Any, Any, Noise], Released]
    rows: Callable[[dict[str, Any]], int]
    note: str = ""
    decision_key: str | None = None


def one_block(algorithm: Any, request: Any, model: Any) -> int:
    """For a release that is one block (noisy sufficient statistics)."""
    return 1


def moments_rows(aggregates: dict[str, Any]) -> int:
    """The row count of a release whose aggregates hold one ``moments`` object."""
    return int(aggregates["moments"]["n"])


# --------------------------------------------------------------------------- bounds


def declared_bounds(model: Any, code: str, algorithm: str) -> tuple[float, float]:
    var = model.variable(code)
    if var.min_value is None or var.max_value is None:
        raise DisclosureError(f"variable {code!r} has no declared minValue and maxValue: a node with differential "
                              f"privacy cannot bound one row's contribution to {algorithm}", control="dp_unsupported")
    return float(var.min_value), float(var.max_value)


def moments_from_sums(n: int, s1: float, s2: float, lo: float, hi: float) -> dict[str, Any]:
    """Moments (n, mean, m2) from noisy sums of values centred on the middle of ``[lo, hi]``.

    Post-processing only: the mean is kept inside the declared range and
    ``m2`` between 0 and its largest possible value ``n * h**2``.
    """
    if n <= 0:
        return {"n": 0, "mean": [0.0], "m2": [0.0]}
    centre, half = (lo + hi) / 2.0, (hi - lo) / 2.0
    shift = float(np.clip(s1 / n, -half, half))
    m2 = float(np.clip(s2 - n * shift * shift, 0.0, n * half * half))
    return {"n": int(n), "mean": [centre + shift], "m2": [m2]}


# --------------------------------------------------------------------------- noisy sufficient statistics
#
# linear_regression and pearson_correlation release moments (n, means, centred
# co-moments) of a few columns.  Under DP a node releases instead the noisy
# sufficient statistics of those columns after mapping each into [-1, 1]
# (ADR 0021): with w = (1, v1, ..., vk) for one row, the vector of the sums
# over rows of w_j * w_l for the pairs j <= l listed by ``released_pairs``
# (n, the sums, the sums of products).  One row adds or removes its own w w^T,
# so the sensitivity follows from the ranges alone (``moment_sensitivity``).


@dataclass(frozen=True)
class BoundedColumns:
    """Columns mapped into a known range, one row per (complete-case) data row.

    Attributes
    ----------
    names : tuple of str
        Column names (design column names for indicators, variable codes otherwise).
    values : numpy.ndarray, shape (n, k)
        A numerical column clamped to its declared ``[lo, hi]`` and mapped to
        ``(x - centre) / half`` in ``[-1, 1]``; an indicator column as is (0 or 1).
    centre, half : numpy.ndarray, shape (k,)
        The affine map back: ``x = centre + half * v`` (0 and 1 for indicators).
    group : tuple of str
        For an indicator, the categorical variable it codes (exactly one of the
        indicators of a variable is 1 in every row); ``""`` for a numerical column.
    clamped : dict
        Declared ``[lo, hi]`` of each numerical variable (what the label states).
    """

    names: tuple[str, ...]
    values: np.ndarray
    centre: np.ndarray
    half: np.ndarray
    group: tuple[str, ...]
    clamped: dict[str, list[float]]


def bounded_columns(data: Any, columns: Sequence[tuple[str, str]], model: Any, algorithm: str) -> BoundedColumns:
    """Clamp and scale ``columns`` of ``data`` (complete-case rows) for a noisy release.

    Parameters
    ----------
    data : pandas.DataFrame
    columns : sequence of (name, kind)
        ``kind`` is ``"numerical"`` (``name`` is a variable code with declared
        bounds) or the code of the categorical variable an indicator ``name``
        (``code[level]``) belongs to.
    model : DataModel
    algorithm : str
        For the refusal message.

    Raises
    ------
    DisclosureError
        ``dp_unsupported`` when a numerical variable has no declared ``minValue``
        and ``maxValue``.
    """
    from mipflow.algorithms.design import category_codes, numeric_values

    n = len(data)
    values = np.empty((n, len(columns)))
    centre, half, group = np.zeros(len(columns)), np.ones(len(columns)), []
    clamped: dict[str, list[float]] = {}
    for j, (name, kind) in enumerate(columns):
        if kind == "numerical":
            lo, hi = declared_bounds(model, name, algorithm)
            clamped[name] = [lo, hi]
            centre[j], half[j] = (lo + hi) / 2.0, (hi - lo) / 2.0
            x = np.clip(numeric_values(data[name]), lo, hi)
            values[:, j] = (x - centre[j]) / half[j] if half[j] > 0 else 0.0
            group.append("")
        else:
            level = name[len(kind) + 1:-1]  # "code[level]"
            values[:, j] = (category_codes(data[kind], model.variable(kind)).to_numpy() == level)
            group.append(kind)
    if np.isnan(values).any():
        raise DisclosureError("a noisy release needs complete-case rows", control="dp_unsupported")
    return BoundedColumns(tuple(c for c, _ in columns), values, centre, half, tuple(group), clamped)


def released_pairs(group: Sequence[str]) -> list[tuple[int, int]]:
    """Index pairs ``(j, l)``, ``j <= l``, of ``w = (1, v)`` whose sums are released.

    Not released (known without looking at the data): products of two
    indicators of the same variable (0 off the diagonal; the square of an
    indicator is the indicator, whose sum is released as ``(0, j)``).
    """
    g = ("",) + tuple(group)
    return [(j, l) for j in range(len(g)) for l in range(j, len(g)) if not (g[j] and g[j] == g[l])]


def moment_sensitivity(group: Sequence[str]) -> tuple[float, float]:
    """L1 and L2 sensitivity of the released sums of products under add/remove one row.

    One row changes the released vector by its own products ``w_j w_l``
    (``w = (1, v)``, ``|v_j| <= 1``, one indicator per categorical variable
    equal to 1).  Count the *groups* ``G``: the constant, each numerical
    column, each categorical variable.  Each pair of different groups adds at
    most 1 to both the L1 norm and the squared L2 norm (``sum |w_j| <= 1`` and
    ``sum w_j**2 <= 1`` within a group), each diagonal of the constant or of a
    numerical column at most 1 more; so ``L1 = L2**2 = G (G - 1) / 2 + 1 + a``
    with ``a`` numerical columns, attained when every ``|v_j| = 1``.

    Returns
    -------
    (float, float)
        ``(l1, l2)``.
    """
    numerical = sum(1 for g in group if not g)
    groups = 1 + numerical + len({g for g in group if g})
    total = groups * (groups - 1) / 2 + 1 + numerical
    return float(total), math.sqrt(total)


def noisy_sums(cols: BoundedColumns, noise: Noise, block: str = "sufficient_statistics"
               ) -> tuple[float, np.ndarray, np.ndarray]:
    """Noisy ``n``, ``S1 = sum v`` and ``S2 = sum v v^T`` of the scaled columns (one block).

    The released entries (see :func:`released_pairs`) get noise from one
    OpenDP measurement calibrated to :func:`moment_sensitivity` (L1 for
    Laplace, L2 for Gaussian); the entries known without the data are filled
    in after (post-processing).
    """
    k = len(cols.names)
    w = np.column_stack([np.ones(len(cols.values)), cols.values])
    pairs = released_pairs(cols.group)
    exact = [math.fsum(w[:, j] * w[:, l]) for j, l in pairs]
    l1, l2 = moment_sensitivity(cols.group)
    noisy = noise.add(exact, l1 if noise.mechanism == "laplace" else l2, block=block)
    full = np.zeros((k + 1, k + 1))
    for (j, l), value in zip(pairs, noisy):
        full[j, l] = full[l, j] = value
    for j, g in enumerate(cols.group, 1):
        if g:  # an indicator's square is itself
            full[j, j] = full[0, j]
    return float(full[0, 0]), full[0, 1:], full[1:, 1:]


def moments_from_noisy_sums(cols: BoundedColumns, n: float, s1: np.ndarray, s2: np.ndarray) -> dict[str, Any]:
    """Moments ``{n, mean, m2}`` in the variables' units from noisy scaled sums (post-processing).

    ``n`` is rounded to a count (0 or more); the scaled means are kept in
    their range (``[-1, 1]``, indicators ``[0, 1]``); the co-moments are
    ``S2 - n m m^T`` (so the raw sums the moments stand for are the noisy
    ones), with each diagonal kept between 0 and its largest possible value
    ``n`` (an indicator's: ``n m (1 - m)``).  The matrix may still be
    indefinite: the central side checks (``linear_regression``) or clips
    (``pearson_correlation``) what it needs.
    """
    k = len(cols.names)
    rows = max(int(round(n)), 0)
    if rows == 0:
        return {"n": 0, "mean": [0.0] * k, "m2": np.zeros((k, k)).tolist()}
    indicator = np.array([bool(g) for g in cols.group])
    mean = np.clip(s1 / rows, np.where(indicator, 0.0, -1.0), 1.0)
    m2 = s2 - rows * np.outer(mean, mean)
    diag = np.where(indicator, rows * mean * (1.0 - mean), np.clip(np.diagonal(m2), 0.0, rows))
    np.fill_diagonal(m2, diag)
    scale = np.outer(cols.half, cols.half)
    return {"n": rows, "mean": (cols.centre + cols.half * mean).tolist(), "m2": (m2 * scale).tolist()}
