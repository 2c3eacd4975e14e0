"""The results browser (mipflow.webui): authentication, runs a user may read, result and node pages;
pages hold no row-level data."""
from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from fastapi import Header, HTTPException
from fastapi.testclient import TestClient

from mipflow.central.results import ResultStore
from tests.mipflow.central.report.helpers import analysis_results, cells_of
from tests.nodes import standard_home


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    return analysis_results()


# -- the app, with a stand-in for Airflow's authentication ---------------------------

#: Bearer token -> user name; "good" is the researcher who triggered the stored runs below.
TOKENS = {"Bearer good": "admin", "Bearer alice": "alice", "Bearer bob": "bob", "Bearer carol": "carol",
          "Bearer boss": "boss"}


def fake_user(authorization: str | None = Header(None)) -> str:
    if authorization not in TOKENS:
        raise HTTPException(status_code=401, detail="Not authenticated")
    return TOKENS[authorization]


@pytest.fixture
def stored(tmp_path, results):
    store = ResultStore(tmp_path / "central")
    for i, name in enumerate(("linear_regression", "anova_oneway")):
        store.save(f"manual__2026-01-0{i + 1}T00:00:00+00:00", {
            "algorithm": name, "request": {"inputdata": {"data_model": "synth:1", "datasets": ["d0", "d1"],
                                                         "x": [], "y": ["y"]}, "parameters": {}},
            "result": results[name], "contributed": {"node_a": 300, "node_b": 280},
            "excluded": {"node_c": "refused (min_row_count): 4 rows"}, "rounds": 1, "seconds": 0.1,
            "datasets": {"node_a": {"d0": 300}, "node_b": {"d1": None}}, "triggered_by": "admin"})
    return store


def client_for(store, **kw) -> TestClient:
    from mipflow.webui import create_app

    app = create_app(user=fake_user, result_store=lambda: store, **kw)
    return TestClient(app)


def test_app_refuses_unauthenticated_requests(stored):
    client = client_for(stored)
    run = "manual__2026-01-01T00:00:00+00:00"
    for path in ("/", f"/run?id={run}", f"/run.json?id={run}", f"/run.csv?id={run}", "/node"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": "Bearer bad"}).status_code == 401, path


def test_app_lists_runs_and_serves_a_result(stored):
    client = client_for(stored)
    auth = {"Authorization": "Bearer good"}
    index = client.get("/", headers=auth)
    assert index.status_code == 200
    assert index.text.count('<tr class="succeeded">') == 2
    assert "node_c: refused (min_row_count): 4 rows" in index.text
    assert "admin" in index.text and "synth:1" in index.text and "d0, d1" in index.text
    run = "manual__2026-01-01T00:00:00+00:00"
    assert "run?id=manual__2026-01-01T00%3A00%3A00%2B00%3A00" in index.text
    page = client.get("/run", params={"id": run}, headers=auth)
    assert page.status_code == 200 and "<svg" in page.text and "d1: &lt;min_row_count" in page.text
    doc = client.get("/run.json", params={"id": run}, headers=auth).json()
    assert doc["result"] == stored.get(run)["result"] and doc["triggered_by"] == "admin" and doc["rounds"] == 1
    csv_text = client.get("/run.csv", params={"id": run}, headers=auth)
    assert csv_text.headers["content-type"].startswith("text/csv") and "coefficients" in csv_text.text
    assert client.get("/run", params={"id": "nope"}, headers=auth).status_code == 404


def test_a_refused_run_is_listed_and_links_back_to_its_airflow_run(stored):
    """Mounted at /mipflow in Airflow's api-server: the run's page links to /dags/DAG/runs/RUN."""
    from mipflow.central.results import failed_outcome
    from mipflow.webui import create_app

    run = "manual__2026-01-03T00:00:00+00:00"
    stored.save(run, {**failed_outcome(
        "anova_oneway", {"inputdata": {"data_model": "synth:1", "datasets": ["d0"]}},
        "anova_oneway: 0 node(s) contributed, fewer than min_nodes (2)",
        excluded={"node_a": "refused (query_budget): the researcher's budget of 100 analyses is spent"},
        dag_id="federated_anova_oneway"), "triggered_by": "admin"})
    client = TestClient(create_app(user=fake_user, result_store=lambda: stored), root_path="/mipflow")
    auth = {"Authorization": "Bearer good"}
    index = client.get("/", headers=auth).text
    assert index.count('<tr class="refused">') == 1 and "fewer than min_nodes (2)" in index
    page = client.get("/run", params={"id": run}, headers=auth).text
    assert "Refused: no result" in page and "<td>node_a</td><td>query_budget</td>" in page
    assert "wait for the budget" in page
    assert ('id="airflow-run" href="/dags/federated_anova_oneway/runs/manual__2026-01-03T00%3A00%3A00%2B00%3A00"'
            in page)
    assert 'id="airflow-run"' not in client.get("/run", params={"id": "manual__2026-01-01T00:00:00+00:00"},
                                                headers=auth).text  # stored without its DAG: no link


def test_app_hides_results_the_user_may_not_read(stored):
    client = client_for(stored, can_read=lambda user, algorithm: algorithm != "anova_oneway")
    auth = {"Authorization": "Bearer good"}
    assert "anova_oneway" not in client.get("/", headers=auth).text
    hidden = "manual__2026-01-02T00:00:00+00:00"
    assert client.get("/run.json", params={"id": hidden}, headers=auth).status_code == 404


# -- private results: the researcher who ran it, the admins, and whom it was shared with ----------

ALICE_RUN = "manual__2026-02-01T00:00:00+00:00"


def as_(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {name}"}


@pytest.fixture
def private(stored, results):
    """alice's result in project stroke, and a client whose admin is "boss"."""
    stored.save(ALICE_RUN, {
        "algorithm": "linear_regression", "request": {"inputdata": {"data_model": "synth:1", "datasets": ["d0"],
                                                                    "x": [], "y": ["y"]}, "parameters": {}},
        "result": results["linear_regression"], "contributed": {"node_a": 300}, "excluded": {},
        "triggered_by": "alice", "researcher": "alice", "project": "stroke"})
    return client_for(stored, is_admin=lambda who: who == "boss")


def readable_by(client, name: str) -> dict[str, int]:
    """What ``name`` gets for alice's result: the list (1 if listed), the page and both downloads."""
    listed = client.get("/", headers=as_(name))
    assert listed.status_code == 200
    got = {"listed": int("2026-02-01T00%3A00%3A00" in listed.text)}
    for path in ("/run", "/run.json", "/run.csv"):
        got[path] = client.get(path, params={"id": ALICE_RUN}, headers=as_(name)).status_code
    return got


SEES = {"listed": 1, "/run": 200, "/run.json": 200, "/run.csv": 200}
HIDDEN = {"listed": 0, "/run": 404, "/run.json": 404, "/run.csv": 404}


def test_a_result_is_private_to_its_researcher_until_shared_and_again_after_revocation(private, stored):
    assert readable_by(private, "alice") == SEES
    assert readable_by(private, "bob") == HIDDEN
    assert readable_by(private, "boss") == SEES  # an admin
    # the same 404 as for a run that does not exist: nothing tells bob that alice's run exists
    hidden = private.get("/run.json", params={"id": ALICE_RUN}, headers=as_("bob")).json()["detail"]
    missing = private.get("/run.json", params={"id": "manual__nope"}, headers=as_("bob")).json()["detail"]
    assert hidden.replace(ALICE_RUN, "RUN") == missing.replace("manual__nope", "RUN")
    # bob cannot share it with himself (he may not read it: 404, and nothing stored)
    assert private.post("/run/share", data={"id": ALICE_RUN, "kind": "user", "name": "bob"},
                        headers=as_("bob")).status_code == 404
    assert stored.shares(ALICE_RUN) == []

    page = private.get("/run", params={"id": ALICE_RUN}, headers=as_("alice")).text
    assert 'id="sharing"' in page and "Private: only you and the admins read it." in page
    shared = private.post("/run/share", data={"id": ALICE_RUN, "kind": "user", "name": "bob"},
                          headers=as_("alice"), follow_redirects=False)
    assert shared.status_code == 303 and shared.headers["location"].endswith("#sharing")
    assert readable_by(private, "bob") == SEES
    assert readable_by(private, "carol") == HIDDEN
    bob_page = private.get("/run", params={"id": ALICE_RUN}, headers=as_("bob")).text
    assert 'id="sharing"' not in bob_page  # a reader, not its owner: no sharing panel
    assert private.post("/run/share", data={"id": ALICE_RUN, "kind": "user", "name": "carol"},
                        headers=as_("bob")).status_code == 403  # reads it, does not own it
    assert 'data-name="bob"' in private.get("/run", params={"id": ALICE_RUN}, headers=as_("alice")).text

    revoked = private.post("/run/unshare", data={"id": ALICE_RUN, "kind": "user", "name": "bob"},
                           headers=as_("alice"), follow_redirects=False)
    assert revoked.status_code == 303 and stored.shares(ALICE_RUN) == []
    assert readable_by(private, "bob") == HIDDEN
    assert readable_by(private, "alice") == SEES


def test_a_result_shared_with_its_project_is_read_by_the_projects_members(private, stored):
    assert private.post("/run/share", data={"id": ALICE_RUN, "kind": "project", "name": "other"},
                        headers=as_("alice")).status_code == 400  # only the result's own project
    assert private.post("/run/share", data={"id": ALICE_RUN, "kind": "project", "name": "stroke"},
                        headers=as_("alice")).status_code == 200  # redirected to the page
    assert readable_by(private, "bob") == HIDDEN  # not a member of stroke
    stored.add_member("stroke", "bob")
    assert readable_by(private, "bob") == SEES
    assert readable_by(private, "carol") == HIDDEN
    private.post("/run/unshare", data={"id": ALICE_RUN, "kind": "project", "name": "stroke"}, headers=as_("boss"))
    assert readable_by(private, "bob") == HIDDEN  # an admin revoked it


def test_a_share_posted_from_another_site_is_refused(private, stored):
    resp = private.post("/run/share", data={"id": ALICE_RUN, "kind": "user", "name": "bob"},
                        headers={**as_("alice"), "Origin": "https://evil.example"})
    assert resp.status_code == 403 and stored.shares(ALICE_RUN) == []


# -- project members, managed by the admins (ADR 0011 addendum) ----------------------------


def test_an_admin_lists_projects_and_adds_and_removes_members_the_share_rule_follows(private, stored):
    """The page lists the projects of stored results and of memberships; an admin's adds and removes
    are the store's (the CLI's ``mipflow central members``), and a project share follows them."""
    assert 'id="project-members"' in private.get("/", headers=as_("boss")).text  # the admins' link
    page = private.get("/projects", headers=as_("boss"))
    assert page.status_code == 200 and 'data-project="stroke"' in page.text and "No members yet." in page.text
    private.post("/run/share", data={"id": ALICE_RUN, "kind": "project", "name": "stroke"}, headers=as_("alice"))
    assert readable_by(private, "bob") == HIDDEN

    added = private.post("/projects/add", data={"project": "stroke", "members": "bob, carol\ndave bob"},
                         headers=as_("boss"), follow_redirects=False)
    assert added.status_code == 303 and added.headers["location"].endswith("#project-stroke")
    assert stored.members("stroke") == [{"project": "stroke", "member": m} for m in ("bob", "carol", "dave")]
    assert readable_by(private, "bob") == SEES
    page = private.get(added.headers["location"].split("#")[0].replace("http://testserver", ""),
                       headers=as_("boss")).text
    assert "added to stroke: bob, carol, dave" in page and 'data-member="carol"' in page

    removed = private.post("/projects/remove", data={"project": "stroke", "member": "bob"}, headers=as_("boss"),
                           follow_redirects=False)
    assert removed.status_code == 303 and [m["member"] for m in stored.members("stroke")] == ["carol", "dave"]
    assert readable_by(private, "bob") == HIDDEN
    assert private.post("/projects/remove", data={"project": "stroke", "member": "bob"},
                        headers=as_("boss")).status_code == 404  # no longer a member
    # a project no result names yet
    assert private.post("/projects/add", data={"project": "dementia-2027", "members": "erin"},
                        headers=as_("boss"), follow_redirects=False).status_code == 303
    assert 'data-project="dementia-2027"' in private.get("/projects", headers=as_("boss")).text


@pytest.mark.parametrize(("form", "message"), [
    pytest.param({"project": "stroke", "members": ""}, "give a project and one or more user names", id="no-users"),
    pytest.param({"project": "", "members": "bob"}, "give a project and one or more user names", id="no-project"),
    pytest.param({"project": "stroke", "members": "bob <script>"}, "not a valid name: &lt;script&gt;",
                 id="bad-name"),
    pytest.param({"project": "x" * 129, "members": "bob"}, "not a valid name", id="long-project"),
])
def test_member_adds_that_name_nobody_are_refused_and_store_nothing(private, stored, form, message):
    resp = private.post("/projects/add", data=form, headers=as_("boss"))
    assert resp.status_code == 400 and message in resp.text
    assert stored.members() == []


def test_only_admins_manage_project_members_and_only_from_these_pages(private, stored):
    for name in ("alice", "bob"):
        assert private.get("/projects", headers=as_(name)).status_code == 403
        assert 'id="project-members"' not in private.get("/", headers=as_(name)).text  # no link either
        assert private.post("/projects/add", data={"project": "stroke", "members": name},
                            headers=as_(name)).status_code == 403
    stored.add_member("stroke", "bob")
    assert private.post("/projects/remove", data={"project": "stroke", "member": "bob"},
                        headers=as_("alice")).status_code == 403
    # an admin's browser made to post from another site (the login cookie goes along): refused
    assert private.post("/projects/add", data={"project": "stroke", "members": "mallory"},
                        headers={**as_("boss"), "Origin": "https://evil.example"}).status_code == 403
    assert private.post("/projects/remove", data={"project": "stroke", "member": "bob"},
                        headers={**as_("boss"), "Referer": "https://evil.example/x"}).status_code == 403
    assert stored.members() == [{"project": "stroke", "member": "bob"}]
    assert private.get("/projects").status_code == 401  # not logged in


# -- node page -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def node_home(tmp_path_factory):
    from mipflow.node import ops
    from mipflow.demo.synth import generate_consent, generate_export, write_export
    from tests.conftest import REPO_ROOT

    root = tmp_path_factory.mktemp("node")
    home = standard_home(root / "hospital_a", "hospital_a")
    ops.add_data_model(home, REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json")
    frame = generate_export("hospital_a", 80, seed=3, bad_rows=6)
    consent = generate_consent(frame, seed=3)
    consent_path = root / "consent.csv"
    consent.to_csv(consent_path, index=False)
    path = write_export(root / "a.csv", frame)
    ops.ingest(home, [path], profile=REPO_ROOT / "include" / "schemas" / "profiles" / "hospital_a.json",
               consent=consent_path)
    from mipflow.node.controls.audit import AuditLog
    from mipflow.node.api.app import AUDIT_FILE

    audit = AuditLog(home.root / AUDIT_FILE)
    audit.append(client="central", endpoint="/v1/metadata", what="metadata", decision="allowed")
    audit.append(client="central", endpoint="/v1/steps", algorithm="anova_oneway", decision="refused",
                 control="min_row_count", reason="too few rows")
    return home


def test_node_page_shows_counts_per_batch_rule_quarantine_and_audit(node_home, stored):
    from mipflow.node.store.feature_store import open_store
    from mipflow.webui import node_quality

    store = open_store(node_home)
    (batch,) = store.batches()
    assert batch["quarantined"] > 0 and batch["loaded"] > 0
    quality = node_quality(node_home)
    assert sum(q["rows"] for q in quality["quarantine"]) == batch["quarantined"] == len(store.quarantined())
    assert quality["audit"]["total"] == 2 and quality["audit_chain_ok"] is True
    client = client_for(stored, node_home=lambda: node_home)
    page = client.get("/node", headers={"Authorization": "Bearer good"})
    assert page.status_code == 200
    values = [float(v) for v, _ in cells_of(page.text)]
    for key in ("rows_in", "loaded", "quarantined", "no_consent", "duplicates"):
        assert batch[key] in values
    assert "min_row_count" in page.text and "step:anova_oneway" in page.text
    # counts only: no pseudonym, quarantined record or free value reaches the page
    engine = sa.create_engine(node_home.db_url)
    with engine.connect() as conn:
        pids = [r[0] for r in conn.execute(sa.text("SELECT _pid FROM dm_stroke_0_1"))]
        records = [r[0] for r in conn.execute(sa.text("SELECT record FROM mipflow_quarantine")) if r[0]]
    engine.dispose()
    assert pids and records
    assert not any(pid in page.text for pid in pids)
    checked = 0
    for record in records:
        for key, value in json.loads(record).items():
            if key != "dataset" and isinstance(value, str) and len(value) >= 8:
                assert value not in page.text
                checked += 1
    assert checked


def test_node_page_is_absent_where_there_is_no_node(stored):
    client = client_for(stored, node_home=lambda: None)
    assert client.get("/node", headers={"Authorization": "Bearer good"}).status_code == 404


def _batch(i: int, *, status: str = "loaded", failing_rule: bool = False, identity_changed: int = 0) -> dict:
    expectations = [{"expectation": "expect_column_values_to_be_between", "column": "age", "success": True,
                     "unexpected_count": 0, "element_count": 10}]
    if failing_rule:
        expectations.append({"expectation": "expect_column_values_to_be_in_set", "column": f"rulecol{i:04d}",
                             "success": False, "unexpected_count": 3, "element_count": 10})
    return {"batch_id": f"b{i:04d}", "data_model": "stroke:0.1", "source": f"ref{i:04d}", "stage": "load",
            "status": status, "rows_in": 10, "loaded": 0 if status == "held" else 10, "inserted": 10,
            "updated": 0, "unchanged": 0, "identity_changed": identity_changed, "quarantined": 0,
            "held": 10 if status == "held" else 0, "no_consent": 0, "duplicates": 0,
            "started_at": f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}", "finished_at": None, "message": "",
            "validation": {"expectations": expectations}}


def test_node_page_highlights_failures_shows_failing_rules_only_and_paginates():
    from mipflow.central.report.pages import BATCHES_PER_PAGE, node_quality_page

    n = BATCHES_PER_PAGE + 5
    batches = [_batch(i, status="held" if i == 2 else "loaded", failing_rule=i in (2, n - 1),
                      identity_changed=4 if i == n - 3 else 0) for i in range(n)]
    quality = {"node": "hospital_a", "batches": batches, "quarantine": [], "consent": []}
    first = node_quality_page(quality)  # newest first: b{n-1} .. b0005
    assert f"b{n - 1:04d}" in first and "b0005" in first and "b0004" not in first
    assert "page 1 of 2" in first and 'href="?page=2"' in first and 'href="?page=0"' not in first
    # failing rules only: the passing rule of every batch is not listed
    assert "expect_column_values_to_be_between" not in first
    assert f"rulecol{n - 1:04d}" in first and "rulecol0002" not in first  # only the page's batches
    # highlighted: the batch whose identifying-derived values changed, and the failing rule
    highlighted = first.split('<tr class="fail">')[1:]
    assert [row.split("</tr>")[0].count(f"b{n - 3:04d}") for row in highlighted].count(1) == 1
    assert sum(f"rulecol{n - 1:04d}" in row for row in highlighted) == 1
    assert len(highlighted) == 2 and "2 of 30 batches need attention" in first
    second = node_quality_page(quality, page_number=2)
    assert "b0004" in second and "b0005" not in second and 'href="?page=1"' in second
    assert "rulecol0002" in second and second.count('<tr class="fail">') == 2  # the held batch and its rule
    assert node_quality_page(quality, page_number=99).count("page 2 of 2") == 1


def test_node_page_route_takes_a_page(stored, node_home):
    client = client_for(stored, node_home=lambda: node_home)
    headers = {"Authorization": "Bearer good"}
    assert "page 1 of 1" in client.get("/node?page=1", headers=headers).text
    assert client.get("/node?page=0", headers=headers).status_code == 422
