"""Histogram bins on the public grid (ADR 0051): counts that nest, the nearest one to a request, said in the result."""
from __future__ import annotations

import numpy as np
import pytest

from mipflow.algorithms import get_algorithm, run_in_process
from mipflow.algorithms.multiple_histograms import GRID_BINS, grid_bins
from mipflow.protocol.request import AnalysisRequest
from tests.mipflow.algorithms.survival_data import STROKE, make_stroke


def request(y: str = "age", bins: int | None = None, x: tuple[str, ...] = ()) -> AnalysisRequest:
    return AnalysisRequest(data_model=STROKE.key, datasets=("hospital_a",), x=x, y=(y,),
                           parameters={} if bins is None else {"bins": bins})


def test_the_allowed_counts_each_divide_the_next_so_every_two_histograms_nest() -> None:
    assert all(b % a == 0 for a, b in zip(GRID_BINS, GRID_BINS[1:]))
    fine = set(np.round(np.histogram_bin_edges([], bins=GRID_BINS[-1], range=(18.0, 90.0)), 9))
    for count in GRID_BINS:
        assert set(np.round(np.histogram_bin_edges([], bins=count, range=(18.0, 90.0)), 9)) <= fine


@pytest.mark.parametrize("asked, used", [(1, 1), (2, 1), (3, 5), (4, 5), (6, 5), (7, 5), (8, 10), (10, 10),
                                         (15, 20), (20, 20), (28, 20), (29, 40), (50, 40), (72, 80), (100, 80)])
def test_a_count_off_the_grid_takes_the_nearest_by_ratio_a_tie_the_finer(asked, used) -> None:
    assert grid_bins(asked) == used
    algo = get_algorithm("multiple_histograms")
    assert algo.params(request(bins=asked), STROKE)["bins"] == used


def test_the_result_says_which_bins_it_shows_and_counts_exactly_over_them() -> None:
    data = make_stroke(5, 300)
    algo = get_algorithm("multiple_histograms")
    result = run_in_process(algo, [data.iloc[:150], data.iloc[150:]], request(bins=7, x=("sex",)), STROKE)
    overall = result["histogram"][0]
    counts, edges = np.histogram(data["age"].dropna(), bins=5, range=(18.0, 90.0))
    assert overall["bins"] == edges.tolist() and overall["counts"] == counts.tolist()
    (note,) = result["notes"]
    assert note.startswith("5 bins instead of the 7 asked for") and "1, 5, 10, 20, 40, 80" in note
    on_grid = run_in_process(algo, [data], request(bins=10), STROKE)
    assert "notes" not in on_grid and len(on_grid["histogram"][0]["counts"]) == 10


def test_a_variable_without_a_declared_range_keeps_the_requested_count() -> None:
    """Bins on the pooled extremes (Exareme2's, at a node that releases extremes) are not on the grid: their
    histogram declares no groups (ADR 0051)."""
    model = STROKE
    undeclared = [v.code for v in model if not v.is_categorical and (v.min_value is None or v.max_value is None)]
    algo = get_algorithm("multiple_histograms")
    if not undeclared:
        pytest.skip("every numerical variable of the stroke model declares its range")
    req = request(undeclared[0], bins=7)
    assert algo.params(req, model)["bins"] == 7 and algo.released_groups(req, model) == ()
