"""Second red-team round against the shipped default (ADR 0038: explore mode), from the documents only.

One real node process (``mipflow node serve``) built with ``NodeHome.init`` and nothing changed, holding
two stroke datasets: ``hospital_a`` (200 rows) and ``hospital_b`` (12 rows).  One patient of
``hospital_a`` (the *target*) is the only one with a glucose value, the only one who had thrombolysis
and the only one whose onset-to-door time is not at the declared minimum (0): a rarely measured
variable, a rare treatment and a variable at its bound, as real registries have them.  The attacker
is a hostile researcher with project-wide grants (any researcher id) sending documented requests
(``POST /v1/steps/{algorithm}``, ``GET /v1/metadata``); one of its projects was set to standard mode
by the node admin (``mipflow mode set HOME --project P standard``, documented).

The review found two exact holes, both through the metadata's dataset counts; both are fixed and
their tests assert the defence.  ``test_documented_limit_*`` states a limit the documents name;
``test_defence_*`` assert the defences that held at once.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pandas as pd
import pytest

from mipflow.cli import main
from mipflow.node.controls.explore_decision import decision_split
from mipflow.node.home import NodeHome
from mipflow.node.store.feature_store import FeatureStore
from mipflow.protocol.datamodel import load_data_model
from mipflow.protocol.signing import issue_client, signed_headers
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import rule, stroke_rows, where
from tests.nodes import grant_all, load_frame, running_nodes
from tests.privacy.test_explore_attacks import Served

BOTH = ["hospital_a", "hospital_b"]
A = ["hospital_a"]
TARGET = "a-5"
STANDARD = "std-project"
PROJECTS = ("meta", STANDARD, "layout", "rewrites", "shape", "budget-a", "budget-b", "models", "mixed-e")
_ids = itertools.count()


def _rows() -> pd.DataFrame:
    frame = pd.concat([stroke_rows(1, 200, "hospital_a", "a"), stroke_rows(2, 12, "hospital_b", "b")],
                      ignore_index=True)
    frame["glucose_mmol"] = np.nan
    frame["thrombolysis"] = "no"
    frame["onset_to_door_min"] = 0.0  # the declared minimum
    target = frame["subjectcode"] == TARGET
    frame.loc[target, ["glucose_mmol", "thrombolysis", "onset_to_door_min", "sex", "nihss_admission"]] = \
        [7.5, "yes", 1440.0, "F", 20.0]
    return frame


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[Served]:
    root = Path(tmp_path_factory.mktemp("redteam-round2"))
    home = NodeHome.init(root, "hospital")  # the shipped settings
    assert home.settings.default_mode == "explore"
    frame = _rows()
    load_frame(root, STROKE, frame)
    for project in PROJECTS:
        grant_all(root, researcher="*", project=project)
    assert main(["mode", "set", str(root), "--project", STANDARD, "standard"]) == 0  # the admin's documented choice
    credential = issue_client(root, "central")
    with running_nodes([root]) as (url,):
        yield Served(url, credential, root, frame)


def ask(node: Served, algorithm: str, project: str, y=("age",), x=(), filters=None, datasets=BOTH,
        data_model: str = STROKE.key, **parameters: Any) -> httpx.Response:
    request = {"inputdata": {"data_model": data_model, "datasets": list(datasets), "x": list(x), "y": list(y),
                             "filters": filters}, "parameters": parameters}
    return node.call(algorithm, request, project=project, researcher=f"mallory-{next(_ids)}")


def metadata(node: Served, project: str) -> dict[str, int]:
    """GET /v1/metadata as the central site asks it for a researcher of ``project``: dataset -> row count."""
    path = f"/v1/metadata?researcher=mallory&project={project}"
    headers = signed_headers(node.credential.client_id, node.credential.secret, "GET", path, b"")
    reply = httpx.get(node.url + path, headers=headers, timeout=30)
    assert reply.status_code == 200, reply.text
    model = next(m for m in reply.json()["data_models"] if m["data_model"] == STROKE.key)
    return {d["dataset"]: d["row_count"] for d in model["datasets"]}


def layout(value: Any) -> Any:
    """The reply's shape: keys, list lengths, types (a withheld count, ``null``, reads as a count: it is
    decided on the noisy value, ADR 0032)."""
    if value is None:
        return "int"
    if isinstance(value, dict):
        return {k: layout(v) for k, v in value.items()}
    if isinstance(value, list):
        return ["list", len(value), [layout(v) for v in value]]
    return type(value).__name__


# ------------------------------------------------------------------------------------------- holes


def test_metadata_counts_are_approximate_so_they_are_no_free_everyone_cohort(node):
    """Found by this review (standard-mode projects): ``GET /v1/metadata`` gave the exact row count of
    each dataset, an "everyone" cohort no ledger records, so ONE exact release of ``NOT target OR
    secret`` told the secret (rows = N or N - 1).  Fixed: the published count is keyed noise on the
    count, rounded to tens (``mipflow.node.controls.metadata_counts``): it does not tell N from N - 1.
    Checked over 400 node keys (a node's key is secret): the published values of N and N - 1 are the
    same for most keys, and the rounded value is never the exact count's last digit."""
    import secrets

    from mipflow.node.controls.metadata_counts import published_count

    counts = metadata(node, STANDARD)
    assert counts["hospital_a"] % 10 == 0
    same = 0
    for _ in range(400):
        key = secrets.token_bytes(32)
        values = [published_count(n, key=key, data_model=STROKE.key, dataset="hospital_a", min_row_count=10)
                  for n in (199, 200)]
        same += values[0] == values[1]
        assert all(v % 10 == 0 for v in values)
    assert same >= 200, same  # about 7 in 10: the count tells nothing about one row either way


def test_metadata_counts_do_not_tell_one_patients_arrival_or_withdrawal(node):
    """Found by this review (the shipped default): the metadata told exactly how many rows each load
    added and each consent withdrawal removed, uncharged.  Fixed: counts are approximate (keyed by
    the count, rounded to tens), so a change is a multiple of ten, never the one row that changed."""
    before = metadata(node, "meta")
    spent = node.spent("meta")
    late = stroke_rows(9, 1, "hospital_a", "late-arrival")
    load_frame(node.root, STROKE, late)
    after_load = metadata(node, "meta")
    assert (after_load["hospital_a"] - before["hospital_a"]) % 10 == 0  # never exactly 1
    store = FeatureStore(NodeHome(node.root).db_url)
    try:
        assert store.delete_patients(["late-arrival-0"]) == 1  # the consent path's deletion
    finally:
        store.dispose()
    after_withdrawal = metadata(node, "meta")
    assert (after_load["hospital_a"] - after_withdrawal["hospital_a"]) % 10 == 0
    assert after_withdrawal["hospital_a"] == before["hospital_a"]  # the same count publishes the same value
    assert node.spent("meta") == spent == (0.0, 0)


def test_documented_limit_each_project_brings_its_own_explore_budget_on_the_same_patients(node):
    """A DOCUMENTED LIMIT (ADR 0025, 0038: "several projects of the same people ... each have their own budgets", ADR
    0025): a researcher holding grants in two projects spends each project's explore budget on the
    same patient; the per-researcher budget does not bind across them because any researcher id of a
    granted project is accepted.  The node's budget lowered to 3 per project to keep the test short:
    project A refuses the fourth release, project B answers three more rewrites of the same cohort."""
    home = NodeHome(node.root)
    home.set_setting("explore_project_budget_epsilon", 3.0)
    try:
        def cohort(k: int) -> dict:  # the same rows (everyone older than the youngest), rewritten
            return where(rule("age", "greater", 1.0 + k / 1000))

        replies = {p: [ask(node, "multiple_histograms", p, y=("nihss_admission",), datasets=A, bins=5,
                           filters=cohort(k + (10 if p == "budget-b" else 0))) for k in range(4)]
                   for p in ("budget-a", "budget-b")}
    finally:
        home.set_setting("explore_project_budget_epsilon", 50.0)
    for project, answers in replies.items():
        assert [r.status_code for r in answers[:3]] == [200, 200, 200]
        assert answers[3].status_code == 403 and answers[3].json()["control"] == "dp_budget"
        assert node.spent(project) == (pytest.approx(3.0), 3)
    # six independent noisy releases of one cohort: twice what one project's budget allows.  Independent draws of
    # four or five rounded Laplace counts (scale ~2) coincide now and then (about 1e-4 a pair: one run in several
    # hundred saw two equal), so at least five distinct: an answer repeated (a cached or keyed release) gives at most
    # two distinct here, one per project, and fails.
    draws = {json.dumps(r.json()["aggregates"]) for p in replies for r in replies[p][:3]}
    assert len(draws) >= 5


# ---------------------------------------------------------------------------------------- defences


def _secret_filter(secret: dict) -> dict:
    """Everyone of hospital_a but the target, plus the target exactly when ``secret`` holds for them."""
    return where(rule("subjectcode", "not_equal", TARGET),
                 where(rule("subjectcode", "equal", TARGET), secret), condition="OR")


LAYOUT_CASES = [
    # a variable only the target has (all missing without them), a level only the target has
    ("descriptive_stats", dict(y=("glucose_mmol", "thrombolysis", "onset_to_door_min"))),
    ("multiple_histograms", dict(y=("onset_to_door_min",), x=("thrombolysis",), bins=4)),
    ("multiple_histograms", dict(y=("thrombolysis",), x=("sex",))),
    # a design singular without the target: a 0/1 indicator column of zeros, a constant column at its bound
    ("linear_regression", dict(y=("nihss_admission",), x=("age", "thrombolysis", "onset_to_door_min"))),
    ("pearson_correlation", dict(y=("nihss_admission", "onset_to_door_min"))),
    ("kaplan_meier", dict(y=("followup_days", "death_90d"), x=("thrombolysis",), event_level="yes",
                          bin_width=365, max_time=730)),
    ("contingency_table", dict(y=("thrombolysis",), x=("sex",))),
]


@pytest.mark.parametrize("algorithm,params", LAYOUT_CASES,
                         ids=[f"{a}-{i}" for i, (a, _) in enumerate(LAYOUT_CASES)])
def test_defence_a_variable_level_or_column_only_the_target_has_does_not_change_status_or_layout(
        node, algorithm, params):
    """DEFENCE: with and without the target (the only row with glucose, thrombolysis and a non-minimal
    onset time), each explore algorithm answers with the same status and the same layout: no 400/500
    from an all-missing variable, an absent level, a zero indicator or a constant column (the exact
    local step that would fail on a singular design does not run), each release charged."""
    outcomes = []
    before = node.spent("layout")[1]
    for secret in (rule("age", "greater", 0.0), rule("age", "less", 0.0)):  # true / false for the target
        reply = ask(node, algorithm, "layout", datasets=A, filters=_secret_filter(secret), **params)
        assert reply.status_code == 200, reply.text
        doc = reply.json()
        assert doc["mode"]["mode"] == "explore"
        outcomes.append((layout(doc["aggregates"]), sorted(doc["privacy"]["noise_sd"])))
    assert outcomes[0] == outcomes[1]
    assert node.spent("layout")[1] == before + 2


def test_defence_cosmetic_rewrites_of_a_filter_are_one_release_charged_once(node):
    """DEFENCE (shared noise, and averaging over rewrites): rewrites that select the same rows (``65``
    vs ``65.0``, QueryBuilder's ``type``/``input`` keys, a nested group, a one-rule OR, ``condition``
    case) are one release: the filter is keyed in canonical form (ADR 0032, after a sixth outside
    review), so they get the same bytes and are charged once, and averaging them gains nothing; a
    filter that selects other rows is another release, charged.  Malformed ones are refused before
    the rows (400, the same whatever the data)."""
    def r(**kw) -> dict:
        base = {"id": "age", "field": "age", "type": "double", "input": "number",
                "operator": "greater_or_equal", "value": 65}
        return {**base, **kw}

    variants = [where(r()), where(r(value=65.0)), where(r(type="string")), where(r(type="integer")),
                where(r(input="text")), {"condition": "AND", "rules": [r()]}, where(where(r())),
                where(r(), condition="OR"), {"condition": "and", "rules": [r()], "valid": True}]
    before = node.spent("rewrites")[1]
    replies = [ask(node, "multiple_histograms", "rewrites", y=("sex",), datasets=A, filters=f) for f in variants]
    assert all(x.status_code == 200 for x in replies), [x.text for x in replies]
    assert [x.json()["privacy"]["repeat"] for x in replies] == [False] + [True] * (len(variants) - 1)
    assert all(x.json()["aggregates"] == replies[0].json()["aggregates"] for x in replies)
    assert node.spent("rewrites")[1] == before + 1
    other = ask(node, "multiple_histograms", "rewrites", y=("sex",), datasets=A, filters=where(r(value=66)))
    assert other.status_code == 200 and other.json()["privacy"]["repeat"] is False
    assert node.spent("rewrites")[1] == before + 2
    for bad in (where(r(value="65")), where(r(id="nihss_admission")), {**where(r()), "valid": False}):
        refused = ask(node, "multiple_histograms", "rewrites", y=("sex",), datasets=A, filters=bad)
        assert refused.status_code == 400 and not any(ch.isdigit() for ch in refused.json()["detail"].replace("65", ""))


def test_defence_extra_groupings_scale_the_noise_and_duplicates_are_refused(node):
    """DEFENCE (one row in several released vectors at the cost of one): a histogram grouped by two
    variables puts each row in three vectors (overall, its sex, its stroke type) and its noise sd is
    three times the ungrouped one (epsilon split over the vectors); naming a grouping twice, or two
    variables for Kaplan-Meier or a contingency table, is refused before the rows (400)."""
    sds = []
    for x in ((), ("sex",), ("sex", "stroke_type")):
        reply = ask(node, "multiple_histograms", "shape", y=("nihss_admission",), x=x, datasets=A, bins=5)
        assert reply.status_code == 200, reply.text
        sds.append({block: v["sd"] for block, v in reply.json()["privacy"]["noise_sd"].items()
                    if block != "row_count"})  # the release's vectors (the decision count is the same for all)
    base = sds[0]["overall"]
    # epsilon 1 less the decision count's share (ADR 0032's decision count: 0.30 at min_row_count 10)
    assert base == pytest.approx(np.sqrt(2) / decision_split("laplace", 1.0, 0.0, 10).release_epsilon)
    assert sorted(sds[1].values()) == pytest.approx([2 * base] * 2)
    assert sorted(sds[2].values()) == pytest.approx([3 * base] * 3)
    refused = [ask(node, "multiple_histograms", "shape", y=("nihss_admission",), x=("sex", "sex"), bins=5),
               ask(node, "kaplan_meier", "shape", y=("followup_days", "death_90d"), x=("sex", "sex"),
                   event_level="yes", bin_width=365, max_time=730),
               ask(node, "contingency_table", "shape", y=("stroke_type",), x=("sex", "diabetes")),
               ask(node, "contingency_table", "shape", y=("sex",), x=("sex",))]
    assert [r.status_code for r in refused] == [400] * 4


def test_defence_noisy_totals_are_post_processed_consistently_not_exact(node):
    """DEFENCE (consistency checks as an oracle): in an explore reply every total is read off noisy
    parts: Kaplan-Meier's ``group_n`` is the sum of its noisy cells, the reply's ``rows`` is noisy
    (since ADR 0032's decision count, a noisy count of its own, block ``row_count``, not the sum of
    the cells); a tiny cohort's zeros are clamps of noisy values, not exact (the same cohort of one
    gets nonzero cells)."""
    km = ask(node, "kaplan_meier", "shape", y=("followup_days", "death_90d"), x=("sex",), event_level="yes",
             bin_width=365, max_time=730, datasets=A)
    assert km.status_code == 200
    agg = km.json()["aggregates"]
    assert agg["group_n"] == [sum(g["events"]) + sum(g["censored"]) for g in agg["groups"]]
    table = ask(node, "contingency_table", "shape", y=("stroke_type",), x=("sex",), datasets=A)
    assert table.status_code == 200
    assert table.json()["privacy"]["decision"]["block"] == "row_count" and "row_count" in table.json()["privacy"]["noise_sd"]
    hist = ask(node, "multiple_histograms", "shape", y=("stroke_type",), x=("sex",), datasets=A)
    assert hist.status_code == 200
    complete = node.rows[node.rows["dataset"] == "hospital_a"].dropna(subset=["stroke_type", "sex"])
    exact = len(complete)
    released = [km.json()["rows"], table.json()["rows"], hist.json()["rows"]]
    assert released != [exact] * 3, released  # noisy (all three exact: P about 1e-3)


def test_defence_the_project_budget_binds_across_data_models_of_the_same_patients(node, tmp_path):
    """DEFENCE (budgets across data models/versions): the same patients loaded under a second data
    model version are charged to the same project ledger; once the project's explore budget is spent
    under one version, the other version is refused ``dp_budget`` too."""
    doc = json.loads((Path(__file__).parents[2] / "include" / "schemas" / "stroke_v_0_1" /
                      "CDEsMetadata.json").read_text())
    doc["version"] = "0.2"
    (tmp_path / "CDEsMetadata.json").write_text(json.dumps(doc))
    v2 = load_data_model(tmp_path / "CDEsMetadata.json")
    load_frame(node.root, v2, node.rows)
    home = NodeHome(node.root)
    home.set_setting("explore_project_budget_epsilon", 2.0)
    try:
        first = [ask(node, "multiple_histograms", "models", y=("nihss_admission",), datasets=A, bins=b)
                 for b in (5, 6)]
        other = ask(node, "multiple_histograms", "models", y=("nihss_admission",), datasets=A, bins=5,
                    data_model=v2.key)
    finally:
        home.set_setting("explore_project_budget_epsilon", 50.0)
    assert [r.status_code for r in first] == [200, 200]
    assert other.status_code == 403 and other.json()["control"] == "dp_budget", other.text


def test_defence_explore_answers_add_nothing_exact_to_a_standard_projects_refused_pair(node):
    """DEFENCE (explicit mixing): the researcher's standard project refuses "everyone" after
    "everyone but the target" (ledger); the explore project answers "everyone" (explore releases are
    not in the ledger), but only noisily: the difference is the target's cells plus noise, never
    the exact cells, and the explore answer does not make the standard project answer the pair."""
    b = ["hospital_b"]  # untouched by the other tests' standard-mode cohorts
    rows_b = node.rows[(node.rows["dataset"] == "hospital_b") & node.rows["nihss_admission"].notna()]
    who = rows_b.iloc[3]
    but_target = where(rule("subjectcode", "not_equal", who["subjectcode"]))
    exact = ask(node, "multiple_histograms", STANDARD, y=("nihss_admission",), datasets=b, bins=20, filters=but_target)
    assert exact.status_code == 200 and "mode" not in exact.json(), exact.text
    noisy = ask(node, "multiple_histograms", "mixed-e", y=("nihss_admission",), datasets=b, bins=20)
    assert noisy.status_code in (200, 403)  # 12 rows: decided on the noisy count
    if noisy.status_code == 200:
        assert noisy.json()["mode"]["mode"] == "explore"
        diff = (np.nan_to_num(np.array(noisy.json()["aggregates"]["histograms"][0]["counts"], dtype=float))
                - np.nan_to_num(np.array(exact.json()["aggregates"]["histograms"][0]["counts"], dtype=float)))
        target_cells = np.histogram([who["nihss_admission"]], bins=20, range=(0, 42))[0]
        assert not np.array_equal(diff, target_cells)  # 20 noisy cells: all exact has P ~ 0.4^20
    else:
        assert noisy.json()["control"] == "min_row_count"
    assert node.spent("mixed-e")[1] == 1
    again = ask(node, "multiple_histograms", STANDARD, y=("nihss_admission",), datasets=b, bins=20)
    assert again.status_code == 403 and again.json()["control"] == "differencing"
