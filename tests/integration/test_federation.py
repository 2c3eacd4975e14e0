"""The federation end to end: central driver -> signed HTTP -> three real node processes.

1. Exareme2's validation suite through :func:`mipflow.central.rounds.run_analysis` over three
   running nodes, compared with the expected results to the tolerances of the in-process test
   (``tests/mipflow/algorithms/test_exareme2_validation.py``, whose :func:`check_case` is
   reused, and which compares every case in process).  Over HTTP run the cases that cover every
   feature of the algorithm's cases (data model, which nodes are refused and by which control,
   filters, parameter names and choices: :func:`_http_cases`); nodes with no matching rows must
   be refused (``min_row_count``) and listed in ``outcome.excluded``.  For every case, the rows
   each node's SQL read selects are counted against pandas (``test_exareme2_case_rows_at_the_nodes``).
2. Federated == pooled on random splits: Hypothesis assigns the rows of one
   fixed synthetic data set to the three nodes (sometimes leaving one empty),
   the nodes' stores are reloaded, and the pooled-reference properties of
   ``tests/mipflow/algorithms/test_federated_vs_pooled.py`` (statsmodels /
   scipy, relative error <= 1e-9) run with their ``federated`` call routed
   through HTTP.
3. Disclosure through the federation, with default node settings: a node
   under ``min_row_count`` is left out with its reason and the others give the
   result; ``min_nodes`` turns that into a :class:`FederationError` naming
   every node's reason; a node without the data model, a node dropping out
   mid-analysis and a threshold changed on a running node are handled too.

The nodes stay up for the whole module; the worst relative errors are printed
in a terminal summary section (not under xdist, whose workers print none).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mipflow.algorithms import AnalysisRequest, get_algorithm, prepare_local_data, run_in_process
from mipflow.algorithms.filters_pandas import apply_filters, filter_variables
from mipflow.protocol.signing import issue_client
from mipflow.node.home import NodeHome
from mipflow.protocol.datamodel import DataModel, load_data_model
from mipflow.exceptions import FederationError, RequestError
from mipflow.central.client import NodeClient, NodeEndpoint, NodeUnavailable
from mipflow.central.rounds import AnalysisOutcome, run_analysis
from mipflow.node.query.read import count_rows
from mipflow.node.store.feature_store import FeatureStore
from tests.mipflow.algorithms import synthetic
from tests.mipflow.algorithms import test_federated_vs_pooled as pooled_props
from tests.mipflow.algorithms.helpers import (
    ErrorSummary, assert_rel_close, read_dataset_csvs, rel_error,
)
from tests.mipflow.algorithms.test_exareme2_validation import (
    ALGORITHMS, KMEANS_OTHER_OPTIMUM, check_case, expected_path, expects_error, load_cases,
)
from tests.nodes import PROJECT, RESEARCHER, free_port, grant_all, load_frame, pin_each_other, served_clients
from tests.nodes import standard_home

pytestmark = pytest.mark.xdist_group("federation")

#: One node per dataset family of the dementia CSVs (as the in-process validation).
FAMILIES = {"node_edsd": "edsd", "node_ppmi": "ppmi", "node_desd": "desd-synthdata"}
NODES = tuple(FAMILIES)

#: Filled by this module, printed in its own terminal summary sections.
HTTP_VALIDATION = ErrorSummary()
HTTP_POOLED = ErrorSummary()


class _SummaryPlugin:
    """Registered by the federation fixture: prints the worst errors seen over HTTP."""

    def pytest_terminal_summary(self, terminalreporter, exitstatus, config) -> None:
        for title, summary in (("Exareme2 expected results via HTTP", HTTP_VALIDATION),
                               ("federated via HTTP vs pooled (statsmodels/scipy)", HTTP_POOLED)):
            lines = summary.lines()
            if lines:
                terminalreporter.section(f"mipflow federation: {title}")
                for line in lines:
                    terminalreporter.write_line(line)


def _register_summary(config) -> None:
    if not config.pluginmanager.has_plugin("mipflow-federation-summary"):
        config.pluginmanager.register(_SummaryPlugin(), "mipflow-federation-summary")


# --------------------------------------------------------------------------- the three nodes


def _family_node(dataset: str) -> str:
    for node, prefix in FAMILIES.items():
        if dataset.startswith(prefix):
            return node
    raise AssertionError(f"dataset {dataset!r} belongs to no node")


def _round_robin(datasets: pd.Series) -> pd.Series:
    names = sorted(datasets.unique())
    node_of = {name: NODES[i % len(NODES)] for i, name in enumerate(names)}
    return datasets.map(node_of)


def _csv_files(folder: Path) -> list[Path]:
    # no validation case uses the *_test datasets (checked by the in-process test)
    return sorted(p for p in folder.glob("*.csv") if "-test" not in p.name)


@dataclass
class Federation:
    """Three running nodes, their clients, and a pandas copy of what each holds."""

    roots: dict[str, Path]
    clients: list[NodeClient]
    #: data model key -> (model, node name -> typed frame of that node's rows)
    frames: dict[str, tuple[DataModel, dict[str, pd.DataFrame]]] = field(default_factory=dict)

    def run(self, algorithm: str, doc: dict, *, min_nodes: int = 1) -> AnalysisOutcome:
        return run_analysis(algorithm, doc, self.clients, researcher=RESEARCHER, project=PROJECT,
                            min_nodes=min_nodes)

    #: (algorithm, request as JSON) -> :meth:`expected_rows` (the frames do not change)
    _rows: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)

    def expected_rows(self, algorithm: str, doc: dict) -> dict[str, int]:
        """Rows each node should use (datasets, filters, complete case), computed with pandas."""
        key = (algorithm, json.dumps(doc, sort_keys=True))
        if key not in self._rows:
            request = AnalysisRequest.from_dict(doc)
            model, frames = self.frames[request.data_model]
            algo = get_algorithm(algorithm)
            # only the columns the datasets, the filters and the algorithm read (the same rows, faster)
            wanted = dict.fromkeys(["dataset", *filter_variables(request.filters), *algo.variables(request)])
            out = {}
            for node, frame in frames.items():
                frame = frame[[c for c in wanted if c in frame.columns]]
                chosen = apply_filters(frame[frame["dataset"].isin(request.datasets)], request.filters, model)
                out[node] = len(prepare_local_data(algo, chosen, request))
            self._rows[key] = out
        return dict(self._rows[key])


def _load_model(roots: dict[str, Path], folder: Path, model: DataModel, node_of) -> dict[str, pd.DataFrame]:
    """Load a data model's CSVs into the nodes (``node_of(dataset column) -> node names``)."""
    raw = pd.concat([pd.read_csv(p, dtype=str) for p in _csv_files(folder)], ignore_index=True)
    typed = read_dataset_csvs(folder, model)
    assert (raw["dataset"].to_numpy() == typed["dataset"].to_numpy()).all()
    where_raw, where_typed = node_of(raw["dataset"]), node_of(typed["dataset"])
    frames = {}
    for node, root in roots.items():
        part = raw[where_raw == node]
        if len(part):
            assert load_frame(root, model, part) == len(part)
        frames[node] = typed[where_typed == node].reset_index(drop=True)
    return frames


@pytest.fixture(scope="module")
def federation(request, tmp_path_factory, shared_dir: Path, dementia_model: DataModel) -> Iterator[Federation]:
    _register_summary(request.config)
    base = tmp_path_factory.mktemp("federation")
    roots = {}
    for node in NODES:
        roots[node] = base / node
        home = standard_home(roots[node], node)
        # Exareme2's validation suite runs with its privacy threshold at 1: its
        # expected results include per-dataset statistics of a handful of rows
        # and histograms binned on the pooled min/max.  Set every threshold
        # explicitly (the defaults are MIP's 10 and DataSHIELD's nfilter.*).
        # nfilter_glm goes no higher than 1 (never more parameters than rows at
        # a node), which refuses a node in one logistic case: see _run_case.
        for key in ("min_row_count", "nfilter_subset", "nfilter_tab", "nfilter_glm", "release_extremes"):
            home.set_setting(key, 1)
        # the suite is hundreds of analyses by one test identity in one project: past any
        # day's budget (ADR 0025; tests/privacy/test_budgets.py tests the budgets)
        home.set_setting("query_budget", 0)
        home.set_setting("query_budget_project", 0)
    fed_frames = {
        "dementia:0.1": (dementia_model, _load_model(
            roots, shared_dir / "data" / "dementia_v_0_1", dementia_model,
            lambda datasets: datasets.map(_family_node))),
    }
    tbi_folder = shared_dir / "data" / "tbi_v_0_1"
    if (tbi_folder / "CDEsMetadata.json").is_file():
        # the one tbi:0.1 case (descriptive_stats): datasets round robin over the same nodes
        tbi = load_data_model(tbi_folder / "CDEsMetadata.json")
        fed_frames["tbi:0.1"] = (tbi, _load_model(roots, tbi_folder, tbi, _round_robin))
    for root in roots.values():
        grant_all(root)
    pin_each_other(roots)  # the admins pinned each other's keys (ADR 0014)
    with served_clients(roots) as served:
        yield Federation(roots=roots, clients=list(served.values()), frames=fed_frames)


# --------------------------------------------------------------------------- 1. Exareme2's suite via HTTP


#: Cases where a node was refused by nfilter_glm (see _run_case), per algorithm.
GLM_REFUSED: dict[str, list[str]] = {}


def _expected_refusals(federation: Federation, name: str, doc: dict, rows: dict[str, int]) -> dict[str, str]:
    """Node -> disclosure control expected to refuse it, with every threshold at 1.

    ``min_row_count`` refuses a node without matching rows.  ``nfilter_glm``
    cannot be loosened beyond one parameter per row: a node with fewer rows
    than the model's candidate design columns is refused (its local X'X would
    be of rank < p).  Exareme2's suite has no such control.
    """
    refused = {}
    request = AnalysisRequest.from_dict(doc)
    model, _ = federation.frames[request.data_model]
    algorithm = get_algorithm(name)
    n_params = algorithm.parameter_count(request, model) or 0
    for node, n_rows in rows.items():
        # cross-validation: the smallest fold at the node is checked as well
        folds = algorithm.fold_sizes(request, n_rows)
        smallest = min(folds) if folds is not None else n_rows
        if n_rows == 0 or smallest == 0:
            refused[node] = "min_row_count"
        elif n_params > smallest:
            refused[node] = "nfilter_glm"
    return refused


def assert_same_result(ours: Any, reference: Any, *, rel: float = 1e-9, floor: float = 1e-12,
                       path: str = "result") -> None:
    """Two results of the same rows, field by field: numbers to ``rel``, the rest exactly."""
    if isinstance(reference, dict):
        assert isinstance(ours, dict) and sorted(ours) == sorted(reference), path
        for key in reference:
            assert_same_result(ours[key], reference[key], rel=rel, floor=floor, path=f"{path}.{key}")
    elif isinstance(reference, list):
        assert isinstance(ours, list) and len(ours) == len(reference), path
        for i, (a, e) in enumerate(zip(ours, reference)):
            assert_same_result(a, e, rel=rel, floor=floor, path=f"{path}[{i}]")
    elif isinstance(reference, float) or (isinstance(ours, float) and isinstance(reference, int)):
        assert rel_error(ours, reference, floor) <= rel, f"{path}: {ours!r} != {reference!r}"
    else:
        assert ours == reference, f"{path}: {ours!r} != {reference!r}"


def _run_case(federation: Federation, name: str, case_id: str, doc: dict, expected: Any) -> None:
    request = AnalysisRequest.from_dict(doc)
    if request.data_model not in federation.frames:
        pytest.skip(f"{case_id}: data model {request.data_model} is not in ../shared/data")
    if expects_error(expected):
        with pytest.raises(RequestError):
            federation.run(name, doc)
        return
    outcome = federation.run(name, doc)
    json.dumps(outcome.to_dict(), allow_nan=False)  # what the CLI and the DAGs store
    rows = federation.expected_rows(name, doc)
    refused = _expected_refusals(federation, name, doc, rows)
    # every other node contributes exactly its matching rows; the refused ones
    # are listed with their control, and the result must not depend on them
    assert outcome.contributed == {n: r for n, r in rows.items() if n not in refused}, case_id
    assert sorted(outcome.excluded) == sorted(refused), (case_id, outcome.excluded)
    for node, control in refused.items():
        assert f"({control})" in outcome.excluded[node], (case_id, node, outcome.excluded[node])
        # the refusal names the rule and its threshold, never the node's row count (issue 14.2)
        assert control != "min_row_count" or "fewer rows" in outcome.excluded[node] and \
            "row(s)" not in outcome.excluded[node]

    if "nfilter_glm" in refused.values():
        # Exareme2's expected result includes the refused node's rows: compare
        # with mipflow in process on the rows of the nodes that contributed.
        GLM_REFUSED.setdefault(name, []).append(case_id)
        model, frames = federation.frames[request.data_model]
        used = [apply_filters(frame[frame["dataset"].isin(request.datasets)], request.filters, model)
                for node, frame in frames.items() if node in outcome.contributed]
        reference = run_in_process(get_algorithm(name), used, request, model)
        assert_same_result(outcome.result, reference)
        HTTP_VALIDATION.notes[name].add(
            f"{len(GLM_REFUSED[name])} case(s) with a node refused by nfilter_glm (fewer rows than "
            f"parameters) compared with the in-process result on the other nodes: "
            f"{', '.join(GLM_REFUSED[name])}")
        return

    def rerun(parameters: dict) -> dict:
        changed = dict(doc, parameters={**(doc.get("parameters") or {}), **parameters})
        return federation.run(name, changed).result

    check_case(name, case_id, expected, outcome.result, rerun, summary=HTTP_VALIDATION).finish()


#: Parameters whose text values are labels of the data (positive class, groups), not choices of
#: the algorithm: their names count as features, their values do not.
_LABEL_PARAMETERS = frozenset({"positive_class", "groupA", "groupB"})


def _case_features(federation: Federation, name: str, case_id: str, doc: dict, expected: Any) -> set:
    """What a case exercises beyond its numbers: its data model, whether it must be refused, which
    nodes the disclosure controls refuse and by which control, filters, its parameter names and
    the values of its choice parameters (e.g. ``alt_hypothesis``, each PCA transformation)."""
    request = AnalysisRequest.from_dict(doc)
    features: set = {("data_model", request.data_model), ("error", expects_error(expected)),
                     ("filters", bool(request.filters)), ("kmeans other optimum", case_id in KMEANS_OTHER_OPTIMUM)}
    if request.data_model in federation.frames and not expects_error(expected):
        rows = federation.expected_rows(name, doc)
        features.add(("refused", tuple(sorted(_expected_refusals(federation, name, doc, rows).items()))))
    for key, value in (doc.get("parameters") or {}).items():
        features.add(("parameter", key, value is None))
        if isinstance(value, str) and key not in _LABEL_PARAMETERS:
            features.add(("choice", key, value))
        elif isinstance(value, dict):
            features.update(("choice", key, sub) for sub in value)
    return features


def _http_cases(federation: Federation, name: str) -> list[tuple[str, dict, Any]]:
    """The cases of ``name`` run over HTTP: the first two, then every case that adds a feature
    (:func:`_case_features`) not seen yet, in file order.  Every case is compared with its expected
    result in process (test_exareme2_validation.py) and its rows at each node are counted against
    pandas (``test_exareme2_case_rows_at_the_nodes``)."""
    chosen, seen = [], set()
    for i, (case_id, doc, expected) in enumerate(load_cases(name)):
        features = _case_features(federation, name, case_id, doc, expected)
        if i < 2 or not features <= seen:
            chosen.append((case_id, doc, expected))
            seen |= features
    return chosen


@pytest.mark.parametrize("name", ALGORITHMS)
def test_exareme2_cases_via_http(federation: Federation, name: str, subtests) -> None:
    """The cases of ``<name>_expected.json`` that cover every feature of its cases
    (:func:`_http_cases`); each failing case is reported as a subtest named by it."""
    if not expected_path(name).exists():
        pytest.skip(f"{expected_path(name)} is absent")
    cases = _http_cases(federation, name)
    assert cases
    failed = []
    for case_id, doc, expected in cases:
        with subtests.test(msg=case_id):
            try:
                _run_case(federation, name, case_id, doc, expected)
            except pytest.skip.Exception:
                raise
            except BaseException:
                failed.append(case_id)
                raise
    assert not failed, f"{len(failed)} of {len(cases)} cases failed: {', '.join(failed[:30])}"


@pytest.mark.parametrize("name", ALGORITHMS)
def test_exareme2_case_rows_at_the_nodes(federation: Federation, name: str) -> None:
    """Every case, the cases run over HTTP or not: the rows each node's store selects (the SQL read
    of a step: datasets, filters, complete cases of the algorithm's variables) are the rows pandas
    selects from the same node's CSV rows (what the in-process comparison analyses)."""
    if not expected_path(name).exists():
        pytest.skip(f"{expected_path(name)} is absent")
    algorithm = get_algorithm(name)
    stores = {node: FeatureStore(NodeHome(root).db_url) for node, root in federation.roots.items()}
    checked = 0
    try:
        for case_id, doc, expected in load_cases(name):
            request = AnalysisRequest.from_dict(doc)
            if expects_error(expected) or request.data_model not in federation.frames:
                continue
            model, _ = federation.frames[request.data_model]
            selected = {node: count_rows(store, model, datasets=request.datasets,
                                         variables=list(algorithm.variables(request)), filters=request.filters,
                                         complete_case=algorithm.complete_case)
                        for node, store in stores.items()}
            assert selected == federation.expected_rows(name, doc), case_id
            checked += 1
    finally:
        for store in stores.values():
            store.dispose()
    assert checked


def test_excluded_nodes_were_exercised(federation: Federation) -> None:
    """The suite does hit the "node with no matching rows" path (e.g. one dataset family only)."""
    doc = {"inputdata": {"data_model": "dementia:0.1", "datasets": ["ppmi0", "ppmi1"], "x": ["leftamygdala"],
                         "y": ["lefthippocampus"], "filters": None}, "parameters": {}}
    outcome = federation.run("linear_regression", doc)
    assert set(outcome.excluded) == {"node_edsd", "node_desd"}
    assert set(outcome.contributed) == {"node_ppmi"}
    # ... and the result equals the one node's rows analysed on their own
    model, frames = federation.frames["dementia:0.1"]
    request = AnalysisRequest.from_dict(doc)
    local = frames["node_ppmi"][frames["node_ppmi"]["dataset"].isin(request.datasets)]
    alone = run_in_process(get_algorithm("linear_regression"), [local], request, model)
    assert_rel_close(outcome.result["coefficients"], alone["coefficients"], rel=1e-12)


class _DropsOut(NodeClient):
    """A real node's client that loses its connection once, in round ``fail_round``."""

    def __init__(self, endpoint: NodeEndpoint, fail_round: int) -> None:
        super().__init__(endpoint, retries=0)
        self.fail_round, self.calls = fail_round, []

    def step(self, algorithm, request, round_no, state, **on_behalf_of):
        self.calls.append(round_no)
        if round_no == self.fail_round and self.calls.count(round_no) == 1:
            raise NodeUnavailable(f"{self.name}: connection lost (test)")
        return super().step(algorithm, request, round_no, state, **on_behalf_of)


def test_node_dropping_out_mid_analysis_restarts_without_it(federation: Federation) -> None:
    doc = {"inputdata": {"data_model": "dementia:0.1", "y": ["alzheimerbroadcategory"],
                         "x": ["lefthippocampus", "leftamygdala"], "filters": None,
                         "datasets": ["edsd0", "edsd1", "ppmi0", "desd-synthdata0", "desd-synthdata1"]},
            "parameters": {"positive_class": "AD"}}
    flaky = _DropsOut(federation.clients[1].endpoint, fail_round=2)  # node_ppmi
    clients = [federation.clients[0], flaky, federation.clients[2]]
    try:
        outcome = run_analysis("logistic_regression", doc, clients, researcher=RESEARCHER, project=PROJECT)
    finally:
        flaky.close()
    assert flaky.calls == [0, 1, 2]  # not called again after dropping out
    assert list(outcome.excluded) == ["node_ppmi"] and outcome.excluded["node_ppmi"].startswith("unavailable")
    rows = federation.expected_rows("logistic_regression", doc)
    assert outcome.contributed == {"node_edsd": rows["node_edsd"], "node_desd": rows["node_desd"]}
    model, frames = federation.frames["dementia:0.1"]
    request = AnalysisRequest.from_dict(doc)
    others = [frames[n][frames[n]["dataset"].isin(request.datasets)] for n in ("node_edsd", "node_desd")]
    reference = run_in_process(get_algorithm("logistic_regression"), others, request, model)
    assert_same_result(outcome.result, reference)


# --------------------------------------------------------------------------- 2. federated == pooled, random splits

#: One fixed synthetic data set (seed chosen so that the pooled logistic fit converges).
POOLED_SEED, POOLED_ROWS = 7, 150
#: A non-empty node holds at least this many rows, so that nfilter_glm (one
#: parameter per row at most, the loosest it goes) never refuses one: the
#: largest model (linear regression) has 11 candidate design columns.
MIN_NODE_ROWS = 24
HYPOTHESIS_SETTINGS = settings(max_examples=6, deadline=None, database=None,
                               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _pooled_data() -> pd.DataFrame:
    data = synthetic.make_data(POOLED_SEED, POOLED_ROWS)
    data.insert(0, "subjectcode", [f"s{i:04d}" for i in range(len(data))])
    return data


@st.composite
def assignments(draw) -> tuple[int, ...]:
    """Node index per row: a random permutation cut into three parts, one of them maybe empty."""
    n = POOLED_ROWS
    order = draw(st.permutations(range(n)))
    empty = draw(st.sampled_from([None, 0, 1, 2]))
    if empty is None:
        a = draw(st.integers(MIN_NODE_ROWS, n - 2 * MIN_NODE_ROWS))
        b = draw(st.integers(MIN_NODE_ROWS, n - a - MIN_NODE_ROWS))
        sizes = [a, b, n - a - b]
    else:
        a = draw(st.integers(MIN_NODE_ROWS, n - MIN_NODE_ROWS))
        sizes = [a, n - a]
        sizes.insert(empty, 0)
    node_of = [0] * n
    start = 0
    for node, size in enumerate(sizes):
        for row in order[start:start + size]:
            node_of[row] = node
        start += size
    return tuple(node_of)


#: An explicit example: node 2 (node_desd) empty, the others interleaved.
EMPTY_NODE = tuple(i % 2 for i in range(POOLED_ROWS))
ALTERNATIVES = st.sampled_from(["two-sided", "less", "greater"])

#: algorithm -> (property of test_federated_vs_pooled, strategies of its extra
#: arguments, values of those arguments for the explicit empty-node example)
PROPERTIES = {
    "linear_regression": (pooled_props.test_linear_regression, (), ()),
    "logistic_regression": (pooled_props.test_logistic_regression, (), ()),
    "ttest_independent": (pooled_props.test_ttest_independent, (ALTERNATIVES, st.floats(0.01, 0.5)),
                          ("two-sided", 0.05)),
    "anova_oneway": (pooled_props.test_anova_oneway, (), ()),
    "pearson_correlation": (pooled_props.test_pearson_correlation, (st.floats(0.01, 0.99), st.booleans()),
                            (0.05, True)),
    "ttest_onesample": (pooled_props.test_ttest_onesample,
                        (ALTERNATIVES, st.floats(0.01, 0.5), st.floats(-10, 10)), ("less", 0.1, 2.5)),
    "ttest_paired": (pooled_props.test_ttest_paired, (ALTERNATIVES, st.floats(0.01, 0.5)), ("greater", 0.2)),
    "descriptive_stats": (pooled_props.test_descriptive_stats, (), ()),
    "multiple_histograms": (pooled_props.test_multiple_histograms, (st.integers(1, 30),), (10,)),
    "anova": (pooled_props.test_anova, (st.sampled_from([1, 2]),), (1,)),
    "pca": (pooled_props.test_pca, (), ()),
    "pca_with_transformation": (pooled_props.test_pca_with_transformation, (), ()),
}


def _replace_rows(root: Path, model: DataModel, frame: pd.DataFrame) -> None:
    """Make ``frame`` the only rows of ``model`` at a node (the node reads its store per request)."""
    store = FeatureStore(NodeHome(root).db_url)
    try:
        store.add_data_model(model)
        table = store.model_table(model)
        with store.begin() as conn:
            conn.execute(table.delete())
            store.refresh_datasets(conn, model)
    finally:
        store.dispose()
    if len(frame):
        load_frame(root, model, frame)


@contextlib.contextmanager
def _through_http(federation: Federation, exclusions: list) -> Iterator[None]:
    """Route the pooled properties' ``federated(name, nodes, request)`` through the running nodes."""
    model = synthetic.MODEL

    def federated(name: str, nodes: list[pd.DataFrame], request: AnalysisRequest) -> dict:
        assert len(nodes) == len(federation.roots)
        for root, frame in zip(federation.roots.values(), nodes):
            _replace_rows(root, model, frame)
        outcome = federation.run(name, request.to_dict())
        json.dumps(outcome.to_dict(), allow_nan=False)
        if outcome.excluded:
            exclusions.append(sorted(outcome.excluded))
        algo = get_algorithm(name)
        rows = {node: len(prepare_local_data(algo, frame, request)) for node, frame in zip(federation.roots, nodes)}
        assert outcome.contributed == {n: r for n, r in rows.items() if r}
        assert sorted(outcome.excluded) == sorted(n for n, r in rows.items() if not r)
        assert all("min_row_count" in reason for reason in outcome.excluded.values()), outcome.excluded
        return outcome.result

    saved = pooled_props.federated, pooled_props.POOLED_SUMMARY
    pooled_props.federated, pooled_props.POOLED_SUMMARY = federated, HTTP_POOLED
    try:
        yield
    finally:
        pooled_props.federated, pooled_props.POOLED_SUMMARY = saved


@pytest.mark.parametrize("name", list(PROPERTIES))
def test_federated_equals_pooled_via_http(federation: Federation, name: str) -> None:
    prop, extra_strategies, empty_example_extras = PROPERTIES[name]
    inner = prop.hypothesis.inner_test  # the property without its @given: (split, *extras)
    data = _pooled_data()
    exclusions: list[list[str]] = []  # nodes left out, per example that left one out

    @HYPOTHESIS_SETTINGS
    @given(assignment=assignments(), extras=st.tuples(*extra_strategies))
    @example(assignment=EMPTY_NODE, extras=empty_example_extras)
    def run(assignment: tuple[int, ...], extras: tuple) -> None:
        node_of = np.asarray(assignment)
        nodes = [data[node_of == k].reset_index(drop=True) for k in range(3)]
        with _through_http(federation, exclusions):
            inner((data.drop(columns="subjectcode"), nodes), *extras)

    run()
    assert ["node_desd"] in exclusions  # the explicit example: an empty node, refused and left out


def test_pooled_logistic_fit_converges() -> None:
    """The fixed data set must give a regular logistic fit (else the property only checks a refusal)."""
    import statsmodels.formula.api as smf

    pooled = _pooled_data().dropna(subset=["outcome", "grp", "sex", "x1"]).copy()
    pooled["is_yes"] = (pooled["outcome"] == "yes").astype(float)
    fit = smf.logit("is_yes ~ C(grp) + C(sex) + x1", pooled).fit(method="newton", tol=1e-8, disp=False)
    assert fit.mle_retvals["converged"]


# --------------------------------------------------------------------------- 3. disclosure via HTTP

#: edsd0 holds 8 women with both volumes, ppmi0 20 and desd-synthdata0 31.
SMALL_COHORT = {
    "inputdata": {"data_model": "dementia:0.1", "datasets": ["edsd0", "ppmi0", "desd-synthdata0"],
                  "x": ["leftamygdala", "subjectageyears"], "y": ["lefthippocampus"],
                  "filters": {"condition": "AND", "rules": [
                      {"id": "gender", "field": "gender", "type": "string", "input": "text",
                       "operator": "equal", "value": "F"}], "valid": True}},
    "parameters": {},
}


@pytest.fixture(scope="module")
def default_federation(tmp_path_factory, shared_dir: Path, dementia_model: DataModel) -> Iterator[Federation]:
    """Three more nodes with the same data and the default disclosure settings (min_row_count 10)."""
    base = tmp_path_factory.mktemp("federation-defaults")
    roots = {node: base / node for node in NODES}
    for node, root in roots.items():
        standard_home(root, node)
    frames = _load_model(roots, shared_dir / "data" / "dementia_v_0_1", dementia_model,
                         lambda datasets: datasets.map(_family_node))
    # the synthetic model is held by two of the three nodes only
    synth = _pooled_data()
    synth_frames = {"node_edsd": synth.iloc[:70], "node_ppmi": synth.iloc[70:],
                    "node_desd": synth.iloc[:0]}
    for node in ("node_edsd", "node_ppmi"):
        load_frame(roots[node], synthetic.MODEL, synth_frames[node])
    for root in roots.values():
        grant_all(root)
    pin_each_other(roots)  # the admins pinned each other's keys (ADR 0014)
    with served_clients(roots) as served:
        yield Federation(roots=roots, clients=list(served.values()), frames={
            "dementia:0.1": (dementia_model, frames),
            synthetic.MODEL.key: (synthetic.MODEL, {n: f.drop(columns="subjectcode").reset_index(drop=True)
                                                    for n, f in synth_frames.items()}),
        })


def test_defaults_are_in_force(default_federation: Federation) -> None:
    for root in default_federation.roots.values():
        assert NodeHome(root).settings.min_row_count == 10


def test_small_node_is_excluded_and_the_others_give_the_result(default_federation: Federation) -> None:
    rows = default_federation.expected_rows("linear_regression", SMALL_COHORT)
    assert 0 < rows["node_edsd"] < 10 <= min(rows["node_ppmi"], rows["node_desd"]), rows
    outcome = default_federation.run("linear_regression", SMALL_COHORT)
    assert set(outcome.excluded) == {"node_edsd"}
    reason = outcome.excluded["node_edsd"]
    assert "fewer rows match than min_row_count (10)" in reason, reason
    assert f"{rows['node_edsd']} row" not in reason, reason  # the node's row count stays there (issue 14.2)
    assert outcome.contributed == {"node_ppmi": rows["node_ppmi"], "node_desd": rows["node_desd"]}
    # the result is the other two nodes' rows, pooled
    model, frames = default_federation.frames["dementia:0.1"]
    request = AnalysisRequest.from_dict(SMALL_COHORT)
    others = [apply_filters(frames[n][frames[n]["dataset"].isin(request.datasets)], request.filters, model)
              for n in ("node_ppmi", "node_desd")]
    expected = run_in_process(get_algorithm("linear_regression"), others, request, model)
    assert outcome.result["n_obs"] == rows["node_ppmi"] + rows["node_desd"]
    for key in ("coefficients", "std_err", "pvalues", "r_squared", "f_stat"):
        assert_rel_close(outcome.result[key], expected[key], rel=1e-9, what=key)


def test_min_nodes_names_every_reason(default_federation: Federation) -> None:
    with pytest.raises(FederationError) as info:
        default_federation.run("linear_regression", SMALL_COHORT, min_nodes=3)
    message = str(info.value)
    assert "node_edsd" in message and "min_row_count" in message
    assert "node_ppmi" not in message and "node_desd" not in message


def test_min_nodes_with_a_refused_and_an_unreachable_node(default_federation: Federation) -> None:
    cred = issue_client(default_federation.roots["node_ppmi"], "central")
    dead = NodeClient(NodeEndpoint("node_gone", f"http://127.0.0.1:{free_port()}", cred.client_id,
                                   cred.secret.hex()), retries=0, timeout=2)
    try:
        with pytest.raises(FederationError) as info:
            run_analysis("linear_regression", copy.deepcopy(SMALL_COHORT),
                         default_federation.clients + [dead], researcher=RESEARCHER, project=PROJECT,
                         min_nodes=3)
    finally:
        dead.close()
    message = str(info.value)
    assert "node_edsd: refused (min_row_count)" in message
    assert "node_gone: unavailable" in message
    # with two contributing nodes allowed, the same call succeeds without both
    outcome = run_analysis("linear_regression", SMALL_COHORT, default_federation.clients, researcher=RESEARCHER,
                           project=PROJECT, min_nodes=2)
    assert set(outcome.contributed) == {"node_ppmi", "node_desd"}
    assert not any(math.isnan(v) for v in outcome.result["coefficients"])


def test_node_without_the_data_model_is_left_out(default_federation: Federation) -> None:
    """A hospital that does not hold a data model is left out, not a reason to fail the analysis."""
    doc = synthetic.request(x=("x1", "age"), y=("y",)).to_dict()
    outcome = default_federation.run("linear_regression", doc)
    assert set(outcome.contributed) == {"node_edsd", "node_ppmi"}
    assert set(outcome.excluded) == {"node_desd"}
    assert outcome.excluded["node_desd"].startswith("refused (data_model)"), outcome.excluded
    assert "synth:1" in outcome.excluded["node_desd"]
    _, frames = default_federation.frames[synthetic.MODEL.key]
    reference = run_in_process(get_algorithm("linear_regression"), [frames["node_edsd"], frames["node_ppmi"]],
                               AnalysisRequest.from_dict(doc), synthetic.MODEL)
    assert_same_result(outcome.result, reference)


def test_tightened_threshold_applies_without_restart(default_federation: Federation) -> None:
    """A node admin raising min_row_count is obeyed by the running node at the next request."""
    rows = default_federation.expected_rows("linear_regression", SMALL_COHORT)
    home = NodeHome(default_federation.roots["node_ppmi"])
    home.set_setting("min_row_count", rows["node_ppmi"] + 1)
    try:
        outcome = default_federation.run("linear_regression", SMALL_COHORT)
        assert set(outcome.excluded) == {"node_edsd", "node_ppmi"}
        assert f"min_row_count ({rows['node_ppmi'] + 1})" in outcome.excluded["node_ppmi"]
        assert outcome.contributed == {"node_desd": rows["node_desd"]}
    finally:
        home.set_setting("min_row_count", 10)
    assert set(default_federation.run("linear_regression", SMALL_COHORT).contributed) == {"node_ppmi", "node_desd"}
