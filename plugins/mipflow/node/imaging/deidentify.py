"""De-identification of DICOM instances per PS3.15 Annex E: the node's :class:`Deidentifier`.

A node de-identifies every image before anything derived from it leaves the
hospital.  :func:`deidentify_dataset` applies the Basic Application Level
Confidentiality Profile (the table in :mod:`mipflow.node.imaging.profile_table`)
with the options chosen in :class:`~mipflow.node.imaging.options.DeidOptions`,
recursively inside sequences; :func:`deidentify_file` reads, checks,
de-identifies and writes one file, or quarantines it.

One instance goes through these steps, each in its own module:

1. checks that may quarantine it (:mod:`mipflow.node.imaging.quarantine`);
2. the patient pseudonym and date shift from the original Patient ID
   (:class:`mipflow.node.deid.pseudonyms.Pseudonymiser`, the same as for the EHR rows);
3. the table, compiled once per options (:mod:`mipflow.node.imaging.plan`) and carried out
   element by element (:mod:`mipflow.node.imaging.actions`), with keyed UIDs
   (:mod:`mipflow.node.imaging.uids`) and shifted dates (:mod:`mipflow.node.imaging.dates`);
4. Patient ID and Patient's Name set to the pseudonym, the de-identification method
   recorded, and the file meta rebuilt: identifying file meta elements (Source/Sending/Receiving
   AE titles, private information) are dropped and the 128-byte preamble zeroed;
5. for a file, reading and the atomic write (:mod:`mipflow.node.imaging.fileio`).

Instances that cannot be de-identified safely are quarantined: nothing is
written and :attr:`DeidOutcome.reason` says why
(:class:`~mipflow.node.imaging.quarantine.Quarantine` lists the codes).

The module uses pydicom only; it imports nothing from Airflow.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

import mipflow
from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.node.imaging.actions import ProfileWalk, WalkContext
from mipflow.node.imaging.descriptors import DescriptorCleaner
from mipflow.node.imaging.fileio import content_hash, read_part10, write_atomic
from mipflow.node.imaging.options import DeidOptions
from mipflow.node.imaging.plan import compile_plan
from mipflow.node.imaging.profile_table import TABLE_EDITION
from mipflow.node.imaging.quarantine import Quarantine, QuarantineError, check
from mipflow.node.imaging.uids import UidMap

__all__ = [
    "DeidOutcome",
    "Deidentifier",
    "FileOutcome",
    "deidentify_dataset",
    "deidentify_file",
]

log = logging.getLogger(__name__)

#: File meta elements that are copied to the rebuilt file meta.
_META_KEEP = ("MediaStorageSOPClassUID", "TransferSyntaxUID")


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
# The engine
# --------------------------------------------------------------------------


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

    __slots__ = ("_options", "_plan", "_pseudonymiser", "_uids", "_profile")

    def __init__(self, key: bytes, options: DeidOptions | None = None) -> None:
        self._pseudonymiser = Pseudonymiser(key)      # validates the key
        self._options = options if options is not None else DeidOptions()
        self._plan = compile_plan(self._options)
        self._uids = UidMap(key, self._options.uid_root)
        self._profile = ProfileWalk(self._plan, self._options, self._uids, self._pseudonymiser)

    def __repr__(self) -> str:
        return f"Deidentifier(key=<hidden>, options={self._options!r})"

    def __reduce__(self) -> Any:
        raise TypeError("a Deidentifier holds the node secret and cannot be pickled")

    @property
    def options(self) -> DeidOptions:
        return self._options

    # -- identities ------------------------------------------------------------

    def new_uid(self, uid: str) -> str:
        """The replacement of ``uid`` (deterministic for the key and root; see
        :meth:`mipflow.node.imaging.uids.UidMap.new_uid`)."""
        return self._uids.new_uid(uid)

    def pseudonym(self, patient_id: str) -> str:
        """The EHR pseudonym of a Patient ID (see :class:`mipflow.node.deid.pseudonyms.Pseudonymiser`)."""
        return self._pseudonymiser.pseudonym(patient_id)


    # -- de-identification ---------------------------------------------------------

    def dataset(self, ds: Dataset, patient_pseudonym: str | None = None) -> DeidOutcome:
        """De-identify ``ds`` in place; see :func:`deidentify_dataset`."""
        try:
            with warnings.catch_warnings():
                # pydicom's value warnings quote values: keep them out of logs.
                warnings.simplefilter("ignore")
                check(ds, self._options)
                return self._deidentify(ds, patient_pseudonym)
        except QuarantineError as q:
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
                raise QuarantineError(Quarantine.NO_PATIENT_ID,
                                      "Patient ID (0010,0020) is empty: no pseudonym can be derived")
            patient_pseudonym = self._pseudonymiser.pseudonym(original_id)
        shift: int | None = None
        if opts.shifts_dates:
            if not original_id:
                raise QuarantineError(Quarantine.NO_PATIENT_ID,
                                      "Patient ID (0010,0020) is empty: no date shift can be derived")
            shift = self._pseudonymiser.date_shift_days(original_id, opts.max_shift_days)
        scrub = (DescriptorCleaner(ds, deny_words=opts.descriptor_deny_words,
                                   allow_words=opts.descriptor_allow_words)
                 if self._plan.needs_scrub else None)
        ctx = WalkContext(shift, scrub)

        self._walk(ds, ctx)

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
        seq = []
        for code in opts.method_codes:
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

    def _walk(self, ds: Dataset, ctx: WalkContext) -> None:
        """Apply the compiled table to ``ds`` and every item nested in it (:mod:`mipflow.node.imaging.actions`)."""
        self._profile.walk(ds, ctx, top=True)

    # -- files ---------------------------------------------------------------------

    def file(self, in_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
             patient_pseudonym: str | None = None) -> FileOutcome:
        """De-identify one file; see :func:`deidentify_file`."""
        src, dst = Path(in_path), Path(out_path)
        outcome = FileOutcome(dataset=None, in_path=src)

        def quarantine(reason: str, detail: str) -> FileOutcome:
            outcome.reason, outcome.detail = reason, detail
            # file names may carry patient names: the log names the content hash
            log.info("quarantined file sha256:%s: %s", content_hash(src), reason)
            return outcome

        try:
            size = src.stat().st_size
        except OSError as exc:
            return quarantine(Quarantine.UNREADABLE, f"cannot stat the file ({type(exc).__name__})")
        if size == 0:
            return quarantine(Quarantine.EMPTY_FILE, "the file is empty (0 bytes)")
        ds, reason, detail = read_part10(src)
        if ds is None:
            return quarantine(reason, detail)  # type: ignore[arg-type]
        result = self.dataset(ds, patient_pseudonym)
        outcome.actions = result.actions
        outcome.patient_pseudonym = result.patient_pseudonym
        outcome.date_shift_days = result.date_shift_days
        if result.dataset is None:
            return quarantine(result.reason, result.detail)  # type: ignore[arg-type]
        try:
            write_atomic(result.dataset, dst)
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
