"""Releases hold finite numbers only (ADR 0053): a release rule of every mode.

An infinity or a NaN in a release is an overflow or an undefined value of the rows (the
exponential of a large value, a sum of squares past the float range): it is never sent, and never
reaches the node's JSON encoder (which refuses it, a 500 after the step ran).  The step is refused
with one fixed message, control ``non_finite``, whatever the number, its place or the rows: the
refusal names no value, no variable and no count.

In study mode approval makes sure the study's requests cannot meet such a value (the protocol fixes
the transformations that could produce one, ADR 0053); in standard mode the refusal depends on the
rows, the documented limit of that mode; explore mode computes its noisy releases from the request's
own bounds, and the rule stands behind it too.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from mipflow.exceptions import DisclosureError

#: The one message of a release holding a number that is not finite.
NON_FINITE_MESSAGE = ("the release would hold a number that is not finite (an overflow or an undefined value of "
                      "the rows, e.g. of a transformation); nothing is released: analyse the variables without "
                      "that transformation")


def has_non_finite(doc: Any) -> bool:
    """Whether ``doc`` (dicts, lists, tuples, numbers, numpy arrays and scalars) holds a NaN or an
    infinity anywhere."""
    if isinstance(doc, bool) or doc is None or isinstance(doc, (str, bytes, int)):
        return False
    if isinstance(doc, float):
        return not math.isfinite(doc)
    if isinstance(doc, dict):
        return any(has_non_finite(v) for v in doc.values())
    if isinstance(doc, (list, tuple)):
        return any(has_non_finite(v) for v in doc)
    if isinstance(doc, np.ndarray):
        if doc.dtype.kind in "fc":
            return not bool(np.isfinite(doc).all())
        if doc.dtype.kind == "O":
            return any(has_non_finite(v) for v in doc.ravel())
        return False
    if isinstance(doc, np.generic):
        return doc.dtype.kind in "fc" and not bool(np.isfinite(doc))
    return False


def check_finite(request: Any, context: Any, work: Any) -> None:
    """The step's release (aggregates and notes, after noise) holds finite numbers only, or it is
    refused (control ``non_finite``, one fixed message)."""
    if has_non_finite(work.aggregates) or has_non_finite(getattr(work, "notes", None)):
        raise DisclosureError(NON_FINITE_MESSAGE, control="non_finite")


__all__ = ["NON_FINITE_MESSAGE", "check_finite", "has_non_finite"]
