"""Results and node data quality as HTML pages, CSV and inline SVG plots (no Airflow imports).

Any result renders: :func:`result_tables` turns the JSON of any algorithm into
tables by the shapes it finds (scalars, parallel lists, matrices keyed by
``variables``, lists of records, dicts of dicts), so algorithms added later need
no code here.  Some shapes also get a plot (:func:`result_plots`): coefficients
with confidence intervals (regressions), histograms, a correlation heat-map,
Kaplan-Meier curves (any dict holding ``time`` and ``survival`` lists) and a PCA
scree plot (``eigen_vals``).  Plots are drawn server-side with matplotlib (Agg)
and inlined as SVG: no front-end build.

Every number shown keeps its exact stored value in a ``data-value`` attribute,
so a reader (or a test) can check the page against the stored result.
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

#: Titles for fields whose meaning a reader would not guess from the key.
TITLES = {
    "tuckey_test": "Tukey HSD (pairwise comparisons)",
    "correlations": "Correlation coefficients",
    "p-values": "p-values",
    "low_confidence_intervals": "Lower confidence bounds",
    "high_confidence_intervals": "Upper confidence bounds",
    "histogram": "Histograms",
    "variable_based": "Per dataset",
    "model_based": "All datasets pooled",
    "eigen_vecs": "Eigenvectors",
    "centers": "Cluster centres",
}
MAX_PLOTS = 12


@dataclass
class Table:
    """A titled table of plain values (numbers, strings, None)."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _title(key: str) -> str:
    return TITLES.get(key, key.replace("_", " "))


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A record with nested dicts flattened to dotted keys; lists become text."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        elif isinstance(value, list):
            out[name] = ", ".join(format_value(v) for v in value) if all(_is_scalar(v) for v in value) \
                else json.dumps(value, default=str)
        else:
            out[name] = value
    return out


def _records_table(title: str, records: Sequence[Mapping[str, Any]]) -> Table:
    flat = [_flatten(r) for r in records]
    columns: list[str] = []
    for row in flat:
        columns.extend(k for k in row if k not in columns)
    return Table(title, columns, [[row.get(c) for c in columns] for row in flat])


def _list_fields(record: Mapping[str, Any]) -> dict[str, list]:
    return {k: v for k, v in record.items() if isinstance(v, list) and v and all(_is_scalar(x) for x in v)}


def _series_table(title: str, record: Mapping[str, Any]) -> Table:
    """One record holding parallel lists (``{"var": "age", "bins": [...], "counts": [...]}``): its
    scalars go in the title, its lists become columns.  Numeric ``bins`` one longer than the other
    lists are bin edges and become ``from``/``to`` columns."""
    lists = _list_fields(record)
    label = ", ".join(f"{k} = {format_value(v)}" for k, v in record.items() if _is_scalar(v) and v is not None)
    length = max(len(v) for v in lists.values())
    columns: list[str] = []
    data: list[list[Any]] = []
    edges = lists.get("bins")
    if edges and all(_is_number(b) for b in edges) and any(len(v) == len(edges) - 1 for v in lists.values()):
        length = len(edges) - 1
        columns += ["bins from", "bins to"]
        data += [edges[:-1], edges[1:]]
        lists = {k: v for k, v in lists.items() if k != "bins"}
    for key, values in lists.items():
        columns.append(key)
        data.append(list(values) + [None] * (length - len(values)))
    return Table(f"{title}: {label}" if label else title, columns,
                 [[column[i] for column in data] for i in range(length)])


def _matrix_table(title: str, value: Mapping[str, Any]) -> Table | None:
    """``{"variables": [names], name: [column of values], ...}`` (Exareme2's correlation shape)."""
    names = value.get("variables")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    cols = [k for k in value if k != "variables"]
    if not all(isinstance(value[c], list) and len(value[c]) == len(names) for c in cols):
        return None
    return Table(title, ["variable", *cols], [[n, *(value[c][i] for c in cols)] for i, n in enumerate(names)])


def _grid_table(title: str, grid: Sequence[Sequence[Any]]) -> Table:
    width = max((len(r) for r in grid), default=0)
    return Table(title, ["row", *(str(j) for j in range(width))],
                 [[i, *row, *([None] * (width - len(row)))] for i, row in enumerate(grid)])


def result_tables(result: Mapping[str, Any]) -> list[Table]:
    """Tables for any result document.

    Parameters
    ----------
    result : mapping
        An algorithm's result (Exareme2 field names).

    Returns
    -------
    list of Table
        ``Summary`` (top-level scalars), then one table per group of
        parallel lists (labelled by a list of strings of the same length, e.g.
        ``indep_vars``), per matrix, per list of records and per dict.
    """
    tables: list[Table] = []
    scalars = [[k, v] for k, v in result.items() if _is_scalar(v)]
    if scalars:
        tables.append(Table("Summary", ["field", "value"], scalars))

    # Parallel lists of scalars, grouped by length; a list of strings labels the rows.
    flat_lists = {k: v for k, v in result.items()
                  if isinstance(v, list) and v and all(_is_scalar(x) for x in v)}
    by_length: dict[int, list[str]] = {}
    for key, value in flat_lists.items():
        by_length.setdefault(len(value), []).append(key)
    for length, keys in by_length.items():
        labels = next((k for k in keys if all(isinstance(x, str) for x in flat_lists[k])), None)
        others = [k for k in keys if k != labels]
        if labels is None:
            columns, rows = ["#", *others], [[i, *(flat_lists[k][i] for k in others)] for i in range(length)]
        else:
            columns = [labels, *others]
            rows = [[flat_lists[labels][i], *(flat_lists[k][i] for k in others)] for i in range(length)]
        tables.append(Table(", ".join(_title(k) for k in others) or _title(labels or ""), columns, rows))

    dict_groups: dict[tuple[str, ...], list[str]] = {}
    for key, value in result.items():
        if _is_scalar(value) or key in flat_lists:
            continue
        if isinstance(value, list) and not value:
            tables.append(Table(_title(key), [key], []))
        elif isinstance(value, list) and all(isinstance(r, Mapping) for r in value):
            if any(_list_fields(r) for r in value):  # e.g. histograms, survival curves: one table each
                tables.extend(_series_table(_title(key), r) for r in value)
            else:
                tables.append(_records_table(_title(key), value))
        elif isinstance(value, list) and all(isinstance(r, list) and all(_is_scalar(x) for x in r) for r in value):
            tables.append(_grid_table(_title(key), value))
        elif isinstance(value, Mapping) and (matrix := _matrix_table(_title(key), value)) is not None:
            tables.append(matrix)
        elif isinstance(value, Mapping) and value and all(_is_scalar(v) for v in value.values()):
            dict_groups.setdefault(tuple(value), []).append(key)
        elif isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values()):
            tables.append(_records_table(_title(key), [{"key": k, **v} for k, v in value.items()]))
        else:
            tables.append(Table(_title(key), ["json"], [[json.dumps(value, default=str)]]))
    for inner, keys in dict_groups.items():  # e.g. two-way ANOVA: {"sum_sq": {term: v}, "df": {term: v}}
        tables.append(Table(", ".join(_title(k) for k in keys), ["", *keys],
                            [[name, *(result[k][name] for k in keys)] for name in inner]))
    return tables


# -- formatting -------------------------------------------------------------------

def format_value(value: Any) -> str:
    """How a cell reads: floats to 6 significant digits, None as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return f"{value:.6g}"
    return str(value)


def _cell(value: Any) -> str:
    text = html.escape(format_value(value))
    if _is_number(value):
        return f'<td class="num" data-value="{html.escape(repr(value))}">{text}</td>'
    return f"<td>{text}</td>"


def table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in table.rows)
    return (f'<section class="table"><h3>{html.escape(table.title)}</h3>'
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></section>")


def tables_csv(tables: Iterable[Table]) -> str:
    """All tables in one tidy CSV: ``table,row,column,value`` (exact values, no rounding)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["table", "row", "column", "value"])
    for table in tables:
        for i, row in enumerate(table.rows):
            label = row[0] if row and isinstance(row[0], str) else i
            for column, value in zip(table.columns, row):
                writer.writerow([table.title, label, column, "" if value is None else
                                 (repr(value) if isinstance(value, float) else value)])
    return out.getvalue()


# -- plots --------------------------------------------------------------------------

def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: inline in HTML


def _figure(width: float = 6.4, height: float = 3.6) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "mipflow"  # stable element ids
    return plt.subplots(figsize=(width, height))


def _finite(values: Sequence[Any]) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, str):
            v = {"Infinity": math.inf, "-Infinity": -math.inf}.get(v, math.nan)
        out.append(math.nan if v is None else float(v))
    return out


def coefficient_plot(result: Mapping[str, Any]) -> str | None:
    """Coefficients with their confidence intervals (needs ``indep_vars``, ``coefficients``,
    ``lower_ci``, ``upper_ci``)."""
    names, coef = result.get("indep_vars"), result.get("coefficients")
    lower, upper = result.get("lower_ci"), result.get("upper_ci")
    if not (isinstance(names, list) and isinstance(coef, list) and isinstance(lower, list)
            and isinstance(upper, list) and len(names) == len(coef) == len(lower) == len(upper) and names):
        return None
    coef, lower, upper = _finite(coef), _finite(lower), _finite(upper)
    fig, ax = _figure(6.4, 0.45 * len(names) + 1.2)
    ys = list(range(len(names)))[::-1]
    ax.errorbar(coef, ys, xerr=[[c - lo for c, lo in zip(coef, lower)], [hi - c for c, hi in zip(coef, upper)]],
                fmt="o", color="#1f5f99", ecolor="#7aa6cf", capsize=3)
    ax.axvline(0, color="#888", linewidth=0.8, linestyle="--")
    ax.set_yticks(ys, [str(n) for n in names])
    ax.set_xlabel("coefficient (confidence interval)")
    ax.set_title(f"{result.get('dependent_var', 'y')}: coefficients")
    return _svg(fig)


def histogram_plots(result: Mapping[str, Any]) -> list[str]:
    """One bar chart per histogram; suppressed cells (``None``) are marked, not drawn."""
    out = []
    for item in (result.get("histogram") or [])[:MAX_PLOTS]:
        bins, counts = item.get("bins") or [], item.get("counts") or []
        if not counts:
            continue
        fig, ax = _figure(5.2, 2.8)
        heights = [0 if c is None else c for c in counts]
        if len(bins) == len(counts) + 1 and all(_is_number(b) for b in bins):
            widths = [bins[i + 1] - bins[i] for i in range(len(counts))]
            ax.bar(bins[:-1], heights, width=widths, align="edge", color="#4c8bc4", edgecolor="white")
            positions = [b + w / 2 for b, w in zip(bins, widths)]
        else:
            labels = [str(b) for b in bins] if len(bins) == len(counts) else [str(i) for i in range(len(counts))]
            ax.bar(labels, heights, color="#4c8bc4", edgecolor="white")
            positions = list(range(len(counts)))
        for pos, count in zip(positions, counts):
            if count is None:
                ax.annotate("<", (pos, 0), ha="center", va="bottom", color="#b00", fontsize=8)
        group = f" | {item.get('grouping_var')} = {item.get('grouping_enum')}" if item.get("grouping_var") else ""
        ax.set_title(f"{item.get('var')}{group}", fontsize=10)
        ax.set_ylabel("count")
        out.append(_svg(fig))
    return out


def correlation_heatmap(result: Mapping[str, Any]) -> str | None:
    """Heat-map of ``correlations`` (Exareme2's ``{"variables": [...], name: [...]}``)."""
    matrix = result.get("correlations")
    table = _matrix_table("", matrix) if isinstance(matrix, Mapping) else None
    if table is None or len(table.rows) < 2:
        return None
    names = [r[0] for r in table.rows]
    values = [_finite(r[1:]) for r in table.rows]
    size = min(9.0, 1.2 + 0.6 * len(names))
    fig, ax = _figure(size + 1.2, size)
    image = ax.imshow(values, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(table.columns) - 1), table.columns[1:], rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    if len(names) <= 12:
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if abs(v) > 0.6 else "black")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_title("Pearson correlation")
    return _svg(fig)


def _survival_curves(value: Any, label: str = "") -> list[tuple[str, Mapping[str, Any]]]:
    """Every mapping holding equal-length ``time`` and ``survival`` lists, with a label."""
    found: list[tuple[str, Mapping[str, Any]]] = []
    if isinstance(value, Mapping):
        t, s = value.get("time"), value.get("survival")
        if isinstance(t, list) and isinstance(s, list) and len(t) == len(s) and t:
            name = value.get("group", value.get("group_level", value.get("name", label)))
            found.append((str(name) if name not in (None, "") else "all", value))
        else:
            for key, item in value.items():
                found.extend(_survival_curves(item, str(key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found.extend(_survival_curves(item, str(i)))
    return found


def survival_plot(result: Mapping[str, Any]) -> str | None:
    """Kaplan-Meier step curves (with ``ci_lower``/``ci_upper`` bands where present)."""
    curves = _survival_curves(result)
    if not curves:
        return None
    fig, ax = _figure(6.4, 3.8)
    for name, curve in curves[:MAX_PLOTS]:
        time, surv = _finite(curve["time"]), _finite(curve["survival"])
        if time[0] != 0:
            time, surv = [0.0, *time], [1.0, *surv]
        line, = ax.step(time, surv, where="post", label=name)
        lo, hi = curve.get("ci_lower"), curve.get("ci_upper")
        if isinstance(lo, list) and isinstance(hi, list) and len(lo) == len(hi) == len(curve["time"]):
            ax.fill_between(_finite(curve["time"]), _finite(lo), _finite(hi), step="post",
                            alpha=0.15, color=line.get_color())
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("time")
    ax.set_ylabel("survival probability")
    ax.set_title("Kaplan-Meier estimate")
    if len(curves) > 1:
        ax.legend(fontsize=8)
    return _svg(fig)


def scree_plot(result: Mapping[str, Any]) -> str | None:
    """PCA scree plot: eigenvalues and cumulative share of variance."""
    values = result.get("eigen_vals")
    if not (isinstance(values, list) and values and all(_is_number(v) for v in values)):
        return None
    total = sum(values) or 1.0
    fig, ax = _figure(5.2, 3.0)
    xs = list(range(1, len(values) + 1))
    ax.bar(xs, values, color="#4c8bc4")
    ax.set_xlabel("component")
    ax.set_ylabel("eigenvalue")
    share = ax.twinx()
    running = 0.0
    cumulative = []
    for v in values:
        running += v
        cumulative.append(running / total)
    share.plot(xs, cumulative, color="#c44e52", marker="o")
    share.set_ylim(0, 1.05)
    share.set_ylabel("cumulative share")
    ax.set_title("Scree plot")
    return _svg(fig)


def result_plots(result: Mapping[str, Any]) -> list[str]:
    """Every plot that fits the result's shape, as inline SVG strings."""
    plots = [coefficient_plot(result), correlation_heatmap(result), survival_plot(result), scree_plot(result)]
    return [p for p in plots if p] + histogram_plots(result)


# -- pages --------------------------------------------------------------------------

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;margin:.3rem 0 1rem}
th,td{border:1px solid #ccc;padding:.2rem .5rem;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f2f4f7}
.plots{display:flex;flex-wrap:wrap;gap:1rem}
.plots figure{margin:0}
.plots svg{max-width:100%;height:auto}
.muted{color:#666}
.bad{color:#a00}
"""


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")


def _inputdata(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    return (doc.get("request") or {}).get("inputdata") or {}


def _excluded_text(excluded: Mapping[str, str]) -> str:
    return "; ".join(f"{node}: {reason}" for node, reason in excluded.items())


def index_page(runs: Sequence[Mapping[str, Any]], *, link: Any) -> str:
    """The list of analysis runs.

    Parameters
    ----------
    runs : sequence of mapping
        Stored results (:meth:`mipflow.central.results.ResultStore.runs`), newest first.
    link : callable
        ``link(run_id, kind)`` -> URL of the run's page (``kind`` ``"html"``, ``"json"``, ``"csv"``).
    """
    if not runs:
        return page("Federated analysis results", '<p class="muted">No analysis has been stored yet.</p>')
    head = ["run", "when", "who", "algorithm", "data model", "datasets", "contributed (rows)", "left out",
            "download"]
    rows = []
    for doc in runs:
        inputdata = _inputdata(doc)
        contributed = doc.get("contributed") or {}
        rows.append(
            "<tr>"
            f'<td><a href="{html.escape(link(doc["run_id"], "html"))}">{html.escape(doc["run_id"])}</a></td>'
            f"<td>{html.escape(str(doc.get('created_at', '')))}</td>"
            f"<td>{html.escape(str(doc.get('triggered_by') or ''))}</td>"
            f"<td>{html.escape(doc.get('algorithm', ''))}</td>"
            f"<td>{html.escape(str(inputdata.get('data_model', '')))}</td>"
            f"<td>{html.escape(', '.join(inputdata.get('datasets') or []))}</td>"
            f"<td>{html.escape(', '.join(f'{n} ({r})' for n, r in contributed.items()))}</td>"
            f'<td class="bad">{html.escape(_excluded_text(doc.get("excluded") or {}))}</td>'
            f'<td><a href="{html.escape(link(doc["run_id"], "json"))}">JSON</a> '
            f'<a href="{html.escape(link(doc["run_id"], "csv"))}">CSV</a></td>'
            "</tr>")
    table = ("<table id=\"runs\"><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
             + "".join(rows) + "</tbody></table>")
    return page("Federated analysis results", table)


def provenance_table(doc: Mapping[str, Any]) -> Table:
    inputdata = _inputdata(doc)
    parameters = (doc.get("request") or {}).get("parameters") or {}
    rows: list[list[Any]] = [
        ["run", doc.get("run_id")], ["algorithm", doc.get("algorithm")], ["stored at", doc.get("created_at")],
        ["triggered by", doc.get("triggered_by")], ["data model", inputdata.get("data_model")],
        ["datasets", ", ".join(inputdata.get("datasets") or [])],
        ["y", ", ".join(inputdata.get("y") or [])], ["x", ", ".join(inputdata.get("x") or [])],
        ["filters", json.dumps(inputdata.get("filters")) if inputdata.get("filters") else ""],
        ["parameters", json.dumps(parameters, sort_keys=True) if parameters else ""],
        ["rounds", doc.get("rounds")], ["seconds", doc.get("seconds")], ["software", doc.get("software")],
        ["stopped", stopped_text(doc.get("stopped"))],
    ]
    return Table("Provenance", ["field", "value"], [r for r in rows if r[1] not in (None, "")])


def stopped_text(stopped: Mapping[str, Any] | None) -> str:
    """How an analysis that ended on refusals reads (``AnalysisOutcome.stopped``); "" if it did not."""
    if not stopped:
        return ""
    refusals = "; ".join(f"{node} refused ({r.get('control')})" for node, r in (stopped.get("refusals") or {}).items())
    return (f"ended at round {stopped.get('round')} on the rounds before it ({refusals}); "
            "every node contributed, see the result's own labels")


def nodes_table(doc: Mapping[str, Any]) -> Table:
    """Which nodes contributed (rows used, rows held per dataset) and which were left out, and why."""
    rows: list[list[Any]] = []
    held = doc.get("datasets") or {}
    for node, used in (doc.get("contributed") or {}).items():
        datasets = ", ".join(f"{d}: {'<min_row_count' if n is None else n}" for d, n in (held.get(node) or {}).items())
        rows.append([node, "contributed", used, datasets])
    for node, reason in (doc.get("excluded") or {}).items():
        rows.append([node, f"left out: {reason}", None, ""])
    return Table("Nodes", ["node", "status", "rows used", "rows held per dataset"], rows)


def result_page(doc: Mapping[str, Any], *, link: Any, back: str) -> str:
    """One result: provenance, nodes, plots, tables and download links."""
    result = doc.get("result") or {}
    plots = result_plots(result)
    parts = [
        f'<p><a href="{html.escape(back)}">All results</a> | '
        f'<a href="{html.escape(link(doc["run_id"], "json"))}">Download JSON</a> | '
        f'<a href="{html.escape(link(doc["run_id"], "csv"))}">Download CSV</a></p>',
        table_html(provenance_table(doc)),
        table_html(nodes_table(doc)),
    ]
    if plots:
        parts.append('<h2>Plots</h2><div class="plots">'
                     + "".join(f"<figure>{svg}</figure>" for svg in plots) + "</div>")
    parts.append('<h2>Result</h2><div id="result">' + "".join(table_html(t) for t in result_tables(result))
                 + "</div>")
    return page(f"{doc.get('algorithm', 'result')}: {doc.get('run_id', '')}", "".join(parts))


def result_csv(doc: Mapping[str, Any]) -> str:
    return tables_csv([provenance_table(doc), nodes_table(doc), *result_tables(doc.get("result") or {})])


# -- node data quality --------------------------------------------------------------

def audit_summary(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts of the node's audit log: by decision, client, endpoint / algorithm and refusal control."""
    summary: dict[str, Any] = {"total": 0, "first": None, "last": None, "by_decision": {}, "by_client": {},
                               "by_what": {}, "refusals_by_control": {}}

    def bump(key: str, name: Any) -> None:
        summary[key][str(name)] = summary[key].get(str(name), 0) + 1

    for rec in records:
        summary["total"] += 1
        summary["first"] = summary["first"] or rec.get("at")
        summary["last"] = rec.get("at")
        bump("by_decision", rec.get("decision", "?"))
        bump("by_client", rec.get("client") or "(unauthenticated)")
        what = rec.get("algorithm") and f"step:{rec['algorithm']}" or rec.get("what") or rec.get("endpoint", "?")
        bump("by_what", what)
        if rec.get("decision") != "allowed":
            bump("refusals_by_control", rec.get("control", "?"))
    return summary


def node_quality_page(quality: Mapping[str, Any]) -> str:
    """The node's data quality: batches, validation counts per rule, quarantine, consent, audit."""
    batches = quality.get("batches") or []
    parts = [f"<p>Node <b>{html.escape(str(quality.get('node', '')))}</b>. Counts only: no row, value or "
             "patient identifier is shown here.</p>"]
    parts.append(table_html(Table("Batches", [
        "batch", "data model", "source", "stage", "status", "rows in", "loaded", "quarantined", "no consent",
        "duplicates", "started", "finished", "message"], [
        [b["batch_id"], b["data_model"], b["source"], b["stage"], b["status"], b["rows_in"], b["loaded"],
         b["quarantined"], b["no_consent"], b["duplicates"], b["started_at"], b["finished_at"], b.get("message")]
        for b in batches])))
    rules = []
    for b in batches:
        for exp in (b.get("validation") or {}).get("expectations", []):
            rules.append([b["batch_id"], exp.get("column"), exp.get("expectation"), exp.get("success"),
                          exp.get("unexpected_count"), exp.get("element_count")])
    parts.append(table_html(Table("Validation rules per batch", [
        "batch", "column", "rule", "passed", "failing rows", "rows checked"], rules)))
    parts.append(table_html(Table("Quarantine per batch and reason", ["batch", "stage", "reason", "rows"],
                                  [[q["batch_id"], q["stage"], q["reason"], q["rows"]]
                                   for q in quality.get("quarantine") or []])))
    parts.append(table_html(Table("Consent withdrawals applied", ["at", "data model", "patients", "rows deleted"],
                                  [[c["at"], c["data_model"], c["patients"], c["rows_deleted"]]
                                   for c in quality.get("consent") or []])))
    audit = quality.get("audit") or audit_summary([])
    parts.append(table_html(Table("Audit log", ["field", "value"], [
        ["requests", audit["total"]], ["first", audit["first"]], ["last", audit["last"]],
        ["hash chain intact", quality.get("audit_chain_ok")]])))
    for key, title in (("by_decision", "Requests by decision"), ("by_client", "Requests by client"),
                       ("by_what", "Requests by endpoint / algorithm"),
                       ("refusals_by_control", "Refusals by control")):
        parts.append(table_html(Table(title, ["", "requests"], sorted(map(list, audit[key].items())))))
    return page("Node data quality", "".join(parts))
