"""The chain rule's window over a ledger (ADR 0030): which recorded sets a new one is checked with, and the one cap
on every window's atoms.  Names re-exported by :mod:`mipflow.node.controls.ledger`."""
from __future__ import annotations

from typing import Sequence

import numpy as np


#: The chain rule (ADR 0030) looks at the new cohorts with at most this many recorded ones ...
CHAIN_COHORTS = 32
#: ... found by this many rounds of "overlaps what is already in the family", most recent first ...
CHAIN_DEPTH = 3
#: ... and fewer (the oldest of them left out) while they form more atoms than this (the rank's cost
#: grows with the atoms: ``O(sets * atoms * rank)`` per prime; bench/ledger.py).
CHAIN_ATOMS = 2048


def bounded(old: list[np.ndarray], new: list[np.ndarray], limit: int = CHAIN_ATOMS) -> list[np.ndarray]:
    """The one cap on every chain rule's window (the cohort ledger's and the group memory's,
    :mod:`mipflow.node.controls.chain`; the weighted memory's, ADR 0058): the related sets ``old``
    (oldest first), or, when the family with ``new`` forms more than ``limit`` atoms, only the most
    recent ``k`` of them, ``k`` the most for which ``(atoms of new + 1) * 2**k - 1`` is at most ``limit``.

    ``k`` sets cut the new sets' atoms and the rows outside them into at most ``(atoms + 1) * 2**k``
    pieces, so the family keeps at most ``limit`` atoms however the old sets fall; a release of one set
    keeps ``floor(log2((limit + 1) / 2))`` old sets (10 at 2048), one of 12 disjoint cells 7, where
    dropping an old set per new set would keep none (ADR 0051, thirteenth review and issue 14 item 5).
    """
    import math

    from mipflow.node.controls.atoms import atoms_of

    if not old or atoms_of(old + new).sizes.size <= limit:
        return old
    parts = atoms_of(new).sizes.size + 1  # the new sets' atoms and the rows outside them
    keep = max(0, int(math.floor(math.log2((limit + 1) / parts))))
    return old[len(old) - keep:] if keep else []


def related(seeds: Sequence[np.ndarray], candidates: Sequence[np.ndarray], cap: int = CHAIN_COHORTS,
            depth: int = CHAIN_DEPTH) -> list[int]:
    """Indices of ``candidates`` (oldest first) that share members with the seeds, or with
    candidates taken before, up to ``cap``, most recent first, over ``depth`` rounds."""
    if not candidates:  # nothing recorded to relate to (a new ledger): no union of the seeds to build
        return []
    from mipflow.node.controls.ledger import _overlap, sorted_unique

    union = sorted_unique(np.concatenate(list(seeds))) if seeds else np.zeros(0, dtype=np.uint64)
    remaining = list(range(len(candidates)))[::-1]
    chosen: list[int] = []
    for _ in range(depth):
        hits = [i for i in remaining if _overlap(union, candidates[i])]
        if not hits:
            break
        take = hits[:cap - len(chosen)]
        chosen += take
        if len(chosen) >= cap:
            break
        taken = set(take)
        remaining = [i for i in remaining if i not in taken]
        union = sorted_unique(np.concatenate([union, *(candidates[i] for i in take)]))
    return sorted(chosen)
