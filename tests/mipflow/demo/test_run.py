"""The demo's results hint (:mod:`mipflow.demo.run`, docs/adr/0017-operability.md); the --serve flag is
tested with the Airflow side in tests/mipflow_airflow/test_demo.py."""
from __future__ import annotations


from tests.conftest import REPO_ROOT


def test_demo_hint_names_the_results_url():
    from mipflow.demo.run import results_page_hint

    assert "http://localhost:8099/mipflow/" in results_page_hint(REPO_ROOT, 8099)
    assert "DEMO_ARGS=--serve" in results_page_hint(REPO_ROOT) and "now" in results_page_hint(REPO_ROOT, serving=True)
