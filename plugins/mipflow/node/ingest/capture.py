"""Capture: find new exports in the landing folder and apply the consent registry.

Files are identified by their SHA-256: the same bytes twice are skipped, a
changed file is a new batch.  The manifest names a file by a keyed hash of
its path, never by the path (:mod:`mipflow.node.files`).  A file modified within ``settle_seconds`` (or
named ``*.part``/``*.tmp``/``.*``) is still being written and is left for the
next run.  The consent registry is a CSV with ``patient_id`` and ``consent``
(``granted``, ``withdrawn`` or ``refused``; optional ``updated_at``, the latest
entry per patient wins).  Only ``granted`` patients are ingested; patients
missing from a registry have not consented.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from mipflow.exceptions import InputFileError
from mipflow.node.files import EHR_KIND, file_ref, landing_path_key, path_index
from mipflow.node.home import NodeHome

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from mipflow.node.store.feature_store import FeatureStore

CONSENT_STATES = ("granted", "withdrawn", "refused")
_IGNORED_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", ".filepart")


@dataclass(frozen=True)
class LandingFile:
    """A file found in the landing folder."""

    path: Path
    sha256: str
    size: int
    status: str  # "new", "known" (same bytes already registered), "empty"


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


def sha256_file(path: str | Path, block_size: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in blocks (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block_size):
            digest.update(chunk)
    return digest.hexdigest()


def is_settled(path: Path, settle_seconds: float, now: float | None = None) -> bool:
    """True when a file has not been modified for ``settle_seconds``."""
    now = time.time() if now is None else now
    return now - path.stat().st_mtime >= settle_seconds


def scan_landing(folder: str | Path, store: "FeatureStore", *, settle_seconds: float = 5.0,
                 patterns: Iterable[str] = ("*.csv",)) -> tuple[list[LandingFile], list[SkippedFile]]:
    """List the CSV exports under ``folder`` (not ``dicom/``), new ones first in name order."""
    folder = Path(folder)
    found: list[LandingFile] = []
    skipped: list[SkippedFile] = []
    if not folder.is_dir():
        return found, skipped
    paths = sorted({p for pattern in patterns for p in folder.rglob(pattern)})
    candidates = sorted(p for p in folder.rglob("*") if p.is_file() and p not in paths
                        and "dicom" not in p.relative_to(folder).parts[:1])
    for path in candidates:
        if path.name.startswith(".") or path.suffix.lower() in _IGNORED_SUFFIXES:
            skipped.append(SkippedFile(path, "still being written (temporary name); will retry next run"))
        else:
            skipped.append(SkippedFile(path, "not a CSV export (expected *.csv); left in place"))
    for path in paths:
        rel = path.relative_to(folder).parts
        if rel and rel[0] == "dicom":
            continue
        if path.name.startswith("."):
            continue
        try:
            settled = is_settled(path, settle_seconds)
        except OSError as exc:
            skipped.append(SkippedFile(path, f"cannot be read right now ({type(exc).__name__}); "
                                             "will retry next run"))
            continue
        if not settled:
            skipped.append(SkippedFile(path, f"modified less than {settle_seconds:g}s ago: still being written; "
                                             "will retry next run"))
            continue
        try:
            size = path.stat().st_size
            digest = sha256_file(path)
        except OSError as exc:  # vanished or unreadable right now (the message would name the file)
            skipped.append(SkippedFile(path, f"cannot be read right now ({type(exc).__name__}); "
                                             "will retry next run"))
            continue
        if store.file_record(digest) is not None:
            status = "known"
        elif size == 0:
            status = "empty"
        else:
            status = "new"
        found.append(LandingFile(path=path, sha256=digest, size=size, status=status))
    return found, skipped


class ConsentRegistry:
    """Consent status by (raw) patient identifier. Lives only in node memory."""

    def __init__(self, status: dict[str, str]) -> None:
        self._status = status

    def __len__(self) -> int:
        return len(self._status)

    def __repr__(self) -> str:  # never list identifiers
        return f"ConsentRegistry({len(self)} patients)"

    @classmethod
    def load(cls, path: str | Path) -> "ConsentRegistry":
        """Read a consent CSV (``patient_id``, ``consent`` and optional ``updated_at``).

        Raises
        ------
        InputFileError
            If the file cannot be read or lacks the required columns or has unknown states.
        """
        import pandas as pd

        path = Path(path)
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        except FileNotFoundError:
            raise InputFileError(f"consent registry {path} does not exist") from None
        except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise InputFileError(f"consent registry {path} is not a readable CSV: {type(exc).__name__}") from None
        missing = {"patient_id", "consent"} - set(frame.columns)
        if missing:
            raise InputFileError(f"consent registry {path} lacks column(s) {sorted(missing)}")
        frame = frame.dropna(subset=["patient_id"])
        frame["patient_id"] = frame["patient_id"].str.strip()
        frame["consent"] = frame["consent"].fillna("").str.strip().str.lower()
        bad = sorted(set(frame["consent"]) - set(CONSENT_STATES))
        if bad:
            raise InputFileError(f"consent registry {path} has unknown consent states {bad}; "
                                 f"use one of {list(CONSENT_STATES)}")
        if "updated_at" in frame.columns:
            frame = frame.sort_values("updated_at", kind="stable", na_position="first")
        latest = frame.drop_duplicates("patient_id", keep="last")
        return cls(dict(zip(latest["patient_id"], latest["consent"])))

    def granted(self, patient_ids: "pd.Series") -> "pd.Series":
        """Boolean mask: True where the patient has granted consent."""
        return patient_ids.fillna("").str.strip().map(self._status).eq("granted")

    def withdrawn(self) -> list[str]:
        """Patients whose consent is withdrawn or refused (their stored rows must go)."""
        return sorted(pid for pid, state in self._status.items() if state != "granted")


def open_registry(path: str | Path | None) -> ConsentRegistry | None:
    """Load a consent registry, or ``None`` (everyone consented) when no path is given."""
    if path is None:
        return None
    return ConsentRegistry.load(path)


def read_head(path: Path, encoding: str, label: str = "the file") -> None:
    """Raise InputFileError if the file's first block is not text in ``encoding``.

    ``label`` names the file in the message (a file reference, never its name:
    see :func:`mipflow.node.files.file_label`).
    """
    block = 1 << 16
    try:
        with open(path, "rb") as handle:
            head = handle.read(block)
    except OSError as exc:
        raise InputFileError(f"{label}: cannot be read ({type(exc).__name__})") from None
    try:
        head.decode(encoding)
    except UnicodeDecodeError as exc:
        if len(head) < block or exc.start < len(head) - 4:  # not a multi-byte char cut at the block edge
            raise InputFileError(f"{label}: not valid {encoding} text (byte offset {exc.start}); "
                                 f"re-export as {encoding} or set 'encoding' in the source profile") from None


def resolve_consent(home: NodeHome, consent: str | Path | None) -> ConsentRegistry | None:
    """The registry named, else ``HOME/consent.csv`` when present, else ``None`` (all consented)."""
    if consent is not None:
        return open_registry(consent)
    if home.consent_path.is_file():
        return open_registry(home.consent_path)
    return None


def landing_source(home: NodeHome, path: Path) -> str | None:
    """The landing source of a file: its first folder below ``landing/`` when ``profiles/<it>.json`` exists.

    A folder without a profile is read with the default profile and is no
    source: its name (which may be a patient's) is never stored.
    """
    rel = path.relative_to(home.landing_dir).parts
    if len(rel) > 1 and (home.profiles_dir / f"{rel[0]}.json").is_file():
        return rel[0]
    return None


def landing_sources(home: NodeHome, store: FeatureStore) -> list[dict[str, Any]]:
    """New files in the landing folder with their source (for the capture DAG).

    Each item has ``path`` (for this process only: never log, store or return
    it from a task), ``key`` (the manifest's path key), ``file`` (the
    reference), ``sha256``, ``size``, ``status`` and ``source``.
    """
    found, skipped = scan_landing(home.landing_dir, store, settle_seconds=home.settings.settle_seconds)
    key = home.key()
    items = []
    for item in found:
        path_key = landing_path_key(key, home.landing_dir, item.path, kind=EHR_KIND)
        items.append({"path": str(item.path), "key": path_key, "file": file_ref(path_key), "sha256": item.sha256,
                      "size": item.size, "status": item.status, "source": landing_source(home, item.path)})
    for item in skipped:
        path_key = landing_path_key(key, home.landing_dir, item.path, kind=EHR_KIND)
        items.append({"path": str(item.path), "key": path_key, "file": file_ref(path_key), "sha256": "",
                      "size": 0, "status": "skipped", "reason": item.reason, "source": None})
    return items


def landing_csv_files(home: NodeHome) -> list[Path]:
    """Every file below ``landing/`` outside ``landing/dicom/`` (the EHR side of the landing folder)."""
    root = home.landing_dir
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != "dicom")


def landing_index(home: NodeHome) -> dict[str, Path]:
    """Path key -> path of every EHR landing file (to find a manifest entry's file again)."""
    return path_index(home.key(), home.landing_dir, landing_csv_files(home), kind=EHR_KIND)
