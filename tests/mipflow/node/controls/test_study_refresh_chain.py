"""A study refresh chained with everything the node answered before (ADR 0028 amended, issue 14).

Every node here is a real home (``standard_home``) with rows loaded through the store; the standard-mode releases
go through the node's own guard (:class:`DifferencingGuard`: ``before_step`` then ``after_step``, as a local step
does), the study through ``study_approval``.  Thresholds as shipped (``min_row_count`` 10).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from mipflow.exceptions import ConfigError
from mipflow.node.controls import study_approval
from mipflow.node.controls.differencing import CohortLedger, DifferencingGuard, consent_epoch
from mipflow.node.controls.study import read_study, write_study
from mipflow.node.controls.study_chain import RECORD_KEY
from mipflow.node.home import NodeHome
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import PROJECT, protocol, rule, stroke_rows, where
from tests.nodes import apply_consent, grant_all, load_frame, standard_home

VARIABLES = ["age", "nihss_admission"]
TARGET_AGE = 19.0


def band(low: float, high: float) -> dict:
    return where(rule("age", "greater_or_equal", low), rule("age", "less", high))


def rows(seed: int, prefix: str, ages) -> pd.DataFrame:
    """Stroke rows of hospital_a with these ages, every NIHSS present."""
    ages = np.asarray(ages, dtype=float)
    frame = stroke_rows(seed, len(ages), "hospital_a", prefix)
    frame["age"] = np.round(ages, 1)
    frame["nihss_admission"] = np.random.default_rng(seed).integers(0, 30, len(ages)).astype(float)
    return frame


def home_with(root, frame: pd.DataFrame) -> NodeHome:
    standard_home(root, "hospital_a")
    load_frame(root, STROKE, frame)
    grant_all(root, researcher="*", project=PROJECT)
    return NodeHome(root)


def study(population_filter: dict) -> dict:
    """Descriptive statistics and a linear regression of (age, NIHSS) on one band, no subgroup, no nominal variable
    (the level cells see nothing: the ledger's rules decide)."""
    doc = protocol(datasets=["hospital_a"], variables=VARIABLES, population={"filter": population_filter},
                   subgroups=[], algorithms=["descriptive_stats", "linear_regression"])
    doc.pop("survival")
    return doc


def keys_of(home: NodeHome, filters) -> np.ndarray:
    """The sorted row keys of hospital_a's complete (age, NIHSS) rows under ``filters``."""
    from mipflow.node.controls.differencing import hash_key, row_keys, sorted_unique
    from mipflow.node.query.read import select_frame
    from mipflow.node.store.feature_store import FeatureStore

    store = FeatureStore(home.db_url)
    try:
        frame = select_frame(store, STROKE, datasets=["hospital_a"], variables=VARIABLES, filters=filters,
                             complete_case=True, row_identity=True)
    finally:
        store.dispose()
    return sorted_unique(row_keys(frame, hash_key(home.key())))


def standard_release(home: NodeHome, filters) -> None:
    """A standard-mode analysis of (age, NIHSS) under ``filters``, answered: the guard's check, then its record."""
    from mipflow.node.query.read import select_frame
    from mipflow.node.store.feature_store import FeatureStore

    store = FeatureStore(home.db_url)
    guard = DifferencingGuard(home.root, home.key())
    try:
        frame = select_frame(store, STROKE, datasets=["hospital_a"], variables=VARIABLES, filters=filters,
                             complete_case=True, row_identity=True)
        epoch = consent_epoch(store)
        cohorts = guard.cohorts(STROKE.key, frame, VARIABLES, True)
        guard.before_step(cohorts, home.settings.min_row_count, epoch)
        guard.after_step(cohorts, None, None, epoch)
    finally:
        guard.ledger.close()
        store.dispose()


def quiet(message: str, snapshot: str) -> bool:
    """No data-derived number in a refusal (the threshold and the snapshot's date are the admin's own)."""
    return not any(ch.isdigit() for ch in message.replace("(10)", "").replace(snapshot, ""))


FIRST = np.r_[np.linspace(20.5, 39.5, 30), np.linspace(40.5, 59.5, 30), np.linspace(60.5, 84.5, 30)]
LATE = np.linspace(41.2, 58.8, 12)  # twelve new patients aged 40-60: a refresh's change of at least min_row_count


@pytest.mark.parametrize("with_target", [True, False])
def test_a_refresh_completing_a_chain_of_standard_releases_is_refused(tmp_path, with_target) -> None:
    """Round 22's hole 4 at a refresh.  Study ``C`` (age 40-60) approved; a load of twelve patients aged 40-60 (and,
    with ``with_target``, one aged 19); then PCA-like standard releases on ``A`` (age < 60) and ``B`` (20-40), each
    allowed (``A - B - C`` is the new patients and her: 13 rows).  The refreshed ``C'`` is 12 rows from ``C`` (the
    refresh's change rule allows it) and no pair of ``A``, ``B``, ``C'`` is near, but ``A - B - C'`` is her alone:
    the refresh is refused, in words without a count, and the study stays on its snapshot.  Without her the same
    releases leave ``A - B - C'`` empty and the refresh passes (nothing near)."""
    home = home_with(tmp_path / "node", rows(31, "first", FIRST))
    first = study_approval.approve(home, PROJECT, study(band(40, 60)))
    assert first["status"] == "approved" and first["population"] == 30
    late = np.r_[[TARGET_AGE], LATE] if with_target else LATE
    load_frame(home.root, STROKE, rows(32, "late", late))
    a, b = where(rule("age", "less", 60)), band(20, 40)
    standard_release(home, a)
    standard_release(home, b)
    ka, kb, kc = keys_of(home, a), keys_of(home, b), keys_of(home, band(40, 60))
    rest = np.setdiff1d(np.setdiff1d(ka, kb), kc)
    assert len(rest) == (1 if with_target else 0) and np.isin(kb, ka).all() and not np.isin(kc, kb).any()
    # the pairwise rules alone allow C' after A and B (and after C, 12 rows away)
    ledger = CohortLedger(home.root)
    try:
        ledger.check(STROKE.key, [kc], 10)
    finally:
        ledger.close()
    if not with_target:
        done = study_approval.refresh(home, PROJECT)
        assert done["status"] == "refreshed" and done["added"] == 12
        assert read_study(home.root, PROJECT).population.tolist() == kc.tolist()
        return
    with pytest.raises(ConfigError) as caught:
        study_approval.refresh(home, PROJECT)
    message = str(caught.value)
    assert message.startswith("study 'stroke-outcomes' not refreshed: a combination of the study's cohorts with "
                              "cohorts or groups this node already answered for would single out fewer than "
                              "min_row_count (10) patients (differencing)"), message
    assert message.endswith(f"the study stays on its snapshot of {first['snapshot']}")
    assert quiet(message, first["snapshot"]), message
    kept = read_study(home.root, PROJECT)
    assert kept.snapshot == first["snapshot"] and len(kept.population) == 30 and kept.record["refreshes"] == []


def test_the_added_rows_less_a_standard_release_are_refused_the_study_s_own_snapshot_taking_part(tmp_path) -> None:
    """Why the study's own earlier cohorts stay in the chain (seen as remembered) rather than being left out.  Study
    ``C`` (age 40-50, 15 rows) approved; twelve patients aged 50-60 loaded, the target (50.5) among them; a standard
    release on ``X`` (age 51-60: the eleven others) is allowed (disjoint from ``C``).  The refreshed ``C'`` (the
    protocol's population is age 40-60: 27 rows) is 12 rows from ``C`` and holds ``X``, no pair near, but
    ``C' - C - X`` is the target: refused.  Left out of the chain, ``C`` would let it through."""
    ages = np.r_[np.linspace(20.5, 39.5, 30), np.linspace(40.5, 49.5, 15), np.linspace(60.5, 84.5, 30)]
    home = home_with(tmp_path / "node", rows(41, "first", ages))
    first = study_approval.approve(home, PROJECT, study(band(40, 60)))
    assert first["population"] == 15
    load_frame(home.root, STROKE, rows(42, "late", np.r_[[50.5], np.linspace(51.5, 59.5, 11)]))
    x = band(51, 60)
    standard_release(home, x)
    kx, kc = keys_of(home, x), keys_of(home, band(40, 60))
    old = read_study(home.root, PROJECT).population
    assert len(np.setdiff1d(np.setdiff1d(kc, old), kx)) == 1 and len(kx) == 11
    with pytest.raises(ConfigError, match=r"would single out fewer than min_row_count \(10\) patients \(differencing\)"):
        study_approval.refresh(home, PROJECT)
    assert read_study(home.root, PROJECT).snapshot == first["snapshot"]


@pytest.mark.parametrize("legacy", [False, True])
def test_an_honest_refresh_after_a_consent_registry_change_passes(tmp_path, legacy) -> None:
    """The round-12 refresh at a node where no row changed (the registry did): the study's own cohorts, of the
    earlier consent epoch, would each carry a phantom unit (ADR 0061) that the refreshed cohorts isolate; seen as
    the study remembers them, the refresh passes, and the next one after new rows too.  ``legacy``: a study
    recorded before its digests were kept (they are rebuilt from the snapshot)."""
    home = home_with(tmp_path / "node", rows(51, "first", FIRST))
    first = study_approval.approve(home, PROJECT, study(band(40, 60)))
    record = read_study(home.root, PROJECT)
    assert len(record.record[RECORD_KEY]) == 1  # one distinct cohort: the population (the one dataset's too)
    if legacy:
        write_study(home.root, replace(record, record={k: v for k, v in record.record.items() if k != RECORD_KEY}))
    standard_release(home, where(rule("age", "greater_or_equal", 20)))  # something else answered, far from it
    assert apply_consent(home.root, ["never-treated-here"]) == 0
    done = study_approval.refresh(home, PROJECT)
    assert done["status"] == "refreshed" and done["added"] == done["removed"] == 0
    assert read_study(home.root, PROJECT).record[RECORD_KEY] == record.record[RECORD_KEY]
    load_frame(home.root, STROKE, rows(52, "late", LATE))
    again = study_approval.refresh(home, PROJECT)
    assert again["status"] == "refreshed" and again["added"] == 12
    assert len(read_study(home.root, PROJECT).record[RECORD_KEY]) == 2  # both snapshots' populations
    assert first["status"] == "approved"
