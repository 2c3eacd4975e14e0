"""The algorithm catalogue, read from the algorithm classes (their one declaration).

Each algorithm class declares its name, label, description, inputs
(:class:`~mipflow.algorithms.spec.InputSpec`) and parameters
(:class:`~mipflow.algorithms.spec.ParamSpec`) once; nodes validate requests
against those declarations, and everything else is derived from them here:

- :func:`describe`: the catalogue as JSON-ready dicts (``mipflow algorithms list --json``);
- :func:`parameter_schema` / :func:`input_schema`: the JSON Schema of a form
  field, which the central DAGs pass to Airflow's ``Param`` unchanged, so the
  trigger form offers exactly the defaults, bounds and choices a node accepts;
- :func:`format_table`: the human-readable listing.

Importing this module costs numpy but not pandas, scipy or statsmodels (the
algorithm modules import those inside the functions that compute), so DAG
files can build their forms from it and stay cheap to parse
(docs/adr/0022-algorithm-catalogue.md).
"""
from __future__ import annotations

from typing import Any

from mipflow.algorithms import ALGORITHMS
from mipflow.algorithms.spec import InputSpec, ParamSpec, SpecAlgorithm

#: Exareme2 type -> JSON Schema type.
JSON_TYPES = {"int": "integer", "real": "number", "text": "string", "dict": "object"}


def _json_type(types: list[str]) -> str | list[str]:
    return types[0] if len(types) == 1 else types


def parameter_schema(spec: ParamSpec) -> dict[str, Any]:
    """The JSON Schema of a parameter's form field (keyword arguments of Airflow's ``Param``).

    ``default`` is present unless the parameter is required (then the field
    starts empty and must be filled).  An optional parameter also accepts
    null (an emptied field): the node then applies the default.  A field that
    takes text lists ``"string"`` first, so forms show a text box.

    Parameters
    ----------
    spec : ParamSpec

    Returns
    -------
    dict
        ``type``, ``title`` and, where they apply, ``default``,
        ``description``, ``minimum`` / ``exclusiveMinimum``, ``maximum`` /
        ``exclusiveMaximum``, ``enum``, ``minLength``.
    """
    types = sorted(dict.fromkeys(JSON_TYPES[t] for t in spec.types), key=lambda t: t != "string")
    if spec.optional:
        types.append("null")
    schema: dict[str, Any] = {"type": _json_type(types), "title": spec.label or ""}
    if not spec.required:
        schema["default"] = spec.default
    if spec.description:
        schema["description"] = spec.description
    if spec.min is not None:
        schema["exclusiveMinimum" if spec.min_exclusive else "minimum"] = spec.min
    if spec.max is not None:
        schema["exclusiveMaximum" if spec.max_exclusive else "maximum"] = spec.max
    if spec.enums is not None:
        schema["enum"] = [*spec.enums, *([None] if spec.optional else [])]
    if spec.required and "string" in types:
        schema["minLength"] = 1
    return schema


def input_schema(which: str, spec: InputSpec) -> dict[str, Any]:
    """The JSON Schema of the form field for input ``which`` (``"y"`` or ``"x"``): variable codes.

    A list input is an array of codes (at least one if ``notblank``); a single
    one is a code, which may be left empty unless ``notblank``.  An optional
    input also accepts null: Airflow's form sends null for an emptied field, and
    a type without null would make the field required there (issue 15).
    """
    kinds = f"{' or '.join(spec.stattypes)} ({'/'.join(spec.types)})"
    description = f"{spec.description} {'Variable codes' if spec.multiple else 'A variable code'}: {kinds}."
    schema: dict[str, Any] = {"title": f"{which}: {spec.label}" if spec.label else which,
                              "description": description.strip()}
    if spec.multiple:
        schema |= {"type": "array" if spec.notblank else ["array", "null"], "items": {"type": "string"},
                   "default": []}
        if spec.notblank:
            schema["minItems"] = 1
    elif spec.notblank:
        schema |= {"type": "string", "minLength": 1, "default": ""}
    else:
        schema |= {"type": ["string", "null"], "default": None}
    return schema


def _describe_input(which: str, spec: InputSpec | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    return {"label": spec.label, "description": spec.description, "types": list(spec.types),
            "stattypes": list(spec.stattypes), "required": spec.notblank, "multiple": spec.multiple,
            "form": input_schema(which, spec)}


def _describe_parameter(spec: ParamSpec) -> dict[str, Any]:
    return {"label": spec.label, "description": spec.description, "types": list(spec.types),
            "default": spec.default, "required": spec.required, "optional": spec.optional,
            "minimum": spec.min, "maximum": spec.max,
            "exclusive_minimum": spec.min_exclusive, "exclusive_maximum": spec.max_exclusive,
            "enum": None if spec.enums is None else list(spec.enums), "enum_from": spec.enums_from,
            "form": parameter_schema(spec)}


def describe_algorithm(algorithm: SpecAlgorithm) -> dict[str, Any]:
    """One algorithm's catalogue entry (JSON-ready).

    Returns
    -------
    dict
        ``name``, ``label``, ``description``, ``inputs`` (``y`` and ``x``:
        label, description, types, stattypes, required, multiple, form
        schema; ``x`` is None when the algorithm takes no covariates) and
        ``parameters`` (wire name -> label, description, types, default,
        required, optional, bounds, enum, enum_from and the form schema), in
        declaration order.  ``preprocessing``: the transformers the algorithm takes
        (``longitudinal_transformer`` for the compatible ones: its Exareme2 spec and form schema).
    """
    return {"name": algorithm.name, "label": algorithm.label, "description": algorithm.description,
            "inputs": {"y": _describe_input("y", algorithm.y_spec), "x": _describe_input("x", algorithm.x_spec)},
            "parameters": {name: _describe_parameter(spec) for name, spec in algorithm.parameter_specs.items()},
            "preprocessing": _describe_preprocessing(algorithm.name)}


def transformer_schema() -> dict[str, Any]:
    """The JSON Schema of the longitudinal transformer's form field (an object, or null for none)."""
    from mipflow.algorithms.longitudinal import SPEC

    return {"type": ["object", "null"], "default": None, "title": SPEC["label"],
            "description": SPEC["desc"] + ' Written {"visit1": "BL", "visit2": "FL1", "strategies": '
                                          '{"<variable>": "diff" | "first" | "second", ...}}, one strategy per '
                                          "variable of x and y; empty for none."}


def _describe_preprocessing(name: str) -> dict[str, Any]:
    """The transformers ``name`` takes (Exareme2's ``preprocessing``), with their form schema."""
    from mipflow.algorithms.longitudinal import COMPATIBLE, SPEC

    if name not in COMPATIBLE:
        return {}
    return {SPEC["name"]: {"label": SPEC["label"], "description": SPEC["desc"], "parameters": SPEC["parameters"],
                           "form": transformer_schema()}}


def describe() -> list[dict[str, Any]]:
    """The catalogue: every algorithm a node offers, by name (JSON-ready).

    Returns
    -------
    list of dict
        :func:`describe_algorithm` of each algorithm in
        :data:`mipflow.algorithms.ALGORITHMS`, sorted by name.
    """
    return [describe_algorithm(ALGORITHMS[name]) for name in sorted(ALGORITHMS)]  # type: ignore[arg-type]


def _number(value: float | int) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _bounds(entry: dict[str, Any]) -> str:
    low, high = entry["minimum"], entry["maximum"]
    if low is None and high is None:
        return ""
    left = "-inf" if low is None else _number(low)
    right = "inf" if high is None else _number(high)
    return (f"{'(' if entry['exclusive_minimum'] or low is None else '['}{left}, "
            f"{right}{')' if entry['exclusive_maximum'] or high is None else ']'}")


def format_table(catalogue: list[dict[str, Any]]) -> str:
    """The catalogue as text: per algorithm its inputs and a table of its parameters."""
    lines: list[str] = []
    for entry in catalogue:
        lines.append(f"{entry['name']}: {entry['label']}")
        for which, item in entry["inputs"].items():
            if item is None:
                lines.append(f"  {which}: none")
                continue
            count = ("one or more" if item["required"] else "any number") if item["multiple"] else (
                "one" if item["required"] else "optional, one")
            lines.append(f"  {which}: {count} {'/'.join(item['stattypes'])} ({'/'.join(item['types'])})"
                         f" - {item['label']}")
        rows = []
        for name, p in entry["parameters"].items():
            choices = (f"one of {', '.join(map(str, p['enum']))}" if p["enum"] is not None
                       else f"a level of {p['enum_from']}" if p["enum_from"] else _bounds(p))
            default = "required" if p["required"] else ("(none)" if p["default"] is None else repr(p["default"]))
            rows.append((name, "/".join(p["types"]), default, choices, p["label"]))
        if rows:
            widths = [max(len(r[i]) for r in rows) for i in range(4)]
            for row in rows:
                lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
        for name in entry.get("preprocessing") or {}:
            lines.append(f"  preprocessing: {name} (visit1, visit2, a strategy per variable: diff/first/second)")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
