"""Failure records (:mod:`mipflow.failures`, docs/adr/0017-operability.md): what a record keeps,
where it is written, what leaves a node. The Airflow notifier that calls these is tested in
tests/mipflow_airflow/test_notifications.py."""
from __future__ import annotations

import json

import pytest


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
