"""A PACS as an imaging source: stable studies from Orthanc's ``/changes`` feed, by a committed cursor.

The node home's ``pacs.json`` names the PACS, never its credentials::

    {"name": "main", "url": "http://pacs.hospital.local:8042",
     "credentials": {"secret_file": "secrets/pacs.auth"}   # a file in the home: "user:password", mode 0600
                  | {"env": "MIPFLOW_PACS_AUTH"}            # an environment variable: "user:password"
                  | {"airflow_conn_id": "pacs_main"},       # an Airflow connection (login, password)
     "max_studies": 100}                                    # stable studies per pull (optional)

:func:`pull_pacs` reads the PACS's change log after the node's cursor, keeps the ``StableStudy``
changes (Orthanc emits one ``StableAge`` seconds after a study's last instance arrived, again when
instances are added later), downloads every instance of those studies
(``/studies/{id}/instances``, ``/instances/{id}/file``) into ``landing/dicom/pacs/<source>/``
under a keyed name (HMAC of Orthanc's instance id: no identifier in a path) and records the pull
(its change range and its instances' SHA-256) in ``mipflow_pacs_pulls``.  From there the unchanged
imaging chain takes over: capture (manifest by content hash and keyed path hash, consent),
PS3.15 de-identification, features, load.  :func:`commit_pacs` runs after the load: it accounts
for every instance of each open pull (``loaded``, ``quarantined`` with its reason, ``no_consent``,
``failed``, or still ``waiting``) and, once none is waiting, advances the cursor
(``mipflow_watermarks``, compare-and-set from the pull's start) in the same transaction as it
closes the pull.  A crash anywhere before leaves the cursor where it was: the rerun downloads the
same studies again into the same names, capture knows their bytes, nothing is lost or doubled.

Nothing here logs or raises a value from a DICOM header, an Orthanc id or the credentials: errors
name the source, the HTTP status or the exception's class.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import sqlalchemy as sa

from mipflow.exceptions import ConfigError, InputFileError, MipflowError
from mipflow.node.files import read_private_line
from mipflow.node.home import NodeHome
from mipflow.node.imaging.capture import PACS_FOLDER
from mipflow.node.imaging.stages import DATA_MODEL, KIND
from mipflow.node.store.feature_store import FeatureStore, open_store, utcnow
from mipflow.node.store.tables import (
    batches_table,
    files_table,
    pacs_pulls_table,
    quarantine_table,
    watermarks_table,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "pacs.json"
#: Resolves an Airflow connection id to ``(login, password)`` (the DAG tasks pass one).
CredentialResolver = Callable[[str], "tuple[str, str]"]
_CREDENTIAL_KEYS = {"user", "username", "login", "password", "passwd", "token", "auth"}
_KINDS = ("secret_file", "env", "airflow_conn_id")


class PacsError(MipflowError):
    """The PACS cannot be read (unreachable, refused, unexpected answer)."""


@dataclass(frozen=True)
class PacsSource:
    """The node's PACS: an Orthanc REST URL and where its credentials are kept."""

    name: str
    url: str
    credentials: tuple[str, str] | None = None  # (kind, name): secret_file | env | airflow_conn_id
    max_studies: int = 100
    timeout: float = 60.0

    @classmethod
    def from_dict(cls, doc: Any) -> "PacsSource":
        if not isinstance(doc, Mapping):
            raise ConfigError(f"{CONFIG_FILE} must be a JSON object")
        bad = sorted(k for k in doc if k.lower() in _CREDENTIAL_KEYS)
        if bad:
            raise ConfigError(f"{CONFIG_FILE} must not hold credentials ({bad}); name a secret file, an "
                              "environment variable or an Airflow connection under 'credentials'")
        unknown = sorted(set(doc) - {"name", "url", "credentials", "max_studies", "timeout"})
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in {CONFIG_FILE}")
        name = doc.get("name", "pacs")
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{CONFIG_FILE}: 'name' must be letters, digits, '_' or '-'")
        url = doc.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"{CONFIG_FILE}: 'url' must be the PACS's REST URL (http:// or https://)")
        if "@" in url.split("://", 1)[1].split("/", 1)[0]:
            raise ConfigError(f"{CONFIG_FILE}: 'url' must not carry credentials; name them under 'credentials'")
        creds = doc.get("credentials")
        kind_name: tuple[str, str] | None = None
        if creds is not None:
            if not isinstance(creds, Mapping) or len(creds) != 1 or next(iter(creds)) not in _KINDS \
                    or not isinstance(next(iter(creds.values())), str) or not next(iter(creds.values())).strip():
                raise ConfigError(f"{CONFIG_FILE}: 'credentials' must be exactly one of {{\"secret_file\": PATH}}, "
                                  "{\"env\": VARIABLE} or {\"airflow_conn_id\": CONN_ID}")
            kind_name = (next(iter(creds)), next(iter(creds.values())).strip())
        max_studies = doc.get("max_studies", 100)
        if not isinstance(max_studies, int) or max_studies < 1:
            raise ConfigError(f"{CONFIG_FILE}: 'max_studies' must be a positive integer")
        return cls(name=name, url=url.rstrip("/"), credentials=kind_name, max_studies=max_studies,
                   timeout=float(doc.get("timeout", 60.0)))

    @property
    def cursor_key(self) -> str:
        """The source's row in ``mipflow_watermarks``."""
        return f"pacs:{self.name}"


def load_pacs_source(home: NodeHome) -> PacsSource | None:
    """The node's ``pacs.json`` (``None`` when the node has no PACS)."""
    path = home.root / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{CONFIG_FILE} is not valid JSON (line {exc.lineno})") from None
    return PacsSource.from_dict(doc)


def pacs_credentials(source: PacsSource, home: NodeHome,
                     connections: CredentialResolver | None = None) -> tuple[str, str] | None:
    """``(user, password)`` of the PACS (a secret: never log it), or ``None`` without credentials."""
    if source.credentials is None:
        return None
    kind, name = source.credentials
    if kind == "secret_file":
        pair = read_private_line(home.root, name, label=f"PACS {source.name}: the credentials'",
                                 holds="user:password")
    elif kind == "env":
        pair = os.environ.get(name, "")
        if not pair:
            raise ConfigError(f"PACS {source.name}: environment variable {name} (user:password) is not set")
    else:
        if connections is not None:
            return connections(name)
        uri = os.environ.get(f"AIRFLOW_CONN_{name.upper()}", "")
        if "://" not in uri:
            raise ConfigError(f"PACS {source.name}: Airflow connection {name!r} is not available here; run "
                              f"through the node DAGs or set AIRFLOW_CONN_{name.upper()} (URI form)")
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(uri)
        return unquote(parts.username or ""), unquote(parts.password or "")
    user, sep, password = pair.partition(":")
    if not sep or not user:
        raise ConfigError(f"PACS {source.name}: the credentials must read user:password")
    return user, password


class OrthancClient:
    """The few Orthanc REST calls the pull needs (standard library HTTP, basic auth)."""

    def __init__(self, source: PacsSource, auth: tuple[str, str] | None) -> None:
        self.source = source
        self._header = None if auth is None else "Basic " + base64.b64encode(
            f"{auth[0]}:{auth[1]}".encode()).decode()

    def _get(self, path: str) -> bytes:
        req = urllib.request.Request(self.source.url + path, method="GET")
        if self._header:
            req.add_header("Authorization", self._header)
        try:
            with urllib.request.urlopen(req, timeout=self.source.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise FileNotFoundError(path) from None
            raise PacsError(f"PACS {self.source.name} answered HTTP {exc.code}"
                            + (" (check the credentials)" if exc.code in (401, 403) else "")) from None
        except (urllib.error.URLError, OSError) as exc:
            raise PacsError(f"PACS {self.source.name} is unreachable ({type(exc).__name__})") from None

    def _json(self, path: str) -> Any:
        try:
            return json.loads(self._get(path))
        except json.JSONDecodeError:
            raise PacsError(f"PACS {self.source.name} did not answer JSON") from None

    def changes(self, since: int, limit: int = 500) -> Iterator[dict[str, Any]]:
        """Every change after ``since`` in order (``/changes``, paged)."""
        while True:
            page = self._json(f"/changes?since={int(since)}&limit={int(limit)}")
            for change in page.get("Changes", []):
                yield change
                since = max(since, int(change["Seq"]))
            if page.get("Done", True) or not page.get("Changes"):
                return

    def study_instances(self, study_id: str) -> list[str]:
        return [item["ID"] for item in self._json(f"/studies/{study_id}/instances")]

    def instance_file(self, instance_id: str) -> bytes:
        return self._get(f"/instances/{instance_id}/file")


def pacs_landing(home: NodeHome, source: PacsSource) -> Path:
    """``landing/dicom/pacs/<source>/``: where the pull writes the downloaded instances."""
    return home.landing_dir / "dicom" / PACS_FOLDER / source.name


def _file_name(key: bytes, source: PacsSource, instance_id: str) -> str:
    digest = hmac.new(key, f"pacs-instance:{source.name}:{instance_id}".encode(), hashlib.sha256).hexdigest()
    return digest[:40] + ".dcm"


def _write_atomic(folder: Path, name: str, data: bytes) -> None:
    tmp = folder / f".{name}.part"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, folder / name)


def committed_cursor(store: FeatureStore, source: PacsSource) -> int | None:
    """The change sequence the node has fully loaded up to (``None`` before the first commit)."""
    with store.engine.connect() as conn:
        value = conn.execute(sa.select(watermarks_table.c.changes).where(
            watermarks_table.c.source == source.cursor_key)).scalar()
    return None if value is None else int(value)


def open_pulls(store: FeatureStore, source: PacsSource) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(pacs_pulls_table).where(
            pacs_pulls_table.c.source == source.cursor_key, pacs_pulls_table.c.state == "open")
            .order_by(pacs_pulls_table.c.since)).all()
    return [dict(r._mapping) for r in rows]


def pull_pacs(home: NodeHome, *, store: FeatureStore | None = None,
              connections: CredentialResolver | None = None,
              client: OrthancClient | None = None) -> dict[str, Any]:
    """Download the studies that became stable after the cursor into ``landing/dicom/pacs/``.

    Starts after the committed cursor, or after the last open (not yet
    committed) pull.  Reads at most ``max_studies`` stable studies.

    Returns
    -------
    dict
        ``configured``, ``source``, ``since``, ``until``, ``studies``,
        ``instances``, ``gone`` (studies deleted from the PACS before they were
        read), ``pull_id`` (``None`` when nothing new); no identifier.
    """
    source = load_pacs_source(home)
    if source is None:
        return {"configured": False}
    store = store or open_store(home)
    client = client or OrthancClient(source, pacs_credentials(source, home, connections))
    pending = open_pulls(store, source)
    since = pending[-1]["until"] if pending else (committed_cursor(store, source) or 0)
    studies: list[str] = []
    until = since
    for change in client.changes(since):
        until = int(change["Seq"])
        if change.get("ChangeType") == "StableStudy" and change.get("ResourceType") == "Study":
            if change["ID"] not in studies:
                studies.append(change["ID"])
            if len(studies) >= source.max_studies:
                break
    out: dict[str, Any] = {"configured": True, "source": source.name, "since": since, "until": until,
                           "studies": 0, "instances": 0, "gone": 0, "pull_id": None}
    if until == since:
        return out
    key = home.key()
    folder = pacs_landing(home, source)
    folder.mkdir(parents=True, exist_ok=True)
    instances: list[tuple[str, str]] = []
    for study in studies:
        try:
            ids = client.study_instances(study)
        except FileNotFoundError:
            out["gone"] += 1  # deleted from the PACS since it became stable
            continue
        for instance in ids:
            try:
                data = client.instance_file(instance)
            except FileNotFoundError:
                continue  # deleted meanwhile: the study's next StableStudy change (if any) brings the rest
            name = _file_name(key, source, instance)
            _write_atomic(folder, name, data)
            instances.append((name, hashlib.sha256(data).hexdigest()))
        out["studies"] += 1
    out["instances"] = len(instances)
    pull_id = "p" + hashlib.sha256(f"{source.cursor_key}:{since}:{until}".encode()).hexdigest()[:20]
    with store.begin() as conn:
        if conn.execute(sa.select(watermarks_table.c.source).where(
                watermarks_table.c.source == source.cursor_key)).first() is None:
            conn.execute(watermarks_table.insert().values(source=source.cursor_key, data_model=DATA_MODEL,
                                                          changes=None, deletions=None, batch_id=None,
                                                          updated_at=utcnow()))
        conn.execute(pacs_pulls_table.delete().where(pacs_pulls_table.c.pull_id == pull_id))
        conn.execute(pacs_pulls_table.insert().values(
            pull_id=pull_id, source=source.cursor_key, since=since, until=until,
            instances=json.dumps(instances), state="open", accounting="{}", created_at=utcnow()))
    out["pull_id"] = pull_id
    log.info("PACS %s: changes %d..%d, %d stable study(ies), %d instance(s) downloaded, %d gone",
             source.name, since, until, out["studies"], out["instances"], out["gone"])
    return out


def account_instances(home: NodeHome, store: FeatureStore, folder: Path,
                      instances: list[tuple[str, str]]) -> dict[str, Any]:
    """Where each downloaded instance went: loaded, quarantined (reasons), no_consent, failed or waiting."""
    import pandas as pd

    from mipflow.node.ingest.capture import resolve_consent

    shas = sorted({sha for _, sha in instances})
    manifest: dict[str, str | None] = {}
    batches: dict[str, dict[str, Any]] = {}
    quarantined: dict[str, str] = {}
    with store.engine.connect() as conn:
        for start in range(0, len(shas), 500):
            part = shas[start:start + 500]
            manifest.update({r[0]: r[1] for r in conn.execute(sa.select(
                files_table.c.sha256, files_table.c.batch_id).where(
                files_table.c.kind == KIND, files_table.c.sha256.in_(part)))})
        ids = sorted({b for b in manifest.values() if b})
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            batches.update({r.batch_id: dict(r._mapping) for r in conn.execute(sa.select(
                batches_table.c.batch_id, batches_table.c.status).where(batches_table.c.batch_id.in_(part)))})
            for row in conn.execute(sa.select(quarantine_table.c.reason, quarantine_table.c.record).where(
                    quarantine_table.c.batch_id.in_(part))):
                sha = json.loads(row.record or "{}").get("sha256")
                if sha:
                    quarantined[sha] = row.reason
    counts: Counter = Counter()
    reasons: Counter = Counter()
    unregistered: list[tuple[str, str]] = []
    for name, sha in instances:
        if sha in quarantined:
            counts["quarantined"] += 1
            reasons[quarantined[sha]] += 1
        elif sha not in manifest:
            unregistered.append((name, sha))
        else:
            status = batches.get(manifest[sha] or "", {}).get("status")
            counts["loaded" if status == "loaded" else "failed" if status == "failed" else "waiting"] += 1
    if unregistered:  # not captured: for lack of consent, else capture has not run yet
        registry = resolve_consent(home, None)
        pids = [_patient_id(folder / name) for name, _ in unregistered]
        if registry is None:
            counts["waiting"] += len(unregistered)
        else:
            known = [p for p in pids if p is not None]
            granted = dict(zip(known, registry.granted(pd.Series(known, dtype=object)).tolist())) if known else {}
            for pid in pids:
                counts["no_consent" if pid is not None and pid.strip() and not granted.get(pid) else "waiting"] += 1
    total = len(instances)
    out = {"instances": total, **{k: counts.get(k, 0) for k in
                                  ("loaded", "quarantined", "no_consent", "failed", "waiting")},
           "reasons": dict(reasons)}
    out["conserved"] = total == sum(out[k] for k in ("loaded", "quarantined", "no_consent", "failed", "waiting"))
    return out


def _patient_id(path: Path) -> str | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception:  # noqa: BLE001 - unreadable: capture quarantines it
        return None
    return str(ds.get("PatientID", "") or "")


def commit_pacs(home: NodeHome, *, store: FeatureStore | None = None) -> list[dict[str, Any]]:
    """After the load: close every open pull whose instances all ended, advancing the cursor.

    Pulls commit in order; the first with an instance still ``waiting`` stops
    the walk (its cursor stays, the next run catches up).

    Returns
    -------
    list of dict
        Per open pull: ``pull_id``, ``since``, ``until``, ``committed`` and its
        instance accounting (:func:`account_instances`).
    """
    source = load_pacs_source(home)
    if source is None:
        return []
    store = store or open_store(home)
    folder = pacs_landing(home, source)
    out = []
    for pull in open_pulls(store, source):
        instances = [tuple(item) for item in json.loads(pull["instances"])]
        accounting = account_instances(home, store, folder, instances)  # type: ignore[arg-type]
        item = {"pull_id": pull["pull_id"], "since": pull["since"], "until": pull["until"], **accounting,
                "committed": False}
        out.append(item)
        if accounting["waiting"]:
            log.info("PACS %s: pull %s has %d instance(s) still in the chain; cursor stays", source.name,
                     pull["pull_id"], accounting["waiting"])
            break
        w = watermarks_table.c
        before = None if pull["since"] == 0 else str(pull["since"])
        with store.begin() as conn:
            moved = conn.execute(watermarks_table.update().where(
                w.source == source.cursor_key, w.changes.is_not_distinct_from(before)).values(
                changes=str(pull["until"]), batch_id=pull["pull_id"], updated_at=utcnow()))
            if moved.rowcount != 1:
                raise InputFileError(f"PACS {source.name}: the cursor moved since pull {pull['pull_id']} started; "
                                     "not committed")
            conn.execute(pacs_pulls_table.update().where(pacs_pulls_table.c.pull_id == pull["pull_id"]).values(
                state="committed", accounting=json.dumps(accounting, sort_keys=True), committed_at=utcnow()))
        item["committed"] = True
        log.info("PACS %s: pull %s committed, cursor at change %d: %d loaded, %d quarantined, %d without "
                 "consent, %d failed", source.name, pull["pull_id"], pull["until"], accounting["loaded"],
                 accounting["quarantined"], accounting["no_consent"], accounting["failed"])
    return out


def run_pacs(home: NodeHome, *, dataset: str | None = None, store: FeatureStore | None = None,
             connections: CredentialResolver | None = None) -> dict[str, Any]:
    """The whole PACS chain in one call (CLI, tests): pull, capture, de-identify, load, commit."""
    from mipflow.node.imaging.pipeline import run_imaging

    store = store or open_store(home)
    pull = pull_pacs(home, store=store, connections=connections)
    chain = run_imaging(home, dataset=dataset, store=store)
    commits = commit_pacs(home, store=store)
    return {"pull": pull, "chain": chain, "commits": commits}
