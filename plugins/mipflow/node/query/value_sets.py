"""Which values a filter rule keeps or leaves out, within its variable's declared domain (ADR 0064).

A rule **pins** the rows it leaves out when every value it leaves out is one value (``nihss_admission > 0`` with a
declared minimum of 0; ``sex = F`` leaves out ``M``; ``score != 3``), and the rows it keeps when every value it keeps
is one (``nihss_admission = 0``; ``nihss_admission <= 0.5`` on an integer variable).  A numerical variable with a
declared range ``[lo, hi]`` counts an interval of values narrower than ``1 / NARROW_PARTS`` of the range as one
value (``age > 18.01`` with a minimum of 18: the left-out ages are all but known).  A side without a declared bound
is open: the node does not know whether rows sit at it (data models should declare the ranges of scores and counts).

Pure: a rule's operator and value, the variable's metadata; never the data.
"""
from __future__ import annotations

import math
from typing import Any

from mipflow.protocol.datamodel import Variable

#: A numerical set of values narrower than the declared range over this many counts as one value.
NARROW_PARTS = 100

_TRUE_OUTSIDE = {"not_equal": "equal", "not_in": "in", "not_between": "between"}


def narrow(operator: str, value: Any, var: Variable, outcome: bool) -> bool:
    """Whether the values of ``var`` on which a rule is ``outcome`` (true: the values it keeps; false: those it
    leaves out, missing values aside) are at most one value.  ``is_null`` / ``is_not_null`` pin nothing (the rows
    they leave out or keep hold no value of the variable); an operand that does not parse pins nothing (the
    selection refuses the filter)."""
    if operator in ("is_null", "is_not_null"):
        return False
    if operator in _TRUE_OUTSIDE:
        operator, outcome = _TRUE_OUTSIDE[operator], not outcome
    try:
        if var.is_categorical:
            return _levels(operator, value, var, outcome)
        if var.is_numerical:
            return _numbers(operator, value, var, outcome)
    except (TypeError, ValueError):
        return False
    # free text: a value kept, or (outcome false) every other value
    return outcome and operator in ("equal", "in") and len(_listed(operator, value)) <= 1


def _listed(operator: str, value: Any) -> list:
    return list(value) if operator == "in" and isinstance(value, list) else [value]


def _code(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _levels(operator: str, value: Any, var: Variable, outcome: bool) -> bool:
    """A nominal variable: its levels kept, or those left out, at most one."""
    levels = set(var.enumeration_codes)
    if operator not in ("equal", "in"):
        return False  # an ordering operator on a nominal variable: the selection refuses it
    chosen = {_code(v) for v in _listed(operator, value)} & levels
    return len(chosen if outcome else levels - chosen) <= 1


def _numbers(operator: str, value: Any, var: Variable, outcome: bool) -> bool:
    """A numerical variable: the hull of the values kept (or left out) within ``[lo, hi]`` holds one integer (int)
    or is narrower than the declared range over :data:`NARROW_PARTS`."""
    lo = -math.inf if var.min_value is None else float(var.min_value)
    hi = math.inf if var.max_value is None else float(var.max_value)
    pieces = _intervals(operator, value, lo, hi)
    if not outcome:
        pieces = _complement(pieces, lo, hi)
    pieces = [(a, b, ca, cb) for a, b, ca, cb in pieces if a < b or (a == b and ca and cb)]
    if not pieces:
        return True  # no value: no row changes side
    start, end = min(p[0] for p in pieces), max(p[1] for p in pieces)
    if start == end:
        return True  # one value
    if not (math.isfinite(start) and math.isfinite(end)):
        return False  # open towards an undeclared bound
    if var.sql_type == "int":
        first = math.ceil(start) if pieces[0][2] or not float(start).is_integer() else start + 1
        last = math.floor(end) if pieces[-1][3] or not float(end).is_integer() else end - 1
        if last - first < 1:
            return True
    return math.isfinite(hi - lo) and end - start <= (hi - lo) / NARROW_PARTS


def _intervals(operator: str, value: Any, lo: float, hi: float) -> list[tuple[float, float, bool, bool]]:
    """The values a rule keeps within ``[lo, hi]``: ``(a, b, a closed, b closed)`` pieces, in order."""
    def num(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError("not a number")
        return float(v)

    if operator == "less":
        return [(lo, min(hi, num(value)), True, num(value) > hi)]
    if operator == "less_or_equal":
        return [(lo, min(hi, num(value)), True, True)]
    if operator == "greater":
        return [(max(lo, num(value)), hi, num(value) < lo, True)]
    if operator == "greater_or_equal":
        return [(max(lo, num(value)), hi, True, True)]
    if operator == "between":
        a, b = (num(v) for v in value)
        return [(max(lo, a), min(hi, b), True, True)]
    if operator in ("equal", "in"):
        points = sorted({num(v) for v in _listed(operator, value)})
        return [(p, p, True, True) for p in points if lo <= p <= hi]
    raise ValueError(f"unknown operator {operator!r}")


def _complement(pieces: list[tuple[float, float, bool, bool]], lo: float, hi: float
                ) -> list[tuple[float, float, bool, bool]]:
    """``[lo, hi]`` less ``pieces`` (sorted, disjoint)."""
    out: list[tuple[float, float, bool, bool]] = []
    start, closed = lo, True
    for a, b, ca, cb in sorted(pieces):
        if a > start or (a == start and closed and not ca):
            out.append((start, a, closed, not ca))
        start, closed = b, not cb
    if start < hi or (start == hi and closed):
        out.append((start, hi, closed, True))
    return out
