"""Central result store: a results table and one JSON file per run, with provenance.

``CENTRAL_HOME`` (``MIPFLOW_CENTRAL_HOME``) holds ``results.sqlite`` (or the
``MIPFLOW_RESULTS_DB_URL`` database) and ``results/<run_id>.json``.

A run that produced no result is stored too (:func:`failed_outcome`), with ``status``
``"refused"`` (nodes refused it) or ``"failed"`` (anything else), the error, and each node's
control, public refusal text and what to change: the results pages list it beside the results.
"""
from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from mipflow import __version__

metadata = sa.MetaData()
results_table = sa.Table(
    "mipflow_results", metadata,
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("algorithm", sa.String(80), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("request", sa.Text, nullable=False),
    sa.Column("result", sa.Text, nullable=False),
    sa.Column("contributed", sa.Text, nullable=False),
    sa.Column("excluded", sa.Text, nullable=False),
    sa.Column("software", sa.String(80), nullable=False),
    sa.Column("status", sa.String(20), nullable=False, server_default="succeeded"),
)
#: Results shared beyond their owner (ADR 0011, "private results"): with one user (``kind`` ``user``,
#: ``name`` the user) or with the members of the result's project (``kind`` ``project``).
shares_table = sa.Table(
    "mipflow_result_shares", metadata,
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("kind", sa.String(10), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("shared_by", sa.String(128), nullable=False),
    sa.Column("shared_at", sa.String(40), nullable=False),
)
#: Who belongs to a project at the central site (``mipflow central members``): the readers of results
#: shared with that project.
members_table = sa.Table(
    "mipflow_project_members", metadata,
    sa.Column("project", sa.String(128), primary_key=True),
    sa.Column("member", sa.String(128), primary_key=True),
)
SHARE_KINDS = ("user", "project")
#: A run's ``status``: it produced a result, nodes refused it, or it failed otherwise; a standing
#: analysis's re-run that the nodes refused is ``waiting`` for more data (:mod:`mipflow.central.standing`).
STATUSES = ("succeeded", "refused", "failed", "waiting")
#: What a researcher can change, per refusing control (the node's own reason says more).
WHAT_TO_CHANGE = {
    "access": "ask the node's admin for a grant covering you, this project, the datasets and the algorithm",
    "query_budget": "wait for the budget's window to pass, or ask the node's admin for a larger budget",
    "disabled_algorithm": "choose another algorithm, or ask the node's admin to enable it",
    "data_model": "request a data model the node holds",
    "request": "correct the request as the message says",
    "min_row_count": "select more rows: widen the filter, add datasets, use variables with fewer missing values",
    "nfilter_subset": "widen the filter",
    "nfilter_glm": "use fewer covariates, or select more rows",
    "nfilter_tab": "use variables with fewer levels, fewer folds or bins, or select more rows (the node's message "
                   "names the cells its algorithm checks)",
    "nfilter_levels_max": "use a variable with fewer levels",
    "nfilter_string": "shorten the long text in the request",
    "differencing": "ask complete cases (is_not_null on each variable), repeat an earlier analysis's filters and "
                    "datasets exactly, leave out small datasets, or ask the node's admin for a study protocol",
    "study": "keep to the study's datasets, variables and subgroups, as the message says",
    "secure_aggregation": "run with secure aggregation on, across at least 2 nodes",
    "unavailable": "try again later; the node's admin can check that the node is running",
}


def central_home(path: str | Path | None = None) -> Path:
    root = Path(path or os.environ.get("MIPFLOW_CENTRAL_HOME") or Path.cwd() / "var" / "central")
    (root / "results").mkdir(parents=True, exist_ok=True)
    return root


def node_failure(reason: str) -> dict[str, str]:
    """A left-out node's reason as ``control``, ``reason`` and ``what_to_change``.

    ``reason`` is :func:`mipflow.central.rounds.run_analysis`'s text: ``"refused (CONTROL): TEXT"``
    (the node's public refusal text), ``"unavailable: ..."`` or a sentence of ours.
    """
    match = re.match(r"refused \(([A-Za-z0-9_]*)\): (.*)", reason, re.S)
    if match:
        control, text = match.group(1) or "refused", match.group(2)
    elif reason.startswith("unavailable"):
        control, text = "unavailable", reason.removeprefix("unavailable").lstrip(": ")
    else:
        control, text = "", reason
    return {"control": control, "reason": text, "what_to_change": WHAT_TO_CHANGE.get(control, "")}


def failed_outcome(algorithm: str, request: Any, error: str, *, excluded: dict[str, str] | None = None,
                   researcher: str | None = None, project: str | None = None,
                   dag_id: str | None = None) -> dict[str, Any]:
    """What :meth:`ResultStore.save` keeps of a run that produced no result.

    Parameters
    ----------
    algorithm : str
    request : dict or any
        The request as the run had it (kept only if it is a dict).
    error : str
        The task's message (ours: no data values).
    excluded : dict, optional
        node -> reason, as :func:`mipflow.central.rounds.run_analysis` gives them.
    researcher, project, dag_id : str, optional

    Returns
    -------
    dict
        ``status`` (``"refused"`` when some node refused, else ``"failed"``), ``error``, ``excluded``
        and ``nodes`` (node -> :func:`node_failure`), an empty ``result``.
    """
    excluded = dict(excluded or {})
    nodes = {node: node_failure(reason) for node, reason in excluded.items()}
    refused = any(n["control"] not in ("", "unavailable") for n in nodes.values())
    return {"algorithm": algorithm, "request": request if isinstance(request, dict) else {},
            "status": "refused" if refused else "failed", "error": error, "result": {}, "contributed": {},
            "excluded": excluded, "nodes": nodes, "researcher": researcher or "", "project": project or "",
            "dag_id": dag_id}


class ResultStore:
    def __init__(self, home: str | Path | None = None, url: str | None = None) -> None:
        self.home = central_home(home)
        self.url = url or os.environ.get("MIPFLOW_RESULTS_DB_URL") or f"sqlite:///{self.home / 'results.sqlite'}"
        self.engine = sa.create_engine(self.url)
        metadata.create_all(self.engine)
        self._add_status_column()

    def _add_status_column(self) -> None:
        """A results table made before failures were stored gains its ``status`` column."""
        columns = {c["name"] for c in sa.inspect(self.engine).get_columns(results_table.name)}
        if "status" not in columns:
            with self.engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE {results_table.name} ADD COLUMN status VARCHAR(20) "
                                     "NOT NULL DEFAULT 'succeeded'"))

    def save(self, run_id: str, outcome: dict[str, Any]) -> Path:
        """Store one result (idempotent per run id); returns the JSON file written."""
        doc = {"run_id": run_id, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "software": outcome.get("software", f"mipflow {__version__}"), **outcome}
        path = self._path(doc["algorithm"], run_id)
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
        row = {"run_id": run_id, "algorithm": doc["algorithm"], "created_at": doc["created_at"],
               "request": json.dumps(doc.get("request", {})), "result": json.dumps(doc.get("result", {})),
               "contributed": json.dumps(doc.get("contributed", {})),
               "excluded": json.dumps(doc.get("excluded", {})), "software": doc["software"],
               "status": doc.get("status") if doc.get("status") in STATUSES else "succeeded"}
        with self.engine.begin() as conn:
            conn.execute(results_table.delete().where(results_table.c.run_id == run_id))
            conn.execute(results_table.insert().values(**row))
        return path

    def _path(self, algorithm: str, run_id: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", run_id)
        return self.home / "results" / f"{algorithm}__{safe}.json"

    def runs(self, limit: int = 500) -> list[dict[str, Any]]:
        """The stored results, newest first, with the provenance of their JSON files where present."""
        query = sa.select(results_table.c.run_id).order_by(results_table.c.created_at.desc()).limit(limit)
        with self.engine.connect() as conn:
            run_ids = [row.run_id for row in conn.execute(query)]
        return [doc for doc in map(self.document, run_ids) if doc is not None]

    def document(self, run_id: str) -> dict[str, Any] | None:
        """One result with all its provenance: the results table row, completed from the run's JSON
        file (rounds, seconds, datasets held, who triggered it) when that file is readable."""
        row = self.get(run_id)
        if row is None:
            return None
        try:
            extra = json.loads(self._path(row["algorithm"], run_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            extra = {}
        return {**extra, **row} if extra.get("run_id") == run_id else row

    # -- who may read a result (ADR 0011, "private results") ---------------------------------------

    def share(self, run_id: str, kind: str, name: str, *, shared_by: str) -> None:
        """Share a result with a user or with a project's members (idempotent)."""
        if kind not in SHARE_KINDS:
            raise ValueError(f"share kind must be one of {SHARE_KINDS}")
        name = name.strip()
        if not name or len(name) > 128:
            raise ValueError("share with: a name of 1 to 128 characters")
        row = {"run_id": run_id, "kind": kind, "name": name, "shared_by": shared_by,
               "shared_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        c = shares_table.c
        with self.engine.begin() as conn:
            conn.execute(shares_table.delete().where(c.run_id == run_id, c.kind == kind, c.name == name))
            conn.execute(shares_table.insert().values(**row))

    def unshare(self, run_id: str, kind: str, name: str) -> bool:
        """Revoke one share; whether there was one."""
        c = shares_table.c
        with self.engine.begin() as conn:
            gone = conn.execute(shares_table.delete().where(c.run_id == run_id, c.kind == kind, c.name == name))
        return bool(gone.rowcount)

    def shares(self, run_id: str) -> list[dict[str, Any]]:
        """A result's shares, oldest first."""
        c = shares_table.c
        query = sa.select(shares_table).where(c.run_id == run_id).order_by(c.shared_at, c.kind, c.name)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def add_member(self, project: str, member: str) -> None:
        c = members_table.c
        with self.engine.begin() as conn:
            conn.execute(members_table.delete().where(c.project == project, c.member == member))
            conn.execute(members_table.insert().values(project=project, member=member))

    def remove_member(self, project: str, member: str) -> bool:
        c = members_table.c
        with self.engine.begin() as conn:
            gone = conn.execute(members_table.delete().where(c.project == project, c.member == member))
        return bool(gone.rowcount)

    def members(self, project: str | None = None) -> list[dict[str, str]]:
        """Project memberships (of one project, or all), sorted."""
        c = members_table.c
        query = sa.select(members_table).order_by(c.project, c.member)
        if project is not None:
            query = query.where(c.project == project)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def projects_of(self, member: str) -> set[str]:
        c = members_table.c
        with self.engine.connect() as conn:
            return {r.project for r in conn.execute(sa.select(c.project).where(c.member == member))}

    def readable(self, run_id: str, user: str, *, admin: bool) -> dict[str, Any] | None:
        """The result if ``user`` may read it (:func:`may_read`), else None: missing and unreadable alike."""
        doc = self.document(run_id)
        if doc is None or not may_read(doc, user, admin=admin, shares=self.shares(run_id),
                                       projects=self.projects_of(user)):
            return None
        return doc

    def readable_runs(self, user: str, *, admin: bool, limit: int = 500) -> list[dict[str, Any]]:
        """:meth:`runs` that ``user`` may read."""
        docs = self.runs(limit)
        if admin:
            return docs
        projects = self.projects_of(user)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(sa.select(shares_table))]
        by_run: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_run.setdefault(row["run_id"], []).append(row)
        return [d for d in docs if may_read(d, user, admin=False, shares=by_run.get(d["run_id"], []),
                                            projects=projects)]

    def get(self, run_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(results_table).where(results_table.c.run_id == run_id)).first()
        if row is None:
            return None
        out = dict(row._mapping)
        for key in ("request", "result", "contributed", "excluded"):
            out[key] = json.loads(out[key])
        return out


def owner_of(doc: dict[str, Any]) -> str:
    """The researcher a result belongs to: the Airflow user who triggered its run ("" if unknown)."""
    return str(doc.get("triggered_by") or "")


def may_read(doc: dict[str, Any], user: str, *, admin: bool, shares: list[dict[str, Any]],
             projects: set[str]) -> bool:
    """Whether ``user`` may read the result ``doc``: an admin, its owner, a user it was shared with,
    or a member of its project once shared with the project.

    Parameters
    ----------
    doc : dict
        The result (:meth:`ResultStore.document`).
    user : str
        The logged-in user's name.
    admin : bool
        The user is an admin of the central site (reads every result).
    shares : list of dict
        The result's shares (:meth:`ResultStore.shares`).
    projects : set of str
        The projects ``user`` is a member of (:meth:`ResultStore.projects_of`).
    """
    if admin:
        return True
    if not user:
        return False
    if owner_of(doc) == user:
        return True
    project = str(doc.get("project") or "")
    return any((s["kind"] == "user" and s["name"] == user)
               or (s["kind"] == "project" and s["name"] == project and project in projects) for s in shares)


def summary_lines(outcome: dict[str, Any], limit: int = 40) -> list[str]:
    """A readable summary of a result for the task log."""
    lines = [f"{outcome['algorithm']}: {len(outcome.get('contributed', {}))} node(s) contributed "
             f"({sum(outcome.get('contributed', {}).values())} rows), {outcome.get('rounds', '?')} round(s), "
             f"{outcome.get('seconds', '?')} s"]
    if outcome.get("researcher"):
        lines.append(f"  on behalf of researcher {outcome['researcher']} (project {outcome.get('project')})")
    if outcome.get("mode"):
        from mipflow.central.report.pages import mode_text

        lines.append(f"  {mode_text(outcome['mode'], outcome.get('contributed'))}")
    code = outcome.get("code") or {}
    if code.get("central"):
        lines.append(f"  step code {code['central'].get('algorithm_sha256', '?')[:16]}... catalogue "
                     f"{code['central'].get('catalogue_version')}"
                     + ("" if code.get("consistent", True) else " (DIFFERS at some nodes: see code.nodes)"))
    for node, reason in outcome.get("excluded", {}).items():
        lines.append(f"  left out {node}: {reason}")
    if outcome.get("stopped"):
        from mipflow.central.report.pages import stopped_text

        lines.append(f"  stopped early: {stopped_text(outcome['stopped'])}")
    for key, value in outcome.get("result", {}).items():
        text = json.dumps(value, default=str)
        lines.append(f"  {key} = {text[:200]}{'...' if len(text) > 200 else ''}")
        if len(lines) >= limit:
            lines.append("  ...")
            break
    return lines
