"""One local step at the node: the request parsed once, then the node's controls in a declared order.

A step call is parsed once (:func:`parse_step`: the body's structure, the
length of its strings, the Exareme2 request) into a :class:`StepRequest`,
which every control then reads; what the controls learn on the way (the step
code, the data model, the rows, the aggregates, the audit record) is kept in a
:class:`StepWork`.  Each control is a plain function
``control(request, context, work)`` that raises a
:class:`~mipflow.exceptions.MipflowError` to refuse, and :data:`CHAIN` is their
order: nothing leaves before every control up to the reply has passed.  The
transport (:mod:`mipflow.node.api.app`) authenticates the call before
:func:`answer_step` and maps the errors to HTTP afterwards; every request
answered or refused here gets exactly one audit record.

Order (ADR 0002, 0010, 0013, 0014, 0015, 0024, 0029, 0046, 0054, 0058)::

    parse_step           body, nfilter_string, AnalysisRequest          (400 / 403)
    resolve_algorithm    vetted step code, digest, disabled_algorithm   (400 / 403)
    check_access         grants of researcher and project              (403 access)
    check_query_budget   distinct analyses per researcher and project  (403 query_budget)
    require_secure_aggregation  masked among >= 2 nodes, if the node requires it (403 secure_aggregation)
    find_data_model      the node holds the data model                 (404 data_model)
    validate_request     variables and parameters against the model    (400)
    verify_round         the round's state recomputed from the tagged   (403 round_verification)
                         contributions of the previous round
    open_sealed          the sealed sums addressed to the node, pooled  (403 round_verification, ADR 0046)
                         for the local step
    check_request        disclosure controls on the request            (403)
    check_study          study mode: inside the project's study        (403 study, ADR 0028)
    check_explore        explore mode: a noisy single-round release    (403 explore / dp_unsupported, ADR 0032)
    require_pooled_masking  pooled thresholds: masked among >= 3         (403 pooled_bins, ADR 0052)
    read_rows            the selection (cached between rounds)         (400 on a bad filter)
    check_rows           min_row_count, nfilter_subset, nfilter_glm     (403; explore: skipped)
    check_cohort         differencing: cohorts near answered ones      (403 differencing; a study: at approval;
                                                                        explore: skipped)
    check_groups         differencing: released groups (levels, cells) (403 differencing, ADR 0051; as above)
    check_weighted       differencing of weighted sums: the rows between (403 dominated_sums, ADR 0058; as above)
                         two releases of one weight family hold min_row_count
                         rows in effect
    check_pooled_parts   survival releases of rows bound to a pool: that (403 pooled_bins, ADR 0059)
                         pooled release only
    run_local_step       the algorithm's local step                    (400 on a state that does not fit;
                                                                        explore: skipped, the release computes)
    bind_pooled          pooled thresholds: one participant set and     (403 pooled_bins, ADR 0052)
                         one pool per cohort
    check_partition      differencing: k-means assignments             (403 differencing)
    derive_clusters      a k-means round's clusters are its released groups (checked by check_released_groups)
    check_weights        effective rows of sums weighted by the iterate (403 effective_rows, ADR 0054;
                                                                        explore: skipped)
    check_release        disclosure controls on the aggregates         (403; explore: skipped)
    check_released_groups  differencing: the groups of a release that   (403 differencing, ADR 0051 amended;
                         suppresses its small cells (histogram bins), less as check_groups)
                         the cells it hid; k-means clusters (ADR 0051 amended)
    check_pooled_windows survival releases near a pooled one in a      (403 pooled_bins, ADR 0059 amended)
                         window of time (bin ends known only now)
    check_pooled_counts  any other release: its counted sets near a     (403 pooled_bins, ADR 0059 amended;
                         pooled release's rows in a window and level    explore: skipped)
    add_noise            differential privacy, charged to the budget   (403 dp_*; explore: keyed noise, charged,
                                                                        then min_row_count / nfilter_* / cells
                                                                        decided on the noisy values)
    check_finite         the release holds finite numbers only          (403 non_finite, ADR 0053)
    seal                 sealed sums encrypted to every participant    (403 round_verification, ADR 0046)
    mask                 secure aggregation, last change to the aggregates (400 / 403 secure_aggregation)
    tag_release          the reply's tag for every participant (verifiable rounds)
    remember_cohort      the cohort ledger learns what was released    (explore: not recorded, a DP release)
    remember_pooled_parts  survival releases on per-node bins, by rows (ADR 0059)
    remember_pooled_windows  survival releases' rows by time and bin ends (ADR 0059 amended)
    remember_counted_sets  any other release: the sets it counts, with their rows' times (ADR 0059 sixteenth review)
    audit_answer         the "allowed" record
    charge_query_budget  the analysis counts against the budgets

Every request that parses counts against the query budgets (ADR 0025), answered
or refused: a refusal by any control is charged by :func:`answer_step` before
its audit record is written (``counted``), except one refused by the budget
itself.  A refusal tells the requester something, so it is not free.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping, Sequence

from mipflow.algorithms import get_algorithm
from mipflow.algorithms.provenance import code_of
from mipflow.exceptions import DisclosureError, MipflowError, RequestError, StoreError
from mipflow.node.api.context import DataModelNotHeld, StepContext
from mipflow.node.api.round_stages import mask, open_sealed, seal, tag_release, verify_round
from mipflow.node.api.schema import read_step_body
from mipflow.node.controls.differencing import consent_epoch, current_rows
from mipflow.node.controls.release_class import release_class
from mipflow.node.controls.disclosure import DisclosureControls, group_threshold
from mipflow.node.controls.masking import require_secure_aggregation
from mipflow.node.controls.pooled_bins import bind_pooled, check_pooled_parts, remember_pooled_parts, require_pooled_masking
from mipflow.node.controls.counted_memory import remember_counted_sets
from mipflow.node.controls.pooled_counts import check_pooled_counts
from mipflow.node.controls.pooled_windows import check_pooled_windows, remember_pooled_windows
from mipflow.node.controls.query_budget import analysis_key
from mipflow.node.controls.explore import check_explore, release_explore
from mipflow.node.controls.cluster_groups import derive_clusters, with_step_order
from mipflow.node.controls.finite import check_finite
from mipflow.node.controls.groups import check_groups, remember_groups
from mipflow.node.controls.released_groups import check_released_groups
from mipflow.node.controls.study import check_study
from mipflow.node.controls.weighted_ledger import check_weighted, remember_weighted
from mipflow.node.home import NodeSettings
from mipflow.protocol.request import AnalysisRequest

#: What a step raises reading a central state that is not the one it broadcast (a key missing,
#: a list too short, text for numbers...).  The node cannot check the state of every
#: algorithm beforehand; it answers such a call as a bad request.
STATE_ERRORS = (KeyError, IndexError, TypeError, ValueError, ArithmeticError)


def malformed_state(algorithm: str, round_no: int, exc: BaseException) -> str:
    """The refusal of a step whose central state does not fit: the error's type only, as its
    text may quote values the step computed."""
    return (f"{algorithm}: the state of round {round_no} does not fit this step "
            f"({type(exc).__name__}); it must be the one the central site broadcast")


@dataclass(frozen=True)
class StepRequest:
    """One step call, parsed once; every control reads this object.

    Attributes
    ----------
    algorithm : str
        The catalogue name of the step (from the path).
    round : int
        Round of an iterative algorithm (0 to 1000).
    analysis : AnalysisRequest
        The Exareme2 request: data model, datasets, variables, filters, parameters.
    state : dict or None
        The global state the central site broadcast for this round.
    researcher, project : str or None
        Who the analysis runs for, as the signed client vouches (checked by :func:`check_access`).
    analysis_id : str or None
        The central site's id of the analysis (all its rounds share it).
    secure_aggregation : Mapping or None
        ``{scheme, participants}`` when the release is to be masked (:mod:`mipflow.secagg`).
    transcript : Mapping or None
        The participants and the previous round's tagged contributions
        (:mod:`mipflow.secagg.transcript`); required from round 1 on.
    """

    algorithm: str
    round: int
    analysis: AnalysisRequest
    state: dict[str, Any] | None = None
    researcher: str | None = None
    project: str | None = None
    analysis_id: str | None = None
    secure_aggregation: Mapping[str, Any] | None = None
    transcript: Mapping[str, Any] | None = None


@dataclass
class StepWork:
    """What the controls learn about one request on its way through :data:`CHAIN`.

    ``record`` is the request's audit record as far as the controls got; it never
    holds row values.  ``settings`` are the node's settings read once when the
    request arrived, so every control of a request sees the same ones.
    """

    settings: NodeSettings
    record: dict[str, Any]
    started: float = field(default_factory=time.perf_counter)
    controls: DisclosureControls = field(init=False)
    algo: Any = None
    code: dict[str, str] = field(default_factory=dict)
    analysis_key: str = ""
    model: Any = None
    variables: tuple[str, ...] = ()
    data: Any = None
    cohorts: Any = None
    sums_only: int = 0  # the step's release class (mipflow.node.controls.release_class, ADR 0063), set with its cohorts
    rows: int = 0
    aggregates: Any = None
    labels: Any = None
    groups: Any = None  # the groups the step releases (mipflow.node.controls.groups, ADR 0051)
    weighted: Any = None  # its rows under each weight family (mipflow.node.controls.weighted_ledger, ADR 0058)
    current_rows: Any = None  # data model -> its current row and patient keys, read when needed (ADR 0061)
    disk_order: Any = None  # rows on disk and their row and patient keys in order, read once (ADR 0062, 11)
    state: Any = None        # the state the local step computes on: the node's own recomputation
    transcript: Any = None   # the parsed transcript (mipflow.secagg.transcript.Transcript)
    chain: str | None = None
    tags: dict[str, str] | None = None
    study: Any = None  # the study selection answering the request (study mode, ADR 0028)
    explore: Any = None  # the admitted explore step (explore mode, ADR 0032)
    pool_chain: Any = None  # a pooled Kaplan-Meier step's chain of earlier pools (ADR 0060)
    dropped: int | None = None  # longitudinal transformer: patients dropped, when released (ADR 0034)
    notes: dict[str, bool] | None = None  # round 0: the algorithm's flags about the rows (ADR 0041)
    #: the request narrowed to the datasets the grants cover, when that is fewer (rows are read for it)
    covered: Any = None
    #: a survival release's rows by leaving time and its bin ends (mipflow.node.controls.pooled_windows)
    windows: Any = None

    def __post_init__(self) -> None:
        self.controls = DisclosureControls(self.settings)


#: A control: reads the request, may read and extend the work, raises to refuse.
Control = Callable[[StepRequest, StepContext, StepWork], None]


# --------------------------------------------------------------------------- parsing


def parse_step(algorithm: str, raw: bytes, work: StepWork) -> StepRequest:
    """The step call in ``raw`` as a :class:`StepRequest` (the only parse of the request).

    The strings of the request are measured against ``nfilter_string`` before
    anything interprets them (free text smuggled into names, values or parameters).

    Raises
    ------
    RequestError
        If the body is not a step call or the Exareme2 request is malformed.
    DisclosureError
        ``nfilter_string``, for a string longer than the node allows.
    """
    body = read_step_body(raw)
    work.record.update(researcher=(body.researcher or "")[:128], project=(body.project or "")[:128])
    work.controls.check_strings(body.request)
    analysis = AnalysisRequest.from_dict(body.request)
    work.record.update(round=body.round, data_model=analysis.data_model, datasets=list(analysis.datasets),
                       x=list(analysis.x), y=list(analysis.y), filters=analysis.filters)
    # the analysis the step belongs to, known before any control can refuse it (the query budget)
    work.analysis_key = analysis_key(body.analysis_id, algorithm, analysis.to_dict())
    work.record["analysis"] = work.analysis_key
    work.state = body.state  # verify_round replaces it with the node's own recomputation
    return StepRequest(algorithm=algorithm, round=body.round, analysis=analysis, state=body.state,
                       researcher=body.researcher, project=body.project, analysis_id=body.analysis_id,
                       secure_aggregation=body.secure_aggregation, transcript=body.transcript)


# --------------------------------------------------------------------------- the controls, in order


def resolve_algorithm(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """The vetted step code (no arbitrary code): known to the catalogue, its digest recorded,
    not switched off by the node admin (control ``disabled_algorithm``)."""
    work.algo = get_algorithm(request.algorithm)
    work.code = code_of(request.algorithm)
    work.record.update(work.code)
    if request.algorithm in context.disabled_algorithms(work.settings):
        raise DisclosureError(f"algorithm {request.algorithm!r} is disabled by the admin of node {context.name}",
                              control="disabled_algorithm")


def check_access(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """The node's own grants cover the researcher, project, data model, algorithm and at least one
    of the datasets (control ``access``, ADR 0010); the rows are read from the covered datasets only
    (a request across nodes names every node's datasets)."""
    datasets, work.record["grants"] = context.access.covered(
        researcher=request.researcher, project=request.project, data_model=request.analysis.data_model,
        datasets=request.analysis.datasets, algorithm=request.algorithm)
    if tuple(datasets) != tuple(request.analysis.datasets):
        work.covered = replace(request.analysis, datasets=tuple(datasets))
        work.record["datasets_answered"] = list(datasets)


def check_query_budget(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """A new analysis fits the researcher's and the project's budgets of distinct analyses
    (control ``query_budget``, ADR 0025); later rounds and restarts of one analysis count once.
    From here on the step counts, whether it is answered or refused."""
    context.budget.check(request.researcher, work.analysis_key, work.settings.query_budget,
                         project=request.project, project_limit=work.settings.query_budget_project)
    work.record["counted"] = True


def find_data_model(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """The data model the request names, if the node holds data of it (else 404, control ``data_model``);
    with a longitudinal transformer, its view with the transformed variables (ADR 0034)."""
    from mipflow.algorithms.longitudinal import model_view

    work.model = model_view(context.data_model(request.analysis.data_model), request.analysis)


def validate_request(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """Variables and parameters checked against the data model and the algorithm's declaration."""
    work.algo.validate(request.analysis, work.model)
    work.variables = tuple(work.algo.variables(request.analysis))


def check_request(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """Disclosure controls on the request itself, before any row is read (ADR 0002)."""
    work.controls.check_request(work.algo, request.analysis, work.model)


def read_rows(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """The rows the step uses (datasets, filters, complete cases), from the cache when current."""
    model = work.model if request.analysis.longitudinal is None else context.data_model(request.analysis.data_model)
    work.data, work.cohorts = context.selections.rows(work.algo, work.covered or request.analysis, model,
                                                      work.variables, work.settings.frame_cache_mb, work.study,
                                                      columnar=bool(work.settings.columnar_snapshot),
                                                      streamed=work.explore is None and not work.settings.dp_enabled)
    work.rows = len(work.data)
    work.record["rows"] = work.rows
    if request.analysis.longitudinal is not None:
        work.cohorts, work.dropped = longitudinal_cohorts(work.cohorts, work.rows, work.settings)


def longitudinal_cohorts(cohorts: Any, rows: int, settings: NodeSettings) -> tuple[Any, int | None]:
    """A longitudinal transformer's cohorts and the patients dropped that the step releases (ADR 0034).

    The count of patients dropped (those with a row at either visit, less the ``rows`` used) is
    released only when it is at least ``min_row_count`` and ``nfilter_tab``; then the rows of either
    visit of every patient looked at stay a cohort of the ledger beside the rows used, else that
    cohort is left out (nothing is released about it)."""
    import dataclasses

    seen = getattr(cohorts, "seen", None)
    dropped = None if seen is None else seen - rows
    if dropped is not None and dropped >= max(settings.min_row_count, settings.nfilter_tab):
        return cohorts, dropped
    return dataclasses.replace(cohorts, sets=cohorts.sets[:1], digests=cohorts.digests[:1],
                               patients=None if cohorts.patients is None else cohorts.patients[:1],
                               stamps=None if cohorts.stamps is None else cohorts.stamps[:1]), None


def check_rows(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """Disclosure controls on the number of rows, before anything is computed from them (explore
    mode: decided on the noisy count instead, by :func:`add_noise`)."""
    if work.explore is not None:
        return
    work.controls.check_rows(work.algo, request.analysis, work.model, work.rows)
    work.controls.check_clusters(work.algo, request.analysis, work.model, work.data)  # patients (gee)


def check_cohort(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """Differencing (ADR 0013): the cohorts may not differ by a few rows from answered ones.
    The cohort's digest is recorded even while ``differencing_check`` is off."""
    work.record["cohort"] = work.cohorts.digest[:16]
    work.sums_only = release_class(work.algo, request.analysis, work.model)  # ADR 0063
    work.current_rows = _current_rows(context, work)  # read only for releases of an earlier consent epoch
    if work.explore is not None:  # a DP release: robust to any other release, the ledger has no say (ADR 0032)
        return
    if work.settings.differencing_check and work.study is None:  # a study's cohorts: checked at approval
        context.differencing.before_step(work.cohorts, work.settings.min_row_count, consent_epoch(context.store),
                                         work.current_rows, sums_only=work.sums_only)


def _current_rows(context: StepContext, work: StepWork) -> Any:
    """The current rows of a data model, for releases of an earlier consent epoch (ADR 0061)."""
    def model_of(data_model: str) -> Any:
        return work.model if data_model == work.model.key else context.data_model(data_model)

    return current_rows(context.store, model_of, context.differencing.key, bool(work.settings.columnar_snapshot))


@contextmanager
def _reading_the_state(request: StepRequest) -> Iterator[None]:
    """Answer a step that cannot read the central state as a bad request (:data:`STATE_ERRORS`);
    without a state to blame (round 0, no state) the error is the step's own (a 500)."""
    try:
        yield
    except MipflowError:
        raise
    except STATE_ERRORS as exc:
        if request.round == 0 and request.state is None:
            raise
        raise RequestError(malformed_state(request.algorithm, request.round, exc)) from None


def run_local_step(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """The algorithm's local step on the rows, with the state the central site broadcast (explore
    mode: none; the noisy release computes from the rows, so no exact-data error can answer)."""
    if work.explore is not None:
        return
    with _reading_the_state(request):
        work.aggregates = work.algo.local_step(request.round, work.data, request.analysis, work.model,
                                               work.state)
    notes = getattr(work.algo, "release_notes", None)
    if request.round == 0 and notes is not None:  # after check_rows: the patients passed min_row_count
        work.notes = notes(work.data, request.analysis, work.model)


def check_partition(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """Differencing of k-means rounds (ADR 0013), once the step has checked the state's centres: two
    released assignments may not single out fewer rows than a released cluster holds (ADR 0050)."""
    if not work.settings.differencing_check:
        return
    setting, threshold = group_threshold(work.algo, work.settings)
    with _reading_the_state(request):
        work.labels = context.differencing.check_partition(
            work.algo, request.round, work.data, request.analysis, work.state, with_step_order(request, work),
            threshold, work.settings.partitions_per_cohort, setting)


def check_weights(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """Effective rows (ADR 0054): a round whose sums the algorithm weights per row by a function of
    the verified iterate (``row_weights``: logistic regression and its CV, GEE with a non-identity link;
    not Cox yet, ADR 0054's amendment) is refused when those weights rest on fewer than ``min_row_count`` rows in effect (control
    ``effective_rows``), however many rows the step reads: a diverging fit's sums are a few patients'
    records.  Explore mode: skipped (a noisy single-round release, no iterate)."""
    weights = getattr(work.algo, "row_weights", None)
    if work.explore is not None or weights is None or work.settings.min_row_count <= 1:
        return
    from mipflow.node.controls.effective_rows import check_effective_rows

    with _reading_the_state(request):
        vectors = weights(request.round, work.data, request.analysis, work.model, work.state)
        check_effective_rows(vectors, work.settings.min_row_count)


def check_release(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """Disclosure controls on the aggregates: refusals and suppressed cells (ADR 0002; explore mode:
    on the noisy aggregates, by :func:`add_noise`)."""
    if work.explore is not None:
        return
    if work.study is not None:  # a study's histograms hide the family's pattern first (ADR 0035)
        from mipflow.node.controls.study_suppression import apply_pattern

        work.aggregates = apply_pattern(context.home.root, work.study, request.analysis, work.model,
                                        work.aggregates)
        from mipflow.node.controls.study_survival import apply_survival

        # and its survival releases (Kaplan-Meier, Cox) the family's partition
        work.aggregates = apply_survival(work.study.study, request.algorithm, request.round, work.aggregates,
                                         work.state, work.model)
    work.aggregates = work.controls.release(work.algo, request.analysis, work.model, request.round,
                                            work.aggregates)


def add_noise(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """Differential privacy (ADR 0015): noise after the controls, charged before the reply.
    The exact row count stays at the node when noise was added.  An explore step (ADR 0032) gets
    keyed noise, is charged to the explore budgets and then decided on its noisy values
    (:func:`mipflow.node.controls.explore.release_explore`), whether or not the node has ``dp_enabled``."""
    if work.explore is not None:
        release_explore(request, context, work)
        return
    analysis = request.analysis
    if work.settings.dp_enabled and work.algo.dp_release is not None:
        # per-dataset parts for the datasets the grants cover and the node holds, rows or not (ADR 0032)
        held = {str(r["dataset"]) for r in context.store.datasets(work.model.key)}
        scope = work.covered or analysis
        analysis = replace(scope, datasets=tuple(d for d in scope.datasets if d in held))
    noisy = context.privacy.apply(work.settings, work.algo, analysis, work.model, request.round,
                                  work.data, request.researcher or "", project=request.project or "",
                                  details={"analysis": work.analysis_key})
    if noisy is not None:
        work.aggregates, work.record["dp"], work.rows = noisy.aggregates, noisy.label, noisy.rows


def remember_cohort(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """The cohort ledger and partition memory learn what is released (even while the check is off);
    not an explore release: differentially private, it is safe whatever else is released."""
    if work.explore is not None:
        return
    context.differencing.after_step(work.cohorts, request.analysis, work.labels, consent_epoch(context.store),
                                    sums_only=work.sums_only)
    remember_groups(context, work)
    remember_weighted(context, work)


def audit_answer(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """The request's one audit record: allowed, with the time it took."""
    context.audit.append(**work.record, decision="allowed", ms=round(1000 * (time.perf_counter() - work.started), 2))


def charge_query_budget(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """The analysis counts against the researcher's and the project's budgets (a refused step is
    charged by :func:`charge_refusal`)."""
    context.budget.charge(request.researcher, work.analysis_key, project=request.project,
                          limit=work.settings.query_budget, project_limit=work.settings.query_budget_project)


def charge_refusal(request: StepRequest, context: StepContext, work: StepWork, exc: MipflowError) -> None:
    """A refused step counts like an answered one (ADR 0025): refusals are not free probes.

    Not charged again: a step refused because a budget is spent.  A step refused before
    :func:`check_query_budget` (access, a disabled algorithm) counts while the budgets have
    room.  ``work.record["counted"]`` says whether it counted; the ledger is rebuilt from it.
    """
    if isinstance(exc, DisclosureError) and exc.control == "query_budget":
        return
    work.record["counted"] = context.budget.charge(
        request.researcher, work.analysis_key, project=request.project, limit=work.settings.query_budget,
        project_limit=work.settings.query_budget_project)


#: The node's controls in the order a step passes them (see the module docstring).
CHAIN: tuple[Control, ...] = (
    resolve_algorithm,
    check_access,
    check_query_budget,
    require_secure_aggregation,
    find_data_model,
    validate_request,
    verify_round,
    open_sealed,
    check_request,
    check_study,
    check_explore,
    require_pooled_masking,
    read_rows,
    check_rows,
    check_cohort,
    check_groups,
    check_weighted,
    check_pooled_parts,
    run_local_step,
    bind_pooled,
    check_partition,
    derive_clusters,
    check_weights,
    check_release,
    check_released_groups,
    check_pooled_windows,
    check_pooled_counts,
    add_noise,
    check_finite,
    seal,
    mask,
    tag_release,
    remember_cohort,
    remember_pooled_parts,
    remember_pooled_windows,
    remember_counted_sets,
    audit_answer,
    charge_query_budget,
)


# --------------------------------------------------------------------------- running a step


def refusal_of(exc: MipflowError) -> dict[str, Any]:
    """The audit fields of a step refused with ``exc``: decision and the control that refused."""
    if isinstance(exc, DisclosureError):
        return {"decision": "refused", "control": exc.control}
    if isinstance(exc, DataModelNotHeld):
        return {"decision": "refused", "control": "data_model"}
    if isinstance(exc, (RequestError, StoreError)):
        return {"decision": "refused", "control": "request"}
    return {"decision": "error"}


def answer_step(context: StepContext, client: str, algorithm: str, raw: bytes, *,
                chain: Sequence[Control] = CHAIN) -> dict[str, Any]:
    """Answer one authenticated step call: parse it, pass it through ``chain``, build the reply.

    Parameters
    ----------
    context : StepContext
        The node's context.
    client : str
        The authenticated client (the central site) that signed the call.
    algorithm : str
        The step asked for (path parameter).
    raw : bytes
        The signed body.
    chain : sequence of controls
        :data:`CHAIN`, unless a test replaces it.

    Returns
    -------
    dict
        The reply (:class:`mipflow.node.api.schema.StepReply`): node, algorithm, round, rows,
        aggregates, code, privacy.

    Raises
    ------
    MipflowError
        The refusal, already written to the audit log (``refused`` with its control, or ``error``).
    """
    work = StepWork(settings=context.settings(),
                    record={"client": client, "endpoint": "/v1/steps", "algorithm": algorithm})
    request: StepRequest | None = None
    try:
        request = parse_step(algorithm, raw, work)
        for control in chain:
            control(request, context, work)
    except MipflowError as exc:
        if request is not None:  # a body that does not parse is not charged: only its bytes decide that
            charge_refusal(request, context, work, exc)
        context.audit.append(**work.record, **refusal_of(exc), reason=str(exc))
        raise
    return {"node": context.name, "algorithm": algorithm, "round": request.round, "rows": work.rows,
            "aggregates": work.aggregates, "code": work.code, "privacy": work.record.get("dp"),
            "tags": work.tags, "chain": work.chain,
            **({"mode": work.study.study.mode} if work.study is not None else
               {"mode": work.explore.mode} if work.explore is not None else {}),
            **({"longitudinal": longitudinal_release(work)} if request.analysis.longitudinal is not None else {}),
            # an exact flag beside noisy aggregates would be an exact release: none then (ADR 0041)
            **({"notes": work.notes} if work.notes and not work.record.get("dp") else {})}


def longitudinal_release(work: StepWork) -> dict[str, Any]:
    """What a step with a longitudinal transformer says of the patients it dropped (ADR 0034):
    ``patients_dropped`` as :func:`longitudinal_cohorts` allowed it, and null when noise was added
    (an exact count beside the noisy rows would undo it)."""
    return {"patients_dropped": None if work.record.get("dp") or work.explore is not None else work.dropped}
