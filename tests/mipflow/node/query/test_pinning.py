"""mipflow.node.query.pinning and value_sets: the widened and narrowed filters of ADR 0064."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mipflow.algorithms.filters_pandas import filter_mask
from mipflow.exceptions import RequestError
from mipflow.node.query.filters import filter_variables
from mipflow.node.query.pinning import MAX_PAIRED, pinning_filters
from mipflow.protocol.datamodel import DataModel

from tests.mipflow.node.query.cases import group, rule

MODEL = DataModel.from_dict({
    "code": "pin", "version": "1", "label": "Pinning test",
    "variables": [
        {"code": "dataset", "sql_type": "text", "isCategorical": True,
         "enumerations": [{"code": c, "label": c} for c in ("a", "b")]},
        {"code": "age", "sql_type": "real", "isCategorical": False, "minValue": 18, "maxValue": 90},
        {"code": "score", "sql_type": "int", "isCategorical": False, "minValue": 0, "maxValue": 42},
        {"code": "volume", "sql_type": "real", "isCategorical": False},
        {"code": "sex", "sql_type": "text", "isCategorical": True,
         "enumerations": [{"code": c, "label": c} for c in ("F", "M")]},
        {"code": "diag", "sql_type": "text", "isCategorical": True,
         "enumerations": [{"code": c, "label": c} for c in ("AD", "MCI", "CN")]},
    ]})


OTHER = rule("dataset", "equal", "a")


def widens(leaf: dict, *more: dict) -> bool:
    """Whether ``leaf`` (with ``more`` rules on the same variable, AND) pins the rows it leaves out."""
    code = leaf["id"]
    return pinning_filters(group("AND", leaf, *more, OTHER), [code], MODEL) != []


def narrows(leaf: dict, *more: dict) -> bool:
    """Whether ``leaf`` (AND ``more``) pins the rows it keeps: beside ``dataset = a`` (OR), narrowed to that."""
    code = leaf["id"]
    own = group("OR", group("AND", leaf, *more), OTHER)
    return {"condition": "OR", "rules": [{"id": "dataset", "operator": "equal", "value": "a"}]} in pinning_filters(
        own, [code], MODEL)


@pytest.mark.parametrize("leaf, left_out, kept", [
    (rule("score", "greater", 0), True, False),            # leaves out 0 only: the minimum
    (rule("score", "greater_or_equal", 1), True, False),
    (rule("score", "greater", 0.5), True, False),          # integers: 0
    (rule("score", "greater", 1), True, False),            # 0 and 1: two values (hole 1 of round 25)
    (rule("score", "greater", 2), False, False),           # 0, 1, 2
    (rule("score", "less_or_equal", 1), False, True),      # keeps 0 and 1
    (rule("score", "equal", 3), False, True),
    (rule("score", "not_equal", 3), True, False),
    (rule("score", "in", [3, 4]), False, True),
    (rule("score", "in", [3, 4, 5]), False, False),
    (rule("score", "not_between", [1, 42]), False, True),  # keeps 0
    (rule("age", "greater", 18.5), True, False),           # [18, 18.5]: under 1 % of 72 years
    (rule("age", "greater_or_equal", 65), False, False),   # a band, not a value
    (rule("age", "less", 18.6), False, True),
    (rule("age", "between", [18.2, 89.8]), True, False),   # two narrow pieces: near 18 and near 90
    (rule("volume", "greater", 0), False, False),          # no declared minimum: open
    (rule("volume", "equal", 1.5), False, True),
    (rule("sex", "equal", "F"), True, True),               # leaves out M, keeps F
    (rule("diag", "equal", "AD"), True, True),             # a level's count outside shows hers
    (rule("score", "is_not_null"), False, False),          # complete cases pin nothing
    (rule("score", "greater", "x"), False, False),         # not a number: the selection refuses it
])
def test_which_rules_pin(leaf, left_out, kept) -> None:
    assert (widens(leaf), narrows(leaf)) == (left_out, kept)


def test_two_rules_keeping_one_value_pin_it_together() -> None:
    """``score >= 5 AND score <= 5``: each rule alone decides many values, both together one (round 25, hole 2)."""
    assert narrows(rule("score", "greater_or_equal", 5), rule("score", "less_or_equal", 5))
    assert narrows(rule("age", "greater", 40.0), rule("age", "less", 40.5))  # under 1 % of the range
    assert not narrows(rule("age", "greater", 40.0), rule("age", "less", 50.0))


def test_a_rule_leaving_out_one_value_is_widened_to_complete_cases_and_a_band_stays() -> None:
    own = group("AND", rule("age", "greater_or_equal", 50), rule("score", "greater", 0))
    assert pinning_filters(own, ["score"], MODEL) == [{"condition": "AND", "rules": [
        {"id": "age", "operator": "greater_or_equal", "value": 50},
        {"id": "score", "operator": "is_not_null"}]}]  # narrowed would be empty: left out
    assert pinning_filters(own, ["age", "score"], MODEL) == pinning_filters(own, ["score"], MODEL)
    assert pinning_filters(group("AND", rule("age", "greater_or_equal", 20), rule("age", "less", 50)),
                           ["age", "score"], MODEL) == []


def test_a_disjunction_pins_the_rows_it_keeps_for_their_value() -> None:
    """``age < 18.6 OR (score = 0 AND age < 60)``: the rows kept for their score alone go when it is narrowed."""
    own = group("OR", rule("age", "less", 18.6), group("AND", rule("score", "equal", 0), rule("age", "less", 60)))
    assert {"condition": "OR", "rules": [{"id": "age", "operator": "less", "value": 18.6}]} in pinning_filters(
        own, ["score"], MODEL)


def test_a_negated_group_reverses_the_replacement() -> None:
    """``NOT (score <= 0)`` leaves out the zeros: widened, its rule is ``is_null`` under the ``not``."""
    own = group("AND", {**group("AND", rule("score", "less_or_equal", 0)), "not": True}, rule("age", "less", 60))
    assert pinning_filters(own, ["score"], MODEL) == [{"condition": "AND", "rules": [
        {"condition": "AND", "rules": [{"id": "score", "operator": "is_null"}], "not": True},
        {"id": "age", "operator": "less", "value": 60}]}]
    kept_zeros = group("AND", {**group("AND", rule("score", "greater", 0)), "not": True}, rule("age", "less", 60))
    assert pinning_filters(kept_zeros, ["score"], MODEL) == []  # narrowed: no row; widened: many values


def test_nothing_to_pin_without_a_pinning_rule_on_a_read_variable() -> None:
    assert pinning_filters(None, ["age"], MODEL) == []
    assert pinning_filters({}, ["age"], MODEL) == []
    assert pinning_filters(group("AND", rule("score", "greater", 0)), ["age", "volume"], MODEL) == []
    complete = group("AND", rule("age", "is_not_null"), rule("score", "is_not_null"))
    assert pinning_filters(complete, ["age", "score"], MODEL) == []


def test_a_malformed_filter_is_the_request_s_error() -> None:
    with pytest.raises(RequestError, match="condition"):
        pinning_filters({"condition": "XOR", "rules": [rule("age", "less", 3)]}, ["age"], MODEL)


def test_pairs_of_variables_are_widened_together() -> None:
    own = group("AND", rule("score", "greater", 0), rule("sex", "equal", "F"), rule("age", "less", 60))
    found = pinning_filters(own, ["score", "sex"], MODEL)
    both = {"condition": "AND", "rules": [{"id": "score", "operator": "is_not_null"},
                                          {"id": "sex", "operator": "is_not_null"},
                                          {"id": "age", "operator": "less", "value": 60}]}
    assert both in found and len(found) == 3  # score widened, sex widened, both


def test_past_max_paired_each_variable_and_all_together() -> None:
    names = ["score", "sex", "diag", "age", "dataset"][:MAX_PAIRED + 1]
    values = {"score": 3, "sex": "F", "diag": "AD", "age": 40.0, "dataset": "a"}
    own = group("OR", *(rule(n, "equal", values[n]) for n in names))
    found = pinning_filters(own, names, MODEL)
    assert found and all(f is None or len(f["rules"]) <= len(names) for f in found)
    assert len(found) <= 2 * (len(names) + 1) * 2


# ------------------------------------------------------------------ the rows: widened >= own >= narrowed

def _rows() -> pd.DataFrame:
    rng = np.random.default_rng(64)
    n = 120
    frame = pd.DataFrame({
        "dataset": rng.choice(["a", "b"], n), "age": rng.choice([18.0, 18.2, 30.0, 55.0, 60.0, 89.0], n),
        "score": pd.array(rng.integers(0, 5, n), dtype="Int64"), "volume": rng.normal(3.0, 1.0, n),
        "sex": rng.choice(["F", "M"], n), "diag": rng.choice(["AD", "MCI", "CN"], n)})
    frame.loc[rng.random(n) < 0.1, "age"] = np.nan
    frame.loc[rng.random(n) < 0.1, "score"] = pd.NA
    return frame


ROWS = _rows()
LEAVES = [("age", "less", 18.3), ("age", "greater_or_equal", 55.0), ("score", "greater", 0), ("score", "equal", 3),
          ("sex", "equal", "F"), ("diag", "in", ["MCI", "CN"]), ("score", "is_null", None),
          ("age", "between", [18.0, 18.5]), ("score", "not_equal", 2), ("volume", "greater", 3.0)]


def _leaf(choice: int) -> dict:
    field, op, value = LEAVES[choice]
    return rule(field, op) if value is None else rule(field, op, value)


trees = st.recursive(
    st.integers(0, len(LEAVES) - 1).map(_leaf),
    lambda children: st.tuples(st.sampled_from(["AND", "OR"]), st.booleans(),
                               st.lists(children, min_size=1, max_size=3)).map(
        lambda t: {**group(t[0], *t[2]), **({"not": True} if t[1] else {})}),
    max_leaves=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=trees, read=st.sets(st.sampled_from(["age", "score", "sex", "diag", "volume"]), min_size=1))
def test_widened_filters_keep_more_rows_and_narrowed_fewer(body, read) -> None:
    own = body if "rules" in body else group("AND", body)
    kept = filter_mask(ROWS, own, MODEL)
    for relaxed in pinning_filters(own, sorted(read), MODEL):
        rows = np.ones(len(ROWS), dtype=bool) if relaxed is None else filter_mask(ROWS, relaxed, MODEL)
        assert (rows >= kept).all() or (rows <= kept).all(), (own, relaxed)
        assert relaxed is None or filter_variables(relaxed) <= filter_variables(own)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=trees, variable=st.sampled_from(["age", "score", "sex", "diag", "volume"]))
def test_the_rows_between_hold_one_value_of_the_variable_relaxed(body, variable) -> None:
    """One variable read: every row a widened or narrowed filter adds or takes holds one of a few values of it (or
    none): at most two scores, the ages within 1 % of their declared range of an operand's end, fewer than all
    levels."""
    own = body if "rules" in body else group("AND", body)
    kept = filter_mask(ROWS, own, MODEL)
    for relaxed in pinning_filters(own, [variable], MODEL):
        rows = np.ones(len(ROWS), dtype=bool) if relaxed is None else filter_mask(ROWS, relaxed, MODEL)
        values = ROWS.loc[rows != kept, variable].dropna()
        if variable == "age":  # pieces within 1 % of 72 years of the operands 18.3, 18.0 and 18.5
            assert ((values <= 18.0 + 0.72) | (values >= 89.0)).all(), (own, relaxed)
        elif variable in ("score",):
            assert values.astype(str).nunique() <= 2, (own, relaxed)
        else:
            assert values.astype(str).nunique() < {"sex": 2, "diag": 3}.get(variable, 99), (own, relaxed)
