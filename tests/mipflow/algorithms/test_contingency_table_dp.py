"""The contingency table's noisy release (explore mode, DP nodes; ADR 0032): every cell noised
(sensitivity 1, one block, nothing suppressed), the pooled table clamped, the noise as declared."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from scipy import stats

from mipflow.algorithms import AnalysisRequest, get_algorithm, prepare_local_data
from mipflow.algorithms.contingency_table import DP_BLOCK, cross_tabulate
from mipflow.exceptions import RequestError
from mipflow.node.controls.explore import KeyedNoise
from mipflow.node.controls.explore_keys import noise_key
from mipflow.protocol.wire import transport
from tests.mipflow.algorithms.survival_data import HOSPITALS, STROKE, make_stroke
from tests.mipflow.algorithms.test_kaplan_meier_dp import ExactNoise

TABLE = get_algorithm("contingency_table")
REQUEST = AnalysisRequest(data_model=STROKE.key, datasets=HOSPITALS, x=("stroke_type",), y=("death_90d",),
                          parameters={})


def local(seed: int, n: int = 170):
    return prepare_local_data(TABLE, make_stroke(seed, n), REQUEST)


def released(data, noise=None) -> dict:
    aggregates, clamped = TABLE.dp_release.release(TABLE, data, REQUEST, STROKE, noise or ExactNoise())
    assert clamped == {}
    return transport(aggregates)


def exact_table(data) -> np.ndarray:
    return cross_tabulate(data["stroke_type"].astype(str).to_numpy(), data["death_90d"].astype(str).to_numpy(),
                          ("ischaemic", "haemorrhagic", "tia"), ("yes", "no"))


def keyed(i: int, mechanism: str = "laplace") -> KeyedNoise:
    return KeyedNoise(mechanism, 1.0, 1e-6, 1, key=noise_key(b"ct" * 16), query=b"contingency_table",
                      version=hashlib.sha256(str(i).encode()).digest())


def test_every_cell_is_released_with_noise_of_sensitivity_one():
    data = local(1)
    noise = ExactNoise()
    out = released(data, noise)
    assert out["shape"] == [3, 2] and out["group_counts"] == exact_table(data).ravel().tolist()
    assert noise.calls == [{"n": 6, "sensitivity": 1, "block": DP_BLOCK, "part": "", "integer": True}]
    assert TABLE.dp_release.rows(out) == len(data)
    for i in range(0, len(data), 7):  # one row less: one cell less by one
        difference = np.subtract(out["group_counts"], released(data.drop(index=data.index[i]))["group_counts"])
        assert np.abs(difference).sum() == 1 and difference.sum() == 1
    assert any(v < 0 for i in range(40) for v in released(local(2, 12), keyed(i))["group_counts"])  # not clamped


def test_noisy_tables_are_pooled_then_clamped_and_labelled():
    frames = [local(s) for s in (3, 4, 5)]
    tables = [released(f, keyed(i)) for i, f in enumerate(frames)]
    tables[0]["group_counts"][5] = -4  # a noisy cell below zero
    result = TABLE.global_step(0, tables, REQUEST, STROKE, None).result
    pooled = np.sum([t["group_counts"] for t in tables], axis=0).reshape(3, 2)
    np.testing.assert_array_equal(result["observed"], np.maximum(pooled, 0))
    assert result["noise"]["approximate"] is True and result["noise"]["noisy_nodes"] == 3
    assert result["noise"]["cell_sd"] == pytest.approx(math.sqrt(3) * math.sqrt(2))
    # the signed pooled cells, before the display clamp, with intervals cut at 0 (ADR 0057)
    np.testing.assert_array_equal(result["noisy_cells_signed"], pooled)
    assert all(lo <= max(v, 0) <= hi for row, lows, highs in zip(pooled, result["noisy_cells_low"],
                                                                 result["noisy_cells_high"])
               for v, lo, hi in zip(row, lows, highs))
    assert result["noise"]["cells_interval_coverage"] >= 0.95 and "clamped" in result["noise"]
    # an exact table may not carry negative cells
    with pytest.raises(RequestError, match="not counts"):
        TABLE.global_step(0, [{"shape": [3, 2], "group_counts": [1, 2, 3, 4, 5, -1]}], REQUEST, STROKE, None)
    # noise-free noisy tables: the exact result
    exact = TABLE.global_step(0, [transport(TABLE.local_step(0, f, REQUEST, STROKE, None)) for f in frames],
                              REQUEST, STROKE, None).result
    free = TABLE.global_step(0, [released(f) for f in frames], REQUEST, STROKE, None).result
    assert {k: v for k, v in free.items() if k != "noise" and not k.startswith("noisy_cells")} == exact


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_the_released_cells_carry_the_declared_noise(mechanism):
    data = local(6)
    exact = exact_table(data).ravel()
    draws = []
    for i in range(1500):
        noise = keyed(i, mechanism)
        out = released(data, noise)
        draws.append(np.subtract(out["group_counts"], exact))
        assert out["noise"]["mechanism"] == mechanism
    draws = np.concatenate(draws)
    scale = noise.scale(1)
    reference = stats.laplace(scale=scale) if mechanism == "laplace" else stats.norm(scale=scale)
    assert out["noise"]["sd"] == pytest.approx(reference.std(), rel=1e-12)
    m = len(draws)
    kurtosis = 6.0 if mechanism == "laplace" else 3.0
    assert abs(draws.mean()) < 5 * reference.std() / math.sqrt(m)
    assert abs(draws.var() / (reference.var() + 1 / 12) - 1) < 5 * math.sqrt((kurtosis - 1) / m)
    for k in (-3, -1, 0, 2):
        assert abs(np.mean(draws <= k) - reference.cdf(k + 0.5)) < 5 * math.sqrt(0.25 / m)
