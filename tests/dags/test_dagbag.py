"""Every DAG imports without errors and parses quickly (no top-level I/O or heavy imports)."""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from mipflow.algorithms import get_algorithm
from mipflow.algorithms.catalogue import describe
from mipflow.protocol.request import AnalysisRequest
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.airflow

EXPECTED_NODE_DAGS = {"node_capture", "node_depersonalise", "node_validate", "node_load"}
EXPECTED_IMAGING_DAGS = {"imaging_capture", "imaging_deidentify"}
#: One analysis DAG per algorithm of the catalogue (the algorithm classes' declarations).
CATALOGUE = describe()
EXPECTED_CENTRAL_DAGS = {f"federated_{entry['name']}" for entry in CATALOGUE} | {"federation_metadata"}
#: Form fields of every analysis DAG besides the algorithm's inputs and parameters.
RUN_FIELDS = {"data_model", "datasets", "filters", "nodes", "project", "min_nodes", "secure_aggregation", "standing"}
#: What a DAG file may import at module level beyond Airflow: the central DAGs build their forms from the
#: catalogue, which costs mipflow's algorithm declarations and numpy, never pandas, scipy or statsmodels
#: (docs/adr/0022-algorithm-catalogue.md).
CATALOGUE_IMPORTS = {"mipflow_central.py": {"mipflow", "numpy"}}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert EXPECTED_NODE_DAGS | EXPECTED_CENTRAL_DAGS | EXPECTED_IMAGING_DAGS <= set(dagbag.dag_ids)


def test_analysis_dags_have_trigger_forms(dagbag):
    for dag_id in EXPECTED_CENTRAL_DAGS - {"federation_metadata"}:
        dag = dagbag.dags[dag_id]
        assert dag.timetable.__class__.__name__ == "NullTimetable", dag_id
        for name in ("data_model", "datasets", "y", "filters", "nodes", "min_nodes"):
            assert name in dag.params, (dag_id, name)


def test_an_analysis_run_is_one_task_that_makes_its_request_from_the_form(dagbag):
    """ADR 0047: one task instance per analysis run (each costs about a second to start in Airflow 3):
    the operator makes the request from the run's Params, stores the result and registers it as standing."""
    from mipflow_airflow.operators.federated import FederatedAnalysisOperator

    for dag_id in EXPECTED_CENTRAL_DAGS - {"federation_metadata"}:
        (task,) = dagbag.dags[dag_id].tasks
        assert isinstance(task, FederatedAnalysisOperator) and task.task_id == "run_analysis", dag_id
        assert task.algorithm == dag_id.removeprefix("federated_") and task.request is None, dag_id
        assert (task.standing, task.project) == ("{{ params.standing }}", "{{ params.project }}"), dag_id
        assert task.do_xcom_push is False, dag_id


def test_node_chain_is_linked_by_assets(dagbag):
    capture = dagbag.dags["node_capture"]
    outlets = {o.name for t in capture.tasks for o in t.outlets}
    assert "mipflow_node_captured" in outlets
    for dag_id in ("node_depersonalise", "node_validate", "node_load"):
        dag = dagbag.dags[dag_id]
        # on the Asset, or the daily catch-up run
        assert dag.timetable.__class__.__name__ == "AssetOrTimeSchedule", dag_id
        assert dag.timetable.asset_condition is not None, dag_id


def test_standing_analyses_are_scheduled_by_an_asset_watcher_of_the_nodes_data_versions(dagbag):
    from airflow.triggers.base import BaseEventTrigger

    dag = dagbag.dags["standing_analyses"]
    (asset,) = dag.timetable.asset_condition.objects
    assert asset.name == "mipflow_node_data_versions"
    (watcher,) = asset.watchers
    assert isinstance(watcher.trigger, BaseEventTrigger)
    assert watcher.trigger.serialize()[0] == "mipflow_airflow.triggers.data_version.NodeDataVersionTrigger"


@pytest.mark.parametrize("dag_file", sorted(p.name for p in (REPO_ROOT / "dags").glob("*.py")))
def test_dag_file_parses_fast_without_heavy_imports(dag_file):
    """Parse each file in a fresh interpreter after Airflow's SDK is warm: no pandas/numpy/GX/pydicom/
    statsmodels/mipflow pulled in at module level, except what the central DAGs' forms need of the
    algorithm catalogue (never pandas, scipy or statsmodels). The parse's CPU time is printed, not
    asserted: speed is for bench/, and a time bound in a unit test fails on a loaded machine."""
    code = (
        "import sys, time, runpy\n"
        f"sys.path.insert(0, {str(REPO_ROOT / 'plugins')!r})\n"
        "import airflow.sdk\n"
        "from airflow.sdk import DAG, Asset, Param, task\n"
        "before = set(sys.modules)\n"
        "t = time.process_time()\n"
        f"runpy.run_path({str(REPO_ROOT / 'dags' / dag_file)!r})\n"
        "print(time.process_time() - t)\n"
        "heavy = {'pandas', 'numpy', 'great_expectations', 'pydicom', 'statsmodels', 'scipy', 'mipflow'}"
        f" - {CATALOGUE_IMPORTS.get(dag_file, set())!r}\n"
        "print(','.join(sorted(m for m in heavy if m in set(sys.modules) - before)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO_ROOT, timeout=120)
    seconds, heavy = out.stdout.strip().splitlines()[-2:] if out.stdout.strip().count("\n") else (out.stdout.strip(), "")
    print(f"{dag_file}: parsed in {float(seconds):.3f} s of CPU")
    assert heavy == "", f"{dag_file} imports {heavy} at module level"


def _form_field(param) -> dict:
    """A form field as the catalogue writes it: the Param's schema, description and default (if any)."""
    return (dict(param.schema) | ({"description": param.description} if param.description else {})
            | ({"default": param.value} if param.has_value or param.value is None else {}))


@pytest.mark.parametrize("entry", CATALOGUE, ids=[entry["name"] for entry in CATALOGUE])
def test_analysis_dag_forms_equal_the_catalogue(dagbag, entry):
    """Every field of an analysis DAG's form, algorithm inputs and parameters, is the catalogue's
    (defaults, bounds, enumerations, titles, descriptions), and there is no other."""
    dag = dagbag.dags[f"federated_{entry['name']}"]
    inputs = {which: item for which, item in entry["inputs"].items() if item is not None}
    transformers = entry["preprocessing"]  # the longitudinal transformer of the compatible ones (ADR 0034)
    assert set(dag.params) == RUN_FIELDS | set(inputs) | set(entry["parameters"]) | set(transformers)
    for name, item in (inputs | entry["parameters"] | transformers).items():
        assert _form_field(dag.params.get_param(name)) == item["form"], name
    assert dag.description.startswith(f"Federated {entry['label']}:")


def test_optional_parameters_may_be_left_empty_and_required_ones_not(dagbag):
    """An emptied optional field (null) passes the form; a required parameter has no default."""
    for entry in CATALOGUE:
        dag = dagbag.dags[f"federated_{entry['name']}"]
        for name, item in entry["parameters"].items():
            param = dag.params.get_param(name)
            if item["optional"]:
                assert copy.deepcopy(param).resolve(None) is None, (entry["name"], name)  # resolve keeps the value
            if item["required"]:
                assert not param.has_value, (entry["name"], name)


def _form_requires(param) -> bool:
    """Whether Airflow's trigger form (3.x) marks a field required: it has a type and null is not one of
    them.  An emptied field is sent as null, so a required field left empty blocks the Trigger button."""
    kind = param.schema.get("type")
    return bool(kind) and (not isinstance(kind, list) or "null" not in kind)


def test_the_trigger_form_requires_only_what_the_algorithm_requires(dagbag):
    """Optional inputs (Kaplan-Meier's group, descriptive statistics' x), optional parameters (CMH's
    levels) and the run's min_nodes and filters may be left empty in the form; a required field may not."""
    for entry in CATALOGUE:
        dag = dagbag.dags[f"federated_{entry['name']}"]
        for which, item in entry["inputs"].items():
            if item is not None:
                assert _form_requires(dag.params.get_param(which)) == item["required"], (entry["name"], which)
        for name, item in entry["parameters"].items():
            if item["optional"] or item["required"]:
                assert _form_requires(dag.params.get_param(name)) == item["required"], (entry["name"], name)
        for name in ("min_nodes", "filters"):
            assert not _form_requires(dag.params.get_param(name)), (entry["name"], name)
        for name in ("data_model", "datasets", "nodes", "project"):
            assert _form_requires(dag.params.get_param(name)), (entry["name"], name)


@pytest.mark.parametrize(("dag_id", "fields"), [
    pytest.param("federated_kaplan_meier", {"y": ["followup_days", "death_90d"], "event_level": "yes"},
                 id="kaplan-meier-without-group"),
    pytest.param("federated_kaplan_meier", {"y": ["followup_days", "death_90d"], "event_level": "yes", "x": None},
                 id="kaplan-meier-group-emptied"),
    pytest.param("federated_cmh_test", {"y": "death_90d", "x": ["thrombolysis", "sex"]}, id="cmh-without-levels"),
    pytest.param("federated_cmh_test", {"y": "death_90d", "x": ["thrombolysis", "sex"], "exposure_level": None,
                                        "outcome_level": None}, id="cmh-levels-emptied"),
    pytest.param("federated_descriptive_stats", {"y": ["age"], "x": None}, id="descriptive-stats-x-emptied"),
    pytest.param("federated_linear_regression", {"y": "mrs_90d", "x": ["age"], "min_nodes": None},
                 id="min-nodes-emptied"),
])
def test_a_run_without_the_optional_fields_passes_the_forms_validation(dagbag, dag_id, fields):
    """What Airflow checks before it creates a run: the DAG's params with the run's conf."""
    params = copy.deepcopy(dagbag.dags[dag_id].params)
    params.update({"datasets": ["hospital_a"], "project": "p", "nodes": ["mipflow_node_a"], **fields})
    resolved = params.validate()
    assert all(resolved[name] == value for name, value in fields.items())
    assert resolved["min_nodes"] is None  # every node selected must contribute unless the form says otherwise


def test_cli_catalogue_equals_the_forms_and_kmeans_runs_with_the_forms_defaults(dagbag):
    """`mipflow algorithms list --json` and every form agree on every default and bound, and the
    defaults a request without parameters gets (CLI, API) are the form's: kmeans 100 / 0.0001."""
    out = subprocess.run([sys.executable, "-m", "mipflow.cli", "algorithms", "list", "--json"],
                         capture_output=True, text=True, check=True, timeout=120)
    listed = {entry["name"]: entry for entry in json.loads(out.stdout)}
    assert set(listed) == {entry["name"] for entry in CATALOGUE}
    keys = ("default", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum")
    for name, entry in listed.items():
        dag = dagbag.dags[f"federated_{name}"]
        for pname, item in entry["parameters"].items():
            field = _form_field(dag.params.get_param(pname))
            assert {k: field.get(k) for k in keys} == {k: item["form"].get(k) for k in keys}, (name, pname)
            assert item["default"] == item["form"].get("default"), (name, pname)
    form = {name: dagbag.dags["federated_kmeans"].params[name] for name in listed["kmeans"]["parameters"]}
    assert form == {"k": 4, "maxiter": 100, "tol": 0.0001, "init": "pca"}
    assert {name: item["default"] for name, item in listed["kmeans"]["parameters"].items()} == form
    bare = AnalysisRequest.from_dict({"inputdata": {"data_model": "stroke:0.1", "datasets": ["a"],
                                                    "y": ["age", "nihss_admission"]}, "parameters": {}})
    assert get_algorithm("kmeans").params(bare) == form


def test_cli_lists_the_catalogue_as_a_table():
    out = subprocess.run([sys.executable, "-m", "mipflow.cli", "algorithms", "list"],
                         capture_output=True, text=True, check=True, timeout=120)
    for entry in CATALOGUE:
        assert f"{entry['name']}: {entry['label']}" in out.stdout
    assert "maxiter  int   100     [1, 100]" in out.stdout
