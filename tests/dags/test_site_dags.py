"""A central site shows only the central DAGs (``MIPFLOW_SITE=central``, ADR 0045); a local site
(the default) and a node show the node and imaging DAGs too."""
from __future__ import annotations

import pytest

from mipflow_airflow.dags import site, site_runs
from tests.conftest import REPO_ROOT
from tests.dags.test_dagbag import EXPECTED_IMAGING_DAGS, EXPECTED_NODE_DAGS

pytestmark = pytest.mark.airflow
NODE_FILES = ("mipflow_node.py", "mipflow_imaging.py")


def _bag(dag_file: str):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags" / dag_file))


@pytest.mark.parametrize(("value", "expected"), [
    pytest.param(None, set(NODE_FILES), id="unset-is-local"),
    pytest.param("local", set(NODE_FILES), id="local"),
    pytest.param("node", set(NODE_FILES), id="node"),
    pytest.param(" Central ", set(), id="central"),
])
def test_node_and_imaging_dag_files_define_nothing_on_a_central_site(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("MIPFLOW_SITE", raising=False)
    else:
        monkeypatch.setenv("MIPFLOW_SITE", value)
    defined = set()
    for dag_file in NODE_FILES:
        bag = _bag(dag_file)
        assert bag.import_errors == {}
        if bag.dag_ids:
            defined.add(dag_file)
            wanted = EXPECTED_NODE_DAGS if dag_file == "mipflow_node.py" else EXPECTED_IMAGING_DAGS
            assert set(bag.dag_ids) == wanted
    assert defined == expected


def test_the_central_dags_stay_on_a_central_site(monkeypatch):
    monkeypatch.setenv("MIPFLOW_SITE", "central")
    bag = _bag("mipflow_standing.py")
    assert bag.import_errors == {} and set(bag.dag_ids) == {"standing_analyses"}


def test_an_unknown_site_fails_the_parse_visibly(monkeypatch):
    monkeypatch.setenv("MIPFLOW_SITE", "hospital")
    bag = _bag("mipflow_node.py")
    (error,) = bag.import_errors.values()
    assert "MIPFLOW_SITE='hospital' must be one of local, central, node" in error
    assert not bag.dag_ids


@pytest.mark.parametrize(("environ", "node", "central"), [
    pytest.param({}, True, True, id="default-local"),
    pytest.param({"MIPFLOW_SITE": "central"}, False, True, id="central"),
    pytest.param({"AIRFLOW_VAR_MIPFLOW_SITE": "central"}, False, True, id="central-as-airflow-var"),
    pytest.param({"MIPFLOW_SITE": "node"}, True, True, id="node"),
])
def test_site_runs(environ, node, central):
    assert site_runs("node", environ) is node and site_runs("central", environ) is central
    assert site(environ) in ("local", "central", "node")
