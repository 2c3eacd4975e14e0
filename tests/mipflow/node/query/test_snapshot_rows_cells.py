"""Two-way ANOVA and the contingency table (and PCA, amendment 10) from a snapshot's selection left on disk
(ADR 0062, amendment 9):
their releases are the frame path's bit for bit (two-way ANOVA's cell means and within-cell sum of squares:
numpy's pairwise sums followed over each cell's rows a block at a time), and their released groups (cells and
margins) and value stamps are the frame's.  Blocks of 7 rows and the whole selection; cells of more than 128
rows (the pairwise recursion splits them); missing values on and beside blocks' edges in both factors; a level
no row holds and a rare one; filters leaving scattered rows and no row.
"""
from __future__ import annotations

import json

import pytest

from mipflow.algorithms import get_algorithm
from mipflow.algorithms.local import prepare_local_data
from mipflow.node.controls.differencing import DifferencingGuard
from mipflow.node.controls.groups import group_release
from mipflow.protocol.wire import transport

from tests.mipflow.node.query.streamed import EDGE_SELECTIONS, block_store, number_rule, stream_blocks
from tests.mipflow.node.query.test_snapshot_rows_groups import (
    BLOCK, KEY, MODEL, SECRET, _both, _request, _rows, _same_groups,
)


@pytest.fixture(params=[7, 100_000], ids=["seven", "whole"])
def store(tmp_path, monkeypatch, request):
    size = request.param
    stream_blocks(monkeypatch, size)
    with block_store(tmp_path, monkeypatch, MODEL, _rows(), 8 if size < BLOCK else BLOCK) as store:
        yield store


SELECTIONS = [p.values for p in EDGE_SELECTIONS] + [
    (["b"], number_rule("x1", "greater", 1e6)),
    (["a", "b"], number_rule("band", "greater", 20)),
]
STEPS = [
    ("anova", ["y"], ["grp", "arm"], {"sstype": 2}),
    ("anova", ["x2"], ["arm", "event"], {"sstype": 1}),
    ("contingency_table", ["grp"], ["arm"], {}),
    ("contingency_table", ["event"], ["grp"], {}),
    ("pca", ["y", "x1", "x2"], [], {}),  # amendment 10: no cell, its moments (matrix) as the frame's
]


def test_cells_of_rows_on_disk_release_what_the_frame_gives(store, tmp_path):
    settings = type("S", (), {"min_row_count": 10, "nfilter_tab": 3})()
    big_cells = groups = 0
    for name, y, x, parameters in STEPS:
        algo = get_algorithm(name)
        assert algo.streams_rows
        for datasets, filters in SELECTIONS:
            request = _request(datasets, filters, y, x, parameters)
            variables = list(algo.variables(request))
            frame, rows = _both(store, datasets, filters, variables)
            local = prepare_local_data(algo, frame, request)
            got, want = (algo.local_step(0, data, request, MODEL, None) for data in (rows, local))
            assert json.dumps(transport(got), sort_keys=True) == json.dumps(transport(want), sort_keys=True)
            counts = want["group_counts"] if name == "contingency_table" else want["group_n"]
            assert sum(counts) == len(frame)  # not vacuous: every complete row in one cell
            big_cells += sum(c > 128 for c in counts)
            guard = DifferencingGuard(tmp_path, SECRET)
            cohorts = guard.cohorts(MODEL.key, frame, variables, True), guard.cohorts_of_rows(MODEL.key, rows,
                                                                                               variables, True)
            assert cohorts[1].digests == cohorts[0].digests and cohorts[1].stamps == cohorts[0].stamps
            want_release = group_release(algo, local, request, MODEL, cohorts[0], settings, KEY)
            got_release = group_release(algo, rows, request, MODEL, cohorts[1], settings, KEY)
            if want_release is None:
                assert got_release is None and (len(frame) == 0 or name == "pca")
                continue
            _same_groups(got_release.groups, want_release.groups)  # cells, then both factors' margins
            assert got_release.union_digest == want_release.union_digest
            assert got_release.union_stamps == want_release.union_stamps
            groups += len(want_release.groups)
    assert big_cells >= 8 and groups >= 40
