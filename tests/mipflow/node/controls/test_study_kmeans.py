"""The tie rule of study approval for k-means (ADR 0050) and the cluster-size control it relies on."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mipflow.exceptions import ConfigError
from mipflow.node.controls.study_kmeans import (PINNED_VALUES, check_ties, clustered_variables, tie_counts,
                                                 tie_problems, tied_rows)
from tests.mipflow.algorithms.survival_data import STROKE


@pytest.mark.parametrize("values, expected", [
    pytest.param([], 0, id="empty"),
    pytest.param([1.5, 2.5, 3.5, 4.5], 3, id="no-ties"),
    pytest.param([1.0, 1.0, 1.0, 2.0, 2.0, 5.0, 5.0, 5.0, 5.0, 9.0], 9, id="three-largest-counts"),
    pytest.param([7.0] * 4, 4, id="one-value"),
    pytest.param([1.0, np.nan, 1.0, np.nan, np.nan], 2, id="missing-left-out"),
])
def test_tied_rows_counts_the_most_frequent_values(values, expected) -> None:
    assert tied_rows(np.asarray(values, dtype=float)) == expected


def test_tied_rows_takes_the_most_frequent_values_not_neighbouring_ones() -> None:
    """A subgroup may lack the values in between: 1 and 4 hold 5 rows each, 2 and 3 one row each."""
    values = np.repeat([1.0, 2.0, 3.0, 4.0], [5, 1, 1, 5])
    neighbouring = max(int(np.isin(values, [v, v + 1, v + 2]).sum()) for v in (1.0, 2.0))
    assert PINNED_VALUES == 3 and neighbouring == 7 < tied_rows(values) == 11


def test_only_real_numerical_study_variables_are_checked() -> None:
    variables = ["age", "sex", "nihss_admission", "glucose_mmol", "followup_days"]
    assert clustered_variables(STROKE, variables) == ["age", "glucose_mmol"]
    frame = pd.DataFrame({"age": [60.0, 60.0, 61.5, 62.0], "glucose_mmol": [5.1, 5.2, 5.3, 5.4],
                          "sex": ["M", "F", "M", "F"], "nihss_admission": [1, 1, 1, 1],
                          "followup_days": [3, 3, 3, 3]})
    assert tie_counts(frame, STROKE, variables) == {"age": 4, "glucose_mmol": 3}


def test_the_rule_refuses_from_min_row_count_rows_and_names_the_variable() -> None:
    assert tie_problems({"age": 9, "glucose_mmol": 3}, 10) == []
    problems = tie_problems({"age": 10, "glucose_mmol": 3}, 10)
    assert len(problems) == 1 and "'age'" in problems[0] and "10 rows" in problems[0]
    with pytest.raises(ConfigError, match="study 's' not approved: k-means would release exact counts.*'age'.*stays"):
        check_ties({"age": 10}, 10, "study 's' not approved", "; stays")
    check_ties({"age": 9}, 10, "study 's' not approved")  # passes


def _measured(seed: int, n: int, prefix: str) -> pd.DataFrame:
    from tests.mipflow.node.controls.study_helpers import stroke_rows

    frame = stroke_rows(seed, n, "hospital_a", prefix)
    rng = np.random.default_rng(seed)
    frame["age"] = rng.uniform(30.0, 90.0, n)
    frame["glucose_mmol"] = rng.normal(7.0, 1.5, n)
    return frame


def test_approval_passes_measured_values_and_a_refresh_that_brings_ties_is_refused(tmp_path) -> None:
    """At approval the population's ages are measured (no ties): approved.  Ten new rows all aged 50.0
    make 3 values hold min_row_count rows: the refresh is refused, the study stays on its snapshot."""
    from mipflow.node.controls import study_approval
    from mipflow.node.home import NodeHome
    from tests.mipflow.node.controls.study_helpers import protocol
    from tests.nodes import load_frame, standard_home

    home = standard_home(tmp_path / "node", "hospital_a")
    load_frame(home.root, STROKE, _measured(3, 200, "a"))
    document = protocol(datasets=["hospital_a"], variables=["age", "sex", "glucose_mmol"], subgroups=[],
                        algorithms=["kmeans"])
    document.pop("survival")
    approved = study_approval.approve(home, "clusters", document)
    assert approved["status"] == "approved"
    tied = _measured(4, home.settings.min_row_count, "b")
    tied["age"] = 50.0
    load_frame(home.root, STROKE, tied)
    with pytest.raises(ConfigError) as refused:
        study_approval.refresh(NodeHome(home.root), "clusters")
    message = str(refused.value)
    assert "not refreshed" in message and "'age'" in message and "'glucose_mmol'" not in message
    assert f"stays on its snapshot of {approved['snapshot']}" in message
