"""sync_metadata: what every node holds, written to the central home; one node down hides no other."""
from __future__ import annotations

import pytest

from tests.nodes import PROJECT, RESEARCHER, free_port, in_process_node


@pytest.fixture
def clients(tmp_path):
    """Two nodes reached in-process through their real signed API, and one nobody listens for."""
    from mipflow.central.client import NodeClient, NodeEndpoint

    out = {f"mipflow_node_node{i}": in_process_node(tmp_path / f"node{i}", f"node{i}", seed=80 + i, rows=60,
                                                     patients=f"p{i}")[0] for i in range(2)}
    out["mipflow_node_gone"] = NodeClient(NodeEndpoint("gone", f"http://127.0.0.1:{free_port()}", "central",
                                                       "00" * 32), retries=0)
    yield out
    for client in out.values():
        client.close()


def test_sync_lists_datasets_for_an_approved_researcher_and_records_unreachable_nodes(tmp_path, clients):
    from mipflow.central.metadata import sync_metadata

    synced = sync_metadata(clients, researcher=RESEARCHER, project=PROJECT, home=tmp_path / "central")
    from mipflow.central.metadata import datasets_for, load_metadata

    kept = load_metadata(tmp_path / "central")
    assert datasets_for(kept, RESEARCHER, PROJECT) == {n: synced[n] for n in ("node0", "node1")}
    assert datasets_for(kept, "someone-else", PROJECT) == {}  # kept per researcher and project
    for name in ("node0", "node1"):
        assert {d["dataset"] for d in synced[name]["synth:1"]} == {"d0", "d1", "d2"}
    assert set(synced) == {"node0", "node1", "mipflow_node_gone"}  # the unreachable node under its key
    assert synced["mipflow_node_gone"]["error"].startswith("gone unreachable")


@pytest.mark.parametrize(("researcher", "project"), [
    pytest.param(None, None, id="scheduled-run"),
    pytest.param(RESEARCHER, None, id="no-project"),
    pytest.param(None, PROJECT, id="no-researcher"),
])
def test_without_a_researcher_and_project_only_data_models_are_synced(tmp_path, clients, researcher, project):
    from mipflow.central.metadata import sync_metadata

    synced = sync_metadata(clients, researcher=researcher, project=project, home=tmp_path / "central")
    assert synced["node0"] == {"synth:1": []} and synced["node1"] == {"synth:1": []}
    from mipflow.central.metadata import load_metadata

    assert load_metadata(tmp_path / "central")["datasets"] == {}


def test_a_scheduled_run_refreshes_variables_and_overwrites_no_dataset_list(tmp_path, clients):
    """Issue 15.1: the hourly run (no researcher) and a node down erase nothing a researcher synced."""
    from mipflow.central.client import NodeClient, NodeEndpoint
    from mipflow.central.metadata import datasets_for, form_choices, load_metadata, sync_metadata

    home = tmp_path / "central"
    first = sync_metadata(clients, researcher=RESEARCHER, project=PROJECT, home=home)
    scheduled = sync_metadata(clients, home=home)
    assert scheduled["node0"] == {"synth:1": []}  # the anonymous answer lists no dataset
    meta = load_metadata(home)
    assert datasets_for(meta, RESEARCHER, PROJECT)["node0"] == first["node0"]
    variables = meta["nodes"]["node0"]["data_models"]["synth:1"]["variables"]
    assert {"y", "grp"} <= {v["code"] for v in variables}
    grp = next(v for v in variables if v["code"] == "grp")
    assert grp["isCategorical"] and [e["code"] for e in grp["enumerations"]] == ["c", "a", "b", "zz"]
    # node0 goes down: its last answer stays, with the error beside it
    down = {"mipflow_node_node0": NodeClient(NodeEndpoint("node0", f"http://127.0.0.1:{free_port()}", "central",
                                                          "00" * 32), retries=0)}
    try:
        sync_metadata(down, researcher=RESEARCHER, project=PROJECT, home=home)
    finally:
        down["mipflow_node_node0"].close()
    meta = load_metadata(home)
    assert meta["nodes"]["node0"]["error"].startswith("node0 unreachable")
    assert meta["nodes"]["node0"]["data_models"]["synth:1"]["variables"] == variables
    assert datasets_for(meta, RESEARCHER, PROJECT)["node0"] == first["node0"]
    choices = form_choices(meta, RESEARCHER, PROJECT)["synth:1"]
    assert [d["dataset"] for d in choices["datasets"]] == ["d0", "d1", "d2"]
    for d in choices["datasets"]:  # the released count of each node that holds it
        assert d["nodes"] == {n: next(x["row_count"] for x in first[n]["synth:1"] if x["dataset"] == d["dataset"])
                              for n in ("node0", "node1")}
    assert form_choices(meta, "someone-else", PROJECT)["synth:1"]["datasets"] == []
