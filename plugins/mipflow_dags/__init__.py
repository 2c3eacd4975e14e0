"""What the node DAG files share: the trigger Param and the node home lookup.

Cheap to import (stdlib and ``airflow.sdk`` only): DAG files import it at parse time.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import Param, get_current_context

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def default_args() -> dict[str, Any]:
    """Retries for node tasks (``MIPFLOW_TASK_RETRIES``; the tests set 0)."""
    return {"retries": int(os.environ.get("MIPFLOW_TASK_RETRIES", "1")), "retry_delay": timedelta(seconds=30)}


def node_params() -> dict[str, Param]:
    """The ``node_home`` Param, defaulting to ``MIPFLOW_NODE_HOME``."""
    return {"node_home": Param(os.environ.get("MIPFLOW_NODE_HOME", ""), type="string",
                               title="Node home", description="Folder made by `mipflow node init`")}


def node_home():
    """The running DAG's :class:`mipflow.config.NodeHome` (call inside a task)."""
    from mipflow.config import NodeHome

    home = get_current_context()["params"]["node_home"]
    if not home:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException("no node home: set MIPFLOW_NODE_HOME or the node_home param")
    return NodeHome(home)
