"""The contract of a federated algorithm, and the helpers every one shares.

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
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import pandas as pd

from mipflow.protocol.datamodel import DataModel, Variable
from mipflow.exceptions import DataModelError, FederationError, RequestError

#: Name of the constant column of a design matrix (patsy / Exareme2 spelling).
INTERCEPT = "Intercept"
#: Safety stop for :func:`run_in_process`.
MAX_ROUNDS = 500


# --------------------------------------------------------------------------- request


def _names(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise RequestError(f"inputdata.{what} must be a list of variable codes, got {value!r}")
    out = []
    for item in value:
        if not isinstance(item, str) or not item:
            raise RequestError(f"inputdata.{what} holds {item!r}, which is not a variable code")
        out.append(item)
    return tuple(out)


@dataclass(frozen=True)
class AnalysisRequest:
    """One analysis request in the MIP / Exareme2 form.

    Attributes
    ----------
    data_model : str
        ``code:version`` of the data model, e.g. ``"dementia:0.1"``.
    datasets : tuple of str
        Datasets (values of the ``dataset`` variable) to analyse.
    x, y : tuple of str
        Covariates and variables of interest (variable codes).
    filters : dict or None
        A jQuery QueryBuilder rule group, applied by the node before the
        local step.
    parameters : Mapping
        Algorithm parameters as sent; see :meth:`SpecAlgorithm.params` for the
        resolved values with defaults.
    """

    data_model: str
    datasets: tuple[str, ...]
    x: tuple[str, ...] = ()
    y: tuple[str, ...] = ()
    filters: dict | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # own copies, so that the caller's dicts cannot change the request
        object.__setattr__(self, "datasets", tuple(self.datasets))
        object.__setattr__(self, "x", tuple(self.x))
        object.__setattr__(self, "y", tuple(self.y))
        object.__setattr__(self, "parameters", copy.deepcopy(dict(self.parameters)))
        if self.filters is not None:
            object.__setattr__(self, "filters", copy.deepcopy(dict(self.filters)))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "AnalysisRequest":
        """Parse ``{"inputdata": {...}, "parameters": {...}}``.

        Unknown top-level keys (``type``, ``test_case_num``...) are ignored.

        Raises
        ------
        RequestError
            If a field is missing or has the wrong type.
        """
        if not isinstance(doc, Mapping):
            raise RequestError("an analysis request must be a JSON object")
        inputdata = doc.get("inputdata")
        if not isinstance(inputdata, Mapping):
            raise RequestError("an analysis request needs an 'inputdata' object")
        data_model = inputdata.get("data_model")
        if not isinstance(data_model, str) or ":" not in data_model:
            raise RequestError(
                f"inputdata.data_model must be written CODE:VERSION, got {data_model!r}"
            )
        datasets = _names(inputdata.get("datasets"), "datasets")
        if not datasets:
            raise RequestError("inputdata.datasets must name at least one dataset")
        filters = inputdata.get("filters")
        if filters is not None and not isinstance(filters, Mapping):
            raise RequestError("inputdata.filters must be a QueryBuilder rule group or null")
        parameters = doc.get("parameters") or {}
        if not isinstance(parameters, Mapping):
            raise RequestError("'parameters' must be a JSON object")
        return cls(
            data_model=data_model,
            datasets=datasets,
            x=_names(inputdata.get("x"), "x"),
            y=_names(inputdata.get("y"), "y"),
            filters=filters,  # __post_init__ takes deep copies
            parameters=parameters,
        )

    def to_dict(self) -> dict[str, Any]:
        """The request in its JSON form (round-trips through :meth:`from_dict`)."""
        return {
            "inputdata": {
                "data_model": self.data_model,
                "datasets": list(self.datasets),
                "x": list(self.x),
                "y": list(self.y),
                "filters": copy.deepcopy(self.filters),
            },
            "parameters": copy.deepcopy(dict(self.parameters)),
        }


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


# --------------------------------------------------------------------------- specs


NUMERICAL = "numerical"
NOMINAL = "nominal"


@dataclass(frozen=True)
class InputSpec:
    """What ``inputdata.x`` or ``inputdata.y`` may hold (Exareme2 spec form)."""

    types: tuple[str, ...]
    stattypes: tuple[str, ...]
    notblank: bool
    multiple: bool


@dataclass(frozen=True)
class ParamSpec:
    """One algorithm parameter (Exareme2 spec form).

    ``enums`` is a fixed list of allowed values; ``enums_from`` names the input
    (``"x"`` or ``"y"``) whose variable's CDE enumerations are the allowed
    values.  A parameter without a default is required when ``notblank``.
    """

    types: tuple[str, ...]
    default: Any = None
    notblank: bool = False
    min: float | None = None
    max: float | None = None
    enums: tuple[Any, ...] | None = None
    enums_from: str | None = None


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


class SpecAlgorithm:
    """Base class that validates requests against an Exareme2-style spec.

    Subclasses set ``name``, ``y_spec``, ``x_spec`` (None: no covariates
    allowed) and ``parameter_specs``, and may extend :meth:`check` for
    algorithm-specific rules.
    """

    name: str = ""
    label: str = ""
    complete_case: bool = True
    y_spec: InputSpec
    x_spec: InputSpec | None = None
    parameter_specs: Mapping[str, ParamSpec] = MappingProxyType({})

    def spec(self) -> dict[str, Any]:
        """The algorithm's specification in Exareme2's JSON form (for forms and catalogues)."""

        def inputs(spec: InputSpec) -> dict[str, Any]:
            return {"types": list(spec.types), "stattypes": list(spec.stattypes),
                    "notblank": spec.notblank, "multiple": spec.multiple}

        def param(p: ParamSpec) -> dict[str, Any]:
            out: dict[str, Any] = {"types": list(p.types), "notblank": p.notblank, "multiple": False}
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
        return {"name": self.name, "label": self.label, "inputdata": inputdata,
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

    # -- validation ---------------------------------------------------------------

    def validate(self, request: AnalysisRequest, model: DataModel) -> None:
        """Raise :class:`RequestError` unless the request fits this algorithm."""
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
                    f"of type {'/'.join(spec.types)}"
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
            if spec.min is not None and value < spec.min:
                raise RequestError(f"parameter {name!r} = {value} is below its minimum {spec.min}")
            if spec.max is not None and value > spec.max:
                raise RequestError(f"parameter {name!r} = {value} is above its maximum {spec.max}")
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


# --------------------------------------------------------------------------- data helpers


def category_codes(series: pd.Series, variable: Variable) -> pd.Series:
    """The values of a categorical column as enumeration codes (str), NA kept.

    Integer-valued numbers become ``"1"`` rather than ``"1.0"``.

    Raises
    ------
    DataModelError
        If a value is not one of the variable's enumeration codes.
    """

    def as_code(value: Any) -> Any:
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            return None
        if isinstance(value, (bool, np.bool_)):
            return str(value)
        if isinstance(value, (int, np.integer)):
            return str(int(value))
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return str(int(value))
        return str(value)

    # convert each distinct value once (columns have few levels, many rows)
    positions, uniques = pd.factorize(series, use_na_sentinel=True)
    unique_codes = np.array([as_code(v) for v in uniques] + [None], dtype=object)
    codes = pd.Series(unique_codes[positions], index=series.index, dtype=object)  # -1 -> the None slot
    allowed = set(variable.enumeration_codes)
    bad = sorted({c for c in unique_codes if c is not None and c not in allowed})
    if bad:
        raise DataModelError(
            f"variable {variable.code!r} holds values outside its enumerations: {', '.join(bad[:5])}"
        )
    return codes


def numeric_values(series: pd.Series) -> np.ndarray:
    """A numeric column as a float array (NA become NaN), shape (n,)."""
    if series.dtype == np.float64:  # what the node's queries return: already numbers
        return series.to_numpy(dtype=np.float64, copy=True)
    return pd.to_numeric(series, errors="raise").to_numpy(dtype=float, na_value=np.nan)


def sorted_levels(variable: Variable) -> tuple[str, ...]:
    """Enumeration codes in the order design matrices use (sorted, like patsy)."""
    return tuple(sorted(variable.enumeration_codes))


def design_columns(x: Sequence[str], model: DataModel, *, intercept: bool = True) -> list[str]:
    """Every candidate design column for covariates ``x``.

    Order (as in Exareme2's results, i.e. patsy's): ``Intercept``, then for
    each categorical covariate (in ``x`` order) one indicator ``var[level]``
    per enumeration code in sorted order, then the numerical covariates in
    ``x`` order.  The list is the same on every node, whatever levels a node
    holds; :func:`select_design_columns` drops the reference and absent levels.
    """
    cols = [INTERCEPT] if intercept else []
    for code in x:
        var = model.variable(code)
        if var.is_categorical:
            cols.extend(f"{code}[{level}]" for level in sorted_levels(var))
    cols.extend(code for code in x if not model.variable(code).is_categorical)
    return cols


def design_matrix(
    data: pd.DataFrame,
    x: Sequence[str],
    model: DataModel,
    *,
    columns: Sequence[str] | None = None,
    intercept: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """Dummy-coded design matrix of complete-case rows.

    Parameters
    ----------
    data : pandas.DataFrame, n rows
        Complete case on ``x``.
    x : sequence of str
        Covariate codes; categorical ones are indicator-coded against the data
        model's enumerations, so every node builds the same columns.
    model : DataModel
    columns : sequence of str, optional
        Keep only these columns (names from :func:`design_columns`), in this
        order, e.g. the columns :func:`select_design_columns` chose.  Without
        it all candidate columns are returned (one indicator per level, which
        is not of full rank together with the intercept).
    intercept : bool
        Include the ``Intercept`` column.

    Returns
    -------
    matrix : numpy.ndarray, shape (n, p)
    names : list of str, length p
    """
    n = len(data)
    blocks: dict[str, np.ndarray] = {}
    if intercept:
        blocks[INTERCEPT] = np.ones(n)
    for code in x:
        var = model.variable(code)
        if var.is_categorical:
            codes = category_codes(data[code], var).to_numpy()
            for level in sorted_levels(var):
                blocks[f"{code}[{level}]"] = (codes == level).astype(float)
        else:
            blocks[code] = numeric_values(data[code])
    names = design_columns(x, model, intercept=intercept)
    if columns is not None:
        missing = [c for c in columns if c not in blocks]
        if missing:
            raise RequestError(f"unknown design columns: {', '.join(missing)}")
        names = list(columns)
    if not names:
        return np.zeros((n, 0)), []
    if not n:
        return np.zeros((0, len(names))), names
    # column-major: each column is one contiguous copy (a row-major stack gathers every value)
    matrix = np.empty((n, len(names)), order="F")
    for j, name in enumerate(names):
        matrix[:, j] = blocks[name]
    return matrix, names


def level_counts(data: pd.DataFrame, codes: Sequence[str], model: DataModel) -> dict[str, list[int]]:
    """Rows per level (sorted enumeration order) of each categorical variable."""
    out: dict[str, list[int]] = {}
    for code in codes:
        var = model.variable(code)
        if var.is_categorical:
            values = category_codes(data[code], var)
            counts = values.value_counts()
            out[code] = [int(counts.get(level, 0)) for level in sorted_levels(var)]
    return out


def sum_level_counts(parts: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, list[int]]:
    """Element-wise sum of :func:`level_counts` from several nodes."""
    total: dict[str, list[int]] = {}
    for part in parts:
        for code, counts in part.items():
            prev = total.setdefault(code, [0] * len(counts))
            total[code] = [a + int(b) for a, b in zip(prev, counts)]
    return total


def select_design_columns(
    x: Sequence[str],
    model: DataModel,
    counts: Mapping[str, Sequence[int]],
    *,
    intercept: bool = True,
) -> list[str]:
    """Full-rank treatment coding from pooled level counts.

    For each categorical covariate the levels present in the pooled data are
    sorted; the first is the reference and gets no column, and absent levels
    get none either (Exareme2's / patsy's coding of the pooled data).
    """
    keep = set(design_columns(x, model, intercept=intercept))
    for code in x:
        var = model.variable(code)
        if var.is_categorical:
            levels = sorted_levels(var)
            present = [lvl for lvl, c in zip(levels, counts.get(code, [0] * len(levels))) if c > 0]
            for level in levels:
                if level not in present[1:]:
                    keep.discard(f"{code}[{level}]")
    return [c for c in design_columns(x, model, intercept=intercept) if c in keep]


# --------------------------------------------------------------------------- JSON


def json_ready(obj: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays unwrapped, NaN -> None,
    +-inf -> ``"Infinity"`` / ``"-Infinity"`` (Exareme2's spelling)."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [json_ready(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    return obj


def transport(obj: Any) -> Any:
    """Round-trip through strict JSON, as over HTTP (fails on NaN, numpy types)."""
    return json.loads(json.dumps(obj, allow_nan=False))


# --------------------------------------------------------------------------- driver


def prepare_local_data(algorithm: Algorithm, data: pd.DataFrame, request: AnalysisRequest) -> pd.DataFrame:
    """What a node does before the local step: keep :meth:`Algorithm.variables`
    and, if the algorithm wants it, drop incomplete rows.

    The node must have applied the request's datasets and filters already.
    """
    cols = list(algorithm.variables(request))
    missing = [c for c in cols if c not in data.columns]
    if missing:
        raise RequestError(f"the data holds no column {', '.join(map(repr, missing))}")
    out = data.loc[:, cols]
    if algorithm.complete_case:
        out = out.dropna(how="any")
    return out.reset_index(drop=True)


def run_in_process(
    algorithm: Algorithm,
    frames: Sequence[pd.DataFrame],
    request: AnalysisRequest,
    model: DataModel,
) -> dict:
    """Run a federated analysis with every "node" in this process.

    Each frame is one node's rows, already restricted to the request's
    datasets and filters.  Aggregates, states and the result all pass through
    strict JSON, as they would over HTTP.

    Raises
    ------
    RequestError
        If the request is invalid or the data cannot give a result.
    FederationError
        If the algorithm does not finish within :data:`MAX_ROUNDS` rounds.
    """
    algorithm.validate(request, model)
    local_frames = [prepare_local_data(algorithm, f, request) for f in frames]
    state: dict | None = None
    for round_no in range(MAX_ROUNDS):
        aggregates = [
            transport(algorithm.local_step(round_no, frame, request, model, transport(state)))
            for frame in local_frames
        ]
        step = algorithm.global_step(round_no, aggregates, request, model, state)
        if step.done:
            if step.result is None:
                raise FederationError(f"{algorithm.name} finished without a result")
            return transport(step.result)
        state = transport(step.state)
    raise FederationError(f"{algorithm.name} did not finish within {MAX_ROUNDS} rounds")


# --------------------------------------------------------------------------- test statistics

ALTERNATIVES = ("two-sided", "less", "greater")


def t_pvalue(t: float, df: float, alternative: str) -> float:
    """p-value of a t statistic (scipy's convention)."""
    from scipy import special

    if alternative == "less":
        return float(special.stdtr(df, t))
    if alternative == "greater":
        return float(special.stdtr(df, -t))
    return float(2.0 * special.stdtr(df, -abs(t)))


def t_interval(estimate: float, se: float, df: float, alternative: str,
               confidence: float) -> tuple[float, float]:
    """Confidence interval of a t-distributed estimate; one-sided for
    ``less`` (lower bound -inf) and ``greater`` (upper bound +inf)."""
    from scipy import special

    if alternative == "less":
        return -math.inf, float(estimate + special.stdtrit(df, confidence) * se)
    if alternative == "greater":
        return float(estimate + special.stdtrit(df, 1.0 - confidence) * se), math.inf
    tail = (1.0 - confidence) / 2.0
    return (float(estimate + special.stdtrit(df, tail) * se),
            float(estimate + special.stdtrit(df, 1.0 - tail) * se))


def alternative_spec(default: str = "two-sided") -> ParamSpec:
    """The `alt_hypothesis` parameter of the t-tests."""
    return ParamSpec(types=("text",), default=default, notblank=True, enums=ALTERNATIVES)
