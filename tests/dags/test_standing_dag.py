"""The ``standing_analyses`` DAG through Airflow (dag.test) against real node services (ADR 0043)."""
from __future__ import annotations

import json

import pytest

from mipflow.central.results import ResultStore
from mipflow.central.standing import StandingRegistry
from mipflow.node import ops
from mipflow.protocol.signing import issue_client
from tests.mipflow.central.test_standing import CONF, NODES, PROFILES, STROKE, _load
from tests.conftest import REPO_ROOT
from tests.nodes import DAG_TEST_USER, PROJECT, RESEARCHER, grant_all, running_nodes, standard_home

pytestmark = [pytest.mark.airflow, pytest.mark.xdist_group("airflow")]


def test_the_dag_runs_a_standing_analysis_on_new_data_and_a_form_run_registers_one(tmp_path, monkeypatch,
                                                                                     airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    homes = {}
    for i, name in enumerate(NODES):
        home = standard_home(tmp_path / name, name)
        ops.add_data_model(home, STROKE)
        _load(home, name, tmp_path, 60, 1, 40 + i)
        grant_all(home.root)
        grant_all(home.root, DAG_TEST_USER, PROJECT)
        homes[name] = home
    assert PROFILES.is_dir()
    with running_nodes([h.root for h in homes.values()]) as urls:
        for (name, home), url in zip(homes.items(), urls):
            cred = issue_client(home.root, "central")
            monkeypatch.setenv(f"AIRFLOW_CONN_MIPFLOW_NODE_{name.upper()}", json.dumps(
                {"conn_type": "mipflow_node", "host": url, "login": cred.client_id, "password": cred.secret.hex(),
                 "extra": {"node_name": name}}))
        central = tmp_path / "central"
        monkeypatch.setenv("MIPFLOW_CENTRAL_HOME", str(central))
        bag = DagBag(dag_folder=str(REPO_ROOT / "dags" / "mipflow_standing.py"))
        assert not bag.import_errors
        registry = StandingRegistry(central)
        standing = registry.add(algorithm="ttest_onesample", conf=CONF, researcher=RESEARCHER, project=PROJECT)
        run = bag.dags["standing_analyses"].test()
        assert "success" in str(run.state)
        (first,) = registry.versions(standing.standing_id)
        assert (first.status, first.version, first.run_id) == ("succeeded", 1, f"{run.run_id}__{standing.standing_id}")
        batch = _load(homes["hospital_a"], "hospital_a", tmp_path, 25, 800, 5)
        run = bag.dags["standing_analyses"].test()
        assert "success" in str(run.state)
        second = registry.versions(standing.standing_id)[-1]
        doc = ResultStore(central).document(second.run_id)
        assert second.version == 2 and doc["standing"]["new_batches"] == {"hospital_a": [batch]}
        assert doc["researcher"] == RESEARCHER and doc["triggered_by"] == RESEARCHER
        # a run of an analysis DAG with "Keep as a standing analysis" registers it for its triggering user
        central_bag = DagBag(dag_folder=str(REPO_ROOT / "dags" / "mipflow_central.py"))
        run = central_bag.dags["federated_ttest_onesample"].test(run_conf={**CONF, "standing": True})
        assert "success" in str(run.state)
        mine = [s for s in registry.list() if s.researcher == DAG_TEST_USER]
        assert len(mine) == 1 and mine[0].project == PROJECT and mine[0].nodes == CONF["nodes"]
        # the form's request, its defaults filled in (what the run itself sent)
        assert mine[0].request["inputdata"] == standing.request["inputdata"]
        assert mine[0].request["parameters"] == {"mu": 5.0, "alpha": 0.05, "alt_hypothesis": "two-sided"}
        registry.dispose()
