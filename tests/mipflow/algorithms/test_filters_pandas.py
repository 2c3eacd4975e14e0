"""The in-memory QueryBuilder filter: operators and SQL's three-valued logic."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms.filters_pandas import apply_filters, filter_mask, filter_variables
from mipflow.exceptions import RequestError
from tests.mipflow.algorithms.synthetic import MODEL

DATA = pd.DataFrame({
    "y": [1.0, 2.0, np.nan, 4.0, 5.0],
    "grp": ["a", "b", "c", None, "a"],
    "age": [30.0, 40.0, 50.0, 60.0, np.nan],
})


def rule(var, op, value=None):
    out = {"id": var, "field": var, "type": "double", "input": "number", "operator": op}
    if value is not None:
        out["value"] = value
    return out


def group(*rules, condition="AND", negate=False):
    return {"condition": condition, "rules": list(rules), "not": negate, "valid": True}


@pytest.mark.parametrize("filters, rows", [
    pytest.param(None, [0, 1, 2, 3, 4], id="none"),
    pytest.param(group(rule("y", "greater", 2)), [3, 4], id="greater"),
    pytest.param(group(rule("y", "greater_or_equal", "2")), [1, 3, 4], id="number-as-string"),
    pytest.param(group(rule("y", "less", 2)), [0], id="less"),
    pytest.param(group(rule("y", "less_or_equal", 2)), [0, 1], id="less_or_equal"),
    pytest.param(group(rule("grp", "equal", "a")), [0, 4], id="equal"),
    pytest.param(group(rule("grp", "not_equal", "a")), [1, 2], id="not_equal-skips-null"),
    pytest.param(group(rule("age", "between", [35, 55])), [1, 2], id="between"),
    pytest.param(group(rule("age", "not_between", [35, 55])), [0, 3], id="not_between"),
    pytest.param(group(rule("grp", "in", ["a", "c"])), [0, 2, 4], id="in"),
    pytest.param(group(rule("grp", "not_in", ["a", "c"])), [1], id="not_in-skips-null"),
    pytest.param(group(rule("y", "is_null")), [2], id="is_null"),
    pytest.param(group(rule("y", "is_not_null")), [0, 1, 3, 4], id="is_not_null"),
    pytest.param(group(rule("y", "greater", 1), rule("grp", "equal", "a")), [4], id="and"),
    pytest.param(group(rule("y", "greater", 4), rule("grp", "equal", "b"), condition="OR"), [1, 4], id="or"),
    pytest.param(group(group(rule("grp", "equal", "a"), rule("grp", "equal", "b"), condition="OR"),
                       rule("age", "less", 45)), [0, 1], id="nested"),
    # SQL: NOT (y > 2) is unknown where y is NULL, so row 2 stays out
    pytest.param(group(rule("y", "greater", 2), negate=True), [0, 1], id="not-null-stays-out"),
    # unknown OR true is true
    pytest.param(group(rule("y", "greater", 2), rule("grp", "equal", "c"), condition="OR"), [2, 3, 4],
                 id="kleene-or"),
])
def test_filter_selects_rows(filters, rows) -> None:
    assert list(np.flatnonzero(filter_mask(DATA, filters, MODEL))) == rows
    assert apply_filters(DATA, filters, MODEL).index.tolist() == rows


@pytest.mark.parametrize("filters, message", [
    pytest.param(group(rule("nope", "equal", 1)), "unknown variable", id="unknown-variable"),
    pytest.param(group(rule("y", "like", 1)), "unsupported filter operator", id="unknown-operator"),
    pytest.param(group(rule("y", "equal", "abc")), "not a number", id="bad-number"),
    pytest.param(group(rule("y", "between", [1])), "two values", id="between-one-value"),
    pytest.param({"condition": "XOR", "rules": [rule("y", "is_null")]}, "AND or OR", id="bad-condition"),
    pytest.param({"condition": "AND", "rules": []}, "non-empty", id="no-rules"),
    pytest.param(group(rule("x2", "is_null")), "not in the data", id="column-absent"),
])
def test_bad_filters_raise_request_error(filters, message) -> None:
    with pytest.raises(RequestError, match=message):
        filter_mask(DATA, filters, MODEL)


def test_filter_variables_walks_nested_groups() -> None:
    filters = group(rule("y", "is_null"), group(rule("grp", "equal", "a"), rule("age", "less", 3)))
    assert filter_variables(filters) == {"y", "grp", "age"}
    assert filter_variables(None) == set()
