"""An honest researcher's session in explore mode, over three real node processes (ADR 0032).

Three node services on loopback (``mipflow node serve``) hold stroke rows of one hospital each,
with the **default** disclosure settings (``min_row_count`` 10, ``nfilter_tab`` 3, differencing
on) and the project in explore mode at each.  The researcher does what issue 14 found refused in
standard mode: no filter, then ``age >= 60``, regressions of different variable sets (other
complete cases), a histogram, the same analysis again, and again after a node loaded a new
export.  Nothing is refused; every result is labelled explore with the noise's sd, the re-run on
unchanged rows is the same result, and the noisy statistics are near the pooled ones.
"""
from __future__ import annotations

import functools
import json
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.central.report.pages import mode_text
from mipflow.central.rounds import run_analysis as _run_analysis
from mipflow.node.controls import modes
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import ELDERLY, PROJECT, stroke_rows
from tests.nodes import grant_all, load_frame, pin_each_other, served_clients
from tests.nodes import standard_home

pytestmark = pytest.mark.xdist_group("federation")

HOSPITALS = ("hospital_a", "hospital_b", "hospital_c")
RESEARCHER = "honest"
run_analysis = functools.partial(_run_analysis, researcher=RESEARCHER, project=PROJECT, min_nodes=3)


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Iterator[tuple[list, dict[str, pd.DataFrame], dict]]:
    base = tmp_path_factory.mktemp("explore-federation")
    frames, roots = {}, {}
    for i, hospital in enumerate(HOSPITALS):
        roots[hospital] = base / hospital
        standard_home(roots[hospital], hospital)  # default settings: differencing on
        frames[hospital] = stroke_rows(200 + i, 300 + 60 * i, hospital, f"{hospital}-p")
        load_frame(roots[hospital], STROKE, frames[hospital])
        grant_all(roots[hospital], researcher=RESEARCHER, project=PROJECT)
        modes.enable(roots[hospital], PROJECT)
    pin_each_other(roots)
    with served_clients(roots) as clients:
        yield list(clients.values()), frames, roots


def request(y, x=(), filters=None, **parameters) -> dict:
    return {"inputdata": {"data_model": STROKE.key, "datasets": list(HOSPITALS), "x": list(x), "y": list(y),
                          "filters": filters}, "parameters": parameters}


def answered_in_explore_mode(outcome) -> dict:
    assert not outcome.excluded, outcome.excluded
    assert set(outcome.contributed) == set(HOSPITALS)
    assert {m["mode"] for m in outcome.mode.values()} == {"explore"} and set(outcome.mode) == set(HOSPITALS)
    assert mode_text(outcome.mode, outcome.contributed) == (
        "answered in explore mode: perturbed answers (keyed noise, epsilon 1 per step)")
    privacy = outcome.result["privacy"]
    assert privacy["approximate"] is True and set(privacy["noisy_nodes"]) == set(HOSPITALS)
    for label in privacy["noisy_nodes"].values():
        assert label["mode"] == "explore" and label["keyed"] is True and label["noise_sd"]
    assert privacy["pooled_noise_sd"]
    return privacy


def slope_sd(rows: pd.DataFrame, sd_sums: float) -> float:
    """First-order standard deviation of the slope of ``nihss_admission ~ age`` when each released
    sufficient statistic (ADR 0021: n and the sums of products of ``(1, v_age, v_nihss)``, the
    variables scaled into [-1, 1] by their declared ranges) carries independent noise of sd
    ``sd_sums``: the gradient of the slope in those sums, by central differences."""
    def scaled(code: str) -> tuple[np.ndarray, float]:
        var = STROKE.variable(code)
        lo, hi = float(var.min_value), float(var.max_value)
        return (np.clip(rows[code].to_numpy(float), lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2), (hi - lo) / 2

    a, half_a = scaled("age")
    y, half_y = scaled("nihss_admission")
    sums = np.array([len(a), a.sum(), y.sum(), (a * a).sum(), (a * y).sum(), (y * y).sum()])

    def slope(s: np.ndarray) -> float:
        n, sa, sy, saa, say, _ = s
        return (say - sa * sy / n) / (saa - sa * sa / n) * half_y / half_a

    step = 1e-3 * sd_sums
    grad = [(slope(sums + step * e) - slope(sums - step * e)) / (2 * step) for e in np.eye(len(sums))]
    return float(sd_sums * np.linalg.norm(grad))


def test_an_honest_explore_session_is_answered_labelled_and_repeatable(federation):
    clients, frames, roots = federation
    pooled = pd.concat(frames.values(), ignore_index=True)

    # the descriptive statistics of everyone, then the elderly: both answered
    everyone = run_analysis("descriptive_stats", request(y=("age", "nihss_admission", "sex")), clients)
    answered_in_explore_mode(everyone)
    elderly = run_analysis("descriptive_stats", request(y=("age", "nihss_admission"), filters=ELDERLY), clients)
    answered_in_explore_mode(elderly)

    # regressions of different variable sets (other complete cases) and a subgroup: all answered
    fits = {}
    for name, (x, filters) in {"age": (("age",), None), "age+sex": (("age", "sex"), None),
                               "age, elderly": (("age",), ELDERLY)}.items():
        fits[name] = run_analysis("linear_regression", request(y=("nihss_admission",), x=x, filters=filters), clients)
        privacy = answered_in_explore_mode(fits[name])
        assert privacy["pooled_noise_sd"]["sufficient_statistics"]["nodes"] == 3
    # the noisy slope is near the pooled one: within 6 first-order standard deviations of the noise
    # the label states (propagated from the scaled sufficient statistics to the slope)
    complete = pooled.dropna(subset=["nihss_admission"])
    slope = np.polyfit(complete["age"], complete["nihss_admission"], 1)[0]
    sd_sums = fits["age"].result["privacy"]["pooled_noise_sd"]["sufficient_statistics"]["sd"]
    assert abs(fits["age"].result["coefficients"][1] - slope) < 6 * slope_sd(complete, sd_sums)

    # a histogram: the pooled bins carry the sd of their noise
    histogram = run_analysis("multiple_histograms", request(y=("age",), x=("sex",), bins=10), clients)
    privacy = answered_in_explore_mode(histogram)
    sd = privacy["pooled_noise_sd"]["overall"]
    per_node = [label["noise_sd"]["overall"]["sd"] for label in privacy["noisy_nodes"].values()]
    assert sd["unit"] == "count" and sd["sd"] == pytest.approx(np.sqrt(np.sum(np.square(per_node))))
    exact = np.histogram(pooled["age"], bins=10, range=(18, 90))[0]
    counts = histogram.result["histogram"][0]["counts"]
    released = [i for i, c in enumerate(counts) if c is not None]
    assert len(released) >= 7  # a pooled bin is withheld only where a node's noisy cell was under nfilter_tab
    assert all(abs(counts[i] - exact[i]) < 6 * sd["sd"] + 3 for i in released)

    # the same analysis again (a new analysis id): the same result, nothing new learned
    again = run_analysis("linear_regression", request(y=("nihss_admission",), x=("age",)), clients)
    answered_in_explore_mode(again)
    assert json.dumps(again.result["coefficients"]) == json.dumps(fits["age"].result["coefficients"])

    # a node loads a new export: answered again (new noise at that node), not refused
    load_frame(roots["hospital_b"], STROKE, stroke_rows(999, 25, "hospital_b", "late-export"))
    after = run_analysis("linear_regression", request(y=("nihss_admission",), x=("age",)), clients)
    answered_in_explore_mode(after)
    assert after.contributed["hospital_b"] != fits["age"].contributed["hospital_b"] or \
        after.result["coefficients"] != fits["age"].result["coefficients"]
