"""K-means through real node services with default disclosure settings: a node where
one patient would form a cluster on their own refuses, and the result says so."""
from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import get_algorithm, run_in_process
from mipflow.auth import issue_client
from mipflow.config import NodeHome
from mipflow.federation import NodeClient, NodeEndpoint
from mipflow.federation import run_analysis as _run_analysis
from tests.mipflow.algorithms.helpers import assert_rel_close
from tests.mipflow.algorithms.synthetic import MODEL, request
from tests.nodes import PROJECT, RESEARCHER, grant_all, load_frame, running_nodes

#: every analysis here runs as the identity the nodes' grants approve
run_analysis = functools.partial(_run_analysis, researcher=RESEARCHER, project=PROJECT)

pytestmark = pytest.mark.xdist_group("federation")

OUTLIER = (30.0, 30.0)


def _rows(seed: int, blobs: list[tuple[float, float, int]], extra: list[tuple[float, float]] = ()) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = [rng.normal(centre, 1.0, size=(size, 2)) for *centre, size in blobs]
    values = np.vstack(parts + ([np.asarray(extra)] if extra else []))
    return pd.DataFrame({"subjectcode": [f"p{seed}-{i}" for i in range(len(values))],
                         "dataset": "d0", "x1": values[:, 0], "y": values[:, 1]})


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    frames = {
        # 40 patients around the origin and one outlier patient far away
        "node_a": _rows(1, [(0.0, 0.0, 40)], [OUTLIER]),
        "node_b": _rows(2, [(0.0, 0.0, 40), (10.0, 10.0, 40)]),
        "node_c": _rows(3, [(0.0, 0.0, 30), (10.0, 10.0, 50)]),
    }
    base = tmp_path_factory.mktemp("kmeans-nodes")
    roots = {}
    for name, frame in frames.items():
        home = NodeHome.init(base / name, name)  # default settings: nfilter_tab 3, min_row_count 10
        assert home.settings.nfilter_tab == 3
        load_frame(home.root, MODEL, frame)
        roots[name] = home.root
        grant_all(home.root)
    credentials = {name: issue_client(root, "central") for name, root in roots.items()}
    with running_nodes(list(roots.values())) as urls:
        clients = [NodeClient(NodeEndpoint(name, url, credentials[name].client_id, credentials[name].secret.hex()),
                              retries=0) for name, url in zip(roots, urls)]
        try:
            yield clients, frames
        finally:
            for client in clients:
                client.close()


def test_a_node_with_a_one_patient_cluster_is_left_out(nodes) -> None:
    clients, frames = nodes
    req = request(y=("x1", "y"), k=2, maxiter=50, tol=1e-6)
    outcome = run_analysis("kmeans", req.to_dict(), clients)
    assert list(outcome.excluded) == ["node_a"], outcome.excluded
    assert "(nfilter_tab)" in outcome.excluded["node_a"] and "1 row" not in outcome.excluded["node_a"]
    assert sorted(outcome.contributed) == ["node_b", "node_c"]
    # the result is k-means of the other two nodes' rows, and the outlier is in no centre
    alone = run_in_process(get_algorithm("kmeans"), [frames["node_b"], frames["node_c"]], req, MODEL)
    assert_rel_close(outcome.result["centers"], alone["centers"], rel=1e-12)
    assert outcome.result["n_obs"] == len(frames["node_b"]) + len(frames["node_c"])
    assert not np.any(np.isclose(np.asarray(outcome.result["centers"]), OUTLIER[0], rtol=1e-3))


def test_min_nodes_turns_the_refusal_into_an_error(nodes) -> None:
    from mipflow.exceptions import FederationError

    clients, _ = nodes
    req = request(y=("x1", "y"), k=2, maxiter=50, tol=1e-6)
    with pytest.raises(FederationError, match="node_a: refused \\(nfilter_tab\\)"):
        run_analysis("kmeans", req.to_dict(), clients, min_nodes=3)


def test_exareme2_initialisation_is_refused_without_release_extremes(nodes) -> None:
    from mipflow.exceptions import FederationError

    clients, _ = nodes
    req = request(y=("x1", "y"), k=2, init="exareme2")
    with pytest.raises(FederationError, match="raw_extremes"):
        run_analysis("kmeans", req.to_dict(), clients)
