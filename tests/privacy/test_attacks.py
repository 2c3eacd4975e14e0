"""Each released statistic, attacked for one patient's value through a node's API.

One node with default settings (min_row_count 10, nfilter_tab 3, nfilter_glm 0.33,
differencing on, release_extremes off, DP off) holds 240 complete stroke rows and
the target patient (``conftest.TARGET``): the only one aged 18.5, the only one with
NIHSS 42, the longest follow-up, the only one with thrombolysis.  Every attack
must end in a refusal naming the control, or in suppressed cells; none may let the
target's value be read or computed.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator

import numpy as np
import pytest

from mipflow.node.controls.disclosure import RAW_EXTREME_KEYS
from tests.mipflow.algorithms.survival_data import STROKE
from tests.privacy.conftest import (
    TARGET, TARGET_AGE, TARGET_FOLLOWUP, TARGET_NIHSS, Node, rule, start_node, where,
)

DESCRIBE = {"algorithm": "descriptive_stats", "y": ["age", "nihss_admission"]}


def _keys(doc: Any) -> Iterable[str]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield str(key).lower()
            yield from _keys(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from _keys(value)


def _numbers(doc: Any) -> Iterable[float]:
    if isinstance(doc, dict):
        for value in doc.values():
            yield from _numbers(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from _numbers(value)
    elif isinstance(doc, (int, float)) and not isinstance(doc, bool):
        yield float(doc)


def _describe(node: Node, filters=None, **kwargs):
    return dict(algorithm=DESCRIBE["algorithm"], y=DESCRIBE["y"], filters=filters, **kwargs)


# --------------------------------------------------------------------------- selection attacks


@pytest.mark.parametrize("algorithm,y,x,parameters", [
    ("descriptive_stats", ["nihss_admission"], [], {}),
    ("linear_regression", ["nihss_admission"], ["glucose_mmol"], {}),
    ("multiple_histograms", ["nihss_admission"], [], {"bins": 10}),
])
def test_a_filter_selecting_one_patient_is_refused(node, algorithm, y, x, parameters):
    node.refused("min_row_count", algorithm, y=y, x=x, parameters=parameters,
                 filters=where(rule("age", "equal", TARGET_AGE)))


def test_a_filter_selecting_fewer_than_nfilter_subset_is_refused_when_min_row_count_is_lowered(tmp_path):
    # an admin who lowers min_row_count below nfilter_subset still has nfilter_subset
    for small in start_node(tmp_path / "n", min_row_count=1):
        small.refused("nfilter_subset", **_describe(small, where(rule("age", "equal", TARGET_AGE))))


def test_all_versus_all_but_one_is_refused_as_differencing(node):
    everyone = node.allowed(**_describe(node))
    assert everyone["rows"] == len(node.rows)
    node.refused("differencing", **_describe(node, where(rule("age", "not_equal", TARGET_AGE))))
    node.refused("differencing", **_describe(node, where(rule("age", "greater", TARGET_AGE))))


def test_overlapping_cohorts_that_meet_in_one_patient_are_refused(node):
    # A = age < 25 or age >= 60 and B = age < 60 share only the target: sums over A and B
    # and over everyone would give the target's values by inclusion-exclusion
    a = where(rule("age", "less", 25), rule("age", "greater_or_equal", 60), condition="OR")
    assert node.allowed(**_describe(node, a))["rows"] >= 10
    node.refused("differencing", **_describe(node, where(rule("age", "less", 60))))


def test_the_same_query_twice_gives_the_same_answer_and_nothing_new(node):
    first = node.allowed(**_describe(node))
    second = node.allowed(**_describe(node))
    assert first["aggregates"] == second["aggregates"] and first["rows"] == second["rows"]


def test_the_query_budget_refuses_further_distinct_analyses(tmp_path):
    for small in start_node(tmp_path / "n", query_budget=2):
        small.allowed(**_describe(small), analysis_id="q1")
        small.allowed("descriptive_stats", y=["age"], analysis_id="q2")
        small.allowed(**_describe(small), analysis_id="q1")  # a repeat of an analysis costs nothing
        small.refused("query_budget", "descriptive_stats", y=["glucose_mmol"], analysis_id="q3")


# --------------------------------------------------------------------------- released statistics


def test_descriptive_stats_never_release_extremes_or_quantiles(node):
    reply = node.allowed(**_describe(node))
    assert not RAW_EXTREME_KEYS & set(_keys(reply["aggregates"]))
    numbers = set(_numbers(reply["aggregates"]))
    assert TARGET_AGE not in numbers and TARGET_NIHSS not in numbers


def test_kmeans_initialisation_from_extremes_is_refused(node):
    node.refused("raw_extremes", "kmeans", y=["age", "glucose_mmol"], parameters={"k": 2, "init": "exareme2"})


def test_a_one_patient_histogram_bin_is_suppressed(node):
    # 72 bins of one year over the declared age range 18..90: the first holds only the target
    reply = node.allowed("multiple_histograms", y=["age"], parameters={"bins": 72})
    counts = reply["aggregates"]["histograms"][0]["counts"]
    assert counts[0] is None
    released = [c for c in counts if c is not None]
    assert all(c == 0 or c >= node.home.settings.nfilter_tab for c in released)
    # complementary suppression: the total minus the released bins does not give the target's bin
    assert counts.count(None) >= 2


def test_a_one_patient_histogram_bin_within_a_group_is_suppressed(node):
    reply = node.allowed("multiple_histograms", y=["age"], x=["sex"], parameters={"bins": 72})
    for histogram in reply["aggregates"]["histograms"]:
        counts = histogram["counts"]
        assert all(c is None or c == 0 or c >= node.home.settings.nfilter_tab for c in counts)
        if histogram["grouping_enum"] in (None, "F"):
            assert counts[0] is None


def test_a_kmeans_cluster_around_one_patient_is_refused(node):
    # a malicious central site puts a centre on the target: that cluster would hold one patient
    # (age alone: k-means takes real variables, ADR 0050; the target is the only one under 29)
    state = {"k": 2, "centers": [[TARGET_AGE], [40.0]]}
    # through the API: a state the node cannot recompute is refused first (ADR 0029) ...
    node.refused("round_verification", "kmeans", y=["age"], parameters={"k": 2},
                 round=1, state=state, analysis_id="km")
    # ... and behind that control, the cluster's size still is (defence in depth)
    node.refused("min_row_count", "kmeans", y=["age"], parameters={"k": 2},
                 round=1, state=state, analysis_id="km", unverified=True)


def test_a_regression_with_about_as_many_parameters_as_rows_is_refused(node):
    ages = node.rows["age"].sort_values(ascending=False)
    cut = float(ages.iloc[14])  # the 15 or so oldest patients
    n = int((node.rows["age"] >= cut).sum())
    assert node.home.settings.min_row_count <= n < 30
    x = ["sex", "stroke_type", "age", "onset_to_door_min", "systolic_bp", "glucose_mmol",
         "atrial_fibrillation", "diabetes", "hypertension", "mrs_90d"]  # 12 parameters
    node.refused("nfilter_glm", "linear_regression", y=["nihss_admission"], x=x,
                 filters=where(rule("age", "greater_or_equal", cut)))


def test_a_contingency_cell_of_one_is_refused(node):
    node.refused("nfilter_tab", "contingency_table", x=["sex"], y=["thrombolysis"])


def test_logistic_regression_with_one_patient_in_a_class_is_refused(node):
    node.refused("nfilter_tab", "logistic_regression", x=["age"], y=["thrombolysis"],
                 parameters={"positive_class": "yes"})


def test_a_survival_curve_never_shows_one_patient_at_risk(node):
    reply = node.allowed("kaplan_meier", y=["followup_days", "death_90d"], parameters={"event_level": "yes"})
    tab = node.home.settings.nfilter_tab
    for group in reply["aggregates"]["groups"]:
        events, censored = group["events"], group["censored"]
        assert all(c == 0 or c >= tab for c in events + censored)
        at_risk, seen = [], 0
        total = sum(events) + sum(censored)
        for e, c in zip(events, censored):
            if e or c:
                at_risk.append(total - seen)
            seen += e + c
        assert min(at_risk) >= tab  # the last patients leave the curve together
    # the target's follow-up alone is not a bin end of its own
    assert TARGET_FOLLOWUP > node.rows["followup_days"].drop(index=0).max()


def test_a_survival_group_of_one_patient_is_refused(node):
    # stratify by thrombolysis: the 'yes' curve would be the target's own
    node.refused("nfilter_tab", "kaplan_meier", y=["followup_days", "death_90d"], x=["thrombolysis"],
                 parameters={"event_level": "yes"})


# --------------------------------------------------------------------------- k-means rounds crafted around the target

KMEANS_Y = ["age", "glucose_mmol"]
#: centres on one line: the clusters are slabs of the rows' projections on it
AXIS = np.array([0.0213, 1.0]) / np.linalg.norm([0.0213, 1.0])


def _projections(node: Node) -> tuple[np.ndarray, int]:
    """The rows' sorted projections on AXIS and the target's rank among them."""
    projected = node.rows[KMEANS_Y].to_numpy(dtype=float) @ AXIS
    order = np.sort(projected)
    target = projected[np.flatnonzero(node.rows["subjectcode"] == TARGET)[0]]
    rank = int(np.searchsorted(order, target))
    assert order[rank] == target and np.count_nonzero(projected == target) == 1
    assert 40 < rank < len(order) - 60  # the target is inside the data along the axis
    return order, rank


def _slab_state(order: np.ndarray, ends: list[int]) -> tuple[dict, np.ndarray]:
    """Centres whose nearest-centre clusters are the slabs ``[0, ends[0]), [ends[0], ends[1]) ...`` of the
    sorted projections, and the rows' cluster labels (by sorted rank)."""
    assert all(order[e] - order[e - 1] > 1e-3 for e in ends)  # clear of rounding in the node's distances
    cuts = [(order[e - 1] + order[e]) / 2 for e in ends]
    middle = [(a + b) / 2 for a, b in zip(cuts, cuts[1:])]  # centres between the cuts ...
    positions = [2 * cuts[0] - (middle[0] if middle else cuts[0] + 1.0)] + middle
    positions.append(2 * cuts[-1] - positions[-1])  # ... and mirrored beyond the outer cuts
    centres = [(p * AXIS).tolist() for p in positions]
    labels = np.searchsorted(np.asarray(ends), np.arange(len(order)), side="right")
    return {"k": len(centres), "centers": centres}, labels


def _per_pair_rule(new: np.ndarray, old: np.ndarray, threshold: int) -> bool:
    """ADR 0013's first k-means rule: some old and new cluster differ by 1 .. threshold - 1 rows."""
    return any(0 < np.count_nonzero((old == i) & (new != j)) < threshold
               or 0 < np.count_nonzero((new == j) & (old != i)) < threshold
               for i in np.unique(old) for j in np.unique(new))


def _kmeans_round(node: Node, state: dict, **kwargs):
    # behind round verification (ADR 0029), which refuses any state of the centre's making first:
    # the partition memory is the defence in depth these tests reach
    return dict(algorithm="kmeans", y=KMEANS_Y, parameters={"k": state["k"]}, round=1, state=state,
                analysis_id="crafted", unverified=True, **kwargs)


@pytest.mark.parametrize("released, crafted, per_pair", [
    # k = 2: the boundary just above the target, then just below it: only the target changes
    # cluster (a bridge of one row); the per-pair rule refused this too
    pytest.param(lambda r: [r + 1], lambda r: [r], True, id="one-row-bridge"),
    # k = 3: the target moves from cluster 0 to 1 and one other row from 1 to 2 (a path of two
    # one-row edges): both rows are isolated; the per-pair rule refused this too
    pytest.param(lambda r: [r + 1, r + 41], lambda r: [r, r + 40], True, id="chain-of-two-moves"),
    # k = 3: released 0..r | r+1..r+30 | rest, crafted 0..r-21 | r-20..r-1 | r.. .  Every old and
    # new cluster differ by 0 or at least 20 rows (the per-pair rule answered), but
    # S(old_0) - S(new_0) - S(new_1) is the target's row: the one-row edge is still a bridge
    pytest.param(lambda r: [r + 1, r + 31], lambda r: [r - 20, r], False, id="one-row-hidden-in-three-sums"),
])
def test_kmeans_centres_crafted_to_move_the_target_alone_are_refused(tmp_path, released, crafted, per_pair):
    for fresh in start_node(tmp_path / "n"):  # its own partition memory
        order, rank = _projections(fresh)
        first, old = _slab_state(order, released(rank))
        second, new = _slab_state(order, crafted(rank))
        tab = fresh.home.settings.nfilter_tab
        assert min(np.bincount(old).min(), np.bincount(new).min()) >= tab  # no small cluster: not nfilter_tab
        assert _per_pair_rule(new, old, tab) is per_pair
        answered = fresh.allowed(**_kmeans_round(fresh, first))
        assert answered["aggregates"]["group_n"] == np.bincount(old).tolist()  # the slabs are the clusters
        fresh.refused("differencing", **_kmeans_round(fresh, second))
        # the centres' order is the central site's choice: reversed, still refused
        fresh.refused("differencing", **_kmeans_round(fresh, {**second, "centers": second["centers"][::-1]}))


# --------------------------------------------------------------------------- release-shaping parameters (issue 14.4)

SURVIVAL = dict(y=["followup_days", "death_90d"])


def test_a_max_time_sweep_does_not_reveal_the_longest_follow_up(node):
    # Before: a max_time below the target's follow-up (the longest) was refused ("holds times after
    # the end of follow-up"), one above it answered; the switch gave the follow-up away.  Now the
    # decision reads the request and the data model only: every max_time within the declared range
    # of followup_days is answered (rows followed longer are censored there), every other one is
    # refused with the same message.
    declared = STROKE.variable("followup_days").max_value
    assert TARGET_FOLLOWUP == declared  # the target is followed to the declared end
    second = float(node.rows["followup_days"].drop(index=0).max())
    sweep = sorted({second - 1, second, (second + TARGET_FOLLOWUP) / 2, TARGET_FOLLOWUP - 1, TARGET_FOLLOWUP})
    for max_time in sweep:
        reply = node.allowed("kaplan_meier", **SURVIVAL, parameters={"event_level": "yes", "max_time": max_time,
                                                                      "bin_width": 30.0})
        group = reply["aggregates"]["groups"][0]
        assert sum(group["events"]) + sum(group["censored"]) == len(node.rows)
    refusals = set()
    for max_time in (TARGET_FOLLOWUP + 1, 10 * TARGET_FOLLOWUP, -1.0):
        reply = node.call("kaplan_meier", **SURVIVAL, parameters={"event_level": "yes", "max_time": max_time})
        assert reply.status_code == 400, reply.text
        detail = reply.json()["detail"]
        assert "max_time must lie within the declared range of 'followup_days'" in detail
        refusals.add(detail)
    assert len(refusals) == 1  # the same words whatever the value asked


def _released_events(reply: dict) -> int:
    return sum(sum(group["events"]) for group in reply["aggregates"]["groups"])


def test_a_max_time_sweep_in_one_cohort_isolates_no_cell_of_fewer_than_nfilter_tab_events(node):
    # Issue 14: rows followed beyond max_time are censored there, and the node used to merge its bins on
    # the grid up to max_time, so the event totals of max_time t and t + bin_width differed by the deaths
    # in (t, t + bin_width]: 1 in a bin of one death, and a sweep gave each death's time.  Now the node
    # merges on the declared range whatever max_time and cuts the merged bins afterwards: every release
    # is the one without max_time cut at a bin end, and consecutive totals differ by 0 or >= nfilter_tab.
    tab, width = 3, 10.0
    rows = node.rows
    died = rows.loc[rows["death_90d"] == "yes", "followup_days"].to_numpy()
    per_bin = np.bincount(np.ceil(died / width).astype(int))
    sweep = range(1, 61)
    # the attack's targets exist: bins within the sweep holding one or two deaths
    assert any(0 < per_bin[k] < tab for k in sweep if k < len(per_bin))
    full = node.allowed("kaplan_meier", **SURVIVAL, x=["sex"],
                        parameters={"event_level": "yes", "bin_width": width})["aggregates"]
    totals = []
    for k in sweep:
        reply = node.allowed("kaplan_meier", **SURVIVAL, x=["sex"],
                             parameters={"event_level": "yes", "bin_width": width, "max_time": k * width})
        for group, whole in zip(reply["aggregates"]["groups"], full["groups"]):
            # the release without max_time, cut at its last bin end at or before max_time (bin ends are
            # indices of the fine grid: followup_days is an integer variable from 0, so day e is index e)
            ends = [e for e in whole["ends"] if e <= k * width]
            assert group["ends"] == ends and group["events"] == whole["events"][:len(ends)]
            assert sum(group["censored"]) == sum(whole["events"]) + sum(whole["censored"]) - sum(group["events"])
            assert all(v == 0 or v >= tab for v in group["events"] + group["censored"])
        totals.append(_released_events(reply))
    steps = np.diff([0, *totals])
    assert all(d == 0 or d >= tab for d in steps), steps
    assert totals[-1] > 0 and len(set(totals)) > 2  # the sweep did see deaths, in steps of >= nfilter_tab
    # an honest request still gets curves: max_time within the first year, by sex
    from mipflow.algorithms import AnalysisRequest, get_algorithm

    honest = {"event_level": "yes", "bin_width": 30.0, "max_time": 365.0}
    reply = node.allowed("kaplan_meier", **SURVIVAL, x=["sex"], parameters=honest)
    request = AnalysisRequest(data_model=STROKE.key, datasets=("hospital_a",), x=("sex",),
                              y=tuple(SURVIVAL["y"]), parameters=honest)
    result = get_algorithm("kaplan_meier").global_step(0, [reply["aggregates"]], request, STROKE, None).result
    binning = result["binning"]
    assert binning["max_time"] == 365.0 and 0 < binning["end_of_follow_up"] <= 390.0
    assert {c["group"] for c in result["curves"]} == {"F", "M"}
    for curve in result["curves"]:
        assert curve["n_events"] >= tab and min(curve["survival"]) < 1.0
        assert max(curve["timeline"]) <= binning["end_of_follow_up"] and min(curve["at_risk"]) >= tab


def _leaving_by_time(node: Node, x: list[str], parameters: dict) -> dict[tuple, tuple[int, int | None]]:
    """What the central site reads off one standard-mode release: per group and released bin end (a
    time), the cumulative events and censorings up to it (the global step turns ends into times).  With
    max_time the last end's censorings include the rows followed longer: not a count up to that time."""
    from mipflow.algorithms import AnalysisRequest, get_algorithm

    reply = node.allowed("kaplan_meier", **SURVIVAL, x=x, parameters=parameters)
    request = AnalysisRequest(data_model=STROKE.key, datasets=("hospital_a",), x=tuple(x),
                              y=tuple(SURVIVAL["y"]), parameters=parameters)
    result = get_algorithm("kaplan_meier").global_step(0, [reply["aggregates"]], request, STROKE, None).result
    out = {}
    for curve in result["curves"]:
        events, censored = np.cumsum(curve["events"]), np.cumsum(curve["censored"])
        for t, d, c in zip(curve["timeline"], events, censored):
            out[(curve["group"], float(t))] = (int(d), int(c))
        if "max_time" in parameters:
            t = float(curve["timeline"][-1])
            out[(curve["group"], t)] = (out[(curve["group"], t)][0], None)
    return out


def _small_steps(releases: list[dict[tuple, tuple[int, int]]], tab: int) -> list[tuple]:
    """Every pair of consecutive bin ends, over the union of the releases' ends per group, whose
    cumulative events or censorings differ by 1 .. tab - 1: a cell the releases isolate together."""
    small = []
    for kind in (0, 1):  # cumulative events, cumulative censorings
        union: dict[tuple, int] = {}
        for release in releases:
            for key, counts in release.items():
                if counts[kind] is not None:  # every release counts the same rows up to a time
                    assert union.setdefault(key, counts[kind]) == counts[kind]
        for group in {g for g, _ in union}:
            previous = 0
            for t in sorted(t for g, t in union if g == group):
                if 0 < union[(group, t)] - previous < tab:
                    small.append((group, t, kind, union[(group, t)] - previous))
                previous = union[(group, t)]
    return small


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> Iterator[Node]:
    """The default node with room in its query budget for sweeps of many distinct requests."""
    yield from start_node(tmp_path_factory.mktemp("sweep-node"), query_budget=10_000)


@pytest.mark.parametrize("x", [[], ["sex"]], ids=["one-curve", "by-sex"])
def test_a_bin_width_sweep_in_one_cohort_isolates_no_cell_of_fewer_than_nfilter_tab_events(sweeps, x):
    # Issue 14.4: the node merged adjacent points of the request's grid (origin + k * bin_width) until no
    # count was small, so two widths (1 and 1.001, 7 and 10) gave merged bin ends at different times; the
    # cumulative counts at the union of both releases' ends gave the deaths between an end of one and the
    # next end of the other: a cell of one or two.  Now every release is the node's one canonical release
    # (merged on the data model's fine grid) coarsened to the request's grid at its merged ends only, so
    # any two releases' ends are ends of the canonical release and every step between them is a sum of
    # its cells: 0 or >= nfilter_tab.
    node = sweeps
    tab = node.home.settings.nfilter_tab
    widths = [1.0, 1.001, 2.0, 3.0, 7.0, 10.0, 13.0, 30.0, 30.5]
    releases = [_leaving_by_time(node, x, {"event_level": "yes", "bin_width": width}) for width in widths]
    assert len(set().union(*releases)) > max(len(r) for r in releases)  # the widths' ends differ
    assert _small_steps(releases, tab) == []
    # and with max_time swept on top, nothing either
    releases += [_leaving_by_time(node, x, {"event_level": "yes", "bin_width": width, "max_time": end})
                 for width in (7.0, 10.0) for end in (35.0, 60.0, 95.0, 400.0)]
    assert _small_steps(releases, tab) == []
    # an honest request still gets curves, with deaths and nobody small at risk
    for release in releases[:len(widths)]:
        assert {g for g, _ in release} == ({None} if not x else {"F", "M"})
        assert all(d > 0 for (g, t), (d, c) in release.items() if t == max(u for h, u in release if h == g))


def _cox_events(node: Node, parameters: dict) -> int:
    reply = node.allowed("cox_regression", **SURVIVAL, x=["age"], parameters=parameters)
    return sum(reply["aggregates"]["events"])


def test_a_cox_max_time_sweep_in_one_cohort_isolates_no_cell_of_fewer_than_nfilter_tab_events(sweeps):
    # Cox regression's round 0 releases the node's event and censoring counts, merged; rows followed beyond
    # max_time are censored there.  Merged on the grid up to max_time, the event totals of max_time t and
    # t + bin_width differed by the deaths in (t, t + bin_width]: a cell of one.  Now the round-0 release with
    # max_time is the one without it, cut at one of its bin ends (as Kaplan-Meier's).
    node = sweeps
    tab, width = node.home.settings.nfilter_tab, 10.0
    died = node.rows.loc[node.rows["death_90d"] == "yes", "followup_days"].to_numpy()
    per_bin = np.bincount(np.ceil(died / width).astype(int))
    sweep = range(1, 61)
    assert any(0 < per_bin[k] < tab for k in sweep if k < len(per_bin))  # the attack's targets exist
    totals = [_cox_events(node, {"event_level": "yes", "bin_width": width, "max_time": k * width}) for k in sweep]
    steps = np.diff([0, *totals])
    assert all(d == 0 or d >= tab for d in steps), steps
    assert totals[-1] > 0 and len(set(totals)) > 2  # the sweep did see deaths, in steps of >= nfilter_tab
    # and across bin widths too
    totals = [_cox_events(node, {"event_level": "yes", "bin_width": w, "max_time": 100.0})
              for w in (1.0, 3.0, 7.0, 9.0, 10.0, 11.0, 30.0)]
    assert all(abs(a - b) == 0 or abs(a - b) >= tab for a in totals for b in totals), totals
    # an honest request still gets a fit: through the node's controls in process, censored at the end used
    from tests.mipflow.algorithms.survival_data import request, run_with_controls

    result, used, _ = run_with_controls("cox_regression", [node.rows], request("cox_regression", x=("age",),
                                                                               bin_width=30.0, max_time=365.0),
                                        node.home.settings)
    assert used == [0] and result["coefficients"][0] > 0  # older patients die sooner (make_stroke)
    assert 0 < result["binning"]["end_of_follow_up"] <= 365.0


def test_a_cox_max_time_below_the_longest_follow_up_is_answered(node):
    # the same rule for Cox regression's time grid
    node.allowed("cox_regression", **SURVIVAL, x=["age"], parameters={"event_level": "yes", "max_time": 1000.0,
                                                                      "bin_width": 30.0})


@pytest.mark.parametrize("state", [
    {"range": [18.0, 19.0], "bins": 1},      # one bin around the target's age
    {"range": [18.4, 18.6], "bins": 2},
    {"range": [18.0, 90.0], "bins": 1000},   # the declared range, bins beyond the bound
], ids=["narrowed", "narrowed-two-bins", "too-many-bins"])
def test_histogram_ranges_narrowed_around_a_value_are_refused_by_the_metadata_rule(node, state):
    # a hostile central site skips round 0 and sends its own bins: the node bins age over its
    # declared range (18..90) into the request's bins only, and refuses any other range
    node.refused("round_verification", "multiple_histograms", y=["age"], parameters={"bins": 1}, round=1,
                 state=state, analysis_id="narrow")  # through the API: not the global step's state (ADR 0029)
    # behind round verification, the metadata rule (defence in depth)
    reply = node.call("multiple_histograms", y=["age"], parameters={"bins": 1}, round=1, state=state,
                      analysis_id="narrow", unverified=True)
    assert reply.status_code == 400, reply.text
    assert "declared range" in reply.json()["detail"]
    assert str(TARGET_AGE) not in reply.text


def test_a_histogram_of_a_variable_without_a_declared_range_is_refused_before_reading_rows():
    # the stroke model declares every numerical range; a copy without age's range stands for a
    # data model that does not: the bins would come from the rows' extremes or the central site
    from mipflow.algorithms import AnalysisRequest, get_algorithm
    from mipflow.exceptions import RequestError
    from mipflow.node.controls.disclosure import DisclosureControls
    from mipflow.node.home import NodeSettings

    model = dataclasses.replace(STROKE, variables={
        **STROKE.variables, "age": dataclasses.replace(STROKE.variable("age"), min_value=None, max_value=None)})
    req = AnalysisRequest(data_model=model.key, datasets=("hospital_a",), x=(), y=("age",), parameters={"bins": 5})
    algo = get_algorithm("multiple_histograms")
    with pytest.raises(RequestError, match="declares none") as info:
        DisclosureControls(NodeSettings()).check_request(algo, req, model)
    assert "'age'" in str(info.value)
    # a node whose admin releases extremes answers as Exareme2 (pooled minimum and maximum)
    DisclosureControls(NodeSettings(release_extremes=1)).check_request(algo, req, model)
    # a declared range needs nothing more
    DisclosureControls(NodeSettings()).check_request(algo, dataclasses.replace(req), STROKE)


def _cumulative_totals(node: Node, y: list[str], x: list[str], parameters: dict) -> dict[int, tuple[int, int]]:
    """One standard-mode release's cumulative events and censorings over all its groups, at every bin
    end (a fine index: a day of followup_days) that all its groups share."""
    reply = node.allowed("kaplan_meier", y=y, x=x, parameters=parameters)
    groups = reply["aggregates"]["groups"]
    per_group = [{int(e): (int(d), int(c)) for e, d, c in zip(g["ends"], np.cumsum(g["events"]),
                                                                np.cumsum(g["censored"]))} for g in groups]
    shared = set.intersection(*(set(g) for g in per_group))
    return {e: (sum(g[e][0] for g in per_group), sum(g[e][1] for g in per_group)) for e in sorted(shared)}


@pytest.mark.parametrize("event", [("death_90d", "yes"), ("death_90d", "no"), ("diabetes", "yes"),
                                   ("stroke_type", "tia")], ids=lambda e: "-".join(e))
def test_releases_of_one_cohort_with_different_grouping_variables_isolate_no_cell(sweeps, event):
    # Class: a release's complements across requests (ADR 0008 "one partition per cohort"; an outside
    # review found it): the ungrouped release and releases grouped by other variables (sex, dataset,
    # ...) of one cohort, their groups' cumulative counts summed at their common ends, against each
    # other at interleaved ends.  When each group was merged on its own, the differences gave cells of
    # 1 or 2 rows.  Every release of the cohort is now on bins that coarsen the ungrouped release's,
    # shared by all its groups: every difference is a sum of the ungrouped release's cells.
    node = sweeps
    tab = node.home.settings.nfilter_tab
    y = ["followup_days", event[0]]
    groupings = [[], ["sex"], ["dataset"], ["hypertension"], ["atrial_fibrillation"],
                 ["stroke_type"] if event[0] != "stroke_type" else ["diabetes"]]
    for width in (1.0, 30.0):
        releases = [_cumulative_totals(node, y, x, {"event_level": event[1], "bin_width": width}) for x in groupings]
        assert _small_steps([{(None, float(e)): v for e, v in r.items()} for r in releases], tab) == []
        # and the curves are still curves: the groups' releases keep several time points each
        assert all(len(r) >= 3 for r in releases), [len(r) for r in releases]


def test_releases_with_different_event_variables_isolate_no_follow_up_cell(sweeps):
    # Class: the same, across event definitions: whatever the event (death or not, diabetes, a stroke
    # type), the rows leaving follow-up are the same rows, so their cumulative count (events plus
    # censorings) at the ends of one release against another's must not isolate a cell either: every
    # release's bins coarsen one partition of the cohort's follow-up times.
    node = sweeps
    tab = node.home.settings.nfilter_tab
    releases = []
    for event in (("death_90d", "yes"), ("diabetes", "yes"), ("stroke_type", "tia"), ("hypertension", "yes")):
        for x in ([], ["sex"]):
            totals = _cumulative_totals(node, ["followup_days", event[0]], x, {"event_level": event[1], "bin_width": 1.0})
            releases.append({(None, float(e)): (d + c, 0) for e, (d, c) in totals.items()})
    assert _small_steps(releases, tab) == []
