"""mipflow.node.query.pgcopy: PostgreSQL's binary COPY path reads what the CSV path reads."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mipflow.node.query.pgcopy import PID_MD5, ROW_MD5, binary_copy_frame
from mipflow.node.query.read import DEFAULT_CHUNKSIZE, _prepare, _stream, select_frame
from mipflow.node.store.feature_store import FeatureStore

from tests.nodes import postgresql_databases
from tests.mipflow.node.query.cases import (
    ALL_DATASETS,
    MODEL,
    TABLE,
    assert_frames_equal,
    where,
)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgresql_binary_read_equals_the_csv_read(store, subtests):
    """Complete-case numerical/categorical selections on PostgreSQL travel as binary COPY
    (:func:`mipflow.node.query.pgcopy.binary_copy_frame`): the same rows, order, values and types as
    the CSV COPY path; a stored value outside its codes falls back to the CSV path."""

    def csv_read(**kwargs):
        statement, chosen = _prepare(store, MODEL, kwargs["datasets"], kwargs["variables"],
                                     kwargs.get("filters"), True)
        frames = list(_stream(store, statement, chosen, DEFAULT_CHUNKSIZE))
        return pd.concat(frames, ignore_index=True) if frames else None

    cases = {
        "all": dict(datasets=ALL_DATASETS, variables=["age", "score", "grade", "diag"]),
        "subset": dict(datasets=["c", "a"], variables=["diag", "age"]),
        "dataset-as-variable": dict(datasets=["b", "a", "zz"], variables=["dataset", "grade"]),
        "filtered": dict(datasets=ALL_DATASETS, variables=["score", "grade"],
                         filters=where("age", "greater", 40)),
    }
    for name, kwargs in cases.items():
        with subtests.test(msg=name):
            got = select_frame(store, MODEL, **kwargs)
            statement, chosen = _prepare(store, MODEL, kwargs["datasets"], kwargs["variables"],
                                         kwargs.get("filters"), True)
            assert binary_copy_frame(store, statement, chosen, list(dict.fromkeys(kwargs["datasets"])),
                                     chunksize=DEFAULT_CHUNKSIZE) is not None
            assert len(got) > 0
            assert_frames_equal(got, csv_read(**kwargs))
            assert [type(v) for v in got["dataset"].unique()] == [str] * got["dataset"].nunique()

    with store.begin() as conn:  # a value the data model does not know
        conn.exec_driver_sql(f"UPDATE {TABLE} SET diag = 'XX' WHERE diag = 'CN'")
    kwargs = dict(datasets=ALL_DATASETS, variables=["age", "diag"])
    statement, chosen = _prepare(store, MODEL, ALL_DATASETS, ["age", "diag"], None, True)
    assert binary_copy_frame(store, statement, chosen, ALL_DATASETS, chunksize=DEFAULT_CHUNKSIZE) is None
    got = select_frame(store, MODEL, **kwargs)
    assert "XX" in set(got["diag"])
    assert_frames_equal(got, csv_read(**kwargs))


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgresql_binary_read_carries_the_same_row_identity(store):
    """With row identity (the node's differencing controls), the binary path sends the store's MD5
    of each row's key instead of the key columns; the keyed row keys equal the CSV path's."""
    from mipflow.node.controls.differencing import patient_keys, row_keys

    kwargs = dict(datasets=ALL_DATASETS, variables=["age", "grade", "diag"])
    got = select_frame(store, MODEL, row_identity=True, **kwargs)
    assert ROW_MD5 in got.columns and "_pid" not in got.columns and len(got) > 0
    statement, chosen = _prepare(store, MODEL, ALL_DATASETS, kwargs["variables"], None, True, True)
    via_csv = pd.concat(list(_stream(store, statement, chosen, DEFAULT_CHUNKSIZE)), ignore_index=True)
    assert "_pid" in via_csv.columns and ROW_MD5 not in via_csv.columns
    assert_frames_equal(got.drop(columns=[ROW_MD5, PID_MD5]), via_csv.drop(columns=["_pid", "_visit"]))
    key = "0123456789abcdef"
    np.testing.assert_array_equal(row_keys(got, key), row_keys(via_csv, key))
    np.testing.assert_array_equal(patient_keys(got, key), patient_keys(via_csv, key))  # ADR 0030
    assert len(set(row_keys(got, key))) == len(got)  # one key per row
    assert not np.array_equal(row_keys(got, key), row_keys(got, "fedcba9876543210"))


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgresql_row_identity_column_is_added_to_an_older_table_and_kept_by_the_server(store):
    """A table from before the stored row identity column gets it on the first read with row
    identity; rows loaded afterwards get theirs from the server; the keys equal the CSV path's."""
    from mipflow.node.controls.differencing import row_keys
    from mipflow.node.store.tables import ROW_MD5_COLUMN

    table = store.model_table(MODEL).name
    with store.begin() as conn:  # as a store created by an earlier mipflow
        conn.exec_driver_sql(f'ALTER TABLE "{table}" DROP COLUMN {ROW_MD5_COLUMN}')
    reopened = FeatureStore(store.url)
    try:
        kwargs = dict(datasets=ALL_DATASETS, variables=["age", "grade", "diag"])
        got = select_frame(reopened, MODEL, row_identity=True, **kwargs)
        statement, chosen = _prepare(reopened, MODEL, ALL_DATASETS, kwargs["variables"], None, True, True)
        via_csv = pd.concat(list(_stream(reopened, statement, chosen, DEFAULT_CHUNKSIZE)), ignore_index=True)
        key = "0123456789abcdef"
        np.testing.assert_array_equal(row_keys(got, key), row_keys(via_csv, key))
        with reopened.begin() as conn:
            expression = conn.exec_driver_sql(
                "SELECT generation_expression FROM information_schema.columns "
                f"WHERE table_name = '{table}' AND column_name = '{ROW_MD5_COLUMN}'").scalar_one()
        assert "md5" in expression
        # a row loaded now: the server computes its identity
        frame = pd.DataFrame({"_pid": ["late-1"], "dataset": [ALL_DATASETS[0]], "_visit": ["v9"],
                              "age": [71.5], "grade": [2], "diag": ["AD"]})
        with reopened.begin() as conn:
            reopened.upsert_rows(conn, MODEL, frame, batch_id="late", sha256="0" * 64)
        with reopened.begin() as conn:
            stored = conn.exec_driver_sql(
                f'SELECT {ROW_MD5_COLUMN} FROM "{table}" WHERE _pid = %s', ("late-1",)).scalar_one()
        import hashlib

        assert stored == hashlib.md5(f"late-1\x1f{ALL_DATASETS[0]}\x1fv9".encode()).hexdigest()
    finally:
        reopened.dispose()




def test_postgresql_binary_read_carries_the_visit_order_not_the_visit_keys():
    """With ``visit_order`` (gee, ADR 0036) the binary read adds each row's rank among its patient's
    selected rows by visit key, compared byte by byte as Python compares the keys (``"B" < "a"``,
    ``"V10" < "V2"``, ``"Z" < "ä"``: a locale's collation orders these otherwise), and never the keys;
    without it no rank is read.  The ranks order each patient's rows exactly as ``_visit`` does on the
    other read paths, also when a filter leaves some visits out."""

    keys = ["V2", "V10", "a", "B", "ä", "Z", "V1"]
    rng = np.random.default_rng(7)
    rows = []
    for patient in range(12):
        visits = rng.permutation(keys)[: 2 + patient % 6]
        rows += [{"_pid": f"p{patient:02d}", "dataset": ALL_DATASETS[patient % 3], "_visit": str(v),
                  "age": float(rng.integers(40, 90)), "score": int(rng.integers(0, 10))} for v in visits]
    frame = pd.DataFrame(rows)
    frame["score"] = frame["score"].astype("Int64")
    with postgresql_databases(1, icu_locale="und") as (url,):
        _check_visit_ranks(FeatureStore(url), frame, keys)


def _check_visit_ranks(store: FeatureStore, frame: pd.DataFrame, keys: list[str]) -> None:
    from mipflow.node.query.pgcopy import VISIT_RANK

    try:
        store.add_data_model(MODEL)
        with store.begin() as conn:
            store.upsert_rows(conn, MODEL, frame, batch_id="b", sha256="0" * 64)
            # the database collates by a locale (as a hospital's may): "a" < "B" there, not in Python
            assert conn.exec_driver_sql(f"SELECT min(_visit) FROM {TABLE} WHERE _visit IN ('a', 'B')").scalar() == "a"
        for filters in (None, where("age", "greater", 60)):
            kwargs = dict(datasets=ALL_DATASETS, variables=["age", "score"], filters=filters)
            got = select_frame(store, MODEL, row_identity=True, visit_order=True, **kwargs)
            assert VISIT_RANK in got.columns and not {"_pid", "_visit"} & set(got.columns) and len(got) > 0
            assert VISIT_RANK not in select_frame(store, MODEL, row_identity=True, **kwargs).columns
            statement, chosen = _prepare(store, MODEL, ALL_DATASETS, ["age", "score"], filters, True, True)
            via_csv = pd.concat(list(_stream(store, statement, chosen, DEFAULT_CHUNKSIZE)), ignore_index=True)
            assert len(via_csv) == len(got)
            # the same rows on both paths (ages and scores identify them within a patient here)
            ranked = {}
            for pid, part in via_csv.groupby("_pid"):
                ordered = sorted(part["_visit"])  # Python's order of the keys
                for _, row in part.iterrows():
                    ranked[(pid, row["age"], row["score"])] = ordered.index(row["_visit"]) + 1
            import hashlib

            digest = {hashlib.md5(pid.encode()).hexdigest().encode(): pid for pid in via_csv["_pid"]}
            for _, row in got.iterrows():
                assert row[VISIT_RANK] == ranked[(digest[row[PID_MD5]], row["age"], row["score"])]
        assert sorted(keys) != sorted(keys, key=str.lower)  # the case where a locale's order differs
    finally:
        store.dispose()
