"""A fifteenth outside review, from the documents only: the controls that landed with ADR 0061's "Value stamps",
ADR 0051's "issue 14 item 5", ADR 0032's decision count in Kaplan-Meier, ADR 0038's epoch-keyed metadata counts and
ADR 0062's streamed statistics.

The reviewer read README.md, docs/privacy.md and docs/adr/*.md and the test harness (``tests/nodes.py``,
``tests/privacy/conftest.py``, rounds 13-14); not ``plugins/mipflow``.  Every attack runs through real node processes
(``mipflow node serve`` on loopback) with the shipped thresholds (``min_row_count`` 10, ``nfilter_tab`` 3,
differencing on); standard mode is the admin's documented choice per node (``standard_home``), explore mode the
shipped default (``NodeHome.init``).  A correction is what a nightly load does: the same row identity
``(_pid, dataset, _visit)`` upserted with another value (``load_frame``).

``test_hole_*`` are strict xfails: the attack runs, computes the recovered value against the truth, and its last
assertion is the condition that would hold if the defence held.  ``test_defence_*`` pass while a control holds,
naming it.  ``test_honest_*`` is an honest researcher's session.

Found (holes):

1. **A group released before a correction against the same rows as a cohort after it.**  One-way ANOVA of NIHSS by
   stroke type (the TIA group: ``n``, mean, ``m2``); a nightly load corrects one TIA patient's NIHSS; descriptive
   statistics of ``stroke_type = tia`` (a new cohort of the ledger, so no stamp to compare; the group memory sees the
   same rows, 0 apart) give the group's sums after it.  Their difference is her old and new NIHSS.  Two releases,
   no new rows (ADR 0061 residual (b) from the other side).  **Closed** (issue 14): each released group carries its
   value stamps, and a group and a group or cohort of the same rows under one consent epoch compare them, in either
   order, on the frame and streamed paths alike (ADR 0061 amended).
2. **Three releases ``B``, ``B' ∪ N``, ``N``** (ADR 0061 residual (a), made concrete): descriptive statistics on
   everyone, a correction, 12 new rows, everyone again, then the new rows alone: the corrected patient's old and
   new NIHSS.  **Closed**: the chain rule sees a remembered row released with a value since corrected as a
   changed-value unit (``value_memory``; ADR 0061 "Value stamps" amended); the new rows alone are refused.
3. **A correction loaded under one data-model version** (ADR 0061 residual (c)): the same cohort under stroke 0.1
   before and stroke 0.2 after a correction loaded into 0.2 only is the same patients (an exact repeat across
   versions) and no stamp is compared: old and new NIHSS.  **Closed**: cohorts carry patient stamps, compared
   when a fresh cohort holds exactly the patients of one answered under another version (ADR 0061 amended).
4. **Logistic regression's response class** (ADR 0051's listed gap): round 0's ``n_positive`` and round 1's
   gradient at zero give the deaths' sum of NIHSS (seen by the central site); descriptive statistics of adult deaths
   (far from every cohort) subtract to the one young death's NIHSS.  **Closed** the same day: a binary response's
   classes and Cox's event set are released groups (ADR 0051 amended for the fifteenth review).
5. **Histogram bins** (ADR 0051's listed gap): a histogram of age on everyone (its youngest bin, 11 rows) with the
   counts of non-TIA patients and of adult non-TIA patients counts the TIA patients under 25: a cell of one, which
   the same cohorts with the bin as a cohort (or a contingency table's cells) are refused for.  **Closed** (issue
   14): the bins a histogram shows are released groups, on bin counts that nest on a public grid (ADR 0051 amended
   for the fifteenth review).
6. **Streamed descriptive statistics compare no value stamps** (ADR 0062 against ADR 0061 point 2): the same
   descriptive statistics before and after a correction are both answered on a node with the shipped columnar
   snapshot (the frame path, ``columnar_snapshot 0``, refuses; Pearson, the t-tests and linear regression refuse on
   either path): the corrected patient's old and new values from two identical requests.  **Closed** the same day:
   the streamed cohorts (``cohorts_of_rows``) carry the frame's value stamps (ADR 0062 amended).

Held (defences): value stamps agree between the streamed path (descriptive statistics) and the frame path (a
regression with a nominal covariate) and under a rewritten filter, so a corrected repeat is refused across paths and
an honest one answered; the streamed and frame paths release the same bytes with missing values and two datasets
(descriptive statistics, Pearson, both t-tests) and refuse alike; explore Kaplan-Meier's decision count in its
aggregates is the reply's ``rows`` and the label's sd (no new draw), and every distinct release is charged in full,
so averaging it across analyses is the budget's bound as before.
Honest work: a standard-mode session answers; after a nightly correction the regression's re-run leaves the
correcting hospital out with a message whose first sentences point elsewhere and whose last says what to do; 12 new
patients later everything answers.  Holes 1-3 also hold on the frame path (measured with ``columnar_snapshot 0``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.central.rounds import run_analysis
from mipflow.node.home import NodeHome
from mipflow.protocol.signing import issue_client
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import rule, where
from tests.nodes import grant_all, load_frame, pin_each_other, recording_clients, running_nodes, served_clients
from tests.nodes import standard_home
from tests.privacy.test_explore_attacks import Served
from tests.privacy.test_redteam_round13 import level_rows

pytestmark = pytest.mark.xdist_group("redteam_round15")

AUDIT = "audit"
NODE = "hospital_a"
STROKE_V2 = dataclasses.replace(STROKE, version="0.2", raw={**STROKE.raw, "version": "0.2"})


def request(y, x=(), filters=None, model: str = STROKE.key, datasets=(NODE,), **parameters) -> dict:
    return {"inputdata": {"data_model": model, "datasets": list(datasets), "x": list(x), "y": list(y),
                          "filters": filters}, "parameters": parameters}


def typed(reply) -> tuple[int, str | None]:
    return reply.status_code, reply.json().get("control")


def refused_without(reply, *values: float) -> None:
    """A refusal naming the differencing control, carrying no aggregate and echoing none of ``values``."""
    assert typed(reply) == (403, "differencing"), reply.text
    assert "aggregates" not in reply.json()
    words = reply.text
    assert not any(f"{v:g}" in words.replace("min_row_count (10)", "") for v in values), words


def sums(moments: dict) -> tuple[int, float, float]:
    """(n, sum, sum of squares) from a release's ``n``, ``mean`` and ``m2``."""
    n, mean, m2 = moments["n"], moments["mean"][0], moments["m2"][0]
    return n, n * mean, m2 + n * mean * mean


def stats_moments(reply, variable: str = "nihss_admission", dataset: str = NODE) -> dict:
    return reply.json()["aggregates"]["datasets"][dataset]["variable_based"][variable]["moments"]


def old_and_new(before: tuple, after: tuple) -> tuple[float, float]:
    """One row's value before and after, from the (n, sum, sum of squares) of the same rows before and after."""
    assert before[0] == after[0]
    d, q = before[1] - after[1], before[2] - after[2]  # old - new, old^2 - new^2
    return (q / d + d) / 2, (q / d - d) / 2


def correct(served: Served, at, model=STROKE, **values) -> None:
    """A nightly load correcting the rows at ``at`` in place (an ingest's upsert: the same row identity)."""
    fixed = served.rows.loc[at].assign(**values)
    assert load_frame(served.root, model, fixed) == len(fixed)
    if model is STROKE:
        served.rows.loc[at, list(values)] = fixed[list(values)].to_numpy()


def registry(kind: str) -> pd.DataFrame:
    """Round 13's level registry (240 rows, stroke types 80 each; ten patients under 25, one of them the target, a
    TIA patient with NIHSS 41), adapted per attack."""
    frame = level_rows()
    if kind == "chain":  # one more young non-TIA patient: young non-TIA 10, young TIA 1 (the target)
        frame.loc[frame.index[(frame["age"] >= 30) & (frame["stroke_type"] == "ischaemic")][0], "age"] = 24.8
        # half the adults died; of the young only the target
        frame["death_90d"] = np.where(np.arange(len(frame)) % 2 == 0, "yes", "no")
        frame.loc[frame["age"] < 25, "death_90d"] = "no"
        frame.loc[target_of(frame), "death_90d"] = "yes"
    return frame


def target_of(frame: pd.DataFrame):
    return frame.index[(frame["age"] < 25) & (frame["stroke_type"] == "tia")][0]


#: node -> (registry kind, data models loaded, settings)
PLAN = {"groupfix": ("levels", (STROKE,), {}), "threefix": ("levels", (STROKE,), {}),
        "versions": ("levels", (STROKE, STROKE_V2), {}), "chain": ("chain", (STROKE,), {}),
        "groupfixframe": ("levels", (STROKE,), {"columnar_snapshot": 0}), "stamps": ("levels", (STROKE,), {}),
        "streamfix": ("levels", (STROKE,), {}), "framefix": ("levels", (STROKE,), {"columnar_snapshot": 0})}


@pytest.fixture(scope="module")
def standard(tmp_path_factory) -> Iterator[dict[str, Served]]:
    """One standard-mode node per attack (their memories apart), each ``hospital_a`` with its registry, project
    ``audit`` granted to any researcher id; served as processes."""
    base = Path(tmp_path_factory.mktemp("round15"))
    roots, frames, credentials = {}, {}, {}
    for name, (kind, models, settings) in PLAN.items():
        roots[name] = base / name
        home = standard_home(roots[name], NODE)
        for key, value in settings.items():
            home.set_setting(key, value)
        frames[name] = registry(kind)
        for model in models:
            load_frame(roots[name], model, frames[name])
        grant_all(roots[name], researcher="*", project=AUDIT)
        credentials[name] = issue_client(roots[name], "central")
    with running_nodes(list(roots.values())) as urls:
        yield {name: Served(url, credentials[name], roots[name], frames[name]) for name, url in zip(roots, urls)}


# ------------------------------------------------------------------ corrections in place (ADR 0061, value stamps)

TIA = where(rule("stroke_type", "equal", "tia"))


def test_hole_1_closed_a_group_before_a_correction_and_the_same_rows_as_a_cohort_after_it_are_refused(standard):
    """Hole 1 (closed: each released group carries its value stamps, ADR 0061 "Value stamps", the group memory).
    Class: value stamps covered the cohort ledger's exact repeats only; the group memory compared rows (ADR 0061
    residual (b), here with no new rows at all).  Adversary: a researcher in a standard-mode project.

    The one-way ANOVA of NIHSS by stroke type releases the TIA group's ``n``, mean and ``m2`` (80 rows).  A nightly
    load corrects one TIA patient's NIHSS (41 -> 12).  Descriptive statistics of ``stroke_type = tia``: a cohort the
    ledger never held (no stamp of its own), the same rows as a remembered group (0 apart, allowed by rows) holding
    another NIHSS: refused ``differencing``, the correction said first, on the streamed node (the shipped columnar
    snapshot) and the frame node (``columnar_snapshot 0``) alike.  Answered, the two releases gave her old and new
    NIHSS (measured before the fix)."""
    for name in ("groupfix", "groupfixframe"):
        node = standard[name]
        anova = node.call("anova_oneway", request(["nihss_admission"], ["stroke_type"]), project=AUDIT)
        assert anova.status_code == 200, anova.text
        before = sums(anova.json()["aggregates"]["groups"][2])  # levels sorted: haemorrhagic, ischaemic, tia
        target = target_of(node.rows)
        old = float(node.rows.loc[target, "nihss_admission"])
        correct(node, [target], nihss_admission=12.0)
        after = node.call("descriptive_stats", request(["nihss_admission"], filters=TIA), project=AUDIT)
        if after.status_code == 200:
            recovered = old_and_new(before, sums(stats_moments(after)))
            assert recovered == pytest.approx((old, 12.0))
        assert typed(after) == (403, "differencing"), f"{name}: the group before and the cohort after give old and new"
        words = after.json()["refused"]
        assert words.startswith("a load has corrected") and words.endswith("then re-run"), words
        assert not any(ch.isdigit() for ch in words)  # no value, no count


def test_hole_before_after_with_new_rows_and_the_new_rows_alone_give_old_and_new(standard):
    """Hole 2.  Class: a chain of three releases in which the corrected row is one unit in all three (the chain rule
    has no stamps).  Descriptive statistics of NIHSS on everyone; a correction of the target (41 -> 12); a load of 12
    new patients aged 86-89 (everyone else is at most 85); everyone again (252 rows: 12 from the first, not an exact
    repeat); ``age >= 86`` (the 12 new rows).  ``B - (B' ∪ N) + N`` is the target's old and new values."""
    node = standard["threefix"]
    first = node.call("descriptive_stats", request(["nihss_admission"]), project=AUDIT)
    assert first.status_code == 200, first.text
    target = target_of(node.rows)
    old = float(node.rows.loc[target, "nihss_admission"])
    correct(node, [target], nihss_admission=12.0)
    fresh = registry("levels").iloc[:12].assign(subjectcode=[f"new-{k}" for k in range(12)],
                                                 age=np.linspace(86, 89, 12))
    assert load_frame(node.root, STROKE, fresh) == 12
    everyone = node.call("descriptive_stats", request(["nihss_admission"]), project=AUDIT)
    new_rows = node.call("descriptive_stats", request(["nihss_admission"],
                                                      filters=where(rule("age", "greater_or_equal", 86))), project=AUDIT)
    if everyone.status_code == 403 or new_rows.status_code == 403:  # the defence
        # (closed: the corrected row is a changed-value unit of the chain rule; the union is answered, as an
        # honest re-run after min_row_count new rows must be, and the new rows alone refused)
        assert everyone.status_code == 200, everyone.text
        refused_without(new_rows, old, 12.0)
        return
    union, added = sums(stats_moments(everyone)), sums(stats_moments(new_rows))
    after = (union[0] - added[0], union[1] - added[1], union[2] - added[2])
    recovered = old_and_new(sums(stats_moments(first)), after)
    assert recovered == pytest.approx((old, 12.0))
    assert recovered != pytest.approx((old, 12.0)), "three releases give the corrected row's old and new values"


def test_hole_a_correction_in_one_data_model_version_gives_old_and_new(standard):
    """Hole 3.  Class: stamps are per data model while the ledger compares cohorts across versions by patients
    (ADR 0061 residual (c)).  The node holds the registry under stroke 0.1 and 0.2 (the same patients).
    Descriptive statistics of NIHSS on everyone under 0.1; a load corrects the target under 0.2 only; the same
    under 0.2: the same patients (0 apart across versions), no stamp compared."""
    node = standard["versions"]
    first = node.call("descriptive_stats", request(["nihss_admission"]), project=AUDIT)
    assert first.status_code == 200, first.text
    target = target_of(node.rows)
    old = float(node.rows.loc[target, "nihss_admission"])
    correct(node, [target], model=STROKE_V2, nihss_admission=12.0)
    later = node.call("descriptive_stats", request(["nihss_admission"], model=STROKE_V2.key), project=AUDIT)
    if later.status_code == 403:  # closed: patient stamps compared across versions of the same patients
        refused_without(later, old, 12.0)
        return
    recovered = old_and_new(sums(stats_moments(first)), sums(stats_moments(later)))
    assert recovered == pytest.approx((old, 12.0))
    assert recovered != pytest.approx((old, 12.0)), "two versions of one cohort give the corrected row's values"


def test_hole_6_closed_streamed_descriptive_statistics_repeated_after_a_correction_are_refused(standard):
    """Hole 6 (closed: the streamed cohorts carry the frame's value stamps, ADR 0062 amended).  Class: a control's input computed on one read path and not the other (ADR 0062 point 4 promises
    the controls' inputs are the frame's; ADR 0061 point 2 "every read path, the same numbers").  Adversary: a
    researcher in a standard-mode project, two identical requests around a nightly load.

    Descriptive statistics of NIHSS on everyone, a correction of the target (41 -> 12), the same request again: on a
    node with the shipped ``columnar_snapshot`` (streamed) the repeat is answered and the two releases give her old
    and new NIHSS; the twin node with ``columnar_snapshot 0`` (frame path) refuses it (``differencing``).  The
    streamed complete-case algorithms (Pearson, both t-tests, linear regression) refuse it too (measured)."""
    outcomes = {}
    for name in ("streamfix", "framefix"):
        node = standard[name]
        first = node.call("descriptive_stats", request(["nihss_admission"]), project=AUDIT)
        assert first.status_code == 200, first.text
        target = target_of(node.rows)
        old = float(node.rows.loc[target, "nihss_admission"])
        correct(node, [target], nihss_admission=12.0)
        again = node.call("descriptive_stats", request(["nihss_admission"]), project=AUDIT)
        outcomes[name] = typed(again)
        if again.status_code == 200:
            recovered = old_and_new(sums(stats_moments(first)), sums(stats_moments(again)))
            assert recovered == pytest.approx((old, 12.0))
    assert outcomes["framefix"] == (403, "differencing")  # the frame path holds
    assert outcomes["streamfix"] == (403, "differencing"), "the streamed repeat gives the corrected row's values"


def test_defence_value_stamps_agree_across_the_streamed_and_frame_paths_and_a_rewritten_filter(standard):
    """Held: value stamps (ADR 0061) are one function of the cells whatever path read them (ADR 0062: the one-sample
    t-test streams from the snapshot; linear regression with a nominal covariate keeps a frame) and whatever filter
    wording selects the rows.  The t-test of NIHSS on everyone (streamed), then a linear regression of NIHSS on
    stroke type (frame; the same cohort): answered (no change, the stamps agree).  A correction of a NIHSS value;
    then the same regression, and the t-test under ``age >= 0`` (the same rows, rewritten): both refused
    ``differencing`` with words saying why and what answers it, no digit but the setting's."""
    node = standard["stamps"]
    first = node.call("ttest_onesample", request(["nihss_admission"], mu=10), project=AUDIT)
    regression = node.call("linear_regression", request(["nihss_admission"], ["stroke_type"]), project=AUDIT)
    assert (first.status_code, regression.status_code) == (200, 200), regression.text
    target = node.rows.index[100]
    correct(node, [target], nihss_admission=float(node.rows.loc[target, "nihss_admission"]) + 3)
    refusals = [node.call("linear_regression", request(["nihss_admission"], ["stroke_type"]), project=AUDIT),
                node.call("ttest_onesample", request(["nihss_admission"], filters=where(
                    rule("age", "greater_or_equal", 0)), mu=10), project=AUDIT)]
    for refused in refusals:
        assert typed(refused) == (403, "differencing"), refused.text
        words = refused.json()["refused"]
        assert "corrected" in words and "min_row_count new rows" in words
        assert not any(ch.isdigit() for ch in words.replace("min_row_count (10)", ""))


# ------------------------------------------------------------------ sets still outside the chain (ADR 0051)


def test_hole_4_closed_logistic_regression_s_response_class_less_adult_deaths_is_refused(standard):
    """Hole 4 (closed: a binary response's classes are released groups, ``design.class_groups``; ADR 0051 amended
    for the fifteenth review).  Class: a released set's first sums outside the group memory and the chain (ADR
    0051's issue 14 item 5 amendment listed it).  Adversary: the central site of a researcher's logistic regression (it sees every
    round's reply), with one descriptive request of its own.

    Logistic regression of death on NIHSS on everyone: round 0 releases ``n_positive`` and the pooled mean ``c`` of
    NIHSS; round 1's gradient at zero is ``sum (y - p)(x - c) = S_deaths - n_positive c`` at one node.  Descriptive
    statistics of ``death_90d = yes AND age >= 25`` (over 100 rows, far from everyone) give the adult deaths' sum: the
    difference is the one young death's NIHSS (41)."""
    node = standard["chain"]
    credential = node.credential
    from mipflow.central.client import NodeClient, NodeEndpoint

    client = NodeClient(NodeEndpoint(NODE, node.url, credential.client_id, credential.secret.hex()), retries=0)
    try:
        with recording_clients([client]) as (recording, seen):
            run_analysis("logistic_regression", request(["death_90d"], ["nihss_admission"], positive_class="yes"),
                         recording, researcher="mallory", project=AUDIT)
    finally:
        client.close()
    replies = {r: reply["aggregates"] for _, r, reply in seen}
    n_positive, center = replies[0]["n_positive"], replies[0]["moments"]["mean"][0]
    deaths_sum = replies[1]["gradient"][1] + n_positive * center
    rows = node.rows
    assert deaths_sum == pytest.approx(rows.loc[rows["death_90d"] == "yes", "nihss_admission"].sum(), rel=1e-9)
    adults = node.call("descriptive_stats", request(["nihss_admission"], filters=where(
        rule("death_90d", "equal", "yes"), rule("age", "greater_or_equal", 25))), project=AUDIT)
    if adults.status_code == 200:  # the attack, had the class stayed outside the memory and the chain
        n, total, _ = sums(stats_moments(adults))
        assert n_positive - n == 1
        assert deaths_sum - total == pytest.approx(rows.loc[target_of(rows), "nihss_admission"])
    assert typed(adults) == (403, "differencing"), "the response class less adult deaths is one patient's NIHSS"


def test_hole_5_closed_a_histogram_bin_and_two_cohorts_that_count_a_cell_of_one_are_refused(standard):
    """Hole 5 (closed: histogram bins, and bin x level cells, are released groups at ``nfilter_tab``, less the cells
    the release suppresses; their edges nest on a public grid, so honest histograms of one variable at other bin
    counts are not refused for slivers between them; ADR 0051 amended for the fifteenth review).  Class: histogram
    bins are counts over sets
    of rows the chain never saw (ADR 0051's listed gap), the class of contingency cells declared in issue 14 item 5.  A histogram of age on everyone (10 bins over the
    declared 18-90: the youngest, 18-25.2, holds the 11 patients under 25); descriptive statistics of NIHSS for
    ``stroke_type != tia`` (160 rows) and ``stroke_type != tia AND age >= 25`` (150): young non-TIA patients 10, so
    young TIA patients = 11 - 10 = 1 (the target), a count no table may release (``nfilter_tab`` 3)."""
    node = standard["chain"]
    histogram = node.call("multiple_histograms", request(["age"], bins=10), project=AUDIT)
    assert histogram.status_code == 200, histogram.text
    counts = histogram.json()["aggregates"]
    non_tia = node.call("descriptive_stats", request(["nihss_admission"], filters=where(
        rule("stroke_type", "not_equal", "tia"))), project=AUDIT)
    adult_non_tia = node.call("descriptive_stats", request(["nihss_admission"], filters=where(
        rule("stroke_type", "not_equal", "tia"), rule("age", "greater_or_equal", 25))), project=AUDIT)
    assert non_tia.status_code == 200, non_tia.text  # alone with the histogram: no small atom
    if adult_non_tia.status_code == 200:  # the attack, had the bins stayed outside the chain
        cell = youngest_bin(counts) - (stats_moments(non_tia)["n"] - stats_moments(adult_non_tia)["n"])
        rows = node.rows
        assert cell == int(((rows["age"] < 25) & (rows["stroke_type"] == "tia")).sum()) == 1
    assert typed(adult_non_tia) == (403, "differencing"), "a histogram bin and two cohorts count a cell of one"


def youngest_bin(aggregates: dict) -> int:
    (ungrouped,) = [h for h in aggregates["histograms"] if h["grouping_var"] is None]
    return ungrouped["counts"][0]


# ------------------------------------------------------------------ streamed statistics against the frame (ADR 0062)

TWINS = ("hospital_a", "hospital_b")


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> Iterator[dict[str, Served]]:
    """Two standard-mode nodes holding the same rows (two datasets, a few NIHSS missing): ``stream`` as shipped
    (columnar snapshot on: ADR 0062's rows on disk) and ``frame`` (``columnar_snapshot 0``: the SQL frame)."""
    from tests.mipflow.node.controls.study_helpers import stroke_rows

    base = Path(tmp_path_factory.mktemp("round15-twins"))
    frame = pd.concat([stroke_rows(51, 150, "hospital_a", "ta"), stroke_rows(52, 40, "hospital_b", "tb")],
                      ignore_index=True)
    assert frame["nihss_admission"].isna().any()
    roots, credentials = {}, {}
    for name, snapshot in (("stream", 1), ("frame", 0)):
        roots[name] = base / name
        home = standard_home(roots[name], NODE)
        home.set_setting("columnar_snapshot", snapshot)
        load_frame(roots[name], STROKE, frame)
        grant_all(roots[name], researcher="*", project=AUDIT)
        credentials[name] = issue_client(roots[name], "central")
    with running_nodes(list(roots.values())) as urls:
        yield {name: Served(url, credentials[name], roots[name], frame) for name, url in zip(roots, urls)}


def test_defence_streamed_statistics_release_and_refuse_as_the_frame_path(twins):
    """Held: ADR 0062 point 2 (the same bits) and point 4 (the controls' inputs are the frame's).  Class: a second
    read path whose missing-value handling, dataset split or cohorts differ from the first would give two releases of
    one question (a difference) or a refusal on one path only (an oracle).  The same requests at the twins (missing
    NIHSS, two datasets, a dataset of 40 rows): descriptive statistics (per variable, per dataset), Pearson, both
    t-tests, a filter leaving hospital_b under ``min_row_count``, then a cohort 3 rows from one answered: the same
    status, control and aggregates at both."""
    few = where(rule("age", "greater_or_equal", 30), rule("nihss_admission", "greater_or_equal", 0))
    asks = [("descriptive_stats", request(["age", "nihss_admission", "glucose_mmol", "sex"], datasets=TWINS)),
            ("pearson_correlation", request(["age", "nihss_admission", "glucose_mmol"], datasets=TWINS)),
            ("ttest_onesample", request(["nihss_admission"], datasets=TWINS, mu=12)),
            ("ttest_paired", request(["nihss_admission"], ["glucose_mmol"], datasets=TWINS)),
            ("descriptive_stats", request(["nihss_admission"], filters=few, datasets=TWINS)),
            ("descriptive_stats", request(["nihss_admission"], datasets=TWINS, filters=where(
                rule("age", "greater_or_equal", 30), rule("nihss_admission", "greater_or_equal", 2)))),
            ("descriptive_stats", request(["nihss_admission"], datasets=("hospital_b",),
                                          filters=where(rule("age", "greater_or_equal", 75))))]
    seen = []
    for algorithm, ask in asks:
        replies = {name: node.call(algorithm, ask, project=AUDIT) for name, node in twins.items()}
        (stream, frame) = (replies["stream"], replies["frame"])
        assert typed(stream) == typed(frame), (algorithm, stream.text, frame.text)
        assert stream.json().get("aggregates") == frame.json().get("aggregates"), algorithm
        assert stream.json().get("refused") == frame.json().get("refused"), algorithm
        seen.append(stream.status_code)
    assert 200 in seen and 403 in seen  # both answers and refusals were compared


# ------------------------------------------------------------------ explore Kaplan-Meier's decision count (ADR 0032)


@pytest.fixture(scope="module")
def explore_node(tmp_path_factory) -> Iterator[Served]:
    """A node home as shipped (explore mode by default), 200 stroke rows, project ``browse`` for any researcher."""
    from tests.mipflow.node.controls.study_helpers import stroke_rows

    root = Path(tmp_path_factory.mktemp("round15-explore")) / "node"
    NodeHome.init(root, NODE)
    frame = stroke_rows(61, 200, NODE, "km")
    load_frame(root, STROKE, frame)
    grant_all(root, researcher="*", project="browse")
    with running_nodes([root]) as (url,):
        yield Served(url, issue_client(root, "central"), root, frame)


def test_defence_explore_kaplan_meier_s_decision_count_is_no_new_draw_and_each_release_is_charged(explore_node):
    """Held (ADR 0032, "at-risk totals from the decision count").  Class: a value added to a noisy release as an
    averaging channel.  The count a Kaplan-Meier release carries (``row_count``) is the reply's ``rows`` and the
    label's ``decision.sd``, nothing else; its groups' sizes are not exact (no per-group count).  A repeat is the same
    bytes, charged once; the same cohort grouped by sex, or with another ``bin_width``, is another release charged in
    full: a count averaged over analyses costs one step each, the budget's bound as before (sd 4.7 / sqrt(50)
    = 0.66 rows for the whole project budget on one cohort)."""
    node = explore_node
    base = dict(event_level="yes", max_time=365.0)
    asks = [request(["followup_days", "death_90d"], bin_width=7.0, **base),
            request(["followup_days", "death_90d"], bin_width=7.0, **base),
            request(["followup_days", "death_90d"], ["sex"], bin_width=7.0, **base),
            request(["followup_days", "death_90d"], bin_width=14.0, **base)]
    spent, docs = [], []
    for ask in asks:
        reply = node.call("kaplan_meier", ask, project="browse", researcher="curious")
        assert reply.status_code == 200, reply.text
        doc = reply.json()
        assert doc["aggregates"]["row_count"] == {"count": doc["rows"], "sd": doc["privacy"]["decision"]["sd"]}
        docs.append(doc)
        spent.append(node.spent("browse")[1])
    assert docs[1]["aggregates"] == docs[0]["aggregates"] and spent[1] == spent[0]  # a repeat: free
    assert spent == [1, 1, 2, 3]  # every other release charged in full
    by_sex = node.rows.dropna(subset=["followup_days", "death_90d", "sex"]).groupby("sex").size().tolist()
    assert docs[2]["aggregates"]["group_n"] != by_sex  # the groups' sizes are noisy sums, not exact counts


# ------------------------------------------------------------------ honest work


def honest_rows(hospital: str, seed: int) -> pd.DataFrame:
    from tests.mipflow.node.controls.study_helpers import stroke_rows

    frame = stroke_rows(seed, 120, hospital, hospital[-1] + "h").dropna().reset_index(drop=True)
    frame["stroke_type"] = np.array(["ischaemic", "haemorrhagic", "tia"])[np.arange(len(frame)) % 3]
    return frame


def test_honest_standard_session_a_nightly_correction_then_the_routine_and_a_logistic_model_after_an_anova(
        tmp_path):
    """An honest researcher at three standard-mode hospitals (project ``clinic``), through the central site: the
    routine (descriptive statistics, a regression of NIHSS on age), an ANOVA of NIHSS by stroke type and then a
    logistic regression of 90-day death on stroke type and age: all answered.  A nightly load at hospital_a corrects
    one NIHSS: the regression's re-run leaves hospital_a out (``differencing``; by design, ADR 0061) and the result
    comes from the two others; the message first says that a load corrected values the analysis reads in rows
    answered before (the reviewer found it said "too close to rows this node already answered" first, and to "use
    the same filters", which the researcher did: issue 14) and ends with the remedy (new rows, then re-run).  After the next load of 12 new patients
    the routine answers everywhere."""
    from mipflow.exceptions import MipflowError

    frames = {h: honest_rows(h, 70 + i) for i, h in enumerate(("hospital_a", "hospital_b", "hospital_c"))}
    roots = {}
    for hospital, frame in frames.items():
        roots[hospital] = tmp_path / hospital
        standard_home(roots[hospital], hospital)
        load_frame(roots[hospital], STROKE, frame)
        grant_all(roots[hospital], researcher="*", project="clinic")
    pin_each_other(roots)  # the admins' fingerprint exchange: masking is automatic from three nodes
    every = tuple(frames)
    routine = {"describe": ("descriptive_stats", request(["age", "nihss_admission"], datasets=every)),
               "regression": ("linear_regression", request(["nihss_admission"], ["age"], datasets=every))}
    models = {"anova": ("anova_oneway", request(["nihss_admission"], ["stroke_type"], datasets=every)),
              "logistic": ("logistic_regression", request(["death_90d"], ["stroke_type", "age"], datasets=every,
                                                          positive_class="yes"))}

    def session(clients, asks) -> dict:
        outcomes = {}
        for name, (algorithm, doc) in asks.items():
            try:
                outcome = run_analysis(algorithm, doc, list(clients.values()), researcher="dr_honest", project="clinic")
            except MipflowError as refused:
                outcomes[name] = ("refused", str(refused))
                continue
            outcomes[name] = ("answered", " ".join(f"{k}: {v}" for k, v in sorted(outcome.excluded.items())))
        return outcomes

    with served_clients(roots) as clients:
        first = session(clients, {**routine, **models})
        assert first == {name: ("answered", "") for name in (*routine, *models)}, first
        fixed = frames["hospital_a"].loc[[7]].assign(nihss_admission=frames["hospital_a"].loc[7, "nihss_admission"] + 2)
        load_frame(roots["hospital_a"], STROKE, fixed)  # the nightly load corrects one value
        rerun = session(clients, routine)
        fresh = honest_rows("hospital_a", 99).iloc[:12].assign(subjectcode=[f"new-{k}" for k in range(12)])
        load_frame(roots["hospital_a"], STROKE, fresh)  # the next night's new patients
        later = session(clients, routine)
    status, words = rerun["regression"]  # answered by the two others, hospital_a left out saying what to do
    assert status == "answered" and words.startswith("hospital_a: refused (differencing)"), rerun
    assert "corrected" in words and "new rows" in words and words.endswith("then re-run"), words
    assert words.startswith("hospital_a: refused (differencing): a load has corrected"), words
    # (the re-run of descriptive statistics is answered by all three: hole 6, not honest work)
    assert later == {name: ("answered", "") for name in routine}, later
