"""FailureNotifier: the failure record from Airflow's task context, its file, and the webhook."""
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


def test_the_notifier_is_a_base_notifier_that_records_the_failed_task(tmp_path, monkeypatch):
    from airflow.sdk import BaseNotifier

    from mipflow.exceptions import InputFileError
    from mipflow_airflow.notifications.failure import FailureNotifier

    monkeypatch.delenv("MIPFLOW_NOTIFY_CONN_ID", raising=False)
    monkeypatch.setenv("MIPFLOW_CENTRAL_HOME", str(tmp_path / "central"))
    notifier = FailureNotifier()
    assert isinstance(notifier, BaseNotifier)
    context = _context(InputFileError("batch b1: not a readable CSV"))
    record = notifier.record(context)
    assert record["message"] == "batch b1: not a readable CSV" and record["exception"] == "InputFileError"
    assert (record["dag_id"], record["task_id"], record["run_id"], record["try_number"], record["max_tries"],
            record["triggered_by"], record["site"]) == ("node_validate", "validate_batch", "r1", 2, 1, "alice",
                                                         "central")
    notifier(context)  # as Airflow calls an on_failure_callback
    lines = (tmp_path / "central" / "notifications.jsonl").read_text().splitlines()
    assert [{k: v for k, v in json.loads(line).items() if k != "at"} for line in lines] == [
        {k: v for k, v in record.items() if k != "at"}]
    assert (tmp_path / "central" / "notifications.jsonl").stat().st_mode & 0o077 == 0
    leaky = notifier.record(_context(ValueError("could not convert string to float: 'Jane Doe'")))
    assert leaky["exception"] == "ValueError" and "Jane" not in json.dumps(leaky)


def test_node_failure_posts_to_the_webhook_without_the_message(tmp_path, webhook):
    from mipflow.exceptions import InputFileError
    from mipflow_airflow.notifications.failure import FailureNotifier

    node_home = tmp_path / "node"
    FailureNotifier()(_context(InputFileError("Doe_Jane_export.csv: empty file"), node_home=str(node_home)))
    record = json.loads((node_home / "notifications.jsonl").read_text())
    assert record["site"] == "node" and "Doe_Jane" in record["message"]  # kept at the node only
    ((auth, payload),) = webhook
    assert auth == "Bearer t0ken" and "message" not in payload and "Doe_Jane" not in json.dumps(payload)
    assert payload == {k: v for k, v in record.items() if k != "message"}


def test_central_failure_posts_the_message_and_a_dead_webhook_never_raises(tmp_path, webhook, monkeypatch):
    from mipflow.exceptions import FederationError
    from mipflow_airflow.notifications.failure import FailureNotifier

    monkeypatch.setenv("MIPFLOW_NOTIFY_FILE", str(tmp_path / "n.jsonl"))
    FailureNotifier()(_context(FederationError("linear_regression: 1 node(s) contributed, fewer than min_nodes (3)")))
    ((_, payload),) = webhook
    assert payload["message"].startswith("linear_regression: 1 node(s)")
    monkeypatch.setenv("AIRFLOW_CONN_MIPFLOW_NOTIFY", json.dumps({"conn_type": "http", "host": "http://127.0.0.1:1"}))
    FailureNotifier()(_context(FederationError("again")))
    lines = (tmp_path / "n.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["message"] == "again"


def test_an_explicit_connection_id_wins_and_an_empty_one_posts_nothing(tmp_path, webhook, monkeypatch):
    from mipflow.exceptions import FederationError
    from mipflow_airflow.notifications.failure import FailureNotifier

    monkeypatch.setenv("MIPFLOW_NOTIFY_FILE", str(tmp_path / "n.jsonl"))
    monkeypatch.setenv("MIPFLOW_NOTIFY_CONN_ID", "no_such_connection")
    FailureNotifier(notify_conn_id="mipflow_notify")(_context(FederationError("posted")))
    FailureNotifier(notify_conn_id="")(_context(FederationError("not posted")))
    assert [payload["message"] for _, payload in webhook] == ["posted"]
    assert len((tmp_path / "n.jsonl").read_text().splitlines()) == 2


def test_an_unwritable_record_file_never_fails_the_callback(tmp_path, monkeypatch):
    from mipflow.exceptions import FederationError
    from mipflow_airflow.notifications.failure import FailureNotifier

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MIPFLOW_NOTIFY_FILE", str(blocker / "n.jsonl"))  # its folder is a file
    monkeypatch.delenv("MIPFLOW_NOTIFY_CONN_ID", raising=False)
    FailureNotifier()(_context(FederationError("x")))


def test_a_node_dags_record_goes_to_mipflow_node_home_whatever_the_runs_conf_says(tmp_path, monkeypatch):
    """Where MIPFLOW_NODE_HOME is set, a node DAG (tagged "node") has no node_home param: its record goes to
    that home, not to a folder a run's conf names; a central DAG's record stays central."""
    from mipflow.exceptions import InputFileError
    from mipflow_airflow.notifications.failure import FailureNotifier

    monkeypatch.delenv("MIPFLOW_NOTIFY_CONN_ID", raising=False)
    monkeypatch.setenv("MIPFLOW_NODE_HOME", str(tmp_path / "node"))
    monkeypatch.setenv("MIPFLOW_CENTRAL_HOME", str(tmp_path / "central"))
    node_dag = SimpleNamespace(tags=["mipflow", "node"])
    for context in ({**_context(InputFileError("batch b1: empty")), "dag": node_dag},
                    {**_context(InputFileError("batch b1: empty"), node_home=str(tmp_path / "elsewhere")),
                     "dag": node_dag}):
        assert FailureNotifier().record(context)["site"] == "node"
        FailureNotifier().notify(context)
    assert len((tmp_path / "node" / "notifications.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "elsewhere").exists()
    central = {**_context(InputFileError("refused")), "dag": SimpleNamespace(tags=["mipflow", "central"])}
    assert FailureNotifier().record(central)["site"] == "central"
