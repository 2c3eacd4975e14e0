"""Capture (:mod:`mipflow.node.ingest.capture`): which landing files are new, known, empty or not yet
ready, and the consent registry (latest entry wins, only ``granted`` is ingested)."""
from __future__ import annotations

import hashlib
import os
import shutil
import time

import pandas as pd
import pytest

from mipflow.exceptions import InputFileError
from mipflow.node.ingest.capture import (
    ConsentRegistry, is_settled, landing_csv_files, landing_source, open_registry, read_head, resolve_consent,
    scan_landing, sha256_file,
)
from mipflow.node.files import EHR_KIND, landing_path_key
from mipflow.node.store.feature_store import FeatureStore
from tests.conftest import REPO_ROOT

KEY = b"k" * 32
PROFILE_DIR = REPO_ROOT / "include" / "schemas" / "profiles"
OLD = time.time() - 3600


def write(path, data: bytes, *, mtime: float = OLD):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def test_sha256_file_reads_in_blocks(tmp_path):
    data = os.urandom(3 * 1024 + 17)
    path = write(tmp_path / "x.bin", data)
    assert sha256_file(path, block_size=1024) == hashlib.sha256(data).hexdigest() == sha256_file(path)


def test_a_file_is_settled_once_untouched_for_the_settle_time(tmp_path):
    path = write(tmp_path / "x.csv", b"a\n", mtime=1000.0)
    assert not is_settled(path, 5, now=1004.0)
    assert is_settled(path, 5, now=1005.0)


@pytest.fixture
def store(db_url):
    store = FeatureStore(db_url)
    yield store
    store.dispose()


def test_scan_sorts_landing_files_into_new_known_empty_and_skipped(tmp_path, store):
    landing = tmp_path / "landing"
    new = write(landing / "a.csv", b"subjectcode,age\np1,40\n")
    known = write(landing / "src" / "b.csv", b"subjectcode,age\np2,50\n")
    empty = write(landing / "c.csv", b"")
    fresh = write(landing / "d.csv", b"subjectcode\np3\n", mtime=time.time())
    partial = write(landing / "e.csv.part", b"subjectcode\n")
    hidden = write(landing / ".f.csv", b"subjectcode\n")  # e.g. an editor's or rsync's temporary copy
    hidden_other = write(landing / ".g.swp", b"x")
    other = write(landing / "notes.txt", b"hello")
    write(landing / "dicom" / "g.csv", b"not an export\n")  # the imaging side is not scanned here
    with store.begin() as conn:
        store.register_file(conn, sha256=sha256_file(known), path=landing_path_key(KEY, landing, known, kind=EHR_KIND),
                            size=known.stat().st_size, kind=EHR_KIND, batch_id="b0")

    found, skipped = scan_landing(landing, store, settle_seconds=60)
    assert [(f.path, f.status) for f in found] == [(new, "new"), (empty, "empty"), (known, "known")]
    assert found[0].sha256 == sha256_file(new) and found[0].size == new.stat().st_size
    reasons = {s.path: s.reason for s in skipped}
    assert set(reasons) == {fresh, partial, hidden_other, other}
    assert hidden not in {f.path for f in found}  # a hidden CSV is left alone without a word
    assert reasons[fresh].startswith("modified less than 60s ago")
    assert "temporary name" in reasons[partial] and "temporary name" in reasons[hidden_other]
    assert "not a CSV export" in reasons[other]
    # a byte-identical copy under another name is the same file
    copy = write(landing / "z.csv", new.read_bytes())
    with store.begin() as conn:
        store.register_file(conn, sha256=sha256_file(new), path=landing_path_key(KEY, landing, new, kind=EHR_KIND),
                            size=new.stat().st_size, kind=EHR_KIND, batch_id="b1")
    found, _ = scan_landing(landing, store, settle_seconds=60)
    assert {f.path: f.status for f in found}[copy] == "known"


def test_a_missing_landing_folder_holds_nothing(tmp_path, store):
    assert scan_landing(tmp_path / "nowhere", store) == ([], [])


def consent_csv(tmp_path, rows, columns=("patient_id", "consent", "updated_at")) -> str:
    path = tmp_path / "consent.csv"
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


def test_the_latest_consent_entry_wins_and_only_granted_is_ingested(tmp_path):
    registry = ConsentRegistry.load(consent_csv(tmp_path, [
        ("p1", "granted", "2026-01-02"), ("p1", "withdrawn", "2026-03-01"), ("p1", "granted", "2026-02-01"),
        ("p2", " Granted ", "2026-01-01"), ("p3", "refused", "2026-01-01"), ("p4", "withdrawn", "2026-01-01"),
        ("p4", "granted", "2026-05-01"),
    ]))
    assert len(registry) == 4
    mask = registry.granted(pd.Series(["p1", " p2", "p3", "p4", "p5", None]))
    assert mask.tolist() == [False, True, False, True, False, False]  # p5 is not in the registry: no consent
    assert registry.withdrawn() == ["p1", "p3"]
    assert "p1" not in repr(registry) and repr(registry) == "ConsentRegistry(4 patients)"


def test_without_updated_at_the_last_line_wins(tmp_path):
    registry = ConsentRegistry.load(consent_csv(tmp_path, [("p1", "granted"), ("p1", "withdrawn")],
                                                columns=("patient_id", "consent")))
    assert registry.withdrawn() == ["p1"]


@pytest.mark.parametrize("content, message", [
    pytest.param("patient_id,state\np1,granted\n", r"lacks column\(s\) \['consent'\]", id="missing-column"),
    pytest.param("patient_id,consent\np1,maybe\n", r"unknown consent states \['maybe'\]", id="unknown-state"),
    pytest.param("", "not a readable CSV", id="empty-file"),
])
def test_a_bad_consent_registry_is_an_input_error(tmp_path, content, message):
    path = tmp_path / "consent.csv"
    path.write_text(content)
    with pytest.raises(InputFileError, match=message):
        ConsentRegistry.load(path)


def test_no_registry_named_means_none_and_a_missing_one_is_an_error(tmp_path):
    assert open_registry(None) is None
    with pytest.raises(InputFileError, match="does not exist"):
        open_registry(tmp_path / "absent.csv")


def test_read_head_refuses_text_in_another_encoding_and_names_the_file_by_its_label(tmp_path):
    latin = write(tmp_path / "Doe_Jane.csv", "name\nJosé\n".encode("latin-1"))
    read_head(latin, "latin-1")
    with pytest.raises(InputFileError, match=r"^file 3f2a: not valid utf-8 text \(byte offset 8\)") as info:
        read_head(latin, "utf-8", "file 3f2a")
    assert "Doe_Jane" not in str(info.value)
    # a multi-byte character cut by the end of the first 64 KiB block is not an error
    cut = write(tmp_path / "cut.csv", b"a" * ((1 << 16) - 1) + "é".encode() + b"\n")
    read_head(cut, "utf-8")
    with pytest.raises(InputFileError, match="cannot be read"):
        read_head(tmp_path / "absent.csv", "utf-8")


def test_the_consent_registry_named_else_the_homes_else_none(node_home, tmp_path):
    assert resolve_consent(node_home, None) is None  # no registry: everyone consented
    pd.DataFrame({"patient_id": ["p1", "p2"], "consent": ["granted", "withdrawn"]}).to_csv(
        node_home.consent_path, index=False)
    assert resolve_consent(node_home, None).withdrawn() == ["p2"]
    named = tmp_path / "other.csv"
    pd.DataFrame({"patient_id": ["p3"], "consent": ["refused"]}).to_csv(named, index=False)
    assert resolve_consent(node_home, named).withdrawn() == ["p3"]
    with pytest.raises(InputFileError, match="does not exist"):
        resolve_consent(node_home, tmp_path / "absent.csv")


def test_a_landing_folder_is_a_source_only_with_its_profile(node_home):
    shutil.copyfile(PROFILE_DIR / "hospital_b.json", node_home.profiles_dir / "hospital_b.json")
    assert landing_source(node_home, node_home.landing_dir / "hospital_b" / "export.csv") == "hospital_b"
    assert landing_source(node_home, node_home.landing_dir / "hospital_b" / "2026" / "export.csv") == "hospital_b"
    # a folder without a profile may carry a patient's name: it is no source
    assert landing_source(node_home, node_home.landing_dir / "Doe_Jane" / "export.csv") is None
    assert landing_source(node_home, node_home.landing_dir / "export.csv") is None


def test_landing_csv_files_leave_out_the_imaging_side(node_home):
    for rel in ("a.csv", "src/b.csv", "dicom/c.csv", "dicom/x/1.dcm", "notes.txt"):
        path = node_home.landing_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert [p.relative_to(node_home.landing_dir).as_posix() for p in landing_csv_files(node_home)] == [
        "a.csv", "notes.txt", "src/b.csv"]
