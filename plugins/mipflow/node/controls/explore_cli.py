"""``mipflow explore``: the node admin puts projects in explore mode, takes them out, shows them.

Wired into :mod:`mipflow.cli` (``add_parser`` and ``run``) beside ``mipflow study``; the work is
done by :mod:`mipflow.node.controls.explore` (ADR 0032).  What ``show`` prints (what each project
spent) is for the node admin.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``explore`` command group, in the style of ``mipflow study``."""
    explore = sub.add_parser(
        "explore", help="node admin: explore mode (perturbed answers with keyed noise, charged per release)",
        description="A project in explore mode is answered only by algorithms with a noisy release, at round 0, "
                    "with keyed noise charged to the explore budgets; decisions are taken on the noisy values. "
                    "A project cannot have an approved study and be in explore mode. See "
                    "docs/adr/0032-explore-mode.md.").add_subparsers(dest="explore_command", required=True)
    for name, text in (("enable", "put a project in explore mode"),
                       ("disable", "take a project out of explore mode (standard controls again; spending is kept)")):
        p = explore.add_parser(name, help=text)
        p.add_argument("home", type=Path)
        p.add_argument("--project", required=True)
    p = explore.add_parser("show", help="the projects in explore mode, the settings and what each spent (admin only)")
    p.add_argument("home", type=Path)
    p.add_argument("--project", default=None)
    mode = sub.add_parser(
        "mode", help="node admin: how each project is answered (study, explore or standard; ADR 0038)",
        description="A project with an approved study is answered exactly inside its protocol (mipflow study). "
                    "Any other project is answered in the mode set for it here, else in the node's default_mode "
                    "(explore unless changed with mipflow node config HOME default_mode standard). Standard mode "
                    "gives exact answers under per-request controls whose refusals read the rows: set it only "
                    "for projects whose researchers the hospital trusts (docs/privacy.md, section 4)."
    ).add_subparsers(dest="mode_command", required=True)
    p = mode.add_parser("show", help="the node's default mode and each project's mode")
    p.add_argument("home", type=Path)
    p.add_argument("--project", default=None)
    p = mode.add_parser("set", help="give a project a mode of its own (default: remove it)")
    p.add_argument("home", type=Path)
    p.add_argument("--project", required=True)
    p.add_argument("mode", choices=("explore", "standard", "default"))


def run(args: argparse.Namespace) -> int:
    """Run an ``explore`` command; prints JSON; raises :class:`~mipflow.exceptions.MipflowError` on failure."""
    from mipflow.node.controls import modes
    from mipflow.node.home import NodeHome

    home = NodeHome(args.home)
    if args.command == "mode":
        if args.mode_command == "set":
            doc = {"node": home.name, **modes.set_mode(home.root, args.project, args.mode),
                   "default_mode": home.settings.default_mode}
        else:
            doc = {"node": home.name, **modes.show_modes(home.root, home.settings, args.project)}
    elif args.explore_command == "enable":
        doc = {"node": home.name, **modes.enable(home.root, args.project)}
    elif args.explore_command == "disable":
        doc = {"node": home.name, **modes.disable(home.root, args.project, home.settings.default_mode)}
    else:
        doc = {"node": home.name, **modes.show(home.root, home.settings, args.project)}
    print(json.dumps(doc, indent=2, default=str))
    return 0
