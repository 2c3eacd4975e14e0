"""Carrying out the actions of PS3.15 Table E.1-1 on a dataset, recursively inside sequences.

How the actions are carried out
-------------------------------
``X``
    The element is removed.
``Z``
    The value is emptied (a sequence loses its items).  Top-level Patient's
    Name is set to the patient pseudonym instead (``Z`` allows a dummy value)
    unless :attr:`DeidOptions.patient_name` is ``"empty"``.
``D``
    A dummy value valid for the VR (``ANONYMIZED``, ``0``, ``19000101`` ...);
    UIDs get their keyed replacement, a sequence becomes one empty item,
    binary and unknown-VR values are removed.  Patient ID (``Z/D``) becomes
    the patient pseudonym.
``U``
    Each UID is replaced by a keyed, deterministic UID
    (:class:`mipflow.node.imaging.uids.UidMap`).
``K``
    Kept; a sequence is kept and the profile is applied to its items.
``C``
    Cleaned, depending on the VR: dates (DA, DT) are shifted by the
    patient's offset (:mod:`mipflow.node.imaging.dates`), times (TM) are kept,
    text is scrubbed of the identifying content (see
    :mod:`mipflow.node.imaging.descriptors`), UIDs are replaced, sequences are
    kept and cleaned recursively.  Anything else falls back to the basic action.

Combined codes are reduced by :mod:`mipflow.node.imaging.plan`.  Beyond the table, as the profile
asks for any attribute that may identify:

* every private element is removed, unless Retain Safe Private is chosen and
  the element is on the allow-list of :attr:`DeidOptions.safe_private` (by
  default Table E.3.10-1, :mod:`mipflow.node.imaging.safe_private_table`): its group
  and element byte must be listed under the Private Creator that reserves its
  block, and its VR must agree with the list (an implicit-VR ``UN`` value is
  decoded with the listed VR).  Kept UIDs are replaced like ``U``, kept
  sequences are cleaned inside, and a Private Creator stays only while its
  block keeps an element;
* group-length elements and the whole overlay group of a removed Overlay Data are removed;
* instance, frame-of-reference and event UIDs the table does not list
  (:data:`mipflow.node.imaging.uids.EXTRA_UID_KEYWORDS`) are replaced like ``U``;
* when dates are shifted, dates (DA, DT) the table does not list are
  shifted too, so that no unshifted date gives the offset away.

Top-level Patient ID and Patient's Name are left to the caller
(:class:`mipflow.node.imaging.deidentify.Deidentifier`); nested Patient IDs (other patients) get
their own pseudonym here.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.values import convert_value

from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.node.imaging.dates import shift_da, shift_dt
from mipflow.node.imaging.descriptors import DescriptorCleaner
from mipflow.node.imaging.elements import value_list, vr_of
from mipflow.node.imaging.options import DeidOptions
from mipflow.node.imaging.plan import Plan
from mipflow.node.imaging.uids import EXTRA_UID_TAGS, UidMap

__all__ = ["ProfileWalk", "WalkContext"]

_PATIENT_ID = 0x00100020
_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN", "CS"})
_FREE_TEXT_VRS = frozenset({"ST", "LT", "UT"})
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST",
                         "TM", "UC", "UI", "UR", "UT"})
_DUMMY_TEXT = "ANONYMIZED"
_DUMMY: dict[str, Any] = {
    "AE": _DUMMY_TEXT, "AS": "000Y", "CS": _DUMMY_TEXT, "DA": "19000101", "DS": "0",
    "DT": "19000101000000", "IS": "0", "LO": _DUMMY_TEXT, "LT": _DUMMY_TEXT, "PN": _DUMMY_TEXT,
    "SH": _DUMMY_TEXT, "ST": _DUMMY_TEXT, "TM": "000000", "UC": _DUMMY_TEXT, "UT": _DUMMY_TEXT,
    "UR": "urn:x-anonymized", "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0, "UL": 0, "US": 0,
    "SV": 0, "UV": 0,
}


_NUMBER = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")


def _fits(value: Any, vr: str, vm: str | None) -> bool:
    """True when a kept private value has the listed multiplicity and, for IS
    and DS, holds numbers only (a text hidden in a numeric slot is not kept)."""
    if vr in ("SQ", "OB", "OW", "UN") or vm is None:
        return True
    values = value_list(value)
    if vr in ("IS", "DS") and not all(_NUMBER.match(str(v)) for v in values):
        return False
    low, _, high = vm.partition("-")
    n = len(values)
    if n == 0:
        return True
    if high == "n":
        return n >= int(low)
    return int(low) <= n <= int(high or low)


def _creator_name(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).strip(" \0")


def _little_endian(ds: Dataset) -> bool:
    encoding = getattr(ds, "original_encoding", None) or (None, True)
    return encoding[1] is not False


class WalkContext:
    """The state of one instance's walk: its date shift, its text scrubber, what was done.

    Attributes
    ----------
    shift : int or None
        Days to shift dates by (modified-dates option), else ``None``.
    scrub : DescriptorCleaner or None
        The instance's text cleaner, when an option cleans text.
    actions : collections.Counter
        How many elements each action touched.
    free_text_depth : int
        How many cleaned (``C``) sequences enclose the current item: free text inside them is scrubbed.
    """

    __slots__ = ("shift", "scrub", "actions", "free_text_depth")

    def __init__(self, shift: int | None, scrub: DescriptorCleaner | None) -> None:
        self.shift = shift
        self.scrub = scrub
        self.actions: Counter = Counter()
        self.free_text_depth = 0


class ProfileWalk:
    """Applies one :class:`Plan` to datasets, in place.

    Parameters
    ----------
    plan : Plan
        The compiled table (:func:`mipflow.node.imaging.plan.compile_plan` of ``options``).
    options : DeidOptions
        The options the plan was compiled for.
    uids : UidMap
        The node's UID replacements.
    pseudonymiser : Pseudonymiser
        Gives nested Patient IDs their pseudonym.
    """

    __slots__ = ("_plan", "_options", "_uids", "_pseudonymiser")

    def __init__(self, plan: Plan, options: DeidOptions, uids: UidMap,
                 pseudonymiser: Pseudonymiser) -> None:
        self._plan = plan
        self._options = options
        self._uids = uids
        self._pseudonymiser = pseudonymiser

    def walk(self, ds: Dataset, ctx: WalkContext, top: bool = False) -> None:
        """Apply the plan to ``ds`` and, through its sequences, to every nested item.

        At the top level (``top``) the Patient ID is left for the caller to set.
        """
        plan = self._plan
        exact = plan.exact
        overlay_groups: set[int] = set()
        creators: list[int] = []
        for tag in list(ds.keys()):
            action = exact.get(tag)
            if action is None:
                group = tag >> 16
                if group & 1:
                    if 0x10 <= tag & 0xFFFF <= 0xFF:
                        creators.append(tag)    # decided once its block is done
                    else:
                        self._private(ds, tag, ctx)
                    continue
                if tag & 0xFFFF == 0:        # group length: obsolete, and wrong after edits
                    del ds[tag]
                    continue
                if 0x5000 <= group <= 0x60FF:
                    if plan.drop_overlays and 0x6000 <= group <= 0x601E:
                        overlay_groups.add(group)
                    for value, mask, m_action, m_fallback in plan.masked:
                        if tag & mask == value:
                            action = m_action
                            if action == "C":   # curves/overlays cannot be cleaned
                                action = m_fallback
                            break
                if action is None:
                    self._unlisted(ds, tag, ctx)
                    continue
            if tag == _PATIENT_ID:
                # Nested Patient IDs (other patients) get their own pseudonym;
                # the top-level one is set by the caller.
                if not top:
                    self._pseudonymise_nested(ds, tag, ctx)
                continue
            self._apply(ds, tag, action, ctx)
        for tag in creators:
            # a Private Creator stays only while its block keeps an element
            base = (tag & 0xFFFF0000) | ((tag & 0xFF) << 8)
            if not plan.safe_private or not any(base <= t <= base + 0xFF for t in ds.keys()):
                del ds[tag]
                ctx.actions["private"] += 1
        if overlay_groups:
            for tag in list(ds.keys()):
                if tag >> 16 in overlay_groups:
                    del ds[tag]
                    ctx.actions["X"] += 1

    def _unlisted(self, ds: Dataset, tag: int, ctx: WalkContext) -> None:
        vr = vr_of(ds, tag)
        if vr == "SQ":
            self._recurse(ds[tag], ctx)
        elif vr == "UI":
            if tag in EXTRA_UID_TAGS and self._plan.remap_extra_uids:
                self._remap(ds[tag], ctx)
        elif vr in ("DA", "DT"):
            if ctx.shift is not None:
                self._shift(ds, tag, ctx, "X")
        elif ctx.free_text_depth and vr in _FREE_TEXT_VRS and ctx.scrub is not None:
            self._clean_text(ds, tag, ctx, "X")

    def _private(self, ds: Dataset, tag: int, ctx: WalkContext) -> None:
        """A private data element (not a creator): kept if on the allow-list, else removed."""
        safe = self._plan.safe_private
        element = tag & 0xFFFF
        if safe and element > 0xFF:
            creator = ds.get((tag & 0xFFFF0000) | (element >> 8))
            if creator is not None:
                key = (tag >> 16, _creator_name(creator.value), element & 0xFF)
                if key in safe and self._keep_private(ds, tag, safe[key], ctx):
                    return
        del ds[tag]
        ctx.actions["private"] += 1

    def _keep_private(self, ds: Dataset, tag: int, listed: tuple[str | None, str | None],
                      ctx: WalkContext) -> bool:
        """Clean an allow-listed private element in place; False if it must go instead."""
        table_vr, table_vm = listed
        elem = ds[tag]
        vr = elem.VR
        if table_vr is not None and vr != table_vr:
            if vr != "UN" or table_vr == "SQ" or not isinstance(elem.value, bytes):
                return False
            try:        # implicit VR read without a dictionary entry: decode as listed
                raw = RawDataElement(elem.tag, table_vr, len(elem.value), elem.value, 0,
                                     True, _little_endian(ds))
                value = convert_value(table_vr, raw)
            except Exception:  # noqa: BLE001 - undecodable: not kept
                return False
            ds[tag] = elem = DataElement(tag, table_vr, value)
            vr = table_vr
        if not _fits(elem.value, vr, table_vm):
            return False
        if vr == "SQ":
            self._recurse(elem, ctx)
        elif vr == "UI":
            if not self._options.retain_uids:
                self._remap(elem, ctx)
        elif vr in _TEXT_VRS and ctx.scrub is not None:
            self._clean_text(ds, tag, ctx, "X")
            return tag in ds
        ctx.actions["safe-private"] += 1
        return True

    def _apply(self, ds: Dataset, tag: int, action: str, ctx: WalkContext) -> None:
        if action == "X":
            del ds[tag]
            ctx.actions["X"] += 1
            return
        if action == "K":
            if vr_of(ds, tag) == "SQ":
                self._recurse(ds[tag], ctx)
            return
        vr = vr_of(ds, tag)
        if action == "C" and vr == "TM":
            return          # times are kept: no need to decode them
        elem = ds[tag]
        vr = elem.VR.split()[0]
        if action == "Z":
            if vr == "SQ":
                elem.value = []
            else:
                elem.value = "" if vr in _STRING_VRS else None
            ctx.actions["Z"] += 1
        elif action == "D":
            self._dummy(ds, tag, vr, ctx)
        elif action == "U":
            if vr == "SQ":
                self._recurse(elem, ctx)
            elif vr == "UI":
                if not self._options.retain_uids:
                    self._remap(elem, ctx)
            else:
                self._dummy(ds, tag, vr, ctx)
        elif action == "C":
            fallback = self._plan.fallback.get(tag, "X")
            if vr == "SQ":
                ctx.free_text_depth += 1
                try:
                    self._recurse(elem, ctx)
                finally:
                    ctx.free_text_depth -= 1
                ctx.actions["C"] += 1
            elif vr in ("DA", "DT"):
                if ctx.shift is not None:
                    self._shift(ds, tag, ctx, fallback)
                elif self._options.retain_longitudinal_full_dates:
                    pass
                else:
                    self._apply(ds, tag, fallback, ctx)
            elif vr == "TM":
                pass
            elif vr == "UI":
                self._remap(elem, ctx)
            elif vr in _TEXT_VRS and ctx.scrub is not None:
                self._clean_text(ds, tag, ctx, fallback)
            else:
                self._apply(ds, tag, fallback, ctx)
        else:  # pragma: no cover - the plan holds no other codes
            raise AssertionError(action)

    def _dummy(self, ds: Dataset, tag: int, vr: str, ctx: WalkContext) -> None:
        elem = ds[tag]
        if vr == "SQ":
            elem.value = [Dataset()]
        elif vr == "UI":
            values = [self._uids.new_uid(v) for v in value_list(elem.value)] \
                or [self._uids.new_uid(str(tag))]
            elem.value = values if len(values) > 1 else values[0]
        elif vr in _DUMMY:
            elem.value = _DUMMY[vr]
        else:  # binary or unknown VR: no meaningful dummy
            del ds[tag]
            ctx.actions["X"] += 1
            return
        ctx.actions["D"] += 1

    def _remap(self, elem: Any, ctx: WalkContext) -> None:
        values = [self._uids.new_uid(v) for v in value_list(elem.value)]
        if values:
            elem.value = values if len(values) > 1 else values[0]
            ctx.actions["U"] += 1

    def _shift(self, ds: Dataset, tag: int, ctx: WalkContext, fallback: str) -> None:
        elem = ds[tag]
        values = value_list(elem.value)
        if not values:
            return
        shifter = shift_da if elem.VR == "DA" else shift_dt
        shifted = [shifter(str(v), ctx.shift) for v in values]  # type: ignore[arg-type]
        if any(s is None for s in shifted):
            self._apply(ds, tag, fallback if fallback != "K" else "X", ctx)
            return
        elem.value = shifted if len(shifted) > 1 else shifted[0]
        ctx.actions["shift"] += 1

    def _clean_text(self, ds: Dataset, tag: int, ctx: WalkContext, fallback: str) -> None:
        elem = ds[tag]
        values = value_list(elem.value)
        if not values:
            return
        assert ctx.scrub is not None
        cleaned = [ctx.scrub(str(v)) for v in values]
        cleaned = [c for c in cleaned if c]
        if not cleaned:
            self._apply(ds, tag, fallback if fallback not in ("K", "C") else "X", ctx)
            return
        elem.value = cleaned if len(cleaned) > 1 else cleaned[0]
        ctx.actions["C"] += 1

    def _pseudonymise_nested(self, ds: Dataset, tag: int, ctx: WalkContext) -> None:
        elem = ds[tag]
        value = str(elem.value or "").strip()
        elem.value = self._pseudonymiser.pseudonym(value) if value else None
        ctx.actions["D"] += 1

    def _recurse(self, elem: Any, ctx: WalkContext) -> None:
        value = elem.value
        if not value:
            return
        for item in value:
            if isinstance(item, Dataset):
                self.walk(item, ctx)
