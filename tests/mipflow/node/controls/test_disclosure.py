from __future__ import annotations

import pytest

from mipflow.algorithms.spec import SpecAlgorithm
from mipflow.node.home import NodeSettings
from mipflow.node.controls.disclosure import DisclosureControls, group_threshold
from mipflow.exceptions import DisclosureError


class Algo(SpecAlgorithm):  # the contract's defaults: no coarsening, no folds, not a model
    name = "multiple_histograms"


@pytest.mark.parametrize("counts, expected", [
    pytest.param([0, 5, 7, 9], [0, 5, 7, 9], id="nothing-small"),
    pytest.param([0, 1, 7, 9], [0, None, None, 9], id="one-small-plus-complement"),
    pytest.param([2, 1, 7, 9], [None, None, 7, 9], id="two-small"),
    pytest.param([[1, 5, 8], [4, 4, 4]], [[None, None, 8], [4, 4, 4]], id="nested"),
])
def test_small_cells_suppressed(counts, expected):
    controls = DisclosureControls(NodeSettings(nfilter_tab=3))
    out = controls.release(Algo(), None, None, 1, {"histogram": [{"counts": counts}]})
    assert out["histogram"][0]["counts"] == expected


@pytest.mark.parametrize("aggregates, control", [
    pytest.param({"min": 1.0, "max": 3.0}, "raw_extremes", id="raw-extremes"),
    pytest.param({"stats": [{"q1": 2.0}]}, "raw_extremes", id="quartile"),
    pytest.param({"group_n": [40, 2]}, "nfilter_tab", id="small-group"),
])
def test_refused_aggregates(aggregates, control):
    with pytest.raises(DisclosureError) as info:
        DisclosureControls(NodeSettings()).release(Algo(), None, None, 0, aggregates)
    assert info.value.control == control


class Clusters(SpecAlgorithm):  # groups chosen by the data, released with three moments (k-means, ADR 0050)
    name = "kmeans"
    group_count_setting = "min_row_count"


@pytest.mark.parametrize("settings, sizes, control", [
    pytest.param({}, [40, 9], "min_row_count", id="under-min_row_count"),
    pytest.param({}, [40, 3], "min_row_count", id="at-nfilter_tab"),
    pytest.param({"min_row_count": 2, "nfilter_tab": 5}, [40, 4], "nfilter_tab", id="nfilter_tab-larger"),
    pytest.param({}, [40, 10, 0], None, id="min_row_count-and-empty-pass"),
])
def test_groups_reach_the_setting_the_algorithm_names(settings, sizes, control):
    controls = DisclosureControls(NodeSettings(**settings))
    if control is None:
        assert controls.release(Clusters(), None, None, 1, {"group_n": sizes})["group_n"] == sizes
        return
    with pytest.raises(DisclosureError) as info:
        controls.release(Clusters(), None, None, 1, {"group_n": sizes})
    assert info.value.control == control and str(sizes[1]) not in str(info.value).split("(")[0]
    # the default (nfilter_tab) is unchanged for other algorithms
    if sizes[1] >= controls.settings.nfilter_tab:
        assert controls.release(Algo(), None, None, 1, {"group_n": sizes})["group_n"] == sizes


@pytest.mark.parametrize("settings, clusters, others", [
    pytest.param({}, ("min_row_count", 10), ("nfilter_tab", 3), id="defaults"),
    pytest.param({"min_row_count": 2, "nfilter_tab": 5}, ("nfilter_tab", 5), ("nfilter_tab", 5), id="nfilter_tab-larger"),
    pytest.param({"min_row_count": 1, "nfilter_tab": 1}, ("nfilter_tab", 1), ("nfilter_tab", 1), id="exareme2-validation"),
])
def test_group_threshold_is_the_larger_of_nfilter_tab_and_the_named_setting(settings, clusters, others):
    """One threshold for a released group and for the partition check's minimum cut (ADR 0050)."""
    node = NodeSettings(**settings)
    assert group_threshold(Clusters(), node) == clusters
    assert group_threshold(Algo(), node) == others


def test_extremes_only_with_explicit_setting():
    out = DisclosureControls(NodeSettings(release_extremes=1)).release(Algo(), None, None, 0, {"min": 1.0})
    assert out == {"min": 1.0}


def test_released_count_threshold():
    controls = DisclosureControls(NodeSettings(min_row_count=10))
    assert controls.released_count(9) is None and controls.released_count(10) == 10


@pytest.mark.parametrize("small", [1, 2])
def test_refusal_does_not_tell_the_size_of_the_small_group(small):
    """The refusal travels to the central site: it must not say how small the group was."""
    with pytest.raises(DisclosureError) as info:
        DisclosureControls(NodeSettings(nfilter_tab=3)).release(Algo(), None, None, 0, {"group_n": [40, small]})
    assert str(small) not in str(info.value).replace("(3)", "")


@pytest.mark.parametrize("round_no", [0, 1])
def test_logistic_regression_with_one_patient_in_a_class_is_refused(round_no):
    """The gradient holds each class's covariate sums: a class of one row at a node would release
    that patient's covariates, so the class sizes are group sizes under nfilter_tab."""
    from mipflow.algorithms import get_algorithm
    from tests.mipflow.algorithms.synthetic import MODEL, make_data, request

    data = make_data(7, 60).dropna(subset=["x1", "outcome"]).reset_index(drop=True)
    data["outcome"] = "no"
    data.loc[0, "outcome"] = "yes"  # one positive patient at this node
    algo, req = get_algorithm("logistic_regression"), request(x=("x1",), y=("outcome",), positive_class="yes")
    state = None
    if round_no:
        state = algo.global_step(0, [algo.local_step(0, data, req, MODEL, None)], req, MODEL, None).state
    aggregates = algo.local_step(round_no, data, req, MODEL, state)
    with pytest.raises(DisclosureError) as info:
        DisclosureControls(NodeSettings(nfilter_tab=3)).release(algo, req, MODEL, round_no, aggregates)
    assert info.value.control == "nfilter_tab"
    data = data.copy()  # a new frame (steps memoise per frame, which nodes never change in place)
    data.loc[1:2, "outcome"] = "yes"  # three positives: released
    assert DisclosureControls(NodeSettings(nfilter_tab=3)).release(
        algo, req, MODEL, round_no, algo.local_step(round_no, data, req, MODEL, state))


class Clustered(SpecAlgorithm):
    """A model whose rows are clustered by patient (like ``gee``): 4 parameters, patients from ``_pid``."""

    name = "gee"

    def parameter_count(self, request, model):
        return 4

    def cluster_count(self, data):
        return int(data["_pid"].nunique())


def _visits(patients: int, visits: int):
    import pandas as pd

    return pd.DataFrame({"_pid": [f"p{i}" for i in range(patients) for _ in range(visits)]})


@pytest.mark.parametrize("patients, visits, settings, control", [
    pytest.param(9, 5, {}, "min_row_count", id="45-rows-of-9-patients"),
    pytest.param(12, 5, {"nfilter_glm": 0.3}, "nfilter_glm", id="4-parameters-for-12-patients"),
])
def test_clustered_rows_count_patients(patients, visits, settings, control):
    """Issue 17.4: rows enough, patients not: refused with the control and no count in the message."""
    rows = _visits(patients, visits)
    controls = DisclosureControls(NodeSettings(**settings))
    controls.check_rows(Clustered(), _Request(), None, len(rows))  # by rows it passes
    with pytest.raises(DisclosureError) as info:
        controls.check_clusters(Clustered(), _Request(), None, rows)
    assert info.value.control == control
    assert str(patients) not in str(info.value) and str(len(rows)) not in str(info.value)
    DisclosureControls(NodeSettings()).check_clusters(Clustered(), _Request(), None, _visits(14, 5))


class _Request:
    filters = None


@pytest.mark.parametrize("name, words", [
    ("logistic_regression_cv", ("confusion cells of the test rows", "fewer roc_bins do not help",
                                "Use fewer folds (n_splits")),
    ("linear_regression_cv", ("each fold's rows per covariate level", "use fewer folds (n_splits")),
    ("logistic_regression", ("the rows of each class", "positive class")),
    ("kmeans", ("each cluster", "fewer clusters (k)")),
    ("ttest_independent", ("The groups checked are those",)),
])
def test_a_small_group_refusal_ends_with_the_algorithm_s_static_hint(name, words):
    """The refusal names the cells the algorithm checks and what makes them larger: static words (issue 14),
    the same bytes whatever the small group's size."""
    from mipflow.algorithms import get_algorithm

    algo = get_algorithm(name)
    messages = set()
    for small in (1, 2):
        with pytest.raises(DisclosureError) as info:
            DisclosureControls(NodeSettings(nfilter_tab=3)).release(algo, None, None, 0, {"group_n": [40, small]})
        messages.add(str(info.value))
    (message,) = messages
    assert message.endswith(algo.small_group_hint) and all(w in message for w in words), message
    assert not any(ch.isdigit() for ch in message.replace("(3)", "").replace("(10)", ""))
