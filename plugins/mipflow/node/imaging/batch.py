"""De-identify a folder tree of DICOM files (what ``mipflow dicom deidentify`` runs)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from mipflow.node.imaging.deidentify import Deidentifier
from mipflow.node.imaging.options import DeidOptions
from mipflow.exceptions import InputFileError


def deidentify_tree(in_dir: str | Path, out_dir: str | Path, *, key: bytes,
                    options: DeidOptions | None = None) -> dict[str, Any]:
    """De-identify every file under ``in_dir`` into the same relative path under ``out_dir``.

    Files that cannot be passed (unreadable, not DICOM, burned-in text, ...) are
    quarantined: nothing is written for them and the summary gives their reason.

    Returns
    -------
    dict
        ``{"files_in", "written", "quarantined": [{"path", "reason", "detail"}], "reasons": {...}}``;
        paths are relative to ``in_dir``; ``files_in == written + len(quarantined)``.
    """
    in_dir, out_dir = Path(in_dir).resolve(), Path(out_dir).resolve()
    if not in_dir.is_dir():
        raise InputFileError(f"{in_dir} is not a folder")
    if out_dir == in_dir or in_dir in out_dir.parents:
        raise InputFileError("the output folder must not be inside the input folder")
    engine = Deidentifier(key, options or DeidOptions())
    written = 0
    quarantined = []
    files = sorted(p for p in in_dir.rglob("*") if p.is_file())
    for path in files:
        rel = path.relative_to(in_dir)
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        outcome = engine.file(path, target)
        if outcome.reason is None:
            written += 1
        else:
            quarantined.append({"path": str(rel), "reason": outcome.reason, "detail": outcome.detail})
    return {"files_in": len(files), "written": written, "quarantined": quarantined,
            "reasons": dict(Counter(q["reason"] for q in quarantined))}
