"""Rows corrected in place (ADR 0061, the thirteenth review's hole 2), through a real node process.

A nightly load that corrects a value keeps the row's identity ``(_pid, dataset, _visit)``; the memories
compare each remembered cohort's value stamps of the columns a release reads with an exact repeat's
(:mod:`mipflow.node.query.stamps`).  An honest repeat with no change is answered identically; so is one
after a correction to a column it does not read; a repeat after a correction to a value it reads is refused
(``differencing``) with words that say why and what answers it, naming no value; ``min_row_count`` new rows
in the cohort answer it again.  The frame path (PCA, descriptive statistics) and the rows left on disk
(linear regression, ADR 0049) alike.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.protocol.signing import issue_client
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import rule, where
from tests.nodes import grant_all, load_frame, running_nodes, standard_home
from tests.privacy.test_explore_attacks import Served
from tests.privacy.test_redteam_round13 import AUDIT, EXP, PCA_VARIABLES, glucose_rows, request, typed

pytestmark = pytest.mark.xdist_group("corrections_in_place")


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[Served]:
    """One standard-mode node (shipped thresholds, columnar snapshot on) holding 200 rows of hospital_a under
    keyed pseudonyms (ages 25-85), project ``audit``."""
    root = Path(tmp_path_factory.mktemp("corrections")) / "node"
    home = standard_home(root, "hospital_a")
    pseudonyms = Pseudonymiser(home.key())
    frame = glucose_rows(31, 200, "hospital_a", "cip")
    frame = frame.assign(pid=[pseudonyms.pseudonym(p) for p in frame["subjectcode"]])
    load_frame(root, STROKE, frame, pid_column="pid")
    grant_all(root, researcher="*", project=AUDIT)
    with running_nodes([root]) as (url,):
        yield Served(url, issue_client(root, "central"), root, frame)


def band(low: float, high: float) -> dict:
    return where(rule("age", "greater_or_equal", low), rule("age", "less", high))


def correct(node: Served, at, **values) -> None:
    """Load the rows at ``at`` again with ``values`` (an ingest's upsert: the same row identity)."""
    fixed = node.rows.loc[at].assign(**values)
    assert load_frame(node.root, STROKE, fixed, pid_column="pid") == len(fixed)
    node.rows.loc[at, list(values)] = fixed[list(values)].to_numpy()


def in_band(node: Served, low: float, high: float):
    return node.rows.index[(node.rows["age"] >= low) & (node.rows["age"] < high)]


def test_an_honest_exact_repeat_with_no_change_is_answered_the_same(node):
    asks = {"linear_regression": request(["nihss_admission"], ["age"], filters=band(25, 40)),
            "pca_with_transformation": request(PCA_VARIABLES, filters=band(25, 40), **EXP)}
    for algorithm, ask in asks.items():
        first, again = (node.call(algorithm, ask, project=AUDIT) for _ in range(2))
        assert (first.status_code, again.status_code) == (200, 200), (first.text, again.text)
        assert again.json()["aggregates"] == first.json()["aggregates"]


def test_a_correction_to_a_column_the_release_does_not_read_leaves_a_repeat_a_repeat(node):
    ask = request(["nihss_admission"], ["age"], filters=band(40, 60))
    first = node.call("linear_regression", ask, project=AUDIT)
    stats = node.call("descriptive_stats", request(["age", "nihss_admission"], filters=band(40, 60)), project=AUDIT)
    assert (first.status_code, stats.status_code) == (200, 200), (first.text, stats.text)
    target = in_band(node, 40, 60)[3]
    correct(node, [target], glucose_mmol=float(node.rows.loc[target, "glucose_mmol"]) + 1.5)
    again = node.call("linear_regression", ask, project=AUDIT)
    stats_again = node.call("descriptive_stats", request(["age", "nihss_admission"], filters=band(40, 60)),
                            project=AUDIT)
    assert (again.status_code, stats_again.status_code) == (200, 200), (again.text, stats_again.text)
    assert again.json()["aggregates"] == first.json()["aggregates"]
    assert stats_again.json()["aggregates"] == stats.json()["aggregates"]


@pytest.mark.parametrize("algorithm", ["linear_regression", "pca_with_transformation"])
def test_a_correction_to_a_value_the_release_reads_refuses_the_repeat_until_new_rows(node, algorithm):
    low, high = (60, 70) if algorithm == "linear_regression" else (70, 90)
    ask = request(["nihss_admission"], ["age"], filters=band(low, high)) if algorithm == "linear_regression" \
        else request(PCA_VARIABLES, filters=band(low, high), **EXP)
    assert node.call(algorithm, ask, project=AUDIT).status_code == 200
    target = in_band(node, low, high)[5]
    old = float(node.rows.loc[target, "nihss_admission"])
    new = 33.0 if old != 33.0 else 34.0
    correct(node, [target], nihss_admission=new)
    refused = node.call(algorithm, ask, project=AUDIT)
    assert typed(refused) == (403, "differencing")
    words = refused.json()["refused"]
    assert "corrected" in words and "min_row_count new rows" in words and "re-run" in words
    assert not any(ch.isdigit() for ch in words.replace("min_row_count (10)", ""))  # no value, no count
    # what answers it: at least min_row_count new rows in the cohort (another cohort, far from the first)
    fresh = glucose_rows(41 + low, 12, "hospital_a", f"new{low}")  # one glucose: 12 rows in effect under exp
    fresh = fresh.assign(age=float(low) + 1.0, glucose_mmol=7.0, pid=[f"fresh-{low}-{i}" for i in range(12)])
    assert load_frame(node.root, STROKE, fresh, pid_column="pid") == 12
    answered = node.call(algorithm, ask, project=AUDIT)
    assert answered.status_code == 200, answered.text
