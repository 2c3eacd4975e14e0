"""mipflow.central.report.tables: every stored number of a result is in its tables, labelled."""
from __future__ import annotations

import json
import math

import pytest

from mipflow.central.report.tables import result_tables
from tests.mipflow.central.report.helpers import CASES, numeric_leaves


@pytest.mark.parametrize("name", list(CASES))
def test_every_number_of_a_result_is_in_its_tables(results, name):
    result = results[name]
    table_values = [v for t in result_tables(result) for row in t.rows for v in row
                    if isinstance(v, (int, float)) and not isinstance(v, bool)]
    leaves = list(numeric_leaves(result))
    assert leaves
    for path, value in leaves:
        assert any(v == value or (math.isnan(value) and math.isnan(v)) for v in table_values), (path, value)


def test_regression_table_is_labelled_by_term(results):
    result = results["linear_regression"]
    (table,) = [t for t in result_tables(result) if t.columns[0] == "indep_vars"]
    assert [r[0] for r in table.rows] == result["indep_vars"]
    col = table.columns.index("coefficients")
    assert [r[col] for r in table.rows] == result["coefficients"]


def test_correlation_matrix_table_and_tukey_records(results):
    tables = {t.title: t for t in result_tables(results["pearson_correlation"])}
    corr = tables["Correlation coefficients"]
    assert corr.columns == ["variable", "y", "x1", "age"]
    assert corr.rows[1][2] == results["pearson_correlation"]["correlations"]["x1"][1]
    tukey = {t.title: t for t in result_tables(results["anova_oneway"])}["Tukey HSD (pairwise comparisons)"]
    assert len(tukey.rows) == len(results["anova_oneway"]["tuckey_test"]) == 3
    assert tukey.columns[:2] == ["groupA", "groupB"]
    histograms = [t for t in result_tables(results["multiple_histograms"]) if t.title.startswith("Histograms")]
    assert len(histograms) == len(results["multiple_histograms"]["histogram"])
    first = results["multiple_histograms"]["histogram"][0]
    assert [r[0] for r in histograms[0].rows] == first["bins"][:-1]
    assert [r[2] for r in histograms[0].rows] == first["counts"]


def test_generic_shapes_unknown_to_the_report():
    result = {"sum_sq": {"a": 1.5, "Residuals": 2.5}, "df": {"a": 1, "Residuals": 10},
              "nested": {"x": {"n": 3}, "y": {"n": 4}}, "odd": [1, {"a": 2}]}
    tables = {t.title: t for t in result_tables(result)}
    assert tables["sum sq, df"].rows == [["a", 1.5, 1], ["Residuals", 2.5, 10]]
    assert tables["nested"].rows == [["x", 3], ["y", 4]]
    assert json.loads(tables["odd"].rows[0][0]) == [1, {"a": 2}]
