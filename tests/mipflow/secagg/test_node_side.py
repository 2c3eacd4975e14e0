"""A node's masked release (mipflow.secagg.node_side): it looks like noise, and the call is checked."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from mipflow.secagg.codec import RING, RING_BITS, SCHEME, additive_form, encode
from mipflow.secagg.crypto import KEY_FILE, load_keypair
from mipflow.secagg.node_side import mask_release, masked_release
from mipflow.secagg.trust import TrustStore
from mipflow.exceptions import DisclosureError, RequestError
from tests.mipflow.algorithms.synthetic import request
from tests.mipflow.secagg.helpers import KEYS, LOCAL_REQUEST, PUBLIC, context, node_aggregate, zero_like


def _masked_elements(aggregate: dict, trials: int) -> list[int]:
    """Node 0's masked release of ``aggregate`` in ``trials`` analyses (ring elements)."""
    out = []
    for t in range(trials):
        release = masked_release(KEYS[0], PUBLIC, context(analysis_id=f"a{t}"), aggregate)
        out.extend(int(v, 16) for v in release["secure_aggregation"]["masked"])
    return out


def test_masked_release_is_uniform_and_independent_of_the_data() -> None:
    real, zero = node_aggregate(), zero_like()
    elements_real, elements_zero = _masked_elements(real, 150), _masked_elements(zero, 150)
    masked_real = np.array([v / RING for v in elements_real])
    masked_zero = np.array([v / RING for v in elements_zero])
    assert len(masked_real) > 1500
    # each masked element is uniform on the ring ...
    assert stats.kstest(masked_real, "uniform").pvalue > 1e-3
    assert stats.kstest(masked_zero, "uniform").pvalue > 1e-3
    # ... and a node's data cannot be told from all-zero data by its masked release
    assert stats.ks_2samp(masked_real, masked_zero).pvalue > 1e-3
    # every bit of the 192 is a fair coin (chi-squared over bit counts)
    bits = np.array([[(v >> b) & 1 for b in range(RING_BITS)] for v in elements_real[:1500]])
    ones = bits.sum(axis=0)
    chi2 = float(np.sum((ones - 750) ** 2 / 750 + (1500 - ones - 750) ** 2 / 750))
    assert stats.chi2.sf(chi2, bits.shape[1]) > 1e-3
    # negative control: the same test sees the unmasked fixed-point values at once
    _, vector = additive_form(real)
    plain = np.array([encode(v) / RING for v in vector])
    assert stats.kstest(plain, "uniform").pvalue < 1e-6


def test_mask_release_checks_the_call(tmp_path) -> None:
    pair = load_keypair(tmp_path)
    assert oct((tmp_path / KEY_FILE).stat().st_mode & 0o777) == "0o600"
    assert load_keypair(tmp_path).public_bytes == pair.public_bytes
    peers = {"scheme": SCHEME, "participants": [{"node": "me", "public_key": pair.public_hex},
                                                       {"node": "b", "public_key": PUBLIC[1].hex()}]}
    agg = node_aggregate()
    args = dict(request=LOCAL_REQUEST.to_dict(), round_no=0, state=None, analysis_id="a1", aggregates=agg)
    with pytest.raises(DisclosureError, match="'b' has no pinned") as err:  # pinned by default: nobody yet
        mask_release(tmp_path, "me", "linear_regression", spec=peers, **args)
    assert err.value.control == "secure_aggregation"
    TrustStore(tmp_path).pin("b", PUBLIC[1].hex())
    out = mask_release(tmp_path, "me", "linear_regression", spec=peers, **args)
    assert set(out) == {"secure_aggregation"}
    assert set(out["secure_aggregation"]) == {"scheme", "layout", "masked"}
    released = json.dumps(out)
    assert not any(repr(v) in released for v in agg["moments"]["mean"])
    with pytest.raises(RequestError, match="not available for pca.*linear_regression"):
        mask_release(tmp_path, "me", "pca", spec=peers, **args)
    exareme2_init = request(y=("x1", "x2"), k=2, init="exareme2").to_dict()
    with pytest.raises(RequestError, match="kmeans request.*minima and maxima"):
        mask_release(tmp_path, "me", "kmeans", spec=peers, **{**args, "request": exareme2_init})
    with pytest.raises(DisclosureError, match="own public key"):
        mask_release(tmp_path, "other", "linear_regression", spec=peers, **args)
    with pytest.raises(RequestError, match="2 to"):
        mask_release(tmp_path, "me", "linear_regression",
                            spec={**peers, "participants": peers["participants"][:1]}, **args)
    with pytest.raises(RequestError, match="analysis_id"):
        mask_release(tmp_path, "me", "linear_regression", spec=peers, **{**args, "analysis_id": None})
    # a round the algorithm releases in the clear (Cox's round 0 and sums rounds, ADR 0048) is not masked
    for round_no, state in ((0, None), (1, {"phase": "sums"})):
        with pytest.raises(RequestError, match="in the clear"):
            mask_release(tmp_path, "me", "cox_regression", spec=peers, **{**args, "round_no": round_no, "state": state})
