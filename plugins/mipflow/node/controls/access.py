"""Who may analyse what at a node: the node admin's grants (``HOME/access.json``).

Every analysis request names a researcher and a project; the central site
vouches for them (they are inside the signed request body, see
:mod:`mipflow.protocol.signing`), but the node decides.  A request is allowed only when
the node's own, current grants cover it:

    researcher  the person (``*``: anyone)
    project     the project the analysis belongs to (``*``: any project)
    data_model  ``CODE:VERSION`` (``*``: any data model)
    datasets    list of dataset codes (``["*"]``: every dataset of the data model)
    algorithms  list of algorithm names (``["*"]``: every algorithm in the catalogue)
    expires     last day (UTC, inclusive) the grant applies, or ``never``

Wildcards are only ever the whole value ``*``, written on purpose by the admin
(``mipflow access grant HOME --researcher alice --datasets '*' ...``).  A
request for several datasets is allowed when the union of the grants that
match its researcher, project, data model and algorithm covers every dataset;
a step is answered on the requested datasets the grants cover (:meth:`AccessRegistry.covered`:
a request across nodes names the datasets of every node) and refused if they cover none.
Revoked grants stay in the file (with ``revoked_at``) for the record.  See
``docs/adr/0010-governance.md``.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import threading
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from mipflow.exceptions import ConfigError, DisclosureError
from mipflow.protocol.identity import IDENTITY_RE

ACCESS_FILE = "access.json"
WILDCARD = "*"
NEVER = "never"


#: What the node admin is told when a grant admits any researcher id on any project.
OPEN_GRANT_WARNING = ("WARNING: this grant admits ANY researcher id on ANY project: whoever the central site vouches "
                      "for may analyse these data, and each new project brings a fresh explore budget. Prefer a "
                      "named project (--project P) or researcher (--researcher R).")


def grant_scope(researcher: str | None, project: str | None, *, any_researcher: bool = False,
                any_project: bool = False) -> tuple[str | None, str | None, str | None]:
    """The researcher and project of a grant asked for on the command line, and a warning.

    A wildcard is never implied by a typed ``'*'`` alone: ``--researcher '*'`` needs
    ``--any-researcher`` and ``--project '*'`` needs ``--any-project`` (the flags alone mean
    the wildcard).  Leaving one out keeps its documented meaning (a project grant admits any
    researcher of the project; a researcher grant covers any of their projects).  A grant open
    on both sides returns :data:`OPEN_GRANT_WARNING`.

    Raises
    ------
    ConfigError
        A ``'*'`` without its flag, or a flag beside a named researcher or project.
    """
    for value, flag, what, option in ((researcher, any_researcher, "researcher", "--any-researcher"),
                                      (project, any_project, "project", "--any-project")):
        if value == WILDCARD and not flag:
            raise ConfigError(f"'*' as the {what} admits any {what} id; say so with {option} "
                              f"(instead of --{what} '*')")
        if flag and value not in (None, WILDCARD):
            raise ConfigError(f"{option} and a named {what} contradict each other: give one")
    researcher = WILDCARD if any_researcher else researcher
    project = WILDCARD if any_project else project
    if researcher is None and project is None:
        return researcher, project, None  # AccessRegistry.grant refuses it with its own message
    open_researcher = researcher in (None, WILDCARD)
    open_project = project in (None, WILDCARD)
    return researcher, project, OPEN_GRANT_WARNING if open_researcher and open_project else None


class AccessDenied(DisclosureError):
    """No current grant covers the request (HTTP 403, control ``access``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, control="access")


def check_identity(value: Any, what: str) -> str:
    """Return ``value`` if it is a valid researcher / project identity.

    Raises
    ------
    AccessDenied
        If the value is missing or not a plain identity token.
    """
    if value in (None, ""):
        raise AccessDenied(f"the request names no {what}; every analysis runs on behalf of a "
                           f"researcher and a project")
    if not isinstance(value, str) or not IDENTITY_RE.match(value):
        raise AccessDenied(f"{what} {str(value)[:40]!r} is not a valid identity (letters, digits, '_.@+-', "
                           f"at most 128 characters)")
    return value


def _today() -> date:
    return datetime.now(timezone.utc).date()


@dataclass
class Grant:
    """One approval by the node admin."""

    id: str
    researcher: str
    project: str
    data_model: str
    datasets: list[str]
    algorithms: list[str]
    expires: str
    granted_at: str = ""
    revoked_at: str | None = None
    note: str = ""

    def status(self, today: date | None = None) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked_at:
            return "revoked"
        if self.expires != NEVER and date.fromisoformat(self.expires) < (today or _today()):
            return "expired"
        return "active"

    def matches(self, researcher: str, project: str, data_model: str, algorithm: str | None) -> bool:
        """Whether the grant speaks about this researcher, project, data model (and algorithm)."""
        return (self.researcher in (WILDCARD, researcher) and self.project in (WILDCARD, project)
                and self.data_model in (WILDCARD, data_model)
                and (algorithm is None or WILDCARD in self.algorithms or algorithm in self.algorithms))

    def covers_dataset(self, dataset: str) -> bool:
        return WILDCARD in self.datasets or dataset in self.datasets


def _names(values: Iterable[str] | str, what: str) -> list[str]:
    if isinstance(values, str):
        values = values.split(",")
    out = sorted({v.strip() for v in values if v.strip()})
    if not out:
        raise ConfigError(f"give at least one {what} (or '*' for all, on purpose)")
    if WILDCARD in out and len(out) > 1:
        raise ConfigError(f"{what}: '*' already means all; do not combine it with names")
    for name in out:
        if name != WILDCARD and not re.match(r"^[A-Za-z0-9_.:\-]{1,128}$", name):
            raise ConfigError(f"{what} name {name!r} is not valid")
    return out


def _expiry(value: str) -> str:
    value = (value or "").strip()
    if value.lower() == NEVER:
        return NEVER
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise ConfigError(f"expiry {value!r} must be a date YYYY-MM-DD (last day the grant applies) "
                          f"or 'never'") from None


class AccessRegistry:
    """The grants of one node home, re-read when the file changes (no restart needed)."""

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / ACCESS_FILE
        self._lock = threading.Lock()
        self._seen: tuple[Any, list[Grant]] | None = None

    # -- reading ------------------------------------------------------------
    def grants(self) -> list[Grant]:
        """Every grant in the file (active, expired and revoked)."""
        from mipflow.node.freshness import file_signature

        signature = file_signature(self.path)  # re-read when the file changed (see mipflow.node.freshness)
        with self._lock:
            if self._seen is not None and self._seen[0] == signature:
                return list(self._seen[1])
            grants = self._read()
            self._seen = (signature, grants)
            return list(grants)

    def _read(self) -> list[Grant]:
        if not self.path.is_file():
            return []
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            return [Grant(**item) for item in doc.get("grants", [])]
        except (json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{self.path} is not a valid access file: {exc}") from None

    def _write(self, grants: Sequence[Grant]) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"grants": [asdict(g) for g in grants]}, handle, indent=2)
            handle.write("\n")
        tmp.replace(self.path)
        with self._lock:
            self._seen = None

    # -- admin --------------------------------------------------------------
    def grant(self, *, researcher: str | None = None, project: str | None = None, data_model: str,
              datasets: Iterable[str] | str, algorithms: Iterable[str] | str, expires: str,
              note: str = "") -> Grant:
        """Add a grant.  At least one of ``researcher`` / ``project`` must be given (``*`` on purpose).

        Raises
        ------
        ConfigError
            If an argument is missing or malformed.
        """
        if researcher is None and project is None:
            raise ConfigError("a grant names a researcher, a project, or both (use '*' explicitly for anyone)")
        researcher = WILDCARD if researcher is None else researcher
        project = WILDCARD if project is None else project
        for value, what in ((researcher, "researcher"), (project, "project")):
            if value != WILDCARD and not IDENTITY_RE.match(value):
                raise ConfigError(f"{what} {value!r} is not a valid identity")
        if data_model != WILDCARD and not re.match(r"^[A-Za-z0-9_\-]+:[A-Za-z0-9_.\-]+$", data_model or ""):
            raise ConfigError(f"data model {data_model!r} must be CODE:VERSION (or '*')")
        grant = Grant(id="g-" + secrets.token_hex(4), researcher=researcher, project=project,
                      data_model=data_model, datasets=_names(datasets, "dataset"),
                      algorithms=_names(algorithms, "algorithm"), expires=_expiry(expires),
                      granted_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), note=note)
        self._write([*self._read(), grant])
        return grant

    def revoke(self, grant_id: str | None = None, *, researcher: str | None = None,
               project: str | None = None) -> list[Grant]:
        """Revoke one grant by id, or every unrevoked grant of a researcher and/or project.

        Raises
        ------
        ConfigError
            If nothing matched (so a typo is never silently ignored).
        """
        if not grant_id and researcher is None and project is None:
            raise ConfigError("say which grant(s) to revoke: a grant id, --researcher or --project")
        grants = self._read()
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        revoked = []
        for grant in grants:
            if grant.revoked_at:
                continue
            if grant_id and grant.id != grant_id:
                continue
            if researcher is not None and grant.researcher != researcher:
                continue
            if project is not None and grant.project != project:
                continue
            grant.revoked_at = now
            revoked.append(grant)
        if not revoked:
            raise ConfigError("no unrevoked grant matches " + ", ".join(
                f"{k}={v!r}" for k, v in (("id", grant_id), ("researcher", researcher), ("project", project))
                if v is not None))
        self._write(grants)
        return revoked

    # -- decisions ----------------------------------------------------------
    def check(self, *, researcher: str, project: str, data_model: str, datasets: Sequence[str],
              algorithm: str, today: date | None = None) -> list[str]:
        """Ids of the current grants that cover the request.

        Raises
        ------
        AccessDenied
            With the reason: no grant at all, a dataset or algorithm not covered,
            or only expired / revoked grants.
        """
        today = today or _today()
        check_identity(researcher, "researcher")
        check_identity(project, "project")
        who = f"researcher {researcher!r} (project {project!r})"
        matching = [g for g in self.grants() if g.matches(researcher, project, data_model, algorithm)]
        current = [g for g in matching if g.status(today) == "active"]
        missing = [d for d in datasets if not any(g.covers_dataset(d) for g in current)]
        if current and not missing:
            used = [g.id for g in current if any(g.covers_dataset(d) for d in datasets)]
            return used
        lapsed = [g for g in matching if g.status(today) != "active"
                  and any(g.covers_dataset(d) for d in (missing or datasets))]
        if lapsed:
            detail = "; ".join(f"grant {g.id} {g.status(today)}"
                               + (f" on {g.expires}" if g.status(today) == "expired" else f" at {g.revoked_at}")
                               for g in lapsed)
            raise AccessDenied(f"{who} has no current grant for {algorithm} on {data_model} "
                               f"datasets {missing or list(datasets)} ({detail})")
        if not current:
            raise AccessDenied(f"{who} has no grant for algorithm {algorithm!r} on data model {data_model}")
        raise AccessDenied(f"{who} is not approved for dataset(s) {missing} of {data_model} "
                           f"with {algorithm}")

    def covered(self, *, researcher: str, project: str, data_model: str, datasets: Sequence[str],
                algorithm: str, today: date | None = None) -> tuple[list[str], list[str]]:
        """The requested datasets the current grants cover for ``algorithm``, and those grants' ids.

        A request across several nodes names every node's datasets; a node answers on the ones
        its grants cover (so a grant for the node's own dataset is enough), whether or not it holds
        the others.  Which datasets are covered depends on the grants only, never on what the node
        holds: an answer tells nothing about datasets the researcher is not approved for.

        Raises
        ------
        AccessDenied
            As :meth:`check`, when the grants cover none of the datasets.
        """
        today = today or _today()
        check_identity(researcher, "researcher")
        check_identity(project, "project")
        current = [g for g in self.grants() if g.matches(researcher, project, data_model, algorithm)
                   and g.status(today) == "active"]
        usable = [d for d in datasets if any(g.covers_dataset(d) for g in current)] or list(datasets)
        return usable, self.check(researcher=researcher, project=project, data_model=data_model, datasets=usable,
                                  algorithm=algorithm, today=today)

    def visible_datasets(self, researcher: str, project: str, data_model: str,
                         today: date | None = None) -> tuple[bool, set[str]]:
        """Datasets of ``data_model`` the researcher may use with some algorithm: (all?, names)."""
        current = [g for g in self.grants() if g.matches(researcher, project, data_model, None)
                   and g.status(today) == "active"]
        if any(WILDCARD in g.datasets for g in current):
            return True, set()
        return False, {d for g in current for d in g.datasets}


@dataclass
class GrantView:
    """A grant as ``mipflow access list`` shows it."""

    grant: Grant
    status: str = field(default="active")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.grant), "status": self.status}


def list_grants(root: str | Path, *, include_inactive: bool = False) -> list[dict[str, Any]]:
    """The grants of a node home with their status (current ones only unless ``include_inactive``)."""
    out = []
    for grant in AccessRegistry(root).grants():
        status = grant.status()
        if include_inactive or status == "active":
            out.append(GrantView(grant, status).to_dict())
    return out
