"""End to end in a real browser: a federated analysis triggered in a real central Airflow
against three node services, then its result page opened in headless Chromium after logging
in through Airflow's own login page.  The numbers on the page must be the stored ones.

The browser tests need Debian's ``/usr/bin/chromium`` (Playwright drives it; no browser
download) and skip where it is absent, except in CI (``CI=true``), where they must run; the
tests through the api-server alone (no browser) run everywhere.  Screenshots go to
``var/test-artifacts/``.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from mipflow.node import ops
from mipflow.protocol.signing import issue_client
from mipflow.central.results import ResultStore
from mipflow.demo.formats import HOSPITALS
from mipflow.demo.synth import generate_export, write_export
from tests.airflow_server import central_airflow, run_dag, served
from tests.conftest import REPO_ROOT
from tests.nodes import PROJECT, grant_all, pin_each_other, running_nodes
from tests.nodes import standard_home

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.xdist_group("airflow")]
CHROMIUM = os.environ.get("MIPFLOW_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "var" / "test-artifacts"
DAG_ID = "federated_linear_regression"
#: Researchers besides admin and viewer: Airflow users with the simple auth manager's ``user`` role.
RESEARCHERS = {"alice": "user", "bob": "user"}
#: The DAGs the New analysis page triggers in the tests below.
FORM_DAGS = ["federation_metadata"]


def _chromium() -> str:
    if shutil.which(CHROMIUM) is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but no Chromium at {CHROMIUM} (.ci/run installs Debian's chromium)")
        pytest.skip(f"no Chromium at {CHROMIUM}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            raise
        pytest.skip("playwright is not installed")
    return CHROMIUM


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium under Playwright, one browser for the module's browser tests (starting Playwright
    and Chromium takes seconds); each test opens its pages in browser contexts of its own (no cookie or
    login carries over) and closes them (:func:`_close_contexts`).  Skips where Chromium is absent (fails
    in CI)."""
    from playwright.sync_api import sync_playwright

    path = _chromium()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def _close_contexts(browser) -> None:
    """Close every context (and so every page) a test opened in the module's browser."""
    for context in list(browser.contexts):
        context.close()


@pytest.fixture(scope="module")
def central(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    conn_ids = [f"mipflow_node_{h}" for h in HOSPITALS]
    env = {"MIPFLOW_CENTRAL_HOME": str(root / "central"), "MIPFLOW_NODE_CONN_IDS": ",".join(conn_ids)}
    with central_airflow(root / "airflow", env, dag_ids=[DAG_ID, *FORM_DAGS], roles=RESEARCHERS) as ready:
        homes = []  # while Airflow starts
        for i, hospital in enumerate(HOSPITALS):
            home = standard_home(root / hospital, hospital)
            ops.add_data_model(home, REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json")
            path = write_export(root / f"{hospital}.csv", generate_export(hospital, 60, seed=40 + i))
            ops.ingest(home, [path], profile=REPO_ROOT / "include" / "schemas" / "profiles" / f"{hospital}.json")
            grant_all(home.root, researcher="admin")  # the Airflow user who triggers the analysis
            grant_all(home.root, researcher="alice")  # a researcher (role user) with private results
            homes.append(home)
        pin_each_other([h.root for h in homes])  # the admins pinned each other's keys (ADR 0014)
        with running_nodes([h.root for h in homes]) as urls:
            server = ready()
            with server.client() as client:  # the nodes as Airflow connections, made through the REST API
                for home, url, conn_id in zip(homes, urls, conn_ids):
                    cred = issue_client(home.root, "central")
                    served(server, client, "POST", "/api/v2/connections", ok=(201,), json={
                        "connection_id": conn_id, "conn_type": "mipflow_node", "host": url,
                        "login": cred.client_id, "password": cred.secret.hex(),
                        "extra": json.dumps({"node_name": home.name})})
            yield {"server": server, "store": ResultStore(root / "central")}


def test_plugin_pages_refuse_requests_without_airflow_login(central):
    server = central["server"]
    # the first requests may wait for the api-server to import the plugin: a generous timeout on a loaded machine
    for path in ("/mipflow/", "/mipflow/run?id=x", "/mipflow/run.json?id=x", "/mipflow/run.csv?id=x"):
        assert httpx.get(server.base_url + path, timeout=60).status_code == 401, path
        bad = httpx.get(server.base_url + path, headers={"Authorization": "Bearer not-a-jwt"}, timeout=60)
        assert bad.status_code == 403, path
    with server.client() as client:  # the plugin and its menu entry are registered in the api-server
        (plugin,) = [p for p in client.get("/api/v2/plugins").json()["plugins"] if p["name"] == "mipflow_ui"]
        assert plugin["fastapi_apps"][0]["url_prefix"] == "/mipflow"
        assert plugin["external_views"][0]["href"] == "mipflow/"


def test_result_page_in_a_browser_shows_the_stored_numbers(central, chromium):
    server, store = central["server"], central["store"]
    conf = {"data_model": "stroke:0.1", "datasets": list(HOSPITALS), "filters": None, "y": "mrs_90d",
            "x": ["age", "nihss_admission"], "nodes": [f"mipflow_node_{h}" for h in HOSPITALS], "min_nodes": 3,
            "project": PROJECT}
    run = run_dag(server, DAG_ID, conf)
    assert run["state"] == "success", server.tail()
    stored = store.document(run["dag_run_id"])
    assert stored is not None and stored["triggered_by"] == "admin"
    result = stored["result"]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser = chromium  # the module's browser; each page below is in a context of its own
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        # Not logged in: Airflow's UI sends the browser to the simple auth manager's login page.
        page.goto(f"{server.base_url}/auth/login?next={quote(server.base_url + '/mipflow/')}")
        page.locator("input[name=username]").fill("admin")
        page.locator("input[name=password]").fill(server.users["admin"])
        page.locator("button[type=submit]").click()
        page.wait_for_url(f"{server.base_url}/mipflow/", timeout=30_000)
        runs = page.locator("#runs tbody tr")
        assert runs.count() == 1
        row = runs.first.inner_text()
        for expected in (run["dag_run_id"], "mrs_90d ~ age + nihss_admission (linear regression)",
                         "stroke:0.1", "admin",
                         *(f"{n} ({r})" for n, r in stored["contributed"].items())):
            assert expected in row
        runs.first.locator("a.title").click()
        page.wait_for_selector("#result table")
        page.screenshot(path=str(ARTIFACTS / "result-linear-regression.png"), full_page=True)

        assert page.locator(".plots svg").count() == 1  # the coefficient plot
        table = page.locator("#result table").filter(has=page.locator("th", has_text="coefficients")).first
        headers = table.locator("thead th").all_inner_texts()
        rows = table.locator("tbody tr")
        assert rows.count() == len(result["indep_vars"])
        for i, term in enumerate(result["indep_vars"]):
            cells = rows.nth(i).locator("td")
            assert cells.nth(0).inner_text() == term
            for field in ("coefficients", "std_err", "lower_ci", "upper_ci", "pvalues"):
                cell = cells.nth(headers.index(field))
                exact = float(cell.get_attribute("data-value"))
                assert exact == result[field][i]  # the exact stored value
                shown = float(cell.inner_text())  # rounded to 6 significant digits
                assert math.isclose(shown, result[field][i], rel_tol=5e-6, abs_tol=1e-300)
        summary = page.locator("#result table").first
        assert f"{result['r_squared']:.6g}" in summary.inner_text()
        assert str(result["n_obs"]) in summary.inner_text()

        with page.expect_download() as download:
            page.get_by_text("Download JSON").click()
        downloaded = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
        assert downloaded["result"] == result
        with page.expect_download() as download:
            page.get_by_text("Download CSV").click()
        csv_text = Path(download.value.path()).read_text(encoding="utf-8")
        assert f"{result['indep_vars'][1]},coefficients,{result['coefficients'][1]!r}" in csv_text

        page.goto(f"{server.base_url}/")  # the entry under Browse in Airflow's own UI
        page.get_by_role("button", name="Browse").click(timeout=90_000)
        page.get_by_role("menuitem", name="Analysis results").click(timeout=90_000)
        # the React UI switches route client-side; wait for the page inside its iframe
        page.frame_locator("iframe").locator("#runs").wait_for(timeout=90_000)
        assert "/plugin/mipflow-results" in page.url
        page.screenshot(path=str(ARTIFACTS / "airflow-browse-results.png"), full_page=True)
    finally:
        _close_contexts(browser)


@pytest.fixture(scope="module")
def refused_run(central) -> dict:
    """A run the nodes cannot answer (a project no node approved), once for the module."""
    conf = {"data_model": "stroke:0.1", "datasets": list(HOSPITALS), "filters": None, "y": "mrs_90d",
            "x": ["age"], "nodes": [f"mipflow_node_{h}" for h in HOSPITALS], "min_nodes": None,
            "project": "not-approved"}
    return run_dag(central["server"], DAG_ID, conf)


def test_a_refused_run_is_one_red_task_stored_as_failed_and_linked_to_its_page(central, refused_run):
    """Through the real scheduler (ADR 0047): the run is one task, run_analysis, which turns red; the run
    is stored as failed with the reason, and the task's Result link is the run's results page (issue 15)."""
    server, store = central["server"], central["store"]
    assert refused_run["state"] == "failed", server.tail()
    run_id = refused_run["dag_run_id"]
    stored = store.document(run_id)
    assert stored["status"] == "failed" and "no node lists dataset(s)" in stored["error"]
    assert (stored["triggered_by"], stored["dag_id"]) == ("admin", DAG_ID)
    with server.client() as client:
        tis = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances").json()
        assert [(ti["task_id"], ti["state"]) for ti in tis["task_instances"]] == [("run_analysis", "failed")]
        links = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/run_analysis/links")
        assert links.status_code == 200, links.text
        assert links.json()["extra_links"]["Result"].endswith(f"/mipflow/run?id={quote(run_id, safe='')}")
        page = client.get("/mipflow/run", params={"id": run_id})  # the page links back to the run
        assert page.status_code == 200 and "Failed: no result" in page.text
        assert f'href="/dags/{DAG_ID}/runs/{quote(run_id, safe="")}"' in page.text


def test_a_refused_run_is_listed_with_its_reason_and_the_task_links_to_it(central, chromium, refused_run):
    """A run the nodes cannot answer turns red, is stored, is listed as failed with the reason, and the
    run_analysis task's Result link opens its page (issue 15), in a browser."""
    server = central["server"]
    run_id = refused_run["dag_run_id"]
    with server.client() as client:
        links = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/run_analysis/links")
    link = links.json()["extra_links"]["Result"]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser = chromium  # the module's browser; each page below is in a context of its own
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{server.base_url}/auth/login?next={quote(server.base_url + '/mipflow/')}")
        page.locator("input[name=username]").fill("admin")
        page.locator("input[name=password]").fill(server.users["admin"])
        page.locator("button[type=submit]").click()
        page.wait_for_url(f"{server.base_url}/mipflow/", timeout=30_000)
        row = page.locator("#runs tbody tr.failed")
        assert row.count() == 1 and run_id in row.inner_text() and "no node lists dataset(s)" in row.inner_text()
        page.goto(server.base_url + link if link.startswith("/") else link)
        page.wait_for_selector("#failure")
        assert "Failed: no result" in page.locator("#failure").inner_text()
        page.screenshot(path=str(ARTIFACTS / "result-failed-run.png"), full_page=True)
        page.locator("#airflow-run").click()  # back to the run in Airflow's own UI
        page.wait_for_url(f"**/dags/{DAG_ID}/runs/**", timeout=30_000)
    finally:
        _close_contexts(browser)


# -- issue 15: a researcher's analysis from the New analysis page ----------------------------------


def _login(page, server, to: str = "/mipflow/") -> None:
    page.goto(f"{server.base_url}/auth/login?next={quote(server.base_url + to)}")
    page.locator("input[name=username]").fill("admin")
    page.locator("input[name=password]").fill(server.users["admin"])
    page.locator("button[type=submit]").click()
    page.wait_for_url(f"{server.base_url}{to}", timeout=30_000)


def _open_form(page, algorithm: str, shots: Path) -> None:
    """From the results list: New analysis, the algorithm and project, the researcher's datasets."""
    page.locator("#new-analysis").click()
    page.locator("select[name=algorithm]").select_option(algorithm)  # the page is rebuilt for it
    page.wait_for_load_state()
    page.locator("#choose input[name=project]").fill(PROJECT)
    page.locator("#choose button[type=submit]").click()
    page.wait_for_selector("#sync")
    if not page.locator("#analysis input[name=datasets]").count():  # ask the nodes what this researcher may use
        page.screenshot(path=str(shots / f"before-sync-{algorithm}.png"), full_page=True)
        page.locator("#sync button").click()
        page.wait_for_selector("#analysis input[name=datasets]", timeout=90_000)


def _submit_and_open_result(page, store):
    page.locator("#run").click()
    page.wait_for_selector("#run-id", timeout=30_000)
    run_id = page.locator("#run-id").inner_text()
    page.wait_for_selector("#ready", timeout=120_000)  # the page refreshes until the result is stored
    page.locator("#result-link").click()
    page.wait_for_selector("h1")
    return run_id, store.document(run_id)


def test_a_researcher_picks_variables_and_datasets_runs_an_analysis_and_reads_it(central, chromium):
    """Issue 15.1 and 15.3 in a browser: lists from the synced metadata, a run on the researcher's
    behalf, a readable title, the numbers stored, the plot, the list searched; the event level offered
    from the event variable's levels; a refused analysis shows its reason."""
    import time

    started = time.time() - 1
    server, store = central["server"], central["store"]
    browser = chromium  # the module's browser; each page below is in a context of its own
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        ARTIFACTS.mkdir(parents=True, exist_ok=True)  # kept after the run: the issue's evidence
        _login(page, server)
        _open_form(page, "linear_regression", ARTIFACTS)
        datasets = page.locator("#analysis input[name=datasets]")
        assert datasets.count() == len(HOSPITALS)
        labels = page.locator("#analysis label.dataset").all_inner_texts()
        assert all("rows)" in text for text in labels)  # released counts beside each dataset
        for i in range(datasets.count()):
            datasets.nth(i).check()
        y_choices = page.locator("select[name=y] option").all_inner_texts()
        assert any(t.startswith("Age at admission (age; real") for t in y_choices)
        assert not any("(sex; nominal" in t for t in y_choices)  # linear regression: numerical y only
        page.locator("select[name=y]").select_option("mrs_90d")
        page.locator("select[name=x]").nth(0).select_option("age")
        page.locator("select[name=x]").nth(1).select_option("nihss_admission")
        page.locator("select[name=filter_var]").first.select_option("age")
        page.locator("select[name=filter_op]").first.select_option("greater_or_equal")
        page.locator("input[name=filter_value]").first.fill("18")
        page.screenshot(path=str(ARTIFACTS / "new-analysis-form.png"), full_page=True)
        run_id, stored = _submit_and_open_result(page, store)
        assert stored["status"] == "succeeded" and stored["triggered_by"] == "admin"  # on the user's behalf
        request = stored["request"]["inputdata"]
        assert request["x"] == ["age", "nihss_admission"] and sorted(request["datasets"]) == sorted(HOSPITALS)
        assert request["filters"]["rules"] == [{"id": "age", "field": "age", "operator": "greater_or_equal",
                                                "type": "double", "input": "number", "value": 18.0}]
        assert page.locator("h1").inner_text() == "mrs_90d ~ age + nihss_admission (linear regression)"
        assert page.locator(".plots svg").count() == 1
        table = page.locator("#result table").filter(has=page.locator("th", has_text="coefficients")).first
        exact = [float(v) for v in table.locator("td[data-value]").evaluate_all(
            "cells => cells.map(c => c.dataset.value)")]
        for value in stored["result"]["coefficients"]:
            assert value in exact
        page.screenshot(path=str(ARTIFACTS / "new-analysis-result.png"), full_page=True)

        # the list: titled, searchable
        page.goto(f"{server.base_url}/mipflow/?q=nihss_admission+regression")
        titles = page.locator("#runs a.title").all_inner_texts()
        assert "mrs_90d ~ age + nihss_admission (linear regression)" in titles
        assert all("nihss_admission" in t for t in titles)

        # Kaplan-Meier from the form: the event level among the event variable's levels, a curve drawn
        page.goto(f"{server.base_url}/mipflow/")
        _open_form(page, "kaplan_meier", ARTIFACTS)
        for i in range(page.locator("#analysis input[name=datasets]").count()):
            page.locator("#analysis input[name=datasets]").nth(i).check()
        page.locator("select[name=y]").nth(0).select_option("followup_days")
        page.locator("select[name=y]").nth(1).select_option("death_90d")
        level = page.locator("select[name=param_event_level]")
        assert level.locator("option").all_inner_texts() == ["", "yes", "no"]
        level.select_option("yes")
        page.screenshot(path=str(ARTIFACTS / "kaplan-meier-form.png"), full_page=True)
        # (not run here: after the analyses above, the nodes' differencing control refuses a
        # selection this close to rows they answered for; the curve is tested on a real result in
        # tests/mipflow/central/report/test_readable.py)

        # refused: a filter that leaves too few rows at every node; the reason and what to change
        page.goto(f"{server.base_url}/mipflow/")
        _open_form(page, "linear_regression", ARTIFACTS)
        for i in range(page.locator("#analysis input[name=datasets]").count()):
            page.locator("#analysis input[name=datasets]").nth(i).check()
        page.locator("select[name=y]").select_option("mrs_90d")
        page.locator("select[name=x]").nth(0).select_option("age")
        page.locator("select[name=filter_var]").first.select_option("age")
        page.locator("select[name=filter_op]").first.select_option("greater")
        page.locator("input[name=filter_value]").first.fill("89.5")
        run_id, stored = _submit_and_open_result(page, store)
        assert stored["status"] == "refused"
        failure = page.locator("#failure").inner_text()
        assert "Refused: no result" in failure and "widen the filter" in failure
        assert page.locator("h1").inner_text() == "mrs_90d ~ age (linear regression) (refused)"
        page.screenshot(path=str(ARTIFACTS / "refused-analysis.png"), full_page=True)
    finally:
        _close_contexts(browser)
    # the screenshots are kept (var/test-artifacts), each written by this test
    for name in ("new-analysis-form.png", "new-analysis-result.png", "kaplan-meier-form.png",
                 "refused-analysis.png", "before-sync-linear_regression.png"):
        assert (ARTIFACTS / name).stat().st_mtime >= started, name


# -- issue 15: results private to their researcher, shared explicitly; the user role deletes no DAG --


def _login_as(browser, server, name: str, to: str = "/mipflow/"):
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # a context of its own: its own cookie
    page.goto(f"{server.base_url}/auth/login?next={quote(server.base_url + to)}")
    page.locator("input[name=username]").fill(name)
    page.locator("input[name=password]").fill(server.users[name])
    page.locator("button[type=submit]").click()
    page.wait_for_url(f"{server.base_url}{to}", timeout=30_000)
    return page


def _what_bob_gets(server, run_id: str) -> dict[str, int]:
    """bob's view of a run through the api-server with his own token: listed (1/0), page, downloads."""
    with server.client("bob", timeout=60) as client:  # the first request builds the pages' app
        listed = client.get("/mipflow/")
        assert listed.status_code == 200
        got = {"listed": int(quote(run_id, safe="") in listed.text)}
        for path in ("/mipflow/run", "/mipflow/run.json", "/mipflow/run.csv"):
            got[path] = client.get(path, params={"id": run_id}).status_code
    return got


def test_a_researchers_result_is_private_until_shared_and_again_after_revocation(central, chromium):
    """alice (role user) runs an analysis; bob (role user) can neither list, read nor download it
    (404, as for a run that does not exist) until alice shares it with him on its page, and not after
    she revokes the share; an admin reads it throughout."""
    server, store = central["server"], central["store"]
    conf = {"data_model": "stroke:0.1", "datasets": list(HOSPITALS), "filters": None, "y": "mrs_90d",
            "x": ["age", "nihss_admission"], "nodes": [f"mipflow_node_{h}" for h in HOSPITALS], "min_nodes": 3,
            "project": PROJECT}
    run = run_dag(server, DAG_ID, conf, user="alice")
    assert run["state"] == "success", server.tail()
    run_id = run["dag_run_id"]
    stored = store.document(run_id)
    assert stored["triggered_by"] == "alice" and stored["project"] == PROJECT

    hidden = {"listed": 0, "/mipflow/run": 404, "/mipflow/run.json": 404, "/mipflow/run.csv": 404}
    sees = {"listed": 1, "/mipflow/run": 200, "/mipflow/run.json": 200, "/mipflow/run.csv": 200}
    assert _what_bob_gets(server, run_id) == hidden
    with server.client("bob") as client:  # the same answer as for a run that does not exist
        assert (client.get("/mipflow/run.json", params={"id": "manual__nope"}).json()["detail"]
                == client.get("/mipflow/run.json", params={"id": run_id}).json()["detail"].replace(
                    run_id, "manual__nope"))
    with server.client("admin") as client:
        assert client.get("/mipflow/run.json", params={"id": run_id}).json()["result"] == stored["result"]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser = chromium  # the module's browser; each page below is in a context of its own
    try:
        alice = _login_as(browser, server, "alice", f"/mipflow/run?id={quote(run_id, safe='')}")
        assert "Private: only you and the admins read it." in alice.locator("#sharing").inner_text()
        alice.locator("#share-user input[name=name]").fill("bob")
        alice.locator("#share-user button").click()
        alice.wait_for_selector("#sharing li.share[data-name=bob]")
        alice.screenshot(path=str(ARTIFACTS / "result-shared-with-bob.png"), full_page=True)

        bob = _login_as(browser, server, "bob")
        row = bob.locator("#runs tbody tr").filter(has_text=run_id)
        assert row.count() == 1
        row.locator("a.title").click()
        bob.wait_for_selector("#result table")
        assert bob.locator("#sharing").count() == 0  # a reader, not the owner
        with bob.expect_download() as download:
            bob.get_by_text("Download JSON").click()
        assert json.loads(Path(download.value.path()).read_text(encoding="utf-8"))["result"] == stored["result"]
        bob.screenshot(path=str(ARTIFACTS / "result-read-by-bob.png"), full_page=True)
        assert _what_bob_gets(server, run_id) == sees

        alice.locator("#sharing li.share[data-name=bob] button.revoke").click()
        alice.wait_for_selector("#sharing li.share", state="detached")
        assert store.shares(run_id) == []
        bob.reload()
        assert bob.locator("#result").count() == 0  # the page now answers 404
    finally:
        _close_contexts(browser)
    assert _what_bob_gets(server, run_id) == hidden
    with server.client("admin") as client:
        assert client.get("/mipflow/run.csv", params={"id": run_id}).status_code == 200


def test_the_user_role_triggers_and_reads_dags_but_deletes_none(central):
    """Item 4's safe default at a real api-server with airflow.cfg's auth manager
    (``MipflowSimpleAuthManager``; ``airflow standalone`` would force the plain one): bob (role user)
    reads a DAG and may not delete it (403); an admin may (404 for a DAG that does not exist: the
    delete was authorised and found nothing)."""
    from tests.airflow_server import api_server

    with api_server(central["server"]) as server:
        with server.client("bob", timeout=60) as client:
            assert client.get(f"/api/v2/dags/{DAG_ID}").status_code == 200
            assert client.delete(f"/api/v2/dags/{DAG_ID}").status_code == 403
            assert client.delete("/api/v2/dags/no_such_dag").status_code == 403
            assert client.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False}).status_code == 200
        with server.client("viewer", timeout=60) as client:
            assert client.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False}).status_code == 403
        with server.client("admin", timeout=60) as client:
            assert client.get(f"/api/v2/dags/{DAG_ID}").status_code == 200  # bob deleted nothing
            assert client.delete("/api/v2/dags/no_such_dag").status_code == 404
    assert "Forcing auth manager to SimpleAuthManager" in central["server"].log.read_text(encoding="utf-8")


# -- project members, managed by the admins from the results pages (ADR 0011 addendum) -------------


def test_only_an_admin_manages_project_members_through_the_api_server(central):
    """The members page behind Airflow's login: 401 without it, 403 and no link for the user and viewer
    roles; an admin adds and removes members in the store the CLI uses, and a project share follows."""
    server, store = central["server"], central["store"]
    assert httpx.get(server.base_url + "/mipflow/projects", timeout=10).status_code == 401
    for name in ("bob", "viewer"):
        with server.client(name, timeout=60) as client:  # the first request may build the pages' app
            assert client.get("/mipflow/projects").status_code == 403, name
            assert 'id="project-members"' not in client.get("/mipflow/").text, name
            refused = client.post("/mipflow/projects/add", data={"project": PROJECT, "members": name},
                                  follow_redirects=False)
            assert refused.status_code == 403, name
    assert store.members(PROJECT) == []
    with server.client("admin", timeout=60) as client:
        assert 'id="project-members"' in client.get("/mipflow/").text
        added = client.post("/mipflow/projects/add", data={"project": PROJECT, "members": "bob, carol"},
                            follow_redirects=False)
        assert added.status_code == 303 and added.headers["location"].startswith("/mipflow/projects?")
        assert [m["member"] for m in store.members(PROJECT)] == ["bob", "carol"]
        page = client.get("/mipflow/projects").text
        assert f'data-project="{PROJECT}" data-member="bob"' in page
        cross = client.post("/mipflow/projects/remove", data={"project": PROJECT, "member": "bob"},
                            headers={"Origin": "https://evil.example"})
        assert cross.status_code == 403 and len(store.members(PROJECT)) == 2
        removed = client.post("/mipflow/projects/remove", data={"project": PROJECT, "member": "carol"},
                              follow_redirects=False)
        assert removed.status_code == 303 and [m["member"] for m in store.members(PROJECT)] == ["bob"]
    store.remove_member(PROJECT, "bob")  # the module's other tests start without members


def test_an_admin_adds_and_removes_a_project_member_in_a_browser(central, chromium):
    """The Project members link on the results list, the add form and a Remove button (same-origin posts
    from Airflow's login session); a researcher sees no link."""
    store = central["store"]
    server = central["server"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser = chromium  # the module's browser; each page below is in a context of its own
    try:
        bob = _login_as(browser, server, "bob")
        assert bob.locator("#project-members").count() == 0
        admin = _login_as(browser, server, "admin")
        admin.locator("#project-members").click()
        admin.wait_for_url("**/mipflow/projects", timeout=30_000)
        form = admin.locator("#new-project form")
        form.locator("input[name=project]").fill("dementia-2027")
        form.locator("input[name=members]").fill("bob, carol")
        form.locator("button[type=submit]").click()
        admin.wait_for_selector('li.member[data-project="dementia-2027"][data-member="carol"]')
        assert "added to dementia-2027: bob, carol" in admin.locator("#message").inner_text()
        assert [m["member"] for m in store.members("dementia-2027")] == ["bob", "carol"]
        admin.screenshot(path=str(ARTIFACTS / "project-members.png"), full_page=True)
        admin.locator('li.member[data-project="dementia-2027"][data-member="bob"] button.remove').click()
        admin.wait_for_selector('li.member[data-project="dementia-2027"][data-member="bob"]', state="detached")
        assert [m["member"] for m in store.members("dementia-2027")] == ["carol"]
    finally:
        _close_contexts(browser)
    store.remove_member("dementia-2027", "carol")
