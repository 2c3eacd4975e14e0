"""mipflow.node.deid.profile: deid profiles, checked when built (their rules in test_rules.py)."""
from __future__ import annotations

import copy
from typing import Any

import pytest

from mipflow.exceptions import ProfileError
from mipflow.node.deid.profile import DeidProfile
from mipflow.node.deid.rules import DateRule, QuasiRule

from tests.mipflow.node.deid.helpers import (
    EXAMPLE_COLUMNS,
    EXAMPLE_DOC,
    profile,
)


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


