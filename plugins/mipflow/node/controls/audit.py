"""The node's append-only audit log.

One JSON line per request, allowed or refused: when, who (client, researcher,
project), endpoint, algorithm and its code digest, variables, datasets,
filters, rows used, decision and reason.  Nothing row-level is ever written
here.  Tampering is detectable (:func:`verify_log`, ``mipflow audit verify``):

- each record carries ``seq`` (1, 2, ...): a deleted or reordered record
  breaks the sequence;
- each record carries ``digest``, the SHA-256 of its own content: an edited
  record no longer matches it;
- each record carries ``prev``, the SHA-256 of the line before it: an edited
  record whose digest was recomputed still breaks the chain at the next line;
- ``audit.head`` (beside the log) holds the count and the hash of the last
  line: records cut from the end, or an edited last record, are detected.

Someone who can rewrite the whole file and the head can forge a consistent
history; anchoring the head elsewhere is left to deployment (ADR 0010).
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import weakref
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

GENESIS = "0" * 64
AUDIT_FILE = "audit.log"
HEAD_SUFFIX = ".head"


def _content_digest(entry: Mapping[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k not in ("digest", "prev")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def head_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + HEAD_SUFFIX)


#: Bytes of the head file: its JSON is padded with spaces to this width, so that every
#: update is one in-place write of the same length at offset 0 (see :class:`AuditLog`).
HEAD_WIDTH = 128


class AuditLog:
    """Append-only JSON-lines audit log with a hash chain, sequence numbers and a head file.

    Write policy: the log and its head are opened once and kept open.  Each
    record is one ``write`` on the log's ``O_APPEND`` descriptor (one whole
    line, never interleaved with another writer's), then the head is
    rewritten in place with one ``pwrite`` of :data:`HEAD_WIDTH` bytes at
    offset 0 (a single sector: it is never half-written, and the file never
    changes length).  Both are in the operating system's page cache when
    :meth:`append` returns, so they survive a crash of the node process;
    with ``fsync=True`` both are also forced to disk before :meth:`append`
    returns (survives a power cut, costs a disk flush per record).  If the
    log or the head is replaced or removed behind the node's back (rotated,
    restored), the next append opens the file now at the path.
    """

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._head = head_path(self.path)
        self._lock = threading.Lock()
        self._last, self._seq = self._tail()
        self._fds: dict[Path, tuple[int, tuple[int, int]]] = {}
        self._finalizer = weakref.finalize(self, _close_all, self._fds)

    def close(self) -> None:
        """Close the kept descriptors (a later append opens them again)."""
        with self._lock:
            _close_all(self._fds)

    def _fd(self, path: Path, flags: int) -> int:
        """The kept descriptor of ``path``, reopened when the path now names another file."""
        kept = self._fds.get(path)
        try:
            st = os.stat(path)
            current = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            current = None
        if kept is not None and kept[1] == current:
            return kept[0]
        if kept is not None:
            os.close(kept[0])
            del self._fds[path]
        fd = os.open(path, flags | os.O_CREAT, 0o600)
        st = os.fstat(fd)
        self._fds[path] = (fd, (st.st_dev, st.st_ino))
        return fd

    def _tail(self) -> tuple[str, int]:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return GENESIS, 0
        with open(self.path, "rb") as handle:
            handle.seek(max(0, self.path.stat().st_size - 65536))
            lines = [line for line in handle.read().splitlines() if line]
        if not lines:
            return GENESIS, 0
        try:
            seq = int(json.loads(lines[-1]).get("seq", 0))
        except (ValueError, TypeError, AttributeError):
            seq = 0
        if not seq:  # a log written before sequence numbers: count its lines
            with open(self.path, "rb") as handle:
                seq = sum(1 for line in handle if line.strip())
        return hashlib.sha256(lines[-1]).hexdigest(), seq

    def append(self, **record: Any) -> dict[str, Any]:
        with self._lock:
            entry = {"at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **record,
                     "seq": self._seq + 1}
            entry = json.loads(json.dumps(entry, default=str))  # what is hashed is what is read back
            entry["digest"] = _content_digest(entry)
            entry["prev"] = self._last
            line = json.dumps(entry, sort_keys=True).encode()
            log_fd = self._fd(self.path, os.O_WRONLY | os.O_APPEND)
            os.write(log_fd, line + b"\n")
            last = hashlib.sha256(line).hexdigest()
            head = json.dumps({"seq": self._seq + 1, "hash": last}).encode()
            head_fd = self._fd(self._head, os.O_WRONLY)
            if os.fstat(head_fd).st_size != HEAD_WIDTH:  # a new head, or one written by an older version
                os.ftruncate(head_fd, HEAD_WIDTH)
            os.pwrite(head_fd, head.ljust(HEAD_WIDTH - 1) + b"\n", 0)
            if self.fsync:
                os.fsync(log_fd)
                os.fsync(head_fd)
            self._last = last
            self._seq += 1
        return entry

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.path)


def _close_all(fds: dict[Path, tuple[int, tuple[int, int]]]) -> None:
    for fd, _identity in fds.values():
        try:
            os.close(fd)
        except OSError:  # pragma: no cover - already closed
            pass
    fds.clear()


def read_records(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@dataclass(frozen=True)
class ChainReport:
    """Outcome of :func:`verify_log`: ``broken_at`` is the 1-based line of the first bad record."""

    ok: bool
    records: int
    broken_at: int | None = None
    reason: str = ""


def verify_log(path: str | Path) -> ChainReport:
    """Check every record of an audit log; report the first broken one and why."""
    path = Path(path)
    if not path.is_file():
        return ChainReport(True, 0)
    previous = GENESIS
    count = 0
    for number, raw in enumerate((line for line in path.read_bytes().splitlines() if line), start=1):
        count = number
        try:
            entry = json.loads(raw)
            if not isinstance(entry, dict):
                raise ValueError("not an object")
        except ValueError:
            return ChainReport(False, number, number, f"record {number} is not a JSON object")
        seq = entry.get("seq")
        if seq is not None and seq != number:
            return ChainReport(False, number, number,
                               f"record {number} has sequence number {seq}: records were deleted or reordered")
        if "digest" in entry and entry["digest"] != _content_digest(entry):
            return ChainReport(False, number, number, f"record {number} was edited (content does not match "
                                                      f"its digest)")
        if entry.get("prev") != previous:
            return ChainReport(False, number, number,
                               f"record {number} does not chain to record {number - 1} (record {number - 1} "
                               f"was edited, or records were deleted, inserted or reordered)")
        previous = hashlib.sha256(raw).hexdigest()
    head = head_path(path)
    if head.is_file():
        try:
            doc = json.loads(head.read_text(encoding="utf-8"))
        except ValueError:
            return ChainReport(False, count, count, f"{head.name} is not valid JSON")
        if doc.get("seq") != count:
            return ChainReport(False, count, count + 1 if doc.get("seq", 0) > count else count,
                               f"the log has {count} records but {head.name} says {doc.get('seq')}: "
                               f"records were deleted from (or added at) the end")
        if doc.get("hash") != previous:
            return ChainReport(False, count, count, f"record {count} (the last) was edited: its hash does not "
                                                    f"match {head.name}")
    return ChainReport(True, count)


def verify_chain(path: str | Path) -> bool:
    """True when the audit log is intact (see :func:`verify_log` for where it broke)."""
    return verify_log(path).ok


def summarize(records: Iterable[Mapping[str, Any]], *, since: datetime | None = None,
              researcher: str | None = None) -> dict[str, Any]:
    """Counts for the node admin: allowed / refused per researcher, algorithm and reason (control).

    Only step and metadata requests carry a researcher; others count under ``-``.
    """
    by_researcher: dict[str, Counter] = defaultdict(Counter)
    by_algorithm: dict[str, Counter] = defaultdict(Counter)
    reasons: Counter = Counter()
    analyses: dict[str, set] = defaultdict(set)
    total = 0
    first = last = None
    for record in records:
        at = record.get("at", "")
        if since is not None:
            try:
                when = datetime.fromisoformat(at)
            except (TypeError, ValueError):
                continue
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            if when < since:
                continue
        who = record.get("researcher") or "-"
        if researcher is not None and who != researcher:
            continue
        decision = record.get("decision", "?")
        total += 1
        first = first or at
        last = at
        by_researcher[who][decision] += 1
        what = record.get("algorithm") or record.get("what") or record.get("endpoint") or "-"
        by_algorithm[what][decision] += 1
        if decision != "allowed":
            reasons[record.get("control") or decision] += 1
        if decision == "allowed" and record.get("analysis"):
            analyses[who].add(record["analysis"])
    return {
        "records": total, "first": first, "last": last,
        "by_researcher": {k: {**dict(v), "analyses": len(analyses.get(k, ()))}
                          for k, v in sorted(by_researcher.items())},
        "by_algorithm": {k: dict(v) for k, v in sorted(by_algorithm.items())},
        "refusals_by_control": dict(reasons.most_common()),
    }


def summary_text(summary: Mapping[str, Any]) -> str:
    """The summary as a small plain-text report."""
    lines = [f"{summary['records']} record(s) from {summary['first'] or '-'} to {summary['last'] or '-'}", ""]

    def table(title: str, rows: Mapping[str, Mapping[str, int]], extra: str | None = None) -> None:
        header = f"{title:28s} {'allowed':>8s} {'refused':>8s} {'error':>6s}" + (f" {extra:>9s}" if extra else "")
        lines.append(header)
        for key, counts in rows.items():
            line = (f"{key[:28]:28s} {counts.get('allowed', 0):8d} {counts.get('refused', 0):8d} "
                    f"{counts.get('error', 0):6d}")
            lines.append(line + (f" {counts.get(extra, 0):9d}" if extra else ""))
        lines.append("")

    table("researcher", summary["by_researcher"], "analyses")
    table("algorithm / endpoint", summary["by_algorithm"])
    lines.append(f"{'refusals by control':28s} {'count':>8s}")
    for control, count in summary["refusals_by_control"].items():
        lines.append(f"{control[:28]:28s} {count:8d}")
    return "\n".join(lines).rstrip() + "\n"
