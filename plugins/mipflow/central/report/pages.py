"""HTML pages: the list of runs, one run's result with its provenance, a node's data quality.

The pages show aggregates only (results and counts): no row, value or patient identifier.
"""
from __future__ import annotations

import html
import json
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

from mipflow.central.report.plots import ratio_plot, result_plots
from mipflow.central.report.readable import is_perturbed, ratio_table, result_title, result_warnings
from mipflow.central.report.tables import Table, result_tables, table_html, tables_csv

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;margin:.3rem 0 1rem}
th,td{border:1px solid #ccc;padding:.2rem .5rem;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f2f4f7}
.plots{display:flex;flex-wrap:wrap;gap:1rem}
.plots figure{margin:0}
.plots svg{max-width:100%;height:auto}
.muted{color:#666}
.bad{color:#a00}
tr.fail td{background:#fdecea;color:#a00;font-weight:600}
.pager a{margin-left:.8rem}
.warnings{margin:.5rem 0 1rem;padding:0;list-style:none}
.warnings li{margin:.3rem 0;padding:.45rem .7rem;border-left:5px solid #d89b00;background:#fff6dc}
.warnings li.noise{border-color:#c0392b;background:#fdecea;font-weight:600}
.badge{display:inline-block;padding:0 .35rem;margin-left:.3rem;border-radius:.3rem;font-size:.8em;
 background:#c0392b;color:white}
.badge.warn{background:#d89b00}
form.search{margin:.5rem 0 1rem}
form.search input,form.search select{margin-right:.5rem}
nav.top a{margin-right:1rem}
"""


def page(title: str, body: str, *, heading: str | None = None) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(heading or title)}</h1>{body}</body></html>")


def _inputdata(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    return (doc.get("request") or {}).get("inputdata") or {}


def _excluded_text(excluded: Mapping[str, str]) -> str:
    return "; ".join(f"{node}: {reason}" for node, reason in excluded.items())


def search_form(search: Mapping[str, str], algorithms: Sequence[str]) -> str:
    """The list page's search box and filters (a GET form: the URL keeps the search)."""
    text = html.escape(search.get("q", ""))
    status = search.get("status", "")
    chosen = search.get("algorithm", "")
    statuses = "".join(f'<option value="{s}"{" selected" if s == status else ""}>{s or "any status"}</option>'
                       for s in ("", "succeeded", "refused", "failed"))
    algos = '<option value="">any algorithm</option>' + "".join(
        f'<option value="{html.escape(a)}"{" selected" if a == chosen else ""}>{html.escape(a)}</option>'
        for a in algorithms)
    return ('<form class="search" method="get" action="">'
            f'<input type="search" name="q" value="{text}" placeholder="search: variables, algorithm, dataset, '
            'who, run" size="40" aria-label="search">'
            f'<select name="status" aria-label="status">{statuses}</select>'
            f'<select name="algorithm" aria-label="algorithm">{algos}</select>'
            '<button type="submit">Search</button></form>')


def index_page(runs: Sequence[Mapping[str, Any]], *, link: Any, search: Mapping[str, str] | None = None,
               algorithms: Sequence[str] = (), total: int | None = None, new_analysis: str | None = None,
               projects: str | None = None) -> str:
    """The list of analysis runs, titled by what they analysed, with a search form.

    Parameters
    ----------
    runs : sequence of mapping
        Stored results (:meth:`mipflow.central.results.ResultStore.runs`), newest first, already filtered.
    link : callable
        ``link(run_id, kind)`` -> URL of the run's page (``kind`` ``"html"``, ``"json"``, ``"csv"``).
    search : mapping, optional
        The search shown in the form (``q``, ``status``, ``algorithm``).
    algorithms : sequence of str
        The algorithm filter's choices.
    total : int, optional
        How many runs there are before the search (to say "3 of 10").
    new_analysis : str, optional
        URL of the "New analysis" page.
    projects : str, optional
        URL of the "Project members" page (given to admins only).
    """
    links = ([f'<a id="new-analysis" href="{html.escape(new_analysis)}">New analysis</a>'] if new_analysis else []) \
        + ([f'<a id="project-members" href="{html.escape(projects)}">Project members</a>'] if projects else [])
    nav = f'<nav class="top">{"".join(links)}</nav>' if links else ""
    form = search_form(search or {}, algorithms) if total else ""
    if not runs:
        empty = "No result matches the search." if total else "No analysis has been stored yet."
        return page("Federated analysis results", nav + form + f'<p class="muted">{empty}</p>')
    head = ["analysis", "status", "when", "who", "data model", "datasets", "contributed (rows)",
            "left out", "download"]
    rows = []
    for doc in runs:
        inputdata = _inputdata(doc)
        contributed = doc.get("contributed") or {}
        status = run_status(doc)
        warnings = result_warnings(doc)
        badges = ('<span class="badge noise">perturbed</span>' if is_perturbed(doc) else "") + "".join(
            f'<span class="badge warn">{html.escape(w.kind.replace("_", " "))}</span>'
            for w in warnings if w.kind != "noise")
        rows.append(
            f'<tr class="{status}">'
            f'<td><a class="title" href="{html.escape(link(doc["run_id"], "html"))}">'
            f"{html.escape(result_title(doc))}</a>{badges}"
            f'<br><span class="muted run-id">{html.escape(doc["run_id"])}</span></td>'
            f'<td class="{"" if status == "succeeded" else "bad"}">{status}'
            + (f'<br><span class="muted">{html.escape(_short(doc.get("error") or ""))}</span>'
               if status != "succeeded" else "") + "</td>"
            f"<td>{html.escape(str(doc.get('created_at', '')))}</td>"
            f"<td>{html.escape(str(doc.get('triggered_by') or ''))}</td>"
            f"<td>{html.escape(str(inputdata.get('data_model', '')))}</td>"
            f"<td>{html.escape(', '.join(inputdata.get('datasets') or []))}</td>"
            f"<td>{html.escape(', '.join(f'{n} ({r})' for n, r in contributed.items()))}</td>"
            f'<td class="bad">{html.escape(_excluded_text(doc.get("excluded") or {}))}</td>'
            f'<td><a href="{html.escape(link(doc["run_id"], "json"))}">JSON</a> '
            f'<a href="{html.escape(link(doc["run_id"], "csv"))}">CSV</a></td>'
            "</tr>")
    count = f'<p class="muted" id="count">{len(runs)} of {total} runs</p>' if total else ""
    table = ("<table id=\"runs\"><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
             + "".join(rows) + "</tbody></table>")
    return page("Federated analysis results", nav + form + count + table)


def run_status(doc: Mapping[str, Any]) -> str:
    """``"succeeded"``, ``"refused"`` or ``"failed"`` (a result stored before failures were has none)."""
    return str(doc.get("status") or "succeeded")


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def failure_html(doc: Mapping[str, Any]) -> str:
    """Why a run produced no result, and what to change: the error and each node's control and reason."""
    status = run_status(doc)
    if status == "succeeded":
        return ""
    nodes = doc.get("nodes") or {}
    rows = [[node, n.get("control") or "", n.get("reason") or "", n.get("what_to_change") or ""]
            for node, n in nodes.items()]
    hints = sorted({n.get("what_to_change") for n in nodes.values() if n.get("what_to_change")})
    heading = {"refused": "Refused: no result", "waiting": "Waiting for more data: no new version"}.get(
        status, "Failed: no result")
    parts = [f'<div id="failure"><h2 class="bad">{heading}</h2>'
             f'<p class="bad">{html.escape(str(doc.get("error") or ""))}</p>']
    if hints:
        parts.append("<p>What to change:</p><ul>" + "".join(f"<li>{html.escape(h)}</li>" for h in hints) + "</ul>")
    if rows:
        parts.append(table_html(Table("Why each node left out", ["node", "control", "reason", "what to change"],
                                      rows)))
    return "".join(parts) + "</div>"


def provenance_table(doc: Mapping[str, Any]) -> Table:
    inputdata = _inputdata(doc)
    parameters = (doc.get("request") or {}).get("parameters") or {}
    rows: list[list[Any]] = [
        ["run", doc.get("run_id")], ["status", run_status(doc)], ["Airflow DAG", doc.get("dag_id")],
        ["algorithm", doc.get("algorithm")], ["stored at", doc.get("created_at")],
        ["triggered by", doc.get("triggered_by")], ["project", doc.get("project")], ["data model", inputdata.get("data_model")],
        ["datasets", ", ".join(inputdata.get("datasets") or [])],
        ["y", ", ".join(inputdata.get("y") or [])], ["x", ", ".join(inputdata.get("x") or [])],
        ["filters", json.dumps(inputdata.get("filters")) if inputdata.get("filters") else ""],
        ["parameters", json.dumps(parameters, sort_keys=True) if parameters else ""],
        ["rounds", doc.get("rounds")], ["seconds", doc.get("seconds")], ["software", doc.get("software")],
        ["answered in", mode_text(doc.get("mode"), doc.get("contributed"))],
        ["standing analysis", standing_text(doc.get("standing"))],
        ["stopped", stopped_text(doc.get("stopped"))],
    ]
    return Table("Provenance", ["field", "value"], [r for r in rows if r[1] not in (None, "")])


#: What a result answered outside any study says (ADR 0023: the standard, per-request controls).
STANDARD_MODE = "answered in standard mode: each request checked by the nodes' per-request controls"


def _explore_text(modes: Sequence[Mapping[str, Any]]) -> str:
    """``explore mode: perturbed answers (keyed noise, epsilon 1 per step)`` for nodes answering in
    explore mode (ADR 0032), the epsilons as the nodes state them."""
    epsilons = sorted({f"{float(m['epsilon']):g}" for m in modes if m.get("epsilon") is not None})
    per_step = f", epsilon {' / '.join(epsilons)} per step" if epsilons else ""
    default = ", the nodes' default mode for a project without a study" \
        if modes and all(m.get("by") == "node default" for m in modes) else ""
    return f"explore mode: perturbed answers (keyed noise{per_step}{default})"


def _is_explore(mode: Mapping[str, Any]) -> bool:
    return mode.get("mode") == "explore"


def mode_text(mode: Mapping[str, Any] | None, contributed: Mapping[str, Any] | None = None) -> str:
    """Which mode answered a result (``AnalysisOutcome.mode``, ADR 0028, 0032), as a researcher reads it.

    ``"answered in study stroke-outcomes on the data of 2026-12-01"`` when every node answered in
    the same study on snapshots of the same day; ``"answered in explore mode: perturbed answers
    (keyed noise, epsilon 1 per step)"`` when every node answered in explore mode; otherwise the
    mode per node, and ``standard mode`` for contributing nodes that answered in neither.  A result
    no node answered in study or explore mode says so too (:data:`STANDARD_MODE`: issue 14.1,
    results say which mode produced them); ``""`` only for a result without contributing nodes.
    """
    if not mode:
        return STANDARD_MODE if contributed else ""
    standard = [node for node in (contributed or {}) if node not in mode]
    explore = {n: m for n, m in mode.items() if _is_explore(m)}
    studies_by_node = {n: m for n, m in mode.items() if not _is_explore(m)}
    if explore and not studies_by_node and not standard:
        return "answered in " + _explore_text(list(explore.values()))
    studies = {str(m.get("study")) for m in studies_by_node.values()}
    days = {str(m.get("snapshot", ""))[:10] for m in studies_by_node.values()}
    if not explore and len(studies) == 1 and len(days) == 1 and not standard:
        text = f"answered in study {studies.pop()} on the data of {days.pop()}"
        return text + (" (snapshots: " + ", ".join(f"{n} {m.get('snapshot')}" for n, m in mode.items()) + ")")
    parts = [f"{node}: {_explore_text([m])}" if _is_explore(m)
             else f"{node}: study {m.get('study')} on the data of {m.get('snapshot')}" for node, m in mode.items()]
    parts += [f"{node}: standard mode" for node in standard]
    kinds = ("study" if studies_by_node else "") + (" and " if studies_by_node and explore else "") + \
        ("explore" if explore else "")
    return f"answered in {kinds} mode by node: " + "; ".join(parts)


def stopped_text(stopped: Mapping[str, Any] | None) -> str:
    """How an analysis that ended on refusals reads (``AnalysisOutcome.stopped``); "" if it did not."""
    if not stopped:
        return ""
    refusals = "; ".join(f"{node} refused ({r.get('control')})" for node, r in (stopped.get("refusals") or {}).items())
    return (f"ended at round {stopped.get('round')} on the rounds before it ({refusals}); "
            "every node contributed, see the result's own labels")


def standing_text(standing: Mapping[str, Any] | None) -> str:
    """``"s1a2b3c: version 2 (after version 1)"`` for a standing analysis's result; "" otherwise."""
    if not standing:
        return ""
    version = f"version {standing['version']}" if standing.get("version") else "no new version"
    after = f" (after version {standing['previous_version']})" if standing.get("previous_version") else ""
    return f"{standing.get('id')}: {version}{after}"


def standing_html(doc: Mapping[str, Any]) -> str:
    """A standing analysis's version (ADR 0043): each node's data version and the batches new since
    the previous version, and every number beside the previous version's (with the difference)."""
    standing = doc.get("standing")
    if not standing:
        return ""
    new = standing.get("new_batches") or {}
    rows = []
    for node, version in (standing.get("data_versions") or {}).items():
        if version.get("error"):
            rows.append([node, "", "", "", version["error"]])
            continue
        source = ("study " + str(version.get("study")) + " snapshot " + str(version.get("snapshot"))
                  if version.get("answers_from") == "study" else "live data")
        rows.append([node, version.get("version"), source, ", ".join(new.get(node) or []), ""])
    parts = ['<div id="standing"><h2>Standing analysis</h2>',
             f"<p>{html.escape(standing_text(standing))}: re-run when a node's data version changes.</p>",
             table_html(Table("Data versions (provenance)", ["node", "data version", "answers from",
                                                               "batches new since the previous version", "note"],
                              rows))]
    changes = standing.get("changes")
    if changes:
        parts.append(table_html(Table(f"Change against version {standing.get('previous_version')}",
                                      ["number", "previous version", "this version", "difference"], changes)))
    return "".join(parts) + "</div>"


def nodes_table(doc: Mapping[str, Any]) -> Table:
    """Which nodes contributed (rows used, rows held per dataset) and which were left out, and why."""
    rows: list[list[Any]] = []
    held = doc.get("datasets") or {}
    for node, used in (doc.get("contributed") or {}).items():
        datasets = ", ".join(f"{d}: {'<min_row_count' if n is None else n}" for d, n in (held.get(node) or {}).items())
        rows.append([node, "contributed", used, datasets])
    for node, reason in (doc.get("excluded") or {}).items():
        rows.append([node, f"left out: {reason}", None, ""])
    return Table("Nodes", ["node", "status", "rows used", "rows held per dataset"], rows)


def sharing_html(doc: Mapping[str, Any], shares: Sequence[Mapping[str, Any]], *, share_action: str,
                 unshare_action: str) -> str:
    """The owner's (or an admin's) sharing panel: who else may read this result, a form to share it
    with a user or with the members of its project, and a Revoke button per share."""
    run_id = html.escape(str(doc.get("run_id") or ""))
    project = str(doc.get("project") or "")
    hidden = f'<input type="hidden" name="id" value="{run_id}">'
    rows = []
    for s in shares:
        who = (f"members of project {s['name']}" if s["kind"] == "project" else f"user {s['name']}")
        rows.append(f'<li class="share" data-kind="{html.escape(s["kind"])}" data-name="{html.escape(s["name"])}">'
                    f'{html.escape(who)} (by {html.escape(str(s["shared_by"]))}, {html.escape(str(s["shared_at"]))}) '
                    f'<form method="post" action="{html.escape(unshare_action)}" style="display:inline">{hidden}'
                    f'<input type="hidden" name="kind" value="{html.escape(s["kind"])}">'
                    f'<input type="hidden" name="name" value="{html.escape(s["name"])}">'
                    f'<button type="submit" class="revoke">Revoke</button></form></li>')
    listing = ("<ul>" + "".join(rows) + "</ul>") if rows else "<p>Private: only you and the admins read it.</p>"
    by_project = (f'<form method="post" action="{html.escape(share_action)}" id="share-project">{hidden}'
                  f'<input type="hidden" name="kind" value="project"><input type="hidden" name="name" '
                  f'value="{html.escape(project)}"><button type="submit">Share with the members of project '
                  f'{html.escape(project)}</button></form>') if project else ""
    return (f'<div id="sharing"><h2>Sharing</h2>{listing}'
            f'<form method="post" action="{html.escape(share_action)}" id="share-user">{hidden}'
            f'<input type="hidden" name="kind" value="user"><label>Share with user '
            f'<input name="name" maxlength="128" required></label> <button type="submit">Share</button></form>'
            f'{by_project}</div>')


def projects_page(projects: Mapping[str, Sequence[str]], *, add_action: str, remove_action: str, back: str,
                  message: str = "", error: str = "") -> str:
    """The admins' page of project members (ADR 0011 addendum): who belongs to each project at the
    central site, and so reads the results shared with that project.

    Parameters
    ----------
    projects : mapping
        project -> its members (a project without members is listed too: it has results).
    add_action, remove_action : str
        Where the add and remove forms post (same-origin form posts).
    back : str
        URL of the results list.
    message, error : str
        What the last post did, or why it was refused.
    """
    notes = (f'<p class="bad" id="error">{html.escape(error)}</p>' if error else "") + (
        f'<p id="message">{html.escape(message)}</p>' if message else "")
    sections = []
    for project, members in projects.items():
        name = html.escape(project)
        items = "".join(
            f'<li class="member" data-project="{name}" data-member="{html.escape(m)}">{html.escape(m)} '
            f'<form method="post" action="{html.escape(remove_action)}" style="display:inline">'
            f'<input type="hidden" name="project" value="{name}"><input type="hidden" name="member" '
            f'value="{html.escape(m)}"><button type="submit" class="remove">Remove</button></form></li>'
            for m in members)
        listing = f"<ul>{items}</ul>" if members else '<p class="muted">No members yet.</p>'
        anchor = html.escape("project-" + quote(project, safe=""))
        sections.append(f'<section class="project" id="{anchor}" data-project="{name}"><h2>{name}</h2>{listing}'
                        f'<form method="post" action="{html.escape(add_action)}" class="add-members">'
                        f'<input type="hidden" name="project" value="{name}"><label>Add users '
                        f'<input name="members" maxlength="2000" required placeholder="alice, bob"></label> '
                        f'<button type="submit">Add</button></form></section>')
    new_project = (f'<section id="new-project"><h2>Another project</h2>'
                   f'<form method="post" action="{html.escape(add_action)}" class="add-members">'
                   f'<label>Project <input name="project" maxlength="128" required></label> <label>Users '
                   f'<input name="members" maxlength="2000" required placeholder="alice, bob"></label> '
                   f'<button type="submit">Add</button></form></section>')
    intro = ('<p>Members of a project read the results their owners shared with the project. Nodes keep '
             'their own grants: membership here gives no access to any data.</p>')
    return page("Project members", f'<p><a href="{html.escape(back)}">All results</a></p>' + notes + intro
                + ("".join(sections) if sections else '<p class="muted">No project yet.</p>') + new_project)


def result_page(doc: Mapping[str, Any], *, link: Any, back: str, airflow_run: str | None = None,
                sharing: str = "") -> str:
    """One result (or why a run has none): provenance, nodes, plots, tables, download links and,
    where given, a link to the run in Airflow (``airflow_run``) and the sharing panel (``sharing``)."""
    result = doc.get("result") or {}
    plots = result_plots(result)
    run_link = (f' | <a id="airflow-run" href="{html.escape(airflow_run)}" target="_top">Run in Airflow</a>'
                if airflow_run else "")
    parts = [
        f'<p><a href="{html.escape(back)}">All results</a>{run_link} | '
        f'<a href="{html.escape(link(doc["run_id"], "json"))}">Download JSON</a> | '
        f'<a href="{html.escape(link(doc["run_id"], "csv"))}">Download CSV</a></p>',
        failure_html(doc),
        warnings_html(doc),
        standing_html(doc),
    ]
    ratios = ratio_table(str(doc.get("algorithm") or ""), result)
    if ratios is not None and ratios.rows:
        plot = ratio_plot(ratios)
        parts.append('<div id="ratios">' + table_html(ratios)
                     + (f'<div class="plots"><figure>{plot}</figure></div>' if plot else "") + "</div>")
    parts.append(table_html(provenance_table(doc)))
    parts.append(sharing)
    status = run_status(doc)
    nodes = nodes_table(doc)
    if nodes.rows or status == "succeeded":  # a failed run's nodes are in its failure section
        parts.append(table_html(nodes))
    if plots:
        parts.append('<h2>Plots</h2><div class="plots">'
                     + "".join(f"<figure>{svg}</figure>" for svg in plots) + "</div>")
    if result or status == "succeeded":
        parts.append('<h2>Result</h2><div id="result">' + "".join(table_html(t) for t in result_tables(result))
                     + "</div>")
    title = result_title(doc)
    title = title if status == "succeeded" else f"{title} ({status})"
    return page(f"{title}: {doc.get('run_id', '')}", "".join(parts), heading=title)


def warnings_html(doc: Mapping[str, Any]) -> str:
    """The result's warnings (:func:`.readable.result_warnings`) above everything else; noise first."""
    warnings = result_warnings(doc)
    if not warnings:
        return ""
    return '<ul class="warnings" id="warnings">' + "".join(
        f'<li class="{html.escape(w.kind)}">{html.escape(w.text)}</li>' for w in warnings) + "</ul>"


def result_csv(doc: Mapping[str, Any]) -> str:
    ratios = ratio_table(str(doc.get("algorithm") or ""), doc.get("result") or {})
    return tables_csv([provenance_table(doc), nodes_table(doc), *([ratios] if ratios is not None else []),
                       *result_tables(doc.get("result") or {})])


# -- node data quality --------------------------------------------------------------

def audit_summary(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts of the node's audit log: by decision, client, endpoint / algorithm and refusal control."""
    summary: dict[str, Any] = {"total": 0, "first": None, "last": None, "by_decision": {}, "by_client": {},
                               "by_what": {}, "refusals_by_control": {}}

    def bump(key: str, name: Any) -> None:
        summary[key][str(name)] = summary[key].get(str(name), 0) + 1

    for rec in records:
        summary["total"] += 1
        summary["first"] = summary["first"] or rec.get("at")
        summary["last"] = rec.get("at")
        bump("by_decision", rec.get("decision", "?"))
        bump("by_client", rec.get("client") or "(unauthenticated)")
        what = rec.get("algorithm") and f"step:{rec['algorithm']}" or rec.get("what") or rec.get("endpoint", "?")
        bump("by_what", what)
        if rec.get("decision") != "allowed":
            bump("refusals_by_control", rec.get("control", "?"))
    return summary


#: Batch statuses the quality page highlights as failures (the batch loaded nothing).
FAILED_BATCH = ("failed", "held", "empty")
#: Batches per page of the node quality page (newest first).
BATCHES_PER_PAGE = 25


def batch_failed(batch: Mapping[str, Any]) -> bool:
    """Whether the quality page highlights ``batch``: it loaded nothing, or changed identifying-derived values."""
    return batch.get("status") in FAILED_BATCH or int(batch.get("identity_changed") or 0) > 0


def _marked_table(title: str, columns: Sequence[str], rows: Sequence[tuple[bool, Sequence[Any]]],
                  empty: str = "") -> str:
    """A table whose rows flagged ``True`` are highlighted (class ``fail``)."""
    from mipflow.central.report.tables import _cell

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(("<tr class=\"fail\">" if bad else "<tr>") + "".join(_cell(v) for v in row) + "</tr>"
                   for bad, row in rows)
    if not rows and empty:
        body = f'<tr><td colspan="{len(columns)}" class="muted">{html.escape(empty)}</td></tr>'
    return (f'<section class="table"><h3>{html.escape(title)}</h3>'
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></section>")


def _pager(page_number: int, pages: int, total: int) -> str:
    links = []
    if page_number > 1:
        links.append(f'<a rel="prev" href="?page={page_number - 1}">&larr; newer</a>')
    if page_number < pages:
        links.append(f'<a rel="next" href="?page={page_number + 1}">older &rarr;</a>')
    return (f'<p class="pager">Batches page {page_number} of {pages} ({total} batches, newest first) '
            + " ".join(links) + "</p>")


def node_quality_page(quality: Mapping[str, Any], *, page_number: int = 1,
                      per_page: int = BATCHES_PER_PAGE) -> str:
    """The node's data quality: batches (a page of them), failing rules, quarantine, consent, audit.

    Batches are listed newest first, ``per_page`` to a page; batches that
    loaded nothing or changed identifying-derived values are highlighted;
    the rules table lists only the failing rules of the page's batches, the
    quarantine table only the page's batches.
    """
    batches = list(reversed(quality.get("batches") or []))
    pages = max(1, -(-len(batches) // per_page))
    page_number = min(max(1, page_number), pages)
    shown = batches[(page_number - 1) * per_page:page_number * per_page]
    ids = {b["batch_id"] for b in shown}
    failing = sum(batch_failed(b) for b in batches)
    parts = [f"<p>Node <b>{html.escape(str(quality.get('node', '')))}</b>. Counts only: no row, value or "
             "patient identifier is shown here.</p>"]
    if failing:
        parts.append(f'<p class="bad"><b>{failing} of {len(batches)} batches need attention</b> '
                     "(highlighted: held, failed or empty, or identifying-derived values changed).</p>")
    parts.append(_pager(page_number, pages, len(batches)))
    parts.append(_marked_table("Batches", [
        "batch", "data model", "source", "stage", "status", "rows in", "loaded", "inserted", "updated",
        "unchanged", "identity changed", "quarantined", "held", "no consent", "duplicates", "started",
        "finished", "message"], [
        (batch_failed(b), [b["batch_id"], b["data_model"], b["source"], b["stage"], b["status"], b["rows_in"],
                           b["loaded"], b.get("inserted", 0), b.get("updated", 0), b.get("unchanged", 0),
                           b.get("identity_changed", 0), b["quarantined"], b.get("held", 0), b["no_consent"],
                           b["duplicates"], b["started_at"], b["finished_at"], b.get("message")])
        for b in shown]))
    rules = []
    for b in shown:
        for exp in (b.get("validation") or {}).get("expectations", []):
            if not exp.get("success", True):
                rules.append((True, [b["batch_id"], exp.get("column"), exp.get("expectation"),
                                     exp.get("unexpected_count"), exp.get("element_count")]))
    parts.append(_marked_table("Failing validation rules", [
        "batch", "column", "rule", "failing rows", "rows checked"], rules,
        empty="no failing rule in the batches of this page"))
    parts.append(table_html(Table("Quarantine per batch and reason", ["batch", "stage", "reason", "rows"],
                                  [[q["batch_id"], q["stage"], q["reason"], q["rows"]]
                                   for q in quality.get("quarantine") or [] if q["batch_id"] in ids])))
    parts.append(table_html(Table("Consent withdrawals applied", ["at", "data model", "patients", "rows deleted"],
                                  [[c["at"], c["data_model"], c["patients"], c["rows_deleted"]]
                                   for c in quality.get("consent") or []])))
    audit = quality.get("audit") or audit_summary([])
    parts.append(table_html(Table("Audit log", ["field", "value"], [
        ["requests", audit["total"]], ["first", audit["first"]], ["last", audit["last"]],
        ["hash chain intact", quality.get("audit_chain_ok")]])))
    for key, title in (("by_decision", "Requests by decision"), ("by_client", "Requests by client"),
                       ("by_what", "Requests by endpoint / algorithm"),
                       ("refusals_by_control", "Refusals by control")):
        parts.append(table_html(Table(title, ["", "requests"], sorted(map(list, audit[key].items())))))
    return page("Node data quality", "".join(parts))
