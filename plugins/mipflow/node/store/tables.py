"""The feature store's tables: one per data model, and the bookkeeping tables.

A data model's table (``dm_<code>_<version>``, :func:`data_model_table`) is
generated from its CDE variables, keyed on ``(_pid, dataset, _visit)`` with
lineage columns (``_batch_id``, ``_source_sha256``, ``_loaded_at``).  The
bookkeeping tables:

``mipflow_data_models``  the CDE documents the node holds
``mipflow_datasets``     which datasets of which data model, with row counts
``mipflow_files``        the manifest: every landing file by SHA-256, with a keyed hash of its path
                         (never the path: see :mod:`mipflow.node.files`)
``mipflow_batches``      one row per ingested file: status and row counts (where every row went; the
                         loaded rows as inserted, updated, unchanged; keys whose identifying-derived
                         values changed)
``mipflow_quarantine``   rows that failed, with their reason
``mipflow_consent_log``  deletions made because consent was withdrawn
``mipflow_meta``         one-off migrations done on this store
``mipflow_watermarks``   per database source: the committed extraction watermarks (advanced by the load);
                        per PACS (`pacs:<name>`): the committed change cursor
``mipflow_db_extracts``  per database batch: the watermark range it extracts and the rows it deleted
``mipflow_pacs_pulls``   per PACS pull: the change range it downloaded and its instances (keyed names, SHA-256)
"""
from __future__ import annotations

import sqlalchemy as sa

from mipflow.exceptions import StoreError
from mipflow.protocol.datamodel import DataModel

KEY_COLUMNS = ("_pid", "dataset", "_visit")
#: Count columns of ``mipflow_batches`` added after its first release: an older store gets them
#: (``ALTER TABLE ... ADD COLUMN``, default 0) when it is first opened.
BATCH_COUNT_COLUMNS = ("held", "inserted", "updated", "unchanged", "identity_changed")
LINEAGE_COLUMNS = ("_batch_id", "_source_sha256", "_loaded_at")
#: PostgreSQL only: the MD5 (hex) of a row's key ``_pid + "\x1f" + dataset + "\x1f" + _visit``, a
#: stored generated column the server keeps up to date, so that the node's differencing controls
#: (:mod:`mipflow.node.controls.differencing`) read each row's identity as one fixed-width field instead of hashing
#: every row again for every new selection.  Never selected for a request's variables.
ROW_MD5_COLUMN = "_row_md5"
ROW_MD5_EXPRESSION = "md5(coalesce(_pid, '') || chr(31) || dataset || chr(31) || coalesce(_visit, ''))"
_SQL_TYPES = {"int": sa.BigInteger, "real": sa.Float(precision=53), "text": sa.Text}

metadata = sa.MetaData()

data_models_table = sa.Table(
    "mipflow_data_models", metadata,
    sa.Column("code", sa.String(100), primary_key=True),
    sa.Column("version", sa.String(50), primary_key=True),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("added_at", sa.String(40), nullable=False),
)

datasets_table = sa.Table(
    "mipflow_datasets", metadata,
    sa.Column("data_model", sa.String(160), primary_key=True),
    sa.Column("dataset", sa.String(200), primary_key=True),
    sa.Column("row_count", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.String(40), nullable=False),
)

files_table = sa.Table(
    "mipflow_files", metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("first_seen", sa.String(40), nullable=False),
    sa.Column("batch_id", sa.String(80), nullable=True),
)

batches_table = sa.Table(
    "mipflow_batches", metadata,
    sa.Column("batch_id", sa.String(80), primary_key=True),
    sa.Column("data_model", sa.String(160), nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("stage", sa.String(20), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("message", sa.Text, nullable=False, default=""),
    sa.Column("rows_in", sa.BigInteger, nullable=False, default=0),
    sa.Column("loaded", sa.BigInteger, nullable=False, default=0),
    sa.Column("quarantined", sa.BigInteger, nullable=False, default=0),
    sa.Column("no_consent", sa.BigInteger, nullable=False, default=0),
    sa.Column("duplicates", sa.BigInteger, nullable=False, default=0),
    # ADR 0004, issue 15 item 7 (added to older stores by FeatureStore: BATCH_COUNT_COLUMNS)
    sa.Column("held", sa.BigInteger, nullable=False, default=0, server_default="0"),
    sa.Column("inserted", sa.BigInteger, nullable=False, default=0, server_default="0"),
    sa.Column("updated", sa.BigInteger, nullable=False, default=0, server_default="0"),
    sa.Column("unchanged", sa.BigInteger, nullable=False, default=0, server_default="0"),
    sa.Column("identity_changed", sa.BigInteger, nullable=False, default=0, server_default="0"),
    sa.Column("validation", sa.Text, nullable=False, default="{}"),
    sa.Column("started_at", sa.String(40), nullable=False),
    sa.Column("finished_at", sa.String(40), nullable=True),
)

quarantine_table = sa.Table(
    "mipflow_quarantine", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("batch_id", sa.String(80), nullable=False, index=True),
    sa.Column("row_number", sa.BigInteger, nullable=False),
    sa.Column("stage", sa.String(20), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("record", sa.Text, nullable=True),
)

consent_log_table = sa.Table(
    "mipflow_consent_log", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("patients", sa.Integer, nullable=False),
    sa.Column("data_model", sa.String(160), nullable=False),
    sa.Column("rows_deleted", sa.BigInteger, nullable=False),
    sa.Column("at", sa.String(40), nullable=False),
)

meta_table = sa.Table(
    "mipflow_meta", metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", sa.String(40), nullable=False),
)

watermarks_table = sa.Table(
    "mipflow_watermarks", metadata,
    sa.Column("source", sa.String(100), primary_key=True),
    sa.Column("data_model", sa.String(160), nullable=False),
    sa.Column("changes", sa.Text, nullable=True),    # last committed value of the change watermark
    sa.Column("deletions", sa.Text, nullable=True),  # last committed value of the deletion watermark
    sa.Column("batch_id", sa.String(80), nullable=True),
    sa.Column("updated_at", sa.String(40), nullable=False),
)

pacs_pulls_table = sa.Table(
    "mipflow_pacs_pulls", metadata,
    sa.Column("pull_id", sa.String(80), primary_key=True),
    sa.Column("source", sa.String(100), nullable=False, index=True),
    sa.Column("since", sa.BigInteger, nullable=False),   # the PACS change sequence it read after
    sa.Column("until", sa.BigInteger, nullable=False),   # the last change it covers
    sa.Column("instances", sa.Text, nullable=False),     # JSON [[keyed file name, sha256], ...]
    sa.Column("state", sa.String(20), nullable=False),   # open | committed
    sa.Column("accounting", sa.Text, nullable=False, default="{}"),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("committed_at", sa.String(40), nullable=True),
)

db_extracts_table = sa.Table(
    "mipflow_db_extracts", metadata,
    sa.Column("batch_id", sa.String(80), primary_key=True),
    sa.Column("source", sa.String(100), nullable=False, index=True),
    sa.Column("changes_after", sa.Text, nullable=True),
    sa.Column("changes_upto", sa.Text, nullable=True),
    sa.Column("deletions_after", sa.Text, nullable=True),
    sa.Column("deletions_upto", sa.Text, nullable=True),
    sa.Column("deleted", sa.BigInteger, nullable=False, default=0),
)

#: ``mipflow_meta`` entry set once the manifest holds path keys only (see
#: :meth:`mipflow.node.store.feature_store.FeatureStore.migrate_path_names`).
PATH_NAMES_MARKER = ("manifest_paths", "hmac-sha256")
#: ``mipflow_meta`` entry recording that ``mipflow_batches`` has :data:`BATCH_COUNT_COLUMNS`.
BATCH_COUNTS_MARKER = ("batch_count_columns", "v1")
#: ``mipflow_meta`` row holding the digest of the withdrawn set last applied (the data version follows it)
CONSENT_APPLIED = "consent_applied"


def data_model_table(model: DataModel, dialect: str) -> sa.Table:
    """The SQLAlchemy table of a data model on a ``dialect`` database (not created).

    Raises
    ------
    StoreError
        If a variable clashes with a lineage column.
    """
    columns: list[sa.Column] = [
        sa.Column("_pid", sa.String(64), primary_key=True),
        sa.Column("dataset", sa.String(200), primary_key=True),
        sa.Column("_visit", sa.String(100), primary_key=True),
    ]
    for var in model:
        if var.code in KEY_COLUMNS:
            continue
        if var.code.startswith("_") and var.code in LINEAGE_COLUMNS:
            raise StoreError(f"variable {var.code!r} clashes with a lineage column")
        columns.append(sa.Column(var.code, _SQL_TYPES[var.sql_type], nullable=True))
    columns += [
        sa.Column("_batch_id", sa.String(80), nullable=False),
        sa.Column("_source_sha256", sa.String(64), nullable=False),
        sa.Column("_loaded_at", sa.String(40), nullable=False),
    ]
    if dialect == "postgresql":
        columns.append(sa.Column(ROW_MD5_COLUMN, sa.Text, sa.Computed(ROW_MD5_EXPRESSION, persisted=True)))
    return sa.Table(model.table_name, sa.MetaData(), *columns)
