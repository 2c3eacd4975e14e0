"""Explore mode against a hostile researcher (ADR 0032), through two real node processes.

Two node services (``mipflow node serve``) run under the same name with other stroke rows (sizes
220 and 340), every project below in explore mode, with a project-wide grant (any researcher id
of the project).  The attacks of issue 14 that used the exact-data controls as an oracle:

(a) a filter threshold swept in explore mode: no ``differencing`` refusal (the standard mode of
    the same node refuses the sweep); a tiny cohort is refused or answered on its *noisy* count,
    and every such step is charged, refused or not;
(b) the same request 30 times: byte-identical aggregates, charged once;
(c) all vs all-but-one: both answered, the difference is not the target's exact contribution,
    and the project's budget bounds how many pairs can be taken (``dp_budget``), (d) whatever
    researcher ids the attacker uses;
(e) what explore mode does not answer is refused by the request alone: the same bytes at both nodes;
(g) Kaplan-Meier on a daily grid (one bin per day) around one patient: only noisy counts, every
    day's cell noised (no bin merged and none exact), charged whether answered or refused.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import httpx
import numpy as np
import pytest

from mipflow.node.controls import modes
from mipflow.node.controls.explore_decision import decision_split, false_refusal_rate
from mipflow.node.controls.privacy_budget import PrivacyLedger
from mipflow.node.home import NodeHome
from mipflow.protocol.signing import issue_client, signed_headers
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import rule, stroke_rows, where
from tests.nodes import grant_all, load_frame, running_nodes
from tests.nodes import standard_home

NAME = "hospital"
DATASETS = ["hospital_a"]
STANDARD = "standard-project"
PROJECTS = ("sweep", "repeat", "pairs", "refusals", "other", "spent", "watch", "survival")
BUDGET = {"explore_epsilon": 1.0, "explore_budget_epsilon": 30.0, "explore_project_budget_epsilon": 40.0}


class Served:
    def __init__(self, url: str, credential: Any, root: Path, rows: Any) -> None:
        self.url, self.credential, self.root, self.rows = url, credential, root, rows

    def call(self, algorithm: str, request: dict[str, Any], *, project: str, researcher: str = "mallory",
             round: int = 0, state: Any = None, analysis_id: str | None = None) -> httpx.Response:
        body = json.dumps({"request": request, "round": round, "state": state, "researcher": researcher,
                           "project": project, "analysis_id": analysis_id}).encode()
        path = f"/v1/steps/{algorithm}"
        headers = signed_headers(self.credential.client_id, self.credential.secret, "POST", path, body)
        return httpx.post(self.url + path, content=body, headers={**headers, "Content-Type": "application/json"},
                          timeout=60)

    def spent(self, project: str) -> tuple[float, int]:
        """The project's epsilon and number of charged releases, from the node's ledger on disk."""
        total = PrivacyLedger(self.root).project_spent(project, 1e-6)
        return total.epsilon, total.releases


@contextmanager
def served_standard(base: Path, plan: Mapping[str, Callable[[], Any]], node: str, project: str,
                    model: Any = STROKE) -> Iterator[dict[str, Served]]:
    """One standard-mode node per entry of ``plan`` (their memories apart), each named ``node``, holding the rows
    ``plan[name]()`` of ``model``, ``project`` granted to any researcher id; served as processes."""
    roots, frames, credentials = {}, {}, {}
    for name, rows in plan.items():
        roots[name] = base / name
        standard_home(roots[name], node)
        frames[name] = rows()
        load_frame(roots[name], model, frames[name])
        grant_all(roots[name], researcher="*", project=project)
        credentials[name] = issue_client(roots[name], "central")
    with running_nodes(list(roots.values())) as urls:
        yield {name: Served(url, credentials[name], roots[name], frames[name]) for name, url in zip(roots, urls)}


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Iterator[dict[str, Served]]:
    roots, credentials, frames = {}, {}, {}
    for which, (seed, n) in {"small": (31, 220), "large": (32, 340)}.items():
        root = Path(tmp_path_factory.mktemp(f"explore-{which}"))
        home = standard_home(root, NAME)
        for key, value in BUDGET.items():
            home.set_setting(key, value)
        frames[which] = stroke_rows(seed, n, "hospital_a", which)
        load_frame(root, STROKE, frames[which])
        for project in (*PROJECTS, STANDARD):
            grant_all(root, researcher="*", project=project)
        for project in PROJECTS:
            modes.enable(root, project)
        credentials[which] = issue_client(root, "central")
        roots[which] = root
    with running_nodes(list(roots.values())) as urls:
        yield {which: Served(url, credentials[which], roots[which], frames[which])
               for which, url in zip(roots, urls)}


def request_of(y=("nihss_admission",), x=(), filters=None, **parameters) -> dict[str, Any]:
    return {"inputdata": {"data_model": STROKE.key, "datasets": DATASETS, "x": list(x), "y": list(y),
                          "filters": filters}, "parameters": parameters}


def histogram(filters=None, y="nihss_admission", bins=20) -> dict[str, Any]:
    return request_of(y=(y,), filters=filters, bins=bins)


# --------------------------------------------------------------------------- (a) the refusal oracle


def test_a_swept_threshold_gets_no_differencing_refusal_and_tiny_cohorts_are_decided_on_noise(pair):
    node = pair["small"]
    ages = np.unique(node.rows["age"].dropna().to_numpy())  # sorted, distinct: distinct requests
    thresholds = [float(a) for a in ages[-40:-10:3]]  # cohorts one to a few rows apart
    # standard mode on the same node: the sweep meets the differencing control
    standard = [node.call("multiple_histograms", histogram(where(rule("age", "greater_or_equal", 18))), project=STANDARD)]
    standard += [node.call("multiple_histograms", histogram(where(rule("age", "less", t))), project=STANDARD)
                 for t in thresholds]
    assert standard[0].status_code == 200
    assert any(r.status_code == 403 and r.json()["control"] == "differencing" for r in standard[1:])
    # explore mode: every step of the sweep is answered (the cohorts are large), none is a differencing refusal
    before = node.spent("sweep")
    replies = [node.call("multiple_histograms", histogram(where(rule("age", "less", t))), project="sweep")
               for t in thresholds]
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies if r.status_code != 200]
    for r in replies:
        doc = r.json()
        assert doc["mode"]["mode"] == "explore" and doc["privacy"]["keyed"] is True
        assert doc["privacy"]["noise_sd"]["overall"]["unit"] == "count"
    after = node.spent("sweep")
    assert after[1] - before[1] == len(thresholds)  # every distinct release charged
    # decided on a noisy count of its own (ADR 0032, the decision count): the replies state it, not the exact one
    complete = node.rows.dropna(subset=["nihss_admission"])
    split = decision_split("laplace", 1.0, 0.0, 10)  # the shipped settings
    exact_sweep = [int((complete["age"] < t).sum()) for t in thresholds]
    stated = [r.json()["rows"] for r in replies]
    assert all(r.json()["privacy"]["decision"]["sd"] == pytest.approx(split.count_sd) for r in replies)
    assert stated != exact_sweep  # each equal with probability 0.14
    reach = split.count_scale * np.log(0.5 / 1e-6 * len(replies))  # a Laplace tail of 1e-6 over the sweep
    assert all(abs(s - e) <= reach for s, e in zip(stated, exact_sweep)), (stated, exact_sweep)
    # tiny cohorts: refused (min_row_count) or answered on the noisy count; each charged either way
    tiny = [float(a) for a in np.arange(20.0, 60.0, 0.5) if (complete["age"] <= a).sum() < 10][-12:]
    assert len(tiny) >= 5
    outcomes, refusals = [], set()
    for t in tiny:
        spent = node.spent("sweep")[0]
        reply = node.call("multiple_histograms", histogram(where(rule("age", "less_or_equal", t)), bins=40),
                          project="sweep")
        assert node.spent("sweep")[0] == pytest.approx(spent + 1.0)  # charged, refused or not
        exact = int((complete["age"] <= t).sum())
        assert reply.status_code in (200, 403), reply.text
        if reply.status_code == 403:
            assert reply.json()["control"] == "min_row_count"
            assert str(exact) not in reply.json()["refused"].replace("min_row_count (10)", "")
            refusals.add(reply.json()["refused"])
        else:
            assert reply.json()["rows"] >= 10  # answered because its noisy count reached the threshold
        outcomes.append((exact, reply.status_code))
    assert all(exact < 10 for exact, _ in outcomes)
    assert len(refusals) <= 1  # one message for every refused cohort, whatever its rows
    # how many are answered follows the decision count's law.  (Before ADR 0032's decision count, a 40-bin
    # histogram's positive noisy cells summed to more than a few rows and nearly every tiny cohort was answered;
    # an exact rule would answer none, which a tight count also often does: the rule's noise is shown by the
    # stated counts above and by tests/mipflow/node/controls/test_explore_decision.py's rates.)
    answer = [1.0 - false_refusal_rate("laplace", split.count_scale, exact, 10) for exact, _ in outcomes]
    low, high = poisson_binomial_bounds(answer, 1e-4)
    assert low <= sum(status == 200 for _, status in outcomes) <= high, outcomes


def poisson_binomial_bounds(probabilities, false_alarm: float) -> tuple[int, int]:
    """The two-sided ``false_alarm`` bounds of a sum of independent Bernoullis of these probabilities."""
    law = np.array([1.0])
    for p in probabilities:
        law = np.convolve(law, [1.0 - p, p])
    cdf = np.cumsum(law)
    return int(np.searchsorted(cdf, false_alarm / 2)), int(np.searchsorted(cdf, 1.0 - false_alarm / 2))


# --------------------------------------------------------------------------- (b) repetition


def test_b_the_same_request_thirty_times_is_the_same_bytes_and_charged_once(pair):
    node = pair["large"]
    request = request_of(y=("age", "nihss_admission", "sex"))
    replies = [node.call("descriptive_stats", request, project="repeat", researcher=f"r{i % 3}",
                         analysis_id=f"analysis-{i}") for i in range(30)]
    assert all(r.status_code == 200 for r in replies)
    aggregates = {json.dumps(r.json()["aggregates"], sort_keys=True) for r in replies}
    assert len(aggregates) == 1
    assert node.spent("repeat") == (pytest.approx(1.0), 1)
    labels = [r.json()["privacy"] for r in replies]
    assert labels[0]["repeat"] is False and all(label["repeat"] for label in labels[1:])
    # the other node, on other rows, gets other noise for the same request
    other = node_other = pair["small"].call("descriptive_stats", request, project="repeat")
    assert node_other.status_code == 200 and json.dumps(other.json()["aggregates"], sort_keys=True) not in aggregates


# --------------------------------------------------------------------------- (c, d) all vs all-but-one


def test_c_d_all_versus_all_but_one_is_perturbed_and_bounded_by_the_project_budget(pair):
    node = pair["large"]
    rows = node.rows.dropna(subset=["age", "nihss_admission"])
    # "age != a" leaves out the patients of age a (one or a few): the difference of the two
    # histograms would be their exact histogram without the noise
    targets = rows["age"].value_counts().sort_values(kind="stable").index.tolist()
    everyone = node.call("multiple_histograms", histogram(), project="pairs", researcher="fresh-0")
    assert everyone.status_code == 200
    all_counts = np.array(everyone.json()["aggregates"]["histograms"][0]["counts"], dtype=float)
    differences, exact_hits, refused = [], 0, None
    for i, age in enumerate(targets):
        # a fresh researcher id for every pair (d): the project's budget still binds
        reply = node.call("multiple_histograms", histogram(where(rule("age", "not_equal", float(age)))),
                          project="pairs", researcher=f"fresh-{i + 1}")
        if reply.status_code == 403:
            refused = reply.json()
            break
        assert reply.status_code == 200, reply.text
        but_one = np.array(reply.json()["aggregates"]["histograms"][0]["counts"], dtype=float)
        left_out = rows.loc[rows["age"] == age, "nihss_admission"].clip(0, 42)
        exact = np.histogram(left_out, bins=20, range=(0, 42))[0]
        difference = np.nan_to_num(all_counts) - np.nan_to_num(but_one)
        differences.append(difference)
        exact_hits += int(np.array_equal(difference, exact))
    assert len(differences) >= 5
    assert exact_hits < len(differences)  # the pairs do not give the targets' values away
    # the budget: 40 epsilon for the project, 1 per release, whatever the researcher ids
    assert refused is not None and refused["control"] == "dp_budget", refused
    assert "project 'pairs'" in refused["refused"]
    assert len(differences) + 1 == 40 == node.spent("pairs")[1]
    # a fresh id is refused too; another project is not
    assert node.call("multiple_histograms", histogram(bins=7), project="pairs",
                     researcher="brand-new").json()["control"] == "dp_budget"
    assert node.call("multiple_histograms", histogram(bins=7), project="other", researcher="brand-new").status_code == 200


# --------------------------------------------------------------------------- (e) refused by the request alone


@pytest.mark.parametrize("algorithm,request_doc", [
    ("cox_regression", request_of(y=("followup_days", "death_90d"), x=("age",), event_level="yes")),
    ("logistic_regression", request_of(y=("death_90d",), x=("age",), positive_class="yes")),
    ("kmeans", request_of(y=("age", "glucose_mmol"), k=2)),
], ids=["cox_regression", "logistic_regression", "kmeans"])
def test_e_what_explore_mode_does_not_answer_is_refused_by_the_request_alone(pair, algorithm, request_doc):
    replies = [pair[which].call(algorithm, request_doc, project="refusals") for which in ("small", "large")]
    assert replies[0].status_code == replies[1].status_code == 403
    assert replies[0].content == replies[1].content  # nodes with other data: the same bytes
    doc = replies[0].json()
    assert doc["control"] == "explore" and "mipflow study" in doc["refused"]
    assert not any(ch.isdigit() for ch in doc["refused"].split("(")[0])


def test_e_a_later_round_is_refused_by_the_request_alone(pair):
    """Round 1 without a transcript is refused before the rows (round verification); a round 1 that
    reaches the explore control (the chain without verification, as if it were broken) is refused
    there, with the same bytes at both nodes."""
    from mipflow.node.api.context import StepContext
    from mipflow.node.api.step import answer_step
    from mipflow.exceptions import DisclosureError
    from tests.nodes import unverified_chain

    request = histogram()
    replies = [pair[which].call("multiple_histograms", request, project="refusals", round=1, state={})
               for which in ("small", "large")]
    assert replies[0].status_code == replies[1].status_code == 403 and replies[0].content == replies[1].content
    messages = []
    for which in ("small", "large"):
        context = StepContext.open(NodeHome(pair[which].root))
        body = json.dumps({"request": request, "round": 1, "state": {}, "researcher": "mallory",
                           "project": "refusals", "analysis_id": None}).encode()
        with pytest.raises(DisclosureError) as caught:
            answer_step(context, "central", "multiple_histograms", body, chain=unverified_chain())
        assert caught.value.control == "explore"
        messages.append(str(caught.value))
    assert messages[0] == messages[1]


# --------------------------------------------------------------------------- a node with DP for every project


def test_at_a_dp_node_an_explore_project_takes_the_explore_path_and_others_do_not(tmp_path):
    """ADR 0032 point 8: ``dp_enabled`` node-wide; the explore project gets keyed noise and the explore
    budgets, another project the node's DP as before (fresh noise, DP budgets, no mode)."""
    from tests.nodes import PROJECT as DP_PROJECT
    from tests.privacy.conftest import start_node

    nodes = start_node(tmp_path / "dp-node", dp_enabled=1)
    node = next(nodes)
    try:
        grant_all(node.home.root, researcher="*", project="explorers")
        grant_all(node.home.root, researcher="*", project=DP_PROJECT)
        modes.enable(node.home.root, "explorers")
        body = {"request": {"inputdata": {"data_model": STROKE.key, "datasets": ["hospital_a", "hospital_b"],
                                          "x": [], "y": ["age"], "filters": None}, "parameters": {"bins": 10}},
                "round": 0, "state": None, "researcher": "r1", "analysis_id": None}

        def call(project: str) -> dict:
            raw = json.dumps({**body, "project": project}).encode()
            headers = signed_headers(node.credential.client_id, node.credential.secret, "POST",
                                     "/v1/steps/multiple_histograms", raw)
            reply = node.http.post("/v1/steps/multiple_histograms", content=raw,
                                   headers={**headers, "Content-Type": "application/json"})
            assert reply.status_code == 200, reply.text
            return reply.json()

        first, again = call("explorers"), call("explorers")
        assert first["mode"] == {"mode": "explore", "project": "explorers", "mechanism": "laplace", "epsilon": 1.0,
                                 "by": "project"}
        assert first["privacy"]["mode"] == "explore" and first["privacy"]["budget"]["epsilon"] == 20.0
        assert first["aggregates"] == again["aggregates"]  # keyed
        standard = [call(DP_PROJECT) for _ in range(3)]
        assert all("mode" not in r and "mode" not in r["privacy"] for r in standard)
        assert standard[0]["privacy"]["budget"]["epsilon"] == 5.0 and standard[0]["privacy"]["epsilon"] == 0.5
        assert len({json.dumps(r["aggregates"]) for r in standard}) > 1  # OpenDP's fresh noise each time
    finally:
        nodes.close()


# --------------------------------------------------------------------------- (f) the red team's two attacks


def test_f_an_exhausted_researcher_gets_the_same_refusal_for_an_empty_and_a_one_row_cohort(pair):
    """Found by an outside review from the docs: an empty selection was charged nothing and, once the
    budget was spent, answered ``min_row_count`` while a non-empty one answered ``dp_budget``: a free,
    exact membership oracle.  Now a step is charged its whole cost at admission, before any row is
    read, and an over-budget request is refused there, whatever it selects."""
    node = pair["small"]
    oldest = float(node.rows["age"].max())
    one = where(rule("age", "greater_or_equal", oldest))          # one patient (or a few of that age)
    empty = where(rule("age", "greater", oldest))                 # nobody
    def eve() -> float:  # read from the node's ledger on disk, afresh
        return PrivacyLedger(node.root).spent("eve", 1e-6).epsilon

    before = eve()
    for filters in (empty, one):  # both charged the same, whatever they select
        reply = node.call("descriptive_stats", request_of(filters=filters), project="spent", researcher="eve")
        assert reply.status_code in (200, 403), reply.text
        after = eve()
        assert after - before == pytest.approx(BUDGET["explore_epsilon"])
        before = after
    # spend the rest of eve's budget on distinct requests
    k = 0
    while True:
        reply = node.call("descriptive_stats", request_of(filters=where(rule("age", "greater", 1.0 + k / 1000))),
                          project="spent", researcher="eve")
        k += 1
        if reply.status_code == 403 and reply.json()["control"] == "dp_budget":
            break
        assert k < 100
    # new requests (a repeat of an earlier release is the same bytes again and stays free): an empty
    # cohort, the oldest patient's, everyone's
    probes = (where(rule("age", "greater", oldest + 5)), where(rule("age", "greater_or_equal", oldest - 1e-9)),
              where(rule("age", "greater", 2.0)))
    refusals = [node.call("descriptive_stats", request_of(filters=f), project="spent", researcher="eve")
                for f in probes]
    assert {r.status_code for r in refusals} == {403}
    assert len({r.content for r in refusals}) == 1, [r.text for r in refusals]  # the same bytes
    assert refusals[0].json()["control"] == "dp_budget"


def test_f_equal_answers_do_not_tell_whether_a_cohort_changed(pair, tmp_path):
    """Found by the same review: the noise was keyed by the selected rows, so the same query gave the
    same bytes exactly while its cohort was unchanged and new bytes once one patient entered or left:
    watching a narrow cohort told whether its patients changed, exactly.  Now the noise is keyed by
    the data model's version (every load or deletion): a load that leaves the cohort untouched gives
    the query fresh noise too, charged again."""
    node = pair["small"]
    cohort = request_of(filters=where(rule("age", "greater_or_equal", 70)))
    first = node.call("descriptive_stats", cohort, project="watch")
    again = node.call("descriptive_stats", cohort, project="watch")
    assert first.status_code == again.status_code == 200
    assert first.json()["aggregates"] == again.json()["aggregates"] and again.json()["privacy"]["repeat"] is True
    charged = node.spent("watch")[1]
    young = stroke_rows(77, 12, "hospital_a", "late-young")
    young["age"] = 30.0  # outside the watched cohort
    load_frame(node.root, STROKE, young)
    later = node.call("descriptive_stats", cohort, project="watch")
    assert later.status_code == 200
    assert later.json()["aggregates"] != first.json()["aggregates"]  # fresh noise: the cohort did not change
    assert node.spent("watch")[1] == charged + 1


# --------------------------------------------------------------------------- (g) survival around one patient


def test_g_a_daily_survival_grid_around_one_patient_gives_only_noisy_counts_charged(pair):
    """Kaplan-Meier with one bin per day, on a cohort of the oldest patient(s) and on everyone but
    them: in standard mode the node would merge bins until no count is small (or refuse); here
    every day's count is released with noise, none merged and none exact, each step charged
    (refused on its noisy row count or not), and the difference of all and all-but-them is not the
    target's exact day and outcome."""
    node = pair["large"]
    rows = node.rows.dropna(subset=["followup_days", "death_90d", "sex"])
    oldest = float(rows["age"].max())
    target = rows[rows["age"] >= oldest]
    days = 400  # max_time: 401 daily grid points per group and outcome

    def km(filters) -> tuple[dict[str, Any] | None, httpx.Response]:
        doc = request_of(y=("followup_days", "death_90d"), x=("sex",), filters=filters, event_level="yes",
                         bin_width=1.0, max_time=float(days))
        before = node.spent("survival")[0]
        reply = node.call("kaplan_meier", doc, project="survival")
        assert node.spent("survival")[0] == pytest.approx(before + BUDGET["explore_epsilon"])  # charged either way
        assert reply.status_code in (200, 403), reply.text
        if reply.status_code == 403:
            assert reply.json()["control"] == "min_row_count"
            assert str(len(target)) not in reply.json()["refused"].replace("min_row_count (10)", "")
            return None, reply
        doc = reply.json()
        assert doc["mode"]["mode"] == "explore" and doc["privacy"]["noise_sd"]["survival_counts"]["unit"] == "count"
        groups = doc["aggregates"]["groups"]
        assert [g["level"] for g in groups] == ["M", "F"]
        assert all("ends" not in g and len(g["events"]) == len(g["censored"]) == days + 1 for g in groups)
        return doc, reply

    def cells(doc: dict[str, Any]) -> np.ndarray:
        return np.concatenate([np.r_[g["events"], g["censored"]] for g in doc["aggregates"]["groups"]])

    def exact(frame) -> np.ndarray:
        out = []
        for level in ("M", "F"):
            part = frame[frame["sex"] == level]
            times = np.minimum(np.ceil(part["followup_days"].to_numpy(float)), days).astype(int)
            died = (part["death_90d"] == "yes").to_numpy() & (part["followup_days"].to_numpy(float) <= days)
            out += [np.bincount(times[died], minlength=days + 1), np.bincount(times[~died], minlength=days + 1)]
        return np.concatenate(out)

    narrow, _ = km(where(rule("age", "greater_or_equal", oldest)))
    if narrow is not None:  # answered on its noisy row count: noise in (almost) every cell, none exact
        released, truth = cells(narrow), exact(target)
        assert not np.array_equal(released, truth)
        assert np.mean(released != truth) > 0.5  # a rounded Laplace(1) draw is non-zero with probability 0.61
    everyone, _ = km(None)
    but_them, _ = km(where(rule("age", "less", oldest)))
    assert everyone is not None and but_them is not None  # large cohorts: answered
    difference = cells(everyone) - cells(but_them)
    assert not np.array_equal(difference, exact(target))
    assert np.count_nonzero(difference) > 10 * max(len(target), 1)  # the target's cells drown in noise
