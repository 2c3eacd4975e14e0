"""Approving, refreshing and withdrawing a study at a node: every data-dependent check, once, by the admin."""
from __future__ import annotations

import stat

import numpy as np
import pandas as pd
import pytest

from mipflow.exceptions import ConfigError
from mipflow.node.controls import study_approval
from mipflow.node.controls.differencing import CohortLedger, cohort_digest
from mipflow.node.controls.study import StudyRegistry, read_study
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import (
    ELDERLY, PROJECT, protocol, node_home, population, rule, stroke_rows, where,
)
from tests.nodes import load_frame


def test_approval_records_the_snapshot_and_the_family_in_the_ledger(tmp_path) -> None:
    home, frame = node_home(tmp_path)
    summary = study_approval.approve(home, PROJECT, protocol())
    whole = population(frame)
    assert summary["status"] == "approved" and summary["population"] == len(whole)
    assert summary["subgroups"] == {"elderly": int((whole["age"] >= 65).sum()),
                                    "women": int((whole["sex"] == "F").sum()),
                                    "men": int((whole["sex"] == "M").sum())}
    assert summary["datasets"] == {"hospital_a": len(whole)}  # the node holds one of the three datasets
    study = read_study(home.root, PROJECT)
    assert study.snapshot == summary["snapshot"] and len(study.population) == len(whole)
    assert np.all(np.diff(study.population.astype(np.float64)) > 0) and len(study.values) == len(whole)
    for path in (home.root / "studies").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # the population and the subgroups are in the ledger: analyses outside the study meet them
    known = CohortLedger(home.root).cohorts(STROKE.key)
    assert cohort_digest(STROKE.key, study.population) in known
    assert all(cohort_digest(STROKE.key, keys) in known for keys in study.subgroups.values())
    assert StudyRegistry(home.root).for_project(PROJECT).protocol.name == "stroke-outcomes"
    with pytest.raises(ConfigError, match="already has an approved study"):
        study_approval.approve(home, PROJECT, protocol())


def test_a_small_subgroup_or_complement_fails_approval_with_counts_for_the_admin(tmp_path) -> None:
    home, frame = node_home(tmp_path)
    whole = population(frame)
    oldest = float(whole["age"].max())
    doc = protocol(subgroups=[{"name": "oldest", "filter": where(rule("age", "greater_or_equal", oldest))},
                              {"name": "all-but-oldest", "filter": where(rule("age", "less", oldest))}])
    with pytest.raises(ConfigError) as caught:
        study_approval.approve(home, PROJECT, doc)
    n = int((whole["age"] >= oldest).sum())
    message = str(caught.value)
    assert f"subgroup 'oldest' holds {n} row(s)" in message
    assert f"the population outside subgroup 'all-but-oldest' holds {n} row(s)" in message
    assert read_study(home.root, PROJECT) is None and CohortLedger(home.root).cohorts(STROKE.key) == {}


def _population_keys(home) -> tuple[np.ndarray, np.ndarray]:
    """The study population's sorted keyed row hashes and patient hashes at ``home`` (hospital_a)."""
    from mipflow.node.controls.differencing import hash_key, patient_keys, row_keys, sorted_unique
    from mipflow.node.query.read import select_frame
    from mipflow.node.store.feature_store import FeatureStore

    store = FeatureStore(home.db_url)
    rows = select_frame(store, STROKE, datasets=["hospital_a"], variables=protocol()["variables"],
                        complete_case=True, row_identity=True)
    store.dispose()
    key = hash_key(home.key())
    return sorted_unique(row_keys(rows, key)), sorted_unique(patient_keys(rows, key))


def test_approval_fails_near_a_cohort_answered_before(tmp_path) -> None:
    """An analysis outside any study answered on 'population minus 3 rows' first: the study's
    population would difference against it."""
    home, _ = node_home(tmp_path)
    keys, _ = _population_keys(home)
    CohortLedger(home.root).record(STROKE.key, [keys[3:]])
    with pytest.raises(ConfigError, match=r"the study's population differs from rows this node already answered"):
        study_approval.approve(home, PROJECT, protocol())


def test_approval_fails_near_the_same_patients_answered_under_another_data_model(tmp_path) -> None:
    """ADR 0030 at approval: a cohort answered under another data model (or version) holding the
    same patients under other row keys, three patients short of the study's population, refuses
    the study."""
    home, _ = node_home(tmp_path)
    _, patients = _population_keys(home)
    other_rows = np.arange(10_000, 10_000 + len(patients) - 3, dtype=np.uint64)  # other row keys entirely
    CohortLedger(home.root).record("stroke_v2:1.0", [other_rows], patients=[patients[3:]])
    with pytest.raises(ConfigError, match=r"the study's population differs .* under this or another data model"):
        study_approval.approve(home, PROJECT, protocol())
    assert read_study(home.root, PROJECT) is None


def test_approval_records_the_family_with_its_patients(tmp_path) -> None:
    """Once approved, a near copy of the population under another data model is refused by the ledger."""
    from mipflow.exceptions import DisclosureError

    home, _ = node_home(tmp_path)
    study_approval.approve(home, PROJECT, protocol())
    _, patients = _population_keys(home)
    ledger = CohortLedger(home.root)
    with pytest.raises(DisclosureError):
        ledger.check("stroke_v2:1.0", [np.arange(5, 5 + len(patients) - 2, dtype=np.uint64)], 10,
                     patients=[patients[2:]])
    ledger.check("stroke_v2:1.0", [np.arange(5, 5 + len(patients), dtype=np.uint64)], 10, patients=[patients])


def test_the_atom_rule_refuses_subgroups_whose_combination_isolates_few_patients(tmp_path) -> None:
    """'age >= 50' and 'age > 50' are each large, their difference is the few patients aged exactly 50."""
    home, frame = node_home(tmp_path, n=400)
    whole = population(frame)
    assert 0 < int((whole["age"] == 50).sum()) < 10
    doc = protocol(subgroups=[{"name": "a", "filter": where(rule("age", "greater_or_equal", 50))},
                              {"name": "b", "filter": where(rule("age", "greater", 50))}])
    with pytest.raises(ConfigError, match="differs from rows|would isolate|subtracting the study.s results"):
        study_approval.approve(home, PROJECT, doc)


#: round 17 hole 1 as a protocol: S3, S4 (each sex at 21-89), S1 (age 20-50), S2 (age >= 50)
UNION = [{"name": "S3", "filter": where(rule("sex", "equal", "F"), rule("age", "greater_or_equal", 21),
                                        rule("age", "less", 89))},
         {"name": "S4", "filter": where(rule("sex", "equal", "M"), rule("age", "greater_or_equal", 21),
                                        rule("age", "less", 89))},
         {"name": "S1", "filter": where(rule("age", "greater_or_equal", 20), rule("age", "less", 50))},
         {"name": "S2", "filter": where(rule("age", "greater_or_equal", 50))}]


def _union_rows(seed: int, n: int, edges: bool, prefix: str) -> pd.DataFrame:
    """``n`` patients under 20, ``2 n`` aged 21-50 and ``2 n`` aged 50-89 (women and men alternately), every value
    present; with ``edges`` the target (a woman aged 20.5) and the oldest (a man aged 89.5) besides."""
    rng = np.random.default_rng(seed)
    ages = np.r_[rng.uniform(18, 19.9, n), rng.uniform(21, 49.9, 2 * n), rng.uniform(50, 88.9, 2 * n)]
    ages = np.r_[ages, [20.5, 89.5]] if edges else ages
    frame = stroke_rows(seed, len(ages), "hospital_a", prefix)
    frame["age"] = np.round(ages, 1)
    frame["sex"] = ["F", "M"] * (len(ages) // 2)
    frame["nihss_admission"] = rng.integers(0, 30, len(ages)).astype(float)
    return frame


def _union_home(root, frame: pd.DataFrame):
    from mipflow.node.home import NodeHome
    from tests.nodes import grant_all, standard_home

    standard_home(root, "hospital_a")
    load_frame(root, STROKE, frame)
    grant_all(root, researcher="*", project=PROJECT)
    return NodeHome(root)


def _union_protocol(subgroups) -> dict:
    """No nominal variable and no survival grid: the level cells' rules see nothing, the family's rules decide."""
    doc = protocol(datasets=["hospital_a"], variables=["age", "nihss_admission"], subgroups=subgroups,
                   algorithms=["descriptive_stats", "linear_regression"])
    doc.pop("survival")
    return doc


def test_the_union_rule_refuses_subgroups_combining_into_two_one_patient_atoms(tmp_path) -> None:
    """ADR 0030's union amendment at approval (round 17 hole 1 as a protocol): every subgroup and complement holds
    38 rows or more and no combination isolates one atom, but ``S1 + S2 - S3 - S4`` is the target and the oldest
    patient, two one-patient atoms; an honest protocol over the same rows (bands, sexes) is approved."""
    home = _union_home(tmp_path / "a", _union_rows(17, 20, True, "un"))
    with pytest.raises(ConfigError) as caught:
        study_approval.approve(home, PROJECT, _union_protocol(UNION))
    message = str(caught.value)
    assert "a combination of the study's cohorts would single out a group of fewer than min_row_count (10) " \
           "patients in all" in message
    assert not any(ch.isdigit() for ch in message.replace("(10)", "")), message  # no data-derived count
    assert read_study(home.root, PROJECT) is None and CohortLedger(home.root).cohorts(STROKE.key) == {}
    honest = [{"name": "under50", "filter": where(rule("age", "less", 50))},
              {"name": "from50", "filter": where(rule("age", "greater_or_equal", 50))},
              {"name": "women", "filter": where(rule("sex", "equal", "F"))},
              {"name": "men", "filter": where(rule("sex", "equal", "M"))}]
    assert study_approval.approve(home, PROJECT, _union_protocol(honest))["status"] == "approved"


def test_refresh_is_refused_when_the_new_rows_make_the_union(tmp_path) -> None:
    """The same protocol without the two edge patients is approved (``S1 + S2 - S3 - S4`` is empty); a load of
    fifty new patients with the target and the oldest among them is refused at refresh by the union rule, the
    study staying on its snapshot; a load without them is refreshed."""
    home = _union_home(tmp_path / "b", _union_rows(17, 20, False, "un"))
    first = study_approval.approve(home, PROJECT, _union_protocol(UNION))
    assert first["status"] == "approved" and first["population"] == 100
    load_frame(home.root, STROKE, _union_rows(18, 10, True, "late"))
    with pytest.raises(ConfigError) as caught:
        study_approval.refresh(home, PROJECT)
    assert "would single out a group of fewer than min_row_count (10) patients in all" in str(caught.value)
    assert f"stays on its snapshot of {first['snapshot']}" in str(caught.value)
    assert read_study(home.root, PROJECT).snapshot == first["snapshot"]
    other = _union_home(tmp_path / "c", _union_rows(17, 20, False, "un"))
    study_approval.approve(other, PROJECT, _union_protocol(UNION))
    load_frame(other.root, STROKE, _union_rows(18, 10, False, "late"))
    assert study_approval.refresh(other, PROJECT)["status"] == "refreshed"


def test_refresh_moves_the_snapshot_only_when_the_changes_are_large_enough(tmp_path) -> None:
    home, frame = node_home(tmp_path)
    first = study_approval.approve(home, PROJECT, protocol())
    assert study_approval.refresh(home, PROJECT)["status"] == "unchanged"
    load_frame(home.root, STROKE, stroke_rows(12, 3, "hospital_a", "late"))  # three new patients
    with pytest.raises(ConfigError) as caught:
        study_approval.refresh(home, PROJECT)
    assert "row(s) added" in str(caught.value) and f"stays on its snapshot of {first['snapshot']}" in str(caught.value)
    assert read_study(home.root, PROJECT).snapshot == first["snapshot"]
    load_frame(home.root, STROKE, stroke_rows(13, 600, "hospital_a", "export2"))  # a whole new export
    done = study_approval.refresh(home, PROJECT)
    assert done["status"] == "refreshed" and done["previous_snapshot"] == first["snapshot"]
    assert done["added"] >= 600 - 30 and done["removed"] == 0 and done["changed"] == 0
    study = read_study(home.root, PROJECT)
    assert len(study.population) == first["population"] + done["added"]
    assert study.record["refreshes"][0]["previous_snapshot"] == first["snapshot"]


def test_withdraw_and_show(tmp_path) -> None:
    home, _ = node_home(tmp_path)
    with pytest.raises(ConfigError, match="no approved study to withdraw"):
        study_approval.withdraw(home, PROJECT)
    with pytest.raises(ConfigError, match="no study at this node"):
        study_approval.show(home, PROJECT)
    study_approval.approve(home, PROJECT, protocol())
    registry = StudyRegistry(home.root)
    assert registry.for_project(PROJECT) is not None and registry.for_project("other") is None
    assert study_approval.withdraw(home, PROJECT)["status"] == "withdrawn"
    assert registry.for_project(PROJECT) is None  # re-read: the next request is in standard mode
    [record] = study_approval.show(home, PROJECT)
    assert record["status"] == "withdrawn" and record["protocol"]["name"] == "stroke-outcomes"
    assert study_approval.show(home) == [record]
    with pytest.raises(ConfigError, match="no approved study to refresh"):
        study_approval.refresh(home, PROJECT)
    study_approval.approve(home, PROJECT, protocol(name="second"))  # a new protocol after withdrawal
    assert registry.for_project(PROJECT).protocol.name == "second"


def test_approval_needs_the_data_model_and_a_held_dataset(tmp_path) -> None:
    home, _ = node_home(tmp_path)
    with pytest.raises(ConfigError, match="holds no data model stroke:0.2"):
        study_approval.approve(home, PROJECT, protocol(data_model="stroke:0.2"))
    with pytest.raises(ConfigError, match="holds none of the study's datasets"):
        study_approval.approve(home, PROJECT, protocol(datasets=["hospital_b"]))
    with pytest.raises(ConfigError, match="not a valid identity"):
        study_approval.approve(home, "../etc", protocol())
    assert ELDERLY["rules"][0]["value"] == 65


def test_moment_cells_hold_min_row_count_directly_in_differences_and_in_chains() -> None:
    """ADR 0050's amendment: the level cells a t-test or an ANOVA groups by hold 0 or ``min_row_count``
    rows, in every cohort and in the difference of two nested cohorts; other algorithms add no check."""
    from mipflow.node.controls.atoms import node_primes
    from mipflow.node.controls.study_cells import moment_problems

    population = np.arange(40, dtype=np.uint64)
    levels = pd.DataFrame({"kind": ["rare"] * 12 + ["common"] * 28})
    elderly = population[8:]  # the population minus the elderly holds 8 "rare" rows, the elderly 4
    sets = [("population", population), ("subgroup 'elderly'", elderly)]
    primes = node_primes(b"k" * 32)
    direct = moment_problems(sets, population, levels, ["kind"], ["ttest_independent"], 10, primes)
    assert "subgroup 'elderly', kind=rare: 4 row(s)" in direct
    assert any(p.startswith("population minus subgroup 'elderly', kind=rare: 8 row(s)") for p in direct), direct
    assert moment_problems(sets, population, levels, ["kind"], ["linear_regression", "kmeans"], 10, primes) == []
    assert moment_problems(sets[:1], population, levels, ["kind"], ["anova_oneway"], 10, primes) == []
    assert moment_problems(sets[:1], population, levels, ["kind"], ["anova_oneway"], 13, primes) == [
        "population, kind=rare: 12 row(s)"]
