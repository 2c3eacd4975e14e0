"""Node operations shared by the CLI and the DAGs (:mod:`mipflow.node.ops`): data-model registration
and the node status. Whole ingests through :func:`ops.ingest` and :func:`ops.run_landing` are tested in ``ingest/``; the
profile, consent and landing choices they make are tested beside their modules in ``ingest/``."""
from __future__ import annotations


import pytest

from mipflow.node import ops
from tests.conftest import REPO_ROOT

STROKE = REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json"
PROFILES = REPO_ROOT / "include" / "schemas" / "profiles"


@pytest.fixture
def home(node_home):
    return node_home


@pytest.fixture
def store(node_store):
    return node_store


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


def test_refresh_snapshots_writes_each_changed_model_once(home, store):
    """After a load (ADR 0049): a node's snapshot is written under its own key and is current until the
    rows change, beside a SQLite file or in a PostgreSQL node's home (ADR 0062); the setting off writes none."""
    import pandas as pd

    from mipflow.node.controls.differencing import hash_key
    from mipflow.node.query.snapshot import current_snapshot
    from mipflow.node.store.stamp import snapshot_folder
    from mipflow.protocol.datamodel import load_data_model

    model = ops.add_data_model(home, STROKE, store=store)
    rows = pd.DataFrame({"_pid": ["p1", "p2"], "dataset": "d", "_visit": ""})
    with store.begin() as conn:
        store.upsert_rows(conn, model, rows, batch_id="b", sha256="0" * 64)
    home.set_setting("columnar_snapshot", 0)
    assert ops.refresh_snapshots(type(home)(home.root), store) == {}
    assert not snapshot_folder(store).exists()
    home.set_setting("columnar_snapshot", 1)
    assert ops.refresh_snapshots(type(home)(home.root), store) == {load_data_model(STROKE).key: 2}
    (written,) = snapshot_folder(store).iterdir()  # beside the store's file, or in the home
    assert written.parent.parent == (home.root if store.dialect == "postgresql" else written.parent.parent)
    assert current_snapshot(store, model, hash_key(home.key())).path == written
