"""The `mipflow` command line, as the README documents it (real subprocesses)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.nodes import running_nodes

pytestmark = pytest.mark.xdist_group("cli")
STROKE = REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json"


def mipflow(*args, check=True):
    out = subprocess.run([sys.executable, "-m", "mipflow.cli", *map(str, args)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if check and out.returncode != 0:
        raise AssertionError(f"mipflow {args} exited {out.returncode}: {out.stderr[-2000:]}")
    return out


def test_node_lifecycle_and_federated_analysis(tmp_path):
    exports = json.loads(mipflow("synth", tmp_path / "exports", "--patients", "60").stdout)
    homes = []
    for hospital in ("hospital_a", "hospital_b"):
        home = tmp_path / hospital
        assert json.loads(mipflow("node", "init", home, "--name", hospital).stdout)["node"] == hospital
        assert json.loads(mipflow("data-model", "add", home, STROKE).stdout)["data_model"] == "stroke:0.1"
        summary = json.loads(mipflow("ingest", home, "--data-model", "stroke:0.1", "--profile",
                                     REPO_ROOT / "include" / "schemas" / "profiles" / f"{hospital}.json",
                                     "--consent", exports[hospital]["consent"], exports[hospital]["export"]).stdout)
        assert summary["totals"]["conserved"] and summary["totals"]["loaded"] > 0
        homes.append(home)
    status = json.loads(mipflow("node", "status", homes[0]).stdout)
    assert status["datasets"][0]["dataset"] == "hospital_a"
    assert json.loads(mipflow("node", "config", homes[0], "min_row_count", "15").stdout)["min_row_count"] == 15
    assert mipflow("node", "config", homes[0], "min_row_count").stdout.strip() == "15"

    fed = tmp_path / "fed.json"
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"inputdata": {"data_model": "stroke:0.1", "datasets": ["hospital_a", "hospital_b"],
                                                 "x": ["age"], "y": ["nihss_admission"], "filters": None},
                                   "parameters": {}}))
    with running_nodes(homes) as urls:
        for home, url in zip(homes, urls):
            mipflow("federation", "add", fed, "--node", home.name, "--url", url, "--credentials-from", home)
        listed = json.loads(mipflow("federation", "list", fed).stdout)
        assert [n["node"] for n in listed] == ["hospital_a", "hospital_b"] and "secret" not in json.dumps(listed)
        for home in homes:
            mipflow("access", "grant", home, "--researcher", "alice", "--project", "stroke-study",
                    "--data-model", "stroke:0.1", "--datasets", "*", "--algorithms", "linear_regression",
                    "--until", "never")
        who = ("--researcher", "alice", "--project", "stroke-study")
        outcome = json.loads(mipflow("analyze", "linear_regression", "--federation", fed, "--request", request,
                                     *who).stdout)
        assert set(outcome["contributed"]) == {"hospital_a", "hospital_b"}
        assert outcome["result"]["indep_vars"] == ["Intercept", "age"]
        # a refusal: every node under its threshold -> non-zero exit with the reasons
        for home in homes:
            mipflow("node", "config", home, "min_row_count", "100000")
        refused = mipflow("analyze", "linear_regression", "--federation", fed, "--request", request, *who,
                          check=False)
        assert refused.returncode != 0
        assert "min_row_count" in refused.stderr and "hospital_a" in refused.stderr
    assert oct(fed.stat().st_mode & 0o777) == "0o600"


def test_clear_errors(tmp_path):
    out = mipflow("node", "status", tmp_path / "nowhere", check=False)
    assert out.returncode == 2 and "not a node home" in out.stderr
    mipflow("node", "init", tmp_path / "n", "--name", "n")
    out = mipflow("ingest", tmp_path / "n", "--data-model", "nope:1", tmp_path / "x.csv", check=False)
    assert out.returncode == 2 and "mipflow data-model add" in out.stderr
    out = mipflow("node", "config", tmp_path / "n", "min_rows", "3", check=False)
    assert out.returncode == 2 and "unknown node setting" in out.stderr
