"""A node with stroke-registry rows and one patient who stands out, served in process."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from mipflow.protocol.signing import Credential, issue_client, signed_headers
from mipflow.node.home import NodeHome
from mipflow.node.api.app import create_app
from tests.mipflow.algorithms.survival_data import STROKE, make_stroke
from tests.nodes import PROJECT, RESEARCHER, grant_all, load_frame
from tests.nodes import standard_home

#: The patient every attack is after: the only one aged 18.5, with NIHSS 42, the longest
#: follow-up, and the only one who had thrombolysis.
TARGET = "target-0"
TARGET_AGE = 18.5
TARGET_NIHSS = 42.0
TARGET_FOLLOWUP = 3650.0
DATASETS = ["hospital_a", "hospital_b", "hospital_c"]


def make_rows(seed: int = 7, n: int = 240) -> pd.DataFrame:
    """Complete stroke rows (no missing values, so every algorithm sees the same cohort
    unless a filter says otherwise) plus the target patient."""
    rng = np.random.default_rng(seed)
    frame = make_stroke(seed, n)
    frame["nihss_admission"] = rng.integers(0, 30, n).astype(float)
    frame["onset_to_door_min"] = rng.integers(20, 600, n).astype(float)
    frame["systolic_bp"] = rng.integers(100, 200, n).astype(float)
    frame["glucose_mmol"] = rng.normal(7.0, 1.5, n).round(2)
    for code in ("atrial_fibrillation", "diabetes", "hypertension"):
        frame[code] = rng.choice(["yes", "no"], n)
    frame["thrombolysis"] = "no"
    frame["mrs_90d"] = rng.integers(0, 7, n).astype(float)
    target = {**frame.iloc[0].to_dict(), "subjectcode": TARGET, "dataset": "hospital_a", "age": TARGET_AGE,
              "nihss_admission": TARGET_NIHSS, "followup_days": TARGET_FOLLOWUP, "death_90d": "yes",
              "thrombolysis": "yes", "sex": "F"}
    return pd.concat([pd.DataFrame([target]), frame], ignore_index=True)


def rule(field: str, operator: str, value: Any = None) -> dict[str, Any]:
    return {"id": field, "field": field, "type": "double", "input": "number", "operator": operator,
            "value": value}


def where(*rules: dict[str, Any], condition: str = "AND") -> dict[str, Any]:
    return {"condition": condition, "rules": list(rules), "valid": True}


@dataclass
class Node:
    """A node API in process, and the central site's credential for it."""

    home: NodeHome
    http: TestClient
    credential: Credential
    rows: pd.DataFrame

    def call(self, algorithm: str, *, y=(), x=(), filters=None, parameters=None, round: int = 0,
             state=None, analysis_id: str | None = None, datasets=None, raw: bytes | None = None,
             credential: Credential | None = None, unverified: bool = False):
        """One signed step call through the node's API.  ``unverified``: the same body through the
        node's control chain without round verification (in process), to reach the controls behind it
        with a state of the caller's making, as if verification were broken (defence in depth)."""
        body = raw if raw is not None else json.dumps({
            "request": {"inputdata": {"data_model": STROKE.key, "datasets": datasets or DATASETS,
                                      "x": list(x), "y": list(y), "filters": filters},
                        "parameters": parameters or {}},
            "round": round, "state": state, "researcher": RESEARCHER, "project": PROJECT,
            "analysis_id": analysis_id}).encode()
        if unverified:
            return _unverified(self.home, algorithm, body)
        cred = credential or self.credential
        path = f"/v1/steps/{algorithm}"
        headers = signed_headers(cred.client_id, cred.secret, "POST", path, body)
        return self.http.post(path, content=body, headers={**headers, "Content-Type": "application/json"})

    def refused(self, control: str, *args, **kwargs) -> dict[str, Any]:
        """Call and assert the node refused with ``control``; return the refusal."""
        reply = self.call(*args, **kwargs)
        assert reply.status_code == 403, reply.text
        doc = reply.json()
        assert doc["control"] == control, doc
        assert "rows" not in doc and "aggregates" not in doc
        return doc

    def allowed(self, *args, **kwargs) -> dict[str, Any]:
        reply = self.call(*args, **kwargs)
        assert reply.status_code == 200, reply.text
        return reply.json()


@dataclass
class _Reply:
    """The parts of an HTTP reply the attack tests read."""

    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode()

    def json(self) -> Any:
        return json.loads(self.content)


def _unverified(home: NodeHome, algorithm: str, body: bytes) -> _Reply:
    from fastapi import HTTPException

    from mipflow.exceptions import MipflowError
    from mipflow.node.api.app import json_bytes, refusal_response
    from mipflow.node.api.context import StepContext
    from mipflow.node.api.step import answer_step
    from tests.nodes import unverified_chain

    chain = unverified_chain()
    context = StepContext.open(home)
    try:
        return _Reply(200, json_bytes(answer_step(context, "central", algorithm, body, chain=chain)))
    except MipflowError as exc:
        try:
            response = refusal_response(home.name, exc)
        except HTTPException as bad:
            return _Reply(bad.status_code, json.dumps({"detail": bad.detail}).encode())
        return _Reply(response.status_code, bytes(response.body))
    finally:
        if hasattr(context, "close"):
            context.close()


def start_node(root: Path, rows: pd.DataFrame | None = None, **settings: Any) -> Iterator[Node]:
    """A node serving ``rows`` (default :func:`make_rows`) with ``settings``, in process."""
    home = standard_home(root, "hospital_a")
    for key, value in settings.items():
        home.set_setting(key, value)
    home = NodeHome(root)
    rows = make_rows() if rows is None else rows
    assert load_frame(root, STROKE, rows) == len(rows)
    grant_all(root)
    credential = issue_client(root, "central")
    with TestClient(create_app(home)) as http:
        yield Node(home, http, credential, rows)


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[Node]:
    """Default node settings: min_row_count 10, nfilter_tab 3, differencing on, no budget, no DP."""
    yield from start_node(tmp_path_factory.mktemp("privacy-node"))
