"""A study's pooled Kaplan-Meier releases across its whole family, by brute force (ADR 0056).

Every release the study admits (each cohort: the population and every subgroup; each nominal study
variable as the event, each of its levels; no grouping or each other nominal variable) is derived as
a node's controls derive it (:func:`~mipflow.algorithms.survival_pooled.pooled_release` on the pooled
counts and the family's pooled cells in the layout of :mod:`mipflow.node.controls.study_pooled`) and
read as the central site reads it (:func:`~mipflow.algorithms.survival_pooled.read_slots`).  From the
releases the test lists every count a requester can form: each group's events, censorings and rows
leaving over every run of consecutive bins (at-risk counts are the runs to the end), and the groups
summed over runs between ends they share.  Each such count is the number of rows of a **kind** (a
set of row types: age band, sex, event status, ...) in an **interval** of the grid.  Where one count's
kind and interval lie inside another's for any data (structural nesting), their difference is the
number of rows of a set a requester can name: it must be 0 or at least ``nfilter_tab``.  Also checked:
every released cell itself; the population's curves are as fine as its own cells allow within the
family's bins; and the same brute force finds small differences when the population's bins are used
for every cohort, or each release is merged on its own cells only (the check can fail).
"""
from __future__ import annotations

from itertools import product

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mipflow.algorithms import survival_pooled
from mipflow.algorithms.survival import LEVEL_KEY, POINTS_KEY
from mipflow.algorithms.survival_bins import finest_partition
from mipflow.algorithms.survival_pooled import (FAMILY_POINTS_KEY, FAMILY_POPULATION_KEY, POOL_KEY, family_ends,
                                                pooled_release, read_slots)
from mipflow.node.controls.atoms import Atoms, isolatable
from mipflow.node.controls.study_pooled import _base, base_levels, family_matrix
from mipflow.node.controls.study_protocol import parse_protocol
from mipflow.node.controls.study_survival import merge
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import ELDERLY, MEN, WOMEN

#: grid points of the small protocol grid the brute force runs on
POINTS = 12
COHORTS = ("population", "elderly", "women", "men")
LEVELS = {"sex": ("M", "F"), "death_90d": ("yes", "no"), "stroke_type": ("ischaemic", "haemorrhagic", "tia")}


def protocol(event: bool):
    """The honest session's protocol (subgroups elderly, women, men); with ``event``, the protocol names
    the event variable and a third nominal variable joins (the other layout of the family's cells)."""
    variables = ["age", "sex", "followup_days", "death_90d"] + (["stroke_type"] if event else [])
    survival = {"time": "followup_days", "bin_width": 7.0, **({"event": "death_90d"} if event else {})}
    return parse_protocol({"name": "s", "data_model": STROKE.key, "datasets": ["hospital_a"], "variables": variables,
                           "population": {"filter": None},
                           "subgroups": [{"name": "elderly", "filter": ELDERLY}, {"name": "women", "filter": WOMEN},
                                         {"name": "men", "filter": MEN}],
                           "algorithms": ["kaplan_meier"], "survival": survival})


def rows(seed: int, n: int) -> pd.DataFrame:
    """Pooled study rows on the small grid: deaths early and dense (as within 90 days), censorings spread."""
    rng = np.random.default_rng(seed)
    death = rng.random(n) < 0.45
    point = np.where(death, np.minimum(rng.geometric(0.3, n) - 1, POINTS - 1), rng.integers(0, POINTS, n))
    return pd.DataFrame({"age": np.where(rng.random(n) < 0.45, 70.0, 50.0), "sex": rng.choice(["M", "F"], n),
                         "stroke_type": rng.choice(LEVELS["stroke_type"], n, p=[0.6, 0.25, 0.15]),
                         "death_90d": np.where(death, "yes", "no"), "point": point})


def cohort_masks(frame: pd.DataFrame) -> list[np.ndarray]:
    return [np.ones(len(frame), dtype=bool), (frame["age"] >= 65).to_numpy(), (frame["sex"] == "F").to_numpy(),
            (frame["sex"] == "M").to_numpy()]


class Kinds:
    """Row types (every combination of the variables' levels, age band included) and sets of them as bit masks."""

    def __init__(self, nominal: list[str]) -> None:
        self.nominal = nominal
        self.types = [dict(zip(["old", *nominal], combo))
                      for combo in product((False, True), *(LEVELS[v] for v in nominal))]

    def kind(self, cohort: int, **levels) -> int:
        """The bit mask of the types in ``cohort`` with ``levels`` (``v=level`` or ``v=("not", level)``)."""
        out = 0
        for bit, t in enumerate(self.types):
            inside = (True, t["old"], t["sex"] == "F", t["sex"] == "M")[cohort]
            for code, level in levels.items():
                inside &= t[code] != level[1] if isinstance(level, tuple) else t[code] == level
            out |= inside << bit
        return out

    def of_rows(self, frame: pd.DataFrame) -> np.ndarray:
        """Each row's type index."""
        index = {tuple(t.values()): k for k, t in enumerate(self.types)}
        keys = zip((frame["age"] >= 65).tolist(), *(frame[v].tolist() for v in self.nominal))
        return np.array([index[k] for k in keys], dtype=np.int64)


def releases(frame: pd.DataFrame, proto, tab: int):
    """Every release of the study's family that a node's controls let through: ``(cohort, event variable,
    level, groups)``, each group ``(levels, ends, events, censored)`` as the central site reads it."""
    nominal = [v for v in proto.variables if v in LEVELS]
    cohorts = cohort_masks(frame)
    base = _base(STROKE, proto, frame)
    family = family_matrix(cohorts, base, frame["point"].to_numpy(), POINTS)
    population_cells = len(base_levels(STROKE, proto))
    events = [proto.survival["event"]] if proto.survival.get("event") else nominal
    out = []
    for c, event in product(range(len(cohorts)), events):
        for level, grouping in product(LEVELS[event], [None, *(v for v in nominal if v != event)]):
            groups = [{}] if grouping is None else [{grouping: g} for g in LEVELS[grouping]]
            counts = []
            for g in groups:
                mask = cohorts[c].copy()
                for code, lv in g.items():
                    mask &= (frame[code] == lv).to_numpy()
                is_event = (frame[event] == level).to_numpy()
                counts.append({"events": np.bincount(frame["point"][mask & is_event], minlength=POINTS).tolist(),
                               "censored": np.bincount(frame["point"][mask & ~is_event], minlength=POINTS).tolist()})
            pool = {"events": [x["events"] for x in counts], "censored": [x["censored"] for x in counts],
                    "family": family, FAMILY_POINTS_KEY: list(range(POINTS)),
                    FAMILY_POPULATION_KEY: population_cells if c == 0 else 0}
            aggregates = {POOL_KEY: pool, POINTS_KEY: list(range(POINTS)), LEVEL_KEY: 1, "groups": counts, "nodes": 1}
            _current[0] = c
            released = pooled_release(aggregates, tab)
            if any(0 < v < tab for v in (*released["group_counts"], *released["cell_n"])):
                continue  # refused by the node's group_counts control
            read = read_slots([{"nodes": 1, "slots": released["slots"]}])
            out.append((c, event, level, [(g, r["ends"], r["events"], r["censored"]) for g, r in zip(groups, read)]))
    return out


#: the cohort being released (an index into COHORTS), for the alternative partitions below
_current = [0]


def counts_a_requester_forms(frame: pd.DataFrame, proto, tab: int) -> tuple[tuple[np.ndarray, ...], set[int]]:
    """Every count formed from the releases: ``(kinds, lo, hi, count)``, the rows of the kind with their
    grid point in ``(lo, hi]``, each checked against the rows themselves; and the cohorts released."""
    nominal = [v for v in proto.variables if v in LEVELS]
    kinds = Kinds(nominal)
    typed = kinds.of_rows(frame)
    table = np.zeros((len(kinds.types), POINTS), dtype=np.int64)
    np.add.at(table, (typed, frame["point"].to_numpy()), 1)
    cum = np.concatenate([np.zeros((len(kinds.types), 1), dtype=np.int64), np.cumsum(table, axis=1)], axis=1)

    def rows_of(kind: int, lo: int, hi: int) -> int:
        chosen = np.array([kind >> k & 1 for k in range(len(kinds.types))], dtype=bool)
        return int(np.sum(cum[chosen, hi + 1] - cum[chosen, lo + 1]))

    found: dict[tuple[int, int, int], int] = {}

    def add(kind: int, lo: int, hi: int, count: int) -> None:
        assert count == rows_of(kind, lo, hi), "a released count is not the count of its rows"
        found[(kind, lo, hi)] = count

    made = releases(frame, proto, tab)
    for c, event, level, groups in made:
        per_group = []
        for levels, ends, ev, ce in groups:
            starts = [-1, *ends[:-1]]
            died = kinds.kind(c, **levels, **{event: level})
            stayed = kinds.kind(c, **levels, **{event: ("not", level)})
            for i in range(len(ends)):
                for j in range(i, len(ends)):
                    add(died, starts[i], ends[j], sum(ev[i:j + 1]))
                    add(stayed, starts[i], ends[j], sum(ce[i:j + 1]))
                    add(died | stayed, starts[i], ends[j], sum(ev[i:j + 1]) + sum(ce[i:j + 1]))
            per_group.append({-1: (0, 0), **dict(zip(ends, zip(np.cumsum(ev).tolist(), np.cumsum(ce).tolist())))})
        if len(groups) > 1:  # the groups summed between ends they share: the cohort's events and censorings
            shared = sorted(set.intersection(*(set(g) for g in per_group)))
            died, stayed = kinds.kind(c, **{event: level}), kinds.kind(c, **{event: ("not", level)})
            for a, b in ((a, b) for a in shared for b in shared if a < b):
                add(died, a, b, sum(g[b][0] - g[a][0] for g in per_group))
                add(stayed, a, b, sum(g[b][1] - g[a][1] for g in per_group))
                add(died | stayed, a, b, sum(g[b][0] + g[b][1] - g[a][0] - g[a][1] for g in per_group))
    keys = np.array(list(found), dtype=np.int64).reshape(-1, 3)
    counts = np.array(list(found.values()), dtype=np.int64)
    return (keys[:, 0], keys[:, 1], keys[:, 2], counts), {c for c, *_ in made}


def small_differences(kinds: np.ndarray, lo: np.ndarray, hi: np.ndarray, count: np.ndarray, tab: int) -> list:
    """Every pair of counts whose kind and interval nest, with a difference of 1 to ``tab - 1`` rows; and
    every count of 1 to ``tab - 1`` rows."""
    bad = [(int(k), int(a), int(b), int(n)) for k, a, b, n in zip(kinds, lo, hi, count) if 0 < n < tab]
    for x in range(len(count)):
        inside = np.flatnonzero(((kinds & ~kinds[x]) == 0) & (lo >= lo[x]) & (hi <= hi[x]))
        gap = count[x] - count[inside]
        assert np.all(gap >= 0)
        small = (gap > 0) & (gap < tab)
        bad += [((int(kinds[x]), int(lo[x]), int(hi[x])), (int(kinds[y]), int(lo[y]), int(hi[y])), int(g))
                for y, g in zip(inside[small], gap[small])]
    return bad


def isolated_small_atoms(formed: tuple[np.ndarray, ...], frame: pd.DataFrame, proto, tab: int) -> int:
    """How many atoms that some linear combination of the formed counts isolates hold 1 to ``tab - 1``
    rows (ADR 0023's atom rule, :mod:`mipflow.node.controls.atoms`).  The atoms are structural: row types
    by grid points alike in every formed count, whether or not the data have rows there (a requester
    does not know which are empty), so a chain of subtractions across cohorts and partitions counts."""
    kinds, lo, hi, _ = formed
    types = Kinds([v for v in proto.variables if v in LEVELS])
    table = np.zeros((len(types.types), POINTS), dtype=np.int64)
    np.add.at(table, (types.of_rows(frame), frame["point"].to_numpy()), 1)
    t, p = np.arange(len(types.types))[:, None], np.arange(POINTS)[None, :]
    incidence = np.stack([(((k >> t) & 1).astype(bool) & (p > a) & (p <= b)).ravel() for k, a, b in zip(kinds, lo, hi)])
    columns, which = np.unique(incidence.T, axis=0, return_inverse=True)
    sizes = np.bincount(which.ravel(), weights=table.ravel(), minlength=len(columns)).astype(np.int64)
    found = isolatable(Atoms(columns.T.astype(np.uint8), sizes), PRIMES)
    return int(np.sum(found & (sizes > 0) & (sizes < tab)))


#: primes for the atom rule's ranks (any large primes: the test is not a node)
PRIMES = (2147483647, 2147483629, 2147483587)


def approvable(frame: pd.DataFrame, proto, tab: int) -> bool:
    """What approval's level-cell rule guarantees before any Kaplan-Meier release: every family cell (each
    cohort and difference by the level cells) holds 0 or at least ``tab`` rows over the whole grid."""
    family = family_matrix(cohort_masks(frame), _base(STROKE, proto, frame), frame["point"].to_numpy(), POINTS)
    totals = family.sum(axis=1)
    return bool(np.all((totals == 0) | (totals >= tab)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.integers(0, 2 ** 31 - 1), st.integers(300, 700), st.sampled_from([2, 3, 4]), st.booleans())
def test_no_count_formed_from_the_family_s_pooled_releases_isolates_fewer_than_nfilter_tab(seed, n, tab,
                                                                                          event) -> None:
    proto = protocol(event)
    frame = rows(seed, n)
    assume(approvable(frame, proto, tab))
    formed, released = counts_a_requester_forms(frame, proto, tab)
    assert released == set(range(len(COHORTS)))  # every cohort has releases (their groups large enough)
    assert small_differences(*formed, tab) == []
    assert isolated_small_atoms(formed, frame, proto, tab) == 0


@pytest.mark.parametrize("event", [pytest.param(False, id="any-event"), pytest.param(True, id="event-named")])
def test_the_population_s_curves_are_as_fine_as_its_own_cells_allow_within_the_family_bins(event) -> None:
    proto = protocol(event)
    frame = rows(7, 400)
    base = _base(STROKE, proto, frame)
    family = family_matrix(cohort_masks(frame), base, frame["point"].to_numpy(), POINTS)
    coarse = family_ends(family, 0, 3)
    fine = family_ends(family, len(base), 3)
    assert coarse == finest_partition(family, 3)  # a subgroup's bins: the family partition (ADR 0052)
    assert set(coarse) <= set(fine) and len(fine) > len(coarse)  # the population's refine them
    merged = merge(family[:len(base)], fine)
    assert np.all((merged == 0) | (merged >= 3))
    # within each family bin no finer partition keeps the population's cells safe (brute force)
    start = 0
    for end in coarse:
        inside = [e for e in fine if start <= e <= end]
        segment = family[:len(base), start:end + 1]
        best = max(len(c) for c in _partitions(end - start + 1) if _safe(segment, c, 3))
        assert len(inside) == best
        start = end + 1


def _partitions(width: int):
    for cuts in product((False, True), repeat=width - 1):
        yield [k for k, cut in enumerate(cuts) if cut] + [width - 1]


def _safe(counts: np.ndarray, ends: list[int], tab: int) -> bool:
    merged = merge(counts[counts.sum(axis=1) >= tab], ends)
    return bool(np.all((merged == 0) | (merged >= tab)))


#: the family's sets: the cohorts, then every ordered pair's difference
SETS = len(COHORTS) ** 2


def _population_bins_for_everyone(family, population_cells, tab):
    return family_ends(family, len(family) // SETS, tab)  # the population's refinement for every cohort


def _own_cells_only(family, population_cells, tab):
    cells = len(family) // SETS  # each cohort's own cells: rows c * cells .. (c + 1) * cells of the layout
    return finest_partition(family[_current[0] * cells:(_current[0] + 1) * cells], tab)


def _population_bins_not_nested(family, population_cells, tab):
    """The population's own finest partition, not a refinement of the family's."""
    return finest_partition(family[:population_cells], tab) if population_cells else finest_partition(family, tab)


@pytest.mark.parametrize("ends_of, seed, n", [
    pytest.param(_population_bins_for_everyone, 7, 400, id="population-bins-for-all"),
    pytest.param(_own_cells_only, 7, 400, id="each-cohort-its-own-cells"),
    pytest.param(_population_bins_not_nested, 1, 300, id="population-bins-not-nested-in-the-family-s"),
])
def test_the_brute_force_finds_the_small_differences_of_weaker_partitions(ends_of, seed, n, monkeypatch) -> None:
    """Tempting alternatives leak: the elderly's curve subtracted from the population's gives the young's
    deaths where they are 1 or 2 (bins finer than the family's for every cohort, or each cohort's own);
    and where the population's bins do not nest the family's, a population bin less a subgroup's bin
    overlapping it leaves 1 or 2 rows."""
    proto = protocol(False)
    frame = rows(seed, n)
    assert approvable(frame, proto, 3)
    formed, _ = counts_a_requester_forms(frame, proto, 3)
    assert small_differences(*formed, 3) == [] and isolated_small_atoms(formed, frame, proto, 3) == 0
    monkeypatch.setattr(survival_pooled, "family_ends", ends_of)
    weaker, _ = counts_a_requester_forms(frame, proto, 3)
    assert small_differences(*weaker, 3) != []
