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

from itertools import combinations
from typing import Any, Mapping, Sequence

from mipflow.node.query.filters import _Group, _parse, _Rule, _walk_rules
from mipflow.node.query.value_sets import narrow
from mipflow.protocol.datamodel import DataModel

#: With more read variables in a filter than this, the widened and narrowed filters are those of each
#: variable and of all of them together, not of every pair (ADR 0064, what this does not cover).
MAX_PAIRED = 4

def pinning_filters(filters: Mapping[str, Any] | None, variables: Sequence[str],
                    model: DataModel) -> list[dict | None]:
    """The widened and narrowed filters of ``filters`` for the variables of ``variables`` it has pinning rules on
    (:func:`mipflow.node.query.value_sets.narrow`; each variable, each pair; all together past
    :data:`MAX_PAIRED`), as QueryBuilder JSON (None: no filter), the request's own, the empty ones (a filter false
    for every row) and repeats left out, in a fixed order.  A rule is replaced by a constant only where the rows
    that change side are those of one value of its variable; other rules stay.

    Raises
    ------
    mipflow.exceptions.RequestError
        If the filter is malformed (as :func:`mipflow.node.query.filters.compile_filters` would).
    """
    tree = _parse(filters)
    if tree is None:
        return []
    read = set(variables)
    def pins(rule: _Rule, outcome: bool) -> bool:  # the rows on the rule's ``outcome`` side hold one value
        return rule.field in model.variables and narrow(rule.operator, rule.value, model.variable(rule.field),
                                                        outcome)

    pinned = sorted({rule.field for rule in _walk_rules(tree)
                     if rule.field in read and (pins(rule, True) or pins(rule, False))})
    if not pinned:
        return []
    if len(pinned) <= MAX_PAIRED:
        subsets = [frozenset(s) for size in (1, 2) for s in combinations(pinned, size)]
    else:
        subsets = [frozenset([v]) for v in pinned] + [frozenset(pinned)]
    own = _to_json(tree)
    out: list[dict | None] = []
    seen: list[dict | None] = [own]
    for names in subsets:
        for widen in (True, False):
            item = _substitute(tree, names, widen, True, pins)
            if item is False:
                continue  # no row: nothing to hold
            relaxed = None if item is True else _to_json(item)
            if relaxed not in seen:
                seen.append(relaxed)
                out.append(relaxed)
    return out


def _substitute(item: Any, names: frozenset[str], widen: bool, positive: bool, pins: Any) -> Any:
    """``item`` with every pinning rule on ``names`` replaced by the constant that widens (or narrows) the rows it
    keeps at its place (``positive``: under an even number of ``not``), simplified; a bool when constant.  The
    constant ``c`` replaces a rule when the rows it brings in or takes out, those where the rule is ``not c``,
    hold one value (``pins``)."""
    if isinstance(item, _Rule):
        constant = widen == positive
        return constant if item.field in names and pins(item, not constant) else item
    inner = positive != item.negate
    parts = [_substitute(child, names, widen, inner, pins) for child in item.items]
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
        if item.has_value:
            rule["value"] = item.value
        return rule
    group = {"condition": item.condition, "rules": [_to_json(child) for child in item.items]}
    if item.negate:
        group["not"] = True
    return group
