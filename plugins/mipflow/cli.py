"""The ``mipflow`` command line (the README, the DAGs' tasks and the tests use it alike).

Exit codes: 0 success, 1 the work ran but something failed (a file failed or a
batch was held), 2 a usage or configuration error (message on stderr).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from mipflow import __version__
from mipflow.exceptions import MipflowError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mipflow", description="Federated analysis of hospital data.")
    parser.add_argument("--version", action="version", version=f"mipflow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    node = sub.add_parser("node", help="create and configure a hospital node").add_subparsers(
        dest="node_command", required=True)
    p = node.add_parser("init", help="create a node home (config, secret key, SQLite store)")
    p.add_argument("home", type=Path)
    p.add_argument("--name", required=True, help="node name, e.g. hospital_a")
    p.add_argument("--db-url", default="", help="SQLAlchemy URL of the feature store (default: SQLite in HOME)")
    p = node.add_parser("config", help="show settings, or set KEY to VALUE")
    p.add_argument("home", type=Path)
    p.add_argument("key", nargs="?")
    p.add_argument("value", nargs="?")
    p = node.add_parser("status", help="data models, datasets and batches of a node")
    p.add_argument("home", type=Path)
    p = node.add_parser("files", help="file references with their local paths (landing/, or the PATHs "
                                      "given); for this console only, never paste into logs or tickets")
    p.add_argument("home", type=Path)
    p.add_argument("paths", type=Path, nargs="*", metavar="PATH")
    p.add_argument("--file", default=None, metavar="REF", help="only the file(s) with this reference")
    p = node.add_parser("run-landing", help="ingest every new file in HOME/landing (what the DAGs do)")
    p.add_argument("home", type=Path)
    p.add_argument("--consent", type=Path, default=None)

    p = node.add_parser("serve", help="run the node's aggregate API (HTTPS; certificate from HOME/tls/ or options)")
    p.add_argument("home", type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8700)
    p.add_argument("--tls-cert", type=Path, default=None, help="server certificate (default HOME/tls/node.crt)")
    p.add_argument("--tls-key", type=Path, default=None, help="its private key, mode 0600 (default HOME/tls/node.key)")
    p.add_argument("--tls-client-ca", type=Path, default=None,
                   help="require client certificates issued by this CA (mutual TLS; default HOME/tls/client-ca.crt "
                        "if present)")
    p.add_argument("--insecure-http", action="store_true",
                   help="DEVELOPMENT ONLY: serve plain HTTP (aggregates unencrypted on the network)")
    p = node.add_parser("add-client", help="issue a credential for a client (e.g. the central site)")
    p.add_argument("home", type=Path)
    p.add_argument("--client", default="central")

    fed = sub.add_parser("federation", help="the central site's list of nodes").add_subparsers(
        dest="fed_command", required=True)
    p = fed.add_parser("add", help="add a node to a federation file, with a credential from its home")
    p.add_argument("federation", type=Path)
    p.add_argument("--node", required=True, help="node name")
    p.add_argument("--url", required=True, help="node API URL, e.g. https://127.0.0.1:8701")
    p.add_argument("--credentials-from", required=True, type=Path, help="the node's home (issues a credential)")
    p.add_argument("--client", default="central")
    p.add_argument("--ca-cert", default=None, help="pinned CA (or node certificate) an https:// node is verified with")
    p.add_argument("--client-cert", default=None, help="the central site's client certificate (mutual TLS)")
    p.add_argument("--client-key", default=None, help="its private key")
    p = fed.add_parser("list", help="nodes of a federation file (no secrets)")
    p.add_argument("federation", type=Path)

    central = sub.add_parser("central", help="the central Airflow's set-up").add_subparsers(
        dest="central_command", required=True)
    p = central.add_parser("pools", help="create the Airflow pool of central tasks that call nodes "
                                         "(then set MIPFLOW_POOLS=1)")
    p.add_argument("--slots", type=int, default=4, help="most concurrent calls per node (default 4)")
    p.add_argument("--name", default="mipflow_federation", help="pool name (MIPFLOW_POOL; default mipflow_federation)")
    p.add_argument("--dry-run", action="store_true", help="print the airflow command instead of running it")
    p = central.add_parser("members", help="who belongs to a project at the central site: they read the results "
                                           "shared with that project (ADR 0011)")
    p.add_argument("action", choices=["add", "remove", "list"])
    p.add_argument("project", nargs="?", help="the project (list: all projects when left out)")
    p.add_argument("users", nargs="*", help="Airflow user names (add, remove)")
    p.add_argument("--home", type=Path, help="the central home (default MIPFLOW_CENTRAL_HOME)")

    from mipflow.central.standing_cli import add_parser as add_standing_parser

    add_standing_parser(sub)

    p = sub.add_parser("analyze", help="run a federated analysis; prints the result as JSON")
    p.add_argument("algorithm")
    p.add_argument("--federation", required=True, type=Path)
    p.add_argument("--request", required=True, type=Path, help="MIP request JSON ({inputdata, parameters})")
    p.add_argument("--researcher", required=True, help="the person the analysis runs for (nodes check their grants)")
    p.add_argument("--project", required=True, help="the project the analysis belongs to")
    p.add_argument("--min-nodes", type=int, default=1,
                   help="fewest nodes that must contribute (default 1; 3 or more recommended)")
    p.add_argument("--secure-aggregation", choices=("auto", "on", "off"), default="auto",
                   help="mask each node's aggregates so only their sum is seen (auto: on from 3 nodes)")

    access = sub.add_parser("access", help="node admin: who may analyse which data with which algorithms"
                            ).add_subparsers(dest="access_command", required=True)
    p = access.add_parser("grant", help="approve a researcher and/or project (wildcards only as '*', on purpose)")
    p.add_argument("home", type=Path)
    p.add_argument("--researcher", default=None, help="researcher identity (any researcher of the project "
                                                      "when left out)")
    p.add_argument("--project", default=None, help="project (any project of the researcher when left out)")
    p.add_argument("--any-researcher", action="store_true", help="admit ANY researcher id (a warning is printed "
                                                                 "when the grant is open on projects too)")
    p.add_argument("--any-project", action="store_true", help="admit any project explicitly")
    p.add_argument("--data-model", required=True, help="CODE:VERSION, or '*'")
    p.add_argument("--datasets", required=True, help="comma-separated dataset codes, or '*' for all")
    p.add_argument("--algorithms", required=True, help="comma-separated algorithm names, or '*' for all")
    p.add_argument("--until", required=True, help="last day (UTC) the grant applies, YYYY-MM-DD, or 'never'")
    p.add_argument("--note", default="", help="e.g. the ethics approval reference")
    p = access.add_parser("revoke", help="revoke a grant by id, or every grant of a researcher / project")
    p.add_argument("home", type=Path)
    p.add_argument("grant_id", nargs="?", default=None)
    p.add_argument("--researcher", default=None)
    p.add_argument("--project", default=None)
    p = access.add_parser("list", help="current grants (--all: expired and revoked too)")
    p.add_argument("home", type=Path)
    p.add_argument("--all", action="store_true")

    from mipflow.node.controls.study_cli import add_parser as add_study_parser

    add_study_parser(sub)  # mipflow study approve|show|refresh|withdraw (ADR 0028)

    from mipflow.node.controls.explore_cli import add_parser as add_explore_parser

    add_explore_parser(sub)  # mipflow explore enable|disable|show (ADR 0032), mipflow mode show|set (ADR 0038)

    audit = sub.add_parser("audit", help="node admin: the audit log").add_subparsers(
        dest="audit_command", required=True)
    p = audit.add_parser("verify", help="check the audit log's hash chain; exit 1 at the first broken record")
    p.add_argument("home", type=Path)
    p = audit.add_parser("show", help="counts allowed / refused per researcher, algorithm and reason")
    p.add_argument("home", type=Path)
    p.add_argument("--since", default=None, help="ISO date or date-time (UTC unless given)")
    p.add_argument("--researcher", default=None)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")

    dm = sub.add_parser("data-model", help="manage the node's data models").add_subparsers(
        dest="dm_command", required=True)
    p = dm.add_parser("add", help="register a CDEsMetadata.json (code and version from the file)")
    p.add_argument("home", type=Path)
    p.add_argument("path", type=Path)
    p = dm.add_parser("list", help="data models held by the node")
    p.add_argument("home", type=Path)

    p = sub.add_parser("ingest", help="capture, depersonalise, validate and load CSV exports now")
    p.add_argument("home", type=Path)
    p.add_argument("files", type=Path, nargs="+", metavar="FILE")
    p.add_argument("--data-model", default=None, help="CODE:VERSION, e.g. dementia:0.1")
    p.add_argument("--profile", type=Path, default=None,
                   help="source profile JSON (default: MIP layout, patient id 'subjectcode', dataset column 'dataset')")
    p.add_argument("--consent", type=Path, default=None,
                   help="consent registry CSV (default: HOME/consent.csv if present, else everyone consented)")
    p.add_argument("--force", action="store_true", help="re-ingest files already in the manifest")

    p = sub.add_parser("ingest-db", help="extract what changed at the node's EHR database sources since the "
                                         "last load, then depersonalise, validate and load it now")
    p.add_argument("home", type=Path)
    p.add_argument("--profile", default=None, metavar="SOURCE",
                   help="just this source: HOME/profiles/SOURCE.json (default: every profile with a "
                        "'database' section)")

    dicom = sub.add_parser("dicom", help="imaging: DICOM de-identification (PS3.15 Annex E)").add_subparsers(
        dest="dicom_command", required=True)
    p = dicom.add_parser("deidentify", help="de-identify a folder tree with the node's key and options")
    p.add_argument("home", type=Path)
    p.add_argument("in_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p = dicom.add_parser("ingest", help="capture, de-identify and load features of HOME/landing/dicom now")
    p.add_argument("home", type=Path)
    p = dicom.add_parser("pull", help="pull the studies that became stable at the node's PACS (HOME/pacs.json) "
                                      "since the last committed pull, then capture, de-identify, load and "
                                      "commit the cursor now")
    p.add_argument("home", type=Path)

    secure = sub.add_parser(
        "secagg", help="node admin: secure-aggregation keys and the pinned roster of peers (ADR 0014)",
        description="A node takes part in a masked round only when every other participant is pinned here "
                    "under exactly the key the central site announces. Exchange fingerprints with the other "
                    "hospitals' admins out of band (phone, signed letter), then pin.",
    ).add_subparsers(dest="secagg_command", required=True)
    p = secure.add_parser("key", help="this node's public key and fingerprint (give them to the other admins)")
    p.add_argument("home", type=Path)
    p = secure.add_parser("peers", help="the trust policy and every peer with its fingerprint and source "
                                        "(pinned, tofu, revoked) and whether it is accepted now")
    p.add_argument("home", type=Path)
    p = secure.add_parser("pin", help="pin a peer node's public key, after comparing its fingerprint out of band")
    p.add_argument("home", type=Path)
    p.add_argument("--peer", required=True, help="the peer's node name, as the federation names it")
    p.add_argument("--public-key", required=True, help="the peer's public key (hex)")
    p.add_argument("--fingerprint", default=None,
                   help="the fingerprint the peer's admin read out; the pin is refused if the key's differs")
    p = secure.add_parser("revoke", help="stop taking part in rounds with a peer (until it is pinned again)")
    p.add_argument("home", type=Path)
    p.add_argument("--peer", required=True, help="the peer's node name")
    p = secure.add_parser("rotate", help="replace this node's key pair (the old one is gone); send the new "
                                         "fingerprint to the other admins, who must pin the new key")
    p.add_argument("home", type=Path)
    p = secure.add_parser("policy", help="pinned (default: only pinned peers) or tofu (DEVELOPMENT ONLY: "
                                         "trust on first use, does not stop invented peers)")
    p.add_argument("home", type=Path)
    p.add_argument("policy", choices=("pinned", "tofu"))

    algorithms = sub.add_parser("algorithms", help="the algorithm catalogue").add_subparsers(
        dest="algorithms_command", required=True)
    p = algorithms.add_parser("list", help="every algorithm with its inputs and parameters (defaults, bounds)")
    p.add_argument("--json", action="store_true", help="the whole catalogue as JSON (with each form field's schema)")

    tls = sub.add_parser("tls", help="certificates for HTTPS between the central site and the nodes "
                                     "(a development CA; use your PKI in production)").add_subparsers(
        dest="tls_command", required=True)
    p = tls.add_parser("ca", help="make a CA: CA_DIR/ca.crt (give it to the central site) and ca.key (0600)")
    p.add_argument("ca_dir", type=Path)
    p.add_argument("--days", type=int, default=825)
    p = tls.add_parser("node", help="issue a node's server certificate into HOME/tls/node.crt and node.key (0600)")
    p.add_argument("ca_dir", type=Path)
    p.add_argument("home", type=Path)
    p.add_argument("--dns", action="append", default=None, metavar="NAME",
                   help="host name the central site uses (repeatable; default localhost)")
    p.add_argument("--ip", action="append", default=None, metavar="ADDRESS",
                   help="IP address the central site uses (repeatable; default 127.0.0.1)")
    p.add_argument("--days", type=int, default=397)
    p.add_argument("--require-client-cert", action="store_true",
                   help="also copy CA_DIR/ca.crt to HOME/tls/client-ca.crt: the node then requires client "
                        "certificates from this CA (mutual TLS)")
    p = tls.add_parser("client", help="issue the central site's client certificate (for mutual TLS): "
                                      "OUT.crt and OUT.key (0600)")
    p.add_argument("ca_dir", type=Path)
    p.add_argument("--name", default="central")
    p.add_argument("--out", type=Path, default=None, help="file prefix (default CA_DIR/NAME)")
    p.add_argument("--days", type=int, default=397)

    p = sub.add_parser("synth", help="write synthetic stroke-registry exports for the demo hospitals")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--patients", type=int, default=300)
    p.add_argument("--seed", type=int, default=7)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(args)
    except MipflowError as exc:
        print(f"mipflow: error: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "algorithms":  # the catalogue only: no node home, no store
        import json

        from mipflow.algorithms.catalogue import describe, format_table

        catalogue = describe()
        print(json.dumps(catalogue, indent=2) if args.json else format_table(catalogue).rstrip("\n"))
        return 0
    if args.command == "tls":
        return _tls(args)
    if args.command == "standing":  # the central site's registry: no node home
        from mipflow.central.standing_cli import run as standing

        return standing(args)
    from mipflow.node.home import NodeHome

    if args.command == "node" and args.node_command == "serve":  # keep the service's imports small
        from mipflow.node.api.app import serve
        from mipflow.node.api.tls import resolve_server_tls

        home = NodeHome(args.home)
        tls = resolve_server_tls(home.root, cert=args.tls_cert, key=args.tls_key, client_ca=args.tls_client_ca,
                                 insecure_http=args.insecure_http)
        serve(home, host=args.host, port=args.port, tls=tls)
        return 0
    from mipflow.node import ops
    from mipflow.node.store.feature_store import open_store

    if args.command == "node":
        if args.node_command == "init":
            home = NodeHome.init(args.home, args.name, args.db_url)
            open_store(home).dispose()
            print(ops.dumps({"node": home.name, "home": str(home.root), "store": ops.redact_url(home.db_url)}))
            return 0
        home = NodeHome(args.home)
        if args.node_command == "config":
            if args.key is None:
                print(ops.dumps(home.config.to_dict() | {"db_url": ops.redact_url(home.db_url)}))
                return 0
            if args.value is None:
                settings = home.config.to_dict()["settings"]
                if args.key not in settings:
                    print(f"mipflow: error: unknown setting {args.key!r}; known: {sorted(settings)}",
                          file=sys.stderr)
                    return 2
                print(settings[args.key])
                return 0
            if args.key == "disabled_algorithms":
                from mipflow.algorithms import ALGORITHMS

                unknown = sorted({n.strip() for n in args.value.split(",") if n.strip()} - set(ALGORITHMS))
                if unknown:
                    print(f"mipflow: error: unknown algorithm(s) {unknown}; known: {sorted(ALGORITHMS)}",
                          file=sys.stderr)
                    return 2
            home.set_setting(args.key, args.value)
            print(ops.dumps(home.config.to_dict()["settings"]))
            return 0
        if args.node_command == "status":
            print(ops.dumps(ops.node_status(home)))
            return 0
        if args.node_command == "add-client":
            from mipflow.protocol.signing import issue_client

            credential = issue_client(home.root, args.client)
            print(ops.dumps({"node": home.name, "client_id": credential.client_id,
                             "clients_file": str(home.root / "clients.json")}))
            return 0
        if args.node_command == "files":
            refs = ops.file_references(home, args.paths)
            if args.file:
                refs = [r for r in refs if r["file"] == args.file.strip().lower()]
                if not refs:
                    print(f"mipflow: error: no file with reference {args.file!r}"
                          + (" among the PATHs given" if args.paths else " in the landing folder"), file=sys.stderr)
                    return 1
            print(ops.dumps(refs))
            return 0
        if args.node_command == "run-landing":
            summary = ops.run_landing(home, consent=args.consent)
            print(ops.dumps(summary))
            return 1 if summary["failed_files"] or summary["held_batches"] else 0
    if args.command == "data-model":
        home = NodeHome(args.home)
        if args.dm_command == "add":
            model = ops.add_data_model(home, args.path)
            print(ops.dumps({"data_model": model.key, "label": model.label, "variables": len(model)}))
            return 0
        store = open_store(home)
        print(ops.dumps([{"data_model": m.key, "label": m.label, "variables": len(m)}
                         for m in store.data_models()]))
        return 0
    if args.command == "ingest":
        home = NodeHome(args.home)
        summary = ops.ingest(home, args.files, data_model=args.data_model, profile=args.profile,
                             consent=args.consent, force=args.force)
        print(ops.dumps(summary))
        return 1 if summary["failed_files"] or summary["held_batches"] else 0
    if args.command == "ingest-db":
        home = NodeHome(args.home)
        source = None
        if args.profile:
            given = Path(args.profile)
            if given.suffix == ".json" and given.parent != Path("") and \
                    given.resolve().parent != home.profiles_dir.resolve():
                print(f"mipflow: error: a database profile lives in {home.profiles_dir} (the DAGs read it "
                      "there); copy it there and name it by its source", file=sys.stderr)
                return 2
            source = given.stem
        summary = ops.ingest_db(home, source=source)
        print(ops.dumps(summary))
        return 1 if summary["failed_batches"] or summary["held_batches"] or summary["problems"] else 0
    if args.command == "federation":
        from mipflow.central.federation_file import add_node, load_federation

        if args.fed_command == "add":
            endpoint = add_node(args.federation, name=args.node, url=args.url,
                                credentials_from=args.credentials_from, client_id=args.client,
                                ca_cert=args.ca_cert, client_cert=args.client_cert, client_key=args.client_key)
            print(ops.dumps({"federation": str(args.federation), "node": endpoint.name, "url": endpoint.url}))
            return 0
        print(ops.dumps([{"node": e.name, "url": e.url, "client_id": e.client_id}
                         for e in load_federation(args.federation)]))
        return 0
    if args.command == "analyze":
        import json

        from mipflow.central.federation_file import analyze

        try:
            request = json.loads(args.request.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            print(f"mipflow: error: cannot read request {args.request}: {exc}", file=sys.stderr)
            return 2
        secure = {"auto": None, "on": True, "off": False}[args.secure_aggregation]
        outcome = analyze(args.algorithm, request, args.federation, researcher=args.researcher,
                          project=args.project, min_nodes=args.min_nodes, secure_aggregation=secure)
        print(ops.dumps(outcome.to_dict()))
        return 0
    if args.command == "secagg":
        from mipflow.secagg.crypto import fingerprint, load_keypair, rotate_keypair
        from mipflow.secagg.trust import POLICY_LABELS, TrustStore

        home = NodeHome(args.home)
        store = TrustStore(home.root)
        if args.secagg_command == "key":
            pair = load_keypair(home.root)
            print(ops.dumps({"node": home.name, "public_key": pair.public_hex,
                             "fingerprint": fingerprint(pair.public_bytes)}))
        elif args.secagg_command == "pin":
            shown = store.pin(args.peer, args.public_key, args.fingerprint)
            print(ops.dumps({"peer": args.peer, "fingerprint": shown, "source": "pinned"}))
        elif args.secagg_command == "revoke":
            print(ops.dumps({"peer": args.peer, "revoked": store.revoke(args.peer)}))
        elif args.secagg_command == "rotate":
            before = load_keypair(home.root)
            pair = rotate_keypair(home.root)
            print(ops.dumps({"node": home.name, "public_key": pair.public_hex,
                             "fingerprint": fingerprint(pair.public_bytes),
                             "previous_fingerprint": fingerprint(before.public_bytes),
                             "next": "send the new public key and fingerprint to every peer's admin out of "
                                     "band; until they pin it (mipflow secagg pin), they refuse rounds with "
                                     "this node"}))
        elif args.secagg_command == "policy":
            store.set_policy(args.policy)
            print(ops.dumps({"policy": args.policy, "policy_note": POLICY_LABELS[args.policy]}))
            if args.policy == "tofu":
                print("mipflow: warning: trust-on-first-use is a development setting only", file=sys.stderr)
        else:
            policy = store.policy()
            print(ops.dumps({"node": home.name, "policy": policy, "policy_note": POLICY_LABELS[policy],
                             "peers": store.peers()}))
        return 0
    if args.command == "access":
        from mipflow.node.controls.access import AccessRegistry, list_grants

        home = NodeHome(args.home)
        if args.access_command == "grant":
            from mipflow.node.controls.access import grant_scope

            researcher, project, warning = grant_scope(args.researcher, args.project,
                                                       any_researcher=args.any_researcher,
                                                       any_project=args.any_project)
            grant = AccessRegistry(home.root).grant(
                researcher=researcher, project=project, data_model=args.data_model,
                datasets=args.datasets, algorithms=args.algorithms, expires=args.until, note=args.note)
            if warning:
                print(warning, file=sys.stderr)
            print(ops.dumps({"node": home.name, "granted": grant.__dict__}))
            return 0
        if args.access_command == "revoke":
            revoked = AccessRegistry(home.root).revoke(args.grant_id, researcher=args.researcher,
                                                       project=args.project)
            print(ops.dumps({"node": home.name, "revoked": [g.id for g in revoked]}))
            return 0
        print(ops.dumps(list_grants(home.root, include_inactive=args.all)))
        return 0
    if args.command == "study":
        from mipflow.node.controls.study_cli import run

        return run(args)
    if args.command in ("explore", "mode"):
        from mipflow.node.controls.explore_cli import run

        return run(args)
    if args.command == "audit":
        from mipflow.node.controls.audit import AUDIT_FILE, read_records, summarize, summary_text, verify_log

        home = NodeHome(args.home)
        path = home.root / AUDIT_FILE
        if args.audit_command == "verify":
            report = verify_log(path)
            if report.ok:
                print(f"audit log {path}: {report.records} record(s), chain intact")
                return 0
            print(f"audit log {path}: BROKEN at record {report.broken_at}: {report.reason}")
            return 1
        since = None
        if args.since:
            from datetime import datetime, timezone

            try:
                since = datetime.fromisoformat(args.since)
            except ValueError:
                print(f"mipflow: error: --since {args.since!r} is not an ISO date", file=sys.stderr)
                return 2
            since = since if since.tzinfo else since.replace(tzinfo=timezone.utc)
        summary = summarize(read_records(path), since=since, researcher=args.researcher)
        print(ops.dumps(summary) if args.json else summary_text(summary), end="" if not args.json else "\n")
        return 0
    if args.command == "dicom":
        from mipflow.node.imaging.batch import deidentify_tree
        from mipflow.node.imaging.options import options_from_settings

        home = NodeHome(args.home)
        if args.dicom_command == "ingest":
            from mipflow.node.imaging.pipeline import run_imaging

            print(ops.dumps(run_imaging(home)))
            return 0
        if args.dicom_command == "pull":
            from mipflow.node.imaging.pacs import load_pacs_source, run_pacs

            if load_pacs_source(home) is None:
                print("mipflow: error: the node has no PACS: write HOME/pacs.json (see the README)", file=sys.stderr)
                return 2
            print(ops.dumps(run_pacs(home)))
            return 0
        summary = deidentify_tree(args.in_dir, args.out_dir, key=home.key(),
                                  options=options_from_settings(home.settings))
        print(ops.dumps(summary))
        return 0
    if args.command == "central" and args.central_command == "members":
        from mipflow.central.results import ResultStore

        results = ResultStore(args.home)
        try:
            if args.action != "list":
                if not args.project or not args.users:
                    print(f"mipflow: error: central members {args.action} PROJECT USER [USER ...]", file=sys.stderr)
                    return 2
                for name in args.users:
                    if args.action == "add":
                        results.add_member(args.project, name)
                    else:
                        results.remove_member(args.project, name)
            print(ops.dumps(results.members(args.project)))
        finally:
            results.engine.dispose()
        return 0
    if args.command == "central":
        import shlex

        from mipflow.central.pools import create_pools, federation_pool

        spec = federation_pool(args.slots, args.name)
        if args.dry_run:
            print(shlex.join(spec.argv()))
            return 0
        create_pools([spec])
        print(f"pool {spec.name}: {spec.slots} slot(s). Set MIPFLOW_POOLS=1"
              + ("" if spec.name == "mipflow_federation" else f" and MIPFLOW_POOL={spec.name}")
              + " for the scheduler, dag-processor and workers.")
        return 0
    if args.command == "synth":
        from mipflow.demo.synth import write_demo_exports

        written = write_demo_exports(args.out_dir, n_patients=args.patients, seed=args.seed)
        print(ops.dumps({h: {k: str(v) for k, v in files.items()} for h, files in written.items()}))
        return 0
    raise AssertionError(f"unhandled command {args.command}")  # pragma: no cover


def _tls(args: argparse.Namespace) -> int:
    from mipflow.protocol import tls

    if args.tls_command == "ca":
        files = tls.make_ca(args.ca_dir, days=args.days)
        print(f"CA certificate {files.cert} (pin it as the central site's ca_cert; with mutual TLS the nodes' "
              f"--tls-client-ca), key {files.key} (keep it offline)")
        return 0
    if args.tls_command == "node":
        from mipflow.node.api.tls import CLIENT_CA, NODE_CERT, NODE_KEY, TLS_DIR
        from mipflow.node.home import NodeHome

        home = NodeHome(args.home)
        folder = home.root / TLS_DIR
        files = tls.issue_certificate(args.ca_dir, folder / NODE_CERT, folder / NODE_KEY, common_name=home.name,
                                      usage="server", dns_names=args.dns if args.dns is not None else ["localhost"],
                                      ip_addresses=args.ip if args.ip is not None else ["127.0.0.1"], days=args.days)
        info = tls.certificate_info(files.cert)
        print(f"node certificate {files.cert} ({', '.join(info.names)}; until {info.not_after.date()}), "
              f"key {files.key}")
        if args.require_client_cert:
            (folder / CLIENT_CA).write_bytes((args.ca_dir / tls.CA_CERT).read_bytes())
            print(f"mutual TLS: the node requires client certificates issued by {folder / CLIENT_CA}")
        return 0
    prefix = args.out or args.ca_dir / args.name
    files = tls.issue_certificate(args.ca_dir, prefix.with_name(prefix.name + ".crt"),
                                  prefix.with_name(prefix.name + ".key"), common_name=args.name, usage="client",
                                  days=args.days)
    print(f"client certificate {files.cert}, key {files.key} (the connection's client_cert and client_key)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
