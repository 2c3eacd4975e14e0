"""Operations: progress logs, round logs, failure records, the federation pool command and the
demo's results hint (docs/adr/0017-operability.md); the Airflow side (settings, hook, notifier,
--serve) is tested in tests/mipflow_airflow."""
from __future__ import annotations

import json
import logging
import re
import shutil
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from mipflow.node import ops
from mipflow.node.home import NodeHome
from mipflow.demo.synth import generate_consent, generate_export, write_export
from tests.conftest import REPO_ROOT
from tests.nodes import PROJECT, RESEARCHER, grant_all, load_frame

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


# --------------------------------------------------------------------------- rounds of an analysis


@pytest.fixture
def in_process_nodes(tmp_path):
    """Three nodes on the synthetic model, reached in-process through their real signed API."""
    from mipflow.protocol.signing import issue_client
    from mipflow.central.federation import NodeClient, NodeEndpoint
    from mipflow.node.api.app import create_app
    from tests.mipflow.algorithms.synthetic import MODEL, make_data

    clients = []
    homes = []
    for i in range(3):
        home = NodeHome.init(tmp_path / f"node{i}", f"node{i}")
        grant_all(home.root)
        frame = make_data(40 + i, 120)
        frame.insert(0, "subjectcode", [f"p{i}_{k:04d}" for k in range(len(frame))])
        load_frame(home.root, MODEL, frame)
        cred = issue_client(home.root, "central")
        client = NodeClient(NodeEndpoint(home.name, "http://testserver", cred.client_id, cred.secret.hex()),
                            retries=0)
        client._http.close()
        client._http = TestClient(create_app(home), base_url="http://testserver")
        clients.append(client)
        homes.append(home)
    yield clients, homes
    for client in clients:
        client.close()


def test_analysis_logs_each_round_with_nodes_answered_and_left_out(in_process_nodes, caplog):
    from mipflow.algorithms.contract import MAX_ROUNDS
    from mipflow.central.federation import run_analysis

    clients, homes = in_process_nodes
    homes[2].set_setting("disabled_algorithms", "logistic_regression")
    request = {"inputdata": {"data_model": "synth:1", "datasets": ["d0", "d1", "d2"], "x": ["x1", "age"],
                             "y": ["sex"], "filters": None}, "parameters": {"positive_class": "F"}}
    caplog.set_level(logging.INFO, logger="mipflow.central.federation")
    # plain aggregation: with secure aggregation (default for 3 nodes) a round-0 refusal restarts
    # the analysis with fresh masks, and the round numbers start again (tests/integration/test_secagg_federation.py)
    outcome = run_analysis("logistic_regression", request, clients, researcher=RESEARCHER, project=PROJECT,
                           secure_aggregation=False)
    assert outcome.rounds > 2 and set(outcome.excluded) == {"node2"}
    rounds = [re.search(r"round (\d+) of at most (\d+): (\d+) node\(s\) answered, (\d+) left out",
                        r.getMessage()) for r in caplog.records]
    rounds = [tuple(int(g) for g in m.groups()) for m in rounds if m]
    assert [r[0] for r in rounds] == list(range(1, outcome.rounds + 1))
    assert {r[1] for r in rounds} == {MAX_ROUNDS}
    assert rounds[0][2:] == (2, 1)  # the disabled node refused round 1 and was left out
    assert all(r[2:] == (2, 0) for r in rounds[1:])
    assert any(f"finished after {outcome.rounds} round(s) with 2 node(s)" in r.getMessage() for r in caplog.records)
    assert any("disabled_algorithm" in r.getMessage() for r in caplog.records)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert not re.search(r"p[0-2]_\d{4}", text)  # no patient identifier in the round logs


# --------------------------------------------------------------------------- failure records


def _record(exc, node_home=""):
    from mipflow.failures import failure_record

    return failure_record(dag_id="node_validate", task_id="validate_batch", run_id="r1", map_index=0, try_number=2,
                          max_tries=1, triggered_by="alice", exception=exc, log_url="http://airflow/log",
                          node_home=node_home)


def test_failure_record_keeps_our_messages_and_withholds_others(tmp_path):
    from mipflow.exceptions import InputFileError
    from mipflow.failures import notify_file, write_record

    record = _record(InputFileError("batch b1: not a readable CSV"))
    assert record["message"] == "batch b1: not a readable CSV" and record["exception"] == "InputFileError"
    assert (record["dag_id"], record["task_id"], record["try_number"], record["site"]) == (
        "node_validate", "validate_batch", 2, "central")
    path = notify_file("", {"MIPFLOW_CENTRAL_HOME": str(tmp_path / "central")})
    assert path == tmp_path / "central" / "notifications.jsonl"
    write_record(path, record)
    write_record(path, record)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [record, record]
    assert path.stat().st_mode & 0o077 == 0
    # a library error can quote a cell: its message is withheld
    leaky = _record(ValueError("could not convert string to float: 'Jane Doe'"))
    assert leaky["exception"] == "ValueError" and "Jane" not in json.dumps(leaky)
    handed_over = _record("could not convert string to float: 'Jane Doe'")  # a scheduler may pass a string
    assert handed_over["exception"] == "error" and "Jane" not in json.dumps(handed_over)


@pytest.mark.parametrize(("node_home", "environ", "expected"), [
    pytest.param("/n/a", {}, "/n/a/notifications.jsonl", id="node-home-of-the-run"),
    pytest.param("", {"MIPFLOW_NODE_HOME": "/n/b"}, "/n/b/notifications.jsonl", id="node-home-from-env"),
    pytest.param("", {"MIPFLOW_CENTRAL_HOME": "/c"}, "/c/notifications.jsonl", id="central-home"),
    pytest.param("/n/a", {"MIPFLOW_NOTIFY_FILE": "/x.jsonl"}, "/x.jsonl", id="explicit-file-wins"),
])
def test_failure_records_go_to_the_node_or_central_home(node_home, environ, expected):
    from mipflow.failures import notify_file

    assert str(notify_file(node_home, environ)) == expected


def test_a_node_record_leaves_the_node_without_its_message():
    from mipflow.exceptions import InputFileError
    from mipflow.failures import webhook_payload

    node = _record(InputFileError("Doe_Jane_export.csv: empty file"), node_home="/n/a")
    assert node["site"] == "node" and "Doe_Jane" in node["message"]  # kept at the node only
    assert webhook_payload(node) == {k: v for k, v in node.items() if k != "message"}
    central = _record(InputFileError("batch b1: not a readable CSV"))
    assert webhook_payload(central) == central


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


# --------------------------------------------------------------------------- the demo's results hint


def test_demo_hint_names_the_results_url():
    from mipflow.demo.run import results_page_hint

    assert "http://localhost:8099/mipflow/" in results_page_hint(REPO_ROOT, 8099)
    assert "DEMO_ARGS=--serve" in results_page_hint(REPO_ROOT) and "now" in results_page_hint(REPO_ROOT, serving=True)
