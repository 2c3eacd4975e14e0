"""Masked sealed sums (ADR 0052): the masks cancel only in the sum over every participant, so a peer
that opens one part learns nothing from it; layouts that differ are refused."""
from __future__ import annotations

import numpy as np
import pytest

from mipflow.exceptions import RequestError
from mipflow.secagg.crypto import KeyPair
from mipflow.secagg.sealed_masks import is_masked, mask_sums, unmask_parts

CONTEXT = b"analysis-1|kaplan_meier|sealed|round-0"


def _parties(n: int) -> tuple[list[KeyPair], dict[str, bytes]]:
    keys = [KeyPair.generate() for _ in range(n)]
    return keys, {f"node_{i}": k.public_bytes for i, k in enumerate(keys)}


@pytest.mark.parametrize("n", [3, 4])
def test_the_masks_cancel_in_the_sum_and_no_part_reads_alone(n) -> None:
    keys, participants = _parties(n)
    rng = np.random.default_rng(n)
    sums = [{"events": rng.integers(0, 5, size=(2, 50)), "censored": rng.integers(0, 5, size=(2, 50))}
            for _ in range(n)]
    parts = [mask_sums(k, participants, CONTEXT, s) for k, s in zip(keys, sums)]
    assert all(is_masked(p) for p in parts)
    total = unmask_parts(parts)
    for name in ("events", "censored"):
        np.testing.assert_array_equal(total[name], sum(s[name] for s in sums))
    for part, plain in zip(parts, sums):
        alone = unmask_parts([part])["events"]
        # uniform in Z/2^64: no element is the count it masks
        assert np.mean(alone == plain["events"]) < 0.05
    # any n - 1 parts leave the masks of the missing one: still uniform
    partial = unmask_parts(parts[:-1])["events"]
    assert np.mean(partial == sum(s["events"] for s in sums[:-1])) < 0.05


def test_another_context_gives_other_masks() -> None:
    keys, participants = _parties(3)
    sums = {"events": np.arange(20)}
    first = mask_sums(keys[0], participants, CONTEXT, sums)
    other = mask_sums(keys[0], participants, CONTEXT + b"|other", sums)
    assert first["masked"] != other["masked"]


def test_parts_of_other_layouts_or_in_the_clear_are_refused() -> None:
    keys, participants = _parties(3)
    a = mask_sums(keys[0], participants, CONTEXT, {"events": np.zeros(4, dtype=int)})
    b = mask_sums(keys[1], participants, CONTEXT, {"events": np.zeros(5, dtype=int)})
    with pytest.raises(RequestError, match="layout"):
        unmask_parts([a, b])
    with pytest.raises(RequestError, match="masked"):
        unmask_parts([a, {"events": [0, 0, 0, 0]}])
    with pytest.raises(RequestError, match="integers"):
        mask_sums(keys[0], participants, CONTEXT, {"s0": np.array([0.5, 1.5])})
