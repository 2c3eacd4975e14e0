"""The test harness's node processes: forked from the per-worker zygote (``tests.node_zygote``) by default, or
spawned as ``python -m mipflow.cli node serve`` (``MIPFLOW_TEST_SPAWN_NODES=1``, what an operator runs).  Both
must serve the same node: the zygote is a speed-up of the harness, never a different service."""
from __future__ import annotations

import httpx
import pytest

from mipflow.node.home import NodeHome
from tests.nodes import running_nodes


@pytest.mark.parametrize("spawn", ["0", "1"], ids=["forked", "spawned"])
def test_a_node_started_either_way_serves_its_own_home_and_logs_to_it(tmp_path, monkeypatch, spawn):
    monkeypatch.setenv("MIPFLOW_TEST_SPAWN_NODES", spawn)
    homes = [tmp_path / "alpha", tmp_path / "beta"]
    for home in homes:
        NodeHome.init(home, home.name)
    with running_nodes(homes) as urls:
        names = [httpx.get(url + "/health", timeout=5).json() for url in urls]
    assert [n.get("node") for n in names] == ["alpha", "beta"], names
    for home in homes:
        assert (home / "serve.log").stat().st_size > 0
