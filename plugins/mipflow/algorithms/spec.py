"""The spec form of an algorithm: its inputs and parameters, checked at the node.

:class:`SpecAlgorithm` is the base class of every algorithm in the catalogue: it
declares the inputs (:class:`InputSpec`) and parameters (:class:`ParamSpec`)
in Exareme2's spec form, validates requests against them, coerces parameters
and applies their defaults (docs/adr/0022-algorithm-catalogue.md), and holds
the defaults of the privacy capabilities that :class:`~mipflow.algorithms.contract.Algorithm`
declares.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from mipflow.algorithms.contract import ReleasedGroups, Step
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel, Variable
from mipflow.protocol.request import AnalysisRequest

if TYPE_CHECKING:  # the catalogue (and so the DAG files) imports this module without pandas; only the
    # algorithms with a noisy release depend on the DP module (their code digest)
    import numpy as np
    import pandas as pd

    from mipflow.algorithms.dp_release import DPRelease
    from mipflow.algorithms.weighted import WeightFamily

NUMERICAL = "numerical"
NOMINAL = "nominal"


@dataclass(frozen=True)
class InputSpec:
    """What ``inputdata.x`` or ``inputdata.y`` may hold (Exareme2 spec form).

    Parameters
    ----------
    types : tuple of str
        Allowed SQL types of the variables (``"int"``, ``"real"``, ``"text"``).
    stattypes : tuple of str
        Allowed kinds: :data:`NUMERICAL`, :data:`NOMINAL`.
    notblank : bool
        At least one variable is required.
    multiple : bool
        A list of variables (else at most one).
    label, description : str
        What forms and ``mipflow algorithms list`` show.
    why : str
        Why the types or kinds are restricted and what to use instead, added to the refusal of a
        variable outside them (e.g. k-means on an integer variable, ADR 0050).
    """

    types: tuple[str, ...]
    stattypes: tuple[str, ...]
    notblank: bool
    multiple: bool
    label: str = ""
    description: str = ""
    why: str = ""


@dataclass(frozen=True)
class ParamSpec:
    """One algorithm parameter (Exareme2 spec form); its wire name is its key in
    :attr:`SpecAlgorithm.parameter_specs`.

    This is the one declaration of a parameter: nodes check requests against it
    (:meth:`SpecAlgorithm.params`), and the central DAGs' forms and ``mipflow
    algorithms list`` are built from it (:mod:`mipflow.algorithms.catalogue`).

    Parameters
    ----------
    types : tuple of str
        Exareme2 types: ``"int"``, ``"real"``, ``"text"``, ``"dict"``.
    default
        Used when a request leaves the parameter out (or sends null or ``""``).
    notblank : bool
        Without a default the parameter is required; with one, a form may not
        empty it.  A parameter that is not ``notblank`` is optional.
    min, max : float, optional
        Bounds, inclusive unless ``min_exclusive`` / ``max_exclusive``.
    enums : tuple, optional
        The allowed values.
    enums_from : {"x", "y"}, optional
        The allowed values are the CDE enumerations of that input's (first)
        variable.
    label : str
        Short title (forms, tables).
    description : str
        What the parameter means; where mipflow deliberately differs from
        Exareme2's spec it says so (docs/adr/0022-algorithm-catalogue.md).
    min_exclusive, max_exclusive : bool
        The bound itself is refused.
    central_only : bool
        Only the central side's global step reads it (a confidence level, a significance level):
        the nodes' releases do not depend on it, so explore mode's noise is not keyed on it (a
        sixth outside review changed ``alpha`` on each request to draw fresh noise and average one
        patient's cell).
    """

    types: tuple[str, ...]
    default: Any = None
    notblank: bool = False
    min: float | None = None
    max: float | None = None
    enums: tuple[Any, ...] | None = None
    enums_from: str | None = None
    label: str = ""
    description: str = ""
    min_exclusive: bool = False
    max_exclusive: bool = False
    central_only: bool = False

    @property
    def required(self) -> bool:
        """A request must give a value (``notblank`` and no default)."""
        return self.notblank and self.default is None

    @property
    def optional(self) -> bool:
        """Null or ``""`` is accepted: it means the default, or "none" without one."""
        return not self.notblank

    def out_of_bounds(self, value: float) -> str | None:
        """Why ``value`` lies outside the bounds (completing "parameter = value ..."), or None."""
        low = self.min is not None and (value <= self.min if self.min_exclusive else value < self.min)
        high = self.max is not None and (value >= self.max if self.max_exclusive else value > self.max)
        if not (low or high):
            return None
        if self.min_exclusive and self.max_exclusive:
            return f"must lie strictly between {self.min} and {self.max}"
        if low:
            return f"must be greater than {self.min}" if self.min_exclusive else f"is below its minimum {self.min}"
        return f"must be less than {self.max}" if self.max_exclusive else f"is above its maximum {self.max}"


def stattype(variable: Variable) -> str | None:
    """``"nominal"``, ``"numerical"`` or None (free text, which no algorithm takes)."""
    if variable.is_categorical:
        return NOMINAL
    if variable.sql_type in ("int", "real"):
        return NUMERICAL
    return None


def _coerce_param(name: str, value: Any, spec: ParamSpec) -> Any:
    if isinstance(value, bool):
        raise RequestError(f"parameter {name!r} must not be a boolean")
    if "text" in spec.types and isinstance(value, str):
        return value
    if "int" in spec.types and isinstance(value, (int, float)) and float(value).is_integer():
        return int(value)
    if "real" in spec.types and isinstance(value, (int, float)):
        if not math.isfinite(float(value)):
            raise RequestError(f"parameter {name!r} must be a finite number")
        return float(value)
    raise RequestError(f"parameter {name!r} must be of type {'/'.join(spec.types)}, got {value!r}")


#: The default of :attr:`SpecAlgorithm.small_group_hint`.
SMALL_GROUP_HINT = ("The groups checked are those the algorithm's results are computed over (the levels of the "
                    "nominal variables it groups by or encodes, pairs of them, the classes of a nominal outcome, "
                    "clusters, bins): select more rows (a wider filter, more datasets), or use nominal variables "
                    "with fewer levels, fewer clusters or fewer bins.")


class SpecAlgorithm:
    """Base class that validates requests against an Exareme2-style spec.

    Subclasses set ``name``, ``y_spec``, ``x_spec`` (None: no covariates
    allowed) and ``parameter_specs``, and may extend :meth:`check` for
    algorithm-specific rules.
    """

    name: str = ""
    label: str = ""
    #: What the algorithm does, for forms and ``mipflow algorithms list``.
    description: str = ""
    complete_case: bool = True
    #: Row columns whose levels split the statistics the local step releases (e.g. ``("dataset",)``
    #: for per-dataset statistics): each level's rows are a cohort of the differencing ledger.
    released_by: tuple[str, ...] = ()
    #: Whether every statistic the local steps release over a cohort is a sum, over the cohort's rows, of a
    #: function of each row's own values fixed by the request alone (counts, moments, co-moments, per-level
    #: sums): no iterate fitted to the data, no order statistic, no bin or partition cut by the data.  Two
    #: such releases disclose about the rows between them only what a linear combination of their cohorts'
    #: sums isolates, which the chain rule and its exact backstop decide; the pairwise rule's "each way" is
    #: then left to them (ADR 0063).  False (the default) keeps the pairwise rule.  Necessary, not sufficient: a
    #: step reading a nominal variable is not sums only (hidden small counts; round 23, hole 2).
    sums_only: bool = False
    #: The node setting that bounds each count of :meth:`coarsen_for_release`'s bins: ``"nfilter_tab"``
    #: (counts only are released per bin) or ``"min_row_count"`` (sums of covariates per bin reach
    #: someone, e.g. Cox regression's risk-set sums, ADR 0046: a bin is then as large as a cohort).
    bin_count_setting: str = "nfilter_tab"
    #: The node setting that bounds each non-empty group whose statistics the local step releases
    #: (``group_n`` / ``group_counts`` / ``cell_n``): ``"nfilter_tab"``, or ``"min_row_count"`` when a
    #: group's rows are chosen by the data and its statistics carry as many moments as a few rows
    #: have values (k-means clusters: count, sum and sum of squares over a range of values, ADR 0050).
    group_count_setting: str = "nfilter_tab"
    #: Static words a refusal of a small group or cell (``group_count_setting``) ends with: which groups and
    #: cells the algorithm releases and which request parameters make them larger (never the data's sizes).
    small_group_hint: str = SMALL_GROUP_HINT
    y_spec: InputSpec
    x_spec: InputSpec | None = None
    parameter_specs: Mapping[str, ParamSpec] = MappingProxyType({})

    def spec(self) -> dict[str, Any]:
        """The algorithm's specification in Exareme2's JSON form (for forms and catalogues)."""

        def inputs(spec: InputSpec) -> dict[str, Any]:
            return {"label": spec.label, "desc": spec.description, "types": list(spec.types),
                    "stattypes": list(spec.stattypes), "notblank": spec.notblank, "multiple": spec.multiple}

        def param(p: ParamSpec) -> dict[str, Any]:
            out: dict[str, Any] = {"label": p.label, "desc": p.description, "types": list(p.types),
                                   "notblank": p.notblank, "multiple": False}
            if p.default is not None:
                out["default"] = p.default
            if p.min is not None:
                out["min"] = p.min
            if p.max is not None:
                out["max"] = p.max
            if p.enums is not None:
                out["enums"] = {"type": "list", "source": list(p.enums)}
            if p.enums_from is not None:
                out["enums"] = {"type": "input_var_CDE_enums", "source": [p.enums_from]}
            return out

        inputdata = {"y": inputs(self.y_spec)}
        if self.x_spec is not None:
            inputdata["x"] = inputs(self.x_spec)
        return {"name": self.name, "label": self.label, "desc": self.description, "inputdata": inputdata,
                "parameters": {k: param(v) for k, v in self.parameter_specs.items()}}

    def variables(self, request: AnalysisRequest) -> tuple[str, ...]:
        """y then x, each variable once."""
        return tuple(dict.fromkeys(request.y + request.x))

    def on_refusal(self, round: int, refusals: Mapping[str, tuple[str, str]], request: AnalysisRequest,
                   model: DataModel, state: dict | None, memo: dict | None) -> Step | None:
        """What to do when nodes refuse round ``round`` (>= 1) under their disclosure controls.

        The central side calls it when every node that failed the round
        refused it (none was unreachable).  Returning None (the default) leaves
        the refusing nodes out and restarts the analysis on the others.
        Returning a finished :class:`Step` ends the analysis with that result,
        every node counted as contributing; the result must then come from the
        rounds before ``round`` only (``state`` is the one sent with the
        refused round, ``memo`` the central-only :attr:`Step.memo` of the step
        that produced it), and must say that it stopped early.

        Parameters
        ----------
        round : int
            The refused round.
        refusals : mapping
            Node name -> ``(control, reason)`` as the node stated them.
        request, model
            The analysis request and data model.
        state : dict or None
            The state sent to the nodes with the refused round.
        memo : dict or None
            The central-only memo of the global step that produced ``state``.

        Returns
        -------
        Step or None
        """
        return None

    # -- privacy capabilities (the defaults: see "privacy capabilities" in contract) -------

    #: How its aggregates take part in secure aggregation (one of
    #: :data:`~mipflow.algorithms.contract.SECURE_AGGREGATION`).
    secure_aggregation: str = "unsupported"
    #: Its noisy release at a node with differential privacy; None: a DP node refuses it
    #: (``dp_unsupported``) unless its admin exempts it.
    dp_release: DPRelease | None = None

    #: Its local steps may return sealed sums (:data:`mipflow.algorithms.sealed.SEALED`), which only the
    #: participating nodes open (ADR 0046); False: a reply never carries any.
    sealed_rounds: bool = False
    #: Its sealed sums are masked before they are sealed, so that each peer learns only their pool
    #: (:mod:`mipflow.secagg.sealed_masks`, ADR 0052); integer sums only.
    sealed_masked: bool = False

    def pooled_threshold(self, request: AnalysisRequest, model: DataModel) -> bool:
        """Whether this request's release is checked on counts pooled over the participants rather than
        on the node's own (default False).  A node answers such a step only masked among at least 3
        pinned participants, with one participant set and one pool per cohort
        (:mod:`mipflow.node.controls.pooled_bins`, ADR 0052)."""
        return False

    def session_request(self, request: dict, masked_participants: int, fallback: bool) -> dict:
        """The request (its JSON form) the central site sends in one attempt, given how many participants
        the attempt masks and whether a node declined pooled thresholds before (default: as it is).
        Whatever it decides is in the request every node verifies and the result records."""
        return request

    def sealed_mask_scheme(self, participants: int) -> str | None:
        """The scheme a node masks its sealed sums in before sealing them, with ``participants`` taking
        part (:mod:`mipflow.secagg.sealed_masks`): integers when ``sealed_masked`` (ADR 0052), else None
        (sealed as they are).  Decided on public facts only, so every node decides alike."""
        from mipflow.algorithms.sealed import MASKED_SCHEME

        return MASKED_SCHEME if self.sealed_masked else None

    def pool_sealed(self, parts: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """The participants' sealed sums of one round combined for the next local step (default: added
        elementwise per key, :func:`mipflow.algorithms.sealed.sum_parts`); run by every node on what it
        opened, and by :func:`~mipflow.algorithms.local.run_in_process` on the sums in the clear."""
        from mipflow.algorithms.sealed import sum_parts

        return sum_parts(parts)

    def secure_aggregation_refusal(self, request: AnalysisRequest) -> str | None:
        """Why this request of a secure-aggregation algorithm cannot be summed (None: it can).

        Checked centrally before any node is called, and again by the node.
        """
        return None

    def secure_aggregates(self, aggregates: dict, request: AnalysisRequest, model: DataModel) -> dict:
        """What the node sums under secure aggregation: its released ``aggregates`` rewritten (default: as is).

        Run by the node after its disclosure controls, before masking; the
        result's layout may depend on the request and data model only.
        """
        return aggregates

    def row_weights(self, round: int, data: pd.DataFrame, request: AnalysisRequest, model: DataModel,
                    state: dict | None) -> Iterable[np.ndarray] | None:
        """The weights round ``round``'s sums put on the rows (or patients), one vector per family of
        weighted sums, when they are a function of the iterate in ``state`` (None, the default: the
        sums weigh every row alike, or as the request and the rows alone decide).

        The node refuses the round when a vector holds fewer than ``min_row_count`` rows in effect,
        ``(sum |w|)^2 / sum w^2`` (control ``effective_rows``, ADR 0054).  A vector covers what one
        released sum adds up, in any order; weights of either sign (residuals) count by magnitude.
        Computed by the node on its verified state (ADR 0029), like the local step.  A step on rows left on
        disk may give each vector's :class:`~mipflow.algorithms.moments.WeightTotals` instead (summed a block
        at a time; logistic regression, ADR 0049 amended).
        """
        return None

    def weight_families(self, request: AnalysisRequest, model: DataModel) -> tuple[WeightFamily, ...]:
        """The weight functions of the sums the local step weighs by a function of the rows' own values,
        fixed by the request (:class:`~mipflow.algorithms.weighted.WeightFamily`; default: none).

        The node remembers, per family, the rows of every release and holds the rows between two
        releases of the same family to ``min_row_count`` in effect (``sum w / max w``, control
        ``dominated_sums``, ADR 0058).  Weights set by an iterate are :meth:`row_weights`' business.
        """
        return ()

    def masked_round(self, round: int, state: dict | None) -> bool:
        """Under secure aggregation, whether round ``round`` (sent ``state``) is masked (default: every round).

        An algorithm some of whose rounds release per-node structure that cannot be summed answers
        False for those; they then travel as in a plain analysis.  Decided on the round and the state
        only (the state every node verifies, ADR 0029), never on a node's rows, so the central site,
        every node and every node's verification of the round agree (ADR 0048).
        """
        return True

    def parameter_count(self, request: AnalysisRequest, model: DataModel) -> int | None:
        """The number of model parameters the node checks against ``nfilter_glm`` (None: not a model)."""
        return None

    def cluster_count(self, data: pd.DataFrame) -> int | None:
        """Patients (clusters) among the local step's rows, counted like rows by ``min_row_count`` and
        ``nfilter_glm`` (None, the default: the rows are not clustered)."""
        return None

    def fold_sizes(self, request: AnalysisRequest, n_rows: int) -> list[int] | None:
        """Rows of each fold whose statistics a node with ``n_rows`` rows releases (None: no folds).

        Each fold is checked like a step (``min_row_count``, ``nfilter_glm``).
        """
        return None

    def coarsen_for_release(self, round: int, aggregates: dict, min_count: int, bin_count: int | None = None) -> dict:
        """The node's ``aggregates`` coarsened until no count is in ``(0, min_count)`` (default: as is);
        ``bin_count`` (the node setting :attr:`bin_count_setting` names, when above ``min_count``): the
        count each time bin must hold, its bins a coarsening of the ``min_count`` ones.

        Run by the node's disclosure controls before their checks, which still run.
        """
        return aggregates

    def released_groups(self, request: AnalysisRequest, model: DataModel) -> tuple[ReleasedGroups, ...]:
        """The level cells of nominal variables whose sums the local step releases (default: none).

        Decided from the request alone; the node derives the groups from its rows and holds each,
        with its margins and union, to the group threshold across releases (ADR 0051).
        """
        return ()

    def hidden_cells(self, aggregates: dict, request: AnalysisRequest,
                     model: DataModel) -> Sequence[tuple[tuple[str, str], ...]]:
        """Of groupings declared ``suppressed``: the cells the checked ``aggregates`` hide, each as its
        ``(column, level)`` pairs (a bin's level: :func:`mipflow.algorithms.design.bin_labels`).  Default:
        none."""
        return ()

    def differencing_partition(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                               state: dict | None) -> np.ndarray | None:
        """The partition of ``data``'s rows whose per-part sums round ``round`` releases (None: none).

        Computed by the node itself from the state (what the central site says
        about earlier rounds is not trusted) and compared with the partitions
        it released on the same rows before (ADR 0013).

        Returns
        -------
        numpy.ndarray of int, shape (n_rows,), or None
            The part of each row, in ``data``'s row order.
        """
        return None

    # -- validation ---------------------------------------------------------------

    def validate(self, request: AnalysisRequest, model: DataModel) -> None:
        """Raise :class:`RequestError` unless the request fits this algorithm.

        With a longitudinal transformer, ``model`` is the data model's view
        (:func:`mipflow.algorithms.longitudinal.model_view`) and the algorithm must take one."""
        from mipflow.algorithms.longitudinal import check_compatible

        check_compatible(self.name, request.longitudinal)
        if request.data_model != model.key:
            raise RequestError(
                f"request is for data model {request.data_model}, not {model.key}"
            )
        self._check_input("y", request.y, self.y_spec, model)
        if self.x_spec is None:
            if request.x:
                raise RequestError(f"{self.name} takes no covariates (x)")
        else:
            self._check_input("x", request.x, self.x_spec, model)
        self.params(request, model)
        self.check(request, model)

    def check(self, request: AnalysisRequest, model: DataModel) -> None:
        """Algorithm-specific rules (override)."""

    def _check_input(self, which: str, codes: tuple[str, ...], spec: InputSpec,
                     model: DataModel) -> None:
        if spec.notblank and not codes:
            raise RequestError(f"{self.name} needs at least one variable in {which}")
        if not spec.multiple and len(codes) > 1:
            raise RequestError(f"{self.name} takes exactly one variable in {which}, got {len(codes)}")
        if len(set(codes)) != len(codes):
            raise RequestError(f"{which} names a variable twice")
        for code in codes:
            if code not in model:
                raise RequestError(f"variable {code!r} is not in data model {model.key}")
            var = model.variable(code)
            kind = stattype(var)
            if var.sql_type not in spec.types or kind not in spec.stattypes:
                raise RequestError(
                    f"{self.name}: {which} variable {code!r} is {kind or 'free text'} "
                    f"({var.sql_type}); it must be {' or '.join(spec.stattypes)} "
                    f"of type {'/'.join(spec.types)}" + (f": {spec.why}" if spec.why else "")
                )

    def params(self, request: AnalysisRequest, model: DataModel | None = None) -> dict[str, Any]:
        """Parameters with defaults applied, type-checked against the spec."""
        unknown = sorted(set(request.parameters) - set(self.parameter_specs))
        if unknown:
            raise RequestError(
                f"{self.name} has no parameter {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(self.parameter_specs) or 'none'}"
            )
        out: dict[str, Any] = {}
        for name, spec in self.parameter_specs.items():
            value = request.parameters.get(name)
            if value is None or value == "":
                if spec.default is None:
                    if spec.notblank:
                        raise RequestError(f"{self.name} needs the parameter {name!r}")
                    out[name] = None
                    continue
                value = spec.default
            value = _coerce_param(name, value, spec)
            if isinstance(value, (int, float)) and (why := spec.out_of_bounds(value)) is not None:
                raise RequestError(f"parameter {name!r} = {value} {why}")
            if spec.enums is not None and value not in spec.enums:
                raise RequestError(
                    f"parameter {name!r} = {value!r} is not one of {', '.join(map(str, spec.enums))}"
                )
            if spec.enums_from is not None and model is not None:
                codes = request.x if spec.enums_from == "x" else request.y
                if codes and codes[0] in model:
                    allowed = model.variable(codes[0]).enumeration_codes
                    if str(value) not in allowed:
                        raise RequestError(
                            f"parameter {name!r} = {value!r} is not a category of {codes[0]!r} "
                            f"({', '.join(allowed)})"
                        )
                value = str(value)
            out[name] = value
        return out
