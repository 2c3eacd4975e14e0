"""``python -m mipflow_airflow.demo`` (``make demo``): the demo federation through mipflow's DAGs.

The steps without Airflow (node homes, synthetic exports, node services, row
accounting, the pooled check) are :mod:`mipflow.demo.run`; this module runs the
node DAGs (``node_capture -> node_depersonalise -> node_validate -> node_load``)
and the central analysis DAGs with ``dag.test()``, registers the nodes as
Airflow connections, and can leave the results pages up (``--serve``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mipflow.demo.run import (ANALYSES, DEMO_PROJECT, EXPLORE_PROJECT, REPO_ROOT, STUDY_VARIABLES, analysis_conf,
                              approve_study, node_counts, pooled_check, prepare_nodes, results_page_hint,
                              row_accounting, serve_nodes, should_serve)

NODE_DAGS = ("node_capture", "node_depersonalise", "node_validate", "node_load")
#: Lines of each result's summary the demo prints (the task log has them all).
DEMO_SUMMARY_LINES = 8


def load_dags() -> dict[str, Any]:
    """Every DAG of ``AIRFLOW__CORE__DAGS_FOLDER`` by id; exits on import errors."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ.get("AIRFLOW__CORE__DAGS_FOLDER") or str(REPO_ROOT / "dags"))
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    return bag.dags


def run_node_dags(home: Path, dags: dict[str, Any]) -> None:
    """Run the four node DAGs in order for one node (what the Asset chain does under a scheduler)."""
    for dag_id in NODE_DAGS:
        run = dags[dag_id].test(run_conf={"node_home": str(home)})
        state = str(getattr(run, "state", ""))
        if "success" not in state:
            raise SystemExit(f"DAG {dag_id} for {home.name} ended in state {state}")


def run_federation(homes: dict[str, Path], dags: dict[str, Any], work_dir: Path) -> bool:
    """Serve the nodes (HTTPS, mutual TLS with a demo CA), register them as Airflow connections, run the
    analyses through the central DAGs."""
    from mipflow.central.results import ResultStore, summary_lines

    with serve_nodes(homes, tls_dir=work_dir / "central" / "tls") as nodes:
        for hospital, node in nodes.items():
            tls = {key: node[key] for key in ("ca_cert", "client_cert", "client_key") if key in node}
            os.environ[f"AIRFLOW_CONN_MIPFLOW_NODE_{hospital.upper()}"] = json.dumps(
                {"conn_type": "mipflow_node", "host": node["url"], "login": node["client_id"],
                 "password": node["secret"], "extra": {"node_name": hospital, **tls}})
        os.environ["MIPFLOW_CENTRAL_HOME"] = str(work_dir / "central")
        store = ResultStore(work_dir / "central")
        ok = True
        print(f"\nproject {DEMO_PROJECT}: exact answers inside the approved study (rows complete in "
              f"{', '.join(STUDY_VARIABLES)}); project {EXPLORE_PROJECT}: no study, so the nodes answer in their "
              "default mode, explore (perturbed answers; docs/adr/0038-safe-default-mode.md)")
        for dag_id, form, title in ANALYSES:
            conf = analysis_conf(list(homes), form, [f"mipflow_node_{h}" for h in homes])
            print(f"\n== {dag_id}: {title}")
            run = dags[dag_id].test(run_conf=conf)
            stored = store.document(run.run_id)
            if "success" not in str(run.state) or stored is None:
                print(f"{dag_id} ended {run.state}", file=sys.stderr)
                ok = False
                continue
            print("\n".join(summary_lines(stored, limit=DEMO_SUMMARY_LINES)))
            if dag_id == "federated_linear_regression":
                print(pooled_check(homes, form, stored["result"]))
        return ok


def serve_results(central: Path, port: int) -> int:
    """Run the central Airflow api-server (with the results plugin) on the demo's results until interrupted.

    The api-server uses this environment's Airflow home (``make demo`` sets
    ``AIRFLOW_HOME=var/airflow``); Ctrl-C stops it.
    """
    airflow = Path(sys.executable).parent / "airflow"
    env = {**os.environ, "MIPFLOW_CENTRAL_HOME": str(central)}
    env.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO_ROOT / "plugins"))
    print(f"\n== Serving the results pages at http://localhost:{port}/mipflow/ (Ctrl-C stops the server)",
          flush=True)
    proc = subprocess.Popen([str(airflow) if airflow.exists() else "airflow", "api-server", "--port", str(port)],
                            env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        print("results server stopped")
        return 0


def run_demo(args: argparse.Namespace) -> int:
    """The whole demo (nodes, node DAGs, federated analyses); returns the exit code."""
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO_ROOT / "dags"))
    # the task logs are at INFO in airflow.cfg (deployments read them); in the demo's own terminal
    # Airflow's bookkeeping would bury the story, so the demo prints each result's summary itself
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

    print(f"== mipflow demo: three hospital nodes under {args.work_dir}")
    homes = prepare_nodes(args.work_dir, n_patients=args.patients, seed=args.seed)
    dags = load_dags()
    summary = {}
    for hospital, home in homes.items():
        print(f"== {hospital}: running node DAGs {' -> '.join(NODE_DAGS)}")
        run_node_dags(home, dags)
        summary[hospital] = node_counts(home)
    print("\n== Row accounting per hospital (rows_in = loaded + quarantined + no_consent + duplicates)")
    ok, lines = row_accounting(summary)
    print("\n".join(lines))
    if not ok:
        print("demo: a batch did not load or its counts do not add up", file=sys.stderr)
        return 1
    print("\n== Each hospital's node admin approves the demo study protocol (mipflow study approve)")
    print("\n".join(approve_study(homes)))
    print("\n== Federated analyses through the central Airflow DAGs (aggregates only left each node)")
    if not run_federation(homes, dags, args.work_dir):
        return 1
    print(f"\nDemo finished. Results with provenance: {args.work_dir / 'central' / 'results'}; "
          f"node audit logs: {args.work_dir / 'nodes' / '*' / 'audit.log'}")
    print(results_page_hint(args.work_dir / "central", args.port, serving=should_serve(args.serve)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mipflow_airflow.demo")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "var" / "demo")
    parser.add_argument("--patients", type=int, default=400)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--serve", action="store_true",
                        help="after the run, serve the results pages until interrupted (also MIPFLOW_DEMO_SERVE=1)")
    parser.add_argument("--port", type=int, default=8080, help="port of the results pages (with --serve)")
    args = parser.parse_args(argv)
    code = run_demo(args)
    if code == 0 and should_serve(args.serve):
        return serve_results(args.work_dir / "central", args.port)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
