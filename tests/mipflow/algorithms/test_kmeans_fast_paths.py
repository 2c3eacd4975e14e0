"""k-means' blocked nearest-centre assignment equals the direct computation, across blocks.

The node assigns rows in blocks of :data:`mipflow.algorithms.kmeans.ASSIGN_BLOCK` rows on
column-major values kept between rounds; here more rows than two blocks hold are assigned
and compared with the distances written out for all rows at once (ties go to the lower
centre index), and a round's aggregates with the per-cluster sums written out directly.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import get_algorithm
from mipflow.algorithms import kmeans as kmeans_module
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import transport
from mipflow.protocol.datamodel import DataModel

MODEL = DataModel.from_dict({"code": "km", "version": "1", "label": "km", "variables": [
    {"code": "dataset", "sql_type": "text", "isCategorical": True, "enumerations": [{"code": "a", "label": "a"}]},
    *({"code": v, "sql_type": "real", "isCategorical": False} for v in ("v0", "v1", "v2"))]})


def _direct(values: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dist = ((values[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    return dist.argmin(axis=1), dist.min(axis=1)


@pytest.mark.parametrize("n", [0, 1, kmeans_module.ASSIGN_BLOCK, 2 * kmeans_module.ASSIGN_BLOCK + 17])
def test_blocked_assignment_equals_the_direct_one(n: int) -> None:
    rng = np.random.default_rng(n)
    values = np.round(rng.normal(size=(n, 3)), 1)          # coarse values: many exact ties
    centres = np.array([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [-0.5, 0.2, 0.1]])
    labels, distances = kmeans_module.assign(np.ascontiguousarray(values.T), centres)
    expected_labels, expected_distances = _direct(values, centres)
    assert np.array_equal(labels, expected_labels)
    assert np.array_equal(distances, expected_distances)
    assert not np.any(labels == 2)                          # centre 2 duplicates centre 0: ties go to 0


def test_a_round_equals_the_per_cluster_sums() -> None:
    rng = np.random.default_rng(7)
    n = 2 * kmeans_module.ASSIGN_BLOCK + 5
    frame = pd.DataFrame(rng.normal(size=(n, 3)) * [1.0, 2.0, 3.0], columns=["v0", "v1", "v2"])
    req = AnalysisRequest(data_model=MODEL.key, datasets=("a",), y=("v0", "v1", "v2"),
                          parameters={"k": 3, "tol": 1e-4, "maxiter": 10})
    algo = get_algorithm("kmeans")
    state = transport(algo.global_step(0, [transport(algo.local_step(0, frame, req, MODEL, None))], req, MODEL,
                                       None).state)
    sent = transport(algo.local_step(1, frame, req, MODEL, state))
    values, centres = frame.to_numpy(), np.asarray(state["centers"])
    labels, distances = _direct(values, centres)
    assert sent["group_n"] == np.bincount(labels, minlength=3).tolist()
    for j in range(3):
        members = values[labels == j]
        scale = np.abs(members - centres[j]).sum(axis=0)   # the rounding error of a sum scales with this
        assert np.all(np.abs(np.asarray(sent["deviation_sums"][j]) - (members - centres[j]).sum(axis=0))
                      <= 1e-13 * scale)
        assert abs(sent["within_ss"][j] - distances[labels == j].sum()) <= 1e-13 * distances[labels == j].sum()
