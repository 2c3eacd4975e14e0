"""Federation files: the central site's list of nodes, and analyses run over one.

A federation file (JSON, mode 0600: it holds credentials) lists the nodes::

    {"name": "stroke-demo",
     "nodes": [{"name": "hospital_a", "url": "https://127.0.0.1:8701",
                "client_id": "central", "secret": "<hex>",
                "ca_cert": "/etc/mipflow/ca.crt",                      # optional: pinned CA
                "client_cert": "/etc/mipflow/central.crt",             # optional: mutual TLS
                "client_key": "/etc/mipflow/central.key"}]}

:func:`add_node` adds a node with a credential issued by that node's home,
:func:`load_federation` reads the endpoints, and :func:`analyze` runs
:func:`mipflow.central.rounds.run_analysis` over them (what ``mipflow analyze`` does).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

from mipflow.central.client import NodeClient, NodeEndpoint
from mipflow.central.rounds import AnalysisOutcome, run_analysis
from mipflow.exceptions import ConfigError


def load_federation(path: str | Path) -> list[NodeEndpoint]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return [NodeEndpoint(name=n["name"], url=n["url"], client_id=n["client_id"], secret=n["secret"],
                             ca_cert=n.get("ca_cert"), client_cert=n.get("client_cert"),
                             client_key=n.get("client_key"))
                for n in doc.get("nodes", [])]
    except FileNotFoundError:
        raise ConfigError(f"federation file {path} does not exist; create it with "
                          "mipflow federation add FED --node NAME --url URL --credentials-from HOME") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"federation file {path} is not valid: {exc}") from None


def add_node(path: str | Path, *, name: str, url: str, credentials_from: str | Path,
             client_id: str = "central", ca_cert: str | None = None, client_cert: str | None = None,
             client_key: str | None = None) -> NodeEndpoint:
    """Add (or replace) a node in a federation file, with a credential issued by that node's home."""
    from mipflow.protocol.signing import issue_client

    path = Path(path)
    credential = issue_client(Path(credentials_from), client_id)
    doc = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"name": path.stem, "nodes": []}
    doc["nodes"] = [n for n in doc.get("nodes", []) if n.get("name") != name]
    endpoint = NodeEndpoint(name=name, url=url, client_id=client_id, secret=credential.secret.hex(),
                            ca_cert=ca_cert, client_cert=client_cert, client_key=client_key)
    doc["nodes"].append({k: v for k, v in asdict(endpoint).items() if v is not None})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(doc, handle, indent=2)
    tmp.replace(path)
    return endpoint


def analyze(algorithm: str, request: Mapping[str, Any], federation: str | Path, *,
            researcher: str | None = None, project: str | None = None, min_nodes: int = 1,
            secure_aggregation: bool | None = None) -> AnalysisOutcome:
    """Python API: what ``mipflow analyze`` does."""
    clients = [NodeClient(e) for e in load_federation(federation)]
    try:
        return run_analysis(algorithm, request, clients, researcher=researcher, project=project,
                            min_nodes=min_nodes, secure_aggregation=secure_aggregation)
    finally:
        for client in clients:
            client.close()
