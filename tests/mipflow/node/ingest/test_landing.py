"""Landing files named without their names (mipflow.node.files) through the EHR pipeline: the CLI path,
the landing run and the DAG stages, on SQLite and PostgreSQL; and the migration of older stores that
hold raw landing paths."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from mipflow import cli
from mipflow.node import ops
from mipflow.node.ingest import stages
from mipflow.node.home import NodeHome
from mipflow.exceptions import StoreError
from mipflow.node.files import DICOM_KIND, EHR_KIND, REF_LENGTH, file_ref, is_path_key, landing_path_key
from mipflow.node.store.feature_store import open_store
from mipflow.node.store.tables import PATH_NAMES_MARKER, batches_table, files_table, meta_table
from mipflow.demo.synth import generate_export, write_export
from tests.conftest import REPO_ROOT
from tests.mipflow.node.ingest.test_pipeline import all_text
from tests.nodes import standard_home

STROKE = REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json"
PROFILE = REPO_ROOT / "include" / "schemas" / "profiles" / "hospital_a.json"
KEY = bytes(range(32))

#: Folder and file names as hospitals sometimes write them: patient names and record numbers.
PATIENT_DIR = "Doe_John_MRN8812345"
OTHER_DIR = "Roe_Jane_MRN7733104"
FORBIDDEN = ("Doe", "John", "MRN8812345", "8812345", "Roe_Jane", "MRN7733104", "7733104", "export_")


def make_home(tmp_path, db_url="") -> NodeHome:
    home = standard_home(tmp_path / "hospital_a", "hospital_a", db_url)
    ops.add_data_model(home, STROKE)
    shutil.copyfile(PROFILE, home.profiles_dir / "hospital_a.json")
    home.set_setting("settle_seconds", "0")
    home.set_setting("default_data_model", "stroke:0.1")
    return home


def logged(caplog) -> str:
    return "\n".join([r.getMessage() for r in caplog.records] + [r.exc_text or "" for r in caplog.records])


def assert_nameless(text: str, home: NodeHome, where: str) -> None:
    for value in (*FORBIDDEN, str(home.landing_dir)):
        assert value not in text, f"{value!r} in {where}"


def manifest(store) -> list[dict]:
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(files_table).order_by(files_table.c.first_seen))]


def ehr_key(home: NodeHome, path: Path) -> str:
    return landing_path_key(home.key(), home.landing_dir, path, kind=EHR_KIND)


# --------------------------------------------------------------------------
# the manifest
# --------------------------------------------------------------------------

def test_the_manifest_refuses_raw_paths(tmp_path):
    home = make_home(tmp_path)
    store = open_store(home)
    with store.begin() as conn, pytest.raises(StoreError, match="never a raw path"):
        store.register_file(conn, sha256="0" * 64, path=f"/landing/{PATIENT_DIR}/a.csv", size=1,
                            kind=EHR_KIND, batch_id="b")


# --------------------------------------------------------------------------
# the pipeline: CLI path and landing run
# --------------------------------------------------------------------------

def test_file_and_folder_names_reach_neither_store_nor_logs(tmp_path, db_url, caplog, capsys):
    home = make_home(tmp_path, db_url)
    folder = home.landing_dir / "hospital_a" / PATIENT_DIR          # a profiled source, a patient's folder
    export = write_export(folder / f"export_{PATIENT_DIR}.csv",
                          generate_export("hospital_a", 40, seed=3, bad_rows=6))
    empty = folder / "export_Doe_John_empty.csv"
    empty.write_bytes(b"")
    # a folder without a profile: read with the default (MIP) profile, which this export does not fit
    unfit = write_export(home.landing_dir / OTHER_DIR / f"export_{OTHER_DIR}.csv",
                         generate_export("hospital_a", 5, seed=4))
    (folder / "export_Doe_John_next.csv.part").write_text("partial")
    caplog.set_level(logging.DEBUG)

    summary = ops.run_landing(home)
    refs = {Path(r["path"]): r["file"] for r in ops.file_references(home)}
    by_ref = {f["file"]: f for f in summary["files"]}
    loaded, nothing, failed = by_ref[refs[export]], by_ref[refs[empty]], by_ref[refs[unfit]]
    assert loaded["status"] == "loaded" and loaded["conserved"], loaded["message"]
    counts = loaded["counts"]
    assert counts["rows_in"] == 46 and counts["quarantined"] >= 5
    assert counts["rows_in"] == counts["loaded"] + counts["quarantined"] + counts["no_consent"] + counts["duplicates"]
    assert nothing["status"] == "empty" and nothing["conserved"]
    assert failed["status"] == "failed" and failed["conserved"]
    assert failed["message"].startswith(f"file {refs[unfit]}: ") and "patient identifier" in failed["message"]
    skipped = [f for f in summary["files"] if f["status"] == "skipped"]
    assert len(skipped) == 1 and "still being written" in skipped[0]["message"]

    store = open_store(home)
    assert store.quarantined(loaded["batch_id"])  # quarantine entries exist, and hold no file name
    entries = {e["sha256"]: e for e in manifest(store)}
    assert entries[loaded["sha256"]]["path"] == ehr_key(home, export)
    assert entries[failed["sha256"]]["path"] == ehr_key(home, unfit)
    assert all(is_path_key(e["path"]) and e["kind"] == EHR_KIND for e in entries.values())
    sources = {b["batch_id"]: b["source"] for b in store.batches()}
    assert sources[loaded["batch_id"]] == f"hospital_a/{refs[export]}"  # the profile's name is kept
    assert sources[failed["batch_id"]] == refs[unfit]                   # a folder without one is not
    assert_nameless(all_text(store), home, "the store")
    assert_nameless(json.dumps(summary), home, "the summary")
    assert_nameless(json.dumps(ops.node_status(home), default=str), home, "the node status")
    assert_nameless(logged(caplog), home, "the logs")
    assert "Doe_John" not in caplog.text

    # detection as before: the same files are known, the same bytes by the CLI are skipped
    again = ops.run_landing(home)
    assert [f["status"] for f in again["files"]] == ["skipped"]  # only the .part file
    caplog.clear()
    (tmp_path / PATIENT_DIR).mkdir()
    cli_copy = Path(shutil.copyfile(export, tmp_path / PATIENT_DIR / export.name))  # outside landing/
    (result,) = ops.ingest(home, [cli_copy], profile=home.profiles_dir / "hospital_a.json")["files"]
    assert result["status"] == "skipped" and result["sha256"] == loaded["sha256"]
    assert result["file"] == file_ref(ehr_key(home, cli_copy)) != refs[export]  # outside landing/
    # a changed file is a new batch; both versions keep the same path key
    text = export.read_text()
    export.write_text(text + text.splitlines()[1] + "\n")  # one exact duplicate row more
    changed = ops.run_landing(home)
    (new,) = [f for f in changed["files"] if f["status"] != "skipped"]
    assert new["file"] == refs[export] and new["sha256"] != loaded["sha256"] and new["conserved"]
    assert len(store.batches()) == 4
    assert [e["path"] for e in manifest(store)].count(ehr_key(home, export)) == 2
    assert_nameless(all_text(store), home, "the store")
    assert_nameless(logged(caplog), home, "the logs")

    # the node's console maps references back to paths
    capsys.readouterr()
    assert cli.main(["node", "files", str(home.root), "--file", refs[export]]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["path"] == str(export) and row["kind"] == EHR_KIND
    assert set(row["batches"]) == {loaded["batch_id"], new["batch_id"]}
    assert cli.main(["node", "files", str(home.root), str(cli_copy)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["file"] == result["file"]
    assert cli.main(["node", "files", str(home.root), "--file", "000000000000"]) == 1


# --------------------------------------------------------------------------
# the DAG stages
# --------------------------------------------------------------------------

def run_stages(home: NodeHome) -> list[dict]:
    captured = stages.capture(home)
    out = [captured]
    for stage, after in (("depersonalise", "capture"), ("validate", "depersonalise"), ("load", "validate")):
        store = open_store(home)
        out += [getattr(stages, stage)(home, b) for b in stages.waiting(store, after)]
    return out


def test_dag_stages_find_files_by_path_key_and_name_them_by_reference(tmp_path, db_url, caplog):
    home = make_home(tmp_path, db_url)
    folder = home.landing_dir / "hospital_a" / PATIENT_DIR
    first = write_export(folder / f"export_{PATIENT_DIR}.csv", generate_export("hospital_a", 30, seed=5, bad_rows=4))
    second = write_export(folder / f"export_{PATIENT_DIR}_2.csv",
                          generate_export("hospital_a", 20, seed=6, start_mrn=500))
    (folder / "export_Doe_John.tmp").write_text("partial")
    caplog.set_level(logging.DEBUG)
    captured = stages.capture(home)
    assert len(captured["captured"]) == 2
    (skip,) = captured["skipped"]
    assert set(skip) == {"file", "reason"} and len(skip["file"]) == REF_LENGTH
    # the second file changes between capture and depersonalisation
    second.write_text(second.read_text() + second.read_text().splitlines()[1] + "\n")
    results = run_stages(home)
    store = open_store(home)
    batches = {b["sha256"]: b for b in store.batches()}
    ref = file_ref(ehr_key(home, first))
    done = next(b for b in batches.values() if b["source"] == f"hospital_a/{ref}")
    assert done["status"] == "loaded", done["message"]
    assert done["rows_in"] == 34 == done["loaded"] + done["quarantined"] + done["no_consent"] + done["duplicates"]
    gone = next(b for b in batches.values() if b["status"] == "failed")
    ref2 = file_ref(ehr_key(home, second))
    assert gone["message"].startswith(f"file {ref2}: landing file changed")
    # the changed file was captured again as a new batch by the run's capture and went through
    newer = next(b for b in batches.values() if b["source"] == f"hospital_a/{ref2}" and b["status"] == "loaded")
    assert newer["rows_in"] == 21
    assert_nameless(all_text(store), home, "the store")
    assert_nameless(json.dumps(results, default=str), home, "the task results")
    assert_nameless(logged(caplog), home, "the logs")
    # nothing new the next time
    assert stages.capture(home)["captured"] == []


# --------------------------------------------------------------------------
# stores written before the path keys
# --------------------------------------------------------------------------

def downgrade(store, rows: dict[str, tuple[str, str, str]]) -> None:
    """Write a store as the code before the path keys did: raw paths, file names in sources and messages.

    ``rows``: sha256 -> (raw path, old source, old message prefix or "").
    """
    with store.begin() as conn:
        for sha, (raw, source, prefix) in rows.items():
            conn.execute(files_table.update().where(files_table.c.sha256 == sha).values(path=raw))
            batch = conn.execute(sa.select(batches_table.c.batch_id, batches_table.c.message)
                                 .where(batches_table.c.sha256 == sha)).one()
            message = batch.message if not prefix else prefix + batch.message.split(": ", 1)[1]
            conn.execute(batches_table.update().where(batches_table.c.batch_id == batch.batch_id)
                         .values(source=source, message=message))
        conn.execute(meta_table.delete())


def test_raw_paths_of_an_older_store_are_rewritten_on_first_open(tmp_path, db_url, caplog):
    home = make_home(tmp_path, db_url)
    folder = home.landing_dir / "hospital_a" / PATIENT_DIR
    loaded = write_export(folder / f"export_{PATIENT_DIR}.csv", generate_export("hospital_a", 25, seed=7))
    waiting = write_export(folder / f"export_{PATIENT_DIR}_2.csv",
                           generate_export("hospital_a", 15, seed=8, start_mrn=700))
    unfit = write_export(home.landing_dir / OTHER_DIR / f"export_{OTHER_DIR}.csv",
                         generate_export("hospital_a", 5, seed=9))
    (tmp_path / "cli").mkdir()
    outside = write_export(tmp_path / "cli" / f"export_{PATIENT_DIR}_cli.csv",
                           generate_export("hospital_a", 10, seed=10, start_mrn=900))
    # the old code at work: a landing run, a CLI ingest, and a DAG capture whose batch waits
    summary = ops.run_landing(home)
    shas = {f["file"]: f["sha256"] for f in summary["files"]}
    refs = {p: file_ref(ehr_key(home, p)) for p in (loaded, waiting, unfit, outside)}
    (cli_result,) = ops.ingest(home, [outside], profile=home.profiles_dir / "hospital_a.json")["files"]
    store = open_store(home)
    with store.begin() as conn:  # un-ingest ``waiting`` and capture it again with the DAG stage
        conn.execute(sa.text(f'DELETE FROM "{store.data_model("stroke:0.1").table_name}"'))
        conn.execute(batches_table.delete().where(batches_table.c.sha256 == shas[refs[waiting]]))
        conn.execute(files_table.delete().where(files_table.c.sha256 == shas[refs[waiting]]))
    assert len(stages.capture(home)["captured"]) == 1
    failed_message = next(b["message"] for b in store.batches() if b["sha256"] == shas[refs[unfit]])
    assert failed_message.startswith(f"file {refs[unfit]}: ")
    downgrade(store, {
        shas[refs[loaded]]: (str(loaded), loaded.name, ""),
        shas[refs[waiting]]: (str(waiting), f"hospital_a/{waiting.name}", ""),
        shas[refs[unfit]]: (str(unfit), f"{OTHER_DIR}/{unfit.name}", f"{unfit.name}: "),
        cli_result["sha256"]: (str(outside), outside.name, ""),
    })
    with store.begin() as conn:  # and an imaging file from before the DICOM manifest held keys
        conn.execute(files_table.insert().values(
            sha256="d" * 64, path=str(home.landing_dir / "dicom" / PATIENT_DIR / "IM0001"), size=1,
            kind=DICOM_KIND, first_seen="2026-01-01T00:00:00", batch_id="i0"))
    assert PATIENT_DIR in all_text(store)  # the old store does name them
    store.dispose()

    caplog.set_level(logging.DEBUG)
    store = open_store(home)
    assert store.path_names_migrated()
    paths = {e["sha256"]: e["path"] for e in manifest(store)}
    assert paths[shas[refs[loaded]]] == ehr_key(home, loaded)
    assert paths[shas[refs[waiting]]] == ehr_key(home, waiting)
    assert paths[shas[refs[unfit]]] == ehr_key(home, unfit)
    assert paths[cli_result["sha256"]] == ehr_key(home, outside)
    assert paths["d" * 64] == landing_path_key(home.key(), home.landing_dir / "dicom",
                                               home.landing_dir / "dicom" / PATIENT_DIR / "IM0001", kind=DICOM_KIND)
    batches = {b["sha256"]: b for b in store.batches()}
    assert batches[shas[refs[loaded]]]["source"] == refs[loaded]
    assert batches[shas[refs[waiting]]]["source"] == f"hospital_a/{refs[waiting]}"
    assert batches[shas[refs[unfit]]]["source"] == refs[unfit]           # no profile: the folder goes
    assert batches[shas[refs[unfit]]]["message"] == failed_message
    assert batches[cli_result["sha256"]]["source"] == refs[outside]
    assert_nameless(all_text(store), home, "the migrated store")
    assert_nameless(logged(caplog), home, "the logs")
    assert "renamed to keyed path hashes" in caplog.text
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(meta_table.c.value).where(meta_table.c.name == PATH_NAMES_MARKER[0])).scalars().all() == [PATH_NAMES_MARKER[1]]
    assert store.migrate_path_names(home.key(), home.landing_dir, home.profiles_dir) == 0  # once only

    # detection works on the migrated manifest, and the waiting batch finds its file by its key
    results = run_stages(home)
    assert results[0]["captured"] == []
    after = {b["sha256"]: b for b in store.batches()}[shas[refs[waiting]]]
    assert after["status"] == "loaded" and after["rows_in"] == 15 == after["loaded"] + after["quarantined"] \
        + after["no_consent"] + after["duplicates"]
    assert ops.run_landing(home)["files"] == []
    (again,) = ops.ingest(home, [outside], profile=home.profiles_dir / "hospital_a.json")["files"]
    assert again["status"] == "skipped"
    assert_nameless(all_text(store), home, "the store")
    assert_nameless(logged(caplog), home, "the logs")


# --------------------------------------------------------------------------
# failed, held and empty batches: what the DAG tasks fail with
# --------------------------------------------------------------------------

def test_stages_report_empty_header_only_and_held_batches_as_failures(tmp_path, caplog):
    home = make_home(tmp_path)
    home.set_setting("max_failure_rate", "0.05")
    folder = home.landing_dir / "hospital_a"
    export = generate_export("hospital_a", 30, seed=8, bad_rows=6)
    write_export(folder / "held.csv", export)
    export.head(0).to_csv(folder / "header.csv", index=False)
    (folder / "zero.csv").write_bytes(b"")
    refs = {name: file_ref(ehr_key(home, folder / name)) for name in ("held.csv", "header.csv", "zero.csv")}

    results = run_stages(home)
    (zero_problem,) = results[0]["problems"]
    assert zero_problem == f"file {refs['zero.csv']}: {stages.EMPTY_FILE}"
    failures = [stages.failure_message(r) for r in results[1:]]
    header = next(m for m in failures if m and refs["header.csv"] in m)
    assert "empty: file" in header and "header line only" in header
    held = next(m for m in failures if m and " held: " in m)
    assert "exceeds max_failure_rate" in held
    assert sum(m is not None for m in failures) == 2  # the held batch is not loaded, so load saw nothing
    batches = {b["source"].split("/")[1]: b for b in open_store(home).batches()}
    assert {name: batches[ref]["status"] for name, ref in refs.items()} == {
        "held.csv": "held", "header.csv": "empty", "zero.csv": "empty"}
    for batch in batches.values():
        assert batch["rows_in"] == (batch["loaded"] + batch["quarantined"] + batch["held"] + batch["no_consent"]
                                    + batch["duplicates"])  # held: the valid rows of the held batch (ADR 0004)
    assert batches[refs["held.csv"]]["held"] > 0
    # a batch another run already finished is no failure of this one
    done = batches[refs["held.csv"]]["batch_id"]
    assert stages.validate(home, done)["message"] == stages.NOT_WAITING
    assert stages.failure_message(stages.validate(home, done)) is None
    assert stages.failure_message({"batch_id": "b", "status": "running", "message": ""}) is None
