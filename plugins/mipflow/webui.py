"""The browser pages as a FastAPI app, independent of Airflow.

:func:`create_app` builds the app; the caller supplies the authentication
dependency (``user``) and, optionally, an authorisation check per algorithm.
At the central site, the Airflow plugin ``plugins/mipflow_ui_plugin.py`` mounts
it in the api-server with Airflow's own authentication; nothing here is
reachable without it.  Routes (relative to where the app is mounted)::

    GET /                 analysis runs (who, when, algorithm, data model, datasets, nodes)
    GET /run?id=RUN       one result: provenance, nodes, plots, tables
    GET /run.json?id=RUN  the stored result with its provenance
    GET /run.csv?id=RUN   the result's tables as tidy CSV (table,row,column,value)
    GET /node             the node's data quality and audit summary (where a node home is set)
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response

from mipflow.central.report import pages


def node_quality(home: Any) -> dict[str, Any]:
    """What the node page shows, from the node's store and audit log: counts only.

    Parameters
    ----------
    home : mipflow.node.home.NodeHome
    """
    import sqlalchemy as sa

    from mipflow.node.controls.audit import AuditLog, verify_chain
    from mipflow.node.api.app import AUDIT_FILE
    # open_store rewrites an older store's raw landing paths first (ADR 0004)
    from mipflow.node.store.feature_store import open_store
    from mipflow.node.store.tables import consent_log_table, quarantine_table

    store = open_store(home)
    try:
        batches = store.batches()
        q = quarantine_table.c
        query = (sa.select(q.batch_id, q.stage, q.reason, sa.func.count().label("rows"))
                 .group_by(q.batch_id, q.stage, q.reason).order_by(q.batch_id, q.stage, q.reason))
        with store.engine.connect() as conn:
            quarantine = [dict(r._mapping) for r in conn.execute(query)]
            consent = [dict(r._mapping) for r in conn.execute(
                sa.select(consent_log_table).order_by(consent_log_table.c.id))]
    finally:
        store.dispose()
    audit_path = Path(home.root) / AUDIT_FILE
    return {"node": home.name, "batches": batches, "quarantine": quarantine, "consent": consent,
            "audit": pages.audit_summary(AuditLog(audit_path).records()),
            "audit_chain_ok": verify_chain(audit_path)}


def _links(request: Request) -> tuple[str, Callable[[str, str], str]]:
    root = request.scope.get("root_path", "").rstrip("/")

    def link(run_id: str, kind: str) -> str:
        suffix = {"html": "", "json": ".json", "csv": ".csv"}[kind]
        return f"{root}/run{suffix}?id={quote(run_id, safe='')}"

    return root + "/", link


def airflow_run_link(request: Request, doc: dict[str, Any]) -> str | None:
    """The run's page in Airflow's UI (``/dags/DAG/runs/RUN`` beside where the pages are mounted)."""
    if not doc.get("dag_id"):
        return None
    root = request.scope.get("root_path", "").rstrip("/")
    site = root.rsplit("/", 1)[0] if root else ""
    return f"{site}/dags/{quote(str(doc['dag_id']), safe='')}/runs/{quote(str(doc['run_id']), safe='')}"


def create_app(*, user: Callable[..., Any], can_read: Callable[[Any, str], bool] | None = None,
               result_store: Callable[[], Any] | None = None,
               node_home: Callable[[], Any] | None = None) -> FastAPI:
    """Build the pages' app.

    Parameters
    ----------
    user : callable
        FastAPI dependency that returns the authenticated user or raises ``HTTPException`` (401/403).
    can_read : callable, optional
        ``can_read(user, algorithm)``: may this user see results of this algorithm (default: yes).
    result_store : callable, optional
        Returns the :class:`mipflow.central.results.ResultStore` (default: the central home's).
    node_home : callable, optional
        Returns the node's :class:`mipflow.node.home.NodeHome`, or None at a site that is not a node
        (default: ``MIPFLOW_NODE_HOME``).
    """
    app = FastAPI(title="mipflow results", docs_url=None, redoc_url=None, openapi_url=None)
    allowed = can_read or (lambda _user, _algorithm: True)

    def store() -> Any:
        if result_store is not None:
            return result_store()
        from mipflow.central.results import ResultStore

        return ResultStore()

    def home() -> Any:
        if node_home is not None:
            return node_home()
        from mipflow.node.home import NodeHome

        root = os.environ.get("MIPFLOW_NODE_HOME")
        return NodeHome(root) if root else None

    def readable(run_id: str, who: Any) -> dict[str, Any]:
        doc = store().document(run_id)
        if doc is None or not allowed(who, doc["algorithm"]):  # same answer: do not confirm it exists
            raise HTTPException(status_code=404, detail=f"no result {run_id!r} that you may read")
        return doc

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, q: str = Query("", max_length=200), status: str = Query("", max_length=20),
              algorithm: str = Query("", max_length=80), who: Any = Depends(user)) -> str:
        from mipflow.central.report.readable import algorithms_of, matches

        _, link = _links(request)
        runs = [doc for doc in store().runs() if allowed(who, doc["algorithm"])]
        shown = [doc for doc in runs if matches(doc, text=q, status=status, algorithm=algorithm)]
        return pages.index_page(shown, link=link, search={"q": q, "status": status, "algorithm": algorithm},
                                algorithms=algorithms_of(runs), total=len(runs))

    @app.get("/run", response_class=HTMLResponse)
    def run_page(request: Request, id: str = Query(..., min_length=1, max_length=250),
                 who: Any = Depends(user)) -> str:
        back, link = _links(request)
        doc = readable(id, who)
        return pages.result_page(doc, link=link, back=back, airflow_run=airflow_run_link(request, doc))

    @app.get("/run.json")
    def run_json(id: str = Query(..., min_length=1, max_length=250), who: Any = Depends(user)) -> Response:
        doc = readable(id, who)
        return Response(json.dumps(doc, indent=2, default=str), media_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="{_filename(doc)}.json"'})

    @app.get("/run.csv")
    def run_csv(id: str = Query(..., min_length=1, max_length=250), who: Any = Depends(user)) -> Response:
        doc = readable(id, who)
        return Response(pages.result_csv(doc), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{_filename(doc)}.csv"'})

    @app.get("/node", response_class=HTMLResponse)
    def node_page(who: Any = Depends(user)) -> str:
        node = home()
        if node is None:
            raise HTTPException(status_code=404, detail="this site is not a node (MIPFLOW_NODE_HOME is not set)")
        return pages.node_quality_page(node_quality(node))

    return app


def _filename(doc: dict[str, Any]) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{doc['algorithm']}__{doc['run_id']}")
