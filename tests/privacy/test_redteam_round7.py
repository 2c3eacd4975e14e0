"""Outside review, round 7: standard-mode survival releases after "one partition per cohort" (ADR 0008).

A researcher with a valid grant at a standard-mode node (``conftest.start_node``: min_row_count 10,
nfilter_tab 3, differencing ledger on) asks Kaplan-Meier (and Cox round 0) through the documented
request format only, and combines the releases linearly.  What a release says, per group: the
cumulative events and censorings at each bin end (a day of ``followup_days``, an integer variable
from 0: fine index = day).  A group of a release with event ``v = level`` is a set of rows; its events
are the rows of the set with that level, its censorings the others.  Every such set is a union of
*atoms*: the partition of the rows that all the observed sets generate.  :class:`Knowledge` propagates
what the releases determine: a sum over atoms known at a time with all but one atom known gives the
last; a zero bin of a set keeps each of its atoms' cumulative counts constant over it.  A cell is two
consecutive determined cumulative counts of one atom: a hole when it holds 1 .. nfilter_tab - 1 rows.

The propagation is a subset of linear algebra: every value it finds is determined by the releases
(the tests check it against the rows), but a "no cell found" only says this attacker found none.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

from tests.privacy.conftest import Node, start_node, where

Atom = tuple
VARS = ("sex", "stroke_type", "death_90d", "dataset", "hypertension")


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Node]:
    """A standard node with the default controls and room in its query budget, its ledger empty."""
    yield from start_node(tmp_path, query_budget=10_000)


def _string_rule(field: str, value: str) -> dict:
    return {"id": field, "field": field, "type": "string", "input": "text", "operator": "equal", "value": value}


class Knowledge:
    """Cumulative counts of atoms of rows at bin ends, as far as a set of releases determines them."""

    def __init__(self, node: Node):
        self.node = node
        self.fine: list[Atom] = sorted(set(node.rows.apply(lambda r: tuple(r[v] for v in VARS), axis=1)))
        self.obs: list[tuple[frozenset, int, int]] = []    # (set of fine atoms, end, cumulative count)
        self.zero: list[tuple[frozenset, int, int]] = []   # (set, a, b): nobody of the set leaves in (a, b]

    @staticmethod
    def _is(var: str, value) -> Callable[[Atom], bool]:
        return lambda a: a[VARS.index(var)] == value

    def release(self, *, event: tuple[str, str], x: str | None = None, width: float = 1.0,
                cohort: Callable[[Atom], bool] = lambda a: True, **kwargs) -> None:
        """Ask Kaplan-Meier and record what its reply says (it must be answered)."""
        reply = self.node.allowed("kaplan_meier", y=["followup_days", event[0]], x=[x] if x else [],
                                  parameters={"event_level": event[1], "bin_width": width}, **kwargs)
        is_event = self._is(*event)
        for group in reply["aggregates"]["groups"]:
            members = [a for a in self.fine if cohort(a) and (x is None or a[VARS.index(x)] == group["level"])]
            for rows, counts in ((frozenset(a for a in members if is_event(a)), group["events"]),
                                 (frozenset(a for a in members if not is_event(a)), group["censored"])):
                previous = None
                for end, total, count in zip(group["ends"], np.cumsum(counts), counts):
                    self.obs.append((rows, int(end), int(total)))
                    if count == 0 and previous is not None:
                        self.zero.append((rows, previous, int(end)))
                    previous = int(end)

    def cells(self, tab: int) -> list[tuple[frozenset, int, int, int]]:
        """(fine atoms of one atom, t1, t2, rows leaving in (t1, t2]) for every determined cell of
        1 .. tab - 1 rows."""
        sets = {s for s, _, _ in self.obs}
        signature = {a: tuple(a in s for s in sorted(sets, key=sorted)) for a in self.fine}
        blocks: dict[tuple, set] = {}
        for a in self.fine:
            blocks.setdefault(signature[a], set()).add(a)
        atom_of = {a: frozenset(b) for b in blocks.values() for a in b}
        lift = lambda s: frozenset(atom_of[a] for a in s)  # noqa: E731
        obs = [(lift(s), t, v) for s, t, v in self.obs]
        zero = [(lift(s), lo, hi) for s, lo, hi in self.zero]
        known: dict[tuple[frozenset, int], int] = {}
        changed = True
        while changed:
            changed = False
            for s, t, v in obs:
                unknown = [a for a in s if (a, t) not in known]
                if len(unknown) == 1:
                    known[(unknown[0], t)] = v - sum(known[(a, t)] for a in s if a != unknown[0])
                    changed = True
            for s, lo, hi in zero:
                for a in s:
                    if ((a, lo) in known) != ((a, hi) in known):
                        known[(a, lo)] = known[(a, hi)] = known.get((a, lo), known.get((a, hi)))
                        changed = True
        out = []
        for atom in set(atom_of.values()):
            previous_t, previous_v = -1, 0
            for t in sorted(t for a, t in known if a == atom):
                if 0 < known[(atom, t)] - previous_v < tab:
                    out.append((atom, previous_t, t, known[(atom, t)] - previous_v))
                previous_t, previous_v = t, known[(atom, t)]
        return out

    def truth(self, atom: frozenset, t1: int, t2: int) -> int:
        rows = self.node.rows
        keys = rows.apply(lambda r: tuple(r[v] for v in VARS), axis=1)
        return int((keys.isin(list(atom)) & (rows["followup_days"] > t1) & (rows["followup_days"] <= t2)).sum())


def _assert_recovered(knowledge: Knowledge) -> list:
    """The hole: the releases determine cells of 1 .. nfilter_tab - 1 rows, each equal to the rows."""
    tab = knowledge.node.home.settings.nfilter_tab
    cells = knowledge.cells(tab)
    assert cells, "no small cell recovered"
    for atom, t1, t2, n in cells:
        assert 0 < n < tab
        assert knowledge.truth(atom, t1, t2) == n, (sorted(atom)[:2], t1, t2, n)
    return cells


# --------------------------------------------------------------------------- holes


@pytest.mark.parametrize("width", [1.0, 30.0])
def test_hole_a_cohort_and_its_halves_by_filter_isolate_cells_of_one_or_two_rows(fresh, width):
    """Class: complements across requests, cohorts split by a filter (ADR 0008's "one partition per
    cohort" covers groups *inside* one release only).  Requests: Kaplan-Meier (death) of everyone, of
    ``sex = F`` and of ``sex = M`` (filters).  Each cohort gets its own partition (L, P), so the halves'
    ends interleave with the whole's: the whole minus one half at the whole's ends, against that half
    at its own ends, or the two halves summed at common ends against the whole, give cells of 1 or 2
    rows (e.g. the women censored between two days).  Recovers: which days 1 or 2 women/men died or
    were censored in.  Should stop it: the differencing ledger sees three large cohorts (pairwise
    differences ~120 rows, atoms F and M large) and passes them; the partition should be one per
    *population* (cohorts that are unions of each other's atoms share it), or the ledger's atom rule
    should be applied to the survival cells (bins x cohorts), not to the cohorts alone."""
    k = Knowledge(fresh)
    k.release(event=("death_90d", "yes"), width=width)
    for sex in ("F", "M"):
        k.release(event=("death_90d", "yes"), width=width, cohort=Knowledge._is("sex", sex),
                  filters=where(_string_rule("sex", sex)))
    _assert_recovered(k)


def test_hole_dataset_subsets_of_one_cohort_isolate_cells_of_one_or_two_rows(fresh):
    """Class: the same through the request's ``datasets`` list (no filter at all).  Requests:
    Kaplan-Meier (death) on each of the 7 non-empty subsets of the node's three datasets.  Each subset
    is its own cohort with its own partition; sums and differences of subsets at each other's ends
    isolate cells of 1 or 2 rows of one dataset.  Recovers: days in which 1 or 2 patients of one
    hospital died / were censored.  Should stop it: as above (the ledger passes: every pair differs by
    ~80 rows or more, no atom is small)."""
    k = Knowledge(fresh)
    names = ["hospital_a", "hospital_b", "hospital_c"]
    for size in (1, 2, 3):
        for subset in itertools.combinations(names, size):
            k.release(event=("death_90d", "yes"), cohort=lambda a, s=subset: a[VARS.index("dataset")] in s,
                      datasets=list(subset))
    _assert_recovered(k)


@pytest.mark.parametrize("width", [1.0, 30.0])
def test_the_levels_of_a_three_level_event_variable_isolate_no_cell(fresh, width):
    """Class: event definitions.  Requests: Kaplan-Meier with event ``stroke_type`` = ``tia``, then
    ``haemorrhagic``, then ``ischaemic``, one cohort, no group.  Found open by this review: each event's
    partition P was L merged on that event's counts, so the three differed, and at an end of the
    haemorrhagic and ischaemic releases that the tia release lacked, tia = (tia + ischaemic, the
    haemorrhagic release's censorings) - ischaemic gave cells of 1 or 2 TIAs (15 at width 1, 9 at 30).
    Closed: P is merged until every level of the event variable (and the rows followed beyond the
    grid) is 0 or >= nfilter_tab (``survival.leaving_series``), so the three releases share their bins
    (ADR 0008)."""
    k = Knowledge(fresh)
    for level in ("tia", "haemorrhagic", "ischaemic"):
        k.release(event=("stroke_type", level), width=width)
    assert k.cells(fresh.home.settings.nfilter_tab) == []
    assert len(k.obs) > 10  # the releases did say something


# --------------------------------------------------------------------------- defences that held


def test_grouped_and_ungrouped_releases_crossing_grouping_and_event_variables_isolate_no_cell(fresh):
    """Class: grouped vs ungrouped under different event definitions (cross-tabulated cells through
    two releases).  Requests: death by stroke type; TIA by death; TIA alone; death by sex; sex = F as
    the event; death alone; hypertension, alone and by sex.  Every set these releases observe is a
    union of groups whose counts sit on one L, and this attacker (propagation, see module) determines
    no cell of 1 or 2 rows.  Holds: ADR 0008's nested L / P / shared-group bins."""
    k = Knowledge(fresh)
    k.release(event=("death_90d", "yes"), x="stroke_type")
    k.release(event=("stroke_type", "tia"), x="death_90d")
    k.release(event=("stroke_type", "tia"))
    k.release(event=("death_90d", "yes"), x="sex")
    k.release(event=("sex", "F"))
    k.release(event=("death_90d", "yes"))
    k.release(event=("hypertension", "yes"))
    k.release(event=("hypertension", "yes"), x="sex")
    assert k.cells(fresh.home.settings.nfilter_tab) == []
    assert len(k.obs) > 1000  # the releases did say something: many ends, many sets


def test_cox_round_zero_releases_the_kaplan_meier_bins_of_the_cohort_so_isolates_no_new_cell(fresh):
    """Class: Cox round-0 bins vs Kaplan-Meier bins of the same cohort.  Cox's round 0 (covariates age,
    or age and sex) releases a coarsening of the ungrouped Kaplan-Meier release (its bins hold
    ``min_row_count`` events and censorings, ADR 0046, nested in Kaplan-Meier's), so it adds no end to
    difference against: its counts are sums of Kaplan-Meier's between its ends.  Holds."""
    km = fresh.allowed("kaplan_meier", y=["followup_days", "death_90d"],
                       parameters={"event_level": "yes", "bin_width": 1.0})["aggregates"]["groups"][0]
    for x in (["age"], ["age", "sex"]):
        cox = fresh.allowed("cox_regression", y=["followup_days", "death_90d"], x=x,
                            parameters={"event_level": "yes", "bin_width": 1.0})["aggregates"]
        assert set(cox["ends"]) <= set(km["ends"]) and cox["ends"][-1] == km["ends"][-1]
        where = np.searchsorted(np.asarray(cox["ends"]), np.asarray(km["ends"]), side="left")
        assert cox["events"] == np.bincount(where, weights=km["events"], minlength=len(cox["ends"])).astype(int).tolist()
        assert cox["censored"] == np.bincount(where, weights=km["censored"],
                                              minlength=len(cox["ends"])).astype(int).tolist()
        assert all(v == 0 or v >= fresh.home.settings.min_row_count for v in (*cox["events"], *cox["censored"]))


def test_a_kaplan_meier_cohort_a_few_rows_from_an_answered_one_is_refused(fresh):
    """Class: filters adding/removing a few rows around survival releases.  Kaplan-Meier of everyone,
    then of everyone but the target (age != 18.5) and of everyone but one dataset's oldest patients
    (a handful of rows): the differencing ledger refuses both.  Holds."""
    from tests.privacy.conftest import TARGET_AGE, rule

    survival = dict(y=["followup_days", "death_90d"], parameters={"event_level": "yes"})
    fresh.allowed("kaplan_meier", **survival)
    fresh.refused("differencing", "kaplan_meier", **survival, filters=where(rule("age", "not_equal", TARGET_AGE)))
    oldest = float(fresh.rows["age"].max())
    few = int((fresh.rows["age"] >= oldest).sum())
    assert 0 < few < fresh.home.settings.min_row_count
    fresh.refused("differencing", "kaplan_meier", **survival, filters=where(rule("age", "less", oldest)))
