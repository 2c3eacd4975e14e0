"""The ring and its fixed-point code, and the additive form of a node's aggregates.

Masked values live in the integers mod ``2**RING_BITS``; a released number
``v`` is encoded as ``round(v * 2**FRACTION_BITS)`` (resolution ``2**-64``).  A
node refuses numbers of magnitude ``2**MAX_MAGNITUDE_BITS`` (about 1.3e33) or
more, so the sum of up to ``2**MAX_NODE_BITS`` nodes stays below ``2**190`` and
decodes without wrapping.

Only sums can be masked: :func:`additive_form` rewrites released aggregates as
a layout (structure, no values) and a flat vector of additive quantities, every
moments object ``{n, mean, m2}`` as its raw sums ``(n, n * mean, m2 + n * mean
mean^T)`` in exact rationals; :func:`from_additive` turns a summed vector back
into pooled centred moments exactly (no cancellation).
"""
from __future__ import annotations

from fractions import Fraction
from collections.abc import Mapping, Sequence
from typing import Any

from mipflow.exceptions import FederationError, RequestError

#: Name and version of the masking scheme (bound into every seed).
SCHEME = "mipflow-secagg-v1:x25519-hkdf-sha256-chacha20:z2^192:f64"
#: Masked values live in the ring of integers mod 2**RING_BITS.
RING_BITS = 192
RING = 1 << RING_BITS
#: Fixed-point scale: a released number ``v`` is encoded as ``round(v * 2**FRACTION_BITS)``.
FRACTION_BITS = 64
SCALE = 1 << FRACTION_BITS
#: A node refuses to encode a number of magnitude >= 2**MAX_MAGNITUDE_BITS.
MAX_MAGNITUDE_BITS = 110
#: Sums of up to 2**MAX_NODE_BITS nodes decode without wrapping.
MAX_NODE_BITS = 16

_MOMENT_KEYS = frozenset({"n", "mean", "m2"})
#: Keys whose values are one patient's value or an order statistic: never summed (a sum of
#: per-node minima is not the pooled minimum), so an aggregate holding one is refused.
NOT_SUMS = frozenset({"min", "max", "minimum", "maximum", "q1", "q2", "q3", "median", "quantiles"})
#: Marks a moments object in a layout (no aggregate key starts with "__").
MOMENTS_MARK = "__moments__"


# --------------------------------------------------------------------------- fixed point


def encode(value: Fraction | int | float) -> int:
    """``value`` in fixed point, as an element of the ring.

    Rounds ``value * 2**FRACTION_BITS`` to the nearest integer (ties away
    from zero are not needed: any rounding is within half a unit).

    Raises
    ------
    RequestError
        If the value is not finite or its magnitude is ``2**MAX_MAGNITUDE_BITS`` or more.
    """
    if isinstance(value, bool):
        raise RequestError("secure aggregation cannot encode a boolean")
    try:
        exact = Fraction(value)
    except (ValueError, OverflowError):
        raise RequestError(f"secure aggregation cannot encode {value!r} (not a finite number)") from None
    if abs(exact) >= (1 << MAX_MAGNITUDE_BITS):
        raise RequestError(f"a released number has magnitude >= 2**{MAX_MAGNITUDE_BITS}: too large for the "
                           "secure-aggregation ring")
    scaled = exact * SCALE
    return round(scaled) % RING


def decode(element: int) -> Fraction:
    """The signed fixed-point number an element of the ring stands for (exact)."""
    element %= RING
    if element >= RING // 2:
        element -= RING
    return Fraction(element, SCALE)


# --------------------------------------------------------------------------- additive form


def _is_moments(doc: Any) -> bool:
    return isinstance(doc, Mapping) and set(doc) == _MOMENT_KEYS


def additive_form(aggregates: Any) -> tuple[Any, list[Fraction]]:
    """Rewrite aggregates as a layout and a flat vector of additive quantities.

    Parameters
    ----------
    aggregates : JSON-like
        What a node's local step released (after the disclosure controls).

    Returns
    -------
    layout : JSON-like
        The structure without values: ``"i"`` (integer), ``"f"`` (number),
        ``{"__moments__": [k, is_matrix]}``, lists and objects of those.  It
        depends only on the request and state, so every node sends the same.
    vector : list of Fraction
        The quantities, in layout order; a moments object contributes
        ``n``, ``n * mean`` (k) and ``m2 + n * mean mean^T`` (k x k, or k).

    Raises
    ------
    RequestError
        If a value cannot be summed (a suppressed cell, a string, NaN, an
        extreme or quantile under one of the :data:`NOT_SUMS` keys).
    """
    vector: list[Fraction] = []

    def walk(doc: Any, where: str) -> Any:
        if _is_moments(doc):
            n = int(doc["n"])
            mean = [Fraction(float(v)) for v in doc["mean"]]
            m2 = doc["m2"]
            matrix = bool(m2) and isinstance(m2[0], list)
            vector.append(Fraction(n))
            vector.extend(n * m for m in mean)
            if matrix:
                for i, row in enumerate(m2):
                    vector.extend(Fraction(float(v)) + n * mean[i] * mean[j] for j, v in enumerate(row))
            else:
                vector.extend(Fraction(float(v)) + n * mean[i] * mean[i] for i, v in enumerate(m2))
            return {MOMENTS_MARK: [len(mean), matrix]}
        if isinstance(doc, Mapping):
            if MOMENTS_MARK in doc:
                raise RequestError(f"secure aggregation cannot sum {where}: it holds the key {MOMENTS_MARK!r}")
            extremes = sorted(str(k) for k in doc if str(k).lower() in NOT_SUMS)
            if extremes:
                raise RequestError(f"secure aggregation cannot sum {where}.{extremes[0]}: extremes and "
                                   "quantiles are not sums")
            return {str(k): walk(v, f"{where}.{k}") for k, v in sorted(doc.items())}
        if isinstance(doc, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(doc)]
        if isinstance(doc, bool) or doc is None or isinstance(doc, str):
            raise RequestError(f"secure aggregation cannot sum {where} (a suppressed cell or a non-number)")
        if isinstance(doc, int):
            vector.append(Fraction(doc))
            return "i"
        if isinstance(doc, float):
            try:
                vector.append(Fraction(doc))
            except (ValueError, OverflowError):
                raise RequestError(f"secure aggregation cannot sum {where}: not a finite number") from None
            return "f"
        raise RequestError(f"secure aggregation cannot sum {where} of type {type(doc).__name__}")

    layout = walk(aggregates, "aggregates")
    return layout, vector


def from_additive(layout: Any, values: Sequence[Fraction]) -> Any:
    """Inverse of :func:`additive_form` applied to a sum: the pooled aggregates.

    Moments come back centred (``mean = S / n``, ``m2 = SS - S S^T / n``),
    computed exactly and rounded once to float; integers must be integral.
    """
    position = 0

    def take(count: int) -> list[Fraction]:
        nonlocal position
        if position + count > len(values):
            raise FederationError("secure aggregation: the summed vector is shorter than its layout")
        out = list(values[position:position + count])
        position += count
        return out

    def build(node: Any) -> Any:
        if isinstance(node, Mapping) and set(node) == {MOMENTS_MARK}:
            k, matrix = int(node[MOMENTS_MARK][0]), bool(node[MOMENTS_MARK][1])
            (n,) = take(1)
            sums = take(k)
            if n.denominator != 1 or n < 0:
                raise FederationError("secure aggregation: a summed row count is not a count")
            n_rows = int(n)
            mean = [s / n_rows for s in sums] if n_rows else [Fraction(0)] * k
            if matrix:
                raw = take(k * k)
                m2 = [[float(raw[i * k + j] - (sums[i] * sums[j] / n_rows if n_rows else 0))
                       for j in range(k)] for i in range(k)]
            else:
                raw = take(k)
                m2 = [float(raw[i] - (sums[i] * sums[i] / n_rows if n_rows else 0)) for i in range(k)]
            return {"n": n_rows, "mean": [float(m) for m in mean], "m2": m2}
        if isinstance(node, Mapping):
            return {k: build(v) for k, v in node.items()}
        if isinstance(node, list):
            return [build(v) for v in node]
        (value,) = take(1)
        if node == "i":
            if value.denominator != 1:
                raise FederationError("secure aggregation: a summed count is not an integer")
            return int(value)
        return float(value)

    out = build(layout)
    if position != len(values):
        raise FederationError("secure aggregation: the summed vector is longer than its layout")
    return out
