"""Progress of ingestion: rows done of an estimated total per chunk and stage, never row data
(:mod:`mipflow.node.ingest.progress`, docs/adr/0017-operability.md)."""
from __future__ import annotations

import json
import logging
import re
import shutil

from mipflow.demo.synth import generate_consent, generate_export, write_export
from mipflow.node import ops
from tests.conftest import REPO_ROOT
from tests.nodes import standard_home

STROKE = REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json"
PROFILES = REPO_ROOT / "include" / "schemas" / "profiles"
PROGRESS = re.compile(r"batch (b[0-9a-f]{20}) (\w+(?: \(second pass\))?): (\d+) of ~(\d+) rows \((\d+)%\)")


def _identifying_values(export, hospital: str) -> list[str]:
    profile = json.loads((PROFILES / f"{hospital}.json").read_text())["deid"]
    columns = [profile["patient_id"], *profile["direct_identifiers"], *profile["free_text"]]
    return [str(v) for c in columns for v in export[c].dropna().unique() if len(str(v)) >= 5]


def _progress(caplog) -> list[tuple[str, str, int, int]]:
    out = []
    for record in caplog.records:
        match = PROGRESS.fullmatch(record.getMessage())
        if match:
            out.append((match[1], match[2], int(match[3]), int(match[4])))
    return out


def test_ingest_logs_rows_done_of_total_per_chunk_and_no_row_data(tmp_path, caplog):
    home = standard_home(tmp_path / "hospital_a", "hospital_a")
    ops.add_data_model(home, STROKE)
    home.set_setting("chunk_rows", "40")
    export = generate_export("hospital_a", 150, seed=3, bad_rows=5)
    path = write_export(tmp_path / "export.csv", export)
    caplog.set_level(logging.INFO, logger="mipflow.node.ingest.progress")
    summary = ops.ingest(home, [path], profile=PROFILES / "hospital_a.json")
    (result,) = summary["files"]
    steps = _progress(caplog)
    assert [s[2] for s in steps] == [40, 80, 120, 155]  # rows done after each chunk of 40
    assert {s[0] for s in steps} == {result["batch_id"]} and {s[1] for s in steps} == {"ingest"}
    assert len(export) == 155 and {s[3] for s in steps} == {155}  # the line-count estimate is exact here
    mine = [r.getMessage() for r in caplog.records if r.name == "mipflow.node.ingest.progress"]
    assert re.fullmatch(rf"batch {result['batch_id']} ingest: done, 155 rows in 4 chunk\(s\), [0-9.]+ s", mine[-1])
    assert not any("export" in m for m in mine)  # batches are named by id, never by file name
    text = "\n".join(r.getMessage() for r in caplog.records)
    for value in _identifying_values(export, "hospital_a"):
        assert value not in text, "an identifying value reached the log"


def test_each_dag_stage_logs_its_progress(tmp_path, caplog):
    from mipflow.node.ingest import stages

    home = standard_home(tmp_path / "hospital_b", "hospital_b")
    home.set_setting("settle_seconds", "0")
    home.set_setting("chunk_rows", "30")
    ops.add_data_model(home, STROKE)
    shutil.copyfile(PROFILES / "hospital_b.json", home.profiles_dir / "hospital_b.json")
    export = generate_export("hospital_b", 70, seed=9, bad_rows=0)
    (home.landing_dir / "hospital_b").mkdir()
    write_export(home.landing_dir / "hospital_b" / "export1.csv", export)
    generate_consent(export, seed=2).to_csv(home.consent_path, index=False)
    caplog.set_level(logging.INFO, logger="mipflow.node.ingest.progress")
    (batch_id,) = stages.capture(home)["captured"]
    stages.depersonalise(home, batch_id)
    stages.validate(home, batch_id)
    loaded = stages.load(home, batch_id)
    assert loaded["status"] == "loaded"
    steps = _progress(caplog)
    by_stage = {stage: [s for s in steps if s[1] == stage] for stage in ("depersonalise", "validate", "load")}
    assert [s[2] for s in by_stage["depersonalise"]] == [30, 60, 70]
    assert by_stage["depersonalise"][-1][3] == len(export) == 70
    # later stages read the staging file: the rows left after consent and depersonalisation
    assert 0 < by_stage["validate"][-1][2] == by_stage["validate"][-1][3] <= 70 - loaded["no_consent"]
    assert by_stage["load"][-1][2] == by_stage["load"][-1][3] == loaded["loaded"]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert not any("export1" in r.getMessage() for r in caplog.records if r.name == "mipflow.node.ingest.progress")
    for value in _identifying_values(export, "hospital_b"):
        assert value not in text


def test_estimate_rows_counts_data_lines(tmp_path):
    from mipflow.node.ingest.progress import estimate_rows

    path = tmp_path / "a.csv"
    path.write_text("a,b\n1,2\n3,4")  # no final line break
    assert estimate_rows(path) == 2
    path.write_text("a,b\n1,2\n3,4\n")
    assert estimate_rows(path) == 2
    path.write_text("")
    assert estimate_rows(path) == 0
