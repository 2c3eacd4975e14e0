"""The central side (mipflow.secagg.central_side): one node's release stays masked, the sum is exact."""
from __future__ import annotations


import numpy as np

from mipflow.secagg.central_side import unmask_sum
from mipflow.secagg.codec import additive_form, decode, from_additive
from mipflow.secagg.crypto import KeyPair, mask
from mipflow.secagg.node_side import masked_release
from tests.mipflow.secagg.helpers import KEYS, PUBLIC, context, node_aggregate, zero_like


def test_central_site_cannot_unmask_one_node_but_recovers_the_sum() -> None:
    ctx = context()
    aggregates = [node_aggregate(), zero_like(), node_aggregate()]
    releases = [masked_release(k, PUBLIC, ctx, a) for k, a in zip(KEYS, aggregates)]
    layout, truth = additive_form(aggregates[0])
    masked = [int(v, 16) for v in releases[0]["secure_aggregation"]["masked"]]
    # reading a release as if it were plain gives numbers unrelated to the truth
    read = [decode(v) for v in masked]
    assert all(abs(r - t) > 1e20 for r, t in zip(read, truth))
    # a central site holding its own key pair learns nothing from it about node 0's masks:
    # unmasking with the masks it can compute (its key against the nodes' public keys) fails
    centre = KeyPair.generate()
    guess = mask(centre, [PUBLIC[1], PUBLIC[2]], ctx, len(masked))
    assert all(abs(decode(m - g) - t) > 1e20 for m, g, t in zip(masked, guess, truth))
    # ... but the sum of all three releases is the sum of the aggregates, exactly
    pooled = unmask_sum(releases)
    _, vectors = zip(*(additive_form(a) for a in aggregates))
    exact = from_additive(layout, [sum(col) for col in zip(*vectors)])
    assert pooled["moments"]["n"] == exact["moments"]["n"] == 2 * aggregates[0]["moments"]["n"]
    np.testing.assert_allclose(pooled["moments"]["mean"], exact["moments"]["mean"], rtol=1e-15)
    np.testing.assert_allclose(pooled["moments"]["m2"], exact["moments"]["m2"], rtol=1e-13, atol=1e-15)
