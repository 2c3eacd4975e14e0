"""Study mode at a step: the family check from the request alone, and the snapshot's rows."""
from __future__ import annotations

import re

import numpy as np
import pytest

from mipflow.exceptions import DisclosureError
from mipflow.node.controls import study_approval
from mipflow.node.controls.differencing import hash_key, row_keys
from mipflow.node.controls.study import StudyRefusal, StudyRegistry, read_study
from mipflow.node.store.feature_store import FeatureStore
from mipflow.protocol.request import AnalysisRequest
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import (
    ELDERLY, PROJECT, VARIABLES, WOMEN, node_home, population, protocol, rule, stroke_rows, where,
)
from tests.nodes import load_frame

DATASETS = ("hospital_a", "hospital_b", "hospital_c")


def analysis(y=("age",), x=("nihss_admission",), filters=None, datasets=DATASETS, data_model=STROKE.key):
    return AnalysisRequest(data_model=data_model, datasets=datasets, x=x, y=y, filters=filters)


@pytest.fixture(scope="module")
def approved(tmp_path_factory):
    home, frame = node_home(tmp_path_factory.mktemp("study"))
    study_approval.approve(home, PROJECT, protocol())
    return home, frame, read_study(home.root, PROJECT)


@pytest.mark.parametrize("algorithm, request_, subgroup, datasets", [
    pytest.param("linear_regression", analysis(), None, DATASETS, id="whole-population"),
    pytest.param("linear_regression", analysis(y=("followup_days",), x=("age", "sex")), None, DATASETS,
                 id="other-variables"),
    pytest.param("kaplan_meier", analysis(filters=ELDERLY), "elderly", DATASETS, id="subgroup"),
    pytest.param("kaplan_meier", analysis(filters={"condition": "AND", "rules": [
        {"id": "age", "operator": "greater_or_equal", "value": 65.0}]}), "elderly", DATASETS,
        id="subgroup-written-otherwise"),
    pytest.param("descriptive_stats", analysis(filters=WOMEN, datasets=("hospital_a",)), "women", ("hospital_a",),
                 id="fewer-datasets"),
    pytest.param("linear_regression", analysis(filters={}), None, DATASETS, id="empty-filter"),
])
def test_requests_inside_the_family_are_admitted(approved, algorithm, request_, subgroup, datasets) -> None:
    _, _, study = approved
    selection = study.admit(algorithm, request_, [*request_.y, *request_.x])
    assert selection.subgroup == subgroup and selection.datasets == datasets
    assert study.mode == {"study": "stroke-outcomes", "snapshot": study.snapshot}


@pytest.mark.parametrize("algorithm, request_, words", [
    pytest.param("pca", analysis(), "algorithm 'pca' is not in the study; it allows descriptive_stats, "
                 "linear_regression, kaplan_meier, ttest_independent", id="algorithm"),
    pytest.param("linear_regression", analysis(data_model="stroke:0.2"), "the study is on data model stroke:0.1",
                 id="data-model"),
    pytest.param("linear_regression", analysis(datasets=("hospital_a", "hospital_x")),
                 "dataset(s) 'hospital_x' are not in the study", id="dataset"),
    pytest.param("linear_regression", analysis(x=("glucose_mmol",)), "variable(s) 'glucose_mmol' are not study "
                 "variables; use variables among age, sex, stroke_type", id="variable"),
    pytest.param("linear_regression", analysis(filters=where(rule("age", "greater_or_equal", 64))),
                 "the filter is not one of the study's subgroups; send no filter (the whole study population) or "
                 "exactly one subgroup's filter (elderly: age greater_or_equal 65; women: sex equal \"F\"",
                 id="filter-near-a-subgroup"),
    pytest.param("linear_regression", analysis(filters=where(rule("age", "greater_or_equal", 65),
                                                              rule("sex", "equal", "F"))),
                 "is not one of the study's subgroups", id="intersection-of-subgroups"),
    pytest.param("linear_regression", analysis(filters={"rules": "x"}), "is not one of the study's subgroups",
                 id="malformed-filter"),
])
def test_requests_outside_the_family_are_refused_naming_what_to_change(approved, algorithm, request_,
                                                                        words) -> None:
    _, _, study = approved
    with pytest.raises(StudyRefusal) as caught:
        study.admit(algorithm, request_, [*request_.y, *request_.x])
    message = str(caught.value)
    assert caught.value.control == "study" and words in message
    assert message.startswith("project 'stroke-study' analyses in study mode (study 'stroke-outcomes'")
    # only numbers of the protocol and the request (the data model version, 65, 64): no count
    assert set(re.findall(r"\d+", message)) <= {"0", "1", "2", "65", "64", "90"}


def test_the_dataset_column_an_algorithm_reads_on_its_own_is_admitted(approved) -> None:
    """descriptive_stats reads 'dataset' itself (per-dataset statistics); the protocol lists no 'dataset' and
    the researcher asked for none: admitted (the honest-day review found every such request refused).  Naming
    'dataset' as a variable is refused with static words saying what to change."""
    from mipflow.algorithms import get_algorithm
    from mipflow.node.controls.study import PARTITION_REFUSAL

    _, _, study = approved
    assert "dataset" not in study.protocol.variables
    request_ = analysis(y=("age", "sex"), x=())
    variables = get_algorithm("descriptive_stats").variables(request_)
    assert "dataset" in variables
    selection = study.admit("descriptive_stats", request_, variables)
    assert selection.subgroup is None and selection.datasets == DATASETS
    # any other variable the algorithm would read that the protocol does not list is still refused
    with pytest.raises(StudyRefusal, match="'glucose_mmol' are not study variables"):
        study.admit("descriptive_stats", request_, [*variables, "glucose_mmol"])
    for named in (analysis(y=("age",), x=("dataset",)), analysis(y=("dataset",), x=())):
        with pytest.raises(StudyRefusal) as caught:
            study.admit("linear_regression", named, [*named.y, *named.x])
        assert caught.value.control == "study" and str(caught.value).endswith(PARTITION_REFUSAL)


def test_the_selection_is_the_snapshot_whatever_was_loaded_since(approved, tmp_path) -> None:
    home, frame, study = approved
    store = FeatureStore(home.db_url)
    key = hash_key(home.key())
    try:
        whole = study.admit("linear_regression", analysis(), ["age"]).frame(store, STROKE, key)
        elderly = study.admit("kaplan_meier", analysis(filters=ELDERLY), ["age"]).frame(store, STROKE, key)
        expected = population(frame)
        assert len(whole) == len(expected) and sorted(whole["_pid"]) == sorted(expected["subjectcode"])
        assert sorted(elderly["_pid"]) == sorted(population(frame, ELDERLY)["subjectcode"])
        assert np.array_equal(np.sort(row_keys(whole, key)), study.population)
        nobody = study.admit("linear_regression", analysis(datasets=("hospital_b",)), ["age"]).frame(store, STROKE, key)
        assert len(nobody) == 0  # the node holds no row of hospital_b (public metadata)
    finally:
        store.dispose()


def test_new_rows_are_left_out_and_changed_rows_stop_the_study_until_a_refresh(tmp_path) -> None:
    home, frame = node_home(tmp_path)
    study_approval.approve(home, PROJECT, protocol())
    registry = StudyRegistry(home.root)
    study = registry.for_project(PROJECT)
    key = hash_key(home.key())
    select = study.admit("linear_regression", analysis(), ["age"])
    store = FeatureStore(home.db_url)
    try:
        before = select.frame(store, STROKE, key)
        load_frame(home.root, STROKE, stroke_rows(5, 40, "hospital_a", "export2"))  # a new export
        after = select.frame(store, STROKE, key)
        assert after.equals(before)
        changed = frame.dropna(subset=VARIABLES).iloc[[0]].copy()
        changed["age"] = changed["age"] + 1.0  # a correction of one study row
        load_frame(home.root, STROKE, changed)
        with pytest.raises(DisclosureError, match=r"rows of the study's snapshot of .* changed at this node .*"
                                                  r"mipflow study refresh") as caught:
            select.frame(store, STROKE, key)
        assert caught.value.control == "study"
    finally:
        store.dispose()


@pytest.mark.parametrize("y, parameters, admitted", [
    pytest.param(("followup_days", "death_90d"), {"event_level": "yes", "bin_width": 7.0}, True, id="the-grid"),
    pytest.param(("followup_days", "death_90d"), {"event_level": "yes", "bin_width": 7.0, "max_time": 41.0}, False,
                 id="a-max-time-cut-point"),
    pytest.param(("followup_days", "death_90d"), {"event_level": "yes", "bin_width": 1.0}, False, id="another-width"),
    pytest.param(("followup_days", "death_90d"), {"event_level": "yes"}, False, id="the-default-width"),
    pytest.param(("nihss_admission", "death_90d"), {"event_level": "yes", "bin_width": 7.0}, False,
                 id="another-numerical-variable-as-time"),
])
def test_kaplan_meier_in_a_study_takes_the_protocols_survival_grid(approved, y, parameters, admitted):
    """A fourth outside review swept max_time (rows beyond it are censored there) and used any numerical
    variable as the time to count events up to chosen cut points; in a study the grid is the protocol's,
    decided from the request alone (control ``study``, the same message whatever the data)."""
    from mipflow.node.controls.study_suppression import check_layout

    _, _, study = approved
    request = AnalysisRequest(data_model=STROKE.key, datasets=DATASETS, x=("sex",), y=y, filters=None,
                              parameters=parameters)
    if admitted:
        check_layout(study, "kaplan_meier", request, STROKE)
        return
    with pytest.raises(StudyRefusal) as caught:
        check_layout(study, "kaplan_meier", request, STROKE)
    assert caught.value.control == "study"
    assert "'followup_days', bin_width = 7, and no max_time" in str(caught.value)


def test_kaplan_meier_in_a_study_without_a_survival_grid_is_refused(tmp_path):
    from mipflow.node.controls.study_suppression import check_layout

    home, _ = node_home(tmp_path)
    doc = protocol()
    doc.pop("survival")
    study_approval.approve(home, PROJECT, doc)
    request = AnalysisRequest(data_model=STROKE.key, datasets=DATASETS, x=(), y=("followup_days", "death_90d"),
                              filters=None, parameters={"event_level": "yes", "bin_width": 7.0})
    with pytest.raises(StudyRefusal, match="survival grid"):
        check_layout(read_study(home.root, PROJECT), "kaplan_meier", request, STROKE)
