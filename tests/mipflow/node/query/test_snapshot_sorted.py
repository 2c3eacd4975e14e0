"""The snapshot's keys in key order (ADR 0049, amended): a selection's sorted row and patient keys are a
gather of its mask, handed to the differencing controls, which use them only when they are exactly the
frame's keys sorted; the cohorts are the same with and without them."""
from __future__ import annotations

import numpy as np
import pytest

from mipflow.node.controls.differencing import cohort_sets_and_patients, patient_keys, row_keys
from mipflow.node.query.rowkeys import attach_sorted_keys, sorted_keys_of
from mipflow.node.query.snapshot import current_snapshot, select_columns
from tests.mipflow.node.query.cases import ALL_DATASETS, FILTER_CASES
from tests.mipflow.node.query.test_snapshot import HELD, KEY, MODEL, _check_variables, _uses_text
from tests.mipflow.node.query.test_snapshot import home as home  # noqa: F401  (the fixture)
from tests.mipflow.node.query.test_snapshot import snapshot_read

CASES = [pytest.param(case.values[0], id=case.id) for case in FILTER_CASES if not _uses_text(case.values[0])]


def _same_cohorts(frame, by=()):
    """The cohorts of ``frame`` (its sorted keys, if attached) and of a copy (no sorted keys: sorts)."""
    got = cohort_sets_and_patients(frame, HELD, True, KEY, by)
    plain = frame.copy()
    assert sorted_keys_of(plain, row_keys(plain, KEY), patient_keys(plain, KEY)) is None  # not inherited
    want = cohort_sets_and_patients(plain, HELD, True, KEY, by)
    assert len(got[0]) == len(want[0]) and all(np.array_equal(a, b) for a, b in zip(got[0], want[0]))
    assert all(np.array_equal(a, b) for a, b in zip(got[1], want[1]))
    assert np.array_equal(got[2], want[2])
    return got


@pytest.mark.parametrize("filters", [pytest.param(None, id="every-row"), *CASES])
def test_a_snapshot_read_hands_its_keys_sorted_and_the_cohorts_are_the_same(filters, home):
    store, folder = home
    frame = snapshot_read(store, folder, datasets=ALL_DATASETS, variables=HELD, filters=filters)
    assert frame is not None
    rows, patients = row_keys(frame, KEY), patient_keys(frame, KEY)
    hint = sorted_keys_of(frame, rows, patients)
    assert hint is not None
    assert np.array_equal(hint[0], np.sort(rows)) and np.array_equal(hint[1], np.sort(patients))
    _same_cohorts(frame)
    _same_cohorts(frame, by=("dataset",))  # splits by dataset: those cohorts are sorted as before


def test_keys_that_are_not_the_frames_are_never_used(home):
    store, folder = home
    frame = snapshot_read(store, folder, datasets=ALL_DATASETS, variables=HELD)
    rows, patients = row_keys(frame, KEY), patient_keys(frame, KEY)
    good_rows, good_patients = np.sort(rows), np.sort(patients)
    wrong = good_rows.copy()
    wrong[-1] -= np.uint64(1)  # still sorted, one key off
    for bad in ((wrong, good_patients), (good_rows[:-1], good_patients), (good_rows[::-1].copy(), good_patients),
                (good_rows, good_patients.astype(np.int64))):
        attach_sorted_keys(frame, *bad)
        assert sorted_keys_of(frame, rows, patients) is None
        _same_cohorts(frame)  # sorted as without a snapshot
    attach_sorted_keys(frame, good_rows, good_patients)
    assert sorted_keys_of(frame, rows, None) is None  # a frame without patients: no use for them


def test_a_snapshot_written_before_has_no_sorted_keys_and_is_read_as_before(home):
    store, _ = home
    snap = current_snapshot(store, MODEL, KEY)
    snap.meta.pop("sorted_keys")  # as meta.json of a snapshot written before
    frame = select_columns(snap, MODEL, _check_variables(MODEL, HELD), list(ALL_DATASETS), None, KEY)
    assert frame is not None
    assert sorted_keys_of(frame, row_keys(frame, KEY), patient_keys(frame, KEY)) is None
    _same_cohorts(frame)
