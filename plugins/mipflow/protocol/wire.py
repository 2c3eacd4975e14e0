"""What crosses the wire: plain JSON values (numpy unwrapped, NaN and infinities spelled as
Exareme2 spells them) and a strict JSON round trip, as over HTTP."""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

import numpy as np

# --------------------------------------------------------------------------- JSON


def json_ready(obj: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays unwrapped, NaN -> None,
    +-inf -> ``"Infinity"`` / ``"-Infinity"`` (Exareme2's spelling)."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [json_ready(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    return obj


def transport(obj: Any) -> Any:
    """Round-trip through strict JSON, as over HTTP (fails on NaN, numpy types)."""
    return json.loads(json.dumps(obj, allow_nan=False))
