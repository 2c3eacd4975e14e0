"""Node operations shared by the CLI and the DAGs (:mod:`mipflow.node.ops`): which data model, profile
and consent registry an ingest uses, which landing files have a source, and the node status.
Whole ingests through :func:`ops.ingest` and :func:`ops.run_landing` are tested in ``ingest/``."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest

from mipflow.exceptions import ConfigError, InputFileError, ProfileError, StoreError
from mipflow.node import ops
from mipflow.node.home import NodeHome
from mipflow.node.ingest.profile import SourceProfile, default_profile
from tests.conftest import REPO_ROOT

STROKE = REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json"
PROFILES = REPO_ROOT / "include" / "schemas" / "profiles"


@pytest.fixture
def home(tmp_path, db_url):
    return NodeHome.init(tmp_path / "node", "node_a", db_url)


@pytest.fixture
def store(home):
    store = ops.open_store(home)
    yield store
    store.dispose()


def test_a_data_model_is_copied_into_the_home_and_gets_a_table(home, store):
    model = ops.add_data_model(home, STROKE, store)
    copy = home.data_models_dir / "stroke_0.1.json"
    assert model.key == "stroke:0.1" and copy.read_bytes() == STROKE.read_bytes()
    assert ops.add_data_model(home, copy, store).key == model.key  # the home's own copy again: harmless
    assert [m.key for m in store.data_models()] == ["stroke:0.1"]
    assert store.count_rows(model) == 0


def test_the_profile_named_else_the_sources_else_the_default(home):
    shutil.copyfile(PROFILES / "hospital_b.json", home.profiles_dir / "hospital_b.json")
    assert ops.resolve_profile(home, PROFILES / "hospital_a.json", "hospital_b").source == "hospital_a"
    assert ops.resolve_profile(home, None, "hospital_b").source == "hospital_b"
    assert ops.resolve_profile(home, None, "hospital_z") == default_profile()
    assert ops.resolve_profile(home, None) == default_profile()


def test_the_consent_registry_named_else_the_homes_else_none(home, tmp_path):
    assert ops.resolve_consent(home, None) is None  # no registry: everyone consented
    pd.DataFrame({"patient_id": ["p1", "p2"], "consent": ["granted", "withdrawn"]}).to_csv(
        home.consent_path, index=False)
    assert ops.resolve_consent(home, None).withdrawn() == ["p2"]
    named = tmp_path / "other.csv"
    pd.DataFrame({"patient_id": ["p3"], "consent": ["refused"]}).to_csv(named, index=False)
    assert ops.resolve_consent(home, named).withdrawn() == ["p3"]
    with pytest.raises(InputFileError, match="does not exist"):
        ops.resolve_consent(home, tmp_path / "absent.csv")


def test_the_data_model_comes_from_the_request_the_profile_or_the_setting(home, store):
    ops.add_data_model(home, STROKE, store)
    stroke_profile = SourceProfile.load(PROFILES / "hospital_a.json")
    assert ops.resolve_model(home, store, None, stroke_profile).key == "stroke:0.1"
    assert ops.resolve_model(home, store, "stroke:0.1", default_profile()).key == "stroke:0.1"
    with pytest.raises(ConfigError, match="no data model given"):
        ops.resolve_model(home, store, None, default_profile())
    home.set_setting("default_data_model", "stroke:0.1")
    assert ops.resolve_model(NodeHome(home.root), store, None, default_profile()).key == "stroke:0.1"
    with pytest.raises(ProfileError, match="profile is for data model stroke:0.1, not dementia:0.1"):
        ops.resolve_model(home, store, "dementia:0.1", stroke_profile)
    with pytest.raises(StoreError):
        ops.resolve_model(home, store, "dementia:0.1", default_profile())  # not registered here


def test_a_landing_folder_is_a_source_only_with_its_profile(home):
    shutil.copyfile(PROFILES / "hospital_b.json", home.profiles_dir / "hospital_b.json")
    assert ops.landing_source(home, home.landing_dir / "hospital_b" / "export.csv") == "hospital_b"
    assert ops.landing_source(home, home.landing_dir / "hospital_b" / "2026" / "export.csv") == "hospital_b"
    # a folder without a profile may carry a patient's name: it is no source
    assert ops.landing_source(home, home.landing_dir / "Doe_Jane" / "export.csv") is None
    assert ops.landing_source(home, home.landing_dir / "export.csv") is None


def test_landing_csv_files_leave_out_the_imaging_side(home):
    for rel in ("a.csv", "src/b.csv", "dicom/c.csv", "dicom/x/1.dcm", "notes.txt"):
        path = home.landing_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert [p.relative_to(home.landing_dir).as_posix() for p in ops.landing_csv_files(home)] == [
        "a.csv", "notes.txt", "src/b.csv"]


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
