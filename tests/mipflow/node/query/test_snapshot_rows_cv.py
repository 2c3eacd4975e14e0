"""Cross-validated linear regression from a snapshot's selection left on disk (ADR 0062, amendment 14): the node's
folds dealt from the fold keys it keeps beside the rows, each fold's rows narrowed from them; round 0 (each fold's
count, moments and level counts) and round 1 (each test fold's rows, sums of squared and absolute residuals, the
moments of ``y``) are the frame path's bit for bit, and equal to plain numpy's on the pooled rows to 1e-9; the same
cohorts, stamps and released groups (``same_controls``).

Blocks of 1, 7, 64 rows and the whole selection (``streamed.blocks_and_selections``), the selections of the
streamed group tests (missing values on and beside blocks' edges, a scattered filter, one leaving no row).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from mipflow.algorithms.crossval import FOLD_KEY, deal_folds
from mipflow.node.controls.folds import fold_key
from mipflow.protocol.wire import transport

from tests.mipflow.node.query.test_snapshot_rows_counts import folded_both, same_controls
from tests.mipflow.node.query.test_snapshot_rows_groups import MODEL, ON_BLOCKS, SECRET
from tests.mipflow.node.query import test_snapshot_rows_groups

store = test_snapshot_rows_groups.store  # the fixture: the groups file's rows at each block size

LINEAR_CV = [
    pytest.param(["y"], ["x1", "x2"], {"n_splits": 3}, id="numerical"),
    pytest.param(["y"], ["x1", "grp", "arm"], {}, id="nominal-covariates"),
]
FOLD_KEY_OF_THE_NODE = fold_key(SECRET)


@pytest.mark.parametrize("y, x, parameters", LINEAR_CV)
@ON_BLOCKS
def test_linear_regression_cv_of_rows_on_disk_releases_the_frames(y, x, parameters, datasets, filters, store,
                                                                  tmp_path):
    algo, request, frame, rows, local = folded_both("linear_regression_cv", store, datasets, filters, y, x,
                                                    parameters)
    first = [transport(algo.local_step(0, data, request, MODEL, None)) for data in (rows, local)]
    assert json.dumps(first[0], sort_keys=True) == json.dumps(first[1], sort_keys=True)
    n_splits = len(first[0]["folds"])
    labels = deal_folds(local[FOLD_KEY].to_numpy(), n_splits)
    assert [f["moments"]["n"] for f in first[0]["folds"]] == np.bincount(labels, minlength=n_splits).tolist()
    same_controls(algo, request, frame, rows, local, list(algo.variables(request)), tmp_path)
    if len(frame) < 10 * n_splits:
        return
    state = algo.global_step(0, [first[1]], request, MODEL, None).state
    second = [transport(algo.local_step(1, data, request, MODEL, state)) for data in (rows, local)]
    assert json.dumps(second[0], sort_keys=True) == json.dumps(second[1], sort_keys=True)
    # each test fold's numbers against plain numpy on the pooled rows (not vacuous)
    values = local[y[0]].to_numpy(dtype=float)
    for k, (fitted, part) in enumerate(zip(state["models"], second[0]["folds"], strict=True)):
        chosen = labels == k
        design = np.column_stack([np.ones(int(chosen.sum())) if c == "Intercept" else
                                  local.loc[chosen, c].to_numpy(dtype=float) if c in local.columns else
                                  (local.loc[chosen, c.split("[")[0]] == c.split("[")[1][:-1]).to_numpy(dtype=float)
                                  for c in fitted["columns"]])
        resid = values[chosen] - design @ np.asarray(fitted["coefficients"])
        assert part["n"] == int(chosen.sum()) > 0
        np.testing.assert_allclose([part["sum_sq_resid"], part["sum_abs_resid"]],
                                   [resid @ resid, np.abs(resid).sum()], rtol=1e-9)
        np.testing.assert_allclose(part["y"]["mean"], [values[chosen].mean()], rtol=1e-9)
    result = algo.global_step(1, [second[1]], request, MODEL, state).result
    assert len(result["folds"]["r_squared"]) == n_splits
