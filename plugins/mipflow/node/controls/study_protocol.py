"""A study protocol: the family of analyses a project may run at a node in study mode (ADR 0023, 0028).

The node admin approves one protocol per project (``mipflow study approve HOME --project P FILE``).
It is a JSON document::

    {"name": "stroke-outcomes",
     "data_model": "stroke:0.1",
     "datasets": ["hospital_a", "hospital_b", "hospital_c"],
     "variables": ["age", "sex", "nihss_admission", "followup_days", "death_90d"],
     "population": {"filter": null},
     "subgroups": [{"name": "elderly", "filter": {QueryBuilder group: age >= 65}},
                   {"name": "women", "filter": {QueryBuilder group: sex = F}}],
     "algorithms": ["linear_regression", "kaplan_meier"],
     "histogram_bins": 10,
     "data_transformation": {"log": ["followup_days"]},
     "note": "ethics approval 2027/12"}

The **analysis population** is the rows of the datasets that pass the population filter and are
complete over *all* study variables, so every analysis of any subset of the variables uses the
same rows.  A **subgroup** is a filter applied within the population.  A request belongs to the
study's *family* when it names the data model, datasets among the study's, variables among the
study's, no filter or exactly one subgroup's filter (compared canonically, :func:`canonical_filter`),
and an allowed algorithm.  ``histogram_bins`` (1 to 100, default :data:`DEFAULT_HISTOGRAM_BINS`) fixes
the binning of every numerical study variable: a histogram request with other ``bins`` is outside the
family (ADR 0035), so each variable has one binning whose suppression pattern is fixed at approval.
``data_transformation`` (``log`` and ``exp`` -> study variables, default none) fixes the row
transformations of ``pca_with_transformation``: its requests transform each variable as the protocol
says, and approval checks them on every cohort of the family (ADR 0053,
:mod:`mipflow.node.controls.study_transforms`).
Everything here depends on the protocol and the request only.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from mipflow.exceptions import ConfigError, RequestError
from mipflow.node.query.filters import filter_variables

#: Keys a protocol may hold (anything else is a typo the admin should see).
PROTOCOL_KEYS = frozenset({"name", "data_model", "datasets", "variables", "population", "subgroups",
                           "algorithms", "histogram_bins", "survival", "data_transformation", "note"})
REQUIRED_KEYS = ("name", "data_model", "datasets", "variables", "algorithms")
#: Most subgroups one protocol may name (the approval checks each, per dataset).
MAX_SUBGROUPS = 50
#: Bins of a numerical study variable's histogram when the protocol names none (ADR 0035).
DEFAULT_HISTOGRAM_BINS = 10
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
CODE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
DATA_MODEL_RE = re.compile(r"^[A-Za-z0-9_\-]+:[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class Subgroup:
    """A named filter within the study population."""

    name: str
    filter: dict[str, Any]

    @property
    def canonical(self) -> str:
        return canonical_filter(self.filter) or ""


@dataclass(frozen=True)
class Protocol:
    """A parsed, checked study protocol (:func:`parse_protocol`)."""

    name: str
    data_model: str
    datasets: tuple[str, ...]
    variables: tuple[str, ...]
    population_filter: dict[str, Any] | None
    subgroups: tuple[Subgroup, ...]
    algorithms: tuple[str, ...]
    note: str = ""
    histogram_bins: int = DEFAULT_HISTOGRAM_BINS
    #: the study's survival grid (``{"time": code, "bin_width": number}``, optionally ``"event": code``):
    #: Kaplan-Meier in the study takes this time variable and bin width over the declared range, no
    #: ``max_time``, and that event variable when one is named; approval checks the grid's cells
    survival: dict[str, Any] | None = None
    #: the row transformations of ``pca_with_transformation`` (``log``/``exp`` -> study variables,
    #: ADR 0053): a request transforms exactly these of its variables, approval checks them
    data_transformation: Mapping[str, tuple[str, ...]] | None = None

    def row_transform(self, code: str) -> str | None:
        """The protocol's row transformation of study variable ``code`` (``log``, ``exp`` or None)."""
        for method, codes in (self.data_transformation or {}).items():
            if code in codes:
                return method
        return None

    def to_dict(self) -> dict[str, Any]:
        """The protocol as the admin wrote it (round-trips through :func:`parse_protocol`)."""
        return {"name": self.name, "data_model": self.data_model, "datasets": list(self.datasets),
                "variables": list(self.variables), "population": {"filter": self.population_filter},
                "subgroups": [{"name": s.name, "filter": s.filter} for s in self.subgroups],
                "algorithms": list(self.algorithms), "histogram_bins": self.histogram_bins, "note": self.note,
                **({"survival": dict(self.survival)} if self.survival is not None else {}),
                **({"data_transformation": {m: list(c) for m, c in self.data_transformation.items()}}
                   if self.data_transformation else {})}

    def subgroup(self, name: str) -> Subgroup:
        for subgroup in self.subgroups:
            if subgroup.name == name:
                return subgroup
        raise KeyError(name)

    def subgroup_filter(self, subgroup: Subgroup | None) -> dict[str, Any] | None:
        """The filter selecting ``subgroup`` (None: the whole population) from the store."""
        parts = [f for f in (self.population_filter, None if subgroup is None else subgroup.filter) if f]
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        return {"condition": "AND", "rules": parts, "valid": True}


def _fail(message: str) -> ConfigError:
    return ConfigError(f"study protocol: {message}")


def _names(doc: Mapping[str, Any], key: str, pattern: re.Pattern[str]) -> tuple[str, ...]:
    value = doc.get(key)
    if not isinstance(value, list) or not value:
        raise _fail(f"'{key}' must be a non-empty list of names")
    bad = [v for v in value if not isinstance(v, str) or not pattern.match(v)]
    if bad:
        raise _fail(f"'{key}' holds {json.dumps(bad[:3])}, which {'is' if len(bad) == 1 else 'are'} not valid "
                    f"name(s) (letters, digits, '_.-')")
    if len(set(value)) != len(value):
        raise _fail(f"'{key}' names something twice")
    return tuple(value)


def _filter(value: Any, where: str) -> dict[str, Any] | None:
    if value in (None, {}):
        return None
    try:
        filter_variables(value)  # structure, operators, nesting and size, as a request's filter
    except RequestError as exc:
        raise _fail(f"{where}: {exc}") from None
    return dict(value)


def parse_protocol(doc: Any) -> Protocol:
    """Check a protocol document and return it parsed.

    Algorithm names are checked against the catalogue; variables and filters against a data model
    at approval (:func:`check_against_model`), where the node's data model is known.

    Raises
    ------
    ConfigError
        Naming the key that is wrong and what it must be.
    """
    from mipflow.algorithms import ALGORITHMS

    if not isinstance(doc, Mapping):
        raise _fail("the document must be a JSON object")
    unknown = sorted(str(k) for k in doc if k not in PROTOCOL_KEYS)
    if unknown:
        raise _fail(f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(PROTOCOL_KEYS))}")
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise _fail(f"missing key(s) {', '.join(map(repr, missing))}")
    name = doc["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _fail("'name' must be 1 to 64 letters, digits or '_.-', starting with a letter or digit")
    data_model = doc["data_model"]
    if not isinstance(data_model, str) or not DATA_MODEL_RE.match(data_model):
        raise _fail("'data_model' must be CODE:VERSION, e.g. stroke:0.1")
    datasets = _names(doc, "datasets", CODE_RE)
    variables = _names(doc, "variables", CODE_RE)
    algorithms = _names(doc, "algorithms", CODE_RE)
    unknown_algorithms = [a for a in algorithms if a not in ALGORITHMS]
    if unknown_algorithms:
        raise _fail(f"unknown algorithm(s) {', '.join(map(repr, unknown_algorithms))}; see `mipflow algorithms list`")
    population = doc.get("population") or {}
    if not isinstance(population, Mapping) or set(population) - {"filter"}:
        raise _fail("'population' must be an object with an optional 'filter' (a QueryBuilder rule group)")
    population_filter = _filter(population.get("filter"), "population.filter")
    raw_subgroups = doc.get("subgroups") or []
    if not isinstance(raw_subgroups, list) or len(raw_subgroups) > MAX_SUBGROUPS:
        raise _fail(f"'subgroups' must be a list of at most {MAX_SUBGROUPS} {{name, filter}} objects")
    subgroups: list[Subgroup] = []
    seen: dict[str, str] = {}
    for i, item in enumerate(raw_subgroups):
        if not isinstance(item, Mapping) or set(item) != {"name", "filter"}:
            raise _fail(f"subgroups[{i}] must be an object with exactly 'name' and 'filter'")
        if not isinstance(item["name"], str) or not NAME_RE.match(item["name"]):
            raise _fail(f"subgroups[{i}].name must be 1 to 64 letters, digits or '_.-'")
        sub_filter = _filter(item["filter"], f"subgroup {item['name']!r}")
        if sub_filter is None:
            raise _fail(f"subgroup {item['name']!r} has no filter (the whole population needs no subgroup)")
        subgroup = Subgroup(item["name"], sub_filter)
        if subgroup.name in {s.name for s in subgroups}:
            raise _fail(f"subgroup name {subgroup.name!r} is used twice")
        if subgroup.canonical in seen:
            raise _fail(f"subgroups {seen[subgroup.canonical]!r} and {subgroup.name!r} have the same filter")
        seen[subgroup.canonical] = subgroup.name
        subgroups.append(subgroup)
    note = doc.get("note", "")
    if not isinstance(note, str) or len(note) > 1000:
        raise _fail("'note' must be text of at most 1000 characters")
    histogram_bins = doc.get("histogram_bins", DEFAULT_HISTOGRAM_BINS)
    if isinstance(histogram_bins, bool) or not isinstance(histogram_bins, int) or not 1 <= histogram_bins <= 100:
        raise _fail("'histogram_bins' must be a whole number from 1 to 100 (the bins of every numerical "
                    "study variable's histogram)")
    survival = doc.get("survival")
    if survival is not None:
        width = survival.get("bin_width") if isinstance(survival, dict) else None
        if not isinstance(survival, dict) or not {"time", "bin_width"} <= set(survival) <= {"time", "bin_width", "event"} \
                or survival.get("time") not in variables or isinstance(width, bool) \
                or not isinstance(width, (int, float)) or not 0 < float(width) < float("inf") \
                or ("event" in survival and (survival["event"] not in variables
                                             or survival["event"] == survival["time"])):
            raise _fail("'survival' is {\"time\": a study variable, \"bin_width\": a positive number, and "
                        "optionally \"event\": a nominal study variable}: the grid of every Kaplan-Meier analysis "
                        "of the study (and its event variable)")
        survival = {"time": survival["time"], "bin_width": float(width),
                    **({"event": survival["event"]} if "event" in survival else {})}
    return Protocol(name=name, data_model=data_model, datasets=datasets, variables=variables,
                    population_filter=population_filter, subgroups=tuple(subgroups), algorithms=algorithms,
                    note=note, histogram_bins=histogram_bins, survival=survival,
                    data_transformation=_transformations(doc.get("data_transformation"), variables))


#: Row transformations a protocol may fix (``center``/``standardize`` are affine maps the central
#: site applies to the released moments: a request chooses them freely).
PROTOCOL_TRANSFORMS = ("log", "exp")


def _transformations(value: Any, variables: tuple[str, ...]) -> dict[str, tuple[str, ...]] | None:
    if value in (None, {}):
        return None
    usage = ("'data_transformation' is {\"log\": [study variables], \"exp\": [study variables]}, each variable "
             "at most once: the row transformations of pca_with_transformation (center and standardize are "
             "the request's choice)")
    if not isinstance(value, Mapping) or set(value) - set(PROTOCOL_TRANSFORMS):
        raise _fail(usage)
    out: dict[str, tuple[str, ...]] = {}
    seen: set[str] = set()
    for method in PROTOCOL_TRANSFORMS:
        codes = value.get(method, [])
        if not isinstance(codes, list) or any(c not in variables or c in seen for c in codes) \
                or len(set(codes)) != len(codes):
            raise _fail(usage)
        seen.update(codes)
        if codes:
            out[method] = tuple(codes)
    return out or None


def check_against_model(protocol: Protocol, model: Any) -> None:
    """The protocol's variables and filters name variables of ``model`` (a node's data model).

    Raises
    ------
    ConfigError
        Naming the unknown variables.
    """
    if protocol.data_model != model.key:
        raise _fail(f"data model {protocol.data_model} is not {model.key}")
    named = set(protocol.variables)
    for f in (protocol.population_filter, *(s.filter for s in protocol.subgroups)):
        named |= filter_variables(f)
    unknown = sorted(v for v in named if v not in model)
    if unknown:
        raise _fail(f"variable(s) {', '.join(map(repr, unknown))} are not in data model {model.key}")
    if protocol.survival is not None and model.variable(protocol.survival["time"]).is_categorical:
        raise _fail(f"the survival time {protocol.survival['time']!r} is not a numerical variable")
    transformed = [c for codes in (protocol.data_transformation or {}).values() for c in codes]
    nominal = [c for c in transformed if model.variable(c).is_categorical]
    if nominal:
        raise _fail(f"data_transformation names nominal variable(s) {', '.join(map(repr, nominal))}")
    event = None if protocol.survival is None else protocol.survival.get("event")
    if event is not None and not model.variable(event).is_categorical:
        raise _fail(f"the survival event {event!r} is not a nominal variable")


# --------------------------------------------------------------------------- canonical filters


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return value


def _canonical_value(operator: str, value: Any) -> Any:
    if isinstance(value, list):
        items = [_number(v) for v in value]
        if operator in ("in", "not_in"):  # a set of values: order and repeats do not matter
            return sorted(set(map(json.dumps, items)))
        return [json.dumps(v) for v in items]
    return json.dumps(_number(value))


def _canonical(node: Mapping[str, Any]) -> Any:
    if "rules" not in node and "condition" not in node:  # a rule
        field = node.get("id") if node.get("id") is not None else node.get("field")
        operator = node.get("operator")
        value = _canonical_value(operator, node.get("value")) if operator not in ("is_null", "is_not_null") else None
        return ["rule", field, operator, value]
    condition = str(node.get("condition", "AND")).upper()
    negate = bool(node.get("not", False))
    items: list[Any] = []
    for child in node["rules"]:
        canon = _canonical(child)
        # (a AND (b AND c)) is (a AND b AND c); a group of one rule is that rule
        if canon[0] == "group" and canon[1] == condition and not canon[2]:
            items.extend(canon[3])
        else:
            items.append(canon)
    items = sorted({json.dumps(i, sort_keys=True): i for i in items}.values(), key=lambda i: json.dumps(i))
    if len(items) == 1 and not negate:
        return items[0]
    return ["group", condition, negate, items]


def canonical_filter(filters: Any) -> str | None:
    """A filter's canonical text: equal for filters that differ only in writing, None for no filter.

    Ignored: the QueryBuilder's ``type``, ``input``, ``data``, ``flags`` and ``valid`` keys, the
    order of rules within a group, repeated rules, nesting of groups with the same condition, a
    group of one rule, ``65`` against ``65.0``, the order of an ``in`` list.  Not ignored: anything
    that can select other rows (another operator, value or variable).  Logically equivalent filters
    written with other operators (``age >= 65`` and ``NOT age < 65``) are different texts.

    Raises
    ------
    RequestError
        If ``filters`` is not a well-formed QueryBuilder rule group.
    """
    if filters in (None, {}):
        return None
    filter_variables(filters)  # structure checked first (raises RequestError)
    return json.dumps(_canonical(filters), sort_keys=True, separators=(",", ":"))


def describe_filter(filters: Any) -> str:
    """A short human reading of a filter (for messages naming a study's subgroups)."""
    if filters in (None, {}):
        return "no filter"

    def text(node: Mapping[str, Any]) -> str:
        if "rules" not in node:
            field = node.get("id") if node.get("id") is not None else node.get("field")
            value = node.get("value")
            return f"{field} {node.get('operator')}" + ("" if value is None else f" {json.dumps(value)}")
        inner = f" {str(node.get('condition', 'AND')).upper()} ".join(text(c) for c in node["rules"])
        inner = inner if len(node["rules"]) == 1 else f"({inner})"
        return f"NOT {inner}" if node.get("not") else inner

    return text(filters)
