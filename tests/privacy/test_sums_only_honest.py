"""An honest researcher's subgroup after per-dataset statistics, through real node processes (ADR 0063).

The node holds two exports: ``hospital_a`` (many patients of every age) and ``hospital_b``, whose patients but three
are 65 or older.  The researcher first describes everyone per dataset, then fits the elderly's regression over both
exports.  The pairwise rule refused that regression ("each way": ``hospital_b``'s cohort less the elderly is three
patients), though no combination of the two releases gives those three; between releases of numerical sums the
chain rule decides (ADR 0063), and the regression is answered.  The elderly's own per-dataset statistics would give
those three patients' sums (``hospital_b``'s everyone less its elderly): refused, justly.  Where the first statistics
read a nominal variable (its small level counts hidden), the regression is answered too (it holds no level count to
read a hidden one against: ADR 0063's nominal amendment), and the pairwise rule stays between releases of level
counts (round 23, hole 2).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests.mipflow.node.controls.study_helpers import rule, where
from tests.privacy.conftest import make_rows
from tests.privacy.test_explore_attacks import Served, served_standard

pytestmark = pytest.mark.xdist_group("sums_only_honest")

PROJECT = "cohort-study"
A, B = "hospital_a", "hospital_b"
ELDERLY = where(rule("age", "greater_or_equal", 65))


def rows():
    """:func:`make_rows` with ``hospital_b``'s patients aged 70 or more but three (aged 40-42)."""
    frame = make_rows()
    at_b = frame.index[frame["dataset"] == B]
    assert len(at_b) >= 13
    frame.loc[at_b, "age"] = [40.0, 41.0, 42.0] + [70.0 + 0.1 * k for k in range(len(at_b) - 3)]
    return frame


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[dict[str, Served]]:
    with served_standard(Path(tmp_path_factory.mktemp("sums-only")), {"numerical": rows, "nominal": rows}, A,
                         PROJECT) as served:
        yield served


def request(y, x=(), filters=None) -> dict:
    return {"inputdata": {"data_model": "stroke:0.1", "datasets": [A, B], "x": list(x), "y": list(y),
                          "filters": filters}, "parameters": {}}


def control(reply) -> tuple[int, str | None]:
    return reply.status_code, reply.json().get("control")


def test_the_elderly_s_regression_after_numerical_statistics_per_dataset_is_answered(nodes):
    node = nodes["numerical"]
    first = node.call("descriptive_stats", request(["age", "nihss_admission"]), project=PROJECT)
    assert first.status_code == 200, first.text
    reply = node.call("linear_regression", request(["nihss_admission"], ["age"], ELDERLY), project=PROJECT)
    assert reply.status_code == 200, reply.text
    asked = node.rows[node.rows["dataset"].isin([A, B])]
    elderly = asked[asked["age"] >= 65]
    assert int((elderly["dataset"] == B).sum()) >= 10 and int(((asked["dataset"] == B)
                                                                & (asked["age"] < 65)).sum()) == 3
    moments = reply.json()["aggregates"]["moments"]
    assert moments["n"] == len(elderly)
    truth = sorted([float(elderly["age"].mean()), float(elderly["nihss_admission"].mean())])
    got = sorted(float(m) for m in moments["mean"])
    assert np.allclose(got, truth, rtol=1e-9, atol=0), (got, truth)
    # the elderly's statistics per dataset: hospital_b's everyone less its elderly is three patients
    again = node.call("descriptive_stats", request(["age", "nihss_admission"], (), ELDERLY), project=PROJECT)
    assert control(again) == (403, "differencing")


def test_after_statistics_of_a_nominal_variable_the_regression_is_answered_and_counts_keep_the_pairwise_rule(nodes):
    """The first statistics read ``sex`` (its small level counts hidden: class HIDDEN); the elderly's regression holds
    no level count to read a hidden one against, so the pair is the chain rule's and it is answered (ADR 0063,
    nominal amendment).  The elderly's level counts of ``sex`` are another release of hidden counts: the pairwise
    rule stays between the two (round 23, hole 2), and ``hospital_b``'s cohort less its elderly is three patients."""
    node = nodes["nominal"]
    first = node.call("descriptive_stats", request(["age", "nihss_admission", "sex"]), project=PROJECT)
    assert first.status_code == 200, first.text
    reply = node.call("linear_regression", request(["nihss_admission"], ["age"], ELDERLY), project=PROJECT)
    assert reply.status_code == 200, reply.text
    asked = node.rows[node.rows["dataset"].isin([A, B])]
    elderly = asked[asked["age"] >= 65]
    moments = reply.json()["aggregates"]["moments"]
    assert moments["n"] == len(elderly)
    got = sorted(float(m) for m in moments["mean"])
    truth = sorted([float(elderly["age"].mean()), float(elderly["nihss_admission"].mean())])
    assert np.allclose(got, truth, rtol=1e-9, atol=0), (got, truth)
    counts = node.call("descriptive_stats", request(["sex"], (), ELDERLY), project=PROJECT)
    assert control(counts) == (403, "differencing")
