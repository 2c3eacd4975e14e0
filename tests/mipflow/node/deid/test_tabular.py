"""mipflow.node.deid.tabular: depersonalisation of EHR rows, with exact expected output.

Expected values are computed independently of the package, with ``hmac``,
``datetime`` and plain Python.
"""
from __future__ import annotations

import logging
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mipflow.exceptions import ProfileError
from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.node.deid.profile import DeidProfile
from mipflow.node.deid.rules import DateRule, QuasiRule
from mipflow.node.deid.tabular import DeidResult, depersonalise

from tests.mipflow.node.deid.helpers import (
    EXAMPLE_COLUMNS,
    EXAMPLE_DOC,
    KEY,
    d,
    frame,
    profile,
    ref_age,
    ref_pseudonym,
)


def test_depersonalise_refuses_a_profile_that_does_not_fit(pseudonymiser: Pseudonymiser) -> None:
    p = DeidProfile.from_dict(EXAMPLE_DOC)
    with pytest.raises(ProfileError, match="does not fit the input: patient identifier column 'mrn' is missing"):
        depersonalise(frame(subject=["a"]), p, pseudonymiser)


def test_depersonalise_refuses_non_string_columns(pseudonymiser: Pseudonymiser) -> None:
    df = pd.DataFrame({"mrn": [1, 2]})
    with pytest.raises(TypeError, match="dtype=str"):
        depersonalise(df, profile(), pseudonymiser)


# --------------------------------------------------------------------------
# Rules, with exact expected output
# --------------------------------------------------------------------------


def test_pseudonym_replaces_patient_id_and_other_columns_pass_through(pseudonymiser: Pseudonymiser) -> None:
    df = frame(site=["L", "G", "L"], mrn=[" A1", "B2", "A1"], ssn=["756.1", "756.2", "756.3"],
               notes=["n1", "n2", "n3"], mmse=["29", None, "17"])
    p = profile(direct_identifiers=("ssn", "phone"), free_text=("notes",))
    result = depersonalise(df, p, pseudonymiser)
    assert isinstance(result, DeidResult)
    assert list(result.frame.columns) == ["subjectcode", "site", "mmse"]
    assert result.frame["subjectcode"].tolist() == [ref_pseudonym(KEY, "A1"), ref_pseudonym(KEY, "B2"),
                                                   ref_pseudonym(KEY, "A1")]
    pd.testing.assert_series_equal(result.frame["mmse"], df["mmse"])
    pd.testing.assert_series_equal(result.frame["site"], df["site"])
    assert result.row_errors.isna().all() and result.ok.all() and result.error_count == 0


def test_pseudonym_column_may_replace_the_patient_id_column(pseudonymiser: Pseudonymiser) -> None:
    df = frame(subjectcode=["S1"], x=["1"])
    result = depersonalise(df, profile(patient_id="subjectcode"), pseudonymiser)
    assert list(result.frame.columns) == ["subjectcode", "x"]
    assert result.frame["subjectcode"].tolist() == [ref_pseudonym(KEY, "S1")]


def test_index_is_preserved(pseudonymiser: Pseudonymiser) -> None:
    df = frame(mrn=["A", None, "C"], dob=["1950-01-01", "1960-01-01", "x"]).set_axis([7, 3, 7])
    result = depersonalise(df, profile(dates=(DateRule("dob", "year"),)), pseudonymiser)
    assert list(result.frame.index) == [7, 3, 7]
    assert list(result.row_errors.index) == [7, 3, 7]
    assert result.row_errors.tolist() == [None, "missing patient identifier",
                                          "dob: not a date in format %Y-%m-%d"]


AGE_CASES = [
    pytest.param("1950-03-01", "2020-02-29", None, id="day-before-birthday"),
    pytest.param("1950-02-28", "2020-02-28", None, id="on-birthday"),
    pytest.param("2000-02-29", "2021-02-28", None, id="leap-birthday-not-yet"),
    pytest.param("2000-02-29", "2021-03-01", None, id="leap-birthday-reached"),
    pytest.param("2000-02-29", "2004-02-29", None, id="leap-to-leap"),
    pytest.param("2020-01-01", "2020-01-01", None, id="born-that-day"),
    pytest.param("1930-06-15", "2020-06-15", None, id="exactly-90"),
    pytest.param("1925-06-15", "2020-06-16", None, id="top-coded-95"),
    pytest.param("1930-06-15", "2020-06-15", 80, id="custom-top-code"),
    pytest.param("1987-12-31", "2023-01-01", 80, id="year-end"),
]


@pytest.mark.parametrize("birth, reference, top_code", AGE_CASES)
def test_age_rule(pseudonymiser: Pseudonymiser, birth: str, reference: str, top_code: int | None) -> None:
    df = frame(mrn=["A"], birth_date=[birth], admission_date=[reference])
    rule = DateRule("birth_date", "age", reference="admission_date", output="age", top_code=top_code)
    result = depersonalise(df, profile(dates=(rule,)), pseudonymiser)
    expected = min(ref_age(d(birth), d(reference)), 90 if top_code is None else top_code)
    assert list(result.frame.columns) == ["subjectcode", "age"]  # both dates removed
    assert result.frame["age"].dtype == np.float64
    assert result.frame["age"].tolist() == [float(expected)]
    assert result.row_errors.tolist() == [None]


@settings(max_examples=150, deadline=None)
@given(birth=st.dates(date(1900, 1, 1), date(2024, 12, 31)),
       gap=st.integers(min_value=0, max_value=40000))
def test_age_matches_reference_for_random_dates(birth: date, gap: int) -> None:
    reference = birth + timedelta(days=gap)
    df = frame(mrn=["A"], b=[birth.isoformat()], r=[reference.isoformat()])
    rule = DateRule("b", "age", reference="r", top_code=200)
    result = depersonalise(df, profile(dates=(rule,)), Pseudonymiser(KEY))
    assert result.frame["b"].tolist() == [float(ref_age(birth, reference))]


def test_days_since_rule(pseudonymiser: Pseudonymiser) -> None:
    pairs = [("2020-03-10", "2020-02-28"), ("2019-01-01", "2020-01-01"), ("2020-01-01", "2020-01-01"),
             (None, "2020-01-01"), ("2024-02-29", "1999-12-31")]
    df = frame(mrn=["A", "B", "C", "D", "E"], followup=[p[0] for p in pairs], adm=[p[1] for p in pairs])
    rule = DateRule("followup", "days_since", reference="adm", output="followup_days")
    result = depersonalise(df, profile(dates=(rule,)), pseudonymiser)
    expected = [float((d(a) - d(b)).days) if a else np.nan for a, b in pairs]
    got = result.frame["followup_days"]
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got.to_numpy(), np.array(expected))
    assert list(result.frame.columns) == ["subjectcode", "followup_days"]
    assert result.row_errors.isna().all()  # a missing date is missing, not an error


def test_shift_rule_moves_each_patients_dates_by_the_same_secret_offset(pseudonymiser: Pseudonymiser) -> None:
    ids = ["A", "A", "B", "C "]
    dates = ["2020-02-28", "2021-12-31", "2000-01-01", "2020-01-01"]
    df = frame(mrn=ids, visit=dates)
    result = depersonalise(df, profile(dates=(DateRule("visit", "shift"),), max_shift_days=30), pseudonymiser)
    expected = [(d(v) + timedelta(days=pseudonymiser.date_shift_days(i, 30))).isoformat()
                for i, v in zip(ids, dates)]
    assert result.frame["visit"].tolist() == expected
    assert all(e != v for e, v in zip(expected, dates))
    # The two visits of A keep their interval.
    first, second = (d(x) for x in result.frame["visit"][:2])
    assert (second - first) == (d(dates[1]) - d(dates[0]))


def test_shift_with_output_name_removes_the_source(pseudonymiser: Pseudonymiser) -> None:
    df = frame(mrn=["A"], visit=["2020-05-05"])
    result = depersonalise(df, profile(dates=(DateRule("visit", "shift", output="visit_shifted"),)), pseudonymiser)
    assert list(result.frame.columns) == ["subjectcode", "visit_shifted"]


def test_year_and_drop_rules(pseudonymiser: Pseudonymiser) -> None:
    df = frame(mrn=["A", "B"], dob=["1950-07-04", None], death=["2020-01-01", "2021-01-01"], x=["1", "2"])
    p = profile(dates=(DateRule("dob", "year", output="birth_year"), DateRule("death", "drop")))
    result = depersonalise(df, p, pseudonymiser)
    assert list(result.frame.columns) == ["subjectcode", "x", "birth_year"]
    assert result.frame["birth_year"].tolist()[0] == "1950"
    assert pd.isna(result.frame["birth_year"].iloc[1])


def test_references_are_read_before_shifting_and_reference_only_dates_are_removed(
    pseudonymiser: Pseudonymiser,
) -> None:
    df = frame(mrn=["A"], dob=["1950-06-15"], adm=["2020-06-15"], onset=["2020-06-01"], fu=["2020-07-15"])
    p = profile(dates=(
        DateRule("adm", "shift"),                                   # shifted first...
        DateRule("dob", "age", reference="adm", output="age"),      # ...yet age uses the raw date
        DateRule("dob", "year", output="birth_year"),
        DateRule("fu", "days_since", reference="onset", output="fu_days"),  # onset: reference only
    ))
    result = depersonalise(df, p, pseudonymiser)
    assert list(result.frame.columns) == ["subjectcode", "adm", "age", "birth_year", "fu_days"]
    row = result.frame.iloc[0]
    assert row["age"] == 70.0
    assert row["birth_year"] == "1950"
    assert row["fu_days"] == 44.0
    assert row["adm"] == (date(2020, 6, 15) + timedelta(days=pseudonymiser.date_shift_days("A"))).isoformat()


@pytest.mark.parametrize(
    "fmt, birth, admission",
    [
        pytest.param("%d/%m/%Y", "15/06/1950", "14/06/2020", id="dmy-slash"),
        pytest.param("%Y%m%d", "19500615", "20200614", id="compact"),
        pytest.param("%d.%m.%Y", "15.06.1950", "14.06.2020", id="dmy-dot"),
        pytest.param("%Y-%m-%d %H:%M", "1950-06-15 23:59", "2020-06-14 00:01", id="with-time"),
    ],
)
def test_custom_date_format(pseudonymiser: Pseudonymiser, fmt: str, birth: str, admission: str) -> None:
    df = frame(mrn=["A"], dob=[birth], adm=[admission])
    p = profile(date_format=fmt, dates=(DateRule("dob", "age", reference="adm", output="age"),
                                        DateRule("adm", "shift")))
    result = depersonalise(df, p, pseudonymiser)
    assert result.frame["age"].tolist() == [69.0]
    shifted = date(2020, 6, 14) + timedelta(days=pseudonymiser.date_shift_days("A"))
    assert result.frame["adm"].tolist() == [shifted.isoformat()]


def test_iso_is_the_default_format(pseudonymiser: Pseudonymiser) -> None:
    df = frame(mrn=["A", "B"], dob=["1950-06-15", "15/06/1950"])
    result = depersonalise(df, profile(dates=(DateRule("dob", "year"),)), pseudonymiser)
    assert result.frame["dob"].iloc[0] == "1950"
    assert result.row_errors.tolist() == [None, "dob: not a date in format %Y-%m-%d"]


def test_truncate_rule(pseudonymiser: Pseudonymiser) -> None:
    df = frame(mrn=["A", "B", "C", "D"], zip=["12345", " 98765 ", "12", None])
    p = profile(quasi_identifiers=(QuasiRule("zip", "truncate", keep=3, output="zip3"),))
    result = depersonalise(df, p, pseudonymiser)
    assert list(result.frame.columns) == ["subjectcode", "zip3"]
    assert result.frame["zip3"].tolist()[:3] == ["123", "987", "12"]
    assert pd.isna(result.frame["zip3"].iloc[3])


def test_top_code_rule(pseudonymiser: Pseudonymiser) -> None:
    df = frame(mrn=["A", "B", "C", "D", "E"], weight=["80.5", "250", " 150 ", None, "heavy"])
    p = profile(quasi_identifiers=(QuasiRule("weight", "top_code", maximum=150),))
    result = depersonalise(df, p, pseudonymiser)
    got = result.frame["weight"]
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got.to_numpy(), [80.5, 150.0, 150.0, np.nan, np.nan])
    assert result.row_errors.tolist() == [None, None, None, None, "weight: not a number"]


def test_quasi_drop_rule(pseudonymiser: Pseudonymiser) -> None:
    df = frame(mrn=["A"], ethnicity=["x"], y=["1"])
    result = depersonalise(df, profile(quasi_identifiers=(QuasiRule("ethnicity", "drop"),)), pseudonymiser)
    assert list(result.frame.columns) == ["subjectcode", "y"]


def test_example_profile_end_to_end(pseudonymiser: Pseudonymiser) -> None:
    row = {"mrn": "MRN-42", "first_name": "Ada", "last_name": "Byron", "address": "1 Rue X",
           "phone": "+41 21 000 00 00", "email": "ada@example.org", "ssn": "756.0000.0000.00",
           "clinical_notes": "felt dizzy", "birth_date": "1941-12-10", "admission_date": "2021-12-09",
           "last_followup_date": "2022-03-01", "zip": "1011", "mmse": "27"}
    result = depersonalise(frame(**{k: [v] for k, v in row.items()}), DeidProfile.from_dict(EXAMPLE_DOC),
                           pseudonymiser)
    shifted = date(2021, 12, 9) + timedelta(days=pseudonymiser.date_shift_days("MRN-42"))
    assert result.frame.iloc[0].to_dict() == {
        "subjectcode": ref_pseudonym(KEY, "MRN-42"), "mmse": "27", "age": 79.0,
        "followup_days": 82.0, "admission_date": shifted.isoformat(), "zip3": "101",
    }


def test_empty_frame_gives_empty_typed_result(pseudonymiser: Pseudonymiser) -> None:
    df = frame(**{c: [] for c in EXAMPLE_COLUMNS})
    result = depersonalise(df, DeidProfile.from_dict(EXAMPLE_DOC), pseudonymiser)
    assert result.frame.empty and result.row_errors.empty
    assert list(result.frame.columns) == ["subjectcode", "mmse", "age", "followup_days",
                                          "admission_date", "zip3"]


def test_object_dtype_and_padded_cells_give_the_same_result(pseudonymiser: Pseudonymiser) -> None:
    p = DeidProfile.from_dict(EXAMPLE_DOC)
    row = {c: "x" for c in EXAMPLE_COLUMNS}
    row.update(mrn="M1", birth_date="1950-06-15", admission_date="2020-06-15",
               last_followup_date="2020-07-01", zip="12345", mmse="20")
    padded = {k: (f"  {v} " if k != "mmse" else v) for k, v in row.items()}
    expected = depersonalise(frame(**{k: [v] for k, v in row.items()}), p, pseudonymiser).frame
    as_object = pd.DataFrame({k: [v] for k, v in padded.items()}, dtype=object)
    got = depersonalise(as_object, p, pseudonymiser).frame
    assert got.iloc[0].to_dict() == expected.iloc[0].to_dict()


# --------------------------------------------------------------------------
# Bad rows
# --------------------------------------------------------------------------

BAD_ROWS = [
    pytest.param({"mrn": None}, "missing patient identifier", ["subjectcode", "adm"], id="missing-id"),
    pytest.param({"mrn": "   "}, "missing patient identifier", ["subjectcode", "adm"], id="blank-id"),
    pytest.param({"dob": "31/12/1950"}, "dob: not a date in format %Y-%m-%d", ["age"], id="wrong-format"),
    pytest.param({"dob": "1950-02-30"}, "dob: not a date in format %Y-%m-%d", ["age"], id="impossible-date"),
    pytest.param({"dob": "Jane Doe 1950"}, "dob: not a date in format %Y-%m-%d", ["age"], id="text-in-date"),
    pytest.param({"adm": "2020-13-01"}, "adm: not a date in format %Y-%m-%d", ["age", "adm", "fu_days"], id="bad-reference"),
    pytest.param({"dob": "2020-06-02"}, "dob: after adm", ["age"], id="birth-after-reference"),
    pytest.param({"fu": "soon-ish"}, "fu: not a date in format %Y-%m-%d", ["fu_days"], id="bad-followup"),
    pytest.param({"w": "eighty kg"}, "w: not a number", ["w"], id="not-a-number"),
    pytest.param({"mrn": "", "dob": "yesterday"},
                 "missing patient identifier; dob: not a date in format %Y-%m-%d",
                 ["subjectcode", "adm", "age"], id="two-errors"),
]


@pytest.mark.parametrize("override, reason, nan_columns", BAD_ROWS)
def test_bad_rows_get_reasons_without_values(
    pseudonymiser: Pseudonymiser, caplog: pytest.LogCaptureFixture,
    override: dict[str, Any], reason: str, nan_columns: list[str],
) -> None:
    good = {"mrn": "MRN-7", "dob": "1950-06-15", "adm": "2020-06-01", "fu": "2020-06-11", "w": "80"}
    bad = {**good, **override}
    df = frame(**{k: [good[k], bad[k]] for k in good})
    p = profile(dates=(DateRule("dob", "age", reference="adm", output="age"),
                       DateRule("adm", "shift"),
                       DateRule("fu", "days_since", reference="adm", output="fu_days")),
                quasi_identifiers=(QuasiRule("w", "top_code", maximum=200),))
    with caplog.at_level(logging.DEBUG, logger="mipflow"):
        result = depersonalise(df, p, pseudonymiser)
    assert result.row_errors.tolist() == [None, reason]
    assert result.error_count == 1 and result.ok.tolist() == [True, False]
    for value in override.values():
        if value and value.strip():
            assert value not in reason
            assert all(value not in record.getMessage() for record in caplog.records)
    good_row, bad_row = result.frame.iloc[0], result.frame.iloc[1]
    assert good_row.notna().all()
    for col in result.frame.columns:
        if col in nan_columns:
            assert pd.isna(bad_row[col]), col
        else:
            assert bad_row[col] == good_row[col] or col in ("subjectcode", "adm"), col


# --------------------------------------------------------------------------
# Property: no identifier leaks
# --------------------------------------------------------------------------

DATE_FORMATS = ["%Y-%m-%d", "%d/%m/%Y", "%Y%m%d", "%d.%m.%Y", "%m/%d/%Y"]
# Every character the depersonalised cells are built from: hex pseudonyms,
# numbers ("69.0"), ISO dates, and this test's digit-only zip/mmse columns.
# A generated identifier must contain a character outside this set, else it
# could match an output by coincidence (e.g. "2012" inside a shifted date)
# without any leak.
OUTPUT_ALPHABET = set("0123456789abcdef.-")
OUTPUT_COLUMNS = ("subjectcode", "mmse", "age", "followup_days", "admission_date", "zip3")

# Printable characters: letters, marks, numbers, punctuation, symbols, spaces.
printable = st.characters(max_codepoint=0x24F, categories=("L", "M", "N", "P", "S", "Zs"))
distinctive_char = st.characters(max_codepoint=0x24F, categories=("L", "M", "N", "P", "S"),
                                 exclude_characters="".join(OUTPUT_ALPHABET))


def _distinctive(value: str) -> bool:
    core = value.strip()
    return len(core) >= 4 and not any(core in name for name in OUTPUT_COLUMNS)


@st.composite
def printable_text(draw: st.DrawFn, min_size: int = 4, max_size: int = 24) -> str:
    """Printable text holding at least one character no output cell can contain."""
    text = draw(st.text(printable, min_size=min_size - 1, max_size=max_size - 1))
    at = draw(st.integers(0, len(text)))
    return text[:at] + draw(distinctive_char) + text[at:]


def identifier(*realistic: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(printable_text(), *realistic).filter(_distinctive)


ROW = st.fixed_dictionaries({
    "mrn": identifier(st.from_regex(r"MRN-[0-9]{6}", fullmatch=True)),
    "first_name": identifier(),
    "last_name": identifier(),
    "address": identifier(st.from_regex(r"[1-9][0-9]? Rue [A-Z][a-z]{3,8}", fullmatch=True)),
    "phone": identifier(st.from_regex(r"\+41 [0-9]{2} [0-9]{3} [0-9]{2} [0-9]{2}", fullmatch=True)),
    "email": identifier(st.from_regex(r"[a-z]{2,8}\.[a-z]{2,8}@[a-z]{3,8}\.(ch|org)", fullmatch=True)),
    "ssn": identifier(st.from_regex(r"756 [0-9]{4} [0-9]{4} [0-9]{2}", fullmatch=True)),
    "clinical_notes": identifier(printable_text(min_size=10, max_size=80)),
    # Disjoint ranges, so that a shifted admission date (2009-2015) cannot equal
    # a raw birth (<= 1990) or follow-up (>= 2020) date by coincidence.
    "birth_date": st.dates(date(1920, 1, 1), date(1990, 12, 31)),
    "admission_date": st.dates(date(2010, 1, 1), date(2014, 12, 31)),
    "last_followup_date": st.dates(date(2020, 1, 1), date(2024, 12, 31)),
    "zip": st.from_regex(r"[0-9]{4,5}", fullmatch=True),
    "mmse": st.integers(0, 30).map(str),
})


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(ROW, min_size=1, max_size=6), fmt=st.sampled_from(DATE_FORMATS))
def test_no_identifier_value_survives_depersonalisation(rows: list[dict[str, Any]], fmt: str) -> None:
    doc = {**EXAMPLE_DOC, "date_format": fmt}
    date_columns = ("birth_date", "admission_date", "last_followup_date")
    df = pd.DataFrame(
        [{k: (v.strftime(fmt) if k in date_columns else v) for k, v in row.items()} for row in rows],
        dtype=str,
    )
    result = depersonalise(df, DeidProfile.from_dict(doc), Pseudonymiser(KEY))
    out = result.frame
    assert result.row_errors.isna().all()

    needles: set[str] = set()
    for row in rows:
        for col in ("mrn", "first_name", "last_name", "address", "phone", "email", "ssn", "clinical_notes"):
            needles.add(row[col].strip())
        for col in ("birth_date", "last_followup_date"):
            needles.update(row[col].strftime(f) for f in {fmt, *DATE_FORMATS})
    cells = [str(v) for v in out.to_numpy().ravel() if not pd.isna(v)]
    for needle in needles:
        assert not any(needle in cell for cell in cells), "an input identifier leaked into a cell"
        assert not any(needle in str(name) for name in out.columns), "an identifier leaked into a column name"

    assert list(out.columns) == list(OUTPUT_COLUMNS)
    for i, row in enumerate(rows):
        assert out["admission_date"].iloc[i] != row["admission_date"].isoformat()
        assert out["zip3"].iloc[i] == row["zip"][:3]


# --------------------------------------------------------------------------
# Scale (speed is measured by bench/ingest.py, not by a wall-clock bound here)
# --------------------------------------------------------------------------


def test_depersonalise_a_large_export(pseudonymiser: Pseudonymiser) -> None:
    n = 50_000
    rng = np.random.default_rng(7)
    base = np.datetime64("1930-01-01")
    df = pd.DataFrame({
        "mrn": [f"MRN{i}" for i in rng.integers(0, 20_000, n)],
        "first_name": "x",
        "birth_date": (base + rng.integers(0, 20_000, n).astype("timedelta64[D]")).astype(str),
        "admission_date": (np.datetime64("2015-01-01") + rng.integers(0, 2000, n).astype("timedelta64[D]")).astype(str),
        "last_followup_date": (np.datetime64("2021-01-01") + rng.integers(0, 900, n).astype("timedelta64[D]")).astype(str),
        "zip": rng.integers(1000, 99999, n).astype(str),
        "mmse": rng.integers(0, 30, n).astype(str),
    }, dtype=str)
    result = depersonalise(df, DeidProfile.from_dict(EXAMPLE_DOC), pseudonymiser)
    assert result.error_count == 0 and len(result.frame) == n
    assert result.frame["subjectcode"].nunique() == df["mrn"].nunique()  # one pseudonym per patient
    assert not set(result.frame["subjectcode"]) & set(df["mrn"])  # and no MRN left

