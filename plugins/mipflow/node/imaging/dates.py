"""Date shifting for the Retain Longitudinal Temporal Information with Modified Dates Option.

Under the modified-dates option every date (DA) and date-time (DT) value is moved by the
patient's secret offset (:meth:`mipflow.node.deid.pseudonyms.Pseudonymiser.date_shift_days` of
the original Patient ID), so that intervals survive and image dates line up with the shifted
clinical dates.  A value that is not a full date cannot be shifted: the caller falls back to the
attribute's basic action.
"""
from __future__ import annotations

from datetime import date, timedelta

__all__ = ["shift_da", "shift_dt"]


def shift_da(value: str, days: int) -> str | None:
    """A DA value (``YYYYMMDD``, or ACR-NEMA ``YYYY.MM.DD``) moved by ``days``; ``None`` if it is not a full date."""
    v = value.strip()
    if len(v) == 10 and v[4] == "." and v[7] == ".":   # ACR-NEMA YYYY.MM.DD
        v = v[:4] + v[5:7] + v[8:]
    if len(v) != 8 or not v.isdigit():
        return None
    try:
        d = date(int(v[:4]), int(v[4:6]), int(v[6:])) + timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{d.year:04d}{d.month:02d}{d.day:02d}"


def shift_dt(value: str, days: int) -> str | None:
    """A DT value whose date part is moved by ``days`` (time and offset kept); ``None`` if it has no full date."""
    v = value.strip()
    if len(v) < 8:
        return None
    head = shift_da(v[:8], days)
    return None if head is None else head + v[8:]
