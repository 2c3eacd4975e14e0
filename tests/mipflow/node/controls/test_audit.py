"""The audit log: a hash chain whose verification names the first broken record (:mod:`mipflow.node.controls.audit`)."""
from __future__ import annotations

import json

import pytest

from mipflow import cli
from mipflow.node.controls.audit import AuditLog, read_records, verify_log
from tests.nodes import standard_home


def _write_log(path, n=6):
    log = AuditLog(path)
    for i in range(n):
        log.append(client="central", researcher="alice" if i % 2 else "bob", endpoint="/v1/steps",
                   algorithm="linear_regression", decision="allowed" if i < n - 2 else "refused",
                   control="" if i < n - 2 else "access", analysis=f"a{i}")
    return path.read_bytes().splitlines(keepends=True)


def _edit(line: bytes, **changes) -> bytes:
    doc = json.loads(line)
    doc.update(changes)
    return json.dumps(doc, sort_keys=True).encode() + b"\n"


def _recomputed(line: bytes, **changes) -> bytes:
    """An edit whose forger also recomputed the record's own digest."""
    from mipflow.node.controls.audit import _content_digest

    doc = json.loads(line)
    doc.update(changes)
    doc["digest"] = _content_digest(doc)
    return json.dumps(doc, sort_keys=True).encode() + b"\n"


@pytest.mark.parametrize("tamper, broken_at, words", [
    pytest.param(lambda ls: ls[:2] + [_edit(ls[2], decision="allowed", researcher="eve")] + ls[3:], 3,
                 "edited", id="edited"),
    pytest.param(lambda ls: ls[:2] + [_recomputed(ls[2], researcher="eve")] + ls[3:], 4,
                 "does not chain to record 3", id="edited-digest-recomputed"),
    pytest.param(lambda ls: ls[:2] + ls[3:], 3, "deleted or reordered", id="deleted"),
    pytest.param(lambda ls: ls[:2] + [ls[3], ls[2]] + ls[4:], 3, "deleted or reordered", id="reordered"),
    pytest.param(lambda ls: ls[:-1], 6, "deleted from", id="last-deleted"),
    pytest.param(lambda ls: ls[:-1] + [_recomputed(ls[-1], decision="allowed")], 6, "(the last) was edited",
                 id="last-edited"),
    pytest.param(lambda ls: ls[:3] + [b"{not json\n"] + ls[4:], 4, "not a JSON object", id="garbled"),
])
def test_audit_verify_finds_the_first_broken_record(tmp_path, capsys, tamper, broken_at, words):
    home = standard_home(tmp_path / "h", "h")
    path = home.root / "audit.log"
    lines = _write_log(path)
    assert verify_log(path).ok and verify_log(path).records == 6
    assert cli.main(["audit", "verify", str(home.root)]) == 0
    assert "6 record(s), chain intact" in capsys.readouterr().out
    path.write_bytes(b"".join(tamper(lines)))
    report = verify_log(path)
    assert not report.ok and report.broken_at == broken_at and words in report.reason, report
    assert cli.main(["audit", "verify", str(home.root)]) == 1
    out = capsys.readouterr().out
    assert f"BROKEN at record {broken_at}" in out and words in out


def test_audit_log_continues_its_chain_after_a_restart(tmp_path):
    path = tmp_path / "audit.log"
    _write_log(path, n=3)
    AuditLog(path).append(decision="allowed", what="metadata")  # a new process appends
    report = verify_log(path)
    assert report.ok and report.records == 4 and read_records(path)[-1]["seq"] == 4
