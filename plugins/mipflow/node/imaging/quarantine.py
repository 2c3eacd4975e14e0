"""What the de-identifier refuses: the quarantine reason codes and the checks made before it starts.

Instances that cannot be de-identified safely are quarantined: nothing is written and
:attr:`mipflow.node.imaging.deidentify.DeidOutcome.reason` says why (:class:`Quarantine` lists the
codes).  Reasons name attributes and codes only, never a value.  :func:`check` refuses, before any
change, DICOMDIRs, instances without a transfer syntax, truncated files, non-instances,
encapsulated documents (their content is opaque to the profile), images whose pixels may carry
burned-in text (Burned In Annotation ``YES``, or a risky modality or SOP class, unless
:attr:`~mipflow.node.imaging.options.DeidOptions.pixels_cleaned`) and malformed pixel data.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset

from mipflow.node.imaging.elements import peek

if TYPE_CHECKING:
    from mipflow.node.imaging.options import DeidOptions

__all__ = [
    "DEFAULT_RISK_MODALITIES",
    "DEFAULT_RISK_SOP_CLASSES",
    "DICOMDIR_SOP_CLASS",
    "Quarantine",
    "QuarantineError",
    "check",
]

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
#: The Media Storage Directory Storage SOP class (a DICOMDIR).
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


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


class QuarantineError(Exception):
    """An instance must not be de-identified: ``reason`` is a :class:`Quarantine` code, ``detail`` a sentence."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def check(ds: Dataset, options: DeidOptions) -> None:
    """Raise :class:`QuarantineError` if ``ds`` must not be de-identified under ``options``."""
    meta = getattr(ds, "file_meta", None)
    sop_class = str(peek(ds, 0x00080016, "") or "").strip("\0 ")
    meta_class = str(meta.get("MediaStorageSOPClassUID", "") or "") if meta else ""
    if DICOMDIR_SOP_CLASS in (sop_class, meta_class) or 0x00041220 in ds:
        raise QuarantineError(Quarantine.DICOMDIR,
                              "a DICOMDIR (media directory), not an instance")
    if meta is None or not meta.get("TransferSyntaxUID"):
        raise QuarantineError(Quarantine.NO_TRANSFER_SYNTAX,
                              "file meta information has no Transfer Syntax UID (0002,0010)")
    # only the last element read can be cut short: everything after it is missing
    for tag in list(ds.keys())[-1:]:
        raw = ds.get_item(tag)
        length = getattr(raw, "length", None)
        value = getattr(raw, "value", None)
        if (getattr(raw, "is_raw", False) and isinstance(value, bytes)
                and length not in (None, 0xFFFFFFFF) and len(value) < length):
            raise QuarantineError(Quarantine.TRUNCATED,
                                  f"element {tag} is shorter than its declared length "
                                  "(file truncated)")
    if not sop_class or not peek(ds, 0x00080018):
        raise QuarantineError(Quarantine.NOT_AN_INSTANCE,
                              "no SOP Class UID or SOP Instance UID: not a composite instance")
    if sop_class.startswith(_ENCAPSULATED_DOCUMENT_PREFIX) or "EncapsulatedDocument" in ds:
        raise QuarantineError(Quarantine.ENCAPSULATED_DOCUMENT,
                              "encapsulated document: its content cannot be de-identified")
    if not options.pixels_cleaned:
        if str(peek(ds, 0x00280301, "") or "").strip().upper() == "YES":
            raise QuarantineError(Quarantine.BURNED_IN_ANNOTATION,
                                  "Burned In Annotation (0028,0301) is YES")
        modality = str(peek(ds, 0x00080060, "") or "").strip().upper()
        if modality in options.risk_modalities or sop_class in options.risk_sop_classes:
            # Burned In Annotation "NO" is not trusted for these: devices
            # often leave it unset or wrong.
            raise QuarantineError(
                Quarantine.BURNED_IN_RISK,
                f"modality {modality or '?'} / SOP class {sop_class} commonly carries "
                "burned-in text; set pixels_cleaned once the pixels are cleaned",
            )
    if 0x7FE00010 in ds:
        _check_pixels(ds, meta)


def _check_pixels(ds: Dataset, meta: FileMetaDataset) -> None:
    """Raise :class:`QuarantineError` if the Pixel Data has no readable fragments or is shorter than its image."""
    ts = pydicom.uid.UID(str(meta.TransferSyntaxUID))
    data = peek(ds, 0x7FE00010)
    if data is None:
        return
    if ts.is_encapsulated:
        try:
            count = sum(1 for _ in pydicom.encaps.generate_fragments(data))
        except Exception:  # noqa: BLE001 - any parse failure is "malformed"
            count = -1
        if count <= 0:
            raise QuarantineError(Quarantine.MALFORMED_PIXEL_DATA,
                                  "encapsulated Pixel Data has no readable fragments")
        return
    try:
        rows, cols = int(peek(ds, 0x00280010)), int(peek(ds, 0x00280011))
        samples = int(peek(ds, 0x00280002, 1) or 1)
        bits = int(peek(ds, 0x00280100))
        frames = int(peek(ds, 0x00280008, 1) or 1)
    except (AttributeError, TypeError, ValueError):
        raise QuarantineError(Quarantine.MALFORMED_PIXEL_DATA,
                              "Pixel Data without usable Rows/Columns/Bits Allocated") from None
    expected = (rows * cols * samples * frames * bits + 7) // 8
    if len(data) < expected:
        raise QuarantineError(Quarantine.TRUNCATED,
                              f"Pixel Data holds {len(data)} bytes, {expected} expected")
