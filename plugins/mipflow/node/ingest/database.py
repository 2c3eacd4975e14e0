"""EHR databases as a source: the profile's ``database`` section, its connection and incremental extraction.

A source profile names a SQL database instead of a landing folder with::

    "database": {
      "connection": {"secret_file": "secrets/ehr.url"}    # a file in the node home holding the URL
                  | {"env": "MIPFLOW_EHR_URL"}            # an environment variable holding the URL
                  | {"airflow_conn_id": "ehr_hospital_a"},  # an Airflow connection
      "table": "stroke_registry"  | "query": "SELECT ... FROM ...",
      "watermark": {"column": "updated_at", "type": "timestamp" | "integer"},
      "deletions": {"table": "stroke_registry_deleted",    # a deleted-rows log with its own watermark
                    "watermark": {"column": "deletion_id", "type": "integer"}}
                 | {"tombstone": "is_deleted"}             # or a boolean column of the source itself
    }

Credentials never sit in the profile: a profile with a URL, user or password
in it is refused.  Each extraction reads the rows whose watermark lies in
``(committed, upto]``, where ``committed`` is the watermark the feature store
committed with the last load of this source and ``upto`` the source's highest
watermark when the batch was captured; the load advances ``committed`` in the
same transaction as it writes the rows (:mod:`mipflow.node.ingest.stages`).
The queries are the templates ``include/sql/ehr_*.sql``; every name in them is
quoted for the source's dialect, every value is a bound parameter.

A deleted-rows table (or query) carries the deleted rows' patient identifier,
visit column (when the profile has one) and dataset column (when the dataset
comes from a column), under the same names as the source.

Nothing here logs or raises a value read from the source or the connection
URL: errors name the source and the exception's class only.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import sqlalchemy as sa

from mipflow.exceptions import ConfigError, InputFileError, ProfileError
from mipflow.node.files import read_private_line

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from mipflow.node.home import NodeHome
    from mipflow.node.ingest.pipeline import BatchCounts, ChunkProcessor
    from mipflow.node.ingest.progress import Progress

#: Where the extraction query templates live.
SQL_DIR = Path(__file__).resolve().parents[4] / "include" / "sql"
WATERMARK_TYPES = ("timestamp", "integer")
#: Keys that would put a credential into a profile.
_CREDENTIAL_KEYS = {"url", "uri", "dsn", "password", "passwd", "user", "username", "login", "host"}
#: Airflow connection types (and URL schemes) onto SQLAlchemy drivers installed with mipflow.
DRIVERS = {"postgres": "postgresql+psycopg2", "postgresql": "postgresql+psycopg2",
           "mysql": "mysql+pymysql", "mariadb": "mysql+pymysql"}

#: Resolves an Airflow connection id to a SQLAlchemy URL (the DAG tasks pass one; see
#: :mod:`mipflow_airflow.hooks.ehr`).
ConnectionResolver = Callable[[str], str]


@dataclass(frozen=True)
class Watermark:
    """The column whose value grows with every change, and how its values compare."""

    column: str
    type: str = "timestamp"

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> "Watermark":
        if not isinstance(doc, Mapping) or not isinstance(doc.get("column"), str) or not doc["column"]:
            raise ProfileError(f"'{where}' must be {{\"column\": NAME, \"type\": \"timestamp\"|\"integer\"}}")
        kind = doc.get("type", "timestamp")
        if kind not in WATERMARK_TYPES:
            raise ProfileError(f"'{where}.type' must be one of {list(WATERMARK_TYPES)}")
        return cls(column=doc["column"], type=kind)

    def to_text(self, value: Any) -> str | None:
        """A watermark value as stored in the feature store (``None`` when the source has no rows)."""
        if value is None:
            return None
        if self.type == "integer":
            return str(int(value))
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, date):
            return datetime(value.year, value.month, value.day).isoformat()
        return datetime.fromisoformat(str(value)).isoformat()

    def parse(self, text: str) -> Any:
        """A stored watermark as the value bound into the source's query."""
        return int(text) if self.type == "integer" else datetime.fromisoformat(text)

    def after(self, upto: str | None, committed: str | None) -> bool:
        """Whether ``upto`` lies beyond ``committed`` (there is something new to extract)."""
        if upto is None:
            return False
        if committed is None:
            return True
        return self.parse(upto) > self.parse(committed)


@dataclass(frozen=True)
class Deletions:
    """Where deletions at the source are read: a deleted-rows table/query, or a tombstone column."""

    table: str | None = None
    query: str | None = None
    watermark: Watermark | None = None
    tombstone: str | None = None

    @classmethod
    def from_dict(cls, doc: Any) -> "Deletions":
        if not isinstance(doc, Mapping):
            raise ProfileError("'database.deletions' must be an object")
        if "tombstone" in doc:
            if set(doc) != {"tombstone"} or not isinstance(doc["tombstone"], str) or not doc["tombstone"]:
                raise ProfileError("'database.deletions' is {\"tombstone\": COLUMN} or a deleted-rows "
                                   "{\"table\"|\"query\", \"watermark\"}, not both")
            return cls(tombstone=doc["tombstone"])
        table, query = _relation(doc, "database.deletions")
        return cls(table=table, query=query,
                   watermark=Watermark.from_dict(doc.get("watermark"), "database.deletions.watermark"))


@dataclass(frozen=True)
class DatabaseSource:
    """The ``database`` section of a source profile."""

    connection: tuple[str, str]  # (kind, name): secret_file | env | airflow_conn_id
    watermark: Watermark
    table: str | None = None
    query: str | None = None
    deletions: Deletions | None = None

    @classmethod
    def from_dict(cls, doc: Any) -> "DatabaseSource":
        if not isinstance(doc, Mapping):
            raise ProfileError("'database' must be an object")
        _refuse_credentials(doc, "database")
        known = {"connection", "table", "query", "watermark", "deletions"}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ProfileError(f"unknown key(s) {unknown} in 'database'; known: {sorted(known)}")
        conn = doc.get("connection")
        kinds = ("secret_file", "env", "airflow_conn_id")
        if not isinstance(conn, Mapping) or len(conn) != 1 or next(iter(conn)) not in kinds \
                or not isinstance(next(iter(conn.values())), str) or not next(iter(conn.values())).strip():
            raise ProfileError("'database.connection' must be exactly one of {\"secret_file\": PATH}, "
                               "{\"env\": VARIABLE} or {\"airflow_conn_id\": CONN_ID}; never the URL itself")
        kind, name = next(iter(conn.items()))
        if "://" in name:
            raise ProfileError("'database.connection' names where the URL is kept, never the URL itself")
        table, query = _relation(doc, "database")
        deletions = Deletions.from_dict(doc["deletions"]) if doc.get("deletions") is not None else None
        return cls(connection=(kind, name.strip()), watermark=Watermark.from_dict(doc.get("watermark"),
                                                                                  "database.watermark"),
                   table=table, query=query, deletions=deletions)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"connection": {self.connection[0]: self.connection[1]},
                               "watermark": {"column": self.watermark.column, "type": self.watermark.type}}
        out.update({"table": self.table} if self.table else {"query": self.query})
        if self.deletions is not None:
            d = self.deletions
            if d.tombstone:
                out["deletions"] = {"tombstone": d.tombstone}
            else:
                assert d.watermark is not None
                out["deletions"] = ({"table": d.table} if d.table else {"query": d.query}) | {
                    "watermark": {"column": d.watermark.column, "type": d.watermark.type}}
        return out

    @property
    def control_columns(self) -> tuple[str, ...]:
        """Columns the extraction reads for itself (dropped before depersonalisation)."""
        cols = [self.watermark.column]
        if self.deletions is not None and self.deletions.tombstone:
            cols.append(self.deletions.tombstone)
        return tuple(cols)

    @property
    def deletion_watermark(self) -> Watermark | None:
        """The watermark of the deletions (the source's own one for a tombstone column)."""
        if self.deletions is None:
            return None
        return self.watermark if self.deletions.tombstone else self.deletions.watermark


def _relation(doc: Mapping[str, Any], where: str) -> tuple[str | None, str | None]:
    table, query = doc.get("table"), doc.get("query")
    if (table is None) == (query is None):
        raise ProfileError(f"'{where}' needs exactly one of \"table\" (NAME or SCHEMA.NAME) or \"query\" (a SELECT)")
    if table is not None and (not isinstance(table, str) or not table.strip()):
        raise ProfileError(f"'{where}.table' must be a table name")
    if query is not None:
        if not isinstance(query, str) or not query.strip().lower().startswith(("select", "with")):
            raise ProfileError(f"'{where}.query' must be one SELECT statement")
        if ";" in query.strip().rstrip(";"):
            raise ProfileError(f"'{where}.query' must be one statement (no ';')")
        query = query.strip().rstrip(";")
    return table, query


def _refuse_credentials(doc: Any, where: str) -> None:
    if isinstance(doc, Mapping):
        for key, value in doc.items():
            if str(key).lower() in _CREDENTIAL_KEYS:
                raise ProfileError(f"'{where}' must not hold credentials or a URL ({key!r}): put the URL in a "
                                   "secret file or an Airflow connection and name that in 'connection'")
            _refuse_credentials(value, f"{where}.{key}")


# -- the connection ------------------------------------------------------------

def normalise_url(url: str) -> str:
    """A URL with a driver this node has (``postgres://`` -> ``postgresql+psycopg2://``, ``mysql://`` -> PyMySQL)."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        raise ConfigError("the database connection is not a URL (SCHEME://USER:PASSWORD@HOST:PORT/DATABASE)")
    if "+" not in scheme and scheme.lower() in DRIVERS:
        scheme = DRIVERS[scheme.lower()]
    return f"{scheme}://{rest}"


def source_url(source: str, db: DatabaseSource, home: "NodeHome",
               connections: ConnectionResolver | None = None) -> str:
    """The SQLAlchemy URL of a database source (a secret: never log or store it).

    ``secret_file`` is read relative to the node home and must not be readable
    by other users; ``env`` names an environment variable; ``airflow_conn_id`` is
    resolved by ``connections`` (the DAG tasks pass Airflow's), else from
    Airflow's own ``AIRFLOW_CONN_<ID>`` environment variable (URI form).

    Raises
    ------
    ConfigError
        Naming the source and where the URL was looked for, never the URL.
    """
    kind, name = db.connection
    if kind == "secret_file":
        url = read_private_line(home.root, name, label=f"source {source}: the connection's", holds="the URL")
    elif kind == "env":
        url = os.environ.get(name, "")
        if not url:
            raise ConfigError(f"source {source}: environment variable {name} (the connection URL) is not set")
    else:
        if connections is not None:
            url = connections(name)
        else:
            url = os.environ.get(f"AIRFLOW_CONN_{name.upper()}", "")
            if not url:
                raise ConfigError(f"source {source}: Airflow connection {name!r} is not available here; run "
                                  f"through the node DAGs or set AIRFLOW_CONN_{name.upper()}")
            if url.lstrip().startswith("{"):
                raise ConfigError(f"source {source}: AIRFLOW_CONN_{name.upper()} is in JSON form; the command "
                                  "line reads the URI form (the DAGs read both)")
    if not url:
        raise ConfigError(f"source {source}: the connection URL is empty")
    return normalise_url(url)


def source_engine(url: str) -> sa.Engine:
    """An engine on the source database (no pool kept: one extraction, then disposed)."""
    try:
        return sa.create_engine(url, poolclass=sa.pool.NullPool)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        raise ConfigError(f"the database connection URL is not usable ({type(exc).__name__}); "
                          "use postgresql://... or mysql://... (MariaDB)") from None


# -- the queries ---------------------------------------------------------------

@lru_cache(maxsize=None)
def _template(name: str) -> Any:
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
    return env.from_string((SQL_DIR / name).read_text(encoding="utf-8"))


def _quote(engine: sa.Engine, name: str) -> str:
    return engine.dialect.identifier_preparer.quote(name)


def _relation_sql(engine: sa.Engine, table: str | None, query: str | None) -> str:
    if table is not None:
        return ".".join(_quote(engine, part) for part in table.split("."))
    return f"({query})"


def render(name: str, engine: sa.Engine, **names: Any) -> str:
    """An ``include/sql`` template with its (already quoted) names filled in."""
    return _template(name).render(**names)


def max_watermark_sql(engine: sa.Engine, db: DatabaseSource, *, deletions: bool = False) -> str:
    if deletions and db.deletions is not None and not db.deletions.tombstone:
        assert db.deletions.watermark is not None
        return render("ehr_max_watermark.sql", engine,
                      relation=_relation_sql(engine, db.deletions.table, db.deletions.query),
                      watermark="src." + _quote(engine, db.deletions.watermark.column))
    return render("ehr_max_watermark.sql", engine, relation=_relation_sql(engine, db.table, db.query),
                  watermark="src." + _quote(engine, db.watermark.column))


def changes_sql(engine: sa.Engine, db: DatabaseSource, has_after: bool) -> str:
    tomb = db.deletions.tombstone if db.deletions is not None else None
    return render("ehr_changes.sql", engine, relation=_relation_sql(engine, db.table, db.query),
                  watermark="src." + _quote(engine, db.watermark.column), has_after=has_after,
                  tombstone="src." + _quote(engine, tomb) if tomb else "")


def deletions_sql(engine: sa.Engine, db: DatabaseSource, key_columns: tuple[str, ...], has_after: bool) -> str:
    assert db.deletions is not None
    d = db.deletions
    columns = ", ".join("src." + _quote(engine, c) for c in key_columns)
    if d.tombstone:
        return render("ehr_deletions.sql", engine, relation=_relation_sql(engine, db.table, db.query),
                      columns=columns, watermark="src." + _quote(engine, db.watermark.column),
                      has_after=has_after, tombstone="src." + _quote(engine, d.tombstone))
    assert d.watermark is not None
    return render("ehr_deletions.sql", engine, relation=_relation_sql(engine, d.table, d.query), columns=columns,
                  watermark="src." + _quote(engine, d.watermark.column), has_after=has_after, tombstone="")


def _range_params(watermark: Watermark, after: str | None, upto: str) -> dict[str, Any]:
    params: dict[str, Any] = {"upto": watermark.parse(upto)}
    if after is not None:
        params["after"] = watermark.parse(after)
    return params


def _source_error(source: str, what: str, exc: BaseException) -> InputFileError:
    # the driver's message may quote the query's parameters or, for some drivers, row values: class only
    return InputFileError(f"source {source}: cannot {what} ({type(exc).__name__}); check the connection "
                          "and the profile's 'database' section")


def current_watermarks(source: str, engine: sa.Engine, db: DatabaseSource) -> tuple[str | None, str | None]:
    """The source's highest change watermark and deletion watermark now (``None``: no rows)."""
    try:
        with engine.connect() as conn:
            upto = db.watermark.to_text(conn.execute(sa.text(max_watermark_sql(engine, db))).scalar())
            del_upto = None
            if db.deletions is not None:
                if db.deletions.tombstone:
                    del_upto = upto
                else:
                    assert db.deletions.watermark is not None
                    del_upto = db.deletions.watermark.to_text(
                        conn.execute(sa.text(max_watermark_sql(engine, db, deletions=True))).scalar())
    except sa.exc.SQLAlchemyError as exc:
        raise _source_error(source, "read the source's watermark", exc) from None
    return upto, del_upto


def range_id(source: str, after: str | None, upto: str | None, del_after: str | None,
             del_upto: str | None) -> str:
    """The content identity of one extraction (the batch's ``sha256``): the same range is the same batch."""
    text = "\x1f".join(["db", source, *("" if v is None else v for v in (after, upto, del_after, del_upto))])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- reading -------------------------------------------------------------------

def _text_column(values: Any, date_format: str) -> Any:
    """One column of driver values as the strings a CSV export would hold (``None`` where missing).

    A column of one Python type (what a typed database column gives) is
    converted in one pass without a per-cell dispatch; mixed columns cell by cell.
    """
    import numpy as np
    import pandas as pd

    values = list(values)
    column = np.fromiter(values, dtype=object, count=len(values))  # cells that are sequences stay cells
    present = ~pd.isna(column)
    values_present = column[present]
    kinds = set(map(type, values_present))
    if kinds <= {str}:
        return column
    out = np.empty(len(column), dtype=object)
    if kinds <= {int}:
        text: Any = np.asarray(values_present, dtype=np.int64).astype(str).astype(object)
    elif kinds <= {float}:
        text = np.asarray(values_present, dtype=np.float64).astype(str).astype(object)
    elif kinds <= {date} and date_format == "%Y-%m-%d":
        text = list(map(date.isoformat, values_present))
    elif kinds <= {date, datetime}:
        text = [v.strftime(date_format) for v in values_present]
    elif kinds <= {Decimal}:
        text = [t if "E" not in t else format(v, "f") for v, t in zip(values_present, map(str, values_present))]
    else:
        text = [_text(v, date_format) for v in values_present]
    out[present] = text
    return out


def _text(value: Any, date_format: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (datetime, date)):
        return value.strftime(date_format)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def read_changes(source: str, engine: sa.Engine, db: DatabaseSource, processor: "ChunkProcessor",
                 after: str | None, upto: str, counts: "BatchCounts",
                 progress: "Progress | None" = None) -> Iterator["pd.DataFrame"]:
    """Chunks of the rows changed in ``(after, upto]``, as strings, with a 1-based ``_row`` column.

    The same shape :meth:`mipflow.node.ingest.pipeline.ChunkProcessor.read_chunks`
    yields for a CSV file; the watermark and tombstone columns are dropped.
    Rows are streamed (server-side cursor), ``chunk_rows`` at a time.
    """
    import pandas as pd

    from mipflow.node.deid.profile import ISO_DATE_FORMAT
    from mipflow.node.ingest.pipeline import ROW_COLUMN

    date_format = processor.profile.deid.date_format or ISO_DATE_FORMAT
    chunk_rows = processor.settings.chunk_rows
    sql = sa.text(changes_sql(engine, db, after is not None))
    row = 0
    try:
        with engine.connect().execution_options(stream_results=True, max_row_buffer=chunk_rows) as conn:
            result = conn.execute(sql, _range_params(db.watermark, after, upto))
            columns = list(result.keys())
            processor._check_columns(f"source {source}", columns)
            keep = [i for i, c in enumerate(columns) if c not in db.control_columns]
            names = [columns[i] for i in keep]
            while rows := result.fetchmany(chunk_rows):
                data = {ROW_COLUMN: range(row + 1, row + 1 + len(rows))}
                by_column = list(zip(*rows))
                for i, name in zip(keep, names):
                    data[name] = _text_column(by_column[i], date_format)
                chunk = pd.DataFrame(data)
                for name in names:
                    chunk[name] = chunk[name].astype("str")
                row += len(rows)
                counts.rows_in += len(rows)
                yield chunk
                if progress is not None:
                    progress.advance(len(rows))
    except sa.exc.SQLAlchemyError as exc:
        raise _source_error(source, "read the changed rows", exc) from None


def read_deleted_keys(source: str, engine: sa.Engine, db: DatabaseSource, processor: "ChunkProcessor",
                      after: str | None, upto: str) -> "pd.DataFrame":
    """The store keys ``(_pid, dataset, _visit)`` of the rows deleted in ``(after, upto]``.

    Patient identifiers are pseudonymised (and visits, unless the profile keeps
    them) as the loaded rows' were; rows without a patient identifier are skipped.
    """
    import pandas as pd

    profile = processor.profile
    key_columns = [profile.deid.patient_id]
    if profile.dataset_column:
        key_columns.append(profile.dataset_column)
    if profile.visit_column:
        key_columns.append(profile.visit_column)
    watermark = db.deletion_watermark
    assert watermark is not None
    sql = sa.text(deletions_sql(engine, db, tuple(key_columns), after is not None))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sql, _range_params(watermark, after, upto)).all()
    except sa.exc.SQLAlchemyError as exc:
        raise _source_error(source, "read the deleted rows", exc) from None
    frame = pd.DataFrame({c: _text_column([r[i] for r in rows], "%Y-%m-%d") for i, c in enumerate(key_columns)})
    frame = frame.astype("str") if len(frame) else pd.DataFrame({c: pd.Series([], dtype="str") for c in key_columns})
    ids = frame[profile.deid.patient_id]
    frame = frame[ids.notna() & ids.fillna("").str.strip().ne("")]
    pseudonymiser = processor.pseudonymiser
    out = pd.DataFrame({"_pid": pseudonymiser.pseudonyms(frame[profile.deid.patient_id])})
    out["dataset"] = (profile.dataset_value if profile.dataset_value is not None
                      else frame[profile.dataset_column].fillna("").str.strip())
    if profile.visit_column:
        raw = frame[profile.visit_column]
        out["_visit"] = (pseudonymiser.visit_pseudonyms(raw) if profile.pseudonymise_visit
                         else raw.fillna("").str.strip()).fillna("")
    else:
        out["_visit"] = ""
    return out.drop_duplicates()
