"""An honest researcher's sessions in study mode and, without a study, in the nodes' default mode
(explore), through the central analysis DAGs (issue 14's evidence).

Three real node processes (``mipflow node serve``) hold the demo hospitals' stroke exports, ingested
as in production, with the **default** disclosure settings (the differencing control on).  Each
node's admin approves the same study protocol for the project (``mipflow study approve``).  A
researcher then triggers the central DAGs as Airflow runs them (``dag.test()`` with the trigger
form's params): two regressions on different variable sets, the same in the subgroups of the study
(age >= 65, women, men), Kaplan-Meier without and with a grouping variable, and, after a node
loaded a new export, the first analysis again.  No run is refused; every result says it was
answered in study mode, on which snapshot; the re-run equals the first run exactly; every result
equals the pooled computation on the snapshot rows to 1e-9 relative.  A request outside the study
(a filter that is not one of its subgroups) fails the run with the node's message, which names what
to change and carries no number derived from the data.
"""
from __future__ import annotations

import contextlib
import html
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from mipflow.central.results import ResultStore
from mipflow.demo.formats import HOSPITALS
from mipflow.demo.synth import generate_export, write_export
from mipflow.node import ops
from mipflow.node.home import NodeHome
from mipflow.protocol.signing import issue_client
from tests.conftest import REPO_ROOT
from tests.mipflow.algorithms.helpers import assert_rel_close
from tests.mipflow.algorithms.test_survival import check_km
from tests.mipflow.node.controls.study_helpers import ELDERLY, MEN, WOMEN, rule, where
from tests.nodes import DAG_TEST_USER, grant_all, pin_each_other, running_nodes

pytestmark = [pytest.mark.airflow, pytest.mark.xdist_group("airflow")]

STROKE = REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json"
PROFILES = REPO_ROOT / "include" / "schemas" / "profiles"
PROJECT = "honest-study"
#: the same researcher's project without a study: the nodes' default mode, explore (ADR 0038)
EXPLORE = "honest-explore"
STUDY = "stroke-outcomes"
VARIABLES = ["age", "sex", "nihss_admission", "mrs_90d", "followup_days", "death_90d"]
PROTOCOL = {"name": STUDY, "data_model": "stroke:0.1", "datasets": list(HOSPITALS), "variables": VARIABLES,
            "population": {"filter": None},
            "subgroups": [{"name": "elderly", "filter": ELDERLY}, {"name": "women", "filter": WOMEN},
                          {"name": "men", "filter": MEN}],
            "algorithms": ["linear_regression", "kaplan_meier"], "survival": {"time": "followup_days", "bin_width": 7.0},
            "note": "ethics approval 2027/12"}
SUBGROUPS = {"elderly": ELDERLY, "women": WOMEN, "men": MEN}


def held_rows(home: NodeHome) -> pd.DataFrame:
    """The rows a node holds now, over the study variables (read by the test, as the admin could)."""
    engine = sa.create_engine(home.db_url)
    try:
        with engine.connect() as conn:
            return pd.read_sql(sa.text(f"SELECT dataset, {', '.join(VARIABLES)} FROM dm_stroke_0_1"), conn)
    finally:
        engine.dispose()


def approve(home: NodeHome, protocol_file) -> dict:
    """``mipflow study approve HOME --project P FILE``, as the node admin runs it."""
    from mipflow.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["study", "approve", str(home.root), str(protocol_file), "--project", PROJECT]) == 0
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def federation(tmp_path_factory, airflow_db):
    root = tmp_path_factory.mktemp("honest")
    protocol_file = root / "protocol.json"
    protocol_file.write_text(json.dumps(PROTOCOL))
    homes, snapshot_rows = [], []
    for i, hospital in enumerate(HOSPITALS):
        home = NodeHome.init(root / hospital, hospital)  # the shipped settings (explore by default, ADR 0038)
        ops.add_data_model(home, STROKE)
        path = write_export(root / f"{hospital}.csv", generate_export(hospital, 500, seed=40 + i))
        ops.ingest(home, [path], profile=PROFILES / f"{hospital}.json")
        grant_all(home.root, DAG_TEST_USER, PROJECT)  # dag.test() runs as user "dag_test"
        grant_all(home.root, DAG_TEST_USER, EXPLORE)  # a project without a study
        approved = approve(home, protocol_file)
        assert (approved["node"], approved["status"], approved["study"]) == (hospital, "approved", STUDY)
        population = held_rows(home).dropna(subset=VARIABLES)
        assert approved["population"] == len(population)
        snapshot_rows.append(population)
        homes.append(home)
    pin_each_other([h.root for h in homes])
    env = {}
    with running_nodes([h.root for h in homes]) as urls:
        for home, url in zip(homes, urls):
            cred = issue_client(home.root, "central")
            env[f"AIRFLOW_CONN_MIPFLOW_NODE_{home.name.upper()}"] = json.dumps(
                {"conn_type": "mipflow_node", "host": url, "login": cred.client_id,
                 "password": cred.secret.hex(), "extra": {"node_name": home.name}})
        env["MIPFLOW_CENTRAL_HOME"] = str(root / "central")
        env["MIPFLOW_NOTIFY_FILE"] = str(root / "notifications.jsonl")
        with pytest.MonkeyPatch.context() as patch:  # the DAGs read their settings from the environment
            for key, value in env.items():
                patch.setenv(key, value)
            yield {"root": root, "homes": homes, "central": root / "central",
                   "snapshot": pd.concat(snapshot_rows, ignore_index=True),
                   "notifications": root / "notifications.jsonl"}


@pytest.fixture(scope="module")
def dags(federation):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags" / "mipflow_central.py"))
    assert not bag.import_errors
    return bag.dags


def form(**kw) -> dict:
    """The trigger form as the researcher fills it in."""
    base = {"data_model": "stroke:0.1", "datasets": list(HOSPITALS), "filters": None,
            "nodes": [f"mipflow_node_{h}" for h in HOSPITALS], "min_nodes": 3, "project": PROJECT}
    return base | kw


def subgroup_rows(rows: pd.DataFrame, name: str | None) -> pd.DataFrame:
    if name is None:
        return rows
    keep = {"elderly": rows["age"] >= 65, "women": rows["sex"] == "F", "men": rows["sex"] == "M"}[name]
    return rows[keep].reset_index(drop=True)


def answered(dags, federation, dag_id: str, **params) -> dict:
    """Trigger ``dag_id`` with the form ``params``; the stored result, checked answered in study mode by all."""
    run = dags[dag_id].test(run_conf=form(**params))
    assert "success" in str(run.state), f"{dag_id} {params}: {run.state}"
    doc = ResultStore(federation["central"]).document(run.run_id)
    assert doc is not None and set(doc["contributed"]) == set(HOSPITALS) and not doc["excluded"]
    assert set(doc["mode"]) == set(HOSPITALS) and {m["study"] for m in doc["mode"].values()} == {STUDY}
    return doc


def check_ols(result: dict, rows: pd.DataFrame, formula: str) -> None:
    import statsmodels.formula.api as smf

    data = rows.assign(sex=pd.Categorical(rows["sex"], ["F", "M"]))
    fit = smf.ols(formula, data).fit()
    assert result["n_obs"] == int(fit.nobs) == len(rows)
    assert_rel_close(result["coefficients"], fit.params.to_numpy(), rel=1e-9, what="coefficients")
    assert_rel_close(result["std_err"], fit.bse.to_numpy(), rel=1e-9, what="std_err")
    assert_rel_close(result["r_squared"], fit.rsquared, rel=1e-9, what="r_squared")


FIRST = {"y": "nihss_admission", "x": ["age"]}
SECOND = {"y": "mrs_90d", "x": ["age", "sex", "nihss_admission"]}
FORMULAS = {"nihss_admission": "nihss_admission ~ age", "mrs_90d": "mrs_90d ~ sex + age + nihss_admission"}


def test_an_honest_session_through_the_central_dags_is_answered_exactly(dags, federation) -> None:
    from mipflow.central.report.pages import mode_text, result_page

    snapshot = federation["snapshot"]
    # 1. two regressions on different variable sets: the same study population
    first = answered(dags, federation, "federated_linear_regression", **FIRST)
    snapshots = {node: m["snapshot"] for node, m in first["mode"].items()}
    assert sum(first["contributed"].values()) == len(snapshot)
    check_ols(first["result"], snapshot, FORMULAS["nihss_admission"])
    second = answered(dags, federation, "federated_linear_regression", **SECOND)
    assert second["mode"] == first["mode"] and second["contributed"] == first["contributed"]
    check_ols(second["result"], snapshot, FORMULAS["mrs_90d"])
    # the researcher reads on the result page where and on which data it was answered
    page = result_page(second, link=lambda run_id, kind: f"/{run_id}.{kind}", back="/")
    said = mode_text(second["mode"], second["contributed"])
    assert said.startswith(f"answered in study {STUDY} on the data of {min(snapshots.values())[:10]}")
    assert said in page
    # 2. the same in the study's subgroups: age >= 65, women, men
    for name, subgroup in SUBGROUPS.items():
        for params in (FIRST, SECOND):
            if name != "elderly" and "sex" in params["x"]:
                params = {**params, "x": [v for v in params["x"] if v != "sex"]}
            doc = answered(dags, federation, "federated_linear_regression", **params, filters=subgroup)
            assert doc["mode"] == first["mode"]
            formula = FORMULAS[params["y"]] if "sex" in params["x"] else FORMULAS[params["y"]].replace("sex + ", "")
            check_ols(doc["result"], subgroup_rows(snapshot, name), formula)
    # 3. Kaplan-Meier without and with a grouping variable, on the population and a subgroup
    for x, name in ((None, None), ("sex", None), (None, "elderly"), ("sex", "elderly")):
        doc = answered(dags, federation, "federated_kaplan_meier", y=["followup_days", "death_90d"], x=x,
                       filters=SUBGROUPS.get(name), event_level="yes", bin_width=7.0)
        assert doc["mode"] == first["mode"]
        check_km(doc["result"], subgroup_rows(snapshot, name), grouped=x is not None)
    # 4. a node loads a new export (more rows): the first analysis again gives the same answer, exactly
    hospital_b = federation["homes"][1]
    before = len(held_rows(hospital_b))
    path = write_export(federation["root"] / "hospital_b-2.csv",
                        generate_export("hospital_b", 80, seed=99, start_mrn=5000))
    ops.ingest(hospital_b, [path], profile=PROFILES / "hospital_b.json")
    assert len(held_rows(hospital_b)) > before
    again = answered(dags, federation, "federated_linear_regression", **FIRST)
    assert again["mode"] == first["mode"] and again["contributed"] == first["contributed"]
    assert again["result"] == first["result"]


def numbers(text: str) -> set[float]:
    return {float(n) for n in re.findall(r"\d+(?:\.\d+)?", text)}


def test_a_request_outside_the_study_fails_the_run_naming_what_to_change(dags, federation) -> None:
    outside = where(rule("age", "greater_or_equal", 70))  # not one of the study's subgroups
    run = dags["federated_linear_regression"].test(run_conf=form(**FIRST, filters=outside))
    assert "failed" in str(run.state)
    stored = ResultStore(federation["central"]).document(run.run_id)  # listed as refused, no result
    assert (stored["status"], stored["result"]) == ("refused", {})
    assert {n["control"] for n in stored["nodes"].values()} == {"study"} and set(stored["nodes"]) == set(HOSPITALS)
    records = [json.loads(line) for line in federation["notifications"].read_text().splitlines()]
    (record,) = [r for r in records if r["run_id"] == run.run_id]
    assert record["task_id"] == "run_analysis" and record["exception"] == "AirflowFailException"
    message = record["message"]
    # the node's refusal, naming what to change: the study's subgroups and their filters
    assert "study" in message and STUDY in message
    assert "the filter is not one of the study's subgroups" in message
    assert ('elderly: age greater_or_equal 65; women: sex equal "F"; men: sex equal "M"' in message), message
    # the nodes refused alike: named together, the refusal said once (the record keeps 500 characters)
    assert f"{', '.join(HOSPITALS)}: refused (study)" in message and message.count("refused (study)") == 1
    # no data-derived number: every number is the request's, the protocol's or a count of nodes
    public = numbers(json.dumps(PROTOCOL)) | numbers(json.dumps(form(**FIRST, filters=outside))) | {0.0}
    assert numbers(message) <= public, (numbers(message) - public, message)
    stored_text = json.dumps(stored["nodes"]) + stored["error"]
    assert numbers(stored_text) <= public, (numbers(stored_text) - public, stored_text)
    held = {float(len(held_rows(h))) for h in federation["homes"]}
    held |= {float(len(subgroup_rows(federation["snapshot"], n))) for n in (None, *SUBGROUPS)}
    assert not (numbers(message) & held - public)
    # every node refused with control "study", before reading a row
    from mipflow.node.controls.audit import read_records

    for home in federation["homes"]:
        last = [r for r in read_records(home.root / "audit.log") if r.get("project") == PROJECT][-1]
        assert last["decision"] == "refused" and last["control"] == "study"



def test_kaplan_meier_in_the_study_keeps_the_weekly_time_points_of_the_pooled_curve(dags, federation) -> None:
    """Issue 14 item 7: on ~430 patients per node the study's per-node partitions keep a curve of one or
    two time points; masked among the three pinned nodes, the bins are derived from the pooled counts
    of the study's family (ADR 0052), and the curve equals the pooled computation on them."""
    doc = answered(dags, federation, "federated_kaplan_meier", y=["followup_days", "death_90d"], x="sex",
                   event_level="yes", bin_width=7.0)
    snapshot = federation["snapshot"]
    assert doc["result"]["binning"]["partition"] == "pooled"
    check_km(doc["result"], snapshot, grouped=True)
    for curve in doc["result"]["curves"]:
        rows = snapshot[(snapshot["sex"] == curve["group"]) & (snapshot["death_90d"] == "yes")]
        weeks_with_deaths = np.unique(np.ceil(rows["followup_days"].to_numpy(dtype=float) / 7.0))
        # at least half the weeks in which the group's pooled rows have a death are a time point of its curve
        assert 2 * len(curve["timeline"]) >= len(weeks_with_deaths), (len(curve["timeline"]), len(weeks_with_deaths))
        # and the curve falls at several of them (per-node partitions left one or two steps)
        assert drop_points(curve) >= 3, drop_points(curve)


def drop_points(curve: dict) -> int:
    """How many of a curve's time points its survival falls at (death bins; the others are censorings)."""
    survival = np.asarray(curve["survival"], dtype=float)
    return int(np.sum(np.diff(np.concatenate([[1.0], survival])) < 0))


def test_kaplan_meier_in_the_study_falls_at_half_the_weeks_holding_deaths(dags, federation) -> None:
    """Issue 14 item 7: on the family partition (ADR 0052) the population's curve by sex fell at 4 of the
    12-13 weeks holding deaths, the thinnest family cell (young women's deaths) merging the first weeks
    for every cohort; the population's releases are on its refinement (ADR 0056) and fall at 9 of them."""
    doc = answered(dags, federation, "federated_kaplan_meier", y=["followup_days", "death_90d"], x="sex",
                   event_level="yes", bin_width=7.0)
    snapshot = federation["snapshot"]
    for curve in doc["result"]["curves"]:
        rows = snapshot[(snapshot["sex"] == curve["group"]) & (snapshot["death_90d"] == "yes")]
        weeks_with_deaths = np.unique(np.ceil(rows["followup_days"].to_numpy(dtype=float) / 7.0))
        assert 2 * drop_points(curve) >= len(weeks_with_deaths), (drop_points(curve), len(weeks_with_deaths))


def explored(dags, federation, dag_id: str, **params) -> dict:
    """Trigger ``dag_id`` in the project without a study; the stored result, answered by every node in
    explore mode because it is their default."""
    run = dags[dag_id].test(run_conf=form(**params, project=EXPLORE))
    doc = ResultStore(federation["central"]).document(run.run_id)
    assert "success" in str(run.state), f"{dag_id} {params}: {run.state} {doc and doc.get('error')}"
    assert doc is not None and set(doc["contributed"]) == set(HOSPITALS) and not doc["excluded"]
    assert {m["mode"] for m in doc["mode"].values()} == {"explore"}
    assert {m["by"] for m in doc["mode"].values()} == {"node default"}
    return doc


def test_an_honest_session_without_a_study_is_answered_in_the_default_mode(dags, federation) -> None:
    """No study, no admin action: the first analyses, other variable sets, subgroups (age >= 65, by
    sex), a histogram, Kaplan-Meier with and without a group, and a re-run after a new export are all
    answered, perturbed and labelled; nothing is refused."""
    from mipflow.central.report.pages import mode_text, result_page

    held = pd.concat([held_rows(h) for h in federation["homes"]], ignore_index=True)
    # descriptive statistics of two variable sets
    for y in (["age", "nihss_admission"], ["age", "mrs_90d", "sex"]):
        doc = explored(dags, federation, "federated_descriptive_stats", y=y)
        ages = [item for item in doc["result"]["variable_based"] if item["variable"] == "age"]
        assert {item["dataset"] for item in ages} == {*HOSPITALS, "all datasets"}
        # over all datasets near the exact mean (the noise's sd there is about 2 years on ~600 rows)
        pooled = next(item for item in ages if item["dataset"] == "all datasets")
        assert abs(pooled["data"]["mean"] - held["age"].mean()) < 10, pooled
    page = result_page(doc, link=lambda run_id, kind: f"/{run_id}.{kind}", back="/")
    said = mode_text(doc["mode"], doc["contributed"])
    assert "explore mode" in said and "default mode for a project without a study" in said
    assert said in html.unescape(page)
    # regressions on two variable sets, then in subgroups
    for params in (FIRST, SECOND):
        doc = explored(dags, federation, "federated_linear_regression", **params)
        assert len(doc["result"]["coefficients"]) == 1 + len(params["x"])
    for subgroup in SUBGROUPS.values():
        explored(dags, federation, "federated_linear_regression", **FIRST, filters=subgroup)
    explored(dags, federation, "federated_multiple_histograms", y="nihss_admission", x=["sex"], bins=7)
    # Kaplan-Meier without and with a group, on everyone and the elderly: a weekly curve
    for x, filters in ((None, None), ("sex", None), (None, SUBGROUPS["elderly"])):
        doc = explored(dags, federation, "federated_kaplan_meier", y=["followup_days", "death_90d"], x=x,
                       filters=filters, event_level="yes", bin_width=7.0, max_time=91.0)
        assert all(len(curve["timeline"]) >= 10 for curve in doc["result"]["curves"])
    # a node loads a new export: the first regression again is answered, with fresh noise
    first = explored(dags, federation, "federated_linear_regression", **FIRST)
    hospital_c = federation["homes"][2]
    path = write_export(federation["root"] / "hospital_c-2.csv",
                        generate_export("hospital_c", 60, seed=123, start_mrn=7000))
    ops.ingest(hospital_c, [path], profile=PROFILES / "hospital_c.json")
    again = explored(dags, federation, "federated_linear_regression", **FIRST)
    assert again["result"]["coefficients"] != first["result"]["coefficients"]
