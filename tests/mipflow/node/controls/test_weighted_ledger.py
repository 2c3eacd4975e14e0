"""Weighted differencing (ADR 0058): the rows between two releases of the same weighted sums hold
``min_row_count`` rows in effect, under the weights recomputed from the current rows."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms.weighted import WeightFamily, exp_families, weighted_rows
from mipflow.central.client import NodeRefused
from mipflow.node.controls.weighted_ledger import (
    FamilyRows, Population, WeightedMemory, pair_dominated, per_patient,
)
from mipflow.node.home import NodeHome
from mipflow.node.store.feature_store import FeatureStore
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import rule, stroke_rows, where
from tests.nodes import grant_all, load_frame, standard_home

GLUCOSE = exp_families(["glucose_mmol"])[0]
KEY = "k" * 16


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


def glucose_registry(n: int = 240) -> pd.DataFrame:
    """Glucose 4-9 mmol/l, fifty patients at 11.9-12.25; ten patients under 25 with glucose 4-5.5 but one
    (12.3): the twelfth review's registry (hole 4)."""
    frame = stroke_rows(9, n, "hospital_a", "glc")
    rng = np.random.default_rng(9)
    frame["age"] = np.round(rng.uniform(30, 85, n), 1)
    frame["nihss_admission"] = rng.integers(0, 30, n).astype(float)
    frame["glucose_mmol"] = np.round(rng.uniform(4, 9, n), 2)
    frame.loc[frame.index[10:60], "glucose_mmol"] = np.round(rng.uniform(11.9, 12.25, 50), 2)
    young = list(frame.index[200:210])
    frame.loc[young, "age"] = np.round(rng.uniform(19, 24.5, 10), 1)
    frame.loc[young, "glucose_mmol"] = np.round(rng.uniform(4, 5.5, 10), 2)
    frame.loc[young[3], ["glucose_mmol", "age", "nihss_admission"]] = [12.3, 21.5, 37.0]
    return frame


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
