"""sync_metadata: what every node holds, written to the central home; one node down hides no other."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from mipflow.node.home import NodeHome
from tests.nodes import PROJECT, RESEARCHER, free_port, grant_all, load_frame


@pytest.fixture
def clients(tmp_path):
    """Two nodes reached in-process through their real signed API, and one nobody listens for."""
    from mipflow.central.client import NodeClient, NodeEndpoint
    from mipflow.node.api.app import create_app
    from mipflow.protocol.signing import issue_client
    from tests.mipflow.algorithms.synthetic import MODEL, make_data

    out = {}
    for i in range(2):
        home = NodeHome.init(tmp_path / f"node{i}", f"node{i}")
        grant_all(home.root)
        frame = make_data(80 + i, 60)
        frame.insert(0, "subjectcode", [f"p{i}_{k:04d}" for k in range(len(frame))])
        load_frame(home.root, MODEL, frame)
        cred = issue_client(home.root, "central")
        client = NodeClient(NodeEndpoint(home.name, "http://testserver", cred.client_id, cred.secret.hex()),
                            retries=0)
        client._http.close()
        client._http = TestClient(create_app(home), base_url="http://testserver")
        out[f"mipflow_node_node{i}"] = client
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
