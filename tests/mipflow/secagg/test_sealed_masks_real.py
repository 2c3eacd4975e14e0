"""Masked sealed sums of real numbers (ADR 0055): Cox regression's per-bin risk-set sums in fixed point in
``Z/2^256`` (128 fractional bits), masked so that a peer opening one part learns nothing from it and only
the sum over every participant decodes, exactly enough for the pooled fit."""
from __future__ import annotations

import base64
import math

import numpy as np
import pytest
from scipy import stats

from mipflow.algorithms import get_algorithm
from mipflow.algorithms.packed import pack
from mipflow.exceptions import RequestError
from mipflow.secagg.crypto import KeyPair
from mipflow.secagg.sealed_masks import (
    REAL_MASKED_SCHEME,
    encode_real,
    is_masked,
    mask_real_sums,
    mask_sums,
    ring_elements,
    unmask_parts,
)

CONTEXT = b"analysis-1|cox_regression|sealed|round-1"
RING = 1 << 256


def _parties(n: int) -> tuple[list[KeyPair], dict[str, bytes]]:
    keys = [KeyPair.from_bytes(bytes([29 * (i + 1)]) * 32) for i in range(n)]
    return keys, {f"node_{i}": k.public_bytes for i, k in enumerate(keys)}


def _risk_sums(rng: np.random.Generator, bins: int = 40, p: int = 3) -> dict[str, np.ndarray]:
    """Risk-set-like sums over a wide dynamic range: exp(x'b) from e^-40 to e^40, covariates of either sign."""
    s0 = np.exp(rng.uniform(-40, 40, bins)) * rng.integers(1, 50, bins)
    return {"events": rng.integers(0, 6, bins).astype(float), "s0": s0,
            "s1": s0[:, None] * rng.normal(scale=10.0, size=(bins, p)),
            "s2": s0[:, None] * rng.uniform(0.1, 100.0, size=(bins, p * (p + 1) // 2))}


def test_one_part_round_trips_exactly_down_to_the_fixed_points_resolution() -> None:
    keys, participants = _parties(1)
    values = np.array([0.0, 1.0, -1.0, math.pi, -1e30, 2.0 ** 109.5, 2.0 ** -75, -3.3e-23, 1e-40, -7e-39])
    part = mask_real_sums(keys[0], participants, CONTEXT, {"v": pack(values, "v")})
    assert is_masked(part, REAL_MASKED_SCHEME) and part["layout"] == [["v", [len(values)]]]
    decoded = unmask_parts([part], REAL_MASKED_SCHEME)["v"]
    exact = np.abs(values) >= 2.0 ** -75  # 53 significant bits within 128 fractional bits
    np.testing.assert_array_equal(decoded[exact], values[exact])
    assert np.all(np.abs(decoded - values) <= 2.0 ** -129)


@pytest.mark.parametrize("n", [3, 4, 6])
def test_the_masks_cancel_in_the_sum_to_the_correctly_rounded_sum_of_the_parts(n) -> None:
    keys, participants = _parties(n)
    rng = np.random.default_rng(n)
    sums = [_risk_sums(rng) for _ in range(n)]
    parts = [mask_real_sums(k, participants, CONTEXT, {name: pack(a, name) for name, a in s.items()})
             for k, s in zip(keys, sums)]
    total = unmask_parts(parts, REAL_MASKED_SCHEME)
    assert sorted(total) == ["events", "s0", "s1", "s2"]
    for name in total:
        stacked = np.stack([s[name] for s in sums])
        assert total[name].shape == stacked.shape[1:]
        # every value here is >= 2^-75 in magnitude or 0, so encoded exactly: the decoded sum is the exact
        # sum of the parts rounded once (math.fsum), not float addition's
        expected = np.apply_along_axis(math.fsum, 0, stacked)
        np.testing.assert_array_equal(total[name], expected, err_msg=name)


def test_a_single_part_is_uniform_in_the_ring_and_no_fewer_parts_than_all_decode() -> None:
    """What a peer opens from one node: elements uniform in Z/2^256 whatever the sums (here all the same,
    small and positive); any n - 1 parts still carry the missing node's masks."""
    keys, participants = _parties(3)
    sums = {"s0": np.ones(4000), "events": np.zeros(4000)}
    parts = [mask_real_sums(k, participants, CONTEXT, sums) for k in keys]
    for part in parts:
        elements = np.array([e / RING for e in ring_elements(base64.b64decode(part["masked"]))])
        assert len(elements) == 8000
        assert stats.kstest(elements, "uniform").pvalue > 1e-3
        # as a peer would decode it: hardly any element is near the node's value (1 or 0)
        alone = unmask_parts([part], REAL_MASKED_SCHEME)
        assert np.mean(np.abs(alone["s0"]) < 1e6) < 1e-3 and np.mean(np.abs(alone["events"]) < 1e6) < 1e-3
    for left_out in range(3):
        partial = unmask_parts([p for k, p in enumerate(parts) if k != left_out], REAL_MASKED_SCHEME)
        assert np.mean(np.abs(partial["s0"] - 2.0) < 1e6) < 1e-3
    np.testing.assert_array_equal(unmask_parts(parts, REAL_MASKED_SCHEME)["s0"], np.full(4000, 3.0))


def test_another_context_gives_other_masks() -> None:
    keys, participants = _parties(3)
    sums = {"s0": np.arange(1.0, 21.0)}
    assert (mask_real_sums(keys[0], participants, CONTEXT, sums)["masked"]
            != mask_real_sums(keys[0], participants, CONTEXT + b"|other", sums)["masked"])


@pytest.mark.parametrize("value", [pytest.param(2.0 ** 110, id="2^110"), pytest.param(-3.1e40, id="-3.1e40"),
                                   pytest.param(float("inf"), id="inf"), pytest.param(float("nan"), id="nan")])
def test_values_out_of_range_are_refused_without_naming_them(value) -> None:
    keys, participants = _parties(3)
    sums = {"s0": np.array([1.25, value, 17.0])}
    with pytest.raises(RequestError, match="range of masked fixed point") as refusal:
        encode_real(sums)
    message = str(refusal.value)
    assert "1.25" not in message and "17" not in message and repr(value) not in message
    with pytest.raises(RequestError, match="range of masked fixed point"):
        mask_real_sums(keys[0], participants, CONTEXT, sums)


def test_parts_of_other_schemes_layouts_or_in_the_clear_are_refused() -> None:
    keys, participants = _parties(3)
    real = mask_real_sums(keys[0], participants, CONTEXT, {"s0": np.ones(4)})
    other = mask_real_sums(keys[1], participants, CONTEXT, {"s0": np.ones(5)})
    integer = mask_sums(keys[1], participants, CONTEXT, {"s0": np.ones(4, dtype=int)})
    with pytest.raises(RequestError, match="layout"):
        unmask_parts([real, other], REAL_MASKED_SCHEME)
    with pytest.raises(RequestError, match="masked"):
        unmask_parts([real, integer], REAL_MASKED_SCHEME)
    with pytest.raises(RequestError, match="masked"):
        unmask_parts([real, {"s0": [1.0, 1.0, 1.0, 1.0]}], REAL_MASKED_SCHEME)
    with pytest.raises(RequestError, match="masked"):  # Kaplan-Meier's integer pooling takes no real part
        unmask_parts([real, integer])


def test_cox_masks_from_three_participants_and_pools_masked_or_clear_parts_alike() -> None:
    cox = get_algorithm("cox_regression")
    assert cox.sealed_masked
    assert [cox.sealed_mask_scheme(n) for n in (1, 2, 3, 7)] == [None, None, REAL_MASKED_SCHEME, REAL_MASKED_SCHEME]
    keys, participants = _parties(3)
    rng = np.random.default_rng(5)
    sums = [{name: pack(a, name) for name, a in _risk_sums(rng).items()} for _ in keys]
    clear = cox.pool_sealed(sums)
    masked = cox.pool_sealed([mask_real_sums(k, participants, CONTEXT, s) for k, s in zip(keys, sums)])
    for name in clear:
        np.testing.assert_allclose(masked[name], clear[name], rtol=1e-15, atol=0, err_msg=name)
    # a pool whose S0 falls below the resolution of the fixed point is refused, not fitted imprecisely
    tiny = [{**s, "s0": pack(np.full(40, 1e-24), "s0")} for s in sums]
    with pytest.raises(RequestError, match="resolution"):
        cox.pool_sealed([mask_real_sums(k, participants, CONTEXT, s) for k, s in zip(keys, tiny)])
