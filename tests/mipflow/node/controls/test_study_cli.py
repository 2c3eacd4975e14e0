"""``mipflow study approve|show|refresh|withdraw`` on a node home (the admin's commands)."""
from __future__ import annotations

import json

from mipflow.cli import main
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import PROJECT, node_home, protocol, stroke_rows
from tests.nodes import load_frame


def run(capsys, *argv: str) -> tuple[int, dict | list | None, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def test_the_study_commands(tmp_path, capsys) -> None:
    home, _ = node_home(tmp_path / "node")
    path = tmp_path / "protocol.json"
    path.write_text(json.dumps(protocol()))
    code, approved, _ = run(capsys, "study", "approve", home.root, "--project", PROJECT, path)
    assert code == 0 and approved["status"] == "approved" and approved["node"] == "hospital_a"
    code, shown, _ = run(capsys, "study", "show", home.root, "--project", PROJECT)
    assert code == 0 and shown[0]["snapshot"] == approved["snapshot"]
    assert shown[0]["counts"]["population"] == approved["population"]
    code, refreshed, _ = run(capsys, "study", "refresh", home.root, "--project", PROJECT)
    assert code == 0 and refreshed["status"] == "unchanged"
    load_frame(home.root, STROKE, stroke_rows(3, 2, "hospital_a", "late"))
    code, _, err = run(capsys, "study", "refresh", home.root, "--project", PROJECT)
    assert code == 2 and "row(s) added" in err and "stays on its snapshot" in err
    code, withdrawn, _ = run(capsys, "study", "withdraw", home.root, "--project", PROJECT)
    assert code == 0 and withdrawn["status"] == "withdrawn"
    path.write_text(json.dumps(protocol(algorithms=["no_such_algorithm"])))
    code, _, err = run(capsys, "study", "approve", home.root, "--project", PROJECT, path)
    assert code == 2 and "unknown algorithm(s) 'no_such_algorithm'" in err
    path.write_text("{not json")
    code, _, err = run(capsys, "study", "approve", home.root, "--project", PROJECT, path)
    assert code == 2 and "cannot read study protocol" in err
