"""The feature-store table and filter cases the tests of :mod:`mipflow.node.query` share.

References are independent pandas computations that follow SQL's three-valued logic (nullable
dtypes: comparisons with a missing value are <NA>, ``~<NA>`` is <NA>, and only rows where the
filter is True are kept).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.filters import MAX_DEPTH, MAX_RULES

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

