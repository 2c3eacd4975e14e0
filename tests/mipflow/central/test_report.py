"""Result and node pages (mipflow.central.report, mipflow.webui): every stored number is shown exactly once
per table cell, plots fit the result's shape, downloads round-trip, pages hold no row-level data."""
from __future__ import annotations

import csv
import io
import json
import math
import re
from html.parser import HTMLParser

import pytest
import sqlalchemy as sa
from fastapi import Header, HTTPException
from fastapi.testclient import TestClient

from mipflow.central import report
from mipflow.algorithms import get_algorithm, run_in_process
from mipflow.central.results import ResultStore
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request

CASES = {
    "linear_regression": request(x=["x1", "age", "grp"], y=["y"]),
    "logistic_regression": request(x=["x1", "sex"], y=["outcome"], positive_class="yes"),
    "pearson_correlation": request(y=["y", "x1", "age"], alpha=0.95),
    "anova_oneway": request(x=["grp"], y=["y"]),
    "multiple_histograms": request(x=["grp"], y=["score"], bins=10),
    "descriptive_stats": request(x=["grp"], y=["y", "x1"]),
    "ttest_onesample": request(y=["y"], mu=3.0),
}


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    frames = [make_data(seed, 250) for seed in (11, 12, 13)]
    return {name: run_in_process(get_algorithm(name), frames, req, MODEL) for name, req in CASES.items()}


def numeric_leaves(value, path=()):
    """Every number in a result, with its path (lists of records included)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, (int, float)):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from numeric_leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from numeric_leaves(v, (*path, i))


class Cells(HTMLParser):
    """Collects (data-value, shown text) of numeric cells and the text of every <svg> comment."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[str, str]] = []
        self._value: str | None = None
        self._text = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td" and "data-value" in attrs:
            self._value, self._text = attrs["data-value"], ""

    def handle_data(self, data):
        if self._value is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "td" and self._value is not None:
            self.cells.append((self._value, self._text))
            self._value = None


def cells_of(html_text: str) -> list[tuple[str, str]]:
    parser = Cells()
    parser.feed(html_text)
    return parser.cells


@pytest.mark.parametrize("name", list(CASES))
def test_every_number_of_a_result_is_in_its_tables(results, name):
    result = results[name]
    table_values = [v for t in report.result_tables(result) for row in t.rows for v in row
                    if isinstance(v, (int, float)) and not isinstance(v, bool)]
    leaves = list(numeric_leaves(result))
    assert leaves
    for path, value in leaves:
        assert any(v == value or (math.isnan(value) and math.isnan(v)) for v in table_values), (path, value)


@pytest.mark.parametrize("name", list(CASES))
def test_page_cells_show_exact_values_and_their_rounding(results, name):
    doc = {"run_id": "manual__1", "algorithm": name, "result": results[name], "request": {},
           "contributed": {"a": 1}, "excluded": {}}
    page = report.result_page(doc, link=lambda r, k: f"run?{k}={r}", back="./")
    cells = cells_of(page.split('<div id="result">', 1)[1])
    assert cells
    for exact, shown in cells:
        value = float(exact)
        assert shown == report.format_value(int(exact) if re.fullmatch(r"-?\d+", exact) else value)
        if math.isfinite(value) and value != 0:
            assert abs(float(shown) - value) <= 5e-6 * abs(value)


def test_regression_table_is_labelled_by_term(results):
    result = results["linear_regression"]
    (table,) = [t for t in report.result_tables(result) if t.columns[0] == "indep_vars"]
    assert [r[0] for r in table.rows] == result["indep_vars"]
    col = table.columns.index("coefficients")
    assert [r[col] for r in table.rows] == result["coefficients"]


def test_correlation_matrix_table_and_tukey_records(results):
    tables = {t.title: t for t in report.result_tables(results["pearson_correlation"])}
    corr = tables["Correlation coefficients"]
    assert corr.columns == ["variable", "y", "x1", "age"]
    assert corr.rows[1][2] == results["pearson_correlation"]["correlations"]["x1"][1]
    tukey = {t.title: t for t in report.result_tables(results["anova_oneway"])}["Tukey HSD (pairwise comparisons)"]
    assert len(tukey.rows) == len(results["anova_oneway"]["tuckey_test"]) == 3
    assert tukey.columns[:2] == ["groupA", "groupB"]
    histograms = [t for t in report.result_tables(results["multiple_histograms"]) if t.title.startswith("Histograms")]
    assert len(histograms) == len(results["multiple_histograms"]["histogram"])
    first = results["multiple_histograms"]["histogram"][0]
    assert [r[0] for r in histograms[0].rows] == first["bins"][:-1]
    assert [r[2] for r in histograms[0].rows] == first["counts"]


@pytest.mark.parametrize("name,expected", [
    pytest.param("linear_regression", "coefficients", id="regression-coefficients"),
    pytest.param("logistic_regression", "coefficients", id="logistic-coefficients"),
    pytest.param("pearson_correlation", "Pearson correlation", id="heatmap"),
    pytest.param("multiple_histograms", "score | grp = a", id="histograms"),
])
def test_plots_fit_the_result_shape(results, name, expected):
    plots = report.result_plots(results[name])
    assert plots and all(p.startswith("<svg") and p.rstrip().endswith("</svg>") for p in plots)
    assert any(expected in p for p in plots)  # matplotlib keeps each text as an SVG comment
    if name == "multiple_histograms":
        assert len(plots) == len(results[name]["histogram"])
    if name.endswith("regression"):
        # one marker per term: the errorbar line has len(indep_vars) vertices
        assert all(term in plots[0] for term in results[name]["indep_vars"])


def test_no_plot_for_results_without_a_plottable_shape(results):
    assert report.result_plots(results["ttest_onesample"]) == []
    assert report.result_plots(results["descriptive_stats"]) == []


def test_kaplan_meier_and_scree_plots_from_their_fields():
    km = {"survival_curves": [{"group": "tpa", "time": [2, 5, 9], "survival": [0.9, 0.7, 0.5],
                               "ci_lower": [0.8, 0.55, 0.3], "ci_upper": [0.97, 0.82, 0.68]},
                              {"group": "none", "time": [3, 4], "survival": [0.8, 0.4]}]}
    (svg,) = report.result_plots(km)
    assert "Kaplan-Meier" in svg and "tpa" in svg and "none" in svg
    scree = report.result_plots({"n_obs": 40, "eigen_vals": [2.5, 1.0, 0.5], "eigen_vecs": [[1, 0], [0, 1]]})
    assert len(scree) == 1 and "Scree" in scree[0]
    tables = {t.title: t for t in report.result_tables({"eigen_vecs": [[1.0, 2.0], [3.0]]})}
    assert tables["Eigenvectors"].rows == [[0, 1.0, 2.0], [1, 3.0, None]]


def test_generic_shapes_unknown_to_the_report():
    result = {"sum_sq": {"a": 1.5, "Residuals": 2.5}, "df": {"a": 1, "Residuals": 10},
              "nested": {"x": {"n": 3}, "y": {"n": 4}}, "odd": [1, {"a": 2}]}
    tables = {t.title: t for t in report.result_tables(result)}
    assert tables["sum sq, df"].rows == [["a", 1.5, 1], ["Residuals", 2.5, 10]]
    assert tables["nested"].rows == [["x", 3], ["y", 4]]
    assert json.loads(tables["odd"].rows[0][0]) == [1, {"a": 2}]


def test_csv_download_round_trips_exact_values(results):
    doc = {"run_id": "r1", "algorithm": "linear_regression", "result": results["linear_regression"],
           "request": {"inputdata": {"data_model": "synth:1", "datasets": ["d0"]}},
           "contributed": {"a": 10}, "excluded": {"b": "refused (min_row_count): too few rows"}}
    rows = list(csv.DictReader(io.StringIO(report.result_csv(doc))))
    coef = {r["row"]: float(r["value"]) for r in rows if r["column"] == "coefficients"}
    assert coef == dict(zip(doc["result"]["indep_vars"], doc["result"]["coefficients"]))
    assert any(r["table"] == "Nodes" and "too few rows" in r["value"] for r in rows)


def test_an_analysis_stopped_on_refusals_says_so_in_its_provenance():
    from mipflow.central.results import summary_lines

    doc = {"run_id": "r2", "algorithm": "kmeans", "rounds": 4, "result": {"n_iter": 3},
           "request": {"inputdata": {"data_model": "synth:1", "datasets": ["d0"]}},
           "contributed": {"a": 100, "b": 90}, "excluded": {},
           "stopped": {"round": 4, "refusals": {"b": {"control": "differencing", "reason": "..."}}}}
    provenance = dict(report.provenance_table(doc).rows)
    assert provenance["stopped"].startswith("ended at round 4 on the rounds before it (b refused (differencing))")
    assert any(line.startswith("  stopped early: ended at round 4") for line in summary_lines(doc))
    assert "stopped" not in dict(report.provenance_table({**doc, "stopped": {}}).rows)


def test_pages_escape_what_they_show():
    doc = {"run_id": "<script>alert(1)</script>", "algorithm": "x", "request": {}, "contributed": {},
           "excluded": {"n<1>": "<b>"}, "result": {"<i>": "<img src=x>"}}
    page = report.result_page(doc, link=lambda r, k: "run?id=" + r, back="./")
    index = report.index_page([doc], link=lambda r, k: "run?id=" + r)
    for text in (page, index):
        assert "<script>" not in text and "<img" not in text and "<b>" not in text


def test_audit_summary_counts():
    records = [{"at": "t1", "client": "central", "what": "metadata", "decision": "allowed"},
               {"at": "t2", "client": "central", "algorithm": "anova_oneway", "decision": "refused",
                "control": "min_row_count"},
               {"at": "t3", "client": "", "what": "metadata", "decision": "refused", "control": "authentication"}]
    summary = report.audit_summary(records)
    assert summary["total"] == 3 and (summary["first"], summary["last"]) == ("t1", "t3")
    assert summary["by_decision"] == {"allowed": 1, "refused": 2}
    assert summary["by_what"] == {"metadata": 2, "step:anova_oneway": 1}
    assert summary["refusals_by_control"] == {"min_row_count": 1, "authentication": 1}
    assert summary["by_client"] == {"central": 2, "(unauthenticated)": 1}


# -- the app, with a stand-in for Airflow's authentication ---------------------------

def fake_user(authorization: str | None = Header(None)) -> str:
    if authorization != "Bearer good":
        raise HTTPException(status_code=401, detail="Not authenticated")
    return "analyst"


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
    assert index.text.count("<tr>") == 3 and "node_c: refused (min_row_count): 4 rows" in index.text
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


def test_app_hides_results_the_user_may_not_read(stored):
    client = client_for(stored, can_read=lambda user, algorithm: algorithm != "anova_oneway")
    auth = {"Authorization": "Bearer good"}
    assert "anova_oneway" not in client.get("/", headers=auth).text
    hidden = "manual__2026-01-02T00:00:00+00:00"
    assert client.get("/run.json", params={"id": hidden}, headers=auth).status_code == 404


# -- node page -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def node_home(tmp_path_factory):
    from mipflow.node import ops
    from mipflow.node.home import NodeHome
    from mipflow.demo.synth import generate_consent, generate_export, write_export
    from tests.conftest import REPO_ROOT

    root = tmp_path_factory.mktemp("node")
    home = NodeHome.init(root / "hospital_a", "hospital_a")
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
    from mipflow.node.ops import open_store
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
