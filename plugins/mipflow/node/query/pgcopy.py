"""PostgreSQL ``COPY`` out of the feature store, and a decoder for its binary format.

:func:`copy_out` runs ``COPY (SELECT ...) TO STDOUT`` into a file;
:func:`binary_copy_frame` reads a complete-case selection of numerical and
categorical variables as fixed-width binary records with numpy (the fast path
of :func:`mipflow.node.query.read.select_frame`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from mipflow.node.query.filters import code_to_db
from mipflow.node.store.feature_store import FeatureStore
from mipflow.node.store.tables import ROW_MD5_COLUMN
from mipflow.protocol.datamodel import Variable

#: On PostgreSQL's binary path the row identity travels as one fixed-width column instead: the MD5
#: (hex) of ``_pid + "\x1f" + dataset + "\x1f" + _visit``, kept by the server in a stored generated
#: column (:data:`mipflow.node.store.tables.ROW_MD5_COLUMN`), what
#: :func:`mipflow.node.controls.differencing.row_keys` computes itself from the two columns on the other paths.
ROW_MD5 = ROW_MD5_COLUMN
#: And the patient's identity beside it: the MD5 (hex) of ``_pid``, computed by the server as it reads
#: (:func:`mipflow.node.controls.differencing.patient_keys`, ADR 0030).
PID_MD5 = "_pid_md5"
#: And, when asked for (``visit_order``), each row's place among its patient's selected visits: 1, 2, ...
#: in the order of the visit keys (``_visit`` compared byte by byte, ``COLLATE "C"``: the order Python
#: gives the same keys), computed by the server as it reads.  What an algorithm whose visits need an
#: order (``gee``'s AR(1), ADR 0036) needs of ``_visit``, and less: never the key itself.
VISIT_RANK = "_visit_rank"


def copy_out(store: FeatureStore, statement: sa.Select, options: str, spool: Any) -> None:
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


#: Header of PostgreSQL's binary COPY format: signature, flags, header extension length.
_PGCOPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_PGCOPY_HEADER = len(_PGCOPY_SIGNATURE) + 8
_PGCOPY_TRAILER = b"\xff\xff"


def binary_copy_frame(store: FeatureStore, statement: sa.Select, chosen: list[Variable],
                      datasets: list[str], row_identity: bool = False, *,
                      chunksize: int, visit_order: bool = False) -> pd.DataFrame | None:
    """:func:`~mipflow.node.query.read.select_frame` for complete-case numerical and categorical
    variables on PostgreSQL.

    The same rows, in the same order, as the CSV ``COPY`` path, but each value
    travels as a fixed-width binary field: numbers as float8, the dataset and
    every categorical value as the 1-based position of its code in the list of
    codes (``array_position``), so the server formats no text and the client
    parses none; every record has the same layout and is read with numpy in
    chunks.  Returns None (the caller takes the CSV path) when a stored value
    is not one of its variable's codes, which the CSV path reports in its
    usual way.

    Parameters
    ----------
    store : FeatureStore
        A PostgreSQL feature store.
    statement : sqlalchemy.Select
        The checked selection (:func:`mipflow.node.query.read.select_statement`).
    chosen : list of Variable
        The selected variables, in order.
    datasets : list of str
        The requested dataset codes (their positions travel instead of the text).
    row_identity : bool
        Also read the stored row identity (column :data:`ROW_MD5`, 32 bytes per row).
    chunksize : int
        Records decoded per step.
    visit_order : bool
        With ``row_identity``: also each row's rank among its patient's selected rows by visit key
        (column :data:`VISIT_RANK`, int32; a window over the selection, so only when asked for).
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
            stored = [code_to_db(var, code) for code in codes]
            element = {"int": sa.BigInteger(), "real": sa.Float()}.get(var.sql_type, sa.String())
            lists.append((var.code, codes))
            columns.append(sa.func.coalesce(sa.func.array_position(
                sa.bindparam(None, stored, type_=pg.ARRAY(element)), column), 0).label(var.code))
        else:
            columns.append(sa.cast(column, pg.DOUBLE_PRECISION).label(var.code))
    if row_identity:  # 32 hex characters, kept by the server: one more fixed-width field (ROW_MD5)
        columns.append(table.c[ROW_MD5_COLUMN].label(ROW_MD5))
        columns.append(sa.func.md5(sa.func.coalesce(table.c._pid, "")).label(PID_MD5))
        if visit_order:
            rank = sa.func.row_number().over(partition_by=(table.c.dataset, table.c._pid),
                                             order_by=table.c._visit.collate("C"))
            columns.append(sa.cast(rank, sa.Integer).label(VISIT_RANK))
    binary = statement.with_only_columns(*columns, maintain_column_froms=True)
    # one record: int16 field count, then per field int32 length + payload (int4, float8 or 32 bytes)
    fields = [("_count", ">i2")]
    for i, column in enumerate(columns):
        is_position = i == 0 or any(name == column.name for name, _ in lists)
        kind = "S32" if column.name in (ROW_MD5, PID_MD5) else ">i4" if is_position or column.name == VISIT_RANK \
            else ">f8"
        fields += [(f"_len{i}", ">i4"), (column.name, kind)]
    record = np.dtype(fields)
    with tempfile.TemporaryFile("w+b") as spool:
        copy_out(store, binary, "FORMAT binary", spool)
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
            chunk = np.fromfile(spool, dtype=record, count=min(chunksize, n_rows - done))
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
        frame[PID_MD5] = pd.Series(out.pop(PID_MD5).astype(object), dtype=object)
    frame.update({name: pd.Series(values) for name, values in out.items()})
    order = ["dataset"] + [v.code for v in chosen if v.code != "dataset"] + ([ROW_MD5, PID_MD5] if row_identity else []) \
        + ([VISIT_RANK] if row_identity and visit_order else [])
    return pd.DataFrame({name: frame[name] for name in order})
