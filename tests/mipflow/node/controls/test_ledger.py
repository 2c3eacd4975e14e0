"""The one ledger per node (mipflow.node.controls.ledger, ADR 0030): patients across data models,
the chain rule per request, an older ledger on disk, and an honest researcher's session."""
from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.atoms import check_addition, node_primes
from mipflow.node.controls.differencing import (
    DifferencingGuard, cohort_sets_and_patients, hash_key, patient_keys, row_keys,
)
from mipflow.node.controls.keycodec import encode_keys_v1
from mipflow.node.controls.ledger import CohortLedger, cohort_digest, related

SECRET = bytes(range(32))
PRIMES = node_primes(SECRET)
M = 10


def _keys(values) -> np.ndarray:
    return np.unique(np.asarray(list(values), dtype=np.uint64))


def _ledger(path) -> CohortLedger:
    path.mkdir(parents=True, exist_ok=True)
    return CohortLedger(path)


def _refused(ledger: CohortLedger, model: str, rows, patients=None, primes=PRIMES) -> DisclosureError:
    with pytest.raises(DisclosureError) as info:
        ledger.check(model, [rows], M, patients=None if patients is None else [patients], primes=primes)
    assert info.value.control == "differencing"
    return info.value


def _answer(ledger: CohortLedger, model: str, rows, patients=None, primes=PRIMES) -> None:
    patients = None if patients is None else [patients]
    ledger.check(model, [rows], M, patients=patients, primes=primes)
    ledger.record(model, [rows], patients=patients)


# --------------------------------------------------------------------------- patients


def test_patient_keys_ignore_dataset_and_visit_and_are_keyed():
    frame = pd.DataFrame({"_pid": ["p1", "p1", "p2"], "dataset": ["d0", "d1", "d0"], "_visit": ["v1", "", None]})
    key = hash_key(SECRET)
    keys = patient_keys(frame, key)
    assert keys[0] == keys[1] != keys[2]  # one patient in two datasets, with and without a visit
    assert len(set(row_keys(frame, key).tolist())) == 3  # rows stay rows
    assert not set(keys.tolist()) & set(patient_keys(frame, hash_key(b"\x02" * 32)).tolist())
    # the store's MD5 of _pid (PostgreSQL's binary path) gives the same keys
    from mipflow.node.query.pgcopy import PID_MD5
    import hashlib

    stored = pd.DataFrame({PID_MD5: [hashlib.md5(p.encode()).hexdigest().encode() for p in frame["_pid"]]})
    assert np.array_equal(patient_keys(stored, key), keys)
    assert patient_keys(pd.DataFrame({"x": [1.0]}), key) is None


def test_each_cohort_carries_its_patients():
    frame = pd.DataFrame({"_pid": ["a", "a", "b", "c"], "dataset": "d0", "_visit": ["1", "2", "1", "1"],
                          "x": [1.0, np.nan, 2.0, 3.0], "y": [1.0, 2.0, np.nan, 3.0]})
    key = hash_key(SECRET)
    rows, patients, _ = cohort_sets_and_patients(frame, ["x", "y"], True, key)
    assert [len(r) for r in rows] == [2] and [len(p) for p in patients] == [2]
    rows, patients, _ = cohort_sets_and_patients(frame, ["x", "y"], False, key)
    # every row, x's rows, y's rows, and the rows complete on both (a cohort of its own, issue 14.5)
    assert [len(r) for r in rows] == [4, 3, 3, 2] and [len(p) for p in patients] == [3, 3, 2, 2]


def test_a_near_copy_under_another_data_model_is_refused(tmp_path):
    """The same patients loaded under two data models: other visit ids, so other row keys."""
    ledger = CohortLedger(tmp_path)
    patients = _keys(range(100))
    _answer(ledger, "stroke:1", _keys(range(1000, 1100)), patients)
    # model 2 holds the same patients under other row keys: all but one of them is refused
    _refused(ledger, "stroke:2", _keys(range(2001, 2100)), patients[1:])
    _refused(ledger, "stroke:2", _keys(range(2000, 2103)), _keys(range(103)))  # three more
    # the same patients exactly (a re-run under the new version), or ten fewer, are answered
    _answer(ledger, "stroke:2", _keys(range(2000, 2100)), patients)
    _answer(ledger, "stroke:2", _keys(range(2010, 2100)), patients[10:])
    # a model whose cohorts share only a few patients with these (another disease): answered,
    # the overlap is left to the chain rule
    _answer(ledger, "dementia:1", _keys(range(5000, 5100)), _keys(range(95, 195)))
    # before ADR 0030 the second data model had a ledger of its own
    ledger.check("stroke:3", [_keys(range(3001, 3100))], M)  # without patients: by rows only, as before


def test_a_ledger_from_before_keeps_working_and_gains_patients(tmp_path):
    everyone = _keys(range(100))
    with sqlite3.connect(tmp_path / "cohorts.sqlite") as conn:  # the table as ADR 0013 made it
        conn.execute("CREATE TABLE cohorts (data_model TEXT NOT NULL, digest TEXT NOT NULL, n_rows INTEGER NOT NULL, "
                     "keys BLOB NOT NULL, first_at TEXT NOT NULL, PRIMARY KEY (data_model, digest))")
        conn.execute("INSERT INTO cohorts VALUES (?, ?, ?, ?, ?)",
                     ("m:1", cohort_digest("m:1", everyone), 100, encode_keys_v1(everyone), "2026-01-01T00:00:00"))
    ledger = CohortLedger(tmp_path)
    assert list(ledger.cohorts("m:1")) == [cohort_digest("m:1", everyone)]
    _refused(ledger, "m:1", everyone[1:])  # by rows, as before
    # another data model cannot compare with it until it is answered again with its patients
    ledger.check("m:2", [_keys(range(500, 599))], M, patients=[_keys(range(1, 100))], primes=PRIMES)
    ledger.record("m:1", [everyone], patients=[_keys(range(100))])
    again = CohortLedger(tmp_path)  # a restart reads the patients the update wrote
    _refused(again, "m:2", _keys(range(500, 599)), _keys(range(1, 100)))
    assert again.stats()[0]["cohorts"] == 1


# --------------------------------------------------------------------------- chains


def _chain():
    """Everyone, "age < T" and "age > T": each pair 0 or at least M apart, and the first minus
    the other two is the one patient aged T."""
    below, target, above = _keys(range(0, 30)), _keys([30]), _keys(range(31, 60))
    return np.concatenate([below, target, above]), below, above


def test_a_chain_of_three_cohorts_is_refused(tmp_path):
    everyone, below, above = _chain()
    pairwise = _ledger(tmp_path / "before")
    for cohort in (everyone, below, above):  # what the pairwise rule alone answered
        _answer(pairwise, "m:1", cohort, primes=None)
    ledger = _ledger(tmp_path / "after")
    _answer(ledger, "m:1", everyone)
    _answer(ledger, "m:1", below)
    refusal = _refused(ledger, "m:1", above)
    assert "study protocol" in str(refusal) and "mipflow study" in str(refusal)
    assert not any(ch.isdigit() for ch in str(refusal).replace(f"({M})", ""))
    # the same chain in any order, and through a second data model holding the same patients
    ledger = _ledger(tmp_path / "order")
    _answer(ledger, "m:1", above, above)
    _answer(ledger, "m:1", below, below)
    _refused(ledger, "m:2", everyone + np.uint64(1000), everyone)
    # the complement of a subgroup, with everyone, is no chain: it isolates nothing new
    ledger = _ledger(tmp_path / "complement")
    for cohort in (everyone, below, np.concatenate([_keys([30]), above])):
        _answer(ledger, "m:1", cohort)


def test_the_chain_rule_refuses_only_what_is_new(tmp_path):
    """A chain released before the rule (or while the check was off) does not stop the node."""
    everyone, below, above = _chain()
    ledger = CohortLedger(tmp_path)
    for cohort in (everyone, below, above):
        ledger.record("m:1", [cohort])
    _answer(ledger, "m:1", _keys(range(0, 45)))  # splits no small atom
    assert check_addition([everyone, below, above], [_keys(range(0, 45))], M, PRIMES)
    assert not check_addition([everyone, below], [above], M, PRIMES)


def test_related_takes_overlapping_cohorts_most_recent_first_up_to_the_cap():
    seed = [_keys(range(10))]
    candidates = [_keys(range(5, 15)), _keys(range(100, 110)), _keys(range(12, 20)), _keys(range(8, 9)),
                  _keys(range(18, 30))]
    assert related(seed, candidates) == [0, 2, 3, 4]  # 2 and 4 through 0, then 2
    assert related(seed, candidates, depth=1) == [0, 3]
    assert related(seed, candidates, cap=1) == [3]  # the most recent overlapping one


# --------------------------------------------------------------------------- an honest session


def _honest_frame(n: int = 400, seed: int = 11) -> pd.DataFrame:
    """A node's rows: age, sex and four clinical variables, each missing in a few rows."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"_pid": [f"p{i}" for i in range(n)], "dataset": "d0", "_visit": "",
                          "age": rng.integers(40, 90, n).astype(float), "sex": rng.choice(["F", "M"], n)})
    for j, rate in enumerate((0.03, 0.05, 0.08, 0.04)):
        values = rng.normal(size=n)
        values[rng.random(n) < rate] = np.nan
        frame[f"v{j}"] = values
    return frame


#: The analyses of an ordinary session: variable sets, complete-case or not.
ANALYSES = [(("age", "v0"), True), (("age", "v0", "v1"), True), (("age", "v2"), True),
            (("age", "v1", "v3"), True), (("age", "v0", "v1", "v2", "v3"), False), (("v0", "v3"), True)]
#: Subgroups: none, then age >= 65, then by sex.
SUBGROUPS = [("everyone", lambda f: f), ("age >= 65", lambda f: f[f["age"] >= 65]),
             ("sex F", lambda f: f[f["sex"] == "F"]), ("sex M", lambda f: f[f["sex"] == "M"])]


def _session(tmp_path, primes) -> tuple[list[str], list[str]]:
    """Which analyses of the session are answered, in order, at one node with default settings,
    and the refusals' messages."""
    frame = _honest_frame()
    tmp_path.mkdir(parents=True, exist_ok=True)
    guard = DifferencingGuard(tmp_path, SECRET)
    guard.primes = primes
    answered, messages = [], []
    try:
        for subgroup, select in SUBGROUPS:
            for variables, complete_case in ANALYSES:
                cohorts = guard.cohorts("dementia:1", select(frame), variables, complete_case)
                try:
                    guard.before_step(cohorts, M)
                except DisclosureError as exc:
                    messages.append(str(exc))
                    continue
                guard.after_step(cohorts, None, None)
                answered.append(f"{subgroup}: {'+'.join(variables)}")
    finally:
        guard.ledger.close()
    return answered, messages


def test_an_honest_session_is_answered_as_before_but_for_a_real_chain(tmp_path):
    """Before (the pairwise rule alone) and after (with patients and the chain rule).

    The pairwise rule already refuses most subgroup analyses after the unfiltered ones (a subgroup's
    complete cases differ from another variable set's by a few rows): that is ADR 0028's study
    mode's business, not this rule's.  The chain rule refuses one analysis more, and it is real: after
    the complete cases of four variable sets, descriptive statistics of all four variables (not
    complete-case: everyone and each variable's present rows) would let a combination live on the
    rows missing two variables (three missingness patterns, five rows: their count and age sums), a
    union of small atoms none of which is isolated alone (ADR 0030's round-17 amendment; before it,
    the atom rule refused the complete cases of ``v0, v3`` instead, the rows missing both, which
    that refusal leaves without its chain).  Its refusal says what to change and names the study
    protocol."""
    before, _ = _session(tmp_path / "pairwise", None)  # ADR 0013
    after, messages = _session(tmp_path / "ledger", PRIMES)  # ADR 0030
    assert before[:6] == [f"everyone: {'+'.join(v)}" for v, _ in ANALYSES]  # the unfiltered session
    assert [a for a in before if a not in after] == ["everyone: age+v0+v1+v2+v3"]
    frame = _honest_frame()
    missing_two = int((frame[["v0", "v1", "v2", "v3"]].isna().sum(axis=1) == 2).sum())
    assert 0 < missing_two < M  # the union is real
    chain = "study protocol" in messages[0] and "mipflow study" in messages[0]
    assert chain and all(m == messages[0] for m in messages)  # one message, whichever rule refused


def test_cohorts_of_one_request_a_few_rows_apart_are_refused_on_a_fresh_node_saying_so(tmp_path):
    """A first request (nothing answered yet) whose own cohorts are a few rows apart, as descriptive_stats'
    rows and one variable's non-missing rows (the honest-day review): refused by the pairwise rule inside the
    request, with the same static words as a conflict with an earlier answer, which do not claim earlier
    answers and name the changes (complete cases, exact repeats, small datasets, a study)."""
    rows, present = _keys(range(1, 61)), _keys(range(1, 58))  # three rows miss the variable
    fresh = _ledger(tmp_path / "fresh")
    with pytest.raises(DisclosureError) as inside:
        fresh.check("m:1", [rows, present], M, primes=PRIMES)
    assert inside.value.control == "differencing"
    message = str(inside.value)
    assert "already answered" not in message and "this request itself selects" in message
    assert "is_not_null on each variable" in message and "leave out small datasets" in message
    assert "filters, variables and datasets exactly" in message and "study protocol" in message
    assert not any(ch.isdigit() for ch in message.replace(f"({M})", ""))
    fresh.check("m:1", [present], M, primes=PRIMES)  # complete cases alone: answered
    earlier = _ledger(tmp_path / "earlier")
    _answer(earlier, "m:1", rows)
    assert str(_refused(earlier, "m:1", present)) == message  # one message for every way a cohort conflicts
