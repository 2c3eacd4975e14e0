"""Which projects a node answers in which mode (ADR 0038): the node home's ``explore.json``.

The node admin gives a project a mode of its own (``mipflow mode set HOME --project P explore|standard|default``,
``mipflow explore enable|disable``); a project without one is answered in the node's ``default_mode``, and a project
with an approved study in study mode (:func:`project_mode`).  Explore mode itself (keyed noise, charged per release)
is :mod:`mipflow.node.controls.explore`.  Nothing here keeps a value or a pseudonym: project names and dates only.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mipflow.exceptions import ConfigError

#: The node home's file of the projects given a mode of their own (explore or standard; ADR 0038).
EXPLORE_FILE = "explore.json"
#: The modes a project can be given (a study is approved with ``mipflow study``, not set here).
MODES = ("explore", "standard")

def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def modes_path(root: str | Path) -> Path:
    """The node home's file of the projects given a mode of their own."""
    return Path(root) / EXPLORE_FILE


def _check_project(project: str) -> None:
    from mipflow.protocol.identity import IDENTITY_RE

    if not isinstance(project, str) or not IDENTITY_RE.match(project):
        raise ConfigError(f"project {str(project)[:40]!r} is not a valid identity")


def read_modes(root: str | Path) -> dict[str, dict[str, Any]]:
    """Project -> its record (``mode``: ``explore`` or ``standard``, and when it was set), for the
    projects the node admin gave a mode of their own at the node ``root`` (ADR 0038).  A record
    without ``mode`` (written before ADR 0038) is an explore record."""
    path = modes_path(root)
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        projects = doc["projects"]
        if not isinstance(projects, dict):
            raise TypeError
        out = {str(k): {"mode": "explore", **dict(v)} for k, v in projects.items()}
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} is not a valid explore file") from None
    if any(record["mode"] not in MODES for record in out.values()):
        raise ConfigError(f"{path} names a mode other than {' or '.join(MODES)}")
    return out


def read_projects(root: str | Path) -> dict[str, dict[str, Any]]:
    """Project -> its record (``enabled_at``), for the projects put in explore mode explicitly at the
    node ``root`` (``mipflow explore enable`` or ``mipflow mode set ... explore``)."""
    return {name: record for name, record in read_modes(root).items() if record["mode"] == "explore"}


def project_mode(root: str | Path, project: str | None, default_mode: str) -> tuple[str, str]:
    """How the node ``root`` answers ``project``, and why: ``("study", name)`` for an approved study,
    ``(mode, "project")`` for a mode the admin set for the project, else ``(default_mode, "default")``."""
    if project:
        study = _approved_study(root, project)
        if study is not None:
            return "study", study
        record = read_modes(root).get(project)
        if record is not None:
            return str(record["mode"]), "project"
    return default_mode, "default"


def _write_projects(root: str | Path, projects: dict[str, dict[str, Any]]) -> None:
    path = modes_path(root)
    tmp = path.with_suffix(".json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"projects": projects}, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _approved_study(root: str | Path, project: str) -> str | None:
    from mipflow.node.controls.study import read_record

    record = read_record(root, project)
    if record is not None and record.get("status") == "approved":
        return str(record.get("protocol", {}).get("name", ""))
    return None


def refuse_study_if_exploring(root: str | Path, project: str) -> None:
    """For ``mipflow study approve``: a project in explore mode cannot get a study.

    Raises
    ------
    ConfigError
        If ``project`` is in explore mode at the node ``root``.
    """
    if project in read_projects(root):
        raise ConfigError(f"project {project!r} is in explore mode at this node (perturbed answers): disable it "
                          "first (mipflow explore disable) to approve a study for exact answers")


def set_mode(root: str | Path, project: str, mode: str) -> dict[str, Any]:
    """Give ``project`` a mode of its own at the node ``root`` (``explore`` or ``standard``), or
    ``default`` to remove it (the node's ``default_mode`` applies again).  What the project spent in
    explore mode stays in the privacy ledger whatever its mode becomes.

    Raises
    ------
    ConfigError
        If the mode is unknown, the project has an approved study (exact answers: withdraw it first),
        or is not a valid identity.
    """
    _check_project(project)
    if mode not in (*MODES, "default"):
        raise ConfigError(f"mode {str(mode)[:20]!r} is explore, standard or default")
    study = _approved_study(root, project)
    if study is not None:
        raise ConfigError(f"project {project!r} has an approved study ({study!r}, exact answers): withdraw it "
                          f"first (mipflow study withdraw) to answer the project in {mode} mode")
    projects = read_modes(root)
    before = projects.get(project)
    if mode == "default":
        if before is None:
            return {"project": project, "mode": "default", "status": "unchanged"}
        projects.pop(project)
        status = "removed"
    elif before is not None and before["mode"] == mode:
        return {"project": project, "status": f"already {mode}", **before}
    else:
        projects[project] = {"mode": mode, ("enabled_at" if mode == "explore" else "set_at"): now_utc()}
        status = "set"
    _write_projects(root, projects)
    return {"project": project, "status": status, **projects.get(project, {"mode": "default"})}


def enable(root: str | Path, project: str) -> dict[str, Any]:
    """Put ``project`` in explore mode at the node ``root`` (:func:`set_mode` with ``explore``).

    Raises
    ------
    ConfigError
        If the project has an approved study (exact answers), or is not a valid identity.
    """
    _check_project(project)
    study = _approved_study(root, project)
    if study is not None:
        raise ConfigError(f"project {project!r} has an approved study ({study!r}, exact answers): withdraw it "
                          "first (mipflow study withdraw) to put the project in explore mode")
    before = read_modes(root).get(project)
    if before is not None and before["mode"] == "explore":
        return {"project": project, "mode": "explore", "status": "already enabled", **before}
    set_mode(root, project, "explore")
    return {"project": project, "status": "enabled", **read_modes(root)[project]}


def disable(root: str | Path, project: str, default_mode: str = "explore") -> dict[str, Any]:
    """Remove ``project``'s explicit explore mode: the node's ``default_mode`` applies to it again
    (still explore under the shipped default; ``mipflow mode set ... standard`` for exact answers
    under per-request controls).  What it spent stays in the privacy ledger.

    Raises
    ------
    ConfigError
        If the project is not in explore mode explicitly.
    """
    _check_project(project)
    projects = read_modes(root)
    if project not in projects or projects[project]["mode"] != "explore":
        raise ConfigError(f"project {project!r} is not in explore mode explicitly at this node "
                          f"(the node's default_mode is {default_mode})")
    record = projects.pop(project)
    _write_projects(root, projects)
    return {"project": project, "mode": default_mode, "status": "disabled",
            "note": f"the node's default_mode ({default_mode}) applies to the project again",
            "enabled_at": record.get("enabled_at")}


def show(root: str | Path, settings: Any, project: str | None = None) -> dict[str, Any]:
    """The projects in explore mode, the explore settings and what each project spent (admin only)."""
    from mipflow.node.controls.privacy_budget import PrivacyLedger

    projects = read_projects(root)
    if project is not None:
        _check_project(project)
        mode, why = project_mode(root, project, settings.default_mode)
        projects = {project: projects[project]} if project in projects else \
            ({project: {"mode": "explore", "by": "the node's default_mode"}} if (mode, why) == ("explore", "default")
             else {})
    ledger = PrivacyLedger(root)
    out = {}
    for name, record in sorted(projects.items()):
        spent = ledger.project_spent(name, settings.dp_project_budget_delta)
        out[name] = {**record, "spent": {"epsilon": spent.epsilon, "delta": spent.delta, "releases": spent.releases}}
    return {"explore": out,
            "settings": {"default_mode": settings.default_mode, "explore_mechanism": settings.explore_mechanism, "explore_epsilon": settings.explore_epsilon,
                         "explore_budget_epsilon": settings.explore_budget_epsilon,
                         "explore_project_budget_epsilon": settings.explore_project_budget_epsilon,
                         "dp_budget_delta": settings.dp_budget_delta}}


def show_modes(root: str | Path, settings: Any, project: str | None = None) -> dict[str, Any]:
    """``mipflow mode show``: the node's default mode and how each project with a study or a mode of
    its own (or the named project) is answered (admin only)."""
    from mipflow.node.controls.study import list_records

    names = set(read_modes(root)) | {str(r["project"]) for r in list_records(root) if r.get("project")}
    if project is not None:
        _check_project(project)
        names = {project}
    out = {}
    for name in sorted(names):
        mode, why = project_mode(root, name, settings.default_mode)
        out[name] = {"mode": mode, "by": {"default": "the node's default_mode", "project": "mipflow mode set"}
                     .get(why, f"approved study {why!r}")}
    return {"default_mode": settings.default_mode, "projects": out,
            "modes": {"study": "exact, inside an approved protocol (mipflow study)",
                      "explore": "perturbed, keyed noise charged per release (ADR 0032)",
                      "standard": "exact, per-request controls whose refusals read the rows (docs/privacy.md 4)"}}
