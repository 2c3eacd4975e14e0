"""Tests of mipflow.node.deid: pseudonyms, date shifts, profiles and depersonalisation.

Expected values are computed independently of the module, with ``hmac``,
``datetime`` and plain Python.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import logging
import pickle
import time
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mipflow.node.deid import (
    DateRule,
    DeidProfile,
    DeidResult,
    Pseudonymiser,
    QuasiRule,
    depersonalise,
)
from mipflow.exceptions import ProfileError

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))

EXAMPLE_DOC: dict[str, Any] = {
    "patient_id": "mrn",
    "direct_identifiers": ["first_name", "last_name", "address", "phone", "email", "ssn"],
    "free_text": ["clinical_notes"],
    "date_format": "%Y-%m-%d",
    "dates": [
        {"column": "birth_date", "action": "age", "reference": "admission_date",
         "output": "age", "top_code": 90},
        {"column": "last_followup_date", "action": "days_since",
         "reference": "admission_date", "output": "followup_days"},
        {"column": "admission_date", "action": "shift"},
    ],
    "quasi_identifiers": [{"column": "zip", "action": "truncate", "keep": 3, "output": "zip3"}],
}
EXAMPLE_COLUMNS = [
    "mrn", "first_name", "last_name", "address", "phone", "email", "ssn", "clinical_notes",
    "birth_date", "admission_date", "last_followup_date", "zip", "mmse",
]


# --------------------------------------------------------------------------
# Independent reference computations
# --------------------------------------------------------------------------


def ref_pseudonym(key: bytes, patient_id: str) -> str:
    return hmac.new(key, b"pid:" + patient_id.strip().encode("utf-8"), hashlib.sha256).hexdigest()


def anniversary(birth: date, year: int) -> date:
    """The birthday in ``year``; 29 February falls on 1 March in common years."""
    try:
        return birth.replace(year=year)
    except ValueError:
        return date(year, 3, 1)


def ref_age(birth: date, ref: date) -> int:
    """Completed years: birthdays passed in (birth, ref], counted one by one."""
    years = 0
    while anniversary(birth, birth.year + years + 1) <= ref:
        years += 1
    return years


def d(text: str) -> date:
    return datetime.strptime(text, "%Y-%m-%d").date()


def frame(**columns: list[Any]) -> pd.DataFrame:
    return pd.DataFrame(columns, dtype=str)


def profile(**kwargs: Any) -> DeidProfile:
    kwargs.setdefault("patient_id", "mrn")
    return DeidProfile(**kwargs)


@pytest.fixture
def pseudonymiser() -> Pseudonymiser:
    return Pseudonymiser(KEY)


# --------------------------------------------------------------------------
# Pseudonymiser
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "patient_id",
    [
        pytest.param("MRN-000123", id="plain"),
        pytest.param("  MRN-000123\t", id="surrounding-whitespace"),
        pytest.param("Zoë Ünal 42", id="unicode-inner-space"),
        pytest.param("x", id="one-char"),
    ],
)
def test_pseudonym_is_hmac_sha256_of_stripped_id(pseudonymiser: Pseudonymiser, patient_id: str) -> None:
    got = pseudonymiser.pseudonym(patient_id)
    assert got == ref_pseudonym(KEY, patient_id)
    assert len(got) == 64 and set(got) <= set("0123456789abcdef")


def test_pseudonym_normalises_only_surrounding_whitespace(pseudonymiser: Pseudonymiser) -> None:
    assert pseudonymiser.pseudonym(" ab ") == pseudonymiser.pseudonym("ab")
    assert pseudonymiser.pseudonym("ab") != pseudonymiser.pseudonym("AB")
    assert pseudonymiser.pseudonym("a b") != pseudonymiser.pseudonym("ab")


def test_pseudonyms_depend_on_key() -> None:
    a, b = Pseudonymiser(KEY), Pseudonymiser(OTHER_KEY)
    assert a.pseudonym("MRN1") == Pseudonymiser(KEY).pseudonym("MRN1")
    assert a.pseudonym("MRN1") != b.pseudonym("MRN1")
    assert b.pseudonym("MRN1") == ref_pseudonym(OTHER_KEY, "MRN1")


def test_pseudonyms_series_maps_missing_to_nan(pseudonymiser: Pseudonymiser) -> None:
    ids = pd.Series(["A1", None, "", "   ", " A1", "B2"], index=[10, 11, 12, 13, 14, 15],
                    dtype=str, name="mrn")
    got = pseudonymiser.pseudonyms(ids)
    assert list(got.index) == [10, 11, 12, 13, 14, 15]
    assert got.name == "mrn"
    assert got[10] == got[14] == ref_pseudonym(KEY, "A1")
    assert got[15] == ref_pseudonym(KEY, "B2")
    assert got[[11, 12, 13]].isna().all()


def test_pseudonyms_of_empty_series(pseudonymiser: Pseudonymiser) -> None:
    assert pseudonymiser.pseudonyms(pd.Series([], dtype=str)).empty


@pytest.mark.parametrize(
    "key, fragment",
    [
        pytest.param(b"short", "at least 32 bytes", id="short"),
        pytest.param(b"x" * 31, "31 bytes", id="31-bytes"),
        pytest.param("k" * 40, "must be bytes", id="str"),
        pytest.param(None, "must be bytes", id="none"),
    ],
)
def test_bad_key_raises_profile_error(key: Any, fragment: str) -> None:
    with pytest.raises(ProfileError, match=fragment):
        Pseudonymiser(key)


def test_repr_and_str_hide_the_key() -> None:
    key = b"S3cr3t-node-key-" + bytes(range(100, 116))
    p = Pseudonymiser(key)
    for text in (repr(p), str(p), f"{p}", repr([p])):
        for form in (key.hex(), repr(key), key.decode("latin-1"), base64.b64encode(key).decode(),
                     "S3cr3t"):
            assert form not in text


def test_pseudonymiser_refuses_pickling() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Pseudonymiser(KEY))
    with pytest.raises(TypeError):
        copy.deepcopy(Pseudonymiser(KEY))


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda p: p.pseudonym("  "), id="blank-pseudonym"),
        pytest.param(lambda p: p.date_shift_days(""), id="empty-shift"),
        pytest.param(lambda p: p.date_shift_days("A", max_days=0), id="max-days-0"),
    ],
)
def test_blank_ids_and_bad_max_days_raise_value_error(pseudonymiser: Pseudonymiser, call: Any) -> None:
    with pytest.raises(ValueError):
        call(pseudonymiser)


def test_non_string_ids_raise_type_error(pseudonymiser: Pseudonymiser) -> None:
    with pytest.raises(TypeError, match="dtype=str"):
        pseudonymiser.pseudonym(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dtype=str"):
        pseudonymiser.pseudonyms(pd.Series([1, 2]))


@settings(max_examples=200, deadline=None)
@given(patient_id=st.text(min_size=1, max_size=30).filter(lambda s: s.strip() != ""),
       max_days=st.integers(min_value=1, max_value=3650))
def test_date_shift_is_deterministic_nonzero_and_bounded(patient_id: str, max_days: int) -> None:
    a = Pseudonymiser(KEY)
    shift = a.date_shift_days(patient_id, max_days)
    assert isinstance(shift, int)
    assert shift != 0
    assert -max_days <= shift <= max_days
    assert Pseudonymiser(KEY).date_shift_days(patient_id, max_days) == shift
    assert a.date_shift_days(f" {patient_id} ", max_days) == shift
    series = a.date_shifts(pd.Series([patient_id, None]), max_days)
    assert series.iloc[0] == shift and np.isnan(series.iloc[1])


def test_date_shift_depends_on_key_and_spreads_over_both_signs() -> None:
    ids = [f"MRN{i:05d}" for i in range(400)]
    a, b = Pseudonymiser(KEY), Pseudonymiser(OTHER_KEY)
    shifts_a = [a.date_shift_days(i) for i in ids]
    shifts_b = [b.date_shift_days(i) for i in ids]
    assert sum(x != y for x, y in zip(shifts_a, shifts_b)) > 390
    assert min(shifts_a) < -300 and max(shifts_a) > 300
    assert 120 < sum(s < 0 for s in shifts_a) < 280
    assert {a.date_shift_days(i, max_days=1) for i in ids} == {-1, 1}


# --------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------


def test_from_dict_builds_the_example_profile() -> None:
    p = DeidProfile.from_dict(EXAMPLE_DOC)
    assert p == DeidProfile(
        patient_id="mrn",
        direct_identifiers=("first_name", "last_name", "address", "phone", "email", "ssn"),
        free_text=("clinical_notes",),
        date_format="%Y-%m-%d",
        dates=(
            DateRule("birth_date", "age", reference="admission_date", output="age", top_code=90),
            DateRule("last_followup_date", "days_since", reference="admission_date",
                     output="followup_days"),
            DateRule("admission_date", "shift"),
        ),
        quasi_identifiers=(QuasiRule("zip", "truncate", keep=3, output="zip3"),),
    )
    assert p.pseudonym_column == "subjectcode" and p.max_shift_days == 365
    assert DeidProfile.from_dict(p.to_dict()) == p
    hash(p)  # frozen and hashable


def test_to_dict_is_json_form() -> None:
    doc = DeidProfile.from_dict(EXAMPLE_DOC).to_dict()
    assert doc["dates"][0] == EXAMPLE_DOC["dates"][0]
    assert doc["dates"][2] == {"column": "admission_date", "action": "shift"}
    assert doc["quasi_identifiers"] == EXAMPLE_DOC["quasi_identifiers"]
    assert doc["direct_identifiers"] == EXAMPLE_DOC["direct_identifiers"]


def test_minimal_profile_and_list_arguments_become_tuples() -> None:
    p = DeidProfile.from_dict({"patient_id": "subjectcode"})
    assert p.direct_identifiers == () and p.dates == () and p.date_format is None
    q = DeidProfile("mrn", direct_identifiers=["name"], dates=[DateRule("dob", "drop")])  # type: ignore[arg-type]
    assert q.direct_identifiers == ("name",) and q.dates == (DateRule("dob", "drop"),)


def _mutated(path: str, value: Any) -> dict[str, Any]:
    """A deep copy of EXAMPLE_DOC with one key set (``"dates.0.action"``) or removed (value ...)."""
    doc = copy.deepcopy(EXAMPLE_DOC)
    *parents, last = path.split(".")
    target: Any = doc
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    key: Any = int(last) if isinstance(target, list) else last
    if value is ...:
        del target[key]
    else:
        target[key] = value
    return doc


BAD_PROFILES = [
    pytest.param(_mutated("dates.0.action", "agee"), "dates[0]: date rule for column 'birth_date': action 'agee' is not one of age", id="unknown-date-action"),
    pytest.param(_mutated("dates.0.reference", ...), "action 'age' needs a 'reference'", id="age-without-reference"),
    pytest.param(_mutated("dates.1.reference", None), "action 'days_since' needs a 'reference'", id="days-since-null-reference"),
    pytest.param(_mutated("dates.2.reference", "birth_date"), "dates[2]: date rule for column 'admission_date': 'reference' is only used", id="reference-on-shift"),
    pytest.param(_mutated("dates.0.reference", "birth_date"), "reference must be another column", id="self-reference"),
    pytest.param(_mutated("dates.0.top_code", 0), "top_code must be a whole number", id="top-code-zero"),
    pytest.param(_mutated("dates.0.top_code", 89.5), "top_code must be a whole number", id="top-code-float"),
    pytest.param(_mutated("dates.1.top_code", 90), "'top_code' is only used by action 'age'", id="top-code-on-days-since"),
    pytest.param(_mutated("dates.0.refrence", "admission_date"), "unknown key(s) 'refrence'", id="misspelt-rule-key"),
    pytest.param(_mutated("dates.0.column", ...), "lacks required key(s) 'column'", id="rule-without-column"),
    pytest.param(_mutated("dates.0", "birth_date"), "dates[0]: a date rule must be a JSON object", id="rule-not-object"),
    pytest.param(_mutated("dates", {"column": "x"}), "dates must be a list", id="dates-not-list"),
    pytest.param(_mutated("dates.2", {"column": "admission_date", "action": "drop", "output": "x"}), "action 'drop' produces no column", id="output-on-drop"),
    pytest.param(_mutated("dates.1.output", "age"), "is named 'age', like the output of the 'age' rule", id="duplicate-output"),
    pytest.param(_mutated("dates.1.output", "subjectcode"), "like the pseudonym column", id="output-is-pseudonym-column"),
    pytest.param(_mutated("dates.1.output", "first_name"), "like a column the profile removes", id="output-is-direct-identifier"),
    pytest.param(_mutated("direct_identifier", ["ssn"]), "unknown key(s) 'direct_identifier'", id="misspelt-top-level-key"),
    pytest.param(_mutated("patient_id", ...), "lacks required key(s) 'patient_id'", id="no-patient-id"),
    pytest.param(_mutated("patient_id", ""), "patient_id must be a non-empty string", id="empty-patient-id"),
    pytest.param(_mutated("patient_id", 7), "patient_id must be a non-empty string", id="numeric-patient-id"),
    pytest.param(_mutated("direct_identifiers", "ssn"), "direct_identifiers must be a list of column names", id="identifiers-as-string"),
    pytest.param(_mutated("free_text", [None]), "free_text[0] must be a non-empty string", id="null-free-text"),
    pytest.param(_mutated("pseudonym_column", " "), "pseudonym_column must be a non-empty string", id="blank-pseudonym-column"),
    pytest.param(_mutated("date_format", "YYYY-MM-DD"), "date_format must be a strptime format", id="format-without-directives"),
    pytest.param(_mutated("date_format", "%y-%m-%d"), "four-digit year", id="two-digit-year"),
    pytest.param(_mutated("date_format", "%Y-%m"), "does not keep a full date", id="format-without-day"),
    pytest.param(_mutated("max_shift_days", 0), "max_shift_days must be a whole number", id="zero-shift"),
    pytest.param(_mutated("max_shift_days", True), "max_shift_days must be a whole number", id="bool-shift"),
    pytest.param(_mutated("quasi_identifiers.0.action", "hash"), "action 'hash' is not one of truncate, top_code, drop", id="unknown-quasi-action"),
    pytest.param(_mutated("quasi_identifiers.0.keep", ...), "action 'truncate' needs 'keep'", id="truncate-without-keep"),
    pytest.param(_mutated("quasi_identifiers.0.keep", 0), "keep must be a whole number >= 1", id="keep-zero"),
    pytest.param(_mutated("quasi_identifiers.0", {"column": "weight", "action": "top_code"}), "action 'top_code' needs 'maximum'", id="top-code-without-maximum"),
    pytest.param(_mutated("quasi_identifiers.0", {"column": "weight", "action": "top_code", "maximum": "high"}), "maximum must be a finite number", id="maximum-not-number"),
    pytest.param(_mutated("quasi_identifiers.0", {"column": "weight", "action": "top_code", "maximum": float("inf")}), "maximum must be a finite number", id="maximum-infinite"),
    pytest.param(_mutated("quasi_identifiers.0.maximum", 5), "'maximum' is only used by action 'top_code'", id="maximum-on-truncate"),
    pytest.param(_mutated("quasi_identifiers.0.column", "birth_date"), "column 'birth_date' has a quasi-identifier rule and is also used as a date", id="quasi-on-date-column"),
    pytest.param(_mutated("quasi_identifiers.0.column", "ssn"), "column 'ssn' is a direct identifier and also has a quasi-identifier rule", id="quasi-on-direct-identifier"),
    pytest.param(_mutated("quasi_identifiers.0.column", "mrn"), "patient identifier column 'mrn' cannot have a quasi-identifier rule", id="quasi-on-patient-id"),
    pytest.param(_mutated("free_text", ["birth_date"]), "column 'birth_date' is a free-text column and also has a date rule", id="date-rule-on-free-text"),
    pytest.param(_mutated("dates.1.reference", "mrn"), "patient identifier column 'mrn' is not a date", id="patient-id-as-reference"),
    pytest.param(_mutated("dates.1", {"column": "admission_date", "action": "drop"}), "has a 'drop' date rule and another date rule", id="drop-and-shift"),
]


@pytest.mark.parametrize("doc, fragment", BAD_PROFILES)
def test_bad_profiles_raise_profile_error_with_clear_message(doc: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ProfileError) as info:
        DeidProfile.from_dict(doc)
    message = str(info.value)
    assert message.startswith("invalid deid profile: ")
    assert fragment in message


@pytest.mark.parametrize("doc", [pytest.param([], id="list"), pytest.param("mrn", id="string"),
                                 pytest.param(None, id="none")])
def test_profile_document_must_be_an_object(doc: Any) -> None:
    with pytest.raises(ProfileError, match="must be a JSON object"):
        DeidProfile.from_dict(doc)


def test_rule_constructors_validate_too() -> None:
    with pytest.raises(ProfileError, match="needs a 'reference'"):
        DateRule("birth_date", "age")
    with pytest.raises(ProfileError, match="needs 'keep'"):
        QuasiRule("zip", "truncate")
    with pytest.raises(ProfileError, match=r"dates\[0\] must be a DateRule"):
        DeidProfile("mrn", dates=({"column": "x", "action": "drop"},))  # type: ignore[arg-type]


def test_several_rules_on_one_column_with_distinct_outputs_are_allowed() -> None:
    p = DeidProfile.from_dict({
        "patient_id": "mrn",
        "dates": [{"column": "dob", "action": "age", "reference": "visit", "output": "age"},
                  {"column": "dob", "action": "year", "output": "birth_year"}],
    })
    assert p.output_columns == ("subjectcode", "age", "birth_year")


@pytest.mark.parametrize(
    "columns, expected",
    [
        pytest.param(EXAMPLE_COLUMNS, [], id="complete"),
        pytest.param([c for c in EXAMPLE_COLUMNS if c not in ("ssn", "clinical_notes", "email")], [],
                     id="missing-identifiers-are-fine"),
        pytest.param([c for c in EXAMPLE_COLUMNS if c != "mrn"],
                     ["patient identifier column 'mrn' is missing"], id="no-patient-id"),
        pytest.param([c for c in EXAMPLE_COLUMNS if c != "birth_date"],
                     ["date column 'birth_date' (rule 'age') is missing"], id="no-birth-date"),
        pytest.param([c for c in EXAMPLE_COLUMNS if c != "admission_date"],
                     ["reference date column 'admission_date' (for 'age' of 'birth_date') is missing",
                      "reference date column 'admission_date' (for 'days_since' of 'last_followup_date') is missing",
                      "date column 'admission_date' (rule 'shift') is missing"], id="no-reference"),
        pytest.param([c for c in EXAMPLE_COLUMNS if c != "zip"],
                     ["quasi-identifier column 'zip' (rule 'truncate') is missing"], id="no-zip"),
        pytest.param([*EXAMPLE_COLUMNS, "subjectcode"],
                     ["output column 'subjectcode' would overwrite the input column of the same name; "
                      "rename the output or list the input column for removal"], id="pseudonym-clash"),
        pytest.param([*EXAMPLE_COLUMNS, "age"],
                     ["output column 'age' would overwrite the input column of the same name; "
                      "rename the output or list the input column for removal"], id="output-clash"),
        pytest.param([*EXAMPLE_COLUMNS, "mmse"],
                     ["column 'mmse' appears more than once in the input"], id="duplicate-column"),
    ],
)
def test_check_columns(columns: list[str], expected: list[str]) -> None:
    assert DeidProfile.from_dict(EXAMPLE_DOC).check_columns(columns) == expected


def test_check_columns_ignores_missing_drop_rule_columns() -> None:
    p = profile(dates=(DateRule("death_date", "drop"),), quasi_identifiers=(QuasiRule("zip", "drop"),))
    assert p.check_columns(["mrn"]) == []


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
# Speed
# --------------------------------------------------------------------------


def test_depersonalise_is_vectorised(pseudonymiser: Pseudonymiser) -> None:
    n = 200_000
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
    start = time.perf_counter()
    result = depersonalise(df, DeidProfile.from_dict(EXAMPLE_DOC), pseudonymiser)
    elapsed = time.perf_counter() - start
    assert result.error_count == 0 and len(result.frame) == n
    assert elapsed < 5.0, f"200k rows took {elapsed:.1f}s"
