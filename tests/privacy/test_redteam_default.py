"""Red-team review of the shipped default (ADR 0038: explore mode), from the documentation only.

One real node process (``mipflow node serve``) built with ``NodeHome.init`` and nothing changed (explore
budgets 1 per release, 20 per researcher, 50 per project), holding two stroke datasets:
``hospital_a`` (200 rows) and ``hospital_b`` (12 rows).  The attacker is a hostile researcher with a
project-wide grant (any researcher id) sending documented requests (``POST /v1/steps/{algorithm}``).

The review found two holes (an exact membership oracle in ``descriptive_stats``'s dataset blocks, and
an empty cohort never answered); both are fixed and their tests below now assert the defence.  Tests
named ``test_defence_*`` are attacks that failed at once.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pytest

from mipflow.node.home import NodeHome
from mipflow.protocol.signing import issue_client
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import rule, stroke_rows, where
from tests.nodes import grant_all, load_frame, running_nodes
from tests.privacy.test_explore_attacks import Served

BOTH = ["hospital_a", "hospital_b"]
PROJECTS = ("blocks", "empty", "noproject", "levels", "canonical", "flip")
_ids = itertools.count()


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[Served]:
    root = Path(tmp_path_factory.mktemp("redteam-default"))
    home = NodeHome.init(root, "hospital")  # the shipped settings, nothing changed
    assert home.settings.default_mode == "explore"
    frame = pd.concat([stroke_rows(1, 200, "hospital_a", "a"), stroke_rows(2, 12, "hospital_b", "b")],
                      ignore_index=True)
    load_frame(root, STROKE, frame)
    for project in PROJECTS:
        grant_all(root, researcher="*", project=project)
    credential = issue_client(root, "central")
    with running_nodes([root]) as (url,):
        yield Served(url, credential, root, frame)


def ask(node: Served, algorithm: str, project: str, y=("age",), x=(), filters=None, datasets=BOTH,
        **parameters: Any):
    """A documented step request under a fresh researcher id of the project (ids are free)."""
    request = {"inputdata": {"data_model": STROKE.key, "datasets": list(datasets), "x": list(x), "y": list(y),
                             "filters": filters}, "parameters": parameters}
    return node.call(algorithm, request, project=project, researcher=f"mallory-{next(_ids)}")


def target(node: Served) -> pd.Series:
    rows = node.rows[(node.rows["dataset"] == "hospital_b") & node.rows["age"].notna()]
    return rows.iloc[3]


# ------------------------------------------------------------------------------------------- holes


def _b_block(node: Served, project: str, secret: dict) -> dict | None:
    """One explore release: ``descriptive_stats``'s ``hospital_b`` block (None: absent).

    The filter is everyone of ``hospital_a`` (a large cohort, so the step is answered) OR the secret
    condition; only the secret condition can select a ``hospital_b`` row.
    """
    filters = where(rule("dataset", "equal", "hospital_a"), secret, condition="OR")
    reply = ask(node, "descriptive_stats", project, y=("age",), filters=filters)
    assert reply.status_code == 200, reply.text
    assert reply.json()["mode"]["mode"] == "explore" and reply.json()["privacy"]["keyed"] is True
    return reply.json()["aggregates"]["datasets"].get("hospital_b")


def test_fixed_dataset_blocks_do_not_tell_whether_a_filter_selects_anyone(node):
    """Found by this review (it was an exact oracle): ``descriptive_stats`` released one block per
    dataset the cohort had rows in, so whether a ``hospital_b`` block was present told exactly
    whether the secret condition selected someone there (a patient's age by bisection in 8
    releases).  Fixed: every dataset of the request the node holds gets a block, rows or not, so the
    reply's layout is the same whatever the rows; what is in the block is noise-covered counts."""
    project = "blocks"
    who = target(node)
    pid, age = who["subjectcode"], float(who["age"])

    def secret(*rules):
        return where(rule("subjectcode", "equal", pid), *rules)

    conditions = [secret(), where(rule("subjectcode", "equal", "nobody-7")),
                  secret(rule("age", "less", age + 1.0)), secret(rule("age", "less", age - 1.0)),
                  where(rule("sex", "equal", str(who["sex"])), rule("age", "equal", age))]
    blocks = [_b_block(node, project, condition) for condition in conditions]
    assert all(block is not None for block in blocks)  # present whether or not anyone is selected
    # the present (1 row) and absent (0 rows) cases hold the same keys, counts with keyed noise
    assert {tuple(sorted(b)) for b in blocks} == {tuple(sorted(blocks[0]))}
    assert node.spent(project)[1] == len(conditions)


def test_an_empty_cohort_is_decided_on_a_noisy_count_like_any_other(node):
    """Found by this review: an empty cohort was refused every time (no dataset block, so no noisy
    count was drawn) while a one-patient cohort's noisy count sometimes passed, so an answer proved
    the cohort non-empty.  Fixed with the blocks above: the empty cohort's count is noisy too.  With
    ``min_row_count`` and ``nfilter_subset`` lowered to 1 an empty cohort passes often (about 4 in 10:
    ADR 0032's decision count, Laplace of scale 2 at these thresholds, reaches 1 with probability
    ``0.5 exp(-0.25)``), and every answer carries a noisy row count.  (Before the decision count the
    release's own noisy count decided, with a larger noise; ``nfilter_subset`` 3 then mattered less.)"""
    project = "empty"
    home = NodeHome(node.root)
    home.set_setting("min_row_count", 1)
    home.set_setting("nfilter_subset", 1)
    try:
        empty = [ask(node, "descriptive_stats", project, datasets=["hospital_b"], filters=where(
            rule("subjectcode", "equal", "nobody-7"), rule("age", "less", 100.0 + i))) for i in range(20)]
    finally:
        home.set_setting("min_row_count", 10)
        home.set_setting("nfilter_subset", 3)
    assert {r.status_code for r in empty} <= {200, 403}
    answered = [r.json() for r in empty if r.status_code == 200]
    assert answered, [r.json() for r in empty]  # P(no answer in 20) is about 5e-5
    assert all(doc["rows"] >= 1 and doc["aggregates"]["datasets"]["hospital_b"] for doc in answered)
    assert node.spent(project)[1] == 20


# ---------------------------------------------------------------------------------------- defences


def test_defence_requests_without_a_project_are_refused_under_a_project_grant(node):
    """DEFENCE: a request naming no project (which ADR 0038 charges to the researcher only, so fresh
    ids would be fresh budgets) is refused by ``access`` under a project-wide grant, uncharged."""
    before = node.spent("noproject")
    for project in (None, ""):
        reply = ask(node, "descriptive_stats", project)
        assert reply.status_code == 403 and reply.json()["control"] == "access"
    assert node.spent("noproject") == before


@pytest.mark.parametrize("algorithm,params", [
    ("multiple_histograms", dict(y=("nihss_admission",), x=("stroke_type",), bins=5)),
    ("contingency_table", dict(y=("stroke_type",), x=("sex",))),
    ("kaplan_meier", dict(y=("followup_days", "death_90d"), x=("stroke_type",), event_level="yes",
                          bin_width=90, max_time=360)),
    ("linear_regression", dict(y=("nihss_admission",), x=("age", "stroke_type"))),
], ids=["histograms", "contingency", "kaplan_meier", "linear_regression"])
def test_defence_levels_absent_from_the_cohort_do_not_change_the_reply_shape(node, algorithm, params):
    """DEFENCE: groups, cells and indicator columns come from the data model's enumerations, not
    from the rows: a cohort without any ``tia`` stroke has the same reply layout as one with them."""
    def layout(value):
        if isinstance(value, dict):
            return {k: layout(v) for k, v in value.items()}
        if isinstance(value, list):
            return ["list", len(value), layout(value[0]) if value else None]
        return type(value).__name__

    shapes = []
    for filters in (None, where(rule("stroke_type", "not_equal", "tia"))):
        reply = ask(node, algorithm, "levels", filters=filters, datasets=["hospital_a"], **params)
        assert reply.status_code == 200, reply.text
        shapes.append(layout(reply.json()["aggregates"]))
    assert shapes[0] == shapes[1]


def test_defence_reordered_datasets_are_one_release_charged_once(node):
    """DEFENCE (free repeats): rewriting the request's dataset order or analysis id gives the same
    bytes and no charge; nothing new is learnt from the free repeat."""
    first = ask(node, "descriptive_stats", "canonical", y=("nihss_admission",), datasets=BOTH)
    spent = node.spent("canonical")
    again = ask(node, "descriptive_stats", "canonical", y=("nihss_admission",), datasets=BOTH[::-1])
    assert first.status_code == again.status_code == 200
    assert again.json()["aggregates"] == first.json()["aggregates"]
    assert again.json()["privacy"]["repeat"] is True
    assert node.spent("canonical") == spent


def test_defence_flipping_event_level_is_a_new_release_with_its_own_noise(node):
    """DEFENCE: Kaplan-Meier with ``event_level`` yes and no select the same rows with events and
    censorings swapped; were they keyed alike, events(yes) - censored(no) would cancel the noise.
    Both are charged, and the swapped counts are not equal (independent noise)."""
    common = dict(y=("followup_days", "death_90d"), bin_width=90, max_time=360, datasets=["hospital_a"])
    yes = ask(node, "kaplan_meier", "flip", event_level="yes", **common)
    no = ask(node, "kaplan_meier", "flip", event_level="no", **common)
    assert yes.status_code == no.status_code == 200
    assert node.spent("flip")[1] == 2
    assert yes.json()["privacy"]["repeat"] is False and no.json()["privacy"]["repeat"] is False
    g_yes, g_no = yes.json()["aggregates"]["groups"][0], no.json()["aggregates"]["groups"][0]
    assert g_yes["events"] != g_no["censored"] or g_yes["censored"] != g_no["events"]
