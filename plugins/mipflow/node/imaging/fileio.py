"""One DICOM file in and out of the de-identifier.

:func:`read_part10` reads a Part 10 file or says why not (a :class:`Quarantine` code and a
sentence), :func:`write_atomic` writes a de-identified instance through a temporary file and a
rename, and :func:`content_hash` is how logs name a file: file and folder names often carry
patient names.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from mipflow.node.imaging.part10 import encode_part10
from mipflow.node.imaging.quarantine import Quarantine

__all__ = ["content_hash", "read_part10", "write_atomic"]


def content_hash(path: Path) -> str:
    """SHA-256 of a file's bytes (how logs refer to a file), or ``"unreadable"``."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return "unreadable"
    return digest.hexdigest()


def read_part10(path: Path) -> tuple[Dataset | None, str | None, str | None]:
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


def write_atomic(ds: Dataset, dst: Path) -> None:
    """Write ``ds`` as a Part 10 file at ``dst`` (parents created) through a temporary file and a rename."""
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
