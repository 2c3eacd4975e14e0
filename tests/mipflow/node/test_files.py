"""mipflow.node.files: landing files known by keyed path hashes and short references, never by name."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from mipflow.node.files import (DICOM_KIND, EHR_KIND, PATH_KEY_PREFIX, REF_LENGTH, file_label, file_ref, is_path_key,
                                landing_path_key, relative_name)
from tests.mipflow.node.ingest.test_landing import KEY, PATIENT_DIR


def test_path_keys_are_keyed_stable_and_kind_separated(tmp_path):
    root = tmp_path / "landing"
    path = root / PATIENT_DIR / f"export_{PATIENT_DIR}.csv"
    path.parent.mkdir(parents=True)
    path.write_text("x\n")
    key = landing_path_key(KEY, root, path, kind=EHR_KIND)
    assert key.startswith(PATH_KEY_PREFIX) and len(key) == len(PATH_KEY_PREFIX) + 64 and is_path_key(key)
    assert "Doe" not in key
    assert landing_path_key(bytes(32), root, path, kind=EHR_KIND) != key  # keyed, not a plain digest
    assert landing_path_key(KEY, root, path, kind=DICOM_KIND) != key      # one HMAC context per kind
    # the same file reached as a relative path or through a link gets the same key
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert landing_path_key(KEY, root, Path("landing") / PATIENT_DIR / path.name, kind=EHR_KIND) == key
    finally:
        os.chdir(cwd)
    link = tmp_path / "link"
    link.symlink_to(root)
    assert landing_path_key(KEY, root, link / PATIENT_DIR / path.name, kind=EHR_KIND) == key
    # below the root: the relative path; elsewhere: the absolute path, so a move changes the key
    assert relative_name(root, path) == f"{PATIENT_DIR}/{path.name}"
    outside = tmp_path / "elsewhere.csv"
    assert relative_name(root, outside) == outside.resolve().as_posix()
    assert landing_path_key(KEY, root, outside, kind=EHR_KIND) == landing_path_key(KEY, None, outside, kind=EHR_KIND)
    ref = file_ref(key)
    assert len(ref) == REF_LENGTH and ref == key[len(PATH_KEY_PREFIX):][:REF_LENGTH]
    assert file_label(ref) == f"file {ref}"
    with pytest.raises(ValueError):
        file_ref(str(path))
    with pytest.raises(ValueError, match="unknown manifest kind"):
        landing_path_key(KEY, root, path, kind="csv")
    assert not is_path_key(PATH_KEY_PREFIX + "Doe_John".ljust(64, "0"))
