"""mipflow.node.deid.rules: the per-column rules, checked when built."""
from __future__ import annotations

import pytest

from mipflow.exceptions import ProfileError
from mipflow.node.deid.profile import DeidProfile
from mipflow.node.deid.rules import DateRule, QuasiRule


def test_rule_constructors_validate_too() -> None:
    with pytest.raises(ProfileError, match="needs a 'reference'"):
        DateRule("birth_date", "age")
    with pytest.raises(ProfileError, match="needs 'keep'"):
        QuasiRule("zip", "truncate")
    with pytest.raises(ProfileError, match=r"dates\[0\] must be a DateRule"):
        DeidProfile("mrn", dates=({"column": "x", "action": "drop"},))  # type: ignore[arg-type]
