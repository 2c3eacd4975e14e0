"""The ``"deid"`` section of a source profile: the :class:`DeidProfile`.

A :class:`DeidProfile` names the patient identifier, the direct identifiers and free-text
columns to drop, and the :class:`~mipflow.node.deid.rules.DateRule` and
:class:`~mipflow.node.deid.rules.QuasiRule` to apply (:mod:`mipflow.node.deid.rules`); it is
checked when it is built (:class:`mipflow.exceptions.ProfileError` with a clear message).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Mapping

import pandas as pd

from mipflow.exceptions import ProfileError
from mipflow.node.deid.rules import DateRule, QuasiRule, check_keys, is_int, require_name, require_names

#: The date format used when a profile gives none (ISO 8601 calendar date).
ISO_DATE_FORMAT = "%Y-%m-%d"

#: A date whose rendering under a candidate format shows whether the format
#: keeps a four-digit year, the month and the day apart.
_FORMAT_PROBE = datetime(1950, 11, 23)


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
        require_name(self.patient_id, "patient_id")
        require_name(self.pseudonym_column, "pseudonym_column")
        # Accept lists from Python callers; store tuples (hashable, immutable).
        object.__setattr__(
            self, "direct_identifiers", require_names(self.direct_identifiers, "direct_identifiers")
        )
        object.__setattr__(self, "free_text", require_names(self.free_text, "free_text"))
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
        if not is_int(self.max_shift_days) or self.max_shift_days < 1:
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
            check_keys(doc, cls._KEYS, ("patient_id",), "the deid profile")
            kwargs: dict[str, Any] = {"patient_id": doc["patient_id"]}
            for name in ("direct_identifiers", "free_text"):
                if doc.get(name) is not None:
                    kwargs[name] = require_names(doc[name], name)
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
