"""Which values of a variable a filter's rules on it decide, within the declared domain (ADR 0064).

A unit of rules on one variable (one rule, or all the filter's rules on it) **pins** when the rows whose side of the
filter the unit decides hold a few known values.  The domain is cut at every operand of the variable's rules into
regions on which each rule's outcome is constant; a region **changes** when replacing the unit by its constant (or
``is_not_null``, widening) can move a row of it across the filter for some outcome of the other rules, each taken as
free (:func:`changes`, exact for a filter tree: every rule is a leaf of its own).  The changing regions pin when:

* integer variable: they hold at most :data:`MAX_VALUES` integers (two unknown counts and the target's value solve
  from a release's count, sum and sum of squares: the twenty-fifth review, hole 1);
* real variable: at most :data:`MAX_VALUES` pieces, each narrower than the declared range over
  :data:`NARROW_PARTS`;
* nominal variable: not every level (the target's level outside them shows);
* free text: the operands only, at most :data:`MAX_VALUES`.

A side without a declared bound is open (the node does not know whether rows sit at it).  Pure: rules and the
variable's metadata, never the data.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from mipflow.protocol.datamodel import Variable

#: A numerical piece narrower than the declared range over this many counts as one value.
NARROW_PARTS = 100
#: At most this many values (integers, narrow pieces, operand texts) pin (degree-2 releases solve two).
MAX_VALUES = 2


def regions(rules: Sequence[Any], var: Variable) -> list[tuple[Any, float, float]] | None:
    """The variable's domain cut at its rules' operands: ``(representative, low, high)`` per region (a point when
    ``low == high``; the nominal levels and operand texts as points), or None when an operand does not parse (the
    selection refuses the filter)."""
    try:
        if var.is_categorical:
            return [(code, 0.0, 0.0) for code in var.enumeration_codes]
        if not var.is_numerical:
            texts = sorted({str(v) for r in rules for v in _operands(r)})
            return [(t, 0.0, 0.0) for t in texts] + [(None, -math.inf, math.inf)]  # None: every other text
        lo = -math.inf if var.min_value is None else float(var.min_value)
        hi = math.inf if var.max_value is None else float(var.max_value)
        cuts = sorted({_number(v) for r in rules for v in _operands(r)} | {lo, hi})
        cuts = [c for c in cuts if lo <= c <= hi]
    except (TypeError, ValueError):
        return None
    out: list[tuple[Any, float, float]] = []
    for i, point in enumerate(cuts):
        if math.isfinite(point):
            out.append((point, point, point))
        if i + 1 < len(cuts):
            a, b = point, cuts[i + 1]
            middle = (a + b) / 2 if math.isfinite(a) and math.isfinite(b) else (b - 1 if math.isfinite(b) else a + 1)
            out.append((middle, a, b))
    return out


def outcome(rule: Any, var: Variable, x: Any) -> bool:
    """A rule's outcome for a value ``x`` (a region's representative; never missing)."""
    op, value = rule.operator, rule.value
    if op in ("is_null", "is_not_null"):
        return op == "is_not_null"
    negate = op in ("not_equal", "not_in", "not_between")
    op = {"not_equal": "equal", "not_in": "in", "not_between": "between"}.get(op, op)
    if var.is_categorical or not var.is_numerical:
        inside = x is not None and str(x) in {_code(v) for v in _operands(rule)}
        return inside != negate
    x = float(x)
    if op == "between":
        a, b = (_number(v) for v in value)
        result = a <= x <= b
    elif op in ("equal", "in"):
        result = x in {_number(v) for v in _operands(rule)}
    else:
        c = _number(value)
        result = {"less": x < c, "less_or_equal": x <= c, "greater": x > c, "greater_or_equal": x >= c}[op]
    return result != negate


def pins(changing: Sequence[tuple[Any, float, float]], var: Variable) -> bool:
    """Whether changing regions hold a few known values (the module's rules)."""
    if not changing:
        return True
    if var.is_categorical:
        return len(changing) < len(var.enumeration_codes)
    if not var.is_numerical:
        return all(rep is not None for rep, _, _ in changing) and len(changing) <= MAX_VALUES
    if any(not (math.isfinite(a) and math.isfinite(b)) for _, a, b in changing):
        return False
    if var.sql_type == "int":
        return sum(_integers(a, b) for _, a, b in changing) <= MAX_VALUES
    lo, hi = var.min_value, var.max_value
    pieces = _merged([(a, b) for _, a, b in changing])
    if len(pieces) > MAX_VALUES:
        return False
    if all(a == b for a, b in pieces):
        return True
    return lo is not None and hi is not None and all(b - a <= (float(hi) - float(lo)) / NARROW_PARTS
                                                      for a, b in pieces)


def _integers(a: float, b: float) -> int:
    """Integers in a region: the point ``a`` when ``a == b``, else those strictly between ``a`` and ``b``."""
    if a == b:
        return int(float(a).is_integer())
    return max(0, math.ceil(b) - 1 - math.floor(a)) if b > a else 0


def _merged(pieces: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(pieces):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _operands(rule: Any) -> list:
    value = rule.value
    if rule.operator in ("is_null", "is_not_null"):
        return []
    return list(value) if isinstance(value, list) else [value]


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not finite")
    return number


def _code(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
