"""A sixteenth outside review, from the documents only: ADR 0059's fourteenth-review amendment (``check_pooled_counts``),
ADR 0061's amendments (one epoch view, value stamps, changed-value units, patient stamps, group stamps) and ADR 0051's
fifteenth-review amendment (response classes, event sets and histogram bins as released groups).

The reviewer read README.md, docs/privacy.md, docs/adr/*.md and the test harness (``tests/nodes.py``,
``tests/privacy/conftest.py``, rounds 14-15); not ``plugins/mipflow``.  Every attack runs through real node processes
(``mipflow node serve`` on loopback) with the shipped thresholds (``min_row_count`` 10, ``nfilter_tab`` 3, differencing
on); standard mode is the admin's documented choice per node (``standard_home``).  Every release here is exact
(standard mode, no noise): each strict xfail fails the same way on every run.

``test_hole_*`` are strict xfails: the attack runs, checks what it recovered against the truth, and its last assertion
is the condition that would hold if the defence held.  ``test_defence_*`` pass while a control holds, naming it.

Found (holes):

1. **A group of the pooled release less the other hospitals' counts of that group's events** (ADR 0059 fourteenth
   review, stated residual "the pooled release's groups").  Kaplan-Meier over {A, B, C} on pooled bins, curves by
   sex; descriptive statistics at B and C of their women who died (24 rows each, far from every bound cell, which is
   over both sexes).  The pooled women's events less B's and C's counts is A's women's deaths: one.
2. **The reverse order: a histogram of follow-up time first, then the pooled curve** (ADR 0059 fourteenth review,
   stated residual "the reverse order is partial").  B and C release a histogram of ``followup_days`` (90 bins over
   the declared range) on their whole cohorts; then Kaplan-Meier over {A, B, C} is answered on pooled bins: pooled
   leavings by the end at day 40 less B's and C's first bin ``[0, 40.6)`` is A's own leavings by then: one death.
3. **A regression's joint dummy count less a cohort** (ADR 0051 stated residual, ``cell_n``): linear regression of
   NIHSS on sex and stroke type gives the number of women with a TIA in its co-moments (45); descriptive statistics of
   adult women with a TIA (44) leave the one young woman with a TIA.  Closed (ADR 0051 amended for the sixteenth
   review): the joint cells of two nominal covariates are released groups; the cohort is refused ``differencing``.

Holes 1 and 2 are closed (ADR 0059, sixteenth-review amendment): a pooled release's groups are bound cells (B and
C refuse their women who died, ``pooled_bins``, in the same words), and a pooled step compares every set an earlier
release counted, split by follow-up time where it used it (B and C decline the pooled bins; per-node bins are
answered).  Their tests pass now, asserting the attack's arithmetic only where it could still run.

Held (defences): a pooled Kaplan-Meier repeated after a correction at one hospital (the ledger's value stamps refuse
it there, ``differencing``; the others ``pooled_bins``); a correction, a withdrawal and new rows, then the new rows
alone (changed-value units with the epoch view's phantom), refused alike at a holder and a non-holder; a correction,
then the correction back, then the new rows alone (the row's versions), refused.

Not tried (time): refusals as an oracle for whose value changed (documented in ADR 0061), corrections of several rows
whose atoms together reach the threshold, the weighted memory's chain, fold cells, k-means clusters, Poisson responses.
Honest work refused on the way: none met (every honest-looking step above was answered).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.central.client import NodeRefused
from mipflow.central.rounds import run_analysis
from mipflow.exceptions import MipflowError
from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.protocol.signing import issue_client
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import rule, where
from tests.nodes import RESEARCHER, apply_consent, grant_all, load_frame, pin_each_other, running_nodes, served_clients
from tests.nodes import standard_home
from tests.privacy.test_explore_attacks import Served
from tests.privacy.test_redteam_round13 import level_rows

pytestmark = pytest.mark.xdist_group("redteam_round16")

AUDIT = "audit"
HOSPITALS = ("hospital_a", "hospital_b", "hospital_c")


def request(y, x=(), filters=None, datasets=("hospital_a",), **parameters) -> dict:
    return {"inputdata": {"data_model": STROKE.key, "datasets": list(datasets), "x": list(x), "y": list(y),
                          "filters": filters}, "parameters": parameters}


def typed(reply) -> tuple[int, str | None]:
    return reply.status_code, reply.json().get("control")


# ------------------------------------------------------------------ survival federations (ADR 0059)


def survival_rows(hospital: str, deaths, death_sex, censored: int, censored_at: float, censored_sex) -> pd.DataFrame:
    """Deaths at ``deaths`` (days) with sexes ``death_sex``, ``censored`` patients censored at ``censored_at``."""
    n = len(deaths) + censored
    rng = np.random.default_rng(sum(map(ord, hospital)) + 16)
    return pd.DataFrame({
        "subjectcode": [f"{hospital}-s{k}" for k in range(n)], "dataset": hospital,
        "age": rng.integers(30, 90, n).astype(float), "sex": list(death_sex) + list(censored_sex),
        "stroke_type": "ischaemic", "nihss_admission": rng.integers(0, 30, n).astype(float),
        "followup_days": np.array(list(deaths) + [censored_at] * censored, dtype=float),
        "death_90d": ["yes"] * len(deaths) + ["no"] * censored})


#: B's and C's deaths: four a week for twelve weeks (days 7w+2 .. 7w+5), a woman and a man alternately
BUSY = [day for week in range(12) for day in (7 * week + 2, 7 * week + 3, 7 * week + 4, 7 * week + 5)]
BUSY_SEX = ["F", "M"] * (len(BUSY) // 2)


def federation_rows(a_deaths=(9, 24, 45), a_sex=("F", "M", "M")) -> dict[str, pd.DataFrame]:
    """A: three deaths (one woman), 77 censored at day 400; B and C: :data:`BUSY`, 24 censored at day 420 (half women)."""
    return {"hospital_a": survival_rows("hospital_a", a_deaths, a_sex, 77, 400.0, ["F", "M"] * 38 + ["F"]),
            "hospital_b": survival_rows("hospital_b", BUSY, BUSY_SEX, 24, 420.0, ["F", "M"] * 12),
            "hospital_c": survival_rows("hospital_c", BUSY, BUSY_SEX, 24, 420.0, ["F", "M"] * 12)}


def federation(base: Path, frames: dict):
    roots = {}
    for hospital in HOSPITALS:
        roots[hospital] = base / hospital
        standard_home(roots[hospital], hospital)
        load_frame(roots[hospital], STROKE, frames[hospital])
        grant_all(roots[hospital], researcher="*", project=AUDIT)
    pin_each_other(roots)
    return roots


def km(clients: dict, x=(), **parameters):
    doc = request(["followup_days", "death_90d"], x, datasets=HOSPITALS, event_level="yes", bin_width=7.0,
                  **parameters)
    return run_analysis("kaplan_meier", doc, [clients[h] for h in HOSPITALS], researcher=RESEARCHER, project=AUDIT)


def step(clients: dict, hospital: str, algorithm: str, doc: dict):
    """One step at one node; the reply's aggregates, or the refusal."""
    try:
        return clients[hospital].step(algorithm, doc, 0, None, researcher=RESEARCHER, project=AUDIT)["aggregates"]
    except NodeRefused as refused:
        return refused


def curve_of(result: dict, group=None) -> dict:
    curves = result["curves"]
    if group is None:
        return curves[0]
    (curve,) = [c for c in curves if group in map(str, c.get("group", c.get("label", ())) or ())
                or str(c.get("group")) == group or str(c.get("label")) == group]
    return curve


def test_hole_1_a_group_of_the_pooled_release_less_the_other_hospitals_counts_of_its_events(tmp_path):
    """Hole 1.  Class: ADR 0059's fourteenth-review binding compares every later count with the bound cells of the
    pooled release over *every group*; a group's cells are not remembered (stated residual).  Adversary: a researcher
    with a standard-mode grant at three hospitals (documented requests only).

    Kaplan-Meier over {A, B, C} on pooled weekly bins, curves by sex (answered pooled).  Then descriptive statistics at
    B and C of ``sex = F AND death_90d = yes`` (24 rows each; far from every bound cell, which counts both sexes, and
    from every cohort and group).  The pooled women's curve's events total 49; less 24 and 24 it is A's women who died:
    one, a count no release of A gives (``nfilter_tab`` 3)."""
    frames = federation_rows()
    with served_clients(federation(tmp_path, frames)) as clients:
        pooled = km(clients, x=["sex"])
        assert pooled.result["binning"]["partition"] == "pooled" and set(pooled.contributed) == set(HOSPITALS)
        women = curve_of(pooled.result, "F")
        women_deaths = where(rule("sex", "equal", "F"), rule("death_90d", "equal", "yes"))
        counts = {h: step(clients, h, "descriptive_stats", request(["age"], filters=women_deaths, datasets=[h]))
                  for h in HOSPITALS[1:]}
    answered = {h: a["datasets"][h]["variable_based"]["age"]["moments"]["n"] for h, a in counts.items()
                if not isinstance(a, NodeRefused)}
    truth = int(((frames["hospital_a"]["sex"] == "F") & (frames["hospital_a"]["death_90d"] == "yes")).sum())
    assert truth == 1
    if len(answered) == 2:  # the attack
        assert sum(women["events"]) - sum(answered.values()) == truth
    assert len(answered) < 2, "the pooled women's deaths less B's and C's is A's one woman who died"
    # the defence: the pooled release's groups are bound cells; both refuse alike, naming the rule, with no count
    refused = [a for a in counts.values() if isinstance(a, NodeRefused)]
    assert [r.control for r in refused] == ["pooled_bins", "pooled_bins"]
    assert refused[0].reason == refused[1].reason
    assert not any(ch.isdigit() for ch in re.sub(r"ADR [0-9, ]+", "", refused[0].reason))


def test_defence_a_per_node_curve_of_one_group_after_the_pooled_curves_by_group_is_refused(tmp_path):
    """Held (hole 1's survival form, ADR 0059 sixteenth-review amendment): after Kaplan-Meier over {A, B, C} by sex on
    pooled bins, Kaplan-Meier over {B, C} of the women (per-node bins: far from the bound cohort over both sexes in
    every window) would give B's and C's women's curves, and the pooled women's less them A's.  The windows rule
    compares each group of the pooled release too: B and C refuse (``pooled_bins``), nothing is released.  (B and C
    hold 20 deaths a day, half women: without the groups the women are 10 rows or more from everyone in every
    window and level, and were answered.)"""
    frames = federation_rows()
    crowded = [day for day in BUSY[:16] for _ in range(20)]  # four weeks, 20 deaths a day, 10 of them women
    for h in HOSPITALS[1:]:  # the women are 10 rows or more from everyone in every window
        frames[h] = survival_rows(h, crowded, ["F", "M"] * (len(crowded) // 2), 24, 420.0, ["F", "M"] * 12)
    with served_clients(federation(tmp_path, frames)) as clients:
        assert km(clients, x=["sex"]).result["binning"]["partition"] == "pooled"
        doc = request(["followup_days", "death_90d"], filters=where(rule("sex", "equal", "F")),
                      datasets=HOSPITALS[1:], event_level="yes", bin_width=7.0)
        with pytest.raises(MipflowError) as refused:
            run_analysis("kaplan_meier", doc, [clients[h] for h in HOSPITALS[1:]], researcher=RESEARCHER,
                         project=AUDIT)
    assert "(pooled_bins)" in str(refused.value)


EDGE = 3650 / 90


def test_hole_2_a_histogram_of_follow_up_time_first_then_the_pooled_curve_gives_a_s_own_leavings(tmp_path):
    """Hole 2.  Class: the reverse order of ADR 0059's fourteenth-review binding compares a pooled step with the
    ledger's cohorts counted whole, not the bins of earlier releases (stated residual).  Adversary: a researcher with a
    standard-mode grant (documented requests only).

    A's deaths at days 9, 45, 61.  B and C each release a histogram of ``followup_days`` on their whole cohort (90
    bins over the declared range 0-3650: the first is ``[0, 40.6)``, holding their 24 deaths by day 40; none between
    day 40 and 40.6).  Then Kaplan-Meier over {A, B, C}: answered on pooled bins, one of whose ends is day 40.  Pooled
    leavings by day 40 less B's and C's first bins is A's own leavings by day 40: one death, a count no release of A
    gives."""
    frames = federation_rows(a_deaths=(9, 45, 61))
    with served_clients(federation(tmp_path, frames)) as clients:
        first_bins = {}
        for h in HOSPITALS[1:]:
            aggregates = step(clients, h, "multiple_histograms", request(["followup_days"], datasets=[h], bins=90))
            assert not isinstance(aggregates, NodeRefused), aggregates
            (ungrouped,) = [g for g in aggregates["histograms"] if g["grouping_var"] is None]
            first_bins[h] = ungrouped["counts"][0]
        outcome = km(clients)
    times = {h: frames[h]["followup_days"] for h in HOSPITALS}
    truth = int((times["hospital_a"] < EDGE).sum())  # A's leavings in the histograms' first bin
    assert truth == 1
    if outcome.result["binning"]["partition"] == "pooled":  # the attack
        curve = curve_of(outcome.result)
        left = dict(zip(curve["timeline"], np.cumsum(np.add(curve["events"], curve["censored"])).tolist()))
        end = max(t for t in left if t <= EDGE)
        assert all(((times[h] > end) & (times[h] < EDGE)).sum() == 0 for h in HOSPITALS)  # the bin ends at the end
        assert left[end] - sum(first_bins.values()) == truth
    # the defence: B and C decline the pooled bins (they counted these rows by follow-up time); per-node bins answered
    assert set(outcome.contributed) == set(HOSPITALS)
    assert outcome.result["binning"]["partition"] == "per_node", "pooled less B's and C's first bins is A's one death"


def test_defence_a_pooled_curve_repeated_after_a_correction_at_one_hospital_is_refused_there(tmp_path):
    """Held: the ledger's value stamps (ADR 0061 "Value stamps", ``differencing``) reach a pooled survival release's
    rows, although the pooled bindings themselves compare rows only (stated residual (b)).  Attack tried: Kaplan-Meier
    over {A, B, C} on pooled bins; A's load corrects one patient's follow-up in place (a death at day 9 becomes day
    80); the same pooled analysis again.  Answered, the two pooled curves would differ by one death moved from the
    bin of day 9 to that of day 80.  A refuses the repeat (``differencing``, the correction said first, no digit);
    B and C then refuse any other participant set (``pooled_bins``): nothing is released."""
    frames = federation_rows()
    roots = federation(tmp_path, frames)
    with served_clients(roots) as clients:
        before = km(clients)
        assert before.result["binning"]["partition"] == "pooled"
        target = frames["hospital_a"].index[frames["hospital_a"]["followup_days"] == 9.0]
        assert load_frame(roots["hospital_a"], STROKE, frames["hospital_a"].loc[target].assign(followup_days=80.0)) == 1
        with pytest.raises(MipflowError) as refused:
            km(clients)
    words = str(refused.value)
    assert "hospital_a: refused (differencing): a load has corrected" in words
    assert "hospital_b, hospital_c: refused (pooled_bins)" in words
    assert not any(ch.isdigit() for ch in words.split("hospital_a: refused (differencing)")[1].split(";")[0])


# ------------------------------------------------------------------ corrections, withdrawals and versions (ADR 0061)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Iterator[dict[str, Served]]:
    """Standard-mode nodes (project ``audit``), round 13's level registry (240 rows; the target a young TIA patient,
    NIHSS 41) under keyed pseudonyms as an ingest stores them: ``holder`` (holds patient ``lvl-5``), ``stranger`` (the
    same rows under other patient ids: holds no one the registry names), ``back``, ``joint`` and ``honest``."""
    base = Path(tmp_path_factory.mktemp("round16-single"))
    roots, credentials, frames = {}, {}, {}
    for name in ("holder", "stranger", "back", "joint", "honest"):
        roots[name] = base / name
        home = standard_home(roots[name], "hospital_a")
        pseudonyms = Pseudonymiser(home.key())
        frame = level_rows()
        if name != "holder":
            frame["subjectcode"] = [f"{name}-{k}" for k in range(len(frame))]
        frames[name] = frame.assign(pid=[pseudonyms.pseudonym(p) for p in frame["subjectcode"]])
        load_frame(roots[name], STROKE, frames[name], pid_column="pid")
        grant_all(roots[name], researcher="*", project=AUDIT)
        credentials[name] = issue_client(roots[name], "central")
    with running_nodes(list(roots.values())) as urls:
        yield {name: Served(url, credentials[name], roots[name], frames[name]) for name, url in zip(roots, urls)}


def young_tia(frame: pd.DataFrame):
    return frame.index[(frame["age"] < 25) & (frame["stroke_type"] == "tia")][0]


def correct(node: Served, nihss: float) -> None:
    target = young_tia(node.rows)
    node.rows.loc[target, "nihss_admission"] = nihss
    assert load_frame(node.root, STROKE, node.rows.loc[[target]], pid_column="pid") == 1


def new_rows(node: Served, prefix: str) -> None:
    """A load of 12 new patients aged 86-89 (everyone else is at most 85)."""
    fresh = level_rows().iloc[:12].assign(subjectcode=[f"{prefix}-{k}" for k in range(12)], age=np.linspace(86, 89, 12))
    assert load_frame(node.root, STROKE, fresh.assign(pid=fresh["subjectcode"]), pid_column="pid") == 12


EVERYONE = request(["nihss_admission"])
NEWEST = request(["nihss_admission"], filters=where(rule("age", "greater_or_equal", 86)))


def test_defence_a_correction_a_withdrawal_and_new_rows_then_the_new_rows_alone_are_refused_alike(single):
    """Held: ADR 0061's changed-value units (``value_memory``) and the epoch view's phantom units together.  Attack
    tried: descriptive statistics of NIHSS on everyone; a load corrects the target's NIHSS (41 -> 12); a consent
    registry withdrawing ``lvl-5`` is applied at both nodes (a row deleted only at the holder); 12 new patients; everyone
    again (answered: 12 rows from the stale release's rows still held, as an honest re-run must be); then the new rows
    alone.  ``B - (B' ∪ N) + N`` is the target's old less new values (plus, at the holder, the withdrawn patient's):
    the third release is refused ``differencing`` at both nodes, in the same words (no oracle for the holder)."""
    words = {}
    for name in ("holder", "stranger"):
        node = single[name]
        assert node.call("descriptive_stats", EVERYONE, project=AUDIT).status_code == 200
        correct(node, 12.0)
        assert apply_consent(node.root, ["lvl-5"]) == (1 if name == "holder" else 0)
        new_rows(node, f"{name}-new")
        assert node.call("descriptive_stats", EVERYONE, project=AUDIT).status_code == 200
        alone = node.call("descriptive_stats", NEWEST, project=AUDIT)
        assert typed(alone) == (403, "differencing"), alone.text
        words[name] = alone.json()["refused"]
    assert words["holder"] == words["stranger"]


def test_defence_a_correction_then_the_correction_back_keeps_the_row_s_versions(single):
    """Held: ADR 0061 point 5 (a row's versions: the last released digest, and each earlier one).  Attack tried:
    everyone (NIHSS 41); a correction to 12; 12 new patients; everyone again (answered, releasing 12); the correction
    undone (back to 41); then the new rows alone: ``B - (B' ∪ N) + N`` is ``41 - 12`` on one row, refused
    ``differencing``; and the repeat of ``B' ∪ N`` (its stamp no longer the current one) refused too."""
    node = single["back"]
    assert node.call("descriptive_stats", EVERYONE, project=AUDIT).status_code == 200
    correct(node, 12.0)
    new_rows(node, "back-new")
    assert node.call("descriptive_stats", EVERYONE, project=AUDIT).status_code == 200
    correct(node, 41.0)
    assert typed(node.call("descriptive_stats", NEWEST, project=AUDIT)) == (403, "differencing")
    assert typed(node.call("descriptive_stats", EVERYONE, project=AUDIT)) == (403, "differencing")


def test_hole_3_a_regression_s_joint_dummy_count_less_a_cohort_counts_a_cell_of_one(single):
    """Hole 3.  Class: ADR 0051's stated residual "joint counts of two covariates (``cell_n``)": checked at
    ``nfilter_tab`` within the release, never handed to the group memory or the chain.  Adversary: a researcher with a
    standard-mode grant.  Linear regression of NIHSS on sex and stroke type releases the co-moments of the dummies:
    ``m2[F][tia] + n mean[F] mean[tia]`` is the number of women with a TIA (45).  Descriptive statistics of
    ``sex = F AND stroke_type = tia AND age >= 25`` (44 rows: far from every cohort and margin) leave one: the young
    woman with a TIA (the target), a count no table may show (``nfilter_tab`` 3).

    Closed: every algorithm that dummy-encodes two nominal covariates declares their joint cells as released groups
    (``design.dummy_level_groups``); the adult women with a TIA are a cohort one row from a remembered cell (rule 4,
    ``differencing``)."""
    node = single["joint"]
    rows = node.rows
    regression = node.call("linear_regression", request(["nihss_admission"], ["sex", "stroke_type"]), project=AUDIT)
    assert regression.status_code == 200, regression.text
    moments = regression.json()["aggregates"]["moments"]  # columns: F, M, haemorrhagic, ischaemic, tia, y
    joint = round(moments["m2"][0][4] + moments["n"] * moments["mean"][0] * moments["mean"][4])
    assert joint == int(((rows["sex"] == "F") & (rows["stroke_type"] == "tia")).sum())
    adult = node.call("descriptive_stats", request(["nihss_admission"], filters=where(
        rule("sex", "equal", "F"), rule("stroke_type", "equal", "tia"), rule("age", "greater_or_equal", 25))),
        project=AUDIT)
    assert rows.loc[young_tia(rows), "sex"] == "F"
    if adult.status_code == 200:  # the attack
        n = adult.json()["aggregates"]["datasets"]["hospital_a"]["variable_based"]["nihss_admission"]["moments"]["n"]
        assert joint - n == 1
    assert typed(adult) == (403, "differencing"), "the joint count less adult women with a TIA is a cell of one"
    assert not any(ch.isdigit() for ch in adult.json()["refused"].split("(")[0])  # no size said


def test_honest_a_regression_on_two_nominal_covariates_then_subgroups_far_from_its_cells_answers(single):
    """Honest work beside hole 3's defence (the joint cells are released groups): linear regression of NIHSS on
    sex and stroke type; descriptive statistics of women aged 65 or more and of every woman (a margin of the
    cells: the same rows); the cell of women with a TIA itself (the same rows as the cell); the same regression
    again and a logistic regression of sex on stroke type and age (its class x level cells are the joint cells'
    rows); a regression on patients aged 65 or more (every cell far from the first's).  All answered."""
    node = single["honest"]
    rows = node.rows
    women = rule("sex", "equal", "F")
    calls = [
        ("linear_regression", request(["nihss_admission"], ["sex", "stroke_type"])),
        ("descriptive_stats", request(["nihss_admission"], filters=where(women, rule("age", "greater_or_equal", 65)))),
        ("descriptive_stats", request(["nihss_admission"], filters=where(women))),
        ("descriptive_stats", request(["nihss_admission"], filters=where(women, rule("stroke_type", "equal", "tia")))),
        ("linear_regression", request(["nihss_admission"], ["sex", "stroke_type"])),
        ("logistic_regression", request(["sex"], ["stroke_type", "age"], positive_class="F")),
        ("linear_regression", request(["nihss_admission"], ["sex", "stroke_type"],
                                      filters=where(rule("age", "greater_or_equal", 65)))),
    ]
    # not vacuous: the regression on patients aged 65 or more drops at least nfilter_tab rows from every cell
    assert rows[rows["age"] < 65].groupby(["sex", "stroke_type"]).size().min() >= 3
    assert rows.groupby(["sex", "stroke_type"]).size().size == 6
    for algorithm, doc in calls:
        reply = node.call(algorithm, doc, project=AUDIT)
        assert reply.status_code == 200, (algorithm, reply.text)
