"""The per-column rules of a ``"deid"`` section: :class:`DateRule` and :class:`QuasiRule`.

Each rule is checked when it is built (:class:`mipflow.exceptions.ProfileError`
with a clear message); :class:`mipflow.node.deid.profile.DeidProfile` holds
them and checks them against each other.  The checks of a section's parts
(:func:`require_name`, :func:`require_names`, :func:`check_keys`) are shared
with the profile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence, get_args

from mipflow.exceptions import ProfileError

#: Ages above this become this value when a rule gives no ``top_code``.
DEFAULT_AGE_TOP_CODE = 90

DateAction = Literal["age", "days_since", "shift", "year", "drop"]
QuasiAction = Literal["truncate", "top_code", "drop"]
DATE_ACTIONS: tuple[str, ...] = get_args(DateAction)
QUASI_ACTIONS: tuple[str, ...] = get_args(QuasiAction)


def require_name(value: Any, what: str) -> str:
    """``value`` if it is a column name (a non-empty string without surrounding whitespace)."""
    if not isinstance(value, str) or not value.strip():
        raise ProfileError(f"{what} must be a non-empty string, got {value!r}")
    if value != value.strip():
        raise ProfileError(f"{what} {value!r} has surrounding whitespace")
    return value


def require_names(value: Any, what: str) -> tuple[str, ...]:
    """``value`` as a tuple of column names, if it is a list of them."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ProfileError(f"{what} must be a list of column names, got {type(value).__name__}")
    return tuple(require_name(v, f"{what}[{i}]") for i, v in enumerate(value))


def is_int(value: Any) -> bool:
    """Whether ``value`` is an int (a bool is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_keys(doc: Any, allowed: Sequence[str], required: Sequence[str], what: str) -> None:
    """Raise :class:`ProfileError` unless ``doc`` is an object with only ``allowed`` and all ``required`` keys."""
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
        require_name(self.column, "date rule column")
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
            require_name(self.reference, f"{what}: reference")
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
            require_name(self.output, f"{what}: output")
        if self.top_code is not None:
            if self.action != "age":
                raise ProfileError(f"{what}: 'top_code' is only used by action 'age'")
            if not is_int(self.top_code) or self.top_code < 1:
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
        check_keys(doc, ("column", "action", "reference", "output", "top_code"),
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
        require_name(self.column, "quasi-identifier rule column")
        if self.action not in QUASI_ACTIONS:
            raise ProfileError(
                f"{what}: action {self.action!r} is not one of {', '.join(QUASI_ACTIONS)}"
            )
        if self.action == "truncate":
            if self.keep is None:
                raise ProfileError(f"{what}: action 'truncate' needs 'keep' (characters to keep)")
            if not is_int(self.keep) or self.keep < 1:
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
            require_name(self.output, f"{what}: output")

    @property
    def output_column(self) -> str | None:
        """The produced column (None for ``"drop"``)."""
        if self.action == "drop":
            return None
        return self.output if self.output is not None else self.column

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> QuasiRule:
        """Build a rule from its JSON form; :class:`ProfileError` on bad input."""
        check_keys(doc, ("column", "action", "keep", "maximum", "output"),
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
