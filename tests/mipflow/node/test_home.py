from __future__ import annotations

import json
import stat

import pytest

from mipflow.node.home import NodeHome, NodeSettings
from mipflow.exceptions import ConfigError


def test_init_creates_home_with_private_key(tmp_path):
    home = NodeHome.init(tmp_path / "n", "hospital_a")
    assert home.name == "hospital_a"
    key_file = home.root / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(home.key()) == 32
    config_text = (home.root / "node.json").read_text()
    assert key_file.read_text().strip() not in config_text  # the key never goes into the config
    assert home.db_url.startswith("sqlite:///") and home.db_url.endswith("store.sqlite")
    for sub in ("landing", "landing/dicom", "staging", "profiles", "data_models"):
        assert (home.root / sub).is_dir()


def test_two_nodes_have_different_keys(tmp_path):
    a = NodeHome.init(tmp_path / "a", "a")
    b = NodeHome.init(tmp_path / "b", "b")
    assert a.key() != b.key()


def test_init_refuses_existing_and_bad_names(tmp_path):
    NodeHome.init(tmp_path / "n", "x")
    with pytest.raises(ConfigError, match="already a node home"):
        NodeHome.init(tmp_path / "n", "x")
    with pytest.raises(ConfigError, match="node name"):
        NodeHome.init(tmp_path / "m", "bad name/")
    with pytest.raises(ConfigError, match="not a node home"):
        NodeHome(tmp_path / "nowhere")


def test_settings_defaults_match_mip_and_datashield():
    s = NodeSettings()
    assert (s.min_row_count, s.nfilter_tab, s.nfilter_subset, s.nfilter_glm, s.nfilter_levels_max,
            s.nfilter_string) == (10, 3, 3, 0.33, 40, 80)


def test_set_setting_persists_and_checks(tmp_path):
    home = NodeHome.init(tmp_path / "n", "x")
    home.set_setting("min_row_count", "1")
    assert NodeHome(home.root).settings.min_row_count == 1
    assert json.loads((home.root / "node.json").read_text())["settings"]["min_row_count"] == 1
    with pytest.raises(ConfigError, match="unknown node setting"):
        home.set_setting("min_rows", "3")
    with pytest.raises(ConfigError, match="needs a int"):
        home.set_setting("min_row_count", "ten")
    with pytest.raises(ConfigError, match="at least 1"):
        home.set_setting("min_row_count", "0")
    with pytest.raises(ConfigError, match="fraction"):
        home.set_setting("max_failure_rate", "1.5")


def test_missing_or_short_key(tmp_path):
    home = NodeHome.init(tmp_path / "n", "x")
    (home.root / "secret.key").write_text("abcd\n")
    with pytest.raises(ConfigError, match="shorter than 32 bytes"):
        home.key()
    (home.root / "secret.key").unlink()
    with pytest.raises(ConfigError, match="missing"):
        home.key()
