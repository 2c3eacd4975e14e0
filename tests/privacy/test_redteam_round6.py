"""A sixth outside review (study mode's refresh, Cox regression in a study, explore mode), from the documents only.

The reviewer read docs/privacy.md, ADR 0028 (with its survival partition and fifth review), 0035 (derived
sets, refresh), 0008, 0038, 0032, 0023, 0031 and the README, and the test harness; not the controls'
nor the algorithms' source.  Every attack runs through real node processes (``mipflow node serve``)
with the **shipped** settings (``NodeHome.init``: explore by default, ``min_row_count`` 10,
``nfilter_tab`` 3), after the node admin did what a realistic admin does (approves a protocol with
``study_approval.approve``, loads the hospital's next export and refreshes the study).  The attacker
sends only requests the node admits, through the central site's ``run_analysis`` (a researcher reads
the result) or, where said, reads the step replies the central site receives (the hostile or
honest-but-curious central site of docs/privacy.md).

``test_hole_*`` PASS WHILE THE HOLE EXISTS (each asserts what the attack recovers); ``test_defence_*``
check a closed hole.  Closed the same day: 1 and 2 (a refresh checks each cell's net change against
the snapshot and every earlier one), 4's rewrite channel (explore noise is not keyed on
central-only parameters such as ``alpha``; filters are keyed in canonical form), 5 (other studies
compared by patient across data models), 3 (ADR 0046: Cox's per-bin sums are sealed to the
participating nodes; the central site receives each node's share of l, U and I).  Open: 4's root (equivalent but differently written cohorts still draw fresh noise, each charged: the
budget bounds the averaging of an unsplit count; docs/privacy.md).

Found (tests: 1 and 2 ``test_defence_a_*``, 3 ``test_defence_b_*``, 4 ``test_defence_c_*``, 5 ``test_defence_d_*``):

1. **A refresh counts a cell's rows added and removed, not its net change** (ADR 0028 level cells,
   ADR 0035 refresh).  Corrected rows count as both added and removed, so a cell can gain 4 (one new
   death and three corrected deaths) and lose 3 (the same three): each is >= ``nfilter_tab``, the
   net is one patient, and the corrected rows' unchanged values cancel: a new death's age, follow-up
   and sex come out of the study's group means before and after.
2. **Refreshes are checked against the previous snapshot only**: an export with five deaths, then a
   correction of four of them to survivors, each refresh moving every cell by 0 or >= 3 (net too),
   leave one new death between the snapshot before the first and after the second.
3. **Cox regression's per-bin sums at the Newton iterates are a solvable system**: the central site
   (even an honest-but-curious one, running an honest researcher's analysis) receives each node's
   risk-set sums ``S0, S1, S2`` of ``exp(x'b)`` per event bin for every round in the clear (Cox is not
   maskable).  Differences of consecutive bins are sums over the 3 to 5 deaths of one partition bin
   at 5 coefficient vectors: the integer ages and NIHSS of every such death come out exactly.
4. **Explore mode's Kaplan-Meier cells averaged over rewrites** (documented budget limit, quantified):
   with ``age`` as the time variable on a 0.1-year grid a known patient is alone in her grid point;
   the project budget buys 50 releases with fresh noise (``alpha`` changes the query), two projects 100,
   and the mean of her point's noisy counts (sd 1.41 each) tells her death and sex (wrong with odds of about 1e-6),
   where ADR 0038 estimates "a few in 20" at B 50.
5. **Two studies on two versions of one data model**: the fifth review's fix (level-cell and atom rules
   over every approved study at the node) runs per data model, so elderly (>= 65) under ``stroke:0.1``
   and older (>= 70) under ``stroke:0.2``, the same patients, subtract to the one death aged 65-69.

Tried and held (see the report): a chain of refreshes whose cohorts differ by one row, one new
patient beside ten corrections (both ``differencing`` at refresh); numerical variables as groupings
(400 by the request); the survival time or the event as a Cox covariate (400); crafted Cox round
states, coefficients or finer bin ends (``round_verification``); explore ``rows`` (noisy).
"""
from __future__ import annotations

import base64
import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mipflow.central.client import NodeClient, NodeEndpoint
from mipflow.central.rounds import run_analysis
from mipflow.node.controls import study_approval
from mipflow.node.home import NodeHome
from mipflow.protocol.signing import issue_client
from tests.mipflow.algorithms.helpers import assert_rel_close
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import MEN, WOMEN, protocol, rule, stroke_rows, where
from tests.nodes import grant_all, load_frame, running_nodes, served_clients
from tests.privacy.test_redteam_round5 import band_registry, node_with, result  # shipped settings
from tests.privacy.test_study_attacks import Served, request_of

PROJECT = "stroke-outcomes-2027"
NODE = "hospital_a"
DATASETS = [NODE]
TAB = 3  # the shipped nfilter_tab
VARIABLES = ["age", "sex", "nihss_admission", "followup_days", "death_90d"]


# --- 1 and 2: refreshes ---------------------------------------------------------------------------------

REFRESH_PROTOCOL = protocol(datasets=DATASETS, name="stroke-outcomes", variables=VARIABLES,
                            algorithms=["anova_oneway", "ttest_independent", "linear_regression",
                                        "multiple_histograms"],
                            subgroups=[{"name": "women", "filter": WOMEN}, {"name": "men", "filter": MEN}],
                            histogram_bins=10)
REFRESH_PROTOCOL.pop("survival")
#: the new patient the attacker is after: she came in since the last export (the attacker knows that
#: much, e.g. she is a neighbour); the attack recovers her age, follow-up, sex and death
NEW_DEATH = {"subjectcode": "target", "dataset": NODE, "age": 86.0, "sex": "F", "stroke_type": "ischaemic",
             "nihss_admission": 23.0, "followup_days": 41.0, "death_90d": "yes"}


def registry() -> pd.DataFrame:
    frame = stroke_rows(5, 300, NODE, "reg")
    frame["nihss_admission"] = frame["nihss_admission"].fillna(10.0)
    return frame


def new_patients(seed: int, women_alive: int, women_dead: int, men_dead: int, men_alive: int) -> pd.DataFrame:
    """New patients of the next export (deaths within 90 days, survivors followed longer)."""
    rng = np.random.default_rng(seed)
    rows = []
    for sex, dead, count in (("F", False, women_alive), ("F", True, women_dead), ("M", True, men_dead),
                             ("M", False, men_alive)):
        for _ in range(count):
            rows.append({"subjectcode": f"new-{seed}-{len(rows)}", "dataset": NODE,
                         "age": float(rng.integers(40, 85)), "sex": sex, "stroke_type": "ischaemic",
                         "nihss_admission": float(rng.integers(0, 25)),
                         "followup_days": float(rng.integers(5, 90) if dead else rng.integers(100, 900)),
                         "death_90d": "yes" if dead else "no"})
    return pd.DataFrame(rows)


def women_deaths(client) -> dict[str, float]:
    """What the attacker reads in the study: the women's deaths (count, and sums of age and follow-up)
    from the level counts of ``death_90d`` and the group means of two one-way ANOVAs."""
    counts = result(client, "multiple_histograms", request_of(y=("death_90d",), x=(), filters=WOMEN,
                                                               datasets=DATASETS, bins=10))["histogram"][0]
    deaths = dict(zip(counts["bins"], counts["counts"]))["yes"]
    out = {"deaths": float(deaths)}
    for variable in ("age", "followup_days"):
        tukey = result(client, "anova_oneway", request_of(y=(variable,), x=("death_90d",), filters=WOMEN,
                                                          datasets=DATASETS))["tuckey_test"][0]
        mean = tukey["meanB"] if tukey["groupB"] == "yes" else tukey["meanA"]
        out[variable] = mean * deaths
    return out


def men_deaths(client) -> int:
    counts = result(client, "multiple_histograms", request_of(y=("death_90d",), x=(), filters=MEN,
                                                               datasets=DATASETS, bins=10))["histogram"][0]
    return dict(zip(counts["bins"], counts["counts"]))["yes"]


def corrected(frame: pd.DataFrame, *, women_dead: int, women_alive: int, seed: int) -> pd.DataFrame:
    """Corrections the registry sends with an export: ``women_dead`` women who died get their NIHSS
    re-scored, ``women_alive`` surviving women get their follow-up extended (ages untouched)."""
    rows = frame[frame["sex"] == "F"]
    dead = rows[rows["death_90d"] == "yes"].sample(women_dead, random_state=seed).copy()
    alive = rows[rows["death_90d"] == "no"].sample(women_alive, random_state=seed).copy()
    dead["nihss_admission"] = (dead["nihss_admission"] + 2).clip(upper=42)
    alive["followup_days"] = (alive["followup_days"] + 60).clip(upper=3650)
    return pd.concat([dead, alive], ignore_index=True)


def test_defence_a_refresh_that_adds_four_and_removes_three_in_a_cell_is_refused(tmp_path) -> None:
    """Class: groups inside algorithms across a refresh (ADR 0028 level cells, ADR 0035 refresh).
    Recovers: a new patient's age (86), follow-up (41 days), sex and death, exactly.
    Control that should stop it: the refresh's level-cell rule (``study_cells``, and the pattern's
    ``changed_small``) counts rows added (new *or changed*) and removed per cell, each 0 or >= 3;
    it must bound the cell's net change (and treat a corrected row whose released values did not move
    as unchanged), else +4 / -3 passes with a net of one patient.

    The export: the target (a woman who died) with 9 surviving women, 3 men who died and 7 who
    survived, plus corrections of 10 women (3 deaths' NIHSS re-scored, 7 survivors' follow-up
    extended): every cohort gains and loses >= 10 rows, every cell of sex x death gains and loses 0
    or >= 3 ((F, yes): +4 / -3), so the refresh passes."""
    frame = registry()
    root = node_with(tmp_path / "node", frame, {PROJECT: REFRESH_PROTOCOL})
    export = pd.concat([pd.DataFrame([NEW_DEATH]), new_patients(1, 9, 0, 3, 7),
                        corrected(frame, women_dead=3, women_alive=7, seed=2)], ignore_index=True)
    with served_clients({NODE: root}) as clients:
        before = women_deaths(clients[NODE])
        load_frame(root, STROKE, export)
        with pytest.raises(Exception) as caught:  # defence: the net change of one is named, for the admin
            study_approval.refresh(NodeHome(root), PROJECT)
        assert "sex=F and death_90d=yes: +1 row(s) net since the snapshot" in str(caught.value)
        assert "the study stays on its snapshot" in str(caught.value) and before["deaths"] >= 3


def test_defence_a_second_refresh_one_death_away_from_an_earlier_snapshot_is_refused(tmp_path) -> None:
    """Class: groups inside algorithms across refreshes (ADR 0028 level cells, ADR 0035 refresh).
    Recovers: a new patient's age, follow-up, sex and death, exactly.
    Control that should stop it: the refresh rules compare the new snapshot with the previous one
    only; they must bound the change of every cell against every snapshot answered before (e.g. keep
    every released snapshot's cell counts, or put the snapshots' cells in the atom rule).

    Refresh 1: the next export, 29 women (the target and 13 other deaths, 15 survivors) and 20 men
    (10 deaths): (F, yes) +14.  Refresh 2: 13 of the new deaths were miscoded (they survived) and ten
    women's follow-up is extended: (F, yes) -13, (F, no) +23 / -10.  Every cohort moves by >= 10 rows
    at each refresh (so the ledger's pairwise rule passes), every cell by 0 or >= 10 gross and net (the
    t-test's and ANOVA's groups hold min_row_count since ADR 0050, so smaller moves are refused sooner);
    between the snapshot before and after, the women's deaths differ by the target alone."""
    frame = registry()
    root = node_with(tmp_path / "node", frame, {PROJECT: REFRESH_PROTOCOL})
    new = pd.concat([pd.DataFrame([NEW_DEATH]), new_patients(3, 15, 13, 10, 10)], ignore_index=True)
    miscoded = new[(new["sex"] == "F") & (new["death_90d"] == "yes") & (new["subjectcode"] != "target")].copy()
    miscoded["death_90d"] = "no"
    miscoded["followup_days"] = 400.0
    correction = pd.concat([miscoded, corrected(frame, women_dead=0, women_alive=10, seed=4)], ignore_index=True)
    with served_clients({NODE: root}) as clients:
        before = women_deaths(clients[NODE])
        load_frame(root, STROKE, new)
        assert study_approval.refresh(NodeHome(root), PROJECT)["status"] == "refreshed"
        middle = women_deaths(clients[NODE])
        load_frame(root, STROKE, correction)
        with pytest.raises(Exception) as caught:  # defence: checked against every earlier snapshot
            study_approval.refresh(NodeHome(root), PROJECT)
        assert "sex=F and death_90d=yes: +1 row(s) net since the snapshot 1 refresh(es) before it" in str(caught.value)
        assert "the study stays on its snapshot" in str(caught.value)
    assert middle["deaths"] - before["deaths"] == 14  # the first refresh was safe and stands


# --- 3: Cox regression's risk-set sums, as the central site receives them ---------------------------------

COX_PROTOCOL = protocol(datasets=DATASETS, name="stroke-outcomes", variables=VARIABLES,
                        algorithms=["kaplan_meier", "cox_regression", "anova_oneway"],
                        subgroups=[{"name": "women", "filter": WOMEN}, {"name": "men", "filter": MEN}],
                        survival={"time": "followup_days", "bin_width": 7.0, "event": "death_90d"})
AGES, NIHSS = (30, 89), (0, 29)


def death_registry(seed: int = 7, n: int = 300) -> pd.DataFrame:
    """A registry of 90-day deaths: about 30 % die within 90 days (whole days), the others are
    followed 91 to 1500 days; ages in years and NIHSS are whole numbers, as registries keep them."""
    rng = np.random.default_rng(seed)
    dead = rng.random(n) < 0.3
    followup = np.where(dead, rng.integers(1, 91, n), rng.integers(91, 1500, n))
    return pd.DataFrame({"subjectcode": [f"d{k}" for k in range(n)], "dataset": NODE,
                         "age": rng.integers(AGES[0], AGES[1] + 1, n).astype(float),
                         "sex": rng.choice(["F", "M"], n), "stroke_type": "ischaemic",
                         "nihss_admission": rng.integers(NIHSS[0], NIHSS[1] + 1, n).astype(float),
                         "followup_days": followup.astype(float), "death_90d": np.where(dead, "yes", "no")})


class Recording(NodeClient):
    """The central site's client, keeping every round's state and transcript it sent and the reply it received."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rounds: list[tuple[int, Any, dict, dict]] = []

    def step(self, algorithm, request, round_no, state, **kwargs):
        reply = super().step(algorithm, request, round_no, state, **kwargs)
        self.rounds.append((round_no, state, reply, kwargs))
        return reply


def clear_numbers(doc: Any) -> list[float]:
    """Every number a reply's aggregates hold in the clear (packed arrays counted value by value)."""
    if isinstance(doc, dict) and "base64" in doc and "dtype" in doc:
        return list(np.frombuffer(base64.b64decode(doc["base64"]), dtype=doc["dtype"]))
    if isinstance(doc, dict):
        return [v for value in doc.values() for v in clear_numbers(value)]
    if isinstance(doc, list):
        return [v for value in doc for v in clear_numbers(value)]
    return [doc] if isinstance(doc, (int, float)) and not isinstance(doc, bool) else []


def pooled_phreg(frame: pd.DataFrame, sex: str, result: dict[str, Any]) -> Any:
    """statsmodels' PHReg (Breslow) on the node's rows of one sex, times rounded up to the result's
    bin ends (rows followed beyond its end of follow-up censored there)."""
    from statsmodels.duration.hazard_regression import PHReg

    rows = frame[frame["sex"] == sex]
    timeline = np.asarray(result["binning"]["timeline"], dtype=float)
    index = np.searchsorted(timeline, rows["followup_days"].to_numpy(dtype=float), side="left")
    beyond = index >= len(timeline)
    times = timeline[np.minimum(index, len(timeline) - 1)]
    status = ((rows["death_90d"] == "yes").to_numpy() & ~beyond).astype(float)
    return PHReg(times, rows[["age", "nihss_admission"]].to_numpy(dtype=float), status=status,
                 ties="breslow").fit(method="newton", tol=1e-12)


def test_defence_b_cox_risk_set_sums_are_sealed_to_the_nodes_and_the_central_site_sees_l_u_i_only(tmp_path) -> None:
    """Hole 3 (Cox's per-bin sums at the Newton iterates, a solvable system) closed by ADR 0046.

    The same honest analysis (a researcher's Cox model of age and NIHSS in the subgroups women and
    men, default ties, the study's grid and partition) through the real node: the recording central
    site reads every reply.  Each Newton evaluation is a "sums" round, whose per-bin sums leave the
    node only as AES-GCM ciphertexts for the participants (here the node itself), and a "score"
    round, whose plaintext is the counts the controls checked plus the node's share of the log
    partial likelihood, score and information: 1 + p + p(p+1)/2 numbers, however many bins.  The
    central site cannot open a ciphertext (a key it can derive, its own X25519 with the node's public
    key, fails; only the node's key opens it, and what it holds are the per-bin sums the attack
    solved).  The result still equals statsmodels PHReg on the node's rows."""
    from mipflow.secagg import sealing
    from mipflow.secagg.crypto import KeyPair, cached_keypair

    frame = death_registry()
    root = node_with(tmp_path / "node", frame, {PROJECT: COX_PROTOCOL})
    credential = issue_client(root, "central")
    node_key = cached_keypair(root)
    p = 2
    with running_nodes([root]) as urls:
        client = Recording(NodeEndpoint(NODE, urls[0], credential.client_id, credential.secret.hex()), retries=0)
        try:
            for sex, cohort in (("F", WOMEN), ("M", MEN)):
                client.rounds.clear()
                outcome = run_analysis("cox_regression", request_of(
                    y=("followup_days", "death_90d"), x=("age", "nihss_admission"), filters=cohort,
                    datasets=DATASETS, event_level="yes", bin_width=7.0), [client], researcher="alice",
                    project=PROJECT)
                # round 0 the bins, round 1 the start (rows, level counts, moments: ADR 0055 amendment)
                assert client.rounds[1][1]["phase"] == "start"
                assert set(client.rounds[1][2]["aggregates"]) == {"n", "level_counts", "group_n", "moments"}
                later = client.rounds[2:]
                phases = [state["phase"] for _, state, _, _ in later]
                assert phases == ["sums", "score"] * (len(later) // 2) and len(later) >= 6, phases
                n_bins = len(later[0][1]["ends"])
                assert len(later[0][1]["event_bins"]) >= 5  # many bins: the sums would have been many numbers
                for k, (round_no, state, reply, _) in enumerate(later):
                    aggregates = dict(reply["aggregates"])
                    counts = [aggregates.pop(key) for key in ("n", "n_events", "group_counts")]
                    assert len(counts[2]) == 2 * n_bins  # the counts checked by nfilter_tab, as before
                    if state["phase"] == "sums":
                        sealed = aggregates.pop("sealed")
                        assert aggregates == {} and set(sealed) == {NODE}
                        assert all(isinstance(box, str) for box in sealed.values())
                        # the next round's transcript binds the chain the ciphertext was sealed under
                        chain = later[k + 1][3]["transcript"]["previous"]["chain"]
                        bound = dict(analysis_id=outcome.analysis_id, algorithm="cox_regression", chain=chain,
                                     round_no=round_no, sender=NODE, recipient=NODE)
                        for wrong in (KeyPair.generate(), KeyPair.generate()):  # e.g. the central site's own key
                            assert sealing.open_one(wrong, node_key.public_bytes, sealed[NODE], **bound) is None
                        opened = sealing.open_one(node_key, node_key.public_bytes, sealed[NODE], **bound)
                        assert set(opened) == {"events", "s0", "s1", "s2"}
                        s0 = np.asarray(clear_numbers(opened["s0"]))
                        assert len(s0) == len(state["event_bins"])
                        if state["coefficients"] == [0.0, 0.0]:  # what the attack solved: sums at b = 0
                            assert s0[0] == reply["aggregates"]["n"] and np.all(np.diff(s0) < 0)
                    else:
                        assert set(aggregates) == {"loglik", "score", "information"}
                        assert len(clear_numbers(aggregates)) == 1 + p + p * (p + 1) // 2
                fit = pooled_phreg(frame, sex, outcome.result)
                assert_rel_close(outcome.result["coefficients"], fit.params, rel=1e-9, what=f"coefficients ({sex})")
                assert_rel_close(outcome.result["stderr"], fit.bse, rel=1e-9, what=f"stderr ({sex})")
        finally:
            client.close()


# --- 4: explore mode, Kaplan-Meier cells averaged over rewrites --------------------------------------------

EXPLORE_TARGET_AGE = 52.0


def explore_registry(seed: int = 5, n: int = 300) -> pd.DataFrame:
    """Ages to one decimal; nobody but the target (a woman who died) aged 51.5 to 52.5."""
    frame = stroke_rows(seed, n, NODE, "ex")
    frame["age"] = np.random.default_rng(seed).uniform(30.0, 90.0, n).round(1)
    frame.loc[(frame["age"] > 51.5) & (frame["age"] < 52.5), "age"] += 1.0
    frame.loc[0, ["age", "sex", "death_90d"]] = [EXPLORE_TARGET_AGE, "F", "yes"]
    return frame


def test_defence_c_explore_rewrites_that_change_only_alpha_get_the_same_noise(tmp_path) -> None:
    """Class: averaging rewritten perturbed answers in explore mode, the default (docs/privacy.md
    "Averaging repeated perturbed answers", "All vs all-but-one ... bounded by the project's explore
    budget"; ADR 0038 "The budget": a documented limit, quantified here).  Recovers: a known patient's
    death within 90 days and her sex (the attacker knows her age to the decimal).
    Control that should stop it: the explore budgets (``explore_project_budget_epsilon`` 50 per project,
    ``explore_budget_epsilon`` 20 per researcher).  ADR 0038 estimates the gain at B 50 from split
    histogram noise ("a guess from 1 in 20 to a few in 20"); Kaplan-Meier's (and a contingency
    table's) counts are unsplit (sd 1.41 at epsilon 1), so B 50 averages a count to sd 0.2 and two
    projects (each its own budget) to 0.14: one patient's cell is read, not guessed.

    ``age`` as Kaplan-Meier's time (declared range 18..90) with ``bin_width`` 0.1 and ``death_90d`` as
    the event: the target is alone at her grid point, an event if she died, a censoring otherwise, in
    her sex's group.  Each release changes ``alpha`` (a new query: fresh noise, charged 1)."""
    root = tmp_path / "node"
    NodeHome.init(root, NODE)  # shipped settings: every project in explore mode
    load_frame(root, STROKE, explore_registry())
    for project in ("open-questions", "side-questions"):
        grant_all(root, researcher="*", project=project)
    point = int(round((EXPLORE_TARGET_AGE - 18.0) / 0.1))
    cells = []
    with running_nodes([root]) as urls:
        served = Served(urls[0], issue_client(root, "central"))
        for project in ("open-questions", "side-questions"):
            for i in range(50):
                reply = served.call("kaplan_meier", request_of(y=("age", "death_90d"), x=("sex",), datasets=DATASETS,
                                                               event_level="yes", bin_width=0.1,
                                                               alpha=round(0.9 + 0.001 * i, 3)),
                                    project=project, researcher=f"{project}-{i // 20}")
                assert reply.status_code == 200, reply.text
                assert reply.json()["mode"]["mode"] == "explore"
                groups = {g["level"]: g for g in reply.json()["aggregates"]["groups"]}
                cells.append([groups[s][kind][point] for s in ("F", "M") for kind in ("events", "censored")])
        over = served.call("kaplan_meier", request_of(y=("age", "death_90d"), x=("sex",), datasets=DATASETS,
                                                      event_level="yes", bin_width=0.1, alpha=0.99),
                           project="open-questions", researcher="open-questions-9")
    # defence: alpha only shapes the central side's intervals, so the release and its noise are the
    # same whatever alpha: every rewrite returns the same noisy cells (nothing to average), charged
    # once per project, and the budget is not the bound any more
    assert over.status_code == 200, over.text
    assert all(c == cells[0] for c in cells), "fresh noise per alpha"
    groups = {g["level"]: g for g in over.json()["aggregates"]["groups"]}
    assert [groups[s][kind][point] for s in ("F", "M") for kind in ("events", "censored")] == cells[0]


# --- 5: two studies on two versions of one data model ---------------------------------------------------

#: the registry's next data-model version, the same variables (the node holds both while projects move)
STROKE_V2 = dataclasses.replace(STROKE, version="0.2", raw={**STROKE.raw, "version": "0.2"})
ELDERLY_65 = where(rule("age", "greater_or_equal", 65))
OLDER_70 = where(rule("age", "greater_or_equal", 70))
def deaths_in(client, project: str, model: str, cohort: dict) -> dict[str, float]:
    """A cohort's deaths: count (and women's count) from level counts, sums from ANOVA group means."""
    histograms = result(client, "multiple_histograms", request_of(y=("death_90d",), x=("sex",), filters=cohort,
                                                                  datasets=DATASETS, data_model=model, bins=10),
                        project)["histogram"]
    counts = {h["grouping_enum"]: dict(zip(h["bins"], h["counts"]))["yes"] for h in histograms}
    out = {"deaths": float(counts[None]), "women": float(counts["F"])}
    for variable in ("age", "nihss_admission", "followup_days"):
        tukey = result(client, "anova_oneway", request_of(y=(variable,), x=("death_90d",), filters=cohort,
                                                          datasets=DATASETS, data_model=model), project)["tuckey_test"][0]
        out[variable] = (tukey["meanB"] if tukey["groupB"] == "yes" else tukey["meanA"]) * counts[None]
    return out


def test_defence_d_a_second_study_on_another_version_of_the_data_model_is_compared_by_patient(tmp_path) -> None:
    """Class: study mode beyond one family (the fifth review's hole 4, two projects' studies at one
    node), across data-model versions (ADR 0030: the same patients under two versions).
    Recovers: the only death aged 65 to 69: her age (66.3), NIHSS (23), follow-up (41 days) and sex.
    Control that should stop it: ``study_approval.other_sets`` runs the level-cell and atom rules over
    the approved studies *under the same data model* only (ADR 0028, fifth review); it must take every
    study whose rows are the same patients (by ``_pid``, as the ledger does since ADR 0030).  The same
    gap lets a second study with histograms or survival analyses on the other version past
    ``layout_conflict`` (two partitions of the same patients).

    The node holds the registry under ``stroke:0.1`` and, after the CDE update, under ``stroke:0.2``
    (the same patients).  Project A's study (v0.1): subgroups elderly (>= 65), women, men; project B's
    (v0.2): older (>= 70), women, men.  Both are approved (each family alone is fine; the ledger's
    pairwise and atom rules by patient pass: the band 65-69 holds about thirty patients)."""
    root = tmp_path / "node"
    NodeHome.init(root, NODE)
    frame = band_registry()
    load_frame(root, STROKE, frame)
    load_frame(root, STROKE_V2, frame)
    algorithms = ["anova_oneway", "ttest_independent", "linear_regression", "multiple_histograms"]
    studies = {
        "stroke-outcomes-2027": (STROKE, protocol(datasets=DATASETS, name="stroke-outcomes", variables=VARIABLES,
                                                  algorithms=algorithms, subgroups=[
                                                      {"name": "elderly", "filter": ELDERLY_65},
                                                      {"name": "women", "filter": WOMEN}, {"name": "men", "filter": MEN}])),
        "stroke-frailty-2027": (STROKE_V2, protocol(datasets=DATASETS, name="stroke-frailty", variables=VARIABLES,
                                                    data_model=STROKE_V2.key, algorithms=algorithms, subgroups=[
                                                        {"name": "older", "filter": OLDER_70},
                                                        {"name": "women", "filter": WOMEN}, {"name": "men", "filter": MEN}])),
    }
    first, second = list(studies)
    for project, (_, document) in studies.items():
        document.pop("survival")
        grant_all(root, researcher="*", project=project)
    # defence: the second study is compared by patient with the first, under the other version
    assert study_approval.approve(NodeHome(root), first, studies[first][1])["status"] == "approved"
    with pytest.raises(Exception) as caught:
        study_approval.approve(NodeHome(root), second, studies[second][1])
    assert f"project {first!r} has an approved study at this node with histograms or survival analyses on the " \
           "same patients" in str(caught.value)
    without = {**studies[second][1], "algorithms": [a for a in algorithms if a != "multiple_histograms"]}
    with pytest.raises(Exception) as caught:
        study_approval.approve(NodeHome(root), second, without)
    message = str(caught.value)
    assert f"project {first!r}: subgroup 'elderly' minus subgroup 'older'" in message
    assert "death_90d=yes: 1 row(s)" in message
