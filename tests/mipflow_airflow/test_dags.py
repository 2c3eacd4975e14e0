"""What the DAG files share: task defaults and the federation pool from the environment."""
from __future__ import annotations

from datetime import timedelta

import pytest


def test_retries_delay_timeout_and_pool_come_from_the_environment():
    from mipflow_airflow.dags import default_args, federation_pool
    from mipflow_airflow.notifications.failure import FailureNotifier

    args = default_args({"MIPFLOW_TASK_RETRIES": "4", "MIPFLOW_TASK_RETRY_DELAY_SECONDS": "7.5",
                         "MIPFLOW_TASK_TIMEOUT_MINUTES": "90"})
    assert args["retries"] == 4 and args["retry_delay"] == timedelta(seconds=7.5)
    assert args["execution_timeout"] == timedelta(minutes=90)
    assert isinstance(args["on_failure_callback"], FailureNotifier)
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


def test_the_pool_default_agrees_with_the_pool_command():
    from mipflow.central.pools import DEFAULT_POOL as COMMAND_DEFAULT
    from mipflow_airflow.dags import DEFAULT_POOL

    assert DEFAULT_POOL == COMMAND_DEFAULT


@pytest.mark.parametrize(("environ", "timeout", "retries"), [
    pytest.param({}, 60.0, 2, id="defaults"),
    pytest.param({"MIPFLOW_NODE_TIMEOUT_SECONDS": "2.5", "MIPFLOW_NODE_RETRIES": "0"}, 2.5, 0, id="set"),
    pytest.param({"AIRFLOW_VAR_MIPFLOW_NODE_RETRIES": "4"}, 60.0, 4, id="airflow-var-fallback"),
])
def test_node_call_settings(environ, timeout, retries):
    from mipflow_airflow.settings import node_retries, node_timeout

    assert (node_timeout(environ), node_retries(environ)) == (timeout, retries)


def test_dag_helpers_import_no_mipflow_logic():
    """DAG files import the helpers at parse time: no mipflow logic (and so no pandas) may come with them."""
    import subprocess
    import sys

    code = ("import sys, airflow.sdk; before = set(sys.modules); import mipflow_airflow.dags; "
            "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in ('mipflow', 'pandas', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]"
