"""The study survival entry of the step (mipflow.node.controls.study_survival.apply_survival)."""
from __future__ import annotations

import pytest

from mipflow.node.controls.study_survival import apply_survival


@pytest.mark.parametrize("algorithm", [pytest.param("linear_regression", id="linear"),
                                       pytest.param("histogram", id="histogram")])
def test_apply_survival_leaves_other_algorithms_releases_as_they_are(algorithm):
    aggregates = {"n_obs": 12, "events": [3, 0, 9]}
    # no study partition is read for them: a study without one would refuse a survival release
    assert apply_survival(None, algorithm, 0, aggregates, None, None) is aggregates
