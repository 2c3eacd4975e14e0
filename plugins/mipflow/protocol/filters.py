"""The filter vocabulary of an analysis request: what a jQuery QueryBuilder rule group may contain.

A request's ``inputdata.filters`` is a jQuery QueryBuilder rule group (the MIP / Exareme2
format)::

    {"condition": "AND", "not": false, "valid": true,
     "rules": [{"id": "alzheimerbroadcategory", "type": "string",
                "operator": "equal", "value": "AD"},
               {"condition": "OR", "rules": [...]}]}

These are the words and limits both sides agree on: the node API's OpenAPI schema is built
from them, and a node checks every filter against them
(:mod:`mipflow.node.query.filters`) before it compiles one to SQL.
"""
from __future__ import annotations

#: Operators of jQuery QueryBuilder that filters may use (those Exareme2 accepts).
#: The string-pattern operators (``contains``, ``begins_with``, ...) are left
#: out on purpose: ``LIKE`` is case-insensitive on SQLite and case-sensitive on
#: PostgreSQL, so the same request would select different rows.
SUPPORTED_OPERATORS: frozenset[str] = frozenset({
    "equal", "not_equal",
    "less", "less_or_equal", "greater", "greater_or_equal",
    "between", "not_between",
    "in", "not_in",
    "is_null", "is_not_null",
})

#: Keys jQuery QueryBuilder itself writes in a rule group; anything else is refused.
GROUP_KEYS: frozenset[str] = frozenset({"condition", "rules", "not", "valid", "data", "flags"})
#: Keys jQuery QueryBuilder itself writes in a rule; anything else is refused.
RULE_KEYS: frozenset[str] = frozenset({"id", "field", "type", "input", "operator", "value", "data", "flags"})
#: Rule ``type`` and ``input`` values jQuery QueryBuilder writes (accepted, not used).
QB_TYPES: frozenset[str] = frozenset({"string", "integer", "double", "date", "time", "datetime", "boolean"})
QB_INPUTS: frozenset[str] = frozenset({"text", "number", "textarea", "radio", "checkbox", "select"})

#: Deepest nesting of rule groups (the root group is depth 1).
MAX_DEPTH = 10
#: Most entries (rules and groups together) a filter may hold.
MAX_RULES = 100
#: Most values an ``in``/``not_in`` rule may list.
MAX_LIST_VALUES = 1000
#: Longest text value (filter operand or dataset code) accepted.
MAX_TEXT_LENGTH = 1000
#: Most datasets one request may name.
MAX_DATASETS = 1000
