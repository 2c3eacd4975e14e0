"""The federation pool: ``airflow pools set`` for the slots of calls to nodes (:mod:`mipflow.central.pools`)."""
from __future__ import annotations

import sys
from pathlib import Path
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


def test_the_airflow_beside_this_python_is_used():
    from mipflow.central.pools import airflow_executable

    beside = Path(sys.executable).parent / "airflow"
    assert beside.exists()  # the test environment's virtualenv has Airflow
    assert airflow_executable() == str(beside)


@pytest.mark.airflow
@pytest.mark.slow
def test_pools_are_created_and_updated_in_airflow(airflow_db):
    """``airflow pools set`` for real, in this worker's Airflow metadata database."""
    from airflow.models.pool import Pool

    from mipflow.central.pools import create_pools, federation_pool

    assert Pool.get_pool("mipflow_federation") is None
    create_pools([federation_pool(3)])
    assert Pool.get_pool("mipflow_federation").slots == 3
    create_pools([federation_pool(5)])  # set again: updated, not duplicated
    pool = Pool.get_pool("mipflow_federation")
    assert pool.slots == 5 and pool.description == federation_pool(5).description
