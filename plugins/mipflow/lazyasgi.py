"""An ASGI app built on its first request, for the Airflow plugins that mount mipflow's apps.

Every Airflow component imports plugins, so a plugin module stays cheap: it mounts a
:class:`LazyASGIApp` and the real app (FastAPI, the store, the node's keys) is built
only when the api-server first serves it.
"""
from __future__ import annotations

import threading
from typing import Any, Callable


class LazyASGIApp:
    """An ASGI app that calls ``build()`` once, on its first call, and hands every call to the result.

    Parameters
    ----------
    build : callable
        Returns the real ASGI app.
    description : str
        What ``repr`` shows (Airflow lists mounted apps by it).
    skip_lifespan : bool
        Answer nothing to ``lifespan`` events (an app with no start-up work), instead of
        building the app for them.
    """

    def __init__(self, build: Callable[[], Any], description: str, *, skip_lifespan: bool = False) -> None:
        self._build = build
        self._description = description
        self._skip_lifespan = skip_lifespan
        self._app: Any = None
        self._lock = threading.Lock()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self._skip_lifespan and scope["type"] == "lifespan":
            return
        if self._app is None:
            with self._lock:
                if self._app is None:
                    self._app = self._build()
        await self._app(scope, receive, send)

    def __repr__(self) -> str:
        return self._description
