"""mipflow.node.deid.pseudonyms: keyed pseudonyms and per-patient date shifts.

Expected values are computed independently, with ``hmac`` and plain Python.
"""
from __future__ import annotations

import base64
import copy
import pickle
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mipflow.exceptions import ProfileError
from mipflow.node.deid.pseudonyms import Pseudonymiser

from tests.mipflow.node.deid.helpers import (
    KEY,
    OTHER_KEY,
    ref_pseudonym,
)


# --------------------------------------------------------------------------
# Pseudonymiser
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "patient_id",
    [
        pytest.param("MRN-000123", id="plain"),
        pytest.param("  MRN-000123\t", id="surrounding-whitespace"),
        pytest.param("Zoë Ünal 42", id="unicode-inner-space"),
        pytest.param("x", id="one-char"),
    ],
)
def test_pseudonym_is_hmac_sha256_of_stripped_id(pseudonymiser: Pseudonymiser, patient_id: str) -> None:
    got = pseudonymiser.pseudonym(patient_id)
    assert got == ref_pseudonym(KEY, patient_id)
    assert len(got) == 64 and set(got) <= set("0123456789abcdef")


def test_pseudonym_normalises_only_surrounding_whitespace(pseudonymiser: Pseudonymiser) -> None:
    assert pseudonymiser.pseudonym(" ab ") == pseudonymiser.pseudonym("ab")
    assert pseudonymiser.pseudonym("ab") != pseudonymiser.pseudonym("AB")
    assert pseudonymiser.pseudonym("a b") != pseudonymiser.pseudonym("ab")


def test_pseudonyms_depend_on_key() -> None:
    a, b = Pseudonymiser(KEY), Pseudonymiser(OTHER_KEY)
    assert a.pseudonym("MRN1") == Pseudonymiser(KEY).pseudonym("MRN1")
    assert a.pseudonym("MRN1") != b.pseudonym("MRN1")
    assert b.pseudonym("MRN1") == ref_pseudonym(OTHER_KEY, "MRN1")


def test_pseudonyms_series_maps_missing_to_nan(pseudonymiser: Pseudonymiser) -> None:
    ids = pd.Series(["A1", None, "", "   ", " A1", "B2"], index=[10, 11, 12, 13, 14, 15],
                    dtype=str, name="mrn")
    got = pseudonymiser.pseudonyms(ids)
    assert list(got.index) == [10, 11, 12, 13, 14, 15]
    assert got.name == "mrn"
    assert got[10] == got[14] == ref_pseudonym(KEY, "A1")
    assert got[15] == ref_pseudonym(KEY, "B2")
    assert got[[11, 12, 13]].isna().all()


def test_pseudonyms_of_empty_series(pseudonymiser: Pseudonymiser) -> None:
    assert pseudonymiser.pseudonyms(pd.Series([], dtype=str)).empty


@pytest.mark.parametrize(
    "key, fragment",
    [
        pytest.param(b"short", "at least 32 bytes", id="short"),
        pytest.param(b"x" * 31, "31 bytes", id="31-bytes"),
        pytest.param("k" * 40, "must be bytes", id="str"),
        pytest.param(None, "must be bytes", id="none"),
    ],
)
def test_bad_key_raises_profile_error(key: Any, fragment: str) -> None:
    with pytest.raises(ProfileError, match=fragment):
        Pseudonymiser(key)


def test_repr_and_str_hide_the_key() -> None:
    key = b"S3cr3t-node-key-" + bytes(range(100, 116))
    p = Pseudonymiser(key)
    for text in (repr(p), str(p), f"{p}", repr([p])):
        for form in (key.hex(), repr(key), key.decode("latin-1"), base64.b64encode(key).decode(),
                     "S3cr3t"):
            assert form not in text


def test_pseudonymiser_refuses_pickling() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Pseudonymiser(KEY))
    with pytest.raises(TypeError):
        copy.deepcopy(Pseudonymiser(KEY))


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda p: p.pseudonym("  "), id="blank-pseudonym"),
        pytest.param(lambda p: p.date_shift_days(""), id="empty-shift"),
        pytest.param(lambda p: p.date_shift_days("A", max_days=0), id="max-days-0"),
    ],
)
def test_blank_ids_and_bad_max_days_raise_value_error(pseudonymiser: Pseudonymiser, call: Any) -> None:
    with pytest.raises(ValueError):
        call(pseudonymiser)


def test_non_string_ids_raise_type_error(pseudonymiser: Pseudonymiser) -> None:
    with pytest.raises(TypeError, match="dtype=str"):
        pseudonymiser.pseudonym(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dtype=str"):
        pseudonymiser.pseudonyms(pd.Series([1, 2]))


@settings(max_examples=200, deadline=None)
@given(patient_id=st.text(min_size=1, max_size=30).filter(lambda s: s.strip() != ""),
       max_days=st.integers(min_value=1, max_value=3650))
def test_date_shift_is_deterministic_nonzero_and_bounded(patient_id: str, max_days: int) -> None:
    a = Pseudonymiser(KEY)
    shift = a.date_shift_days(patient_id, max_days)
    assert isinstance(shift, int)
    assert shift != 0
    assert -max_days <= shift <= max_days
    assert Pseudonymiser(KEY).date_shift_days(patient_id, max_days) == shift
    assert a.date_shift_days(f" {patient_id} ", max_days) == shift
    series = a.date_shifts(pd.Series([patient_id, None]), max_days)
    assert series.iloc[0] == shift and np.isnan(series.iloc[1])


def test_date_shift_depends_on_key_and_spreads_over_both_signs() -> None:
    ids = [f"MRN{i:05d}" for i in range(400)]
    a, b = Pseudonymiser(KEY), Pseudonymiser(OTHER_KEY)
    shifts_a = [a.date_shift_days(i) for i in ids]
    shifts_b = [b.date_shift_days(i) for i in ids]
    assert sum(x != y for x, y in zip(shifts_a, shifts_b)) > 390
    assert min(shifts_a) < -300 and max(shifts_a) > 300
    assert 120 < sum(s < 0 for s in shifts_a) < 280
    assert {a.date_shift_days(i, max_days=1) for i in ids} == {-1, 1}


