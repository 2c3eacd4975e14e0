"""Noisy histogram bins and contingency cells: pooled signed, each with an interval that covers the
exact count at its stated (exact) coverage (ADR 0057).

The nodes' own releases (keyed noise of explore mode, rounded; OpenDP's discrete noise of a DP node)
go through the global step; the exact pooled count of every cell is compared with its interval.
Cells of one trial carry independent draws (one per element), so every (trial, cell) is one
Bernoulli trial; the tolerance is binomial in their number (:mod:`calibration`), never tuned.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import AnalysisRequest, get_algorithm
from mipflow.algorithms.noise_error import INTERVAL_LEVEL, count_error
from mipflow.node.controls.dp_noise import QueryNoise
from mipflow.node.controls.explore import KeyedNoise, suppress_noisy_cells
from mipflow.node.controls.explore_keys import noise_key
from mipflow.protocol.datamodel import load_data_model
from tests.mipflow.algorithms.calibration import tolerance

BINS = 20


@pytest.fixture(scope="module")
def stroke(stroke_model_path):
    return load_data_model(stroke_model_path)


def frames(seed: int, rows: int, nodes: int = 3) -> list[pd.DataFrame]:
    rng = np.random.default_rng(seed)
    return [pd.DataFrame({"dataset": "hospital_a", "age": np.round(rng.normal(62, 9, rows).clip(18, 90), 1),
                          "sex": rng.choice(["M", "F"], rows), "thrombolysis": rng.choice(["yes", "no"], rows, p=[.2, .8])})
            for _ in range(nodes)]


def request(stroke, y, x=(), **parameters) -> AnalysisRequest:
    return AnalysisRequest.from_dict({"inputdata": {"data_model": stroke.key, "datasets": ["hospital_a"], "x": list(x),
                                                    "y": list(y), "filters": None}, "parameters": parameters})


def keyed(blocks: int, node: int, trial: int) -> KeyedNoise:
    return KeyedNoise("laplace", 1.0, 0.0, blocks, key=noise_key(f"node {node} trial {trial}".encode()),
                      query=b"calibration", version=b"v1")


def release(algo, frame, req, stroke, noise, tab: int | None = None) -> dict:
    aggregates = algo.dp_release.release(algo, frame, req, stroke, noise)[0]
    if tab is not None:  # what the node's explore release does after the noise
        aggregates = suppress_noisy_cells(aggregates, tab)
    return json.loads(json.dumps(aggregates))


def test_the_exact_integer_interval_of_a_rounded_and_a_discrete_noise():
    # one rounded Laplace of scale 1: P(|rint L| <= 3) = P(|L| < 3.5) = 1 - e^-3.5 (the continuous
    # half-width, 3.0, would claim 95 % and cover 97 %)
    one = count_error([["laplace", math.sqrt(2), "rounded"]])
    assert one["halfwidth"] == 3 and one["coverage"] == pytest.approx(1 - math.exp(-3.5), rel=1e-9)
    # discrete Laplace of scale b: P(|D| <= k) = 1 - 2 e^{-(k+1)/b} / (1 + e^{-1/b})
    b, got = 2.0, count_error([["laplace", 2.0 * math.sqrt(2), "discrete"]])
    k = got["halfwidth"]
    assert got["coverage"] == pytest.approx(1 - 2 * math.exp(-(k + 1) / b) / (1 + math.exp(-1 / b)), rel=1e-9)
    assert 1 - 2 * math.exp(-k / b) / (1 + math.exp(-1 / b)) < INTERVAL_LEVEL <= got["coverage"]  # the smallest
    # a sum of three nodes' rounded noises against simulation
    rng, trials = np.random.default_rng(5), 400_000
    total = sum(np.rint(rng.laplace(0, 1.5, trials)) for _ in range(3))
    three = count_error([["laplace", 1.5 * math.sqrt(2), "rounded"]] * 3)
    rate = float(np.mean(np.abs(total) <= three["halfwidth"]))
    assert abs(rate - three["coverage"]) < tolerance(trials, three["coverage"])
    assert three["sd"] == pytest.approx(total.std(), rel=0.01)


@pytest.mark.parametrize("noise_kind", ["keyed", "opendp"])
def test_pooled_histogram_bins_are_unbiased_and_their_intervals_cover_at_the_stated_coverage(stroke, noise_kind):
    """Three small nodes (many empty bins): the pooled signed bins have no upward bias (the old clamp
    per node put about 0.4 sd on every empty bin and node), and each bin's interval covers its exact
    pooled count at the stated exact coverage."""
    algo, req = get_algorithm("multiple_histograms"), request(stroke, ["age"], bins=BINS)
    parts = frames(1, 60)
    exact = np.histogram(pd.concat(parts)["age"], bins=BINS, range=(18, 90))[0]
    trials = 500 if noise_kind == "keyed" else 200
    hits = cells = 0
    errors, coverage = [], set()
    for trial in range(trials):
        noises = [keyed(1, i, trial) if noise_kind == "keyed" else QueryNoise("laplace", 1.0, 0.0, 1) for i in range(3)]
        aggregates = [release(algo, f, req, stroke, n) for f, n in zip(parts, noises)]
        hist = algo.global_step(0, aggregates, req, stroke, None).result["histogram"][0]
        assert hist["approximate"] is True and hist["interval_level"] == INTERVAL_LEVEL
        for k, (lo, hi) in enumerate(hist["counts_interval"]):
            hits += lo <= exact[k] <= hi
            cells += 1
            errors.append(hist["counts_signed"][k] - exact[k])
            shown = hist["counts"][k]
            assert shown is None or shown > 0  # the display clamp, after pooling
        coverage.update(hist["counts_interval_coverage"])
    assert len(coverage) == 1
    stated = coverage.pop()
    assert stated >= INTERVAL_LEVEL
    assert abs(hits / cells - stated) < tolerance(cells, stated), (hits / cells, stated)
    sd = hist["counts_noise_sd"][0]
    assert abs(np.mean(errors)) < 4 * sd / math.sqrt(cells)  # no bias (the clamp per node had +0.4 sd * 3)


def test_bins_a_node_hid_under_nfilter_tab_widen_the_interval_and_it_still_covers(stroke):
    """The node hides noisy cells in (0, nfilter_tab) and says so (``suppressed_range``): the central
    side counts such a cell as the range's middle and widens the bin's interval by half the range,
    so it covers at least the stated coverage (a one-sided check: it is conservative there)."""
    algo, req = get_algorithm("multiple_histograms"), request(stroke, ["age"], bins=BINS)
    parts = frames(2, 60)
    exact = np.histogram(pd.concat(parts)["age"], bins=BINS, range=(18, 90))[0]
    trials, hits, cells, hidden = 400, 0, 0, 0
    for trial in range(trials):
        aggregates = [release(algo, f, req, stroke, keyed(1, i, trial), tab=3) for i, f in enumerate(parts)]
        hidden += sum(c is None for a in aggregates for c in a["histograms"][0]["counts"])
        hist = algo.global_step(0, aggregates, req, stroke, None).result["histogram"][0]
        for k, (lo, hi) in enumerate(hist["counts_interval"]):
            hits += lo <= exact[k] <= hi
            cells += 1
    assert hidden > trials  # the case is exercised
    assert hits / cells > hist["counts_interval_coverage"][0] - tolerance(cells, INTERVAL_LEVEL)


def test_contingency_cells_are_pooled_signed_with_intervals_at_the_stated_coverage(stroke):
    algo, req = get_algorithm("contingency_table"), request(stroke, ["thrombolysis"], ["sex"])
    parts = frames(3, 150)
    pooled = pd.concat(parts)
    exact = pd.crosstab(pooled["sex"], pooled["thrombolysis"]).loc[["M", "F"], ["yes", "no"]].to_numpy()
    trials, hits, cells = 800, 0, 0
    for trial in range(trials):
        aggregates = [release(algo, f, req, stroke, keyed(1, i, trial)) for i, f in enumerate(parts)]
        result = algo.global_step(0, aggregates, req, stroke, None).result
        noise = result["noise"]
        signed = np.array(noise["cells_signed"])
        assert (np.array(result["observed"]) >= 0).all() and "clamped" in noise
        for (i, j), value in np.ndenumerate(exact):
            lo, hi = noise["cells_interval"][i][j]
            hits += lo <= value <= hi
            cells += 1
        assert signed.shape == exact.shape
    stated = noise["cells_interval_coverage"]
    assert abs(hits / cells - stated) < tolerance(cells, stated), (hits / cells, stated)
