"""Secure aggregation's masks (mipflow.secagg.crypto): they cancel, seeds bind the context, bad keys are refused."""
from __future__ import annotations


import pytest

from mipflow.secagg.codec import RING
from mipflow.secagg.crypto import KeyPair, mask, pair_seed
from mipflow.exceptions import DisclosureError
from tests.mipflow.secagg.helpers import KEYS, PUBLIC, context


@pytest.mark.parametrize("n_nodes", [2, 3, 5])
def test_pairwise_masks_cancel_in_the_sum(n_nodes: int) -> None:
    keys = [KeyPair.generate() for _ in range(n_nodes)]
    public = [k.public_bytes for k in keys]
    ctx = context(participants=public)
    masks = [mask(k, public, ctx, 40) for k in keys]
    assert all(sum(column) % RING == 0 for column in zip(*masks))
    assert all(any(m) for m in masks)  # ... while no node's own mask is zero


def test_seeds_depend_on_every_part_of_thecontext() -> None:
    base = pair_seed(KEYS[0], PUBLIC[1], context())
    assert base == pair_seed(KEYS[1], PUBLIC[0], context())  # both ends agree
    for other in (context(analysis_id="analysis-2"), context(round_no=1), context(state={"b": [0.5]}),
                  context(participants=PUBLIC[:2])):
        assert pair_seed(KEYS[0], PUBLIC[1], other) != base
    assert pair_seed(KEYS[0], PUBLIC[2], context()) != base


def test_low_order_peer_key_is_refused() -> None:
    with pytest.raises(DisclosureError, match="low-order"):
        KEYS[0].exchange(bytes(32))
