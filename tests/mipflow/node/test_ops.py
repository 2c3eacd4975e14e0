"""Node operations shared by the CLI and the DAGs (:mod:`mipflow.node.ops`): data-model registration
and the node status. Whole ingests through :func:`ops.ingest` and :func:`ops.run_landing` are tested in ``ingest/``; the
profile, consent and landing choices they make are tested beside their modules in ``ingest/``."""
from __future__ import annotations


import pytest

from mipflow.node import ops
from mipflow.node.home import NodeHome
from mipflow.node.store.feature_store import open_store
from tests.conftest import REPO_ROOT

STROKE = REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json"
PROFILES = REPO_ROOT / "include" / "schemas" / "profiles"


@pytest.fixture
def home(tmp_path, db_url):
    return NodeHome.init(tmp_path / "node", "node_a", db_url)


@pytest.fixture
def store(home):
    store = open_store(home)
    yield store
    store.dispose()


def test_a_data_model_is_copied_into_the_home_and_gets_a_table(home, store):
    model = ops.add_data_model(home, STROKE, store)
    copy = home.data_models_dir / "stroke_0.1.json"
    assert model.key == "stroke:0.1" and copy.read_bytes() == STROKE.read_bytes()
    assert ops.add_data_model(home, copy, store).key == model.key  # the home's own copy again: harmless
    assert [m.key for m in store.data_models()] == ["stroke:0.1"]
    assert store.count_rows(model) == 0


def test_the_status_names_models_and_hides_the_store_password(home, store):
    ops.add_data_model(home, STROKE, store)
    status = ops.node_status(home, store)
    assert status["node"] == "node_a" and status["data_models"] == ["stroke:0.1"]
    assert status["datasets"] == [] and status["batches"] == []
    assert status["store"] == ops.redact_url(home.db_url)


@pytest.mark.parametrize("url, shown", [
    ("postgresql+psycopg2://mip:s3cret@db:5432/store", "postgresql+psycopg2://mip:***@db:5432/store"),
    ("sqlite:////var/node/store.sqlite", "sqlite:////var/node/store.sqlite"),
])
def test_redact_url_hides_only_the_password(url, shown):
    assert ops.redact_url(url) == shown
