"""The shipped default (ADR 0038): a project without an approved study is answered in explore mode.

Two real node processes (``mipflow node serve``) with other stroke rows (220 and 340), created with
``NodeHome.init`` and nothing else changed: ``default_mode`` is ``explore`` and no project was given a
mode.  A hostile researcher under a project-wide grant (any researcher id) replays the attacks that
worked against the exact, per-request controls of standard mode:

* a filter threshold swept around a few patients (the ``differencing`` refusal as an oracle, and
  ``min_row_count`` on the exact count): every step is answered or refused on noisy values, charged;
* all vs all-but-one, with a fresh researcher id per pair: perturbed, and the project's budget ends it;
* what only exact answers give (an iterative model): refused by the request alone, the same bytes at
  both nodes, naming the study protocol as the way to exact answers.

The node admin's choices per project then apply from the next request: ``mipflow mode set ... standard``
(exact, per-request controls), ``default`` (explore again) and an approved study (exact, governed).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from mipflow.cli import main
from mipflow.node.controls import modes
from mipflow.node.home import NodeHome, NodeSettings
from mipflow.protocol.signing import issue_client
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import rule, stroke_rows, where
from tests.nodes import grant_all, load_frame, running_nodes
from tests.privacy.test_explore_attacks import Served, histogram, request_of

NAME = "hospital"
#: the shipped explore budgets, lowered so that the budget test ends in seconds
BUDGET = {"explore_project_budget_epsilon": 25.0}
PROJECTS = ("sweep", "pairs", "refusals", "chosen", "study-later")


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Iterator[dict[str, Served]]:
    roots, credentials, frames = {}, {}, {}
    for which, (seed, n) in {"small": (41, 220), "large": (42, 340)}.items():
        root = Path(tmp_path_factory.mktemp(f"default-{which}"))
        home = NodeHome.init(root, NAME)  # the shipped settings
        assert home.settings.default_mode == "explore"
        for key, value in BUDGET.items():
            home.set_setting(key, value)
        frames[which] = stroke_rows(seed, n, "hospital_a", which)
        load_frame(root, STROKE, frames[which])
        for project in PROJECTS:
            grant_all(root, researcher="*", project=project)
        credentials[which] = issue_client(root, "central")
        roots[which] = root
    with running_nodes(list(roots.values())) as urls:
        yield {which: Served(url, credentials[which], roots[which], frames[which])
               for which, url in zip(roots, urls)}


def test_a_node_created_today_or_before_defaults_to_explore(tmp_path):
    assert NodeSettings().default_mode == "explore"
    assert main(["node", "init", str(tmp_path / "new"), "--name", "new"]) == 0
    assert NodeHome(tmp_path / "new").settings.default_mode == "explore"
    # a node.json written before the setting existed reads as the shipped default too
    old = tmp_path / "old"
    NodeHome.init(old, "old")
    doc = json.loads((old / "node.json").read_text())
    doc["settings"].pop("default_mode")
    (old / "node.json").write_text(json.dumps(doc))
    assert NodeHome(old).settings.default_mode == "explore"
    with pytest.raises(Exception, match="explore .* or standard"):
        NodeHome(old).set_setting("default_mode", "exact")


def test_a_threshold_sweep_meets_no_oracle_and_every_step_is_charged(pair):
    node = pair["small"]
    ages = np.unique(node.rows["age"].dropna().to_numpy())
    thresholds = [float(a) for a in ages[-40:-10:3]]  # cohorts one to a few rows apart
    before = node.spent("sweep")
    replies = [node.call("multiple_histograms", histogram(where(rule("age", "less", t))), project="sweep")
               for t in thresholds]
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies if r.status_code != 200]
    for r in replies:
        doc = r.json()
        assert doc["mode"] == {"mode": "explore", "project": "sweep", "mechanism": "laplace", "epsilon": 1.0,
                               "by": "node default"}
        assert doc["privacy"]["keyed"] is True
    assert node.spent("sweep")[1] - before[1] == len(thresholds)
    # tiny cohorts: refused or answered on the noisy count, each charged either way, never "differencing"
    complete = node.rows.dropna(subset=["nihss_admission"])
    tiny = [float(a) for a in np.arange(20.0, 60.0, 0.5) if (complete["age"] <= a).sum() < 10][-8:]
    assert len(tiny) >= 5
    charged = node.spent("sweep")[1]
    controls = set()
    for t in tiny:
        reply = node.call("multiple_histograms", histogram(where(rule("age", "less_or_equal", t))), project="sweep")
        assert reply.status_code in (200, 403), reply.text
        if reply.status_code == 403:
            controls.add(reply.json()["control"])
    assert controls <= {"min_row_count", "nfilter_subset"}
    assert node.spent("sweep")[1] - charged == len(tiny)


def test_all_versus_all_but_one_is_perturbed_and_ended_by_the_project_budget(pair):
    node = pair["large"]
    rows = node.rows.dropna(subset=["age", "nihss_admission"])
    targets = rows["age"].value_counts().sort_values(kind="stable").index.tolist()
    everyone = node.call("multiple_histograms", histogram(), project="pairs", researcher="fresh-0")
    assert everyone.status_code == 200
    all_counts = np.nan_to_num(np.array(everyone.json()["aggregates"]["histograms"][0]["counts"], dtype=float))
    exact_hits, answered, refused = 0, 0, None
    for i, age in enumerate(targets):
        reply = node.call("multiple_histograms", histogram(where(rule("age", "not_equal", float(age)))),
                          project="pairs", researcher=f"fresh-{i + 1}")
        if reply.status_code == 403:
            refused = reply.json()
            break
        answered += 1
        but_one = np.nan_to_num(np.array(reply.json()["aggregates"]["histograms"][0]["counts"], dtype=float))
        exact = np.histogram(rows.loc[rows["age"] == age, "nihss_admission"].clip(0, 42), bins=20, range=(0, 42))[0]
        exact_hits += int(np.array_equal(all_counts - but_one, exact))
    assert answered >= 5 and exact_hits < answered
    assert refused is not None and refused["control"] == "dp_budget", refused
    assert answered + 1 == 25 == node.spent("pairs")[1]  # 25 epsilon for the project, 1 per release


@pytest.mark.parametrize("algorithm,request_doc", [
    ("logistic_regression", request_of(y=("death_90d",), x=("age",), positive_class="yes")),
    ("anova_oneway", request_of(y=("nihss_admission",), x=("sex",))),
    ("kmeans", request_of(y=("age", "glucose_mmol"), k=2)),
], ids=["logistic", "anova", "kmeans"])
def test_what_only_exact_answers_give_is_refused_by_the_request_alone(pair, algorithm, request_doc):
    replies = [pair[which].call(algorithm, request_doc, project="refusals") for which in ("small", "large")]
    assert replies[0].status_code == replies[1].status_code == 403
    assert replies[0].content == replies[1].content  # other data, the same bytes
    doc = replies[0].json()
    assert doc["control"] == "explore"
    assert "default_mode" in doc["refused"] and "mipflow study" in doc["refused"]
    assert algorithm in doc["refused"]


def test_the_node_admin_chooses_per_project_from_the_next_request(pair, capsys):
    node = pair["small"]
    request = request_of(y=("nihss_admission",), x=("sex",))
    assert node.call("anova_oneway", request, project="chosen").json()["control"] == "explore"
    # standard mode for this project: exact answers under the per-request controls (no mode in the reply)
    assert main(["mode", "set", str(node.root), "--project", "chosen", "standard"]) == 0
    exact = node.call("anova_oneway", request, project="chosen")
    assert exact.status_code == 200, exact.text
    assert "mode" not in exact.json() and exact.json()["privacy"] is None  # exact, no noise
    capsys.readouterr()
    assert main(["mode", "show", str(node.root)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["default_mode"] == "explore"
    assert shown["projects"]["chosen"] == {"mode": "standard", "by": "mipflow mode set"}
    # back to the node's default
    assert main(["mode", "set", str(node.root), "--project", "chosen", "default"]) == 0
    assert node.call("anova_oneway", request, project="chosen").json()["control"] == "explore"
    assert modes.project_mode(node.root, "chosen", "explore") == ("explore", "default")
    # the node's default itself: standard for every project without a mode or a study
    home = NodeHome(node.root)
    try:
        home.set_setting("default_mode", "standard")
        assert node.call("anova_oneway", request, project="chosen").status_code == 200
        assert node.call("anova_oneway", request, project="refusals").status_code == 200
    finally:
        home.set_setting("default_mode", "explore")
    assert node.call("anova_oneway", request, project="chosen").json()["control"] == "explore"


def test_an_approved_study_answers_exactly_and_a_mode_cannot_override_it(pair, tmp_path):
    from tests.mipflow.node.controls.study_helpers import protocol

    node = pair["large"]
    home = NodeHome(node.root)
    document = protocol(datasets=("hospital_a",), variables=["age", "nihss_admission", "sex"],
                        algorithms=["anova_oneway"], survival=None)
    request = request_of(y=("nihss_admission",), x=("sex",))
    assert node.call("anova_oneway", request, project="study-later").json()["control"] == "explore"
    from mipflow.node.controls.study_approval import approve

    approve(home, "study-later", document)
    reply = node.call("anova_oneway", request, project="study-later")
    assert reply.status_code == 200, reply.text
    assert reply.json()["mode"]["study"] == document["name"]
    assert modes.project_mode(node.root, "study-later", "explore") == ("study", document["name"])
    with pytest.raises(Exception, match="approved study"):
        modes.set_mode(node.root, "study-later", "standard")
