"""Request filters checked against a data model and compiled to SQL.

An analysis request names a data model, datasets, variables and an optional
filter in jQuery QueryBuilder JSON (the vocabulary and limits are in
:mod:`mipflow.protocol.filters`).  This module checks such a filter against the
data model and turns it into a boolean SQLAlchemy expression on the data
model's feature-store table.  Two rules keep it safe:

* identifiers (columns) are only ever taken from the data model, looked up by
  the codes the request names; a name that is not a variable of the model is
  refused, never quoted into SQL;
* every value (filter operands, dataset codes) is checked against the
  variable's type and passed as a bound parameter.

Filters follow SQL's three-valued logic (as
:mod:`mipflow.algorithms.filters_pandas` does in memory): a comparison with a
missing value is unknown, ``NOT unknown`` is unknown, and a row is kept only
where the whole filter is true.  ``is_null``/``is_not_null`` are the only
operators that match missing values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import sqlalchemy as sa

from mipflow.exceptions import RequestError
from mipflow.node.store.tables import KEY_COLUMNS, LINEAGE_COLUMNS, ROW_MD5_COLUMN
from mipflow.protocol.datamodel import DataModel, Variable
from mipflow.protocol.filters import (
    GROUP_KEYS,
    MAX_DEPTH,
    MAX_LIST_VALUES,
    MAX_RULES,
    MAX_TEXT_LENGTH,
    QB_INPUTS,
    QB_TYPES,
    RULE_KEYS,
    SUPPORTED_OPERATORS,
)

#: Operators that fit categorical and free-text variables (no ordering).
_UNORDERED_OPERATORS = frozenset({"equal", "not_equal", "in", "not_in", "is_null", "is_not_null"})
_NO_VALUE_OPERATORS = frozenset({"is_null", "is_not_null"})
_RANGE_OPERATORS = frozenset({"between", "not_between"})
_LIST_OPERATORS = frozenset({"in", "not_in"})

#: Columns no request may read or filter on, whatever the data model declares.
RESERVED_COLUMNS = frozenset(KEY_COLUMNS + LINEAGE_COLUMNS + (ROW_MD5_COLUMN,)) - {"dataset"}
_INT64_MAX = 2**63 - 1


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Rule:
    field: str
    operator: str
    value: Any
    has_value: bool


@dataclass(frozen=True)
class _Group:
    condition: str  # "AND" or "OR"
    negate: bool
    items: tuple["_Rule | _Group", ...]


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _parse(filters: Any) -> _Group | None:
    """Check a filter's structure (not its variables) and return its tree.

    ``None`` and ``{}`` mean "no filter".
    """
    if filters is None:
        return None
    if not isinstance(filters, Mapping):
        raise RequestError("filters must be a QueryBuilder rule group (a JSON object) or null")
    if not filters:
        return None
    if "rules" not in filters:
        raise RequestError("filters must be a QueryBuilder rule group with 'condition' and 'rules'")
    count = [0]
    return _parse_group(filters, depth=1, count=count)


def _parse_group(node: Mapping[str, Any], *, depth: int, count: list[int]) -> _Group:
    if depth > MAX_DEPTH:
        raise RequestError(f"filters are nested too deeply: at most {MAX_DEPTH} levels of rule groups")
    unknown = sorted(str(k) for k in node if k not in GROUP_KEYS)
    if unknown:
        raise RequestError(f"filter group has unknown key(s) {', '.join(map(repr, unknown))}; "
                           f"allowed: {', '.join(sorted(GROUP_KEYS))}")
    if node.get("valid", True) is not True:
        if node.get("valid") is False:
            raise RequestError("the filter is marked invalid ('valid': false) by the query builder")
        raise RequestError(f"filter key 'valid' must be true or false, got {short_repr(node.get('valid'))}")
    condition = node.get("condition", "AND")
    if not isinstance(condition, str) or condition.upper() not in ("AND", "OR"):
        raise RequestError(f"filter condition must be 'AND' or 'OR', got {short_repr(condition)}")
    negate = node.get("not", False)
    if not isinstance(negate, bool):
        raise RequestError(f"filter key 'not' must be true or false, got {short_repr(negate)}")
    rules = node.get("rules")
    if not isinstance(rules, list) or not rules:
        raise RequestError("a filter group needs a non-empty list of 'rules'")
    items: list[_Rule | _Group] = []
    for item in rules:
        count[0] += 1
        if count[0] > MAX_RULES:
            raise RequestError(f"filters hold too many rules: at most {MAX_RULES} rules and groups")
        if not isinstance(item, Mapping):
            raise RequestError(f"filter rule {short_repr(item)} is not a JSON object")
        if "rules" in item or "condition" in item:
            items.append(_parse_group(item, depth=depth + 1, count=count))
        else:
            items.append(_parse_rule(item))
    return _Group(condition=condition.upper(), negate=negate, items=tuple(items))


def _parse_rule(node: Mapping[str, Any]) -> _Rule:
    unknown = sorted(str(k) for k in node if k not in RULE_KEYS)
    if unknown:
        raise RequestError(f"filter rule has unknown key(s) {', '.join(map(repr, unknown))}; "
                           f"allowed: {', '.join(sorted(RULE_KEYS))}")
    ident, field = node.get("id"), node.get("field")
    if ident is not None and field is not None and ident != field:
        raise RequestError(f"filter rule names two variables: id {short_repr(ident)} and field {short_repr(field)}")
    name = ident if ident is not None else field
    if not isinstance(name, str) or not name:
        raise RequestError(f"filter rule needs the variable code in 'id' (or 'field'), got {short_repr(name)}")
    operator = node.get("operator")
    if not isinstance(operator, str) or operator not in SUPPORTED_OPERATORS:
        raise RequestError(f"filter rule on {name!r}: operator {short_repr(operator)} is not supported; "
                           f"supported: {', '.join(sorted(SUPPORTED_OPERATORS))}")
    qb_type = node.get("type")
    if qb_type is not None and (not isinstance(qb_type, str) or qb_type not in QB_TYPES):
        raise RequestError(f"filter rule on {name!r}: type {short_repr(qb_type)} is not a QueryBuilder type "
                           f"({', '.join(sorted(QB_TYPES))})")
    qb_input = node.get("input")
    if qb_input is not None and (not isinstance(qb_input, str) or qb_input not in QB_INPUTS):
        raise RequestError(f"filter rule on {name!r}: input {short_repr(qb_input)} is not a QueryBuilder input "
                           f"({', '.join(sorted(QB_INPUTS))})")
    return _Rule(field=name, operator=operator, value=node.get("value"), has_value="value" in node)


def _walk_rules(group: _Group) -> Iterator[_Rule]:
    for item in group.items:
        if isinstance(item, _Group):
            yield from _walk_rules(item)
        else:
            yield item


def filter_variables(filters: Mapping[str, Any] | None) -> set[str]:
    """The variable codes a filter refers to (structure checked, variables not).

    Raises
    ------
    RequestError
        If the filter is not a well-formed QueryBuilder rule group.
    """
    tree = _parse(filters)
    return set() if tree is None else {rule.field for rule in _walk_rules(tree)}


# --------------------------------------------------------------------------- compiling


def _variable(model: DataModel, code: Any, what: str) -> Variable:
    if not isinstance(code, str) or code not in model or code in RESERVED_COLUMNS:
        raise RequestError(f"{what} {short_repr(code)} is not a variable of data model {model.key}")
    return model.variables[code]


def check_text(value: Any, what: str) -> str:
    """``value`` if it is text a request may carry (not too long, no NUL); else RequestError."""
    if not isinstance(value, str):
        raise RequestError(f"{what}: {short_repr(value)} is not text")
    if len(value) > MAX_TEXT_LENGTH:
        raise RequestError(f"{what}: text longer than {MAX_TEXT_LENGTH} characters")
    if "\x00" in value:
        raise RequestError(f"{what}: text must not contain NUL characters")
    return value


def _number(value: Any, var: Variable, *, exact: bool) -> int | float:
    """A JSON number for a numerical variable; ``exact`` asks integers of int variables."""
    what = f"filter value for {var.code!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{what}: {short_repr(value)} is not a number ({var.code} is {var.sql_type})")
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(f"{what}: {value!r} is not a finite number")
    if isinstance(value, int) and abs(value) > _INT64_MAX:
        raise RequestError(f"{what}: {value} is out of range")
    if var.sql_type == "int":
        if float(value).is_integer():
            return int(value)
        if exact:
            raise RequestError(f"{what}: {value!r} is not an integer ({var.code} is int)")
    return float(value)


def code_to_db(var: Variable, code: str) -> Any:
    """An enumeration code as stored in the variable's column."""
    if var.sql_type == "text":
        return code
    try:
        number = float(code)
    except ValueError:
        raise RequestError(f"enumeration {code!r} of {var.code!r} is not a number, "
                           f"but {var.code} is stored as {var.sql_type}") from None
    if var.sql_type == "int":
        if not number.is_integer():
            raise RequestError(f"enumeration {code!r} of {var.code!r} is not an integer")
        return int(number)
    return number


def _category(value: Any, var: Variable) -> Any:
    """An enumeration code of a categorical variable, converted for its column."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RequestError(f"filter value for {var.code!r}: {short_repr(value)} is not an enumeration code")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RequestError(f"filter value for {var.code!r}: {value!r} is not a finite number")
        code = str(int(value)) if value.is_integer() else repr(value)
    else:
        code = str(value)
    if code not in var.enumeration_codes:
        raise RequestError(f"filter value for {var.code!r}: {short_repr(code)} is not one of its enumerations "
                           f"({', '.join(var.enumeration_codes)})")
    return code_to_db(var, code)


def _sql_type(var: Variable, value: Any) -> sa.types.TypeEngine:
    if var.sql_type == "text":
        return sa.Text()
    if isinstance(value, int):
        return sa.BigInteger()
    return sa.Float(precision=53)


def _operand(value: Any, var: Variable, *, exact: bool) -> Any:
    if var.is_categorical:
        return _category(value, var)
    if var.sql_type == "text":
        return check_text(value, f"filter value for {var.code!r}")
    return _number(value, var, exact=exact)


def _bind(value: Any, var: Variable) -> sa.BindParameter:
    return sa.bindparam(None, value, type_=_sql_type(var, value))


def _compile_rule(rule: _Rule, model: DataModel, table: sa.Table) -> sa.ColumnElement[bool]:
    var = _variable(model, rule.field, "filter field")
    column = table.c[var.code]
    op, value = rule.operator, rule.value
    if op not in _UNORDERED_OPERATORS and not var.is_numerical:
        kind = "categorical" if var.is_categorical else "text"
        raise RequestError(f"filter rule on {var.code!r}: operator {op!r} needs a numerical variable, "
                           f"but {var.code} is {kind} (use one of "
                           f"{', '.join(sorted(_UNORDERED_OPERATORS))})")
    if op in _NO_VALUE_OPERATORS:
        if value not in (None, [], ""):
            raise RequestError(f"filter rule on {var.code!r}: operator {op!r} takes no value, "
                               f"got {short_repr(value)}")
        return column.is_(None) if op == "is_null" else column.is_not(None)
    if not rule.has_value or value is None:
        raise RequestError(f"filter rule on {var.code!r}: operator {op!r} needs a value")
    if op in _LIST_OPERATORS:
        if not isinstance(value, list) or not value:
            raise RequestError(f"filter rule on {var.code!r}: operator {op!r} takes a non-empty list "
                               f"of values, got {short_repr(value)}")
        if len(value) > MAX_LIST_VALUES:
            raise RequestError(f"filter rule on {var.code!r}: at most {MAX_LIST_VALUES} values in a list")
        operands = [_operand(v, var, exact=True) for v in value]
        # One bound parameter per value, each typed like its column.
        binds = [_bind(v, var) for v in dict.fromkeys(operands)]
        return column.in_(binds) if op == "in" else column.not_in(binds)
    if op in _RANGE_OPERATORS:
        if not isinstance(value, list) or len(value) != 2:
            raise RequestError(f"filter rule on {var.code!r}: operator {op!r} takes a list of two "
                               f"values [low, high], got {short_repr(value)}")
        low, high = (_number(v, var, exact=False) for v in value)
        if low > high:
            raise RequestError(f"filter rule on {var.code!r}: {op!r} needs low <= high, got [{low}, {high}]")
        inside = column.between(_bind(low, var), _bind(high, var))
        return inside if op == "between" else sa.not_(inside)
    if isinstance(value, (list, dict)):
        raise RequestError(f"filter rule on {var.code!r}: operator {op!r} takes one value, "
                           f"got {short_repr(value)}")
    operand = _bind(_operand(value, var, exact=op in ("equal", "not_equal")), var)
    if op == "equal":
        return column == operand
    if op == "not_equal":
        return column != operand
    if op == "less":
        return column < operand
    if op == "less_or_equal":
        return column <= operand
    if op == "greater":
        return column > operand
    if op == "greater_or_equal":
        return column >= operand
    raise AssertionError(f"unhandled operator {op!r}")  # pragma: no cover - SUPPORTED_OPERATORS is closed


def _compile_group(group: _Group, model: DataModel, table: sa.Table) -> sa.ColumnElement[bool]:
    parts = [_compile_group(item, model, table) if isinstance(item, _Group)
             else _compile_rule(item, model, table) for item in group.items]
    combined = sa.and_(*parts) if group.condition == "AND" else sa.or_(*parts)
    # Group explicitly so NOT and nesting keep their meaning whatever SQLAlchemy flattens.
    combined = combined.self_group()
    return sa.not_(combined) if group.negate else combined


def compile_filters(filters: Mapping[str, Any] | None, model: DataModel,
                    table: sa.Table) -> sa.ColumnElement[bool] | None:
    """Check a QueryBuilder filter against a data model and compile it.

    Parameters
    ----------
    filters : dict or None
        A jQuery QueryBuilder rule group; ``None`` or ``{}`` for no filter.
    model : DataModel
        The data model the request names.
    table : sqlalchemy.Table
        The model's feature-store table (``FeatureStore.model_table(model)``).

    Returns
    -------
    sqlalchemy.ColumnElement or None
        A boolean expression whose values are all bound parameters, or None.

    Raises
    ------
    RequestError
        If the filter is malformed, too deep or too large, names a field that
        is not a variable of the model, uses an unsupported operator or one
        that does not fit the variable, or a value of the wrong type.
    """
    tree = _parse(filters)
    if tree is None:
        return None
    return _compile_group(tree, model, table)
