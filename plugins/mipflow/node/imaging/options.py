"""The options of the Basic Application Level Confidentiality Profile (PS3.15 E.3), as chosen by a node.

:class:`DeidOptions` says which option columns of Table E.1-1 apply and how the node's
de-identifier behaves around the table (UID root, date shift bound, Patient's Name, which images
count as carrying burned-in text, the safe private allow-list, descriptor word lists);
:func:`options_from_settings` reads them from the node's ``dicom_*`` settings.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from pydicom.sr.coding import Code
from pydicom.sr.codedict import codes

from mipflow.node.home import NodeSettings
from mipflow.node.imaging.descriptors import parse_word_list
from mipflow.node.imaging.quarantine import DEFAULT_RISK_MODALITIES, DEFAULT_RISK_SOP_CLASSES
from mipflow.node.imaging.safe_private_table import safe_private_keys
from mipflow.node.imaging.uids import check_uid_root

__all__ = ["DeidOptions", "options_from_settings"]

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
            object.__setattr__(self, "uid_root", check_uid_root(self.uid_root))

    @property
    def columns(self) -> frozenset[str]:
        """The Table E.1-1 option columns that are selected."""
        return frozenset(col for flag, col in _FLAG_COLUMNS.items() if getattr(self, flag))

    @property
    def shifts_dates(self) -> bool:
        return self.retain_longitudinal_modified_dates

    @property
    def method_codes(self) -> list[Code]:
        """The CID 7050 codes of the profile and of the selected options, in the order they are recorded
        (De-identification Method Code Sequence)."""
        items = [codes.cid7050.BasicApplicationConfidentialityProfile]
        if self.pixels_cleaned:
            items.append(codes.cid7050.CleanPixelDataOption)
        items.extend(code for flag, code in _FLAG_CODES.items() if getattr(self, flag))
        return items


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
