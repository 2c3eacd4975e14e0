"""The groups a step's frame forms, computed once per frame and kept between the rounds (issue 13).

An iterative algorithm's node is called once per round with the same selection: the node keeps the
frame and its cohorts (``Selections.rows``, by the data model's data version) and hands every round
the same two objects.  The groups a release forms on them (:func:`mipflow.node.controls.groups.level_groups`
and their value stamps, :func:`mipflow.node.controls.group_stamps.frame_group_stamps`) are a function of
the frame's rows, the cohorts' row and patient keys, the groupings the algorithm declares, the grouping
columns' variables, the stamped columns and the ledger key, and of nothing a round changes: a Cox
regression's twelve rounds formed them twelve times (about 40 ms a round at 20,000 rows).

This memo keeps them per **frame and cohorts objects** (alive: a weak reference to each, and the same
objects, never a reused ``id``) and per key of everything else they depend on.  It keeps the groups'
rows, never a decision: every control (the group memory, the stamps, the ledger) still checks the
groups on every round, against the memories as they are then.  A change of the rows is a new frame
(the frame cache reads again at a new data version), a new request or data model another key.  Frames
and cohorts are treated as immutable, as :mod:`mipflow.algorithms.prepared` treats frames; the kept
arrays are read-only.  The memo lives in the node's process and never leaves it.
"""
from __future__ import annotations

import dataclasses
import json
import threading
import weakref
from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np

#: Most entries kept (one per selection in use; a node serves few analyses at a time).
MAX_ENTRIES = 32
#: Most bytes of row and patient keys kept over all entries.
MAX_BYTES = 512 * 1024 ** 2

Built = tuple[list, np.ndarray, "dict[str, int] | None"]

_entries: OrderedDict[tuple[int, int, str], tuple[weakref.ReferenceType, weakref.ReferenceType, Built, int]] = \
    OrderedDict()
_lock = threading.Lock()


def memo_key(groupings: Sequence[Any], model: Any, data_model: str, stamped: Sequence[str],
             key: str | None) -> str | None:
    """Everything besides the frame and the cohorts the groups depend on (None: not kept, e.g. a grouping
    column the data model lacks, whose refusal is then raised by computing them)."""
    from mipflow.node.query.rowkeys import key_fingerprint

    try:
        columns = sorted({c for g in groupings for c in g.columns})
        variables = [repr(model.variable(c)) for c in columns if c in model.variables]
        return json.dumps([data_model, [repr(g) for g in groupings], variables, list(stamped),
                           None if key is None else key_fingerprint(key)])
    except Exception:  # noqa: BLE001 (any surprise: not kept, computed as before)
        return None


def _nbytes(built: Built) -> int:
    groups, union, _ = built
    return union.nbytes + sum(g.rows.nbytes + (0 if g.patients is None else g.patients.nbytes) for g in groups)


def _drop_when_freed(slot: tuple[int, int, str]) -> Callable[[weakref.ReferenceType], None]:
    def drop(ref: weakref.ReferenceType) -> None:
        with _lock:
            entry = _entries.get(slot)
            if entry is not None and (entry[0] is ref or entry[1] is ref):
                del _entries[slot]
    return drop


def _handed_out(built: Built) -> Built:
    """The kept groups as a caller gets them: new lists and stamp dicts (the arrays are read-only)."""
    groups, union, union_stamps = built
    return ([g if g.stamps is None else dataclasses.replace(g, stamps=dict(g.stamps)) for g in groups], union,
            None if union_stamps is None else dict(union_stamps))


def frame_groups(data: Any, cohorts: Any, key: str | None, build: Callable[[], Built]) -> Built:
    """``build()`` (the groups, their union and its stamps) for this frame, these cohorts and ``key``
    (:func:`memo_key`; None: built, not kept), computed once and kept between rounds."""
    if key is None:
        return build()
    slot = (id(data), id(cohorts), key)
    with _lock:
        entry = _entries.get(slot)
        if entry is not None and entry[0]() is data and entry[1]() is cohorts:
            _entries.move_to_end(slot)
            return _handed_out(entry[2])
    built = build()
    for g in built[0]:
        for keys in (g.rows, g.patients):
            if isinstance(keys, np.ndarray):
                keys.flags.writeable = False
    built[1].flags.writeable = False
    size = _nbytes(built)
    if size > MAX_BYTES:
        return built
    try:
        refs = (weakref.ref(data, _drop_when_freed(slot)), weakref.ref(cohorts, _drop_when_freed(slot)))
    except TypeError:  # not weakly referable: not kept
        return built
    kept = (built[0], built[1], None if built[2] is None else dict(built[2]))
    with _lock:
        _entries[slot] = (*refs, kept, size)
        while len(_entries) > MAX_ENTRIES or sum(e[3] for e in _entries.values()) > MAX_BYTES:
            _entries.popitem(last=False)
    return _handed_out(kept)


def clear() -> None:
    """Forget every entry (tests)."""
    with _lock:
        _entries.clear()
