"""The filters that stand beside a request's own when its filter pins the values it releases (ADR 0064).

A filter rule on a variable the step also reads does two things: it selects rows, and it tells the
requester something about the values of that variable on the rows it keeps or leaves out.  Where the
rule's complement holds one value only (``nihss_admission > 0`` on a variable whose minimum is 0), the
rows it leaves out are known to be zeros, and a cohort that differs from another by a target and a
dozen such rows pads the target with values the requester knows (the twenty-third outside review,
hole 3): the difference of two releases' sums is then the target's value, however many rows lie between
the two cohorts.  So the node holds the rows its filter pins to no count: beside the request's cohort it
checks and records the cohorts the same request would select with its pinning rules on each read variable
(and each pair of them: products of two variables, a regression's co-moments, are known where either factor
is pinned at 0) set to true (**widened**: the rows left out for their one value come back) and set to false
(**narrowed**: the rows kept for their one value go).  Which rules pin is
:func:`mipflow.node.query.value_sets.narrow`'s (the declared domain, never the data): a band such as
``20 <= age < 50`` pins nothing, its left-out rows' ages are only bounded.

Pure: the filter in, QueryBuilder JSON filters out.  Substitution respects the polarity of ``not``
groups and SQL's three-valued logic (a rule replaced by true at a positive place can only keep more rows:
false < unknown < true, and ``AND``/``OR`` are monotone in that order, ``NOT`` reverses it).
"""
from __future__ import annotations

from itertools import combinations, product
from typing import Any, Mapping, Sequence

from mipflow.node.query.filters import _Group, _parse, _Rule, _walk_rules
from mipflow.node.query.value_sets import outcome, pins, regions
from mipflow.protocol.datamodel import DataModel

#: With more read variables in a filter than this, the widened and narrowed filters are those of each
#: variable and of all of them together, not of every pair (ADR 0064, what this does not cover).
MAX_PAIRED = 4


def pinning_filters(filters: Mapping[str, Any] | None, variables: Sequence[str],
                    model: DataModel) -> list[dict | None]:
    """The widened and narrowed filters of ``filters`` for the variables of ``variables`` it has pinning rules on,
    as QueryBuilder JSON (None: no filter), the request's own, the empty ones (a filter false for every row) and
    repeats left out, in a fixed order.

    A **unit** is one rule on a variable, or all the filter's rules on it; it pins when the rows whose side it
    decides hold a few known values (:mod:`mipflow.node.query.value_sets`).  Widened, a unit's rules become
    ``is_not_null`` (``is_null`` under an odd number of ``not``): the rows left out for their value come back, the
    rows without one stay out; narrowed, the constant that keeps the fewest rows.  Each pinning unit of each
    variable, and each pair of units of two variables (products of two variables, a regression's co-moments, are
    known wherever either factor is pinned at 0; all the variables together past :data:`MAX_PAIRED`).

    Raises
    ------
    mipflow.exceptions.RequestError
        If the filter is malformed (as :func:`mipflow.node.query.filters.compile_filters` would).
    """
    tree = _parse(filters)
    if tree is None:
        return []
    read = [v for v in dict.fromkeys(variables) if v in model.variables]
    units: dict[str, list[tuple[bool, frozenset[int]]]] = {}
    for code in read:
        # is_null / is_not_null pin nothing (the rows they move hold no value) and stay as they are
        rules = [r for r in _walk_rules(tree) if r.field == code and r.operator not in ("is_null", "is_not_null")]
        if not rules:
            continue
        candidates = [frozenset([id(r)]) for r in rules] + ([frozenset(map(id, rules))] if len(rules) > 1 else [])
        found = [(widen, unit) for unit in dict.fromkeys(candidates) for widen in (True, False)
                 if _pins(tree, unit, widen, model.variable(code), rules)]
        if found:
            units[code] = found
    if not units:
        return []
    names = sorted(units)
    if len(names) <= MAX_PAIRED:
        subsets = [list(s) for size in (1, 2) for s in combinations(names, size)]
    else:
        subsets = [[n] for n in names] + [names]
    seen: list[dict | None] = [_to_json(tree)]
    out: list[dict | None] = []
    for subset in subsets:
        for widen in (True, False):
            for choice in product(*([u for w, u in units[n] if w == widen] for n in subset)):
                item = _substitute(tree, frozenset().union(*choice), widen, True)
                if item is False:
                    continue  # no row: nothing to hold
                relaxed = None if item is True else _to_json(item)
                if relaxed not in seen:
                    seen.append(relaxed)
                    out.append(relaxed)
    return out


def _pins(tree: _Group, unit: frozenset[int], widen: bool, var: Any, rules: list[_Rule]) -> bool:
    """Whether replacing the ``unit``'s rules (widening or narrowing) moves only rows of a few known values."""
    cut = regions(rules, var)
    if cut is None:
        return False
    changing = [r for r in cut if any(a != b for a, b in _pairs(tree, unit, widen, var, r[0], True))]
    return bool(changing) and pins(changing, var)  # a unit that moves no row holds none


def _pairs(item: Any, unit: frozenset[int], widen: bool, var: Any, x: Any, positive: bool) -> set[tuple[bool, bool]]:
    """The pairs ``(before, after)`` of outcomes ``item`` can take over the other rules' outcomes for a row whose
    variable is ``x`` (a region changes when some pair differs).  Rules on the variable are fixed by ``x``; the
    unit's after the replacement (widened: true where it stands positive, false under ``not``; narrowed: the
    reverse)."""
    if isinstance(item, _Rule):
        if item.field != var.code:
            return {(False, False), (True, True)}
        before = outcome(item, var, x)
        return {(before, (widen == positive) if id(item) in unit else before)}
    inner = positive != item.negate
    both = item.condition == "AND"
    acc = {(both, both)}
    for child in item.items:
        got = _pairs(child, unit, widen, var, x, inner)
        acc = {((a and c) if both else (a or c), (b and d) if both else (b or d)) for a, b in acc for c, d in got}
    return {(not a, not b) for a, b in acc} if item.negate else acc


def _substitute(item: Any, unit: frozenset[int], widen: bool, positive: bool) -> Any:
    """``item`` with the ``unit``'s rules replaced, widened by ``is_not_null`` on their variable (``is_null`` under
    an odd number of ``not``: rows without a value stay out), narrowed by the constant that keeps the fewest rows at
    their place, simplified; a bool when constant."""
    if isinstance(item, _Rule):
        if id(item) not in unit:
            return item
        if widen:
            return _Rule(item.field, "is_not_null" if positive else "is_null", None, False)
        return not positive
    inner = positive != item.negate
    parts = [_substitute(child, unit, widen, inner) for child in item.items]
    absorbing = item.condition == "OR"  # True absorbs an OR, False an AND
    if any(p is absorbing for p in parts):
        combined: Any = absorbing
    else:
        kept = tuple(p for p in parts if not isinstance(p, bool))
        combined = (not absorbing) if not kept else _Group(item.condition, False, kept)
    if isinstance(combined, bool):
        return (not combined) if item.negate else combined
    return _Group(combined.condition, item.negate, combined.items)


def _to_json(item: Any) -> dict:
    """A parsed rule or group as QueryBuilder JSON (what :func:`mipflow.node.query.filters.compile_filters`
    reads back into the same tree)."""
    if isinstance(item, _Rule):
        rule: dict = {"id": item.field, "operator": item.operator}
        if item.has_value and item.operator not in ("is_null", "is_not_null"):
            rule["value"] = item.value
        return rule
    group = {"condition": item.condition, "rules": [_to_json(child) for child in item.items]}
    if item.negate:
        group["not"] = True
    return group
