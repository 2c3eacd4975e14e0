"""The lazily built ASGI app the Airflow plugins mount (:mod:`mipflow.lazyasgi`): built once, on the
first request, and never for lifespan events when told so. Served over real HTTP on loopback."""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from mipflow.lazyasgi import LazyASGIApp
from tests.nodes import free_port


class Builder:
    """Builds a small FastAPI app and counts how often it was asked to."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay

    def __call__(self) -> FastAPI:
        self.calls += 1
        time.sleep(self.delay)  # a slow build widens the window for a second builder
        app = FastAPI()
        built = self.calls

        @app.get("/which")
        def which() -> dict:
            return {"build": built}

        return app


@pytest.fixture
def serve():
    """Run an ASGI app with uvicorn on a loopback port; yield its base URL."""
    servers = []

    def start(app) -> str:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                              lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


def test_nothing_is_built_until_the_first_request_then_once(serve):
    build = Builder()
    url = serve(LazyASGIApp(build, "mipflow test app", skip_lifespan=True))
    assert build.calls == 0  # server start-up (lifespan) did not build it
    answers = [httpx.get(f"{url}/which").json() for _ in range(3)]
    assert answers == [{"build": 1}] * 3 and build.calls == 1


def test_first_requests_from_several_threads_build_once():
    """Each thread drives the app from its own event loop, as several server threads would."""
    build = Builder(delay=0.3)
    lazy = LazyASGIApp(build, "mipflow test app")
    barrier = threading.Barrier(8)

    async def ask() -> dict:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=lazy), base_url="http://lazy") as client:
            return (await client.get("/which")).json()

    def in_thread(_) -> dict:
        barrier.wait()
        return asyncio.run(ask())

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(in_thread, range(8)))
    assert answers == [{"build": 1}] * 8 and build.calls == 1


def test_lifespan_events_build_the_app_unless_skipped():
    async def receive():
        return events.pop(0)  # an app built for lifespan starts up, then shuts down

    async def send(message):
        sent.append(message["type"])

    for skip, calls in ((True, 0), (False, 1)):
        sent: list[str] = []
        events = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        build = Builder()
        asyncio.run(LazyASGIApp(build, "x", skip_lifespan=skip)({"type": "lifespan"}, receive, send))
        assert build.calls == calls
        assert sent == ([] if skip else ["lifespan.startup.complete", "lifespan.shutdown.complete"])


def test_repr_is_the_description():
    assert repr(LazyASGIApp(Builder(), "mipflow node API (built on first request)")) == \
        "mipflow node API (built on first request)"
