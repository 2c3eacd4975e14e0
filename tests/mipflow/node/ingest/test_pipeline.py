"""The node ingest pipeline end to end (CLI path), on SQLite and PostgreSQL."""
from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest
import sqlalchemy as sa

from mipflow.node import ops
from mipflow.node.store.feature_store import open_store
from mipflow.demo.synth import generate_consent, generate_export, write_export
from tests.conftest import REPO_ROOT
from tests.nodes import standard_home

STROKE = REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json"
PROFILES = REPO_ROOT / "include" / "schemas" / "profiles"


def make_node(tmp_path, name="hospital_a", db_url=""):
    home = standard_home(tmp_path / name, name, db_url)
    ops.add_data_model(home, STROKE)
    return home


def all_text(store) -> str:
    """Every value of every table in the store, as one string."""
    parts = []
    with store.engine.connect() as conn:
        for table in sa.inspect(store.engine).get_table_names():
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                parts.extend(str(v) for v in row)
    return "\n".join(parts)


@pytest.mark.parametrize("hospital", ["hospital_a", "hospital_b", "hospital_c"])
def test_stroke_export_is_accounted_for_and_depersonalised(tmp_path, db_url, hospital):
    home = make_node(tmp_path, hospital, db_url)
    export = generate_export(hospital, 120, seed=11, bad_rows=14)
    path = write_export(tmp_path / "export.csv", export)
    consent_path = tmp_path / "consent.csv"
    generate_consent(export, seed=5).to_csv(consent_path, index=False)
    summary = ops.ingest(home, [path], profile=PROFILES / f"{hospital}.json", consent=consent_path)
    (result,) = summary["files"]
    counts = result["counts"]
    assert result["status"] == "loaded" and result["conserved"]
    assert counts["rows_in"] == len(export) == 134
    assert counts["loaded"] + counts["quarantined"] + counts["no_consent"] + counts["duplicates"] == 134
    assert counts["no_consent"] > 0 and counts["quarantined"] >= 10 and counts["duplicates"] >= 1

    store = open_store(home)
    reasons = " | ".join(q["reason"] for q in store.quarantined())
    for expected in ("above maxValue 42", "not a number", "not in enumerations", "missing patient identifier",
                     "after"):
        assert expected in reasons, expected
    model = store.data_model("stroke:0.1")
    assert store.count_rows(model) == counts["loaded"]
    # nothing that identifies a patient is anywhere in the store
    profile = json.loads((PROFILES / f"{hospital}.json").read_text())["deid"]
    identifying = [profile["patient_id"], *profile["direct_identifiers"], *profile["free_text"]]
    text = all_text(store)
    def leaked(value: str) -> bool:
        # whole-token match: an 8-digit MRN can occur by chance inside a 64-hex pseudonym
        return re.search(rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])", text) is not None

    for column in identifying:
        for value in export[column].dropna().unique():
            if len(str(value)) >= 5:
                assert not leaked(str(value)), f"{column} value leaked into the store"
    for date_column in ("date_of_birth", "geburtsdatum", "DOB"):
        if date_column in export:
            for value in export[date_column].dropna().unique()[:50]:
                assert not leaked(value)
    assert home.key().hex() not in text


def test_default_profile_on_mip_csv(tmp_path, db_url, shared_dir):
    home = standard_home(tmp_path / "n", "n", db_url)
    ops.add_data_model(home, shared_dir / "data" / "dementia_v_0_1" / "CDEsMetadata.json")
    files = [shared_dir / "data" / "dementia_v_0_1" / f"edsd{i}.csv" for i in range(3)]
    summary = ops.ingest(home, files, data_model="dementia:0.1")
    rows = sum(len(pd.read_csv(f)) for f in files)
    assert summary["totals"]["rows_in"] == rows and summary["totals"]["conserved"]
    assert summary["totals"]["loaded"] + summary["totals"]["quarantined"] == rows
    datasets = {d["dataset"]: d["row_count"] for d in open_store(home).datasets()}
    assert set(datasets) == {"edsd0", "edsd1", "edsd2"}
    raw_codes = set(pd.read_csv(files[0])["subjectcode"])
    with open_store(home).engine.connect() as conn:
        stored = set(conn.execute(sa.text("SELECT subjectcode FROM dm_dementia_0_1")).scalars())
    assert stored and not (stored & raw_codes)  # pseudonymised
    assert all(len(code) == 64 for code in stored)


def test_same_file_twice_is_skipped_and_force_is_idempotent(tmp_path):
    home = make_node(tmp_path)
    path = write_export(tmp_path / "e.csv", generate_export("hospital_a", 50, seed=1))
    profile = PROFILES / "hospital_a.json"
    first = ops.ingest(home, [path], profile=profile)
    store = open_store(home)
    model = store.data_model("stroke:0.1")
    n = store.count_rows(model)
    assert n == first["totals"]["loaded"] == 50
    second = ops.ingest(home, [path], profile=profile)
    assert second["files"][0]["status"] == "skipped"
    forced = ops.ingest(home, [path], profile=profile, force=True)
    assert forced["files"][0]["status"] == "loaded" and store.count_rows(model) == n
    assert len(store.batches()) == 1  # the same bytes are the same batch


def test_changed_file_is_a_new_batch_and_updates_rows(tmp_path):
    home = make_node(tmp_path)
    export = generate_export("hospital_a", 40, seed=2)
    path = write_export(tmp_path / "e.csv", export)
    ops.ingest(home, [path], profile=PROFILES / "hospital_a.json")
    export.loc[0, "nihss_on_admission"] = "41"
    write_export(path, export)
    summary = ops.ingest(home, [path], profile=PROFILES / "hospital_a.json")
    assert summary["files"][0]["status"] == "loaded"
    store = open_store(home)
    assert len(store.batches()) == 2
    assert store.count_rows(store.data_model("stroke:0.1")) == 40
    with store.engine.connect() as conn:
        assert 41 in set(conn.execute(sa.text("SELECT nihss_admission FROM dm_stroke_0_1")).scalars())


def test_withdrawn_consent_removes_rows_at_next_run(tmp_path, db_url):
    home = make_node(tmp_path, db_url=db_url)
    export = generate_export("hospital_a", 60, seed=4)
    path = write_export(tmp_path / "e.csv", export)
    consent = pd.DataFrame({"patient_id": export["mrn"], "consent": "granted",
                            "updated_at": "2025-01-01T00:00:00"})
    consent.to_csv(tmp_path / "consent.csv", index=False)
    ops.ingest(home, [path], profile=PROFILES / "hospital_a.json", consent=tmp_path / "consent.csv")
    store = open_store(home)
    model = store.data_model("stroke:0.1")
    assert store.count_rows(model) == 60
    withdrawn = pd.DataFrame({"patient_id": export["mrn"][:3], "consent": "withdrawn",
                              "updated_at": "2025-06-01T00:00:00"})
    pd.concat([consent, withdrawn]).to_csv(tmp_path / "consent.csv", index=False)
    summary = ops.ingest(home, [path], profile=PROFILES / "hospital_a.json", consent=tmp_path / "consent.csv")
    assert summary["withdrawn_rows_deleted"] == 3
    assert store.count_rows(model) == 57
    assert sum(d["row_count"] for d in store.datasets()) == 57


def test_held_batch_loads_nothing(tmp_path):
    home = make_node(tmp_path)
    home.set_setting("max_failure_rate", "0.01")
    path = write_export(tmp_path / "e.csv", generate_export("hospital_a", 30, seed=5, bad_rows=7))
    summary = ops.ingest(home, [path], profile=PROFILES / "hospital_a.json")
    (result,) = summary["files"]
    assert result["status"] == "held" and result["conserved"]
    assert result["counts"]["loaded"] == 0
    store = open_store(home)
    assert store.count_rows(store.data_model("stroke:0.1")) == 0
    assert result["counts"]["held"] > 0 and result["message"].endswith("valid rows held (not loaded) with the batch")
    assert len(store.quarantined()) == result["counts"]["quarantined"]  # one entry per quarantined row


MIP_HEADER = "subjectcode,dataset,gender,minimentalstate,subjectage\n"


@pytest.mark.parametrize("content, status, counts, message", [
    pytest.param(b"", "empty", (0, 0, 0), "empty file", id="zero-bytes"),
    pytest.param(MIP_HEADER.encode(), "empty", (0, 0, 0), "header line only, no data rows", id="header-only"),
    pytest.param(MIP_HEADER.replace(",", ";").encode() + b"s1;edsd0;M;20;70\n", "failed", (0, 0, 0),
                 "the header looks ';'-delimited but the source profile reads ','", id="semicolon-delimited"),
    pytest.param((MIP_HEADER + "s1,edsd0,M,20,70\ns2,edsd0,F,21,71,EXTRA\ns3,edsd0,F,22,72\n").encode(),
                 "loaded", (3, 2, 1), "", id="line-with-extra-field"),
    pytest.param((MIP_HEADER + "s1,edsd0,M,20,70\n").encode() + "s2,edsd0,F,21,7\xe9\n".encode("latin-1"),
                 "failed", (0, 0, 0), "not valid utf-8", id="wrong-encoding"),
    pytest.param(b"dataset,gender\nedsd0,M\n", "failed", (0, 0, 0), "patient identifier column", id="no-id-column"),
    pytest.param((MIP_HEADER + "s1,edsd0,M,20,70\ns1,edsd0,M,20,70\ns2,edsd0,X,99,abc\n").encode(),
                 "loaded", (3, 1, 1), "", id="duplicate-and-bad-values"),
    pytest.param(("subjectcode,dataset,gender,unknown_col\ns1,edsd0,M,zz\n").encode(),
                 "loaded", (1, 1, 0), "", id="extra-column"),
    pytest.param(("subjectcode,dataset,subjectcode\ns1,edsd0,s1\n").encode(), "failed", (0, 0, 0),
                 "repeats a column", id="repeated-header"),
])
def test_bad_input_gets_a_clear_outcome(tmp_path, shared_dir, content, status, counts, message):
    home = standard_home(tmp_path / "n", "n")
    home.set_setting("max_failure_rate", "1")
    ops.add_data_model(home, shared_dir / "data" / "dementia_v_0_1" / "CDEsMetadata.json")
    path = tmp_path / "in.csv"
    path.write_bytes(content)
    summary = ops.ingest(home, [path], data_model="dementia:0.1")
    (result,) = summary["files"]
    assert result["status"] == status, result["message"]
    assert message.lower() in result["message"].lower()
    rows_in, loaded, quarantined = counts
    c = result["counts"]
    assert (c["rows_in"], c["loaded"], c["quarantined"]) == (rows_in, loaded, quarantined)
    assert result["conserved"]
    # the bad file does not stop the next one
    good = tmp_path / "good.csv"
    good.write_text(MIP_HEADER + "t1,edsd1,F,25,60\n")
    assert ops.ingest(home, [good], data_model="dementia:0.1")["files"][0]["status"] == "loaded"


def test_quarantine_reasons_hold_no_values(tmp_path, shared_dir):
    home = standard_home(tmp_path / "n", "n")
    home.set_setting("max_failure_rate", "1")
    ops.add_data_model(home, shared_dir / "data" / "dementia_v_0_1" / "CDEsMetadata.json")
    path = tmp_path / "in.csv"
    path.write_text(MIP_HEADER + "s1,edsd0,QQZX,9876,abcdefgh\n")
    summary = ops.ingest(home, [path], data_model="dementia:0.1")
    text = json.dumps(summary) + " ".join(q["reason"] for q in open_store(home).quarantined())
    for value in ("QQZX", "9876", "abcdefgh"):
        assert value not in text


def test_landing_file_still_being_written_is_left_for_next_run(tmp_path):
    home = make_node(tmp_path)
    home.set_setting("settle_seconds", "3600")
    landing = home.landing_dir / "hospital_a"
    landing.mkdir()
    write_export(landing / "e.csv", generate_export("hospital_a", 10, seed=1))
    (landing / "next.csv.part").write_text("partial")
    shutil.copyfile(PROFILES / "hospital_a.json", home.profiles_dir / "hospital_a.json")
    summary = ops.run_landing(home)
    refs = {r["path"]: r["file"] for r in ops.file_references(home)}
    e_ref, part_ref = refs[str(landing / "e.csv")], refs[str(landing / "next.csv.part")]
    statuses = {f["file"]: (f["status"], f["message"]) for f in summary["files"]}
    assert statuses[e_ref][0] == "skipped" and "still being written" in statuses[e_ref][1]
    assert statuses[part_ref][0] == "skipped"
    home.set_setting("settle_seconds", "0")
    summary = ops.run_landing(home)
    assert [f["status"] for f in summary["files"] if f["file"] == e_ref] == ["loaded"]
    assert [f["source"] for f in summary["files"] if f["file"] == e_ref] == [f"hospital_a/{e_ref}"]


def test_identifier_column_with_other_case_fails_the_file(tmp_path):
    home = make_node(tmp_path)
    export = generate_export("hospital_a", 5, seed=1).rename(columns={"first_name": "First_Name"})
    path = write_export(tmp_path / "e.csv", export)
    (result,) = ops.ingest(home, [path], profile=PROFILES / "hospital_a.json")["files"]
    assert result["status"] == "failed" and "differs only in case" in result["message"]
    assert open_store(home).count_rows(open_store(home).data_model("stroke:0.1")) == 0


def test_visit_pseudonyms_do_not_link_to_patient_pseudonyms():
    import pandas as pd

    from mipflow.node.deid.pseudonyms import Pseudonymiser

    p = Pseudonymiser(b"k" * 32)
    ids = pd.Series(["12345"])
    assert p.pseudonyms(ids)[0][:32] != p.visit_pseudonyms(ids)[0]


@pytest.mark.parametrize("header, expected", [
    ("a;b;c\n", ";"), ("a,b,c\n", ","), ("a\tb\tc\n", "\t"), ("a|b\n", "|"), ("abc\n", None),
])
def test_detect_delimiter_reads_the_header_line_only(tmp_path, header, expected):
    from mipflow.node.ingest.pipeline import detect_delimiter

    path = tmp_path / "in.csv"
    path.write_text(header + "1,2,3,4,5,6,7,8\n")  # a row with other delimiters is not looked at
    assert detect_delimiter(path, "utf-8") == expected
