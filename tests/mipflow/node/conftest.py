"""Fixtures of the node's unit tests: a node home on each store (SQLite, PostgreSQL) and its store."""
from __future__ import annotations

import pytest

from mipflow.node.home import NodeHome
from mipflow.node.store.feature_store import open_store


@pytest.fixture
def node_home(tmp_path, db_url):
    return NodeHome.init(tmp_path / "node", "node_a", db_url)


@pytest.fixture
def node_store(node_home):
    store = open_store(node_home)
    yield store
    store.dispose()
