"""ADR 0062 at the node: descriptive statistics, Pearson correlation, the one-sample and paired t-tests,
two-way ANOVA, the contingency table, PCA (with log and exp: amendment 13, the weighted memory the same),
histograms and naive Bayes (amendment 11), k-means (amendment 12), cross-validated linear regression
(amendment 14), logistic regression (amendment 15, every round) and Cox regression (amendment 16)
keep their selection left on disk (a bit a snapshot row, no frame) and answer what the SQL read's frame gave, bit for bit; the ledger records the cohorts of that frame, the counted-set memory the same sets and rows'
times; differential privacy keeps a frame."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from mipflow.node.api.context import StepContext
from mipflow.node.api.step import answer_step
from mipflow.node.home import NodeHome
from mipflow.node.query.read import select_frame
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.api.test_step import body
from tests.nodes import grant_all, load_frame, standard_home
from tests.privacy.conftest import make_rows, rule, where


def _rows():
    """The privacy suite's stroke rows, a few values missing (on a numerical and a nominal variable)."""
    rows = make_rows()
    rows.loc[[3, 50, 51, 200], "glucose_mmol"] = np.nan
    rows.loc[[4, 50, 120], "diabetes"] = None
    return rows


def _node(root: Path, **settings: Any) -> StepContext:
    from mipflow.node.home import KEY_FILE

    home = standard_home(root, "hospital_a")
    # one secret for every case's home: the same ledger keys and cross-validation folds (naive Bayes)
    (root / KEY_FILE).write_text("5a" * 32, encoding="ascii")
    for key, value in settings.items():
        home.set_setting(key, value)
    load_frame(root, STROKE, _rows())
    grant_all(root)
    context = StepContext.open(NodeHome(root))
    _OPEN.append(context)
    return context


#: The contexts a test opened, closed after it (their files: a worker runs thousands of tests).
_OPEN: list[StepContext] = []


@pytest.fixture(autouse=True)
def _closed_contexts() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


CASES = [
    pytest.param("descriptive_stats", ["age", "glucose_mmol", "diabetes"], ["sex"], {}, id="descriptive"),
    pytest.param("pearson_correlation", ["age"], ["glucose_mmol", "nihss_admission"], {}, id="pearson"),
    pytest.param("ttest_onesample", ["glucose_mmol"], [], {"mu": 7.0}, id="one-sample"),
    pytest.param("ttest_paired", ["systolic_bp"], ["age"], {}, id="paired"),
    pytest.param("anova", ["glucose_mmol"], ["sex", "diabetes"], {}, id="two-way-anova"),  # amendment 9
    pytest.param("contingency_table", ["diabetes"], ["sex"], {}, id="contingency"),
    pytest.param("pca", ["age", "glucose_mmol", "nihss_admission"], [], {}, id="pca"),  # amendment 10
    # amendment 13: log and exp a block at a time; the weighted memory (ADR 0058) learns the same rows and weights
    pytest.param("pca_with_transformation", ["age", "glucose_mmol", "nihss_admission"], [],
                 {"data_transformation": {"log": ["age"], "exp": ["glucose_mmol", "nihss_admission"]}},
                 id="pca-transformed"),
    # amendment 11: a time-like variable's bins (the counted-set memory keeps each row's time), levels
    pytest.param("multiple_histograms", ["followup_days"], ["sex"], {"bins": 20}, id="histogram-time"),
    pytest.param("multiple_histograms", ["stroke_type"], ["diabetes"], {}, id="histogram-nominal"),
    pytest.param("naive_bayes_gaussian_cv", ["diabetes"], ["age", "glucose_mmol"], {}, id="gaussian-nb"),
    # amendment 14: each fold's rows narrowed from the node's fold keys kept beside the rows on disk
    pytest.param("linear_regression_cv", ["glucose_mmol"], ["age", "sex"], {"n_splits": 3}, id="linear-cv"),
    # amendment 15: each fold's training rows narrowed from the node's fold keys kept beside the rows on disk
    pytest.param("logistic_regression_cv", ["diabetes"], ["age", "sex"], {"n_splits": 3, "positive_class": "yes"},
                 id="logistic-cv"),
    pytest.param("naive_bayes_categorical_cv", ["diabetes"], ["sex", "hypertension"], {"n_splits": 3},
                 id="categorical-nb"),
]


def counted(root: Path) -> list:
    """The counted-set memory of a node home as what a release let anyone form: each set's size and its rows'
    times on each time-like variable's grid, sorted (the keys themselves are under each home's own secret)."""
    import sqlite3
    import zlib

    from mipflow.node.controls.counted_memory import COUNTED_FILE
    from mipflow.node.controls.keycodec import decode_keys

    with sqlite3.connect(root / COUNTED_FILE) as conn:
        sets = conn.execute("SELECT digest, keys FROM sets").fetchall()
        times = conn.execute("SELECT digest, variable, grid FROM times").fetchall()
    grids = {}
    for digest, variable, grid in times:
        grids.setdefault(digest, []).append(
            (variable, sorted(np.frombuffer(zlib.decompress(grid), dtype="<i4").tolist())))
    return sorted((len(decode_keys(keys)), sorted(grids.get(digest, []))) for digest, keys in sets)


def weighted(root: Path) -> list:
    """The weighted memory of a node home (ADR 0058): each family's releases, their rows' digest and
    fingerprint (of the rows' log weights, under the home's secret: one secret for every case), keys and
    patients."""
    import sqlite3

    from mipflow.node.controls.weighted_ledger import WEIGHTED_FILE

    if not (root / WEIGHTED_FILE).exists():
        return []
    with sqlite3.connect(root / WEIGHTED_FILE) as conn:
        return sorted(conn.execute("SELECT family, data_model, digest, fingerprint, n_rows, keys, patients "
                                   "FROM weighted").fetchall())


@pytest.mark.parametrize("name, y, x, parameters", CASES)
def test_sums_of_rows_on_disk_are_released_as_from_the_frame(name, y, x, parameters, tmp_path) -> None:
    from mipflow.algorithms import get_algorithm
    from mipflow.node.query.snapshot_rows import SnapshotRows
    from mipflow.protocol.request import AnalysisRequest

    filters = where(rule("age", "greater", 40))
    kept: dict[str, list[str]] = {}
    replies: dict[str, Any] = {}
    memories: dict[str, list] = {}
    # the present rows of a variable a few rows short of every row are a cohort beside it: the differencing
    # control refuses such a step, from a frame as from rows on disk, unless min_row_count is 1 (its check off;
    # the cohorts are recorded all the same)
    for case, settings in (("disk", {}), ("sql", {"columnar_snapshot": 0}),
                           ("dp", {"dp_enabled": True, "dp_exempt_algorithms": name})):
        context = _node(tmp_path / case, min_row_count=1, **settings)
        replies[case] = answer_step(context, "central", name,
                                    body(context, y=y, x=x, filters=filters, parameters=parameters,
                                         analysis_id=case))
        kept[case] = [type(v[1]).__name__ for v in context.selections._kept.values()]
        memories[case] = counted(tmp_path / case), weighted(tmp_path / case)
        if case == "disk":  # the ledger recorded the cohorts of the frame the node read before
            algo = get_algorithm(name)
            model = context.data_model(STROKE.key)
            request = AnalysisRequest.from_dict({"inputdata": {"data_model": STROKE.key,
                                                               "datasets": ["hospital_a", "hospital_b",
                                                                            "hospital_c"],
                                                               "x": x, "y": y, "filters": filters},
                                                 "parameters": parameters})
            variables = list(algo.variables(request))
            frame = select_frame(context.store, model, datasets=request.datasets, variables=variables,
                                 filters=filters, complete_case=algo.complete_case, row_identity=True)
            want = context.differencing.cohorts(model.key, frame, variables, algo.complete_case,
                                                getattr(algo, "released_by", ()))
            recorded = context.differencing.ledger.cohorts(model.key)
            assert all(d in recorded for d in want.digests) and len(want.digests) >= 1
            if name == "descriptive_stats":  # per dataset, per variable present, complete: several
                assert len(want.digests) > 3
    assert kept == {"disk": [SnapshotRows.__name__], "sql": ["DataFrame"], "dp": ["DataFrame"]}
    assert replies["disk"]["rows"] == replies["sql"]["rows"] > 0
    # the counted-set memory (ADR 0059) learns the same sets and rows' times from rows on disk (amendment 11)
    assert memories["disk"] == memories["sql"] and len(memories["disk"][0]) >= 1
    if name == "multiple_histograms" and y == ["followup_days"]:  # not vacuous: the rows' times are kept
        assert any(times for _, times in memories["disk"][0])
    if name == "pca_with_transformation":  # not vacuous: five families' releases remembered (amendment 13)
        assert len(memories["disk"][1]) == 5 and all(r[4] == replies["disk"]["rows"] for r in memories["disk"][1])
    assert json.dumps(replies["disk"]["aggregates"], sort_keys=True) == \
        json.dumps(replies["sql"]["aggregates"], sort_keys=True) == \
        json.dumps(replies["dp"]["aggregates"], sort_keys=True)


def test_the_differencing_control_refuses_descriptive_statistics_on_disk_as_from_the_frame(tmp_path) -> None:
    """With min_row_count 10, a variable's present rows (every row but 4) beside every row single out 4
    rows: refused by ``differencing`` from rows on disk as from the SQL read's frame, the same message."""
    from mipflow.exceptions import DisclosureError

    refusals = []
    for case, settings in (("disk", {}), ("sql", {"columnar_snapshot": 0})):
        context = _node(tmp_path / case, min_row_count=10, **settings)
        with pytest.raises(DisclosureError) as refused:
            answer_step(context, "central", "descriptive_stats",
                        body(context, y=["age", "glucose_mmol"], analysis_id=case))
        assert refused.value.control == "differencing"
        refusals.append(str(refused.value))
    assert refusals[0] == refusals[1]


def _memory(root: Path) -> dict[str, list]:
    """The group memory (groups, their value stamps) and the partition memory of a node home, less the times."""
    import sqlite3

    from mipflow.node.controls.groups import GROUPS_FILE
    from mipflow.node.controls.partitions import PARTITIONS_FILE

    with sqlite3.connect(root / GROUPS_FILE) as conn:
        groups = sorted(conn.execute("SELECT data_model, kind, digest, n_rows, threshold, keys, patients, cell "
                                     "FROM groups").fetchall())
        stamps = sorted(conn.execute("SELECT data_model, digest, variable, stamp FROM group_stamps").fetchall())
    with sqlite3.connect(root / PARTITIONS_FILE) as conn:
        partitions = sorted(conn.execute("SELECT key, digest, n_rows, labels FROM partitions").fetchall())
    return {"groups": groups, "stamps": stamps, "partitions": partitions}


def test_kmeans_rounds_on_disk_release_the_frames_and_remember_the_same_clusters(tmp_path) -> None:
    """k-means (ADR 0062, amendment 12) at the node, every Lloyd round until converged or refused: rows kept on
    disk, the SQL read's aggregates bit for bit, the same refusals, and the same group memory (each round's
    clusters, their stamps) and partition memory (the canonical assignments)."""
    from mipflow.algorithms import get_algorithm
    from mipflow.exceptions import DisclosureError
    from mipflow.node.query.snapshot_rows import SnapshotRows
    from mipflow.protocol.request import AnalysisRequest
    from tests.mipflow.node.api.test_step import UNVERIFIED
    from tests.privacy.test_attacks import KMEANS_Y

    algo = get_algorithm("kmeans")
    parameters = {"k": 3, "maxiter": 8}
    request = AnalysisRequest.from_dict({"inputdata": {"data_model": STROKE.key, "datasets": ["hospital_a"],
                                                       "x": [], "y": KMEANS_Y, "filters": None},
                                         "parameters": parameters})
    contexts = {case: _node(tmp_path / case, **settings)
                for case, settings in (("disk", {}), ("sql", {"columnar_snapshot": 0}))}
    state, round_no, outcomes = None, 0, []
    while state is None or not state["final"]:
        replies = {}
        for case, context in contexts.items():
            try:
                replies[case] = answer_step(context, "central", "kmeans",
                                            body(context, y=KMEANS_Y, parameters=parameters, round=round_no,
                                                 state=state, analysis_id="km"), chain=UNVERIFIED)
            except DisclosureError as refused:
                replies[case] = (refused.control, str(refused))
        assert json.dumps(replies["disk"], sort_keys=True, default=str) == \
            json.dumps(replies["sql"], sort_keys=True, default=str)
        if isinstance(replies["disk"], tuple):
            outcomes.append(replies["disk"][0])
            break
        outcomes.append(replies["disk"]["rows"])
        state = algo.global_step(round_no, [replies["disk"]["aggregates"]], request,
                                 contexts["disk"].data_model(STROKE.key), state).state
        round_no += 1
    kept = {case: [type(v[1]).__name__ for v in c.selections._kept.values()] for case, c in contexts.items()}
    assert kept == {"disk": [SnapshotRows.__name__], "sql": ["DataFrame"]}
    assert outcomes[-1] == "differencing" or state["final"]  # here round 2 is refused, alike on both paths
    assert round_no >= 2 and outcomes[0] > 0  # round 0 and at least one Lloyd round answered
    memories = {case: _memory(tmp_path / case) for case in contexts}
    assert memories["disk"] == memories["sql"]
    assert len(memories["disk"]["partitions"]) >= 1 and len(memories["disk"]["groups"]) >= 3
    assert memories["disk"]["stamps"]  # the clusters' value stamps are remembered too


def test_logistic_regression_cv_rounds_on_disk_answer_as_the_frame(tmp_path) -> None:
    """Cross-validated logistic regression (ADR 0062, amendment 15) at the node, every round to the evaluation or a
    refusal: rows kept on disk, the effective rows control (ADR 0054) run on the local step's totals, the SQL read's
    aggregates (the same counts, cells and bins, the sums to 1e-9), the same refusals and the same group memory."""
    from mipflow.algorithms import get_algorithm
    from mipflow.exceptions import DisclosureError
    from mipflow.node.query.snapshot_rows import SnapshotRows
    from mipflow.protocol.request import AnalysisRequest
    from tests.mipflow.node.api.test_step import UNVERIFIED
    from tests.mipflow.node.query.test_snapshot_rows_lrcv import _same_release

    algo = get_algorithm("logistic_regression_cv")
    y, x, parameters = ["diabetes"], ["age", "sex"], {"n_splits": 3, "positive_class": "yes"}
    request = AnalysisRequest.from_dict({"inputdata": {"data_model": STROKE.key, "datasets": ["hospital_a"],
                                                       "x": x, "y": y, "filters": None}, "parameters": parameters})
    contexts = {case: _node(tmp_path / case, **settings)
                for case, settings in (("disk", {}), ("sql", {"columnar_snapshot": 0}))}
    state, round_no, outcomes, result = None, 0, [], None
    while result is None and round_no < 60:
        replies = {}
        for case, context in contexts.items():
            try:
                replies[case] = answer_step(context, "central", algo.name,
                                            body(context, y=y, x=x, parameters=parameters, round=round_no,
                                                 state=state, datasets=["hospital_a"], analysis_id="lrcv"),
                                            chain=UNVERIFIED)
            except DisclosureError as refused:
                replies[case] = (refused.control, str(refused))
        if isinstance(replies["sql"], tuple):
            assert replies["disk"] == replies["sql"]
            outcomes.append(replies["sql"][0])
            break
        assert replies["disk"]["rows"] == replies["sql"]["rows"] > 0
        _same_release(replies["disk"]["aggregates"], replies["sql"]["aggregates"])
        outcomes.append(replies["sql"]["rows"])
        step = algo.global_step(round_no, [replies["sql"]["aggregates"]], request,
                                contexts["sql"].data_model(STROKE.key), state)
        result, state = (step.result, None) if step.done else (None, step.state)
        round_no += 1
    kept = {case: [type(v[1]).__name__ for v in c.selections._kept.values()] for case, c in contexts.items()}
    assert kept == {"disk": [SnapshotRows.__name__], "sql": ["DataFrame"]}
    # round 0, the Newton rounds (their effective rows checked) and the evaluation answered on both paths
    assert round_no >= 4 and result is not None
    assert sum(result["confusion_matrix"].values()) == outcomes[0]
    memories = {case: _memory(tmp_path / case) for case in contexts}
    assert memories["disk"] == memories["sql"] and memories["disk"]["groups"]


def _windows(root: Path) -> list:
    """The survival releases' rows by time remembered at a node home (ADR 0059 amended), keys and all (one secret
    for every case's home)."""
    import sqlite3

    from mipflow.node.controls.pooled_windows import WINDOWS_FILE

    if not (root / WINDOWS_FILE).exists():
        return []
    with sqlite3.connect(root / WINDOWS_FILE) as conn:
        return sorted(conn.execute("SELECT kind, data_model, digest, binding, time_variable, event_variable, keys, "
                                   "patients, times, levels, ends FROM releases").fetchall())


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_cox_rounds_on_disk_answer_as_the_frame_and_remember_the_same_rows(ties, tmp_path) -> None:
    """Cox regression (ADR 0062, amendment 16) at the node, round 0 and the start round: rows kept on disk, the SQL
    read's aggregates bit for bit, and the same memories: the ledger's cohorts, the released groups (the events
    alone and per level, each nominal covariate's levels) and the survival releases' rows by
    time (ADR 0059 amended), which need the rows' order the streamed cohorts do not keep."""
    from mipflow.algorithms import get_algorithm
    from mipflow.node.query.snapshot_rows import SnapshotRows
    from mipflow.protocol.request import AnalysisRequest
    from tests.mipflow.node.api.test_step import UNVERIFIED

    algo = get_algorithm("cox_regression")
    y, x = ["followup_days", "death_90d"], ["age", "sex", "nihss_admission"]
    parameters = {"event_level": "yes", "bin_width": 30.0, "ties": ties}
    request = AnalysisRequest.from_dict({"inputdata": {"data_model": STROKE.key, "datasets": ["hospital_a"],
                                                       "x": x, "y": y, "filters": None}, "parameters": parameters})
    contexts = {case: _node(tmp_path / case, **settings)
                for case, settings in (("disk", {}), ("sql", {"columnar_snapshot": 0}))}
    state, replies = None, {}
    for round_no in (0, 1):
        for case, context in contexts.items():
            replies[case] = answer_step(context, "central", algo.name,
                                        body(context, y=y, x=x, parameters=parameters, round=round_no, state=state,
                                             datasets=["hospital_a"], analysis_id="cox"), chain=UNVERIFIED)
        assert replies["disk"]["rows"] == replies["sql"]["rows"] > 0
        assert json.dumps(replies["disk"]["aggregates"], sort_keys=True) == \
            json.dumps(replies["sql"]["aggregates"], sort_keys=True)
        state = algo.global_step(round_no, [replies["sql"]["aggregates"]], request,
                                 contexts["sql"].data_model(STROKE.key), state).state
    assert state["phase"] == "sums"  # round 0 (the bins) and the start round (the centre) answered
    kept = {case: [type(v[1]).__name__ for v in c.selections._kept.values()] for case, c in contexts.items()}
    assert kept == {"disk": [SnapshotRows.__name__], "sql": ["DataFrame"]}
    memories = {case: (_memory(tmp_path / case), _windows(tmp_path / case),
                       sorted(contexts[case].differencing.ledger.cohorts(STROKE.key)))
                for case in contexts}
    assert memories["disk"] == memories["sql"]
    groups, windows, cohorts = memories["disk"]
    assert groups["groups"] and cohorts
    assert windows and all(w[7] is not None for w in windows)  # the rows by time, with their patients


def test_a_context_closes_its_files_and_opens_them_again_on_the_next_step(tmp_path) -> None:
    """``StepContext.close``: the store's connections, the audit log and every control's SQLite file are released
    (a worker running thousands of in-process tests ran out of descriptors before), and the next step reopens them
    and is answered alike."""
    import os

    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    context = _node(tmp_path / "node", min_row_count=1)
    ask = {"y": ["age", "glucose_mmol"], "x": [], "filters": None, "parameters": {}}
    first = answer_step(context, "central", "descriptive_stats", body(context, **ask, analysis_id="one"))
    held = open_files()
    context.close()
    assert open_files() < held
    again = answer_step(context, "central", "descriptive_stats", body(context, **ask, analysis_id="two"))
    assert "aggregates" in first and again["aggregates"] == first["aggregates"]
