"""Operations: progress logs, settings from the environment, failure records,
the federation pool command, and the demo's --serve flag (docs/adr/0017-operability.md)."""
from __future__ import annotations

import json
import logging
import re
import shutil
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest

from mipflow.node import ops
from mipflow.node.home import NodeHome
from mipflow.demo.synth import generate_consent, generate_export, write_export
from tests.conftest import REPO_ROOT

STROKE = REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json"
PROFILES = REPO_ROOT / "include" / "schemas" / "profiles"
PROGRESS = re.compile(r"batch (b[0-9a-f]{20}) (\w+(?: \(second pass\))?): (\d+) of ~(\d+) rows \((\d+)%\)")


# --------------------------------------------------------------------------- progress of ingestion


def _identifying_values(export, hospital: str) -> list[str]:
    profile = json.loads((PROFILES / f"{hospital}.json").read_text())["deid"]
    columns = [profile["patient_id"], *profile["direct_identifiers"], *profile["free_text"]]
    return [str(v) for c in columns for v in export[c].dropna().unique() if len(str(v)) >= 5]


def _progress(caplog) -> list[tuple[str, str, int, int]]:
    out = []
    for record in caplog.records:
        match = PROGRESS.fullmatch(record.getMessage())
        if match:
            out.append((match[1], match[2], int(match[3]), int(match[4])))
    return out


def test_ingest_logs_rows_done_of_total_per_chunk_and_no_row_data(tmp_path, caplog):
    home = NodeHome.init(tmp_path / "hospital_a", "hospital_a")
    ops.add_data_model(home, STROKE)
    home.set_setting("chunk_rows", "40")
    export = generate_export("hospital_a", 150, seed=3, bad_rows=5)
    path = write_export(tmp_path / "export.csv", export)
    caplog.set_level(logging.INFO, logger="mipflow.node.ingest.progress")
    summary = ops.ingest(home, [path], profile=PROFILES / "hospital_a.json")
    (result,) = summary["files"]
    steps = _progress(caplog)
    assert [s[2] for s in steps] == [40, 80, 120, 155]  # rows done after each chunk of 40
    assert {s[0] for s in steps} == {result["batch_id"]} and {s[1] for s in steps} == {"ingest"}
    assert len(export) == 155 and {s[3] for s in steps} == {155}  # the line-count estimate is exact here
    mine = [r.getMessage() for r in caplog.records if r.name == "mipflow.node.ingest.progress"]
    assert re.fullmatch(rf"batch {result['batch_id']} ingest: done, 155 rows in 4 chunk\(s\), [0-9.]+ s", mine[-1])
    assert not any("export" in m for m in mine)  # batches are named by id, never by file name
    text = "\n".join(r.getMessage() for r in caplog.records)
    for value in _identifying_values(export, "hospital_a"):
        assert value not in text, "an identifying value reached the log"


def test_each_dag_stage_logs_its_progress(tmp_path, caplog):
    from mipflow.node.ingest import stages

    home = NodeHome.init(tmp_path / "hospital_b", "hospital_b")
    home.set_setting("settle_seconds", "0")
    home.set_setting("chunk_rows", "30")
    ops.add_data_model(home, STROKE)
    shutil.copyfile(PROFILES / "hospital_b.json", home.profiles_dir / "hospital_b.json")
    export = generate_export("hospital_b", 70, seed=9, bad_rows=0)
    (home.landing_dir / "hospital_b").mkdir()
    write_export(home.landing_dir / "hospital_b" / "export1.csv", export)
    generate_consent(export, seed=2).to_csv(home.consent_path, index=False)
    caplog.set_level(logging.INFO, logger="mipflow.node.ingest.progress")
    (batch_id,) = stages.capture(home)["captured"]
    stages.depersonalise(home, batch_id)
    stages.validate(home, batch_id)
    loaded = stages.load(home, batch_id)
    assert loaded["status"] == "loaded"
    steps = _progress(caplog)
    by_stage = {stage: [s for s in steps if s[1] == stage] for stage in ("depersonalise", "validate", "load")}
    assert [s[2] for s in by_stage["depersonalise"]] == [30, 60, 70]
    assert by_stage["depersonalise"][-1][3] == len(export) == 70
    # later stages read the staging file: the rows left after consent and depersonalisation
    assert 0 < by_stage["validate"][-1][2] == by_stage["validate"][-1][3] <= 70 - loaded["no_consent"]
    assert by_stage["load"][-1][2] == by_stage["load"][-1][3] == loaded["loaded"]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert not any("export1" in r.getMessage() for r in caplog.records if r.name == "mipflow.node.ingest.progress")
    for value in _identifying_values(export, "hospital_b"):
        assert value not in text


def test_estimate_rows_counts_data_lines(tmp_path):
    from mipflow.node.ingest.progress import estimate_rows

    path = tmp_path / "a.csv"
    path.write_text("a,b\n1,2\n3,4")  # no final line break
    assert estimate_rows(path) == 2
    path.write_text("a,b\n1,2\n3,4\n")
    assert estimate_rows(path) == 2
    path.write_text("")
    assert estimate_rows(path) == 0


# --------------------------------------------------------------------------- settings from the environment


def test_retries_delay_timeout_and_pool_come_from_the_environment():
    from mipflow_dags import default_args, federation_pool, on_failure

    args = default_args({"MIPFLOW_TASK_RETRIES": "4", "MIPFLOW_TASK_RETRY_DELAY_SECONDS": "7.5",
                         "MIPFLOW_TASK_TIMEOUT_MINUTES": "90"})
    assert args["retries"] == 4 and args["retry_delay"] == timedelta(seconds=7.5)
    assert args["execution_timeout"] == timedelta(minutes=90) and args["on_failure_callback"] is on_failure
    defaults = default_args({})
    assert defaults["retries"] == 1 and defaults["retry_delay"] == timedelta(seconds=30)
    assert "execution_timeout" not in defaults
    # Airflow's own variables-by-environment are the fallback
    assert default_args({"AIRFLOW_VAR_MIPFLOW_TASK_RETRIES": "3"})["retries"] == 3
    assert default_args({"AIRFLOW_VAR_MIPFLOW_TASK_RETRIES": "3", "MIPFLOW_TASK_RETRIES": "0"})["retries"] == 0
    with pytest.raises(ValueError, match="MIPFLOW_TASK_RETRIES='many' is not a valid int"):
        default_args({"MIPFLOW_TASK_RETRIES": "many"})
    with pytest.raises(ValueError, match="must be at least 0"):
        default_args({"MIPFLOW_TASK_RETRIES": "-1"})
    assert federation_pool({}) is None
    assert federation_pool({"MIPFLOW_POOLS": "1"}) == "mipflow_federation"
    assert federation_pool({"MIPFLOW_POOLS": "yes", "MIPFLOW_POOL": "calls_to_nodes"}) == "calls_to_nodes"


def test_node_hook_timeout_and_retries_from_the_environment(monkeypatch):
    from hooks.mipflow_node import NodeHook

    monkeypatch.setenv("AIRFLOW_CONN_MIPFLOW_NODE_X", json.dumps(
        {"conn_type": "mipflow_node", "host": "http://127.0.0.1:1", "login": "central", "password": "00" * 32}))
    monkeypatch.setenv("MIPFLOW_NODE_TIMEOUT_SECONDS", "12.5")
    monkeypatch.setenv("MIPFLOW_NODE_RETRIES", "5")
    client = NodeHook("mipflow_node_x").get_conn()
    try:
        assert client.retries == 5 and client._http.timeout.read == 12.5
    finally:
        client.close()


# --------------------------------------------------------------------------- failure records


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


# --------------------------------------------------------------------------- the federation pool


def test_pool_command_runs_airflow_pools_set():
    from mipflow.exceptions import ConfigError
    from mipflow.central.pools import create_pools, federation_pool

    calls = []

    def run(argv, **kw):
        calls.append(argv)
        return SimpleNamespace(returncode=0, stdout="", stderr="")

    spec = federation_pool(3)
    assert create_pools([spec], run=run, airflow="airflow") == calls
    assert calls == [["airflow", "pools", "set", "mipflow_federation", "3", spec.description]]
    with pytest.raises(ConfigError, match="at least 1 slot"):
        federation_pool(0)
    with pytest.raises(ConfigError, match="pool name"):
        federation_pool(2, "bad name;")
    with pytest.raises(ConfigError, match="failed: no database"):
        create_pools([spec], run=lambda argv, **kw: SimpleNamespace(returncode=1, stdout="", stderr="no database"))


def test_pool_command_dry_run_prints_the_airflow_command(capsys):
    from mipflow.cli import main

    assert main(["central", "pools", "--slots", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("airflow pools set mipflow_federation 2 ")


# --------------------------------------------------------------------------- make demo --serve


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
