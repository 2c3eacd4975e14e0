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

* ``test_defence_*`` check a closed hole (all five closed the same day: Cox regression takes the study's survival grid and
  partition, the survival time has no histograms in a study, approval checks every study's cohorts
  at the node together, and a refresh's histogram pattern protects each cell's change; ADR 0028, 0035).

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

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.central.rounds import run_analysis
from mipflow.node.controls import study_approval
from mipflow.node.controls.study import read_study
from mipflow.node.home import NodeHome
from mipflow.protocol.signing import issue_client
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import MEN, WOMEN, protocol, rule, stroke_rows, where
from tests.nodes import grant_all, load_frame, running_nodes, served_clients
from tests.privacy.test_study_attacks import Served, request_of
from tests.privacy.test_study_survival_attacks import fine_ends

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
        _ROOTS[id(clients[NODE])] = root
        yield clients[NODE]


_ROOTS: dict[int, Path] = {}


def cox_root(client: Any) -> Path:
    return _ROOTS[id(client)]


def test_defence_cox_in_a_study_takes_the_protocols_survival_grid_and_partition(cox_node) -> None:
    """Hole 1 (Cox with ``age`` as time, ``max_time`` swept around a known age) and hole 2 (two
    bin widths) are refused by the request alone, naming the study's grid: Cox regression in a
    study takes the protocol's survival time, event, bin width and no ``max_time``, like
    Kaplan-Meier; the same request is the same bytes whatever the rows."""
    swept = [request_of(y=("age", "death_90d"), x=("nihss_admission",), datasets=DATASETS, event_level="yes",
                        bin_width=0.05, max_time=cut) for cut in (51.95, 52.05)]
    widths = [request_of(y=("followup_days", "death_90d"), x=("nihss_admission",), datasets=DATASETS,
                         event_level="yes", bin_width=w) for w in (34.0, 33.9)]
    cut = [request_of(y=("followup_days", "death_90d"), x=("nihss_admission",), datasets=DATASETS,
                      event_level="yes", bin_width=7.0, max_time=364.0)]
    other_event = [request_of(y=("followup_days", "sex"), x=("nihss_admission",), datasets=DATASETS,
                              event_level="F", bin_width=7.0)]
    texts = set()
    for req in swept + widths + cut + other_event:
        with pytest.raises(Exception) as caught:
            result(cox_node, "cox_regression", req)
        text = str(caught.value)
        assert "refused (study)" in text and "Cox regression analyses take the study's survival grid" in text, text
        texts.add(text.split("refused (study): ", 1)[1])
    assert len(texts) == 1  # one message, naming the protocol's grid only
    # honest: Cox on the study's grid is answered, on the study's partition
    honest = result(cox_node, "cox_regression", request_of(y=("followup_days", "death_90d"), x=("nihss_admission",),
                                                             datasets=DATASETS, event_level="yes", bin_width=7.0))
    assert np.isfinite(np.asarray(honest["coefficients"], dtype=float)).all()
    ends = read_study(cox_root(cox_node), PROJECT).record["survival_ends"]
    assert honest["binning"]["bins_used"] <= len(ends)  # the study's partition bins, at most


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


def test_defence_histograms_before_and_after_a_refresh_subtract_to_nothing_small(tmp_path) -> None:
    """Hole 3 (the top age bin gaining exactly one new patient, a woman who died, in released cells
    before and after a refresh): the refreshed pattern also protects every cell of a cohort or a
    nested difference whose rows added or removed are 1 or 2 (the old counts are kept beside the
    pattern, 0600), so no bin released both before and after changes by 1 or 2; the refresh still
    passes and most bins are still released."""
    frame = stroke_rows(71, 300, NODE, "b")
    frame["nihss_admission"] = frame["nihss_admission"].fillna(10.0)
    root = node_with(tmp_path / "node", frame, {PROJECT: REFRESH_PROTOCOL})

    def histograms(client) -> dict[tuple, list]:
        out = result(client, "multiple_histograms",
                     request_of(y=("age",), x=("death_90d", "sex"), datasets=DATASETS, bins=10))
        return {(h["grouping_var"], h["grouping_enum"]): h["counts"] for h in out["histogram"]}

    with served_clients({NODE: root}) as clients:
        before = histograms(clients[NODE])
        load_frame(root, STROKE, next_export())
        assert study_approval.refresh(NodeHome(root), PROJECT)["status"] == "refreshed"
        after = histograms(clients[NODE])
    compared = 0
    for key, counts in after.items():
        for j, (new, old) in enumerate(zip(counts, before[key])):
            if new is None or old is None:
                continue
            compared += 1
            assert new - old == 0 or abs(new - old) >= TAB, (key, j, old, new)
    assert compared >= 20  # most bins still released on both sides


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


def test_defence_a_second_study_whose_cohorts_subtract_to_a_small_cell_is_not_approved(tmp_path) -> None:
    """Hole 4 (two projects' studies, elderly >= 65 and older >= 70, subtracting to the one death
    aged 65-69): the level-cell and atom rules now run over every approved study's cohorts at the
    node, so the second approval is refused, naming the cell for the admin; the first study stays
    answerable.  With more deaths in the band both studies are approved."""
    root = tmp_path / "node"
    protocols = two_protocols()
    node_with(root, band_registry(), {PROJECT: protocols[PROJECT]})
    grant_all(root, researcher="*", project=OTHER_PROJECT)
    with pytest.raises(Exception) as caught:
        study_approval.approve(NodeHome(root), OTHER_PROJECT, protocols[OTHER_PROJECT])
    message = str(caught.value)
    assert "not approved" in message and f"project {PROJECT!r}: subgroup 'elderly' minus subgroup 'older'" in message
    assert "death_90d=yes: 1 row(s)" in message
    assert read_study(root, OTHER_PROJECT) is None
    # honest: a band with deaths of both sexes lets both projects have their study
    frame = band_registry()
    band = frame.index[(frame["age"] >= 65) & (frame["age"] < 70)]
    frame.loc[band[: len(band) // 2], "death_90d"] = "yes"
    both = node_with(tmp_path / "other", frame, protocols)
    assert {read_study(both, p).record["status"] for p in protocols} == {"approved"}


def test_defence_two_studies_with_histograms_or_survival_at_one_node_are_refused_by_rule(tmp_path) -> None:
    """Suppression patterns and survival partitions are per family: a second study at the node with
    histograms or survival analyses on the same data model is refused, naming the other project."""
    root = tmp_path / "node"
    first = protocol(datasets=DATASETS, name="stroke-outcomes", algorithms=["descriptive_stats", "kaplan_meier"],
                     variables=STUDY_VARIABLES, survival={"time": "followup_days", "bin_width": 30.0,
                                                          "event": "death_90d"})
    node_with(root, band_registry(), {PROJECT: first})
    grant_all(root, researcher="*", project=OTHER_PROJECT)
    second = {**first, "name": "stroke-frailty", "algorithms": ["descriptive_stats", "multiple_histograms"]}
    second.pop("survival")
    with pytest.raises(Exception) as caught:
        study_approval.approve(NodeHome(root), OTHER_PROJECT, second)
    assert f"project {PROJECT!r} has an approved study at this node with histograms or survival" in str(caught.value)


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


def test_defence_histograms_of_the_survival_time_are_refused_by_the_request(tmp_path) -> None:
    """Hole 5: the study's histogram bins of the survival time beside Kaplan-Meier's partition left
    one day between them.  In a study with a survival grid the time variable is counted by the
    survival analyses only: its histograms are refused by the request alone (naming Kaplan-Meier),
    while Kaplan-Meier on the partition and histograms of other variables are answered."""
    root = node_with(tmp_path / "node", follow_up_registry(), {PROJECT: KM_PROTOCOL})
    ends = fine_ends(read_study(root, PROJECT).record["survival_ends"])
    with running_nodes([root]) as urls:
        served = Served(urls[0], issue_client(root, "central"))
        km = served.call("kaplan_meier", request_of(y=("followup_days", "death_90d"), x=("sex",), datasets=DATASETS,
                                                    event_level="yes", bin_width=7.0), project=PROJECT)
        hist = served.call("multiple_histograms", request_of(y=("followup_days",), x=("death_90d", "sex"),
                                                             datasets=DATASETS, bins=10), project=PROJECT)
        ages = served.call("multiple_histograms", request_of(y=("age",), x=("sex",), datasets=DATASETS, bins=10),
                           project=PROJECT)
    assert km.status_code == 200 and ages.status_code == 200, (km.text, ages.text)
    assert all(g["ends"] == ends for g in km.json()["aggregates"]["groups"])
    assert hist.status_code == 403 and hist.json()["control"] == "study"
    assert "use kaplan_meier" in hist.text and "729" not in hist.text
