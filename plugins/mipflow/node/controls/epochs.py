"""Consent epochs of the memories of releases (ADR 0061): the one way every memory sees a remembered set.

A node's **consent epoch** is the digest of the consent registry it last applied
(:func:`mipflow.node.controls.differencing.consent_epoch`); applying a changed registry moves it at every node,
whoever the change concerned.  Every memory of releases (the cohort ledger, the group memory from both sides, the
pooled bindings, the chain rules over them) remembers each set with the epoch it was released under, and decides
only on the **current rows and that public epoch** through :class:`EpochView`:

* a set remembered under **this** epoch is compared as remembered (its rows are current rows: a withdrawal would
  have moved the epoch);
* a set remembered under an **earlier** epoch is compared as **the rows of it still held** (:func:`still_held`: its
  keys that are current rows of its data model) -- the rows the change removed are left out at a holder and were
  never there at a non-holder, so the comparison is the same function of the current rows at both -- and it
  **loses the exact-repeat privilege**: every pairwise rule counts "the same rows still held" (0 apart) as near
  (:meth:`EpochView.near`; the difference between the release and such a repeat is what the change removed), and
  the chain rules see it with one **phantom unit** (:meth:`EpochView.chain_keys`: one key no row has, the same at
  every node), so that a combination of later releases rebuilding its rows still held isolates that unit and is
  refused, at a holder (where the unit is her row) and at a non-holder alike.

Nothing here reads a row's value or a count that depends on who was removed: a decision is a function of the
current keys and the epochs.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

#: ``data_model -> (sorted unique current row keys, sorted unique current patient keys or None)``; None: the node
#: no longer holds the data model (:func:`mipflow.node.controls.differencing.current_rows`).
Current = Callable[[str], "tuple[np.ndarray, np.ndarray | None] | None"]
#: Which keys of a remembered set: its rows or its patients.
ROWS, PATIENTS = 0, 1
#: A pairwise rule of a memory: ``rule(new, remembered, threshold)`` -> near (refuse).
Rule = Callable[[np.ndarray, np.ndarray, int], bool]


def still_held(keys: np.ndarray, current: np.ndarray | None) -> np.ndarray:
    """The sorted keys of an earlier release that are still current rows (``current`` sorted; None: not
    known, every key kept)."""
    if current is None or not len(keys):
        return keys
    if not len(current):
        return keys[:0]
    at = np.minimum(np.searchsorted(current, keys), len(current) - 1)
    return keys[current[at] == keys]


def same(new: np.ndarray, held: np.ndarray) -> bool:
    """Whether two sorted unique key sets are the same non-empty set (0 rows apart)."""
    return bool(len(held)) and len(new) == len(held) and bool(np.array_equal(new, held))


def phantom(data_model: str, keys: np.ndarray, which: int) -> np.uint64:
    """The phantom unit of a stale remembered set: a key derived from its data model, its keys and which keys they
    are (no row's: row keys are keyed 64-bit hashes, a collision has chance ``2**-64`` per row)."""
    h = hashlib.sha256(b"mipflow stale release\0" + data_model.encode() + bytes([which]))
    h.update(np.ascontiguousarray(keys, dtype="<u8").tobytes())
    return np.frombuffer(h.digest()[:8], dtype="<u8")[0].astype(np.uint64)


@dataclass
class EpochView:
    """The node's consent ``epoch`` and its data models' ``current`` rows, read at most once per data model for
    the step (None: not known; a stale set then keeps every key).  One per check."""

    epoch: str = ""
    current: Current | None = None
    _now: dict = field(default_factory=dict, repr=False)
    _held: dict = field(default_factory=dict, repr=False)  # id(keys), which -> (keys, held): one pass per set

    def stale(self, remembered: str | None) -> bool:
        """Whether a set remembered under epoch ``remembered`` ("" or None: before any registry) is of an
        earlier epoch than the node's."""
        return (remembered or "") != self.epoch

    def rows_now(self, data_model: str) -> tuple[np.ndarray, np.ndarray | None] | None:
        if data_model not in self._now:
            self._now[data_model] = None if self.current is None else self.current(data_model)
        return self._now[data_model]

    def held(self, keys: np.ndarray | None, data_model: str, which: int, remembered: str | None) -> np.ndarray | None:
        """``keys`` (rows or patients of a set remembered under ``remembered``) as every rule compares them: as
        remembered under this epoch, else those still held."""
        if keys is None or not self.stale(remembered):
            return keys
        cached = self._held.get((id(keys), which))
        if cached is not None and cached[0] is keys:
            return cached[1]
        now = self.rows_now(data_model)
        held = keys if now is None or now[which] is None else still_held(keys, now[which])
        self._held[(id(keys), which)] = (keys, held)  # the remembered keys kept with it: their id stays theirs
        return held

    def held_mask(self, keys: np.ndarray, data_model: str, which: int, remembered: str | None) -> np.ndarray | None:
        """Which of ``keys`` (any order) :meth:`held` keeps (None: all, a set of this epoch or rows not known),
        for memories that keep more than keys per row (the survival windows' times and levels)."""
        if not self.stale(remembered):
            return None
        now = self.rows_now(data_model)
        if now is None or now[which] is None:
            return None
        current = now[which]
        if not len(current):
            return np.zeros(len(keys), dtype=bool)
        at = np.minimum(np.searchsorted(current, keys), len(current) - 1)
        return current[at] == keys

    def near(self, rule: Rule, new: np.ndarray, keys: np.ndarray, data_model: str, which: int,
             remembered: str | None, threshold: int) -> bool:
        """A memory's pairwise ``rule`` between a new set and a remembered one, epoch-aware: on the keys still
        held, and for a stale set 0 apart is near too (no exact-repeat privilege)."""
        held = self.held(keys, data_model, which, remembered)
        if self.stale(remembered) and same(new, held):
            return True
        return rule(new, held, threshold)

    def chain_keys(self, keys: np.ndarray | None, data_model: str, which: int,
                   remembered: str | None) -> np.ndarray | None:
        """A remembered set as the chain rules see it: as remembered under this epoch; else its keys still held
        and one phantom unit (the same at every node)."""
        if keys is None or not self.stale(remembered):
            return keys
        held = self.held(keys, data_model, which, remembered)
        return np.union1d(held, np.array([phantom(data_model, keys, which)], dtype=np.uint64)).astype(np.uint64)
