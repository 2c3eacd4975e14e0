"""De-identification of DICOM instances per PS3.15 Annex E.

A node de-identifies every image before anything derived from it leaves the
hospital.  :func:`deidentify_dataset` applies the Basic Application Level
Confidentiality Profile (the table in :mod:`mipflow.node.imaging.profile_table`)
with the options chosen in :class:`DeidOptions`, recursively inside
sequences; :func:`deidentify_file` reads, checks, de-identifies and writes
one file, or quarantines it.

How the actions of Table E.1-1 are carried out
-----------------------------------------------
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
    (:meth:`Deidentifier.new_uid`): the same original UID gives the same new
    UID for one key and root, so references inside sequences and across
    files of a study stay consistent.  Registered DICOM UIDs (SOP classes,
    transfer syntaxes, well-known frames of reference) are kept.
``K``
    Kept; a sequence is kept and the profile is applied to its items.
``C``
    Cleaned, depending on the VR: dates (DA, DT) are shifted by the
    patient's offset, times (TM) are kept, text is scrubbed of the
    identifying content (see :mod:`mipflow.node.imaging.descriptors`), UIDs
    are replaced, sequences are kept and cleaned recursively.  Anything else
    falls back to the basic action.
combined codes
    ``X/Z``, ``X/D``, ``X/Z/D`` resolve to ``X``, ``Z/D`` to ``Z`` (there is
    no per-IOD attribute-type lookup: these attributes are Type 3 in the
    common image IODs).  ``X/Z/U*`` sequences (Referenced Image, Source Image)
    are kept with their UIDs replaced and their items cleaned, so that
    derived images still point at their (de-identified) sources.

Beyond the table, as the profile asks for any attribute that may identify:

* every private element is removed, unless Retain Safe Private is chosen and
  the element is on the allow-list of :attr:`DeidOptions.safe_private` (by
  default Table E.3.10-1, :mod:`mipflow.node.imaging.safe_private_table`): its group
  and element byte must be listed under the Private Creator that reserves its
  block, and its VR must agree with the list (an implicit-VR ``UN`` value is
  decoded with the listed VR).  Kept UIDs are replaced like ``U``, kept
  sequences are cleaned inside, and a Private Creator stays only while its
  block keeps an element;
* group-length elements, the whole overlay group of a removed Overlay Data,
  and identifying file meta elements (Source/Sending/Receiving AE titles,
  private information) are removed; the file meta is rebuilt and the
  128-byte preamble zeroed;
* instance, frame-of-reference and event UIDs the table does not list
  (:data:`EXTRA_UID_KEYWORDS`) are replaced like ``U``;
* when dates are shifted, dates (DA, DT) the table does not list are
  shifted too, so that no unshifted date gives the offset away.

Quarantine
----------
Instances that cannot be de-identified safely are quarantined: nothing is
written and :attr:`DeidOutcome.reason` says why (:class:`Quarantine` lists
the codes).  Reasons name attributes and codes only, never a value.

The module uses pydicom only; it imports nothing from Airflow.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field, fields
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Literal

import pydicom
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID_dictionary
from pydicom.values import convert_value

import mipflow
from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.node.home import NodeSettings
from mipflow.node.imaging.descriptors import DescriptorCleaner, parse_word_list
from mipflow.node.imaging.part10 import encode_part10
from mipflow.node.imaging.profile_table import (
    PRIVATE_ROW,
    TABLE_EDITION,
    ProfileRow,
    exact_rows,
    masked_rows,
)
from mipflow.node.imaging.safe_private_table import safe_private_keys, safe_private_rows

__all__ = [
    "DEFAULT_RISK_MODALITIES",
    "DEFAULT_RISK_SOP_CLASSES",
    "EXTRA_UID_KEYWORDS",
    "DeidOptions",
    "DeidOutcome",
    "Deidentifier",
    "FileOutcome",
    "Quarantine",
    "deidentify_dataset",
    "deidentify_file",
    "options_from_settings",
]

log = logging.getLogger(__name__)

#: Modalities whose pixel data commonly carries burned-in text (screen
#: captures, ultrasound, photographs, documents): quarantined unless
#: :attr:`DeidOptions.pixels_cleaned` says their pixels were cleaned.
DEFAULT_RISK_MODALITIES: frozenset[str] = frozenset(
    {"US", "IVUS", "SC", "OT", "XC", "ES", "GM", "SM", "DOC", "OSS"}
)

#: SOP classes quarantined for the same reason, whatever Modality says.
DEFAULT_RISK_SOP_CLASSES: frozenset[str] = frozenset({
    "1.2.840.10008.5.1.4.1.1.7",        # Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.7.1",      # Multi-frame Single Bit SC
    "1.2.840.10008.5.1.4.1.1.7.2",      # Multi-frame Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",      # Multi-frame Grayscale Word SC
    "1.2.840.10008.5.1.4.1.1.7.4",      # Multi-frame True Color SC
    "1.2.840.10008.5.1.4.1.1.6",        # Ultrasound Image (retired)
    "1.2.840.10008.5.1.4.1.1.6.1",      # Ultrasound Image
    "1.2.840.10008.5.1.4.1.1.6.2",      # Enhanced US Volume
    "1.2.840.10008.5.1.4.1.1.6.3",      # Photoacoustic Image
    "1.2.840.10008.5.1.4.1.1.3",        # Ultrasound Multi-frame Image (retired)
    "1.2.840.10008.5.1.4.1.1.3.1",      # Ultrasound Multi-frame Image
    "1.2.840.10008.5.1.4.1.1.77.1.4",   # VL Photographic Image
    "1.2.840.10008.5.1.4.1.1.77.1.4.1",  # Video Photographic Image
})

#: Encapsulated documents (PDF, CDA, STL, OBJ, MTL): their content is opaque
#: to the profile, so they are quarantined.
_ENCAPSULATED_DOCUMENT_PREFIX = "1.2.840.10008.5.1.4.1.1.104."
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

#: UID attributes not listed in Table E.1-1 that still hold instance, frame
#: of reference or event identities: replaced like action ``U``.
EXTRA_UID_KEYWORDS: frozenset[str] = frozenset({
    "RTVCommunicationSOPInstanceUID", "PrivateRecordUID", "MultiFrameSourceSOPInstanceUID",
    "RadiopharmaceuticalAdministrationEventUID", "TargetFrameOfReferenceUID",
    "SOPInstanceUIDOfConcatenationSource", "VolumeFrameOfReferenceUID",
    "TableFrameOfReferenceUID", "ReferencedColorPaletteInstanceUID", "FindingsGroupUIDTrial",
    "ReferencedFindingsGroupUIDTrial", "RetrieveLocationUID", "RepositoryUniqueID",
    "HomeCommunityID", "AssertionUID", "ReferencedAssertionUID", "ReferencedFiducialUID",
    "VolumetricPresentationInputSetUID", "EquipmentFrameOfReferenceUID", "SelectorUIValue",
})

#: File meta elements that are copied to the rebuilt file meta.
_META_KEEP = ("MediaStorageSOPClassUID", "TransferSyntaxUID")

_PATIENT_ID = 0x00100020
_PATIENT_NAME = 0x00100010
_OVERLAY_DATA_ROW = 0x60003000
_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN", "CS"})
_FREE_TEXT_VRS = frozenset({"ST", "LT", "UT"})
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST",
                         "TM", "UC", "UI", "UR", "UT"})
_BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_DUMMY_TEXT = "ANONYMIZED"
_DUMMY: dict[str, Any] = {
    "AE": _DUMMY_TEXT, "AS": "000Y", "CS": _DUMMY_TEXT, "DA": "19000101", "DS": "0",
    "DT": "19000101000000", "IS": "0", "LO": _DUMMY_TEXT, "LT": _DUMMY_TEXT, "PN": _DUMMY_TEXT,
    "SH": _DUMMY_TEXT, "ST": _DUMMY_TEXT, "TM": "000000", "UC": _DUMMY_TEXT, "UT": _DUMMY_TEXT,
    "UR": "urn:x-anonymized", "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0, "UL": 0, "US": 0,
    "SV": 0, "UV": 0,
}
_UID_CONTEXT = b"dicom-uid:"
_MAX_UID = 64
_UID_ROOT_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

# Dictionary VRs of public tags (first VR of "US or SS"), for implicit-VR
# elements that have not been converted yet.
_DICT_VR: dict[int, str] = {tag: entry[0].split()[0] for tag, entry in DicomDictionary.items()}
_EXTRA_UID_TAGS: frozenset[int] = frozenset(
    tag for tag, entry in DicomDictionary.items() if entry[4] in EXTRA_UID_KEYWORDS
)


class Quarantine:
    """Quarantine reason codes (:attr:`DeidOutcome.reason`)."""

    EMPTY_FILE = "empty-file"
    NOT_DICOM = "not-dicom"
    NO_PREAMBLE = "no-preamble"
    UNREADABLE = "unreadable"
    TRUNCATED = "truncated"
    DICOMDIR = "dicomdir"
    NO_TRANSFER_SYNTAX = "no-transfer-syntax"
    NOT_AN_INSTANCE = "not-an-instance"
    BURNED_IN_ANNOTATION = "burned-in-annotation"
    BURNED_IN_RISK = "burned-in-risk"
    ENCAPSULATED_DOCUMENT = "encapsulated-document"
    MALFORMED_PIXEL_DATA = "malformed-pixel-data"
    NO_PATIENT_ID = "no-patient-id"
    PROCESSING_ERROR = "processing-error"
    WRITE_ERROR = "write-error"


class _Quarantined(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------

#: DeidOptions flag -> Table E.1-1 option column.
_FLAG_COLUMNS = {
    "retain_safe_private": "safe_private",
    "retain_uids": "uids",
    "retain_device_identity": "device",
    "retain_institution_identity": "institution",
    "retain_patient_characteristics": "patient_chars",
    "retain_longitudinal_full_dates": "full_dates",
    "retain_longitudinal_modified_dates": "modified_dates",
    "clean_descriptors": "clean_desc",
    "clean_structured_content": "clean_struct",
    "clean_graphics": "clean_graph",
}

#: DeidOptions flag -> CID 7050 code recorded in the method code sequence.
_FLAG_CODES = {
    "retain_safe_private": codes.cid7050.RetainSafePrivateOption,
    "retain_uids": codes.cid7050.RetainUidsOption,
    "retain_device_identity": codes.cid7050.RetainDeviceIdentityOption,
    "retain_institution_identity": codes.cid7050.RetainInstitutionIdentityOption,
    "retain_patient_characteristics": codes.cid7050.RetainPatientCharacteristicsOption,
    "retain_longitudinal_full_dates":
        codes.cid7050.RetainLongitudinalTemporalInformationFullDatesOption,
    "retain_longitudinal_modified_dates":
        codes.cid7050.RetainLongitudinalTemporalInformationModifiedDatesOption,
    "clean_descriptors": codes.cid7050.CleanDescriptorsOption,
    "clean_structured_content": codes.cid7050.CleanStructuredContentOption,
    "clean_graphics": codes.cid7050.CleanGraphicsOption,
}


@dataclass(frozen=True)
class DeidOptions:
    """Which profile options apply.  All off gives the plain Basic Profile.

    Attributes
    ----------
    retain_longitudinal_modified_dates : bool
        Shift dates (DA, DT) by the patient's secret offset
        (:meth:`mipflow.node.deid.pseudonyms.Pseudonymiser.date_shift_days` of the original
        Patient ID, at most ``max_shift_days``) instead of removing them.  With
        the same key and ``max_shift_days`` as the EHR profile, image dates
        line up with the shifted clinical dates.
    retain_longitudinal_full_dates : bool
        Keep dates unchanged (exclusive with the modified-dates option).
    retain_patient_characteristics : bool
        Keep sex, age, size, weight, ethnic group, smoking status, ...
    retain_device_identity : bool
        Keep device serial numbers, station names, detector IDs, ...
    retain_institution_identity : bool
        Keep institution name, address and department.
    retain_uids : bool
        Keep UIDs unchanged (not advisable across sites).
    retain_safe_private : bool
        Keep the private elements listed in ``safe_private``; all other private
        elements are removed either way.
    safe_private : frozenset of (int, str, int)
        ``(group, private creator, element byte)`` triples that are safe to
        keep, e.g. ``(0x0019, "SIEMENS MR HEADER", 0x0C)`` (B value).  By
        default the rows of PS3.15 Table E.3.10-1
        (:func:`mipflow.node.imaging.safe_private_table.safe_private_keys`).
    clean_descriptors : bool
        Keep descriptions and comments after removing identifying content
        from them (:class:`mipflow.node.imaging.descriptors.DescriptorCleaner`: the
        instance's names, IDs, dates and other identifying values, any date,
        time, telephone number, e-mail or web address, long digit runs, words
        after titles and identity labels, and the deny list).  The cleaning
        cannot find a name that appears nowhere else in the instance and
        looks like an ordinary word; an allow-list is stricter.
    descriptor_deny_words : frozenset of str
        Words always removed from cleaned text (compared in lower case).
    descriptor_allow_words : frozenset of str, optional
        When given, cleaned text keeps only these words (and short numbers).
    clean_structured_content, clean_graphics : bool
        Keep SR content and graphic annotations, applying the profile inside
        and scrubbing their free text as for ``clean_descriptors``.
    uid_root : str, optional
        The node's UID root; new UIDs are ``<root>.<digits>``.  By default
        they are ``2.25.<integer>`` (the UUID-derived root of PS3.5 B.2).
    max_shift_days : int
        Largest date shift in either direction.
    pixels_cleaned : bool
        The pixel data of burned-in-annotation images and of risky modalities
        was cleaned upstream: do not quarantine them (recorded as Clean Pixel
        Data Option).
    risk_modalities, risk_sop_classes : frozenset of str
        What counts as "may carry burned-in text".
    patient_name : {"pseudonym", "empty"}
        Patient's Name is set to the pseudonym, or emptied.
    """

    retain_longitudinal_modified_dates: bool = False
    retain_longitudinal_full_dates: bool = False
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_uids: bool = False
    retain_safe_private: bool = False
    safe_private: frozenset[tuple[int, str, int]] = field(default_factory=safe_private_keys)
    clean_descriptors: bool = False
    descriptor_deny_words: frozenset[str] = frozenset()
    descriptor_allow_words: frozenset[str] | None = None
    clean_structured_content: bool = False
    clean_graphics: bool = False
    uid_root: str | None = None
    max_shift_days: int = 365
    pixels_cleaned: bool = False
    risk_modalities: frozenset[str] = DEFAULT_RISK_MODALITIES
    risk_sop_classes: frozenset[str] = DEFAULT_RISK_SOP_CLASSES
    patient_name: Literal["pseudonym", "empty"] = "pseudonym"

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.type == "bool" and not isinstance(getattr(self, f.name), bool):
                raise TypeError(f"DeidOptions.{f.name} must be a bool")
        if self.retain_longitudinal_full_dates and self.retain_longitudinal_modified_dates:
            raise ValueError("the full-dates and modified-dates options exclude each other")
        if isinstance(self.max_shift_days, bool) or not isinstance(self.max_shift_days, int) \
                or self.max_shift_days < 1:
            raise ValueError("max_shift_days must be a whole number >= 1")
        if self.patient_name not in ("pseudonym", "empty"):
            raise ValueError("patient_name must be 'pseudonym' or 'empty'")
        for name in ("safe_private", "risk_modalities", "risk_sop_classes"):
            value = getattr(self, name)
            if not isinstance(value, frozenset):
                object.__setattr__(self, name, frozenset(value))
        for item in self.safe_private:
            if not (isinstance(item, tuple) and len(item) == 3
                    and isinstance(item[0], int) and item[0] & 1 and 0x0009 <= item[0] <= 0xFFFF
                    and isinstance(item[1], str) and item[1].strip()
                    and isinstance(item[2], int) and 0x00 <= item[2] <= 0xFF):
                raise ValueError(
                    "safe_private holds (odd group, private creator, element byte 0x00-0xFF) "
                    "triples"
                )
        object.__setattr__(self, "descriptor_deny_words",
                           parse_word_list(self.descriptor_deny_words))
        if self.descriptor_allow_words is not None:
            object.__setattr__(self, "descriptor_allow_words",
                               parse_word_list(self.descriptor_allow_words))
        if self.uid_root is not None:
            root = self.uid_root.rstrip(".")
            if not _UID_ROOT_RE.match(root) or len(root) > _MAX_UID - 12:
                raise ValueError(
                    "uid_root must be a dotted numeric UID prefix without leading zeros, "
                    f"at most {_MAX_UID - 12} characters"
                )
            object.__setattr__(self, "uid_root", root)

    @property
    def columns(self) -> frozenset[str]:
        """The Table E.1-1 option columns that are selected."""
        return frozenset(col for flag, col in _FLAG_COLUMNS.items() if getattr(self, flag))

    @property
    def shifts_dates(self) -> bool:
        return self.retain_longitudinal_modified_dates


def options_from_settings(settings: NodeSettings) -> DeidOptions:
    """The node's :class:`DeidOptions`, from its ``dicom_*`` settings (``HOME/settings.json``).

    Parameters
    ----------
    settings : NodeSettings
        The node's settings (:attr:`mipflow.node.home.NodeHome.settings`).
    """
    return DeidOptions(
        retain_longitudinal_modified_dates=bool(settings.dicom_retain_longitudinal_modified_dates),
        retain_patient_characteristics=bool(settings.dicom_retain_patient_characteristics),
        retain_device_identity=bool(settings.dicom_retain_device_identity),
        retain_safe_private=bool(settings.dicom_retain_safe_private),
        clean_descriptors=bool(settings.dicom_clean_descriptors),
        descriptor_deny_words=settings.dicom_descriptor_deny_words.split(","),
        descriptor_allow_words=(settings.dicom_descriptor_allow_words.split(",")
                                if settings.dicom_descriptor_allow_words.strip() else None),
        pixels_cleaned=bool(settings.dicom_pixels_cleaned),
        uid_root=settings.dicom_uid_root or None,
    )


# --------------------------------------------------------------------------
# The compiled plan: tag -> action, once per options
# --------------------------------------------------------------------------

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
class _Plan:
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
def _plan(options: DeidOptions) -> _Plan:
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
    return _Plan(exact=exact, fallback=fallback, masked=tuple(masked),
                 private_action=private_action,
                 drop_overlays=overlay_action in ("X", "C"),
                 needs_scrub=needs_scrub, remap_extra_uids=not options.retain_uids,
                 safe_private=safe_private)


# --------------------------------------------------------------------------
# Outcomes
# --------------------------------------------------------------------------


@dataclass
class DeidOutcome:
    """The result of de-identifying one instance.

    Attributes
    ----------
    dataset : pydicom.Dataset or None
        The de-identified dataset (the input, changed in place), or ``None``
        when quarantined.
    reason : str or None
        A :class:`Quarantine` code when quarantined.
    detail : str or None
        A sentence saying what was wrong (names attributes, never values).
    patient_pseudonym : str or None
        The Patient ID written to the output.
    date_shift_days : int or None
        The shift applied to dates, when the modified-dates option is on.
    actions : collections.Counter
        How many elements each action touched (``X``, ``Z``, ``D``, ``U``,
        ``C``, ``shift``, ``private``, ...).
    """

    dataset: Dataset | None
    reason: str | None = None
    detail: str | None = None
    patient_pseudonym: str | None = None
    date_shift_days: int | None = None
    actions: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def quarantined(self) -> bool:
        return self.reason is not None


@dataclass
class FileOutcome(DeidOutcome):
    """:class:`DeidOutcome` of one file, with where it was written."""

    in_path: Path | None = None
    out_path: Path | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_instance_uid: str | None = None


# --------------------------------------------------------------------------
# Value helpers
# --------------------------------------------------------------------------


def _shift_da(value: str, days: int) -> str | None:
    v = value.strip()
    if len(v) == 10 and v[4] == "." and v[7] == ".":   # ACR-NEMA YYYY.MM.DD
        v = v[:4] + v[5:7] + v[8:]
    if len(v) != 8 or not v.isdigit():
        return None
    try:
        d = date(int(v[:4]), int(v[4:6]), int(v[6:])) + timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{d.year:04d}{d.month:02d}{d.day:02d}"


def _shift_dt(value: str, days: int) -> str | None:
    v = value.strip()
    if len(v) < 8:
        return None
    head = _shift_da(v[:8], days)
    return None if head is None else head + v[8:]


_NUMBER = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")


def _fits(value: Any, vr: str, vm: str | None) -> bool:
    """True when a kept private value has the listed multiplicity and, for IS
    and DS, holds numbers only (a text hidden in a numeric slot is not kept)."""
    if vr in ("SQ", "OB", "OW", "UN") or vm is None:
        return True
    values = _values(value)
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


_PEEK_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "US", "UL", "SS", "SL", "IS",
                       "OB", "OW"})


def _peek(ds: Dataset, tag: int, default: Any = None) -> Any:
    """The value of ``ds[tag]`` without decoding the element in place.

    A raw element read from a file stays raw (so it is written back byte for
    byte); its value is decoded on the side for simple VRs, and through
    ``ds[tag]`` otherwise.
    """
    elem = ds.get_item(tag)
    if elem is None:
        return default
    if isinstance(elem, RawDataElement):
        vr = elem.VR if elem.VR and elem.VR != "UN" else _DICT_VR.get(tag)
        if vr in _PEEK_VRS and elem.value is not None:
            return convert_value(vr, elem)
        elem = ds[tag]
    return elem.value


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return list(value)
    return [value]


# --------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------


class _Context:
    __slots__ = ("shift", "scrub", "actions", "free_text_depth")

    def __init__(self, shift: int | None, scrub: DescriptorCleaner | None) -> None:
        self.shift = shift
        self.scrub = scrub
        self.actions: Counter = Counter()
        self.free_text_depth = 0


class Deidentifier:
    """A node's de-identifier: one key, one set of options, many instances.

    Parameters
    ----------
    key : bytes
        The node secret (the same one as for EHR pseudonyms, at least 32 bytes).
    options : DeidOptions, optional
        The profile options (default: Basic Profile only).

    Notes
    -----
    The instance is not pickled (it holds the key) and keeps no state between
    instances besides a cache of UID replacements, which is a pure function
    of the key and the root.
    """

    __slots__ = ("_key", "_options", "_plan", "_pseudonymiser", "_uid_prefix", "_uid_digits",
                 "_uid_cache")

    def __init__(self, key: bytes, options: DeidOptions | None = None) -> None:
        self._pseudonymiser = Pseudonymiser(key)      # validates the key
        self._key = bytes(key)
        self._options = options if options is not None else DeidOptions()
        self._plan = _plan(self._options)
        root = self._options.uid_root
        if root is None:
            self._uid_prefix, self._uid_digits = "2.25.", 39   # 128-bit integer
        else:
            self._uid_prefix = root + "."
            self._uid_digits = _MAX_UID - len(self._uid_prefix)
        self._uid_cache: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Deidentifier(key=<hidden>, options={self._options!r})"

    def __reduce__(self) -> Any:
        raise TypeError("a Deidentifier holds the node secret and cannot be pickled")

    @property
    def options(self) -> DeidOptions:
        return self._options

    # -- identities ------------------------------------------------------------

    def new_uid(self, uid: str) -> str:
        """The replacement of ``uid`` (deterministic for the key and root).

        Registered DICOM UIDs (transfer syntaxes, SOP classes, ...) are
        returned unchanged.
        """
        uid = str(uid).strip().rstrip("\0")
        hit = self._uid_cache.get(uid)
        if hit is not None:
            return hit
        if uid in UID_dictionary:
            new = uid
        else:
            digest = hmac.digest(self._key, _UID_CONTEXT + uid.encode("ascii", "replace"),
                                 "sha256")
            number = int.from_bytes(digest[:16], "big")
            if self._uid_digits < 39:
                number %= 10 ** self._uid_digits
            new = f"{self._uid_prefix}{number}"
        if len(self._uid_cache) > 100_000:
            self._uid_cache.clear()
        self._uid_cache[uid] = new
        return new

    def pseudonym(self, patient_id: str) -> str:
        """The EHR pseudonym of a Patient ID (see :class:`mipflow.node.deid.pseudonyms.Pseudonymiser`)."""
        return self._pseudonymiser.pseudonym(patient_id)

    # -- checks ------------------------------------------------------------------

    def check(self, ds: Dataset) -> None:
        """Raise :class:`_Quarantined` if ``ds`` must not be de-identified."""
        meta = getattr(ds, "file_meta", None)
        sop_class = str(_peek(ds, 0x00080016, "") or "").strip("\0 ")
        meta_class = str(meta.get("MediaStorageSOPClassUID", "") or "") if meta else ""
        if _DICOMDIR_SOP_CLASS in (sop_class, meta_class) or 0x00041220 in ds:
            raise _Quarantined(Quarantine.DICOMDIR,
                               "a DICOMDIR (media directory), not an instance")
        if meta is None or not meta.get("TransferSyntaxUID"):
            raise _Quarantined(Quarantine.NO_TRANSFER_SYNTAX,
                               "file meta information has no Transfer Syntax UID (0002,0010)")
        # only the last element read can be cut short: everything after it is missing
        for tag in list(ds.keys())[-1:]:
            raw = ds.get_item(tag)
            length = getattr(raw, "length", None)
            value = getattr(raw, "value", None)
            if (getattr(raw, "is_raw", False) and isinstance(value, bytes)
                    and length not in (None, 0xFFFFFFFF) and len(value) < length):
                raise _Quarantined(Quarantine.TRUNCATED,
                                   f"element {tag} is shorter than its declared length "
                                   "(file truncated)")
        if not sop_class or not _peek(ds, 0x00080018):
            raise _Quarantined(Quarantine.NOT_AN_INSTANCE,
                               "no SOP Class UID or SOP Instance UID: not a composite instance")
        if sop_class.startswith(_ENCAPSULATED_DOCUMENT_PREFIX) or "EncapsulatedDocument" in ds:
            raise _Quarantined(Quarantine.ENCAPSULATED_DOCUMENT,
                               "encapsulated document: its content cannot be de-identified")
        opts = self._options
        if not opts.pixels_cleaned:
            if str(_peek(ds, 0x00280301, "") or "").strip().upper() == "YES":
                raise _Quarantined(Quarantine.BURNED_IN_ANNOTATION,
                                   "Burned In Annotation (0028,0301) is YES")
            modality = str(_peek(ds, 0x00080060, "") or "").strip().upper()
            if modality in opts.risk_modalities or sop_class in opts.risk_sop_classes:
                # Burned In Annotation "NO" is not trusted for these: devices
                # often leave it unset or wrong.
                raise _Quarantined(
                    Quarantine.BURNED_IN_RISK,
                    f"modality {modality or '?'} / SOP class {sop_class} commonly carries "
                    "burned-in text; set pixels_cleaned once the pixels are cleaned",
                )
        if 0x7FE00010 in ds:
            self._check_pixels(ds, meta)

    @staticmethod
    def _check_pixels(ds: Dataset, meta: FileMetaDataset) -> None:
        ts = pydicom.uid.UID(str(meta.TransferSyntaxUID))
        data = _peek(ds, 0x7FE00010)
        if data is None:
            return
        if ts.is_encapsulated:
            try:
                count = sum(1 for _ in pydicom.encaps.generate_fragments(data))
            except Exception:  # noqa: BLE001 - any parse failure is "malformed"
                count = -1
            if count <= 0:
                raise _Quarantined(Quarantine.MALFORMED_PIXEL_DATA,
                                   "encapsulated Pixel Data has no readable fragments")
            return
        try:
            rows, cols = int(_peek(ds, 0x00280010)), int(_peek(ds, 0x00280011))
            samples = int(_peek(ds, 0x00280002, 1) or 1)
            bits = int(_peek(ds, 0x00280100))
            frames = int(_peek(ds, 0x00280008, 1) or 1)
        except (AttributeError, TypeError, ValueError):
            raise _Quarantined(Quarantine.MALFORMED_PIXEL_DATA,
                               "Pixel Data without usable Rows/Columns/Bits Allocated") from None
        expected = (rows * cols * samples * frames * bits + 7) // 8
        if len(data) < expected:
            raise _Quarantined(Quarantine.TRUNCATED,
                               f"Pixel Data holds {len(data)} bytes, {expected} expected")

    # -- de-identification ---------------------------------------------------------

    def dataset(self, ds: Dataset, patient_pseudonym: str | None = None) -> DeidOutcome:
        """De-identify ``ds`` in place; see :func:`deidentify_dataset`."""
        try:
            with warnings.catch_warnings():
                # pydicom's value warnings quote values: keep them out of logs.
                warnings.simplefilter("ignore")
                self.check(ds)
                return self._deidentify(ds, patient_pseudonym)
        except _Quarantined as q:
            return DeidOutcome(dataset=None, reason=q.reason, detail=q.detail)
        except Exception as exc:  # noqa: BLE001 - never crash on one bad instance
            log.warning("de-identification failed (%s)", type(exc).__name__)
            return DeidOutcome(dataset=None, reason=Quarantine.PROCESSING_ERROR,
                               detail=f"de-identification failed ({type(exc).__name__})")

    def _deidentify(self, ds: Dataset, patient_pseudonym: str | None) -> DeidOutcome:
        opts = self._options
        raw_pid = ds.get("PatientID")
        original_id = str(raw_pid).strip() if raw_pid not in (None, "") else ""
        if patient_pseudonym is None:
            if not original_id:
                raise _Quarantined(Quarantine.NO_PATIENT_ID,
                                   "Patient ID (0010,0020) is empty: no pseudonym can be derived")
            patient_pseudonym = self._pseudonymiser.pseudonym(original_id)
        shift: int | None = None
        if opts.shifts_dates:
            if not original_id:
                raise _Quarantined(Quarantine.NO_PATIENT_ID,
                                   "Patient ID (0010,0020) is empty: no date shift can be derived")
            shift = self._pseudonymiser.date_shift_days(original_id, opts.max_shift_days)
        scrub = (DescriptorCleaner(ds, deny_words=opts.descriptor_deny_words,
                                   allow_words=opts.descriptor_allow_words)
                 if self._plan.needs_scrub else None)
        ctx = _Context(shift, scrub)

        self._walk(ds, ctx, top=True)

        # Identity attributes of the top level.
        ds.PatientID = patient_pseudonym
        ds.PatientName = patient_pseudonym if opts.patient_name == "pseudonym" else ""
        self._mark(ds, shift)
        self._rebuild_meta(ds)
        return DeidOutcome(dataset=ds, patient_pseudonym=patient_pseudonym,
                           date_shift_days=shift, actions=ctx.actions)

    def _mark(self, ds: Dataset, shift: int | None) -> None:
        opts = self._options
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = [
            f"DICOM PS3.15 E.1 Basic Profile ({TABLE_EDITION} table)",
            f"mipflow {mipflow.__version__}",
        ]
        items = [codes.cid7050.BasicApplicationConfidentialityProfile]
        if opts.pixels_cleaned:
            items.append(codes.cid7050.CleanPixelDataOption)
        items.extend(code for flag, code in _FLAG_CODES.items() if getattr(opts, flag))
        seq = []
        for code in items:
            item = Dataset()
            item.CodeValue = code.value
            item.CodingSchemeDesignator = code.scheme_designator
            item.CodeMeaning = code.meaning
            seq.append(item)
        ds.DeidentificationMethodCodeSequence = seq
        if shift is not None:
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        elif opts.retain_longitudinal_full_dates:
            ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
        else:
            ds.LongitudinalTemporalInformationModified = "REMOVED"

    def _rebuild_meta(self, ds: Dataset) -> None:
        old = getattr(ds, "file_meta", None)
        meta = FileMetaDataset()
        if old is not None:
            for keyword in _META_KEEP:
                if keyword in old:
                    setattr(meta, keyword, getattr(old, keyword))
        if "SOPClassUID" in ds:
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
        if "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = f"MIPFLOW_{mipflow.__version__}"[:16]
        ds.file_meta = meta
        if hasattr(ds, "preamble"):
            ds.preamble = b"\0" * 128

    # -- the walk ----------------------------------------------------------------

    def _walk(self, ds: Dataset, ctx: _Context, top: bool = False) -> None:
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

    def _vr(self, ds: Dataset, tag: int) -> str:
        raw = ds.get_item(tag)
        vr = getattr(raw, "VR", None)
        if vr and vr != "UN":
            return vr.split()[0]
        return _DICT_VR.get(tag, vr or "UN")

    def _unlisted(self, ds: Dataset, tag: int, ctx: _Context) -> None:
        vr = self._vr(ds, tag)
        if vr == "SQ":
            self._recurse(ds[tag], ctx)
        elif vr == "UI":
            if tag in _EXTRA_UID_TAGS and self._plan.remap_extra_uids:
                self._remap(ds[tag], ctx)
        elif vr in ("DA", "DT"):
            if ctx.shift is not None:
                self._shift(ds, tag, ctx, "X")
        elif ctx.free_text_depth and vr in _FREE_TEXT_VRS and ctx.scrub is not None:
            self._clean_text(ds, tag, ctx, "X")

    def _private(self, ds: Dataset, tag: int, ctx: _Context) -> None:
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
                      ctx: _Context) -> bool:
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

    def _apply(self, ds: Dataset, tag: int, action: str, ctx: _Context) -> None:
        if action == "X":
            del ds[tag]
            ctx.actions["X"] += 1
            return
        if action == "K":
            if self._vr(ds, tag) == "SQ":
                self._recurse(ds[tag], ctx)
            return
        vr = self._vr(ds, tag)
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

    def _dummy(self, ds: Dataset, tag: int, vr: str, ctx: _Context) -> None:
        elem = ds[tag]
        if vr == "SQ":
            elem.value = [Dataset()]
        elif vr == "UI":
            values = [self.new_uid(v) for v in _values(elem.value)] or [self.new_uid(str(tag))]
            elem.value = values if len(values) > 1 else values[0]
        elif vr in _DUMMY:
            elem.value = _DUMMY[vr]
        else:  # binary or unknown VR: no meaningful dummy
            del ds[tag]
            ctx.actions["X"] += 1
            return
        ctx.actions["D"] += 1

    def _remap(self, elem: Any, ctx: _Context) -> None:
        values = [self.new_uid(v) for v in _values(elem.value)]
        if values:
            elem.value = values if len(values) > 1 else values[0]
            ctx.actions["U"] += 1

    def _shift(self, ds: Dataset, tag: int, ctx: _Context, fallback: str) -> None:
        elem = ds[tag]
        values = _values(elem.value)
        if not values:
            return
        shifter = _shift_da if elem.VR == "DA" else _shift_dt
        shifted = [shifter(str(v), ctx.shift) for v in values]  # type: ignore[arg-type]
        if any(s is None for s in shifted):
            self._apply(ds, tag, fallback if fallback != "K" else "X", ctx)
            return
        elem.value = shifted if len(shifted) > 1 else shifted[0]
        ctx.actions["shift"] += 1

    def _clean_text(self, ds: Dataset, tag: int, ctx: _Context, fallback: str) -> None:
        elem = ds[tag]
        values = _values(elem.value)
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

    def _pseudonymise_nested(self, ds: Dataset, tag: int, ctx: _Context) -> None:
        elem = ds[tag]
        value = str(elem.value or "").strip()
        elem.value = self._pseudonymiser.pseudonym(value) if value else None
        ctx.actions["D"] += 1

    def _recurse(self, elem: Any, ctx: _Context) -> None:
        value = elem.value
        if not value:
            return
        for item in value:
            if isinstance(item, Dataset):
                self._walk(item, ctx)

    # -- files ---------------------------------------------------------------------

    def file(self, in_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
             patient_pseudonym: str | None = None) -> FileOutcome:
        """De-identify one file; see :func:`deidentify_file`."""
        src, dst = Path(in_path), Path(out_path)
        outcome = FileOutcome(dataset=None, in_path=src)

        def quarantine(reason: str, detail: str) -> FileOutcome:
            outcome.reason, outcome.detail = reason, detail
            # file names may carry patient names: the log names the content hash
            log.info("quarantined file sha256:%s: %s", _content_hash(src), reason)
            return outcome

        try:
            size = src.stat().st_size
        except OSError as exc:
            return quarantine(Quarantine.UNREADABLE, f"cannot stat the file ({type(exc).__name__})")
        if size == 0:
            return quarantine(Quarantine.EMPTY_FILE, "the file is empty (0 bytes)")
        ds, reason, detail = _read(src)
        if ds is None:
            return quarantine(reason, detail)  # type: ignore[arg-type]
        result = self.dataset(ds, patient_pseudonym)
        outcome.actions = result.actions
        outcome.patient_pseudonym = result.patient_pseudonym
        outcome.date_shift_days = result.date_shift_days
        if result.dataset is None:
            return quarantine(result.reason, result.detail)  # type: ignore[arg-type]
        try:
            _write_atomic(result.dataset, dst)
        except Exception as exc:  # noqa: BLE001
            return quarantine(Quarantine.WRITE_ERROR,
                              f"the de-identified instance could not be written "
                              f"({type(exc).__name__})")
        out = result.dataset
        outcome.dataset = out
        outcome.out_path = dst
        outcome.study_uid = str(out.get("StudyInstanceUID", "") or "") or None
        outcome.series_uid = str(out.get("SeriesInstanceUID", "") or "") or None
        outcome.sop_instance_uid = str(out.get("SOPInstanceUID", "") or "") or None
        return outcome


def _content_hash(path: Path) -> str:
    """SHA-256 of a file's bytes (how logs refer to a file), or ``"unreadable"``."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return "unreadable"
    return digest.hexdigest()


def _read(path: Path) -> tuple[Dataset | None, str | None, str | None]:
    """Read a Part 10 file; ``(dataset, None, None)`` or ``(None, reason, detail)``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
        return ds, None, None
    except InvalidDicomError:
        pass
    except (EOFError, OSError, ValueError, KeyError, TypeError, NotImplementedError,
            AttributeError, IndexError, OverflowError) as exc:
        return None, Quarantine.UNREADABLE, f"pydicom cannot read the file ({type(exc).__name__})"
    # No preamble/DICM prefix: a bare dataset, or not DICOM at all?
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bare = pydicom.dcmread(path, force=True)
            plausible = any(0x0008 <= (t >> 16) <= 0x0028 for t in bare.keys()) and \
                "SOPClassUID" in bare
    except Exception:  # noqa: BLE001
        plausible = False
    if plausible:
        return None, Quarantine.NO_PREAMBLE, (
            "no 128-byte preamble and 'DICM' prefix: a bare dataset, not a Part 10 file")
    return None, Quarantine.NOT_DICOM, "not a DICOM file (no 'DICM' prefix at offset 128)"


def _write_atomic(ds: Dataset, dst: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = encode_part10(ds)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".deid-", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, dst)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# --------------------------------------------------------------------------
# Functional API
# --------------------------------------------------------------------------


def deidentify_dataset(
    ds: Dataset,
    *,
    key: bytes,
    options: DeidOptions | None = None,
    patient_pseudonym: str | None = None,
) -> DeidOutcome:
    """De-identify one instance in place.

    Parameters
    ----------
    ds : pydicom.Dataset
        A dataset read from a Part 10 file (with ``file_meta``).  It is changed
        in place; on quarantine it may be partly changed and must be dropped.
    key : bytes
        The node secret (at least 32 bytes).
    options : DeidOptions, optional
        Profile options; Basic Profile only by default.
    patient_pseudonym : str, optional
        The Patient ID to write.  By default the EHR pseudonym of the original
        Patient ID (``Pseudonymiser(key).pseudonym(PatientID)``), so that image
        features join the depersonalised clinical rows.

    Returns
    -------
    DeidOutcome
        With the dataset, or with a quarantine reason.  Never raises for a bad
        instance.
    """
    return Deidentifier(key, options).dataset(ds, patient_pseudonym)


def deidentify_file(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    key: bytes,
    options: DeidOptions | None = None,
    patient_pseudonym: str | None = None,
) -> FileOutcome:
    """Read, check, de-identify and write one DICOM file.

    The output is written atomically (temporary file, then rename) with a
    zeroed preamble and rebuilt file meta.  A quarantined input writes
    nothing: empty, non-DICOM, bare (no preamble), truncated, DICOMDIR,
    missing transfer syntax, burned-in annotation or risky modality,
    encapsulated document, malformed pixel data, no Patient ID.

    For many files, build one :class:`Deidentifier` and call its
    :meth:`~Deidentifier.file` method.
    """
    return Deidentifier(key, options).file(in_path, out_path, patient_pseudonym)
