"""Airflow's simple auth manager with a ``user`` role that cannot delete DAGs (ADR 0045).

Airflow 3's :class:`SimpleAuthManager` has four fixed roles (viewer < user < op < admin) and "no
option to manage roles and permissions": its ``user`` role may do everything to a DAG, deleting
it included.  A researcher at the central site triggers analyses; deleting the analysis DAGs (and
with them every run's history) is an operator's act.  This subclass, set in ``airflow.cfg``::

    [core]
    auth_manager = mipflow_airflow.auth_manager.MipflowSimpleAuthManager

    [mipflow]
    # what the ``user`` role may do to a DAG itself (default: everything but DELETE)
    user_role_dag_methods = GET, POST, PUT

keeps the simple auth manager's roles and narrows only what the ``user`` role may do to a DAG
(the DAG itself: its runs, task instances and the rest keep the simple auth manager's rules).
``op`` and ``admin`` keep every method.  ``AIRFLOW__MIPFLOW__USER_ROLE_DAG_METHODS`` sets it too.
With the FAB auth manager, roles are edited instead (ADR 0045).
"""
from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

METHODS = ("GET", "POST", "PUT", "DELETE")
#: The ``user`` role's methods on a DAG when ``[mipflow] user_role_dag_methods`` is not set.
DEFAULT_USER_ROLE_DAG_METHODS = "GET, POST, PUT"


def parse_methods(value: str) -> frozenset[str]:
    """``"GET, POST, PUT"`` -> the set of methods (upper case).

    Raises
    ------
    ValueError
        Naming the setting, for a method that is not one of GET, POST, PUT, DELETE.
    """
    methods = frozenset(m.strip().upper() for m in value.replace(";", ",").split(",") if m.strip())
    unknown = sorted(methods - set(METHODS))
    if unknown:
        raise ValueError(f"[mipflow] user_role_dag_methods: unknown method(s) {unknown}; use {', '.join(METHODS)}")
    return methods


def user_role_dag_methods() -> frozenset[str]:
    """``[mipflow] user_role_dag_methods`` (or ``AIRFLOW__MIPFLOW__USER_ROLE_DAG_METHODS``)."""
    from airflow.configuration import conf

    return parse_methods(conf.get("mipflow", "user_role_dag_methods", fallback=DEFAULT_USER_ROLE_DAG_METHODS))


class MipflowSimpleAuthManager(SimpleAuthManager):
    """:class:`SimpleAuthManager` whose ``user`` role may act on a DAG only with the configured methods."""

    def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        if (access_entity is None and str(getattr(user, "role", "") or "").upper() == "USER"
                and method in METHODS and method not in user_role_dag_methods()):
            return False
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)


def is_admin(user: Any) -> bool:
    """Whether an authenticated Airflow user is an admin: the simple auth manager's ``admin`` role, or
    the FAB auth manager's ``Admin`` role.  The results pages let admins read every result."""
    role = getattr(user, "role", None)
    if isinstance(role, str):
        return role.upper() == "ADMIN"
    roles = getattr(user, "roles", None) or []
    return any(str(getattr(r, "name", r)) == "Admin" for r in roles)
