"""Groups inside algorithms across a study's cohorts: the level-cell rule of study approval.

An algorithm groups a cohort's rows by the levels of its nominal variables (a t-test's or an
ANOVA's groups, a regression's indicators and their co-moments, Kaplan-Meier's groups and its
event indicator, a logistic model's classes, a contingency table's cells).  Within one result the
release controls keep every such group at ``nfilter_tab`` or more.  Across the study's cohorts they
do not: the population's deaths minus the elderly's deaths are the young deaths, a group no
request could ask for, and a group of one gives a patient's exact values (an outside review of
study mode recovered a patient's record from two linear regressions this way).

So approval and refresh take this decision too, once, on the rows (ADR 0028, extended):

* a **cell** is a cohort of the family intersected with one level of a nominal study variable, or
  with one level of each of two (what an algorithm's groups, events, classes and co-moments cross);
  one result releases sums over the cells of its cohort, under the release controls as before;
* **differences**: for every cohort nested in another (the elderly in the population, a
  subgroup within one dataset), every cell of the difference (the young, the young deaths, the
  young women who died) holds no row or at least ``nfilter_tab`` rows (the pairwise rule of ADR
  0013 lifted to cells);
* **chains**: no linear combination of all the cells' sums isolates a group of rows with the same
  membership in every cell (an atom of :mod:`mipflow.node.controls.atoms`) of fewer than
  ``nfilter_tab`` rows (exact for single atoms, whatever the chain), and none lives on a union of
  several atoms of fewer than ``nfilter_tab`` rows in all (the union rule of
  :mod:`mipflow.node.controls.unions`: the two-way margins of a 2x2x2 table give ``x_000 + x_111``);
* at a refresh, in every cell, the rows added and the rows removed since the snapshot are each
  none or at least ``nfilter_tab`` (the same subtraction across two snapshots).

:func:`cohort_cells` keeps counts only (a cell's label to its row count, no key and no value); the
study record keeps them so that a refresh can compare (admin-facing, 0600).
"""
from __future__ import annotations

from itertools import combinations, product
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

#: how many nominal variables the sums an algorithm releases cross at most: its groups by one
#: variable, its events or classes or a second covariate by another (Kaplan-Meier by sex with its
#: event, a logistic model's class by a covariate, two indicators' co-moment), a stratum by a third
#: (CMH; histograms of a nominal variable by two groupings); the default for an algorithm not listed
CROSS = 2
CROSSES = {"pearson_correlation": 0, "ttest_onesample": 0, "ttest_paired": 0, "kmeans": 0, "pca": 0,
           "pca_with_transformation": 0, "descriptive_stats": 1, "ttest_independent": 1, "anova_oneway": 1,
           "cmh_test": 3, "multiple_histograms": 3}


#: how many nominal variables cross the groups an algorithm releases with their count, mean and spread
#: (``group_count_setting = "min_row_count"``, ADR 0050): a t-test's and a one-way ANOVA's groups and a
#: Gaussian naive Bayes's classes by one variable, a two-way ANOVA's cells by two; descriptive statistics'
#: groups are the cohorts (complete in a study) and k-means's clusters are no level cells (its tie rule)
MOMENT_CROSSES = {"ttest_independent": 1, "anova_oneway": 1, "naive_bayes_gaussian_cv": 1, "anova": 2,
                  "descriptive_stats": 0, "kmeans": 0}


def moment_crossing(algorithms: Sequence[str]) -> int:
    """How many nominal variables the study's groups released with their moments cross (0: none)."""
    return max((MOMENT_CROSSES.get(name, 0) for name in algorithms), default=0)


def moment_problems(sets: Sequence[tuple[str, np.ndarray]], population: np.ndarray, levels: pd.DataFrame,
                    nominal: Sequence[str], algorithms: Sequence[str], min_row_count: int,
                    primes: Sequence[int]) -> list[str]:
    """The level-cell rule at ``min_row_count`` for the cells whose count, mean and spread the study's
    algorithms release (:data:`MOMENT_CROSSES`, ADR 0050): every cell of every cohort, and of the
    difference of two nested cohorts, holds no row or ``min_row_count`` rows, and no combination of the
    cells isolates fewer.  The release controls hold such a group to ``min_row_count`` in each result, so
    deciding it here keeps a study's per-request decisions free of the rows.  Admin-facing, with counts."""
    cross = moment_crossing(algorithms)
    if not cross or not nominal:
        return []
    problems = []
    for label, keys in sets:  # the cells themselves (the chain rule below would also find them)
        rows = _rows(population, keys)
        for suffix, mask in level_masks(levels, nominal, cross)[1:]:
            n = int(np.count_nonzero(rows & mask))
            if 0 < n < min_row_count:
                problems.append(f"{label}{_levels(suffix)}: {n} row(s)")
    problems += difference_problems(sets, population, levels, nominal, cross, min_row_count)
    if not problems:
        chain = chain_problem(sets, population, levels, nominal, cross, min_row_count, primes)
        problems += [chain] if chain else []
    return problems


def check_moment_cells(problems: Sequence[str], min_row_count: int, failed: str, stays: str = "") -> None:
    """Refuse an approval or refresh with :func:`moment_problems` (or their change at a refresh).

    Raises
    ------
    ConfigError
        Naming the cells for the admin (with counts).
    """
    from mipflow.exceptions import ConfigError

    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ConfigError(f"{failed}: the study's algorithms release groups by levels of nominal study variables "
                          f"with their mean and spread (t-tests, ANOVA, Gaussian naive Bayes), and such a group "
                          f"must hold min_row_count ({min_row_count}) rows, directly, inside the difference of "
                          f"two cohorts or as rows added or removed since the snapshot: {shown}. Leave those "
                          "algorithms or the variable out of the study, choose other subgroups, or wait for more "
                          f"data (docs/adr/0050-kmeans-real-variables.md){stays}")


def moment_cells(cells: Mapping[str, int], cross: int) -> dict[str, int]:
    """The cells of a study record (``label|V=l...`` to a count) crossing at most ``cross`` variables."""
    return {cell: n for cell, n in cells.items() if cell.count("|") <= cross}


def crossing(algorithms: Sequence[str]) -> int:
    """How many nominal variables a study's cells cross: the most any of its algorithms crosses."""
    return max((CROSSES.get(name, CROSS) for name in algorithms), default=0)


def nominal_variables(model: Any, variables: Sequence[str]) -> list[str]:
    """The study variables with levels (``dataset`` is a cohort's part already)."""
    return [v for v in variables if v != "dataset" and model.variable(v).is_categorical]


def level_masks(levels: pd.DataFrame, nominal: Sequence[str], cross: int) -> list[tuple[str, np.ndarray]]:
    """Every cell's label suffix and row mask over ``levels`` (the whole, then up to ``cross`` variables)."""
    out: list[tuple[str, np.ndarray]] = [("", np.ones(len(levels), dtype=bool))]
    values = {code: levels[code].astype(str).to_numpy() for code in nominal}
    for width in range(1, min(cross, len(nominal)) + 1):
        for group in combinations(nominal, width):
            present = [sorted(set(values[code])) for code in group]
            for combo in product(*present):
                mask = np.ones(len(levels), dtype=bool)
                for code, level in zip(group, combo):
                    mask &= values[code] == level
                if mask.any():
                    out.append(("".join(f"|{c}={lv}" for c, lv in zip(group, combo)), mask))
    return out


#: how many nominal variables Kaplan-Meier's per-bin counts cross: its group and its event
SURVIVAL_CROSS = 2


def survival_base(levels: pd.DataFrame, nominal: Sequence[str], event: str | None) -> list[tuple[str, np.ndarray]]:
    """The level cells Kaplan-Meier's per-bin counts cross (before the bins).

    With the protocol's ``event`` variable: each event level, and each event level by each level
    of one other nominal variable (the group).  Without it, any nominal variable may be the event:
    the levels of up to :data:`SURVIVAL_CROSS` nominal variables.  A censoring count is the sum of
    the other levels' cells and an at-risk count a sum of later bins: sums of cells that are each
    0 or at least ``nfilter_tab`` are too.
    """
    if event is None:
        return level_masks(levels, nominal, SURVIVAL_CROSS)
    values = {code: levels[code].astype(str).to_numpy() for code in nominal}
    base = []
    for level in sorted(set(values[event])):
        is_level = values[event] == level
        base.append((f"|{event}={level}", is_level))
        for other in (v for v in nominal if v != event):
            for lv in sorted(set(values[other])):
                mask = is_level & (values[other] == lv)
                if mask.any():
                    base.append((f"|{event}={level}|{other}={lv}", mask))
    return base


def survival_masks(base: Sequence[tuple[str, np.ndarray]], bins: np.ndarray,
                   labels: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """Kaplan-Meier's cells: each bin (``bins``: a bin per population row, ``labels`` by bin)
    crossed with each of :func:`survival_base`'s level cells."""
    out = []
    for j in np.unique(bins):
        in_bin = bins == j
        for suffix, mask in base:
            both = in_bin & mask
            if both.any():
                out.append((f"|{labels[j]}{suffix}", both))
    return out


def _rows(population: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """A cohort's rows as a mask over the (sorted) population."""
    mask = np.zeros(len(population), dtype=bool)
    mask[np.searchsorted(population, keys)] = True
    return mask


def cohort_cells(sets: Sequence[tuple[str, np.ndarray]], population: np.ndarray, levels: pd.DataFrame,
                 nominal: Sequence[str], cross: int, added: np.ndarray | None = None,
                 extra: Sequence[tuple[str, np.ndarray]] = ()) -> dict[str, int]:
    """Row counts of every non-empty cell of every cohort (``label``, ``label|V=l``, ...);
    with ``added`` (a mask over the population), of the added rows only.  ``extra``: further
    cells (:func:`survival_masks`)."""
    cells = level_masks(levels, nominal, cross) + list(extra)
    counts: dict[str, int] = {}
    for label, keys in sets:
        rows = _rows(population, keys) if added is None else _rows(population, keys) & added
        for suffix, mask in cells:
            n = int(np.count_nonzero(rows & mask))
            if n:
                counts[label + suffix] = n
    return counts


def difference_problems(sets: Sequence[tuple[str, np.ndarray]], population: np.ndarray, levels: pd.DataFrame,
                        nominal: Sequence[str], cross: int, tab: int,
                        extra: Sequence[tuple[str, np.ndarray]] = ()) -> list[str]:
    """Cells of the difference of two nested cohorts with 1 to ``tab - 1`` rows (admin-facing)."""
    cells = level_masks(levels, nominal, cross) + list(extra)
    masks = [(label, _rows(population, keys)) for label, keys in sets]
    problems: list[str] = []
    for label, difference in nested_differences(masks):
        for suffix, mask in cells:
            n = int(np.count_nonzero(difference & mask))
            if 0 < n < tab:
                problems.append(f"{label}{_levels(suffix)}: {n} row(s)")
    return problems


def nested_differences(masks: Sequence[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """``("<outer> minus <inner>", rows)`` for every two nested sets of ``masks`` (row masks), each
    difference once, non-empty, and only when it is not one of ``masks`` itself (the population
    minus the women are the men: a cohort released directly, under its own controls)."""
    seen: set[bytes] = {mask.tobytes() for _, mask in masks}
    out = []
    for (outer, big), (inner, small) in product(masks, masks):
        if not small.any() or (small & ~big).any() or not (big & ~small).any():
            continue
        difference = big & ~small
        if difference.tobytes() not in seen:
            seen.add(difference.tobytes())
            out.append((f"{outer} minus {inner}", difference))
    return out


def chain_problem(sets: Sequence[tuple[str, np.ndarray]], population: np.ndarray, levels: pd.DataFrame,
                  nominal: Sequence[str], cross: int, tab: int, primes: Sequence[int],
                  bins: np.ndarray | None = None, labels: Sequence[str] = ()) -> str | None:
    """Whether a linear combination of every cell's sums isolates an atom of fewer than ``tab`` rows, or
    lives on several atoms of fewer than ``tab`` rows in all (the union rule; its message names no count).

    With ``bins`` (the survival grid's bin of each population row), the same is decided within each
    bin too.  Kaplan-Meier's per-bin cells cross at most two nominal variables, and their sums over
    the bins are the unbinned cells, so what the requester knows lies in the span of the cells
    restricted to each bin, a block per bin: one check per bin over every cell restricted to it
    decides the binned family (conservatively, as the restriction of a wider cell is not released).
    """
    from mipflow.node.controls.atoms import check_family

    cells = level_masks(levels, nominal, cross)
    masks = [_rows(population, keys) for _, keys in sets]
    blocks: list[tuple[str, np.ndarray]] = [("", np.ones(len(population), dtype=bool))]
    if bins is not None:
        blocks += [(f" within {labels[j]}", bins == j) for j in np.unique(bins)]
    for where, block in blocks:
        family = [population[rows & mask & block] for rows in masks for _, mask in cells
                  if (rows & mask & block).any()]
        verdict = check_family(family, max(tab, 1), primes, unions=True)
        if verdict.small_union:  # no count: which atoms and how many rows the search met is data
            return (f"a combination of the cells' sums (cohorts by levels of the nominal study variables)"
                    f"{where} would single out several small groups of fewer than the threshold in all")
        if not verdict.allowed:
            return (f"a combination of the cells' sums (cohorts by levels of the nominal study variables)"
                    f"{where} would isolate {verdict.smallest_isolatable} row(s)")
    return None


def _levels(suffix: str) -> str:
    return "" if not suffix else ", " + " and ".join(suffix.strip("|").split("|"))


def change_cells(old: Mapping[str, int], new: Mapping[str, int], added: Mapping[str, int], tab: int,
                 earlier: Sequence[Mapping[str, int]] = ()) -> list[str]:
    """Cells whose rows added or removed since the snapshot are 1 to ``tab - 1``, or whose count
    moved by 1 to ``tab - 1`` net (four added and three removed is one more: a sixth outside review
    read a new death so), since the snapshot or since any ``earlier`` snapshot the study answered on
    (two refreshes each safe can still add up to one); admin-facing."""
    problems = []
    for cell in sorted(set(old) | set(new) | set(added)):
        plus = int(added.get(cell, 0))
        now = int(new.get(cell, 0))
        minus = int(old.get(cell, 0)) - now + plus
        label, _, rest = cell.partition("|")
        where = f"{label}{_levels('|' + rest if rest else '')}"
        for n, what in ((plus, "added"), (minus, "removed")):
            if 0 < n < tab:
                problems.append(f"{where}: {n} row(s) {what}")
        for k, before in enumerate([old, *earlier]):
            net = now - int(before.get(cell, 0))
            if 0 < abs(net) < tab:
                since = "since the snapshot" if k == 0 else f"since the snapshot {k} refresh(es) before it"
                problems.append(f"{where}: {net:+d} row(s) net {since}")
    for before in earlier:  # a cell of an earlier snapshot that has no rows since (in none of the above)
        for cell in set(before) - set(old) - set(new) - set(added):
            if 0 < int(before[cell]) < tab:
                label, _, rest = cell.partition("|")
                problems.append(f"{label}{_levels('|' + rest if rest else '')}: {-int(before[cell]):+d} row(s) net")
    return problems
