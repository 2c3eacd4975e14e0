"""Study protocols: the schema's errors name what is wrong; filters compare canonically."""
from __future__ import annotations

import copy
from typing import Any

import pytest

from mipflow.exceptions import ConfigError, RequestError
from mipflow.node.controls.study_protocol import (
    canonical_filter, check_against_model, describe_filter, parse_protocol,
)
from tests.mipflow.algorithms.survival_data import STROKE


def rule(field: str, operator: str, value: Any = None, **extra: Any) -> dict[str, Any]:
    return {"id": field, "field": field, "operator": operator, "value": value, **extra}


def group(*rules: dict[str, Any], condition: str = "AND", **extra: Any) -> dict[str, Any]:
    return {"condition": condition, "rules": list(rules), "valid": True, **extra}


ELDERLY = group(rule("age", "greater_or_equal", 65, type="double", input="number"))
WOMEN = group(rule("sex", "equal", "F", type="string", input="select"))
PROTOCOL = {
    "name": "stroke-outcomes",
    "data_model": "stroke:0.1",
    "datasets": ["hospital_a", "hospital_b", "hospital_c"],
    "variables": ["age", "sex", "nihss_admission", "followup_days", "death_90d"],
    "population": {"filter": None},
    "subgroups": [{"name": "elderly", "filter": ELDERLY}, {"name": "women", "filter": WOMEN}],
    "algorithms": ["linear_regression", "kaplan_meier"],
    "note": "ethics approval 2027/12",
}


def changed(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(PROTOCOL)
    for key, value in changes.items():
        if value is ...:
            del doc[key]
        else:
            doc[key] = value
    return doc


def test_a_protocol_parses_and_round_trips() -> None:
    protocol = parse_protocol(PROTOCOL)
    assert protocol.name == "stroke-outcomes" and protocol.datasets == ("hospital_a", "hospital_b", "hospital_c")
    assert [s.name for s in protocol.subgroups] == ["elderly", "women"]
    assert protocol.population_filter is None
    assert parse_protocol(protocol.to_dict()) == protocol
    check_against_model(protocol, STROKE)
    assert protocol.subgroup_filter(None) is None
    assert protocol.subgroup_filter(protocol.subgroup("women")) == WOMEN
    with_population = parse_protocol(changed(population={"filter": group(rule("nihss_admission", "less", 30))}))
    both = with_population.subgroup_filter(with_population.subgroup("elderly"))
    assert both["condition"] == "AND" and both["rules"][1] == ELDERLY


@pytest.mark.parametrize("doc, words", [
    pytest.param([], "JSON object", id="not-an-object"),
    pytest.param(changed(extra=1), "unknown key(s) 'extra'", id="unknown-key"),
    pytest.param(changed(variables=...), "missing key(s) 'variables'", id="missing-key"),
    pytest.param(changed(name="a b"), "'name' must be", id="bad-name"),
    pytest.param(changed(data_model="stroke"), "CODE:VERSION", id="bad-data-model"),
    pytest.param(changed(datasets=[]), "'datasets' must be a non-empty list", id="no-datasets"),
    pytest.param(changed(variables=["age", "age"]), "'variables' names something twice", id="twice"),
    pytest.param(changed(variables=["age; drop"]), "not valid name(s)", id="bad-variable"),
    pytest.param(changed(algorithms=["svm_scikit"]), "unknown algorithm(s) 'svm_scikit'", id="unknown-algorithm"),
    pytest.param(changed(population={"filter": None, "x": 1}), "'population' must be an object", id="population"),
    pytest.param(changed(population={"filter": group(rule("age", "like", 1))}), "population.filter: ",
                 id="bad-population-filter"),
    pytest.param(changed(subgroups=[{"name": "old"}]), "exactly 'name' and 'filter'", id="subgroup-shape"),
    pytest.param(changed(subgroups=[{"name": "all", "filter": None}]), "has no filter", id="subgroup-no-filter"),
    pytest.param(changed(subgroups=[{"name": "a", "filter": ELDERLY}, {"name": "a", "filter": WOMEN}]),
                 "used twice", id="subgroup-name-twice"),
    pytest.param(changed(subgroups=[{"name": "a", "filter": ELDERLY},
                                    {"name": "b", "filter": group(rule("age", "greater_or_equal", 65.0))}]),
                 "have the same filter", id="subgroup-same-filter"),
    pytest.param(changed(note=7), "'note' must be text", id="note"),
])
def test_a_malformed_protocol_is_refused_naming_what_to_change(doc, words) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_protocol(doc)
    assert words in str(caught.value) and str(caught.value).startswith("study protocol: ")


def test_variables_and_filters_are_checked_against_the_data_model() -> None:
    protocol = parse_protocol(changed(variables=["age", "cholesterol"],
                                      subgroups=[{"name": "x", "filter": group(rule("bmi", "less", 3))}]))
    with pytest.raises(ConfigError, match=r"'bmi', 'cholesterol' are not in data model stroke:0\.1"):
        check_against_model(protocol, STROKE)
    with pytest.raises(ConfigError, match="is not stroke:0.1"):
        check_against_model(parse_protocol(changed(data_model="stroke:0.2")), STROKE)


@pytest.mark.parametrize("a, b", [
    pytest.param(ELDERLY, group(rule("age", "greater_or_equal", 65.0)), id="int-vs-float-and-qb-keys"),
    pytest.param(ELDERLY, group(group(rule("age", "greater_or_equal", 65))), id="nested-single"),
    pytest.param(group(rule("sex", "equal", "F"), rule("age", "less", 50)),
                 group(rule("age", "less", 50), rule("sex", "equal", "F")), id="rule-order"),
    pytest.param(group(rule("sex", "equal", "F"), group(rule("age", "less", 50), rule("mrs_90d", "less", 3))),
                 group(rule("mrs_90d", "less", 3), rule("sex", "equal", "F"), rule("age", "less", 50)),
                 id="same-condition-flattened"),
    pytest.param(group(rule("stroke_type", "in", ["tia", "ischaemic"])),
                 group(rule("stroke_type", "in", ["ischaemic", "tia", "tia"])), id="in-list-order"),
    pytest.param(group(rule("age", "greater", 1), rule("age", "greater", 1)), group(rule("age", "greater", 1)),
                 id="repeated-rule"),
])
def test_filters_written_differently_are_equal(a, b) -> None:
    assert canonical_filter(a) == canonical_filter(b) is not None


@pytest.mark.parametrize("a, b", [
    pytest.param(ELDERLY, group(rule("age", "greater_or_equal", 64.9)), id="value"),
    pytest.param(ELDERLY, group(rule("age", "greater", 65)), id="operator"),
    pytest.param(ELDERLY, group(rule("nihss_admission", "greater_or_equal", 65)), id="variable"),
    pytest.param(ELDERLY, {**ELDERLY, "not": True}, id="negated"),
    pytest.param(group(rule("sex", "equal", "F"), rule("age", "less", 50)),
                 group(rule("sex", "equal", "F"), rule("age", "less", 50), condition="OR"), id="condition"),
    pytest.param(group(rule("age", "between", [60, 70])), group(rule("age", "between", [70, 60])), id="between"),
    pytest.param(WOMEN, group(rule("sex", "equal", "F"), rule("sex", "not_equal", "M")), id="extra-rule"),
    pytest.param(group(rule("sex", "equal", "1")), group(rule("sex", "equal", 1)), id="text-vs-number"),
])
def test_filters_that_can_select_other_rows_differ(a, b) -> None:
    assert canonical_filter(a) != canonical_filter(b)


def test_no_filter_and_malformed_filters() -> None:
    assert canonical_filter(None) is None and canonical_filter({}) is None
    with pytest.raises(RequestError):
        canonical_filter({"rules": [{"id": "age", "operator": "regex", "value": "."}]})
    assert describe_filter(ELDERLY) == "age greater_or_equal 65"
    assert describe_filter(group(rule("sex", "equal", "F"), rule("age", "is_null"))) == \
        '(sex equal "F" AND age is_null)'
    assert describe_filter(None) == "no filter"
