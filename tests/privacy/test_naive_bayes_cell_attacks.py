"""Categorical naive Bayes's class x level cells across releases (issue 14; ADR 0051 amended): through real node
processes (``mipflow node serve`` on loopback), the shipped thresholds, standard mode (``standard_home``).

``naive_bayes_categorical_cv`` releases each fold's class x level counts; their sum over the folds is the result's
``model.category_count``: the cohort's number of deaths among its TIA patients (13 here), exact.  Each fold's cell is
checked per release (``group_counts``, ``nfilter_tab``; ``tests/mipflow/algorithms/test_crossvalidation.py``), but
the cells were not released groups: descriptive statistics of the TIA deaths aged 22 or more (12 rows, far from every
cohort of the ledger) were answered beside them, and 13 - 12 is the one young TIA patient who died, a cell of one (the
sixteenth review's hole 3 with a classifier instead of a regression).  Now the classifier declares its cells
(``released_groups``) and the node's group memory holds them against every cohort, either order (``differencing``).

Two nodes hold the same rows: at one the classifier runs first, at the other the cohort; each second release is
refused.  The first releases, answered at both, give the arithmetic the attack needed.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.central.rounds import run_analysis as _run_analysis
from mipflow.exceptions import MipflowError
from mipflow.node.controls.disclosure import cohort_refusal, group_refusal
from mipflow.node.controls.ledger import _refusal
from tests.mipflow.algorithms.survival_data import STROKE, make_stroke
from tests.mipflow.node.controls.study_helpers import rule, where
from tests.nodes import PROJECT, RESEARCHER, grant_all, load_frame, served_clients, standard_home

run_analysis = functools.partial(_run_analysis, researcher=RESEARCHER, project=PROJECT)

pytestmark = pytest.mark.xdist_group("naive_bayes_cells")

DATASET = "hospital_a"
#: the TIA patients who died: all aged 25 or more but one, aged 19
TIA_DEATHS = 13
YOUNG = 19.0
ADULT = where(rule("death_90d", "equal", "yes"), rule("stroke_type", "equal", "tia"),
              rule("age", "greater_or_equal", 22.0))
#: the nodes' secret key (hex), fixed so that the folds are the same every run
FIXED_KEY = "5eed" * 16
#: every refusal a differencing rule on cohorts and groups gives: fixed words, no size, no value
FIXED = {str(cohort_refusal()), str(group_refusal("nfilter_tab", 3)), str(_refusal(10))}


def rows() -> pd.DataFrame:
    data = make_stroke(2026, 900)
    frame = data[data["dataset"] == DATASET].dropna(subset=["death_90d", "stroke_type", "age"]).reset_index(drop=True)
    frame["age"] = np.maximum(frame["age"], 25.0)
    tia = frame.index[frame["stroke_type"] == "tia"]
    frame.loc[tia, "death_90d"] = "no"
    frame.loc[tia[:TIA_DEATHS], "death_90d"] = "yes"
    frame.loc[tia[0], "age"] = YOUNG
    return frame


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[tuple[dict, pd.DataFrame]]:
    frame = rows()
    base = Path(tmp_path_factory.mktemp("naive-bayes-cells"))
    roots = {}
    for name in ("classifier_first", "cohort_first"):
        roots[name] = base / name
        standard_home(roots[name], name)
        # a fixed key: the folds are dealt by the node's key, and a fresh one splits the 13 TIA deaths 11/2 (or
        # the 15 surviving haemorrhagic patients 13/2) in about 3 runs in 100, which the per-fold check refuses,
        # rightly; with this key every fold cell holds 3 or more
        (roots[name] / "secret.key").write_text(FIXED_KEY + "\n")
        assert load_frame(roots[name], STROKE, frame) == len(frame)
        grant_all(roots[name])
    with served_clients(roots) as served:
        yield served, frame


def classifier() -> dict:
    return {"inputdata": {"data_model": STROKE.key, "datasets": [DATASET], "x": ["stroke_type"], "y": ["death_90d"],
                          "filters": None}, "parameters": {"n_splits": 2}}


def describe() -> dict:
    return {"inputdata": {"data_model": STROKE.key, "datasets": [DATASET], "x": [], "y": ["age"],
                          "filters": ADULT}, "parameters": {}}


def tia_deaths(result: dict) -> int:
    model = result["model"]
    return int(model["category_count"][0][model["classes"].index("yes")][model["levels"][0].index("tia")])


def refused(call) -> None:
    with pytest.raises(MipflowError) as caught:
        call()
    message = str(caught.value)
    assert "(differencing)" in message and any(text in message for text in FIXED), message


def test_a_classifier_s_cell_less_a_cohort_of_its_rows_but_one_is_refused_either_order(nodes) -> None:
    served, frame = nodes
    truth = frame[(frame["death_90d"] == "yes") & (frame["stroke_type"] == "tia")]
    assert len(truth) == TIA_DEATHS and int((truth["age"] < 22).sum()) == 1
    # the classifier first: its cells are answered (honest), then the cohort of the cell's rows but one is refused
    first = served["classifier_first"]
    fit = run_analysis("naive_bayes_categorical_cv", classifier(), [first]).result
    assert tia_deaths(fit) == TIA_DEATHS
    refused(lambda: run_analysis("descriptive_stats", describe(), [first]))
    # the cohort first: answered (it is far from every cohort), then the classifier is refused
    other = served["cohort_first"]
    cohort = run_analysis("descriptive_stats", describe(), [other])
    assert cohort.contributed == {"cohort_first": TIA_DEATHS - 1}
    refused(lambda: run_analysis("naive_bayes_categorical_cv", classifier(), [other]))
    # what the two first releases give together: the one young TIA patient who died (a cell of one), which
    # before this change one node answered in either order
    assert tia_deaths(fit) - cohort.contributed["cohort_first"] == 1


def test_honest_the_classifier_again_and_other_cohorts_answer(nodes) -> None:
    """The same classifier again (the same cells: a repeat), and descriptive statistics of all TIA deaths (the
    cell's own rows) and of every adult, answered after it; each result equals the rows'."""
    served, frame = nodes
    first = served["classifier_first"]
    again = run_analysis("naive_bayes_categorical_cv", classifier(), [first]).result
    assert tia_deaths(again) == TIA_DEATHS
    table = pd.crosstab(frame["death_90d"], frame["stroke_type"])
    assert again["model"]["category_count"][0] == [[int(table.loc[c, lvl]) for lvl in again["model"]["levels"][0]]
                                                   for c in again["model"]["classes"]]
    cell = where(rule("death_90d", "equal", "yes"), rule("stroke_type", "equal", "tia"))
    doc = describe()
    doc["inputdata"]["filters"] = cell
    assert run_analysis("descriptive_stats", doc, [first]).contributed == {"classifier_first": TIA_DEATHS}
