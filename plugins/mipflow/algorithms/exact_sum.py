"""``math.fsum`` of values given a chunk at a time: the same float, bit for bit (ADR 0062, amendment 17).

A noisy release (ADR 0015, 0021, 0032) adds its noise to exact sums taken with ``math.fsum``, the
correctly rounded sum of its values whatever their order.  Summing each chunk with ``fsum`` and then
the chunks' sums would round twice; :class:`ExactSum` instead keeps the exact total of every value
added so far as a Python integer (every finite double is an integer multiple of ``2**-1126`` here:
``frexp``'s 53-bit mantissa at its exponent) and rounds once, correctly (round half to even, as
``fsum``), when :attr:`value` is read.  Memory: the integer (a few hundred bits) and a chunk's
temporaries; time: a few numpy passes over a chunk and a Python step per distinct exponent in it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ExactSum"]

#: ``v = mantissa * 2**(exponent - 53)`` with ``exponent - 53 >= -1126`` for every finite double.
_BASE = 1126
#: A chunk's integer halves are summed as float64 weights of ``bincount``: exact below 2**53, so at
#: most 2**26 values a call (each half below 2**27 in magnitude).
_CALL_ROWS = 1 << 25
_LOW_BITS = 26


class ExactSum:
    """The exact sum of the values :meth:`add` was given, rounded once as ``math.fsum`` rounds it."""

    __slots__ = ("total",)

    def __init__(self) -> None:
        #: the exact sum, in units of ``2**-1126``
        self.total = 0

    def add(self, values: Any) -> None:
        """Add finite float64 ``values`` (any shape) exactly.

        Raises
        ------
        ValueError
            For a NaN or an infinity (``fsum`` answers those specially; no noisy release sums them).
        """
        v = np.asarray(values, dtype=np.float64).ravel()
        for start in range(0, len(v), _CALL_ROWS):
            self._add(v[start:start + _CALL_ROWS])

    def _add(self, v: np.ndarray) -> None:
        if not len(v):
            return
        if not np.isfinite(v).all():
            raise ValueError("an exact sum of a value that is not finite")
        fraction, exponent = np.frexp(v)
        mantissa = (fraction * 9007199254740992.0).astype(np.int64)  # * 2**53: exact, |m| < 2**53
        shift = exponent.astype(np.int64) - 53 + _BASE  # >= 0 for every finite value (zero: m == 0)
        high = mantissa >> _LOW_BITS  # floor: mantissa == high * 2**26 + low, 0 <= low < 2**26
        low = mantissa - (high << _LOW_BITS)
        shifts, where = np.unique(shift, return_inverse=True)
        high_sums = np.bincount(where, weights=high.astype(np.float64), minlength=len(shifts))
        low_sums = np.bincount(where, weights=low.astype(np.float64), minlength=len(shifts))
        total = self.total
        for s, h, lo in zip(shifts.tolist(), high_sums.tolist(), low_sums.tolist()):
            total += ((int(h) << _LOW_BITS) + int(lo)) << s
        self.total = total

    @property
    def value(self) -> float:
        """The sum rounded to the nearest float64 (ties to even): ``math.fsum`` of the same values."""
        if self.total == 0:
            return 0.0
        return self.total / (1 << _BASE)  # int / int: correctly rounded (CPython's true division)
