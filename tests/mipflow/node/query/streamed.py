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
