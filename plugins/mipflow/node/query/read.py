"""How a node reads the rows an analysis needs, safely.

The request's datasets and variables are checked against the data model, its
filter is compiled by :func:`mipflow.node.query.filters.compile_filters`, and
the rows come back as typed pandas frames (:func:`select_frame`,
:func:`iter_frames`) or as a count (:func:`count_rows`).  On PostgreSQL the
rows travel through ``COPY``: as CSV here, or as fixed-width binary records
decoded by :mod:`mipflow.node.query.pgcopy` for complete-case numerical and
categorical selections.
"""
from __future__ import annotations

import logging
import math
import sqlite3
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import sqlalchemy as sa

from mipflow.exceptions import RequestError
from mipflow.node.query.filters import RESERVED_COLUMNS, check_text, code_to_db, compile_filters, short_repr
from mipflow.node.query.pgcopy import binary_copy_frame, copy_out
from mipflow.node.query.rowkeys import KEY_OWNER, PID_KEY, ROW_KEY, identity_keys, key_fingerprint
from mipflow.node.store.feature_store import FeatureStore
from mipflow.node.store.tables import KEY_COLUMNS
from mipflow.protocol.datamodel import DataModel, Variable
from mipflow.protocol.filters import MAX_DATASETS

log = logging.getLogger(__name__)

#: Row identity a node may select for its own controls (``select_frame(row_identity=True)``).
ROW_IDENTITY_COLUMNS = ("_pid", "_visit")
#: Rows fetched per round trip by :func:`iter_frames`.
DEFAULT_CHUNKSIZE = 50_000
#: SQLite page cache (``PRAGMA cache_size``, negative: KiB) while :func:`sqlite_columns` reads a
#: selection: the rows stream past once, the file stays in the OS's cache (ADR 0044).
READ_PAGE_CACHE_KIB = -8192


def _check_datasets(datasets: Any) -> list[str]:
    if isinstance(datasets, (str, bytes)) or not isinstance(datasets, Sequence):
        raise RequestError(f"datasets must be a list of dataset codes, got {short_repr(datasets)}")
    if not datasets:
        raise RequestError("datasets must name at least one dataset")
    if len(datasets) > MAX_DATASETS:
        raise RequestError(f"at most {MAX_DATASETS} datasets in one request")
    return list(dict.fromkeys(check_text(d, "dataset code") for d in datasets))


def _check_variables(model: DataModel, variables: Any) -> list[Variable]:
    if isinstance(variables, (str, bytes)) or not isinstance(variables, Sequence):
        raise RequestError(f"variables must be a list of variable codes, got {short_repr(variables)}")
    unknown = [v for v in variables if not isinstance(v, str) or v not in model or v in RESERVED_COLUMNS]
    if unknown:
        raise RequestError(f"variable(s) {', '.join(short_repr(v, 60) for v in unknown[:5])} "
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
            lookup[code_to_db(var, code)] = code
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
        try:
            streaming = conn.execution_options(stream_results=True, max_row_buffer=chunksize)
            for chunk in pd.read_sql(statement, streaming, chunksize=chunksize):
                if len(chunk):
                    yield _typed(chunk, chosen)
        finally:
            release_page_cache(conn)


def release_page_cache(conn: sa.Connection) -> None:
    """SQLite: free the pages a read left in the connection's page cache (ADR 0044).

    The store's connections keep a 128 MiB page cache for the random-order key inserts of a load
    (:func:`mipflow.node.store.feature_store.make_engine`); a node's read of a large selection
    filled it and the pooled connection kept it resident (the OS keeps the file cached anyway, and
    the rows read are kept by :class:`mipflow.node.api.context.SelectionCache`).
    """
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("PRAGMA shrink_memory")


def select_frame(store: FeatureStore, model: DataModel, *, datasets: Sequence[str], variables: Sequence[str],
                 filters: Mapping[str, Any] | None = None, complete_case: bool = True,
                 row_identity: bool = False, visit_order: bool = False,
                 row_key: str | None = None, snapshot: bool = False) -> pd.DataFrame:
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
        :func:`mipflow.algorithms.local.prepare_local_data` drops them.
        (PostgreSQL's binary read gives the row and patient digests ``_row_md5`` and ``_pid_md5`` in
        their place, :mod:`mipflow.node.query.pgcopy`.)
    visit_order : bool
        With ``row_identity``, for an algorithm whose visits need an order (``gee``): where the read
        carries no ``_visit`` (PostgreSQL's binary read) it carries each row's rank among its
        patient's rows by visit key instead (:data:`mipflow.node.query.pgcopy.VISIT_RANK`).
    row_key : str or None
        With ``row_identity``: the ledger's key (:func:`mipflow.node.controls.differencing.hash_key`).
        On SQLite, for a complete-case selection of numerical and categorical variables, the
        identity then comes as the ledger's row and patient keys themselves (uint64 columns
        :data:`~mipflow.node.query.rowkeys.ROW_KEY` and ``PID_KEY``, computed chunk by
        chunk as the rows are read), not as text: 16 bytes a row instead of two strings
        (ADR 0044).  Elsewhere it is ignored (the text or MD5 columns come as without it).
    snapshot : bool
        With ``row_key`` on a SQLite file: answer the keyed read from the data model's columnar
        snapshot (:mod:`mipflow.node.query.snapshot`; written first when the rows changed since the
        last), the same frame bit for bit; what the snapshot cannot answer exactly is read as without
        it (ADR 0049).

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
        frame = binary_copy_frame(store, statement, chosen, _check_datasets(datasets), row_identity,
                                  chunksize=DEFAULT_CHUNKSIZE, visit_order=visit_order)
        if frame is not None:
            return frame
    if (store.dialect == "sqlite" and row_identity and row_key is not None and complete_case
            and all(v.is_numerical or v.is_categorical for v in chosen)):
        if snapshot:
            from mipflow.node.query.snapshot import current_snapshot, select_columns

            try:
                columns = current_snapshot(store, model, row_key)
                frame = None if columns is None else \
                    select_columns(columns, model, chosen, _check_datasets(datasets), filters, row_key)
            except (OSError, sqlite3.Error) as exc:  # no room, no permission, replaced meanwhile...:
                log.warning("columnar snapshot of %s unavailable (%s); reading the store", model.key,
                            type(exc).__name__)  # the SQL read answers
                frame = None
            if frame is not None:
                return frame
        frame = sqlite_columns(store, statement, chosen, row_key, chunksize=DEFAULT_CHUNKSIZE)
        if frame is not None:
            return frame
    frames = list(_stream(store, statement, chosen, DEFAULT_CHUNKSIZE))
    if not frames:
        return _empty(chosen, row_identity)
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True)


def select_rows(store: FeatureStore, model: DataModel, *, datasets: Sequence[str], variables: Sequence[str],
                filters: Mapping[str, Any] | None, row_key: str, complete_case: bool = True,
                dataset: bool = False) -> Any:
    """:func:`select_frame`'s complete-case keyed selection left on disk: the data model's columnar
    snapshot's rows it selects, read a block at a time
    (:class:`mipflow.node.query.snapshot_rows.SnapshotRows`, ADR 0049 amended; on PostgreSQL the rows of
    :func:`select_frame`'s binary read, ADR 0062), or None where the snapshot cannot give exactly those rows
    (a text variable or ``dataset``, a filter it cannot evaluate, a store without snapshots...): the caller then reads a frame.  The request is checked first, with
    :func:`select_frame`'s errors.  ``complete_case`` and ``dataset``: as
    :func:`mipflow.node.query.snapshot.select_rows` (without complete-case, the rows of
    :func:`select_frame` with ``complete_case=False``).
    """
    _, chosen = _prepare(store, model, datasets, variables, filters, complete_case, True)
    if store.dialect not in ("sqlite", "postgresql") or not all(v.is_numerical or v.is_categorical for v in chosen):
        return None
    from mipflow.node.query.snapshot import current_snapshot, select_rows as snapshot_rows

    try:
        columns = current_snapshot(store, model, row_key)
        return None if columns is None else \
            snapshot_rows(columns, model, chosen, _check_datasets(datasets), filters, row_key, complete_case,
                          dataset)
    except (OSError, sqlite3.Error, *_server_errors(store)) as exc:  # as select_frame: the frame's read answers
        log.warning("columnar snapshot of %s unavailable (%s); reading the store", model.key, type(exc).__name__)
        return None


def _server_errors(store: FeatureStore) -> tuple[type[BaseException], ...]:
    """A PostgreSQL store's errors a snapshot's write may meet (no right to create its trigger...)."""
    if store.dialect != "postgresql":
        return ()
    import psycopg2

    return (psycopg2.Error, sa.exc.DBAPIError)


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
        copy_out(store, statement, "FORMAT csv, HEADER true", spool)
        spool.seek(0)
        try:
            reader = pd.read_csv(spool, dtype=dtypes, keep_default_na=False, na_values=[""], chunksize=chunksize)
            for chunk in reader:
                if len(chunk):
                    yield _typed(chunk.reset_index(drop=True), chosen)
        except pd.errors.EmptyDataError:  # pragma: no cover - COPY always writes the header
            return


def sqlite_columns(store: FeatureStore, statement: sa.Select, chosen: list[Variable], row_key: str, *,
                   chunksize: int) -> pd.DataFrame | None:
    """:func:`select_frame` with ``row_key`` on SQLite: the rows read chunk by chunk into column arrays.

    The same rows, in the same order and with the same values, as the pandas path, but the
    DB-API rows are turned into numpy columns a chunk at a time (no SQLAlchemy row objects, no
    pandas frame per chunk, no ``concat`` of them), categorical values and the dataset become
    shared code objects, and the row identity ``(_pid, dataset, _visit)`` is hashed into the
    ledger's keys as it is read (:func:`mipflow.node.controls.differencing.row_keys` and
    ``patient_keys``, bit for bit), so the text identity is never held for the whole selection.

    Returns
    -------
    pandas.DataFrame or None
        ``dataset``, the variables, then uint64 columns ``_row_key`` and ``_pid_key`` (whose key
        ``frame.attrs`` names); None (the caller takes the pandas path, which reports it in its
        usual way) when a stored value of a numerical variable is not a number.
    """
    names = ["dataset"] + [v.code for v in chosen if v.code != "dataset"]
    kinds = {v.code: v for v in chosen if v.code != "dataset"}
    dtypes = {name: np.float64 if name in kinds and kinds[name].is_numerical else object for name in names}
    dtypes.update({ROW_KEY: np.uint64, PID_KEY: np.uint64})
    columns_out = {name: _Growing(dtype) for name, dtype in dtypes.items()}
    shared: dict[Any, Any] = {}  # one object per distinct dataset code
    with store.engine.connect() as conn:
        previous = conn.exec_driver_sql("PRAGMA cache_size").scalar()
        conn.exec_driver_sql(f"PRAGMA cache_size={READ_PAGE_CACHE_KIB}")
        result = conn.execute(statement)
        cursor = result.cursor  # the DB-API cursor: plain tuples, no row objects
        try:
            while True:
                rows = cursor.fetchmany(chunksize)
                if not rows:
                    break
                columns = list(zip(*rows))
                del rows
                datasets = columns[0]
                columns_out["dataset"].append([shared.setdefault(d, d) for d in datasets])
                for i, name in enumerate(names[1:], start=1):
                    var = kinds[name]
                    if var.is_numerical:
                        try:
                            columns_out[name].append(columns[i])
                        except (TypeError, ValueError):
                            return None
                    else:
                        columns_out[name].append(_as_codes(pd.Series(np.array(columns[i], dtype=object)), var).to_numpy())
                row_keys, pid_keys = identity_keys(columns[-2], datasets, columns[-1], row_key)
                columns_out[ROW_KEY].append(row_keys)
                columns_out[PID_KEY].append(pid_keys)
                del columns, row_keys, pid_keys
        finally:
            result.close()
            release_page_cache(conn)
            conn.exec_driver_sql(f"PRAGMA cache_size={int(previous)}")
    # object stays object (not a string dtype)
    frame = pd.DataFrame({name: pd.Series(column.array(), dtype=dtypes[name], copy=False)
                          for name, column in columns_out.items()}, copy=False)
    frame.attrs[KEY_OWNER] = key_fingerprint(row_key)
    return frame


class _Growing:
    """A column filled chunk by chunk into one buffer that doubles when full.

    Many chunk-sized arrays concatenated at the end leave the allocator's heap fragmented (on
    a million rows about 100 MiB stayed resident after the read); buffers this large are mapped
    and unmapped whole instead.
    """

    def __init__(self, dtype: Any) -> None:
        self.buffer = np.empty(0, dtype=dtype)
        self.size = 0

    def append(self, values: Any) -> None:
        values = np.asarray(values, dtype=self.buffer.dtype)
        end = self.size + len(values)
        if end > len(self.buffer):
            grown = np.empty(max(end, 2 * len(self.buffer)), dtype=self.buffer.dtype)
            grown[:self.size] = self.buffer[:self.size]
            self.buffer = grown
        self.buffer[self.size:end] = values
        self.size = end

    def array(self) -> np.ndarray:
        """The values (the buffer itself when full, else a copy of its filled part)."""
        out = self.buffer if self.size == len(self.buffer) else self.buffer[:self.size].copy()
        self.buffer = np.empty(0, dtype=out.dtype)
        return out
