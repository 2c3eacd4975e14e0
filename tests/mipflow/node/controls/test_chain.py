"""The chain rule over cohorts and released groups together (mipflow.node.controls.chain; ADR 0051, thirteenth
review): a group and two cohorts isolating one patient, in either order, across data models and restarts; the
thresholds by level; what a release hands over (cells, not margins) and the windows."""
from __future__ import annotations

import sqlite3
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms.contract import ReleasedGroups
from mipflow.exceptions import DisclosureError
from mipflow.node.controls import chain as chain_module
from mipflow.node.controls.atoms import node_primes
from mipflow.node.controls.chain import (
    CHAIN_GROUPS, ChainSet, _dedupe, bounded, by_recency, chain_allows, related_pools,
)
from mipflow.node.controls.groups import (
    GROUPS_FILE, Group, GroupMemory, GroupRelease, _digest, kind_of, level_groups,
)
from mipflow.node.controls.released_groups import chain_groups
from mipflow.node.controls.keycodec import encode_keys
from mipflow.node.controls.ledger import CHAIN_COHORTS, CohortLedger, cohort_digest
from tests.mipflow.algorithms.survival_data import STROKE

PRIMES = node_primes(bytes(range(32)))
M, TAB = 10, 3
MODEL = STROKE.key
N = 240
#: stroke types by position (80 each); ten patients under 25: nine of other types and one TIA patient
TYPES = np.array(["ischaemic", "haemorrhagic", "tia"])[np.arange(N) % 3]
YOUNG = np.r_[np.flatnonzero(TYPES != "tia")[:9], np.flatnonzero(TYPES == "tia")[4]]


def keys(positions) -> np.ndarray:
    return np.unique(np.asarray(list(positions), dtype=np.uint64))


EVERYONE = keys(range(N))
ADULTS = keys(np.setdiff1d(np.arange(N), YOUNG))
ADULT_OTHERS = keys(np.setdiff1d(np.flatnonzero(TYPES != "tia"), YOUNG))
CELLS = {level: keys(np.flatnonzero(TYPES == level)) for level in ("ischaemic", "haemorrhagic", "tia")}


def cell(level: str, rows: np.ndarray, model: str = MODEL, patients=None, is_cell: bool = True) -> Group:
    kind = kind_of(model, [("stroke_type", level)])
    return Group(kind, rows, _digest(kind, rows), model, patients, cell=is_cell)


def answer(ledger: CohortLedger, memory: GroupMemory, cohort: np.ndarray, model: str = MODEL, patients=None) -> None:
    """A step without groups (descriptive statistics): the guard's check, then the record."""
    patients = None if patients is None else [patients]
    ledger.check(model, [cohort], M, patients=patients, primes=PRIMES, released=memory.chain_sets())
    ledger.record(model, [cohort], patients=patients)


def anova(ledger: CohortLedger, memory: GroupMemory, cohort: np.ndarray, groups: list[Group],
          threshold: int = M) -> None:
    """A step releasing groups: its cohort (``check_cohort``), then its fresh cohort and new cells as one
    addition (:func:`chain_groups`, as ``check_groups`` calls it), then the records."""
    ledger.check(MODEL, [cohort], M, primes=PRIMES, released=memory.chain_sets())
    fresh = [] if ledger.recorded(MODEL, cohort_digest(MODEL, cohort)) else [0]
    guard = SimpleNamespace(ledger=ledger, groups=memory, primes=PRIMES)
    step = SimpleNamespace(data_model=MODEL, sets=(cohort,), patients=None)
    union = np.unique(np.concatenate([g.rows for g in groups]))
    release = GroupRelease(tuple(groups), union, cohort_digest(MODEL, union), threshold, "min_row_count")
    chain_groups(guard, step, fresh, release, M, memory.chain_sets())
    ledger.record(MODEL, [cohort])
    memory.record(groups, threshold)


def home(path) -> tuple[CohortLedger, GroupMemory]:
    path.mkdir(parents=True, exist_ok=True)
    return CohortLedger(path), GroupMemory(path)


def test_the_review_s_group_and_two_cohorts_are_refused_in_either_order_and_after_a_restart(tmp_path) -> None:
    """Hole 4 of the thirteenth review: every pair is far apart, the TIA group less the two cohorts' difference is
    the one TIA patient under 25."""
    ledger, memory = home(tmp_path / "group-first")
    anova(ledger, memory, EVERYONE, [cell(level, rows) for level, rows in CELLS.items()])
    answer(ledger, memory, ADULTS)
    with pytest.raises(DisclosureError) as refused:
        answer(ledger, memory, ADULT_OTHERS)
    assert refused.value.control == "differencing" and "min_row_count (10)" in str(refused.value)
    # the node restarted: the group memory and the ledger are read back from disk
    again = CohortLedger(tmp_path / "group-first")
    with pytest.raises(DisclosureError):
        again.check(MODEL, [ADULT_OTHERS], M, primes=PRIMES, released=GroupMemory(tmp_path / "group-first").chain_sets())
    # without the groups the cohorts alone isolate nothing smaller than ten rows: what the rule missed before
    again.check(MODEL, [ADULT_OTHERS], M, primes=PRIMES)
    # the cohorts first, the ANOVA last: its cells and its cohort are one addition
    ledger, memory = home(tmp_path / "cohorts-first")
    answer(ledger, memory, ADULTS)
    answer(ledger, memory, ADULT_OTHERS)
    with pytest.raises(DisclosureError):
        anova(ledger, memory, EVERYONE, [cell(level, rows) for level, rows in CELLS.items()])


def test_the_group_is_compared_by_patients_under_another_data_model(tmp_path) -> None:
    """The ANOVA under stroke 0.1, the cohorts under the next version (other row keys, the same patients)."""
    ledger, memory = home(tmp_path)
    groups = [Group(g.kind, g.rows, g.digest, g.data_model, g.rows) for g in
              (cell(level, rows) for level, rows in CELLS.items())]
    memory.record(groups, M)
    ledger.record(MODEL, [EVERYONE], patients=[EVERYONE])
    shifted = np.uint64(10_000)  # row keys of the other data model
    answer(ledger, memory, ADULTS + shifted, model="stroke:0.2", patients=ADULTS)
    with pytest.raises(DisclosureError):
        answer(ledger, memory, ADULT_OTHERS + shifted, model="stroke:0.2", patients=ADULT_OTHERS)


@pytest.mark.parametrize(("young_tia", "threshold", "allowed"), [
    pytest.param(1, M, False, id="one patient, a group with its spread"),
    pytest.param(5, M, False, id="five patients, a group with its spread: min_row_count"),
    pytest.param(5, TAB, True, id="five patients, a regression dummy: first sums of nfilter_tab rows or more"),
    pytest.param(2, TAB, False, id="two patients, a regression dummy"),
])
def test_an_atom_is_held_to_the_threshold_of_the_sets_that_isolate_it(young_tia, threshold, allowed) -> None:
    """A combination using a dummy level (first moments only) gives the atom's count and sums: held to
    ``nfilter_tab``; without any, to ``min_row_count``."""
    young_others = keys(range(1000, 1020))
    young = keys(range(2000, 2000 + young_tia))
    tia = np.union1d(keys(range(100)), young)
    everyone = np.union1d(np.union1d(keys(range(300)), young_others), young)
    adults = keys(range(300))
    adult_others = keys(range(100, 300))
    old = [ChainSet(MODEL, c, None, M) for c in (everyone, adults)]
    group = [ChainSet(MODEL, tia, None, threshold)]
    assert chain_allows(MODEL, old, group, [ChainSet(MODEL, adult_others, None, M)], M, PRIMES) is allowed
    # and the cohorts alone isolate nothing new of fewer than ten rows
    assert chain_allows(MODEL, old, [], [ChainSet(MODEL, adult_others, None, M)], M, PRIMES)


def test_a_release_hands_over_its_cells_not_its_margins(tmp_path) -> None:
    data = pd.DataFrame({"stroke_type": ["tia", "ischaemic", "haemorrhagic", "tia", "ischaemic", "tia"],
                         "sex": ["F", "F", "M", "M", "F", "M"]})
    rows = np.arange(100, 106, dtype=np.uint64)
    groups, _ = level_groups(data, rows, [ReleasedGroups(("stroke_type", "sex"))], STROKE, MODEL)
    cells = [g for g in groups if g.cell]
    assert len(cells) == 4 and len(groups) == 4 + 3 + 2  # the joint levels present; each factor's margins
    assert all('"stroke_type"' in g.kind and '"sex"' in g.kind for g in cells)
    memory = GroupMemory(tmp_path)
    memory.record(groups, M)
    assert len(memory.chain_sets()) == 4  # margins are sums of the cells remembered with them
    assert len(GroupMemory(tmp_path).chain_sets()) == 4  # the flag is on disk
    one_way, _ = level_groups(data, rows, [ReleasedGroups(("stroke_type",)), ReleasedGroups(("sex",))], STROKE,
                              MODEL)
    assert all(g.cell for g in one_way)  # a regression's nominal covariates: each level its own grouping's cell


def test_a_memory_from_before_hands_every_group_to_the_chain(tmp_path) -> None:
    tia = kind_of(MODEL, [("stroke_type", "tia")])
    rows = CELLS["tia"]
    with sqlite3.connect(tmp_path / GROUPS_FILE) as conn:  # ADR 0051 after the twelfth review
        conn.execute("CREATE TABLE groups (data_model TEXT NOT NULL, kind TEXT NOT NULL, digest TEXT NOT NULL, "
                     "n_rows INTEGER NOT NULL, threshold INTEGER NOT NULL, keys BLOB NOT NULL, "
                     "first_at TEXT NOT NULL, patients BLOB, PRIMARY KEY (kind, digest))")
        conn.execute("INSERT INTO groups VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (MODEL, tia, _digest(tia, rows), len(rows), M, encode_keys(rows), "2027-01-01T00:00:00+00:00",
                      None))
    ledger, memory = CohortLedger(tmp_path), GroupMemory(tmp_path)
    assert [len(s.rows) for s in memory.chain_sets()] == [80]
    for cohort in (EVERYONE, ADULTS):
        answer(ledger, memory, cohort)
    with pytest.raises(DisclosureError):
        answer(ledger, memory, ADULT_OTHERS)


def test_honest_releases_of_groups_beside_cohorts_are_answered(tmp_path) -> None:
    """An ANOVA of twelve levels after descriptive statistics of the same cohort and of adults, then on adults
    (every level loses ten rows); a t-test of one level against the rest of the same cohort; a regression's
    dummies on two subgroups.  With five young patients a level, the ANOVA on adults is refused: each level's
    young are its group on everyone less its group on adults (a real leak, which the pairwise rule of the same
    kind refuses too)."""
    n = 600
    levels = np.arange(n) % 12

    def by_level(cohort: np.ndarray) -> list[Group]:
        positions = cohort.astype(np.int64)
        return [cell(f"l{level}", keys(positions[levels[positions] == level])) for level in range(12)]

    everyone, adults = keys(range(n)), keys(range(120, n))  # 120 young, ten of each level
    ledger, memory = home(tmp_path)
    answer(ledger, memory, everyone)
    answer(ledger, memory, adults)
    for cohort in (everyone, adults):
        anova(ledger, memory, cohort, by_level(cohort))
    few = keys(range(60, n))  # five young a level
    answer(ledger, memory, few)
    with pytest.raises(DisclosureError):
        anova(ledger, memory, few, by_level(few))
    anova(ledger, memory, everyone, [cell("l0", keys(np.flatnonzero(levels == 0)))]
          + [cell("other", keys(np.flatnonzero(levels != 0)))])  # a t-test of one level against the rest
    women, elderly = keys(range(0, n, 2)), keys(range(300, n))
    for cohort in (women, elderly):  # a regression with a two-level dummy: first sums, nfilter_tab
        positions = cohort.astype(np.int64)
        anova(ledger, memory, cohort, [cell("a", keys(positions[positions % 4 < 2])),
                                       cell("b", keys(positions[positions % 4 >= 2]))], threshold=TAB)


def test_the_group_window_is_its_own_and_a_release_of_many_cells_keeps_old_sets() -> None:
    seed = [keys(range(10))]
    cohorts = [keys(range(5, 15)), keys(range(100, 110)), keys(range(12, 20))]
    groups = [keys(range(8, 9)), keys(range(18, 30)), keys(range(500, 510))]
    assert related_pools(seed, [cohorts, groups], (CHAIN_COHORTS, CHAIN_GROUPS)) == [[0, 2], [0, 1]]
    assert related_pools(seed, [cohorts, groups], (1, 1)) == [[0], [0]]  # each pool its own cap
    assert related_pools(seed, [cohorts, []], (CHAIN_COHORTS, CHAIN_GROUPS))[0] == [0, 2]
    a, b, c = (ChainSet(MODEL, keys([i]), None, M) for i in range(3))
    x, y = (ChainSet(MODEL, keys([i]), None, M) for i in range(10, 12))
    merged = by_recency([[a, b, c], [x, y]])  # the most recent of each pool last; at one rank, the cohort
    assert [id(s) for s in merged] == [id(s) for s in (a, x, b, y, c)]
    # twelve disjoint cells of a release over rows that forty old sets cut into thousands of atoms
    rng = np.random.default_rng(0)
    rows = np.arange(20_000)
    old = [keys(rows[rng.random(rows.size) < 0.5]) for _ in range(40)]
    cells = [keys(rows[rows % 12 == level]) for level in range(12)]
    kept = bounded(old, cells, limit=2048)
    assert len(kept) == 7 and all(k is o for k, o in zip(kept, old[-7:]))  # (12 + 1) * 2**7 - 1 <= 2048 < 13 * 2**8


def test_a_group_that_is_a_cohort_too_enters_once_at_the_larger_threshold() -> None:
    """Women as a filter (a cohort, ``min_row_count``) and as a regression's dummy level (``nfilter_tab``)."""
    women, men = keys(range(0, 100, 2)), keys(range(1, 100, 2))
    sets = [ChainSet(MODEL, women, None, M), ChainSet(MODEL, men, None, TAB), ChainSet(MODEL, women.copy(), None, TAB),
            ChainSet("other:1", women, None, TAB)]
    kept = _dedupe(sets)
    assert [(s.data_model, len(s.rows), s.threshold) for s in kept] == [(MODEL, 50, TAB), (MODEL, 50, M),
                                                                        ("other:1", 50, TAB)]
    assert kept[1].rows is sets[2].rows  # in the place of the most recent copy


def test_one_cap_serves_every_chain_window() -> None:
    """Issue 14 item 5: the cohort ledger's chain, the group memory's and the weighted memory's (ADR 0058) are
    bounded by one function, which keeps the most recent ``k`` old sets with ``(atoms of new + 1) * 2**k - 1``
    at most the limit: one new set keeps ten old sets at 2048 atoms, as the weighted memory's own cap did."""
    from mipflow.node.controls import ledger, weighted_ledger
    from mipflow.node.controls.atoms import atoms_of

    assert chain_module.bounded is ledger.bounded is weighted_ledger.bounded
    assert not hasattr(ledger, "_bounded")
    rng = np.random.default_rng(1)
    rows = np.arange(20_000)
    old = [keys(rows[rng.random(rows.size) < 0.5]) for _ in range(40)]
    one = [keys(rows[: 10_000])]
    kept = ledger.bounded(old, one, limit=2048)
    assert len(kept) == 10 and all(k is o for k, o in zip(kept, old[-10:]))
    assert atoms_of(kept + one).sizes.size <= 2048 < atoms_of(old[-11:] + one).sizes.size
    small = old[:3]  # a family under the limit is kept whole
    assert ledger.bounded(small, one, limit=2048) is small
