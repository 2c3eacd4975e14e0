"""Encoding a de-identified instance as a DICOM Part 10 file, without ``save_as`` overheads.

:meth:`pydicom.dataset.Dataset.save_as` copies the file meta, validates it,
and writes every element through a per-element buffer.  For the instances the
de-identifier writes (file meta rebuilt by :mod:`mipflow.node.imaging.deidentify`,
output in the transfer syntax the instance was read in), most elements are
still the undecoded :class:`~pydicom.dataelem.RawDataElement` read from the
input, and their value bytes can be copied as they are.  :func:`encode_part10`
does that and hands every decoded element (and every sequence) to pydicom's
own :func:`~pydicom.filewriter.write_data_element`, so the bytes are those
``save_as(..., enforce_file_format=True)`` writes; the test suite checks that
they are identical.

Whenever the fast path's assumptions do not hold (no transfer syntax, an
encoding or character set that differs from the one the dataset was read in,
a private or unknown transfer syntax, elements of groups 0000/0002 in the
dataset), :func:`encode_part10` falls back to ``save_as``.
"""
from __future__ import annotations

import struct
from io import BytesIO

from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import EXPLICIT_VR_LENGTH_32, write_data_element
from pydicom.multival import MultiValue
from pydicom.uid import UID

__all__ = ["encode_part10"]

#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
#: String VRs pydicom writes without a character set (``write_string``/``write_UI``).
_PLAIN_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI"})
#: Text VRs pydicom encodes with the dataset's character set (``write_text``);
#: written here only for ASCII values under a character set that keeps ASCII as is.
_TEXT_VRS = frozenset({"LO", "SH"})
_ASCII_CHARSETS = frozenset({None, "", "ISO_IR 6", "ISO_IR 100", "ISO_IR 101", "ISO_IR 109",
                             "ISO_IR 110", "ISO_IR 144", "ISO_IR 148", "ISO_IR 192"})
#: Binary number VRs -> struct code (as pydicom's ``write_numbers``).
_NUMBER_VRS = {"US": "H", "UL": "L", "SS": "h", "SL": "l", "FL": "f", "FD": "d"}
_BYTES_VRS = frozenset({"OB", "OW"})
_PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF
_SEQ_DELIMITER = {True: b"\xfe\xff\xdd\xe0\x00\x00\x00\x00",
                  False: b"\xff\xfe\xe0\xdd\x00\x00\x00\x00"}
_META_VRS = {0x00020001: "OB", 0x00020002: "UI", 0x00020003: "UI", 0x00020010: "UI",
             0x00020012: "UI", 0x00020013: "SH", 0x00020016: "AE", 0x00020017: "AE",
             0x00020018: "AE", 0x00020026: "UR", 0x00020027: "UR", 0x00020028: "UR",
             0x00020100: "UI", 0x00020102: "OB"}


def _simple_value(elem: DataElement, order: str, ascii_text: bool) -> bytes | None:
    """The encoded value of a decoded element of a simple kind, as pydicom
    writes it, or ``None`` to let pydicom write the element."""
    vr = elem.VR
    value: Any = elem.value
    if elem.is_undefined_length or elem.is_buffered:
        return None
    if value is None or (type(value) is str and not value):
        return b""
    if vr in _PLAIN_STRING_VRS or (ascii_text and vr in _TEXT_VRS):
        if type(value) is not str:
            if not isinstance(value, (list, MultiValue)) \
                    or not all(type(v) is str for v in value):
                return None
            value = "\\".join(value)
        if vr in _TEXT_VRS and not value.isascii():
            return None
        if len(value) & 1:
            value += "\0" if vr == "UI" else " "
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            return None
    code = _NUMBER_VRS.get(vr)
    if code is not None:
        if type(value) in (int, float):
            return struct.pack(order + code, value)
        if isinstance(value, (list, MultiValue)) and all(type(v) in (int, float) for v in value):
            return struct.pack(f"{order}{len(value)}{code}", *value)
        return None
    if vr in _BYTES_VRS and type(value) is bytes:
        return value + b"\0" if len(value) & 1 else value
    return None


def _meta_bytes(ds: Dataset) -> bytes | None:
    """The File Meta Information group (explicit VR little endian), or ``None``
    when it holds anything this encoder does not write the way pydicom does."""
    meta = ds.file_meta
    parts = []
    for tag in sorted(meta.keys()):
        if tag == 0x00020000 or tag == 0x00020001:
            continue        # written below, as pydicom's enforce_standard does
        vr = _META_VRS.get(tag)
        if vr not in ("UI", "SH"):
            return None
        value = meta[tag].value
        if not isinstance(value, str):
            return None
        raw = value.encode("ascii")
        if len(raw) & 1:
            raw += b"\0" if vr == "UI" else b" "
        parts.append(struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(raw)) + raw)
    if 0x00020002 not in meta or 0x00020003 not in meta or 0x00020010 not in meta \
            or 0x00020012 not in meta:
        return None
    version = struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"
    body = version + b"".join(parts)
    group_length = struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(body))
    return group_length + body


def encode_part10(ds: Dataset) -> bytes:
    """The bytes of ``ds`` as a Part 10 file: zero preamble, ``DICM``, file meta, dataset.

    Equal to what ``ds.save_as(buffer, enforce_file_format=True)`` writes for
    a dataset with a 128-byte zero preamble and a complete file meta (SOP
    Class and Instance UIDs, transfer syntax, implementation class UID).
    """
    try:
        fast = _encode_fast(ds)
    except Exception:  # noqa: BLE001 - save_as below says what is wrong, or succeeds
        fast = None
    if fast is not None:
        return fast
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _encode_fast(ds: Dataset) -> bytes | None:
    meta = getattr(ds, "file_meta", None)
    preamble = getattr(ds, "preamble", None)
    if meta is None or (preamble is not None and preamble != b"\0" * 128):
        return None
    ts = meta.get("TransferSyntaxUID")
    if ts is None:
        return None
    ts = UID(str(ts))
    if ts.is_private or not ts.is_transfer_syntax or ts.is_deflated:
        return None
    implicit, little = ts.is_implicit_VR, ts.is_little_endian
    if ds.original_encoding != (implicit, little) \
            or ds.original_character_set != ds._character_set:
        return None
    if str(meta.get("MediaStorageSOPClassUID", "")) != str(ds.get("SOPClassUID", "")) \
            or str(meta.get("MediaStorageSOPInstanceUID", "")) != str(ds.get("SOPInstanceUID", "")):
        return None
    keys = sorted(ds.keys())
    if keys and (keys[0] >> 16) <= 2:
        return None
    head = _meta_bytes(ds)
    if head is None:
        return None
    if _PIXEL_DATA in ds:
        # what dcmwrite sets before writing (PS3.5 A.4)
        ds[_PIXEL_DATA].is_undefined_length = ts.is_compressed

    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    fp.write(b"\0" * 128 + b"DICM" + head)
    order = "<" if little else ">"
    short_fmt = struct.Struct(order + "HH2sH")
    long_fmt = struct.Struct(order + "HH2sHL")
    implicit_fmt = struct.Struct(order + "HHL")
    encodings = ds.get("SpecificCharacterSet", "iso8859")
    ascii_text = (encodings if isinstance(encodings, str) or encodings is None
                  else "\\".join(encodings)) in _ASCII_CHARSETS or encodings == "iso8859"
    get_item = ds.get_item
    write = fp.write
    for tag in keys:
        if tag & 0xFFFF == 0 and (tag >> 16) > 6:
            continue        # retired group length: not written (PS3.5 7.2)
        elem = get_item(tag)
        if isinstance(elem, RawDataElement) and (elem.VR is None or len(elem.VR) == 2):
            value = elem.value
            length = elem.length
            if value is None:
                if length not in (0, _UNDEFINED):
                    return None     # a deferred value: not read
                value = b""
            undefined = length == _UNDEFINED
            if tag == _PIXEL_DATA and undefined and not value.startswith(
                    b"\xfe\xff\x00\xe0" if little else b"\xff\xfe\xe0\x00"):
                return None     # pydicom raises for this: let it
            size = _UNDEFINED if undefined else len(value)
            group, element = tag >> 16, tag & 0xFFFF
            if implicit:
                write(implicit_fmt.pack(group, element, size))
            else:
                vr = elem.VR
                if vr is None:
                    return None
                if vr in _LONG_VRS:
                    write(long_fmt.pack(group, element, vr.encode(), 0, size))
                elif undefined or size > 0xFFFF:
                    return None     # pydicom rewrites these as UN: let it
                else:
                    write(short_fmt.pack(group, element, vr.encode(), size))
            write(value)
            if undefined:
                write(_SEQ_DELIMITER[little])
        else:
            vr = elem.VR
            value = None if vr == "SQ" else _simple_value(elem, order, ascii_text)
            if value is None:
                write_data_element(fp, elem, encodings)
                continue
            group, element = tag >> 16, tag & 0xFFFF
            if implicit:
                write(implicit_fmt.pack(group, element, len(value)))
            elif vr in _LONG_VRS:
                write(long_fmt.pack(group, element, vr.encode(), 0, len(value)))
            elif len(value) > 0xFFFF:
                return None
            else:
                write(short_fmt.pack(group, element, vr.encode(), len(value)))
            write(value)
    return fp.getvalue()
