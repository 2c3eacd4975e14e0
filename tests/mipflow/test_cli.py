"""The `mipflow` command line, as the README documents it: the node lifecycle against real node
processes, its commands in process (``cli.main``, what ``python -m mipflow.cli`` runs) but for a few
through the real entry point (``python -m mipflow.cli``: exit codes, stdout and stderr of a new
process); the governance and pool commands in process."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from mipflow import cli
from mipflow.node.controls.audit import AuditLog
from mipflow.node.home import NodeHome
from tests.conftest import REPO_ROOT
from tests.nodes import running_nodes
from tests.nodes import standard_home

pytestmark = pytest.mark.xdist_group("cli")
STROKE = REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json"


def mipflow_process(*args, check=True):
    """``python -m mipflow.cli ARGS`` in a new process (the entry point itself)."""
    out = subprocess.run([sys.executable, "-m", "mipflow.cli", *map(str, args)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if check and out.returncode != 0:
        raise AssertionError(f"mipflow {args} exited {out.returncode}: {out.stderr[-2000:]}")
    return out


def mipflow(*args, check=True):
    """``mipflow ARGS`` in this process (``cli.main``, which the entry point runs): its exit code and
    what it printed, as :func:`mipflow_process` returns them, without a new interpreter per command."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        returncode = cli.main([str(a) for a in args])
    out = subprocess.CompletedProcess(["mipflow", *map(str, args)], returncode, stdout.getvalue(), stderr.getvalue())
    if check and out.returncode != 0:
        raise AssertionError(f"mipflow {args} exited {out.returncode}: {out.stderr[-2000:]}")
    return out


def test_node_lifecycle_and_federated_analysis(tmp_path):
    exports = json.loads(mipflow("synth", tmp_path / "exports", "--patients", "60").stdout)
    homes = []
    for hospital in ("hospital_a", "hospital_b"):
        home = tmp_path / hospital
        init = mipflow_process if hospital == "hospital_a" else mipflow  # one through the entry point
        assert json.loads(init("node", "init", home, "--name", hospital).stdout)["node"] == hospital
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
        outcome = json.loads(mipflow_process("analyze", "linear_regression", "--federation", fed, "--request",
                                             request, *who).stdout)
        assert set(outcome["contributed"]) == {"hospital_a", "hospital_b"}
        assert outcome["result"]["indep_vars"] == ["Intercept", "age"]
        # a refusal: every node under its threshold -> non-zero exit with the reasons
        for home in homes:
            mipflow("node", "config", home, "min_row_count", "100000")
        refused = mipflow_process("analyze", "linear_regression", "--federation", fed, "--request", request, *who,
                                  check=False)
        assert refused.returncode != 0
        assert "min_row_count" in refused.stderr and "hospital_a" in refused.stderr
    assert oct(fed.stat().st_mode & 0o777) == "0o600"


def test_clear_errors(tmp_path):
    out = mipflow_process("node", "status", tmp_path / "nowhere", check=False)
    assert out.returncode == 2 and "not a node home" in out.stderr
    mipflow("node", "init", tmp_path / "n", "--name", "n")
    out = mipflow("ingest", tmp_path / "n", "--data-model", "nope:1", tmp_path / "x.csv", check=False)
    assert out.returncode == 2 and "mipflow data-model add" in out.stderr
    out = mipflow("node", "config", tmp_path / "n", "min_rows", "3", check=False)
    assert out.returncode == 2 and "unknown node setting" in out.stderr


# --------------------------------------------------------------------------- governance and pool commands (in process)


def test_access_cli_grant_list_revoke(tmp_path, capsys):
    standard_home(tmp_path / "h", "h")
    home = str(tmp_path / "h")
    assert cli.main(["access", "grant", home, "--researcher", "alice", "--data-model", "dementia:0.1",
                     "--datasets", "edsd0,edsd1", "--algorithms", "*", "--until", "2099-12-31",
                     "--note", "ethics 2026/17"]) == 0
    granted = json.loads(capsys.readouterr().out)["granted"]
    assert granted["project"] == "*" and granted["datasets"] == ["edsd0", "edsd1"]
    assert cli.main(["access", "list", home]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["id"] == granted["id"] and listed["status"] == "active"
    assert cli.main(["access", "revoke", home, granted["id"]]) == 0
    capsys.readouterr()
    assert cli.main(["access", "list", home]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli.main(["access", "list", home, "--all"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "revoked"
    assert cli.main(["access", "grant", home, "--data-model", "*", "--datasets", "*", "--algorithms", "*",
                     "--until", "never"]) == 2
    assert "names a researcher" in capsys.readouterr().err
    assert oct((tmp_path / "h" / "access.json").stat().st_mode & 0o777) == "0o600"


def test_audit_show_summarises_per_researcher_algorithm_and_reason(tmp_path, capsys):
    home = standard_home(tmp_path / "h", "h")
    log = AuditLog(home.root / "audit.log")
    rows = [("alice", "linear_regression", "allowed", "", "a1"), ("alice", "linear_regression", "allowed", "", "a1"),
            ("alice", "anova_oneway", "refused", "min_row_count", None), ("bob", "linear_regression", "refused",
                                                                         "access", None),
            ("bob", "ttest_onesample", "refused", "query_budget", None), ("carol", "anova_oneway", "allowed", "", "c1")]
    for who, algorithm, decision, control, analysis in rows:
        log.append(researcher=who, algorithm=algorithm, decision=decision, control=control, analysis=analysis)
    assert cli.main(["audit", "show", str(home.root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["records"] == 6
    assert summary["by_researcher"]["alice"] == {"allowed": 2, "refused": 1, "analyses": 1}
    assert summary["by_researcher"]["bob"] == {"refused": 2, "analyses": 0}
    assert summary["by_algorithm"]["anova_oneway"] == {"refused": 1, "allowed": 1}
    assert summary["refusals_by_control"] == {"min_row_count": 1, "access": 1, "query_budget": 1}
    assert cli.main(["audit", "show", str(home.root), "--researcher", "bob", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["by_researcher"]) == ["bob"]
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).date().isoformat()
    assert cli.main(["audit", "show", str(home.root), "--since", tomorrow, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 0
    assert cli.main(["audit", "show", str(home.root)]) == 0
    text = capsys.readouterr().out
    assert "alice" in text and "query_budget" in text and "6 record(s)" in text
    assert cli.main(["audit", "show", str(home.root), "--since", "yesterday"]) == 2


def test_disabled_algorithms_setting(tmp_path, capsys):
    home = standard_home(tmp_path / "h", "h")
    assert cli.main(["node", "config", str(home.root), "disabled_algorithms", "ttest_paired, anova_oneway"]) == 0
    assert NodeHome(home.root).settings.disabled_algorithms == "anova_oneway,ttest_paired"
    capsys.readouterr()
    assert cli.main(["node", "config", str(home.root), "disabled_algorithms", "no_such_thing"]) == 2
    assert "unknown algorithm" in capsys.readouterr().err
    assert cli.main(["node", "config", str(home.root), "query_budget", "-1"]) == 2


def test_pool_command_dry_run_prints_the_airflow_command(capsys):
    from mipflow.cli import main

    assert main(["central", "pools", "--slots", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("airflow pools set mipflow_federation 2 ")


@pytest.mark.parametrize("args, message", [
    pytest.param(["--researcher", "*", "--project", "p1"], "--any-researcher", id="researcher-star"),
    pytest.param(["--researcher", "alice", "--project", "*"], "--any-project", id="project-star"),
    pytest.param(["--researcher", "alice", "--any-researcher"], "contradict", id="named-and-any"),
])
def test_a_typed_wildcard_needs_its_explicit_flag(tmp_path, capsys, args, message):
    standard_home(tmp_path / "h", "h")
    assert cli.main(["access", "grant", str(tmp_path / "h"), *args, "--data-model", "*", "--datasets", "*",
                     "--algorithms", "*", "--until", "never"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "h" / "access.json").exists()  # nothing granted


def test_a_grant_open_to_any_researcher_on_any_project_warns_and_others_do_not(tmp_path, capsys):
    standard_home(tmp_path / "h", "h")
    home = str(tmp_path / "h")
    common = ["--data-model", "*", "--datasets", "*", "--algorithms", "*", "--until", "never"]
    assert cli.main(["access", "grant", home, "--any-researcher", *common]) == 0
    out = capsys.readouterr()
    assert "ANY researcher id on ANY project" in out.err
    granted = json.loads(out.out)["granted"]
    assert (granted["researcher"], granted["project"]) == ("*", "*")
    assert cli.main(["access", "grant", home, "--any-researcher", "--any-project", *common]) == 0
    assert "ANY researcher id on ANY project" in capsys.readouterr().err
    # a project grant (any researcher of the project) and a researcher grant (any of their projects): no warning
    for args in (["--project", "p1"], ["--any-researcher", "--project", "p1"], ["--researcher", "alice"],
                 ["--researcher", "alice", "--any-project"]):
        assert cli.main(["access", "grant", home, *args, *common]) == 0
        assert "WARNING" not in capsys.readouterr().err, args
