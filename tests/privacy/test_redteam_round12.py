"""A twelfth outside review, from the documents only: the newest controls (ADR 0051-0054, 0043's consent rule).

The reviewer read README.md, docs/privacy.md and docs/adr/*.md (0051 groups across releases, 0052 pooled survival
bins, 0053 weighted sums and a study's transformations, 0054 effective rows, 0043 data versions and consent, 0028
study mode, 0032/0038 explore mode, 0030 one ledger), and the test harness (how to start nodes, grant, load and
call); not ``plugins/mipflow/node/controls`` nor the algorithms.  Every attack runs through real node processes
(``mipflow node serve`` on loopback) with the shipped thresholds (``min_row_count`` 10, ``nfilter_tab`` 3,
differencing on, query budgets on); standard-mode nodes are the admin's documented choice (``standard_home``),
explore and study nodes are built with ``NodeHome.init``.

``test_hole_*`` are strict xfails: the attack code runs and its last assertion is the condition that would hold if
the defence held (it fails today: the recovered value equals the truth).  ``test_defence_*`` pass while a control
holds, naming it.

Found (holes):

1. **Pooled survival bins less a per-node release of the other hospitals** (ADR 0052; a researcher through the
   honest central site, two documented requests).  Kaplan-Meier over ``{A, B, C}`` is answered on bins derived from
   the pooled counts (every pooled count 0 or >= ``nfilter_tab``), and A's own counts on those bins "may be 1 or
   2 ... never released".  The same cohort over datasets ``{B, C}`` alone is answered on per-node bins (two nodes:
   ``auto`` is ``per_node``).  At the ends both results share, pooled less ``{B, C}`` is A's cumulative deaths:
   A's three deaths, which A's own release merges into one bin, come out as cells of 2 and 1.  ``bind_pooled``
   binds a cohort to one *pooled* participant set; a per-node release of its complement is not a pooled release.
2. **A group of another kind** (ADR 0051).  Groups are compared by *kind* (data model and (variable, level)
   pairs).  A two-way ANOVA's cell (TIA, women) and a one-way ANOVA's TIA group under the filter
   ``sex = F AND age >= 25`` are the same rows but one, and of two kinds: ``(stroke_type, sex)`` and
   ``(stroke_type)``.  Neither rule 1 (same kind), rule 4 (a group against a cohort) nor the ledger (cohorts 10
   rows apart) meets them; ``n`` and means subtract to the one young TIA woman's NIHSS, exactly.
   **Closed** (ADR 0051's twelfth-review amendment): the group memory compares every group by its rows.
3. **The group memory is per data model, the ledger is per patient** (ADR 0051 against ADR 0030).  Round 10's
   attack (the same one-way ANOVA with and without ``age >= 25``; one TIA patient among the 10 left out) is
   refused under one data model, and answered when the second release names the next version of the data model
   holding the same patients: the patient's NIHSS, exactly.  **Closed** (the same amendment): one memory per
   node, groups of different data models compared by their patients too.
4. **Exp-weighted sums differenced across two releases** (ADR 0053, standard mode).  ADR 0053 leaves "a
   dominated sum across two releases" to "the differencing ledger's business, as for plain sums".  But the
   ledger counts rows: the cohorts everyone and ``age >= 25`` are 10 rows apart (allowed) and each passes
   ``sum w / max w >= 10``, while the 10 rows between them carry one patient's ``exp(glucose)`` almost alone.
   Her glucose (to 1e-5), age (to 0.01) and NIHSS (to the integer) come out of the two PCA releases.
5. **A withdrawal stops a study only where the patient was** (ADR 0028 with ADR 0043's consent amendment).  The
   amendment made ``data_version`` move alike for a member and a stranger withdrawing, so that a withdrawal sent
   to the whole network tells no one where the person was treated.  A study whose snapshot loses a row refuses
   every request ("rows of the study's snapshot changed at this node"); the others answer: the same membership,
   through a refusal, to every researcher of the study (and to the central site).

Held (defences): a Poisson GEE whose finite fit rests on two patients ends without coefficients
(``effective_rows``, ADR 0054); a hostile central site asking pooled bins of a node outside a masked set of 3
(``pooled_bins``); explore noise after a consent ``refused`` (not ``withdrawn``) deletion is fresh and charged, so
the two answers do not subtract to the patient's value; the group memory inside one data model (the same pair as
hole 3); and the honest work the attacks start from is answered.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.central.client import NodeRefused
from mipflow.central.rounds import run_analysis
from mipflow.node.controls import study_approval
from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.node.home import NodeHome
from mipflow.protocol.signing import issue_client
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import glucose_registry, protocol, rule, stroke_rows, where
from tests.nodes import PROJECT, RESEARCHER, grant_all, load_frame, pin_each_other, running_nodes, served_clients
from tests.nodes import apply_consent, standard_home
from tests.privacy.survival_registry import survival_rows
from tests.privacy.test_explore_attacks import Served

pytestmark = pytest.mark.xdist_group("redteam_round12")

STROKE_V2 = dataclasses.replace(STROKE, version="0.2", raw={**STROKE.raw, "version": "0.2"})
AUDIT, STUDY, BROWSE = "audit", "severity", "browse"
ADULT = where(rule("age", "greater_or_equal", 25))
#: the target of holes 2 and 3: the one TIA patient under 25 (a woman), NIHSS 37
TARGET_NIHSS = 37.0


def request(y, x=(), filters=None, model: str = STROKE.key, datasets=("hospital_a",), **parameters) -> dict:
    return {"inputdata": {"data_model": model, "datasets": list(datasets), "x": list(x), "y": list(y),
                          "filters": filters}, "parameters": parameters}


def typed(reply) -> tuple[int, str | None]:
    doc = reply.json()
    return reply.status_code, doc.get("control")


# ----------------------------------------------------------------------------------- standard-mode nodes


def level_registry(n: int = 240) -> tuple[pd.DataFrame, int]:
    """Balanced sex x stroke type (40 per cell); ten women under 25, one of them (the target) a TIA patient."""
    frame = stroke_rows(5, n, "hospital_a", "lvl")
    rng = np.random.default_rng(5)
    idx = np.arange(n)
    frame["sex"] = np.where(idx % 2 == 0, "F", "M")
    frame["stroke_type"] = np.array(["ischaemic", "haemorrhagic", "tia"])[(idx // 2) % 3]
    frame["age"] = np.round(rng.uniform(30, 85, n), 1)
    frame["nihss_admission"] = rng.integers(0, 30, n).astype(float)
    young = list(frame.index[(frame["sex"] == "F") & (frame["stroke_type"] != "tia")][:9])
    target = int(frame.index[(frame["sex"] == "F") & (frame["stroke_type"] == "tia")][0])
    frame.loc[young + [target], "age"] = np.arange(19, 24.0, 0.5)
    frame.loc[target, "nihss_admission"] = TARGET_NIHSS
    return frame, target


@pytest.fixture(scope="module")
def standard(tmp_path_factory) -> Iterator[dict[str, Served]]:
    """Three standard-mode nodes (the admin's choice for project ``audit``; shipped thresholds, differencing and
    budgets on): ``groups`` and ``versions`` hold :func:`level_registry` (``versions`` under stroke 0.1 and 0.2,
    the same patients), ``weighted`` holds :func:`glucose_registry`."""
    base = Path(tmp_path_factory.mktemp("round12-standard"))
    levels, _ = level_registry()
    glucose = glucose_registry()
    plan = {"groups": [(STROKE, levels)], "versions": [(STROKE, levels), (STROKE_V2, levels)],
            "weighted": [(STROKE, glucose)]}
    roots, credentials = {}, {}
    for name, loads in plan.items():
        roots[name] = base / name
        standard_home(roots[name], "hospital_a")
        for model, frame in loads:
            load_frame(roots[name], model, frame)
        grant_all(roots[name], researcher="*", project=AUDIT)
        credentials[name] = issue_client(roots[name], "central")
    with running_nodes(list(roots.values())) as urls:
        yield {name: Served(url, credentials[name], roots[name], plan[name][0][1])
               for name, url in zip(roots, urls)}


def cell_sum(reply: dict, index: int) -> tuple[int, float]:
    """(n, sum) of a two-way ANOVA cell (``group_n``, ``cell_means``)."""
    agg = reply["aggregates"]
    return agg["group_n"][index], agg["group_n"][index] * agg["cell_means"][index]


def group_sum(reply: dict, index: int) -> tuple[int, float]:
    """(n, sum) of a one-way ANOVA group."""
    group = reply["aggregates"]["groups"][index]
    return group["n"], group["n"] * group["mean"][0]


#: the replies list levels in sorted order: stroke types haemorrhagic, ischaemic, tia; sexes F, M
TIA, TIA_WOMEN = 2, 2 * 2 + 0


def test_hole_a_two_way_cell_and_a_filtered_one_way_group_of_another_kind_subtract_to_one_patient(standard):
    """Hole 2, closed (ADR 0051, amended).  Class: groups inside algorithms across releases, the group's kind.
    Release 1: the two-way ANOVA of NIHSS by stroke type and sex on everyone (every cell 40 rows).  Release 2: the
    one-way ANOVA by stroke type of ``sex = F AND age >= 25`` (the ten women under 25 left out: 10 rows, the
    ledger's threshold met; the remembered margin "women" is 10 rows away too).  The cell (TIA, F) and release
    2's TIA group are 40 and 39 rows: the young TIA woman."""
    node = standard["groups"]
    frame = node.rows
    two_way = node.call("anova", request(["nihss_admission"], ["stroke_type", "sex"]), project=AUDIT)
    assert two_way.status_code == 200, two_way.text
    filtered = node.call("anova_oneway", request(["nihss_admission"], ["stroke_type"],
                                                 where(rule("sex", "equal", "F"), rule("age", "greater_or_equal", 25))),
                         project=AUDIT)
    if filtered.status_code == 403:  # the defence: the group memory compares the rows, whatever the kind
        assert typed(filtered) == (403, "differencing")
        return
    assert filtered.status_code == 200, filtered.text
    n1, s1 = cell_sum(two_way.json(), TIA_WOMEN)
    n2, s2 = group_sum(filtered.json(), TIA)
    truth = frame[(frame["stroke_type"] == "tia") & (frame["sex"] == "F")]
    assert (n1, n2) == (len(truth), len(truth) - 1)
    recovered = round(s1 - s2, 6)
    assert recovered == TARGET_NIHSS  # one patient's NIHSS, exactly
    assert n1 - n2 == 0 or n1 - n2 >= 10, "a group and a group of another kind differ by one patient"


def test_hole_round_ten_s_pair_of_groups_passes_when_the_second_names_the_next_data_model_version(standard):
    """Hole 3, closed (ADR 0051, amended).  Class: the ledger across data models (ADR 0030) and groups across
    releases (ADR 0051).  One-way ANOVA of NIHSS by stroke type on everyone under stroke 0.1; under one data
    model the same with ``age >= 25`` is refused by the group memory (TIA groups 80 and 79 rows).  Under stroke
    0.2 (the same patients: the cohorts are 10 patients apart for the ledger) it is answered, and the TIA groups
    subtract to the target."""
    node = standard["versions"]
    everyone = node.call("anova_oneway", request(["nihss_admission"], ["stroke_type"]), project=AUDIT)
    assert everyone.status_code == 200, everyone.text
    same_model = node.call("anova_oneway", request(["nihss_admission"], ["stroke_type"], ADULT), project=AUDIT)
    assert typed(same_model) == (403, "differencing")  # ADR 0051 inside one data model
    next_version = node.call("anova_oneway", request(["nihss_admission"], ["stroke_type"], ADULT,
                                                     model=STROKE_V2.key), project=AUDIT)
    if next_version.status_code == 403:  # the defence: groups compared by patient across data models
        assert typed(next_version) == (403, "differencing")
        return
    assert next_version.status_code == 200, next_version.text
    n1, s1 = group_sum(everyone.json(), TIA)
    n2, s2 = group_sum(next_version.json(), TIA)
    assert round(s1 - s2, 6) == (n1 - n2) * TARGET_NIHSS  # (80, 79): the target's NIHSS, exactly
    assert n1 - n2 == 0 or n1 - n2 >= 10, "the same group one patient apart under the next data-model version"


def moment_sums(reply: dict) -> tuple[np.ndarray, np.ndarray]:
    """Sums and sums of products of the (transformed) variables from PCA's ``n``, means and co-moments."""
    moments = reply["aggregates"]["moments"]
    n, mean, m2 = moments["n"], np.asarray(moments["mean"]), np.asarray(moments["m2"])
    return n * mean, m2 + n * np.outer(mean, mean)


def test_hole_exp_weighted_sums_of_two_cohorts_ten_rows_apart_give_one_patients_record(standard):
    """Hole 4.  Class: weighted sums across releases (ADR 0053's open line, "the differencing ledger's
    business").  PCA of (exp glucose, age, NIHSS) on everyone and on ``age >= 25``: each release holds fifty
    rows near the top glucose (``sum w / max w`` well over 10: answered), the cohorts are 10 rows apart (the
    ledger's threshold: answered), and of those 10 rows the target's ``exp(12.3)`` outweighs the nine others'
    ``exp(4..5.5)`` about 100 to 1.  The differences of ``sum exp(2g)``, ``sum age exp(g)``,
    ``sum nihss exp(g)`` over ``sum exp(g)`` give her glucose, age and NIHSS."""
    node = standard["weighted"]
    frame = node.rows
    variables = ["glucose_mmol", "age", "nihss_admission"]
    exp = {"data_transformation": {"exp": ["glucose_mmol"]}}
    first = node.call("pca_with_transformation", request(variables, **exp), project=AUDIT)
    second = node.call("pca_with_transformation", request(variables, filters=ADULT, **exp), project=AUDIT)
    if 403 in (first.status_code, second.status_code):  # the defence: the weighted difference is refused
        assert {typed(r)[1] for r in (first, second) if r.status_code == 403} <= {"differencing", "dominated_sums"}
        return
    assert (first.status_code, second.status_code) == (200, 200), (first.text, second.text)
    (s1, q1), (s2, q2) = moment_sums(first.json()), moment_sums(second.json())
    ds, dq = s1 - s2, q1 - q2
    recovered = {"glucose_mmol": np.log(dq[0, 0]) / 2, "age": dq[1, 0] / ds[0], "nihss_admission": dq[2, 0] / ds[0]}
    target = frame[frame["age"] < 25].sort_values("glucose_mmol").iloc[-1]
    assert recovered["glucose_mmol"] == pytest.approx(target["glucose_mmol"], abs=1e-5)
    assert recovered["age"] == pytest.approx(target["age"], abs=0.01)
    assert round(recovered["nihss_admission"]) == target["nihss_admission"]
    left_out = frame[frame["age"] < 25]["glucose_mmol"]
    weights = np.exp(left_out - left_out.max())
    assert weights.sum() / weights.max() >= 10, "the difference of two answered weighted releases is one patient"


# -------------------------------------------------------------------------- pooled survival bins (ADR 0052)

HOSPITALS = ("hospital_a", "hospital_b", "hospital_c")
#: hospital_a's deaths (days): its own release merges them into one bin of three
A_DEATHS = (10, 31, 52)


@pytest.fixture(scope="module")
def survival(tmp_path_factory) -> Iterator[tuple[dict, dict]]:
    """Three standard-mode hospitals, pinned to each other: B and C hold 60 patients with four deaths a week
    for twelve weeks; A holds 30 patients, three of whom died (days 10, 31 and 52)."""
    base = Path(tmp_path_factory.mktemp("round12-survival"))
    busy = [day for week in range(12) for day in (7 * week + 2, 7 * week + 3, 7 * week + 4, 7 * week + 5)]
    frames = {"hospital_a": survival_rows("hospital_a", A_DEATHS, 27),
              "hospital_b": survival_rows("hospital_b", busy, 12), "hospital_c": survival_rows("hospital_c", busy, 12)}
    roots = {}
    for hospital in HOSPITALS:
        roots[hospital] = base / hospital
        standard_home(roots[hospital], hospital)
        load_frame(roots[hospital], STROKE, frames[hospital])
        grant_all(roots[hospital])
    pin_each_other(roots)
    with served_clients(roots) as clients:
        yield clients, frames


def km(clients: dict, hospitals, **parameters) -> Any:
    doc = request(["followup_days", "death_90d"], datasets=hospitals, event_level="yes", bin_width=7.0, **parameters)
    return run_analysis("kaplan_meier", doc, [clients[h] for h in hospitals], researcher=RESEARCHER, project=PROJECT)


def cumulative_events(result: dict) -> dict[float, int]:
    curve = result["curves"][0]
    return dict(zip(curve["timeline"], np.cumsum(curve["events"]).tolist()))


def test_hole_pooled_bins_less_the_other_hospitals_per_node_release_give_a_hospitals_small_cells(survival):
    """Hole 1.  Class: a pooled-threshold release (ADR 0052) beside releases in the clear of part of the pool
    (ADR 0027's precondition: never two sums that differ by one node).  Two requests a researcher may send
    through the honest central site: Kaplan-Meier over datasets A, B and C (three pinned nodes: pooled bins,
    weekly), and over B and C (two nodes: per-node bins, in the clear at their common ends).  At the ends both
    results share, the difference is A's cumulative deaths; A's own release holds its three deaths in one bin."""
    from mipflow.exceptions import MipflowError

    clients, frames = survival
    pooled = km(clients, HOSPITALS)
    assert pooled.result["binning"]["partition"] == "pooled"
    try:
        others = km(clients, HOSPITALS[1:])
    except MipflowError as refused:  # the defence: B and C refuse to release the rest of a pool in the clear
        assert "pooled_bins" in str(refused) or "differencing" in str(refused)
        return
    abc, bc = cumulative_events(pooled.result), cumulative_events(others.result)
    common = sorted(set(abc) & set(bc))
    a_cumulative = [abc[t] - bc[t] for t in common]
    cells = {(lo, hi): b - a for (lo, a), (hi, b) in zip(zip(common, a_cumulative), zip(common[1:], a_cumulative[1:]))}
    deaths = frames["hospital_a"].query("death_90d == 'yes'")["followup_days"]
    for (lo, hi), count in cells.items():
        assert count == int(((deaths > lo) & (deaths <= hi)).sum())  # exactly hospital_a's deaths there
    small = {span: c for span, c in cells.items() if 0 < c < 3}
    # today: {(8, 32]: 2, (48, 56]: 1}, where hospital_a's own release says 3 deaths in (8, 56]
    assert not small, "hospital_a's own counts on the pooled bins are 1 and 2"


def test_defence_a_hostile_central_cannot_ask_pooled_bins_outside_a_masked_set_of_three(survival):
    """ADR 0052's node rule, against the hostile central site (its own credentials, crafting the request):
    ``survival_bins: pooled`` sent in the clear to one node, or to two, is refused before a row is read
    (control ``pooled_bins``): the central-side rule (pooled needs 3 masked nodes) is not the only one."""
    clients, _ = survival
    doc = request(["followup_days", "death_90d"], datasets=HOSPITALS, event_level="yes", bin_width=7.0,
                  survival_bins="pooled")
    for hospital in HOSPITALS[:2]:
        with pytest.raises(NodeRefused) as info:
            clients[hospital].step("kaplan_meier", doc, 0, None, researcher=RESEARCHER, project=PROJECT)
        assert info.value.control == "pooled_bins"
    with pytest.raises(Exception, match="pooled"):
        km(clients, HOSPITALS[:2], survival_bins="pooled")


def test_defence_a_poisson_gee_whose_fit_rests_on_two_patients_ends_without_coefficients(tmp_path):
    """ADR 0054 beyond the review that found it (a separated logistic regression): a Poisson GEE, whose MLE is
    finite.  Counts (mRS) are 0 for everyone but the two oldest patients (88.5 and 89.5 years); at the fit the
    weights ``mu = exp(a + b age)`` sit on those two, so the central site's sums of the late rounds would be
    their records.  The node refuses the round (control ``effective_rows``) and the analysis ends with no
    coefficients, though no separation and no divergence to infinity is involved."""
    from mipflow.exceptions import MipflowError

    frame = stroke_rows(3, 120, "hospital_a", "gee")
    rng = np.random.default_rng(3)
    frame["age"] = np.round(rng.uniform(30, 80, 120), 1)
    frame["mrs_90d"] = 0.0
    frame.loc[[0, 1], ["age", "mrs_90d"]] = [[88.5, 4.0], [89.5, 6.0]]
    root = tmp_path / "hospital_a"
    standard_home(root, "hospital_a")
    load_frame(root, STROKE, frame)
    grant_all(root)
    doc = request(["mrs_90d"], ["age"], family="poisson")
    with served_clients({"hospital_a": root}) as clients:
        with pytest.raises(MipflowError, match="effective_rows") as info:
            run_analysis("gee", doc, list(clients.values()), researcher=RESEARCHER, project=PROJECT)
    assert "No coefficients" in str(info.value)


# -------------------------------------------------------------------- consent, study stops and explore noise


@pytest.fixture(scope="module")
def consent(tmp_path_factory) -> Iterator[dict[str, Served]]:
    """Shipped nodes (``NodeHome.init``) holding rows as an ingest stores them (keyed pseudonyms): hospital_a and
    hospital_b each with an approved study (project ``severity``: linear regression of age on NIHSS); hospital_c
    answers project ``browse`` in explore mode (the default)."""
    base = Path(tmp_path_factory.mktemp("round12-consent"))
    roots, frames, credentials = {}, {}, {}
    for i, hospital in enumerate(HOSPITALS):
        root = roots[hospital] = base / hospital
        home = NodeHome.init(root, hospital)
        frame = frames[hospital] = stroke_rows(60 + i, 120, hospital, hospital).dropna().reset_index(drop=True)
        pseudonyms = Pseudonymiser(home.key())
        load_frame(root, STROKE, frame.assign(subjectcode=[pseudonyms.pseudonym(p) for p in frame["subjectcode"]]))
        grant_all(root, researcher="*", project=STUDY)
        grant_all(root, researcher="*", project=BROWSE)
        if hospital != "hospital_c":
            document = protocol(datasets=[hospital], variables=["age", "sex", "nihss_admission"],
                                algorithms=["linear_regression"], subgroups=[])
            document.pop("survival")
            assert study_approval.approve(home, STUDY, document)["status"] == "approved"
        credentials[hospital] = issue_client(root, "central")
    with running_nodes(list(roots.values())) as urls:
        yield {h: Served(url, credentials[h], roots[h], frames[h]) for h, url in zip(roots, urls)}


def regression(hospital: str) -> dict:
    return request(["age"], ["nihss_admission"], datasets=[hospital])


def test_hole_a_network_wide_withdrawal_stops_the_study_only_where_the_patient_was(consent):
    """Hole 5.  Class: consent withdrawals as a membership channel (ADR 0043, amended after the eleventh review)
    through a study's stop (ADR 0028).  A person withdraws consent everywhere (the registry at every hospital lists
    her, and someone never treated anywhere).  Before: both studies answer.  After: hospital_a, where she was in the
    study population, refuses every request (control ``study``, "rows of the study's snapshot ... changed"), and
    hospital_b answers: anyone in the project learns where she was treated."""
    a, b = consent["hospital_a"], consent["hospital_b"]
    before = [typed(node.call("linear_regression", regression(h), project=STUDY)) for h, node in
              (("hospital_a", a), ("hospital_b", b))]
    assert before == [(200, None), (200, None)]
    person = a.rows["subjectcode"].iloc[5]
    deleted = {h: apply_consent(consent[h].root, ["never-treated-here", person]) for h in ("hospital_a", "hospital_b")}
    assert deleted == {"hospital_a": 1, "hospital_b": 0}
    after = {h: typed(consent[h].call("linear_regression", regression(h), project=STUDY))
             for h in ("hospital_a", "hospital_b")}
    # before ADR 0059: {"hospital_a": (403, "study"), "hospital_b": (200, None)}: she was at hospital_a
    assert after["hospital_a"] == after["hospital_b"], "the stop tells which hospital held the withdrawn patient"
    # ADR 0059: both stop, with the same words (no data-derived value in them)
    def words(hospital: str) -> str:
        body = consent[hospital].call("linear_regression", regression(hospital), project=STUDY).json()
        text = json.dumps({k: v for k, v in body.items() if k != "node"}, sort_keys=True)
        return text.replace(study_approval.read_study(consent[hospital].root, STUDY).snapshot, "SNAPSHOT")

    assert words("hospital_a") == words("hospital_b") and "changed at this node" in words("hospital_a")
    # the honest admin's refresh moves the study to a new snapshot and it answers again (at hospital_b: no
    # row changed, the registry did)
    home = NodeHome(b.root)
    assert study_approval.refresh(home, STUDY)["status"] == "refreshed"
    assert typed(b.call("linear_regression", regression("hospital_b"), project=STUDY)) == (200, None)
    assert study_approval.refresh(home, STUDY)["status"] == "unchanged"  # nothing applied since


def test_defence_explore_noise_is_fresh_and_charged_after_a_refused_consent_deletes_a_row(consent):
    """Class: keyed noise reused across a change of the rows (ADR 0032: the noise is keyed by the query and the
    data version, which must move with every deletion).  The consent statuses are ``granted``, ``withdrawn`` and
    ``refused``; ADR 0043's version follows the *withdrawn* set.  A patient's status set to ``refused`` deletes her
    rows; the same explore request before and after is charged twice (a new release, fresh noise), and the
    noisy sums do not subtract to her age."""
    node = consent["hospital_c"]
    ask = request(["age"], datasets=["hospital_c"])
    first = node.call("descriptive_stats", ask, project=BROWSE)
    spent = node.spent(BROWSE)
    person = node.rows.iloc[7]
    assert apply_consent(node.root, [person["subjectcode"]], status="refused") == 1
    second = node.call("descriptive_stats", ask, project=BROWSE)
    assert (first.status_code, second.status_code) == (200, 200)
    assert node.spent(BROWSE)[1] == spent[1] + 1  # charged again: not a repeat of the first release

    def total(reply) -> float:
        moments = reply.json()["aggregates"]["datasets"]["hospital_c"]["variable_based"]["age"]["moments"]
        return moments["n"] * moments["mean"][0]

    assert abs((total(first) - total(second)) - person["age"]) > 0.5


def test_explore_noise_moves_at_a_node_that_held_no_one_when_a_consent_registry_changes(consent):
    """ADR 0059, the same rule for explore noise: a registry change that deletes no row here (a stranger
    withdraws) gives the same query fresh noise, charged again, as a deletion would."""
    node = consent["hospital_c"]
    ask = request(["nihss_admission"], datasets=["hospital_c"])
    first = node.call("descriptive_stats", ask, project=BROWSE)
    spent = node.spent(BROWSE)
    repeat = node.call("descriptive_stats", ask, project=BROWSE)
    assert repeat.json()["aggregates"] == first.json()["aggregates"] and node.spent(BROWSE) == spent
    assert apply_consent(node.root, ["someone-never-treated-anywhere"]) == 0
    second = node.call("descriptive_stats", ask, project=BROWSE)
    assert (first.status_code, second.status_code) == (200, 200)
    assert node.spent(BROWSE)[1] == spent[1] + 1  # a new release: fresh noise, charged
    assert second.json()["aggregates"] != first.json()["aggregates"]


# ------------------------------------------------------------------------------------------ honest work


def test_honest_researcher_work_the_attacks_start_from_is_answered(standard, survival, consent):
    """Nothing the attacks rely on refuses honest work: another outcome on a cohort answered before, PCA without a
    transformation, Kaplan-Meier by sex over the three pinned hospitals (pooled bins, the pooled counts equal to
    the rows'), the study's regression and an explore request."""
    node = standard["groups"]
    reply = node.call("anova_oneway", request(["age"], ["stroke_type"]), project=AUDIT)
    assert reply.status_code == 200, reply.text
    plain = standard["weighted"].call("pca_with_transformation",
                                      request(["glucose_mmol", "age"], data_transformation=None), project=AUDIT)
    assert plain.status_code == 200, plain.text
    clients, frames = survival
    outcome = km(clients, HOSPITALS)
    assert outcome.result["binning"]["partition"] == "pooled"
    everyone = pd.concat(frames.values())
    assert outcome.result["curves"][0]["n_events"] == int((everyone["death_90d"] == "yes").sum())
    study = consent["hospital_b"].call("linear_regression", regression("hospital_b"), project=STUDY)
    assert study.status_code == 200, study.text
    explore = consent["hospital_c"].call("pearson_correlation", request(["age", "nihss_admission"],
                                                                         datasets=["hospital_c"]), project=BROWSE)
    assert explore.status_code == 200 and explore.json()["mode"]["mode"] == "explore"
