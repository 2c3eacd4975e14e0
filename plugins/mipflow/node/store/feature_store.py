"""Access to a node's feature store: data models, loads, consent, the manifest and batches.

The tables are declared in :mod:`mipflow.node.store.tables`.  Loads are
idempotent upserts, one transaction per batch.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mipflow.exceptions import StoreError
from mipflow.node.files import (
    is_path_key,
)
from mipflow.node.home import NodeHome
from mipflow.node.store.tables import (
    BATCH_COUNT_COLUMNS,
    BATCH_COUNTS_MARKER,
    CONSENT_APPLIED,
    KEY_COLUMNS,
    LINEAGE_COLUMNS,
    ROW_MD5_COLUMN,
    ROW_MD5_EXPRESSION,
    batches_table,
    consent_log_table,
    data_model_table,
    data_models_table,
    datasets_table,
    files_table,
    meta_table,
    metadata,
    quarantine_table,
)
from mipflow.protocol.datamodel import DataModel

log = logging.getLogger(__name__)


@dataclass
class LoadCounts:
    """How loaded rows compared with the stored rows of their keys (:meth:`FeatureStore.upsert_rows`).

    ``identity_columns``: per identifying-derived column, the existing keys whose value changed
    (column names and counts only).
    """

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    identity_changed: int = 0
    identity_columns: dict[str, int] = field(default_factory=dict)


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL and a busy timeout so DAG tasks can share it."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:  # pragma: no cover - trivial
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            # the key index takes random-order pseudonyms: a page cache that holds it avoids
            # re-reading B-tree pages on every insert (bounded: 128 MiB)
            cursor.execute("PRAGMA cache_size=-131072")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


class FeatureStore:
    """Access to one node's feature store."""

    def __init__(self, url: str, snapshot_home: Any = None) -> None:
        self.url, self.snapshot_home = url, snapshot_home  # PostgreSQL: where its snapshots live (ADR 0062)
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name
        metadata.create_all(self.engine)
        self._tables: dict[str, sa.Table] = {}
        self._row_md5_checked: set[str] = set()
        self._ensure_batch_counts()

    def _ensure_batch_counts(self) -> None:
        """Give an older store's ``mipflow_batches`` the :data:`BATCH_COUNT_COLUMNS` (once; recorded in
        ``mipflow_meta``, so later opens cost one primary-key lookup)."""
        name, value = BATCH_COUNTS_MARKER
        with self.engine.connect() as conn:
            if conn.execute(sa.select(meta_table.c.value).where(meta_table.c.name == name)).scalar() == value:
                return
        with self.begin() as conn:
            present = {c["name"] for c in sa.inspect(conn).get_columns(batches_table.name)}
            for column in BATCH_COUNT_COLUMNS:
                if column in present:
                    continue
                exists = "IF NOT EXISTS " if self.dialect == "postgresql" else ""
                conn.exec_driver_sql(f"ALTER TABLE {batches_table.name} ADD COLUMN {exists}{column} "
                                     "BIGINT NOT NULL DEFAULT 0")
                log.info("feature store: batch records gain the %r count (0 for earlier batches)", column)
        try:
            with self.begin() as conn:
                conn.execute(meta_table.insert().values(name=name, value=value, updated_at=utcnow()))
        except sa.exc.IntegrityError:  # another process recorded it first
            pass

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """One transaction: committed on success, rolled back on any error."""
        with self.engine.begin() as conn:
            yield conn

    # -- data models --------------------------------------------------------
    def model_table(self, model: DataModel) -> sa.Table:
        """The SQLAlchemy table of a data model (not created)."""
        if model.key in self._tables:
            return self._tables[model.key]
        table = data_model_table(model, self.dialect)
        self._tables[model.key] = table
        return table

    def ensure_row_md5(self, model: DataModel) -> None:
        """Add :data:`ROW_MD5_COLUMN` to a PostgreSQL table created before it existed (once).

        A one-time rewrite of the table (``ALTER TABLE ... ADD COLUMN IF NOT
        EXISTS``, safe when two node processes race); later calls cost nothing.
        """
        if self.dialect != "postgresql" or model.key in self._row_md5_checked:
            return
        table = self.model_table(model)
        with self.begin() as conn:
            present = conn.execute(sa.text(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = :table AND column_name = :column"),
                {"table": table.name, "column": ROW_MD5_COLUMN}).first()
            if present is None and sa.inspect(conn).has_table(table.name):
                log.info("adding the row identity column to %s (once; the table is rewritten)", table.name)
                conn.exec_driver_sql(f"ALTER TABLE {_quote(table.name)} ADD COLUMN IF NOT EXISTS "
                                     f"{ROW_MD5_COLUMN} text GENERATED ALWAYS AS ({ROW_MD5_EXPRESSION}) STORED")
        self._row_md5_checked.add(model.key)

    def add_data_model(self, model: DataModel) -> sa.Table:
        """Register a data model and create its table (idempotent).

        Raises
        ------
        StoreError
            If a different document is already registered under the same code and version.
        """
        document = json.dumps(model.to_dict(), sort_keys=True)
        with self.begin() as conn:
            row = conn.execute(sa.select(data_models_table.c.document).where(
                data_models_table.c.code == model.code, data_models_table.c.version == model.version)).first()
            if row is not None and json.loads(row[0]) != json.loads(document):
                raise StoreError(f"data model {model.key} is already registered with different contents; "
                                 "publish a new version instead of changing this one")
            if row is None:
                conn.execute(data_models_table.insert().values(
                    code=model.code, version=model.version, label=model.label,
                    document=document, added_at=utcnow()))
        table = self.model_table(model)
        table.create(self.engine, checkfirst=True)
        if self.dialect in ("sqlite", "postgresql"):  # the row stamp columnar snapshots are read by (ADR 0049)
            from mipflow.node.store import stamp, stamp_pg

            raw = self.engine.raw_connection()
            try:
                (stamp if self.dialect == "sqlite" else stamp_pg).install_stamp(raw.dbapi_connection, table.name)
            finally:
                raw.close()
        return table

    def data_models(self) -> list[DataModel]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(data_models_table.c.document)
                                .order_by(data_models_table.c.code, data_models_table.c.version)).all()
        return [DataModel.from_dict(json.loads(r[0])) for r in rows]

    def data_model(self, key: str) -> DataModel:
        for model in self.data_models():
            if model.key == key:
                return model
        known = ", ".join(m.key for m in self.data_models()) or "none"
        raise StoreError(f"data model {key} is not registered at this node (registered: {known}); "
                         "add it with: mipflow data-model add HOME PATH/CDEsMetadata.json")

    # -- loading ------------------------------------------------------------
    def upsert_rows(self, conn: Connection, model: DataModel, frame: Any, *, batch_id: str,
                    sha256: str, accounting: "LoadCounts | None" = None,
                    identity_columns: Sequence[str] = ()) -> int:
        """Insert or update rows keyed on ``(_pid, dataset, _visit)`` inside ``conn``'s transaction.

        Parameters
        ----------
        frame : pandas.DataFrame
            Columns ``_pid``, ``dataset``, ``_visit`` and any data-model variables, without
            repeated keys (the pipeline removes them).
        accounting : LoadCounts, optional
            Where to add how the rows compare with the stored ones, before they are written:
            new keys, existing keys with other values, existing keys with the same values (all the
            frame's value columns equal, missing equal to missing), and existing keys whose
            ``identity_columns`` changed (per column too).  Counts only, in the same transaction.
        identity_columns : sequence of str
            The data-model columns derived from identifying values (birth date...); those not
            in ``frame`` are ignored.

        Returns
        -------
        int
            Rows written.
        """
        if len(frame) == 0:
            return 0
        table = self.model_table(model)
        value_columns = [c for c in frame.columns if c in table.c and c not in LINEAGE_COLUMNS]
        for key in KEY_COLUMNS:
            if key not in value_columns:
                raise StoreError(f"rows to load lack the key column {key!r}")
        columns = value_columns + list(LINEAGE_COLUMNS)
        records = _records(frame[value_columns], (batch_id, sha256, utcnow()))
        quoted = ", ".join(_quote(c) for c in columns)
        conflict = ", ".join(_quote(c) for c in KEY_COLUMNS)
        updates = ", ".join(f"{_quote(c)} = excluded.{_quote(c)}" for c in columns if c not in KEY_COLUMNS)
        target = _quote(table.name)
        staging = _quote("mipflow_stage_" + table.name)
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            if self.dialect == "postgresql":
                # COPY into a temporary table, then one set-based upsert
                cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {staging} "
                               f"(LIKE {target} INCLUDING DEFAULTS) ON COMMIT DROP")
                cursor.execute(f"TRUNCATE {staging}")
                buffer = io.StringIO()
                writer = csv.writer(buffer, lineterminator="\n")
                writer.writerows(["\\N" if v is None else v for v in rec] for rec in records)
                buffer.seek(0)
                cursor.copy_expert(f"COPY {staging} ({quoted}) FROM STDIN WITH (FORMAT csv, NULL '\\N')", buffer)
                if accounting is not None:
                    self._account(cursor, staging, target, value_columns, identity_columns, accounting)
                cursor.execute(f"INSERT INTO {target} ({quoted}) SELECT {quoted} FROM {staging} "
                               f"ON CONFLICT ({conflict}) DO UPDATE SET {updates}")
            elif self.dialect == "sqlite":
                marks = ", ".join("?" for _ in columns)
                if accounting is None:
                    cursor.executemany(f"INSERT INTO {target} ({quoted}) VALUES ({marks}) "
                                       f"ON CONFLICT ({conflict}) DO UPDATE SET {updates}", records)
                else:  # stage the rows (same column affinities) to compare them with the stored ones
                    cursor.execute(f"DROP TABLE IF EXISTS temp.{staging}")
                    cursor.execute(f"CREATE TEMP TABLE {staging} AS SELECT {quoted} FROM {target} WHERE 0")
                    cursor.executemany(f"INSERT INTO {staging} ({quoted}) VALUES ({marks})", records)
                    self._account(cursor, staging, target, value_columns, identity_columns, accounting)
                    cursor.execute(f"INSERT INTO {target} ({quoted}) SELECT {quoted} FROM {staging} WHERE true "
                                   f"ON CONFLICT ({conflict}) DO UPDATE SET {updates}")
                    cursor.execute(f"DROP TABLE temp.{staging}")
            else:
                raise StoreError(f"feature store dialect {self.dialect!r} is not supported "
                                 "(use SQLite or PostgreSQL)")
        finally:
            cursor.close()
        return len(records)

    def _account(self, cursor: Any, staging: str, target: str, value_columns: Sequence[str],
                 identity_columns: Sequence[str], accounting: "LoadCounts") -> None:
        """Compare the staged rows with the stored rows of the same keys (one aggregate query)."""
        distinct = "IS DISTINCT FROM" if self.dialect == "postgresql" else "IS NOT"

        def differs(names: Sequence[str]) -> str:
            return " OR ".join(f"s.{_quote(c)} {distinct} t.{_quote(c)}" for c in names) or "1 = 0"

        compared = [c for c in value_columns if c not in KEY_COLUMNS]
        identity = [c for c in identity_columns if c in compared]
        join = " AND ".join(f"s.{_quote(k)} = t.{_quote(k)}" for k in KEY_COLUMNS)
        cases = [f"SUM(CASE WHEN t.{_quote('dataset')} IS NULL THEN 1 ELSE 0 END)",
                 f"SUM(CASE WHEN t.{_quote('dataset')} IS NOT NULL AND ({differs(compared)}) THEN 1 ELSE 0 END)",
                 f"SUM(CASE WHEN t.{_quote('dataset')} IS NOT NULL AND ({differs(identity)}) THEN 1 ELSE 0 END)",
                 *(f"SUM(CASE WHEN t.{_quote('dataset')} IS NOT NULL AND ({differs([c])}) THEN 1 ELSE 0 END)"
                   for c in identity), "COUNT(*)"]
        cursor.execute(f"SELECT {', '.join(cases)} FROM {staging} s LEFT JOIN {target} t ON {join}")
        row = [int(v or 0) for v in cursor.fetchone()]
        inserted, updated, changed, per_column, total = row[0], row[1], row[2], row[3:-1], row[-1]
        accounting.inserted += inserted
        accounting.updated += updated
        accounting.unchanged += total - inserted - updated
        accounting.identity_changed += changed
        for column, n in zip(identity, per_column):
            if n:
                accounting.identity_columns[column] = accounting.identity_columns.get(column, 0) + n

    def refresh_datasets(self, conn: Connection, model: DataModel) -> None:
        """Recompute the datasets registry of ``model`` from its table."""
        table = self.model_table(model)
        counts = conn.execute(sa.select(table.c.dataset, sa.func.count()).group_by(table.c.dataset)).all()
        conn.execute(datasets_table.delete().where(datasets_table.c.data_model == model.key))
        now = utcnow()
        for dataset, count in counts:
            conn.execute(datasets_table.insert().values(
                data_model=model.key, dataset=dataset, row_count=int(count), updated_at=now))
        if self.dialect == "postgresql":  # node APIs drop cached selections when this commits
            from mipflow.node.freshness import DATA_CHANNEL

            conn.execute(sa.text("SELECT pg_notify(:channel, :key)"), {"channel": DATA_CHANNEL, "key": model.key})

    def datasets(self, data_model: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(datasets_table).order_by(datasets_table.c.data_model, datasets_table.c.dataset)
        if data_model:
            query = query.where(datasets_table.c.data_model == data_model)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def data_changes(self, data_model: str, latest: int = 10) -> dict[str, Any]:
        """What changed the rows of ``data_model``, for its data version (:mod:`mipflow.node.versions`).

        Returns
        -------
        dict
            ``loaded``: every batch id that loaded rows (status ``loaded``), oldest first;
            ``latest``: the ``latest`` most recent of them, newest first; ``consent``: the digest of
            the withdrawn set last applied (:meth:`record_consent_applied`). No row count, and nothing
            that moves only when a withdrawal deleted rows (a consent deletion rewrites the datasets
            registry, so its rewrite time is not given: it would tell a member's withdrawal from a
            stranger's).
        """
        query = (sa.select(batches_table.c.batch_id)
                 .where(batches_table.c.data_model == data_model, batches_table.c.status == "loaded")
                 .order_by(batches_table.c.finished_at, batches_table.c.batch_id))
        consent = sa.select(meta_table.c.value).where(meta_table.c.name == CONSENT_APPLIED)
        with self.engine.connect() as conn:
            loaded = [row.batch_id for row in conn.execute(query)]
            applied = conn.execute(consent).scalar_one_or_none()
        return {"loaded": loaded, "latest": loaded[::-1][:latest], "consent": applied or ""}

    def consent_applied(self) -> str:
        """The digest of the withdrawn set last applied ("" before any): every public effect of applying a
        consent registry follows it, never the rows deleted (ADR 0043, 0059)."""
        consent = sa.select(meta_table.c.value).where(meta_table.c.name == CONSENT_APPLIED)
        with self.engine.connect() as conn:
            return conn.execute(consent).scalar_one_or_none() or ""

    def record_consent_applied(self, digest: str) -> None:
        """Record the digest of the withdrawn set just applied (a no-op when it is the one recorded)."""
        with self.begin() as conn:
            row = conn.execute(sa.select(meta_table.c.value).where(meta_table.c.name == CONSENT_APPLIED)).first()
            if row is not None and row.value == digest:
                return
            conn.execute(meta_table.delete().where(meta_table.c.name == CONSENT_APPLIED))
            conn.execute(meta_table.insert().values(name=CONSENT_APPLIED, value=digest, updated_at=utcnow()))

    def count_rows(self, model: DataModel) -> int:
        table = self.model_table(model)
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())

    # -- consent ------------------------------------------------------------
    def delete_patients(self, pids: Iterable[str]) -> int:
        """Delete every row of these pseudonyms from every data model (consent withdrawn)."""
        pids = sorted(set(pids))
        if not pids:
            return 0
        total = 0
        models = self.data_models()
        with self.begin() as conn:
            for model in models:
                table = self.model_table(model)
                deleted_here = 0
                for start in range(0, len(pids), 500):
                    part = pids[start:start + 500]
                    result = conn.execute(table.delete().where(table.c._pid.in_(part)))
                    deleted_here += result.rowcount or 0
                if deleted_here:
                    conn.execute(consent_log_table.insert().values(
                        patients=len(pids), data_model=model.key, rows_deleted=deleted_here, at=utcnow()))
                    self.refresh_datasets(conn, model)
                total += deleted_here
        if total:  # no copy of the rows left in a columnar snapshot (ADR 0049; PostgreSQL: ADR 0062)
            from mipflow.node.store.stamp import drop_snapshots

            for model in models:
                drop_snapshots(self, self.model_table(model).name)
        return total

    # -- manifest and batches -----------------------------------------------
    def file_record(self, sha256: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(files_table).where(files_table.c.sha256 == sha256)).first()
        return dict(row._mapping) if row else None

    def register_file(self, conn: Connection, *, sha256: str, path: str, size: int, kind: str,
                      batch_id: str) -> None:
        """Add a manifest entry; ``path`` must be a path key (:func:`mipflow.node.files.landing_path_key`).

        Raises
        ------
        StoreError
            If ``path`` is a raw path: file names may carry patient names.
        """
        if not is_path_key(path):
            raise StoreError("the manifest stores keyed path hashes only, never a raw path "
                             "(use mipflow.node.files.landing_path_key)")
        conn.execute(files_table.insert().values(sha256=sha256, path=path, size=size, kind=kind,
                                                 first_seen=utcnow(), batch_id=batch_id))

    def path_names_migrated(self) -> bool:
        """Whether :meth:`migrate_path_names` has run on this store."""
        from mipflow.node.store.path_migration import path_names_migrated

        return path_names_migrated(self)

    def migrate_path_names(self, key: bytes, landing: Path, profiles: Path | None = None) -> int:
        """Rewrite raw landing paths and file names of older stores into keys and references, once
        (:func:`mipflow.node.store.path_migration.migrate_path_names`); the entries rewritten (0 when done)."""
        from mipflow.node.store.path_migration import migrate_path_names

        return migrate_path_names(self, key, landing, profiles)

    def start_batch(self, conn: Connection, *, batch_id: str, data_model: str, source: str,
                    sha256: str) -> None:
        conn.execute(batches_table.insert().values(
            batch_id=batch_id, data_model=data_model, source=source, sha256=sha256, stage="capture",
            status="running", message="", rows_in=0, loaded=0, quarantined=0, no_consent=0,
            duplicates=0, held=0, inserted=0, updated=0, unchanged=0, identity_changed=0, validation="{}", started_at=utcnow(), finished_at=None))

    def update_batch(self, conn: Connection | None, batch_id: str, **values: Any) -> None:
        if "validation" in values and not isinstance(values["validation"], str):
            values["validation"] = json.dumps(values["validation"], sort_keys=True)
        statement = batches_table.update().where(batches_table.c.batch_id == batch_id).values(**values)
        if conn is None:
            with self.begin() as own:
                own.execute(statement)
        else:
            conn.execute(statement)

    def batch(self, batch_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(batches_table).where(batches_table.c.batch_id == batch_id)).first()
        if row is None:
            raise StoreError(f"no batch {batch_id!r} at this node")
        out = dict(row._mapping)
        out["validation"] = json.loads(out["validation"] or "{}")
        return out

    def batches(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(batches_table).order_by(batches_table.c.started_at)).all()
        out = []
        for row in rows:
            item = dict(row._mapping)
            item["validation"] = json.loads(item["validation"] or "{}")
            out.append(item)
        return out

    def quarantine(self, conn: Connection, batch_id: str, stage: str,
                   entries: Iterable[tuple[int, str, dict[str, Any] | None]]) -> int:
        """Write quarantined rows: (row number in the source file, reason, depersonalised record)."""
        payload = [{"batch_id": batch_id, "row_number": int(n), "stage": stage, "reason": reason,
                    "record": None if rec is None else json.dumps(rec, default=str, sort_keys=True)}
                   for n, reason, rec in entries]
        if payload:
            conn.execute(quarantine_table.insert(), payload)
        return len(payload)

    def quarantined(self, batch_id: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(quarantine_table).order_by(quarantine_table.c.id)
        if batch_id:
            query = query.where(quarantine_table.c.batch_id == batch_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _records(frame: Any, tail: tuple[Any, ...]) -> list[list[Any]]:
    """Rows as lists of plain Python values (None for missing), lineage appended.

    Column-wise conversion into one object array, then ``tolist()``: no Python
    loop per cell.  Integer columns become ``int``, float columns ``float``,
    everything else ``str``.
    """
    import numpy as np
    import pandas as pd

    n = len(frame)
    out = np.empty((n, len(frame.columns) + len(tail)), dtype=object)
    for j, name in enumerate(frame.columns):
        series = frame[name]
        mask = series.isna().to_numpy()
        if pd.api.types.is_integer_dtype(series.dtype):
            values = series.to_numpy(dtype="float64", na_value=np.nan)
            column = values.astype(np.int64, copy=False).astype(object) if not mask.any() else \
                np.where(mask, 0, values).astype(np.int64).astype(object)
        elif pd.api.types.is_float_dtype(series.dtype):
            column = series.to_numpy(dtype="float64", na_value=np.nan).astype(object)
        else:
            column = np.array(series.to_numpy(dtype=object), dtype=object, copy=True)  # never a view
            if not all(isinstance(v, str) for v in column[~mask][:1]):
                column = np.array([str(v) for v in column], dtype=object)
        column[mask] = None
        out[:, j] = column
    for k, value in enumerate(tail):
        out[:, len(frame.columns) + k] = value
    return out.tolist()


def open_store(home: NodeHome) -> FeatureStore:
    """The node's feature store; the first open rewrites raw landing paths of older stores.

    See :meth:`FeatureStore.migrate_path_names` (one primary-key
    lookup once done).
    """
    store = FeatureStore(home.db_url, home.root)
    if not store.path_names_migrated():
        changed = store.migrate_path_names(home.key(), home.landing_dir, home.profiles_dir)
        if changed:
            log.info("feature store: %d manifest entries and batch records renamed to keyed path hashes "
                     "and file references", changed)
    return store
