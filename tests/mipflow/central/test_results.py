"""The central result store (:mod:`mipflow.central.results`): one row and one JSON file per run, on
SQLite and PostgreSQL, and the summary written to the task log."""
from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from mipflow.central.results import ResultStore, central_home, results_table, summary_lines


def outcome(algorithm="linear_regression", **extra) -> dict:
    return {"algorithm": algorithm, "request": {"inputdata": {"data_model": "stroke:0.1", "datasets": ["a"]}},
            "result": {"coefficients": [0.1, 2.5]}, "contributed": {"node_a": 120, "node_b": 80},
            "excluded": {"node_c": "refused (min_row_count)"}, **extra}


@pytest.fixture
def store(tmp_path, db_url):
    results = ResultStore(tmp_path / "central", url=db_url)
    yield results
    results.engine.dispose()


def test_a_result_round_trips_with_its_provenance(store):
    path = store.save("manual__2026-06-15T10:00:00+00:00", outcome(rounds=7, seconds=1.5))
    assert path.parent == store.home / "results"
    assert path.name == "linear_regression__manual__2026-06-15T10_00_00_00_00.json"  # a safe file name
    row = store.get("manual__2026-06-15T10:00:00+00:00")
    assert {k: row[k] for k in ("algorithm", "request", "result", "contributed", "excluded")} == {
        k: outcome()[k] for k in ("algorithm", "request", "result", "contributed", "excluded")}
    assert row["software"].startswith("mipflow ")
    doc = store.document("manual__2026-06-15T10:00:00+00:00")
    assert (doc["rounds"], doc["seconds"]) == (7, 1.5)  # from the JSON file only
    assert json.loads(path.read_text())["run_id"] == "manual__2026-06-15T10:00:00+00:00"
    assert store.get("no-such-run") is None and store.document("no-such-run") is None


def test_saving_a_run_again_replaces_it(store):
    store.save("r1", outcome(result={"n_obs": 1}))
    store.save("r1", outcome(result={"n_obs": 2}))
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(results_table)).scalar() == 1
    assert store.get("r1")["result"] == {"n_obs": 2} and store.document("r1")["result"] == {"n_obs": 2}


def test_runs_are_listed_newest_first(store):
    for run_id, created in (("old", "2026-01-01T00:00:00+00:00"), ("new", "2026-03-01T00:00:00+00:00"),
                            ("mid", "2026-02-01T00:00:00+00:00")):
        store.save(run_id, outcome(created_at=created))
    assert [doc["run_id"] for doc in store.runs()] == ["new", "mid", "old"]
    assert [doc["run_id"] for doc in store.runs(limit=2)] == ["new", "mid"]


def test_a_json_file_of_another_run_is_not_mixed_in(store):
    """Run ids that differ only in unsafe characters share a file name: the row stays authoritative."""
    store.save("run/1", outcome(rounds=3))
    store.save("run_1", outcome(rounds=9, researcher="mallory"))
    doc = store.document("run/1")
    assert doc["run_id"] == "run/1" and "rounds" not in doc and "researcher" not in doc
    assert store.document("run_1")["rounds"] == 9


def test_an_unreadable_json_file_leaves_the_row(store):
    path = store.save("r2", outcome(rounds=4))
    path.write_text("{truncated")
    doc = store.document("r2")
    assert doc["result"] == outcome()["result"] and "rounds" not in doc


def test_the_central_home_and_database_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MIPFLOW_CENTRAL_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("MIPFLOW_RESULTS_DB_URL", f"sqlite:///{tmp_path / 'results-db.sqlite'}")
    assert central_home() == tmp_path / "elsewhere" and (tmp_path / "elsewhere" / "results").is_dir()
    store = ResultStore()
    try:
        store.save("r3", outcome())
        assert store.home == tmp_path / "elsewhere" and (tmp_path / "results-db.sqlite").is_file()
        assert not (tmp_path / "elsewhere" / "results.sqlite").exists()
    finally:
        store.engine.dispose()


def test_summary_lines_name_nodes_researcher_code_and_values():
    doc = outcome(rounds=5, seconds=0.8, researcher="alice", project="p1",
                  code={"central": {"algorithm_sha256": "ab" * 32, "catalogue_version": "1.0+abc"},
                        "consistent": False})
    lines = summary_lines(doc)
    assert lines[0] == "linear_regression: 2 node(s) contributed (200 rows), 5 round(s), 0.8 s"
    assert lines[1] == "  on behalf of researcher alice (project p1)"
    assert lines[2].startswith("  step code abababababababab... catalogue 1.0+abc (DIFFERS at some nodes")
    assert "  left out node_c: refused (min_row_count)" in lines
    assert lines[-1] == "  coefficients = [0.1, 2.5]"


def test_summary_lines_are_bounded():
    doc = outcome(result={f"field{i}": "x" * 500 for i in range(100)})
    lines = summary_lines(doc, limit=10)
    assert len(lines) == 11 and lines[-1] == "  ..."
    assert all(len(line) < 240 for line in lines) and lines[2].endswith("...")


def test_a_refused_run_is_stored_with_each_nodes_control_reason_and_what_to_change(store):
    from mipflow.central.results import failed_outcome

    excluded = {"node_a": "refused (access): researcher 'bob' (project 'p') has no grant for algorithm 'kmeans'",
                "node_b": "refused (min_row_count): fewer rows match than min_row_count (10): widen the filter",
                "node_c": "unavailable: connection refused"}
    doc = failed_outcome("kmeans", {"inputdata": {"datasets": ["a"]}}, "kmeans: 0 node(s) contributed",
                         excluded=excluded, researcher="bob", project="p", dag_id="federated_kmeans")
    store.save("r-refused", doc)
    stored = store.document("r-refused")
    assert stored["status"] == "refused" and store.get("r-refused")["status"] == "refused"
    assert stored["error"] == "kmeans: 0 node(s) contributed" and stored["excluded"] == excluded
    assert stored["nodes"]["node_a"]["control"] == "access"
    assert stored["nodes"]["node_a"]["reason"].startswith("researcher 'bob'")
    assert "grant" in stored["nodes"]["node_a"]["what_to_change"]
    assert stored["nodes"]["node_b"]["control"] == "min_row_count"
    assert stored["nodes"]["node_c"] == {"control": "unavailable", "reason": "connection refused",
                                         "what_to_change": "try again later; the node's admin can check that "
                                                           "the node is running"}
    # nothing refused, e.g. an unknown connection or nodes down: "failed"
    store.save("r-failed", failed_outcome("kmeans", None, "no Airflow connection 'x'"))
    assert store.get("r-failed")["status"] == "failed" and store.get("r-failed")["request"] == {}
    store.save("r-ok", outcome())
    assert store.get("r-ok")["status"] == "succeeded"
    assert {d["run_id"]: d["status"] for d in store.runs()} == {"r-ok": "succeeded", "r-failed": "failed",
                                                                "r-refused": "refused"}


def test_a_results_table_made_before_failures_were_stored_gains_its_status(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = sa.create_engine(url)
    old = sa.MetaData()
    sa.Table("mipflow_results", old, *[sa.Column(c.name, c.type, primary_key=c.primary_key)
                                       for c in results_table.columns if c.name != "status"])
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO mipflow_results VALUES ('r0', 'anova', 't', '{}', '{}', '{}', '{}', 's')"))
    engine.dispose()
    store = ResultStore(tmp_path / "central", url=url)
    assert store.get("r0")["status"] == "succeeded"
    store.save("r1", {"algorithm": "anova", "status": "failed", "error": "e"})
    assert store.get("r1")["status"] == "failed"
    store.engine.dispose()


# -- private results (ADR 0011, "private results") ------------------------------------------------

from mipflow.central.results import may_read  # noqa: E402

_DOC = {"run_id": "r1", "triggered_by": "alice", "project": "stroke"}


@pytest.mark.parametrize(("user", "admin", "shares", "projects", "expected"), [
    pytest.param("alice", False, [], set(), True, id="owner"),
    pytest.param("bob", False, [], set(), False, id="another-researcher"),
    pytest.param("bob", True, [], set(), True, id="admin"),
    pytest.param("bob", False, [{"kind": "user", "name": "bob"}], set(), True, id="shared-with-the-user"),
    pytest.param("carol", False, [{"kind": "user", "name": "bob"}], set(), False, id="shared-with-someone-else"),
    pytest.param("bob", False, [{"kind": "project", "name": "stroke"}], {"stroke"}, True, id="project-member"),
    pytest.param("bob", False, [{"kind": "project", "name": "stroke"}], set(), False, id="not-a-member"),
    pytest.param("bob", False, [{"kind": "project", "name": "other"}], {"other"}, False,
                 id="a-share-naming-another-project"),
    pytest.param("bob", False, [], {"stroke"}, False, id="member-but-not-shared"),
    pytest.param("", False, [{"kind": "user", "name": ""}], set(), False, id="no-user-name"),
])
def test_who_may_read_a_result(user, admin, shares, projects, expected):
    assert may_read(_DOC, user, admin=admin, shares=shares, projects=projects) is expected


def test_a_result_without_its_researcher_is_read_by_admins_only():
    assert not may_read({"run_id": "r", "triggered_by": None}, "alice", admin=False, shares=[], projects=set())
    assert may_read({"run_id": "r"}, "alice", admin=True, shares=[], projects=set())


def test_shares_and_members_are_stored_and_revoked(store):
    store.save("r1", {"algorithm": "anova_oneway", "result": {"f": 1.0}, "triggered_by": "alice",
                      "project": "stroke"})
    store.save("r2", {"algorithm": "anova_oneway", "result": {"f": 2.0}, "triggered_by": "bob",
                      "project": "stroke"})
    assert store.readable("r1", "bob", admin=False) is None
    assert [d["run_id"] for d in store.readable_runs("bob", admin=False)] == ["r2"]
    store.share("r1", "user", "bob", shared_by="alice")
    store.share("r1", "user", "bob", shared_by="alice")  # idempotent
    assert [(s["kind"], s["name"], s["shared_by"]) for s in store.shares("r1")] == [("user", "bob", "alice")]
    assert store.readable("r1", "bob", admin=False)["result"] == {"f": 1.0}
    assert {d["run_id"] for d in store.readable_runs("bob", admin=False)} == {"r1", "r2"}
    assert store.unshare("r1", "user", "bob") and not store.unshare("r1", "user", "bob")
    assert store.readable("r1", "bob", admin=False) is None
    store.share("r1", "project", "stroke", shared_by="alice")
    assert store.readable("r1", "bob", admin=False) is None  # bob is not a member yet
    store.add_member("stroke", "bob")
    assert store.projects_of("bob") == {"stroke"} and store.members("stroke") == [{"project": "stroke",
                                                                                    "member": "bob"}]
    assert store.readable("r1", "bob", admin=False) is not None
    assert store.remove_member("stroke", "bob")
    assert store.readable("r1", "bob", admin=False) is None
    assert {d["run_id"] for d in store.readable_runs("carol", admin=True)} == {"r1", "r2"}
    with pytest.raises(ValueError):
        store.share("r1", "team", "x", shared_by="alice")
    with pytest.raises(ValueError):
        store.share("r1", "user", " ", shared_by="alice")


def test_project_members_from_the_cli(tmp_path, capsys):
    from mipflow.cli import main

    home = tmp_path / "central"
    assert main(["central", "members", "add", "stroke", "bob", "carol", "--home", str(home)]) == 0
    assert main(["central", "members", "remove", "stroke", "carol", "--home", str(home)]) == 0
    capsys.readouterr()
    assert main(["central", "members", "list", "--home", str(home)]) == 0
    assert json.loads(capsys.readouterr().out) == [{"project": "stroke", "member": "bob"}]
    assert ResultStore(home).projects_of("bob") == {"stroke"}
    assert main(["central", "members", "add", "stroke", "--home", str(home)]) == 2  # nobody named
