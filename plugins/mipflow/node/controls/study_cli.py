"""``mipflow study``: the node admin approves, refreshes, withdraws and shows projects' studies.

Wired into :mod:`mipflow.cli` (``add_parser`` and ``run``); the work is done by
:mod:`mipflow.node.controls.study_approval` (ADR 0028).  What these commands print is for the
node admin and may hold counts; researchers never see it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mipflow.exceptions import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``study`` command group, in the style of ``mipflow access``."""
    study = sub.add_parser(
        "study", help="node admin: study protocols (study mode: exact answers on an approved family of cohorts)",
        description="A project with an approved study is answered only inside its protocol (data model, "
                    "datasets, variables, named subgroups, algorithms), on the rows fixed at approval. See "
                    "docs/adr/0028-study-mode.md.").add_subparsers(dest="study_command", required=True)
    p = study.add_parser("approve", help="check a protocol against this node's data and approve it for a project")
    p.add_argument("home", type=Path)
    p.add_argument("file", type=Path, metavar="FILE", help="the study protocol (JSON)")
    p.add_argument("--project", required=True, help="the project the study binds (all its researchers)")
    p = study.add_parser("show", help="the node's studies with their snapshots and counts (admin only)")
    p.add_argument("home", type=Path)
    p.add_argument("--project", default=None)
    p = study.add_parser("refresh", help="move a study to the rows now in the store, if the checks pass")
    p.add_argument("home", type=Path)
    p.add_argument("--project", required=True)
    p = study.add_parser("withdraw", help="end a project's study (its requests go through the standard controls)")
    p.add_argument("home", type=Path)
    p.add_argument("--project", required=True)


def _dumps(doc: object) -> str:
    return json.dumps(doc, indent=2, default=str)  # as the rest of the CLI prints


def run(args: argparse.Namespace) -> int:
    """Run a ``study`` command; prints JSON; raises :class:`~mipflow.exceptions.MipflowError` on failure."""
    from mipflow.node.controls import study_approval
    from mipflow.node.home import NodeHome

    home = NodeHome(args.home)
    if args.study_command == "approve":
        try:
            document = json.loads(args.file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read study protocol {args.file}: {exc}") from None
        print(_dumps({"node": home.name, **study_approval.approve(home, args.project, document)}))
    elif args.study_command == "refresh":
        print(_dumps({"node": home.name, **study_approval.refresh(home, args.project)}))
    elif args.study_command == "withdraw":
        print(_dumps({"node": home.name, **study_approval.withdraw(home, args.project)}))
    else:
        print(_dumps(study_approval.show(home, args.project)))
    return 0
