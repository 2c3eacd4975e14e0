"""The Part 10 encoder writes exactly what pydicom's ``save_as`` writes."""
from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data.data_manager import DATA_ROOT
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mipflow.node.imaging.deidentify import Deidentifier
from mipflow.node.imaging.options import DeidOptions
from mipflow.node.imaging.part10 import _encode_fast, encode_part10
from tests.mipflow.node.imaging.conftest import KEY, inject_phi

OPTION_SETS = [
    pytest.param(DeidOptions(), id="basic"),
    pytest.param(DeidOptions(retain_longitudinal_modified_dates=True,
                             retain_patient_characteristics=True, clean_descriptors=True,
                             retain_safe_private=True), id="options"),
]


def _save_as(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        copy.deepcopy(ds).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _shipped_files() -> list[Path]:
    """pydicom's bundled test files, read from the package (``get_testdata_files`` would also try to download
    pydicom-data's files: nothing may download at run time, and on a machine without a route it waits ~15 s)."""
    return sorted((Path(DATA_ROOT) / "test_files").glob("*.dcm"))


def _deidentified(options: DeidOptions, inject: bool):
    engine = Deidentifier(KEY, options)
    for path in _shipped_files():
        if Path(path).stat().st_size > 1 << 20:
            continue        # large pixel data adds time, not cases
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path)
        except Exception:  # noqa: BLE001 - not every shipped file is a Part 10 file
            continue
        if inject:
            if "SOPClassUID" not in ds:
                continue
            inject_phi(ds)
        outcome = engine.dataset(ds)
        if outcome.dataset is not None:
            yield Path(path).name, outcome.dataset


@pytest.mark.parametrize("options", OPTION_SETS)
@pytest.mark.parametrize("inject", [False, True], ids=["as-shipped", "injected"])
def test_bytes_equal_save_as(options, inject):
    fast = 0
    checked = 0
    for name, ds in _deidentified(options, inject):
        expected = _save_as(ds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fast += _encode_fast(ds) is not None
            got = encode_part10(ds)
        assert got == expected, name
        checked += 1
    assert checked >= 10
    # the fast path, not the fallback, is what the comparison exercised
    assert fast >= checked * 0.8, (fast, checked)


def test_falls_back_for_a_dataset_built_in_memory():
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "ANONYMOUS"
    ds.Rows = 2
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    assert _encode_fast(ds) is None       # no original encoding: pydicom decides
    assert encode_part10(ds) == _save_as(ds)
    back = pydicom.dcmread(io.BytesIO(encode_part10(ds)))
    assert back.PatientName == "ANONYMOUS" and back.Rows == 2
