"""Kaplan-Meier across a study's cohorts (ADR 0028, survival partition), through a real node process.

A fourth outside review subtracted the elderly's Kaplan-Meier counts from the population's: the
young are a cohort no request may ask for, and each cohort's bins, merged per request until no
count was small, left differences over bins common to both releases of one or two young deaths.
The node here holds mostly elderly patients and forty young ones, so the young's deaths and
censorings per week are ones and twos.  The study's releases now share one partition of the
protocol's grid, fixed at approval, in which every cohort's and every nested difference's cells
are 0 or at least ``nfilter_tab``: the attacker's subtraction over the bins both releases share
gives no count from 1 to ``nfilter_tab - 1``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms.survival import common_ends, rebin
from mipflow.node.controls import study_approval, study_survival
from mipflow.node.controls.study import read_study
from mipflow.node.home import NodeHome
from mipflow.protocol.signing import issue_client
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import ELDERLY, MEN, PROJECT, SURVIVAL, WOMEN, protocol, stroke_rows
from tests.nodes import grant_all, load_frame, running_nodes, standard_home
from tests.privacy.test_study_attacks import NAME, Served, request_of

TAB = 3
PROTOCOL = protocol(algorithms=["descriptive_stats", "kaplan_meier"],
                    variables=["age", "sex", "followup_days", "death_90d"],
                    survival={**SURVIVAL, "event": "death_90d"})
COHORTS = {"population": None, "elderly": ELDERLY, "women": WOMEN, "men": MEN}


def mostly_elderly(seed: int = 43, n: int = 320) -> pd.DataFrame:
    frame = stroke_rows(seed, n, "hospital_a", "km")
    rng = np.random.default_rng(seed)
    frame["age"] = rng.uniform(65.0, 90.0, len(frame)).round(1)
    young = np.arange(40)
    frame.loc[young, "age"] = rng.uniform(30.0, 60.0, 40).round(1)
    frame.loc[young, "sex"] = ["F", "M"] * 20
    frame.loc[young, "death_90d"] = ["yes", "yes", "no", "no"] * 10
    frame.loc[young, "followup_days"] = rng.integers(1, 400, 40)
    return frame.dropna(subset=["age", "sex", "followup_days", "death_90d"]).reset_index(drop=True)


def approved_node(root: Path, frame: pd.DataFrame) -> tuple[Path, pd.DataFrame]:
    """A standard node home holding ``frame`` with the study approved for PROJECT."""
    standard_home(root, NAME)
    load_frame(root, STROKE, frame)
    grant_all(root, researcher="*", project=PROJECT)
    study_approval.approve(NodeHome(root), PROJECT, PROTOCOL)
    return root, frame


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[tuple[Served, Path, pd.DataFrame]]:
    root, frame = approved_node(Path(tmp_path_factory.mktemp("km-study")), mostly_elderly())
    credential = issue_client(root, "central")
    with running_nodes([root]) as urls:
        yield Served(urls[0], credential), root, frame


def survival(node: Served, filters, x=("sex",)) -> list[dict]:
    reply = node.call("kaplan_meier", request_of(y=("followup_days", "death_90d"), x=x, filters=filters,
                                                 event_level="yes", bin_width=SURVIVAL["bin_width"]))
    assert reply.status_code == 200, reply.text
    return reply.json()["aggregates"]["groups"]


def test_no_subtraction_of_two_cohorts_survival_counts_gives_a_small_count(node) -> None:
    served, _, frame = node
    young = frame[frame["age"] < 65]
    weeks = np.ceil(young["followup_days"].to_numpy(dtype=float) / SURVIVAL["bin_width"])
    assert np.any(np.unique(weeks, return_counts=True)[1] < TAB)  # the young's weeks hold ones and twos
    compared = 0
    for x in ((), ("sex",)):
        releases = {name: survival(served, filters, x) for name, filters in COHORTS.items()}
        for big, small in (("population", "elderly"), ("population", "women"), ("population", "men")):
            for g_big, g_small in zip(releases[big], releases[small]):
                ends = common_ends([g_big["ends"], g_small["ends"]])
                for kind in ("events", "censored"):
                    difference = rebin(g_big["ends"], g_big[kind], ends) - rebin(g_small["ends"], g_small[kind], ends)
                    compared += len(difference)
                    assert np.all((difference == 0) | (difference >= TAB)), (big, small, x, kind, difference)
    assert compared > 20


def fine_ends(ends: list[int]) -> list[int]:
    """The partition's ends (points of the protocol's grid) as a release names them, fine-grid indices:
    followup_days is an integer variable declared over 0..3650, its fine grid every day, and the
    protocol's weekly grid is every seventh day up to 3647, then the declared end."""
    return [min(int(SURVIVAL["bin_width"]) * int(e), 3650) for e in ends]


def test_every_cohort_and_group_at_the_node_shares_the_studys_partition(node) -> None:
    """Honest work: the bins do not depend on the request, so curves of subgroups line up."""
    served, root, _ = node
    ends = fine_ends(read_study(root, PROJECT).record["survival_ends"])
    assert len(ends) >= 3  # more than one merged bin on ~300 patients
    for filters in COHORTS.values():
        for x in ((), ("sex",)):
            for group in survival(served, filters, x):
                assert group["ends"] == ends


def test_the_partition_keeps_every_watched_cell_safe_in_every_merged_bin() -> None:
    rng = np.random.default_rng(5)
    for _ in range(30):
        n_points = int(rng.integers(3, 40))
        counts = rng.poisson(rng.uniform(0.2, 4.0), size=(int(rng.integers(1, 12)), n_points))
        ends = study_survival.partition(counts, TAB)
        assert ends[-1] == n_points - 1 and ends == sorted(set(ends))
        starts = [0, *[e + 1 for e in ends[:-1]]]
        merged = np.add.reduceat(counts, starts, axis=1)
        big = counts.sum(axis=1) >= TAB
        assert np.all((merged[big] == 0) | (merged[big] >= TAB))
        # no end is wasted: merging is needed somewhere left of each removed point
        assert len(ends) >= 1


def test_a_refresh_coarsens_the_partition_so_before_and_after_differ_by_no_small_count(tmp_path) -> None:
    """A new export spreads new patients thinly over the bins: the refresh keeps the partition in
    force where it can and merges where a bin's added or removed rows would be 1 or 2, so the same
    analysis before and after the refresh subtracts to nothing small either."""
    root, _ = approved_node(tmp_path / "node", mostly_elderly(47, 300))
    before_ends = read_study(root, PROJECT).record["survival_ends"]
    credential = issue_client(root, "central")
    with running_nodes([root]) as urls:
        served = Served(urls[0], credential)
        before = {name: survival(served, filters) for name, filters in COHORTS.items()}
        extra = stroke_rows(48, 80, "hospital_a", "new").dropna(subset=["age", "sex", "followup_days", "death_90d"])
        extra["age"] = np.random.default_rng(48).uniform(65.0, 90.0, len(extra)).round(1)
        load_frame(root, STROKE, extra)
        done = study_approval.refresh(NodeHome(root), PROJECT)
        assert done["status"] == "refreshed"
        after_ends = read_study(root, PROJECT).record["survival_ends"]
        assert set(after_ends) <= set(before_ends) and after_ends[-1] == before_ends[-1]
        assert len(after_ends) < len(before_ends)  # here the old bins would have shown 1s and 2s: merged
        after = {name: survival(served, filters) for name, filters in COHORTS.items()}
    after_ends = fine_ends(after_ends)
    compared = 0
    for name in COHORTS:
        for g_old, g_new in zip(before[name], after[name]):
            assert g_new["ends"] == after_ends
            for kind in ("events", "censored"):
                change = rebin(g_new["ends"], g_new[kind], after_ends) - rebin(g_old["ends"], g_old[kind], after_ends)
                compared += len(change)
                assert np.all((change == 0) | (change >= TAB)), (name, kind, change)
    assert compared >= 8


def test_a_refresh_adding_one_death_in_a_cell_is_refused_naming_it(tmp_path) -> None:
    root, frame = approved_node(tmp_path / "node", mostly_elderly(49, 300))
    one = frame.iloc[[20]].copy()
    one["subjectcode"] = "late-arrival"
    one["age"], one["sex"], one["death_90d"] = 40.0, "F", "yes"  # one young woman who died
    many = mostly_elderly(50, 40)
    many["subjectcode"] = [f"batch-{k}" for k in range(len(many))]
    many["death_90d"] = "no"
    many.loc[:, "age"] = 80.0
    load_frame(root, STROKE, pd.concat([one, many], ignore_index=True))
    with pytest.raises(Exception) as caught:
        study_approval.refresh(NodeHome(root), PROJECT)
    message = str(caught.value)
    assert "not refreshed" in message and "1 row(s) added" in message
    assert read_study(root, PROJECT).record["survival_ends"]  # the study stays on its snapshot


def test_approval_tells_the_admin_how_many_survival_bins_the_partition_kept(tmp_path) -> None:
    """Honest work: an admin sees at approval whether the study's survival curves will have time
    points; a partition of one or two bins comes with a warning saying what to change."""
    standard_home(tmp_path / "coarse", NAME)
    load_frame(tmp_path / "coarse", STROKE, mostly_elderly())  # forty young patients: wide bins
    grant_all(tmp_path / "coarse", researcher="*", project=PROJECT)
    coarse = study_approval.approve(NodeHome(tmp_path / "coarse"), PROJECT, PROTOCOL)
    assert coarse["survival_bins"] <= 2
    assert "survival partition kept" in coarse["warning"] and "survival event" in coarse["warning"]
    # no subgroups: only the population's cells, so the bins stay fine and no warning
    standard_home(tmp_path / "fine", NAME)
    load_frame(tmp_path / "fine", STROKE, mostly_elderly())
    grant_all(tmp_path / "fine", researcher="*", project=PROJECT)
    fine = study_approval.approve(NodeHome(tmp_path / "fine"), PROJECT, {**PROTOCOL, "subgroups": []})
    assert fine["survival_bins"] >= 3 and "warning" not in fine, fine
