"""The "New analysis" page: a form built from the catalogue and the federation's synced metadata,
and the run configuration it makes (no Airflow imports).

The researcher chooses an algorithm, a data model and a project (a GET form: the page is rebuilt
for them), then datasets (with the row counts the nodes released), variables (labels, types,
groups; only those the algorithm's inputs accept), parameters (levels of the chosen variables as
choices) and a filter: rows of variable, operator and value, combined with AND, made into jQuery
QueryBuilder JSON (:func:`filter_from_rows`); a QueryBuilder JSON text may be given instead.
:func:`build_conf` turns the posted form into the central DAG's ``conf``.
"""
from __future__ import annotations

import html
import json
from typing import Any, Mapping, Sequence

from mipflow.central.report.pages import page

#: Filter operators offered, with how they read (the node accepts these: mipflow.protocol.filters).
OPERATORS = {"equal": "=", "not_equal": "≠", "less": "<", "less_or_equal": "≤", "greater": ">",
             "greater_or_equal": "≥", "between": "between (a, b)", "in": "one of (a, b, ...)",
             "not_in": "none of (a, b, ...)", "is_null": "is missing", "is_not_null": "is not missing"}
#: Rows of each kind the form starts with (more are added in the page).
FILTER_ROWS = 2
MULTIPLE_ROWS = {"y": 2, "x": 3}


class FormError(ValueError):
    """The form cannot make a run: the message says which field and why (no data values)."""


def fits(variable: Mapping[str, Any], spec: Mapping[str, Any]) -> bool:
    """May this variable fill the input ``spec`` (catalogue ``inputs.y`` / ``inputs.x``)?"""
    nominal = bool(variable.get("isCategorical"))
    kind_ok = ("nominal" in spec["stattypes"] and nominal) or ("numerical" in spec["stattypes"] and not nominal)
    return kind_ok and variable.get("sql_type") in spec["types"]


def _values(form: Mapping[str, Sequence[str]], name: str) -> list[str]:
    return [v.strip() for v in form.get(name, []) if v is not None and v.strip() != ""]


def _one(form: Mapping[str, Sequence[str]], name: str) -> str:
    values = _values(form, name)
    return values[0] if values else ""


def _typed(text: str, sql_type: str, what: str) -> Any:
    if sql_type == "int":
        try:
            return int(text)
        except ValueError:
            raise FormError(f"{what}: an integer is expected") from None
    if sql_type == "real":
        try:
            return float(text)
        except ValueError:
            raise FormError(f"{what}: a number is expected") from None
    return text


def filter_from_rows(rows: Sequence[tuple[str, str, str]], variables: Sequence[Mapping[str, Any]]
                     ) -> dict[str, Any] | None:
    """Rows of (variable, operator, value) as one jQuery QueryBuilder AND group (None without rows).

    Values are typed by the variable (``int``, ``real``, ``text``); ``between`` takes two values and
    ``in`` / ``not_in`` several, separated by commas; ``is_null`` / ``is_not_null`` take none.
    A row without a variable is skipped.
    """
    by_code = {v["code"]: v for v in variables}
    rules = []
    for number, (code, operator, value) in enumerate(rows, start=1):
        if not code:
            continue
        what = f"filter row {number}"
        variable = by_code.get(code)
        if variable is None:
            raise FormError(f"{what}: unknown variable {code!r}")
        if operator not in OPERATORS:
            raise FormError(f"{what}: unknown operator {operator!r}")
        sql_type = str(variable.get("sql_type"))
        rule: dict[str, Any] = {"id": code, "field": code, "operator": operator,
                                "type": {"int": "integer", "real": "double"}.get(sql_type, "string"),
                                "input": "number" if sql_type in ("int", "real") else "text"}
        if operator in ("is_null", "is_not_null"):
            rule["value"] = None
        elif operator in ("between", "in", "not_in"):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            if operator == "between" and len(parts) != 2:
                raise FormError(f"{what}: 'between' takes two values separated by a comma")
            if not parts:
                raise FormError(f"{what}: give at least one value")
            rule["value"] = [_typed(p, sql_type, what) for p in parts]
        else:
            if value.strip() == "":
                raise FormError(f"{what}: give a value")
            rule["value"] = _typed(value.strip(), sql_type, what)
        levels = [e["code"] for e in variable.get("enumerations") or []]
        if levels and operator not in ("is_null", "is_not_null"):
            given = rule["value"] if isinstance(rule["value"], list) else [rule["value"]]
            if any(str(v) not in levels for v in given):
                raise FormError(f"{what}: {code} takes one of its levels ({', '.join(levels)})")
        rules.append(rule)
    return {"condition": "AND", "rules": rules, "valid": True} if rules else None


def build_conf(algorithm: Mapping[str, Any], form: Mapping[str, Sequence[str]],
               choices: Mapping[str, Any]) -> dict[str, Any]:
    """The central DAG's ``conf`` from a posted form.

    Parameters
    ----------
    algorithm : mapping
        The catalogue entry (:func:`mipflow.algorithms.catalogue.describe_algorithm`).
    form : mapping of str to list of str
        The posted fields (``parse_qs``): ``data_model``, ``project``, ``datasets``, ``y``, ``x``,
        ``param_<name>``, ``filter_var`` / ``filter_op`` / ``filter_value`` (parallel), ``filters_json``.
    choices : mapping
        :func:`mipflow.central.metadata.form_choices`.

    Raises
    ------
    FormError
        A required field is empty, a variable is not one the input accepts, a value has the wrong type.
    """
    model = _one(form, "data_model")
    if model not in choices:
        raise FormError("choose a data model the nodes hold")
    variables = choices[model]["variables"]
    by_code = {v["code"]: v for v in variables}
    project = _one(form, "project")
    if not project:
        raise FormError("project: required (the nodes check their grants for it)")
    datasets = list(dict.fromkeys(_values(form, "datasets")))
    if not datasets:
        raise FormError("datasets: choose at least one")
    conf: dict[str, Any] = {"data_model": model, "datasets": datasets, "project": project}
    for which in ("y", "x"):
        spec = algorithm["inputs"].get(which)
        if spec is None:
            continue
        codes = list(dict.fromkeys(_values(form, which)))
        for code in codes:
            if code not in by_code or not fits(by_code[code], spec):
                raise FormError(f"{which}: {code!r} is not a {' or '.join(spec['stattypes'])} variable "
                                f"of {model}")
        if not codes and spec["required"]:
            raise FormError(f"{which} ({spec['label']}): required")
        if not spec["multiple"] and len(codes) > 1:
            raise FormError(f"{which} ({spec['label']}): one variable")
        if codes:
            conf[which] = codes if spec["multiple"] else codes[0]
    for name, spec in algorithm["parameters"].items():
        text = _one(form, f"param_{name}")
        if text == "":
            if spec["required"]:
                raise FormError(f"{spec['label'] or name}: required")
            continue  # the node applies the default
        types = spec["types"]
        if "dict" in types:
            try:
                conf[name] = json.loads(text)
            except ValueError:
                raise FormError(f"{spec['label'] or name}: JSON expected") from None
        elif "text" in types:
            conf[name] = text
        elif "int" in types:
            conf[name] = _typed(text, "int", spec["label"] or name)
        elif "real" in types:
            conf[name] = _typed(text, "real", spec["label"] or name)
        else:
            conf[name] = text
    rows = list(zip(form.get("filter_var", []), form.get("filter_op", []), form.get("filter_value", [])))
    built = filter_from_rows([(c.strip(), o.strip(), v) for c, o, v in rows], variables)
    raw = _one(form, "filters_json")
    if raw and built:
        raise FormError("filters: use the filter rows or QueryBuilder JSON, not both")
    if raw:
        try:
            built = json.loads(raw)
        except ValueError:
            raise FormError("filters: the QueryBuilder JSON does not parse") from None
        if not isinstance(built, dict):
            raise FormError("filters: QueryBuilder JSON is an object")
    conf["filters"] = built
    return conf


# -- the page ----------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _options(items: Sequence[tuple[str, str]], chosen: str = "", empty: str | None = None) -> str:
    out = [f'<option value="">{_e(empty)}</option>'] if empty is not None else []
    out += [f'<option value="{_e(v)}"{" selected" if v == chosen else ""}>{_e(t)}</option>' for v, t in items]
    return "".join(out)


def variable_text(variable: Mapping[str, Any]) -> str:
    """``Age at admission (age; real)``, ``Sex (sex; nominal: M, F)``."""
    kind = "nominal: " + ", ".join(e["code"] for e in variable.get("enumerations") or []) \
        if variable.get("isCategorical") else str(variable.get("sql_type"))
    units = f", {variable['units']}" if variable.get("units") else ""
    return f"{variable.get('label') or variable['code']} ({variable['code']}; {kind}{units})"


def _variable_options(variables: Sequence[Mapping[str, Any]], chosen: str = "") -> str:
    """Options grouped by the data model's groups (``<optgroup>``)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for v in variables:
        groups.setdefault(str(v.get("group") or ""), []).append(v)
    out = ['<option value="">(none)</option>']
    for group, members in groups.items():
        opts = _options([(v["code"], variable_text(v)) for v in members], chosen)
        out.append(f'<optgroup label="{_e(group)}">{opts}</optgroup>' if group else opts)
    return "".join(out)


SCRIPT = """
function levelsOf(codes){const out=[];for(const c of codes){for(const l of (LEVELS[c]||[])){if(!out.includes(l))out.push(l);}}return out;}
function refreshLevels(){
  for(const sel of document.querySelectorAll('select[data-levels-from]')){
    const from=sel.dataset.levelsFrom, keep=sel.value;
    const codes=[...document.querySelectorAll('select[name="'+from+'"]')].map(s=>s.value).filter(Boolean);
    sel.innerHTML='<option value=""></option>'+levelsOf(codes).map(l=>'<option>'+l.replace(/[<&"]/g,'')+'</option>').join('');
    sel.value=keep;
  }
}
function addRow(id){const box=document.getElementById(id);const row=box.lastElementChild.cloneNode(true);
  for(const f of row.querySelectorAll('input,select')){f.value='';} box.appendChild(row);}
document.addEventListener('change',e=>{if(e.target.matches('select[name=y],select[name=x]'))refreshLevels();});
document.addEventListener('DOMContentLoaded',refreshLevels);
"""


def new_analysis_page(catalogue: Sequence[Mapping[str, Any]], choices: Mapping[str, Any], *,
                      algorithm: str, data_model: str, project: str, user: str, action: str,
                      sync_action: str, back: str, error: str = "", synced_at: str | None = None) -> str:
    """The "New analysis" page.

    Parameters
    ----------
    catalogue : sequence of mapping
        :func:`mipflow.algorithms.catalogue.describe`.
    choices : mapping
        :func:`mipflow.central.metadata.form_choices` for this user and ``project``.
    algorithm, data_model, project : str
        The current choices (the first form); the second form is built for them.
    user : str
        Who is logged in (the run is on their behalf).
    action, sync_action, back : str
        URLs: where the analysis form posts, where "sync my datasets" posts, the results list.
    error : str
        Why the last submission made no run (shown above the form).
    """
    algos = {a["name"]: a for a in catalogue}
    entry = algos.get(algorithm)
    models = sorted(choices)
    data_model = data_model if data_model in choices else (models[0] if len(models) == 1 else data_model)
    parts = [f'<p><a href="{_e(back)}">All results</a></p>',
             f'<p class="muted">As <b id="who">{_e(user)}</b>: the run is triggered in Airflow on your behalf, '
             "and every node checks your grants for the project.</p>"]
    if error:
        parts.append(f'<p class="bad" id="form-error">Not started: {_e(error)}</p>')
    parts.append(
        '<form id="choose" method="get" action=""><fieldset><legend>1. What</legend>'
        '<label>Algorithm <select name="algorithm" onchange="this.form.submit()">'
        + _options([(a["name"], a["label"]) for a in catalogue], algorithm, "(choose)") + "</select></label> "
        '<label>Data model <select name="data_model" onchange="this.form.submit()">'
        + _options([(k, f"{choices[k]['label']} ({k})") for k in models], data_model, "(choose)")
        + "</select></label> "
        f'<label>Project <input name="project" value="{_e(project)}" required></label> '
        '<button type="submit">Show the form</button></fieldset></form>')
    if project:  # what the nodes hold and, for this researcher and project, their datasets
        sync = (f'<form id="sync" method="post" action="{_e(sync_action)}">'
                f'<input type="hidden" name="project" value="{_e(project)}">'
                f'<input type="hidden" name="algorithm" value="{_e(algorithm)}">'
                f'<input type="hidden" name="data_model" value="{_e(data_model)}">'
                '<button type="submit">Refresh my datasets from the nodes</button>'
                + (f' <span class="muted">last synced {_e(synced_at)}</span>' if synced_at else "") + "</form>")
        parts.append(sync)
    if not models:
        parts.append('<p class="muted" id="no-models">No data model synced yet: refresh from the nodes '
                     "(give a project first).</p>")
    if entry is None or data_model not in choices or not project:
        return page("New analysis", "".join(parts))
    model = choices[data_model]
    datasets = model["datasets"]
    body = [f'<form id="analysis" method="post" action="{_e(action)}">',
            f'<input type="hidden" name="algorithm" value="{_e(algorithm)}">',
            f'<input type="hidden" name="data_model" value="{_e(data_model)}">',
            f'<input type="hidden" name="project" value="{_e(project)}">',
            f'<p class="muted">{_e(entry["description"])}</p>',
            "<fieldset><legend>2. Datasets</legend>"]
    if not datasets:
        body.append('<p class="muted" id="no-datasets">No dataset listed for you in this project yet: refresh '
                    "your datasets above (nodes list only those you are approved for).</p>")
    for d in datasets:
        counts = ", ".join(f"{n}: {'fewer than the minimum' if c is None else c}" for n, c in d["nodes"].items())
        body.append(f'<label class="dataset"><input type="checkbox" name="datasets" value="{_e(d["dataset"])}">'
                    f" {_e(d['dataset'])} <span class=\"muted\">({_e(counts)} rows)</span></label><br>")
    body.append("</fieldset><fieldset><legend>3. Variables</legend>")
    for which in ("y", "x"):
        spec = entry["inputs"].get(which)
        if spec is None:
            continue
        usable = [v for v in model["variables"] if fits(v, spec)]
        need = "required" if spec["required"] else "optional"
        rows = MULTIPLE_ROWS[which] if spec["multiple"] else 1
        selects = "".join(f'<div><select name="{which}" aria-label="{which} {i + 1}">'
                          f"{_variable_options(usable)}</select></div>" for i in range(rows))
        more = (f' <button type="button" onclick="addRow(\'{which}-rows\')">add another</button>'
                if spec["multiple"] else "")
        body.append(f'<div class="input"><b>{_e(spec["label"] or which)}</b> <span class="muted">({need}; '
                    f"{_e(' or '.join(spec['stattypes']))}{'; several, in order' if spec['multiple'] else ''})"
                    f'</span><div id="{which}-rows">{selects}</div>{more}'
                    f'<div class="muted">{_e(spec["description"])}</div></div>')
    body.append("</fieldset>")
    if entry["parameters"]:
        body.append("<fieldset><legend>4. Parameters</legend>")
        for name, spec in entry["parameters"].items():
            need = "required" if spec["required"] else f"optional, default {spec['default']}" \
                if spec["default"] is not None else "optional"
            label = f'{_e(spec["label"] or name)} <span class="muted">({_e(need)})</span>'
            if spec["enum"]:
                field = (f'<select name="param_{_e(name)}">' + _options(
                    [(str(v), str(v)) for v in spec["enum"] if v is not None],
                    str(spec["default"] if spec["default"] is not None else ""), "" if not spec["required"] else None)
                    + "</select>")
            elif spec["enum_from"] or (name.endswith(("_level", "_class")) and "text" in spec["types"]):
                source = spec["enum_from"] or "y"
                field = f'<select name="param_{_e(name)}" data-levels-from="{_e(source)}"></select>'
            else:
                field = f'<input name="param_{_e(name)}" value="" placeholder="{_e(spec["default"] or "")}">'
            body.append(f"<div><label>{label} {field}</label></div>")
        body.append("</fieldset>")
    op_options = _options(list(OPERATORS.items()), "equal")
    filter_row = (f'<div class="filter-row"><select name="filter_var" aria-label="filter variable">'
                  f'{_variable_options(model["variables"])}</select> <select name="filter_op" '
                  f'aria-label="filter operator">{op_options}</select> <input name="filter_value" '
                  'aria-label="filter value" placeholder="value (a, b for between / one of)"></div>')
    body.append('<fieldset><legend>5. Filter (rows combined with AND; optional)</legend>'
                f'<div id="filter-rows">{filter_row * FILTER_ROWS}</div>'
                '<button type="button" onclick="addRow(\'filter-rows\')">add a condition</button>'
                '<details><summary>or paste jQuery QueryBuilder JSON</summary>'
                '<textarea name="filters_json" rows="4" cols="80"></textarea></details></fieldset>')
    body.append('<p><button type="submit" id="run">Run the analysis</button></p></form>')
    levels = {v["code"]: [e["code"] for e in v.get("enumerations") or []] for v in model["variables"]}
    levels_json = json.dumps(levels).replace("<", "\\u003c")  # nothing closes the script element
    script = f"<script>const LEVELS={levels_json};{SCRIPT}</script>"
    parts.append("".join(body) + script)
    return page(f"New analysis: {entry['label']}", "".join(parts))


def submitted_page(*, run_id: str, dag_id: str, result: str, airflow_run: str, back: str,
                   stored: bool) -> str:
    """After a trigger: the run's id, links to its result and to the run in Airflow; refreshes until stored."""
    refresh = "" if stored else '<meta http-equiv="refresh" content="2">'
    state = (f'<p id="ready">The result is stored: <a id="result-link" href="{_e(result)}">open it</a>.</p>'
             if stored else '<p class="muted" id="waiting">Running: this page refreshes until the result is '
                            "stored.</p>")
    body = (refresh + f'<p>Started run <b id="run-id">{_e(run_id)}</b> of {_e(dag_id)}.</p>{state}'
            f'<p><a id="airflow-run" href="{_e(airflow_run)}" target="_top">Run in Airflow</a> | '
            f'<a href="{_e(result)}">Result page</a> | <a href="{_e(back)}">All results</a></p>')
    return page("Analysis started", body)
