"""The binding of pooled thresholds (ADR 0052): a node answers pooled bins on one cohort with one
participant set and one pool only, durably (a new process on the same home remembers)."""
from __future__ import annotations

import pytest

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.pooled_bins import PooledBindings

ABC, BCD = '[["a", "k1"], ["b", "k2"], ["c", "k3"]]', '[["b", "k2"], ["c", "k3"], ["d", "k4"]]'


def test_one_participant_set_and_one_pool_per_cohort(tmp_path) -> None:
    store = PooledBindings(tmp_path)
    store.bind("cohort-1", ABC, None)  # round 0: the participants
    store.bind("cohort-1", ABC, "pool-1")  # round 1: the pool
    store.bind("cohort-1", ABC, "pool-1")  # the same analysis again
    store.bind("cohort-2", BCD, "pool-2")  # another cohort, another set
    with pytest.raises(DisclosureError, match="another") as refused:
        store.bind("cohort-1", BCD, None)
    assert refused.value.control == "pooled_bins"
    with pytest.raises(DisclosureError, match="first") as refused:
        store.bind("cohort-1", ABC, "pool-9")
    assert refused.value.control == "pooled_bins"
    store.close()
    again = PooledBindings(tmp_path)  # durable: another process on the home
    with pytest.raises(DisclosureError):
        again.bind("cohort-1", BCD, None)
    with pytest.raises(DisclosureError):
        again.bind("cohort-2", BCD, "pool-1")
    again.bind("cohort-2", BCD, "pool-2")


def test_a_changed_pool_needs_every_bound_pool_in_its_chain(tmp_path) -> None:
    """ADR 0060: a new pool is accepted only when its bins were derived against every pool the cohort was
    bound to; it joins the binding when answered; an earlier pool is refused; durable."""
    store = PooledBindings(tmp_path)
    store.bind("cohort-1", ABC, "pool-1")
    for chain in (None, [], ["pool-0"]):  # no chain (a study), or one without the bound pool
        with pytest.raises(DisclosureError, match="first") as refused:
            store.bind("cohort-1", ABC, "pool-2", chain)
        assert refused.value.control == "pooled_bins"
    store.bind("cohort-1", ABC, "pool-2", ["pool-1"])  # checked, not yet recorded
    store.extend("cohort-1", "pool-2")  # answered
    store.bind("cohort-1", ABC, "pool-2", ["pool-1"])  # the latest again
    with pytest.raises(DisclosureError, match="another"):
        store.bind("cohort-1", BCD, "pool-2", ["pool-1"])
    store.close()
    again = PooledBindings(tmp_path)
    with pytest.raises(DisclosureError, match="earlier"):
        again.bind("cohort-1", ABC, "pool-1", [])
    with pytest.raises(DisclosureError, match="first"):  # pool-2 bound, missing from the chain
        again.bind("cohort-1", ABC, "pool-3", ["pool-1"])
    again.bind("cohort-1", ABC, "pool-3", ["pool-1", "pool-2"])


def _keys(*ranges: tuple[int, int]):
    import numpy as np

    return np.unique(np.concatenate([np.arange(a, b, dtype=np.uint64) for a, b in ranges]))


def test_survival_cohorts_are_compared_by_rows_and_by_patients_across_data_models(tmp_path) -> None:
    """ADR 0059: the memory of survival releases holds rows, not counts; the same rows or rows within the
    threshold are near (either kind), other rows of any size are not, and another data model compares
    by patients; a pooled release's own binding is left out when it is answered again."""
    from mipflow.node.controls.pooled_bins import PER_NODE_RELEASE, POOLED_RELEASE, STUDY_MARK

    store = PooledBindings(tmp_path)
    rows, patients = _keys((0, 100)), _keys((1000, 1100))
    store.remember(POOLED_RELEASE, "m:0.1", "d1", rows, patients, binding="key-1")
    assert store.near(POOLED_RELEASE, "m:0.1", rows, None, 10)  # the same rows
    assert store.near(POOLED_RELEASE, "m:0.1", _keys((0, 91)), None, 10)  # 9 rows fewer
    assert store.near(POOLED_RELEASE, "m:0.1", _keys((0, 109)), None, 10)  # 9 rows more
    assert not store.near(POOLED_RELEASE, "m:0.1", _keys((0, 90)), None, 10)  # 10 rows apart
    assert not store.near(POOLED_RELEASE, "m:0.1", _keys((500, 600)), None, 10)  # other rows, same size
    assert not store.near(PER_NODE_RELEASE, "m:0.1", rows, None, 10)  # kinds apart
    assert not store.near(POOLED_RELEASE, "m:0.1", rows, None, 10, other_than="key-1")
    # another data model version: the same patients (other row keys)
    assert store.near(POOLED_RELEASE, "m:0.2", _keys((7000, 7100)), patients, 10)
    assert not store.near(POOLED_RELEASE, "m:0.2", _keys((7000, 7100)), None, 10)  # no patients: not compared
    store.remember(PER_NODE_RELEASE, STUDY_MARK, "study-1")
    assert store.marked(PER_NODE_RELEASE, "study-1") and not store.marked(POOLED_RELEASE, "study-1")
    store.close()
    again = PooledBindings(tmp_path)  # durable
    assert again.near(POOLED_RELEASE, "m:0.1", rows, None, 10) and again.marked(PER_NODE_RELEASE, "study-1")
