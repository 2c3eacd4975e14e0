"""The demo's --serve flag and its hint (:mod:`mipflow.demo.run`, docs/adr/0017-operability.md)."""
from __future__ import annotations

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.parametrize(("argv", "env", "code", "served"), [
    pytest.param([], {}, 0, False, id="default-exits"),
    pytest.param(["--serve"], {}, 0, True, id="flag"),
    pytest.param([], {"MIPFLOW_DEMO_SERVE": "1"}, 0, True, id="env"),
    pytest.param([], {"MIPFLOW_DEMO_SERVE": "0"}, 0, False, id="env-off"),
    pytest.param(["--serve"], {}, 1, False, id="failed-demo-does-not-serve"),
])
def test_demo_serves_results_only_when_asked(monkeypatch, tmp_path, argv, env, code, served):
    from mipflow.demo import run as demo

    monkeypatch.delenv("MIPFLOW_DEMO_SERVE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda args: code)
    monkeypatch.setattr(demo, "serve_results", lambda central, port: calls.append((central, port)) or 0)
    assert demo.main(["--work-dir", str(tmp_path), "--port", "8099", *argv]) == code
    assert calls == ([(tmp_path / "central", 8099)] if served else [])


def test_demo_hint_names_the_results_url():
    from mipflow.demo.run import results_page_hint

    assert "http://localhost:8099/mipflow/" in results_page_hint(REPO_ROOT, 8099)
    assert "DEMO_ARGS=--serve" in results_page_hint(REPO_ROOT) and "now" in results_page_hint(REPO_ROOT, serving=True)
