"""The "New analysis" form: its choices come from the catalogue and the synced metadata; the posted
form becomes the central DAG's conf, with a QueryBuilder filter from rows; the app triggers as the user."""
from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest
from fastapi import Header, HTTPException
from fastapi.testclient import TestClient

from mipflow.algorithms.catalogue import describe
from mipflow.central.report.analysis_form import FormError, build_conf, filter_from_rows, new_analysis_page

VARIABLES = [
    {"code": "age", "label": "Age at admission", "sql_type": "real", "isCategorical": False, "group": "demographics"},
    {"code": "nihss", "label": "NIHSS", "sql_type": "int", "isCategorical": False, "group": "admission"},
    {"code": "sex", "label": "Sex", "sql_type": "text", "isCategorical": True, "group": "demographics",
     "enumerations": [{"code": "M", "label": "Male"}, {"code": "F", "label": "Female"}]},
    {"code": "death", "label": "Death", "sql_type": "text", "isCategorical": True,
     "enumerations": [{"code": "yes", "label": "yes"}, {"code": "no", "label": "no"}]},
]
CHOICES = {"stroke:0.1": {"label": "Stroke", "variables": VARIABLES, "datasets": [
    {"dataset": "hospital_a", "nodes": {"hospital_a": 60}}, {"dataset": "hospital_b", "nodes": {"hospital_b": None}}]}}
CATALOGUE = {a["name"]: a for a in describe()}


def form(**fields):
    return {k: v if isinstance(v, list) else [v] for k, v in fields.items()}


def test_the_form_makes_the_dags_conf_with_a_querybuilder_filter():
    posted = form(data_model="stroke:0.1", project="p1", datasets=["hospital_a", "hospital_b"], y="death",
                  x=["age", "", "sex"], param_positive_class="yes", param_max_iter="",
                  filter_var=["age", "sex", ""], filter_op=["between", "in", "equal"],
                  filter_value=["40, 80", "M,F", ""])
    conf = build_conf(CATALOGUE["logistic_regression"], posted, CHOICES)
    assert conf == {"data_model": "stroke:0.1", "datasets": ["hospital_a", "hospital_b"], "project": "p1",
                    "y": "death", "x": ["age", "sex"], "positive_class": "yes",  # max_iter left to the node
                    "filters": {"condition": "AND", "valid": True, "rules": [
                        {"id": "age", "field": "age", "operator": "between", "type": "double", "input": "number",
                         "value": [40.0, 80.0]},
                        {"id": "sex", "field": "sex", "operator": "in", "type": "string", "input": "text",
                         "value": ["M", "F"]}]}}
    import pandas as pd

    from mipflow.algorithms.filters_pandas import filter_mask
    from mipflow.protocol.datamodel import DataModel

    model = DataModel.from_dict({"code": "stroke", "version": "0.1", "variables": VARIABLES})
    rows = pd.DataFrame({"age": [30.0, 50.0, 70.0, 90.0], "sex": ["M", "F", "M", "F"], "nihss": [1, 2, 3, 4],
                         "death": ["no"] * 4})
    assert filter_mask(rows, conf["filters"], model).tolist() == [False, True, True, False]  # what the nodes run


@pytest.mark.parametrize(("algorithm", "fields", "message"), [
    pytest.param("linear_regression", {"y": "sex", "x": ["age"]}, "'sex' is not a numerical variable",
                 id="wrong-kind"),
    pytest.param("linear_regression", {"x": ["age"]}, "y (Variable (dependent)): required", id="required-y"),
    pytest.param("linear_regression", {"y": "age", "x": ["age"], "datasets": []}, "datasets: choose at least one",
                 id="no-dataset"),
    pytest.param("linear_regression", {"y": "age", "x": ["nihss"], "filter_var": ["nihss"],
                                       "filter_op": ["greater"], "filter_value": ["old"]},
                 "filter row 1: an integer is expected", id="filter-type"),
    pytest.param("linear_regression", {"y": "age", "x": ["nihss"], "filter_var": ["sex"],
                                       "filter_op": ["equal"], "filter_value": ["X"]},
                 "sex takes one of its levels (M, F)", id="filter-level"),
    pytest.param("linear_regression", {"y": "age", "x": ["nihss"], "filter_var": ["age"], "filter_op": ["between"],
                                       "filter_value": ["40"]}, "'between' takes two values", id="between"),
    pytest.param("logistic_regression", {"y": "death", "x": ["age"]}, "Positive class: required", id="param"),
])
def test_the_form_says_what_to_correct(algorithm, fields, message):
    posted = form(**{"data_model": "stroke:0.1", "project": "p1", "datasets": ["hospital_a"], **fields})
    with pytest.raises(FormError, match=re.escape(message)):
        build_conf(CATALOGUE[algorithm], posted, CHOICES)


def test_optional_inputs_stay_optional():
    posted = form(data_model="stroke:0.1", project="p1", datasets="hospital_a", y=["age", "death"],
                  param_event_level="yes")
    conf = build_conf(CATALOGUE["kaplan_meier"], posted, CHOICES)
    assert conf["y"] == ["age", "death"] and "x" not in conf and conf["filters"] is None
    assert filter_from_rows([("age", "is_null", "")], VARIABLES)["rules"][0]["value"] is None


def test_the_page_offers_datasets_with_counts_variables_by_group_and_levels():
    page = new_analysis_page(describe(), CHOICES, algorithm="logistic_regression", data_model="stroke:0.1",
                             project="p1", user="alice", action="/new", sync_action="/new/sync", back="/")
    assert 'value="hospital_a"> hospital_a <span class="muted">(hospital_a: 60 rows)' in page
    assert "hospital_b: fewer than the minimum" in page
    y_select = page.split('<select name="y"', 1)[1].split("</select>", 1)[0]
    assert "Sex (sex; nominal: M, F)" in y_select and "Age at admission" not in y_select  # y is nominal here
    assert '<optgroup label="demographics">' in page.split('<select name="x"', 1)[1].split("</select>", 1)[0]
    assert 'data-levels-from="y"' in page and '"death": ["yes", "no"]' in page
    assert 'name="filter_var"' in page and 'name="filters_json"' in page
    assert "<b id=\"who\">alice</b>" in page


# -- the app ------------------------------------------------------------------------------


class Recorder:
    """Runs that record what the app asks Airflow to start (the real REST path is in the browser test)."""

    def __init__(self) -> None:
        self.triggered: list[tuple[str, str, dict]] = []

    def trigger(self, request, dag_id, conf):
        self.triggered.append((request.headers.get("authorization"), dag_id, conf))
        return f"manual__{len(self.triggered)}"

    def state(self, request, dag_id, run_id):
        return "running"


def _user(authorization: str | None = Header(None)):
    if authorization != "Bearer good":
        raise HTTPException(status_code=401, detail="Not authenticated")
    return "alice"


@pytest.fixture
def app(tmp_path, monkeypatch):
    import json

    from mipflow.central.metadata import VERSION
    from mipflow.central.results import ResultStore
    from mipflow.webui import create_app

    home = tmp_path / "central"
    store = ResultStore(home)
    (home / "federation_metadata.json").write_text(json.dumps({"version": VERSION, "nodes": {
        "hospital_a": {"data_models": {"stroke:0.1": {"label": "Stroke", "variables": VARIABLES}}}},
        "datasets": {"alice\np1": {"nodes": {"hospital_a": {"stroke:0.1": [
            {"dataset": "hospital_a", "row_count": 60}]}}}}}))
    runs = Recorder()
    client = TestClient(create_app(user=_user, result_store=lambda: store, runs=runs, central_home=lambda: home),
                        headers={"Authorization": "Bearer good"})
    return client, runs


def test_the_app_triggers_the_dag_as_the_user_and_refuses_other_sites(app):
    client, runs = app
    assert client.get("/new", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert 'id="new-analysis"' in client.get("/").text
    page = client.get("/new?" + urlencode({"algorithm": "linear_regression", "data_model": "stroke:0.1",
                                           "project": "p1"})).text
    assert "hospital_a: 60" in page
    body = urlencode({"algorithm": "linear_regression", "data_model": "stroke:0.1", "project": "p1",
                      "datasets": "hospital_a", "y": "age", "x": "nihss"})
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    resp = client.post("/new", content=body, headers=headers, follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"].endswith("/submitted?id=manual__1&dag="
                                                                         "federated_linear_regression")
    auth, dag_id, conf = runs.triggered[0]
    assert auth == "Bearer good" and dag_id == "federated_linear_regression" and conf["x"] == ["nihss"]
    waiting = client.get("/submitted?id=manual__1&dag=federated_linear_regression").text
    assert 'id="waiting"' in waiting and 'http-equiv="refresh"' in waiting
    # a post from another site is refused before anything starts
    other = client.post("/new", content=body, headers={**headers, "Origin": "https://evil.example"})
    assert other.status_code == 403 and len(runs.triggered) == 1
    bad = client.post("/new", content=body.replace("y=age", "y=sex"), headers=headers)
    assert bad.status_code == 400 and "Not started: y: &#x27;sex&#x27; is not a numerical" in bad.text
    sync = client.post("/new/sync", content=urlencode({"project": "p1"}), headers=headers, follow_redirects=False)
    assert sync.status_code == 303 and runs.triggered[-1][1:] == ("federation_metadata", {"project": "p1"})
