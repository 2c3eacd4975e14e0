"""The query budget: distinct analyses per researcher in a sliding 24 hours (:mod:`mipflow.node.controls.query_budget`)."""
from __future__ import annotations

import pytest

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.audit import AuditLog, read_records
from mipflow.node.controls.query_budget import QueryBudget, analysis_key
from tests.nodes import LINREG, linreg


def test_budget_counts_distinct_analyses_in_24_hours():
    budget = QueryBudget()
    t0 = 1_000_000.0
    first, second, third = (analysis_key(f"id{i}", "linear_regression", LINREG) for i in range(3))
    for key in (first, second):
        budget.check("alice", key, 2, now=t0)
        budget.charge("alice", key, now=t0)
    budget.check("alice", first, 2, now=t0 + 60)  # a later round of a counted analysis
    with pytest.raises(DisclosureError, match=r"2 of 2 analyses") as info:
        budget.check("alice", third, 2, now=t0 + 60)
    assert info.value.control == "query_budget"
    budget.check("bob", third, 2, now=t0 + 60)  # per researcher
    budget.check("alice", third, 0, now=t0 + 60)  # 0 = unlimited
    budget.check("alice", third, 2, now=t0 + 24 * 3600 + 1)  # the window slid past both
    # the same id re-used for another request is another analysis
    assert analysis_key("id0", "linear_regression", linreg("edsd1")) != first


def test_budget_is_rebuilt_from_the_audit_log(tmp_path):
    log = AuditLog(tmp_path / "audit.log")
    for i in range(3):
        log.append(researcher="alice", decision="allowed", analysis=f"k{i}", round=0)
        log.append(researcher="alice", decision="allowed", analysis=f"k{i}", round=1)
    log.append(researcher="alice", decision="refused", analysis="k9", control="min_row_count")
    budget = QueryBudget(read_records(tmp_path / "audit.log"))
    assert budget.used("alice") == 3 and budget.used("bob") == 0


def test_a_project_budget_holds_across_its_researcher_ids():
    """Fresh researcher ids under one project get fresh researcher budgets, not a fresh project budget."""
    budget = QueryBudget()
    t0 = 1_000_000.0
    keys = [analysis_key(f"id{i}", "linear_regression", LINREG) for i in range(4)]
    for i, key in enumerate(keys[:3]):
        who = f"fresh-{i}"
        budget.check(who, key, 2, now=t0 + i, project="p", project_limit=3)
        assert budget.charge(who, key, now=t0 + i, project="p", limit=2, project_limit=3)
    assert budget.used_by_project("p", now=t0 + 5) == 3 and budget.used("fresh-0", now=t0 + 5) == 1
    with pytest.raises(DisclosureError) as info:
        budget.check("fresh-9", keys[3], 2, now=t0 + 60, project="p", project_limit=3)
    assert info.value.control == "query_budget"
    message = str(info.value)
    assert message.startswith("project 'p' has used the query budget of this node (3 of 3 analyses in the "
                              "last 24 hours by all its researchers, query_budget_project)")
    assert message.endswith("which frees up at 1970-01-13T13:46:40+00:00")  # t0 + 24 h: the oldest leaves
    assert "researcher" not in message.split(";")[0].split("by all its")[0]
    budget.check("fresh-9", keys[0], 2, now=t0 + 60, project="p", project_limit=3)  # counted: a later round
    budget.check("fresh-9", keys[3], 2, now=t0 + 60, project="q", project_limit=3)  # another project
    # a step the budget refused is not counted over the limit
    assert not budget.charge("fresh-9", keys[3], now=t0 + 60, project="p", limit=2, project_limit=3)
    assert budget.used_by_project("p", now=t0 + 60) == 3 and budget.used("fresh-9", now=t0 + 60) == 0


def test_both_budgets_spent_are_both_named_with_the_later_time():
    budget = QueryBudget()
    t0 = 2_000_000.0
    first, second = (analysis_key(f"id{i}", "pca", LINREG) for i in range(2))
    budget.charge("alice", first, now=t0, project="p")
    with pytest.raises(DisclosureError) as info:
        budget.check("alice", second, 1, now=t0 + 10, project="p", project_limit=1)
    researcher, project = str(info.value).split("; ")
    assert researcher.startswith("researcher 'alice' has used the query budget of this node (1 of 1 analyses "
                                 "in the last 24 hours, query_budget)")
    assert project.startswith("project 'p' has used")


def test_missing_ids_share_one_budget():
    budget = QueryBudget()
    t0 = 3_000_000.0
    first, second = (analysis_key(f"id{i}", "pca", LINREG) for i in range(2))
    assert budget.charge(None, first, now=t0, project=None, limit=1, project_limit=1)
    with pytest.raises(DisclosureError, match="researcher '' has used"):
        budget.check(None, second, 1, now=t0, project=None, project_limit=0)
    with pytest.raises(DisclosureError, match="project '' has used"):
        budget.check("bob", second, 0, now=t0, project="", project_limit=1)


def test_refused_steps_marked_counted_are_charged_again_at_start(tmp_path):
    log = AuditLog(tmp_path / "audit.log")
    log.append(researcher="alice", project="p", decision="allowed", analysis="k0", round=0)
    log.append(researcher="alice", project="p", decision="refused", analysis="k1", control="min_row_count",
               counted=True)
    log.append(researcher="bob", project="p", decision="refused", analysis="k2", control="access", counted=True)
    log.append(researcher="bob", project="p", decision="refused", analysis="k3", control="query_budget")
    log.append(researcher="bob", project="p", decision="refused", analysis="k4", control="access",
               counted=False)
    budget = QueryBudget(read_records(tmp_path / "audit.log"))
    assert budget.used("alice") == 2 and budget.used("bob") == 1 and budget.used_by_project("p") == 3
