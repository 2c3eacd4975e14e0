"""The federation pool: ``airflow pools set`` for the slots of calls to nodes (:mod:`mipflow.central.pools`)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest


def test_pool_command_runs_airflow_pools_set():
    from mipflow.exceptions import ConfigError
    from mipflow.central.pools import create_pools, federation_pool

    calls = []

    def run(argv, **kw):
        calls.append(argv)
        return SimpleNamespace(returncode=0, stdout="", stderr="")

    spec = federation_pool(3)
    assert create_pools([spec], run=run, airflow="airflow") == calls
    assert calls == [["airflow", "pools", "set", "mipflow_federation", "3", spec.description]]
    with pytest.raises(ConfigError, match="at least 1 slot"):
        federation_pool(0)
    with pytest.raises(ConfigError, match="pool name"):
        federation_pool(2, "bad name;")
    with pytest.raises(ConfigError, match="failed: no database"):
        create_pools([spec], run=lambda argv, **kw: SimpleNamespace(returncode=1, stdout="", stderr="no database"))
