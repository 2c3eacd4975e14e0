"""Cohorts computed inside an algorithm enter the ledger (issue 14.5), attacked through the node's API.

``descriptive_stats`` is not complete-case: it releases each variable's statistics over that
variable's non-missing rows, and **model-based** statistics over the rows complete on every
variable, **per dataset**.  Before, only the first kind entered the differencing ledger, so a
later analysis on "the model-based rows minus the target", or on "one dataset minus the target",
was a few rows from no recorded cohort and was answered: subtracting the two releases gave the
target's value.  Now the model-based rows and each dataset's rows are cohorts of their own.

The node holds :func:`tests.privacy.conftest.make_rows` (three datasets) with missing values in
two datasets (:func:`rows_with_missing_values`), default settings (min_row_count 10).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest

from tests.privacy.conftest import TARGET, TARGET_AGE, Node, make_rows, rule, start_node, where

NOT_TARGET = where(rule("age", "not_equal", TARGET_AGE))


def rows_with_missing_values():
    """In hospital_b 15 rows miss NIHSS and 15 others miss both variables, in hospital_c 15 rows miss
    the systolic pressure; the target (hospital_a) misses nothing.  Every cohort the descriptive
    statistics release is 0 or >= 15 rows from another, and the rows complete on both variables are
    no linear combination of each variable's rows (some rows miss both), so neither the pairwise
    rule nor the chain rule meets them unless they are recorded."""
    rows = make_rows()
    assert rows.loc[rows["subjectcode"] == TARGET, "dataset"].item() == "hospital_a"
    b = np.flatnonzero(rows["dataset"].to_numpy() == "hospital_b")
    c = np.flatnonzero(rows["dataset"].to_numpy() == "hospital_c")
    rows.loc[b[:30], "nihss_admission"] = np.nan
    rows.loc[b[15:30], "systolic_bp"] = np.nan
    rows.loc[c[:15], "systolic_bp"] = np.nan
    return rows


@pytest.fixture()
def node(tmp_path) -> Iterator[Node]:
    yield from start_node(tmp_path / "node", rows_with_missing_values())


def _describe(node: Node, datasets=None):
    return node.allowed("descriptive_stats", y=["nihss_admission", "systolic_bp"], datasets=datasets)


def test_the_model_based_rows_minus_one_patient_are_refused(node):
    described = _describe(node)
    model_based = sum(record["model_based"]["nihss_admission"]["moments"]["n"]
                      for record in described["aggregates"]["datasets"].values())
    assert model_based == len(node.rows) - 45  # the rows complete on both variables
    # the same rows but the target, as a regression's complete cases: each variable's rows differ
    # from them by 16, the unfiltered rows by 46, so only the model-based cohort is one row away
    node.refused("differencing", "linear_regression", y=["nihss_admission"], x=["systolic_bp"],
                 filters=NOT_TARGET)
    # the model-based rows themselves (a regression on the same complete cases): answered
    assert node.allowed("linear_regression", y=["nihss_admission"], x=["systolic_bp"])["rows"] == model_based


def test_one_dataset_minus_one_patient_is_refused_after_per_dataset_statistics(node):
    _describe(node)  # per-dataset statistics of every dataset
    target_dataset = node.rows.loc[node.rows["subjectcode"] == TARGET, "dataset"].item()
    node.refused("differencing", "descriptive_stats", y=["nihss_admission", "systolic_bp"],
                 datasets=[target_dataset], filters=NOT_TARGET)


def test_an_honest_researcher_describes_then_models_the_complete_cases(node):
    """The same rows as the model-based statistics, or every dataset again: answered."""
    _describe(node)
    _describe(node)
    node.allowed("linear_regression", y=["nihss_admission"], x=["systolic_bp"])
    node.allowed("pearson_correlation", y=["nihss_admission"], x=["systolic_bp"])
