"""What the secure-aggregation tests share: three nodes' fixed keys, a step context, one node's aggregates."""
from __future__ import annotations

import json

from mipflow.secagg.crypto import KeyPair, context_digest
from mipflow.algorithms import get_algorithm, prepare_local_data
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request

#: Three nodes' long-term keys, fixed so that every statistical test below is deterministic.
KEYS = [KeyPair.from_bytes(bytes([17 * (i + 1)]) * 32) for i in range(3)]
PUBLIC = [k.public_bytes for k in KEYS]


def context(analysis_id: str = "analysis-1", round_no: int = 0, state=None, participants=PUBLIC) -> bytes:
    return context_digest(analysis_id=analysis_id, algorithm="linear_regression", round_no=round_no,
                                 request={"r": 1}, state=state, participants=participants)


LOCAL_REQUEST = request(x=("x1", "x2"), y=("y",))


def node_aggregate() -> dict:
    """One node's linear-regression aggregates (60 synthetic rows)."""
    algo = get_algorithm("linear_regression")
    return algo.local_step(0, prepare_local_data(algo, make_data(7, 60), LOCAL_REQUEST), LOCAL_REQUEST,
                           MODEL, None)


def zero_like() -> dict:
    """The same layout with every number 0."""
    return json.loads(json.dumps(node_aggregate()), parse_float=lambda _: 0.0, parse_int=lambda _: 0)
