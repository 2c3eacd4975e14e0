"""Histogram bins on the public grid (ADR 0051): counts that nest, the nearest one to a request, said in the result."""
from __future__ import annotations

import json

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


# -- pooling bins some node suppressed (honest-researcher review: a partial sum read as the pooled count) -------

def test_a_bin_suppressed_at_one_of_three_nodes_is_marked_not_summed() -> None:
    from mipflow.algorithms.multiple_histograms import pool_exact_bins

    rng = np.random.default_rng(7)
    parts = rng.integers(3, 40, size=(3, 8)).tolist()
    exact = np.sum(parts, axis=0).tolist()
    parts[1][2] = None  # node 1 hides bin 2
    parts[0][5] = parts[2][5] = None  # two nodes hide bin 5
    parts[0][6], parts[1][6], parts[2][6] = 0, 0, 0  # nobody has a row in bin 6
    parts[0][7] = parts[1][7] = parts[2][7] = None  # every node hides bin 7
    pooled = pool_exact_bins(parts)
    released = [all(p[j] is not None for p in parts) for j in range(8)]
    for j in range(8):
        if j == 6:
            assert pooled["counts"][j] is None and pooled["bin_status"][j] == "empty"
            assert pooled["counts_at_least"][j] == 0
        elif released[j]:  # released everywhere: exactly the pooled count
            assert pooled["counts"][j] == exact[j] and pooled["bin_status"][j] == "pooled"
            assert pooled["counts_at_least"][j] == exact[j]
        else:  # hidden somewhere: no count, marked; the released part only as a lower bound below the pooled count
            assert pooled["counts"][j] is None and pooled["bin_status"][j] == "suppressed"
            low = pooled["counts_at_least"][j]
            assert low == sum(p[j] for p in parts if p[j] is not None) if j != 7 else low is None
            assert low is None or low < exact[j]


def test_the_global_step_shows_every_bin_some_node_hid_as_suppressed_and_says_so() -> None:
    data = make_stroke(11, 360)
    algo = get_algorithm("multiple_histograms")
    req = request(bins=10, x=("sex",))
    frames = [data.iloc[:120], data.iloc[120:240], data.iloc[240:]]
    aggregates = [json.loads(json.dumps(algo.local_step(0, f, req, STROKE, None))) for f in frames]
    aggregates[1]["histograms"][0]["counts"][4] = None  # as a node's disclosure control would send it
    result = algo.global_step(0, aggregates, req, STROKE, None).result
    overall = result["histogram"][0]
    exact = np.histogram(data["age"].dropna(), bins=10, range=(18.0, 90.0))[0].tolist()
    assert overall["counts"][4] is None and overall["bin_status"][4] == "suppressed"
    assert overall["counts_at_least"][4] == exact[4] - frames[1]["age"].between(
        overall["bins"][4], overall["bins"][5], inclusive="left").sum()
    assert all(c == (e or None) for j, (c, e) in enumerate(zip(overall["counts"], exact)) if j != 4)
    assert any("at least one participating node suppressed" in n for n in result["notes"])
    # the grouped histograms lost nothing: no note is needed for them, they are exact
    assert all("suppressed" not in h["bin_status"] for h in result["histogram"][1:])
    clean = algo.global_step(0, [json.loads(json.dumps(algo.local_step(0, f, req, STROKE, None))) for f in frames],
                             req, STROKE, None).result
    assert "notes" not in clean and clean["histogram"][0]["counts"] == [e or None for e in exact]


def test_a_noisy_histogram_leaves_a_bin_an_exact_node_hid_unknown() -> None:
    from mipflow.algorithms.multiple_histograms import pool_bins

    noisy = {"counts": [5, 7, -1], "noise": {"terms": [["laplace", 1.0, "rounded"]]}}
    exact = {"counts": [10, None, 4]}
    pooled = pool_bins([noisy, exact])
    assert pooled["bin_status"] == ["pooled", "suppressed", "pooled"]
    assert pooled["counts"][1] is None and pooled["counts_signed"][1] is None and pooled["counts_interval"][1] is None
    assert pooled["counts_signed"][0] == 15 and pooled["counts_signed"][2] == 3
