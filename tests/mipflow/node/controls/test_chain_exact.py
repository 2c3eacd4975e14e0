"""The chain rule's exact backstop (:mod:`mipflow.node.controls.chain_exact`, ADR 0030 amended): the incremental
state against the atom rule from scratch, its refusals and what it allows, the cache, the bound."""
from __future__ import annotations

import numpy as np
import pytest

from mipflow.node.controls import chain, chain_exact
from mipflow.node.controls.atoms import atom_labels, check_addition, isolatable
from mipflow.node.controls.chain import PATIENTS, ChainSet, backstop_allows, chain_allows
from mipflow.node.controls.chain_exact import Exact, exact_allows, new_small_atom, remembered

PRIMES = (1_000_000_007, 998_244_353)
SMALL_PRIMES = (3, 5)  # residues collide often: the state must agree with the elimination even then


@pytest.fixture(autouse=True)
def fresh_cache():
    chain_exact.clear()
    yield
    chain_exact.clear()


def keys(*values) -> np.ndarray:
    return np.array(sorted(set(values)), dtype=np.uint64)


def members(state: Exact) -> dict[bytes, bool]:
    """Each atom of the state, by its sorted rows, and whether it is isolatable."""
    out = {}
    for a in range(state.atoms):
        out[np.sort(state.universe[state.labels == a]).tobytes()] = bool(state.isolatable[a])
    return out


def scratch(sets, primes) -> dict[bytes, bool]:
    whole, universe, labels = atom_labels(list(sets))
    mask = isolatable(whole, primes)
    return {np.sort(universe[labels == a]).tobytes(): bool(mask[a]) for a in range(whole.sizes.size)}


@pytest.mark.parametrize("primes", [PRIMES, SMALL_PRIMES])
@pytest.mark.parametrize("seed", range(40))
def test_the_incremental_state_equals_the_atom_rule_from_scratch_after_every_addition(seed, primes):
    """Seeded random families over a growing key range (new rows outside every set, splits of old atoms, repeats,
    subsets and unions of earlier sets): after each addition the atoms (by members), their sizes and which are
    isolatable equal :func:`atoms.isolatable` over the whole family."""
    rng = np.random.default_rng(seed)
    state = Exact.empty(primes)
    sets: list[np.ndarray] = []
    for step in range(int(rng.integers(6, 18))):
        span = 8 + 3 * step  # later sets reach rows no earlier set held
        kind = rng.integers(0, 4)
        if kind == 0 and sets:
            new = sets[int(rng.integers(len(sets)))]  # a repeat
        elif kind == 1 and len(sets) >= 2:
            a, b = (sets[int(i)] for i in rng.choice(len(sets), 2, replace=False))
            new = np.union1d(a, b) if rng.random() < 0.5 else np.setdiff1d(a, b)
        else:
            new = np.unique(rng.integers(0, span, int(rng.integers(1, span)))).astype(np.uint64)
        if not new.size:
            continue
        new = np.asarray(new, dtype=np.uint64)
        state.add(new)
        sets.append(new)
        assert members(state) == scratch(sets, primes), step
        got = {np.sort(state.universe[state.labels == a]).tobytes(): int(state.sizes[a]) for a in range(state.atoms)}
        assert all(len(k) // 8 == v for k, v in got.items())


@pytest.mark.parametrize("seed", range(60))
def test_the_refusal_equals_check_addition_over_the_whole_family(seed):
    """``new_small_atom`` over the whole remembered family and a release of one to three sets decides as
    :func:`atoms.check_addition` (the atom rule, no unions) over the same family, without a window."""
    rng = np.random.default_rng(1000 + seed)
    old = [np.unique(rng.integers(0, 40, int(rng.integers(5, 30)))).astype(np.uint64) for _ in range(rng.integers(1, 9))]
    new = [np.unique(rng.integers(0, 46, int(rng.integers(5, 30)))).astype(np.uint64) for _ in range(rng.integers(1, 4))]
    threshold = int(rng.integers(2, 6))
    before = Exact.empty(PRIMES)
    for s in old:
        before.add(s)
    after = before.copy()
    for s in new:
        after.add(s)
    assert (not new_small_atom(before, after, threshold)) == check_addition(old, new, threshold, PRIMES)


def test_a_chain_beyond_any_window_is_refused_and_far_sets_are_allowed():
    """A, B, 40 nested decoys inside C, then C: A - B - C is one row.  The backstop refuses C wherever A is; a set
    cutting nothing small (B and 100 rows no set held) is allowed; B and the band together give A - (B + band)."""
    target = keys(0)
    b = np.arange(1, 31, dtype=np.uint64)
    band = np.arange(31, 31 + 430, dtype=np.uint64)
    a = np.concatenate([target, b, band])
    decoys = [band[10 + 10 * i:] for i in range(40)]
    pools = [[a, b, *decoys]]
    assert exact_allows(("t", "dm", 10), pools, [band], 10, PRIMES) is False
    assert exact_allows(("t", "dm", 10), pools, [np.concatenate([b, np.arange(1000, 1100, dtype=np.uint64)])], 10,
                        PRIMES) is True
    assert exact_allows(("t", "dm", 10), pools, [np.concatenate([b, band])], 10, PRIMES) is False
    assert exact_allows(("t", "dm", 10), pools, [band[5:]], 10, PRIMES) is False  # 5 rows split off: a new atom


def counted_adds(monkeypatch) -> list[int]:
    """The sizes of the sets :meth:`Exact.add` is given from now on (the sets a call adds, not rebuilds)."""
    added: list[int] = []
    original = Exact.add

    def counting(self, k):
        added.append(len(k))
        return original(self, k)

    monkeypatch.setattr(Exact, "add", counting)
    return added


def test_an_atom_isolated_before_with_the_same_members_does_not_refuse():
    """What was released cannot be taken back: a small atom already isolatable (same rows) does not refuse a
    later release that leaves it as it is."""
    big = np.arange(100, dtype=np.uint64)
    less = np.arange(1, 100, dtype=np.uint64)  # big - less: row 0 alone, released (as the window let it)
    other = np.arange(200, 260, dtype=np.uint64)
    assert exact_allows(("t", "dm", 10), [[big, less]], [other], 10, PRIMES)
    assert not exact_allows(("t", "dm", 10), [[big, less]], [np.arange(2, 100, dtype=np.uint64)], 10, PRIMES)


def test_the_cache_extends_its_prefix_and_rebuilds_on_a_change(monkeypatch):
    """A call whose pools begin with the cached sets adds only the rest (counted); a changed earlier set (a
    correction) rebuilds from scratch and decides on the new keys."""
    rng = np.random.default_rng(5)
    pool = [np.unique(rng.integers(0, 500, 120)).astype(np.uint64) for _ in range(12)]
    added = counted_adds(monkeypatch)
    key = (PRIMES, "dm", 10)
    first = remembered(key, [pool[:10], []], PRIMES)
    assert len(added) == 10
    again = remembered(key, [pool[:10], []], PRIMES)
    assert again is first and len(added) == 10
    remembered(key, [pool[:10], pool[10:]], PRIMES)
    assert len(added) == 12  # the two cells only
    changed = [pool[0][1:], *pool[1:10]]
    state = remembered(key, [changed, pool[10:]], PRIMES)
    assert len(added) == 24
    reference = Exact.empty(PRIMES)
    for s in [*changed, *pool[10:]]:
        reference.add(s)  # counted too, after the assertions on what the call added
    assert members(state) == members(reference)


def test_the_request_s_sets_never_enter_the_cache():
    """The request's sets are added to a copy sharing the cached arrays: the cached state is left as it was (its
    atoms, sizes, labels and reduced rows), a split and new rows notwithstanding."""
    pool = [np.arange(0, 50, dtype=np.uint64), np.arange(20, 80, dtype=np.uint64), np.arange(0, 30, dtype=np.uint64)]
    key = (PRIMES, "dm", 10)
    cached = remembered(key, [pool], PRIMES)
    before = (members(cached), cached.sizes.copy(), cached.labels.copy(), [r.copy() for r in cached.reduced])
    exact_allows(key, [pool], [np.arange(5, 90, dtype=np.uint64)], 10, PRIMES)
    again = remembered(key, [pool], PRIMES)
    assert again is cached and again.atoms == 4 and members(again) == before[0]
    assert np.array_equal(again.sizes, before[1]) and np.array_equal(again.labels, before[2])
    assert all(np.array_equal(a, b) for a, b in zip(again.reduced, before[3]))


def test_past_the_bound_the_backstop_allows_and_says_so(monkeypatch):
    """Past ``EXACT_ENTRIES`` the state is dropped (``over``) and the backstop allows; the window rule decides."""
    monkeypatch.setattr(chain_exact, "EXACT_ENTRIES", 20)
    target = keys(0)
    b = np.arange(1, 31, dtype=np.uint64)
    band = np.arange(31, 461, dtype=np.uint64)
    pools = [[np.concatenate([target, b, band]), b, *(band[10 + 10 * i:] for i in range(10))]]
    assert remembered(("t", "dm", 10), pools, PRIMES).over
    assert exact_allows(("t", "dm", 10), pools, [band], 10, PRIMES)


def test_chain_allows_refuses_a_chain_the_window_misses():
    """Through :func:`chain_allows`: 31 nested decoys push A out of the 32-cohort window; the backstop refuses C.
    Another data model's cohorts do not enter the rows' family."""
    target = keys(0)
    b = np.arange(1, 31, dtype=np.uint64)
    band = np.arange(31, 371, dtype=np.uint64)
    a = np.concatenate([target, b, band])
    cohorts = [ChainSet("dm", s, None, 10) for s in [a, b, *(band[10 + 10 * i:] for i in range(31))]]
    c = [ChainSet("dm", band, None, 10)]
    assert not chain_allows("dm", cohorts, [], c, 10, PRIMES)
    other = [ChainSet("other", s.rows, None, 10) for s in cohorts]
    assert chain_allows("dm", other, [], c, 10, PRIMES)


def test_levels_a_dummy_level_cell_is_held_to_its_own_threshold():
    """Cells of level 3 (a regression's dummy levels) enter the level-3 family only: an atom of 5 rows they isolate
    is allowed there; at level 10 the same sets as cohorts refuse it."""
    whole = np.arange(100, dtype=np.uint64)
    cell = np.arange(5, 100, dtype=np.uint64)
    cohorts = [ChainSet("dm", whole, None, 10)]
    assert chain_allows("dm", cohorts, [], [ChainSet("dm", cell, None, 3)], 10, PRIMES)
    chain_exact.clear()
    assert not chain_allows("dm", cohorts, [], [ChainSet("dm", cell, None, 10)], 10, PRIMES)


def test_a_replaced_last_cell_extends_the_snapshot_from_before_it(monkeypatch):
    """A k-means run's latest clusters replace its earlier ones at the end of the cells' pool: the call extends the
    snapshot taken before the run (one set added), not a rebuild; the state equals one built from scratch."""
    rng = np.random.default_rng(9)
    cohorts = [np.unique(rng.integers(0, 400, 150)).astype(np.uint64) for _ in range(8)]
    cells = [np.unique(rng.integers(0, 400, 90)).astype(np.uint64) for _ in range(4)]
    key = (PRIMES, "dm", 3)
    remembered(key, [cohorts, cells[:2]], PRIMES)
    remembered(key, [cohorts, [*cells[:2], cells[2]]], PRIMES)  # round 1's clusters remembered
    added = counted_adds(monkeypatch)
    state = remembered(key, [cohorts, [*cells[:2], cells[3]]], PRIMES)  # round 2's replace them
    assert added == [cells[3].size]
    reference = Exact.empty(PRIMES)
    for s in [*cohorts, *cells[:2], cells[3]]:
        reference.add(s)  # counted too, after the assertions on what the call added
    assert members(state) == members(reference)


@pytest.mark.parametrize("seed", range(30))
def test_the_backstop_by_patients_equals_check_addition_over_every_data_model_s_sets(seed):
    """By patients (twentieth review, hole 2): :func:`backstop_allows` over every remembered set of two data models
    (cohorts and cells, each with its patients) decides as :func:`atoms.check_addition` (the atom rule, no window)
    over all of their patient sets, from scratch, at one level."""
    rng = np.random.default_rng(3000 + seed)

    def some(n_max: int) -> np.ndarray:
        return np.unique(rng.integers(0, n_max, int(rng.integers(5, 30)))).astype(np.uint64)

    def chain_set(model: str) -> ChainSet:
        patients = some(40)
        return ChainSet(model, patients + np.uint64(1000 if model == "dm2" else 0), patients, 10)

    cohorts = [chain_set(str(rng.choice(["dm", "dm2"]))) for _ in range(int(rng.integers(1, 9)))]
    cells = [chain_set(str(rng.choice(["dm", "dm2"]))) for _ in range(int(rng.integers(0, 4)))]
    new = [chain_set("dm2") for _ in range(int(rng.integers(1, 3)))]
    threshold = int(rng.integers(2, 6))
    got = backstop_allows(PATIENTS, [cohorts, cells], new, lambda s: threshold, PRIMES, keys="patients")
    old = [s.patients for s in [*cohorts, *cells]]
    assert got == check_addition(old, [s.patients for s in new], threshold, PRIMES)


def test_chain_allows_refuses_a_chain_across_data_models_the_window_misses():
    """Hole 2 of the twentieth review: A and B under one data model, 32 decoys inside C and C under another, the same
    patients (other row keys).  The window by patients holds the decoys only; the backstop by patients refuses C
    (the windows alone allow it: checked with the backstops left out); without A it is allowed."""
    target = keys(0)
    b = np.arange(1, 31, dtype=np.uint64)
    band = np.arange(31, 31 + 10 + 10 * 32 + 20, dtype=np.uint64)
    a = np.concatenate([target, b, band])
    shift = np.uint64(1 << 40)  # the second version's row keys: other keys, the same patients

    def under(model: str, patients: np.ndarray) -> ChainSet:
        return ChainSet(model, patients + (shift if model == "v2" else np.uint64(0)), patients, 10)

    decoys = [under("v2", band[10 + 10 * i:]) for i in range(32)]
    cohorts = [under("v1", a), under("v1", b), *decoys]
    assert not chain_allows("v2", cohorts, [], [under("v2", band)], 10, PRIMES)
    chain_exact.clear()
    with pytest.MonkeyPatch.context() as patch:  # the window alone: the hole
        patch.setattr(chain, "backstop_allows", lambda *args, **kw: True)
        assert chain_allows("v2", cohorts, [], [under("v2", band)], 10, PRIMES)
    chain_exact.clear()
    # without A (no target to isolate) C is allowed: the backstop by patients refuses only what it must
    assert chain_allows("v2", [under("v1", b), *decoys], [], [under("v2", band)], 10, PRIMES)
    chain_exact.clear()
    # the cells' pool enters too: A and B as cells of v1
    assert not chain_allows("v2", decoys, [under("v1", a), under("v1", b)], [under("v2", band)], 10, PRIMES)
