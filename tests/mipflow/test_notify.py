"""Failure records: kept at the site that failed, posted to a webhook on loopback without what could
quote row data (:mod:`mipflow.notify`, docs/adr/0017-operability.md)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest


class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.headers.get("Authorization"), json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook(monkeypatch):
    _Hook.received = []
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AIRFLOW_CONN_MIPFLOW_NOTIFY", json.dumps(
        {"conn_type": "http", "host": f"http://127.0.0.1:{server.server_port}/hook", "password": "t0ken"}))
    monkeypatch.setenv("MIPFLOW_NOTIFY_CONN_ID", "mipflow_notify")
    yield _Hook.received
    server.shutdown()


def _context(exc, **params):
    ti = SimpleNamespace(dag_id="node_validate", task_id="validate_batch", run_id="r1", map_index=0,
                         try_number=2, max_tries=1, log_url="http://airflow/log")
    return {"ti": ti, "dag_run": SimpleNamespace(triggering_user_name="alice"), "exception": exc, "params": params}


def test_failure_record_keeps_our_messages_and_withholds_others(tmp_path, monkeypatch):
    from mipflow.exceptions import InputFileError
    from mipflow.notify import failure_record, on_failure

    monkeypatch.delenv("MIPFLOW_NOTIFY_CONN_ID", raising=False)
    monkeypatch.setenv("MIPFLOW_CENTRAL_HOME", str(tmp_path / "central"))
    record = on_failure(_context(InputFileError("batch b1: not a readable CSV")))
    assert record["message"] == "batch b1: not a readable CSV" and record["exception"] == "InputFileError"
    assert (record["dag_id"], record["task_id"], record["try_number"], record["site"]) == (
        "node_validate", "validate_batch", 2, "central")
    lines = (tmp_path / "central" / "notifications.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [record]
    assert (tmp_path / "central" / "notifications.jsonl").stat().st_mode & 0o077 == 0
    # a library error can quote a cell: its message is withheld
    leaky = failure_record(_context(ValueError("could not convert string to float: 'Jane Doe'")))
    assert leaky["exception"] == "ValueError" and "Jane" not in json.dumps(leaky)


def test_node_failure_posts_to_the_webhook_without_the_message(tmp_path, webhook):
    from mipflow.exceptions import InputFileError
    from mipflow.notify import on_failure

    node_home = tmp_path / "node"
    record = on_failure(_context(InputFileError("Doe_Jane_export.csv: empty file"), node_home=str(node_home)))
    assert record["site"] == "node" and "Doe_Jane" in record["message"]  # kept at the node only
    assert json.loads((node_home / "notifications.jsonl").read_text()) == record
    ((auth, payload),) = webhook
    assert auth == "Bearer t0ken" and "message" not in payload and "Doe_Jane" not in json.dumps(payload)
    assert payload == {k: v for k, v in record.items() if k != "message"}


def test_central_failure_posts_the_message_and_a_dead_webhook_never_raises(tmp_path, webhook, monkeypatch):
    from mipflow.exceptions import FederationError
    from mipflow.notify import on_failure

    monkeypatch.setenv("MIPFLOW_NOTIFY_FILE", str(tmp_path / "n.jsonl"))
    on_failure(_context(FederationError("linear_regression: 1 node(s) contributed, fewer than min_nodes (3)")))
    ((_, payload),) = webhook
    assert payload["message"].startswith("linear_regression: 1 node(s)")
    monkeypatch.setenv("AIRFLOW_CONN_MIPFLOW_NOTIFY", json.dumps({"conn_type": "http", "host": "http://127.0.0.1:1"}))
    record = on_failure(_context(FederationError("again")))
    assert record["message"] == "again" and len((tmp_path / "n.jsonl").read_text().splitlines()) == 2
