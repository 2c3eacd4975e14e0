"""A study's row transformations (ADR 0053): fixed by the protocol, checked at approval on every cohort."""
from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from mipflow.exceptions import ConfigError, RequestError
from mipflow.node.controls.atoms import node_primes
from mipflow.node.controls.study import Study, StudyRefusal
from mipflow.node.controls.study_approval import Family
from mipflow.node.controls.study_protocol import check_against_model, parse_protocol
from mipflow.node.controls.study_transforms import check_transformations, check_transformed, transformation_problems
from tests.mipflow.algorithms.survival_data import STROKE

DOC = {"name": "pca-study", "data_model": STROKE.key, "datasets": ["hospital_a", "hospital_b"],
       "variables": ["age", "sex", "glucose_mmol", "followup_days"], "algorithms": ["pca_with_transformation"],
       "data_transformation": {"log": ["followup_days"], "exp": ["glucose_mmol"]}}
PRIMES = node_primes(b"k" * 32)


def doc(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(DOC)
    out.update(changes)
    return out


def test_the_protocol_fixes_log_and_exp_of_numerical_study_variables() -> None:
    protocol = parse_protocol(DOC)
    assert protocol.data_transformation == {"log": ("followup_days",), "exp": ("glucose_mmol",)}
    assert [protocol.row_transform(c) for c in protocol.variables] == [None, None, "exp", "log"]
    assert parse_protocol(protocol.to_dict()) == protocol
    check_against_model(protocol, STROKE)
    assert parse_protocol(doc(data_transformation={})).data_transformation is None
    assert "data_transformation" not in parse_protocol(doc(data_transformation=None)).to_dict()


@pytest.mark.parametrize("bad", [
    {"center": ["age"]}, {"log": ["bmi"]}, {"log": ["age"], "exp": ["age"]}, {"log": "age"}, ["log"],
    {"log": ["age", "age"]},
])
def test_a_malformed_transformation_is_refused_naming_the_key(bad) -> None:
    with pytest.raises(ConfigError, match="data_transformation"):
        parse_protocol(doc(data_transformation=bad))


def test_a_nominal_variable_cannot_be_transformed() -> None:
    with pytest.raises(ConfigError, match="nominal"):
        check_against_model(parse_protocol(doc(data_transformation={"log": ["sex"]})), STROKE)


def study(**changes: Any) -> Study:
    return Study(project="p", protocol=parse_protocol(doc(**changes)), snapshot="2026-12-07T00:00:00+00:00",
                 population=np.zeros(0, np.uint64), values=np.zeros(0, np.uint64), subgroups={})


def analysis(y: list[str], transformation: Any) -> SimpleNamespace:
    return SimpleNamespace(y=tuple(y), parameters={"data_transformation": transformation})


@pytest.mark.parametrize("y, transformation", [
    (["age", "glucose_mmol"], {"exp": ["glucose_mmol"]}),
    (["age", "glucose_mmol"], {"exp": ["glucose_mmol"], "standardize": ["age"]}),
    (["glucose_mmol", "followup_days", "age"], {"log": ["followup_days"], "exp": ["glucose_mmol"], "center": ["age"]}),
    (["age", "sex"], None),
    (["age", "sex"], {"center": ["age"]}),
])
def test_the_protocols_transformations_are_admitted(y, transformation) -> None:
    check_transformations(study(), "pca_with_transformation", analysis(y, transformation))


@pytest.mark.parametrize("y, transformation", [
    (["age", "glucose_mmol"], None),
    (["age", "glucose_mmol"], {"log": ["glucose_mmol"]}),
    (["age", "glucose_mmol"], {"exp": ["glucose_mmol", "age"]}),
    (["glucose_mmol", "followup_days"], {"exp": ["glucose_mmol"]}),
])
def test_other_transformations_are_refused_by_the_request_saying_what_to_send(y, transformation) -> None:
    with pytest.raises(StudyRefusal) as info:
        check_transformations(study(), "pca_with_transformation", analysis(y, transformation))
    assert info.value.control == "study"
    assert '"exp": ["glucose_mmol"]' in str(info.value)
    # the other algorithms ignore the parameter; a malformed one is a 400 from the request
    check_transformations(study(), "pca", analysis(y, transformation))
    with pytest.raises(RequestError):
        check_transformations(study(), "pca_with_transformation", analysis(y, {"sqrt": list(y)}))


def family(values: dict[str, np.ndarray], subgroups: dict[str, np.ndarray] | None = None,
           datasets: np.ndarray | None = None) -> Family:
    n = len(next(iter(values.values())))
    keys = np.arange(n, dtype=np.uint64)
    subgroups = {name: keys[mask] for name, mask in (subgroups or {}).items()}
    datasets = np.zeros(n, dtype=int) if datasets is None else datasets
    per_dataset = {f"d{d}": {None: keys[datasets == d], **{name: np.intersect1d(sub, keys[datasets == d])
                                                          for name, sub in subgroups.items()}}
                   for d in np.unique(datasets)}
    return Family(population=keys, values=keys, subgroups=subgroups, per_dataset=per_dataset,
                  transformed={k: np.asarray(v, dtype=float) for k, v in values.items()})


def problems(fam: Family, min_row_count: int = 10, **changes: Any) -> list[str]:
    return transformation_problems(fam, parse_protocol(doc(**changes)), min_row_count, PRIMES)


def test_log_needs_every_value_of_the_population_positive() -> None:
    narrow = np.linspace(5, 5.5, 100)
    assert problems(family({"followup_days": narrow + 1, "glucose_mmol": narrow})) == []
    found = problems(family({"followup_days": np.r_[0.0, narrow[1:]], "glucose_mmol": narrow}))
    assert found == ["log of 'followup_days': 1 row(s) of the population hold a value <= 0"]


def test_exp_of_a_wide_variable_is_dominated_and_of_a_narrow_one_is_not() -> None:
    rng = np.random.default_rng(3)
    days = rng.uniform(1, 100, 200)
    assert problems(family({"followup_days": days, "glucose_mmol": rng.uniform(5, 5.5, 200)})) == []
    found = problems(family({"followup_days": days, "glucose_mmol": np.r_[rng.uniform(3, 12, 199), 37.93]}))
    assert found and all(p.startswith("exp of 'glucose_mmol': in ") for p in found)
    assert any("in population," in p for p in found)
    # with min_row_count 1 (the Exareme2 suite) nothing is dominated
    assert problems(family({"followup_days": days, "glucose_mmol": rng.uniform(3, 12, 200)}), 1) == []


def test_every_cohort_complement_and_isolated_atom_is_checked() -> None:
    n = 200
    glucose = np.full(n, 5.0)
    days = np.full(n, 10.0)
    idx = np.arange(n)
    # one high value in the rows subgroups a and b share: a and b = a + b - population, an isolatable atom
    a, b = idx < 120, idx >= 80
    glucose[100] = 12.0  # under exp(2 x) that row weighs e^14, as e^4 (55) rows of the others
    fam = family({"followup_days": days, "glucose_mmol": glucose}, {"a": a, "b": b})
    found = problems(fam, 10)
    labels = {p.split(": in ", 1)[1].split(", the largest")[0] for p in found}
    assert {"population", "subgroup 'a'", "subgroup 'b'"} <= labels
    assert any(label.startswith("an atom of the study's cohorts") for label in labels)
    # the same high value in a row outside every subgroup: the complements catch it
    glucose[100], glucose[5] = 5.0, 12.0
    fam = family({"followup_days": days, "glucose_mmol": glucose}, {"b": b})
    labels = {p.split(": in ", 1)[1].split(", the largest")[0] for p in problems(fam, 10)}
    assert "the population outside subgroup 'b'" in labels and "subgroup 'b'" not in labels


def test_per_dataset_cohorts_are_checked_and_their_unions_follow() -> None:
    n = 100
    datasets = np.r_[np.zeros(50, int), np.ones(50, int)]
    glucose = np.r_[np.full(50, 5.0), np.full(50, 5.0)]
    glucose[60] = 7.5  # under exp(2 x) it weighs as e^5 (148) rows of the others: its cohorts hold < 2 rows
    found = problems(family({"followup_days": np.ones(n), "glucose_mmol": glucose}, datasets=datasets), 10)
    labels = {p.split(": in ", 1)[1].split(", the largest")[0] for p in found}
    assert "population in dataset 'd1'" in labels and "population in dataset 'd0'" not in labels


def test_sums_near_the_float_range_are_refused_for_the_admin() -> None:
    found = problems(family({"followup_days": np.ones(50), "glucose_mmol": np.linspace(340, 346, 50)}), 1)
    assert found == ["exp of 'glucose_mmol': the population's sums of exponentials reach the float range "
                     "(values over ~345)"]
    with pytest.raises(ConfigError, match="not approved: the protocol's data_transformation is not safe"):
        check_transformed(family({"followup_days": np.ones(50), "glucose_mmol": np.linspace(340, 346, 50)}),
                          parse_protocol(DOC), 1, PRIMES, "study 'pca-study' not approved")


def test_nothing_to_check_without_the_algorithm_or_transformations() -> None:
    fam = family({"glucose_mmol": np.r_[np.full(99, 5.0), 40.0], "followup_days": np.zeros(100)})
    fam_none = Family(population=fam.population, values=fam.values, subgroups={}, per_dataset=fam.per_dataset)
    assert transformation_problems(fam_none, parse_protocol(DOC), 10, PRIMES) == []


def test_rows_loaded_later_meet_the_checks_at_refresh_and_the_study_stays_on_its_snapshot(tmp_path) -> None:
    """ADR 0053 (4): rows loaded after approval are outside the snapshot, so no request meets them; the refresh
    that would take them in checks the transformations again and, with a follow-up of 0 among them, fails for the
    admin, the study staying on its snapshot."""
    from mipflow.node.controls import study_approval
    from mipflow.node.controls.study import read_study
    from tests.mipflow.node.controls.study_helpers import PROJECT, node_home, protocol, stroke_rows
    from tests.nodes import load_frame

    home, _ = node_home(tmp_path / "node")
    document = protocol(datasets=["hospital_a"], algorithms=["pca_with_transformation"],
                        data_transformation={"log": ["followup_days"]})
    document.pop("survival")
    approved = study_approval.approve(home, PROJECT, document)
    assert approved["status"] == "approved"
    late = stroke_rows(12, 20, "hospital_a", "late")
    late.loc[late.index[0], "followup_days"] = 0.0
    load_frame(home.root, STROKE, late)
    with pytest.raises(ConfigError, match="log of 'followup_days': 1 row.*stays on its snapshot"):
        study_approval.refresh(home, PROJECT)
    assert read_study(home.root, PROJECT).snapshot == approved["snapshot"]


def _weighted_node(root: Any) -> Any:
    """A standard-mode node holding the twelfth review's glucose registry (ten patients under 25, one heavy)."""
    from mipflow.node.home import NodeHome
    from tests.mipflow.node.controls.study_helpers import PROJECT, glucose_registry
    from tests.nodes import grant_all, load_frame, standard_home

    standard_home(root, "hospital_a")
    load_frame(root, STROKE, glucose_registry())
    grant_all(root, researcher="*", project=PROJECT)
    return NodeHome(root)


def _everyone(home: Any, record: bool) -> bool:
    """A standard release of everyone's exp(glucose) sums against the node's weighted memory, as
    ``check_weighted`` runs it (recorded if ``record``); False: refused."""
    from mipflow.algorithms.weighted import exp_families
    from mipflow.node.controls.differencing import hash_key
    from mipflow.node.controls.weighted_ledger import FamilyRows, WeightedMemory, read_population
    from mipflow.node.store.feature_store import FeatureStore

    store, key = FeatureStore(home.db_url, home.root), hash_key(home.key())
    try:
        def read(data_model: str, variables: Any) -> Any:
            return read_population(store, store.data_model(data_model), variables, key, True)

        families = exp_families(["glucose_mmol"])
        rows = read(STROKE.key, ["age", "nihss_admission", "glucose_mmol"])
        releases = [FamilyRows(f.name, STROKE.key, rows.rows, f.log_weights(rows.columns), rows.patients)
                    for f in families]
        memory = WeightedMemory(home.root, key, node_primes(home.key()))
        allowed = memory.check(releases, families, home.settings.min_row_count, read, store.consent_applied())
        if allowed and record:
            memory.record(releases, store.consent_applied())
        memory.close()
        return allowed
    finally:
        store.dispose()


def _weighted_study(home: Any) -> dict[str, Any]:
    from mipflow.node.controls import study_approval
    from tests.mipflow.node.controls.study_helpers import PROJECT, protocol, rule, where

    document = protocol(datasets=["hospital_a"], variables=["age", "nihss_admission", "glucose_mmol"],
                        algorithms=["pca_with_transformation"], subgroups=[],
                        population={"filter": where(rule("age", "greater_or_equal", 25))},
                        data_transformation={"exp": ["glucose_mmol"]})
    document.pop("survival")
    return study_approval.approve(home, PROJECT, document)


def test_a_study_whose_exp_cohorts_less_an_earlier_release_are_dominated_is_not_approved(tmp_path) -> None:
    """ADR 0058 amended (twenty-second review, hole 3): everyone's exp(glucose) sums released in standard mode, a
    study of those aged 25 or more (its own sums hold) is refused at approval: the difference is ten patients, one
    carrying nearly all the weight.  The words give the rule and the setting, no count, no value."""
    from mipflow.node.controls.study import read_record
    from tests.mipflow.node.controls.study_helpers import PROJECT

    home = _weighted_node(tmp_path / "node")
    assert _everyone(home, record=True)
    with pytest.raises(ConfigError, match=r"^study 'stroke-outcomes' not approved: .*\(dominated_sums\)") as caught:
        _weighted_study(home)
    assert "12.3" not in str(caught.value) and "21.5" not in str(caught.value)
    assert read_record(home.root, PROJECT) is None


def test_an_approved_studys_exp_cohorts_are_remembered_for_later_standard_releases(tmp_path) -> None:
    """The other order: approved first (nothing remembered), the study's cohorts join the weighted memory at
    approval, so everyone's release after it is refused before any request of the study is answered."""
    home = _weighted_node(tmp_path / "node")
    assert _weighted_study(home)["status"] == "approved"
    assert not _everyone(home, record=False)
    fresh = _weighted_node(tmp_path / "fresh")  # without the study, the same release passes
    assert _everyone(fresh, record=False)
