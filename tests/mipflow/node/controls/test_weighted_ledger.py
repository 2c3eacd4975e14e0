"""Weighted differencing (ADR 0058): the rows between two releases of the same weighted sums hold
``min_row_count`` rows in effect, under the weights recomputed from the current rows."""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms.weighted import WeightFamily, exp_families, weighted_rows
from mipflow.central.client import NodeRefused
from mipflow.node.controls.atoms import node_primes
from mipflow.node.controls.weighted_ledger import (
    FamilyRows, Population, WeightedMemory, pair_dominated, per_patient,
)
from mipflow.node.home import NodeHome
from mipflow.node.store.feature_store import FeatureStore
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import glucose_registry, rule, stroke_rows, where
from tests.nodes import grant_all, load_frame, standard_home

GLUCOSE = exp_families(["glucose_mmol"])[0]
KEY = "k" * 16
PRIMES = node_primes(b"\x02" * 32)


def keys(*ranges: range) -> np.ndarray:
    return np.concatenate([np.arange(r.start, r.stop, dtype=np.uint64) for r in ranges])


# ------------------------------------------------------------------------------------------- the pair rule


def test_a_dominated_difference_either_way_or_intersection_is_refused_and_disjoint_releases_are_not() -> None:
    everyone = keys(range(0, 100))
    logw = np.zeros(100)
    logw[95] = 8.0  # one of the last ten rows outweighs the nine others about 300 to 1
    adults = keys(range(0, 90))
    assert pair_dominated(adults, logw[:90], everyone, logw, 10)  # old \ new: ten rows, one in effect
    assert pair_dominated(everyone, logw, adults, logw[:90], 10)  # new \ old, the other order
    spread = np.zeros(100)
    assert not pair_dominated(adults, spread[:90], everyone, spread, 10)  # ten rows of equal weight: 10
    assert not pair_dominated(keys(range(200, 300)), logw, everyone, logw, 10)  # disjoint: nothing subtracts
    # two cohorts of 55 sharing ten rows, one of which dominates them
    shared = np.zeros(10)
    shared[5] = 8.0
    assert pair_dominated(keys(range(0, 55)), np.r_[np.zeros(45), shared], keys(range(45, 100)),
                          np.r_[shared, np.zeros(45)], 10)


def test_the_rows_between_must_hold_the_threshold_in_effect_not_in_count() -> None:
    everyone = keys(range(0, 40))
    # the twenty rows between: weights 1 and 2, sum / max = (10 + 20) / 2 = 15
    logw = np.r_[np.zeros(20), np.zeros(10), np.full(10, np.log(2.0))]
    assert weighted_rows(logw[20:]) == pytest.approx(15.0)
    assert not pair_dominated(keys(range(0, 20)), logw[:20], everyone, logw, 15)
    assert pair_dominated(keys(range(0, 20)), logw[:20], everyone, logw, 16)


def test_a_patients_weight_is_the_sum_of_its_rows_weights() -> None:
    patients = np.array([7, 3, 7, 3, 5], dtype=np.uint64)
    logw = np.log(np.array([1.0, 2.0, 3.0, 4.0, 5.0])) + 700.0  # exp(700 + ...) overflows a sum of two
    units, summed = per_patient(patients, logw)
    assert list(units) == [3, 5, 7]
    assert np.exp(summed - 700.0) == pytest.approx([6.0, 5.0, 4.0], rel=1e-12)


def test_families_are_named_by_the_weight_whatever_the_order_of_the_request() -> None:
    names = [f.name for f in exp_families(["glucose_mmol", "age"])]
    assert names == ["exp(glucose_mmol)", "exp(2*glucose_mmol)", "exp(age+glucose_mmol)", "exp(age)",
                     "exp(2*age)"]
    assert exp_families(["age", "glucose_mmol"])[2].name == "exp(age+glucose_mmol)"
    family = WeightFamily((("age", 1.0), ("glucose_mmol", 1.0)))
    assert list(family.log_weights({"age": np.array([1.0, 2.0]), "glucose_mmol": np.array([3.0, 5.0])})) == [4.0, 7.0]


# ------------------------------------------------------------------------------------- the memory (in process)


def population_of(rows: np.ndarray, glucose: np.ndarray, patients: np.ndarray | None = None):
    order = np.argsort(rows)
    pop = Population(rows[order], None if patients is None else patients[order], {"glucose_mmol": glucose[order]})
    return lambda data_model, variables: pop


def release(rows: np.ndarray, glucose: np.ndarray, data_model: str = "stroke:0.1",
            patients: np.ndarray | None = None) -> list[FamilyRows]:
    return [FamilyRows(GLUCOSE.name, data_model, rows, GLUCOSE.log_weights({"glucose_mmol": glucose}), patients)]


@pytest.fixture
def glucose() -> np.ndarray:
    g = np.random.default_rng(3).uniform(4, 9, 100)
    g[10:60] = np.random.default_rng(4).uniform(11.9, 12.25, 50)
    g[90:] = np.random.default_rng(5).uniform(4, 5.5, 10)
    g[93] = 12.3  # among the ten rows left out by the second cohort
    return g


def test_the_review_s_pair_is_refused_and_honest_releases_pass(glucose: np.ndarray) -> None:
    memory, everyone = WeightedMemory(None, KEY), keys(range(0, 100))
    read = population_of(everyone, glucose)
    first = release(everyone, glucose)
    assert memory.check(first, [GLUCOSE], 10, read)
    memory.record(first)
    assert not memory.check(release(everyone[:90], glucose[:90]), [GLUCOSE], 10, read)
    assert memory.check(first, [GLUCOSE], 10, read)  # the same release again: nothing new
    assert memory.check(release(everyone[::2], glucose[::2]), [GLUCOSE], 10, read)  # fifty rows apart, spread
    other = exp_families(["age"])[0]  # another family is another weighted sum
    assert memory.check([dataclasses.replace(release(everyone[:90], glucose[:90])[0], family=other.name)],
                        [other], 10, read)
    assert memory.check(release(everyone[:90], glucose[:90]), [GLUCOSE], 1, read)  # min_row_count 1: the Exareme2 suite


def test_weights_that_changed_or_rows_that_left_since_refuse_an_overlapping_release(glucose: np.ndarray) -> None:
    memory, everyone = WeightedMemory(None, KEY), keys(range(0, 100))
    memory.record(release(everyone, glucose))
    half = release(everyone[::2], glucose[::2])
    assert memory.check(half, [GLUCOSE], 10, population_of(everyone, glucose))
    corrected = glucose.copy()
    corrected[70] += 0.01  # a value corrected in place since the first release
    assert not memory.check(release(everyone[::2], corrected[::2]), [GLUCOSE], 10, population_of(everyone, corrected))
    # the same rows with the corrected value: the difference is the correction
    assert not memory.check(release(everyone, corrected), [GLUCOSE], 10, population_of(everyone, corrected))
    gone = np.delete(everyone, 70)  # a patient withdrew
    assert not memory.check(half, [GLUCOSE], 10, population_of(gone, np.delete(glucose, 70)))
    # a data model no longer held, and a release that shares no row, either way
    assert not memory.check(half, [GLUCOSE], 10, lambda data_model, variables: None)
    assert memory.check(release(keys(range(500, 600)), glucose), [GLUCOSE], 10, population_of(gone, glucose[:99]))


def test_another_data_model_is_compared_by_patients(glucose: np.ndarray) -> None:
    memory, everyone = WeightedMemory(None, KEY), keys(range(0, 100))
    patients = keys(range(1000, 1100))
    memory.record(release(everyone, glucose, patients=patients))
    # the next data-model version: other row keys, the same patients
    rows_v2 = keys(range(5000, 5100))
    read = population_of(everyone, glucose, patients)
    assert not memory.check(release(rows_v2[:90], glucose[:90], "stroke:0.2", patients[:90]), [GLUCOSE], 10, read)
    assert memory.check(release(rows_v2[::2], glucose[::2], "stroke:0.2", patients[::2]), [GLUCOSE], 10, read)
    # without patient identity a release is compared within its own data model only
    assert memory.check(release(rows_v2[:90], glucose[:90], "stroke:0.2"), [GLUCOSE], 10, read)


def test_the_memory_is_on_disk_and_read_by_another_process(tmp_path: Path, glucose: np.ndarray) -> None:
    everyone = keys(range(0, 100))
    WeightedMemory(tmp_path, KEY).record(release(everyone, glucose, patients=everyone + np.uint64(7)))
    again = WeightedMemory(tmp_path, KEY)
    assert again.remembered(GLUCOSE.name) == 1
    assert not again.check(release(everyone[:90], glucose[:90]), [GLUCOSE], 10, population_of(everyone, glucose))
    assert WeightedMemory(tmp_path, "another key 1234").check(  # another node's key: no fingerprint matches
        release(everyone[::2], glucose[::2]), [GLUCOSE], 10, population_of(everyone, glucose)) is False


# ------------------------------------------------------------------------------------------ through a node


class Node:
    """A standard-mode node (shipped thresholds) reached in-process through its signed API."""

    def __init__(self, root: Path) -> None:
        from fastapi.testclient import TestClient

        from mipflow.central.client import NodeClient, NodeEndpoint
        from mipflow.node.api.app import create_app
        from mipflow.protocol.signing import issue_client

        self.root = root
        home = NodeHome(root)
        cred = issue_client(root, f"central-{id(self)}")
        self.client = NodeClient(NodeEndpoint(home.name, "http://testserver", cred.client_id, cred.secret.hex()),
                                 retries=0)
        self.client._http.close()
        self.client._http = TestClient(create_app(home), base_url="http://testserver")

    def pca(self, filters=None, exp=("glucose_mmol",), model: str = STROKE.key) -> dict:
        doc = {"inputdata": {"data_model": model, "datasets": ["hospital_a"], "filters": filters, "x": [],
                             "y": ["glucose_mmol", "age", "nihss_admission"]},
               "parameters": {"data_transformation": {"exp": list(exp)} if exp else {}}}
        return self.client.step("pca_with_transformation", doc, 0, None, researcher="r", project="p")


def refused(call) -> NodeRefused:
    with pytest.raises(NodeRefused) as info:
        call()
    return info.value


ADULTS = where(rule("age", "greater_or_equal", 25))
WOMEN = where(rule("sex", "equal", "F"), rule("age", "greater_or_equal", 25))
MEN = where(rule("sex", "equal", "M"), rule("age", "greater_or_equal", 25))
FRAME = glucose_registry()
N_WOMEN = int(((FRAME["sex"] == "F") & (FRAME["age"] >= 25)).sum())
N_MEN = int(((FRAME["sex"] == "M") & (FRAME["age"] >= 25)).sum())


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    root = tmp_path / "hospital_a"
    standard_home(root, "hospital_a")
    load_frame(root, STROKE, glucose_registry())
    grant_all(root, researcher="*", project="p")
    yield Node(root)


def test_a_node_refuses_the_weighted_difference_with_no_data_and_answers_honest_releases(node: Node) -> None:
    assert node.pca()["aggregates"]["moments"]["n"] == 240
    first = refused(lambda: node.pca(ADULTS))
    assert (first.status, first.control) == (403, "dominated_sums")
    for value in ("12.3", "21.5", "37", "row(s)", "240", "230"):
        assert value not in first.reason
    assert node.pca(ADULTS, exp=())["aggregates"]["moments"]["n"] == 230  # plain sums: the row ledger's 10 rows
    assert node.pca(WOMEN)["aggregates"]["moments"]["n"] == N_WOMEN  # >100 rows apart, weights spread: answered
    assert node.pca()["aggregates"]["moments"]["n"] == 240  # a repeat
    # another process on the same home (a restart) remembers
    assert refused(lambda: Node(node.root).pca(ADULTS)).control == "dominated_sums"


def test_after_a_withdrawal_overlapping_weighted_releases_are_refused_but_repeats_are_not(node: Node) -> None:
    assert node.pca()["aggregates"]["moments"]["n"] == 240
    assert node.pca(WOMEN)["aggregates"]["moments"]["n"] == N_WOMEN
    frame = glucose_registry()
    man = frame.loc[(frame["sex"] == "M") & (frame["age"] >= 30), "subjectcode"].iloc[0]
    store = FeatureStore(NodeHome(node.root).db_url)
    assert store.delete_patients([man]) == 1
    store.dispose()
    # the adult men now: all but one of those in the first release's rows, whose weights are no longer all known
    assert refused(lambda: node.pca(MEN)).control == "dominated_sums"
    assert node.pca(WOMEN)["aggregates"]["moments"]["n"] == N_WOMEN  # the same rows and weights: released before


def test_the_next_data_model_version_is_compared_by_patients(tmp_path: Path) -> None:
    root = tmp_path / "hospital_a"
    standard_home(root, "hospital_a")
    v2 = dataclasses.replace(STROKE, version="0.2", raw={**STROKE.raw, "version": "0.2"})
    for model in (STROKE, v2):
        load_frame(root, model, glucose_registry())
    grant_all(root, researcher="*", project="p")
    node = Node(root)
    assert node.pca()["aggregates"]["moments"]["n"] == 240
    assert refused(lambda: node.pca(ADULTS, model=v2.key)).control == "dominated_sums"
    assert node.pca(WOMEN, model=v2.key)["aggregates"]["moments"]["n"] == N_WOMEN


# ------------------------------------------------------------------------------------------ the chain rule


def chain_rows(target: float | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Glucose of 240 rows and the four releases ``U``, ``U \\ X``, ``U \\ Y``, ``U \\ (X ∪ Y)``: ``X ∩ Y``
    rows 0-9 at 4-5.5 but row 3 (``target``), or, ``target`` None, rows 0-19 near the top (12-12.25);
    ``X \\ Y`` and ``Y \\ X`` 25 rows each near the top; thirty of the other rows near the top too."""
    rng = np.random.default_rng(21)
    glucose = rng.uniform(4, 9, 240)
    both = 10 if target is not None else 20
    glucose[:both] = rng.uniform(4, 5.5, both) if target is not None else rng.uniform(12.0, 12.25, both)
    if target is not None:
        glucose[3] = target
    glucose[both:both + 50] = rng.uniform(12.0, 12.25, 50)
    glucose[200:230] = rng.uniform(12.0, 12.25, 30)
    everyone = keys(range(0, 240))
    x, y = everyone[:both + 25], np.r_[everyone[:both], everyone[both + 25:both + 50]]
    return glucose, {"U": everyone, "U-X": np.setdiff1d(everyone, x), "U-Y": np.setdiff1d(everyone, y),
                     "U-(X|Y)": np.setdiff1d(everyone, np.union1d(x, y))}


@pytest.mark.parametrize("last", ["U-(X|Y)", "U", "U-X"])
def test_four_releases_isolating_one_dominated_atom_are_refused_though_every_pair_passes(last: str) -> None:
    from mipflow.node.controls.atoms import check_addition

    glucose, chain = chain_rows(12.3)
    logw = GLUCOSE.log_weights({"glucose_mmol": glucose})
    for a, b in itertools.combinations(chain.values(), 2):  # the pair rule lets every pair through ...
        assert not pair_dominated(a, logw[a.astype(int)], b, logw[b.astype(int)], 10)
    assert weighted_rows(logw[:10]) < 1.01  # ... while X ∩ Y, ten rows, is one in effect
    first = [chain[name] for name in chain if name != last]
    assert check_addition(first, [chain[last]], 10, PRIMES)  # and the row ledger's chain rule: ten rows
    memory, read = WeightedMemory(None, KEY, PRIMES), population_of(keys(range(0, 240)), glucose)
    for rows in first:
        assert memory.check(release(rows, glucose[rows.astype(int)]), [GLUCOSE], 10, read)
        memory.record(release(rows, glucose[rows.astype(int)]))
    assert not memory.check(release(chain[last], glucose[chain[last].astype(int)]), [GLUCOSE], 10, read)
    assert memory.check(release(chain[last], glucose[chain[last].astype(int)]), [GLUCOSE], 1, read)


def test_a_chain_whose_atoms_hold_the_threshold_in_effect_is_answered() -> None:
    glucose, chain = chain_rows(None)
    memory, read = WeightedMemory(None, KEY, PRIMES), population_of(keys(range(0, 240)), glucose)
    for rows in chain.values():
        assert memory.check(release(rows, glucose[rows.astype(int)]), [GLUCOSE], 10, read)
        memory.record(release(rows, glucose[rows.astype(int)]))


@pytest.mark.parametrize("target", [12.3, None])
def test_a_chain_across_data_models_is_weighed_by_patients(target: float | None) -> None:
    glucose, chain = chain_rows(target)
    everyone, patients = keys(range(0, 240)), keys(range(1000, 1240))
    memory, read = WeightedMemory(None, KEY, PRIMES), population_of(everyone, glucose, patients)
    for name in ("U", "U-X", "U-Y"):
        at = chain[name].astype(int)
        memory.record(release(chain[name], glucose[at], patients=patients[at]))
    last = chain["U-(X|Y)"].astype(int)  # the next data-model version: other row keys, the same patients
    fourth = release(keys(range(5000, 5240))[last], glucose[last], "stroke:0.2", patients[last])
    assert memory.check(fourth, [GLUCOSE], 10, read) is (target is None)


def test_a_chained_release_whose_weights_are_no_longer_known_refuses_only_an_atom_it_weighs() -> None:
    glucose, chain = chain_rows(None)
    everyone = keys(range(0, 240))
    memory = WeightedMemory(None, KEY, PRIMES)
    for name in ("U-X", "U-Y"):
        memory.record(release(chain[name], glucose[chain[name].astype(int)]))
    corrected = glucose.copy()
    corrected[5] += 0.01  # X ∩ Y: in neither release, whose weights stay known
    assert memory.check(release(chain["U"], corrected), [GLUCOSE], 10, population_of(everyone, corrected))
    corrected[100] += 0.01  # in both: every overlapping release is refused (the pair rule)
    assert not memory.check(release(chain["U"], corrected), [GLUCOSE], 10, population_of(everyone, corrected))
    # chained only: A and B overlap, the new C overlaps B alone; no combination isolates an atom of A ...
    a, b, c = everyone[:100], everyone[50:150], everyone[120:200]
    glucose = np.random.default_rng(8).uniform(12.0, 12.25, 240)  # every atom holds the threshold in effect
    memory = WeightedMemory(None, KEY, PRIMES)
    for rows in (a, b):
        memory.record(release(rows, glucose[rows.astype(int)]))
    changed = glucose.copy()
    changed[10] += 0.01  # ... whose weights changed since: answered
    assert memory.check(release(c, changed[120:200]), [GLUCOSE], 10, population_of(everyone, changed))
    # ... but a fourth, B \ A (disjoint from A), isolates A \ B = A - B + (B \ A) and A ∩ B = B - (B \ A):
    # atoms of A, weighed by A's weights, which are no longer known: refused, and answered while they are
    memory.record(release(c, changed[120:200]))
    d = everyone[100:150]
    assert memory.check(release(d, glucose[100:150]), [GLUCOSE], 10, population_of(everyone, glucose))
    assert not memory.check(release(d, changed[100:150]), [GLUCOSE], 10, population_of(everyone, changed))


def test_atoms_are_labelled_by_their_members_membership() -> None:
    from mipflow.node.controls.atoms import atom_labels, atoms_of

    rng = np.random.default_rng(2)
    for n_sets in (3, 70):  # one 64-bit mask per member, and the packed rows beyond 64 sets
        sets = [rng.choice(500, 120, replace=False).astype(np.uint64) for _ in range(n_sets)]
        atoms, universe, labels = atom_labels(sets)
        assert np.array_equal(atoms.sizes, atoms_of(sets).sizes)
        assert np.array_equal(np.bincount(labels, minlength=atoms.sizes.size), atoms.sizes)
        for j, members in enumerate(sets):
            inside = np.isin(universe, members)
            assert np.array_equal(atoms.incidence[j, labels].astype(bool), inside)


def chain_registry(target: float | None) -> pd.DataFrame:
    """240 patients; ``X``: age under 30, ``Y``: NIHSS over 20.  ``X ∩ Y``: ten patients with glucose
    4-5.5 but one (``target``), or, ``target`` None, twenty near the top (12-12.25); ``X \\ Y`` and
    ``Y \\ X``: 25 patients each near the top; thirty of the others near the top too."""
    frame = stroke_rows(13, 240, "hospital_a", "chn")
    rng = np.random.default_rng(17)
    both = 10 if target is not None else 20
    x = np.arange(240) < both + 25
    y = (np.arange(240) < both) | ((np.arange(240) >= both + 25) & (np.arange(240) < both + 50))
    frame["age"] = np.where(x, np.round(rng.uniform(19, 29.5, 240), 1), np.round(rng.uniform(30, 85, 240), 1))
    frame["nihss_admission"] = np.where(y, rng.integers(21, 31, 240), rng.integers(0, 21, 240)).astype(float)
    glucose = rng.uniform(4, 9, 240)
    glucose[:both] = rng.uniform(4, 5.5, both) if target is not None else rng.uniform(12.0, 12.25, both)
    glucose[both:both + 50] = rng.uniform(12.0, 12.25, 50)
    glucose[200:230] = rng.uniform(12.0, 12.25, 30)
    frame["glucose_mmol"] = np.round(glucose, 2)
    if target is not None:
        frame.loc[frame.index[3], "glucose_mmol"] = target
    return frame


NOT_X = where(rule("age", "greater_or_equal", 30))
NOT_Y = where(rule("nihss_admission", "less_or_equal", 20))
NOT_X_OR_Y = where(rule("age", "greater_or_equal", 30), rule("nihss_admission", "less_or_equal", 20))
NOT_X_AND_Y = where(rule("age", "greater_or_equal", 30), rule("nihss_admission", "less_or_equal", 20),
                    condition="OR")


def chain_node(root: Path, target: float | None) -> Node:
    standard_home(root, "hospital_a")
    load_frame(root, STROKE, chain_registry(target))
    grant_all(root, researcher="*", project="p")
    return Node(root)


def test_a_node_refuses_the_fourth_release_of_a_weighted_chain_with_the_pair_rule_s_message(tmp_path: Path) -> None:
    """``U``, ``U \\ X``, ``U \\ Y``, ``U \\ (X ∪ Y)``: every pair's rows between hold the threshold in effect,
    ``X ∩ Y`` holds ten rows (the row ledger's chain rule) of which one carries nearly all the weight."""
    node = chain_node(tmp_path / "hospital_a", 12.3)
    assert node.pca()["aggregates"]["moments"]["n"] == 240
    assert node.pca(NOT_X)["aggregates"]["moments"]["n"] == 205
    assert node.pca(NOT_Y)["aggregates"]["moments"]["n"] == 205
    fourth = refused(lambda: node.pca(NOT_X_OR_Y))
    assert (fourth.status, fourth.control) == (403, "dominated_sums")
    pair = refused(lambda: node.pca(NOT_X_AND_Y))  # U less X ∩ Y: the pair rule, against U
    assert (pair.status, pair.control, pair.reason) == (fourth.status, fourth.control, fourth.reason)
    for value in ("12.3", "row(s)", "240", "205", "180", "X", "chain"):
        assert value not in fourth.reason
    # the same four releases of plain sums: ten rows in X ∩ Y, the row ledger answers
    assert node.pca(NOT_X_OR_Y, exp=())["aggregates"]["moments"]["n"] == 180
    assert refused(lambda: Node(node.root).pca(NOT_X_OR_Y)).reason == fourth.reason  # after a restart too


def test_a_node_answers_overlapping_weighted_releases_whose_atoms_hold_the_threshold(tmp_path: Path) -> None:
    node = chain_node(tmp_path / "hospital_a", None)
    for filters, n in ((None, 240), (NOT_X, 195), (NOT_Y, 195), (NOT_X_OR_Y, 170), (NOT_X_AND_Y, 220), (None, 240)):
        assert node.pca(filters)["aggregates"]["moments"]["n"] == n


@pytest.mark.parametrize("target", [12.3, None])
def test_the_backstop_alone_weighs_the_chain_over_every_remembered_release(target: float | None) -> None:
    """The exact backstop (ADR 0058 amended, twenty-first review hole 1), called alone, no window: the fourth release
    of the chain is refused when ``X ∩ Y`` is one row in effect and answered when its twenty rows near the top hold
    the threshold; a release far from the family (rows no release held) and a repeat of a remembered one pass."""
    from mipflow.node.controls import chain_exact
    from mipflow.node.controls.weighted_ledger import _Remembered, backstop_dominated, fingerprint, fingerprint_key

    chain_exact.clear()
    glucose, chain = chain_rows(target)
    logw = GLUCOSE.log_weights({"glucose_mmol": glucose})
    names = ("U", "U-X", "U-Y")
    olds = [_Remembered("stroke:0.1", chain[n], fingerprint(fingerprint_key(KEY), chain[n], logw[chain[n].astype(int)]))
            for n in names]

    def used(i: int):
        return logw[olds[i].rows.astype(int)], None

    def dominated(rows: np.ndarray) -> bool:
        at = rows.astype(int) % 240
        return backstop_dominated(FamilyRows(GLUCOSE.name, "stroke:0.1", rows, logw[at]), olds, used, 10, PRIMES)

    assert dominated(chain["U-(X|Y)"]) is (target is not None)
    assert dominated(keys(range(1000, 1100))) is False  # rows no release held: one new atom of 100 rows
    assert dominated(chain["U-X"]) is False  # a repeat
    chain_exact.clear()


@pytest.mark.parametrize("target", [12.3, None])
def test_the_backstop_weighs_a_chain_across_data_models_by_patients(target: float | None) -> None:
    """The backstop alone, the chain split over two data-model versions (the same patients, other row keys): the last
    release, under 0.2, is refused when ``X ∩ Y`` is one patient in effect and answered when it holds the threshold
    (twenty-second review, hole 2)."""
    from mipflow.node.controls import chain_exact
    from mipflow.node.controls.weighted_ledger import _Remembered, backstop_dominated, fingerprint, fingerprint_key

    chain_exact.clear()
    glucose, chain = chain_rows(target)
    logw = GLUCOSE.log_weights({"glucose_mmol": glucose})
    patients = keys(range(1000, 1240))
    olds = []
    for name in ("U", "U-X", "U-Y"):
        at = chain[name].astype(int)
        olds.append(_Remembered("stroke:0.1", chain[name], fingerprint(fingerprint_key(KEY), chain[name], logw[at]),
                                patients[at]))

    def used(i: int):
        at = olds[i].rows.astype(int)
        return logw[at], patients[at]

    last = chain["U-(X|Y)"].astype(int)
    fourth = FamilyRows(GLUCOSE.name, "stroke:0.2", keys(range(5000, 5240))[last], logw[last], patients[last])
    assert backstop_dominated(fourth, olds, used, 10, PRIMES) is (target is not None)
    chain_exact.clear()
