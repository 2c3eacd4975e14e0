"""Large float arrays in aggregates, packed as base64 of little-endian float64.

A JSON number costs about 20 bytes and a microsecond or two to print and to
parse; an array of a hundred thousand risk-set sums (Cox regression: bins x
p x p) then dominates a round.  :func:`pack` writes the array's IEEE bytes as
base64 (10.7 characters per value, exact, ~1 ms per megabyte) inside an
ordinary JSON object::

    {"dtype": "<f8", "shape": [m, k], "base64": "..."}

Only sums that would otherwise travel as plain numbers are packed: counts
that a node's disclosure controls inspect (``group_n``, ``group_counts``,
``counts``) stay plain lists.  See ``docs/adr/0018-cox-performance.md``.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any, Mapping

import numpy as np

from mipflow.exceptions import FederationError, RequestError

DTYPE = "<f8"


def pack(values: Any, what: str) -> dict[str, Any]:
    """An array as ``{"dtype", "shape", "base64"}``.

    Raises
    ------
    RequestError
        If a value is NaN or infinite (``what`` names the aggregate in the message),
        as strict JSON would refuse it.
    """
    array = np.ascontiguousarray(values, dtype=DTYPE)
    if not np.all(np.isfinite(array)):
        raise RequestError(f"{what} is not finite (overflow: the fit diverged?)")
    return {"dtype": DTYPE, "shape": list(array.shape), "base64": base64.b64encode(array.tobytes()).decode("ascii")}


def unpack(doc: Any) -> np.ndarray:
    """The array of :func:`pack` (a plain nested list is accepted too).

    Raises
    ------
    FederationError
        If a packed array is malformed (its bytes do not fill its shape).
    """
    if not isinstance(doc, Mapping):
        return np.asarray(doc, dtype=float)
    try:
        shape = tuple(int(s) for s in doc["shape"])
        if doc["dtype"] != DTYPE or any(s < 0 for s in shape):
            raise ValueError(doc["dtype"])
        raw = base64.b64decode(doc["base64"], validate=True)
        return np.frombuffer(raw, dtype=DTYPE).reshape(shape).astype(float)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise FederationError(f"a node sent a malformed packed array ({type(exc).__name__})") from None
