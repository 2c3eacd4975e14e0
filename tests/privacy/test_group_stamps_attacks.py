"""Value stamps of released groups through real node processes (ADR 0061 "Value stamps", the group memory; issue
14, the fifteenth review's hole 1 from the other side), on the streamed path (the shipped columnar snapshot) and the
frame path (``columnar_snapshot 0``) alike.

A cohort released before a correction and the same rows as a group after it are refused, the correction said
first; an honest researcher's ANOVA and descriptive statistics of one of its levels are answered with the same
moments, again and again; a correction of a column neither reads leaves them answered.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from mipflow.protocol.signing import issue_client
from tests.mipflow.algorithms.survival_data import STROKE
from tests.nodes import grant_all, load_frame, running_nodes, standard_home
from tests.privacy.test_explore_attacks import Served
from tests.privacy.test_redteam_round15 import (
    AUDIT, NODE, TIA, correct, registry, request, stats_moments, sums, target_of, typed,
)

pytestmark = pytest.mark.xdist_group("group_stamps")

PATHS = {"streamed": {}, "frame": {"columnar_snapshot": 0}}
SCENARIOS = ("after", "honest", "unread")
ANOVA = request(["nihss_admission"], ["stroke_type"])


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[dict[tuple[str, str], Served]]:
    """One standard-mode node per scenario and read path (their memories apart), ``hospital_a`` with round 13's
    level registry (stroke types 80 each, the target a young TIA patient with NIHSS 41), project ``audit``."""
    base = Path(tmp_path_factory.mktemp("group-stamps"))
    roots, frames, credentials = {}, {}, {}
    for scenario in SCENARIOS:
        for path, settings in PATHS.items():
            name = (scenario, path)
            roots[name] = base / f"{scenario}-{path}"
            home = standard_home(roots[name], NODE)
            for key, value in settings.items():
                home.set_setting(key, value)
            frames[name] = registry("levels")
            load_frame(roots[name], STROKE, frames[name])
            grant_all(roots[name], researcher="*", project=AUDIT)
            credentials[name] = issue_client(roots[name], "central")
    with running_nodes(list(roots.values())) as urls:
        yield {name: Served(url, credentials[name], roots[name], frames[name]) for name, url in zip(roots, urls)}


@pytest.mark.parametrize("path", PATHS)
def test_a_cohort_before_a_correction_and_its_rows_as_a_group_after_it_are_refused(nodes, path):
    """Descriptive statistics of ``stroke_type = tia``; a nightly load corrects the target's NIHSS (41 -> 12); the
    one-way ANOVA of NIHSS by stroke type (its TIA group: the cohort's rows, 0 apart).  Answered, the two releases
    would give her old and new NIHSS; refused ``differencing``, the correction said first, no digit."""
    node = nodes[("after", path)]
    first = node.call("descriptive_stats", request(["nihss_admission"], filters=TIA), project=AUDIT)
    assert first.status_code == 200, first.text
    correct(node, [target_of(node.rows)], nihss_admission=12.0)
    anova = node.call("anova_oneway", ANOVA, project=AUDIT)
    assert typed(anova) == (403, "differencing"), anova.text
    words = anova.json()["refused"]
    assert words.startswith("a load has corrected") and words.endswith("then re-run") and "new rows" in words
    assert not any(ch.isdigit() for ch in words)


@pytest.mark.parametrize("path", PATHS)
def test_an_honest_anova_and_its_level_as_a_cohort_are_answered_alike_again_and_again(nodes, path):
    """No correction: the ANOVA, descriptive statistics of its TIA level (the same rows: the same n, mean and m2 to
    1e-9), and both again (identical) are answered."""
    node = nodes[("honest", path)]
    replies = [node.call(*ask, project=AUDIT) for ask in
               [("anova_oneway", ANOVA), ("descriptive_stats", request(["nihss_admission"], filters=TIA))] * 2]
    assert [r.status_code for r in replies] == [200] * 4, [r.text for r in replies]
    group = sums(replies[0].json()["aggregates"]["groups"][2])  # levels sorted: haemorrhagic, ischaemic, tia
    cohort = sums(stats_moments(replies[1]))
    assert group[0] == cohort[0] == 80 and group[1:] == pytest.approx(cohort[1:], rel=1e-9)
    assert replies[2].json()["aggregates"] == replies[0].json()["aggregates"]
    assert replies[3].json()["aggregates"] == replies[1].json()["aggregates"]


@pytest.mark.parametrize("path", PATHS)
def test_a_correction_of_a_column_neither_reads_leaves_the_group_s_rows_answered(nodes, path):
    """The ANOVA of NIHSS; a nightly load corrects the target's age (read by neither release); descriptive
    statistics of NIHSS of the TIA rows: answered, the group's moments."""
    node = nodes[("unread", path)]
    anova = node.call("anova_oneway", ANOVA, project=AUDIT)
    assert anova.status_code == 200, anova.text
    target = target_of(node.rows)
    correct(node, [target], age=float(node.rows.loc[target, "age"]) + 0.5)
    stats = node.call("descriptive_stats", request(["nihss_admission"], filters=TIA), project=AUDIT)
    assert stats.status_code == 200, stats.text
    group, cohort = sums(anova.json()["aggregates"]["groups"][2]), sums(stats_moments(stats))
    assert group[0] == cohort[0] and group[1:] == pytest.approx(cohort[1:], rel=1e-9)
