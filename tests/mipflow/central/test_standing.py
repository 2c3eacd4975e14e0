"""Standing analyses (ADR 0043) against real node processes: data versions, new versions with
provenance, a refused re-run recorded as waiting, the asset watcher's trigger and the results page."""
from __future__ import annotations

import asyncio
import json

import pytest

from mipflow.central.results import ResultStore
from mipflow.central.standing import StandingRegistry, rerun, result_changes
from mipflow.demo.synth import generate_export, write_export
from mipflow.node import ops
from mipflow.node.store.feature_store import open_store
from mipflow.protocol.signing import issue_client
from tests.conftest import REPO_ROOT
from tests.nodes import PROJECT, RESEARCHER, grant_all, running_nodes, standard_home

STROKE = REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json"
NODES = ("hospital_a", "hospital_b")
PROFILES = REPO_ROOT / "include" / "schemas" / "profiles"
#: A one-sample t-test on both hospitals' datasets: the form's values, as a triggered run has them.
CONF = {"data_model": "stroke:0.1", "datasets": list(NODES), "y": "nihss_admission", "x": None, "filters": None,
        "mu": 5.0, "nodes": [f"mipflow_node_{n}" for n in NODES], "min_nodes": 2, "secure_aggregation": "off",
        "project": PROJECT}


def _load(home, name: str, tmp, patients: int, start_mrn: int, seed: int) -> str:
    """Ingest a new export of ``patients`` new patients; returns its batch id."""
    path = write_export(tmp / f"{name}-{start_mrn}.csv",
                        generate_export(name, patients, seed=seed, start_mrn=start_mrn))
    ops.ingest(home, [path], profile=PROFILES / f"{name}.json")
    store = open_store(home)
    try:
        return store.data_changes("stroke:0.1")["latest"][0]
    finally:
        store.dispose()


def _complete(home) -> int:
    """Rows of ``home`` with the analysed variable present (the t-test's complete cases)."""
    import sqlalchemy as sa

    engine = sa.create_engine(home.db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM dm_stroke_0_1 WHERE nihss_admission IS NOT NULL")
                                ).scalar_one()
    finally:
        engine.dispose()


@pytest.fixture
def federation(tmp_path, monkeypatch):
    homes = {}
    for i, name in enumerate(NODES):
        home = standard_home(tmp_path / name, name)  # exact answers under the per-request controls
        ops.add_data_model(home, STROKE)
        _load(home, name, tmp_path, 80, 1, 30 + i)
        grant_all(home.root)
        homes[name] = home
    with running_nodes([h.root for h in homes.values()]) as urls:
        from mipflow.central.client import NodeClient, NodeEndpoint

        clients = []
        for (name, home), url in zip(homes.items(), urls):
            cred = issue_client(home.root, "central")
            monkeypatch.setenv(f"AIRFLOW_CONN_MIPFLOW_NODE_{name.upper()}", json.dumps(
                {"conn_type": "mipflow_node", "host": url, "login": cred.client_id, "password": cred.secret.hex(),
                 "extra": {"node_name": name}}))
            clients.append(NodeClient(NodeEndpoint(name, url, cred.client_id, cred.secret.hex()), retries=0))
        central = tmp_path / "central"
        monkeypatch.setenv("MIPFLOW_CENTRAL_HOME", str(central))
        registry = StandingRegistry(central)
        try:
            yield {"homes": homes, "clients": clients, "central": central, "registry": registry,
                   "store": ResultStore(central), "tmp": tmp_path}
        finally:
            registry.dispose()
            for client in clients:
                client.close()


def _versions(client, researcher=None, project=None):
    meta = client.metadata(researcher, project)
    (item,) = [m for m in meta["data_models"] if m["data_model"] == "stroke:0.1"]
    return item["data_version"]


def test_a_nodes_data_version_changes_with_a_load_and_lists_the_batch(federation):
    client = federation["clients"][0]
    before = _versions(client)
    assert before == _versions(client, RESEARCHER, PROJECT)  # the live data, asked either way
    assert before["answers_from"] == "live" and before["batches_loaded"] == 1
    assert len(before["version"]) == 16
    batch = _load(federation["homes"]["hospital_a"], "hospital_a", federation["tmp"], 12, 500, 7)
    after = _versions(client)
    assert after["version"] != before["version"] and after["batches_loaded"] == 2
    assert after["latest_batches"][0] == batch and batch not in before["latest_batches"]
    assert _versions(federation["clients"][1]) == _versions(federation["clients"][1])  # the other node: unchanged
    # nothing below the release threshold: the version carries no row count
    assert set(after) == {"version", "answers_from", "batches_loaded", "latest_batches"}


def test_a_new_batch_makes_a_new_version_whose_provenance_names_it(federation):
    registry, store, clients = federation["registry"], federation["store"], federation["clients"]
    standing = registry.add(algorithm="ttest_onesample", conf=CONF, researcher=RESEARCHER, project=PROJECT)
    first = rerun(standing, clients, registry=registry, store=store, run_id="r1")
    assert (first["status"], first["version"]) == ("succeeded", 1)
    assert rerun(standing, clients, registry=registry, store=store, run_id="r2")["status"] == "unchanged"
    batch = _load(federation["homes"]["hospital_b"], "hospital_b", federation["tmp"], 30, 700, 9)
    second = rerun(standing, clients, registry=registry, store=store, run_id="r3")
    assert (second["status"], second["version"]) == ("succeeded", 2)
    doc = store.document("r3")
    assert doc["standing"]["new_batches"] == {"hospital_b": [batch]}  # which batch, at which node
    assert doc["standing"]["previous_run_id"] == "r1" and doc["standing"]["previous_version"] == 1
    # the new version is on the data as they are now: hospital_b's complete cases, new batch included
    assert doc["contributed"]["hospital_b"] == _complete(federation["homes"]["hospital_b"])
    assert doc["contributed"]["hospital_b"] > store.document("r1")["contributed"]["hospital_b"]
    assert doc["contributed"]["hospital_a"] == store.document("r1")["contributed"]["hospital_a"]
    added = doc["contributed"]["hospital_b"] - store.document("r1")["contributed"]["hospital_b"]
    changes = {row[0]: row for row in doc["standing"]["changes"]}
    n_obs = [row for path, row in changes.items() if path.endswith("n_obs")]
    assert n_obs and n_obs[0][3] == added  # the number, beside the previous one, with the difference
    assert [v.status for v in registry.versions(standing.standing_id)] == ["succeeded", "succeeded"]
    from mipflow.central.report.pages import result_page

    page = result_page(doc, link=lambda r, k: f"run?id={r}", back="./")
    assert "Change against version 1" in page and batch in page and "version 2 (after version 1)" in page


def test_a_rerun_the_nodes_refuse_waits_for_more_data_and_says_so(federation):
    registry, store, clients = federation["registry"], federation["store"], federation["clients"]
    standing = registry.add(algorithm="ttest_onesample", conf=CONF, researcher=RESEARCHER, project=PROJECT)
    assert rerun(standing, clients, registry=registry, store=store, run_id="w1")["version"] == 1
    # three new patients at one node: the re-run's cohort is 3 rows away from the one answered
    # (min_row_count 10): a differencing attempt, refused by that node's own control
    _load(federation["homes"]["hospital_a"], "hospital_a", federation["tmp"], 3, 900, 11)
    waiting = rerun(standing, clients, registry=registry, store=store, run_id="w2")
    assert waiting["status"] == "waiting" and waiting["version"] is None
    assert waiting["nodes"]["hospital_a"]["control"] == "differencing"
    doc = store.document("w2")
    assert doc["status"] == "waiting" and doc["error"].startswith("waiting for more data")
    # the refusal names the rule, never the size of the difference
    assert "3 row" not in doc["error"]
    from mipflow.central.report.pages import result_page

    assert "Waiting for more data: no new version" in result_page(doc, link=lambda r, k: r, back="./")
    # no new data: it keeps waiting without asking the nodes again
    assert rerun(standing, clients, registry=registry, store=store, run_id="w3")["status"] == "unchanged"
    # enough new data: the next version
    _load(federation["homes"]["hospital_a"], "hospital_a", federation["tmp"], 20, 950, 12)
    third = rerun(standing, clients, registry=registry, store=store, run_id="w4")
    assert (third["status"], third["version"]) == ("succeeded", 2)
    assert store.document("w4")["standing"]["previous_run_id"] == "w1"
    assert [v.status for v in registry.versions(standing.standing_id)] == ["succeeded", "waiting", "succeeded"]


def test_the_watchers_trigger_fires_once_per_change_of_a_standing_analysiss_data(federation):
    from mipflow_airflow.triggers.data_version import NodeDataVersionTrigger

    registry, store, clients = federation["registry"], federation["store"], federation["clients"]
    trigger = NodeDataVersionTrigger(poll_seconds=0.05, central_home=str(federation["central"]))
    assert asyncio.run(trigger.poll()) is None  # no standing analysis: nothing to follow
    standing = registry.add(algorithm="ttest_onesample", conf=CONF, researcher=RESEARCHER, project=PROJECT)

    async def first_event(trigger):
        events = trigger.run()
        try:
            return await asyncio.wait_for(anext(events), timeout=30)
        finally:
            await events.aclose()

    event = asyncio.run(first_event(trigger))  # never run: due
    assert event.payload["due"] == [standing.standing_id]
    assert asyncio.run(trigger.poll()) is None  # the same state fires once
    rerun(standing, clients, registry=registry, store=store, run_id="t1")
    fresh = NodeDataVersionTrigger(poll_seconds=0.05, central_home=str(federation["central"]))
    assert asyncio.run(fresh.poll()) is None  # processed: nothing due
    batch_home = federation["homes"]["hospital_a"]
    _load(batch_home, "hospital_a", federation["tmp"], 15, 1200, 13)
    event = asyncio.run(first_event(fresh))
    assert event.payload["due"] == [standing.standing_id]
    assert set(event.payload["versions"][standing.standing_id]) == set(NODES)
    registry.remove(standing.standing_id)
    assert asyncio.run(NodeDataVersionTrigger(central_home=str(federation["central"])).poll()) is None
    classpath, kwargs = fresh.serialize()
    assert classpath == "mipflow_airflow.triggers.data_version.NodeDataVersionTrigger"
    assert NodeDataVersionTrigger(**kwargs).poll_seconds == 0.05


def test_result_changes_pairs_every_number_with_the_previous_one():
    rows = result_changes({"n_obs": 10, "mean": 2.0, "ci": [1.0, 3.0], "gone": 1},
                          {"n_obs": 12, "mean": 2.5, "ci": [1.5, 3.0], "label": "x", "ok": True})
    assert rows == [["n_obs", 10.0, 12.0, 2.0], ["mean", 2.0, 2.5, 0.5], ["ci[0]", 1.0, 1.5, 0.5],
                    ["ci[1]", 3.0, 3.0, 0.0], ["gone", 1.0, None, None]]
