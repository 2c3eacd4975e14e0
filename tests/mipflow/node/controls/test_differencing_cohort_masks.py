"""cohort_masks of a complete-case selection, one column at a time: the rows complete on every variable,
as the (rows x variables) matrix gave them."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mipflow.node.controls.differencing import cohort_masks


def _matrix_way(frame, variables, by=()):
    """The masks as they were computed before: from frame[columns].notna() as one matrix."""
    columns = [c for c in variables if c in frame.columns]
    present = frame[columns].notna().to_numpy() if columns else np.ones((len(frame), 0), dtype=bool)
    complete = present.all(axis=1) if len(frame) else np.ones(0, dtype=bool)
    masks = [complete]
    for column in by:
        levels = frame[column].astype(object).to_numpy()
        masks += [complete & (levels == level) for level in pd.unique(frame[column].dropna().astype(object))]
    kept = []
    for mask in masks:
        if (mask.any() or not kept) and not any(np.array_equal(mask, m) for m in kept):
            kept.append(mask)
    return kept


@pytest.mark.parametrize("n", [0, 1, 500])
def test_complete_rows_one_column_at_a_time_are_the_matrixs(n):
    rng = np.random.default_rng(n)
    frame = pd.DataFrame({
        "a": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n)),
        "b": np.where(rng.random(n) < 0.1, None, rng.choice(["x", "y"], size=n)).astype(object),
        "c": pd.array(np.where(rng.random(n) < 0.1, None, rng.integers(0, 5, size=n)), dtype="Int64"),
        "dataset": rng.choice(["d0", "d1"], size=n).astype(object),
    })
    for variables in (["a", "b", "c"], ["a", "a", "b"], ["c"], [], ["missing", "a"]):
        for by in ((), ("dataset",)):
            got, want = cohort_masks(frame, variables, True, by), _matrix_way(frame, variables, by)
            assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want))
    if n == 500:  # the case has incomplete rows to drop
        assert not cohort_masks(frame, ["a", "b"], True)[0].all()


def test_a_frame_with_a_repeated_column_name_is_read_as_a_matrix():
    frame = pd.DataFrame([[1.0, np.nan], [2.0, 3.0]], columns=["a", "a"])
    (mask,) = cohort_masks(frame, ["a"], True)
    assert mask.tolist() == [False, True]
