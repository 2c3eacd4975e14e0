"""Looking at DICOM element values without changing how the element is written.

An element read from a file stays a :class:`~pydicom.dataelem.RawDataElement` until something
decodes it, and :func:`mipflow.node.imaging.part10.encode_part10` copies a raw element's bytes as
they are.  The de-identifier's checks and its walk over the dataset look at values through these
helpers, which decode on the side where they can.
"""
from __future__ import annotations

from typing import Any

from pydicom.datadict import DicomDictionary
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.values import convert_value

__all__ = ["peek", "value_list", "vr_of"]

# Dictionary VRs of public tags (first VR of "US or SS"), for implicit-VR
# elements that have not been converted yet.
_DICT_VR: dict[int, str] = {tag: entry[0].split()[0] for tag, entry in DicomDictionary.items()}

_PEEK_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "US", "UL", "SS", "SL", "IS",
                       "OB", "OW"})


def peek(ds: Dataset, tag: int, default: Any = None) -> Any:
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


def vr_of(ds: Dataset, tag: int) -> str:
    """The VR of ``ds[tag]`` (the dictionary's for an implicit-VR or ``UN`` element), without decoding it."""
    raw = ds.get_item(tag)
    vr = getattr(raw, "VR", None)
    if vr and vr != "UN":
        return vr.split()[0]
    return _DICT_VR.get(tag, vr or "UN")


def value_list(value: Any) -> list[Any]:
    """An element value as a list: ``[]`` when empty, its items when multi-valued, else ``[value]``."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return list(value)
    return [value]
