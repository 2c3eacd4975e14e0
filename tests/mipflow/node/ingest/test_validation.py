"""Validation of harmonised rows: type coercion, then GX expectations from CDE metadata."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mipflow.protocol.datamodel import DataModel
from mipflow.exceptions import DataModelError
from mipflow.node.ingest.validation import FrameValidator, ValidationOutcome, build_expectation_suite, validate_frame

TINY = {
    "code": "tiny", "version": "1.0", "label": "Tiny",
    "variables": [
        {"code": "subjectcode", "sql_type": "text", "isCategorical": False},
        {"code": "dataset", "sql_type": "text", "isCategorical": True,
         "enumerations": [{"code": "site_a", "label": "A"}, {"code": "site_b", "label": "B"}]},
    ],
    "groups": [{"code": "g", "label": "G", "variables": [
        {"code": "age", "sql_type": "real", "isCategorical": False, "minValue": 0, "maxValue": 130},
        {"code": "mmse", "sql_type": "int", "isCategorical": False, "minValue": 0, "maxValue": 30},
        {"code": "gender", "sql_type": "text", "isCategorical": True,
         "enumerations": [{"code": "M", "label": "Male"}, {"code": "F", "label": "Female"}]},
        {"code": "stage", "sql_type": "int", "isCategorical": True,
         "enumerations": [{"code": "1", "label": "one"}, {"code": "2", "label": "two"}]},
        {"code": "volume", "sql_type": "real", "isCategorical": False},
        {"code": "note", "sql_type": "text", "isCategorical": False},
    ]}],
}
ORDER = ["subjectcode", "dataset", "age", "mmse", "gender", "stage", "volume", "note"]
GOOD = {"subjectcode": "s1", "dataset": "site_a", "age": "70.5", "mmse": "28", "gender": "F",
        "stage": "1", "volume": "3.25", "note": "free text"}
#: distinctive values that must never appear in reasons or summaries
SECRETS = ("98765.4321", "ZZQX", "4242.5", "QQXJ", "-31337")


@pytest.fixture(scope="module")
def tiny() -> DataModel:
    return DataModel.from_dict(TINY)


@pytest.fixture(scope="module")
def validator(tiny) -> FrameValidator:
    """One validator for every case: reuse is the normal way to run it."""
    return FrameValidator(tiny, ORDER)


def rows(*changes: dict, index=None) -> pd.DataFrame:
    """A str-typed frame of GOOD rows, each updated with one dict of changes."""
    records = [dict(GOOD, **change) for change in changes]
    return pd.DataFrame.from_records(records, index=index).astype("str")


def leaks(outcome: ValidationOutcome) -> list[str]:
    """The secret values found in anything that may leave the node."""
    text = " | ".join(outcome.row_errors.dropna()) + json.dumps(outcome.summary)
    return [s for s in SECRETS if s in text]


# -- one bad row between two good ones ---------------------------------------------------
@pytest.mark.parametrize("change, expected", [
    pytest.param({}, None, id="valid"),
    pytest.param({"mmse": "31"}, "mmse: above maxValue 30", id="int-above-max"),
    pytest.param({"mmse": "-31337"}, "mmse: below minValue 0", id="int-below-min"),
    pytest.param({"age": "98765.4321"}, "age: above maxValue 130", id="real-above-max"),
    pytest.param({"age": "-0.001"}, "age: below minValue 0", id="real-below-min"),
    pytest.param({"age": "130.0001"}, "age: above maxValue 130", id="real-just-above-max"),
    pytest.param({"age": "0"}, None, id="boundary-real-min"),
    pytest.param({"age": "130"}, None, id="boundary-real-max"),
    pytest.param({"age": "130.0"}, None, id="boundary-real-max-decimal"),
    pytest.param({"mmse": "0"}, None, id="boundary-int-min"),
    pytest.param({"mmse": "30"}, None, id="boundary-int-max"),
    pytest.param({"age": "QQXJ"}, "age: not a number", id="real-not-a-number"),
    pytest.param({"mmse": "ZZQX"}, "mmse: not a number", id="int-not-a-number"),
    pytest.param({"volume": "inf"}, "volume: not a number", id="real-infinite"),
    pytest.param({"mmse": "4242.5"}, "mmse: not an integer", id="int-not-an-integer"),
    pytest.param({"mmse": "2.0"}, None, id="int-written-as-decimal"),
    pytest.param({"mmse": "1e1"}, None, id="int-in-exponent-form"),
    pytest.param({"gender": "ZZQX"}, "gender: not in enumerations", id="bad-enumeration"),
    pytest.param({"gender": "f"}, "gender: not in enumerations", id="enumeration-is-case-sensitive"),
    pytest.param({"dataset": "ZZQX"}, "dataset: not in enumerations", id="bad-dataset"),
    pytest.param({"stage": "3"}, "stage: not in enumerations", id="int-categorical-bad-code"),
    pytest.param({"stage": "2.0"}, None, id="int-categorical-as-decimal"),
    pytest.param({"stage": "QQXJ"}, "stage: not a number", id="int-categorical-not-a-number"),
    pytest.param({"subjectcode": ""}, "subjectcode: required value missing", id="required-empty"),
    pytest.param({"subjectcode": "   "}, "subjectcode: required value missing", id="required-whitespace-only"),
    pytest.param({"dataset": None}, "dataset: required value missing", id="required-nan"),
    pytest.param({"age": "", "gender": " ", "note": "\t"}, None, id="optional-blank-is-missing"),
    pytest.param({"age": None, "mmse": None, "gender": None, "stage": None, "volume": None, "note": None}, None,
                 id="optional-all-missing"),
    pytest.param({"gender": " F ", "dataset": "site_b\t", "age": " 70 ", "mmse": " 7"}, None,
                 id="whitespace-stripped"),
    pytest.param({"age": "98765.4321", "mmse": "ZZQX", "gender": "ZZQX", "subjectcode": ""},
                 "subjectcode: required value missing; age: above maxValue 130; mmse: not a number; "
                 "gender: not in enumerations", id="several-reasons-in-model-order"),
])
def test_row_cases(validator, change, expected):
    frame = rows({}, change, {"subjectcode": "s3"}, index=[100, 101, 102])
    outcome = validator.validate(frame)

    assert list(outcome.row_errors.index) == [100, 101, 102]
    assert outcome.row_errors.tolist() == [None, expected, None]
    assert outcome.valid_mask.tolist() == [True, expected is None, True]
    assert outcome.valid_mask.dtype == bool
    summary = outcome.summary
    assert (summary["rows"], summary["valid_rows"], summary["failed_rows"]) == (3, 2 + (expected is None),
                                                                                int(expected is not None))
    assert not leaks(outcome)


def test_coerced_frame(validator):
    frame = rows({"gender": " F ", "mmse": "1e1", "stage": "2.0", "age": ""},
                 {"mmse": "4242.5", "age": "QQXJ", "gender": "ZZQX"}, index=["r1", "r2"])
    frame["extra_col"] = "x"
    frame = frame[["extra_col", *reversed(ORDER)]]  # input order does not matter
    out = validator.validate(frame).frame

    assert list(out.columns) == ORDER
    assert list(out.index) == ["r1", "r2"]
    assert str(out["mmse"].dtype) == "Int64" and str(out["stage"].dtype) == "Int64"
    assert out["age"].dtype == np.float64 and out["volume"].dtype == np.float64
    assert pd.api.types.is_string_dtype(out["gender"].dtype) and pd.api.types.is_string_dtype(out["note"].dtype)
    assert out.loc["r1", "mmse"] == 10 and out.loc["r1", "stage"] == 2
    assert out.loc["r1", "gender"] == "F"
    assert pd.isna(out.loc["r1", "age"])
    # cells that failed coercion are missing; values that failed a range/set check are kept as read
    assert pd.isna(out.loc["r2", "mmse"]) and pd.isna(out.loc["r2", "age"])
    assert out.loc["r2", "gender"] == "ZZQX"


@pytest.mark.parametrize("drop, add, required, missing, extra, errors", [
    pytest.param(["note", "volume"], {}, ("subjectcode", "dataset"), ["volume", "note"], [],
                 [None, "mmse: above maxValue 30"], id="optional-columns-missing"),
    pytest.param(["dataset"], {}, ("subjectcode", "dataset"), ["dataset"], [],
                 ["dataset: required column missing",
                  "dataset: required column missing; mmse: above maxValue 30"], id="required-column-missing"),
    pytest.param([], {"hospital_id": "ZZQX", "zz_extra": "1"}, ("subjectcode", "dataset"), [],
                 ["hospital_id", "zz_extra"], [None, "mmse: above maxValue 30"], id="extra-columns-reported"),
    pytest.param(["subjectcode"], {}, ("dataset",), ["subjectcode"], [],
                 [None, "mmse: above maxValue 30"], id="not-required-when-not-listed"),
    pytest.param(["age"], {}, ("subjectcode", "dataset", "age"), ["age"], [],
                 ["age: required column missing", "age: required column missing; mmse: above maxValue 30"],
                 id="custom-required-column-missing"),
])
def test_missing_and_extra_columns(tiny, drop, add, required, missing, extra, errors):
    frame = rows({}, {"mmse": "99"}).drop(columns=drop)
    for name, value in add.items():
        frame[name] = value
    outcome = validate_frame(frame, tiny, required=required)

    assert outcome.summary["missing_columns"] == missing
    assert outcome.summary["extra_columns"] == extra
    assert list(outcome.frame.columns) == [c for c in ORDER if c not in drop]
    assert outcome.row_errors.tolist() == errors
    assert outcome.summary["failed_rows"] == sum(e is not None for e in errors)
    assert not leaks(outcome)


def test_required_column_must_be_in_model(tiny):
    with pytest.raises(DataModelError, match="not variables of data model"):
        validate_frame(rows({}), tiny, required=("subjectcode", "visit_id"))
    with pytest.raises(DataModelError, match="visit_id"):
        build_expectation_suite(tiny, ORDER, required=("visit_id",))


def test_summary_is_json_and_counts_only(validator):
    frame = rows({"age": "98765.4321"}, {"mmse": "4242.5"}, {"gender": "ZZQX", "note": "QQXJ"}, {"mmse": "-31337"},
                 {})
    outcome = validator.validate(frame)
    summary = json.loads(json.dumps(outcome.summary))

    assert summary == outcome.summary
    assert set(summary) >= {"rows", "valid_rows", "failed_rows", "expectations", "missing_columns",
                            "extra_columns", "gx_version"}
    assert (summary["rows"], summary["valid_rows"], summary["failed_rows"]) == (5, 1, 4)
    by_key = {(e["expectation"], e["column"]): e for e in summary["expectations"]}
    assert by_key[("expect_column_values_to_be_between", "age")]["unexpected_count"] == 1
    assert by_key[("expect_column_values_to_be_between", "mmse")]["unexpected_count"] == 1  # 4242.5 failed coercion
    assert by_key[("expect_column_values_to_be_in_set", "gender")] == {
        "expectation": "expect_column_values_to_be_in_set", "column": "gender", "success": False,
        "unexpected_count": 1, "element_count": 5}
    assert by_key[("expect_column_values_to_not_be_null", "subjectcode")]["success"] is True
    assert by_key[("expect_column_to_exist", "dataset")]["success"] is True
    assert summary["type_errors"] == [{"column": "mmse", "reason": "not an integer", "count": 1}]
    for entry in summary["expectations"]:
        assert set(entry) == {"expectation", "column", "success", "unexpected_count", "element_count"}
    assert not leaks(outcome)


def test_suite_generated_from_metadata(tiny):
    suite = build_expectation_suite(tiny, [*ORDER, "not_in_model"], required=("subjectcode", "dataset"))
    found = sorted((e.expectation_type, e.column) for e in suite.expectations)
    assert found == sorted([
        ("expect_column_to_exist", "subjectcode"), ("expect_column_to_exist", "dataset"),
        ("expect_column_values_to_not_be_null", "subjectcode"), ("expect_column_values_to_not_be_null", "dataset"),
        ("expect_column_values_to_be_in_set", "dataset"), ("expect_column_values_to_be_between", "age"),
        ("expect_column_values_to_be_between", "mmse"), ("expect_column_values_to_be_in_set", "gender"),
        ("expect_column_values_to_be_in_set", "stage"),
    ])
    by_column = {(e.expectation_type, e.column): e for e in suite.expectations}
    age = by_column[("expect_column_values_to_be_between", "age")]
    assert (age.min_value, age.max_value) == (0, 130)
    assert not age.strict_min and not age.strict_max  # bounds are valid values
    assert set(by_column[("expect_column_values_to_be_in_set", "gender")].value_set) == {"M", "F"}
    assert set(by_column[("expect_column_values_to_be_in_set", "stage")].value_set) == {1, 2}
    # only the columns asked for; the existence of required columns is always expected
    partial = build_expectation_suite(tiny, ["age"], required=("dataset",))
    assert sorted((e.expectation_type, e.column) for e in partial.expectations) == [
        ("expect_column_to_exist", "dataset"), ("expect_column_values_to_be_between", "age")]


def _messy(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "subjectcode": rng.choice(["s1", "s2", "", " "], n, p=[.5, .46, .02, .02]),
        "dataset": rng.choice(["site_a", "site_b", "ZZQX", ""], n, p=[.5, .46, .02, .02]),
        "age": rng.choice(["0", "130", "70.25", "98765.4321", "QQXJ", "-1", ""], n),
        "mmse": rng.choice(["0", "30", "31", "4242.5", "ZZQX", "12", " 5 "], n),
        "gender": rng.choice(["M", "F", " F", "ZZQX", ""], n),
        "stage": rng.choice(["1", "2", "3", ""], n),
        "volume": rng.choice(["1.5", "2", "QQXJ", ""], n),
        "note": rng.choice(["a", "b", ""], n),
    }, index=pd.RangeIndex(1000, 1000 + n)).astype("str")


def test_reuse_across_chunks_matches_one_call(tiny):
    frame = _messy(600, seed=7)
    whole = validate_frame(frame, tiny)
    reused = FrameValidator(tiny, list(frame.columns))
    parts = [reused.validate(frame.iloc[i:i + 150]) for i in range(0, len(frame), 150)]

    errors = pd.concat([p.row_errors for p in parts])
    assert errors.index.equals(frame.index)
    assert errors.tolist() == whole.row_errors.tolist()
    pd.testing.assert_frame_equal(pd.concat([p.frame for p in parts]), whole.frame)
    assert np.concatenate([p.valid_mask for p in parts]).tolist() == whole.valid_mask.tolist()
    for key in ("rows", "valid_rows", "failed_rows"):
        assert sum(p.summary[key] for p in parts) == whole.summary[key]
    for i, entry in enumerate(whole.summary["expectations"]):
        assert sum(p.summary["expectations"][i]["unexpected_count"] for p in parts) == entry["unexpected_count"]
    assert 0 < whole.summary["failed_rows"] < whole.summary["rows"]
    assert whole.summary["valid_rows"] + whole.summary["failed_rows"] == whole.summary["rows"] == 600
    assert not leaks(whole)
    # a later chunk is not affected by an earlier, worse one
    clean = rows({}, {})
    assert reused.validate(clean).row_errors.tolist() == [None, None]


def test_chunk_with_other_columns(tiny):
    reused = FrameValidator(tiny, ORDER)
    assert reused.validate(rows({"mmse": "31"})).row_errors.tolist() == ["mmse: above maxValue 30"]
    fewer = rows({"mmse": "31"}).drop(columns=["dataset", "age"])
    assert reused.validate(fewer).row_errors.tolist() == ["dataset: required column missing; "
                                                          "mmse: above maxValue 30"]


def test_empty_frame(tiny):
    outcome = validate_frame(rows({}).iloc[:0], tiny)
    assert len(outcome.frame) == 0 and len(outcome.row_errors) == 0 and outcome.valid_mask.shape == (0,)
    assert (outcome.summary["rows"], outcome.summary["failed_rows"]) == (0, 0)


def test_non_string_input_is_accepted(tiny):
    frame = pd.DataFrame({"subjectcode": [1, 2], "dataset": ["site_a", "site_b"], "age": [70.5, 140.0],
                          "mmse": [3, 4], "gender": ["M", None]})
    outcome = validate_frame(frame, tiny)
    assert outcome.row_errors.tolist() == [None, "age: above maxValue 130"]
    assert outcome.frame["subjectcode"].tolist() == ["1", "2"]


def test_validation_prints_nothing(validator, capfd):
    validator.validate(_messy(50, seed=3))
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # no GX progress bars or logging (which could echo values)


def test_import_does_not_load_great_expectations():
    code = "import sys, mipflow.node.ingest.validation; print('great_expectations' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# -- the real dementia data ---------------------------------------------------------------
def test_dementia_edsd0(dementia_model, shared_dir):
    frame = pd.read_csv(shared_dir / "data" / "dementia_v_0_1" / "edsd0.csv", dtype=str)
    outcome = validate_frame(frame, dementia_model)
    summary = outcome.summary

    assert summary["rows"] == len(frame) > 0
    assert summary["valid_rows"] + summary["failed_rows"] == summary["rows"]
    assert int(outcome.valid_mask.sum()) == summary["valid_rows"]
    failures = outcome.row_errors.dropna().value_counts().to_dict()
    assert failures == {}, f"edsd0.csv rows failing validation: {failures}"
    assert summary["extra_columns"] == []
    assert len(outcome.frame.columns) == len(frame.columns) == len(dementia_model) - len(summary["missing_columns"])
    assert str(outcome.frame["minimentalstate"].dtype) == "Int64"
    assert outcome.frame["lefthippocampus"].dtype == np.float64
    assert set(outcome.frame["dataset"].dropna()) == {"edsd0"}
    checked = {(e["expectation"], e["column"]) for e in summary["expectations"]}
    assert ("expect_column_values_to_be_between", "minimentalstate") in checked
    assert ("expect_column_values_to_be_in_set", "gender") in checked
    assert all(e["element_count"] == len(frame) for e in summary["expectations"])
    json.dumps(summary)


def test_dementia_bad_cells_are_caught(dementia_model, shared_dir):
    frame = pd.read_csv(shared_dir / "data" / "dementia_v_0_1" / "edsd0.csv", dtype=str)
    frame.loc[0, "minimentalstate"] = "-31337"
    frame.loc[1, "gender"] = "ZZQX"
    frame.loc[2, "lefthippocampus"] = "QQXJ"
    frame.loc[3, "dataset"] = "ZZQX"
    outcome = validate_frame(frame, dementia_model)
    assert outcome.row_errors.iloc[:4].tolist() == [
        "minimentalstate: below minValue 0", "gender: not in enumerations", "lefthippocampus: not a number",
        "dataset: not in enumerations"]
    assert outcome.row_errors.iloc[4:].isna().all()
    assert (outcome.summary["failed_rows"], outcome.summary["valid_rows"]) == (4, len(frame) - 4)
    assert not leaks(outcome)
