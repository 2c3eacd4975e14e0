"""mipflow.node.query.filters: request filters checked against the data model and compiled to SQL."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mipflow.exceptions import RequestError
from mipflow.node.query.filters import compile_filters, filter_variables
from mipflow.node.store.feature_store import FeatureStore
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.filters import MAX_DEPTH, MAX_RULES, SUPPORTED_OPERATORS

from tests.mipflow.node.query.cases import (
    _deep,
    FILTER_CASES,
    MODEL,
    group,
    rule,
    where,
)

# (filters, error message pattern)
FILTER_ERRORS = [
    pytest.param(where("agee", "equal", 1), r"'agee' is not a variable", id="unknown-field"),
    pytest.param(group("AND", rule("age", "less", 3), group("OR", rule("weight", "less", 3))),
                 r"'weight' is not a variable", id="unknown-field-nested"),
    pytest.param(where("_pid", "equal", "p001"), r"'_pid' is not a variable", id="pseudonym-column"),
    pytest.param(where("_batch_id", "is_null"), r"'_batch_id' is not a variable", id="lineage-column"),
    pytest.param(where("Age", "equal", 1), r"'Age' is not a variable", id="field-case-matters"),
    pytest.param({"condition": "AND", "rules": [{"operator": "equal", "value": 1}]},
                 r"needs the variable code",
                 id="rule-without-id"),
    pytest.param({"condition": "AND", "rules": [{"id": 5, "operator": "equal", "value": 1}]},
                 r"needs the variable code", id="id-not-text"),
    pytest.param(where("age", "equal", 1, field="score"), r"names two variables", id="id-field-disagree"),
    pytest.param(where("note", "contains", "x"), r"operator 'contains' is not supported",
                 id="operator-contains"),
    pytest.param(where("age", "like", 1), r"operator 'like' is not supported", id="operator-unknown"),
    pytest.param(where("age", None, 1), r"operator None is not supported", id="operator-missing"),
    pytest.param(where("diag", "less", "AD"), r"'less' needs a numerical variable.*categorical",
                 id="less-on-categorical"),
    pytest.param(where("grade", "between", [1, 2]), r"'between' needs a numerical variable",
                 id="between-on-categorical"),
    pytest.param(where("note", "greater", "a"), r"'greater' needs a numerical variable.*text",
                 id="greater-on-text"),
    pytest.param(where("age", "less", "50"), r"'50' is not a number", id="number-as-string"),
    pytest.param(where("age", "less", True), r"True is not a number", id="number-as-bool"),
    pytest.param(where("score", "equal", 2.5), r"2.5 is not an integer", id="equal-int-fractional"),
    pytest.param(where("score", "in", [1, 2.5]), r"2.5 is not an integer", id="in-int-fractional"),
    pytest.param(where("age", "equal", float("nan")), r"not a finite number", id="nan"),
    pytest.param(where("age", "greater", float("inf")), r"not a finite number", id="infinity"),
    pytest.param(where("score", "equal", 2**70), r"out of range", id="huge-int"),
    pytest.param(where("age", "equal", None), r"needs a value", id="value-null"),
    pytest.param({"condition": "AND", "rules": [{"id": "age", "operator": "equal"}]}, r"needs a value",
                 id="value-missing"),
    pytest.param(where("age", "equal", [1]), r"takes one value", id="equal-with-list"),
    pytest.param(where("diag", "equal", {"a": 1}), r"takes one value", id="equal-with-object"),
    pytest.param(where("diag", "equal", "XX"), r"'XX' is not one of its enumerations",
                 id="categorical-not-enumerated"),
    pytest.param(where("diag", "equal", "ad"), r"'ad' is not one of its enumerations",
                 id="categorical-case-matters"),
    pytest.param(where("grade", "equal", 7), r"'7' is not one of its enumerations",
                 id="categorical-int-not-enumerated"),
    pytest.param(where("grade", "equal", 1.5), r"'1.5' is not one of its enumerations",
                 id="categorical-fractional"),
    pytest.param(where("diag", "in", ["AD", "XX"]), r"'XX' is not one of its enumerations",
                 id="in-not-enumerated"),
    pytest.param(where("diag", "equal", True), r"True is not an enumeration code", id="categorical-bool"),
    pytest.param(where("note", "equal", 5), r"5 is not text", id="text-as-number"),
    pytest.param(where("note", "equal", "a\x00b"), r"NUL", id="text-with-nul"),
    pytest.param(where("note", "equal", "x" * 5000), r"longer than", id="text-too-long"),
    pytest.param(where("diag", "in", "AD"), r"'in' takes a non-empty list", id="in-scalar"),
    pytest.param(where("diag", "not_in", []), r"'not_in' takes a non-empty list", id="not_in-empty"),
    pytest.param(where("age", "between", [1]), r"takes a list of two values", id="between-one-value"),
    pytest.param(where("age", "between", 5), r"takes a list of two values", id="between-scalar"),
    pytest.param(where("age", "not_between", [1, "x"]), r"'x' is not a number", id="between-text-bound"),
    pytest.param(where("age", "between", [60, 50]), r"low <= high", id="between-reversed"),
    pytest.param(where("age", "is_null", 5), r"takes no value", id="is_null-with-value"),
    pytest.param(where("age", "equal", 1, type="sql"), r"type 'sql' is not a QueryBuilder type",
                 id="bad-type"),
    pytest.param(where("age", "equal", 1, type=["integer"]), r"type \['integer'\] is not", id="type-is-list"),
    pytest.param(where("age", "equal", 1, input="raw"), r"input 'raw' is not a QueryBuilder input",
                 id="bad-input"),
    pytest.param(where("age", "equal", 1, sql="1=1"), r"unknown key\(s\) 'sql'", id="rule-unknown-key"),
    pytest.param(group("AND", rule("age", "equal", 1)) | {"where": "1=1"}, r"unknown key\(s\) 'where'",
                 id="group-unknown-key"),
    pytest.param(group("XOR", rule("age", "equal", 1)), r"'AND' or 'OR'", id="bad-condition"),
    pytest.param(group("AND", rule("age", "equal", 1), negate="yes"), r"'not' must be true or false",
                 id="not-not-bool"),
    pytest.param(group("AND", rule("age", "equal", 1)) | {"valid": False}, r"marked invalid",
                 id="valid-false"),
    pytest.param(group("AND"), r"non-empty list of 'rules'", id="empty-group"),
    pytest.param(group("AND", group("OR")), r"non-empty list of 'rules'", id="empty-nested-group"),
    pytest.param({"condition": "AND", "rules": {"id": "age"}}, r"non-empty list of 'rules'",
                 id="rules-not-list"),
    pytest.param({"condition": "AND", "rules": ["age > 1"]}, r"is not a JSON object", id="rule-is-text"),
    pytest.param([rule("age", "equal", 1)], r"rule group", id="filters-is-list"),
    pytest.param("age > 1", r"rule group", id="filters-is-text"),
    pytest.param(rule("age", "equal", 1), r"'condition' and 'rules'", id="bare-rule-at-root"),
    pytest.param(_deep(MAX_DEPTH + 1), rf"nested too deeply: at most {MAX_DEPTH}", id="too-deep"),
    pytest.param(group("OR", *[rule("score", "equal", 1)] * (MAX_RULES + 1)),
                 rf"too many rules: at most {MAX_RULES}",
                 id="too-many-rules"),
    pytest.param(group("AND", *[group("OR", rule("score", "equal", 1))] * (MAX_RULES // 2 + 1)),
                 r"too many rules", id="too-many-groups"),
]

# (kwargs for select_frame, reference mask or None, reference kwargs for expected_frame)


# --------------------------------------------------------------------------- compiling (no database)


def test_supported_operators():
    assert SUPPORTED_OPERATORS == {
        "equal", "not_equal", "less", "less_or_equal", "greater", "greater_or_equal",
        "between", "not_between", "in", "not_in", "is_null", "is_not_null"}


@pytest.mark.parametrize("filters, message", FILTER_ERRORS)
def test_invalid_filters_are_refused(filters, message, table):
    with pytest.raises(RequestError, match=message):
        compile_filters(filters, MODEL, table)


@pytest.mark.parametrize("filters, reference", FILTER_CASES)
def test_valid_filters_compile_with_every_value_bound(filters, reference, table):
    compiled = compile_filters(filters, MODEL, table)
    if reference is None:
        assert compiled is None
        return
    sql = str(compiled.compile(compile_kwargs={"render_postcompile": True}))
    for value in _values(filters):
        if isinstance(value, str) and len(value) > 1:
            assert value not in sql
    assert "'" not in sql  # no literal at all: every value is a parameter


def _values(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "value":
                yield from (value if isinstance(value, list) else [value])
            elif key == "rules":
                for item in value:
                    yield from _values(item)


_WORDS = ["age", "score", "grade", "diag", "note", "dataset", "_pid", "AD", "1", "2", "AND", "OR", "id"]
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                     st.sampled_from(_WORDS))
_JSON = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(["id", "field", "operator", "value", "condition", "rules", "not", "valid",
                                     "type", "input", "data", "x"]), inner, max_size=5)), max_leaves=20)
# Near-valid filters: real variables and operators, values of any type.
_RULE = st.fixed_dictionaries({
    "id": st.sampled_from(["age", "score", "grade", "diag", "note", "dataset"]),
    "operator": st.sampled_from(sorted(SUPPORTED_OPERATORS)),
    "value": st.one_of(_SCALARS, st.lists(_SCALARS, max_size=3)),
})
_GROUP = st.recursive(_RULE, lambda inner: st.fixed_dictionaries({
    "condition": st.sampled_from(["AND", "OR"]), "rules": st.lists(inner, min_size=1, max_size=3),
    "not": st.booleans()}), max_leaves=6).map(lambda node: group("AND", node))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(filters=st.one_of(_JSON, _GROUP))
def test_any_json_is_compiled_or_refused_with_request_error(filters, table):
    """Whatever JSON arrives, the caller sees a compiled filter or a RequestError (never a crash)."""
    try:
        compiled = compile_filters(filters, MODEL, table)
    except RequestError:
        return
    if compiled is not None:
        assert "'" not in str(compiled.compile(compile_kwargs={"render_postcompile": True}))
        assert filter_variables(filters) <= set(MODEL.variables)


NUMERIC_CODES = DataModel.from_dict({
    "code": "codes", "version": "1",
    "variables": [
        {"code": "ratio", "sql_type": "real", "isCategorical": True,
         "enumerations": [{"code": "0.5"}, {"code": "1"}]},
        {"code": "level", "sql_type": "int", "isCategorical": True,
         "enumerations": [{"code": "0"}, {"code": "1"}]},
    ]})


@pytest.mark.parametrize("filters, bound", [
    pytest.param(where("ratio", "equal", 0.5), [0.5], id="real-code-as-number"),
    pytest.param(where("ratio", "in", ["0.5", 1]), [0.5, 1.0], id="real-codes-mixed"),
    pytest.param(where("level", "not_in", ["0", 1.0]), [0, 1], id="int-codes-mixed"),
])
def test_categorical_codes_of_numeric_columns_are_bound_as_numbers(filters, bound):
    compiled = compile_filters(filters, NUMERIC_CODES, FeatureStore("sqlite://").model_table(NUMERIC_CODES))
    params = list(compiled.compile().params.values())
    assert params == bound and [type(v) for v in params] == [type(v) for v in bound]


@pytest.mark.parametrize("filters", [
    pytest.param(where("ratio", "equal", 0.25), id="real-not-enumerated"),
    pytest.param(where("level", "equal", "00"), id="int-code-spelled-differently"),
    pytest.param(where("ratio", "equal", float("nan")), id="nan"),
])
def test_numeric_codes_not_enumerated_are_refused(filters):
    with pytest.raises(RequestError, match="ratio|level"):
        compile_filters(filters, NUMERIC_CODES, FeatureStore("sqlite://").model_table(NUMERIC_CODES))


@pytest.mark.parametrize("filters, expected", [
    pytest.param(None, set(), id="none"),
    pytest.param({}, set(), id="empty"),
    pytest.param(where("age", "equal", 1), {"age"}, id="one"),
    pytest.param(group("OR", rule("age", "less", 1),
                       group("AND", rule("diag", "is_null"),
                             {"field": "note", "operator": "equal", "value": "x"}),
                       rule("age", "greater", 3)),
                 {"age", "diag", "note"}, id="nested"),
    pytest.param(group("AND", rule("not_in_model", "equal", 1)), {"not_in_model"},
                 id="variables-not-checked"),
])
def test_filter_variables(filters, expected):
    assert filter_variables(filters) == expected


@pytest.mark.parametrize("filters", [
    pytest.param(_deep(MAX_DEPTH + 1), id="too-deep"),
    pytest.param(["age"], id="not-a-group"),
    pytest.param(group("AND", rule("age", "sql", 1)), id="bad-operator"),
])
def test_filter_variables_checks_structure(filters):
    with pytest.raises(RequestError):
        filter_variables(filters)



def test_exareme2_filters_compile(shared_dir, dementia_model):
    """Every filter in Exareme2's expected results compiles against the dementia model."""
    table = FeatureStore("sqlite://").model_table(dementia_model)
    found = []
    for path in sorted((shared_dir / "exareme2" / "expected").glob("*.json")):
        text = path.read_text(encoding="utf-8")
        if '"filters": {' not in text:
            continue
        stack = [json.loads(text)]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if isinstance(node.get("filters"), dict):
                    found.append(node["filters"])
                stack += [v for k, v in node.items() if k != "filters"]
            elif isinstance(node, list):
                stack += node
    assert found, "no filters found in Exareme2's expected results"
    for filters in found:
        assert compile_filters(filters, dementia_model, table) is not None
        assert filter_variables(filters) <= set(dementia_model.variables)

