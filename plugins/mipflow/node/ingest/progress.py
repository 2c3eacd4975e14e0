"""Progress of long ingestion work in the logs: rows done of the total, per chunk.

Log lines name the batch and the stage, never a file name (landing file names
can carry patient names) and never a row's content::

    batch b1f2... depersonalise: 200000 of ~1000000 rows (20%)

The total of a CSV is estimated from its line count (``~``: a quoted cell may
hold a line break); counting costs one sequential read of the file.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger("mipflow.node.ingest.progress")

_BLOCK = 1 << 20


def estimate_rows(path: str | Path, *, header: bool = True) -> int:
    """Data lines of a CSV file: line breaks counted in 1 MiB blocks, minus the header line."""
    lines = 0
    last = b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            lines += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":  # a last line without a line break
        lines += 1
    return max(0, lines - (1 if header and lines else 0))


class Progress:
    """Counts rows through one stage of one batch and logs each step.

    Parameters
    ----------
    label : str
        What is being done, e.g. ``"batch b1f2 depersonalise"`` (no file names).
    total : int or None
        Rows expected (``None``: unknown).
    estimated : bool
        Whether ``total`` is an estimate (printed with ``~``).
    """

    def __init__(self, label: str, total: int | None, *, estimated: bool = True,
                 logger: logging.Logger = log) -> None:
        self.label = label
        self.total = total
        self.estimated = estimated
        self.done = 0
        self.chunks = 0
        self._log = logger
        self._started = time.perf_counter()

    def describe(self) -> str:
        if self.total is None:
            return f"{self.label}: {self.done} rows"
        mark = "~" if self.estimated else ""
        share = f" ({min(100.0, 100.0 * self.done / self.total):.0f}%)" if self.total else ""
        return f"{self.label}: {self.done} of {mark}{self.total} rows{share}"

    def advance(self, rows: int) -> None:
        """``rows`` more rows done (one chunk)."""
        self.done += int(rows)
        self.chunks += 1
        self._log.info("%s", self.describe())

    def finish(self) -> None:
        seconds = time.perf_counter() - self._started
        self._log.info("%s: done, %d rows in %d chunk(s), %.1f s", self.label, self.done, self.chunks, seconds)
