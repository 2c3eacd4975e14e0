"""Design columns without the design matrix (mipflow.algorithms.design, ADR 0049 amended): the same
values as design_matrix, the frame's own float columns not copied, and the linear and logistic local
steps releasing bit for bit what they released when they built the matrix."""
from __future__ import annotations

import numpy as np
import pytest

from mipflow.algorithms import get_algorithm
from mipflow.algorithms.design import design_columns_of, design_matrix, level_counts
from mipflow.algorithms.moments import compute_moments
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request

X = ("x1", "grp", "age", "sex", "x2")


def _data(n: int = 3000):
    data = make_data(7, n)
    data["age"] = data["age"].astype("int64")  # an integer column: converted, not viewed
    return data.dropna(subset=[*X, "y", "outcome"]).reset_index(drop=True)


@pytest.mark.parametrize("kwargs", [{}, {"intercept": False}, {"columns": ["Intercept", "x2", "grp[b]", "age"]}])
def test_design_columns_are_the_design_matrix_columns(kwargs):
    data = _data()
    matrix, names = design_matrix(data, X, MODEL, **kwargs)
    columns, same = design_columns_of(data, X, MODEL, **kwargs)
    assert same == names and len(columns) == matrix.shape[1]
    for j, column in enumerate(columns):
        assert column.dtype == np.float64 and np.array_equal(column, matrix[:, j])
        assert not column.flags.writeable
    # a float64 covariate is the frame's own column (no copy), and cannot be written through
    x1 = columns[names.index("x1")] if "x1" in names else None
    if x1 is not None:
        assert np.shares_memory(x1, data["x1"].to_numpy())
        with pytest.raises(ValueError):
            x1[0] = 0.0


def test_a_centred_design_is_the_design_minus_the_centre_bit_for_bit():
    data = _data()
    columns = ["Intercept", "x1", "grp[b]", "grp[c]", "age", "x2"]
    centre = [2.01, 0.31, 0.19, 55.5, 1000.000123]
    want, _ = design_matrix(data, X, MODEL, columns=columns)
    want[:, 1:] -= np.asarray(centre, dtype=float)
    got, _ = design_matrix(data, X, MODEL, columns=columns, center=centre)
    assert np.array_equal(got, want) and got.flags.f_contiguous
    with pytest.raises(ValueError):
        design_matrix(data, X, MODEL, columns=columns, center=centre[:-1])


def test_linear_and_logistic_first_rounds_release_what_the_matrix_gave():
    data = _data(70_000)  # more rows than one moments block
    linear = get_algorithm("linear_regression")
    req = request(x=X, y=("y",))
    z, _ = design_matrix(data, [*X, "y"], MODEL, intercept=False)
    assert linear.local_step(0, data, req, MODEL, None)["moments"] == compute_moments(z, matrix=True).to_dict()
    logistic = get_algorithm("logistic_regression")
    req = request(x=X, y=("outcome",), positive_class="yes")
    design, _ = design_matrix(data, X, MODEL, intercept=False)
    out = logistic.local_step(0, data, req, MODEL, None)
    assert out["moments"] == compute_moments(design).to_dict()
    assert out["level_counts"] == level_counts(data, X, MODEL)
