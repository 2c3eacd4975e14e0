"""Design columns without the design matrix (mipflow.algorithms.design, ADR 0049 amended): the same
values as design_matrix, the frame's own float columns not copied, and the linear and logistic local
steps releasing bit for bit what they released when they built the matrix.  The released groups of a
dummy-encoded design (ADR 0051 amended for the sixteenth review): each pair of nominal covariates' joint
cells, and every declared cell checked in the release (``declared_cell_counts``)."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import AnalysisRequest, get_algorithm
from mipflow.algorithms.contract import ReleasedGroups
from mipflow.algorithms.design import (class_level_counts, declared_cell_counts, design_columns_of, design_matrix,
                                       dummy_level_groups, level_counts)
from mipflow.algorithms.moments import compute_moments
from mipflow.node.controls.groups import kind_of, level_groups
from mipflow.node.home import NodeSettings
from tests.mipflow.algorithms.survival_data import HOSPITALS, STROKE, run_with_controls
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request

X = ("x1", "grp", "age", "sex", "x2")


def _data(n: int = 3000):
    data = make_data(7, n)
    data["age"] = data["age"].astype("int64")  # an integer column: converted, not viewed
    return data.dropna(subset=[*X, "y", "outcome"]).reset_index(drop=True)


@pytest.mark.parametrize("kwargs", [{}, {"intercept": False}, {"columns": ["Intercept", "x2", "grp[b]", "age"]}])
def test_design_columns_are_the_design_matrix_columns(kwargs):
    data = _data()
    matrix, names = design_matrix(data, X, MODEL, **kwargs)
    columns, same = design_columns_of(data, X, MODEL, **kwargs)
    assert same == names and len(columns) == matrix.shape[1]
    for j, column in enumerate(columns):
        assert column.dtype == np.float64 and np.array_equal(column, matrix[:, j])
        assert not column.flags.writeable
    # a float64 covariate is the frame's own column (no copy), and cannot be written through
    x1 = columns[names.index("x1")] if "x1" in names else None
    if x1 is not None:
        assert np.shares_memory(x1, data["x1"].to_numpy())
        with pytest.raises(ValueError):
            x1[0] = 0.0


def test_a_centred_design_is_the_design_minus_the_centre_bit_for_bit():
    data = _data()
    columns = ["Intercept", "x1", "grp[b]", "grp[c]", "age", "x2"]
    centre = [2.01, 0.31, 0.19, 55.5, 1000.000123]
    want, _ = design_matrix(data, X, MODEL, columns=columns)
    want[:, 1:] -= np.asarray(centre, dtype=float)
    got, _ = design_matrix(data, X, MODEL, columns=columns, center=centre)
    assert np.array_equal(got, want) and got.flags.f_contiguous
    with pytest.raises(ValueError):
        design_matrix(data, X, MODEL, columns=columns, center=centre[:-1])


def test_linear_and_logistic_first_rounds_release_what_the_matrix_gave():
    data = _data(70_000)  # more rows than one moments block
    linear = get_algorithm("linear_regression")
    req = request(x=X, y=("y",))
    z, _ = design_matrix(data, [*X, "y"], MODEL, intercept=False)
    assert linear.local_step(0, data, req, MODEL, None)["moments"] == compute_moments(z, matrix=True).to_dict()
    logistic = get_algorithm("logistic_regression")
    req = request(x=X, y=("outcome",), positive_class="yes")
    design, _ = design_matrix(data, X, MODEL, intercept=False)
    out = logistic.local_step(0, data, req, MODEL, None)
    assert out["moments"] == compute_moments(design).to_dict()
    assert out["level_counts"] == level_counts(data, X, MODEL)


# --------------------------------------------------------------------------- joint cells as released groups
# (ADR 0051 amended for the sixteenth review, hole 3)


def _stroke(n: int = 300, joint_tia_women: int = 1, tia_deaths: int = 12, seed: int = 16) -> pd.DataFrame:
    """Stroke rows, sex and stroke type balanced but for ``joint_tia_women`` women with a TIA (every level at
    least 20 rows), ``tia_deaths`` deaths among the TIA patients (and many among the others)."""
    rng = np.random.default_rng(seed)
    types = np.array(["ischaemic", "haemorrhagic", "tia"])[np.arange(n) % 3]
    sex = np.where(np.arange(n) % 2 == 0, "F", "M").astype(object)
    tia = np.flatnonzero(types == "tia")
    sex[tia] = "M"
    sex[tia[:joint_tia_women]] = "F"
    death = np.where(rng.random(n) < 0.4, "yes", "no").astype(object)
    death[tia] = "no"
    death[tia[-tia_deaths:]] = "yes" if tia_deaths else "no"
    return pd.DataFrame({
        "dataset": "hospital_a", "_pid": [f"p{i}" for i in range(n)], "_visit": "v1",
        "age": rng.uniform(30, 85, n).round(1), "sex": sex, "stroke_type": types,
        "nihss_admission": rng.integers(0, 30, n).astype(float),
        "followup_days": rng.integers(1, 800, n).astype(float), "death_90d": death})


def test_two_or_more_nominal_covariates_declare_each_pair_s_joint_cells() -> None:
    assert dummy_level_groups(["age", "nihss_admission"], STROKE) == ()
    assert dummy_level_groups(["age", "sex", "sex"], STROKE) == (ReleasedGroups(("sex",)),)  # one covariate: levels
    assert dummy_level_groups(["sex", "age", "stroke_type", "sex"], STROKE) == (ReleasedGroups(("sex", "stroke_type")),)
    assert dummy_level_groups(["death_90d", "sex", "stroke_type"], STROKE) == (
        ReleasedGroups(("death_90d", "sex")), ReleasedGroups(("death_90d", "stroke_type")),
        ReleasedGroups(("sex", "stroke_type")))


def test_a_pair_s_groups_are_its_joint_cells_and_each_covariate_s_levels_as_margins() -> None:
    """What the node derives from the declaration (``level_groups``): the six sex x stroke type cells (the
    chain's sets) and the five levels (margins, still held by rules 1 and 4); the union is the cohort."""
    data = _stroke()
    keys = np.arange(100, 100 + len(data), dtype=np.uint64)
    groups, union = level_groups(data, keys, dummy_level_groups(["sex", "stroke_type", "age"], STROKE), STROKE, "m")
    cells = {g.kind: len(g.rows) for g in groups if g.cell}
    margins = {g.kind: len(g.rows) for g in groups if not g.cell}
    want = data.groupby(["sex", "stroke_type"]).size()
    assert cells == {kind_of("m", [("sex", s), ("stroke_type", t)]): n for (s, t), n in want.items()}
    assert cells[kind_of("m", [("sex", "F"), ("stroke_type", "tia")])] == 1  # the cell of hole 3's kind
    assert margins == {**{kind_of("m", [("sex", s)]): n for s, n in data.groupby("sex").size().items()},
                       **{kind_of("m", [("stroke_type", t)]): n for t, n in data.groupby("stroke_type").size().items()}}
    assert np.array_equal(union, keys)


def test_declared_cell_counts_are_the_declared_cells_sizes() -> None:

    data = _stroke()
    data.loc[[0, 1], "sex"] = None  # missing: in no cell
    pair = ReleasedGroups(("sex", "stroke_type"))
    want = data.dropna(subset=["sex"]).groupby(["sex", "stroke_type"]).size()
    assert declared_cell_counts(data, [pair], STROKE) == [int(n) for n in want.sort_index()]
    deaths = ReleasedGroups(("death_90d", "stroke_type"), (("yes",), None), rest=True)
    got = declared_cell_counts(data, [deaths], STROKE)
    assert sorted(got) == sorted(int(n) for n in data.groupby(["death_90d", "stroke_type"]).size())
    assert min(got) == 12  # the TIA deaths: a class within a level
    binned = ReleasedGroups(("age",), bins=((30.0, 60.0, 85.0),))
    assert declared_cell_counts(data, [binned], STROKE) == [int((data["age"] < 60).sum()), int((data["age"] >= 60).sum())]
    assert declared_cell_counts(data.iloc[:0], [pair], STROKE) == []


MODELS = [  # every algorithm that dummy-encodes its covariates, with sex and stroke type
    ("linear_regression", ("nihss_admission",), {}),
    ("logistic_regression", ("death_90d",), {"positive_class": "yes"}),
    ("gee", ("nihss_admission",), {"cov_struct": "independence"}),
    ("gee", ("death_90d",), {"family": "binomial", "positive_class": "yes", "cov_struct": "independence"}),
    ("linear_mixed_model", ("nihss_admission",), {}),
    ("cox_regression", ("followup_days", "death_90d"), {"event_level": "yes"}),
]


@pytest.mark.parametrize("name, y, parameters", MODELS)
def test_every_declared_cell_is_checked_in_the_release_so_no_group_is_left_unchecked(name, y, parameters) -> None:
    """The group memory leaves a release holding a group under the threshold to the release check (ADR 0051,
    "Where"): so every declared cell is among the counts that check reads, for every declaring algorithm.  One
    woman with a TIA (every level 20 rows or more): refused at round 0 by ``nfilter_tab``, no size said; with three,
    every model answers (the check is no stricter than the cell)."""
    req = AnalysisRequest(data_model=STROKE.key, datasets=HOSPITALS, x=("sex", "stroke_type", "age"), y=y,
                          parameters=parameters)
    result, used, refused = run_with_controls(name, [_stroke(joint_tia_women=1)], req, NodeSettings())
    assert result is None and not used and refused[0].control == "nfilter_tab", refused
    assert set(re.findall(r"\d+", str(refused[0]))) == {"3"}
    result, used, refused = run_with_controls(name, [_stroke(joint_tia_women=3)], req, NodeSettings())
    assert used == [0] and not refused and result is not None


@pytest.mark.parametrize("name, y, parameters", [m for m in MODELS if m[1][-1] == "death_90d"])
def test_a_class_within_a_level_is_checked_in_the_release_too(name, y, parameters) -> None:
    """The response class within a level (ADR 0051, fifteenth review) is a declared cell too: two deaths among the
    TIA patients refuse the release (one stroke type, ``nfilter_tab``, no size said); with three, every model
    answers.  Cox's event set within a level too (issue 14: its score's ``event_x`` holds the count; before, a Cox
    release holding such a cell was answered and skipped the group rules)."""
    req = AnalysisRequest(data_model=STROKE.key, datasets=HOSPITALS, x=("stroke_type", "age"), y=y,
                          parameters=parameters)
    _, used, refused = run_with_controls(name, [_stroke(joint_tia_women=3, tia_deaths=2)], req, NodeSettings())
    assert not used and refused[0].control == "nfilter_tab"
    assert set(re.findall(r"\d+", str(refused[0]))) == {"3"}
    result, used, refused = run_with_controls(name, [_stroke(joint_tia_women=3, tia_deaths=3)], req, NodeSettings())
    assert used == [0] and not refused and result is not None


def test_cox_checks_the_events_within_a_level_up_to_the_end_of_follow_up() -> None:
    """Rows followed beyond ``max_time`` are censored there, so the score's ``event_x`` counts the events up to it:
    three TIA deaths (a declared cell of three) of which one after ``max_time`` leave two in the release, refused;
    the same rows without ``max_time`` answer."""
    frame = _stroke(joint_tia_women=3, tia_deaths=3)
    late = frame.index[(frame["stroke_type"] == "tia") & (frame["death_90d"] == "yes")][0]
    frame.loc[frame["followup_days"] > 600, "followup_days"] = 600.0
    frame.loc[late, "followup_days"] = 700.0
    events = (frame["death_90d"] == "yes") & (frame["followup_days"] <= 650)
    assert [int(n) for n in class_level_counts(frame, ["stroke_type", "age"], STROKE, events.to_numpy())] == [
        int(((frame["stroke_type"] == t) & events).sum()) if i == 0 else int(((frame["stroke_type"] == t) & ~events).sum())
        for t in ("haemorrhagic", "ischaemic", "tia") for i in (0, 1)]
    parameters = {"event_level": "yes"}
    req = AnalysisRequest(data_model=STROKE.key, datasets=HOSPITALS, x=("stroke_type", "age"),
                          y=("followup_days", "death_90d"), parameters={**parameters, "max_time": 650.0})
    _, used, refused = run_with_controls("cox_regression", [frame], req, NodeSettings())
    assert not used and refused[0].control == "nfilter_tab"
    whole = AnalysisRequest(data_model=STROKE.key, datasets=HOSPITALS, x=("stroke_type", "age"),
                            y=("followup_days", "death_90d"), parameters=parameters)
    result, used, refused = run_with_controls("cox_regression", [frame], whole, NodeSettings())
    assert used == [0] and not refused and result is not None
