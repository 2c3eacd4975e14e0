"""Operations settings from the environment (docs/adr/0017-operability.md).

Read from the process environment, else from Airflow's variables-by-environment
(``AIRFLOW_VAR_<NAME>``); Airflow Variables themselves are not read (a metadata
database call).  Stdlib only: DAG files read the task settings at parse time.

Calls to nodes (read when a task runs)::

    MIPFLOW_NODE_TIMEOUT_SECONDS  HTTP timeout of one call to a node (default 60; a connection's extra wins)
    MIPFLOW_NODE_RETRIES          retries of one call to a node, connection errors and 5xx only (default 2)
"""
from __future__ import annotations

import os
from typing import Any, Mapping

NODE_TIMEOUT_SECONDS = "60"
NODE_RETRIES = "2"


def setting(name: str, default: str = "", environ: Mapping[str, str] | None = None) -> str:
    """``name`` from the environment, else ``AIRFLOW_VAR_<name>``, else ``default`` (stripped)."""
    env = os.environ if environ is None else environ
    value = env.get(name)
    if value is None or value.strip() == "":
        value = env.get(f"AIRFLOW_VAR_{name}")
    return default if value is None or value.strip() == "" else value.strip()


def number(name: str, default: str, kind: type, environ: Mapping[str, str] | None = None,
           minimum: float = 0) -> Any:
    """:func:`setting` as ``kind`` (``int`` or ``float``), at least ``minimum``.

    Raises
    ------
    ValueError
        Naming the variable, when the value is not a number of that kind or is below ``minimum``.
    """
    raw = setting(name, default, environ)
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} must be at least {minimum}")
    return value


def node_timeout(environ: Mapping[str, str] | None = None) -> float:
    """Seconds one call to a node may take (``MIPFLOW_NODE_TIMEOUT_SECONDS``)."""
    return number("MIPFLOW_NODE_TIMEOUT_SECONDS", NODE_TIMEOUT_SECONDS, float, environ, minimum=0.001)


def node_retries(environ: Mapping[str, str] | None = None) -> int:
    """Retries of one call to a node (``MIPFLOW_NODE_RETRIES``)."""
    return number("MIPFLOW_NODE_RETRIES", NODE_RETRIES, int, environ)
