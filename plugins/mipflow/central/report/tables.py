"""Any result as titled tables, by the shapes its JSON holds; tables as HTML and tidy CSV.

Every number shown keeps its exact stored value in a ``data-value`` attribute
(:func:`table_html`), and the CSV keeps exact values (:func:`tables_csv`).
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



@dataclass
class Table:
    """A titled table of plain values (numbers, strings, None)."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def is_number(value: Any) -> bool:
    """A real number (not a bool)."""
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
    if edges and all(is_number(b) for b in edges) and any(len(v) == len(edges) - 1 for v in lists.values()):
        length = len(edges) - 1
        columns += ["bins from", "bins to"]
        data += [edges[:-1], edges[1:]]
        lists = {k: v for k, v in lists.items() if k != "bins"}
    for key, values in lists.items():
        columns.append(key)
        data.append(list(values) + [None] * (length - len(values)))
    return Table(f"{title}: {label}" if label else title, columns,
                 [[column[i] for column in data] for i in range(length)])


def matrix_table(title: str, value: Mapping[str, Any]) -> Table | None:
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
        elif isinstance(value, Mapping) and (matrix := matrix_table(_title(key), value)) is not None:
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
    if is_number(value):
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
