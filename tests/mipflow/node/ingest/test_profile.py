"""Source profiles (:mod:`mipflow.node.ingest.profile`): what a profile file may say, what it is refused
for, and that a profile survives a round trip through its JSON form."""
from __future__ import annotations

import json
import shutil

import pytest

from mipflow.exceptions import ConfigError, ProfileError, StoreError
from mipflow.node.home import NodeHome
from mipflow.node.ops import add_data_model
from mipflow.node.ingest.profile import HarmoniseMap, SourceProfile, default_profile, resolve_model, resolve_profile
from tests.conftest import REPO_ROOT

PROFILE_DIR = REPO_ROOT / "include" / "schemas" / "profiles"
PROFILES = sorted(PROFILE_DIR.glob("*.json"))
STROKE_MODEL = REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json"
MINIMAL = {"deid": {"patient_id": "mrn"}}


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_shipped_profiles_load_and_round_trip(path):
    profile = SourceProfile.load(path)
    doc = json.loads(path.read_text())
    assert profile.source == doc["source"] == path.stem and profile.data_model == doc["data_model"]
    assert profile.deid.patient_id == doc["deid"]["patient_id"]
    assert dict(profile.harmonise.columns) == doc["harmonise"]["columns"]
    again = SourceProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert again == profile


def test_a_minimal_profile_gets_the_documented_defaults():
    profile = SourceProfile.from_dict(MINIMAL)
    assert (profile.source, profile.dataset_column, profile.dataset_value) == ("export", "dataset", None)
    assert (profile.encoding, profile.delimiter, profile.visit_column, profile.data_model) == ("utf-8", ",", None, None)
    assert profile.harmonise == HarmoniseMap() and profile.control_columns == ("mrn", "dataset")


def test_control_columns_are_patient_dataset_and_visit():
    profile = SourceProfile.from_dict({**MINIMAL, "dataset": {"value": "site_a"},
                                       "visit": {"column": "episode", "pseudonymise": False}})
    assert profile.control_columns == ("mrn", "episode")  # a fixed dataset value reads no column
    assert profile.pseudonymise_visit is False
    assert profile.to_dict()["visit"] == {"column": "episode", "pseudonymise": False}
    assert profile.to_dict()["dataset"] == {"value": "site_a"}


def test_the_default_profile_is_the_mip_csv_layout():
    profile = default_profile()
    assert profile.deid.patient_id == "subjectcode" and profile.control_columns == ("subjectcode", "dataset")
    assert profile.harmonise == HarmoniseMap()


@pytest.mark.parametrize("doc, message", [
    pytest.param([], "must be a JSON object", id="not-an-object"),
    pytest.param({}, "needs a 'deid' section", id="no-deid"),
    pytest.param({**MINIMAL, "dataset": {"column": "d", "value": "v"}}, "'dataset' must be", id="dataset-both"),
    pytest.param({**MINIMAL, "dataset": {"name": "d"}}, "'dataset' must be", id="dataset-neither"),
    pytest.param({**MINIMAL, "visit": {"name": "v"}}, "'visit' must be", id="visit-without-column"),
    pytest.param({**MINIMAL, "delimiter": ";;"}, "one character", id="long-delimiter"),
    pytest.param({**MINIMAL, "encoding": "klingon-8"}, "unknown encoding 'klingon-8'", id="unknown-encoding"),
    pytest.param({**MINIMAL, "harmonise": ["sex"]}, "'harmonise' must be an object", id="harmonise-list"),
    pytest.param({**MINIMAL, "harmonise": {"columns": {"a": 1}}}, "'harmonise.columns' must map",
                 id="column-to-number"),
    pytest.param({**MINIMAL, "harmonise": {"columns": {"sex": "sex", "gender": "sex"}}},
                 "two local columns onto the same CDE code", id="two-onto-one"),
    pytest.param({**MINIMAL, "harmonise": {"values": {"sex": "M"}}}, "'harmonise.values' must map",
                 id="values-not-objects"),
    pytest.param({**MINIMAL, "harmonise": {"drop": "notes"}}, "'harmonise.drop' must be a list", id="drop-string"),
])
def test_bad_profiles_are_refused_with_the_reason(doc, message):
    with pytest.raises(ProfileError, match=message):
        SourceProfile.from_dict(doc)


def test_harmonise_values_are_read_as_text():
    harmonise = HarmoniseMap.from_dict({"values": {"mrs_90d": {1: 1, "2": "2"}}, "drop": ["notes"]})
    assert harmonise.values == {"mrs_90d": {"1": "1", "2": "2"}} and harmonise.drop == ("notes",)
    assert HarmoniseMap.from_dict(harmonise.to_dict()) == harmonise


def test_profile_files_that_cannot_be_read_say_which(tmp_path):
    with pytest.raises(ProfileError, match="does not exist"):
        SourceProfile.load(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{source: hospital}")
    with pytest.raises(ProfileError, match=r"bad\.json is not valid JSON"):
        SourceProfile.load(tmp_path / "bad.json")


def test_the_profile_named_else_the_sources_else_the_default(node_home):
    shutil.copyfile(PROFILE_DIR / "hospital_b.json", node_home.profiles_dir / "hospital_b.json")
    assert resolve_profile(node_home, PROFILE_DIR / "hospital_a.json", "hospital_b").source == "hospital_a"
    assert resolve_profile(node_home, None, "hospital_b").source == "hospital_b"
    assert resolve_profile(node_home, None, "hospital_z") == default_profile()
    assert resolve_profile(node_home, None) == default_profile()


def test_the_data_model_comes_from_the_request_the_profile_or_the_setting(node_home, node_store):
    add_data_model(node_home, STROKE_MODEL, node_store)
    stroke_profile = SourceProfile.load(PROFILE_DIR / "hospital_a.json")
    assert resolve_model(node_home, node_store, None, stroke_profile).key == "stroke:0.1"
    assert resolve_model(node_home, node_store, "stroke:0.1", default_profile()).key == "stroke:0.1"
    with pytest.raises(ConfigError, match="no data model given"):
        resolve_model(node_home, node_store, None, default_profile())
    node_home.set_setting("default_data_model", "stroke:0.1")
    assert resolve_model(NodeHome(node_home.root), node_store, None, default_profile()).key == "stroke:0.1"
    with pytest.raises(ProfileError, match="profile is for data model stroke:0.1, not dementia:0.1"):
        resolve_model(node_home, node_store, "dementia:0.1", stroke_profile)
    with pytest.raises(StoreError):
        resolve_model(node_home, node_store, "dementia:0.1", default_profile())  # not registered here
