"""Fixed point in Z/2^256 on numpy limbs (ADR 0055) gives the same bits as the reference in Python integers:
encoding (``round(v * 2^128) % 2^256``), masking (``± PRG`` modulo 2^256), pooling (the sum of the parts) and
decoding (signed, times ``2^-128``, ``float(int)``), on random and boundary inputs."""
from __future__ import annotations

import base64
import math

import numpy as np
import pytest

from mipflow.algorithms import fixed_point
from mipflow.algorithms.sealed import REAL_MASKED_SCHEME, ring_elements, unmask_parts
from mipflow.secagg.crypto import KeyPair
from mipflow.secagg.sealed_masks import encode_real, mask_real_sums

RING, HALF, F = 1 << 256, 1 << 255, 128


# -- the reference: ADR 0055's first implementation, in Python integers ------------------------------------

def reference_encode(values) -> list[int]:
    return [round(v) % RING for v in np.ldexp(np.asarray(values, dtype=float).ravel(), F).tolist()]


def reference_decode(elements) -> np.ndarray:
    return np.ldexp(np.array([float(t - RING if t >= HALF else t) for t in elements], dtype=float), -F)


def reference_mask(own: KeyPair, participants: dict, context: bytes, values) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    from mipflow.secagg.crypto import pair_seed

    vector = reference_encode(values)
    me = own.public_bytes
    for peer in sorted(participants.values()):
        if peer == me:
            continue
        encryptor = Cipher(algorithms.ChaCha20(pair_seed(own, peer, context), b"\x00" * 16), mode=None).encryptor()
        stream = ring_elements(encryptor.update(b"\x00" * (32 * len(vector))))
        vector = [v + m for v, m in zip(vector, stream)] if me < peer else [v - m for v, m in zip(vector, stream)]
    return b"".join((v % RING).to_bytes(32, "little") for v in vector)


def as_integers(limbs: np.ndarray) -> list[int]:
    return ring_elements(fixed_point.to_bytes(limbs))


def as_limbs(integers) -> np.ndarray:
    return fixed_point.from_bytes(b"".join((i % RING).to_bytes(32, "little") for i in integers))


# -- inputs -----------------------------------------------------------------------------------------------

def boundary_values() -> np.ndarray:
    tiny = 2.0 ** -F
    edges = [0.0, -0.0, 5e-324, -5e-324, tiny, -tiny, tiny / 2, -tiny / 2, 1.5 * tiny, 2.5 * tiny, -2.5 * tiny,
             3.5 * tiny, 0.49999999999999994 * tiny, tiny * (2 ** 52 + 0.5), -tiny * (2 ** 52 + 0.5),
             tiny * (2 ** 53 - 1), tiny * 2 ** 53, tiny * (2 ** 53 + 2), 1.0, -1.0, math.pi, -math.e,
             np.nextafter(2.0 ** 110, 0), -np.nextafter(2.0 ** 110, 0), 2.0 ** 109.5, -1e30]
    # magnitudes whose 53 significant bits straddle a limb boundary (bits 64, 128, 192 of the integer)
    for boundary in (64, 128, 192):
        for offset in range(-54, 3):
            value = (2.0 ** 53 - 1) * 2.0 ** (boundary + offset - 53 - F)
            edges += [value, -value, 2.0 ** (boundary + offset - F), -(2.0 ** (boundary + offset - F))]
    return np.array(edges)


def random_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random signs, mantissas and exponents over the whole range, some with fractional bits below 2^-128."""
    exponents = rng.integers(-140, 110, n)
    mantissa = rng.uniform(0.5, 1.0, n) * rng.choice([-1.0, 1.0], n)
    return np.ldexp(mantissa, exponents)


def random_elements(rng: np.random.Generator, n: int) -> list[int]:
    """Uniform ring elements, small and large of either sign, and rounding ties with and without sticky bits."""
    out = [int.from_bytes(rng.bytes(32), "little") for _ in range(n)]
    for _ in range(n):
        length = int(rng.integers(1, 256))
        value = int.from_bytes(rng.bytes(32), "little") >> (256 - length)
        out += [value, (-value) % RING]
    for top in (54, 63, 64, 65, 100, 128, 129, 191, 192, 200, 254):
        base = 1 << top
        half_ulp = 1 << (top - 53)
        for value in (base + half_ulp, base + 3 * half_ulp, base + half_ulp + 1, base + half_ulp - 1,
                      base - 1, base + half_ulp + (1 if top > 60 else 0), (base << 1) - 1 if top < 255 else base):
            out += [value % RING, (-value) % RING]
    out += [0, 1, RING - 1, HALF - 1, HALF, HALF + 1, 1 << 64, (1 << 64) - 1, (1 << 128) - 1, 1 << 192]
    return out


# -- tests ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [pytest.param(boundary_values(), id="boundaries"),
                                    pytest.param(random_values(np.random.default_rng(1), 20000), id="random")])
def test_encoding_gives_python_rounds_residues(values) -> None:
    assert as_integers(fixed_point.encode(values, F)) == reference_encode(values)
    layout, limbs = encode_real({"b": values[: len(values) // 2], "a": values[len(values) // 2:]})
    assert layout == [["a", [len(values) - len(values) // 2]], ["b", [len(values) // 2]]]
    assert as_integers(limbs) == reference_encode(np.concatenate([values[len(values) // 2:], values[: len(values) // 2]]))


def test_decoding_gives_python_float_of_the_signed_integer() -> None:
    elements = random_elements(np.random.default_rng(2), 3000)
    decoded = fixed_point.decode(as_limbs(elements), F)
    np.testing.assert_array_equal(decoded, reference_decode(elements))
    assert not np.any(np.signbit(decoded[np.asarray(decoded) == 0]))  # 0, not -0.0, as float(0)


def test_addition_and_subtraction_carry_across_limbs_modulo_the_ring() -> None:
    rng = np.random.default_rng(3)
    a, b = random_elements(rng, 1000), random_elements(rng, 1000)
    b = (b * 2)[: len(a)]
    assert as_integers(fixed_point.add(as_limbs(a), as_limbs(b))) == [(x + y) % RING for x, y in zip(a, b)]
    assert as_integers(fixed_point.subtract(as_limbs(a), as_limbs(b))) == [(x - y) % RING for x, y in zip(a, b)]
    assert as_integers(fixed_point.negate(as_limbs(a))) == [(-x) % RING for x in a]
    # all-ones plus one carries through every limb and out of the ring
    assert as_integers(fixed_point.add(as_limbs([RING - 1]), as_limbs([1]))) == [0]
    assert as_integers(fixed_point.subtract(as_limbs([0]), as_limbs([1]))) == [RING - 1]


@pytest.mark.parametrize("plus, minus, base", [(1, 0, False), (0, 1, True), (2, 3, True), (9, 0, False), (0, 9, False),
                                                (4, 5, True)])
def test_combining_many_terms_carries_once_and_gives_the_ring_sum(plus, minus, base) -> None:
    """``combine`` (masks of many peers, pools of many parts: every carry taken once) equals adding and
    subtracting the terms one by one in Python integers, also for all-ones and zero elements."""
    rng = np.random.default_rng(40 + plus + 7 * minus)
    n = 700
    terms = [random_elements(rng, n)[:n] + [RING - 1, 0, 1, HALF] for _ in range(plus + minus + 1)]
    start = terms[0] if base else [0] * len(terms[0])
    expected = [(b + sum(col[:plus]) - sum(col[plus:])) % RING
                for b, *col in zip(start, *terms[1:])]
    as_bytes = [fixed_point.to_bytes(as_limbs(t)) for t in terms[1:]]
    mixed = [as_limbs(t) if k % 2 else raw for k, (t, raw) in enumerate(zip(terms[1:], as_bytes))]  # limbs or bytes
    got = fixed_point.combine(as_limbs(terms[0]) if base else None, mixed[:plus], mixed[plus:])
    assert as_integers(got) == expected
    one_by_one = as_limbs(start)
    for k, t in enumerate(terms[1:]):
        one_by_one = (fixed_point.add if k < plus else fixed_point.subtract)(one_by_one, as_limbs(t))
    assert as_integers(one_by_one) == expected
    with pytest.raises(ValueError):
        fixed_point.combine(None, [as_bytes[0][:-4]] + as_bytes[1:2], [])


@pytest.mark.parametrize("n", [1, 3, 5])
def test_masked_parts_and_their_pool_are_bit_identical_to_python_integers(n) -> None:
    rng = np.random.default_rng(10 + n)
    keys = [KeyPair.from_bytes(bytes([31 * (i + 1)]) * 32) for i in range(n)]
    participants = {f"node_{i}": k.public_bytes for i, k in enumerate(keys)}
    context = b"analysis-7|cox_regression|sealed|round-3"
    values = [np.concatenate([boundary_values(), random_values(rng, 3000)]) for _ in keys]
    parts = [mask_real_sums(k, participants, context, {"v": v}) for k, v in zip(keys, values)]
    raws = [base64.b64decode(part["masked"]) for part in parts]
    assert raws == [reference_mask(k, participants, context, v) for k, v in zip(keys, values)]
    pooled = unmask_parts(parts, REAL_MASKED_SCHEME)["v"]
    total = [sum(column) % RING for column in zip(*(ring_elements(raw) for raw in raws))]
    np.testing.assert_array_equal(pooled, reference_decode(total))
    assert total == [sum(column) % RING for column in zip(*(reference_encode(v) for v in values))]  # masks cancel
