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
