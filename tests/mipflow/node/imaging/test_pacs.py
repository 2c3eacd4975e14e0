"""A real Orthanc PACS as the node's imaging source: pull, de-identify, load, commit the cursor.

Studies with injected identifiers go into a real Orthanc (Debian's binary, its own config on
loopback ports) through its REST API; the node pulls the stable ones through ``/changes``.
"""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from mipflow.exceptions import ConfigError
from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.node.imaging import pacs
from mipflow.node.imaging.pacs import PacsSource, commit_pacs, committed_cursor, load_pacs_source, run_pacs
from mipflow.node.imaging.stages import imaging_model
from mipflow.node.store.feature_store import open_store
from mipflow.node.store.tables import files_table, pacs_pulls_table
from tests.conftest import REPO_ROOT
from tests.mipflow.node.imaging.conftest import (
    NODE_KEY,
    PATIENTS,
    _uid,
    patient_instances,
    raw_identifiers,
    write_consent,
)
from tests.nodes import standard_home
from tests.orthanc import Orthanc, running_orthanc

BIRTH_DATE = "19230417"  # PHI_TOP's PatientBirthDate


def to_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def upload_patients(orthanc: Orthanc, *, study: str = "study", only: tuple[str, ...] | None = None) -> int:
    """Every instance of :data:`PATIENTS` (or of ``only``) into Orthanc by ``POST /instances``."""
    n = 0
    for p, (patient, (_, series)) in enumerate(PATIENTS.items()):
        if only and patient not in only:
            continue
        if study != "study":
            series = series[:1]
        for _, _, ds in patient_instances(p, patient, series, study=study):
            assert orthanc.upload(to_bytes(ds))["Status"] == "Success"
            n += 1
    return n


def pacs_home(tmp_path, orthanc: Orthanc, folder: str = "node"):
    home = standard_home(tmp_path / folder, "imaging_test")
    (home.root / "secret.key").write_text(NODE_KEY.hex() + "\n")
    home.set_setting("settle_seconds", "60")  # the pull's own files need no settling
    write_consent(home)
    (home.root / "secrets").mkdir()
    auth = home.root / "secrets" / "pacs.auth"
    auth.write_text(f"{orthanc.user}:{orthanc.password}\n")
    auth.chmod(0o600)
    (home.root / "pacs.json").write_text(json.dumps({
        "name": "main", "url": orthanc.url, "credentials": {"secret_file": "secrets/pacs.auth"}}))
    return home


def forbidden(orthanc: Orthanc) -> list[bytes]:
    values = raw_identifiers() + [BIRTH_DATE, orthanc.password]
    for patient in PATIENTS:
        values += [_uid(patient, "study2"), _uid(patient, "study2ct"), _uid(patient, "study2mr")]
    return [v.encode() for v in values]


def assert_nothing_identifying(home, orthanc: Orthanc, *texts: str) -> None:
    """No raw identifier in the store, staging, the landing file names or the given log texts."""
    bad = forbidden(orthanc)
    for path in [*(home.staging_dir.rglob("*")), home.root / "store.sqlite"]:
        if path.is_file():
            data = path.read_bytes()
            leaked = [v for v in bad if v in data]
            assert not leaked, (path.name, leaked[:3])
    for path in (home.landing_dir / "dicom" / "pacs").rglob("*"):
        assert not any(v.decode() in str(path.relative_to(home.landing_dir)) for v in bad)
    for text in texts:
        leaked = [v for v in bad if v.decode() in text]
        assert not leaked, leaked[:3]


def store_state(home) -> dict:
    store = open_store(home)
    model = imaging_model(store)
    with store.engine.connect() as conn:
        rows = sorted((r._pid, r._visit) for r in conn.execute(sa.select(store.model_table(model))))
        files = conn.execute(sa.select(sa.func.count()).select_from(files_table)).scalar()
        pulls = [dict(r._mapping) for r in conn.execute(sa.select(pacs_pulls_table)
                                                        .order_by(pacs_pulls_table.c.since))]
    return {"rows": rows, "files": files, "batches": len(store.batches()),
            "quarantined": len(store.quarantined()), "pulls": pulls,
            "cursor": committed_cursor(store, load_pacs_source(home))}


@pytest.fixture
def orthanc(tmp_path):
    with running_orthanc(tmp_path / "orthanc") as server:
        yield server


# -- configuration ----------------------------------------------------------------------------

@pytest.mark.parametrize("doc, message", [
    pytest.param({"url": "http://x:8042", "password": "s3cret"}, "must not hold credentials", id="password"),
    pytest.param({"url": "http://u:p@x:8042"}, "must not carry credentials", id="userinfo-in-url"),
    pytest.param({"url": "ftp://x"}, "REST URL", id="scheme"),
    pytest.param({"url": "http://x", "credentials": {"user": "u"}}, "exactly one of", id="inline-user"),
    pytest.param({"url": "http://x", "max_studies": 0}, "positive", id="max-studies"),
    pytest.param({"url": "http://x", "extra": 1}, "unknown key", id="unknown-key"),
])
def test_pacs_config_refuses_credentials_and_nonsense(doc, message):
    with pytest.raises(ConfigError, match=message) as err:
        PacsSource.from_dict(doc)
    assert "s3cret" not in str(err.value)


def test_secret_file_must_be_private(tmp_path):
    home = standard_home(tmp_path / "n", "imaging_test")
    (home.root / "pacs.auth").write_text("user:pw-secret\n")
    (home.root / "pacs.auth").chmod(0o644)
    source = PacsSource.from_dict({"url": "http://127.0.0.1:1", "credentials": {"secret_file": "pacs.auth"}})
    with pytest.raises(ConfigError, match="chmod 600") as err:
        pacs.pacs_credentials(source, home)
    assert "pw-secret" not in str(err.value)
    (home.root / "pacs.auth").chmod(0o600)
    assert pacs.pacs_credentials(source, home) == ("user", "pw-secret")


def test_wrong_password_is_refused_without_echo(tmp_path, orthanc):
    home = pacs_home(tmp_path, orthanc)
    (home.root / "secrets" / "pacs.auth").write_text("mipflow:not-the-password\n")
    with pytest.raises(pacs.PacsError, match="HTTP 401") as err:
        pacs.pull_pacs(home)
    assert "not-the-password" not in str(err.value) and orthanc.url not in str(err.value)


# -- the pull through the imaging chain ---------------------------------------------------------

def test_pull_loads_stable_studies_incrementally_and_leaks_nothing(tmp_path, orthanc, caplog):
    home = pacs_home(tmp_path, orthanc)
    caplog.set_level(logging.DEBUG)
    uploaded = upload_patients(orthanc)
    assert uploaded == 9
    orthanc.wait_stable()

    first = run_pacs(home)
    assert first["pull"]["studies"] == 4 and first["pull"]["instances"] == 9
    (commit,) = first["commits"]
    # every instance ends loaded, quarantined with its reason, or excluded for lack of consent
    assert commit["committed"] and commit["conserved"]
    assert (commit["loaded"], commit["quarantined"], commit["no_consent"], commit["failed"], commit["waiting"]) \
        == (5, 1, 3, 0, 0)
    assert sum(commit["reasons"].values()) == 1
    state = store_state(home)
    pseudo = Pseudonymiser(home.key())
    assert {pid for pid, _ in state["rows"]} == {pseudo.pseudonym("PHIPAT-A1"), pseudo.pseudonym("PHIPAT-B2")}
    assert len(state["rows"]) == 2 and state["files"] == 6  # files without consent are not registered
    assert state["cursor"] == first["pull"]["until"] > 0
    staged = [p for p in (home.staging_dir / "dicom").rglob("*.dcm")]
    assert len(staged) == 5
    assert_nothing_identifying(home, orthanc, caplog.text, json.dumps(first))

    # nothing new: nothing pulled, nothing changes
    again = run_pacs(home)
    assert again["pull"]["studies"] == 0 and again["pull"]["pull_id"] is None and again["commits"] == []
    assert store_state(home) == state

    # a new study later: only it is pulled and loaded
    assert upload_patients(orthanc, study="study2", only=("PHIPAT-B2",)) == 2
    orthanc.wait_stable()
    later = run_pacs(home)
    assert later["pull"]["since"] == state["cursor"] and later["pull"]["studies"] == 1
    assert later["pull"]["instances"] == 2
    assert later["commits"][0]["loaded"] == 2 and later["commits"][0]["committed"]
    after = store_state(home)
    assert len(after["rows"]) == 3 and after["files"] == 8 and after["cursor"] == later["pull"]["until"]
    assert_nothing_identifying(home, orthanc, caplog.text, json.dumps(later))


class Crash(RuntimeError):
    pass


def _raise(*_a, **_k):
    raise Crash("simulated crash")


@pytest.mark.parametrize("target", [
    pytest.param("mipflow.node.imaging.pipeline.run_imaging", id="after-download"),
    pytest.param("mipflow.node.imaging.pipeline.extract_and_load", id="after-deidentification"),
    pytest.param("mipflow.node.store.feature_store.FeatureStore.refresh_datasets", id="inside-load-transaction"),
    pytest.param("mipflow.node.imaging.pacs.account_instances", id="before-cursor-commit"),
])
def test_crash_then_rerun_loses_and_doubles_nothing(tmp_path, orthanc, monkeypatch, target):
    home = pacs_home(tmp_path, orthanc)
    upload_patients(orthanc)
    orthanc.wait_stable()
    reference = pacs_home(tmp_path, orthanc, "reference_home")
    expected = run_pacs(reference)
    with monkeypatch.context() as m:
        m.setattr(target, _raise)
        with pytest.raises(Crash):
            run_pacs(home)
    crashed = store_state(home)
    assert crashed["cursor"] is None  # the cursor moves only after the load committed
    rerun = run_pacs(home)
    assert [c["committed"] for c in rerun["commits"]] == [True]
    assert {k: rerun["commits"][0][k] for k in ("loaded", "quarantined", "no_consent", "failed")} == \
        {k: expected["commits"][0][k] for k in ("loaded", "quarantined", "no_consent", "failed")}
    state, ref = store_state(home), store_state(reference)
    assert len(state["rows"]) == len(ref["rows"]) == 2
    assert (state["files"], state["batches"], state["quarantined"]) == (ref["files"], ref["batches"],
                                                                         ref["quarantined"])
    assert state["cursor"] == ref["cursor"]
    assert len(list((home.staging_dir / "dicom").rglob("*.dcm"))) == 5
    assert run_pacs(home)["pull"]["pull_id"] is None


_KILLED = """
import os, sys
from mipflow.node.home import NodeHome
from mipflow.node.store.feature_store import FeatureStore
from mipflow.node.imaging.pacs import run_pacs
FeatureStore.refresh_datasets = lambda *a, **k: os._exit(9)   # killed inside the load's transaction
run_pacs(NodeHome(sys.argv[1]))
"""


def test_process_killed_in_load_transaction_then_cli_rerun(tmp_path, orthanc):
    home = pacs_home(tmp_path, orthanc)
    upload_patients(orthanc)
    orthanc.wait_stable()
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'plugins'}:{REPO_ROOT}", "PYTHONWARNINGS": "ignore"}
    killed = subprocess.run([sys.executable, "-c", _KILLED, str(home.root)], capture_output=True, text=True,
                            timeout=120, env=env)
    assert killed.returncode == 9, killed.stderr[-2000:]
    state = store_state(home)
    assert state["rows"] == [] and state["cursor"] is None and len(state["pulls"]) == 1
    out = subprocess.run([sys.executable, "-m", "mipflow.cli", "dicom", "pull", str(home.root)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["commits"][0]["committed"] and result["commits"][0]["loaded"] == 5
    state = store_state(home)
    assert len(state["rows"]) == 2 and state["files"] == 6 and state["cursor"] == result["pull"]["until"]
    assert_nothing_identifying(home, orthanc, out.stdout, out.stderr, killed.stdout, killed.stderr)


def test_commit_waits_while_instances_are_in_the_chain(tmp_path, orthanc):
    home = pacs_home(tmp_path, orthanc)
    upload_patients(orthanc, only=("PHIPAT-B2",))
    orthanc.wait_stable()
    pull = pacs.pull_pacs(home)
    assert pull["instances"] == 2
    (pending,) = commit_pacs(home)  # capture has not run: the instances are still waiting
    assert pending["waiting"] == 2 and not pending["committed"]
    assert committed_cursor(open_store(home), load_pacs_source(home)) is None


def test_changes_are_paged_and_max_studies_splits_pulls_that_commit_in_order(tmp_path, orthanc):
    home = pacs_home(tmp_path, orthanc)
    doc = json.loads((home.root / "pacs.json").read_text())
    (home.root / "pacs.json").write_text(json.dumps({**doc, "max_studies": 3}))
    upload_patients(orthanc)
    orthanc.wait_stable()
    source = load_pacs_source(home)
    client = pacs.OrthancClient(source, pacs.pacs_credentials(source, home))
    whole = [c["Seq"] for c in client.changes(0)]
    assert [c["Seq"] for c in client.changes(0, limit=4)] == whole and len(whole) > 8

    first = run_pacs(home)
    assert first["pull"]["studies"] == 3 and first["pull"]["until"] < whole[-1]
    second = run_pacs(home)
    assert second["pull"]["since"] == first["pull"]["until"] and second["pull"]["studies"] == 1
    assert second["pull"]["until"] == whole[-1]
    total = {k: first["commits"][0][k] + second["commits"][0][k] for k in ("loaded", "quarantined", "no_consent")}
    assert total == {"loaded": 5, "quarantined": 1, "no_consent": 3}
    state = store_state(home)
    assert [p["state"] for p in state["pulls"]] == ["committed", "committed"]
    assert state["cursor"] == whole[-1] and len(state["rows"]) == 2
