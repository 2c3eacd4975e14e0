"""Keys, the example profile and reference computations the :mod:`mipflow.node.deid` tests share.

Expected values are computed independently of the package, with ``hmac``,
``datetime`` and plain Python.
"""
from __future__ import annotations

import hashlib
import hmac
from datetime import date, datetime
from typing import Any

import pandas as pd

from mipflow.node.deid.profile import DeidProfile

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))

EXAMPLE_DOC: dict[str, Any] = {
    "patient_id": "mrn",
    "direct_identifiers": ["first_name", "last_name", "address", "phone", "email", "ssn"],
    "free_text": ["clinical_notes"],
    "date_format": "%Y-%m-%d",
    "dates": [
        {"column": "birth_date", "action": "age", "reference": "admission_date",
         "output": "age", "top_code": 90},
        {"column": "last_followup_date", "action": "days_since",
         "reference": "admission_date", "output": "followup_days"},
        {"column": "admission_date", "action": "shift"},
    ],
    "quasi_identifiers": [{"column": "zip", "action": "truncate", "keep": 3, "output": "zip3"}],
}
EXAMPLE_COLUMNS = [
    "mrn", "first_name", "last_name", "address", "phone", "email", "ssn", "clinical_notes",
    "birth_date", "admission_date", "last_followup_date", "zip", "mmse",
]


# --------------------------------------------------------------------------
# Independent reference computations
# --------------------------------------------------------------------------


def ref_pseudonym(key: bytes, patient_id: str) -> str:
    return hmac.new(key, b"pid:" + patient_id.strip().encode("utf-8"), hashlib.sha256).hexdigest()


def anniversary(birth: date, year: int) -> date:
    """The birthday in ``year``; 29 February falls on 1 March in common years."""
    try:
        return birth.replace(year=year)
    except ValueError:
        return date(year, 3, 1)


def ref_age(birth: date, ref: date) -> int:
    """Completed years: birthdays passed in (birth, ref], counted one by one."""
    years = 0
    while anniversary(birth, birth.year + years + 1) <= ref:
        years += 1
    return years


def d(text: str) -> date:
    return datetime.strptime(text, "%Y-%m-%d").date()


def frame(**columns: list[Any]) -> pd.DataFrame:
    return pd.DataFrame(columns, dtype=str)


def profile(**kwargs: Any) -> DeidProfile:
    kwargs.setdefault("patient_id", "mrn")
    return DeidProfile(**kwargs)
