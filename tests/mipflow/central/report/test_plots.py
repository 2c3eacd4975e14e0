"""mipflow.central.report.plots: plots fit the result's shape."""
from __future__ import annotations


import pytest

from mipflow.central.report.plots import result_plots
from mipflow.central.report.tables import result_tables


@pytest.mark.parametrize("name,expected", [
    pytest.param("linear_regression", "coefficients", id="regression-coefficients"),
    pytest.param("logistic_regression", "coefficients", id="logistic-coefficients"),
    pytest.param("pearson_correlation", "Pearson correlation", id="heatmap"),
    pytest.param("multiple_histograms", "score | grp = a", id="histograms"),
])
def test_plots_fit_the_result_shape(results, name, expected):
    plots = result_plots(results[name])
    assert plots and all(p.startswith("<svg") and p.rstrip().endswith("</svg>") for p in plots)
    assert any(expected in p for p in plots)  # matplotlib keeps each text as an SVG comment
    if name == "multiple_histograms":
        assert len(plots) == len(results[name]["histogram"])
    if name.endswith("regression"):
        # one marker per term: the errorbar line has len(indep_vars) vertices
        assert all(term in plots[0] for term in results[name]["indep_vars"])


def test_no_plot_for_results_without_a_plottable_shape(results):
    assert result_plots(results["ttest_onesample"]) == []
    assert result_plots(results["descriptive_stats"]) == []


def test_kaplan_meier_and_scree_plots_from_their_fields():
    km = {"survival_curves": [{"group": "tpa", "time": [2, 5, 9], "survival": [0.9, 0.7, 0.5],
                               "ci_lower": [0.8, 0.55, 0.3], "ci_upper": [0.97, 0.82, 0.68]},
                              {"group": "none", "time": [3, 4], "survival": [0.8, 0.4]}]}
    (svg,) = result_plots(km)
    assert "Kaplan-Meier" in svg and "tpa" in svg and "none" in svg
    scree = result_plots({"n_obs": 40, "eigen_vals": [2.5, 1.0, 0.5], "eigen_vecs": [[1, 0], [0, 1]]})
    assert len(scree) == 1 and "Scree" in scree[0]
    tables = {t.title: t for t in result_tables({"eigen_vecs": [[1.0, 2.0], [3.0]]})}
    assert tables["Eigenvectors"].rows == [[0, 1.0, 2.0], [1, 3.0, None]]


def test_a_suppressed_histogram_bin_is_marked_hidden_and_an_empty_one_is_not():
    """A bin some node suppressed (``bin_status`` "suppressed") is marked "hidden", not drawn as a 0 bar; an empty
    bin (every node released 0) is a plain 0 bar.  The SVG keeps each text as a comment, so the marks are counted."""
    item = {"var": "age", "grouping_var": None, "grouping_enum": None, "bins": [0, 10, 20, 30, 40],
            "counts": [12, None, None, 7], "bin_status": ["pooled", "suppressed", "empty", "pooled"]}
    (plot,) = result_plots({"histogram": [item]})
    assert plot.count("hidden") == 1
    (both,) = result_plots({"histogram": [{**item, "bin_status": ["pooled", "suppressed", "suppressed", "pooled"]}]})
    assert both.count("hidden") == 2
    (table,) = result_tables({"histogram": [{**item, "counts_at_least": [12, 4, 0, 7]}]})
    rows = {r[table.columns.index("bins from")]: r for r in table.rows}
    assert rows[10][table.columns.index("counts")] is None
    assert rows[10][table.columns.index("bin_status")] == "suppressed"
    assert rows[10][table.columns.index("counts_at_least")] == 4
