"""Budgets per person and per project, charged for every request (ADR 0025), through real node processes.

The adversary is a researcher with a project-wide grant, or a hostile central site that can claim
any researcher id of a granted project: fresh ids do not reset the query budget or the DP budget,
refused requests cost budget like answered ones (a probe loop of refusals runs into the budget), and
a restart of the node forgets nothing. Each refusal names its control. An honest researcher's day
of analyses, iterative ones with many rounds, goes through untouched at the defaults.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.central.client import NodeRefused
from mipflow.central.rounds import run_analysis
from mipflow.node.controls.audit import AUDIT_FILE, AuditLog
from mipflow.node.home import NodeSettings
from tests.mipflow.algorithms.survival_data import STROKE
from tests.nodes import grant_all, load_frame, served_clients
from tests.privacy.conftest import DATASETS, TARGET, TARGET_NIHSS, make_rows, rule, where
from tests.nodes import standard_home

PROJECT = "stroke-outcomes"
DEFAULTS = NodeSettings()


def make_home(root: Path, rows: pd.DataFrame | None = None, **settings: Any) -> Path:
    """A node home with the privacy suite's stroke rows (or ``rows``) and a project-wide grant (any researcher
    id)."""
    home = standard_home(root, "hospital_a")
    for key, value in settings.items():
        home.set_setting(key, value)
    load_frame(root, STROKE, make_rows() if rows is None else rows)
    grant_all(root, researcher="*", project=PROJECT)
    return root


@contextmanager
def serving(root: Path) -> Iterator[Any]:
    """The node as a ``mipflow node serve`` process on loopback, and a central client for it."""
    with served_clients({"hospital_a": root}) as clients:
        yield clients["hospital_a"]


def request(y=("age",), x=(), filters=None, parameters=None) -> dict[str, Any]:
    return {"inputdata": {"data_model": STROKE.key, "datasets": DATASETS, "x": list(x), "y": list(y),
                          "filters": filters}, "parameters": parameters or {}}


def probe(threshold: float) -> dict[str, Any]:
    """'Is there a patient with NIHSS above ``threshold``?': selects only the target; refused."""
    return request(y=["age"], filters=where(rule("nihss_admission", "greater", threshold)))


def refusal(client: Any, algorithm: str, doc: dict[str, Any], *, researcher: str,
            analysis_id: str | None = None) -> NodeRefused:
    with pytest.raises(NodeRefused) as info:
        client.step(algorithm, doc, 0, None, researcher=researcher, project=PROJECT, analysis_id=analysis_id)
    assert info.value.status == 403
    return info.value


def steps(root: Path) -> list[dict[str, Any]]:
    return [r for r in AuditLog(root / AUDIT_FILE).records() if r.get("endpoint") == "/v1/steps"]


def test_the_defaults_bound_probing():
    """Probing is no longer unlimited out of the box (both budgets were 0 = unlimited)."""
    assert (DEFAULTS.query_budget, DEFAULTS.query_budget_project) == (100, 300)
    assert DEFAULTS.dp_project_budget_epsilon == DEFAULTS.dp_budget_epsilon
    assert DEFAULTS.dp_project_budget_delta == DEFAULTS.dp_budget_delta


def test_refused_probes_cost_budget_and_fresh_ids_do_not_reset_it_nor_a_restart(tmp_path):
    """At the defaults: a probe loop of refused requests hits the researcher's budget (100); fresh
    researcher ids under the project grant get 100 each until the project's 300 are used; a restart
    resets neither; the budget's own refusals are not charged."""
    root = make_home(tmp_path / "node")
    per_researcher, per_project = DEFAULTS.query_budget, DEFAULTS.query_budget_project
    thresholds = iter(29.5 + i / 1000 for i in range(10 * per_project))
    with serving(root) as node:
        for n in range(per_project // per_researcher):
            who = f"fresh-{n}"
            for _ in range(per_researcher):  # each a distinct request, refused by a disclosure control
                assert refusal(node, "descriptive_stats", probe(next(thresholds)), researcher=who).control \
                    == "min_row_count"
            spent = refusal(node, "descriptive_stats", probe(next(thresholds)), researcher=who)
            assert spent.control == "query_budget"
            assert spent.reason.startswith(f"researcher {who!r} has used the query budget of this node "
                                           f"({per_researcher} of {per_researcher} analyses in the last 24 hours")
            assert "which frees up at " in spent.reason
            # an answerable analysis is refused too: the budget, not the data, decides
            assert refusal(node, "descriptive_stats", request(), researcher=who).control == "query_budget"
        fresh = refusal(node, "descriptive_stats", request(), researcher="fresh-new")
        assert fresh.control == "query_budget"
        assert fresh.reason.startswith(f"project {PROJECT!r} has used the query budget of this node "
                                       f"({per_project} of {per_project} analyses in the last 24 hours by all "
                                       f"its researchers, query_budget_project)")
        assert "researcher" not in fresh.reason.split(" by all its researchers")[0]
    records = steps(root)
    charged = [r for r in records if r["decision"] == "refused" and r.get("counted") is True]
    assert len(charged) == per_project and {r["control"] for r in charged} == {"min_row_count"}
    budget_refusals = [r for r in records if r.get("control") == "query_budget"]
    assert len(budget_refusals) == 2 * 3 + 1 and not any(r.get("counted") for r in budget_refusals)
    # a restart of the node rebuilds both budgets from the audit log
    with serving(root) as node:
        assert refusal(node, "descriptive_stats", request(), researcher="fresh-0").control == "query_budget"
        again = refusal(node, "descriptive_stats", request(), researcher="another-fresh-id")
        assert again.control == "query_budget" and again.reason.startswith(f"project {PROJECT!r}")


def test_refusals_of_every_kind_count(tmp_path):
    """Refused by access, validation, a disclosure control, differencing or DP: each costs one analysis;
    the one refused by the budget does not."""
    root = make_home(tmp_path / "node", query_budget=6, dp_enabled=1)
    who = "prober"
    with serving(root) as node:
        refused = [
            ("descriptive_stats", request(y=["no_such_variable"]), None),                      # validation (400)
            ("descriptive_stats", request(y=["age"], filters=where(rule("age", "less", 19))), "min_row_count"),
            ("kmeans", request(y=["age", "glucose_mmol"], parameters={"k": 2}), "dp_unsupported"),
            ("descriptive_stats", {**request(), "inputdata": {**request()["inputdata"], "datasets": ["nope"]}},
             None),
        ]
        for algorithm, doc, control in refused:
            with pytest.raises(NodeRefused) as info:
                node.step(algorithm, doc, 0, None, researcher=who, project=PROJECT)
            if control:
                assert info.value.control == control
        # access: another project's id is refused, and charged to what it claims
        with pytest.raises(NodeRefused) as info:
            node.step("descriptive_stats", request(), 0, None, researcher=who, project="not-granted")
        assert info.value.control == "access"
        node.step("descriptive_stats", request(y=["systolic_bp"]), 0, None, researcher=who,
                  project=PROJECT)  # the sixth
        spent = refusal(node, "descriptive_stats", request(y=["glucose_mmol"]), researcher=who)
        assert spent.control == "query_budget" and "(6 of 6 analyses" in spent.reason
    records = [r for r in steps(root) if r.get("researcher") == who]
    assert [bool(r.get("counted")) or r["decision"] == "allowed" for r in records] == [True] * 6 + [False]


def test_fresh_ids_do_not_reset_the_dp_budget_nor_a_restart(tmp_path):
    """DP at the node's defaults (epsilon 0.5 a step, 5 per researcher and 5 per project): a second
    researcher id of the project finds the project's budget spent, before and after a restart."""
    root = make_home(tmp_path / "node", dp_enabled=1)
    steps_in_budget = round(DEFAULTS.dp_project_budget_epsilon / DEFAULTS.dp_epsilon)
    with serving(root) as node:
        for i in range(steps_in_budget):
            reply = node.step("descriptive_stats", request(y=["age"]), 0, None, researcher="first-id",
                              project=PROJECT, analysis_id=f"a{i}")
            assert reply["privacy"]["epsilon"] == pytest.approx(DEFAULTS.dp_epsilon)
        spent = refusal(node, "descriptive_stats", request(y=["age"]), researcher="second-id", analysis_id="b")
        assert spent.control == "dp_budget"
        assert spent.reason.startswith(f"project {PROJECT!r} has spent epsilon 5 of the privacy budget")
        assert "researcher 'second-id'" not in spent.reason and "does not renew" in spent.reason
    ledger = (root / "privacy_ledger.jsonl").read_text().splitlines()
    assert len(ledger) == steps_in_budget and all('"project": "stroke-outcomes"' in line for line in ledger)
    with serving(root) as node:
        for who in ("first-id", "third-id"):
            assert refusal(node, "descriptive_stats", request(y=["age"]), researcher=who,
                           analysis_id="c").control == "dp_budget"
    # the DP refusals counted against the query budget like any refusal
    dp_refusals = [r for r in steps(root) if r.get("control") == "dp_budget"]
    assert len(dp_refusals) == 3 and all(r.get("counted") is True for r in dp_refusals)


def honest_day() -> list[tuple[str, dict[str, Any]]]:
    """A researcher's day on one study cohort: description, tests, models, iterative fits, refits."""
    cohort = where(rule("age", "greater_or_equal", 18))
    day = [
        ("descriptive_stats", request(y=["age", "nihss_admission", "glucose_mmol", "sex", "stroke_type"])),
        ("multiple_histograms", request(y=["age"], x=["sex"], parameters={"bins": 10})),
        ("multiple_histograms", request(y=["nihss_admission"], parameters={"bins": 20})),
        ("ttest_independent", request(y=["age"], x=["sex"], parameters={"groupA": "M", "groupB": "F"})),
        ("anova_oneway", request(y=["systolic_bp"], x=["stroke_type"])),
        ("pearson_correlation", request(y=["age", "systolic_bp", "glucose_mmol"])),
        ("linear_regression", request(y=["mrs_90d"], x=["age", "nihss_admission"])),
        ("linear_regression", request(y=["mrs_90d"], x=["age", "nihss_admission", "systolic_bp"])),
        ("logistic_regression", request(y=["death_90d"], x=["age", "nihss_admission"],
                                        parameters={"positive_class": "yes"})),
        ("logistic_regression", request(y=["death_90d"], x=["age", "nihss_admission", "glucose_mmol"],
                                        parameters={"positive_class": "yes"})),
        ("kaplan_meier", request(y=["followup_days", "death_90d"], x=["sex"], parameters={"event_level": "yes"})),
        ("cox_regression", request(y=["followup_days", "death_90d"], x=["age", "nihss_admission"],
                                   parameters={"event_level": "yes"})),
        ("pca", request(y=["age", "systolic_bp", "glucose_mmol"])),
        ("kmeans", request(y=["age", "glucose_mmol"], parameters={"k": 3, "init": "pca"})),
        ("contingency_table", request(y=["diabetes"], x=["hypertension"])),
    ]
    for _, doc in day:
        doc["inputdata"]["filters"] = copy.deepcopy(cohort)
    return day


def day_rows() -> pd.DataFrame:
    """The suite's rows with NIHSS drawn on its own: :func:`make_rows` draws it from a generator seeded as the one
    that drew the ages, so that its NIHSS is a monotone function of age (but the target's), and histograms of age
    and of NIHSS are then one variable's histograms on edges that do not nest: their bins less each other count
    the target alone, which the chain rightly refuses (ADR 0051).  The target keeps the only NIHSS of 42."""
    rows = make_rows()
    others = rows["subjectcode"] != TARGET
    rows.loc[others, "nihss_admission"] = np.random.default_rng(2024).integers(0, 30, int(others.sum())).astype(float)
    return rows


def test_day_rows_draw_nihss_apart_from_age() -> None:
    rows, suite = day_rows(), make_rows()
    young = suite["age"] < 39.6
    assert ((suite["nihss_admission"] < 4.2) == young).sum() == len(suite) - 1  # the suite's: all but the target
    assert abs(np.corrcoef(rows["age"], rows["nihss_admission"])[0, 1]) < 0.2
    assert (rows["nihss_admission"] == TARGET_NIHSS).sum() == 1


def test_an_honest_researchers_day_goes_through_at_the_defaults(tmp_path):
    """15 analyses, iterative ones with many rounds, each run twice (a re-run after a break): no
    budget refusal, each analysis counted once over all its rounds."""
    root = make_home(tmp_path / "node", day_rows())
    day = honest_day()
    with serving(root) as node:
        for repeat in range(2):
            for algorithm, doc in day:
                outcome = run_analysis(algorithm, copy.deepcopy(doc), [node], researcher="honest", project=PROJECT)
                assert set(outcome.contributed) == {"hospital_a"}, (algorithm, outcome.excluded, outcome.stopped)
                assert not outcome.excluded, (algorithm, outcome.excluded)
                if outcome.stopped:  # k-means's privacy stop (ADR 0020, 0050): a labelled result, not a refusal
                    assert algorithm == "kmeans" and outcome.result["stopped"] and outcome.result["centers"], \
                        (algorithm, outcome.stopped)
    records = steps(root)
    # the only refused steps are k-means's privacy stop (a round its differencing rule ends), never a budget
    refused = [r for r in records if r["decision"] != "allowed"]
    assert all(r["algorithm"] == "kmeans" and r.get("control") == "differencing" for r in refused), \
        [(r["algorithm"], r.get("control"), r.get("reason")) for r in refused]
    analyses = {r["analysis"] for r in records}
    assert len(analyses) == 2 * len(day) <= DEFAULTS.query_budget  # each run its own analysis_id
    assert len(records) > len(analyses) + 10  # the iterative ones took many rounds, counted once each
