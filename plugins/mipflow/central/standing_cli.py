"""``mipflow standing add|list|remove|versions``: the central site's standing analyses (ADR 0043).

``add`` takes the same values as an analysis DAG's trigger form (a JSON file: ``data_model``,
``datasets``, ``x``, ``y``, ``filters``, parameters, ``nodes``, ``min_nodes``, ``secure_aggregation``),
with the researcher and project it runs for; the central admin's way to register one (a researcher
ticks "Keep as a standing analysis" in the form, which registers it as the triggering user).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    standing = sub.add_parser("standing", help="central: analyses re-run when a node's data change").add_subparsers(
        dest="standing_command", required=True)
    p = standing.add_parser("add", help="register an analysis (the trigger form's values) as standing")
    p.add_argument("algorithm")
    p.add_argument("--conf", required=True, type=Path, help="the form's values as JSON (as dagRuns' conf)")
    p.add_argument("--researcher", required=True, help="the person it runs for (nodes check their grants)")
    p.add_argument("--project", required=True)
    p.add_argument("--home", type=Path, help="the central home (default MIPFLOW_CENTRAL_HOME)")
    p = standing.add_parser("list", help="standing analyses with their last attempt")
    p.add_argument("--all", action="store_true", help="removed ones too")
    p.add_argument("--home", type=Path)
    p = standing.add_parser("remove", help="stop re-running a standing analysis (its versions stay)")
    p.add_argument("standing_id")
    p.add_argument("--home", type=Path)
    p = standing.add_parser("versions", help="every attempt of a standing analysis")
    p.add_argument("standing_id")
    p.add_argument("--home", type=Path)


def run(args: argparse.Namespace) -> int:
    from mipflow.central.standing import StandingRegistry

    registry = StandingRegistry(args.home)
    try:
        if args.standing_command == "add":
            conf = json.loads(args.conf.read_text(encoding="utf-8"))
            standing = registry.add(algorithm=args.algorithm, conf=conf, researcher=args.researcher,
                                    project=args.project)
            print(json.dumps(standing.to_dict(), indent=2))
            return 0
        if args.standing_command == "list":
            out = []
            for standing in registry.list(include_removed=args.all):
                versions = registry.versions(standing.standing_id)
                last = versions[-1] if versions else None
                out.append({"standing_id": standing.standing_id, "algorithm": standing.algorithm,
                            "researcher": standing.researcher, "project": standing.project,
                            "nodes": standing.nodes, "removed_at": standing.removed_at,
                            "last": None if last is None else {"status": last.status, "version": last.version,
                                                               "run_id": last.run_id, "at": last.created_at}})
            print(json.dumps(out, indent=2))
            return 0
        if args.standing_command == "remove":
            if not registry.remove(args.standing_id):
                print(f"mipflow: error: no active standing analysis {args.standing_id!r}")
                return 2
            print(json.dumps({"removed": args.standing_id}))
            return 0
        versions = registry.versions(args.standing_id)
        print(json.dumps([{"seq": v.seq, "status": v.status, "version": v.version, "run_id": v.run_id,
                           "at": v.created_at, "data_versions": v.data_versions} for v in versions], indent=2))
        return 0
    finally:
        registry.dispose()
