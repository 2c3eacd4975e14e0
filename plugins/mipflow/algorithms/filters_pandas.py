"""Apply a jQuery QueryBuilder filter to a pandas DataFrame (in-memory nodes, tests).

The filter is a rule group ``{"condition": "AND"|"OR", "rules": [...],
"not": bool}`` whose rules are ``{"id": <variable>, "operator": ...,
"value": ...}`` or nested groups.  Evaluation follows SQL's three-valued
logic, so it selects the same rows as a ``WHERE`` clause would: a comparison
with a missing value is unknown, ``NOT unknown`` is unknown, and only rows
where the whole filter is true are kept.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel, Variable

_COMPARISONS = {
    "equal": lambda col, v: col == v,
    "not_equal": lambda col, v: col != v,
    "less": lambda col, v: col < v,
    "less_or_equal": lambda col, v: col <= v,
    "greater": lambda col, v: col > v,
    "greater_or_equal": lambda col, v: col >= v,
}
OPERATORS = tuple(_COMPARISONS) + (
    "between", "not_between", "in", "not_in", "is_null", "is_not_null",
)


def filter_variables(filters: Mapping[str, Any] | None) -> set[str]:
    """Variable codes a filter refers to."""
    found: set[str] = set()
    if not filters:
        return found
    for rule in filters.get("rules", []) or []:
        if isinstance(rule, Mapping) and "rules" in rule:
            found |= filter_variables(rule)
        elif isinstance(rule, Mapping):
            found.add(str(rule.get("id", rule.get("field"))))
    return found


def _column(data: pd.DataFrame, var: Variable) -> pd.Series:
    if var.code not in data.columns:
        raise RequestError(f"filter variable {var.code!r} is not in the data")
    col = data[var.code]
    if var.sql_type in ("int", "real"):
        return pd.to_numeric(col, errors="raise").astype("Float64")
    return col.astype("string")


def _value(value: Any, var: Variable) -> Any:
    if isinstance(value, (list, tuple)):
        return [_value(v, var) for v in value]
    if var.sql_type in ("int", "real"):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise RequestError(f"filter value {value!r} for {var.code!r} is not a number") from None
    if value is None:
        raise RequestError(f"filter value for {var.code!r} is missing")
    return str(value)


def _rule(data: pd.DataFrame, rule: Mapping[str, Any], model: DataModel) -> pd.Series:
    code = rule.get("id", rule.get("field"))
    if not isinstance(code, str) or code not in model:
        raise RequestError(f"filter refers to unknown variable {code!r}")
    var = model.variable(code)
    op = rule.get("operator")
    col = _column(data, var)
    missing = col.isna()
    if op == "is_null":
        return pd.Series(missing.to_numpy(), index=data.index, dtype="boolean")
    if op == "is_not_null":
        return pd.Series((~missing).to_numpy(), index=data.index, dtype="boolean")
    value = _value(rule.get("value"), var)
    if op in _COMPARISONS:
        if isinstance(value, list):
            raise RequestError(f"filter operator {op!r} takes one value, got {value!r}")
        result = _COMPARISONS[op](col, value).astype("boolean")
    elif op in ("between", "not_between"):
        if not isinstance(value, list) or len(value) != 2:
            raise RequestError(f"filter operator {op!r} takes two values, got {value!r}")
        result = ((col >= value[0]) & (col <= value[1])).astype("boolean")
        if op == "not_between":
            result = ~result
    elif op in ("in", "not_in"):
        values = value if isinstance(value, list) else [value]
        result = col.isin(values).astype("boolean")
        if op == "not_in":
            result = ~result
    else:
        raise RequestError(f"unsupported filter operator {op!r}; supported: {', '.join(OPERATORS)}")
    result = result.copy()
    result[missing.to_numpy()] = pd.NA  # SQL: any comparison with NULL is unknown
    return result


def _group(data: pd.DataFrame, group: Mapping[str, Any], model: DataModel) -> pd.Series:
    condition = str(group.get("condition", "AND")).upper()
    if condition not in ("AND", "OR"):
        raise RequestError(f"filter condition must be AND or OR, got {condition!r}")
    rules = group.get("rules")
    if not isinstance(rules, list) or not rules:
        raise RequestError("a filter group needs a non-empty list of rules")
    result: pd.Series | None = None
    for rule in rules:
        if not isinstance(rule, Mapping):
            raise RequestError(f"filter rule {rule!r} is not an object")
        part = _group(data, rule, model) if "rules" in rule else _rule(data, rule, model)
        if result is None:
            result = part
        else:
            result = (result & part) if condition == "AND" else (result | part)  # Kleene logic
    assert result is not None
    if group.get("not"):
        result = ~result
    return result


def filter_mask(data: pd.DataFrame, filters: Mapping[str, Any] | None, model: DataModel) -> np.ndarray:
    """Boolean mask of the rows a filter keeps, shape (n,)."""
    if not filters:
        return np.ones(len(data), dtype=bool)
    if not isinstance(filters, Mapping):
        raise RequestError("filters must be a QueryBuilder rule group")
    return _group(data, filters, model).fillna(False).to_numpy(dtype=bool)


def apply_filters(data: pd.DataFrame, filters: Mapping[str, Any] | None, model: DataModel) -> pd.DataFrame:
    """The rows of ``data`` that the filter keeps."""
    return data.loc[filter_mask(data, filters, model)]
