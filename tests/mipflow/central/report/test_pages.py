"""mipflow.central.report.pages: every number shown exactly once per cell with its rounding, downloads
round-trip, pages escape what they show, the audit summary counts."""
from __future__ import annotations

import csv
import io
import math
import re

import pytest

from mipflow.central.report.pages import audit_summary, index_page, provenance_table, result_csv, result_page
from mipflow.central.report.tables import format_value
from tests.mipflow.central.report.helpers import CASES, cells_of


@pytest.mark.parametrize("name", list(CASES))
def test_page_cells_show_exact_values_and_their_rounding(results, name):
    doc = {"run_id": "manual__1", "algorithm": name, "result": results[name], "request": {},
           "contributed": {"a": 1}, "excluded": {}}
    page = result_page(doc, link=lambda r, k: f"run?{k}={r}", back="./")
    cells = cells_of(page.split('<div id="result">', 1)[1])
    assert cells
    for exact, shown in cells:
        value = float(exact)
        assert shown == format_value(int(exact) if re.fullmatch(r"-?\d+", exact) else value)
        if math.isfinite(value) and value != 0:
            assert abs(float(shown) - value) <= 5e-6 * abs(value)


def test_csv_download_round_trips_exact_values(results):
    doc = {"run_id": "r1", "algorithm": "linear_regression", "result": results["linear_regression"],
           "request": {"inputdata": {"data_model": "synth:1", "datasets": ["d0"]}},
           "contributed": {"a": 10}, "excluded": {"b": "refused (min_row_count): too few rows"}}
    rows = list(csv.DictReader(io.StringIO(result_csv(doc))))
    coef = {r["row"]: float(r["value"]) for r in rows if r["column"] == "coefficients"}
    assert coef == dict(zip(doc["result"]["indep_vars"], doc["result"]["coefficients"]))
    assert any(r["table"] == "Nodes" and "too few rows" in r["value"] for r in rows)


def test_an_analysis_stopped_on_refusals_says_so_in_its_provenance():
    from mipflow.central.results import summary_lines

    doc = {"run_id": "r2", "algorithm": "kmeans", "rounds": 4, "result": {"n_iter": 3},
           "request": {"inputdata": {"data_model": "synth:1", "datasets": ["d0"]}},
           "contributed": {"a": 100, "b": 90}, "excluded": {},
           "stopped": {"round": 4, "refusals": {"b": {"control": "differencing", "reason": "..."}}}}
    provenance = dict(provenance_table(doc).rows)
    assert provenance["stopped"].startswith("ended at round 4 on the rounds before it (b refused (differencing))")
    assert any(line.startswith("  stopped early: ended at round 4") for line in summary_lines(doc))
    assert "stopped" not in dict(provenance_table({**doc, "stopped": {}}).rows)


def test_pages_escape_what_they_show():
    doc = {"run_id": "<script>alert(1)</script>", "algorithm": "x", "request": {}, "contributed": {},
           "excluded": {"n<1>": "<b>"}, "result": {"<i>": "<img src=x>"}}
    page = result_page(doc, link=lambda r, k: "run?id=" + r, back="./")
    index = index_page([doc], link=lambda r, k: "run?id=" + r)
    for text in (page, index):
        assert "<script>" not in text and "<img" not in text and "<b>" not in text


def test_audit_summary_counts():
    records = [{"at": "t1", "client": "central", "what": "metadata", "decision": "allowed"},
               {"at": "t2", "client": "central", "algorithm": "anova_oneway", "decision": "refused",
                "control": "min_row_count"},
               {"at": "t3", "client": "", "what": "metadata", "decision": "refused", "control": "authentication"}]
    summary = audit_summary(records)
    assert summary["total"] == 3 and (summary["first"], summary["last"]) == ("t1", "t3")
    assert summary["by_decision"] == {"allowed": 1, "refused": 2}
    assert summary["by_what"] == {"metadata": 2, "step:anova_oneway": 1}
    assert summary["refusals_by_control"] == {"min_row_count": 1, "authentication": 1}
    assert summary["by_client"] == {"central": 2, "(unauthenticated)": 1}


def test_a_result_answered_in_study_mode_says_which_study_and_snapshot():
    from mipflow.central.report.pages import STANDARD_MODE, mode_text
    from mipflow.central.results import summary_lines

    mode = {"a": {"study": "stroke-outcomes", "snapshot": "2026-12-01T09:00:00+00:00"},
            "b": {"study": "stroke-outcomes", "snapshot": "2026-12-01T10:30:00+00:00"}}
    doc = {"run_id": "r3", "algorithm": "linear_regression", "result": {"n_obs": 200}, "request": {},
           "contributed": {"a": 100, "b": 100}, "excluded": {}, "mode": mode}
    said = dict(provenance_table(doc).rows)["answered in"]
    assert said.startswith("answered in study stroke-outcomes on the data of 2026-12-01 (snapshots: a 2026-12-01T09")
    assert f"  {said}" in summary_lines(doc)
    assert "answered in study stroke-outcomes on the data of 2026-12-01" in result_page(doc, link=lambda r, k: r,
                                                                                        back="./")
    # snapshots of other days, or a node that answered outside a study, are said per node
    mixed = mode_text({"a": mode["a"], "b": {**mode["b"], "snapshot": "2026-12-03T08:00:00+00:00"}},
                      {"a": 1, "b": 1, "c": 1})
    assert mixed == ("answered in study mode by node: a: study stroke-outcomes on the data of 2026-12-01T09:00:00"
                     "+00:00; b: study stroke-outcomes on the data of 2026-12-03T08:00:00+00:00; c: standard mode")
    # standard mode is said too (issue 14.1: results say which mode produced them)
    assert mode_text({}) == "" and mode_text({}, {"a": 1}) == STANDARD_MODE
    standard = {**doc, "mode": {}, "contributed": {"a": 12, "b": 15}}
    assert dict(provenance_table(standard).rows)["answered in"] == STANDARD_MODE
    assert not any("answered in" in line for line in summary_lines(standard))  # the task log says study mode only


def test_results_say_explore_mode_and_mixed_modes_per_node():
    """ADR 0032: a result answered in explore mode says so, with the epsilon per step."""
    from mipflow.central.report.pages import mode_text
    from mipflow.central.results import summary_lines

    explore = {"mode": "explore", "project": "p", "mechanism": "laplace", "epsilon": 1.0}
    doc = {"run_id": "r4", "algorithm": "multiple_histograms", "result": {}, "request": {},
           "contributed": {"a": 100, "b": 90}, "excluded": {}, "mode": {"a": explore, "b": explore}}
    said = dict(provenance_table(doc).rows)["answered in"]
    assert said == "answered in explore mode: perturbed answers (keyed noise, epsilon 1 per step)"
    assert f"  {said}" in summary_lines(doc)
    study = {"study": "stroke-outcomes", "snapshot": "2026-12-01T09:00:00+00:00"}
    mixed = mode_text({"a": explore, "b": {**explore, "epsilon": 0.5}, "c": study}, {"a": 1, "b": 1, "c": 1, "d": 1})
    assert mixed == ("answered in study and explore mode by node: a: explore mode: perturbed answers (keyed noise, "
                     "epsilon 1 per step); b: explore mode: perturbed answers (keyed noise, epsilon 0.5 per step); "
                     "c: study stroke-outcomes on the data of 2026-12-01T09:00:00+00:00; d: standard mode")
    assert mode_text({"a": explore}, {"a": 1, "b": 1}) == (
        "answered in explore mode by node: a: explore mode: perturbed answers (keyed noise, epsilon 1 per step); "
        "b: standard mode")


def test_a_refused_run_is_listed_and_its_page_says_why_and_what_to_change():
    from mipflow.central.results import failed_outcome

    doc = {"run_id": "manual__refused", "created_at": "2026-12-01T10:00:00+00:00",
           **failed_outcome("linear_regression", {"inputdata": {"data_model": "stroke:0.1", "datasets": ["a"]}},
                            "linear_regression: 0 node(s) contributed, fewer than min_nodes (2)",
                            excluded={"node_a": "refused (access): researcher 'bob' is not approved for <a>",
                                      "node_b": "unavailable: timed out"}, dag_id="federated_linear_regression")}
    ok = {"run_id": "manual__ok", "algorithm": "anova", "request": {}, "contributed": {"a": 1}, "excluded": {},
          "result": {}}
    index = index_page([doc, ok], link=lambda r, k: "run?id=" + r)
    rows = {row.split('href="run?id=', 1)[1].split('"', 1)[0]: row for row in index.split("<tr")[2:]}
    assert "<td class=\"bad\">refused" in rows["manual__refused"] and "fewer than min_nodes (2)" in rows[
        "manual__refused"]
    assert "<td class=\"\">succeeded" in rows["manual__ok"]
    page = result_page(doc, link=lambda r, k: "run?id=" + r, back="./")
    assert "<title>linear regression (refused): manual__refused</title>" in page
    failure = page.split('<div id="failure">', 1)[1].split("</div>", 1)[0]
    assert "Refused: no result" in failure and "fewer than min_nodes (2)" in failure
    assert "<td>node_a</td><td>access</td>" in failure and "not approved for &lt;a&gt;" in failure
    assert "ask the node&#x27;s admin for a grant" in failure and "<td>node_b</td><td>unavailable</td>" in failure
    provenance = dict(provenance_table(doc).rows)
    assert provenance["status"] == "refused" and provenance["Airflow DAG"] == "federated_linear_regression"
    assert 'id="failure"' not in result_page(ok, link=lambda r, k: "run?id=" + r, back="./")


def test_a_failed_run_without_nodes_shows_no_empty_sections():
    from mipflow.central.results import failed_outcome

    doc = {"run_id": "r", **failed_outcome("anova", {}, "no Airflow connection 'x'")}
    page = result_page(doc, link=lambda r, k: "run?id=" + r, back="./")
    assert "Failed: no result" in page and "<h3>Nodes</h3>" not in page and 'id="result"' not in page
