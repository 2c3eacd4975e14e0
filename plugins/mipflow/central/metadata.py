"""What every node of a federation holds: data models and datasets, synced to the central home.

The ``federation_metadata`` DAG calls :func:`sync_metadata` with one client per
node connection.  A node lists datasets only for a researcher it has approved
(in that project): a scheduled run, without a triggering user, asks anonymously
and refreshes data models and variables only, keeping every researcher's dataset
lists.  :func:`form_choices` is what the "New analysis" page offers a researcher.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from mipflow.central.client import NodeClient

log = logging.getLogger(__name__)

METADATA_FILE = "federation_metadata.json"
#: The file's layout (``version`` key); a file without one is the older node -> model -> datasets map.
VERSION = 2


def _identity(researcher: str, project: str) -> str:
    return f"{researcher}\n{project}"


def load_metadata(home: str | Path | None = None) -> dict[str, Any]:
    """The synced metadata: ``{"version", "nodes": {node: {"data_models": {key: {"label", "variables"}},
    "synced_at", "error"?}}, "datasets": {"RESEARCHER\\nPROJECT": {"synced_at", "nodes": {node: {key:
    [{"dataset", "row_count"}]}}}}}`` (empty sections when nothing was synced yet)."""
    from mipflow.central.results import central_home

    path = central_home(home) / METADATA_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = {}
    if doc.get("version") != VERSION:  # nothing yet, or the older layout: no variables in it
        doc = {}
    return {"version": VERSION, "nodes": doc.get("nodes") or {}, "datasets": doc.get("datasets") or {}}


def datasets_for(meta: Mapping[str, Any], researcher: str, project: str) -> dict[str, Any]:
    """Node -> data model key -> datasets (with released row counts) synced for this researcher and
    project; ``{}`` when no sync was run on their behalf."""
    entry = (meta.get("datasets") or {}).get(_identity(researcher, project)) or {}
    return entry.get("nodes") or {}


def sync_metadata(clients: Mapping[str, NodeClient], *, researcher: str | None = None,
                  project: str | None = None, home: str | Path | None = None) -> dict[str, Any]:
    """Ask every node what it holds and keep it in ``federation_metadata.json`` in the central home.

    Data models and their variables are kept per node; datasets per researcher and project (a node
    lists them only for a researcher it approved).  A run without a researcher and project (the
    schedule) refreshes data models and leaves every dataset list as it was; a node that cannot be
    asked keeps what it said last, with the error beside it: an empty answer overwrites nothing.

    Parameters
    ----------
    clients : mapping of str to NodeClient
        One client per node, keyed by how the caller names the node (e.g. its
        connection id); the caller closes them.
    researcher, project : str, optional
        On whose behalf; datasets are listed only when both are given.
    home : path, optional
        The central home (default ``MIPFLOW_CENTRAL_HOME``; :func:`mipflow.central.results.central_home`).

    Returns
    -------
    dict
        Node name -> {data model key -> datasets} of this sync; a node that could not be
        asked appears under its key with ``{"error": message}``: one node down
        does not hide the others.
    """
    from datetime import datetime, timezone

    from mipflow.central.results import central_home

    on_behalf = (researcher, project) if researcher and project else (None, None)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta = load_metadata(home)
    out: dict[str, Any] = {}
    listed: dict[str, Any] = {}
    for key, client in clients.items():
        try:
            answer = client.metadata(*on_behalf)
        except Exception as exc:  # noqa: BLE001 - one node down must not hide the others
            out[key] = {"error": str(exc)}
            kept = meta["nodes"].get(client.name) or meta["nodes"].get(key) or {}
            meta["nodes"][client.name if client.name in meta["nodes"] else key] = {
                **kept, "error": str(exc), "error_at": now}
            continue
        models = answer["data_models"]
        out[client.name] = {m["data_model"]: m["datasets"] for m in models}
        meta["nodes"][client.name] = {"synced_at": now, "data_models": {
            m["data_model"]: {"label": m.get("label") or m["data_model"], "variables": m.get("variables") or []}
            for m in models}}
        listed[client.name] = out[client.name]
    if on_behalf[0]:
        entry = meta["datasets"].setdefault(_identity(*on_behalf), {"nodes": {}})
        entry["nodes"].update(listed)  # a node that could not be asked keeps its last list
        entry["synced_at"] = now
    path = central_home(home) / METADATA_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    tmp.replace(path)
    for node, models in out.items():
        log.info("%s: %s", node, models)
    return out


def form_choices(meta: Mapping[str, Any], researcher: str, project: str) -> dict[str, Any]:
    """What a researcher may choose from, per data model, merged across nodes.

    Returns
    -------
    dict
        Data model key -> ``{"label", "variables": [CDE variable dicts (code, label, sql_type,
        isCategorical, enumerations, group ...), first node's declaration], "datasets": [{"dataset",
        "nodes": {node: released row count or None}}]}``; datasets are those synced for this
        researcher and project (none before such a sync).
    """
    out: dict[str, Any] = {}
    for node, entry in sorted((meta.get("nodes") or {}).items()):
        for key, model in (entry.get("data_models") or {}).items():
            item = out.setdefault(key, {"label": model.get("label") or key, "variables": [], "datasets": []})
            known = {v["code"] for v in item["variables"]}
            item["variables"].extend(v for v in model.get("variables") or [] if v.get("code") not in known)
    for node, models in sorted(datasets_for(meta, researcher, project).items()):
        for key, datasets in models.items():
            item = out.setdefault(key, {"label": key, "variables": [], "datasets": []})
            by_name = {d["dataset"]: d for d in item["datasets"]}
            for d in datasets:
                row = by_name.get(d["dataset"])
                if row is None:
                    row = by_name[d["dataset"]] = {"dataset": d["dataset"], "nodes": {}}
                    item["datasets"].append(row)
                row["nodes"][node] = d.get("row_count")
    for item in out.values():
        item["datasets"].sort(key=lambda d: d["dataset"])
    return out
