"""Tabular depersonalisation: EHR export rows turned into depersonalised rows by a profile.

:func:`depersonalise` applies a :class:`~mipflow.node.deid.profile.DeidProfile` to a frame read
with ``dtype=str``; rows that cannot be depersonalised completely are reported in
:attr:`DeidResult.row_errors` with a short reason that never contains a cell value.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mipflow.exceptions import ProfileError
from mipflow.node.deid.pseudonyms import Pseudonymiser, factorize_stripped, spread
from mipflow.node.deid.profile import DeidProfile

log = logging.getLogger(__name__)



@dataclass
class DeidResult:
    """The outcome of :func:`depersonalise`.

    Attributes
    ----------
    frame : pandas.DataFrame
        Depersonalised rows, same index as the input.  Columns: the
        pseudonym column, then pass-through columns in input order, then rule
        outputs in profile order (dates, then quasi-identifiers).
    row_errors : pandas.Series
        Same index; ``None`` for good rows, else short reasons joined by
        ``"; "``.  Reasons never contain a cell value.
    """

    frame: pd.DataFrame
    row_errors: pd.Series

    @property
    def ok(self) -> pd.Series:
        """Boolean mask of rows without errors."""
        return self.row_errors.isna()

    @property
    def error_count(self) -> int:
        """Number of rows with at least one error."""
        return int(self.row_errors.notna().sum())


class _Errors:
    """Collects per-row reasons positionally."""

    def __init__(self, n: int) -> None:
        self.reasons: np.ndarray = np.full(n, None, dtype=object)

    def add(self, mask: np.ndarray, reason: str) -> None:
        for i in np.flatnonzero(mask):
            current = self.reasons[i]
            self.reasons[i] = reason if current is None else f"{current}; {reason}"


@dataclass
class _ParsedDate:
    dates: pd.Series         # datetime64, NaT where missing or bad
    missing: np.ndarray      # bool: cell empty
    bad: np.ndarray          # bool: cell present but not a date


def _parse_dates(frame: pd.DataFrame, column: str, fmt: str) -> _ParsedDate:
    # Dates repeat a lot (birth dates, admission days): parse each distinct
    # string once.
    codes, uniques = factorize_stripped(frame[column], f"column {column!r}")
    parsed_unique = pd.to_datetime(pd.Series(uniques, dtype=object), format=fmt, errors="coerce")
    values = parsed_unique.to_numpy()
    parsed = spread(values, codes, fill=np.datetime64("NaT"), dtype=values.dtype)
    missing = codes < 0
    bad = ~missing & np.isnat(parsed)
    return _ParsedDate(pd.Series(parsed, index=frame.index), missing, bad)


def _completed_years(birth: pd.Series, ref: pd.Series) -> np.ndarray:
    """Completed years from ``birth`` to ``ref`` (float, NaN where either is NaT)."""
    years = (ref.dt.year - birth.dt.year).to_numpy(dtype="float64", na_value=np.nan)
    ref_md = (ref.dt.month * 100 + ref.dt.day).to_numpy(dtype="float64", na_value=np.nan)
    birth_md = (birth.dt.month * 100 + birth.dt.day).to_numpy(dtype="float64", na_value=np.nan)
    # Birthday not reached yet this year -> one year fewer.  A 29 February
    # birthday is reached on 1 March in common years.
    return years - (ref_md < birth_md)


def _iso_strings(dates: pd.Series) -> np.ndarray:
    """``YYYY-MM-DD`` strings (object array, NaN for NaT), formatting each distinct day once."""
    days = dates.to_numpy().astype("datetime64[D]")
    codes, uniques = pd.factorize(days.view("int64"), use_na_sentinel=False)
    texts = np.datetime_as_string(uniques.astype("datetime64[D]"), unit="D").astype(object)
    texts[np.isnat(uniques.astype("datetime64[D]"))] = np.nan
    return texts[codes]


def depersonalise(
    frame: pd.DataFrame, profile: DeidProfile, pseudonymiser: Pseudonymiser
) -> DeidResult:
    """Depersonalise EHR rows according to a profile.

    Parameters
    ----------
    frame : pandas.DataFrame
        Input rows, read with ``dtype=str`` (cells are strings or NaN).
    profile : DeidProfile
        What to drop, derive and keep.
    pseudonymiser : Pseudonymiser
        The node's keyed pseudonymiser.

    Returns
    -------
    DeidResult
        The depersonalised frame and per-row error reasons.  A row with an
        error keeps its other cells; the cells of the failing rule are NaN.
        Empty cells are missing values, not errors: they give NaN outputs.

    Raises
    ------
    ProfileError
        If the profile does not fit the input's columns
        (see :meth:`DeidProfile.check_columns`).
    TypeError
        If a column the profile reads does not hold strings.
    """
    columns = [str(c) if not isinstance(c, str) else c for c in frame.columns]
    problems = profile.check_columns(columns)
    if problems:
        raise ProfileError("the deid profile does not fit the input: " + "; ".join(problems))
    if list(frame.columns) != columns:
        frame = frame.set_axis(columns, axis=1)

    n = len(frame)
    index = frame.index
    errors = _Errors(n)
    fmt = profile.effective_date_format

    # 1. Pseudonyms (and shifts, when some rule needs them), from the raw ids.
    codes, uniques = factorize_stripped(
        frame[profile.patient_id], f"patient identifier column {profile.patient_id!r}"
    )
    missing_id = codes < 0
    errors.add(missing_id, "missing patient identifier")
    pseudonyms = spread([pseudonymiser._pseudonym(u) for u in uniques], codes)
    pseudonym_col = pd.Series(pseudonyms, index=index, dtype="str")
    shifts: np.ndarray | None = None
    if any(r.action == "shift" for r in profile.dates):
        max_days = profile.max_shift_days
        shifts = spread(
            [pseudonymiser._shift(u, max_days) for u in uniques], codes, fill=0, dtype="int64"
        )

    # 2. Parse every date column once, from the original values.
    parsed: dict[str, _ParsedDate] = {}
    reported_bad: set[str] = set()

    def date(column: str) -> _ParsedDate:
        if column not in parsed:
            parsed[column] = _parse_dates(frame, column, fmt)
        result = parsed[column]
        if column not in reported_bad:
            errors.add(result.bad, f"{column}: not a date in format {fmt}")
            reported_bad.add(column)
        return result

    derived: dict[str, pd.Series] = {}
    for rule in profile.dates:
        out = rule.output_column
        if rule.action == "drop":
            continue
        src = date(rule.column)
        if rule.action == "age":
            ref = date(rule.reference)  # type: ignore[arg-type]
            age = _completed_years(src.dates, ref.dates)
            negative = age < 0
            errors.add(negative, f"{rule.column}: after {rule.reference}")
            age[negative] = np.nan
            age = np.minimum(age, float(rule.effective_top_code))
            derived[out] = pd.Series(age, index=index, dtype="float64")  # type: ignore[index]
        elif rule.action == "days_since":
            ref = date(rule.reference)  # type: ignore[arg-type]
            delta = src.dates.dt.normalize() - ref.dates.dt.normalize()
            derived[out] = pd.Series(  # type: ignore[index]
                delta.dt.days.to_numpy(dtype="float64", na_value=np.nan), index=index
            )
        elif rule.action == "shift":
            assert shifts is not None
            offsets = pd.to_timedelta(shifts, unit="D")
            shifted = src.dates.dt.normalize() + pd.Series(offsets, index=index)
            iso = _iso_strings(shifted)
            iso[missing_id] = np.nan  # no patient, no shift: never emit the raw date
            derived[out] = pd.Series(iso, index=index, dtype="str")  # type: ignore[index]
        elif rule.action == "year":
            years = src.dates.to_numpy().astype("datetime64[Y]")
            text = np.datetime_as_string(years, unit="Y").astype(object)
            text[np.isnat(years)] = np.nan
            derived[out] = pd.Series(text, index=index, dtype="str")  # type: ignore[index]

    # 3. Quasi-identifiers.
    for qrule in profile.quasi_identifiers:
        out = qrule.output_column
        if qrule.action == "drop":
            continue
        qcodes, quniques = factorize_stripped(frame[qrule.column], f"column {qrule.column!r}")
        if qrule.action == "truncate":
            kept = [u[: qrule.keep] for u in quniques]
            derived[out] = pd.Series(spread(kept, qcodes), index=index, dtype="str")  # type: ignore[index]
        elif qrule.action == "top_code":
            numbers = pd.to_numeric(pd.Series(quniques, dtype=object), errors="coerce")
            numbers = numbers.astype("float64").to_numpy()
            errors.add(np.isnan(spread(numbers, qcodes, fill=0.0, dtype="float64")),
                       f"{qrule.column}: not a number")
            capped = np.minimum(numbers, float(qrule.maximum))  # type: ignore[arg-type]
            derived[out] = pd.Series(spread(capped, qcodes, dtype="float64"), index=index)  # type: ignore[index]

    # 4. Assemble: pseudonym, pass-through columns, derived columns.
    removed = profile.removed_columns
    parts: dict[str, pd.Series] = {profile.pseudonym_column: pseudonym_col}
    for col in columns:
        if col not in removed:
            parts[col] = frame[col]
    parts.update(derived)
    out_frame = pd.DataFrame(parts, index=index)
    row_errors = pd.Series(errors.reasons, index=index, dtype=object, name="deid_error")
    bad_rows = int(row_errors.notna().sum())
    if bad_rows:
        log.info("depersonalised %d rows, %d with errors", n, bad_rows)
    else:
        log.debug("depersonalised %d rows", n)
    return DeidResult(frame=out_frame, row_errors=row_errors)

