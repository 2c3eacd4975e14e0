"""The node's step as a chain of controls, without HTTP: order, refusals, audit, one parse."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import pytest

from mipflow.secagg.trust import TrustStore
from mipflow.exceptions import DisclosureError, MipflowError, RequestError, StoreError
from mipflow.node.api.context import DataModelNotHeld, StepContext
from mipflow.node.api.step import CHAIN, StepRequest, answer_step, refusal_of
from mipflow.node.home import NodeHome
from mipflow.protocol.request import AnalysisRequest
from mipflow.secagg import node_side
from mipflow.secagg.codec import SCHEME
from mipflow.secagg.crypto import KeyPair, load_keypair
from tests.mipflow.algorithms.survival_data import STROKE
from tests.nodes import PROJECT, RESEARCHER, grant_all, load_frame, unverified_chain
from tests.privacy.conftest import DATASETS, make_rows, rule, where
from tests.privacy.test_attacks import KMEANS_Y, _projections, _slab_state
from tests.nodes import standard_home

#: The declared order, spelled out: a change of order is a change of this list too.
ORDER = ["resolve_algorithm", "check_access", "check_query_budget", "require_secure_aggregation",
         "find_data_model", "validate_request", "verify_round", "open_sealed", "check_request", "check_study", "check_explore",
         "require_pooled_masking", "read_rows", "check_rows", "check_cohort", "check_groups", "check_weighted",
         "check_pooled_parts", "run_local_step",
         "bind_pooled", "check_partition", "derive_clusters", "check_weights", "check_release", "check_released_groups", "check_pooled_windows", "check_pooled_counts", "add_noise", "check_finite", "seal",
         "mask", "tag_release", "remember_cohort", "remember_pooled_parts", "remember_pooled_windows", "remember_counted_sets",
         "audit_answer", "charge_query_budget"]
LINREG = {"y": ["age"], "x": ["nihss_admission"]}


def open_node(root: Path, **settings: Any) -> StepContext:
    """A node home with the privacy suite's stroke rows, everything granted, and its step context."""
    home = standard_home(root, "hospital_a")
    for key, value in settings.items():
        home.set_setting(key, value)
    home = NodeHome(root)
    load_frame(root, STROKE, make_rows())
    grant_all(root)
    return StepContext.open(home)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Iterator[StepContext]:
    """A node with default settings, for tests that only repeat one cohort."""
    yield open_node(tmp_path_factory.mktemp("step-node"))


def body(context: StepContext, *, y=(), x=(), filters=None, parameters=None, round: int = 0, state=None,
         analysis_id: str | None = None, datasets=None, data_model: str | None = None,
         researcher: str | None = RESEARCHER, project: str | None = PROJECT,
         secure_aggregation: Any = None) -> bytes:
    """A step call's body bytes; ``secure_aggregation`` may be a function of the context."""
    if callable(secure_aggregation):
        secure_aggregation = secure_aggregation(context)
    doc = {"request": {"inputdata": {"data_model": data_model or STROKE.key, "datasets": datasets or DATASETS,
                                     "x": list(x), "y": list(y), "filters": filters},
                       "parameters": parameters or {}},
           "round": round, "state": state, "researcher": researcher, "project": project,
           "analysis_id": analysis_id, "secure_aggregation": secure_aggregation}
    return json.dumps(doc).encode()


#: The chain without round verification (ADR 0029): how the tests reach the controls behind it with a
#: later round's state of their own making (in production every later round is verified first).
UNVERIFIED = unverified_chain()


def traced(chain=CHAIN) -> tuple[list[tuple[str, StepRequest]], tuple]:
    """``chain`` with every control recording its name and the request it got, in call order."""
    reached: list[tuple[str, StepRequest]] = []

    def wrap(control: Callable) -> Callable:
        def run(request, context, work):
            reached.append((control.__name__, request))
            control(request, context, work)

        run.__name__ = control.__name__
        return run

    return reached, tuple(wrap(control) for control in chain)


def audit_records(context: StepContext) -> list[dict[str, Any]]:
    return context.audit.records()


def peers(context: StepContext, *, me: str | None = None) -> dict[str, Any]:
    """Participants: this node under its own key (or under ``me``'s name) and one pinned peer."""
    own = load_keypair(context.home.root)
    other = KeyPair.from_bytes(bytes([17]) * 32)
    TrustStore(context.home.root).pin("hospital_b", other.public_hex)  # the admin pinned the peer
    return {"scheme": SCHEME, "participants": [{"node": me or context.name, "public_key": own.public_hex},
                                                      {"node": "hospital_b", "public_key": other.public_hex}]}


def crafted_kmeans(released: bool) -> dict[str, Any]:
    """k-means round 1 with slab centres around the privacy suite's target: the released
    assignment, or the crafted one that moves the target alone (tests/privacy/test_attacks.py)."""
    order, rank = _projections(SimpleNamespace(rows=make_rows()))
    state, _ = _slab_state(order, [rank + 1] if released else [rank])
    return {"y": KMEANS_Y, "parameters": {"k": 2}, "round": 1, "state": state, "analysis_id": "crafted"}


def test_the_chain_is_declared_in_one_place() -> None:
    assert [control.__name__ for control in CHAIN] == ORDER
    assert len(set(CHAIN)) == len(CHAIN)


def test_an_allowed_step_passes_every_control_in_order_and_is_audited_once(shared) -> None:
    reached, chain = traced()
    before = len(audit_records(shared))
    reply = answer_step(shared, "central", "linear_regression", body(shared, **LINREG, analysis_id="a1"),
                        chain=chain)
    assert [name for name, _ in reached] == ORDER
    (request,) = {id(request): request for _, request in reached}.values()  # one object, all the way
    assert request.analysis.y == ("age",) and request.researcher == RESEARCHER
    assert set(reply) == {"node", "algorithm", "round", "rows", "aggregates", "code", "privacy", "tags", "chain"}
    assert reply["tags"] is None and reply["chain"] is None  # no transcript: a single-round call
    assert reply["rows"] == len(make_rows()) and reply["privacy"] is None
    (record,) = audit_records(shared)[before:]
    assert record["decision"] == "allowed" and record["rows"] == reply["rows"]
    assert record["analysis"] and record["cohort"] and record["algorithm_sha256"] == reply["code"]["algorithm_sha256"]


@pytest.mark.parametrize("refusing", ORDER[:ORDER.index("audit_answer") + 1])
def test_a_refusal_stops_the_chain_and_is_audited_once(shared, refusing) -> None:
    def refuse(request, context, work):
        raise DisclosureError("refused by the test", control="test")

    refuse.__name__ = refusing
    reached, chain = traced(tuple(refuse if control.__name__ == refusing else control for control in CHAIN))
    before = len(audit_records(shared))
    with pytest.raises(DisclosureError):
        answer_step(shared, "central", "linear_regression", body(shared, **LINREG, analysis_id="a1"), chain=chain)
    assert [name for name, _ in reached] == ORDER[:ORDER.index(refusing) + 1]
    (record,) = audit_records(shared)[before:]
    assert (record["decision"], record["control"], record["reason"]) == ("refused", "test", "refused by the test")


def test_the_request_is_parsed_once_even_under_secure_aggregation(shared, monkeypatch) -> None:
    parses: list[Any] = []
    parse = AnalysisRequest.from_dict.__func__

    def counting(cls, doc):
        parses.append(doc)
        return parse(cls, doc)

    monkeypatch.setattr(AnalysisRequest, "from_dict", classmethod(counting))
    masked: list[Any] = []
    mask_release = node_side.mask_release

    def spy(*args, **kwargs):
        masked.append(args[3])
        return mask_release(*args, **kwargs)

    monkeypatch.setattr(node_side, "mask_release", spy)
    reached, chain = traced()
    reply = answer_step(shared, "central", "linear_regression",
                        body(shared, **LINREG, analysis_id="a1", secure_aggregation=peers), chain=chain)
    assert set(reply["aggregates"]) == {"secure_aggregation"}
    assert len(parses) == 1
    (request,) = {id(request): request for _, request in reached}.values()
    assert masked == [request.analysis] and masked[0] is request.analysis


# each case: node settings, earlier allowed calls, the call, the control that refuses, the error, the audit's control
CASES = [
    pytest.param({}, [], "linear_regression", b"{not json", "parse_step", RequestError, "request", id="body-not-json"),
    pytest.param({}, [], "linear_regression", {"y": ["a" * 300]}, "parse_step", DisclosureError, "nfilter_string",
                 id="nfilter_string"),
    pytest.param({}, [], "linear_regression", {"datasets": [7]}, "parse_step", RequestError, "request",
                 id="malformed-request"),
    pytest.param({}, [], "nope", LINREG, "resolve_algorithm", RequestError, "request", id="unknown-algorithm"),
    pytest.param({"disabled_algorithms": "pca"}, [], "pca", {"y": ["age", "nihss_admission"]}, "resolve_algorithm",
                 DisclosureError, "disabled_algorithm", id="disabled-algorithm"),
    pytest.param({}, [], "linear_regression", {**LINREG, "researcher": None}, "check_access", DisclosureError,
                 "access", id="no-researcher"),
    pytest.param({}, [], "linear_regression", {**LINREG, "researcher": "mallory"}, "check_access",
                 DisclosureError, "access", id="no-grant"),
    pytest.param({"query_budget": 1}, [("descriptive_stats", {"y": ["age"], "analysis_id": "first"})],
                 "linear_regression", {**LINREG, "analysis_id": "second"}, "check_query_budget", DisclosureError,
                 "query_budget", id="query-budget"),
    pytest.param({"secure_aggregation_required": 1}, [], "linear_regression", LINREG, "require_secure_aggregation",
                 DisclosureError, "secure_aggregation", id="secure-aggregation-required"),
    pytest.param({}, [], "linear_regression", {**LINREG, "data_model": "other:1"}, "find_data_model",
                 DataModelNotHeld, "data_model", id="data-model-not-held"),
    pytest.param({}, [], "linear_regression", {"y": ["nope"]}, "validate_request", RequestError, "request",
                 id="unknown-variable"),
    pytest.param({"nfilter_levels_max": 1}, [], "descriptive_stats", {"y": ["sex"]}, "check_request",
                 DisclosureError, "nfilter_levels_max", id="nfilter_levels_max"),
    pytest.param({}, [], "linear_regression", {**LINREG, "filters": where(rule("age", "zzz", 1))}, "read_rows",
                 RequestError, "request", id="bad-filter"),
    pytest.param({}, [], "linear_regression", {**LINREG, "filters": where(rule("age", "less", 30))}, "check_rows",
                 DisclosureError, "min_row_count", id="min_row_count"),
    pytest.param({}, [("linear_regression", LINREG)], "linear_regression",
                 {**LINREG, "filters": where(rule("age", "not_equal", 18.5))}, "check_cohort", DisclosureError,
                 "differencing", id="all-but-one"),
    pytest.param({}, [], "kmeans", {"y": KMEANS_Y, "parameters": {"k": 2}, "round": 1,
                                    "state": {"centers": [[18.5, 42.0], [60.0, 15.0]], "k": 2}},
                 "verify_round", DisclosureError, "round_verification", id="state-not-verifiable"),
    pytest.param({}, [], "kmeans", {"y": KMEANS_Y, "parameters": {"k": 2}, "round": 2,
                                    "state": {"centers": "abc", "k": 2}},
                 "run_local_step", RequestError, "request", id="state-does-not-fit"),
    pytest.param({}, [("kmeans", crafted_kmeans(released=True))], "kmeans", crafted_kmeans(released=False),
                 "check_partition", DisclosureError, "differencing", id="kmeans-one-row-moved"),
    pytest.param({}, [], "kmeans", {"y": KMEANS_Y, "parameters": {"k": 2, "init": "exareme2"}}, "check_release",
                 DisclosureError, "raw_extremes", id="raw-extremes"),
    pytest.param({"dp_enabled": 1}, [], "kmeans", {"y": KMEANS_Y, "parameters": {"k": 2}}, "add_noise",
                 DisclosureError, "dp_unsupported", id="dp-unsupported"),
    pytest.param({}, [], "pca", {"y": ["age", "nihss_admission"], "analysis_id": "s", "secure_aggregation": peers},
                 "mask", RequestError, "request", id="secagg-not-available"),
    pytest.param({}, [], "linear_regression", {**LINREG, "analysis_id": "s",
                                               "secure_aggregation": lambda c: peers(c, me="someone_else")},
                 "mask", DisclosureError, "secure_aggregation", id="secagg-not-a-participant"),
]


@pytest.mark.parametrize("settings, earlier, algorithm, call, refusing, error, control", CASES)
def test_each_control_refuses_what_it_must(tmp_path, settings, earlier, algorithm, call, refusing, error,
                                           control) -> None:
    context = open_node(tmp_path / "node", **settings)
    for name, fields in earlier:
        answer_step(context, "central", name, body(context, **fields), chain=UNVERIFIED if fields.get("round") else CHAIN)
    # a later round's state of the test's making reaches the controls behind verification only without it
    behind = isinstance(call, dict) and bool(call.get("round")) and refusing != "verify_round"
    order = [n for n in ORDER if not (behind and n in ("verify_round", "tag_release"))]
    reached, chain = traced(UNVERIFIED if behind else CHAIN)
    before = len(audit_records(context))
    raw = call if isinstance(call, bytes) else body(context, **call)
    with pytest.raises(error) as info:
        answer_step(context, "central", algorithm, raw, chain=chain)
    names = [name for name, _ in reached]
    assert names == ([] if refusing == "parse_step" else order[:order.index(refusing) + 1])
    (record,) = audit_records(context)[before:]
    assert record["decision"] == "refused" and record["control"] == control
    assert record["reason"] == str(info.value)
    rows_read = refusing in ORDER and ORDER.index(refusing) > ORDER.index("read_rows")
    assert ("rows" in record) == rows_read
    # every refusal of a parsed request counts against the query budgets, but the budget's own (ADR 0025)
    assert bool(record.get("counted")) == (refusing != "parse_step" and control != "query_budget")
    assert ("analysis" in record) == (refusing != "parse_step")


@pytest.mark.parametrize("exc, fields", [
    pytest.param(DisclosureError("x", control="nfilter_tab"), {"decision": "refused", "control": "nfilter_tab"},
                 id="disclosure"),
    pytest.param(DataModelNotHeld("x"), {"decision": "refused", "control": "data_model"}, id="data-model"),
    pytest.param(RequestError("x"), {"decision": "refused", "control": "request"}, id="request"),
    pytest.param(StoreError("x"), {"decision": "refused", "control": "request"}, id="store"),
    pytest.param(MipflowError("x"), {"decision": "error"}, id="other"),
])
def test_refusals_are_audited_under_their_control(exc, fields) -> None:
    assert refusal_of(exc) == fields


class BrokenStep:
    """An algorithm whose local step fails reading what it was given."""

    def __init__(self, algo: Any) -> None:
        self.algo = algo

    def __getattr__(self, name: str) -> Any:
        return getattr(self.algo, name)

    def local_step(self, *args: Any) -> Any:
        raise KeyError("centers")


@pytest.mark.parametrize("round_no, state, blamed", [
    pytest.param(0, None, False, id="no-state-a-bug"),
    pytest.param(3, {"centers": []}, True, id="a-state-that-does-not-fit"),
])
def test_a_step_that_cannot_read_the_state_is_a_bad_request_only_with_a_state(shared, round_no, state,
                                                                             blamed) -> None:
    def break_the_step(request, context, work):
        work.algo = BrokenStep(work.algo)

    at = UNVERIFIED.index(CHAIN[ORDER.index("run_local_step")])  # (a state of the test's making: unverified)
    chain = UNVERIFIED[:at] + (break_the_step,) + UNVERIFIED[at:]
    before = len(audit_records(shared))
    raw = body(shared, **LINREG, round=round_no, state=state, analysis_id="a1")
    if blamed:
        with pytest.raises(RequestError, match=r"the state of round 3 does not fit this step \(KeyError\)"):
            answer_step(shared, "central", "linear_regression", raw, chain=chain)
        (record,) = audit_records(shared)[before:]
        assert record["decision"] == "refused" and record["control"] == "request"
    else:  # the step's own error: a 500 from the transport, no refusal to audit
        with pytest.raises(KeyError):
            answer_step(shared, "central", "linear_regression", raw, chain=chain)
        assert audit_records(shared)[before:] == []


def test_sealed_sums_without_a_transcript_are_refused() -> None:
    """ADR 0046: a reply with sealed content and no participants to seal it to never leaves the node."""
    from types import SimpleNamespace

    from mipflow.node.api.step import seal

    work = SimpleNamespace(aggregates={"n": 30, "sealed": {"s0": [1.0, 2.0]}}, transcript=None)
    with pytest.raises(DisclosureError, match="needs a transcript") as info:
        seal(SimpleNamespace(analysis_id="an-1", algorithm="cox_regression", round=1), None, work)
    assert info.value.control == "round_verification"
    assert work.aggregates["sealed"] == {"s0": [1.0, 2.0]}  # (refused, not sent)
    plain = SimpleNamespace(aggregates={"n": 30}, transcript=None)
    seal(SimpleNamespace(analysis_id=None, algorithm="linear_regression", round=0), None, plain)
    assert plain.aggregates == {"n": 30}


def test_a_linear_regression_of_numbers_keeps_its_rows_on_disk_with_the_same_answer(tmp_path) -> None:
    """ADR 0049 amended: a linear regression of numerical variables keeps its selection as a bit a
    snapshot row (no frame) and answers what the frame gave, bit for bit; with a nominal covariate too
    (its levels' groups from the snapshot's level codes, ADR 0062), leaving the same group memory;
    differential privacy keeps a frame."""
    from mipflow.node.query.snapshot_rows import SnapshotRows

    filters = where(rule("age", "greater", 40))
    kept: dict[str, list[str]] = {}
    replies: dict[str, Any] = {}
    for case, x, settings in (("disk", LINREG["x"], {}), ("sql", LINREG["x"], {"columnar_snapshot": 0}),
                              ("nominal", [*LINREG["x"], "sex"], {}),
                              ("nominal-sql", [*LINREG["x"], "sex"], {"columnar_snapshot": 0}),
                              ("dp", LINREG["x"], {"dp_enabled": True})):
        context = open_node(tmp_path / case, **settings)
        replies[case] = answer_step(context, "central", "linear_regression",
                                    body(context, y=LINREG["y"], x=x, filters=filters, analysis_id=case))
        kept[case] = [type(v[1]).__name__ for v in context.selections._kept.values()]
    assert kept == {"disk": [SnapshotRows.__name__], "sql": ["DataFrame"], "nominal": [SnapshotRows.__name__],
                    "nominal-sql": ["DataFrame"], "dp": ["DataFrame"]}
    assert replies["disk"]["rows"] == replies["sql"]["rows"] > 0
    for disk, sql in (("disk", "sql"), ("nominal", "nominal-sql")):
        assert json.dumps(replies[disk]["aggregates"], sort_keys=True) == \
            json.dumps(replies[sql]["aggregates"], sort_keys=True)
    groups = remembered_groups(tmp_path / "nominal")
    assert groups == remembered_groups(tmp_path / "nominal-sql") and len(groups) == 2


@pytest.mark.parametrize("x", [pytest.param(["age", "nihss_admission"], id="numerical"),
                               pytest.param(["age", "sex", "nihss_admission"], id="nominal")])
def test_a_logistic_regression_keeps_its_rows_on_disk_every_round_with_the_same_answers(tmp_path, x) -> None:
    """ADR 0049 amended ("logistic regression"): a logistic regression, numerical or nominal covariates,
    keeps its selection as a bit a snapshot row in its first and later rounds and releases what the SQL
    read's frame gives, bit for bit, every round; the effective-rows control (ADR 0054) decides on the
    same weights; a node with differential privacy on (logistic regression exempted) keeps a frame."""
    from mipflow.algorithms import get_algorithm
    from mipflow.node.query.snapshot_rows import SnapshotRows

    algo = get_algorithm("logistic_regression")
    params = {"positive_class": "yes"}
    kept: dict[str, set[str]] = {}
    releases: dict[str, list[str]] = {}
    for case, settings in (("disk", {}), ("sql", {"columnar_snapshot": 0}), ("dp", {"dp_enabled": True, "dp_exempt_algorithms": "logistic_regression"})):
        context = open_node(tmp_path / case, **settings)
        model = context.data_model(STROKE.key)
        request = AnalysisRequest.from_dict({"inputdata": {"data_model": STROKE.key, "datasets": DATASETS, "x": x,
                                                           "y": ["death_90d"], "filters": None},
                                             "parameters": params})
        state, releases[case], kept[case] = None, [], set()
        for round_no in range(40):
            reply = answer_step(context, "central", "logistic_regression",
                                body(context, y=["death_90d"], x=x, parameters=params, round=round_no, state=state,
                                     analysis_id=case), chain=UNVERIFIED)
            releases[case].append(json.dumps(reply["aggregates"], sort_keys=True))
            kept[case] |= {type(v[1]).__name__ for v in context.selections._kept.values()}
            step = algo.global_step(round_no, [json.loads(releases[case][-1])], request, model, state)
            if step.done:
                break
            state = json.loads(json.dumps(step.state))
    # a nominal covariate's levels are released groups (ADR 0051, issue 14 item 5): the group memory reads
    # each row's level code a block at a time from the snapshot too (ADR 0062), so such a design streams
    assert kept == {"disk": {SnapshotRows.__name__}, "sql": {"DataFrame"}, "dp": {"DataFrame"}}
    assert len(releases["disk"]) >= 4 and releases["disk"] == releases["sql"] == releases["dp"]
    assert remembered_groups(tmp_path / "disk") == remembered_groups(tmp_path / "sql")
    # the response's classes (death_90d yes / not yes, ADR 0051 fifteenth review), and with sex its two levels
    # and the four class x sex cells
    assert len(remembered_groups(tmp_path / "disk")) == (8 if "sex" in x else 2)


def remembered_groups(home, keyed: bool = False) -> list[tuple]:
    """A node's group memory as recorded, in order: (kind, rows, threshold, cell), and with ``keyed`` the
    digest and the keys (the node's own: two homes have two secrets)."""
    import sqlite3

    path = home / "groups.sqlite"
    if not path.exists():
        return []
    keyed_columns = ", digest, keys, patients" if keyed else ""
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT kind, n_rows, threshold, cell{keyed_columns} FROM groups ORDER BY rowid").fetchall()


@pytest.mark.parametrize("algorithm, parameters", [
    pytest.param("ttest_independent", {"groupA": "ischaemic", "groupB": "haemorrhagic"}, id="ttest"),
    pytest.param("anova_oneway", {}, id="anova")])
def test_group_releasing_tests_keep_their_rows_on_disk_with_the_same_answers_and_groups(tmp_path, algorithm,
                                                                                     parameters) -> None:
    """ADR 0062 (groups): an independent t-test and a one-way ANOVA keep their selection as a bit a snapshot
    row and release what the SQL read's frame gives, bit for bit; at one node, the frame's release after
    the streamed one is an exact repeat (the same cohort, groups, digests and value stamps): the group
    memory and the ledger learn nothing new."""
    from mipflow.node.query.snapshot_rows import SnapshotRows

    context = open_node(tmp_path)
    kept, replies, memory = {}, {}, {}
    for case in ("disk", "sql"):
        if case == "sql":
            NodeHome(tmp_path).set_setting("columnar_snapshot", 0)  # read again, by SQL, at the same node
        replies[case] = answer_step(context, "central", algorithm,
                                    body(context, y=["nihss_admission"], x=["stroke_type"], parameters=parameters,
                                         filters=where(rule("age", "greater", 40)), analysis_id=case))
        kept[case] = sorted(type(v[1]).__name__ for v in context.selections._kept.values())
        memory[case] = (remembered_groups(tmp_path, keyed=True), context.differencing.ledger.stats())
    assert kept == {"disk": [SnapshotRows.__name__], "sql": ["DataFrame", SnapshotRows.__name__]}
    assert json.dumps(replies["disk"]["aggregates"], sort_keys=True) == \
        json.dumps(replies["sql"]["aggregates"], sort_keys=True)
    assert memory["disk"] == memory["sql"] and len(memory["disk"][0]) >= 2


def test_a_logistic_regression_on_disk_is_refused_by_effective_rows_as_from_a_frame(tmp_path) -> None:
    """A Newton round whose weights rest on a few rows (a steep boundary on age) is refused by
    ``effective_rows`` from the block totals as from the frame's vectors, with the same message."""
    from mipflow.algorithms import get_algorithm

    algo = get_algorithm("logistic_regression")
    params = {"positive_class": "yes"}
    x = ["age", "nihss_admission"]
    refusals = []
    for case, settings in (("disk", {}), ("sql", {"columnar_snapshot": 0})):
        context = open_node(tmp_path / case, min_row_count=10, **settings)
        model = context.data_model(STROKE.key)
        request = AnalysisRequest.from_dict({"inputdata": {"data_model": STROKE.key, "datasets": DATASETS, "x": x,
                                                           "y": ["death_90d"], "filters": None},
                                             "parameters": params})
        first = answer_step(context, "central", "logistic_regression",
                            body(context, y=["death_90d"], x=x, parameters=params, analysis_id=case), chain=UNVERIFIED)
        state = json.loads(json.dumps(algo.global_step(0, [first["aggregates"]], request, model, None).state))
        state["coefficients"] = [0.0, 80.0, 0.0]  # p(1 - p) on the rows nearest the mean age only
        with pytest.raises(DisclosureError) as refused:
            answer_step(context, "central", "logistic_regression",
                        body(context, y=["death_90d"], x=x, parameters=params, round=1, state=state,
                             analysis_id=case), chain=UNVERIFIED)
        assert refused.value.control == "effective_rows"
        refusals.append(str(refused.value))
        assert [type(v[1]).__name__ for v in context.selections._kept.values()] == \
            (["SnapshotRows"] if case == "disk" else ["DataFrame"])
    assert refusals[0] == refusals[1]


def test_rows_on_disk_whose_snapshot_was_replaced_are_read_again(tmp_path) -> None:
    """A kept selection left on disk is not used once its snapshot's folder is gone (a newer snapshot
    replaced it: an admin's SQL moves the rows' stamp but not the data version): read again, same answer."""
    import shutil

    context = open_node(tmp_path / "node")
    first = answer_step(context, "central", "linear_regression", body(context, **LINREG, analysis_id="r1"))
    (kept,) = [v[1] for v in context.selections._kept.values()]
    shutil.rmtree(kept.snapshot.path)
    again = answer_step(context, "central", "linear_regression", body(context, **LINREG, analysis_id="r2"))
    (now,) = [v[1] for v in context.selections._kept.values()]
    assert now is not kept and now.snapshot.path.is_dir()
    assert json.dumps(again["aggregates"], sort_keys=True) == json.dumps(first["aggregates"], sort_keys=True)


def test_selections_read_before_a_change_of_the_rows_are_dropped_at_the_next_read(tmp_path) -> None:
    """Kept selections of the data model read before its rows changed are never used again: the next
    read of the model drops them all (not only the one it replaces), freeing their memory."""
    context = open_node(tmp_path / "node")
    for i, age in enumerate((30, 40)):
        answer_step(context, "central", "linear_regression",
                    body(context, **LINREG, filters=where(rule("age", "greater", age)), analysis_id=f"k{i}"))
    assert len(context.selections._kept) == 2
    load_frame(Path(context.home.root), STROKE, make_rows(seed=99, n=30))  # more rows: a new data version
    answer_step(context, "central", "linear_regression", body(context, **LINREG, analysis_id="k2"))
    assert len(context.selections._kept) == 1


def test_a_step_reads_its_rows_from_the_columnar_snapshot_with_the_same_answer(tmp_path) -> None:
    """ADR 0049: with ``columnar_snapshot`` on (the default) a SQLite node writes its data model's
    snapshot at the first keyed read and answers from it; the answer is the one read through SQL."""
    filters = where(rule("age", "greater", 40))
    replies, snapshots = [], []
    for columnar in (1, 0):
        context = open_node(tmp_path / f"node{columnar}", columnar_snapshot=columnar)
        replies.append(answer_step(context, "central", "linear_regression",
                                   body(context, **LINREG, filters=filters, analysis_id=f"c{columnar}")))
        folder = Path(context.home.root) / "snapshots"
        snapshots.append(sorted(p.name for p in folder.iterdir()) if folder.is_dir() else [])
    on, off = replies
    assert on["rows"] == off["rows"] > 0
    assert json.dumps(on["aggregates"], sort_keys=True) == json.dumps(off["aggregates"], sort_keys=True)
    assert len(snapshots[0]) == 1 and snapshots[0][0].startswith(STROKE.table_name + "@")
    assert snapshots[1] == []
