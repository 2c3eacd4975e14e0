"""De-identify a folder tree of DICOM files (what ``mipflow dicom deidentify`` runs).

Outputs are named by their new UIDs, never by the input's names (export folders and files often
carry patient names): ``OUT/<de-identified Study UID>/<de-identified Series UID>/<de-identified SOP
Instance UID>.dcm``.  The summary names quarantined inputs by their content SHA-256 and a keyed
reference of their path (:func:`mipflow.node.files.file_ref`), never by the path itself.
"""
from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from mipflow.exceptions import InputFileError
from mipflow.node.files import DICOM_KIND, file_ref, landing_path_key
from mipflow.node.imaging.deidentify import Deidentifier, content_hash
from mipflow.node.imaging.options import DeidOptions


def deidentify_tree(in_dir: str | Path, out_dir: str | Path, *, key: bytes,
                    options: DeidOptions | None = None) -> dict[str, Any]:
    """De-identify every file under ``in_dir`` into ``out_dir/<study>/<series>/<sop>.dcm`` (new UIDs).

    Files that cannot be passed (unreadable, not DICOM, burned-in text, ...) are
    quarantined: nothing is written for them and the summary gives their reason.

    Returns
    -------
    dict
        ``{"files_in", "written", "quarantined": [{"ref", "sha256", "reason", "detail"}],
        "reasons": {...}}``; ``ref`` is the keyed reference of the input's path
        (``mipflow node files`` style), ``files_in == written + len(quarantined)``.
    """
    in_dir, out_dir = Path(in_dir).resolve(), Path(out_dir).resolve()
    if not in_dir.is_dir():
        raise InputFileError("the input folder does not exist or is not a folder")
    if out_dir == in_dir or in_dir in out_dir.parents:
        raise InputFileError("the output folder must not be inside the input folder")
    engine = Deidentifier(key, options or DeidOptions())
    written = 0
    quarantined = []
    files = sorted(p for p in in_dir.rglob("*") if p.is_file())
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in files:
        fd, tmp = tempfile.mkstemp(prefix=".in-", suffix=".dcm", dir=out_dir)
        os.close(fd)
        try:
            outcome = engine.file(path, tmp)
            if outcome.reason is None and outcome.sop_instance_uid:
                target = out_dir / (outcome.study_uid or "study") / (outcome.series_uid or "series")
                target.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, target / f"{outcome.sop_instance_uid}.dcm")
                written += 1
            else:
                ref = file_ref(landing_path_key(key, in_dir, path, kind=DICOM_KIND))
                quarantined.append({"ref": ref, "sha256": content_hash(path),
                                    "reason": outcome.reason or "processing-error", "detail": outcome.detail})
            outcome.dataset = None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return {"files_in": len(files), "written": written, "quarantined": quarantined,
            "reasons": dict(Counter(q["reason"] for q in quarantined))}
