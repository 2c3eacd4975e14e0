"""The contract of a federated algorithm: the :class:`Algorithm` protocol and its :class:`Step`.

"Code visits data": a hospital node runs a vetted :meth:`Algorithm.local_step`
on its own (already filtered, complete-case) rows and releases only the
aggregates it returns; the central side runs :meth:`Algorithm.global_step` on
the aggregates of every node.  A global step either finishes with a result or
asks for another round, sending a ``state`` to every node.  Nodes keep nothing
between rounds: whatever an iterative method needs (coefficients, the chosen
design columns, bin edges) travels in that state.  (A node may keep arrays it
derived from its own rows, as a cache that never changes a result:
:mod:`mipflow.algorithms.prepared`.)

The request is the MIP / Exareme2 algorithm request
(``{"inputdata": {...}, "parameters": {...}}``) and results use Exareme2's
field names, so MIP tooling and Exareme2's validation suite work unchanged.
The algorithms declare their inputs and parameters in the spec form of
:mod:`mipflow.algorithms.spec`; :mod:`mipflow.algorithms.local` prepares a
node's rows for a local step and runs a whole analysis in one process.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest

if TYPE_CHECKING:  # the catalogue (and so the DAG files) imports this module without pandas; only the
    # algorithms with a noisy release depend on the DP module (their code digest)
    import numpy as np
    import pandas as pd

    from mipflow.algorithms.dp_release import DPRelease
    from mipflow.algorithms.weighted import WeightFamily

#: Safety stop for the rounds of one analysis (:func:`mipflow.algorithms.local.run_in_process`,
#: :func:`mipflow.central.rounds.run_analysis`).
MAX_ROUNDS = 500

# --------------------------------------------------------------------------- protocol


@dataclass
class Step:
    """What a global step returns.

    ``done`` with a ``result``, or not done with a ``state`` that is sent to
    every node for the next round.  ``memo`` is kept by the central side only
    (never sent to a node): what :meth:`Algorithm.on_refusal` may need of the
    aggregates already combined, e.g. the last round's pooled sums.
    """

    done: bool
    result: dict | None = None
    state: dict | None = None
    memo: dict | None = None


@runtime_checkable
class Algorithm(Protocol):
    """A federated algorithm: a vetted local step and a global step.

    ``complete_case`` tells the node whether to drop rows with a missing value
    in any of :meth:`variables` before the local step (true for every
    algorithm except ``descriptive_stats``, which counts missing values).
    """

    name: str
    complete_case: bool
    released_by: tuple[str, ...]
    sums_only: bool

    def variables(self, request: AnalysisRequest) -> tuple[str, ...]: ...

    def validate(self, request: AnalysisRequest, model: DataModel) -> None: ...

    def local_step(
        self,
        round: int,
        data: pd.DataFrame,
        request: AnalysisRequest,
        model: DataModel,
        state: dict | None,
    ) -> dict: ...

    def global_step(
        self,
        round: int,
        aggregates: list[dict],
        request: AnalysisRequest,
        model: DataModel,
        state: dict | None,
    ) -> Step: ...

    def on_refusal(
        self,
        round: int,
        refusals: Mapping[str, tuple[str, str]],
        request: AnalysisRequest,
        model: DataModel,
        state: dict | None,
        memo: dict | None,
    ) -> Step | None: ...

    # -- privacy capabilities (see "privacy capabilities" below; defaults in spec.SpecAlgorithm) --

    secure_aggregation: str
    dp_release: DPRelease | None
    bin_count_setting: str
    group_count_setting: str
    sealed_rounds: bool
    sealed_masked: bool

    def secure_aggregation_refusal(self, request: AnalysisRequest) -> str | None: ...

    def secure_aggregates(self, aggregates: dict, request: AnalysisRequest, model: DataModel) -> dict: ...

    def masked_round(self, round: int, state: dict | None) -> bool: ...

    def parameter_count(self, request: AnalysisRequest, model: DataModel) -> int | None: ...

    def fold_sizes(self, request: AnalysisRequest, n_rows: int) -> list[int] | None: ...

    def coarsen_for_release(self, round: int, aggregates: dict, min_count: int,
                            bin_count: int | None = None) -> dict: ...

    def differencing_partition(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                               state: dict | None) -> np.ndarray | None: ...

    def released_groups(self, request: AnalysisRequest, model: DataModel) -> tuple[ReleasedGroups, ...]: ...

    def hidden_cells(self, aggregates: dict, request: AnalysisRequest,
                     model: DataModel) -> Sequence[tuple[tuple[str, str], ...]]: ...

    def pool_sealed(self, parts: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]: ...

    def sealed_mask_scheme(self, participants: int) -> str | None: ...

    def row_weights(self, round: int, data: pd.DataFrame, request: AnalysisRequest, model: DataModel,
                    state: dict | None) -> Iterable[np.ndarray] | None: ...

    def weight_families(self, request: AnalysisRequest, model: DataModel) -> tuple[WeightFamily, ...]: ...

    def pooled_threshold(self, request: AnalysisRequest, model: DataModel) -> bool: ...

    def session_request(self, request: dict, masked_participants: int, fallback: bool) -> dict: ...


# --------------------------------------------------------------------------- privacy capabilities
#
# What an algorithm's aggregates allow and need at a node's privacy controls, stated by the
# algorithm itself (members of :class:`Algorithm`, defaults in
# :class:`mipflow.algorithms.spec.SpecAlgorithm`), so that a
# new algorithm declares its privacy behaviour in its own module and no control keeps a list:
#
# * ``secure_aggregation`` (one of :data:`SECURE_AGGREGATION`), ``secure_aggregation_refusal``
#   and ``secure_aggregates``: whether and how its aggregates are summed under secure
#   aggregation (:mod:`mipflow.secagg`, ADR 0014); ``masked_round``: which rounds of a secure
#   analysis are masked (default all; Cox regression's round 0 and "sums" rounds are not, ADR 0048),
#   decided on the round and its verified state only, so every node and the central site agree;
# * ``dp_release``: its noisy release at a node with differential privacy
#   (:class:`mipflow.algorithms.dp_release.DPRelease`, ADR 0015 / 0021), or None;
# * ``parameter_count``: its model's parameters, checked against ``nfilter_glm``;
# * ``cluster_count``: the patients among its rows (``gee``), checked like rows against
#   ``min_row_count`` and ``nfilter_glm``;
# * ``fold_sizes``: the folds whose statistics it releases, each checked like a step;
# * ``coarsen_for_release``: its own coarsening to the node's ``nfilter_tab`` before the checks
#   (``bin_count_setting``: or to ``min_row_count``, when sums of covariates per bin reach anyone);
# * ``group_count_setting``: the node setting every released non-empty group must reach (default
#   ``nfilter_tab``; k-means clusters ``min_row_count``, ADR 0050);
# * ``differencing_partition``: the partition of the rows whose sums a round releases, which
#   the node compares with the partitions it released before (k-means, ADR 0013);
# * ``released_groups``: the level cells of nominal variables whose sums (count, means, spreads)
#   its local step releases (:class:`ReleasedGroups`): t-test and ANOVA groups, Gaussian naive
#   Bayes classes, the dummy levels of every algorithm that dummy-encodes its covariates, with two
#   nominal covariates or more each pair's joint cells
#   (:func:`mipflow.algorithms.design.dummy_level_groups`: linear and logistic regression, GEE, LMM,
#   Cox; their cells also checked per release, :func:`mipflow.algorithms.design.declared_cell_counts`),
#   contingency cells, a binary response's classes and Cox's event set
#   (:func:`mipflow.algorithms.design.class_groups`), histogram bins (numerical columns cut into
#   ``bins``).  The node derives every group they let anyone
#   form (cells, margins of cells, their union) and holds each, against the same group of earlier
#   releases and against the rows of the cohort outside it, to the group threshold
#   (:mod:`mipflow.node.controls.groups`, ADR 0051); ``hidden_cells``: of a grouping whose small
#   cells are suppressed (``ReleasedGroups.suppressed``), the cells the checked aggregates hide;
# * ``sealed_rounds`` and ``pool_sealed``: its local steps may return sums for the other nodes only,
#   under the aggregate key ``sealed`` (:mod:`mipflow.algorithms.sealed`, ADR 0046): the node seals
#   them to every participant after its controls saw them, the central site forwards ciphertexts, and
#   each node pools what it opens (``pool_sealed``, default: elementwise sums) for its next local step
#   (state key ``sealed_pooled``); the global step never reads them; ``sealed_masked``: they are masked
#   before sealing, so that each peer learns only their pool (ADR 0052), in the scheme
#   ``sealed_mask_scheme(participants)`` names (integers; Cox's real sums in fixed point from 3
#   participants, ADR 0055; None: sealed as they are);
# * ``pooled_threshold``: a request whose release is checked on counts pooled over the participants
#   (Kaplan-Meier's pooled time bins, ADR 0052), which a node answers only masked among at least 3
#   pinned participants, one participant set and pool per cohort; ``session_request``: the request
#   of one attempt given the participants it masks (Kaplan-Meier's ``survival_bins = auto``);
# * ``row_weights``: the weights a round's sums put on the rows when the iterate in the state sets them
#   (logistic regression's ``p (1 - p)`` and ``y - p``, a GEE's variance and residual; not Cox yet,
#   ADR 0054's amendment): the node refuses a round whose weights rest on fewer than
#   ``min_row_count`` rows in effect (control ``effective_rows``, ADR 0054);
# * ``weight_families``: the weight functions of sums weighted by the rows' own values, fixed by the
#   request (PCA's ``exp``: ``exp(x_a)``, ``exp(2 x_a)``, ``exp(x_a + x_b)``); the node holds, across
#   releases of the same family, the rows between two cohorts to ``min_row_count`` in effect
#   (control ``dominated_sums``, ADR 0058);
# * ``released_by``: row columns (e.g. ``dataset``) whose levels split its released statistics;
#   each level's rows enter the differencing ledger as cohorts of their own.  (Rows complete on
#   every variable, released by an algorithm that is not complete-case, e.g. ``descriptive_stats``'s
#   model-based statistics, always do.)
# * ``sums_only``: every statistic its local steps release over a cohort is a sum over the rows of a
#   function of each row's values fixed by the request (no fitted iterate, order statistic or data-cut
#   bin): between two such releases the differencing ledger leaves the pairwise rule to the chain rule
#   and its exact backstop (ADR 0063).

@dataclass(frozen=True)
class ReleasedGroups:
    """Groups of rows a local step releases sums over: the joint level cells of ``columns``.

    ``columns`` are nominal variables of the request, or numerical ones cut into ``bins``; ``levels``
    (one tuple of enumeration codes per column, None for every level of that column, or None for every
    level of every column) are the levels whose cells are released.  A step that releases the cells of
    two columns (two-way ANOVA) releases their margins too (sums of cells), and every grouping releases
    the union of its cells.  Declared by the algorithm from the request alone (ADR 0051).

    ``rest``: the rows of a column whose level is not among its ``levels`` (and not missing) are one
    more level of it (a binary response's negative class: every level but ``positive_class``).
    ``bins``: per column, the edges of a numerical column's bins (``numpy.histogram``'s: each bin
    half-open, the last closed; a value outside is in no cell), or None for a nominal column.
    ``suppressed``: the release suppresses its cells in ``(0, nfilter_tab)`` (and more, consistently,
    ADR 0031) rather than being refused: only the cells it leaves, and the margins of those alone, are
    released (:meth:`Algorithm.hidden_cells` names the others after the release check; histograms).
    """

    columns: tuple[str, ...]
    levels: tuple[tuple[str, ...] | None, ...] | None = None
    rest: bool = False
    bins: tuple[tuple[float, ...] | None, ...] | None = None
    suppressed: bool = False


#: Values of ``Algorithm.secure_aggregation``: its aggregates are not all sums
#: (``"unsupported"``); they are, and automatic mode masks them from 3 nodes
#: (``"automatic"``); they are, but the secure result is narrower than the plain one,
#: so they are masked only when asked for (``"explicit_only"``).
SECURE_AGGREGATION = ("unsupported", "automatic", "explicit_only")
