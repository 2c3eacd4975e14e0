from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa

from mipflow.protocol.datamodel import DataModel
from mipflow.exceptions import StoreError
from mipflow.node.store.feature_store import FeatureStore

MODEL = DataModel.from_dict({
    "code": "tiny", "version": "1", "label": "Tiny",
    "variables": [
        {"code": "dataset", "sql_type": "text", "isCategorical": True,
         "enumerations": [{"code": "a", "label": "A"}, {"code": "b", "label": "B"}]},
        {"code": "age", "sql_type": "real", "isCategorical": False},
        {"code": "score", "sql_type": "int", "isCategorical": False},
        {"code": "note", "sql_type": "text", "isCategorical": False},
    ]})


def frame(rows):
    df = pd.DataFrame(rows, columns=["_pid", "dataset", "_visit", "age", "score", "note"])
    df["score"] = df["score"].astype("Int64")
    return df


def load(store, df, batch="b1"):
    with store.begin() as conn:
        merged = store.upsert_rows(conn, MODEL, df, batch_id=batch, sha256="0" * 64)
        store.refresh_datasets(conn, MODEL)
    return merged


def read(store):
    with store.engine.connect() as conn:
        return pd.read_sql(sa.text('SELECT * FROM dm_tiny_1 ORDER BY _pid'), conn)


def test_upsert_is_idempotent_and_updates(db_url):
    store = FeatureStore(db_url)
    store.add_data_model(MODEL)
    store.add_data_model(MODEL)  # idempotent
    df = frame([("p1", "a", "", 61.5, 3, "x"), ("p2", "a", "", None, None, None), ("p3", "b", "v1", 40.0, 7, "y")])
    assert load(store, df) == 3
    assert load(store, df) == 3
    out = read(store)
    assert len(out) == 3
    assert out.loc[out._pid == "p2", "age"].isna().all() and out.loc[out._pid == "p2", "score"].isna().all()
    assert out.loc[out._pid == "p1", "score"].item() == 3
    assert set(out["_batch_id"]) == {"b1"}
    changed = frame([("p1", "a", "", 62.0, 4, "x")])
    load(store, changed, batch="b2")
    out = read(store)
    assert len(out) == 3
    row = out[out._pid == "p1"].iloc[0]
    assert (row.age, row.score, row._batch_id) == (62.0, 4, "b2")
    counts = {d["dataset"]: d["row_count"] for d in store.datasets("tiny:1")}
    assert counts == {"a": 2, "b": 1}


def test_failed_transaction_leaves_nothing(db_url):
    store = FeatureStore(db_url)
    store.add_data_model(MODEL)
    df = frame([("p1", "a", "", 61.5, 3, "x")])
    with pytest.raises(RuntimeError):
        with store.begin() as conn:
            store.upsert_rows(conn, MODEL, df, batch_id="b1", sha256="0" * 64)
            raise RuntimeError("crash mid-load")
    assert store.count_rows(MODEL) == 0


def test_delete_patients(db_url):
    store = FeatureStore(db_url)
    store.add_data_model(MODEL)
    load(store, frame([("p1", "a", "", 1.0, 1, "x"), ("p1", "a", "v2", 1.0, 1, "x"), ("p2", "b", "", 2.0, 2, "y")]))
    assert store.delete_patients(["p1", "nobody"]) == 2
    assert list(read(store)._pid) == ["p2"]
    assert {d["dataset"] for d in store.datasets()} == {"b"}


def test_changed_model_contents_refused(db_url):
    store = FeatureStore(db_url)
    store.add_data_model(MODEL)
    doc = MODEL.to_dict()
    doc["label"] = "Changed"
    with pytest.raises(StoreError, match="different contents"):
        store.add_data_model(DataModel.from_dict(doc))


def test_text_values_are_bound_not_pasted(db_url):
    store = FeatureStore(db_url)
    store.add_data_model(MODEL)
    nasty = "x'); DROP TABLE dm_tiny_1; --"
    load(store, frame([("p1", "a", "", 1.0, 1, nasty)]))
    assert read(store).note.item() == nasty


def test_unknown_model_message(tmp_path):
    store = FeatureStore(f"sqlite:///{tmp_path / 's.sqlite'}")
    with pytest.raises(StoreError, match="mipflow data-model add"):
        store.data_model("nope:1")


def test_an_older_store_gains_the_new_batch_counts_once(tmp_path):
    """Batch records written before issue 15 item 7 read with 0 for held/inserted/updated/unchanged/identity_changed."""
    import sqlalchemy as sa

    from mipflow.node.store.tables import BATCH_COUNT_COLUMNS

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE mipflow_batches (batch_id VARCHAR(80) PRIMARY KEY, data_model VARCHAR(160) NOT NULL, "
            "source TEXT NOT NULL, sha256 VARCHAR(64) NOT NULL, stage VARCHAR(20) NOT NULL, "
            "status VARCHAR(20) NOT NULL, message TEXT NOT NULL, rows_in BIGINT NOT NULL, loaded BIGINT NOT NULL, "
            "quarantined BIGINT NOT NULL, no_consent BIGINT NOT NULL, duplicates BIGINT NOT NULL, "
            "validation TEXT NOT NULL, started_at VARCHAR(40) NOT NULL, finished_at VARCHAR(40))")
        conn.exec_driver_sql("INSERT INTO mipflow_batches VALUES ('b1', 'm:1', 'ref', 'ab', 'load', 'loaded', '', "
                             "5, 5, 0, 0, 0, '{}', '2026-01-01', NULL)")
    engine.dispose()
    store = FeatureStore(url)
    batch = store.batch("b1")
    assert batch["loaded"] == 5 and all(batch[c] == 0 for c in BATCH_COUNT_COLUMNS)
    store.dispose()
    again = FeatureStore(url)  # the marker makes the second open a lookup; the columns stay
    assert set(BATCH_COUNT_COLUMNS) <= {c["name"] for c in sa.inspect(again.engine).get_columns("mipflow_batches")}
    again.dispose()
