"""``python -m mipflow_airflow.demo``: the results pages are served only when asked."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize(("argv", "env", "code", "served"), [
    pytest.param([], {}, 0, False, id="default-exits"),
    pytest.param(["--serve"], {}, 0, True, id="flag"),
    pytest.param([], {"MIPFLOW_DEMO_SERVE": "1"}, 0, True, id="env"),
    pytest.param([], {"MIPFLOW_DEMO_SERVE": "0"}, 0, False, id="env-off"),
    pytest.param(["--serve"], {}, 1, False, id="failed-demo-does-not-serve"),
])
def test_demo_serves_results_only_when_asked(monkeypatch, tmp_path, argv, env, code, served):
    from mipflow_airflow import demo

    monkeypatch.delenv("MIPFLOW_DEMO_SERVE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda args: code)
    monkeypatch.setattr(demo, "serve_results", lambda central, port: calls.append((central, port)) or 0)
    assert demo.main(["--work-dir", str(tmp_path), "--port", "8099", *argv]) == code
    assert calls == ([(tmp_path / "central", 8099)] if served else [])
