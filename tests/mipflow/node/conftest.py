"""Fixtures of the node's unit tests: a node home on each store (SQLite, PostgreSQL) and its store."""
from __future__ import annotations

import pytest

from mipflow.node.store.feature_store import open_store
from tests.nodes import standard_home


@pytest.fixture
def node_home(tmp_path, db_url):
    return standard_home(tmp_path / "node", "node_a", db_url)


@pytest.fixture
def node_store(node_home):
    store = open_store(node_home)
    yield store
    store.dispose()
