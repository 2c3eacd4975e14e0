"""A fourteenth outside review, from the documents only: the newest controls (ADR 0055-0061) and classes not tried yet.

The reviewer read README.md, docs/privacy.md and docs/adr/*.md, and the test harness (``tests/nodes.py``,
``tests/privacy/conftest.py``, rounds 12-13); not ``plugins/mipflow``.  Every attack runs through real node processes
(``mipflow node serve`` on loopback) with the shipped thresholds (``min_row_count`` 10, ``nfilter_tab`` 3, differencing
and query budgets on); standard mode is the admin's documented choice per node (``standard_home``), explore projects
are enabled per project (``modes.enable``) or are the shipped default (``NodeHome.init``).

``test_hole_*`` are strict xfails: the attack runs, computes the recovered value against the truth, and its last
assertion is the condition that would hold if the defence held.  ``test_defence_*`` pass while a control holds,
naming it.  ``test_honest_*`` is an honest clinician's session.

Found (holes):

1. **A pooled survival release less a non-survival count of the other hospitals' rows in a window of time**
   (**closed**: every release is read as counts of the sets of rows it lets anyone form, ADR 0059's fourteenth-review
   amendment).  ADR
   0059 (and its thirteenth-review amendment) binds a cohort released on pooled bins against every later *survival*
   release (Kaplan-Meier, Cox) near it in some window of follow-up.  A count is a count whatever algorithm releases
   it: descriptive statistics at B and C of ``death_90d = yes AND followup_days <= e`` (a pooled end) give B's and
   C's deaths by ``e`` exactly; the pooled cumulative events at ``e`` less those is A's own deaths by ``e``: one
   death, which no release of A shows (A's own bins merge its three deaths).
2. **The cohort side of the group memory takes no consent epoch** (ADR 0061's listed residual, made concrete):
   a one-way ANOVA's TIA group is released at two hospitals; a TIA patient withdraws at every hospital; descriptive
   statistics of ``stroke_type = tia`` are refused (``differencing``) where she was (her group less the cohort is
   her) and answered where she never was.  Which node refuses names the hospital that treated her.  **Closed**
   (ADR 0061, amendment "one view of the epochs"): every memory's rule sees a set of an earlier consent epoch
   through one helper (``node/controls/epochs.py``): its rows still held, the same rows again near too, so both
   hospitals refuse alike, in the same words, and answer alike once new rows are loaded.
3. **The approximate metadata count is keyed by the count** (ADR 0038's review fix against ADR 0059 section 2):
   after a network-wide withdrawal the published count can move only where someone was deleted; where no one was,
   it never moves.  Uncharged, and a move is certain evidence (the non-holder's count cannot move); for one
   withdrawn patient of 120 rows the holder's value moves for about 1 key in 3 (0.34 over 2000 keys, measured).
   **Closed**: the draw is keyed by the consent epoch too, so every node applying the registry redraws.

Held (defences): equivalent rewrites of one explore cohort draw fresh noise (no cell key), each charged, and the
project's explore budget ends the averaging at 50 releases (a count then known to about 0.3 rows: ADR 0032's
documented bound, quantified from the replies' own labels); the explore label (noise sds, decision block, interval
inputs) is the same bytes for a cohort with and without the target (only the numbers and the running ``spent``
differ).
Honest work: an explore-mode clinician's session at three default nodes (keys pinned by the admins: without it the
masked regression and correlation are refused ``secure_aggregation`` at every node) is answered; the exact analyses a
clinician also wants (logistic and Cox regression) are refused naming the study protocol (ADR 0038, by design).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.central.client import NodeRefused
from mipflow.central.rounds import run_analysis
from mipflow.exceptions import MipflowError
from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.node.home import NodeHome
from mipflow.node.ingest.capture import ConsentRegistry
from mipflow.node.ingest.pipeline import apply_withdrawals
from mipflow.node.store.feature_store import FeatureStore
from mipflow.protocol.signing import issue_client
from tests.mipflow.algorithms.survival_data import STROKE, make_stroke
from tests.mipflow.node.controls.study_helpers import rule, stroke_rows, where
from tests.nodes import RESEARCHER, grant_all, load_frame, pin_each_other, running_nodes, served_clients
from tests.nodes import standard_home
from tests.privacy.test_explore_attacks import Served

pytestmark = pytest.mark.xdist_group("redteam_round14")

AUDIT, BROWSE, LABELS, CLINIC = "audit", "browse", "labels", "clinic"
HOSPITALS = ("hospital_a", "hospital_b", "hospital_c")


def request(y, x=(), filters=None, datasets=("hospital_a",), **parameters) -> dict:
    return {"inputdata": {"data_model": STROKE.key, "datasets": list(datasets), "x": list(x), "y": list(y),
                          "filters": filters}, "parameters": parameters}


def typed(reply) -> tuple[int, str | None]:
    return reply.status_code, reply.json().get("control")


def withdraw(root: Path, people) -> int:
    """Apply a consent registry listing ``people`` as withdrawn (the path of every ingest)."""
    path = root / "consent.csv"
    path.write_text("patient_id,consent\n" + "".join(f"{person},withdrawn\n" for person in people))
    store = FeatureStore(NodeHome(root).db_url)
    try:
        return apply_withdrawals(store, ConsentRegistry.load(path), NodeHome(root).key())
    finally:
        store.dispose()


# ------------------------------------------------------------------ hole 1: pooled bins less a windowed count

#: hospital_a's deaths (days): its own per-node release merges them into one bin
A_DEATHS = (9, 24, 45)


def survival_rows(hospital: str, deaths, censored: int, censored_at: float) -> pd.DataFrame:
    n = len(deaths) + censored
    rng = np.random.default_rng(sum(map(ord, hospital)) + 14)
    return pd.DataFrame({
        "subjectcode": [f"{hospital}-s{k}" for k in range(n)], "dataset": hospital,
        "age": rng.integers(30, 90, n).astype(float), "sex": rng.choice(["F", "M"], n), "stroke_type": "ischaemic",
        "nihss_admission": rng.integers(0, 30, n).astype(float),
        "followup_days": np.array(list(deaths) + [censored_at] * censored, dtype=float),
        "death_90d": ["yes"] * len(deaths) + ["no"] * censored})


@pytest.fixture(scope="module")
def survival(tmp_path_factory) -> Iterator[tuple[dict, dict, object]]:
    """Three standard-mode hospitals pinned to each other (project ``audit``).  B and C: four deaths a week for
    twelve weeks, 12 censored at day 420; A: 80 patients, deaths at days 9, 24, 45, 77 censored at day 400 (enough
    rows that its honest subgroups are far apart).  Yields the clients, the frames and the pooled Kaplan-Meier over
    the three (the bound release)."""
    base = Path(tmp_path_factory.mktemp("round14-survival"))
    busy = [day for week in range(12) for day in (7 * week + 2, 7 * week + 3, 7 * week + 4, 7 * week + 5)]
    frames = {"hospital_a": survival_rows("hospital_a", A_DEATHS, 77, 400.0),
              "hospital_b": survival_rows("hospital_b", busy, 12, 420.0),
              "hospital_c": survival_rows("hospital_c", busy, 12, 420.0)}
    roots = {}
    for hospital in HOSPITALS:
        roots[hospital] = base / hospital
        standard_home(roots[hospital], hospital)
        load_frame(roots[hospital], STROKE, frames[hospital])
        grant_all(roots[hospital], researcher="*", project=AUDIT)
    pin_each_other(roots)
    with served_clients(roots) as clients:
        pooled = km(clients, HOSPITALS)
        assert pooled.result["binning"]["partition"] == "pooled" and set(pooled.contributed) == set(HOSPITALS)
        yield clients, frames, pooled


def km(clients: dict, hospitals, filters=None, **parameters):
    doc = request(["followup_days", "death_90d"], filters=filters, datasets=hospitals, event_level="yes",
                  bin_width=7.0, **parameters)
    return run_analysis("kaplan_meier", doc, [clients[h] for h in hospitals], researcher=RESEARCHER, project=AUDIT)


def cumulative_events(result: dict) -> dict[float, float]:
    curve = result["curves"][0]
    return dict(zip(curve["timeline"], np.cumsum(curve["events"]).tolist()))


def deaths_by(end: float) -> dict:
    return where(rule("death_90d", "equal", "yes"), rule("followup_days", "less_or_equal", float(end)))


def refused_counts(clients: dict, algorithm: str, docs: dict, count) -> tuple[dict, dict]:
    """Ask ``algorithm`` at B and C (``docs``: hospital -> request document); their counts (``count(reply)``)
    where answered, their refusals (``NodeRefused``) where not."""
    counts, refusals = {}, {}
    for hospital, doc in docs.items():
        try:
            reply = clients[hospital].step(algorithm, doc, 0, None, researcher=RESEARCHER, project=AUDIT)
        except NodeRefused as refused:
            refusals[hospital] = refused
            continue
        counts[hospital] = count(reply["aggregates"], hospital)
    return counts, refusals


def assert_pooled_count_refusal(refusals: dict, frames: dict) -> None:
    """Both B and C refuse with ``pooled_bins``, and the message says what to do without a count of the rows."""
    assert set(refusals) == set(HOSPITALS[1:]), refusals
    for hospital, refused in refusals.items():
        assert refused.control == "pooled_bins" and refused.status == 403, refused
        assert "fourteenth-review" in refused.reason and "explore mode" in refused.reason
        assert "as a whole or by a variable other than its follow-up time" in refused.reason
        sizes = {str(n) for n in (len(frames[hospital]), (frames[hospital]["death_90d"] == "yes").sum())}
        assert not any(f" {n} " in refused.reason for n in sizes), refused.reason


def test_hole_1_closed_pooled_bins_less_a_descriptive_count_of_the_other_hospitals_deaths_in_a_window(survival):
    """Hole 1 (closed).  Class: a pooled-threshold release (ADR 0052) beside a release in the clear of part of the
    pool (ADR 0027's precondition), where the binding (ADR 0059, windows amendment) watched survival releases only.
    Adversary: a researcher through the honest central site (documented requests), or the central site.

    The bound release: Kaplan-Meier over {A, B, C} on pooled weekly bins.  Then descriptive statistics at B and C of
    their deaths up to a pooled end ``e`` (a cohort of 12 rows each: far by rows from everything answered; not a
    survival release).  Pooled cumulative events at ``e`` less B's and C's ``n`` would be A's deaths by ``e`` (one).
    Control: every release is read as counts of the sets of rows it lets anyone form, compared with the bound rows of
    every window and level of the pooled release (``node/controls/pooled_counts.py``, ADR 0059 fourteenth-review
    amendment): B's deaths by ``e`` are the bound cell (window ``(-inf, e]``, level ``yes``) exactly."""
    clients, frames, pooled = survival
    events = cumulative_events(pooled.result)
    deaths = {h: frames[h].query("death_90d == 'yes'")["followup_days"] for h in HOSPITALS}
    # the first pooled end by which B and C each hold min_row_count deaths (so their counts would be answered)
    end = min(t for t in events if (deaths["hospital_b"] <= t).sum() >= 10)
    truth = int((deaths["hospital_a"] <= end).sum())
    assert truth == 1  # the cell the attack is after: A's one death by the end, which no release of A shows
    docs = {h: request(["age"], filters=deaths_by(end), datasets=[h]) for h in HOSPITALS[1:]}
    counts, refusals = refused_counts(
        clients, "descriptive_stats", docs,
        lambda aggregates, h: aggregates["datasets"][h]["variable_based"]["age"]["moments"]["n"])
    if len(counts) == 2:  # what the defence prevents
        pytest.fail(f"answered: pooled less B and C recovers {events[end] - sum(counts.values())} (truth {truth})")
    assert_pooled_count_refusal(refusals, frames)


def test_defence_a_histogram_of_follow_up_time_at_the_other_hospitals_is_refused_after_pooled_bins(survival):
    """Hole 1, the time variable's variant.  A histogram of ``followup_days`` on B's and C's *whole* cohorts (the bound
    rows themselves: as a set, a repeat whose size the pooled release gave per node) in 10 bins over the declared
    range: its first bin ``[0, 365)`` holds B's rows leaving by the last pooled end before it (B has none between),
    and pooled cumulative leavings there less B's and C's first bins would be A's own leavings by that end, A's part
    of a pooled window that the pooled release never shows.  Control ``pooled_bins``: a release using the pooled
    release's time variable is compared window by window (its bins may end anywhere: every point of the fine grid)."""
    clients, frames, pooled = survival
    curve = pooled.result["curves"][0]
    left = dict(zip(curve["timeline"], np.cumsum(np.add(curve["events"], curve["censored"])).tolist()))
    edge = 3650 / 10
    end = max(t for t in left if t <= edge)
    times = {h: frames[h]["followup_days"] for h in HOSPITALS}
    assert all(((times[h] > end) & (times[h] < edge)).sum() == 0 for h in HOSPITALS)  # the bin ends at the end
    truth = int((times["hospital_a"] <= end).sum())
    assert 0 < truth < 10  # A's part of the pooled window: below min_row_count
    docs = {h: request(["followup_days"], datasets=[h], bins=10) for h in HOSPITALS[1:]}
    counts, refusals = refused_counts(clients, "multiple_histograms", docs,
                                      lambda aggregates, h: aggregates["histograms"][0]["counts"][0])
    if len(counts) == 2:
        pytest.fail(f"answered: pooled less B and C recovers {left[end] - sum(counts.values())} (truth {truth})")
    assert_pooled_count_refusal(refusals, frames)


def test_defence_a_contingency_table_of_the_early_leavers_at_the_other_hospitals_is_refused(survival):
    """Hole 1, the contingency variant.  ``death_90d x stroke_type`` at B and C on ``followup_days <= e`` (every
    patient's stroke ischaemic: one column, no small cell): the ``yes`` cell is B's and C's deaths by ``e``; the cohort itself is the bound rows leaving by ``e``.  Control
    ``pooled_bins`` (the cohort and its level ``yes`` are bound cells)."""
    clients, frames, pooled = survival
    events = cumulative_events(pooled.result)
    deaths = {h: frames[h].query("death_90d == 'yes'")["followup_days"] for h in HOSPITALS}
    end = min(t for t in events if (deaths["hospital_b"] <= t).sum() >= 10)
    early = where(rule("followup_days", "less_or_equal", float(end)))
    docs = {h: request(["death_90d"], ["stroke_type"], filters=early, datasets=[h]) for h in HOSPITALS[1:]}
    counts, refusals = refused_counts(clients, "contingency_table", docs, lambda aggregates, h: aggregates)
    if len(counts) == 2:
        pytest.fail("answered: the yes cell at B and C subtracts from the pooled deaths by the end")
    assert_pooled_count_refusal(refusals, frames)


def test_defence_a_count_first_makes_the_pooled_kaplan_meier_fall_back_to_per_node_bins(tmp_path):
    """Hole 1 in the reverse order: B and C answer descriptive statistics of their deaths by day 20 first (12 rows
    each), then Kaplan-Meier over {A, B, C}.  On pooled bins ending at day 20, pooled less those counts would be A's
    deaths by then; B and C decline pooled bins (their rows in the window ``(-inf, 20]``, level ``yes``, are a cohort
    they counted: ``pooled_windows._decline_near_counts``) and the analysis is answered on per-node bins."""
    busy = [day for week in range(12) for day in (7 * week + 2, 7 * week + 3, 7 * week + 4, 7 * week + 5)]
    frames = {"hospital_a": survival_rows("hospital_a", A_DEATHS, 77, 400.0),
              "hospital_b": survival_rows("hospital_b", busy, 12, 420.0),
              "hospital_c": survival_rows("hospital_c", busy, 12, 420.0)}
    roots = {}
    for hospital in HOSPITALS:
        roots[hospital] = tmp_path / hospital
        standard_home(roots[hospital], hospital)
        load_frame(roots[hospital], STROKE, frames[hospital])
        grant_all(roots[hospital], researcher="*", project=AUDIT)
    pin_each_other(roots)
    with served_clients(roots) as clients:
        for hospital in HOSPITALS[1:]:
            reply = clients[hospital].step("descriptive_stats", request(["age"], filters=deaths_by(20), datasets=[hospital]),
                                           0, None, researcher=RESEARCHER, project=AUDIT)
            assert reply["aggregates"]["datasets"][hospital]["variable_based"]["age"]["moments"]["n"] == 12
        outcome = km(clients, HOSPITALS)
    assert outcome.result["binning"]["partition"] == "per_node" and set(outcome.contributed) == set(HOSPITALS)


def test_honest_descriptive_statistics_after_a_pooled_kaplan_meier_are_answered(survival):
    """Honest work after the pooled Kaplan-Meier of the same three hospitals: descriptive statistics of age, NIHSS
    and sex on everyone, on the women, and on patients aged 65 or more, over the three hospitals: answered by every
    node, and equal to the pooled truth (the counted sets differ from every bound cell of the pooled release by many
    rows in every window)."""
    clients, frames, _ = survival
    rows = pd.concat(frames.values(), ignore_index=True)
    subsets = {"everyone": (None, rows), "women": (where(rule("sex", "equal", "F")), rows[rows["sex"] == "F"]),
               "elderly": (where(rule("age", "greater_or_equal", 65.0)), rows[rows["age"] >= 65])}
    for name, (filters, truth) in subsets.items():
        doc = request(["age", "nihss_admission", "sex"], filters=filters, datasets=HOSPITALS)
        outcome = run_analysis("descriptive_stats", doc, [clients[h] for h in HOSPITALS], researcher=RESEARCHER,
                               project=AUDIT)
        assert set(outcome.contributed) == set(HOSPITALS) and not outcome.excluded, (name, outcome.excluded)
        pooled = {(r["variable"], r["dataset"]): r["data"] for r in outcome.result["variable_based"]}
        age = pooled[("age", "all datasets")]
        assert age["num_dtps"] == len(truth), name
        assert abs(age["mean"] - truth["age"].mean()) <= 1e-9 * truth["age"].mean(), name
        assert pooled[("sex", "all datasets")]["counts"] == truth["sex"].value_counts().to_dict(), name


# --------------------------------------------------------- hole 2: the group memory's cohort side after consent


def level_rows(n: int, dataset: str, prefix: str) -> pd.DataFrame:
    """Stroke types balanced (``n / 3`` each), NIHSS 0-29, everyone complete."""
    frame = stroke_rows(17, n, dataset, prefix)
    rng = np.random.default_rng(17)
    frame["stroke_type"] = np.array(["ischaemic", "haemorrhagic", "tia"])[np.arange(n) % 3]
    frame["age"] = np.round(rng.uniform(30, 85, n), 1)
    frame["nihss_admission"] = rng.integers(0, 30, n).astype(float)
    return frame


@pytest.fixture(scope="module")
def consent_pair(tmp_path_factory) -> Iterator[dict[str, Served]]:
    """Two standard-mode hospitals (project ``audit``), 120 rows each under keyed pseudonyms as an ingest stores
    them: ``holder`` (hospital_a) and ``stranger`` (hospital_b)."""
    base = Path(tmp_path_factory.mktemp("round14-consent"))
    roots, credentials, frames = {}, {}, {}
    for name, hospital in (("holder", "hospital_a"), ("stranger", "hospital_b")):
        roots[name] = base / name
        home = standard_home(roots[name], hospital)
        pseudonyms = Pseudonymiser(home.key())
        frame = level_rows(120, hospital, name[:3])
        frames[name] = frame.assign(pid=[pseudonyms.pseudonym(p) for p in frame["subjectcode"]])
        load_frame(roots[name], STROKE, frames[name], pid_column="pid")
        grant_all(roots[name], researcher="*", project=AUDIT)
        credentials[name] = issue_client(roots[name], "central")
    with running_nodes(list(roots.values())) as urls:
        yield {name: Served(url, credentials[name], roots[name], frames[name]) for name, url in zip(roots, urls)}


def test_hole_3_closed_every_node_applying_a_registry_redraws_its_metadata_count(consent_pair):
    """Hole 3 (closed).  Class: a public effect of applying a consent registry that differs between holder and
    non-holder (ADR 0059 section 2), through ``GET /v1/metadata`` (uncharged).  Keyed by the count alone, the
    published count never moved at a hospital that held no one and moved at a holder whenever the new count's draw
    differed: a move was certain evidence of where the withdrawn patients were treated.  Control: the draw is keyed
    by the node's consent epoch too (``node/controls/metadata_counts.py``), so every node applying the registry
    redraws, holder or not; whether a value moves is then a fresh draw at both (its law at ``n`` and ``n - k``,
    ``mipflow/node/controls/test_metadata_counts.py::test_after_a_registry_a_holder_and_a_non_holder_move_alike``).
    Here, through the node processes: each node publishes the value keyed by its new epoch, and the stranger's value
    is not the one it published before unless its fresh draw happens to round the same (the harness recomputes
    both: ``tests.nodes.published`` reads the home's epoch)."""
    from mipflow.node.controls.metadata_counts import count_key, published_count
    from tests.nodes import published
    from tests.privacy.test_redteam_round2 import metadata

    holder, stranger = consent_pair["holder"], consent_pair["stranger"]
    n = len(holder.rows)
    before = {"hospital_a": metadata(holder, AUDIT)["hospital_a"], "hospital_b": metadata(stranger, AUDIT)["hospital_b"]}
    assert before["hospital_a"] == published(holder.root, STROKE.key, "hospital_a", n)
    assert before["hospital_b"] == published(stranger.root, STROKE.key, "hospital_b", len(stranger.rows))
    people = list(holder.rows[holder.rows["stroke_type"] != "tia"]["subjectcode"].iloc[:2])
    deleted = {name: withdraw(s.root, ["a-stranger-never-treated", *people]) for name, s in consent_pair.items()}
    assert deleted == {"holder": 2, "stranger": 0}
    after = {"hospital_a": metadata(holder, AUDIT)["hospital_a"], "hospital_b": metadata(stranger, AUDIT)["hospital_b"]}
    assert after["hospital_a"] == published(holder.root, STROKE.key, "hospital_a", n - 2)
    assert after["hospital_b"] == published(stranger.root, STROKE.key, "hospital_b", len(stranger.rows))
    # the stranger's count did not change, yet its value is the new epoch's draw, not the old one's
    store = FeatureStore(NodeHome(stranger.root).db_url)
    try:
        epoch = store.consent_applied()
    finally:
        store.dispose()
    assert epoch != ""
    key = count_key(NodeHome(stranger.root).key())
    old = published_count(len(stranger.rows), key=key, data_model=STROKE.key, dataset="hospital_b", min_row_count=10)
    new = published_count(len(stranger.rows), key=key, data_model=STROKE.key, dataset="hospital_b", min_row_count=10,
                          epoch=epoch)
    assert before["hospital_b"] == old and after["hospital_b"] == new


def test_hole_a_cohort_equal_to_a_remembered_group_is_refused_only_where_a_withdrawn_patient_was(consent_pair):
    """Hole 2.  Class: a public effect of applying a consent registry that differs between a holder and a
    non-holder (ADR 0059 section 2's rule; ADR 0061 closed it for the memories' pairwise rules but lists "rule 4 of
    the group memory from the cohort side" as a residual).  Adversary: a researcher in a standard-mode project.

    Both hospitals answer a one-way ANOVA of NIHSS by stroke type (the TIA group, 40 rows, is remembered).  A TIA
    patient of hospital_a withdraws; every registry lists her and a stranger.  Then descriptive statistics of NIHSS
    on ``stroke_type = tia``: where she never was, the cohort is the remembered group (0 rows apart); where she was,
    it is the group less her (1 row).  Closed: both refuse (the group's rows still held, the same rows again), in
    the same words naming what answers it; with 12 new TIA patients loaded at each, both answer."""
    holder = consent_pair["holder"]
    hospital = {"holder": "hospital_a", "stranger": "hospital_b"}
    anova = {n: typed(s.call("anova_oneway", request(["nihss_admission"], ["stroke_type"], datasets=[hospital[n]]),
                             project=AUDIT)) for n, s in consent_pair.items()}
    assert anova == {"holder": (200, None), "stranger": (200, None)}
    person = holder.rows[holder.rows["stroke_type"] == "tia"].iloc[5]["subjectcode"]
    deleted = {n: withdraw(s.root, ["a-stranger-never-treated", person]) for n, s in consent_pair.items()}
    assert deleted == {"holder": 1, "stranger": 0}
    tia = where(rule("stroke_type", "equal", "tia"))
    later = {n: s.call("descriptive_stats", request(["nihss_admission"], filters=tia, datasets=[hospital[n]]),
                       project=AUDIT) for n, s in consent_pair.items()}
    outcome = {n: typed(r) for n, r in later.items()}
    refusing = sorted(hospital[n] for n, (status, _) in outcome.items() if status == 403)
    if refusing == ["hospital_a"]:
        assert outcome["holder"] == (403, "differencing")  # what the researcher reads: she was treated at A
    assert outcome["holder"] == outcome["stranger"], "the refusal tells which hospital held the withdrawn patient"
    # closed (ADR 0061, amended): the remembered TIA group is of an earlier consent epoch at both nodes, so it is
    # compared by its rows still held and the same rows again are refused too -- at both, in the same words
    assert outcome == {"holder": (403, "differencing"), "stranger": (403, "differencing")}
    assert later["holder"].json()["refused"] == later["stranger"].json()["refused"]
    assert "consent registry" in later["holder"].json()["refused"]
    assert "min_row_count new rows" in later["holder"].json()["refused"]  # and what answers it
    # honest work as the refusal says: min_row_count (10) new TIA patients loaded at each hospital, the same
    # question is answered at both (its cohort is 12 rows from the group's rows still held)
    for name, served in consent_pair.items():
        pseudonyms = Pseudonymiser(NodeHome(served.root).key())
        new = level_rows(36, hospital[name], f"{name[:3]}-new")
        new = new[new["stroke_type"] == "tia"]
        assert len(new) == 12
        load_frame(served.root, STROKE, new.assign(pid=[pseudonyms.pseudonym(p) for p in new["subjectcode"]]),
                   pid_column="pid")
    again = {n: typed(s.call("descriptive_stats", request(["nihss_admission"], filters=tia, datasets=[hospital[n]]),
                             project=AUDIT)) for n, s in consent_pair.items()}
    assert again == {"holder": (200, None), "stranger": (200, None)}


# ------------------------------------------------------------------------------ explore: a default node


def explore_rows(seed: int, hospital: str, n: int = 300) -> pd.DataFrame:
    """Complete stroke rows aged 30-85, no one thrombolysed but, at hospital_a, the target (a woman of 18.5)."""
    frame = make_stroke(seed, n + 60).dropna().iloc[:n].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    frame["age"] = np.round(rng.uniform(30, 85, n), 1)
    frame["thrombolysis"] = "no"
    frame["dataset"] = hospital
    frame["subjectcode"] = [f"{hospital}-ex{k}" for k in range(n)]
    if hospital == "hospital_a":
        frame.loc[0, ["age", "sex", "thrombolysis"]] = [18.5, "F", "yes"]
    return frame


@pytest.fixture(scope="module")
def default_nodes(tmp_path_factory) -> Iterator[dict[str, Served]]:
    """Three node homes as shipped (explore mode by default, ``NodeHome.init``), 300 rows each; projects ``browse``,
    ``labels`` and ``clinic`` granted to any researcher id."""
    base = Path(tmp_path_factory.mktemp("round14-explore"))
    roots, credentials, frames = {}, {}, {}
    for i, hospital in enumerate(HOSPITALS):
        roots[hospital] = base / hospital
        NodeHome.init(roots[hospital], hospital)
        frames[hospital] = explore_rows(41 + i, hospital)
        load_frame(roots[hospital], STROKE, frames[hospital])
        for project in (BROWSE, LABELS, CLINIC):
            grant_all(roots[hospital], researcher="*", project=project)
        credentials[hospital] = issue_client(roots[hospital], "central")
    pin_each_other(roots)  # as the hospitals' admins do: masking is automatic from three nodes
    with running_nodes(list(roots.values())) as urls:
        yield {h: Served(url, credentials[h], roots[h], frames[h]) for h, url in zip(HOSPITALS, urls)}


def test_defence_equivalent_explore_cohorts_draw_fresh_noise_each_charged_and_the_project_budget_ends_the_average(
        default_nodes):
    """Held, with a documented residual (ADR 0032: "a cohort written as a logically equivalent but different filter
    is another query (fresh noise, charged); the budget is then the bound").  Class: averaging keyed noise over
    requests that select the same rows (is the noise a cell key of the rows?  No: of the query).

    ``age >= t`` for t = 0, 0.5, 1, ... (every patient is 18.5 or older: the same cohort each time) on the contingency
    table thrombolysis x sex: each rewrite is a new release (fresh noise, charged 1), under fresh researcher ids so
    the person's budget (20) never binds; the project's explore budget (50) refuses the 51st (``dp_budget``).  What
    the 50 buy, from the replies' own labels: the target's cell (one woman thrombolysed) known to sd/sqrt(50)."""
    node = default_nodes["hospital_a"]
    answers, sds, refusal = [], set(), None
    for k in range(60):
        reply = node.call("contingency_table", request(["thrombolysis"], ["sex"],
                                                       filters=where(rule("age", "greater_or_equal", k / 2))),
                          project=BROWSE, researcher=f"r{k}")
        if reply.status_code != 200:
            refusal = (k, typed(reply))
            break
        doc = reply.json()
        assert doc["mode"]["mode"] == "explore" and doc["privacy"]["repeat"] is False
        answers.append(doc["aggregates"])
        sds.add(json.dumps(doc["privacy"]["noise_sd"], sort_keys=True))
    assert refusal == (50, (403, "dp_budget")), refusal  # the project budget: 50 steps of epsilon 1
    # fresh noise every time (a cell key would give one answer; integer cells of sd 2 coincide now and then)
    assert len({json.dumps(a, sort_keys=True) for a in answers}) > 40
    assert len(sds) == 1  # the label is settings only: the same for every rewrite
    spent_eps, releases = node.spent(BROWSE)
    assert releases == 50 and spent_eps == pytest.approx(50.0)
    cell_sd = [v["sd"] for block, v in json.loads(sds.pop()).items() if block != "row_count"][0]
    assert cell_sd / np.sqrt(50) < 0.5  # the residual: averaged, the cell is one patient to about 0.3 rows
    # the averaged cells (layout [F-yes, F-no, M-yes, M-no]) sit where the truth is, within the stated error
    mean = np.mean([a["group_counts"] for a in answers], axis=0)
    truth = [1, (node.rows["sex"] == "F").sum() - 1, 0, (node.rows["sex"] == "M").sum()]
    assert np.all(np.abs(mean - truth) < 6 * cell_sd / np.sqrt(50)), (mean, truth)


def test_defence_the_explore_label_is_the_same_with_and_without_the_target(default_nodes):
    """Held (ADR 0057's intervals are post-processing; the label is settings).  Class: metadata of a perturbed
    release (noise sds per block, the decision count's block, interval inputs, suppressed ranges) as a channel.
    Two cohorts that differ only by the target (``age >= 18`` and ``age >= 19``) get replies whose every field but
    the noisy numbers is the same bytes: layout, ``privacy`` (sds, decision), ``mode``; the numbers differ."""
    node = default_nodes["hospital_a"]
    docs = []
    for lower in (18, 19):
        reply = node.call("descriptive_stats", request(["nihss_admission", "sex"],
                                                       filters=where(rule("age", "greater_or_equal", lower))),
                          project=LABELS, researcher="labels")
        assert reply.status_code == 200, reply.text
        docs.append(reply.json())

    def shape(doc):
        if isinstance(doc, dict):
            return {k: shape(v) for k, v in doc.items()}
        if isinstance(doc, list):
            return [shape(v) for v in doc]
        return type(doc).__name__ if isinstance(doc, (int, float)) and not isinstance(doc, bool) else doc

    first, second = docs
    assert shape(first["aggregates"]) == shape(second["aggregates"])
    for key in ("mode",):
        assert first[key] == second[key]
    assert {k: v for k, v in first["privacy"].items() if k not in ("repeat", "spent")} == \
        {k: v for k, v in second["privacy"].items() if k not in ("repeat", "spent")}
    assert first["aggregates"] != second["aggregates"]


# ------------------------------------------------------------------------------------------ honest work


def test_honest_clinicians_session_at_three_default_nodes_is_answered_and_exact_models_point_to_a_study(
        default_nodes):
    """An honest clinician at three nodes as shipped (explore mode): describes the cohort, histograms NIHSS by sex,
    Kaplan-Meier by sex over the first year (weekly), cross-tabulates 90-day death by sex, regresses NIHSS on age
    and sex, correlates age with NIHSS.  Every analysis is answered by every node, labelled explore, and near the
    pooled truth where checked (the cohort size within the noise; the weekly curve keeps every week).  The two exact
    models a clinician would also ask (logistic regression of death, Cox regression) are refused by the request
    alone (``explore``) with a message naming the study protocol: by design (ADR 0038), reported as honest work
    refused."""
    from mipflow.central.client import NodeClient, NodeEndpoint

    clients = [NodeClient(NodeEndpoint(h, s.url, s.credential.client_id, s.credential.secret.hex()), retries=0)
               for h, s in default_nodes.items()]
    rows = pd.concat([s.rows for s in default_nodes.values()], ignore_index=True)
    one_year = dict(event_level="yes", bin_width=7.0, max_time=365.0)
    session = {
        "describe": ("descriptive_stats", request(["age", "nihss_admission", "sex"], datasets=HOSPITALS)),
        "histogram": ("multiple_histograms", request(["nihss_admission"], ["sex"], datasets=HOSPITALS, bins=10)),
        "survival": ("kaplan_meier", request(["followup_days", "death_90d"], ["sex"], datasets=HOSPITALS, **one_year)),
        "table": ("contingency_table", request(["death_90d"], ["sex"], datasets=HOSPITALS)),
        "regression": ("linear_regression", request(["nihss_admission"], ["age", "sex"], datasets=HOSPITALS)),
        "correlation": ("pearson_correlation", request(["age", "nihss_admission"], datasets=HOSPITALS)),
        "logistic": ("logistic_regression", request(["death_90d"], ["age", "nihss_admission"], datasets=HOSPITALS,
                                                    positive_class="yes")),
        "cox": ("cox_regression", request(["followup_days", "death_90d"], ["age", "nihss_admission"],
                                          datasets=HOSPITALS, event_level="yes")),
    }
    outcomes, results, messages = {}, {}, {}
    try:
        for name, (algorithm, doc) in session.items():
            try:
                outcome = run_analysis(algorithm, doc, clients, researcher="dr_honest", project=CLINIC)
            except MipflowError as refused:
                outcomes[name] = ("refused", tuple(c for c in ("explore", "dp_unsupported", "min_row_count",
                                                               "differencing", "dp_budget") if f"({c})" in str(refused)))
                messages[name] = str(refused)
                continue
            outcomes[name] = ("answered", tuple(sorted(outcome.excluded)))
            results[name] = outcome
    finally:
        for client in clients:
            client.close()
    expected = {name: ("answered", ()) for name in session}
    expected["logistic"] = expected["cox"] = ("refused", ("explore",))
    assert outcomes == expected, (outcomes, messages)
    for name, outcome in results.items():
        assert {m["mode"] for m in outcome.mode.values()} == {"explore"}, name
    assert all("study" in messages[name] for name in ("logistic", "cox"))
    # the noisy cohort size (the pooled noisy sums' count, ADR 0057) is the truth within its stated error
    regression = results["regression"].result
    assert abs(regression["n_obs"] - len(rows)) <= 6 * regression["noise"]["n_obs_noise_sd"] + 0.5
    curves = results["survival"].result["curves"]
    assert len(curves) == 2 and all(len(c["timeline"]) >= 50 for c in curves)  # every week of the year kept
