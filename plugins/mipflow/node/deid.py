"""Depersonalisation of EHR export rows.

Hospital nodes ingest EHR CSV exports (read with ``dtype=str``).  Before
anything is stored, every row is depersonalised according to the ``"deid"``
section of its source profile, a :class:`DeidProfile`:

* the patient identifier column is replaced by a keyed pseudonym
  (HMAC-SHA256 under the node secret, see :class:`Pseudonymiser`);
* direct identifiers and free-text columns are dropped;
* date columns are turned into ages, day counts, per-patient shifted dates or
  years (:class:`DateRule`); raw dates never pass through unshifted;
* quasi-identifiers are truncated, top-coded or dropped (:class:`QuasiRule`);
* every other column passes through unchanged.

Rows that cannot be depersonalised completely (missing patient identifier,
unparseable date, birth after the reference date, non-numeric value to
top-code) are reported in :attr:`DeidResult.row_errors` with a short reason.
Reasons and log messages name columns and formats only, never a cell value:
cell values are patient data.

The module is pure pandas and standard library; it imports nothing from
Airflow.
"""
from __future__ import annotations

import hmac
import logging
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence, get_args

import numpy as np
import pandas as pd

from mipflow.exceptions import ProfileError

__all__ = [
    "DEFAULT_AGE_TOP_CODE",
    "ISO_DATE_FORMAT",
    "MIN_KEY_BYTES",
    "DateAction",
    "DateRule",
    "DeidProfile",
    "DeidResult",
    "Pseudonymiser",
    "QuasiAction",
    "QuasiRule",
    "depersonalise",
]

log = logging.getLogger(__name__)

#: Shortest accepted node secret, in bytes (the HMAC-SHA256 block of security).
MIN_KEY_BYTES = 32
#: Ages above this become this value when a rule gives no ``top_code``.
DEFAULT_AGE_TOP_CODE = 90
#: The date format used when a profile gives none (ISO 8601 calendar date).
ISO_DATE_FORMAT = "%Y-%m-%d"

DateAction = Literal["age", "days_since", "shift", "year", "drop"]
QuasiAction = Literal["truncate", "top_code", "drop"]
DATE_ACTIONS: tuple[str, ...] = get_args(DateAction)
QUASI_ACTIONS: tuple[str, ...] = get_args(QuasiAction)

_PSEUDONYM_CONTEXT = b"pid:"
_VISIT_CONTEXT = b"visit:"
_SHIFT_CONTEXT = b"dateshift:"
#: A date whose rendering under a candidate format shows whether the format
#: keeps a four-digit year, the month and the day apart.
_FORMAT_PROBE = datetime(1950, 11, 23)


# --------------------------------------------------------------------------
# Pseudonymisation
# --------------------------------------------------------------------------


def _normalise_id(patient_id: str) -> str:
    if not isinstance(patient_id, str):
        raise TypeError(
            f"patient identifiers must be strings, not {type(patient_id).__name__}; "
            "read the export with dtype=str"
        )
    normalised = patient_id.strip()
    if not normalised:
        raise ValueError("the patient identifier is empty")
    return normalised


def _id_bytes(normalised: str) -> bytes:
    # surrogatepass: identifiers read with errors="surrogateescape" still hash
    # deterministically instead of failing.
    return normalised.encode("utf-8", "surrogatepass")


def _check_max_days(max_days: int) -> None:
    if isinstance(max_days, bool) or not isinstance(max_days, int) or max_days < 1:
        raise ValueError(f"max_days must be a whole number of days >= 1, got {max_days!r}")


class Pseudonymiser:
    """Keyed, deterministic pseudonyms and date shifts for patient identifiers.

    Parameters
    ----------
    key : bytes
        The node secret, at least :data:`MIN_KEY_BYTES` bytes.  The same key
        gives the same pseudonyms across runs; another key gives unrelated
        ones.  The key is never shown by :func:`repr` or :class:`str`.

    Raises
    ------
    ProfileError
        If the key is not bytes or is too short.

    Notes
    -----
    Identifiers are normalised by stripping surrounding whitespace only (case
    and inner spaces are significant).  Pseudonyms are the lowercase hex
    HMAC-SHA256 of ``b"pid:" + id``; date shifts derive from the HMAC of
    ``b"dateshift:" + id``, so a pseudonym reveals nothing about the shift.
    Nothing is cached beyond a single call.
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if isinstance(key, str) or not isinstance(key, (bytes, bytearray, memoryview)):
            raise ProfileError(
                f"the pseudonymisation key must be bytes, not {type(key).__name__} "
                "(decode a hex or base64 secret before passing it)"
            )
        key = bytes(key)
        if len(key) < MIN_KEY_BYTES:
            raise ProfileError(
                f"the pseudonymisation key is {len(key)} bytes long; "
                f"it must be at least {MIN_KEY_BYTES} bytes (e.g. secrets.token_bytes(32))"
            )
        self._key = key

    def __repr__(self) -> str:
        return "Pseudonymiser(key=<hidden>)"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        # Keep the secret out of pickles (task payloads, caches, XComs).
        raise TypeError("a Pseudonymiser holds the node secret and cannot be pickled")

    # -- single identifiers -------------------------------------------------

    def pseudonym(self, patient_id: str) -> str:
        """Return the pseudonym of one patient identifier.

        Parameters
        ----------
        patient_id : str
            The identifier; surrounding whitespace is ignored.

        Returns
        -------
        str
            64 lowercase hex characters.

        Raises
        ------
        TypeError
            If ``patient_id`` is not a string.
        ValueError
            If ``patient_id`` is empty or blank.
        """
        return self._pseudonym(_normalise_id(patient_id))

    def date_shift_days(self, patient_id: str, max_days: int = 365) -> int:
        """Return the patient's date shift, in days.

        The shift is deterministic per identifier and key, never 0, and lies
        in ``[-max_days, max_days]``.

        Parameters
        ----------
        patient_id : str
            The identifier; surrounding whitespace is ignored.
        max_days : int, default 365
            The largest shift in either direction (>= 1).

        Raises
        ------
        TypeError
            If ``patient_id`` is not a string.
        ValueError
            If ``patient_id`` is blank or ``max_days`` < 1.
        """
        _check_max_days(max_days)
        return self._shift(_normalise_id(patient_id), max_days)

    # -- series -------------------------------------------------------------

    def pseudonyms(self, ids: pd.Series) -> pd.Series:
        """Return the pseudonyms of a series of identifiers.

        Parameters
        ----------
        ids : pandas.Series
            Identifiers as strings; NaN, empty and blank cells give NaN.

        Returns
        -------
        pandas.Series
            String series with the same index and name as ``ids``.

        Raises
        ------
        TypeError
            If a non-missing cell is not a string.
        """
        values = self._map_unique(ids, self._pseudonym)
        return pd.Series(values, index=ids.index, name=ids.name, dtype="str")

    def visit_pseudonyms(self, ids: pd.Series) -> pd.Series:
        """Pseudonyms of visit/episode identifiers (32 hex characters).

        Keyed in their own context (``b"visit:"``), so a visit number equal to
        some patient identifier does not get a linkable pseudonym.
        """
        values = self._map_unique(
            ids, lambda v: hmac.digest(self._key, _VISIT_CONTEXT + _id_bytes(v), "sha256").hex()[:32])
        return pd.Series(values, index=ids.index, name=ids.name, dtype="str")

    def date_shifts(self, ids: pd.Series, max_days: int = 365) -> pd.Series:
        """Return each identifier's :meth:`date_shift_days` (float, NaN where missing).

        Parameters
        ----------
        ids : pandas.Series
            Identifiers as strings; NaN, empty and blank cells give NaN.
        max_days : int, default 365
            The largest shift in either direction (>= 1).
        """
        _check_max_days(max_days)
        values = self._map_unique(ids, lambda pid: self._shift(pid, max_days))
        return pd.Series(values, index=ids.index, name=ids.name, dtype="float64")

    # -- internals ----------------------------------------------------------

    def _pseudonym(self, normalised: str) -> str:
        return hmac.digest(self._key, _PSEUDONYM_CONTEXT + _id_bytes(normalised), "sha256").hex()

    def _shift(self, normalised: str, max_days: int) -> int:
        digest = hmac.digest(self._key, _SHIFT_CONTEXT + _id_bytes(normalised), "sha256")
        # 64 bits reduced modulo 2*max_days: the bias is below 2**-40.
        slot = int.from_bytes(digest[:8], "big") % (2 * max_days)
        # slots [0, max_days) -> [-max_days, -1]; [max_days, 2*max_days) -> [1, max_days]
        return slot - max_days if slot < max_days else slot - max_days + 1

    @staticmethod
    def _map_unique(ids: pd.Series, func: Callable[[str], Any]) -> np.ndarray:
        """Apply ``func`` once per distinct normalised identifier; NaN for missing ones."""
        codes, uniques = _factorize_stripped(ids, "patient identifiers")
        return _take([func(u) for u in uniques], codes)


def _require_strings(values: pd.Series, what: str) -> None:
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind not in ("string", "empty"):
        raise TypeError(
            f"{what} must hold strings (found {kind} values); read the export with dtype=str"
        )


def _factorize_stripped(values: pd.Series, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Factorize string cells after stripping surrounding whitespace.

    Returns ``(codes, uniques)``: ``uniques`` holds the distinct stripped,
    non-empty strings (object array) and ``codes`` the position of each cell
    in it, -1 for missing or blank cells.  Stripping runs on distinct raw
    values only, which is much faster than a per-cell ``str.strip`` when
    values repeat.
    """
    _require_strings(values, what)
    raw_codes, raw_uniques = pd.factorize(values, use_na_sentinel=True)
    raw = np.asarray(raw_uniques, dtype=object)
    stripped = pd.Series(raw, dtype=object).str.strip().to_numpy(dtype=object, copy=True)
    blank = stripped == ""
    if (stripped != raw).any():
        # Some values differ only by surrounding whitespace: merge them.
        stripped[blank] = np.nan
        codes, uniques = pd.factorize(stripped, use_na_sentinel=True)
        remap = codes
        uniques = np.asarray(uniques, dtype=object)
    else:
        # Common case: nothing to strip; only empty strings become missing.
        remap = np.cumsum(~blank) - 1
        remap[blank] = -1
        uniques = raw[~blank]
    # raw code -1 (missing) picks the trailing -1
    return np.append(remap, -1).astype(np.intp)[raw_codes], uniques


def _take(per_unique: Sequence[Any] | np.ndarray, codes: np.ndarray, fill: Any = np.nan,
          dtype: Any = object) -> np.ndarray:
    """Spread one value per distinct cell back to all rows (``fill`` where code is -1)."""
    arr = np.asarray(per_unique, dtype=dtype)
    return np.append(arr, np.asarray([fill], dtype=dtype))[codes]


# --------------------------------------------------------------------------
# Profile
# --------------------------------------------------------------------------


def _require_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ProfileError(f"{what} must be a non-empty string, got {value!r}")
    if value != value.strip():
        raise ProfileError(f"{what} {value!r} has surrounding whitespace")
    return value


def _require_names(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ProfileError(f"{what} must be a list of column names, got {type(value).__name__}")
    return tuple(_require_name(v, f"{what}[{i}]") for i, v in enumerate(value))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_keys(doc: Any, allowed: Sequence[str], required: Sequence[str], what: str) -> None:
    if not isinstance(doc, Mapping):
        raise ProfileError(f"{what} must be a JSON object, got {type(doc).__name__}")
    unknown = [k for k in doc if k not in allowed]
    if unknown:
        raise ProfileError(
            f"{what} has unknown key(s) {', '.join(repr(k) for k in unknown)}; "
            f"known keys are {', '.join(allowed)}"
        )
    missing = [k for k in required if k not in doc]
    if missing:
        raise ProfileError(f"{what} lacks required key(s) {', '.join(repr(k) for k in missing)}")


@dataclass(frozen=True)
class DateRule:
    """What to do with one date column.

    Parameters
    ----------
    column : str
        The date column.
    action : {"age", "days_since", "shift", "year", "drop"}
        ``"age"``: completed years from ``column`` (a birth date) to
        ``reference``, as an integer-valued float, top-coded at ``top_code``.
        ``"days_since"``: days from ``reference`` to ``column``
        (``column - reference``; negative when ``column`` is earlier), as an
        integer-valued float.
        ``"shift"``: the date moved by the patient's secret shift, as an ISO
        ``YYYY-MM-DD`` string.
        ``"year"``: the year only, as a string.
        ``"drop"``: the column is removed.
    reference : str, optional
        The event date column; required by ``"age"`` and ``"days_since"``,
        not allowed otherwise.
    output : str, optional
        Name of the produced column (default: ``column``); not allowed with
        ``"drop"``.
    top_code : int, optional
        ``"age"`` only: ages above it become it (default
        :data:`DEFAULT_AGE_TOP_CODE`).

    Raises
    ------
    ProfileError
        If the combination of fields is invalid.
    """

    column: str
    action: DateAction
    reference: str | None = None
    output: str | None = None
    top_code: int | None = None

    def __post_init__(self) -> None:
        what = f"date rule for column {self.column!r}"
        _require_name(self.column, "date rule column")
        if self.action not in DATE_ACTIONS:
            raise ProfileError(
                f"{what}: action {self.action!r} is not one of {', '.join(DATE_ACTIONS)}"
            )
        if self.action in ("age", "days_since"):
            if self.reference is None:
                raise ProfileError(
                    f"{what}: action {self.action!r} needs a 'reference' date column "
                    "(the event date it is measured against)"
                )
            _require_name(self.reference, f"{what}: reference")
            if self.reference == self.column:
                raise ProfileError(f"{what}: the reference must be another column")
        elif self.reference is not None:
            raise ProfileError(
                f"{what}: 'reference' is only used by actions 'age' and 'days_since', "
                f"not {self.action!r}"
            )
        if self.output is not None:
            if self.action == "drop":
                raise ProfileError(f"{what}: action 'drop' produces no column, so takes no 'output'")
            _require_name(self.output, f"{what}: output")
        if self.top_code is not None:
            if self.action != "age":
                raise ProfileError(f"{what}: 'top_code' is only used by action 'age'")
            if not _is_int(self.top_code) or self.top_code < 1:
                raise ProfileError(
                    f"{what}: top_code must be a whole number of years >= 1, got {self.top_code!r}"
                )

    @property
    def output_column(self) -> str | None:
        """The produced column (None for ``"drop"``)."""
        if self.action == "drop":
            return None
        return self.output if self.output is not None else self.column

    @property
    def effective_top_code(self) -> int:
        """The age top code in force (``top_code`` or the default)."""
        return self.top_code if self.top_code is not None else DEFAULT_AGE_TOP_CODE

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> DateRule:
        """Build a rule from its JSON form; :class:`ProfileError` on bad input."""
        _check_keys(doc, ("column", "action", "reference", "output", "top_code"),
                    ("column", "action"), "a date rule")
        return cls(
            column=doc["column"],
            action=doc["action"],
            reference=doc.get("reference"),
            output=doc.get("output"),
            top_code=doc.get("top_code"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The rule in JSON form (unset optional fields left out)."""
        out: dict[str, Any] = {"column": self.column, "action": self.action}
        for name in ("reference", "output", "top_code"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass(frozen=True)
class QuasiRule:
    """What to do with one quasi-identifier column.

    Parameters
    ----------
    column : str
        The column.
    action : {"truncate", "top_code", "drop"}
        ``"truncate"``: keep the first ``keep`` characters (e.g. ZIP to 3).
        ``"top_code"``: numeric values above ``maximum`` become ``maximum``
        (output is float; non-numeric cells are row errors).
        ``"drop"``: the column is removed.
    keep : int, optional
        Required by ``"truncate"`` (>= 1), not allowed otherwise.
    maximum : float, optional
        Required by ``"top_code"``, not allowed otherwise.
    output : str, optional
        Name of the produced column (default: ``column``); not allowed with
        ``"drop"``.

    Raises
    ------
    ProfileError
        If the combination of fields is invalid.
    """

    column: str
    action: QuasiAction
    keep: int | None = None
    maximum: float | None = None
    output: str | None = None

    def __post_init__(self) -> None:
        what = f"quasi-identifier rule for column {self.column!r}"
        _require_name(self.column, "quasi-identifier rule column")
        if self.action not in QUASI_ACTIONS:
            raise ProfileError(
                f"{what}: action {self.action!r} is not one of {', '.join(QUASI_ACTIONS)}"
            )
        if self.action == "truncate":
            if self.keep is None:
                raise ProfileError(f"{what}: action 'truncate' needs 'keep' (characters to keep)")
            if not _is_int(self.keep) or self.keep < 1:
                raise ProfileError(f"{what}: keep must be a whole number >= 1, got {self.keep!r}")
        elif self.keep is not None:
            raise ProfileError(f"{what}: 'keep' is only used by action 'truncate'")
        if self.action == "top_code":
            if self.maximum is None:
                raise ProfileError(f"{what}: action 'top_code' needs 'maximum'")
            if (
                isinstance(self.maximum, bool)
                or not isinstance(self.maximum, (int, float))
                or not math.isfinite(self.maximum)
            ):
                raise ProfileError(f"{what}: maximum must be a finite number, got {self.maximum!r}")
        elif self.maximum is not None:
            raise ProfileError(f"{what}: 'maximum' is only used by action 'top_code'")
        if self.output is not None:
            if self.action == "drop":
                raise ProfileError(f"{what}: action 'drop' produces no column, so takes no 'output'")
            _require_name(self.output, f"{what}: output")

    @property
    def output_column(self) -> str | None:
        """The produced column (None for ``"drop"``)."""
        if self.action == "drop":
            return None
        return self.output if self.output is not None else self.column

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> QuasiRule:
        """Build a rule from its JSON form; :class:`ProfileError` on bad input."""
        _check_keys(doc, ("column", "action", "keep", "maximum", "output"),
                    ("column", "action"), "a quasi-identifier rule")
        return cls(
            column=doc["column"],
            action=doc["action"],
            keep=doc.get("keep"),
            maximum=doc.get("maximum"),
            output=doc.get("output"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The rule in JSON form (unset optional fields left out)."""
        out: dict[str, Any] = {"column": self.column, "action": self.action}
        for name in ("keep", "maximum", "output"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


def _check_date_format(fmt: Any) -> None:
    if not isinstance(fmt, str) or "%" not in fmt:
        raise ProfileError(f"date_format must be a strptime format such as '%Y-%m-%d', got {fmt!r}")
    try:
        rendered = _FORMAT_PROBE.strftime(fmt)
        parsed = datetime.strptime(rendered, fmt)
        parsed_pd = pd.to_datetime(pd.Series([rendered]), format=fmt, errors="raise").iloc[0]
    except (ValueError, TypeError) as exc:
        raise ProfileError(f"date_format {fmt!r} is not a usable strptime format: {exc}") from None
    if parsed.date() != _FORMAT_PROBE.date() or parsed_pd.date() != _FORMAT_PROBE.date():
        raise ProfileError(
            f"date_format {fmt!r} does not keep a full date: it needs a four-digit year "
            "(%Y), a month and a day"
        )


@dataclass(frozen=True)
class DeidProfile:
    """How to depersonalise the rows of one source.

    Parameters
    ----------
    patient_id : str
        The column holding the patient identifier; it is always removed and
        replaced by the pseudonym in ``pseudonym_column``.
    direct_identifiers : tuple of str
        Columns dropped (names, addresses, phone numbers...).
    free_text : tuple of str
        Free-text columns dropped.
    dates : tuple of DateRule
        Date rules.  Every rule column and every reference column is removed
        from the output; only rule outputs appear.
    quasi_identifiers : tuple of QuasiRule
        Quasi-identifier rules; rule columns are removed, outputs appear.
    date_format : str, optional
        The strptime format of all date columns (``None``: ISO ``%Y-%m-%d``).
    pseudonym_column : str, default "subjectcode"
        Where the pseudonym goes (may equal ``patient_id``).
    max_shift_days : int, default 365
        Largest date shift in either direction.

    Raises
    ------
    ProfileError
        If the profile is inconsistent (bad rule, conflicting columns,
        duplicate outputs, unusable date format).

    Notes
    -----
    A column may carry several date (or quasi-identifier) rules as long as
    their outputs differ; it cannot be both a date and a quasi-identifier
    column, nor a rule column and a dropped identifier.
    """

    patient_id: str
    direct_identifiers: tuple[str, ...] = ()
    free_text: tuple[str, ...] = ()
    dates: tuple[DateRule, ...] = ()
    quasi_identifiers: tuple[QuasiRule, ...] = ()
    date_format: str | None = None
    pseudonym_column: str = "subjectcode"
    max_shift_days: int = 365

    def __post_init__(self) -> None:
        _require_name(self.patient_id, "patient_id")
        _require_name(self.pseudonym_column, "pseudonym_column")
        # Accept lists from Python callers; store tuples (hashable, immutable).
        object.__setattr__(
            self, "direct_identifiers", _require_names(self.direct_identifiers, "direct_identifiers")
        )
        object.__setattr__(self, "free_text", _require_names(self.free_text, "free_text"))
        for name, rule_type in (("dates", DateRule), ("quasi_identifiers", QuasiRule)):
            rules = getattr(self, name)
            if isinstance(rules, (str, bytes, Mapping)) or not isinstance(rules, (list, tuple)):
                raise ProfileError(f"{name} must be a list of rules, got {type(rules).__name__}")
            for i, rule in enumerate(rules):
                if not isinstance(rule, rule_type):
                    raise ProfileError(
                        f"{name}[{i}] must be a {rule_type.__name__}, got {type(rule).__name__}"
                    )
            object.__setattr__(self, name, tuple(rules))
        if self.date_format is not None:
            _check_date_format(self.date_format)
        if not _is_int(self.max_shift_days) or self.max_shift_days < 1:
            raise ProfileError(
                f"max_shift_days must be a whole number of days >= 1, got {self.max_shift_days!r}"
            )
        self._check_consistency()

    def _check_consistency(self) -> None:
        dropped = {c: "a direct identifier" for c in self.direct_identifiers}
        dropped.update({c: "a free-text column" for c in self.free_text if c not in dropped})
        quasi_columns = {r.column for r in self.quasi_identifiers}
        for rule in self.dates:
            if rule.column == self.patient_id or rule.reference == self.patient_id:
                raise ProfileError(
                    f"date rule for column {rule.column!r}: the patient identifier column "
                    f"{self.patient_id!r} is not a date"
                )
            if rule.column in dropped:
                raise ProfileError(
                    f"column {rule.column!r} is {dropped[rule.column]} and also has a date rule; "
                    "list it in one place only"
                )
            if rule.column in quasi_columns or rule.reference in quasi_columns:
                col = rule.column if rule.column in quasi_columns else rule.reference
                raise ProfileError(
                    f"column {col!r} has a quasi-identifier rule and is also used as a date"
                )
        for rule in self.quasi_identifiers:
            if rule.column == self.patient_id:
                raise ProfileError(
                    f"the patient identifier column {self.patient_id!r} cannot have a "
                    "quasi-identifier rule (it is always replaced by the pseudonym)"
                )
            if rule.column in dropped:
                raise ProfileError(
                    f"column {rule.column!r} is {dropped[rule.column]} and also has a "
                    "quasi-identifier rule; list it in one place only"
                )
        for rules, kind in ((self.dates, "date"), (self.quasi_identifiers, "quasi-identifier")):
            drops = {r.column for r in rules if r.action == "drop"}
            for rule in rules:
                if rule.action != "drop" and rule.column in drops:
                    raise ProfileError(
                        f"column {rule.column!r} has a 'drop' {kind} rule and another "
                        f"{kind} rule; the other rule already removes the source column"
                    )
        outputs: dict[str, str] = {self.pseudonym_column: "the pseudonym column"}
        for rule in (*self.dates, *self.quasi_identifiers):
            out = rule.output_column
            if out is None:
                continue
            what = f"the output of the {rule.action!r} rule on {rule.column!r}"
            if out in outputs:
                raise ProfileError(
                    f"{what} is named {out!r}, like {outputs[out]}; give it another 'output'"
                )
            if out in dropped or (out == self.patient_id and out != self.pseudonym_column):
                raise ProfileError(
                    f"{what} is named {out!r}, like a column the profile removes "
                    "(an identifier); give it another 'output'"
                )
            outputs[out] = what

    # -- derived column sets -------------------------------------------------

    @property
    def removed_columns(self) -> frozenset[str]:
        """Input columns that never pass through (identifier, dropped and date/rule columns)."""
        removed = {self.patient_id, *self.direct_identifiers, *self.free_text}
        for rule in self.dates:
            removed.add(rule.column)
            if rule.reference is not None:
                removed.add(rule.reference)
        removed.update(r.column for r in self.quasi_identifiers)
        return frozenset(removed)

    @property
    def output_columns(self) -> tuple[str, ...]:
        """Columns the profile produces: the pseudonym, then rule outputs in rule order."""
        outs = [self.pseudonym_column]
        outs.extend(
            r.output_column for r in (*self.dates, *self.quasi_identifiers)
            if r.output_column is not None
        )
        return tuple(outs)

    @property
    def effective_date_format(self) -> str:
        """``date_format``, or ISO ``%Y-%m-%d`` when unset."""
        return self.date_format if self.date_format is not None else ISO_DATE_FORMAT

    # -- JSON form -----------------------------------------------------------

    _KEYS = (
        "patient_id", "direct_identifiers", "free_text", "dates", "quasi_identifiers",
        "date_format", "pseudonym_column", "max_shift_days",
    )

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> DeidProfile:
        """Build a profile from its JSON form (the ``"deid"`` section).

        Parameters
        ----------
        doc : Mapping
            ``patient_id`` is required; other keys are optional.  Unknown keys
            are refused, so that a misspelt ``direct_identifiers`` cannot
            silently let identifiers through.

        Raises
        ------
        ProfileError
            With a message naming the offending key or rule.
        """
        try:
            _check_keys(doc, cls._KEYS, ("patient_id",), "the deid profile")
            kwargs: dict[str, Any] = {"patient_id": doc["patient_id"]}
            for name in ("direct_identifiers", "free_text"):
                if doc.get(name) is not None:
                    kwargs[name] = _require_names(doc[name], name)
            for name, rule_type in (("dates", DateRule), ("quasi_identifiers", QuasiRule)):
                rules = doc.get(name)
                if rules is None:
                    continue
                if not isinstance(rules, (list, tuple)):
                    raise ProfileError(f"{name} must be a list of rules, got {type(rules).__name__}")
                built = []
                for i, rule_doc in enumerate(rules):
                    try:
                        built.append(rule_type.from_dict(rule_doc))
                    except ProfileError as exc:
                        raise ProfileError(f"{name}[{i}]: {exc}") from None
                kwargs[name] = tuple(built)
            for name in ("date_format", "pseudonym_column", "max_shift_days"):
                if doc.get(name) is not None:
                    kwargs[name] = doc[name]
            return cls(**kwargs)
        except ProfileError as exc:
            raise ProfileError(f"invalid deid profile: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The profile in JSON form; ``from_dict(p.to_dict()) == p``."""
        return {
            "patient_id": self.patient_id,
            "direct_identifiers": list(self.direct_identifiers),
            "free_text": list(self.free_text),
            "date_format": self.date_format,
            "dates": [r.to_dict() for r in self.dates],
            "quasi_identifiers": [r.to_dict() for r in self.quasi_identifiers],
            "pseudonym_column": self.pseudonym_column,
            "max_shift_days": self.max_shift_days,
        }

    # -- fitting an input ----------------------------------------------------

    def check_columns(self, columns: Iterable[str]) -> list[str]:
        """List the problems applying this profile to an input with ``columns``.

        Missing direct-identifier, free-text and ``"drop"`` rule columns are
        fine (there is nothing to drop).

        Parameters
        ----------
        columns : iterable of str
            The input's column names.

        Returns
        -------
        list of str
            Human-readable problems; empty when the profile fits.
        """
        cols = list(columns)
        present = set(cols)
        problems: list[str] = []
        seen: set[str] = set()
        for col in cols:
            if col in seen:
                problems.append(f"column {col!r} appears more than once in the input")
            seen.add(col)
        if self.patient_id not in present:
            problems.append(f"patient identifier column {self.patient_id!r} is missing")
        for rule in self.dates:
            if rule.action != "drop" and rule.column not in present:
                problems.append(
                    f"date column {rule.column!r} (rule {rule.action!r}) is missing"
                )
            if rule.reference is not None and rule.reference not in present:
                problems.append(
                    f"reference date column {rule.reference!r} "
                    f"(for {rule.action!r} of {rule.column!r}) is missing"
                )
        for rule in self.quasi_identifiers:
            if rule.action != "drop" and rule.column not in present:
                problems.append(
                    f"quasi-identifier column {rule.column!r} (rule {rule.action!r}) is missing"
                )
        removed = self.removed_columns
        for out in self.output_columns:
            if out in present and out not in removed:
                problems.append(
                    f"output column {out!r} would overwrite the input column of the same name; "
                    "rename the output or list the input column for removal"
                )
        # de-duplicate while keeping order (e.g. a reference used by two rules)
        return list(dict.fromkeys(problems))


# --------------------------------------------------------------------------
# Depersonalisation
# --------------------------------------------------------------------------


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
    codes, uniques = _factorize_stripped(frame[column], f"column {column!r}")
    parsed_unique = pd.to_datetime(pd.Series(uniques, dtype=object), format=fmt, errors="coerce")
    values = parsed_unique.to_numpy()
    parsed = _take(values, codes, fill=np.datetime64("NaT"), dtype=values.dtype)
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
    codes, uniques = _factorize_stripped(
        frame[profile.patient_id], f"patient identifier column {profile.patient_id!r}"
    )
    missing_id = codes < 0
    errors.add(missing_id, "missing patient identifier")
    pseudonyms = _take([pseudonymiser._pseudonym(u) for u in uniques], codes)
    pseudonym_col = pd.Series(pseudonyms, index=index, dtype="str")
    shifts: np.ndarray | None = None
    if any(r.action == "shift" for r in profile.dates):
        max_days = profile.max_shift_days
        shifts = _take(
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
        qcodes, quniques = _factorize_stripped(frame[qrule.column], f"column {qrule.column!r}")
        if qrule.action == "truncate":
            kept = [u[: qrule.keep] for u in quniques]
            derived[out] = pd.Series(_take(kept, qcodes), index=index, dtype="str")  # type: ignore[index]
        elif qrule.action == "top_code":
            numbers = pd.to_numeric(pd.Series(quniques, dtype=object), errors="coerce")
            numbers = numbers.astype("float64").to_numpy()
            errors.add(np.isnan(_take(numbers, qcodes, fill=0.0, dtype="float64")),
                       f"{qrule.column}: not a number")
            capped = np.minimum(numbers, float(qrule.maximum))  # type: ignore[arg-type]
            derived[out] = pd.Series(_take(capped, qcodes, dtype="float64"), index=index)  # type: ignore[index]

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
