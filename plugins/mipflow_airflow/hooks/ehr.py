"""``EhrDatabaseHook``: a hospital's EHR database as an Airflow connection (common.sql's ``DbApiHook``).

A database source profile names its connection ``{"airflow_conn_id": ID}``
(:mod:`mipflow.node.ingest.database`); the node DAG tasks resolve it here, so the
URL lives in Airflow's connections (or its secrets backend) and never in the
profile, a log line or an XCom.  Connection types ``postgres`` and ``mysql``
(MariaDB) map onto the drivers mipflow installs (psycopg2, PyMySQL); an
explicit ``sqlalchemy_scheme`` in the connection's extra wins.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.common.sql.hooks.sql import DbApiHook

if TYPE_CHECKING:
    from sqlalchemy.engine import URL


class EhrDatabaseHook(DbApiHook):
    """The SQLAlchemy URL of one EHR database connection (``ehr_conn_id``)."""

    conn_name_attr = "ehr_conn_id"
    default_conn_name = "ehr_default"
    conn_type = "generic"
    hook_name = "mipflow EHR database"

    @property
    def sqlalchemy_url(self) -> "URL":
        return connection_sqlalchemy_url(self.connection)

    def get_conn(self):  # pragma: no cover - mipflow reads through SQLAlchemy (get_sqlalchemy_engine)
        return self.get_sqlalchemy_engine().raw_connection()


def ehr_connection_url(conn_id: str) -> str:
    """The URL of the Airflow connection ``conn_id`` (a secret: pass it on, never print it)."""
    return EhrDatabaseHook(ehr_conn_id=conn_id).sqlalchemy_url.render_as_string(hide_password=False)


def connection_sqlalchemy_url(conn: Any) -> "URL":
    """An Airflow connection's SQLAlchemy URL: its type's driver, or its extra's ``sqlalchemy_scheme``."""
    from sqlalchemy.engine import URL

    from mipflow.node.ingest.database import DRIVERS

    extra = {str(k).lower(): v for k, v in (conn.extra_dejson or {}).items()}
    scheme = extra.get("sqlalchemy_scheme") or DRIVERS.get((conn.conn_type or "").lower(), conn.conn_type or "")
    return URL.create(drivername=scheme, username=conn.login or None, password=conn.password or None,
                      host=conn.host or None, port=conn.port or None, database=conn.schema or None)


async def aehr_connection_url(conn_id: str) -> str:
    """:func:`ehr_connection_url` for async code (the node's watermark watcher in the triggerer)."""
    conn = await EhrDatabaseHook.aget_connection(conn_id)
    return connection_sqlalchemy_url(conn).render_as_string(hide_password=False)
