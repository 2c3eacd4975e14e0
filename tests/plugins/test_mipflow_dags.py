"""Settings of the DAGs from the environment: retries, delay, timeout and the federation pool
(``plugins/mipflow_dags``, docs/adr/0017-operability.md)."""
from __future__ import annotations

from datetime import timedelta

import pytest


def test_retries_delay_timeout_and_pool_come_from_the_environment():
    from mipflow_dags import default_args, federation_pool, on_failure

    args = default_args({"MIPFLOW_TASK_RETRIES": "4", "MIPFLOW_TASK_RETRY_DELAY_SECONDS": "7.5",
                         "MIPFLOW_TASK_TIMEOUT_MINUTES": "90"})
    assert args["retries"] == 4 and args["retry_delay"] == timedelta(seconds=7.5)
    assert args["execution_timeout"] == timedelta(minutes=90) and args["on_failure_callback"] is on_failure
    defaults = default_args({})
    assert defaults["retries"] == 1 and defaults["retry_delay"] == timedelta(seconds=30)
    assert "execution_timeout" not in defaults
    # Airflow's own variables-by-environment are the fallback
    assert default_args({"AIRFLOW_VAR_MIPFLOW_TASK_RETRIES": "3"})["retries"] == 3
    assert default_args({"AIRFLOW_VAR_MIPFLOW_TASK_RETRIES": "3", "MIPFLOW_TASK_RETRIES": "0"})["retries"] == 0
    with pytest.raises(ValueError, match="MIPFLOW_TASK_RETRIES='many' is not a valid int"):
        default_args({"MIPFLOW_TASK_RETRIES": "many"})
    with pytest.raises(ValueError, match="must be at least 0"):
        default_args({"MIPFLOW_TASK_RETRIES": "-1"})
    assert federation_pool({}) is None
    assert federation_pool({"MIPFLOW_POOLS": "1"}) == "mipflow_federation"
    assert federation_pool({"MIPFLOW_POOLS": "yes", "MIPFLOW_POOL": "calls_to_nodes"}) == "calls_to_nodes"
