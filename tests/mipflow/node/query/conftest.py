"""Fixtures of the :mod:`mipflow.node.query` tests: the test table loaded in a store, or just its table object."""
from __future__ import annotations

import pytest

from mipflow.node.store.feature_store import FeatureStore

from tests.mipflow.node.query.cases import MODEL, ROWS


@pytest.fixture
def store(db_url):
    """A feature store holding ROWS in the test model's table."""
    store = FeatureStore(db_url)
    store.add_data_model(MODEL)
    with store.begin() as conn:
        store.upsert_rows(conn, MODEL, ROWS, batch_id="b", sha256="0" * 64)
    yield store
    store.dispose()


@pytest.fixture(scope="module")
def table():
    """The model's table object (compiling needs no database)."""
    return FeatureStore("sqlite://").model_table(MODEL)

