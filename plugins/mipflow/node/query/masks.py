"""A request's filter evaluated on column arrays, as SQLite evaluates its compiled form (ADR 0049).

:func:`filter_mask` walks the same checked QueryBuilder tree as
:func:`mipflow.node.query.filters.compile_filters`, with the same operand conversions, and keeps
SQL's three-valued logic: each rule and group gives two masks, *true* and *false*; a row where both
are off is unknown (a comparison with a missing value), ``NOT`` swaps them, and a row is selected
only where the whole filter is true.  What it cannot evaluate exactly as SQLite would, it refuses
(:class:`Unsupported`) and the caller reads the rows through SQL instead: a text variable, a column
holding values other than numbers, or an integer beyond 2**53 where float64 comparison could differ
from SQLite's exact integer comparison.

Categorical columns are compared by their stored values (the level table), as SQL compares the
column with the bound enumeration code (:func:`mipflow.node.query.filters.code_to_db`): numbers equal
numbers of the same value, text equals the same text, and never text a number.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mipflow.node.query.filters import (  # the checked tree and operand rules compile_filters uses
    _Group,
    _Rule,
    _number,
    _operand,
    _parse,
    _variable,
)
from mipflow.protocol.datamodel import DataModel, Variable

#: Integers beyond this magnitude may compare differently as float64 than SQLite compares them.
EXACT_INTEGER = 2 ** 53


class Unsupported(Exception):
    """The filter (or a column it needs) cannot be evaluated here exactly as SQL would: read through SQL."""


@dataclass(frozen=True)
class MaskColumn:
    """One variable's values over every row of the snapshot.

    Attributes
    ----------
    null : numpy.ndarray of bool, shape (n,)
        Where the value is missing (SQL NULL).
    values : numpy.ndarray of float64, shape (n,), or None
        A numerical variable's values (NaN where missing).
    codes : numpy.ndarray of int, shape (n,), or None
        A categorical variable's level index (-1 where missing).
    levels : sequence or None
        The distinct stored values the codes index (int, float or str, as SQLite returned them).
    exact : bool
        Whether float64 comparisons on ``values`` are SQLite's (no integer beyond 2**53).
    """

    null: np.ndarray
    values: np.ndarray | None = None
    codes: np.ndarray | None = None
    levels: Sequence[Any] | None = None
    exact: bool = True


Masks = tuple[np.ndarray, np.ndarray]  # (true, false); neither: unknown


def _same(stored: Any, operand: Any) -> bool:
    """SQLite's ``=`` between a stored value and a bound operand (no NULLs here)."""
    if isinstance(stored, (str, bytes)) or isinstance(operand, (str, bytes)):
        return type(stored) is type(operand) and stored == operand
    return stored == operand  # int and float compare by value, exactly, in Python as in SQLite


def _numeric_operand(value: Any) -> float:
    if isinstance(value, int) and abs(value) >= EXACT_INTEGER:
        raise Unsupported("an integer operand beyond 2**53")
    return float(value)


def _matches(column: MaskColumn, operands: Sequence[Any]) -> np.ndarray:
    """Rows whose (non-missing) value equals one of ``operands`` (missing rows: False)."""
    if column.codes is not None:
        hit = np.array([any(_same(level, op) for op in operands) for level in column.levels] + [False])
        return hit[column.codes]
    values = column.values
    out = np.zeros(len(values), dtype=bool)
    for op in operands:
        out |= values == _numeric_operand(op)
    return out


def _rule(rule: _Rule, model: DataModel, column: Callable[[Variable], MaskColumn]) -> Masks:
    var = _variable(model, rule.field, "filter field")
    col = column(var)  # Unsupported for a variable the snapshot does not hold exactly
    op, value = rule.operator, rule.value
    null = col.null
    if op == "is_null":
        return null, ~null
    if op == "is_not_null":
        return ~null, null
    known = ~null
    if col.codes is None and not col.exact:
        raise Unsupported(f"{var.code} holds integers beyond 2**53")
    if op in ("in", "not_in"):
        operands = list(dict.fromkeys(_operand(v, var, exact=True) for v in value))
        hit = _matches(col, operands)
        inside, outside = known & hit, known & ~hit
        return (inside, outside) if op == "in" else (outside, inside)
    if op in ("between", "not_between"):
        low, high = (_numeric_operand(_number(v, var, exact=False)) for v in value)
        hit = (col.values >= low) & (col.values <= high)
        inside, outside = known & hit, known & ~hit
        return (inside, outside) if op == "between" else (outside, inside)
    operand = _operand(value, var, exact=op in ("equal", "not_equal"))
    if op in ("equal", "not_equal"):
        hit = _matches(col, [operand])
        equal, different = known & hit, known & ~hit
        return (equal, different) if op == "equal" else (different, equal)
    bound = _numeric_operand(operand)
    values = col.values
    if op == "less":
        hit = values < bound
    elif op == "less_or_equal":
        hit = values <= bound
    elif op == "greater":
        hit = values > bound
    elif op == "greater_or_equal":
        hit = values >= bound
    else:  # pragma: no cover - compile_filters refused it first
        raise Unsupported(f"operator {op!r}")
    return known & hit, known & ~hit


def _group(group: _Group, model: DataModel, column: Callable[[Variable], MaskColumn]) -> Masks:
    parts = [_group(item, model, column) if isinstance(item, _Group) else _rule(item, model, column)
             for item in group.items]
    true, false = parts[0]
    for t, f in parts[1:]:
        if group.condition == "AND":
            true, false = true & t, false | f
        else:
            true, false = true | t, false & f
    return (false, true) if group.negate else (true, false)


def filter_mask(filters: Mapping[str, Any] | None, model: DataModel,
                column: Callable[[Variable], MaskColumn]) -> np.ndarray | None:
    """The rows where ``filters`` is true, or None for no filter.

    ``filters`` must already have been checked (:func:`mipflow.node.query.filters.compile_filters`
    raises the request's errors); ``column(var)`` gives a variable's :class:`MaskColumn` or raises
    :class:`Unsupported`.

    Returns
    -------
    numpy.ndarray of bool, shape (n,), or None

    Raises
    ------
    Unsupported
        When a rule cannot be evaluated exactly as SQLite would.
    """
    tree = _parse(filters)
    if tree is None:
        return None
    return _group(tree, model, column)[0]
