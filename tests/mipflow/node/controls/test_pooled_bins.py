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
