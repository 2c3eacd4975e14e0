"""Landing files named without their names: keyed path hashes and short file references.

Hospitals often put patient names or record numbers in export file and
folder names.  Neither the feature store nor a log line may carry them, so a
landing file is known by

* its **path key**, ``hmac-sha256:`` and the hex HMAC-SHA256, keyed with the
  node secret, of its POSIX path relative to its landing root
  (:func:`landing_path_key`): what the manifest (``mipflow_files.path``)
  stores beside the content SHA-256.  The same file gets the same key on
  every run; without the node key the key reveals nothing of the path;
* its **file reference**, the first :data:`REF_LENGTH` hex digits of that
  HMAC (:func:`file_ref`): what batch records, messages and log lines show.
  ``mipflow node files HOME`` maps references back to local paths, on the
  node's own console only.

Each kind of manifest entry hashes in its own context (``dicom`` paths
relative to ``landing/dicom/``, ``ehr-csv`` paths relative to ``landing/``;
an EHR file ingested from outside ``landing/`` is keyed by its absolute
path), so the two pipelines never share a key.

The module is standard library only; it imports nothing from Airflow.
"""
from __future__ import annotations

import hashlib
import hmac
import stat
from pathlib import Path
from typing import Iterable

__all__ = [
    "DICOM_KIND",
    "EHR_KIND",
    "PATH_KEY_PREFIX",
    "REF_LENGTH",
    "below",
    "file_label",
    "file_ref",
    "is_path_key",
    "landing_path_key",
    "path_index",
    "relative_name",
]

#: Manifest kinds (``mipflow_files.kind``).
EHR_KIND = "ehr-csv"
DICOM_KIND = "dicom"
#: What every stored path key starts with.
PATH_KEY_PREFIX = "hmac-sha256:"
#: Hex digits of the HMAC in a file reference (48 bits: unique among a node's files in practice).
REF_LENGTH = 12
_CONTEXTS = {DICOM_KIND: b"dicom-landing-path:", EHR_KIND: b"ehr-landing-path:"}


def below(root: Path, path: str | Path) -> str | None:
    """The POSIX path of ``path`` below ``root``, or ``None`` when it is not below it.

    ``path`` is tried as given, then made absolute, then with symbolic links
    resolved, so the same file reached from another working directory or
    through a link gets the same name.
    """
    path, root = Path(path), Path(root)
    for base, target in ((root, path), (root.absolute(), path.absolute()), (root.resolve(), path.resolve())):
        try:
            return target.relative_to(base).as_posix()
        except ValueError:
            continue
    return None


def relative_name(root: Path | None, path: str | Path) -> str:
    """The POSIX path of ``path`` below ``root`` (:func:`below`), else its absolute path."""
    rel = below(root, path) if root is not None else None
    return rel if rel is not None else Path(path).resolve().as_posix()


def landing_path_key(key: bytes, root: Path | None, path: str | Path, *, kind: str) -> str:
    """The manifest's name for a landing file: keyed hash of its path below ``root``.

    Parameters
    ----------
    key : bytes
        The node secret.
    root : Path or None
        The landing root of this kind of file (``landing/dicom/`` for
        imaging, ``landing/`` for EHR exports); a path outside it (or no
        root) is keyed by its absolute path.
    path : str or Path
        The file.
    kind : str
        The manifest kind, :data:`DICOM_KIND` or :data:`EHR_KIND` (each has
        its own HMAC context).

    Returns
    -------
    str
        ``hmac-sha256:`` followed by 64 hex digits.
    """
    try:
        context = _CONTEXTS[kind]
    except KeyError:
        raise ValueError(f"unknown manifest kind {kind!r}; known: {sorted(_CONTEXTS)}") from None
    rel = relative_name(root, path).encode("utf-8", "surrogateescape")
    return PATH_KEY_PREFIX + hmac.new(key, context + rel, hashlib.sha256).hexdigest()


def is_path_key(value: str) -> bool:
    """True when ``value`` is a path key, not a raw path (stores from before the keys hold raw paths)."""
    digest = value[len(PATH_KEY_PREFIX):]
    return (value.startswith(PATH_KEY_PREFIX) and len(digest) == 64
            and all(c in "0123456789abcdef" for c in digest))


def file_ref(path_key: str) -> str:
    """The short reference of a file (first :data:`REF_LENGTH` hex digits of its path key's HMAC)."""
    if not is_path_key(path_key):
        raise ValueError("not a landing path key")
    return path_key[len(PATH_KEY_PREFIX):len(PATH_KEY_PREFIX) + REF_LENGTH]


def file_label(ref: str) -> str:
    """How messages and log lines name a file: ``file <ref>``."""
    return f"file {ref}"


def path_index(key: bytes, root: Path | None, paths: Iterable[Path], *, kind: str) -> dict[str, Path]:
    """Path key -> path of each of ``paths`` (to find a manifest entry's file again)."""
    return {landing_path_key(key, root, p, kind=kind): p for p in paths}


def read_private_line(root: Path, name: str, *, label: str, holds: str) -> str:
    """The first line of the secret file ``name`` (relative to the node home ``root``), which only
    its owner may read: a PACS's ``user:password``, an EHR database's URL.  Never log what it returns.

    Raises
    ------
    ConfigError
        ``"<label> secret file cannot be read ..."`` or ``"... is open to other users ..."``; the
        message never holds the file's content.
    """
    from mipflow.exceptions import ConfigError

    path = Path(name) if Path(name).is_absolute() else root / name
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{label} secret file cannot be read ({type(exc).__name__}); write {holds} into it, "
                          "mode 0600") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{label} secret file is open to other users; chmod 600 it")
    return text.splitlines()[0] if text else ""
