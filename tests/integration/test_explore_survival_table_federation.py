"""Kaplan-Meier and contingency tables in explore mode over three real node processes (ADR 0032).

Three node services on loopback (``mipflow node serve``), about 170 stroke patients each, the
default disclosure settings (``min_row_count`` 10, ``nfilter_tab`` 3) and the project in explore
mode.  Standard mode would merge each node's weekly bins until no count is under ``nfilter_tab``;
explore mode releases every weekly count with noise instead.  A weekly curve overall and by sex:
every week with a death in the pooled data is on the curve, the curve is within 5 of its stated
first-order noise sds of the exact pooled Kaplan-Meier (lifelines on the concatenated rows, times
rounded up to the weekly grid), the same request again is the same result, and everything is
labelled explore with the noise's sd.  A contingency table (which standard mode refuses whole when
a cell is under ``nfilter_tab``) is answered with every pooled cell near the exact one.
"""
from __future__ import annotations

import functools
import json
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter

from mipflow.central.rounds import run_analysis as _run_analysis
from mipflow.node.controls import modes
from mipflow.node.controls.privacy_budget import PrivacyLedger
from mipflow.node.home import NodeHome
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import PROJECT, stroke_rows
from tests.nodes import grant_all, load_frame, pin_each_other, served_clients

pytestmark = pytest.mark.xdist_group("federation")

HOSPITALS = ("hospital_a", "hospital_b", "hospital_c")
RESEARCHER = "honest"
WEEK, END = 7.0, 364.0  # a weekly grid over the first year (max_time within the declared 0..3650)
run_analysis = functools.partial(_run_analysis, researcher=RESEARCHER, project=PROJECT, min_nodes=3)


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Iterator[tuple[list, dict[str, pd.DataFrame], dict]]:
    base = tmp_path_factory.mktemp("explore-survival")
    frames, roots = {}, {}
    for i, hospital in enumerate(HOSPITALS):
        roots[hospital] = base / hospital
        NodeHome.init(roots[hospital], hospital)  # default settings
        frames[hospital] = stroke_rows(400 + i, 160 + 10 * i, hospital, f"{hospital}-p")
        load_frame(roots[hospital], STROKE, frames[hospital])
        grant_all(roots[hospital], researcher=RESEARCHER, project=PROJECT)
        modes.enable(roots[hospital], PROJECT)
    pin_each_other(roots)
    with served_clients(roots) as clients:
        yield list(clients.values()), frames, roots


def km_request(x=()) -> dict:
    return {"inputdata": {"data_model": STROKE.key, "datasets": list(HOSPITALS), "x": list(x),
                          "y": ["followup_days", "death_90d"], "filters": None},
            "parameters": {"event_level": "yes", "bin_width": WEEK, "max_time": END}}


def weekly(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Times rounded up to the weekly grid, rows followed beyond its end censored there."""
    times = rows["followup_days"].to_numpy(float)
    died = (rows["death_90d"] == "yes").to_numpy() & (times <= END)
    return np.minimum(np.ceil(times / WEEK) * WEEK, END), died


def test_kaplan_meier_in_explore_mode_keeps_every_week_and_is_near_the_pooled_curve(federation):
    clients, frames, roots = federation
    pooled = pd.concat(frames.values(), ignore_index=True)
    assert 160 <= min(len(f) for f in frames.values()) and max(len(f) for f in frames.values()) <= 180
    first = {}
    for x in ((), ("sex",)):
        outcome = run_analysis("kaplan_meier", km_request(x), clients)
        assert not outcome.excluded and set(outcome.contributed) == set(HOSPITALS)
        assert {m["mode"] for m in outcome.mode.values()} == {"explore"} and set(outcome.mode) == set(HOSPITALS)
        result, privacy = outcome.result, outcome.result["privacy"]
        # labelled: approximate, explore, the noise's sd per node and pooled
        assert privacy["approximate"] is True and set(privacy["noisy_nodes"]) == set(HOSPITALS)
        node_sds = []
        for label in privacy["noisy_nodes"].values():
            assert label["mode"] == "explore" and label["keyed"] is True
            assert label["noise_sd"]["survival_counts"]["unit"] == "count"
            assert "no bin merged" in label["note"]
            node_sds.append(label["noise_sd"]["survival_counts"]["sd"])
        assert result["noise"]["approximate"] is True and result["noise"]["noisy_nodes"] == 3
        assert result["noise"]["node_cell_sd"] == pytest.approx(node_sds)
        assert result["noise"]["cell_sd"] == pytest.approx(privacy["pooled_noise_sd"]["survival_counts"]["sd"])
        assert result["binning"]["merged_for_disclosure"] is False and result["binning"]["grid_points"] == 53

        groups = [(None, pooled)] if not x else [(level, pooled[pooled["sex"] == level]) for level in ("M", "F")]
        assert [c["group"] for c in result["curves"]] == [g for g, _ in groups]
        for curve, (level, rows) in zip(result["curves"], groups):
            times, died = weekly(rows)
            timeline = np.asarray(curve["timeline"])
            # every week with a death in the pooled data is on the curve (no bin merged)
            assert set(times[died]) <= set(timeline), level
            # within 5 first-order noise sds of the exact pooled Kaplan-Meier of the weekly times
            exact = KaplanMeierFitter().fit(times, died).survival_function_at_times(timeline).to_numpy()
            survival, noise_sd = np.asarray(curve["survival"]), np.asarray(curve["noise_sd"])
            assert np.all(noise_sd > 0) and np.all(np.diff(survival) <= 0)
            worst = np.max(np.abs(survival - exact) / noise_sd)
            assert worst <= 5, (level, worst)
            assert abs(curve["n_obs"] - len(rows)) < 5 * np.sqrt(2 * 53) * result["noise"]["cell_sd"]
        if x:
            assert result["logrank"]["approximate"] is True and result["logrank"]["df"] == 1
            assert 0.0 <= result["logrank"]["p_value"] <= 1.0
        first[x] = result

    # the same request again (a new analysis id): the same result, charged once
    for x in ((), ("sex",)):
        again = run_analysis("kaplan_meier", km_request(x), clients)
        for label in again.result["privacy"]["noisy_nodes"].values():
            assert label["mode"] == "explore"
        same = {k: v for k, v in again.result.items() if k != "privacy"}
        assert json.dumps(same, sort_keys=True) == json.dumps(
            {k: v for k, v in first[x].items() if k != "privacy"}, sort_keys=True)
    for root in roots.values():  # two distinct releases per node, each charged once (epsilon 1)
        spent = PrivacyLedger(root).project_spent(PROJECT, 1e-6)
        assert spent.releases == 2 and spent.epsilon == pytest.approx(2.0)


def test_a_contingency_table_in_explore_mode_is_every_cell_with_noise(federation):
    clients, frames, _ = federation
    pooled = pd.concat(frames.values(), ignore_index=True)
    doc = {"inputdata": {"data_model": STROKE.key, "datasets": list(HOSPITALS), "x": ["stroke_type"],
                         "y": ["death_90d"], "filters": None}, "parameters": {}}
    outcome = run_analysis("contingency_table", doc, clients)
    assert not outcome.excluded and {m["mode"] for m in outcome.mode.values()} == {"explore"}
    result, privacy = outcome.result, outcome.result["privacy"]
    assert privacy["approximate"] is True and set(privacy["noisy_nodes"]) == set(HOSPITALS)
    assert result["noise"]["cell_sd"] == pytest.approx(privacy["pooled_noise_sd"]["table"]["sd"])
    assert result["row_levels"] == ["ischaemic", "haemorrhagic", "tia"] and result["col_levels"] == ["yes", "no"]
    exact = pd.crosstab(pooled["stroke_type"], pooled["death_90d"]).loc[result["row_levels"], result["col_levels"]]
    assert np.all(np.abs(np.asarray(result["observed"]) - exact.to_numpy()) <= 5 * result["noise"]["cell_sd"])
    again = run_analysis("contingency_table", doc, clients)
    assert again.result["observed"] == result["observed"] and again.result["chi2"] == result["chi2"]
