"""Airflow plugin: the node's aggregate API inside the node's own Airflow api-server (optional).

A node normally serves its API with ``mipflow node serve`` (its own port).  With
``MIPFLOW_NODE_HOME`` set and ``MIPFLOW_NODE_API_IN_AIRFLOW=1``, the node's
Airflow api-server also mounts :func:`mipflow.node.api.app.create_app` at
``/mipflow-node`` (``AirflowPlugin.fastapi_apps``), so a hospital exposes one
web service instead of two.  The central site then registers the node with
host ``https://node-airflow.example/mipflow-node``.

Authentication is the node API's own request signing (HMAC, per client; see
docs/adr/0003-authentication.md), not Airflow's login: the caller is the central
site, a machine client, and no Airflow user may call steps unsigned.  Every
call is audited as when served alone.  Off by default: exposing the API on the
Airflow port is the node admin's decision (docs/adr/0017-operability.md).

Every Airflow component imports plugins, so this file stays cheap: the app is
built on the first request.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from airflow.plugins_manager import AirflowPlugin

from mipflow.lazyasgi import LazyASGIApp

URL_PREFIX = "/mipflow-node"


def mount_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the node API is mounted: a node home is set and the admin opted in."""
    env = os.environ if environ is None else environ
    return bool(env.get("MIPFLOW_NODE_HOME")) and \
        env.get("MIPFLOW_NODE_API_IN_AIRFLOW", "").strip().lower() in ("1", "true", "yes", "on")


def build_app() -> Any:
    """The node's aggregate API for ``MIPFLOW_NODE_HOME``."""
    from mipflow.node.home import NodeHome
    from mipflow.node.api.app import create_app

    return create_app(NodeHome(os.environ["MIPFLOW_NODE_HOME"]))


class MipflowNodeApiPlugin(AirflowPlugin):
    name = "mipflow_node_api"
    fastapi_apps = ([{"app": LazyASGIApp(build_app, "mipflow node aggregate API (mipflow.node.api.app)",
                                         skip_lifespan=True),
                      "url_prefix": URL_PREFIX, "name": "mipflow node API"}]
                    if mount_enabled() else [])
