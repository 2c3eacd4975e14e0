"""Standing analyses: an analysis re-run when a node's data change, each version kept with its provenance.

A researcher registers an analysis as **standing** for a project (the trigger form's
"Keep as a standing analysis", or ``mipflow standing add``): the same request, parameters,
nodes and settings as a triggered run.  The central site follows every node's **data version**
of the analysis's data model (``GET /v1/metadata``, :mod:`mipflow.node.versions`; asked on
behalf of the analysis's researcher and project, so a project in a study follows its snapshot),
and when one changes it runs the analysis again through :func:`mipflow.central.rounds.run_analysis`:
the same nodes' controls decide.  Each outcome is a **version** of the standing analysis:

- ``succeeded``: a result, stored in the result store with a ``standing`` block: the version
  number, each node's data version, the batches new since the previous version (by node), and
  the change of every number against the previous version (:func:`result_changes`);
- ``waiting``: the nodes refused the re-run (a re-run on a cohort a few patients away from the
  last one is a differencing attempt, ADR 0013): stored with each node's control and reason, and
  the standing analysis waits for more data: it is tried again only when a data version changes
  again;
- ``failed``: anything else (a node unreachable, the request no longer valid).

The registry and the versions are tables in the central result store's database (``results.sqlite``
in the central home, or ``MIPFLOW_RESULTS_DB_URL``), so the DAG tasks, the triggerer, the CLI and
the results pages read the same ones.  Airflow-free: :mod:`mipflow_airflow.triggers.data_version`
(the asset watcher) and ``dags/mipflow_standing.py`` call these functions; so do the tests.
"""
from __future__ import annotations

import json
import logging
import math
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import sqlalchemy as sa

from mipflow.exceptions import FederationError, RequestError

log = logging.getLogger(__name__)

metadata = sa.MetaData()
standing_table = sa.Table(
    "mipflow_standing", metadata,
    sa.Column("standing_id", sa.String(40), primary_key=True),
    sa.Column("algorithm", sa.String(80), nullable=False),
    sa.Column("dag_id", sa.String(250), nullable=False),
    sa.Column("conf", sa.Text, nullable=False),          # the trigger form's values (JSON)
    sa.Column("request", sa.Text, nullable=False),       # the MIP request built from them (JSON)
    sa.Column("nodes", sa.Text, nullable=False),         # node connection ids (JSON list)
    sa.Column("min_nodes", sa.Integer, nullable=True),
    sa.Column("secure_aggregation", sa.String(10), nullable=False),
    sa.Column("researcher", sa.String(128), nullable=False),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("removed_at", sa.String(40), nullable=True),
)
versions_table = sa.Table(
    "mipflow_standing_versions", metadata,
    sa.Column("standing_id", sa.String(40), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),      # 1, 2, ... every attempt, waiting ones too
    sa.Column("version", sa.Integer, nullable=True),     # the result's version number (succeeded only)
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # succeeded | waiting | failed
    sa.Column("data_versions", sa.Text, nullable=False),  # node -> its data_version (JSON)
    sa.Column("created_at", sa.String(40), nullable=False),
)
#: A standing version's status.
VERSION_STATUSES = ("succeeded", "waiting", "failed")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def request_from_conf(algorithm: str, conf: Mapping[str, Any]) -> dict[str, Any]:
    """The MIP / Exareme2 request a trigger form's values make (the central DAGs' ``build_request``).

    Parameters
    ----------
    algorithm : str
        A catalogue algorithm.
    conf : mapping
        The form's values: ``data_model``, ``datasets``, ``x``, ``y``, ``filters``, the
        algorithm's parameters and preprocessing (empty values are left out).
    """
    from mipflow.algorithms.catalogue import describe

    (item,) = [a for a in describe() if a["name"] == algorithm] or [None]
    if item is None:
        raise RequestError(f"unknown algorithm {algorithm!r}")

    def as_list(value: Any) -> list:
        if value in (None, ""):
            return []
        return value if isinstance(value, list) else [value]

    parameters = {k: conf[k] for k in item["parameters"] if conf.get(k) not in (None, "")}
    doc: dict[str, Any] = {"inputdata": {"data_model": conf.get("data_model"), "datasets": as_list(conf.get("datasets")),
                                         "x": as_list(conf.get("x")), "y": as_list(conf.get("y")),
                                         "filters": conf.get("filters")},
                           "parameters": parameters}
    preprocessing = {k: conf[k] for k in (item.get("preprocessing") or {}) if conf.get(k) not in (None, "", {})}
    if preprocessing:
        doc["preprocessing"] = preprocessing
    return doc


@dataclass(frozen=True)
class StandingAnalysis:
    """One registered standing analysis."""

    standing_id: str
    algorithm: str
    dag_id: str
    conf: dict[str, Any]
    request: dict[str, Any]
    nodes: list[str]
    researcher: str
    project: str
    created_at: str
    min_nodes: int | None = None
    secure_aggregation: str = "auto"
    removed_at: str | None = None

    @property
    def data_model(self) -> str:
        return str(self.request["inputdata"]["data_model"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StandingVersion:
    """One attempt of a standing analysis: a new version, a wait for more data, or a failure."""

    standing_id: str
    seq: int
    run_id: str
    status: str
    data_versions: dict[str, Any]
    created_at: str
    version: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class StandingRegistry:
    """The standing analyses and their versions, in the central result store's database.

    Parameters
    ----------
    home : path, optional
        The central home (default ``MIPFLOW_CENTRAL_HOME``).
    url : str, optional
        The database (default ``MIPFLOW_RESULTS_DB_URL``, else ``results.sqlite`` in the home).
    """

    def __init__(self, home: str | Path | None = None, url: str | None = None) -> None:
        import os

        from mipflow.central.results import central_home

        self.home = central_home(home)
        self.url = url or os.environ.get("MIPFLOW_RESULTS_DB_URL") or f"sqlite:///{self.home / 'results.sqlite'}"
        self.engine = sa.create_engine(self.url)
        metadata.create_all(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    # -- the registry -------------------------------------------------------------------------
    def add(self, *, algorithm: str, conf: Mapping[str, Any], researcher: str, project: str,
            dag_id: str | None = None) -> StandingAnalysis:
        """Register ``conf`` (a trigger form's values, with ``nodes``, ``min_nodes``,
        ``secure_aggregation``) as a standing analysis of ``researcher`` in ``project``.

        Raises
        ------
        RequestError
            If the request is invalid (checked as a run checks it), or no node or identity is given.
        """
        from mipflow.protocol.identity import IDENTITY_RE
        from mipflow.protocol.request import AnalysisRequest

        for value, what in ((researcher, "researcher"), (project, "project")):
            if not value or not IDENTITY_RE.match(str(value)):
                raise RequestError(f"a standing analysis needs a valid {what}")
        request = request_from_conf(algorithm, conf)
        AnalysisRequest.from_dict(request)  # a request the nodes would reject is not registered
        nodes = conf.get("nodes") or []
        nodes = [n.strip() for n in nodes.split(",")] if isinstance(nodes, str) else list(nodes)
        if not nodes:
            raise RequestError("a standing analysis needs its nodes (connection ids)")
        min_nodes = conf.get("min_nodes")
        standing = StandingAnalysis(
            standing_id="s" + uuid.uuid4().hex[:12], algorithm=algorithm, dag_id=dag_id or f"federated_{algorithm}",
            conf={k: v for k, v in conf.items() if k not in ("standing",)}, request=request, nodes=nodes,
            researcher=str(researcher), project=str(project), created_at=_now(),
            min_nodes=int(min_nodes) if min_nodes not in (None, "", "None") else None,
            secure_aggregation=str(conf.get("secure_aggregation") or "auto"))
        with self.engine.begin() as conn:
            conn.execute(standing_table.insert().values(
                standing_id=standing.standing_id, algorithm=algorithm, dag_id=standing.dag_id,
                conf=json.dumps(standing.conf, default=str), request=json.dumps(request), nodes=json.dumps(nodes),
                min_nodes=standing.min_nodes, secure_aggregation=standing.secure_aggregation,
                researcher=standing.researcher, project=standing.project, created_at=standing.created_at))
        return standing

    def get(self, standing_id: str) -> StandingAnalysis | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(standing_table).where(standing_table.c.standing_id == standing_id)).first()
        return None if row is None else _standing(row)

    def list(self, *, include_removed: bool = False) -> list[StandingAnalysis]:
        query = sa.select(standing_table).order_by(standing_table.c.created_at, standing_table.c.standing_id)
        if not include_removed:
            query = query.where(standing_table.c.removed_at.is_(None))
        with self.engine.connect() as conn:
            return [_standing(row) for row in conn.execute(query)]

    def remove(self, standing_id: str) -> bool:
        """Stop re-running a standing analysis (its versions stay); False if there is none active."""
        with self.engine.begin() as conn:
            done = conn.execute(standing_table.update().where(
                standing_table.c.standing_id == standing_id, standing_table.c.removed_at.is_(None)
            ).values(removed_at=_now()))
        return done.rowcount > 0

    # -- versions -----------------------------------------------------------------------------
    def versions(self, standing_id: str) -> list[StandingVersion]:
        """Every attempt of ``standing_id``, oldest first."""
        query = (sa.select(versions_table).where(versions_table.c.standing_id == standing_id)
                 .order_by(versions_table.c.seq))
        with self.engine.connect() as conn:
            return [StandingVersion(standing_id=r.standing_id, seq=r.seq, run_id=r.run_id, status=r.status,
                                    data_versions=json.loads(r.data_versions), created_at=r.created_at,
                                    version=r.version) for r in conn.execute(query)]

    def record(self, standing_id: str, *, run_id: str, status: str, data_versions: Mapping[str, Any],
               version: int | None = None) -> StandingVersion:
        if status not in VERSION_STATUSES:
            raise ValueError(f"status must be one of {VERSION_STATUSES}")
        with self.engine.begin() as conn:
            seq = conn.execute(sa.select(sa.func.coalesce(sa.func.max(versions_table.c.seq), 0))
                               .where(versions_table.c.standing_id == standing_id)).scalar_one() + 1
            item = StandingVersion(standing_id=standing_id, seq=seq, run_id=run_id, status=status,
                                   data_versions=dict(data_versions), created_at=_now(), version=version)
            conn.execute(versions_table.insert().values(
                standing_id=standing_id, seq=seq, version=version, run_id=run_id, status=status,
                data_versions=json.dumps(item.data_versions, sort_keys=True), created_at=item.created_at))
        return item


def _standing(row: Any) -> StandingAnalysis:
    return StandingAnalysis(standing_id=row.standing_id, algorithm=row.algorithm, dag_id=row.dag_id,
                            conf=json.loads(row.conf), request=json.loads(row.request), nodes=json.loads(row.nodes),
                            researcher=row.researcher, project=row.project, created_at=row.created_at,
                            min_nodes=row.min_nodes, secure_aggregation=row.secure_aggregation,
                            removed_at=row.removed_at)


# -- data versions ----------------------------------------------------------------------------

def observe(standing: StandingAnalysis, clients: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Each node's ``data_version`` of the analysis's data model, asked on behalf of its researcher
    and project (a project in a study at a node follows that study's snapshot).

    Returns
    -------
    dict
        Node name -> its ``data_version``; a node that could not be asked, or holds no data of the
        data model, has ``{"error": message}`` (it does not count as a change).
    """
    out: dict[str, dict[str, Any]] = {}
    for client in clients:
        try:
            meta = client.metadata(standing.researcher, standing.project)
        except Exception as exc:  # noqa: BLE001 - one node down must not hide the others' changes
            out[client.name] = {"error": str(exc)[:300]}
            continue
        items = [m for m in meta.get("data_models", []) if m.get("data_model") == standing.data_model]
        out[client.name] = (dict(items[0].get("data_version") or {"error": "no data version"}) if items
                            else {"error": f"holds no data of {standing.data_model}"})
    return out


def version_tokens(observed: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Node -> version token, for the nodes that gave one."""
    return {node: str(v["version"]) for node, v in observed.items() if v.get("version")}


def is_due(observed: Mapping[str, Mapping[str, Any]], last: StandingVersion | None) -> bool:
    """Whether a standing analysis must run: never ran, or some node's data version differs from
    the one of its last attempt (a waiting attempt counts: it is retried only on new data)."""
    if last is None:
        return True
    now = version_tokens(observed)
    then = version_tokens(last.data_versions)
    return any(then.get(node) != token for node, token in now.items())


def new_batches(observed: Mapping[str, Mapping[str, Any]],
                previous: Mapping[str, Mapping[str, Any]] | None) -> dict[str, list[str]]:
    """Node -> the batch ids in its ``latest_batches`` now that were not in the previous version's
    (every listed batch for the first version; a study's snapshot lists none)."""
    out: dict[str, list[str]] = {}
    for node, version in observed.items():
        before = set(((previous or {}).get(node) or {}).get("latest_batches") or [])
        added = [b for b in version.get("latest_batches") or [] if b not in before]
        if added:
            out[node] = added
    return out


# -- the change against the previous version ----------------------------------------------------

def _numbers(value: Any, path: str, out: dict[str, float]) -> None:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        if math.isfinite(float(value)):
            out[path] = float(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _numbers(item, f"{path}.{key}" if path else str(key), out)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _numbers(item, f"{path}[{i}]", out)


def result_changes(previous: Mapping[str, Any], current: Mapping[str, Any]) -> list[list[Any]]:
    """Every number of ``current`` beside the same number of ``previous``: ``[path, previous, current,
    difference]`` rows, in ``current``'s order (a number only one of them has: the other side is None)."""
    before: dict[str, float] = {}
    after: dict[str, float] = {}
    _numbers(previous, "", before)
    _numbers(current, "", after)
    rows = [[path, before.get(path), value, None if path not in before else value - before[path]]
            for path, value in after.items()]
    rows += [[path, value, None, None] for path, value in before.items() if path not in after]
    return rows


# -- one re-run -------------------------------------------------------------------------------

def rerun(standing: StandingAnalysis, clients: Sequence[Any], *, registry: StandingRegistry, store: Any,
          run_id: str, force: bool = False) -> dict[str, Any]:
    """Run ``standing`` again if a node's data version changed since its last attempt; store the outcome.

    Parameters
    ----------
    clients : sequence of NodeClient
        One per node of the analysis (the caller opens and closes them).
    store : mipflow.central.results.ResultStore
    run_id : str
        The results-store id of this attempt (the Airflow run and map index, or the CLI's own).
    force : bool
        Run even when no data version changed.

    Returns
    -------
    dict
        ``status``: ``unchanged`` (nothing run), ``succeeded``, ``waiting`` or ``failed``; with
        ``run_id``, ``version``, ``data_versions`` and, for a wait, the nodes' reasons.
    """
    from mipflow.central.results import failed_outcome
    from mipflow.central.rounds import run_analysis

    observed = observe(standing, clients)
    history = registry.versions(standing.standing_id)
    last = history[-1] if history else None
    if not force and not is_due(observed, last):
        return {"status": "unchanged", "standing_id": standing.standing_id, "data_versions": observed}
    succeeded = [v for v in history if v.status == "succeeded"]
    previous = succeeded[-1] if succeeded else None
    secure = {"auto": None, "on": True, "off": False}.get(standing.secure_aggregation)
    reachable = [c for c in clients if "error" not in observed.get(c.name, {})]
    min_nodes = standing.min_nodes or len(standing.nodes)
    block: dict[str, Any] = {"id": standing.standing_id, "data_versions": observed,
                             "previous_run_id": previous.run_id if previous else None,
                             "previous_version": previous.version if previous else None,
                             "new_batches": new_batches(observed, previous.data_versions if previous else None)}
    try:
        outcome = run_analysis(standing.algorithm, standing.request, reachable or list(clients),
                               researcher=standing.researcher, project=standing.project,
                               min_nodes=min_nodes, secure_aggregation=secure).to_dict()
    except (FederationError, RequestError) as exc:
        excluded = dict(getattr(exc, "excluded", {}) or {})
        excluded.update({node: f"unavailable: {v['error']}" for node, v in observed.items()
                         if "error" in v and node not in excluded})
        doc = failed_outcome(standing.algorithm, standing.request, str(exc), excluded=excluded,
                             researcher=standing.researcher, project=standing.project, dag_id=standing.dag_id)
        status = "waiting" if doc["status"] == "refused" else "failed"
        if status == "waiting":
            doc["error"] = ("waiting for more data: the nodes' controls refused this re-run on the data as it is "
                            f"now; it runs again when a node's data change. {exc}")
        doc["status"] = status
        doc["standing"] = {**block, "version": None}
        store.save(run_id, {**doc, "triggered_by": standing.researcher})
        registry.record(standing.standing_id, run_id=run_id, status=status, data_versions=observed)
        log.info("standing analysis %s: %s (%s)", standing.standing_id, status, str(exc)[:300])
        return {"status": status, "standing_id": standing.standing_id, "run_id": run_id, "version": None,
                "data_versions": observed, "nodes": doc["nodes"], "error": doc["error"]}
    version = (previous.version or 0) + 1 if previous else 1
    if previous is not None:
        earlier = store.get(previous.run_id)
        block["changes"] = result_changes((earlier or {}).get("result") or {}, outcome["result"])
    store.save(run_id, {**outcome, "status": "succeeded", "dag_id": standing.dag_id,
                        "triggered_by": standing.researcher, "standing": {**block, "version": version}})
    registry.record(standing.standing_id, run_id=run_id, status="succeeded", data_versions=observed, version=version)
    log.info("standing analysis %s: version %d stored as run %s", standing.standing_id, version, run_id)
    return {"status": "succeeded", "standing_id": standing.standing_id, "run_id": run_id, "version": version,
            "data_versions": observed, "new_batches": block["new_batches"]}


def pending(registry: StandingRegistry, observed: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """The active standing analyses a change of data versions makes due (the asset watcher's test).

    ``observed`` is standing id -> :func:`observe`'s answer for that analysis.
    """
    due = []
    for standing in registry.list():
        if standing.standing_id not in observed:
            continue
        history = registry.versions(standing.standing_id)
        if is_due(observed[standing.standing_id], history[-1] if history else None):
            due.append(standing.standing_id)
    return due
