"""mipflow.node.query.read: rows read from the feature store, compared with pandas.

The store-backed tests load one small table per backend and walk their case
tables with ``subtests`` (one database per backend instead of one per case).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from mipflow.exceptions import RequestError
from mipflow.node.query.read import (
    count_rows,
    iter_frames,
    select_frame,
    select_statement,
)
from mipflow.node.store.feature_store import FeatureStore

from tests.mipflow.node.query.cases import (
    ALL_DATASETS,
    FILTER_CASES,
    MODEL,
    REF,
    ROWS,
    TABLE,
    VARIABLES,
    assert_frames_equal,
    expected_frame,
    group,
    rule,
    where,
)

SELECT_CASES = [
    pytest.param(dict(datasets=ALL_DATASETS, variables=["age", "score"]), None,
                 dict(variables=["age", "score"], complete_case=True), id="complete-case-drops-missing"),
    pytest.param(dict(datasets=ALL_DATASETS, variables=["age", "score"], complete_case=False), None,
                 dict(variables=["age", "score"]), id="complete-case-off-keeps-missing"),
    pytest.param(dict(datasets=ALL_DATASETS, variables=VARIABLES), None,
                 dict(variables=VARIABLES, complete_case=True), id="complete-case-all-variables"),
    pytest.param(dict(datasets=["a"], variables=["age"], complete_case=False), None,
                 dict(datasets=["a"], variables=["age"]), id="one-dataset"),
    pytest.param(dict(datasets=("c", "a"), variables=["diag"], complete_case=False), None,
                 dict(datasets=["a", "c"], variables=["diag"]), id="two-datasets-tuple"),
    pytest.param(dict(datasets=["a", "zz-not-here"], variables=["age"]), None,
                 dict(datasets=["a"], variables=["age"], complete_case=True),
                 id="unknown-dataset-matches-nothing"),
    pytest.param(dict(datasets=["zz-not-here"], variables=["age", "diag"]), None,
                 dict(datasets=[], variables=["age", "diag"]), id="only-unknown-datasets-empty"),
    pytest.param(dict(datasets=["b", "b"], variables=["score", "age", "score"]), None,
                 dict(datasets=["b"], variables=["score", "age"], complete_case=True),
                 id="duplicates-read-once"),
    pytest.param(dict(datasets=ALL_DATASETS, variables=["dataset", "grade"]), None,
                 dict(variables=["grade"], complete_case=True), id="dataset-as-variable"),
    pytest.param(dict(datasets=ALL_DATASETS, variables=[]), None, dict(variables=[]), id="no-variables"),
    pytest.param(dict(datasets=["a", "b"], variables=["age", "grade"], filters=where("diag", "equal", "MCI")),
                 lambda d: d.diag == "MCI",
                 dict(datasets=["a", "b"], variables=["age", "grade"], complete_case=True),
                 id="filter-on-unselected-variable"),
    pytest.param(dict(datasets=ALL_DATASETS, variables=["age"], filters=where("note", "is_null")),
                 lambda d: d.note.isna(), dict(variables=["age"], complete_case=True),
                 id="is_null-on-unselected-variable"),
    pytest.param(dict(datasets=["c"], variables=["age", "score"],
                      filters=group("OR", rule("age", "is_null"), rule("score", "greater", 5)),
                      complete_case=True),
                 lambda d: d.age.isna() | (d.score > 5), dict(datasets=["c"], variables=["age", "score"],
                                                              complete_case=True),
                 id="filter-then-complete-case"),
]

# (kwargs for select_frame, outcome: "error" or the number of rows expected)
N_A = int((ROWS["dataset"] == "a").sum())
INJECTIONS = [
    pytest.param(dict(filters=where(f"age; DROP TABLE {TABLE}", "equal", 1)), "error", id="field-drop-table"),
    pytest.param(dict(filters=where('age" OR 1=1 --', "equal", 1)), "error", id="field-quote-or"),
    pytest.param(dict(filters=where("age) OR (1=1", "equal", 1)), "error", id="field-parenthesis"),
    pytest.param(dict(filters=where("diag", "equal", "' OR '1'='1")), "error", id="categorical-value-or"),
    pytest.param(dict(filters=where("age", "equal", "1 OR 1=1")), "error", id="number-value-or"),
    pytest.param(dict(filters=where("note", "equal", "zz' OR '1'='1")), 0, id="text-value-or"),
    pytest.param(dict(filters=where("note", "equal", f"'; DROP TABLE {TABLE}; --")), 0, id="text-value-drop"),
    pytest.param(dict(filters=where("note", "in", ["q') OR ('1'='1", "z"])), 0, id="text-list-or"),
    pytest.param(dict(filters=where("age", "= 1 OR 1=1 --", 1)), "error", id="operator"),
    pytest.param(dict(filters=group("AND 1=1 OR", rule("age", "equal", 1))), "error", id="condition"),
    pytest.param(dict(datasets=["a' OR 'x'='x"]), 0, id="dataset-or"),
    pytest.param(dict(datasets=[f"a'); DROP TABLE {TABLE}; --"]), 0, id="dataset-drop"),
    pytest.param(dict(datasets=["a", "b') OR 1=1 --"]), N_A, id="dataset-or-beside-real-one"),
    pytest.param(dict(datasets=[1]), "error", id="dataset-not-text"),
    pytest.param(dict(datasets="a' OR 'x'='x"), "error", id="datasets-as-string"),
    pytest.param(dict(variables=["age", f"age FROM {TABLE}; DROP TABLE {TABLE}; --"]), "error",
                 id="variable-drop-table"),
    pytest.param(dict(variables=['"age"']), "error", id="variable-quoted"),
    pytest.param(dict(variables=["*"]), "error", id="variable-star"),
    pytest.param(dict(variables=["_pid"]), "error", id="variable-pseudonym"),
    pytest.param(dict(variables="age"), "error", id="variables-as-string"),
]



@pytest.mark.parametrize("values", [
    pytest.param(["' OR '1'='1", "x'; DROP TABLE t; --", 'a" OR "b"="b'], id="quotes"),
])
def test_statement_carries_values_as_parameters(values, tmp_path):
    """The full SELECT holds user text only in its parameters, never in the SQL string."""
    store = FeatureStore(f"sqlite:///{tmp_path / 's.sqlite'}")
    store.add_data_model(MODEL)
    statement = select_statement(store, MODEL, datasets=values, variables=["age"],
                                 filters=where("note", "in", values))
    compiled = statement.compile(dialect=store.engine.dialect, compile_kwargs={"render_postcompile": True})
    for value in values:
        assert value not in str(compiled)
        assert list(compiled.params.values()).count(value) == 2  # once as a dataset, once in the filter
    store.dispose()



# --------------------------------------------------------------------------- reading rows (both backends)


def test_filters_select_the_same_rows_as_pandas(store, subtests):
    for case in FILTER_CASES:
        filters, reference = case.values
        with subtests.test(msg=case.id):
            got = select_frame(store, MODEL, datasets=ALL_DATASETS, variables=VARIABLES, filters=filters,
                               complete_case=False)
            want = expected_frame(None if reference is None else reference(REF))
            assert_frames_equal(got, want)
            assert count_rows(store, MODEL, datasets=ALL_DATASETS, variables=VARIABLES, filters=filters,
                              complete_case=False) == len(want)


def test_selection_matches_pandas(store, subtests):
    for case in SELECT_CASES:
        kwargs, reference, expected = case.values
        with subtests.test(msg=case.id):
            got = select_frame(store, MODEL, **kwargs)
            want = expected_frame(None if reference is None else reference(REF), **expected)
            assert_frames_equal(got, want)
            assert count_rows(store, MODEL, **{"filters": None, **kwargs}) == len(want)


def test_columns_are_typed_for_algorithms(store):
    frame = select_frame(store, MODEL, datasets=ALL_DATASETS, variables=VARIABLES, complete_case=False)
    assert list(frame.columns) == ["dataset", *VARIABLES]
    assert frame["age"].dtype == np.float64 and frame["score"].dtype == np.float64
    assert all(frame[c].dtype == object for c in ("dataset", "grade", "diag", "note"))
    assert set(frame["grade"].dropna()) <= {"1", "2", "3"}
    assert all(type(v) is str for v in frame["note"].dropna())
    assert any(v is None for v in frame["diag"]) and frame["age"].isna().any()
    assert math.isclose(frame["age"].sum(), REF["age"].sum(), rel_tol=1e-12)


def test_rows_stream_in_chunks(store):
    whole = select_frame(store, MODEL, datasets=ALL_DATASETS, variables=["age", "grade"])
    chunks = list(iter_frames(store, MODEL, datasets=ALL_DATASETS, variables=["age", "grade"], chunksize=7))
    assert len(chunks) == math.ceil(len(whole) / 7) and all(len(c) <= 7 for c in chunks)
    assert_frames_equal(pd.concat(chunks, ignore_index=True), whole)
    with pytest.raises(ValueError, match="chunksize"):
        iter_frames(store, MODEL, datasets=ALL_DATASETS, variables=["age"], chunksize=0)


def test_injection_attempts_are_refused_or_match_nothing(store, subtests):
    before = store.count_rows(MODEL)
    for case in INJECTIONS:
        kwargs, outcome = case.values
        kwargs = {"datasets": ALL_DATASETS, "variables": ["age"], "complete_case": False, **kwargs}
        with subtests.test(msg=case.id):
            if outcome == "error":
                with pytest.raises(RequestError):
                    select_frame(store, MODEL, **kwargs)
                with pytest.raises(RequestError):
                    count_rows(store, MODEL, **kwargs)
            else:
                assert len(select_frame(store, MODEL, **kwargs)) == outcome
                assert count_rows(store, MODEL, **kwargs) == outcome
            assert store.count_rows(MODEL) == before
    inspector = sa.inspect(store.engine)
    assert inspector.has_table(TABLE) and inspector.has_table("mipflow_data_models")
    assert store.count_rows(MODEL) == len(ROWS)
    assert [m.key for m in store.data_models()] == [MODEL.key]


@pytest.mark.parametrize("kwargs, message", [
    pytest.param(dict(datasets=[], variables=["age"]), r"at least one dataset", id="no-datasets"),
    pytest.param(dict(datasets=[None], variables=["age"]), r"None is not text", id="dataset-null"),
    pytest.param(dict(datasets=["a\x00"], variables=["age"]), r"NUL", id="dataset-nul"),
    pytest.param(dict(datasets=None, variables=["age"]), r"list of dataset codes", id="datasets-null"),
    pytest.param(dict(datasets=["a"], variables=["age", "weight", "height"]),
                 r"'weight', 'height' are not in",
                 id="unknown-variables-named"),
    pytest.param(dict(datasets=["a"], variables=[3]), r"3 is not in data model", id="variable-not-text"),
    pytest.param(dict(datasets=["a"], variables=None), r"list of variable codes", id="variables-null"),
    pytest.param(dict(datasets=["a"], variables=["age"], filters=where("x", "equal", 1)),
                 r"'x' is not a variable",
                 id="bad-filter"),
])
def test_bad_requests_are_refused_before_touching_the_database(kwargs, message, tmp_path):
    store = FeatureStore(f"sqlite:///{tmp_path / 'empty.sqlite'}")  # the model's table does not even exist
    for call in (select_frame, count_rows):
        with pytest.raises(RequestError, match=message):
            call(store, MODEL, **kwargs)
    store.dispose()


def test_model_without_data_at_node(db_url):
    store = FeatureStore(db_url)
    with pytest.raises(RequestError, match="holds no data for data model qry:1"):
        select_frame(store, MODEL, datasets=["a"], variables=["age"])
    store.add_data_model(MODEL)  # registered, no rows yet: an empty, typed frame
    frame = select_frame(store, MODEL, datasets=["a"], variables=["age", "diag"])
    assert frame.empty and list(frame.columns) == ["dataset", "age", "diag"]
    assert frame["age"].dtype == np.float64 and frame["diag"].dtype == object
    assert count_rows(store, MODEL, datasets=["a"], variables=["age"]) == 0
    store.dispose()



def test_the_row_identity_column_is_never_a_request_variable(store):
    from mipflow.node.store.tables import ROW_MD5_COLUMN

    with pytest.raises(RequestError):
        select_frame(store, MODEL, datasets=ALL_DATASETS, variables=[ROW_MD5_COLUMN])



# --------------------------------------------------------------------------- ledger keys read with the rows (ADR 0044)

KEYED_CASES = [
    pytest.param(dict(datasets=ALL_DATASETS, variables=["age", "score"]), id="numerical"),
    pytest.param(dict(datasets=ALL_DATASETS, variables=["age", "grade", "diag"]), id="with-categorical"),
    pytest.param(dict(datasets=["b", "a"], variables=["score", "diag"],
                      filters=where("age", "greater", 30)), id="filtered"),
    pytest.param(dict(datasets=["zz-not-here"], variables=["age"]), id="empty"),
]


@pytest.mark.parametrize("kwargs", KEYED_CASES)
def test_rows_read_with_their_ledger_keys_equal_the_text_identity_path(kwargs, db_url):
    """With ``row_key`` the selection carries the ledger's row and patient keys (uint64) instead of
    ``_pid``/``_visit`` text; values, order and keys are those of the text path, bit for bit (on
    PostgreSQL ``row_key`` is not used and the frame is the one without it)."""
    from mipflow.node.controls.differencing import PID_KEY, ROW_KEY, hash_key, patient_keys, row_keys

    store = FeatureStore(db_url)
    store.add_data_model(MODEL)
    with store.begin() as conn:
        store.upsert_rows(conn, MODEL, ROWS, batch_id="b", sha256="0" * 64)
    key = hash_key(b"node secret for the test")
    try:
        text = select_frame(store, MODEL, row_identity=True, **kwargs)
        keyed = select_frame(store, MODEL, row_identity=True, row_key=key, **kwargs)
    finally:
        store.dispose()
    if store.dialect == "sqlite":
        assert ROW_KEY in keyed.columns and "_pid" not in keyed.columns
        assert keyed[ROW_KEY].dtype == np.uint64 and keyed[PID_KEY].dtype == np.uint64
    values = ["dataset", *dict.fromkeys(kwargs["variables"])]
    assert_frames_equal(keyed[values], text[values])
    np.testing.assert_array_equal(row_keys(keyed, key), row_keys(text, key))
    np.testing.assert_array_equal(patient_keys(keyed, key), patient_keys(text, key))
    if store.dialect == "sqlite" and len(keyed):
        with pytest.raises(ValueError, match="another ledger key"):  # keys of one node are no other's
            row_keys(keyed, hash_key(b"another node"))


def test_a_keyed_read_leaves_the_stores_page_cache_setting_as_it_was(tmp_path):
    """The keyed SQLite read streams with a small page cache and puts the store's own back (the
    load's 128 MiB, ``make_engine``) on the pooled connection it used."""
    from mipflow.node.controls.differencing import hash_key

    store = FeatureStore(f"sqlite:///{tmp_path / 's.sqlite'}")
    store.add_data_model(MODEL)
    with store.begin() as conn:
        store.upsert_rows(conn, MODEL, ROWS, batch_id="b", sha256="0" * 64)
    try:
        with store.engine.connect() as conn:
            before = conn.exec_driver_sql("PRAGMA cache_size").scalar()
        frame = select_frame(store, MODEL, datasets=ALL_DATASETS, variables=["age"], row_identity=True,
                             row_key=hash_key(b"secret"))
        with store.engine.connect() as conn:
            after = conn.exec_driver_sql("PRAGMA cache_size").scalar()
    finally:
        store.dispose()
    assert "_row_key" in frame.columns and len(frame)
    assert before == after == -131072
