"""Arrays a local step derives from a node's rows, kept in node memory between rounds.

An iterative algorithm's node is called once per round with the same data
selection; the node API already keeps that selection (a DataFrame) in memory
between the rounds of an analysis (``local_data`` in :mod:`mipflow.node.api.app`),
and :func:`mipflow.algorithms.local.run_in_process` hands every round the same
frame.  Arrays derived from the rows that do not change between rounds (a
Cox model's sorted risk-set design, k-means' column-major values) are
memoised here per frame and per key, so a round only does the arithmetic that
depends on the state it was sent.

The memo lives in the node's process and never leaves it.  An entry is
dropped when its frame is freed (e.g. when the node's data change and its
frame cache builds a new frame), and the least recently used entries are
dropped beyond :data:`MAX_ENTRIES` entries or :data:`MAX_BYTES` bytes.
Frames handed to a local step are treated as immutable (neither the node nor
``run_in_process`` changes them after building them); cached arrays are made
read-only.
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

#: Most memo entries kept (over all frames).
MAX_ENTRIES = 8
#: Most bytes of arrays kept (over all entries); a larger single entry is built but not kept.
MAX_BYTES = 2 * 1024 ** 3

T = TypeVar("T", bound=Mapping[str, Any])

_entries: OrderedDict[tuple[int, str], tuple[weakref.ReferenceType, Any, int]] = OrderedDict()
_lock = threading.Lock()


def _nbytes(value: Mapping[str, Any]) -> int:
    return sum(v.nbytes for v in value.values() if isinstance(v, np.ndarray))


def _drop_when_freed(key: tuple[int, str]) -> Callable[[weakref.ReferenceType], None]:
    def drop(ref: weakref.ReferenceType) -> None:
        with _lock:
            entry = _entries.get(key)
            if entry is not None and entry[0] is ref:
                del _entries[key]
    return drop


def memo(data: pd.DataFrame, key: str, build: Callable[[], T]) -> T:
    """``build()`` for this frame and key, computed once and kept between rounds.

    Parameters
    ----------
    data : pandas.DataFrame
        The node's prepared rows (the same object across the rounds of one analysis).
    key : str
        Everything besides the rows that the built arrays depend on (request
        variables, parameters, fixed parts of the state), e.g. a JSON dump.
    build : callable
        Returns a mapping of names to arrays (and small plain values).

    Returns
    -------
    Mapping
        The built mapping; its arrays are read-only.
    """
    slot = (id(data), key)
    with _lock:
        entry = _entries.get(slot)
        if entry is not None and entry[0]() is data:
            _entries.move_to_end(slot)
            return entry[1]
    value = build()
    for item in value.values():
        if isinstance(item, np.ndarray):
            item.flags.writeable = False
    size = _nbytes(value)
    if size > MAX_BYTES:
        return value
    with _lock:
        _entries[slot] = (weakref.ref(data, _drop_when_freed(slot)), value, size)
        while len(_entries) > MAX_ENTRIES or sum(e[2] for e in _entries.values()) > MAX_BYTES:
            _entries.popitem(last=False)
    return value


def clear() -> None:
    """Forget every entry (tests)."""
    with _lock:
        _entries.clear()
