"""What every node of a federation holds: data models and datasets, synced to the central home.

The ``federation_metadata`` DAG calls :func:`sync_metadata` with one client per
node connection.  A node lists datasets only for a researcher it has approved
(in that project): a scheduled run, without a triggering user, asks anonymously
and syncs data models only.
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


def sync_metadata(clients: Mapping[str, NodeClient], *, researcher: str | None = None,
                  project: str | None = None, home: str | Path | None = None) -> dict[str, Any]:
    """Ask every node what it holds and write it to ``federation_metadata.json`` in the central home.

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
        Node name -> {data model key -> datasets}; a node that could not be
        asked appears under its key with ``{"error": message}``: one node down
        does not hide the others.
    """
    from mipflow.central.results import central_home

    on_behalf = (researcher, project) if researcher and project else (None, None)
    out: dict[str, Any] = {}
    for key, client in clients.items():
        try:
            meta = client.metadata(*on_behalf)
            out[client.name] = {m["data_model"]: m["datasets"] for m in meta["data_models"]}
        except Exception as exc:  # noqa: BLE001 - one node down must not hide the others
            out[key] = {"error": str(exc)}
    path = central_home(home) / METADATA_FILE
    path.write_text(json.dumps(out, indent=2), encoding="utf-8")
    for node, models in out.items():
        log.info("%s: %s", node, models)
    return out
