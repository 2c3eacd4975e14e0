"""Set-ups the tests of a snapshot's selection left on disk share (``test_snapshot_rows*.py``): a store
holding a test table read a few rows at a time, its data model, number filters and the selections that cross blocks' edges."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pandas as pd
import pytest

from mipflow.node.query import snapshot_rows
from mipflow.node.store.feature_store import FeatureStore
from mipflow.protocol.datamodel import DataModel


def block_model(code: str, label: str, *variables: dict) -> DataModel:
    """A data model of datasets "a" and "b" with numerical ``x1`` and ``x2``, then ``variables``."""
    return DataModel.from_dict({
        "code": code, "version": "1", "label": label,
        "variables": [
            {"code": "dataset", "sql_type": "text", "isCategorical": True,
             "enumerations": [{"code": c, "label": c} for c in ("a", "b")]},
            {"code": "x1", "sql_type": "real", "isCategorical": False},
            {"code": "x2", "sql_type": "real", "isCategorical": False},
            *variables,
        ]})


@contextmanager
def block_store(tmp_path, monkeypatch, model: DataModel, rows: pd.DataFrame, block: int) -> Iterator[FeatureStore]:
    """A SQLite feature store under ``tmp_path`` holding ``rows`` in ``model``'s table, whose snapshot
    is read ``block`` rows at a time."""
    monkeypatch.setattr(snapshot_rows, "READ_ROWS", block)
    store = FeatureStore(f"sqlite:///{tmp_path / 'store.sqlite'}")
    store.add_data_model(model)
    with store.begin() as conn:
        store.upsert_rows(conn, model, rows, batch_id="b", sha256="0" * 64)
    yield store
    store.dispose()


def number_rule(field, operator, value):
    """A filter holding one rule on a number, as the MIP front end writes it."""
    return {"condition": "AND", "rules": [{"id": field, "field": field, "type": "double", "input": "number",
                                           "operator": operator, "value": value}], "valid": True}


#: Selections of a table whose ``band`` is the row's block of the snapshot, over datasets "a" and "b".
EDGE_SELECTIONS = [
    pytest.param(["a", "b"], None, id="every-row"),
    pytest.param(["a"], None, id="one-dataset"),
    pytest.param(["a", "b"], number_rule("band", "less", 5), id="first-half-whole-blocks"),  # ends on an edge
    pytest.param(["a", "b"], number_rule("band", "equal", 7), id="one-block-others-empty"),
]


#: Block sizes every selection is read at: 7 rows (edges everywhere), the snapshot's read, the whole selection
BLOCK_SIZES = {"seven": 7, "block": 64, "whole": 6400}
#: The selections also read a row at a time (every row an edge): every row, and whole blocks ending on an edge
ONE_ROW_SELECTIONS = ("every-row", "first-half-whole-blocks")


def blocks_and_selections(selections: list) -> list:
    """``(store, datasets, filters)`` cases (``store`` indirect: its block size): every selection at each of
    :data:`BLOCK_SIZES`, and one-row blocks for :data:`ONE_ROW_SELECTIONS` (one-row blocks of every selection
    cost a minute and find nothing the seven-row blocks and these do not)."""
    cases = [pytest.param(1, *case.values, id=f"one-row-{case.id}") for case in selections
             if case.id in ONE_ROW_SELECTIONS]
    assert len(cases) == len(ONE_ROW_SELECTIONS)
    return cases + [pytest.param(size, *case.values, id=f"{name}-{case.id}")
                    for name, size in BLOCK_SIZES.items() for case in selections]


#: ``store`` at every block size of :data:`BLOCK_SIZES` (tests without a selection of their own)
EVERY_BLOCK_SIZE = pytest.mark.parametrize("store", list(BLOCK_SIZES.values()), ids=list(BLOCK_SIZES),
                                           indirect=True)


def stream_blocks(monkeypatch, size: int) -> None:
    """Every streamed pass of the group-releasing steps a block of ``size`` rows at a time (the groups' codes,
    the moments, the counts, the design's counts, k-means's assignments, Cox's chunks and the ledger's reads)."""
    from mipflow.algorithms import cox_streamed, design, kmeans, moments, streamed
    from mipflow.node.controls import differencing, groups_rows

    monkeypatch.setattr(cox_streamed, "CHUNK_ROWS", size)
    monkeypatch.setattr(kmeans, "ASSIGN_BLOCK", size)
    monkeypatch.setattr(groups_rows, "GROUP_ROWS", size)
    monkeypatch.setattr(moments, "STREAM_BLOCK", 2 * size)
    monkeypatch.setattr(moments, "MOMENT_BLOCK", size)
    monkeypatch.setattr(streamed, "COUNT_ROWS", size)
    monkeypatch.setattr(design, "COUNT_BLOCK", size)
    monkeypatch.setattr(differencing, "READ_BLOCK", size)


def frame_and_rows(store: FeatureStore, model: DataModel, key: str, algo, request) -> tuple:
    """``algo``'s local data from the snapshot's frame and the same selection left on disk (``SnapshotRows``)."""
    from mipflow.algorithms.local import prepare_local_data
    from mipflow.node.query.read import _check_variables, select_rows
    from mipflow.node.query.snapshot import current_snapshot, select_columns

    variables = list(algo.variables(request))
    chosen = _check_variables(model, variables)
    frame = select_columns(current_snapshot(store, model, key), model, chosen, list(request.datasets),
                           request.filters, key)
    rows = select_rows(store, model, datasets=request.datasets, variables=variables, filters=request.filters,
                       row_key=key)
    assert frame is not None and rows is not None
    return prepare_local_data(algo, frame, request), rows
