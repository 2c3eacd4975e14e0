"""The node's PACS credentials from an Airflow connection (``pacs.json``'s ``{"airflow_conn_id": ID}``).

The login and password live in Airflow's connections (or its secrets backend); the node DAG tasks
hand :func:`pacs_connection_credentials` to :func:`mipflow.node.imaging.pacs.pull_pacs`, which
never prints them.
"""
from __future__ import annotations


def pacs_connection_credentials(conn_id: str) -> tuple[str, str]:
    """``(login, password)`` of the Airflow connection ``conn_id`` (secrets: pass them on, never print)."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    return conn.login or "", conn.password or ""
