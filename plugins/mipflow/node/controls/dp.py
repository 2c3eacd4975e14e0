"""Differential privacy at a node: noisy aggregates, opt-in per node.

A node whose admin sets ``dp_enabled`` adds noise from OpenDP's Laplace or
Gaussian measurement (``dp_mechanism``) to what a supported algorithm
releases, after the disclosure controls accepted the step and before the
reply (hook in :mod:`mipflow.node.api.app`).  Each step costs the node's per-query
``dp_epsilon`` (Gaussian: stated at ``dp_budget_delta``), charged to the
researcher in the node's persistent ledger (:mod:`mipflow.node.controls.privacy_budget`)
before the answer leaves; a step the budget cannot pay for is refused
(control ``dp_budget``).

Neighbouring data sets differ by **one row added or removed** (one row of the
feature store: a patient, or a patient-visit where a data model has visits).
Sensitivities come from the data model:

* a count changes by 1; a histogram or a vector of category counts changes in
  one cell by 1 (L1 = L2 = 1);
* a sum of a numerical variable is taken over values clamped to the
  variable's declared ``minValue``..``maxValue`` and centred on the middle
  ``c`` of that range, so one row changes ``sum(x - c)`` by at most ``h``
  (half the range) and ``sum((x - c)**2)`` by at most ``h**2``.  A variable
  without both bounds cannot be released under DP (refused, ``dp_unsupported``).

A step releases several such *blocks*; the per-query budget is split evenly
over them (basic composition for Laplace, additive rho for Gaussian), and
parts that partition the rows (datasets, levels of a grouping variable) compose
in parallel.  The cost charged is what OpenDP's own privacy maps say for the
measurements that ran.  Supported: ``descriptive_stats`` and
``multiple_histograms`` (variables with declared bounds, or nominal), and
``linear_regression`` and ``pearson_correlation`` through noisy sufficient
statistics (one block: n, sums and sums of products of the columns scaled
into [-1, 1], indicators of categorical covariates in [0, 1]; see
``docs/adr/0021-dp-sufficient-statistics.md``).  Other
algorithms are refused on a DP node unless the admin lists them in
``dp_exempt_algorithms`` (they then run exactly, and the result says so).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.privacy_budget import MECHANISMS, PrivacyCost, PrivacyLedger, rho_for_epsilon, rho_to_epsilon

#: The neighbouring relation and unit every guarantee here is stated for.
NEIGHBOURING = "add or remove one row"


@lru_cache(maxsize=64)
def gaussian_rho(epsilon: float, delta: float) -> float:
    """zCDP rho of a Gaussian step that is ``(epsilon, delta)``-DP on its own."""
    return rho_for_epsilon(epsilon, delta)


class QueryNoise:
    """Noise for one step: its budget split evenly over ``blocks`` released quantities.

    Parameters
    ----------
    mechanism : {"laplace", "gaussian"}
    epsilon : float
        The step's epsilon (Gaussian: at ``delta``).
    delta : float
        The delta a Gaussian step's epsilon is stated at (ignored for Laplace).
    blocks : int
        How many quantities (blocks) one row may change at once.

    Notes
    -----
    A block is one released quantity or vector (a count, a clamped sum, a
    histogram) with a known sensitivity.  ``part`` names rows that do not
    overlap within a block (a dataset, a level): one row changes only one
    part, so a block costs the largest cost of its parts, and the step costs
    the sum over blocks (an upper bound of the loss of any one row).
    """

    def __init__(self, mechanism: str, epsilon: float, delta: float, blocks: int) -> None:
        if mechanism not in MECHANISMS:
            raise DisclosureError(f"unknown dp_mechanism {mechanism!r} (laplace or gaussian)", control="dp_config")
        if epsilon <= 0:
            raise DisclosureError("dp_epsilon must be positive", control="dp_config")
        if mechanism == "gaussian" and not 0 < delta < 1:
            raise DisclosureError("the Gaussian mechanism needs 0 < dp_budget_delta < 1", control="dp_config")
        self.mechanism = mechanism
        self.epsilon = float(epsilon)
        self.delta = float(delta) if mechanism == "gaussian" else 0.0
        self.blocks = max(1, int(blocks))
        self.rho = gaussian_rho(self.epsilon, self.delta) if mechanism == "gaussian" else None
        self._costs: dict[str, dict[str, float]] = defaultdict(dict)
        import opendp.prelude as dp

        dp.enable_features("contrib")
        self._dp = dp

    def scale(self, sensitivity: float) -> float:
        """Noise scale for a block of this ``sensitivity`` (Laplace b, or Gaussian sigma)."""
        if self.mechanism == "laplace":
            return sensitivity * self.blocks / self.epsilon
        return sensitivity / math.sqrt(2.0 * self.rho / self.blocks)

    def measurement(self, sensitivity: float, integer: bool) -> Any:
        """The OpenDP measurement that noises a vector of this block."""
        dp = self._dp
        atom = dp.atom_domain(T=int) if integer else dp.atom_domain(T=float, nan=False)
        domain = dp.vector_domain(atom)
        if self.mechanism == "laplace":
            metric = dp.l1_distance(T=int) if integer else dp.l1_distance(T=float)
            return dp.m.make_laplace(domain, metric, scale=self.scale(sensitivity))
        return dp.m.make_gaussian(domain, dp.l2_distance(T=float), scale=self.scale(sensitivity))

    def add(self, values: Sequence[float], sensitivity: float, *, block: str, part: str = "",
            integer: bool = False) -> np.ndarray:
        """Noisy ``values`` (one block, one part); integers stay integers (discrete noise)."""
        if sensitivity <= 0:  # nothing one row could change: nothing to hide
            return np.asarray(values, dtype=int if integer else float)
        meas = self.measurement(sensitivity, integer)
        if integer:
            noisy = meas([int(v) for v in values])
            d_in: float = int(sensitivity) if self.mechanism == "laplace" else float(sensitivity)
        else:
            noisy = meas([float(v) for v in values])
            d_in = float(sensitivity)
        cost = float(meas.map(d_in))
        parts = self._costs[block]
        parts[part] = max(parts.get(part, 0.0), cost)
        return np.asarray(noisy, dtype=int if integer else float)

    def count(self, value: int, *, block: str, part: str = "") -> int:
        """A noisy count (sensitivity 1), never negative."""
        return max(int(self.add([value], 1, block=block, part=part, integer=True)[0]), 0)

    def cost(self) -> PrivacyCost:
        """What the noise added so far costs, by OpenDP's privacy maps."""
        total = math.fsum(max(parts.values()) for parts in self._costs.values() if parts)
        if self.mechanism == "laplace":
            return PrivacyCost("laplace", epsilon=total, delta=0.0)
        return PrivacyCost("gaussian", epsilon=rho_to_epsilon(total, self.delta), delta=self.delta, rho=total)


# --------------------------------------------------------------------------- releases per algorithm


def _declared_bounds(model: Any, code: str, algorithm: str) -> tuple[float, float]:
    var = model.variable(code)
    if var.min_value is None or var.max_value is None:
        raise DisclosureError(f"variable {code!r} has no declared minValue and maxValue: a node with differential "
                              f"privacy cannot bound one row's contribution to {algorithm}", control="dp_unsupported")
    return float(var.min_value), float(var.max_value)


def _moments_from_sums(n: int, s1: float, s2: float, lo: float, hi: float) -> dict[str, Any]:
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


def _descriptive_stats_blocks(algo: Any, request: Any, model: Any) -> int:
    described = algo.described(request)
    numeric = sum(1 for c in described if not model.variable(c).is_categorical)
    return 2 + 5 * numeric + 2 * (len(described) - numeric)


def _descriptive_stats(algo: Any, data: Any, request: Any, model: Any, noise: QueryNoise
                       ) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Per dataset: noisy row counts, category counts and clamped centred sums.

    Released in the algorithm's own shape (moments rebuilt from the noisy
    sums), so its global step runs unchanged.
    """
    from mipflow.algorithms.design import category_codes, numeric_values
    from mipflow.algorithms.descriptive_stats import DATASET

    described = algo.described(request)
    bounds = {c: _declared_bounds(model, c, algo.name) for c in described if not model.variable(c).is_categorical}
    wanted = set(request.datasets)
    out: dict[str, Any] = {}
    for dataset, frame in data.groupby(DATASET, sort=True):
        part = str(dataset)
        if part not in wanted:
            continue
        complete = frame.dropna(subset=described, how="any")
        record: dict[str, Any] = {}
        for kind, rows in (("variable_based", frame), ("model_based", complete)):
            n_total = noise.count(len(rows), block=f"{kind}/n_total", part=part)
            items: dict[str, Any] = {}
            for code in described:
                var = model.variable(code)
                if var.is_categorical:
                    counts = category_codes(rows[code], var).value_counts()
                    exact = [int(counts.get(c, 0)) for c in var.enumeration_codes]
                    noisy = np.maximum(noise.add(exact, 1, block=f"{kind}/{code}/counts", part=part, integer=True), 0)
                    items[code] = {"n_total": max(n_total, int(noisy.sum())), "counts": noisy.tolist()}
                    continue
                lo, hi = bounds[code]
                values = numeric_values(rows[code])
                clamped = np.clip(values[~np.isnan(values)], lo, hi) - (lo + hi) / 2.0
                half = (hi - lo) / 2.0
                # model-based rows are complete: every variable's count is the row count
                n = n_total if kind == "model_based" else noise.count(len(clamped), block=f"{kind}/{code}/n",
                                                                       part=part)
                s1 = float(noise.add([math.fsum(clamped)], half, block=f"{kind}/{code}/sum", part=part)[0])
                s2 = float(noise.add([math.fsum(clamped * clamped)], half * half, block=f"{kind}/{code}/sumsq",
                                     part=part)[0])
                items[code] = {"n_total": max(n_total, n), "moments": _moments_from_sums(n, s1, s2, lo, hi)}
            record[kind] = items
        record["group_n"] = [r["moments"]["n"] for kind in ("variable_based", "model_based")
                             for r in record[kind].values() if "moments" in r]
        out[part] = record
    return {"datasets": out}, {c: [lo, hi] for c, (lo, hi) in bounds.items()}


def _histogram_blocks(algo: Any, request: Any, model: Any) -> int:
    return 1 + len(request.x)


def _multiple_histograms(algo: Any, data: Any, request: Any, model: Any, noise: QueryNoise
                         ) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Noisy bin counts over the declared range (values clamped into it) or the enumerations."""
    from mipflow.algorithms.design import category_codes, numeric_values
    from mipflow.algorithms.multiple_histograms import bin_counter, level_counter

    yvar = model.variable(request.y[0])
    clamped: dict[str, list[float]] = {}
    if yvar.is_categorical:
        count = level_counter(category_codes(data[yvar.code], yvar).to_numpy(), yvar.enumeration_codes)
    else:
        lo, hi = _declared_bounds(model, yvar.code, algo.name)
        clamped[yvar.code] = [lo, hi]
        count = bin_counter(np.clip(numeric_values(data[yvar.code]), lo, hi),
                            algo.params(request, model)["bins"], (lo, hi))

    records = []
    for grouping_var, level in algo._groups(request, model):
        if grouping_var is None:
            mask, block, part = np.ones(len(data), dtype=bool), "overall", ""
        else:
            codes = category_codes(data[grouping_var], model.variable(grouping_var)).to_numpy()
            mask, block, part = codes == level, f"by/{grouping_var}", str(level)
        noisy = np.maximum(noise.add(count(mask), 1, block=block, part=part, integer=True), 0)
        records.append({"grouping_var": grouping_var, "grouping_enum": level, "counts": noisy.tolist()})
    return {"histograms": records}, clamped


def _descriptive_stats_rows(aggregates: dict[str, Any]) -> int:
    return sum(max((item["n_total"] for item in record["variable_based"].values()), default=0)
               for record in aggregates["datasets"].values())


def _histogram_rows(aggregates: dict[str, Any]) -> int:
    return int(sum(aggregates["histograms"][0]["counts"]))


# --------------------------------------------------------------------------- noisy sufficient statistics
#
# linear_regression and pearson_correlation release moments (n, means, centred
# co-moments) of a few columns.  Under DP a node releases instead the noisy
# sufficient statistics of those columns after mapping each into [-1, 1]
# (ADR 0021): with w = (1, v1, ..., vk) for one row, the vector of the sums
# over rows of w_j * w_l for the pairs j <= l listed by ``_released_pairs``
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
            lo, hi = _declared_bounds(model, name, algorithm)
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


def _released_pairs(group: Sequence[str]) -> list[tuple[int, int]]:
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


def noisy_sums(cols: BoundedColumns, noise: QueryNoise, block: str = "sufficient_statistics"
               ) -> tuple[float, np.ndarray, np.ndarray]:
    """Noisy ``n``, ``S1 = sum v`` and ``S2 = sum v v^T`` of the scaled columns (one block).

    The released entries (see :func:`_released_pairs`) get noise from one
    OpenDP measurement calibrated to :func:`moment_sensitivity` (L1 for
    Laplace, L2 for Gaussian); the entries known without the data are filled
    in after (post-processing).
    """
    k = len(cols.names)
    w = np.column_stack([np.ones(len(cols.values)), cols.values])
    pairs = _released_pairs(cols.group)
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


def _one_block(algo: Any, request: Any, model: Any) -> int:
    return 1


def _linear_regression_columns(request: Any, model: Any) -> list[tuple[str, str]]:
    """The candidate design columns (the local step's order) and ``y``, with their kinds."""
    from mipflow.algorithms.design import design_columns

    kinds = {}
    for code in request.x:
        var = model.variable(code)
        if var.is_categorical:
            kinds.update({name: code for name in design_columns([code], model, intercept=False)})
    return [(name, kinds.get(name, "numerical")) for name in design_columns(request.x, model, intercept=False)] + \
        [(request.y[0], "numerical")]


def _linear_regression(algo: Any, data: Any, request: Any, model: Any, noise: QueryNoise
                       ) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Noisy sufficient statistics of the design columns and ``y``, in the local step's shape."""
    from mipflow.algorithms.design import sorted_levels

    cols = bounded_columns(data, _linear_regression_columns(request, model), model, algo.name)
    moments = moments_from_noisy_sums(cols, *noisy_sums(cols, noise))
    # rows per level: the noisy indicator sums, rounded (post-processing)
    s1 = dict(zip(cols.names, np.asarray(moments["mean"]) * moments["n"]))
    counts = {code: [max(int(round(s1[f"{code}[{level}]"])), 0) for level in sorted_levels(model.variable(code))]
              for code in request.x if model.variable(code).is_categorical}
    return {"moments": moments, "level_counts": counts,
            "group_n": [c for code in request.x for c in counts.get(code, [])]}, cols.clamped


def _pearson_correlation(algo: Any, data: Any, request: Any, model: Any, noise: QueryNoise
                         ) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Noisy sufficient statistics of the variables (``y`` then ``x``), in the local step's shape."""
    cols = bounded_columns(data, [(c, "numerical") for c in algo.variables(request)], model, algo.name)
    return {"moments": moments_from_noisy_sums(cols, *noisy_sums(cols, noise))}, cols.clamped


def _moments_rows(aggregates: dict[str, Any]) -> int:
    return int(aggregates["moments"]["n"])


#: What a noisy linear regression's result is, stated in its privacy label.
LINEAR_REGRESSION_NOTE = (
    "linear_regression from noisy sufficient statistics (row count, sums and sums of products of the design "
    "columns and y, values clamped to the declared ranges, indicators in [0, 1]): the coefficients are computed "
    "from them; standard errors, t statistics, p-values, confidence intervals, R-squared and F are computed from "
    "the noisy statistics as if they were exact and leave out the noise's own variance")
PEARSON_NOTE = (
    "pearson_correlation from noisy sufficient statistics (row count, sums and sums of products, values clamped "
    "to the declared ranges): correlations are clipped to [-1, 1]; p-values and confidence intervals are computed "
    "from the noisy statistics as if they were exact and leave out the noise's own variance")


@dataclass(frozen=True)
class Mechanism:
    """How one algorithm's step is released under DP."""

    blocks: Callable[[Any, Any, Any], int]
    release: Callable[[Any, Any, Any, Any, QueryNoise], tuple[dict[str, Any], dict[str, list[float]]]]
    #: the number of rows as the noisy aggregates tell it (post-processing, no extra cost)
    rows: Callable[[dict[str, Any]], int]
    #: what the noisy result is (and is not), for the label; empty where the general note says it all
    note: str = ""


#: Algorithms a DP node can release with noise (one round each).
DP_MECHANISMS: dict[str, Mechanism] = {
    "descriptive_stats": Mechanism(_descriptive_stats_blocks, _descriptive_stats, _descriptive_stats_rows),
    "multiple_histograms": Mechanism(_histogram_blocks, _multiple_histograms, _histogram_rows),
    "linear_regression": Mechanism(_one_block, _linear_regression, _moments_rows, LINEAR_REGRESSION_NOTE),
    "pearson_correlation": Mechanism(_one_block, _pearson_correlation, _moments_rows, PEARSON_NOTE),
}


# --------------------------------------------------------------------------- the node side


@dataclass(frozen=True)
class NoisyRelease:
    """A step's noisy aggregates and the label that travels with them."""

    aggregates: dict[str, Any]
    label: dict[str, Any]
    #: the row count the reply states, read off the noisy aggregates (the exact one stays at the node)
    rows: int


def _names(text: str) -> set[str]:
    return {n.strip() for n in (text or "").split(",") if n.strip()}


class NodePrivacy:
    """A node's DP guard: decides, noises and charges (one per node API process)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._ledger: PrivacyLedger | None = None

    @property
    def ledger(self) -> PrivacyLedger:
        if self._ledger is None:
            self._ledger = PrivacyLedger(self.root)
        return self._ledger

    def apply(self, settings: Any, algorithm: Any, request: Any, model: Any, round_no: int, data: Any,
              researcher: str, details: dict[str, Any] | None = None) -> NoisyRelease | None:
        """Noisy aggregates for a DP node, ``None`` where the node releases exactly.

        Raises
        ------
        DisclosureError
            ``dp_unsupported`` for an algorithm (or variable) with no DP mechanism here
            and not exempted by the node admin; ``dp_budget`` when the researcher's
            budget cannot pay for the step; ``dp_config`` for unusable settings.
        """
        if not settings.dp_enabled or algorithm.name in _names(settings.dp_exempt_algorithms):
            return None
        mechanism = DP_MECHANISMS.get(algorithm.name)
        if mechanism is None or round_no != 0:
            raise DisclosureError(
                f"this node adds differential-privacy noise and has no DP mechanism for {algorithm.name!r} "
                f"(supported: {', '.join(sorted(DP_MECHANISMS))}); its admin may exempt algorithms with "
                f"dp_exempt_algorithms", control="dp_unsupported")
        noise = QueryNoise(settings.dp_mechanism, settings.dp_epsilon, settings.dp_budget_delta,
                           mechanism.blocks(algorithm, request, model))
        aggregates, clamped = mechanism.release(algorithm, data, request, model, noise)
        cost = noise.cost()
        # charged (on disk) before the noisy answer can leave; refused here if over budget
        spent = self.ledger.charge(researcher, cost, epsilon_budget=settings.dp_budget_epsilon,
                                   delta_budget=settings.dp_budget_delta,
                                   details={"algorithm": algorithm.name, **(details or {})})
        label = {"mechanism": cost.mechanism, "library": "opendp", "epsilon": cost.epsilon, "delta": cost.delta,
                 "rho": cost.rho, "neighbouring": NEIGHBOURING, "clamped": clamped,
                 "spent": {"epsilon": spent.epsilon, "delta": spent.delta, "accountant": spent.accountant},
                 "budget": {"epsilon": settings.dp_budget_epsilon, "delta": settings.dp_budget_delta}}
        if mechanism.note:
            label["note"] = mechanism.note
        return NoisyRelease(aggregates, label, mechanism.rows(aggregates))


# --------------------------------------------------------------------------- the central side


def privacy_block(labels: dict[str, list[dict[str, Any]]], contributed: Sequence[str]) -> dict[str, Any]:
    """The ``privacy`` block of a central result: which nodes added noise, how, at what cost.

    Parameters
    ----------
    labels : dict
        Node name -> the ``privacy`` labels of its step replies (one per round that added noise).
    contributed : sequence of str
        The nodes whose aggregates made the result.

    Returns
    -------
    dict
        Empty when no contributing node added noise (the result is exact).
    """
    noisy = {name: labels[name] for name in contributed if labels.get(name)}
    if not noisy:
        return {}
    nodes = {}
    for name, items in noisy.items():
        first = items[0]
        nodes[name] = {"mechanism": first["mechanism"], "epsilon": math.fsum(i["epsilon"] for i in items),
                       "delta": max(i["delta"] for i in items), "rho": first.get("rho"),
                       "clamped": first.get("clamped", {}), "neighbouring": first.get("neighbouring", NEIGHBOURING),
                       "releases": len(items)}
        if first.get("note"):
            nodes[name]["note"] = first["note"]
    block = {"approximate": True, "method": "differential privacy, noise added at the nodes",
             "noisy_nodes": nodes, "exact_nodes": sorted(set(contributed) - set(noisy)),
             "note": "statistics are approximate: each listed node added random noise calibrated to its epsilon "
                     "(and delta); numerical values were clamped to the data model's declared ranges"}
    derived = sorted({item["note"] for items in noisy.values() for item in items if item.get("note")})
    if derived:  # what the derived statistics are (e.g. standard errors that leave out the noise)
        block["derived"] = derived
    return block
