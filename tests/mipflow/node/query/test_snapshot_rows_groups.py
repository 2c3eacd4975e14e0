"""Released groups from a snapshot's selection left on disk (ADR 0051, ADR 0062): the group release (each
group's kind, rows, patients, digest, cell or margin, in order; the union) computed from the snapshot's
level codes and keys a block at a time is the frame path's; the independent t-test, one-way ANOVA and
linear and logistic regression with nominal covariates (two and three: each pair's joint cells, ADR 0051
amended for the sixteenth review) release what the frame gives, bit for bit; the
cohorts' value stamps (ADR 0061 hole 2) are the frame's.

Blocks of 1, 7, 64 rows and the whole selection; missing values on and beside blocks' edges (numerical and
nominal); a level no row holds (``w``) and a rare one (``r``).  The groups' and the union's value stamps (ADR 0061,
the group memory's) are the frame's too.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import get_algorithm
from mipflow.algorithms.contract import ReleasedGroups
from mipflow.algorithms.local import prepare_local_data
from mipflow.node.controls.differencing import DifferencingGuard, hash_key
from mipflow.node.controls.group_stamps import frame_group_stamps
from mipflow.node.controls.groups import group_release, level_groups
from mipflow.node.controls.groups_rows import rows_level_groups, rows_stamped_groups
from mipflow.node.query.read import _check_variables, select_frame, select_rows
from mipflow.node.query.snapshot import current_snapshot, select_columns
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import transport

from tests.mipflow.node.query.streamed import (EDGE_SELECTIONS, block_model, block_store, blocks_and_selections,
                                               number_rule, stream_blocks)

SECRET = b"node secret of the streamed group tests"
KEY = hash_key(SECRET)
BLOCK = 64  # snapshot rows read at a time (a multiple of 8)
ROWS = 10 * BLOCK
MODEL = block_model(
    "grs", "Streamed groups",
    {"code": "y", "sql_type": "real", "isCategorical": False},
    {"code": "band", "sql_type": "int", "isCategorical": False},
    {"code": "grp", "sql_type": "text", "isCategorical": True,
     "enumerations": [{"code": c, "label": c} for c in ("w", "v", "u", "r")]},  # "w" never stored
    {"code": "arm", "sql_type": "text", "isCategorical": True,
     "enumerations": [{"code": c, "label": c} for c in ("ctl", "trt")]},
    {"code": "event", "sql_type": "text", "isCategorical": True,
     "enumerations": [{"code": c, "label": c} for c in ("no", "yes")]},
    # a declared range (a histogram's bins over it, ADR 0062 amendment 11)
    {"code": "dose", "sql_type": "real", "isCategorical": False, "minValue": 0, "maxValue": 10})


def _rows() -> pd.DataFrame:
    rng = np.random.default_rng(51)
    x1 = 1e6 + rng.normal(0, 1.0, ROWS)
    x2 = -2e5 + rng.normal(0, 3.0, ROWS)
    grp = rng.choice(["v", "u"], ROWS).astype(object)
    grp[[30, 300, 301]] = "r"  # a rare level
    arm = rng.choice(["trt", "ctl"], ROWS).astype(object)
    y = 5e6 + 0.7 * (x1 - 1e6) + 2.0 * (grp == "u") + rng.normal(0, 0.5, ROWS)
    eta = 0.9 * (x1 - 1e6) + 0.6 * (grp == "v") - 0.4 * (arm == "trt")
    frame = pd.DataFrame({
        "_pid": [f"p{i // 2:05d}" for i in range(ROWS)], "_visit": [f"v{i % 2}" for i in range(ROWS)],
        "dataset": np.where(np.arange(ROWS) % 3 == 0, "b", "a"),
        "x1": x1, "x2": x2, "y": y, "band": np.arange(ROWS) // BLOCK, "grp": grp, "arm": arm,
        "event": np.where(rng.random(ROWS) < 1 / (1 + np.exp(-eta)), "yes", "no")})
    frame.loc[[5, 64, 200, 639], "x2"] = np.nan  # on and beside blocks' edges
    frame.loc[[0, 63, 64, 300], "y"] = np.nan
    frame.loc[[1, 127, 128, 400], "grp"] = None
    frame.loc[[2, 191, 192], "arm"] = None
    # quarters from -1 to 11 (on bins' edges, outside the range, at both ends), a few missing
    frame["dose"] = np.random.default_rng(52).integers(-4, 45, ROWS) / 4.0
    frame.loc[[10, 11], "dose"] = [0.0, 10.0]
    frame.loc[[6, 65, 255, 256], "dose"] = np.nan
    return frame


@pytest.fixture
def store(tmp_path, monkeypatch, request):
    """Every pass's blocks of ``request.param`` rows, the snapshot's reads of ``BLOCK`` (8 at the smallest:
    the packed mask's bytes); also the store of the files comparing other algorithms on these rows."""
    size = request.param
    stream_blocks(monkeypatch, size)
    with block_store(tmp_path, monkeypatch, MODEL, _rows(), max(8, min(size, BLOCK) // 8 * 8)) as opened:
        yield opened


SELECTIONS = [
    *EDGE_SELECTIONS,
    pytest.param(["b"], number_rule("x1", "greater", 1e6), id="scattered"),
    pytest.param(["a", "b"], number_rule("band", "greater", 20), id="no-row"),
]
#: every selection at every block size (``store`` indirect), one-row blocks for two of them
ON_BLOCKS = pytest.mark.parametrize("store, datasets, filters", blocks_and_selections(SELECTIONS),
                                    indirect=["store"])


def _request(datasets, filters, y, x, parameters=None):
    return AnalysisRequest.from_dict({"inputdata": {"data_model": MODEL.key, "datasets": datasets, "x": list(x),
                                                    "y": list(y), "filters": filters},
                                      "parameters": parameters or {}})


def _both(store, datasets, filters, variables):
    """The snapshot's frame (the node's complete-case read before) and the same rows left on disk."""
    frame = select_columns(current_snapshot(store, MODEL, KEY), MODEL, _check_variables(MODEL, variables),
                           datasets, filters, KEY)
    rows = select_rows(store, MODEL, datasets=datasets, variables=variables, filters=filters, row_key=KEY)
    assert frame is not None and rows is not None and len(rows) == len(frame)
    return frame, rows


def _same_groups(got, want) -> None:
    assert [g.kind for g in got] == [g.kind for g in want]  # the same groups in the same order
    assert [g.digest for g in got] == [g.digest for g in want]
    assert [g.cell for g in got] == [g.cell for g in want]
    for mine, theirs in zip(got, want):
        np.testing.assert_array_equal(mine.rows, theirs.rows)
        np.testing.assert_array_equal(mine.patients, theirs.patients)
        assert mine.stamps == theirs.stamps


#: ten bins over dose's declared range, every edge a quarter (values fall on them)
DOSE_EDGES = tuple(float(e) for e in np.linspace(0.0, 10.0, 11))
GROUPINGS = [
    pytest.param([ReleasedGroups(("grp",))], id="one-way"),
    pytest.param([ReleasedGroups(("grp",), (("u", "r"),))], id="two-levels"),
    pytest.param([ReleasedGroups(("grp", "arm"))], id="two-way-cells-and-margins"),
    pytest.param([ReleasedGroups(("arm",)), ReleasedGroups(("grp",)), ReleasedGroups(("arm",))], id="three"),
    # a binary response's classes (the positive one, the rest), alone and per level (ADR 0051, fifteenth review)
    pytest.param([ReleasedGroups(("grp",), (("u",),), rest=True)], id="class-and-rest"),
    pytest.param([ReleasedGroups(("arm", "grp"), (("trt",), None), rest=True), ReleasedGroups(("grp",))],
                 id="class-per-level"),
    # a histogram's bins over the declared range, alone and by a level (ADR 0062, amendment 11)
    pytest.param([ReleasedGroups(("dose",), bins=(DOSE_EDGES,), suppressed=True),
                  ReleasedGroups(("dose", "grp"), bins=(DOSE_EDGES, None), suppressed=True)], id="bins"),
]


@pytest.mark.parametrize("groupings", GROUPINGS)
@ON_BLOCKS
def test_the_groups_of_rows_on_disk_are_the_frames(groupings, datasets, filters, store, tmp_path):
    variables = ["y", "x1", "grp", "arm", "dose"]
    frame, rows = _both(store, datasets, filters, variables)
    cohorts = DifferencingGuard(tmp_path, SECRET).cohorts(MODEL.key, frame, variables, True)
    want, want_union = level_groups(frame, cohorts.order, groupings, MODEL, MODEL.key,
                                    patients=cohorts.patient_order)
    got, got_union = rows_level_groups(rows, groupings, MODEL.key)
    _same_groups(got, want)
    np.testing.assert_array_equal(got_union, want_union)
    if len(frame) and groupings[0].bins is not None:  # not vacuous: bins, the last one closed, and bin x level cells
        kinds = [json.loads(g.kind)[1] for g in want]
        assert ["dose", "[9.0, 10.0]"] in [pair for k in kinds for pair in k] and any(len(k) == 2 for k in kinds)
    elif len(frame):  # not vacuous: the rows' groups, the rare level's among them
        # the rare level is a group of its own unless it is in a rest (every level but the declared ones)
        alone = not any(g.rest and "grp" in g.columns and g.levels[g.columns.index("grp")] is not None
                        for g in groupings)
        assert len(want) >= 1 and any(len(g.rows) <= 3 for g in want) == ("r" in set(frame["grp"]) and alone)
    # the value stamps of every group and of the union (ADR 0061), streamed and from the frame
    read = ["y", "grp", "x1"]
    stamped, stamped_union = frame_group_stamps(frame, cohorts.order, want, want_union, read, KEY)
    got, got_union, got_stamps = rows_stamped_groups(rows, groupings, MODEL.key, KEY, read)
    _same_groups(got, stamped)
    assert got_stamps == stamped_union and set(got_stamps) == set(read)
    if want_union.size == len(cohorts.sets[0]):  # every complete row in a released cell: the cohort's stamps
        assert got_stamps == {c: cohorts.stamps[0][c] for c in read}
    if len(groupings) == 1 and len(groupings[0].columns) == 1:  # disjoint cells: their stamps add to the union's
        total = {c: sum(g.stamps[c] for g in got) % 2 ** 64 for c in read}
        assert total == got_stamps
    if len(got) >= 2:  # not vacuous: groups of other rows have other stamps
        assert got[0].stamps["y"] != got[1].stamps["y"]


STEPS = [
    pytest.param("ttest_independent", ["y"], ["grp"], {"groupA": "u", "groupB": "v"}, id="ttest"),
    pytest.param("ttest_independent", ["y"], ["grp"], {"groupA": "w", "groupB": "r"}, id="ttest-empty-level"),
    pytest.param("anova_oneway", ["y"], ["grp"], {}, id="anova"),
    pytest.param("linear_regression", ["y"], ["x1", "grp", "arm"], {}, id="linear-nominal"),
    pytest.param("linear_regression", ["y"], ["grp", "arm", "event"], {}, id="linear-three-nominal"),
    pytest.param("logistic_regression", ["event"], ["x1", "grp", "arm"], {"positive_class": "yes"},
                 id="logistic-nominal"),
]


@pytest.mark.parametrize("name, y, x, parameters", STEPS)
@ON_BLOCKS
def test_group_releasing_steps_on_disk_release_the_frames_and_the_same_groups(name, y, x, parameters, datasets,
                                                                             filters, store, tmp_path):
    algo = get_algorithm(name)
    request = _request(datasets, filters, y, x, parameters)
    variables = list(algo.variables(request))
    frame, rows = _both(store, datasets, filters, variables)
    local = prepare_local_data(algo, frame, request)
    released = [json.dumps(transport(algo.local_step(0, data, request, MODEL, None)), sort_keys=True)
                for data in (rows, local)]
    assert released[0] == released[1]
    guard = DifferencingGuard(tmp_path, SECRET)
    want = guard.cohorts(MODEL.key, frame, variables, True)
    got = guard.cohorts_of_rows(MODEL.key, rows, variables, True)
    assert got.digests == want.digests and got.stamps == want.stamps and len(want.stamps[0]) == len(variables)
    settings = type("S", (), {"min_row_count": 10, "nfilter_tab": 3})()
    want_release = group_release(algo, local, request, MODEL, want, settings, KEY)
    got_release = group_release(algo, rows, request, MODEL, got, settings, KEY)
    if want_release is None:  # no row in a released group (no row, or only levels no row holds here)
        assert got_release is None and not any(g in set(local[x[-1]]) for g in parameters.values())
        return
    _same_groups(got_release.groups, want_release.groups)  # their value stamps too (ADR 0061)
    assert all(set(g.stamps) == set(variables) for g in got_release.groups)
    assert got_release.union_digest == want_release.union_digest
    assert got_release.union_stamps == want_release.union_stamps and set(got_release.union_stamps) == set(variables)
    assert (got_release.threshold, got_release.setting) == (want_release.threshold, want_release.setting)
    if name == "linear_regression" and len(local):  # not vacuous: each pair's joint cells are cells (round 16)
        pairs = {tuple(sorted(c for c, _ in json.loads(g.kind)[1])) for g in want_release.groups if g.cell}
        assert pairs == {tuple(sorted(p)) for i, a in enumerate(x[1:] if x[0] == "x1" else x)
                         for p in [(a, b) for b in (x[1:] if x[0] == "x1" else x)[i + 1:]]}
    if name == "anova_oneway" and len(local) >= 3:  # the pooled statistics, to 1e-9, per level present
        record = json.loads(released[0])["groups"]
        for level, part in zip(MODEL.variable("grp").enumeration_codes, record):
            values = local.loc[local["grp"] == level, "y"].to_numpy()
            assert part["n"] == len(values)
            if len(values):
                np.testing.assert_allclose(part["mean"], [values.mean()], rtol=1e-12)
                np.testing.assert_allclose(part["m2"], [((values - values.mean()) ** 2).sum()], rtol=1e-9)


@ON_BLOCKS
def test_the_stamps_of_cohorts_with_missing_values_on_disk_are_the_frames(datasets, filters, store, tmp_path):
    """Descriptive statistics' cohorts (every row, each variable present, complete; per dataset): each with
    the frame's stamps of every column it reads (before, rows on disk carried none)."""
    algo = get_algorithm("descriptive_stats")
    request = _request(datasets, filters, ["y", "grp"], ["x2"])
    variables = list(algo.variables(request))
    frame = select_frame(store, MODEL, datasets=datasets, variables=variables, filters=filters,
                         complete_case=False, row_identity=True)
    rows = select_rows(store, MODEL, datasets=datasets, variables=variables, filters=filters, row_key=KEY,
                       complete_case=False, dataset=True)
    guard = DifferencingGuard(tmp_path, SECRET)
    want = guard.cohorts(MODEL.key, frame, variables, False, algo.released_by)
    got = guard.cohorts_of_rows(MODEL.key, rows, variables, False, algo.released_by)
    assert got.digests == want.digests
    assert got.stamps == want.stamps and len(got.stamps) == len(got.sets)
    assert got.patient_stamps == want.patient_stamps and len(got.patient_stamps) == len(got.sets)
    assert set(got.cells) == set(want.cells) == set(want.stamps[0])
    for column, (keys, digests) in want.cells.items():  # every row read (the union of the cohorts)
        np.testing.assert_array_equal(keys, got.cells[column][0])
        np.testing.assert_array_equal(digests, got.cells[column][1])
        np.testing.assert_array_equal(keys, got.sets[0])
    if len(frame):
        assert len({json.dumps(s, sort_keys=True) for s in got.stamps}) == len(got.stamps) >= 2
