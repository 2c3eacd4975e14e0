"""Airflow plugin: mipflow's result and node data-quality pages in the api-server.

Mounts :func:`mipflow.webui.create_app` at ``/mipflow`` (``AirflowPlugin.fastapi_apps``)
and adds "Analysis results" (and, at a node, "Node data quality") under Browse
(``external_views``, shown in an iframe).  Airflow does not authenticate plugin
apps: every route here depends on Airflow's own ``get_user`` (the api-server's
JWT, from the ``Authorization`` header or the UI's session cookie), and a result
is shown only to users the auth manager lets read its DAG (``federated_<algorithm>``).

Every Airflow component imports plugins, so this file stays cheap: the app is
built on the first request.
"""
from __future__ import annotations

import os
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from mipflow.lazyasgi import LazyASGIApp

URL_PREFIX = "/mipflow"


def _can_read(user: Any, algorithm: str) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    return get_auth_manager().is_authorized_dag(method="GET", details=DagDetails(id=f"federated_{algorithm}"),
                                                user=user)


def build_app() -> Any:
    """The pages' FastAPI app, behind Airflow's authentication."""
    from airflow.api_fastapi.core_api.security import get_user
    from mipflow.webui import create_app

    return create_app(user=get_user, can_read=_can_read)


_views = [{"name": "Analysis results", "href": URL_PREFIX.lstrip("/") + "/", "destination": "nav",
           "category": "browse", "url_route": "mipflow-results"}]
if os.environ.get("MIPFLOW_NODE_HOME"):
    _views.append({"name": "Node data quality", "href": URL_PREFIX.lstrip("/") + "/node", "destination": "nav",
                   "category": "browse", "url_route": "mipflow-node-quality"})


class MipflowUIPlugin(AirflowPlugin):
    name = "mipflow_ui"
    fastapi_apps = [{"app": LazyASGIApp(build_app, "mipflow results pages (mipflow.webui)"),
                     "url_prefix": URL_PREFIX, "name": "mipflow results"}]
    external_views = _views
