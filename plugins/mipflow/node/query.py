"""How a node reads the rows an analysis needs, safely.

An analysis request names a data model, datasets, variables and an optional
filter in jQuery QueryBuilder JSON (the MIP / Exareme2 format)::

    {"condition": "AND", "not": false, "valid": true,
     "rules": [{"id": "alzheimerbroadcategory", "type": "string",
                "operator": "equal", "value": "AD"},
               {"condition": "OR", "rules": [...]}]}

This module checks such a request against the data model and turns it into a
SQLAlchemy ``select()`` on the data model's feature-store table.  Two rules
keep it safe:

* identifiers (columns) are only ever taken from the data model, looked up by
  the codes the request names; a name that is not a variable of the model is
  refused, never quoted into SQL;
* every value (filter operands, dataset codes) is checked against the
  variable's type and passed as a bound parameter.

Filters follow SQL's three-valued logic (as
:mod:`mipflow.algorithms.filters_pandas` does in memory): a comparison with a
missing value is unknown, ``NOT unknown`` is unknown, and a row is kept only
where the whole filter is true.  ``is_null``/``is_not_null`` are the only
operators that match missing values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import sqlalchemy as sa

from mipflow.protocol.datamodel import DataModel, Variable
from mipflow.exceptions import RequestError
from mipflow.node.store import KEY_COLUMNS, LINEAGE_COLUMNS, ROW_MD5_COLUMN, FeatureStore

#: Row identity a node may select for its own controls (``select_frame(row_identity=True)``).
ROW_IDENTITY_COLUMNS = ("_pid", "_visit")
#: On PostgreSQL's binary path the row identity travels as one fixed-width column instead: the MD5
#: (hex) of ``_pid + "\x1f" + dataset + "\x1f" + _visit``, kept by the server in a stored generated
#: column (:data:`mipflow.node.store.ROW_MD5_COLUMN`), what :func:`mipflow.node.controls.differencing.row_keys` computes
#: itself from the two columns on the other paths.
ROW_MD5 = ROW_MD5_COLUMN

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
#: Operators that fit categorical and free-text variables (no ordering).
_UNORDERED_OPERATORS = frozenset({"equal", "not_equal", "in", "not_in", "is_null", "is_not_null"})
_NO_VALUE_OPERATORS = frozenset({"is_null", "is_not_null"})
_RANGE_OPERATORS = frozenset({"between", "not_between"})
_LIST_OPERATORS = frozenset({"in", "not_in"})

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
#: Rows fetched per round trip by :func:`iter_frames`.
DEFAULT_CHUNKSIZE = 50_000

# Keys jQuery QueryBuilder itself writes; anything else is refused.
_GROUP_KEYS = frozenset({"condition", "rules", "not", "valid", "data", "flags"})
_RULE_KEYS = frozenset({"id", "field", "type", "input", "operator", "value", "data", "flags"})
#: Rule ``type`` and ``input`` values jQuery QueryBuilder writes (accepted, not used).
QB_TYPES = frozenset({"string", "integer", "double", "date", "time", "datetime", "boolean"})
QB_INPUTS = frozenset({"text", "number", "textarea", "radio", "checkbox", "select"})
#: Columns no request may read or filter on, whatever the data model declares.
_RESERVED_COLUMNS = frozenset(KEY_COLUMNS + LINEAGE_COLUMNS + (ROW_MD5_COLUMN,)) - {"dataset"}
_INT64_MAX = 2**63 - 1


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Rule:
    field: str
    operator: str
    value: Any
    has_value: bool


@dataclass(frozen=True)
class _Group:
    condition: str  # "AND" or "OR"
    negate: bool
    items: tuple["_Rule | _Group", ...]


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _parse(filters: Any) -> _Group | None:
    """Check a filter's structure (not its variables) and return its tree.

    ``None`` and ``{}`` mean "no filter".
    """
    if filters is None:
        return None
    if not isinstance(filters, Mapping):
        raise RequestError("filters must be a QueryBuilder rule group (a JSON object) or null")
    if not filters:
        return None
    if "rules" not in filters:
        raise RequestError("filters must be a QueryBuilder rule group with 'condition' and 'rules'")
    count = [0]
    return _parse_group(filters, depth=1, count=count)


def _parse_group(node: Mapping[str, Any], *, depth: int, count: list[int]) -> _Group:
    if depth > MAX_DEPTH:
        raise RequestError(f"filters are nested too deeply: at most {MAX_DEPTH} levels of rule groups")
    unknown = sorted(str(k) for k in node if k not in _GROUP_KEYS)
    if unknown:
        raise RequestError(f"filter group has unknown key(s) {', '.join(map(repr, unknown))}; "
                           f"allowed: {', '.join(sorted(_GROUP_KEYS))}")
    if node.get("valid", True) is not True:
        if node.get("valid") is False:
            raise RequestError("the filter is marked invalid ('valid': false) by the query builder")
        raise RequestError(f"filter key 'valid' must be true or false, got {_short(node.get('valid'))}")
    condition = node.get("condition", "AND")
    if not isinstance(condition, str) or condition.upper() not in ("AND", "OR"):
        raise RequestError(f"filter condition must be 'AND' or 'OR', got {_short(condition)}")
    negate = node.get("not", False)
    if not isinstance(negate, bool):
        raise RequestError(f"filter key 'not' must be true or false, got {_short(negate)}")
    rules = node.get("rules")
    if not isinstance(rules, list) or not rules:
        raise RequestError("a filter group needs a non-empty list of 'rules'")
    items: list[_Rule | _Group] = []
    for item in rules:
        count[0] += 1
        if count[0] > MAX_RULES:
            raise RequestError(f"filters hold too many rules: at most {MAX_RULES} rules and groups")
        if not isinstance(item, Mapping):
            raise RequestError(f"filter rule {_short(item)} is not a JSON object")
        if "rules" in item or "condition" in item:
            items.append(_parse_group(item, depth=depth + 1, count=count))
        else:
            items.append(_parse_rule(item))
    return _Group(condition=condition.upper(), negate=negate, items=tuple(items))


def _parse_rule(node: Mapping[str, Any]) -> _Rule:
    unknown = sorted(str(k) for k in node if k not in _RULE_KEYS)
    if unknown:
        raise RequestError(f"filter rule has unknown key(s) {', '.join(map(repr, unknown))}; "
                           f"allowed: {', '.join(sorted(_RULE_KEYS))}")
    ident, field = node.get("id"), node.get("field")
    if ident is not None and field is not None and ident != field:
        raise RequestError(f"filter rule names two variables: id {_short(ident)} and field {_short(field)}")
    name = ident if ident is not None else field
    if not isinstance(name, str) or not name:
        raise RequestError(f"filter rule needs the variable code in 'id' (or 'field'), got {_short(name)}")
    operator = node.get("operator")
    if not isinstance(operator, str) or operator not in SUPPORTED_OPERATORS:
        raise RequestError(f"filter rule on {name!r}: operator {_short(operator)} is not supported; "
                           f"supported: {', '.join(sorted(SUPPORTED_OPERATORS))}")
    qb_type = node.get("type")
    if qb_type is not None and (not isinstance(qb_type, str) or qb_type not in QB_TYPES):
        raise RequestError(f"filter rule on {name!r}: type {_short(qb_type)} is not a QueryBuilder type "
                           f"({', '.join(sorted(QB_TYPES))})")
    qb_input = node.get("input")
    if qb_input is not None and (not isinstance(qb_input, str) or qb_input not in QB_INPUTS):
        raise RequestError(f"filter rule on {name!r}: input {_short(qb_input)} is not a QueryBuilder input "
                           f"({', '.join(sorted(QB_INPUTS))})")
    return _Rule(field=name, operator=operator, value=node.get("value"), has_value="value" in node)


def _walk_rules(group: _Group) -> Iterator[_Rule]:
    for item in group.items:
        if isinstance(item, _Group):
            yield from _walk_rules(item)
        else:
            yield item


def filter_variables(filters: Mapping[str, Any] | None) -> set[str]:
    """The variable codes a filter refers to (structure checked, variables not).

    Raises
    ------
    RequestError
        If the filter is not a well-formed QueryBuilder rule group.
    """
    tree = _parse(filters)
    return set() if tree is None else {rule.field for rule in _walk_rules(tree)}


# --------------------------------------------------------------------------- compiling


def _variable(model: DataModel, code: Any, what: str) -> Variable:
    if not isinstance(code, str) or code not in model or code in _RESERVED_COLUMNS:
        raise RequestError(f"{what} {_short(code)} is not a variable of data model {model.key}")
    return model.variables[code]


def _check_text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RequestError(f"{what}: {_short(value)} is not text")
    if len(value) > MAX_TEXT_LENGTH:
        raise RequestError(f"{what}: text longer than {MAX_TEXT_LENGTH} characters")
    if "\x00" in value:
        raise RequestError(f"{what}: text must not contain NUL characters")
    return value


def _number(value: Any, var: Variable, *, exact: bool) -> int | float:
    """A JSON number for a numerical variable; ``exact`` asks integers of int variables."""
    what = f"filter value for {var.code!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{what}: {_short(value)} is not a number ({var.code} is {var.sql_type})")
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(f"{what}: {value!r} is not a finite number")
    if isinstance(value, int) and abs(value) > _INT64_MAX:
        raise RequestError(f"{what}: {value} is out of range")
    if var.sql_type == "int":
        if float(value).is_integer():
            return int(value)
        if exact:
            raise RequestError(f"{what}: {value!r} is not an integer ({var.code} is int)")
    return float(value)


def _code_to_db(var: Variable, code: str) -> Any:
    """An enumeration code as stored in the variable's column."""
    if var.sql_type == "text":
        return code
    try:
        number = float(code)
    except ValueError:
        raise RequestError(f"enumeration {code!r} of {var.code!r} is not a number, "
                           f"but {var.code} is stored as {var.sql_type}") from None
    if var.sql_type == "int":
        if not number.is_integer():
            raise RequestError(f"enumeration {code!r} of {var.code!r} is not an integer")
        return int(number)
    return number


def _category(value: Any, var: Variable) -> Any:
    """An enumeration code of a categorical variable, converted for its column."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RequestError(f"filter value for {var.code!r}: {_short(value)} is not an enumeration code")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RequestError(f"filter value for {var.code!r}: {value!r} is not a finite number")
        code = str(int(value)) if value.is_integer() else repr(value)
    else:
        code = str(value)
    if code not in var.enumeration_codes:
        raise RequestError(f"filter value for {var.code!r}: {_short(code)} is not one of its enumerations "
                           f"({', '.join(var.enumeration_codes)})")
    return _code_to_db(var, code)


def _sql_type(var: Variable, value: Any) -> sa.types.TypeEngine:
    if var.sql_type == "text":
        return sa.Text()
    if isinstance(value, int):
        return sa.BigInteger()
    return sa.Float(precision=53)


def _operand(value: Any, var: Variable, *, exact: bool) -> Any:
    if var.is_categorical:
        return _category(value, var)
    if var.sql_type == "text":
        return _check_text(value, f"filter value for {var.code!r}")
    return _number(value, var, exact=exact)


def _bind(value: Any, var: Variable) -> sa.BindParameter:
    return sa.bindparam(None, value, type_=_sql_type(var, value))


def _compile_rule(rule: _Rule, model: DataModel, table: sa.Table) -> sa.ColumnElement[bool]:
    var = _variable(model, rule.field, "filter field")
    column = table.c[var.code]
    op, value = rule.operator, rule.value
    if op not in _UNORDERED_OPERATORS and not var.is_numerical:
        kind = "categorical" if var.is_categorical else "text"
        raise RequestError(f"filter rule on {var.code!r}: operator {op!r} needs a numerical variable, "
                           f"but {var.code} is {kind} (use one of "
                           f"{', '.join(sorted(_UNORDERED_OPERATORS))})")
    if op in _NO_VALUE_OPERATORS:
        if value not in (None, [], ""):
            raise RequestError(f"filter rule on {var.code!r}: operator {op!r} takes no value, "
                               f"got {_short(value)}")
        return column.is_(None) if op == "is_null" else column.is_not(None)
    if not rule.has_value or value is None:
        raise RequestError(f"filter rule on {var.code!r}: operator {op!r} needs a value")
    if op in _LIST_OPERATORS:
        if not isinstance(value, list) or not value:
            raise RequestError(f"filter rule on {var.code!r}: operator {op!r} takes a non-empty list "
                               f"of values, got {_short(value)}")
        if len(value) > MAX_LIST_VALUES:
            raise RequestError(f"filter rule on {var.code!r}: at most {MAX_LIST_VALUES} values in a list")
        operands = [_operand(v, var, exact=True) for v in value]
        # One bound parameter per value, each typed like its column.
        binds = [_bind(v, var) for v in dict.fromkeys(operands)]
        return column.in_(binds) if op == "in" else column.not_in(binds)
    if op in _RANGE_OPERATORS:
        if not isinstance(value, list) or len(value) != 2:
            raise RequestError(f"filter rule on {var.code!r}: operator {op!r} takes a list of two "
                               f"values [low, high], got {_short(value)}")
        low, high = (_number(v, var, exact=False) for v in value)
        if low > high:
            raise RequestError(f"filter rule on {var.code!r}: {op!r} needs low <= high, got [{low}, {high}]")
        inside = column.between(_bind(low, var), _bind(high, var))
        return inside if op == "between" else sa.not_(inside)
    if isinstance(value, (list, dict)):
        raise RequestError(f"filter rule on {var.code!r}: operator {op!r} takes one value, "
                           f"got {_short(value)}")
    operand = _bind(_operand(value, var, exact=op in ("equal", "not_equal")), var)
    if op == "equal":
        return column == operand
    if op == "not_equal":
        return column != operand
    if op == "less":
        return column < operand
    if op == "less_or_equal":
        return column <= operand
    if op == "greater":
        return column > operand
    if op == "greater_or_equal":
        return column >= operand
    raise AssertionError(f"unhandled operator {op!r}")  # pragma: no cover - SUPPORTED_OPERATORS is closed


def _compile_group(group: _Group, model: DataModel, table: sa.Table) -> sa.ColumnElement[bool]:
    parts = [_compile_group(item, model, table) if isinstance(item, _Group)
             else _compile_rule(item, model, table) for item in group.items]
    combined = sa.and_(*parts) if group.condition == "AND" else sa.or_(*parts)
    # Group explicitly so NOT and nesting keep their meaning whatever SQLAlchemy flattens.
    combined = combined.self_group()
    return sa.not_(combined) if group.negate else combined


def compile_filters(filters: Mapping[str, Any] | None, model: DataModel,
                    table: sa.Table) -> sa.ColumnElement[bool] | None:
    """Check a QueryBuilder filter against a data model and compile it.

    Parameters
    ----------
    filters : dict or None
        A jQuery QueryBuilder rule group; ``None`` or ``{}`` for no filter.
    model : DataModel
        The data model the request names.
    table : sqlalchemy.Table
        The model's feature-store table (``FeatureStore.model_table(model)``).

    Returns
    -------
    sqlalchemy.ColumnElement or None
        A boolean expression whose values are all bound parameters, or None.

    Raises
    ------
    RequestError
        If the filter is malformed, too deep or too large, names a field that
        is not a variable of the model, uses an unsupported operator or one
        that does not fit the variable, or a value of the wrong type.
    """
    tree = _parse(filters)
    if tree is None:
        return None
    return _compile_group(tree, model, table)


# --------------------------------------------------------------------------- selecting


def _check_datasets(datasets: Any) -> list[str]:
    if isinstance(datasets, (str, bytes)) or not isinstance(datasets, Sequence):
        raise RequestError(f"datasets must be a list of dataset codes, got {_short(datasets)}")
    if not datasets:
        raise RequestError("datasets must name at least one dataset")
    if len(datasets) > MAX_DATASETS:
        raise RequestError(f"at most {MAX_DATASETS} datasets in one request")
    return list(dict.fromkeys(_check_text(d, "dataset code") for d in datasets))


def _check_variables(model: DataModel, variables: Any) -> list[Variable]:
    if isinstance(variables, (str, bytes)) or not isinstance(variables, Sequence):
        raise RequestError(f"variables must be a list of variable codes, got {_short(variables)}")
    unknown = [v for v in variables if not isinstance(v, str) or v not in model or v in _RESERVED_COLUMNS]
    if unknown:
        raise RequestError(f"variable(s) {', '.join(_short(v, 60) for v in unknown[:5])} "
                           f"{'is' if len(unknown) == 1 else 'are'} not in data model {model.key}")
    return [model.variables[code] for code in dict.fromkeys(variables)]


def _where(store: FeatureStore, model: DataModel, table: sa.Table, datasets: Any, variables: list[Variable],
           filters: Mapping[str, Any] | None, complete_case: bool) -> list[sa.ColumnElement[bool]]:
    codes = _check_datasets(datasets)
    clauses: list[sa.ColumnElement[bool]] = [table.c.dataset.in_(
        [sa.bindparam(None, code, type_=sa.String()) for code in codes])]
    compiled = compile_filters(filters, model, table)
    if compiled is not None:
        clauses.append(compiled)
    if complete_case:
        clauses += [table.c[var.code].is_not(None) for var in variables if var.code != "dataset"]
    if not sa.inspect(store.engine).has_table(table.name):
        raise RequestError(f"this node holds no data for data model {model.key}")
    return clauses


def _prepare(store: FeatureStore, model: DataModel, datasets: Any, variables: Any,
             filters: Mapping[str, Any] | None, complete_case: bool,
             row_identity: bool = False) -> tuple[sa.Select, list[Variable]]:
    table = store.model_table(model)
    chosen = _check_variables(model, variables)
    where = _where(store, model, table, datasets, chosen, filters, complete_case)
    columns = [table.c.dataset] + [table.c[v.code] for v in chosen if v.code != "dataset"]
    if row_identity:  # the node's own row keys, for its differencing controls (never released)
        columns += [table.c[c] for c in ROW_IDENTITY_COLUMNS]
    # A stable order makes results reproducible across backends and chunkings.
    statement = sa.select(*columns).where(*where).order_by(*(table.c[k] for k in KEY_COLUMNS))
    return statement, chosen


def select_statement(store: FeatureStore, model: DataModel, *, datasets: Sequence[str],
                     variables: Sequence[str], filters: Mapping[str, Any] | None = None,
                     complete_case: bool = True) -> sa.Select:
    """The ``select()`` behind :func:`select_frame` (checked; every value bound)."""
    return _prepare(store, model, datasets, variables, filters, complete_case)[0]


def _as_codes(series: pd.Series, var: Variable) -> pd.Series:
    """Stored values of a categorical variable as its enumeration codes (None if missing)."""
    lookup: dict[Any, str] = {}
    for code in var.enumeration_codes:
        try:
            lookup[_code_to_db(var, code)] = code
        except RequestError:
            continue

    def convert(value: Any) -> Any:
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return None
        if var.sql_type == "int":
            value = int(value)
        elif var.sql_type == "real":
            value = float(value)
        else:
            value = str(value)
        return lookup.get(value, str(value))

    # convert each distinct value once (few levels, many rows); -1 (missing) takes the last slot
    positions, uniques = pd.factorize(series, use_na_sentinel=True)
    codes = np.array([convert(v) for v in uniques.tolist()] + [None], dtype=object)
    return pd.Series(codes[positions], index=series.index, dtype=object)


def _as_text(series: pd.Series) -> pd.Series:
    values = series.astype(object)
    return values.where(series.notna(), None).astype(object)


def _typed(frame: pd.DataFrame, variables: list[Variable]) -> pd.DataFrame:
    """Numerical variables as float64, categorical and text ones as object (str or None)."""
    out = {"dataset": _as_text(frame["dataset"])}
    for var in variables:
        if var.code == "dataset":
            continue
        column = frame[var.code]
        if var.is_numerical:
            out[var.code] = pd.to_numeric(column, errors="raise").astype(np.float64)
        elif var.is_categorical:
            out[var.code] = _as_codes(column, var)
        else:
            out[var.code] = _as_text(column)
    for code in ROW_IDENTITY_COLUMNS:
        if code in frame.columns:
            out[code] = _as_text(frame[code])
    return pd.DataFrame(out, index=pd.RangeIndex(len(frame)))


def _empty(variables: list[Variable], row_identity: bool = False) -> pd.DataFrame:
    columns = {"dataset": pd.Series([], dtype=object)}
    for var in variables:
        if var.code != "dataset":
            columns[var.code] = pd.Series([], dtype=np.float64 if var.is_numerical else object)
    if row_identity:
        columns.update({code: pd.Series([], dtype=object) for code in ROW_IDENTITY_COLUMNS})
    return pd.DataFrame(columns)


def iter_frames(store: FeatureStore, model: DataModel, *, datasets: Sequence[str], variables: Sequence[str],
                filters: Mapping[str, Any] | None = None, complete_case: bool = True,
                chunksize: int = DEFAULT_CHUNKSIZE) -> Iterator[pd.DataFrame]:
    """:func:`select_frame` in chunks of at most ``chunksize`` rows.

    Rows are streamed (a server-side cursor on PostgreSQL), so memory stays
    bounded by the chunk size.  The request is checked before the first chunk.
    """
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"chunksize must be a positive integer, got {chunksize!r}")
    statement, chosen = _prepare(store, model, datasets, variables, filters, complete_case)
    return _stream(store, statement, chosen, chunksize)


def _stream(store: FeatureStore, statement: sa.Select, chosen: list[Variable],
            chunksize: int) -> Iterator[pd.DataFrame]:
    if store.dialect == "postgresql":
        yield from _stream_copy(store, statement, chosen, chunksize)
        return
    with store.engine.connect() as conn:
        conn = conn.execution_options(stream_results=True, max_row_buffer=chunksize)
        for chunk in pd.read_sql(statement, conn, chunksize=chunksize):
            if len(chunk):
                yield _typed(chunk, chosen)


def select_frame(store: FeatureStore, model: DataModel, *, datasets: Sequence[str], variables: Sequence[str],
                 filters: Mapping[str, Any] | None = None, complete_case: bool = True,
                 row_identity: bool = False) -> pd.DataFrame:
    """The rows of ``datasets`` that pass ``filters``, with column ``dataset`` and ``variables``.

    Parameters
    ----------
    store : FeatureStore
        The node's feature store.
    model : DataModel
        The data model the request names.
    datasets : sequence of str
        Dataset codes; codes the node does not hold simply match nothing.
    variables : sequence of str
        Variable codes to read (duplicates read once, order kept).
    filters : dict or None
        A jQuery QueryBuilder rule group (see :func:`compile_filters`).
    complete_case : bool
        Drop rows where any of ``variables`` is missing.
    row_identity : bool
        Also return the rows' store keys ``_pid`` and ``_visit`` (text, last),
        for the node's own differencing controls (:mod:`mipflow.node.controls.differencing`).
        They must never leave the node: only the node API asks for them, and
        :func:`mipflow.algorithms.contract.prepare_local_data` drops them.

    Returns
    -------
    pandas.DataFrame, shape (n_rows, 1 + n_variables [+ 2])
        ``dataset`` first, then the variables: numerical (int and real) ones as
        float64 (missing is NaN), categorical ones as their enumeration codes
        and text ones as str (object dtype, missing is None).

    Raises
    ------
    RequestError
        If a variable is not in the model, a dataset code is not a string, or
        the filter is invalid.
    """
    statement, chosen = _prepare(store, model, datasets, variables, filters, complete_case, row_identity)
    if store.dialect == "postgresql" and row_identity:
        store.ensure_row_md5(model)  # a store from before the row identity column: added once
    if store.dialect == "postgresql" and complete_case and all(v.is_numerical or v.is_categorical for v in chosen):
        frame = _binary_copy_frame(store, statement, chosen, _check_datasets(datasets), row_identity)
        if frame is not None:
            return frame
    frames = list(_stream(store, statement, chosen, DEFAULT_CHUNKSIZE))
    if not frames:
        return _empty(chosen, row_identity)
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True)


def count_rows(store: FeatureStore, model: DataModel, *, datasets: Sequence[str], variables: Sequence[str],
               filters: Mapping[str, Any] | None = None, complete_case: bool = True) -> int:
    """How many rows :func:`select_frame` would return (for disclosure checks before computing).

    Raises
    ------
    RequestError
        As :func:`select_frame`.
    """
    table = store.model_table(model)
    chosen = _check_variables(model, variables)
    where = _where(store, model, table, datasets, chosen, filters, complete_case)
    statement = sa.select(sa.func.count()).select_from(table).where(*where)
    with store.engine.connect() as conn:
        return int(conn.execute(statement).scalar_one())


def _copy_out(store: FeatureStore, statement: sa.Select, options: str, spool: Any) -> None:
    """PostgreSQL: ``COPY (statement) TO STDOUT WITH (options)`` into the binary file ``spool``.

    The statement's values are rendered by psycopg2's own quoting (``mogrify``,
    what it does for every query), never pasted as text.
    """
    with store.engine.connect() as conn:
        compiled = statement.compile(dialect=store.engine.dialect)
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            query = cursor.mogrify(str(compiled), compiled.params).decode()
            cursor.copy_expert(f"COPY ({query}) TO STDOUT WITH ({options})", spool)
        finally:
            cursor.close()


def _stream_copy(store: FeatureStore, statement: sa.Select, chosen: list[Variable],
                 chunksize: int) -> Iterator[pd.DataFrame]:
    """PostgreSQL: ``COPY (SELECT ...) TO STDOUT`` into a temporary file, read back in chunks.

    About three times faster than fetching rows through the driver.  The
    statement's values are rendered by psycopg2's own quoting (``mogrify``,
    what it does for every query), never pasted as text.  Floats round-trip
    exactly (PostgreSQL 12+ prints the shortest exact representation).
    """
    import tempfile

    dtypes = {"dataset": str, **{code: str for code in ROW_IDENTITY_COLUMNS}}
    for var in chosen:
        if var.code != "dataset":
            dtypes[var.code] = np.float64 if var.is_numerical else str
    with tempfile.TemporaryFile("w+b") as spool:
        _copy_out(store, statement, "FORMAT csv, HEADER true", spool)
        spool.seek(0)
        try:
            reader = pd.read_csv(spool, dtype=dtypes, keep_default_na=False, na_values=[""], chunksize=chunksize)
            for chunk in reader:
                if len(chunk):
                    yield _typed(chunk.reset_index(drop=True), chosen)
        except pd.errors.EmptyDataError:  # pragma: no cover - COPY always writes the header
            return


#: Header of PostgreSQL's binary COPY format: signature, flags, header extension length.
_PGCOPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_PGCOPY_HEADER = len(_PGCOPY_SIGNATURE) + 8
_PGCOPY_TRAILER = b"\xff\xff"


def _binary_copy_frame(store: FeatureStore, statement: sa.Select, chosen: list[Variable],
                       datasets: list[str], row_identity: bool = False) -> pd.DataFrame | None:
    """:func:`select_frame` for complete-case numerical and categorical variables on PostgreSQL.

    The same rows, in the same order, as the CSV ``COPY`` path, but each value
    travels as a fixed-width binary field: numbers as float8, the dataset and
    every categorical value as the 1-based position of its code in the list of
    codes (``array_position``), so the server formats no text and the client
    parses none; every record has the same layout and is read with numpy in
    chunks.  Returns None (the caller takes the CSV path) when a stored value
    is not one of its variable's codes, which the CSV path reports in its
    usual way.
    """
    import tempfile

    from sqlalchemy.dialects import postgresql as pg

    table = statement.selected_columns.dataset.table
    lists: list[tuple[str, list[str]]] = [("dataset", datasets)]
    columns = [sa.func.coalesce(sa.func.array_position(
        sa.bindparam(None, datasets, type_=pg.ARRAY(sa.String())), table.c.dataset), 0).label("dataset")]
    for var in chosen:
        if var.code == "dataset":
            continue
        column = table.c[var.code]
        if var.is_categorical:
            codes = list(var.enumeration_codes)
            stored = [_code_to_db(var, code) for code in codes]
            element = {"int": sa.BigInteger(), "real": sa.Float()}.get(var.sql_type, sa.String())
            lists.append((var.code, codes))
            columns.append(sa.func.coalesce(sa.func.array_position(
                sa.bindparam(None, stored, type_=pg.ARRAY(element)), column), 0).label(var.code))
        else:
            columns.append(sa.cast(column, pg.DOUBLE_PRECISION).label(var.code))
    if row_identity:  # 32 hex characters, kept by the server: one more fixed-width field (ROW_MD5)
        columns.append(table.c[ROW_MD5_COLUMN].label(ROW_MD5))
    binary = statement.with_only_columns(*columns, maintain_column_froms=True)
    # one record: int16 field count, then per field int32 length + payload (int4, float8 or 32 bytes)
    fields = [("_count", ">i2")]
    for i, column in enumerate(columns):
        is_position = i == 0 or any(name == column.name for name, _ in lists)
        kind = "S32" if column.name == ROW_MD5 else ">i4" if is_position else ">f8"
        fields += [(f"_len{i}", ">i4"), (column.name, kind)]
    record = np.dtype(fields)
    with tempfile.TemporaryFile("w+b") as spool:
        _copy_out(store, binary, "FORMAT binary", spool)
        size = spool.tell()
        n_rows, rest = divmod(size - _PGCOPY_HEADER - len(_PGCOPY_TRAILER), record.itemsize)
        spool.seek(0)
        header = spool.read(_PGCOPY_HEADER)
        if rest or n_rows < 0 or not header.startswith(_PGCOPY_SIGNATURE) or header[-4:] != b"\0\0\0\0":
            raise RuntimeError("unexpected PostgreSQL binary COPY layout")  # pragma: no cover
        out = {c.name: np.empty(n_rows, dtype={"i": np.int32, "S": "S32"}.get(record[c.name].kind, np.float64))
               for c in columns}
        done = 0
        while done < n_rows:
            chunk = np.fromfile(spool, dtype=record, count=min(DEFAULT_CHUNKSIZE, n_rows - done))
            if len(chunk) == 0:  # pragma: no cover - the size said otherwise
                raise RuntimeError("PostgreSQL binary COPY ended early")
            if (chunk["_count"] != len(columns)).any() or any(
                    (chunk[f"_len{i}"] < 0).any() for i in range(len(columns))):  # pragma: no cover
                raise RuntimeError("unexpected NULL or field count in PostgreSQL binary COPY")
            for c in columns:
                out[c.name][done:done + len(chunk)] = chunk[c.name]
            done += len(chunk)
    frame: dict[str, Any] = {}
    for name, codes in lists:
        positions = out.pop(name)
        if (positions == 0).any():
            return None  # a value outside the codes: the CSV path names it
        frame[name] = pd.Series(np.array(codes, dtype=object)[positions - 1], dtype=object)
    if row_identity:
        # bytes, not str: the same keyed hashes (mipflow.node.controls.differencing.row_keys) without decoding every row
        frame[ROW_MD5] = pd.Series(out.pop(ROW_MD5).astype(object), dtype=object)
    frame.update({name: pd.Series(values) for name, values in out.items()})
    order = ["dataset"] + [v.code for v in chosen if v.code != "dataset"] + ([ROW_MD5] if row_identity else [])
    return pd.DataFrame({name: frame[name] for name in order})
