"""mipflow.node.query: request filters compiled to SQL, rows read from the feature store.

Results are compared with an independent pandas computation that follows SQL's
three-valued logic (nullable dtypes: comparisons with a missing value are
<NA>, ``~<NA>`` is <NA>, and only rows where the filter is True are kept).

The store-backed tests load one small table per backend and walk their case
tables with ``subtests`` (one database per backend instead of one per case).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mipflow.protocol.datamodel import DataModel
from mipflow.exceptions import RequestError
from mipflow.node.query import (
    MAX_DEPTH,
    MAX_RULES,
    SUPPORTED_OPERATORS,
    compile_filters,
    count_rows,
    filter_variables,
    iter_frames,
    select_frame,
    select_statement,
)
from mipflow.node.store import FeatureStore

MODEL = DataModel.from_dict({
    "code": "qry", "version": "1", "label": "Query test",
    "variables": [
        {"code": "dataset", "sql_type": "text", "isCategorical": True,
         "enumerations": [{"code": c, "label": c.upper()} for c in ("a", "b", "c")]},
        {"code": "age", "sql_type": "real", "isCategorical": False},
        {"code": "score", "sql_type": "int", "isCategorical": False},
        {"code": "grade", "sql_type": "int", "isCategorical": True,
         "enumerations": [{"code": "1", "label": "low"}, {"code": "2", "label": "mid"},
                          {"code": "3", "label": "high"}]},
        {"code": "diag", "sql_type": "text", "isCategorical": True,
         "enumerations": [{"code": c, "label": c} for c in ("AD", "MCI", "CN")]},
        {"code": "note", "sql_type": "text", "isCategorical": False},
    ]})
TABLE = "dm_qry_1"
VARIABLES = ["age", "score", "grade", "diag", "note"]
NUMERICAL = {"age", "score"}
ALL_DATASETS = ["a", "b", "c"]
NOTES = ["plain", "O'Brien", 'say "hi"', "' OR '1'='1", "x'; DROP TABLE dm_qry_1; --", "ünïcode"]


def _rows() -> pd.DataFrame:
    """80 deterministic rows with about 15 % missing values per variable."""
    rng = np.random.default_rng(20240611)
    n = 80

    def holes(values: list) -> list:
        return [None if rng.random() < 0.15 else v for v in values]

    frame = pd.DataFrame({
        "_pid": [f"p{i:03d}" for i in range(n)],
        "dataset": rng.choice(ALL_DATASETS, size=n).tolist(),
        "_visit": ["v1" if i % 4 else "v2" for i in range(n)],
        "age": holes([float(v) / 2 for v in rng.integers(80, 180, size=n)]),  # 40.0 .. 89.5, exact halves
        "score": holes([int(v) for v in rng.integers(0, 10, size=n)]),
        "grade": holes([int(v) for v in rng.integers(1, 4, size=n)]),
        "diag": holes(rng.choice(["AD", "MCI", "CN"], size=n).tolist()),
        "note": holes(rng.choice(NOTES, size=n).tolist()),
    })
    frame["age"] = frame["age"].astype("float64")
    frame["score"] = frame["score"].astype("Int64")
    frame["grade"] = frame["grade"].astype("Int64")
    return frame


ROWS = _rows()
# The reference: nullable dtypes give SQL's three-valued logic.
REF = ROWS.astype({"dataset": "string[python]", "age": "Float64", "score": "Int64", "grade": "Int64",
                   "diag": "string[python]", "note": "string[python]"})


def rule(code, operator, value=None, **extra):
    """One QueryBuilder rule, written as the MIP front end writes it; ``extra`` overrides keys."""
    out = {"id": code, "field": code, "type": "string", "input": "text", "operator": operator, "value": value}
    return out | extra


def where(*args, **kwargs):
    """A filter holding one rule (QueryBuilder's root is always a group)."""
    return group("AND", rule(*args, **kwargs))


def group(condition, *rules, negate=None):
    out = {"condition": condition, "rules": list(rules)}
    if negate is not None:
        out["not"] = negate
    return out


def isin(series: pd.Series, values) -> pd.Series:
    """``series IN values`` with SQL semantics (unknown where the value is missing)."""
    out = series.isin(values).astype("boolean")
    out[series.isna()] = pd.NA
    return out


def between(series: pd.Series, low, high) -> pd.Series:
    return (series >= low) & (series <= high)


def expected_frame(mask: pd.Series | None, *, datasets=ALL_DATASETS, variables=VARIABLES,
                   complete_case=False) -> pd.DataFrame:
    """What select_frame should return, computed in pandas from ROWS."""
    keep = REF["dataset"].isin(datasets).to_numpy()
    if mask is not None:
        keep = keep & mask.fillna(False).to_numpy(dtype=bool)
    chosen = list(dict.fromkeys(v for v in variables if v != "dataset"))
    if complete_case:
        keep = keep & REF[chosen].notna().all(axis=1).to_numpy()
    rows = ROWS.loc[keep].sort_values(["_pid", "dataset", "_visit"])
    out = {"dataset": pd.Series(rows["dataset"].tolist(), dtype=object)}
    for code in chosen:
        values = rows[code]
        if code in NUMERICAL:
            out[code] = pd.Series(values.astype("Float64").to_numpy(dtype="float64", na_value=np.nan))
        elif code == "grade":
            out[code] = pd.Series([None if pd.isna(v) else str(int(v)) for v in values], dtype=object)
        else:
            out[code] = pd.Series([None if pd.isna(v) else str(v) for v in values], dtype=object)
    return pd.DataFrame(out)


def assert_frames_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True), check_dtype=True)


# --------------------------------------------------------------------------- case tables

# (filters, reference mask over REF)
FILTER_CASES = [
    # equal / not_equal on every kind of variable
    pytest.param(where("age", "equal", 64), lambda d: d.age == 64, id="equal-real"),
    pytest.param(where("score", "equal", 3), lambda d: d.score == 3, id="equal-int"),
    pytest.param(where("score", "equal", 3.0), lambda d: d.score == 3, id="equal-int-as-integral-float"),
    pytest.param(where("diag", "equal", "AD"), lambda d: d.diag == "AD", id="equal-categorical-text"),
    pytest.param(where("grade", "equal", 2), lambda d: d.grade == 2, id="equal-categorical-int-as-number"),
    pytest.param(where("grade", "equal", "2"), lambda d: d.grade == 2, id="equal-categorical-int-as-code"),
    pytest.param(where("note", "equal", "O'Brien"), lambda d: d.note == "O'Brien",
                 id="equal-text-with-quote"),
    pytest.param(where("dataset", "equal", "b"), lambda d: d.dataset == "b", id="equal-dataset"),
    pytest.param(where("age", "not_equal", 64.0), lambda d: d.age != 64, id="not_equal-real"),
    pytest.param(where("diag", "not_equal", "CN"), lambda d: d.diag != "CN", id="not_equal-categorical"),
    pytest.param(where("note", "not_equal", "plain"), lambda d: d.note != "plain", id="not_equal-text"),
    # ordering
    pytest.param(where("age", "less", 55), lambda d: d.age < 55, id="less-real"),
    pytest.param(where("score", "less", 4.5), lambda d: d.score < 4.5, id="less-int-fractional-bound"),
    pytest.param(where("age", "less_or_equal", 55.5), lambda d: d.age <= 55.5, id="less_or_equal-real"),
    pytest.param(where("score", "less_or_equal", 4), lambda d: d.score <= 4, id="less_or_equal-int"),
    pytest.param(where("age", "greater", 70), lambda d: d.age > 70, id="greater-real"),
    pytest.param(where("score", "greater", 6), lambda d: d.score > 6, id="greater-int"),
    pytest.param(where("age", "greater_or_equal", 70.5), lambda d: d.age >= 70.5, id="greater_or_equal-real"),
    pytest.param(where("score", "greater_or_equal", -3), lambda d: d.score >= -3,
                 id="greater_or_equal-negative"),
    # ranges
    pytest.param(where("age", "between", [50, 60.5]), lambda d: between(d.age, 50, 60.5), id="between-real"),
    pytest.param(where("score", "between", [2, 2]), lambda d: between(d.score, 2, 2), id="between-int-point"),
    pytest.param(where("age", "not_between", [50, 60.5]), lambda d: ~between(d.age, 50, 60.5),
                 id="not_between-real"),
    pytest.param(where("score", "not_between", [2.5, 7]), lambda d: ~between(d.score, 2.5, 7),
                 id="not_between-int"),
    # lists
    pytest.param(where("diag", "in", ["AD", "MCI"]), lambda d: isin(d.diag, ["AD", "MCI"]),
                 id="in-categorical"),
    pytest.param(where("grade", "in", [1, "3"]), lambda d: isin(d.grade, [1, 3]),
                 id="in-categorical-int-mixed"),
    pytest.param(where("score", "in", [0, 9, 9]), lambda d: isin(d.score, [0, 9]), id="in-int-duplicates"),
    pytest.param(where("age", "in", [61.5, 65, 64.0]), lambda d: isin(d.age, [61.5, 65, 64]), id="in-real"),
    pytest.param(where("note", "in", ["plain", 'say "hi"']), lambda d: isin(d.note, ["plain", 'say "hi"']),
                 id="in-text"),
    pytest.param(where("dataset", "in", ["a", "c"]), lambda d: isin(d.dataset, ["a", "c"]), id="in-dataset"),
    pytest.param(where("diag", "not_in", ["AD"]), lambda d: ~isin(d.diag, ["AD"]), id="not_in-categorical"),
    pytest.param(where("score", "not_in", [1, 2, 3]), lambda d: ~isin(d.score, [1, 2, 3]), id="not_in-int"),
    # missing values
    pytest.param(where("age", "is_null"), lambda d: d.age.isna(), id="is_null-real"),
    pytest.param(where("diag", "is_null"), lambda d: d.diag.isna(), id="is_null-categorical"),
    pytest.param(where("grade", "is_not_null"), lambda d: d.grade.notna(), id="is_not_null-categorical-int"),
    pytest.param(where("note", "is_not_null"), lambda d: d.note.notna(), id="is_not_null-text"),
    # groups
    pytest.param(group("AND", rule("age", "greater", 50), rule("diag", "equal", "AD")),
                 lambda d: (d.age > 50) & (d.diag == "AD"), id="group-and"),
    pytest.param(group("OR", rule("age", "greater", 80), rule("diag", "equal", "AD")),
                 lambda d: (d.age > 80) | (d.diag == "AD"), id="group-or"),
    pytest.param(group("or", rule("score", "less", 2), rule("score", "greater", 7)),
                 lambda d: (d.score < 2) | (d.score > 7), id="group-lowercase-condition"),
    pytest.param(group("AND", rule("score", "is_not_null")), lambda d: d.score.notna(),
                 id="group-single-rule"),
    pytest.param(group("AND",
                       group("OR", rule("diag", "equal", "AD"), rule("diag", "equal", "MCI")),
                       group("OR", rule("age", "less", 55), rule("score", "greater_or_equal", 8))),
                 lambda d: ((d.diag == "AD") | (d.diag == "MCI")) & ((d.age < 55) | (d.score >= 8)),
                 id="nested-and-of-ors"),
    pytest.param(group("OR",
                       group("AND", rule("dataset", "equal", "a"), rule("age", "less", 60)),
                       group("AND", rule("dataset", "equal", "b"), rule("grade", "in", ["2", "3"]),
                             group("OR", rule("note", "is_null"), rule("note", "equal", "plain")))),
                 lambda d: (((d.dataset == "a") & (d.age < 60))
                            | ((d.dataset == "b") & isin(d.grade, [2, 3])
                               & (d.note.isna() | (d.note == "plain")))),
                 id="nested-three-levels"),
    pytest.param(group("AND", rule("age", "less", 60), rule("diag", "equal", "AD"), negate=True),
                 lambda d: ~((d.age < 60) & (d.diag == "AD")), id="not-group"),
    pytest.param(group("OR", rule("score", "equal", 0),
                       group("OR", rule("diag", "equal", "CN"), rule("grade", "equal", 1), negate=True)),
                 lambda d: (d.score == 0) | ~((d.diag == "CN") | (d.grade == 1)), id="not-inner-group"),
    pytest.param(group("AND", group("OR", rule("diag", "equal", "AD"), rule("diag", "equal", "MCI")),
                       negate=False) | {"valid": True},
                 lambda d: (d.diag == "AD") | (d.diag == "MCI"), id="exareme2-shape-valid-true"),
    pytest.param({"condition": "AND",
                  "rules": [{"id": "diag", "type": "string", "operator": "equal", "value": "AD"}]},
                 lambda d: d.diag == "AD", id="exareme2-rule-without-field-and-input"),
    pytest.param({"condition": "AND", "rules": [{"field": "score", "operator": "equal", "value": 5}]},
                 lambda d: d.score == 5, id="rule-with-field-only"),
    pytest.param(None, None, id="no-filter"),
    pytest.param({}, None, id="empty-filter"),
]


def _deep(levels: int) -> dict:
    node = group("AND", rule("age", "greater", 0))
    for _ in range(levels - 1):
        node = group("AND", node)
    return node


FILTER_CASES.append(pytest.param(_deep(MAX_DEPTH), lambda d: d.age > 0, id="deepest-allowed"))
FILTER_CASES.append(pytest.param(group("OR", *[rule("score", "equal", i % 10) for i in range(MAX_RULES)]),
                                 lambda d: d.score.notna() & (d.score >= 0), id="most-rules-allowed"))

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
SELECT_CASES = [
    pytest.param(dict(datasets=ALL_DATASETS, variables=["age", "score"]), None,
                 dict(variables=["age", "score"], complete_case=True), id="complete-case-drops-missing"),
    pytest.param(dict(datasets=ALL_DATASETS, variables=["age", "score"], complete_case=False), None,
                 dict(variables=["age", "score"]), id="complete-case-off-keeps-missing"),
    pytest.param(dict(datasets=ALL_DATASETS, variables=VARIABLES), None,
                 dict(variables=VARIABLES, complete_case=True), id="complete-case-all-variables"),
    pytest.param(dict(datasets=["a"], variables=["age"], complete_case=False), None,
                 dict(datasets=["a"], variables=["age"]), id="one-dataset"),
    pytest.param(dict(datasets=("c", "a"), variables=["diag"], complete_case=False), None,
                 dict(datasets=["a", "c"], variables=["diag"]), id="two-datasets-tuple"),
    pytest.param(dict(datasets=["a", "zz-not-here"], variables=["age"]), None,
                 dict(datasets=["a"], variables=["age"], complete_case=True),
                 id="unknown-dataset-matches-nothing"),
    pytest.param(dict(datasets=["zz-not-here"], variables=["age", "diag"]), None,
                 dict(datasets=[], variables=["age", "diag"]), id="only-unknown-datasets-empty"),
    pytest.param(dict(datasets=["b", "b"], variables=["score", "age", "score"]), None,
                 dict(datasets=["b"], variables=["score", "age"], complete_case=True),
                 id="duplicates-read-once"),
    pytest.param(dict(datasets=ALL_DATASETS, variables=["dataset", "grade"]), None,
                 dict(variables=["grade"], complete_case=True), id="dataset-as-variable"),
    pytest.param(dict(datasets=ALL_DATASETS, variables=[]), None, dict(variables=[]), id="no-variables"),
    pytest.param(dict(datasets=["a", "b"], variables=["age", "grade"], filters=where("diag", "equal", "MCI")),
                 lambda d: d.diag == "MCI",
                 dict(datasets=["a", "b"], variables=["age", "grade"], complete_case=True),
                 id="filter-on-unselected-variable"),
    pytest.param(dict(datasets=ALL_DATASETS, variables=["age"], filters=where("note", "is_null")),
                 lambda d: d.note.isna(), dict(variables=["age"], complete_case=True),
                 id="is_null-on-unselected-variable"),
    pytest.param(dict(datasets=["c"], variables=["age", "score"],
                      filters=group("OR", rule("age", "is_null"), rule("score", "greater", 5)),
                      complete_case=True),
                 lambda d: d.age.isna() | (d.score > 5), dict(datasets=["c"], variables=["age", "score"],
                                                              complete_case=True),
                 id="filter-then-complete-case"),
]

# (kwargs for select_frame, outcome: "error" or the number of rows expected)
N_A = int((ROWS["dataset"] == "a").sum())
INJECTIONS = [
    pytest.param(dict(filters=where(f"age; DROP TABLE {TABLE}", "equal", 1)), "error", id="field-drop-table"),
    pytest.param(dict(filters=where('age" OR 1=1 --', "equal", 1)), "error", id="field-quote-or"),
    pytest.param(dict(filters=where("age) OR (1=1", "equal", 1)), "error", id="field-parenthesis"),
    pytest.param(dict(filters=where("diag", "equal", "' OR '1'='1")), "error", id="categorical-value-or"),
    pytest.param(dict(filters=where("age", "equal", "1 OR 1=1")), "error", id="number-value-or"),
    pytest.param(dict(filters=where("note", "equal", "zz' OR '1'='1")), 0, id="text-value-or"),
    pytest.param(dict(filters=where("note", "equal", f"'; DROP TABLE {TABLE}; --")), 0, id="text-value-drop"),
    pytest.param(dict(filters=where("note", "in", ["q') OR ('1'='1", "z"])), 0, id="text-list-or"),
    pytest.param(dict(filters=where("age", "= 1 OR 1=1 --", 1)), "error", id="operator"),
    pytest.param(dict(filters=group("AND 1=1 OR", rule("age", "equal", 1))), "error", id="condition"),
    pytest.param(dict(datasets=["a' OR 'x'='x"]), 0, id="dataset-or"),
    pytest.param(dict(datasets=[f"a'); DROP TABLE {TABLE}; --"]), 0, id="dataset-drop"),
    pytest.param(dict(datasets=["a", "b') OR 1=1 --"]), N_A, id="dataset-or-beside-real-one"),
    pytest.param(dict(datasets=[1]), "error", id="dataset-not-text"),
    pytest.param(dict(datasets="a' OR 'x'='x"), "error", id="datasets-as-string"),
    pytest.param(dict(variables=["age", f"age FROM {TABLE}; DROP TABLE {TABLE}; --"]), "error",
                 id="variable-drop-table"),
    pytest.param(dict(variables=['"age"']), "error", id="variable-quoted"),
    pytest.param(dict(variables=["*"]), "error", id="variable-star"),
    pytest.param(dict(variables=["_pid"]), "error", id="variable-pseudonym"),
    pytest.param(dict(variables="age"), "error", id="variables-as-string"),
]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def store(db_url):
    """A feature store holding ROWS in the test model's table."""
    store = FeatureStore(db_url)
    store.add_data_model(MODEL)
    with store.begin() as conn:
        store.upsert_rows(conn, MODEL, ROWS, batch_id="b", sha256="0" * 64)
    yield store
    store.dispose()


@pytest.fixture(scope="module")
def table():
    """The model's table object (compiling needs no database)."""
    return FeatureStore("sqlite://").model_table(MODEL)


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


@pytest.mark.parametrize("values", [
    pytest.param(["' OR '1'='1", "x'; DROP TABLE t; --", 'a" OR "b"="b'], id="quotes"),
])
def test_statement_carries_values_as_parameters(values, tmp_path):
    """The full SELECT holds user text only in its parameters, never in the SQL string."""
    store = FeatureStore(f"sqlite:///{tmp_path / 's.sqlite'}")
    store.add_data_model(MODEL)
    statement = select_statement(store, MODEL, datasets=values, variables=["age"],
                                 filters=where("note", "in", values))
    compiled = statement.compile(dialect=store.engine.dialect, compile_kwargs={"render_postcompile": True})
    for value in values:
        assert value not in str(compiled)
        assert list(compiled.params.values()).count(value) == 2  # once as a dataset, once in the filter
    store.dispose()


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


# --------------------------------------------------------------------------- reading rows (both backends)


def test_filters_select_the_same_rows_as_pandas(store, subtests):
    for case in FILTER_CASES:
        filters, reference = case.values
        with subtests.test(msg=case.id):
            got = select_frame(store, MODEL, datasets=ALL_DATASETS, variables=VARIABLES, filters=filters,
                               complete_case=False)
            want = expected_frame(None if reference is None else reference(REF))
            assert_frames_equal(got, want)
            assert count_rows(store, MODEL, datasets=ALL_DATASETS, variables=VARIABLES, filters=filters,
                              complete_case=False) == len(want)


def test_selection_matches_pandas(store, subtests):
    for case in SELECT_CASES:
        kwargs, reference, expected = case.values
        with subtests.test(msg=case.id):
            got = select_frame(store, MODEL, **kwargs)
            want = expected_frame(None if reference is None else reference(REF), **expected)
            assert_frames_equal(got, want)
            assert count_rows(store, MODEL, **{"filters": None, **kwargs}) == len(want)


def test_columns_are_typed_for_algorithms(store):
    frame = select_frame(store, MODEL, datasets=ALL_DATASETS, variables=VARIABLES, complete_case=False)
    assert list(frame.columns) == ["dataset", *VARIABLES]
    assert frame["age"].dtype == np.float64 and frame["score"].dtype == np.float64
    assert all(frame[c].dtype == object for c in ("dataset", "grade", "diag", "note"))
    assert set(frame["grade"].dropna()) <= {"1", "2", "3"}
    assert all(type(v) is str for v in frame["note"].dropna())
    assert any(v is None for v in frame["diag"]) and frame["age"].isna().any()
    assert math.isclose(frame["age"].sum(), REF["age"].sum(), rel_tol=1e-12)


def test_rows_stream_in_chunks(store):
    whole = select_frame(store, MODEL, datasets=ALL_DATASETS, variables=["age", "grade"])
    chunks = list(iter_frames(store, MODEL, datasets=ALL_DATASETS, variables=["age", "grade"], chunksize=7))
    assert len(chunks) == math.ceil(len(whole) / 7) and all(len(c) <= 7 for c in chunks)
    assert_frames_equal(pd.concat(chunks, ignore_index=True), whole)
    with pytest.raises(ValueError, match="chunksize"):
        iter_frames(store, MODEL, datasets=ALL_DATASETS, variables=["age"], chunksize=0)


def test_injection_attempts_are_refused_or_match_nothing(store, subtests):
    before = store.count_rows(MODEL)
    for case in INJECTIONS:
        kwargs, outcome = case.values
        kwargs = {"datasets": ALL_DATASETS, "variables": ["age"], "complete_case": False, **kwargs}
        with subtests.test(msg=case.id):
            if outcome == "error":
                with pytest.raises(RequestError):
                    select_frame(store, MODEL, **kwargs)
                with pytest.raises(RequestError):
                    count_rows(store, MODEL, **kwargs)
            else:
                assert len(select_frame(store, MODEL, **kwargs)) == outcome
                assert count_rows(store, MODEL, **kwargs) == outcome
            assert store.count_rows(MODEL) == before
    inspector = sa.inspect(store.engine)
    assert inspector.has_table(TABLE) and inspector.has_table("mipflow_data_models")
    assert store.count_rows(MODEL) == len(ROWS)
    assert [m.key for m in store.data_models()] == [MODEL.key]


@pytest.mark.parametrize("kwargs, message", [
    pytest.param(dict(datasets=[], variables=["age"]), r"at least one dataset", id="no-datasets"),
    pytest.param(dict(datasets=[None], variables=["age"]), r"None is not text", id="dataset-null"),
    pytest.param(dict(datasets=["a\x00"], variables=["age"]), r"NUL", id="dataset-nul"),
    pytest.param(dict(datasets=None, variables=["age"]), r"list of dataset codes", id="datasets-null"),
    pytest.param(dict(datasets=["a"], variables=["age", "weight", "height"]),
                 r"'weight', 'height' are not in",
                 id="unknown-variables-named"),
    pytest.param(dict(datasets=["a"], variables=[3]), r"3 is not in data model", id="variable-not-text"),
    pytest.param(dict(datasets=["a"], variables=None), r"list of variable codes", id="variables-null"),
    pytest.param(dict(datasets=["a"], variables=["age"], filters=where("x", "equal", 1)),
                 r"'x' is not a variable",
                 id="bad-filter"),
])
def test_bad_requests_are_refused_before_touching_the_database(kwargs, message, tmp_path):
    store = FeatureStore(f"sqlite:///{tmp_path / 'empty.sqlite'}")  # the model's table does not even exist
    for call in (select_frame, count_rows):
        with pytest.raises(RequestError, match=message):
            call(store, MODEL, **kwargs)
    store.dispose()


def test_model_without_data_at_node(db_url):
    store = FeatureStore(db_url)
    with pytest.raises(RequestError, match="holds no data for data model qry:1"):
        select_frame(store, MODEL, datasets=["a"], variables=["age"])
    store.add_data_model(MODEL)  # registered, no rows yet: an empty, typed frame
    frame = select_frame(store, MODEL, datasets=["a"], variables=["age", "diag"])
    assert frame.empty and list(frame.columns) == ["dataset", "age", "diag"]
    assert frame["age"].dtype == np.float64 and frame["diag"].dtype == object
    assert count_rows(store, MODEL, datasets=["a"], variables=["age"]) == 0
    store.dispose()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgresql_binary_read_equals_the_csv_read(store, subtests):
    """Complete-case numerical/categorical selections on PostgreSQL travel as binary COPY
    (:func:`mipflow.node.query._binary_copy_frame`): the same rows, order, values and types as
    the CSV COPY path; a stored value outside its codes falls back to the CSV path."""
    from mipflow.node.query import DEFAULT_CHUNKSIZE, _binary_copy_frame, _prepare, _stream

    def csv_read(**kwargs):
        statement, chosen = _prepare(store, MODEL, kwargs["datasets"], kwargs["variables"],
                                     kwargs.get("filters"), True)
        frames = list(_stream(store, statement, chosen, DEFAULT_CHUNKSIZE))
        return pd.concat(frames, ignore_index=True) if frames else None

    cases = {
        "all": dict(datasets=ALL_DATASETS, variables=["age", "score", "grade", "diag"]),
        "subset": dict(datasets=["c", "a"], variables=["diag", "age"]),
        "dataset-as-variable": dict(datasets=["b", "a", "zz"], variables=["dataset", "grade"]),
        "filtered": dict(datasets=ALL_DATASETS, variables=["score", "grade"],
                         filters=where("age", "greater", 40)),
    }
    for name, kwargs in cases.items():
        with subtests.test(msg=name):
            got = select_frame(store, MODEL, **kwargs)
            statement, chosen = _prepare(store, MODEL, kwargs["datasets"], kwargs["variables"],
                                         kwargs.get("filters"), True)
            assert _binary_copy_frame(store, statement, chosen, list(dict.fromkeys(kwargs["datasets"]))) is not None
            assert len(got) > 0
            assert_frames_equal(got, csv_read(**kwargs))
            assert [type(v) for v in got["dataset"].unique()] == [str] * got["dataset"].nunique()

    with store.begin() as conn:  # a value the data model does not know
        conn.exec_driver_sql(f"UPDATE {TABLE} SET diag = 'XX' WHERE diag = 'CN'")
    kwargs = dict(datasets=ALL_DATASETS, variables=["age", "diag"])
    statement, chosen = _prepare(store, MODEL, ALL_DATASETS, ["age", "diag"], None, True)
    assert _binary_copy_frame(store, statement, chosen, ALL_DATASETS) is None
    got = select_frame(store, MODEL, **kwargs)
    assert "XX" in set(got["diag"])
    assert_frames_equal(got, csv_read(**kwargs))


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgresql_binary_read_carries_the_same_row_identity(store):
    """With row identity (the node's differencing controls), the binary path sends the store's MD5
    of each row's key instead of the key columns; the keyed row keys equal the CSV path's."""
    from mipflow.node.controls.differencing import row_keys
    from mipflow.node.query import DEFAULT_CHUNKSIZE, ROW_MD5, _prepare, _stream

    kwargs = dict(datasets=ALL_DATASETS, variables=["age", "grade", "diag"])
    got = select_frame(store, MODEL, row_identity=True, **kwargs)
    assert ROW_MD5 in got.columns and "_pid" not in got.columns and len(got) > 0
    statement, chosen = _prepare(store, MODEL, ALL_DATASETS, kwargs["variables"], None, True, True)
    via_csv = pd.concat(list(_stream(store, statement, chosen, DEFAULT_CHUNKSIZE)), ignore_index=True)
    assert "_pid" in via_csv.columns and ROW_MD5 not in via_csv.columns
    assert_frames_equal(got.drop(columns=[ROW_MD5]), via_csv.drop(columns=["_pid", "_visit"]))
    key = "0123456789abcdef"
    np.testing.assert_array_equal(row_keys(got, key), row_keys(via_csv, key))
    assert len(set(row_keys(got, key))) == len(got)  # one key per row
    assert not np.array_equal(row_keys(got, key), row_keys(got, "fedcba9876543210"))


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgresql_row_identity_column_is_added_to_an_older_table_and_kept_by_the_server(store):
    """A table from before the stored row identity column gets it on the first read with row
    identity; rows loaded afterwards get theirs from the server; the keys equal the CSV path's."""
    from mipflow.node.controls.differencing import row_keys
    from mipflow.node.query import DEFAULT_CHUNKSIZE, ROW_MD5, _prepare, _stream
    from mipflow.node.store import ROW_MD5_COLUMN

    table = store.model_table(MODEL).name
    with store.begin() as conn:  # as a store created by an earlier mipflow
        conn.exec_driver_sql(f'ALTER TABLE "{table}" DROP COLUMN {ROW_MD5_COLUMN}')
    reopened = FeatureStore(store.url)
    try:
        kwargs = dict(datasets=ALL_DATASETS, variables=["age", "grade", "diag"])
        got = select_frame(reopened, MODEL, row_identity=True, **kwargs)
        statement, chosen = _prepare(reopened, MODEL, ALL_DATASETS, kwargs["variables"], None, True, True)
        via_csv = pd.concat(list(_stream(reopened, statement, chosen, DEFAULT_CHUNKSIZE)), ignore_index=True)
        key = "0123456789abcdef"
        np.testing.assert_array_equal(row_keys(got, key), row_keys(via_csv, key))
        with reopened.begin() as conn:
            expression = conn.exec_driver_sql(
                "SELECT generation_expression FROM information_schema.columns "
                f"WHERE table_name = '{table}' AND column_name = '{ROW_MD5_COLUMN}'").scalar_one()
        assert "md5" in expression
        # a row loaded now: the server computes its identity
        frame = pd.DataFrame({"_pid": ["late-1"], "dataset": [ALL_DATASETS[0]], "_visit": ["v9"],
                              "age": [71.5], "grade": [2], "diag": ["AD"]})
        with reopened.begin() as conn:
            reopened.upsert_rows(conn, MODEL, frame, batch_id="late", sha256="0" * 64)
        with reopened.begin() as conn:
            stored = conn.exec_driver_sql(
                f'SELECT {ROW_MD5_COLUMN} FROM "{table}" WHERE _pid = %s', ("late-1",)).scalar_one()
        import hashlib

        assert stored == hashlib.md5(f"late-1\x1f{ALL_DATASETS[0]}\x1fv9".encode()).hexdigest()
    finally:
        reopened.dispose()


def test_the_row_identity_column_is_never_a_request_variable(store):
    from mipflow.node.store import ROW_MD5_COLUMN

    with pytest.raises(RequestError):
        select_frame(store, MODEL, datasets=ALL_DATASETS, variables=[ROW_MD5_COLUMN])
