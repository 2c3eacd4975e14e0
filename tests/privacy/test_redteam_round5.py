"""A fifth outside review of study mode (ADR 0028, 0035, 0008), by a hostile researcher with a valid grant.

Written from the documents only (docs/privacy.md, ADR 0028 with its level cells and survival partition,
ADR 0035, 0031, 0023, 0008, the README); the reviewer read no control's source.  Every attack runs
through real node processes (``mipflow node serve``) with the **shipped** settings (``NodeHome.init``:
``min_row_count`` 10, ``nfilter_tab`` 3), holding stroke rows, after the node admin approved a
plausible protocol (``study_approval.approve``); the attacker sends only requests the study admits,
through the central site's ``run_analysis`` (a researcher reads the result) or, where said, reads the
step replies the central site receives (``recording_clients``: the hostile or honest-but-curious
central site of docs/privacy.md, or a researcher working with it).

The level-cell rule now makes every cell of cohorts by nominal levels 0 or at least ``nfilter_tab``
(an approval with one small cell anywhere is refused), so the review went after what is *not* a
nominal level: numerical variables used as groupings, parameters a study leaves to the request,
and what lies outside one study's family (a refresh, a second study).

* ``test_hole_*`` PASS WHILE THE ATTACK SUCCEEDS (the node leaks); the lead turns them into defences.

Found (each recovers a value of one patient exactly):

1. Cox regression in a study takes any numerical study variable as its time, any ``bin_width`` and
   any ``max_time`` (only Kaplan-Meier is bound to the protocol's ``survival`` grid), and its merged
   bins are the request's, not the study's partition.  ``n_events`` of two analyses with
   ``age`` as time cut just below and just above the target's known age gives her death, sex and
   stroke type (each nominal variable as the event).
2. The same Cox analysis at two bin widths, read as the central site reads it: the risk-set sums
   of round 1 at the bin after the first differ by exactly the target's row, so her NIHSS and
   follow-up come out to the digit.
3. Histograms before and after a refresh: the refresh checks rows added per *cell of nominal
   levels* and recomputes ADR 0035's pattern on the new snapshot, but nothing keeps the two
   snapshots' released bins from subtracting to one new patient.
4. Two studies at one node (two projects; a researcher in both, or the central site, which may
   claim any granted project): elderly (>= 65) in one, >= 70 in the other.  The level-cell rule
   works within one family, so the two releases of deaths by level subtract to the only death aged
   65 to 69: her exact age, NIHSS, follow-up and sex.
5. Kaplan-Meier's study partition (7-day grid, merged) and the study's histogram bins of the same
   time variable (365-day bins) do not nest (ADR 0028 lists the nesting as "next"): the released
   cumulative counts at 728 days (Kaplan-Meier) and below 730 days (histogram) leave one patient,
   followed 729 days, with her death and sex.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms.packed import unpack
from mipflow.central.rounds import run_analysis
from mipflow.node.controls import study_approval
from mipflow.node.controls.study import read_study
from mipflow.node.home import NodeHome
from mipflow.protocol.signing import issue_client
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import ELDERLY, MEN, WOMEN, protocol, rule, stroke_rows, where
from tests.nodes import grant_all, load_frame, recording_clients, running_nodes, served_clients
from tests.privacy.test_study_attacks import Served, request_of

PROJECT = "stroke-outcomes-2027"
NODE = "hospital_a"
DATASETS = [NODE]
TAB = 3  # the shipped nfilter_tab


def node_with(root: Path, frame: pd.DataFrame, studies: dict[str, dict[str, Any]]) -> Path:
    """A node with the shipped settings holding ``frame``, a grant for every id of each project,
    and each project's protocol approved by the admin."""
    NodeHome.init(root, NODE)
    load_frame(root, STROKE, frame)
    for project, document in studies.items():
        grant_all(root, researcher="*", project=project)
        assert study_approval.approve(NodeHome(root), project, document)["status"] == "approved"
    return root


def result(client, algorithm: str, request: dict[str, Any], project: str = PROJECT) -> dict[str, Any]:
    return run_analysis(algorithm, request, [client], researcher="mallory", project=project).result


# --- 1 and 2: Cox regression in a study -----------------------------------------------------------------

#: what the attacker knows of the target: her age (52.0, one decimal as the registry keeps it) and
#: that she was treated at this hospital; the rest is what the attack recovers
COX_TARGET = {"age": 52.0, "sex": "F", "stroke_type": "haemorrhagic", "nihss_admission": 23.0,
              "followup_days": 41.0, "death_90d": "yes"}
COX_PROTOCOL = protocol(datasets=DATASETS, name="stroke-outcomes",
                        algorithms=["descriptive_stats", "linear_regression", "kaplan_meier", "cox_regression"],
                        survival={"time": "followup_days", "bin_width": 7.0, "event": "death_90d"})


def cox_registry(seed: int = 61, n: int = 400) -> pd.DataFrame:
    """Stroke rows with ages to one decimal; no one but the target aged 51.5 to 52.5."""
    frame = stroke_rows(seed, n, NODE, "cox")
    frame["age"] = np.random.default_rng(seed).uniform(30.0, 90.0, n).round(1)
    frame["nihss_admission"] = frame["nihss_admission"].fillna(10.0)
    frame.loc[(frame["age"] > 51.5) & (frame["age"] < 52.5), "age"] += 1.0
    for key, value in COX_TARGET.items():
        frame.loc[0, key] = value
    return frame


@pytest.fixture(scope="module")
def cox_node(tmp_path_factory) -> Iterator[Any]:
    root = node_with(Path(tmp_path_factory.mktemp("red5-cox")), cox_registry(), {PROJECT: COX_PROTOCOL})
    with served_clients({NODE: root}) as clients:
        yield clients[NODE]


def test_hole_cox_in_a_study_takes_any_time_variable_and_cut_so_a_known_age_gives_the_record(cox_node) -> None:
    """Class: release-shaping parameters left to the request in study mode (ADR 0023 principle 2,
    ADR 0008's open "Cox regression's max_time", ADR 0028's survival grid bound to Kaplan-Meier only).

    A researcher, from results only: Cox regression with ``y = [age, V]`` (``age`` as the "time",
    a nominal study variable V as the "event") and ``max_time`` 51.95 then 52.05 on a 0.05 grid.
    Rows beyond ``max_time`` are censored there, so ``n_events`` counts the rows with V's level and
    age up to the cut; the two counts differ by the patients aged 52.0: the target alone.  Recovers
    her death within 90 days, sex and stroke type (and that she is the only one: the other levels
    differ by 0).  Should have stopped it: the study's survival grid (time variable, bin width, no
    ``max_time``) applied to every survival algorithm of the study, Cox included, and Cox's bins
    summed into the study's survival partition."""
    def events_up_to(cut: float, event: str, level: str) -> int:
        req = request_of(y=("age", event), x=("nihss_admission",), datasets=DATASETS,
                         event_level=level, bin_width=0.05, max_time=cut)
        return int(result(cox_node, "cox_regression", req)["n_events"])

    recovered = {}
    for event, levels in {"death_90d": ("yes", "no"), "sex": ("F", "M"),
                          "stroke_type": ("ischaemic", "haemorrhagic", "tia")}.items():
        window = {level: events_up_to(52.05, event, level) - events_up_to(51.95, event, level) for level in levels}
        assert sum(window.values()) == 1  # one patient aged 51.95 to 52.05: the target
        recovered[event] = next(level for level, count in window.items() if count == 1)
    assert recovered == {k: COX_TARGET[k] for k in ("death_90d", "sex", "stroke_type")}


def test_hole_cox_risk_set_sums_at_two_bin_widths_give_the_targets_numerical_values(cox_node) -> None:
    """Class: release-shaping parameters in study mode (a free ``bin_width``: ADR 0023 slice 2's
    "bin_width is free", ADR 0008's "sweeps of bin_width"), read by the central site.

    Cox regression with ``age`` as time, covariates NIHSS and follow-up, bin widths 34 and 33.9 from
    the declared minimum 18: the first grid point is 52.0 in one and 51.9 in the other, so the risk
    set of the second bin is the rows aged over 52.0 in one and over 51.9 in the other.  Round 1's
    risk-set sums (``s0``, ``s1``: counts and centred covariate sums, which the central site receives
    in the clear from a single node) differ by the target's row alone; adding the released mean gives
    her NIHSS and follow-up exactly.  Should have stopped it: the study's grid and partition for
    every survival algorithm (one time variable, one bin width), so no two requests' bins differ by
    a row."""
    replies = {}
    with recording_clients([cox_node]) as (recording, seen):
        for width in (34.0, 33.9):
            seen.clear()
            req = request_of(y=("age", "death_90d"), x=("nihss_admission", "followup_days"), datasets=DATASETS,
                             event_level="yes", bin_width=width)
            run_analysis("cox_regression", req, recording, researcher="mallory", project=PROJECT)
            replies[width] = {round_no: reply["aggregates"] for _, round_no, reply in seen}
    mean = np.asarray(replies[34.0][0]["moments"]["mean"])
    assert np.allclose(mean, replies[33.9][0]["moments"]["mean"])  # the same rows: the same centring
    s0 = {w: unpack(replies[w][1]["s0"]) for w in replies}
    s1 = {w: unpack(replies[w][1]["s1"]) for w in replies}
    one = s0[33.9][1] - s0[34.0][1]
    assert math.isclose(one, 1.0, abs_tol=1e-9)  # exactly one row between: exp(x'b) = 1 at round 1
    values = mean + (s1[33.9][1] - s1[34.0][1]) / one
    assert np.allclose(values, [COX_TARGET["nihss_admission"], COX_TARGET["followup_days"]], atol=1e-6), values


# --- 3: histograms before and after a refresh ------------------------------------------------------------

REFRESH_PROTOCOL = protocol(datasets=DATASETS, name="stroke-outcomes",
                            algorithms=["descriptive_stats", "multiple_histograms", "linear_regression"],
                            variables=["age", "sex", "nihss_admission", "followup_days", "death_90d"],
                            histogram_bins=10)
REFRESH_PROTOCOL.pop("survival")


def next_export(seed: int = 72) -> pd.DataFrame:
    """The hospital's next export: 30 elderly patients, 15 women and 15 men, 6 deaths in each (so
    every cohort gains 0 or >= min_row_count rows and every cell of nominal levels 0 or >= 3).  One
    of them is the target, a woman of 86 (the attacker knows her age and that she came in since the
    last export); everyone else in the export is 66 to 79."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(30):
        dead = k % 15 < 6
        rows.append({"subjectcode": f"new-{k}", "dataset": NODE, "age": float(rng.integers(66, 80)),
                     "sex": "F" if k < 15 else "M", "stroke_type": "ischaemic",
                     "nihss_admission": float(rng.integers(2, 15)),
                     "followup_days": float(rng.integers(5, 80) if dead else rng.integers(100, 900)),
                     "death_90d": "yes" if dead else "no"})
    rows[0].update({"subjectcode": "target", "age": 86.0, "nihss_admission": 23.0, "followup_days": 41.0})
    return pd.DataFrame(rows)


def test_hole_histograms_before_and_after_a_refresh_give_a_new_patients_death(tmp_path) -> None:
    """Class: rows added at a refresh, binned by a numerical variable (ADR 0028's refresh rule counts
    rows per cohort and per cell of nominal levels; ADR 0035's pattern is per snapshot).

    The researcher asks the study's age histogram by death and sex on the population before the
    refresh and after it.  The refresh passes (30 rows added, 0 or >= 3 per nominal cell), and the
    top age bin (82.8 to 90) gains exactly one row, one death and one woman in released cells (the
    bin's "no" cell is hidden; it is not needed): the
    target, whom the attacker knows to be 86 and newly admitted, died.  Should have stopped it: the
    refresh checking (and the pattern protecting) every released bin's change between the two
    snapshots, as the survival partition does for Kaplan-Meier's bins."""
    frame = stroke_rows(71, 300, NODE, "b")
    frame["nihss_admission"] = frame["nihss_admission"].fillna(10.0)
    root = node_with(tmp_path / "node", frame, {PROJECT: REFRESH_PROTOCOL})

    def top_age_bin(client) -> dict[tuple, int | None]:
        out = result(client, "multiple_histograms",
                     request_of(y=("age",), x=("death_90d", "sex"), datasets=DATASETS, bins=10))
        return {(h["grouping_var"], h["grouping_enum"]): h["counts"][9] for h in out["histogram"]}

    with served_clients({NODE: root}) as clients:
        before = top_age_bin(clients[NODE])
        load_frame(root, STROKE, next_export())
        assert study_approval.refresh(NodeHome(root), PROJECT)["status"] == "refreshed"
        after = top_age_bin(clients[NODE])
    keys = [(None, None), ("death_90d", "yes"), ("sex", "F"), ("sex", "M")]
    assert all(before[k] is not None and after[k] is not None for k in keys)  # released, exact
    change = {k: after[k] - before[k] for k in keys}
    assert change == {(None, None): 1, ("death_90d", "yes"): 1,
                      ("sex", "F"): 1, ("sex", "M"): 0}  # one new patient of 82.8+: a woman who died


# --- 4: two studies at one node ---------------------------------------------------------------------------

OTHER_PROJECT = "stroke-frailty-2027"
OLDER = where(rule("age", "greater_or_equal", 70))
BAND_TARGET = {"age": 66.3, "sex": "F", "nihss_admission": 23.0, "followup_days": 41.0, "death_90d": "yes"}
STUDY_VARIABLES = ["age", "sex", "nihss_admission", "followup_days", "death_90d"]
STUDY_ALGORITHMS = ["descriptive_stats", "linear_regression", "contingency_table", "ttest_independent"]


def two_protocols() -> dict[str, dict[str, Any]]:
    outcomes = protocol(datasets=DATASETS, name="stroke-outcomes", algorithms=STUDY_ALGORITHMS,
                        variables=STUDY_VARIABLES)
    frailty = protocol(datasets=DATASETS, name="stroke-frailty", algorithms=STUDY_ALGORITHMS,
                       variables=STUDY_VARIABLES,
                       subgroups=[{"name": "older", "filter": OLDER}, {"name": "women", "filter": WOMEN},
                                  {"name": "men", "filter": MEN}])
    for document in (outcomes, frailty):
        document.pop("survival")
    return {PROJECT: outcomes, OTHER_PROJECT: frailty}


def band_registry(seed: int = 101, n: int = 400) -> pd.DataFrame:
    """Ages to one decimal; of the patients aged 65 to 69 (about thirty), only the target died."""
    frame = stroke_rows(seed, n, NODE, "r")
    frame["age"] = np.random.default_rng(seed).uniform(30.0, 90.0, n).round(1)
    frame["nihss_admission"] = frame["nihss_admission"].fillna(10.0)
    frame.loc[(frame["age"] >= 65) & (frame["age"] < 70), "death_90d"] = "no"
    for key, value in BAND_TARGET.items():
        frame.loc[0, key] = value
    return frame


def test_hole_two_studies_at_one_node_subtract_to_one_patients_record(tmp_path) -> None:
    """Class: differencing across two studies' families at one node (level cells are decided
    within one family; approval checks the other study's cohorts only with the pairwise and atom
    rules at ``min_row_count``, and the band 65-69 holds about thirty rows).

    Project A's study has subgroup elderly (age >= 65), project B's (another research group on the
    same registry) older (age >= 70); both approvals pass.  A researcher granted in both (or the
    central site, which may claim any granted project) runs in each: ``contingency_table`` sex x
    death and ``linear_regression`` of age, NIHSS and follow-up on death.  Deaths by sex subtract to
    one woman; count x (intercept + coefficient) is each cohort's sum over its deaths, and those
    subtract to her exact age, NIHSS and follow-up.  Should have stopped it: the level cells (and
    the atom rule on cells) over every approved study's cohorts at the node, not one family."""
    root = node_with(tmp_path / "node", band_registry(), two_protocols())
    with served_clients({NODE: root}) as clients:
        client = clients[NODE]
        deaths, sums = {}, {}
        for project, cohort in ((PROJECT, ELDERLY), (OTHER_PROJECT, OLDER)):
            table = result(client, "contingency_table",
                           request_of(y=("death_90d",), x=("sex",), datasets=DATASETS, filters=cohort), project)
            yes = table["col_levels"].index("yes")
            deaths[project] = {sex: row[yes] for sex, row in zip(table["row_levels"], table["observed"])}
            n_dead = sum(deaths[project].values())
            sums[project] = {}
            for variable in ("age", "nihss_admission", "followup_days"):
                fit = result(client, "linear_regression",
                             request_of(y=(variable,), x=("death_90d",), datasets=DATASETS, filters=cohort), project)
                intercept, dead = fit["coefficients"][0], fit["coefficients"][fit["indep_vars"].index("death_90d[yes]")]
                sums[project][variable] = n_dead * (intercept + dead)
    band = {sex: deaths[PROJECT][sex] - deaths[OTHER_PROJECT][sex] for sex in ("F", "M")}
    assert band == {"F": 1, "M": 0}  # one death aged 65 to 69, a woman
    record = {v: round(sums[PROJECT][v] - sums[OTHER_PROJECT][v], 6) for v in sums[PROJECT]}
    assert record == {"age": BAND_TARGET["age"], "nihss_admission": BAND_TARGET["nihss_admission"],
                      "followup_days": BAND_TARGET["followup_days"]}


# --- 5: Kaplan-Meier's partition against the histogram bins of the time variable -----------------------

KM_PROTOCOL = protocol(datasets=DATASETS, name="stroke-outcomes",
                       algorithms=["descriptive_stats", "kaplan_meier", "multiple_histograms"],
                       variables=["age", "sex", "followup_days", "death_90d"], histogram_bins=10,
                       survival={"time": "followup_days", "bin_width": 7.0, "event": "death_90d"})
KM_TARGET_DAY = 729.0


def follow_up_registry(seed: int = 91) -> pd.DataFrame:
    """Patients followed in a few weeks, three of every kind (young/elderly x sex x death) in each,
    so the study partition keeps those weeks; the target, a young woman who died, was followed 729
    days, in the week ending on day 735 with another block seen from day 730 on."""
    rng = np.random.default_rng(seed)
    rows = []
    for block, (first, last) in enumerate([(71, 77), (351, 357), (715, 721), (730, 735), (841, 847), (1100, 1106)]):
        for young in (True, False):
            for sex in ("F", "M"):
                for dead in ("yes", "no"):
                    for k in range(3):
                        rows.append({"subjectcode": f"b{block}-{young}-{sex}-{dead}-{k}", "dataset": NODE,
                                     "age": round(float(rng.uniform(30, 64) if young else rng.uniform(65, 90)), 1),
                                     "sex": sex, "death_90d": dead, "stroke_type": "ischaemic",
                                     "nihss_admission": float(rng.integers(0, 30)),
                                     "followup_days": float(rng.integers(first, last + 1))})
    rows.append({"subjectcode": "target", "dataset": NODE, "age": 44.0, "sex": "F", "death_90d": "yes",
                 "stroke_type": "ischaemic", "nihss_admission": 23.0, "followup_days": KM_TARGET_DAY})
    return pd.DataFrame(rows)


def test_hole_kaplan_meier_partition_and_histogram_bins_of_the_time_variable_leave_one_day(tmp_path) -> None:
    """Class: two partitions of one numerical variable that do not nest (ADR 0028: "the grid
    nesting the histogram bins and sharing their pattern" is open).

    The study's Kaplan-Meier (by sex, the protocol's 7-day grid merged into the study's partition)
    releases cumulative events and censorings at day 728; the study's histogram of ``followup_days``
    (10 bins of 365 days, by death and by sex) releases the rows below day 730.  Both are released
    exactly (every cell 0 or >= 3), yet the two cumulative counts differ by the rows followed 729
    days: the target alone, a woman who died.  The attacker who knows the target's follow-up (her
    last visit) learns her death.  Should have stopped it: the survival partition's ends refining
    the histogram edges (or the histogram bins sharing the partition), with one pattern over both."""
    root = node_with(tmp_path / "node", follow_up_registry(), {PROJECT: KM_PROTOCOL})
    ends = read_study(root, PROJECT).record["survival_ends"]
    with running_nodes([root]) as urls:
        served = Served(urls[0], issue_client(root, "central"))
        km = served.call("kaplan_meier", request_of(y=("followup_days", "death_90d"), x=("sex",), datasets=DATASETS,
                                                    event_level="yes", bin_width=7.0), project=PROJECT)
        hist = served.call("multiple_histograms", request_of(y=("followup_days",), x=("death_90d", "sex"),
                                                             datasets=DATASETS, bins=10), project=PROJECT)
    assert km.status_code == 200 and hist.status_code == 200, (km.text, hist.text)
    groups = {g["level"]: g for g in km.json()["aggregates"]["groups"]}
    cut = ends.index(104)  # grid point 104 = day 728 is an end of the study's partition
    assert all(g["ends"] == ends for g in groups.values())

    def km_upto(level: str, kind: str) -> int:  # released counts at days <= 728
        return int(sum(groups[level][kind][:cut + 1]))

    bins = {(h["grouping_var"], h["grouping_enum"]): h["counts"] for h in hist.json()["aggregates"]["histograms"]}
    assert all(None not in counts[:2] for counts in bins.values())  # days 0..729: released

    def below_730(key) -> int:
        return int(bins[key][0] + bins[key][1])

    everyone = sum(km_upto(s, "events") + km_upto(s, "censored") for s in ("F", "M"))
    deaths = sum(km_upto(s, "events") for s in ("F", "M"))
    women = km_upto("F", "events") + km_upto("F", "censored")
    assert below_730((None, None)) - everyone == 1  # one patient followed 729 days
    assert below_730(("death_90d", "yes")) - deaths == 1  # she died
    assert below_730(("sex", "F")) - women == 1  # a woman
