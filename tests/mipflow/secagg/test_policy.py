"""Which analyses run masked (mipflow.secagg.policy), from the algorithms' own declarations."""
from __future__ import annotations


import pytest

from mipflow.secagg.policy import automatic_refusal, masked_round, resolve
from mipflow.exceptions import RequestError
from tests.mipflow.algorithms.synthetic import request


def test_resolve_mode() -> None:
    assert resolve(None, "pca") == "auto"
    assert resolve(False, "pca") == "off"
    assert resolve(True, "linear_regression") == "on"
    with pytest.raises(RequestError, match="not available for pca"):
        resolve(True, "pca")
    # k-means: the default initialisation is sums only; Exareme2's needs per-node extremes
    pca_init = request(y=("x1", "age"), k=3).to_dict()
    exareme2_init = request(y=("x1", "age"), k=3, init="exareme2").to_dict()
    assert resolve(True, "kmeans", pca_init) == "on"
    assert automatic_refusal("kmeans", pca_init) is None
    with pytest.raises(RequestError, match="init 'exareme2'.*not sums"):
        resolve(True, "kmeans", exareme2_init)
    assert "init 'exareme2'" in automatic_refusal("kmeans", exareme2_init)
    # descriptive statistics: on request only (automatic mode would drop the per-dataset rows)
    described = request(x=("grp",), y=("y",)).to_dict()
    assert resolve(True, "descriptive_stats", described) == "on"
    assert "request it explicitly" in automatic_refusal("descriptive_stats", described)
    for name in ("ttest_independent", "anova_oneway", "linear_regression"):
        assert automatic_refusal(name) is None
    assert "does not support" in automatic_refusal("pca")


def test_masked_round_is_every_round_unless_the_algorithm_says_otherwise() -> None:
    """Cox regression masks its start round (pooled rows, level counts, moments: ADR 0055 amendment) and its
    score rounds (ADR 0048), not round 0 (each node's bins) nor the sums rounds; every other algorithm every
    round. The decision reads the round's state, never data: the same for every node and the central site."""
    for name in ("linear_regression", "logistic_regression", "kmeans"):
        assert masked_round(name, 0, None) and masked_round(name, 3, {"phase": "score"})
    assert not masked_round("cox_regression", 0, None)
    assert masked_round("cox_regression", 1, {"phase": "start", "ends": [3, 9], "event_bins": [0]})
    assert not masked_round("cox_regression", 2, {"phase": "sums", "coefficients": [0.0]})
    assert masked_round("cox_regression", 3, {"phase": "score", "coefficients": [0.0]})
    assert automatic_refusal("cox_regression") is None and resolve(True, "cox_regression") == "on"
