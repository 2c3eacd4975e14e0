"""Validate harmonised rows against a common data model with great-expectations 1.x.

Rows arrive as strings (CSV read with ``dtype=str``) whose columns are already
renamed to CDE codes.  Validation runs in two steps:

1. *Coercion* (here, in pandas): every model column is converted to its CDE
   type (``int`` -> ``Int64``, ``real`` -> ``float64``, ``text`` -> strings
   with surrounding whitespace removed).  Empty cells become missing values.
   Cells that cannot be converted ("not a number", "not an integer") become
   missing and the row fails with that reason.
2. *Expectations* (great-expectations): one suite generated from the CDE
   metadata checks the coerced frame: values between ``minValue`` and
   ``maxValue`` (inclusive), categorical values in their enumerations,
   required columns present and not null.  The rows that fail come from GX's
   ``unexpected_index_list``; this module does not re-implement the checks.

Nothing that leaves this module holds a cell value: reasons name the column
and the rule (``"minimentalstate: above maxValue 30"``), and the summary holds
counts only.  GX's own result objects, which do carry (up to 200) unexpected
values, are dropped as soon as the row indexes and counts are read from them.

GX takes seconds to import, so it is imported lazily: importing this module
stays cheap.  Build one :class:`FrameValidator` per input file and reuse it for
every chunk; the GX context, data source and suite are built once.
"""
from __future__ import annotations

import functools
import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from mipflow.protocol.datamodel import DataModel, Variable
from mipflow.exceptions import DataModelError, MipflowError

if TYPE_CHECKING:  # pragma: no cover
    import great_expectations as gx
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_REQUIRED = ("subjectcode", "dataset")

EXPECT_BETWEEN = "expect_column_values_to_be_between"
EXPECT_IN_SET = "expect_column_values_to_be_in_set"
EXPECT_NOT_NULL = "expect_column_values_to_not_be_null"
EXPECT_EXISTS = "expect_column_to_exist"

NOT_A_NUMBER = "not a number"
NOT_AN_INTEGER = "not an integer"
INTEGER_TOO_LARGE = "integer too large"
NOT_IN_ENUMERATIONS = "not in enumerations"
REQUIRED_MISSING = "required value missing"
REQUIRED_COLUMN_MISSING = "required column missing"

#: In memory only: COMPLETE gives the full ``unexpected_index_list`` (row
#: positions, as the frame handed to GX has a plain RangeIndex).  The index
#: query (a string holding every index) and partial value lists are not needed.
_RESULT_FORMAT: dict[str, Any] = {
    "result_format": "COMPLETE",
    "partial_unexpected_count": 0,
    "include_unexpected_rows": False,
    "return_unexpected_index_query": False,
}
#: From here on float64 (how numbers are parsed) no longer holds every integer exactly.
_MAX_EXACT_INT = 2**53

_gx_lock = threading.Lock()
_gx_ready = False


@dataclass
class ValidationOutcome:
    """The result of validating one frame.

    ``frame`` holds the input rows coerced to their CDE types (same index as
    the input, model columns only, in model order); ``row_errors`` is ``None``
    for valid rows, else ``"; "``-joined reasons that never contain a cell
    value; ``summary`` is JSON-serialisable and holds counts only.
    """

    frame: "pd.DataFrame"
    row_errors: "pd.Series"
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def valid_mask(self) -> "np.ndarray":
        """One bool per row: True where the row passed every check."""
        return self.row_errors.isna().to_numpy(dtype=bool)


# -- great-expectations plumbing ----------------------------------------------------
def _import_gx():
    """Import great-expectations once, quietly (no progress bars, no INFO logging)."""
    global _gx_ready
    import great_expectations as gx

    if not _gx_ready:
        with _gx_lock:
            if not _gx_ready:
                gx_logger = logging.getLogger("great_expectations")
                if gx_logger.level == logging.NOTSET:
                    gx_logger.setLevel(logging.ERROR)
                _gx_ready = True
    return gx


def _new_context():
    """An in-memory GX context with progress bars off."""
    gx = _import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


def _fmt(value: float) -> str:
    """A model bound as written in reasons: ``30`` rather than ``30.0``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _enumeration_values(var: Variable) -> list[Any]:
    """The allowed values of a categorical variable, in the type of its coerced column."""
    codes = list(var.enumeration_codes)
    if var.sql_type == "text":
        return codes
    values: list[Any] = []
    for code in codes:
        try:
            number = float(code)
        except ValueError:
            raise DataModelError(f"variable {var.code!r}: enumeration code {code!r} is not a "
                                 f"valid {var.sql_type}") from None
        if var.sql_type == "int":
            if not number.is_integer():
                raise DataModelError(f"variable {var.code!r}: enumeration code {code!r} is not an integer")
            values.append(int(number))
        else:
            values.append(number)
    return values


def _check_required(model: DataModel, required: Sequence[str]) -> tuple[str, ...]:
    unknown = [code for code in required if code not in model]
    if unknown:
        raise DataModelError(f"required column(s) {', '.join(map(repr, unknown))} are not variables of "
                             f"data model {model.key}")
    return tuple(dict.fromkeys(required))


def build_expectation_suite(model: DataModel, columns: Sequence[str], *,
                            required: Sequence[str] = ()) -> "gx.ExpectationSuite":
    """One GX suite generated from the CDE metadata of ``columns``.

    For each model column in ``columns`` (others are ignored: they are not
    validated, only reported as extra): categorical -> values in the
    enumeration codes; numerical with ``minValue``/``maxValue`` -> values
    between them, bounds included.  For each ``required`` column: the column
    exists, and (when it is in ``columns``) its values are not null.  Types
    are not expected here; :class:`FrameValidator` coerces them first.

    Raises
    ------
    DataModelError
        If a required column is not in the model, or a numeric enumeration
        code is not a number.
    """
    gx = _import_gx()
    import great_expectations.expectations as gxe

    required = _check_required(model, required)
    present = {c for c in columns if c in model}
    expectations: list[Any] = [gxe.ExpectColumnToExist(column=code) for code in required]
    for var in model:
        if var.code not in present:
            continue
        if var.code in required:
            expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=var.code))
        if var.is_categorical:
            expectations.append(gxe.ExpectColumnValuesToBeInSet(column=var.code,
                                                                value_set=_enumeration_values(var)))
        elif var.sql_type in ("int", "real") and (var.min_value is not None or var.max_value is not None):
            expectations.append(gxe.ExpectColumnValuesToBeBetween(
                column=var.code, min_value=var.min_value, max_value=var.max_value))
    # built in one go: ``suite.add_expectation`` needs a current data context
    suite = gx.ExpectationSuite(name=f"mipflow-{model.code}-{model.version}-{uuid.uuid4().hex[:8]}",
                                expectations=expectations)
    if len(suite.expectations) != len(expectations):  # GX logs and drops invalid ones
        raise DataModelError(f"great-expectations rejected {len(expectations) - len(suite.expectations)} "
                             f"expectation(s) generated from data model {model.key}")
    return suite


class _GxRunner:
    """A GX context + pandas data source + dataframe asset + whole-frame batch definition + suite."""

    def __init__(self, model: DataModel, columns: tuple[str, ...], required: tuple[str, ...]) -> None:
        self.suite = build_expectation_suite(model, columns, required=required)
        #: columns the suite reads (only these are handed to GX)
        self.columns = tuple(dict.fromkeys(
            e.column for e in self.suite.expectations if e.column in columns))
        self.context = _new_context()
        self.datasource = self.context.data_sources.add_pandas(name=f"mipflow-{uuid.uuid4().hex[:8]}")
        asset = self.datasource.add_dataframe_asset(name="chunk")
        self.batch_definition = asset.add_batch_definition_whole_dataframe("whole-chunk")

    def run(self, frame: "pd.DataFrame") -> list[Any]:
        """Validate ``frame`` (RangeIndex) and return GX's per-expectation results."""
        batch = self.batch_definition.get_batch(batch_parameters={"dataframe": frame})
        try:
            result = batch.validate(self.suite, result_format=_RESULT_FORMAT)
        finally:
            self._release()
        for res in result.results:
            info = res.exception_info or {}
            if info.get("raised_exception"):
                config = res.expectation_config
                # the message may quote data: name the expectation only
                raise MipflowError(f"great-expectations could not evaluate {config.type} on column "
                                   f"{config.kwargs.get('column')!r}; this is a bug in mipflow's "
                                   "validation, not bad input")
        return list(result.results)

    def _release(self) -> None:
        """Drop the chunk and the metrics GX cached for it (they hold row data)."""
        try:
            engine = self.datasource.get_execution_engine()
            cache = getattr(engine, "_metric_cache", None)
            if isinstance(cache, dict):
                cache.clear()
            data_cache = getattr(getattr(engine, "batch_manager", None), "_batch_data_cache", None)
            if isinstance(data_cache, dict):
                data_cache.clear()
        except Exception:  # pragma: no cover - best effort on other GX versions
            log.debug("could not clear great-expectations caches", exc_info=True)


# -- coercion -----------------------------------------------------------------------
def _as_text(series: "pd.Series") -> "pd.Series":
    """Strings with surrounding whitespace removed; empty strings become missing.

    Each distinct value is stripped once (categorical columns hold a handful),
    rather than every cell: with pandas' Python-backed ``str`` dtype a
    per-cell ``.str.strip()`` costs ~35 ms per 100k cells.
    """
    import numpy as np
    import pandas as pd

    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    cleaned = []
    for value in (uniques.tolist() if hasattr(uniques, "tolist") else list(uniques)):
        text = value.strip() if isinstance(value, str) else str(value).strip()
        cleaned.append(text if text else np.nan)
    lookup = np.array(cleaned + [np.nan], dtype=object)  # code -1 (missing) -> the last slot
    return pd.Series(lookup[codes], index=series.index, name=series.name, dtype=_text_dtype())


@functools.lru_cache(maxsize=1)
def _text_dtype() -> Any:
    """pandas' default dtype for strings: ``str`` (NaN for missing) on pandas 3, else object."""
    import pandas as pd

    inferred = pd.Series(["a"]).dtype
    return "str" if inferred != object else object


def _coerce(var: Variable, series: "pd.Series") -> tuple["pd.Series", list[tuple["np.ndarray", str]]]:
    """The column in its CDE type, and (mask, reason) pairs of the cells that could not be converted."""
    import numpy as np
    import pandas as pd

    if var.sql_type == "text":
        return _as_text(series), []
    # to_numeric ignores surrounding whitespace; only cells it rejects need a closer look
    numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    with np.errstate(invalid="ignore"):
        rejected = ~np.isfinite(numbers) & series.notna().to_numpy()
    not_number = np.zeros(len(numbers), dtype=bool)
    if rejected.any():
        positions = np.flatnonzero(rejected)
        blank = _as_text(series.iloc[positions]).isna().to_numpy()
        not_number[positions[~blank]] = True
    errors = [(not_number, NOT_A_NUMBER)] if not_number.any() else []
    bad = rejected  # blanks are simply missing; nothing else non-finite is kept
    if var.sql_type == "int":
        ok = np.isfinite(numbers)
        fraction = np.zeros(len(numbers), dtype=bool)
        fraction[ok] = np.mod(numbers[ok], 1.0) != 0
        too_large = np.zeros(len(numbers), dtype=bool)
        too_large[ok] = np.abs(numbers[ok]) >= _MAX_EXACT_INT
        too_large &= ~fraction
        if fraction.any():
            errors.append((fraction, NOT_AN_INTEGER))
        if too_large.any():
            errors.append((too_large, INTEGER_TOO_LARGE))
        bad = bad | fraction | too_large
    if bad.any():
        numbers = numbers.copy()
        numbers[bad] = np.nan
    if var.sql_type == "int":
        values = pd.array(numbers, dtype="Float64").astype("Int64")
        return pd.Series(values, index=series.index, name=series.name), errors
    return pd.Series(numbers, index=series.index, name=series.name), errors


# -- the validator ------------------------------------------------------------------
class FrameValidator:
    """Validate chunks of one input against a data model, reusing one GX setup.

    ``columns`` are the input's columns (CDE codes; extra columns allowed):
    the GX suite for them is built at once.  A chunk with other columns gets
    its own suite, built on first use and kept.  Not thread-safe: use one
    validator per thread.
    """

    def __init__(self, model: DataModel, columns: Sequence[str] = (), *,
                 required: Sequence[str] = DEFAULT_REQUIRED) -> None:
        self.model = model
        self.required = _check_required(model, required)
        self._runners: dict[tuple[str, ...], _GxRunner] = {}
        self._runner(self._present(columns))

    def _present(self, columns: Sequence[str]) -> tuple[str, ...]:
        cols = set(columns)
        return tuple(v.code for v in self.model if v.code in cols)

    def _runner(self, present: tuple[str, ...]) -> _GxRunner:
        runner = self._runners.get(present)
        if runner is None:
            runner = self._runners[present] = _GxRunner(self.model, present, self.required)
        return runner

    def validate(self, frame: "pd.DataFrame") -> ValidationOutcome:
        """Coerce and validate ``frame``; see :class:`ValidationOutcome`."""
        import numpy as np
        import pandas as pd

        gx = _import_gx()
        n = len(frame)
        present = self._present(frame.columns)
        extra = [str(c) for c in frame.columns if c not in self.model]
        missing = [v.code for v in self.model if v.code not in present]

        # 1. coercion; reasons collected per column so they come out in model order
        coerced: dict[str, pd.Series] = {}
        reasons: dict[str, list[tuple[np.ndarray, str]]] = {}
        type_errors: list[dict[str, Any]] = []
        for code in present:
            column = frame[code]
            if isinstance(column, pd.DataFrame):
                raise MipflowError(f"column {code!r} appears more than once in the input")
            coerced[code], errors = _coerce(self.model.variable(code), column)
            if errors:
                reasons[code] = list(errors)
                type_errors.extend({"column": code, "reason": why, "count": int(mask.sum())}
                                   for mask, why in errors)
        out = pd.DataFrame(coerced, index=frame.index, columns=list(present))

        # 2. expectations, on a RangeIndex copy so GX's indexes are row positions
        runner = self._runner(present)
        gx_frame = pd.DataFrame({code: _for_gx(out[code]) for code in runner.columns},
                                columns=list(runner.columns))
        results = runner.run(gx_frame)
        expectations: list[dict[str, Any]] = []
        for res in results:
            config = res.expectation_config
            code = config.kwargs.get("column")
            detail = res.result or {}
            success = bool(res.success)
            if config.type == EXPECT_EXISTS:
                unexpected = np.arange(n) if not success else np.empty(0, dtype=np.int64)
                element_count = n
            else:
                unexpected = np.asarray(detail.get("unexpected_index_list") or [], dtype=np.int64)
                element_count = int(detail.get("element_count", n) or 0)
                if int(detail.get("unexpected_count", 0) or 0) != len(unexpected):
                    raise MipflowError(f"great-expectations returned an incomplete unexpected index list "
                                       f"for {config.type} on {code!r}")
            expectations.append({"expectation": config.type, "column": code, "success": success,
                                 "unexpected_count": int(len(unexpected)), "element_count": element_count})
            if len(unexpected):
                reasons.setdefault(code, []).extend(self._gx_reasons(config.type, code, unexpected, out, n))
        del results

        row_errors = _join_reasons(reasons, [v.code for v in self.model if v.code in reasons], n, frame.index)
        failed = int(row_errors.notna().sum())
        summary: dict[str, Any] = {
            "rows": n,
            "valid_rows": n - failed,
            "failed_rows": failed,
            "expectations": expectations,
            "type_errors": type_errors,
            "missing_columns": missing,
            "extra_columns": extra,
            "gx_version": str(gx.__version__),
        }
        return ValidationOutcome(frame=out, row_errors=row_errors, summary=summary)

    def _gx_reasons(self, kind: str, code: str, unexpected: "np.ndarray", out: "pd.DataFrame",
                    n: int) -> list[tuple["np.ndarray", str]]:
        """(mask, reason) pairs for the rows GX flagged on one expectation."""
        import numpy as np

        def mask_of(positions: "np.ndarray") -> "np.ndarray":
            mask = np.zeros(n, dtype=bool)
            mask[positions] = True
            return mask

        if kind == EXPECT_EXISTS:
            return [(mask_of(unexpected), REQUIRED_COLUMN_MISSING)]
        if kind == EXPECT_NOT_NULL:
            return [(mask_of(unexpected), REQUIRED_MISSING)]
        if kind == EXPECT_IN_SET:
            return [(mask_of(unexpected), NOT_IN_ENUMERATIONS)]
        if kind == EXPECT_BETWEEN:
            var = self.model.variable(code)
            # GX decided which rows fail; only the wording (below/above) is picked here
            values = out[code].iloc[unexpected].to_numpy(dtype="float64", na_value=np.nan)
            below = values < var.min_value if var.min_value is not None else np.zeros(len(values), bool)
            pairs = []
            if below.any():
                pairs.append((mask_of(unexpected[below]), f"below minValue {_fmt(var.min_value)}"))
            if (~below).any():
                bound = f"above maxValue {_fmt(var.max_value)}" if var.max_value is not None else "out of range"
                pairs.append((mask_of(unexpected[~below]), bound))
            return pairs
        return [(mask_of(unexpected), kind)]  # pragma: no cover - the suite holds no other kinds


def _for_gx(column: "pd.Series") -> Any:
    """The column as GX should see it: a plain numpy array (so a RangeIndex).

    ``Int64`` goes to float64 (exact: coercion keeps integers within 2**53),
    since GX 1.24's between-check is vectorised only for numpy int/float
    dtypes and maps a Python function over every cell otherwise.
    """
    import numpy as np

    if str(column.dtype) == "Int64":
        return column.to_numpy(dtype="float64", na_value=np.nan)
    return column.array


def _join_reasons(reasons: dict[str, list[tuple["np.ndarray", str]]], order: Sequence[str], n: int,
                  index: "pd.Index") -> "pd.Series":
    """``"; "``-joined ``"column: reason"`` per row (None where none), columns in ``order``.

    A cell that failed coercion is reported once, with the coercion reason
    (GX may also see it as missing).
    """
    import numpy as np
    import pandas as pd

    errors = np.full(n, None, dtype=object)
    for code in dict.fromkeys(order):
        pairs = reasons.get(code)
        if not pairs:
            continue
        seen = np.zeros(n, dtype=bool)
        for mask, why in pairs:
            mask = mask & ~seen
            seen |= mask
            text = f"{code}: {why}"
            for pos in np.flatnonzero(mask).tolist():
                errors[pos] = text if errors[pos] is None else f"{errors[pos]}; {text}"
    return pd.Series(errors, index=index, dtype=object, name="row_errors")


def validate_frame(frame: "pd.DataFrame", model: DataModel, *,
                   required: Sequence[str] = DEFAULT_REQUIRED) -> ValidationOutcome:
    """Validate one frame (builds a :class:`FrameValidator`; reuse one across chunks instead)."""
    return FrameValidator(model, list(frame.columns), required=required).validate(frame)
