"""The browser pages as a FastAPI app, independent of Airflow.

:func:`create_app` builds the app; the caller supplies the authentication
dependency (``user``) and, optionally, an authorisation check per algorithm.
At the central site, the Airflow plugin ``plugins/mipflow_ui_plugin.py`` mounts
it in the api-server with Airflow's own authentication; nothing here is
reachable without it.  Routes (relative to where the app is mounted)::

    GET /                 analysis runs (who, when, algorithm, data model, datasets, nodes)
    GET /run?id=RUN       one result: provenance, nodes, plots, tables (and, for its owner, sharing)
    POST /run/share       the owner shares a result with a user or with its project's members
    POST /run/unshare     the owner revokes a share
    GET /run.json?id=RUN  the stored result with its provenance
    GET /run.csv?id=RUN   the result's tables as tidy CSV (table,row,column,value)
    GET /node?page=N      the node's data quality (batches newest first, a page at a time, failures
                          highlighted, failing rules only) and audit summary (where a node home is set)
    GET /new              "New analysis": a form from the catalogue and the synced federation metadata
    POST /new             trigger the algorithm's central DAG on behalf of the logged-in user
    POST /new/sync        trigger federation_metadata for the user's project (their datasets)
    GET /submitted?id=RUN&dag=DAG  a triggered run: links to its result (refreshes until stored)
    GET /projects         admins: every project and its members (who reads results shared with it)
    POST /projects/add    admins: add users to a project (same store as ``mipflow central members``)
    POST /projects/remove admins: remove a user from a project

A result is private (ADR 0011, "private results"): listed, shown and downloaded only for the
researcher who triggered its run (``triggered_by``), the admins (``is_admin``), users the owner
shared it with, and members of its project once the owner shared it with the project
(:func:`mipflow.central.results.may_read`).  Any other user gets the same 404 as for a missing run.

Project membership (ADR 0011 addendum) is managed by the admins only: anyone else gets 403 on
the project pages and sees no link to them.

Triggering goes through ``runs`` (:class:`Runs`), which the Airflow plugin implements with
Airflow's REST API and the user's own token: the run is the user's, with Airflow's checks.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

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


class TriggerRefused(Exception):
    """Airflow did not start the run (the message is Airflow's: permissions, a bad parameter)."""


class Runs(Protocol):
    """How the pages start DAG runs and read their state, as the logged-in user."""

    def trigger(self, request: Request, dag_id: str, conf: dict[str, Any]) -> str:
        """Start a run of ``dag_id`` with ``conf`` on behalf of the request's user; its run id
        (raises :class:`TriggerRefused`)."""

    def state(self, request: Request, dag_id: str, run_id: str) -> str | None:
        """The run's state (``queued``, ``running``, ``success``, ``failed``) or None if unknown."""


def user_name(who: Any) -> str:
    """The name of an authenticated user (Airflow's ``BaseUser.get_name()``)."""
    get_name = getattr(who, "get_name", None)
    return str(get_name() if callable(get_name) else who)


def same_origin(request: Request) -> bool:
    """A form post from these pages, not from another site (the login cookie goes with both)."""
    from urllib.parse import urlsplit

    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")
    return urlsplit(origin).netloc == request.headers.get("host", request.url.netloc)


def create_app(*, user: Callable[..., Any], can_read: Callable[[Any, str], bool] | None = None,
               is_admin: Callable[[Any], bool] | None = None, result_store: Callable[[], Any] | None = None,
               node_home: Callable[[], Any] | None = None, runs: Runs | None = None,
               central_home: Callable[[], Any] | None = None) -> FastAPI:
    """Build the pages' app.

    Parameters
    ----------
    user : callable
        FastAPI dependency that returns the authenticated user or raises ``HTTPException`` (401/403).
    can_read : callable, optional
        ``can_read(user, algorithm)``: may this user see results of this algorithm (default: yes).
        Checked on top of the result's privacy (owner, shares, admins).
    is_admin : callable, optional
        ``is_admin(user)``: an admin reads every result and manages its shares (default: nobody).
    result_store : callable, optional
        Returns the :class:`mipflow.central.results.ResultStore` (default: the central home's).
    node_home : callable, optional
        Returns the node's :class:`mipflow.node.home.NodeHome`, or None at a site that is not a node
        (default: ``MIPFLOW_NODE_HOME``).
    runs : Runs, optional
        Starts DAG runs as the logged-in user; without it there is no "New analysis" page.
    central_home : callable, optional
        Returns the central home holding the synced federation metadata (default ``MIPFLOW_CENTRAL_HOME``).
    """
    app = FastAPI(title="mipflow results", docs_url=None, redoc_url=None, openapi_url=None)
    allowed = can_read or (lambda _user, _algorithm: True)
    admin = is_admin or (lambda _user: False)
    starter = runs

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
        doc = store().readable(run_id, user_name(who), admin=admin(who))
        if doc is None or not allowed(who, doc["algorithm"]):  # same answer: do not confirm it exists
            raise HTTPException(status_code=404, detail=f"no result {run_id!r} that you may read")
        return doc

    def manages(doc: dict[str, Any], who: Any) -> bool:
        """The result's owner or an admin: may share it and revoke its shares."""
        from mipflow.central.results import owner_of

        return admin(who) or (bool(owner_of(doc)) and owner_of(doc) == user_name(who))

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, q: str = Query("", max_length=200), status: str = Query("", max_length=20),
              algorithm: str = Query("", max_length=80), who: Any = Depends(user)) -> str:
        from mipflow.central.report.readable import algorithms_of, matches

        _, link = _links(request)
        runs = [doc for doc in store().readable_runs(user_name(who), admin=admin(who))
                if allowed(who, doc["algorithm"])]
        shown = [doc for doc in runs if matches(doc, text=q, status=status, algorithm=algorithm)]
        return pages.index_page(shown, link=link, search={"q": q, "status": status, "algorithm": algorithm},
                                algorithms=algorithms_of(runs), total=len(runs),
                                new_analysis=_root(request) + "/new" if starter is not None else None,
                                projects=_root(request) + "/projects" if admin(who) else None)

    @app.get("/run", response_class=HTMLResponse)
    def run_page(request: Request, id: str = Query(..., min_length=1, max_length=250),
                 who: Any = Depends(user)) -> str:
        back, link = _links(request)
        doc = readable(id, who)
        root = _root(request)
        sharing = pages.sharing_html(doc, store().shares(id), share_action=f"{root}/run/share",
                                     unshare_action=f"{root}/run/unshare") if manages(doc, who) else ""
        return pages.result_page(doc, link=link, back=back, airflow_run=airflow_run_link(request, doc),
                                 sharing=sharing)

    async def share_form(request: Request, who: Any) -> tuple[dict[str, Any], str, str]:
        """The posted share (run, kind, name) of a result the user manages; 404 if they may not read it,
        403 if they read it but do not own it."""
        from urllib.parse import parse_qs

        if not same_origin(request):
            raise HTTPException(status_code=403, detail="a form post from another site")
        body = (await request.body()).decode("utf-8", errors="replace")
        form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True, max_num_fields=20).items()}
        run_id, kind, name = form.get("id", ""), form.get("kind", ""), form.get("name", "").strip()
        if not run_id or len(run_id) > 250:
            raise HTTPException(status_code=400, detail="id: required")
        doc = readable(run_id, who)
        if not manages(doc, who):
            raise HTTPException(status_code=403, detail="only the researcher who ran it (or an admin) shares a result")
        if kind not in ("user", "project") or not name or len(name) > 128:
            raise HTTPException(status_code=400, detail="share with a user (a name) or with the result's project")
        if kind == "project" and name != str(doc.get("project") or ""):
            raise HTTPException(status_code=400, detail="a result is shared only with its own project")
        return doc, kind, name

    @app.post("/run/share", response_model=None)
    async def share(request: Request, who: Any = Depends(user)) -> Any:
        doc, kind, name = await share_form(request, who)
        store().share(doc["run_id"], kind, name, shared_by=user_name(who))
        return RedirectResponse(_links(request)[1](doc["run_id"], "html") + "#sharing", status_code=303)

    @app.post("/run/unshare", response_model=None)
    async def unshare(request: Request, who: Any = Depends(user)) -> Any:
        doc, kind, name = await share_form(request, who)
        store().unshare(doc["run_id"], kind, name)
        return RedirectResponse(_links(request)[1](doc["run_id"], "html") + "#sharing", status_code=303)

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
    def node_page(page: int = Query(1, ge=1, le=1_000_000), who: Any = Depends(user)) -> str:
        node = home()
        if node is None:
            raise HTTPException(status_code=404, detail="this site is not a node (MIPFLOW_NODE_HOME is not set)")
        return pages.node_quality_page(node_quality(node), page_number=page)

    _project_routes(app, user=user, admin=admin, store=store)
    if starter is not None:
        _analysis_routes(app, user=user, runs=starter, readable=readable, central_home=central_home)
    return app


def split_names(text: str) -> list[str]:
    """User names from a form field: separated by commas, semicolons or white space, in order, once each."""
    import re

    return list(dict.fromkeys(name for name in re.split(r"[\s,;]+", text) if name))


def _project_routes(app: FastAPI, *, user: Callable[..., Any], admin: Callable[[Any], bool],
                    store: Callable[[], Any]) -> None:
    """The admins' project members page and its two posts (ADR 0011 addendum)."""
    from urllib.parse import parse_qs, urlencode

    from mipflow.protocol.identity import IDENTITY_RE

    def admin_only(who: Any) -> None:
        if not admin(who):
            raise HTTPException(status_code=403, detail="only an admin manages project members")

    def projects() -> dict[str, list[str]]:
        """Every project with members, and every project a stored result names (perhaps without members)."""
        results = store()
        listed: dict[str, list[str]] = {}
        for doc in results.runs():
            if doc.get("project"):
                listed.setdefault(str(doc["project"]), [])
        for row in results.members():
            listed.setdefault(row["project"], []).append(row["member"])
        return dict(sorted(listed.items()))

    def show(request: Request, *, message: str = "", error: str = "", status_code: int = 200) -> HTMLResponse:
        root = _root(request)
        return HTMLResponse(pages.projects_page(projects(), add_action=f"{root}/projects/add",
                                                remove_action=f"{root}/projects/remove", back=root + "/",
                                                message=message, error=error), status_code=status_code)

    async def posted(request: Request, who: Any) -> dict[str, str]:
        if not same_origin(request):
            raise HTTPException(status_code=403, detail="a form post from another site")
        admin_only(who)
        body = (await request.body()).decode("utf-8", errors="replace")
        return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True, max_num_fields=20).items()}

    def after(request: Request, project: str, message: str) -> RedirectResponse:
        query = urlencode({"done": message})
        return RedirectResponse(f"{_root(request)}/projects?{query}#project-{quote(project, safe='')}",
                                status_code=303)

    @app.get("/projects", response_class=HTMLResponse)
    def project_members(request: Request, done: str = Query("", max_length=300), who: Any = Depends(user)) -> Any:
        admin_only(who)
        return show(request, message=done)

    @app.post("/projects/add", response_model=None)
    async def add_members(request: Request, who: Any = Depends(user)) -> Any:
        form = await posted(request, who)
        project, names = form.get("project", "").strip(), split_names(form.get("members", ""))
        bad = [n for n in [project, *names] if not IDENTITY_RE.match(n)]
        if not project or not names or bad:
            error = ("give a project and one or more user names" if not project or not names else
                     "not a valid name: " + ", ".join(bad[:5]) + " (letters, digits, _ . @ + -, up to 128)")
            return show(request, error=error, status_code=400)
        results = store()
        for name in names:
            results.add_member(project, name)
        return after(request, project, f"added to {project}: {', '.join(names)}")

    @app.post("/projects/remove", response_model=None)
    async def remove_member(request: Request, who: Any = Depends(user)) -> Any:
        form = await posted(request, who)
        project, member = form.get("project", "").strip(), form.get("member", "").strip()
        if not project or not member:
            return show(request, error="give a project and a member", status_code=400)
        if not store().remove_member(project, member):
            return show(request, error=f"{member} is not a member of {project}", status_code=404)
        return after(request, project, f"removed from {project}: {member}")


def _root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


def _analysis_routes(app: FastAPI, *, user: Callable[..., Any], runs: Runs,
                     readable: Callable[[str, Any], dict[str, Any]],
                     central_home: Callable[[], Any] | None) -> None:
    """The "New analysis" page, its posts and the page of a started run."""
    from urllib.parse import parse_qs, urlencode

    from mipflow.central.report import analysis_form

    def metadata() -> dict[str, Any]:
        from mipflow.central.metadata import load_metadata

        return load_metadata(central_home() if central_home is not None else None)

    def form_page(request: Request, who: Any, *, algorithm: str, data_model: str, project: str,
                  error: str = "") -> str:
        from mipflow.algorithms.catalogue import describe
        from mipflow.central.metadata import form_choices

        meta = metadata()
        name = user_name(who)
        synced = ((meta.get("datasets") or {}).get(f"{name}\n{project}") or {}).get("synced_at")
        root = _root(request)
        return analysis_form.new_analysis_page(
            describe(), form_choices(meta, name, project), algorithm=algorithm, data_model=data_model,
            project=project, user=name, action=f"{root}/new", sync_action=f"{root}/new/sync", back=root + "/",
            error=error, synced_at=synced)

    async def posted(request: Request) -> dict[str, list[str]]:
        if not same_origin(request):
            raise HTTPException(status_code=403, detail="a form post from another site")
        body = (await request.body()).decode("utf-8", errors="replace")
        return parse_qs(body, keep_blank_values=True, max_num_fields=2000)

    @app.get("/new", response_class=HTMLResponse)
    def new_analysis(request: Request, algorithm: str = Query("", max_length=80),
                     data_model: str = Query("", max_length=120), project: str = Query("", max_length=128),
                     who: Any = Depends(user)) -> str:
        return form_page(request, who, algorithm=algorithm, data_model=data_model, project=project)

    @app.post("/new", response_model=None)
    async def start_analysis(request: Request, who: Any = Depends(user)) -> Any:
        from starlette.concurrency import run_in_threadpool

        from mipflow.algorithms.catalogue import describe
        from mipflow.central.metadata import form_choices

        form = await posted(request)
        first = {k: (v[0] if v else "") for k, v in form.items()}
        algorithm, project = first.get("algorithm", ""), first.get("project", "")
        entry = next((a for a in describe() if a["name"] == algorithm), None)
        again = {"algorithm": algorithm, "data_model": first.get("data_model", ""), "project": project}
        try:
            if entry is None:
                raise analysis_form.FormError("choose an algorithm")
            conf = analysis_form.build_conf(entry, form, form_choices(metadata(), user_name(who), project))
            dag_id = f"federated_{algorithm}"
            run_id = await run_in_threadpool(runs.trigger, request, dag_id, conf)
        except (analysis_form.FormError, TriggerRefused) as exc:
            return HTMLResponse(form_page(request, who, error=str(exc), **again), status_code=400)
        query = urlencode({"id": run_id, "dag": dag_id})
        return RedirectResponse(f"{_root(request)}/submitted?{query}", status_code=303)

    @app.post("/new/sync", response_model=None)
    async def sync_datasets(request: Request, who: Any = Depends(user)) -> Any:
        from starlette.concurrency import run_in_threadpool

        form = await posted(request)
        first = {k: (v[0] if v else "") for k, v in form.items()}
        again = {"algorithm": first.get("algorithm", ""), "data_model": first.get("data_model", ""),
                 "project": first.get("project", "")}
        if not again["project"]:
            return HTMLResponse(form_page(request, who, error="project: required", **again), status_code=400)
        try:
            run_id = await run_in_threadpool(runs.trigger, request, "federation_metadata",
                                             {"project": again["project"]})
        except TriggerRefused as exc:
            return HTMLResponse(form_page(request, who, error=str(exc), **again), status_code=400)
        query = urlencode({**again, "sync": run_id})
        return RedirectResponse(f"{_root(request)}/new/syncing?{query}", status_code=303)

    @app.get("/new/syncing", response_class=HTMLResponse)
    def syncing(request: Request, sync: str = Query(..., max_length=250), algorithm: str = Query("", max_length=80),
                data_model: str = Query("", max_length=120), project: str = Query("", max_length=128),
                who: Any = Depends(user)) -> Any:
        state = runs.state(request, "federation_metadata", sync)
        back = f"{_root(request)}/new?" + urlencode({"algorithm": algorithm, "data_model": data_model,
                                                     "project": project})
        if state in ("queued", "running", None):
            return pages.page("Refreshing your datasets", '<meta http-equiv="refresh" content="1">'
                              f'<p id="syncing">Asking the nodes which datasets you may use in {html_escape(project)} '
                              f'(run {html_escape(sync)}: {html_escape(state or "starting")}).</p>'
                              f'<p><a href="{html_escape(back)}">Back to the form</a></p>')
        if state != "success":
            return pages.page("Refreshing your datasets", f'<p class="bad">The sync ended {html_escape(state)}: '
                              f'see run {html_escape(sync)} of federation_metadata in Airflow.</p>'
                              f'<p><a href="{html_escape(back)}">Back to the form</a></p>')
        return RedirectResponse(back, status_code=303)

    @app.get("/submitted", response_class=HTMLResponse)
    def submitted(request: Request, id: str = Query(..., min_length=1, max_length=250),
                  dag: str = Query(..., min_length=1, max_length=250), who: Any = Depends(user)) -> str:
        _, link = _links(request)
        try:
            readable(id, who)
            stored = True
        except HTTPException:
            stored = False
        state = None if stored else runs.state(request, dag, id)
        body = analysis_form.submitted_page(
            run_id=id, dag_id=dag, result=link(id, "html"), stored=stored, back=_root(request) + "/",
            airflow_run=airflow_run_link(request, {"dag_id": dag, "run_id": id}) or "")
        if state == "failed":  # failed before anything was stored (e.g. a bad parameter)
            body = body.replace('<meta http-equiv="refresh" content="2">', "").replace(
                "Running: this page refreshes until the result is stored.",
                "The run failed in Airflow before a result was stored: see the run in Airflow.")
        return body


def html_escape(value: Any) -> str:
    import html

    return html.escape(str(value))


def _filename(doc: dict[str, Any]) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{doc['algorithm']}__{doc['run_id']}")
