"""get_provider_info: the metadata Airflow's providers manager reads, checked with Airflow's own schema."""
from __future__ import annotations

import importlib
import json
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def _info() -> dict:
    from mipflow_airflow import get_provider_info

    return get_provider_info()


def test_provider_info_validates_against_airflows_runtime_schema():
    import airflow
    import jsonschema

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(_info(), schema)
    info = _info()
    assert {"package-name", "name", "description", "versions", "connection-types", "notifications"} <= set(info)


def test_package_name_and_entry_point_match_pyproject():
    """Airflow refuses a provider whose package-name is not its distribution's name."""
    from mipflow_airflow import __version__

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert _info()["package-name"] == project["name"] and _info()["versions"][0] == __version__ == project["version"]
    entry = project["entry-points"]["apache_airflow_provider"]["provider_info"]
    module, function = entry.split(":")
    assert getattr(importlib.import_module(module), function)() == _info()


def _import(path: str):
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def test_connection_type_names_the_hook_that_serves_it():
    from airflow.sdk import BaseHook

    (conn_type,) = _info()["connection-types"]
    hook = _import(conn_type["hook-class-name"])
    assert issubclass(hook, BaseHook)
    assert (hook.conn_type, hook.hook_name) == (conn_type["connection-type"], conn_type["hook-name"])


@pytest.mark.parametrize("section", ["hooks", "operators"])
def test_listed_modules_import(section):
    for item in _info()[section]:
        for module in item["python-modules"]:
            importlib.import_module(module)


def test_notifications_are_base_notifiers():
    from airflow.sdk import BaseNotifier

    assert _info()["notifications"] and all(issubclass(_import(path), BaseNotifier)
                                            for path in _info()["notifications"])


def test_airflows_providers_manager_accepts_the_hook():
    """The providers manager's own import and coherence check of a connection type's hook."""
    from airflow.providers_manager import ProviderInfo, ProvidersManager

    (conn_type,) = _info()["connection-types"]
    info = ProvidersManager()._import_hook(connection_type=None, hook_class_name=conn_type["hook-class-name"],
                                           package_name="mipflow",
                                           provider_info=ProviderInfo("0.1.0", _info()))
    assert info is not None and info.connection_type == "mipflow_node" and info.package_name == "mipflow"
    assert info.hook_name == "mipflow node"
