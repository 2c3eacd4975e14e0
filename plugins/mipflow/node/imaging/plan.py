"""The compiled plan: Table E.1-1 resolved, once per :class:`DeidOptions`, into an action per tag.

:func:`resolve_action` gives the action of one table row under the selected option columns; when
several selected options give a code, ``C`` wins over ``K`` (cleaning is the more protective).
Combined codes are reduced: ``X/Z``, ``X/D``, ``X/Z/D`` resolve to ``X``, ``Z/D`` to ``Z`` (there
is no per-IOD attribute-type lookup: these attributes are Type 3 in the common image IODs).
``X/Z/U*`` sequences (Referenced Image, Source Image) resolve to ``U``: they are kept with their
UIDs replaced and their items cleaned, so that derived images still point at their
(de-identified) sources.

:func:`compile_plan` turns the whole table into a :class:`Plan` (cached per options), which
:mod:`mipflow.node.imaging.actions` carries out.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

from mipflow.node.imaging.options import DeidOptions
from mipflow.node.imaging.profile_table import PRIVATE_ROW, ProfileRow, exact_rows, masked_rows
from mipflow.node.imaging.safe_private_table import safe_private_rows

__all__ = ["Plan", "compile_plan", "resolve_action"]

_OVERLAY_DATA_ROW = 0x60003000
_REDUCE = {"X/Z": "X", "X/D": "X", "X/Z/D": "X", "Z/D": "Z", "X/Z/U*": "U"}


def resolve_action(row: ProfileRow, columns: Iterable[str]) -> tuple[str, str]:
    """The action for ``row`` under the selected option ``columns``.

    Returns ``(action, fallback)``: ``action`` is one of ``X Z D K C U``;
    ``fallback`` is the basic action (combined codes reduced) used when a
    ``C`` cannot be carried out for a value.  When several selected options
    give a code, ``C`` wins over ``K`` (cleaning is the more protective).
    """
    basic = _REDUCE.get(row.basic, row.basic)
    given = {row.options[c] for c in columns if c in row.options}
    if "C" in given:
        return "C", basic
    if "K" in given:
        return "K", basic
    return basic, basic


@dataclass(frozen=True)
class Plan:
    """What to do with each element under one set of options.

    ``exact`` maps a tag to its action and ``fallback`` a ``C`` tag to its basic action;
    ``masked`` holds the repeating-group rows (overlays, curves) as ``(value, mask, action,
    fallback)``; ``private_action`` is ``X``, or ``C`` under Retain Safe Private.
    """

    exact: dict[int, str]
    fallback: dict[int, str]
    masked: tuple[tuple[int, int, str, str], ...]   # (value, mask, action, fallback)
    private_action: str                             # "X" or "C"
    drop_overlays: bool
    needs_scrub: bool
    remap_extra_uids: bool
    #: (group, creator, element byte) -> (VR, VM) of the table (None: any) of
    #: the private elements kept; empty unless Retain Safe Private is on.
    safe_private: dict[tuple[int, str, int], tuple[str | None, str | None]]


@lru_cache(maxsize=32)
def compile_plan(options: DeidOptions) -> Plan:
    """The :class:`Plan` of ``options`` (cached: options are frozen and hashable)."""
    columns = options.columns
    exact: dict[int, str] = {}
    fallback: dict[int, str] = {}
    for tag, row in exact_rows().items():
        action, basic = resolve_action(row, columns)
        exact[tag] = action
        if action == "C":
            fallback[tag] = basic
    masked = []
    for row in masked_rows():
        value, mask = row.value_and_mask
        action, basic = resolve_action(row, columns)
        masked.append((value, mask, action, basic))
    private_action, _ = resolve_action(PRIVATE_ROW, columns)
    # Overlay data cannot be cleaned, so a "C" falls back to removal.
    overlay_action = next(a for v, m, a, b in masked if v == _OVERLAY_DATA_ROW)
    # Text is cleaned (scrubbed) only under options whose column holds a "C"
    # for text attributes.
    needs_scrub = (options.clean_descriptors or options.clean_structured_content
                   or options.clean_graphics or options.retain_patient_characteristics)
    safe_private: dict[tuple[int, str, int], tuple[str | None, str | None]] = {}
    if private_action == "C":
        table = {row.key: (row.vr, row.vm) for row in safe_private_rows()}
        safe_private = {key: table.get(key, (None, None)) for key in options.safe_private}
    return Plan(exact=exact, fallback=fallback, masked=tuple(masked),
                private_action=private_action,
                drop_overlays=overlay_action in ("X", "C"),
                needs_scrub=needs_scrub, remap_extra_uids=not options.retain_uids,
                safe_private=safe_private)

