"""sync_metadata: what every node holds, written to the central home; one node down hides no other."""
from __future__ import annotations

import json

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
    assert json.loads((tmp_path / "central" / "federation_metadata.json").read_text()) == synced
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
