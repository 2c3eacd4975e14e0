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


class AirflowRuns:
    """Start and read DAG runs through the api-server's own REST API with the logged-in user's token
    (``Authorization`` header or the UI's ``_token`` cookie): the run is theirs
    (``triggering_user_name``), under the auth manager's permissions and Airflow's Params checks."""

    def _client(self, request: Any) -> Any:
        import httpx

        from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

        auth = request.headers.get("authorization")
        if not auth:
            auth = "Bearer " + request.cookies.get(COOKIE_NAME_JWT_TOKEN, "")
        base = os.environ.get("MIPFLOW_API_SERVER_URL") or f"{request.url.scheme}://{request.url.netloc}"
        return httpx.Client(base_url=base, headers={"Authorization": auth}, timeout=30)

    def trigger(self, request: Any, dag_id: str, conf: dict) -> str:
        from urllib.parse import quote

        from mipflow.webui import TriggerRefused

        with self._client(request) as client:
            resp = client.post(f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns",
                               json={"logical_date": None, "conf": conf})
        if resp.status_code not in (200, 201):
            try:
                detail = resp.json().get("detail")
            except ValueError:
                detail = None
            raise TriggerRefused(f"Airflow refused to start {dag_id} (HTTP {resp.status_code}): "
                                 f"{detail if isinstance(detail, str) else resp.text[:300]}")
        return str(resp.json()["dag_run_id"])

    def state(self, request: Any, dag_id: str, run_id: str) -> str | None:
        from urllib.parse import quote

        with self._client(request) as client:
            resp = client.get(f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}")
        return str(resp.json().get("state")) if resp.status_code == 200 else None


def build_app() -> Any:
    """The pages' FastAPI app, behind Airflow's authentication."""
    from airflow.api_fastapi.core_api.security import get_user
    from mipflow.webui import create_app
    from mipflow_airflow.auth_manager import is_admin

    return create_app(user=get_user, can_read=_can_read, is_admin=is_admin, runs=AirflowRuns())


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
