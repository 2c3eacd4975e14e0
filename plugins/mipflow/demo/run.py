"""The demo federation (``make demo``).

1. Three hospitals export synthetic stroke-registry CSVs (fake names, MRNs,
   birth dates, addresses, some deliberately bad rows) into their node's
   landing folder; each node's Airflow DAGs (capture -> depersonalise ->
   validate -> load) run through ``dag.test()``; the per-hospital row
   accounting is printed.
2. Each node's aggregate API starts on loopback; the central site gets a
   credential from each node (Airflow connections ``mipflow_node_<name>``);
   three federated analyses run through the central DAGs and their results
   are printed beside the pooled computation they must equal.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Mapping

REPO_ROOT = Path(__file__).resolve().parents[3]
NODE_DAGS = ("node_capture", "node_depersonalise", "node_validate", "node_load")


def prepare_nodes(work_dir: Path, *, n_patients: int, seed: int) -> dict[str, Path]:
    """Create one node home per hospital with its data model, profile, export and consent registry."""
    from mipflow.node.home import NodeHome
    from mipflow.protocol.datamodel import bundled_data_model_path
    from mipflow.node.ops import add_data_model
    from mipflow.demo.synth import HOSPITALS, write_demo_exports

    if work_dir.exists():
        shutil.rmtree(work_dir)
    exports = write_demo_exports(work_dir / "exports", n_patients=n_patients, seed=seed, bad_rows=14)
    homes = {}
    for hospital in HOSPITALS:
        home = NodeHome.init(work_dir / "nodes" / hospital, hospital)
        home.set_setting("settle_seconds", 0)
        add_data_model(home, bundled_data_model_path("stroke_v_0_1"))
        shutil.copyfile(REPO_ROOT / "include" / "schemas" / "profiles" / f"{hospital}.json",
                        home.profiles_dir / f"{hospital}.json")
        landing = home.landing_dir / hospital
        landing.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(exports[hospital]["export"], landing / "stroke_export.csv")
        shutil.copyfile(exports[hospital]["consent"], home.consent_path)
        homes[hospital] = home.root
    return homes


def run_node_dags(home: Path, dags: dict[str, Any]) -> None:
    """Run the four node DAGs in order for one node (what the Asset chain does under a scheduler)."""
    for dag_id in NODE_DAGS:
        run = dags[dag_id].test(run_conf={"node_home": str(home)})
        state = str(getattr(run, "state", ""))
        if "success" not in state:
            raise SystemExit(f"DAG {dag_id} for {home.name} ended in state {state}")


def load_dags() -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    return bag.dags


def node_counts(home: Path) -> dict[str, Any]:
    from mipflow.node.home import NodeHome
    from mipflow.node.ops import node_status

    return node_status(NodeHome(home))


ANALYSES = (
    ("federated_linear_regression", {"y": "mrs_90d", "x": ["age", "nihss_admission", "thrombolysis"]},
     "mRS at 90 days ~ age + NIHSS + thrombolysis"),
    ("federated_logistic_regression", {"y": "death_90d", "x": ["age", "nihss_admission"],
                                       "positive_class": "yes"},
     "death within 90 days ~ age + NIHSS"),
    ("federated_anova_oneway", {"y": "nihss_admission", "x": "stroke_type"}, "NIHSS by stroke type"),
)
#: Every variable the demo analyses use.
STUDY_VARIABLES = ("age", "nihss_admission", "thrombolysis", "mrs_90d", "death_90d", "stroke_type")
#: The study cohort: rows complete in every study variable.  The analyses share it because a node
#: refuses a cohort that differs from one it already answered by fewer than min_row_count rows
#: (differencing control, docs/adr/0013-differencing.md): complete cases of different variable
#: sets would differ by the few rows missing one variable and not the other.
STUDY_COHORT = {"condition": "AND",
                "rules": [{"id": code, "field": code, "operator": "is_not_null", "value": None}
                          for code in STUDY_VARIABLES]}


def pooled_check(homes: dict[str, Path], form: dict[str, Any], result: dict[str, Any]) -> str:
    """Demo-only check (it reads every store, which no real central site can): pooled OLS."""
    import numpy as np
    import pandas as pd
    import sqlalchemy as sa
    import statsmodels.formula.api as smf

    from mipflow.node.home import NodeHome

    columns = list(dict.fromkeys([form["y"], *form["x"], *STUDY_VARIABLES]))
    frames = []
    for home in homes.values():
        engine = sa.create_engine(NodeHome(home).db_url)
        with engine.connect() as conn:
            frames.append(pd.read_sql(sa.text(f"SELECT {', '.join(columns)} FROM dm_stroke_0_1"), conn))
        engine.dispose()
    data = pd.concat(frames).dropna()  # the study cohort: complete in every study variable
    fit = smf.ols(f"{form['y']} ~ {' + '.join(form['x'])}", data).fit()
    ours = np.array(result["coefficients"])
    rel = np.max(np.abs(ours - fit.params.to_numpy()) / np.abs(fit.params.to_numpy()))
    return (f"pooled check (demo only, reads all stores): statsmodels OLS on {len(data)} pooled rows; "
            f"max relative difference of coefficients = {rel:.1e}")


#: The demo's project; ``dag.test()`` runs as the Airflow user ``dag_test``.
DEMO_PROJECT = "stroke-demo"
DEMO_RESEARCHER = "dag_test"


def _grant_demo(home: Path) -> None:
    """The node admin's approval for the demo analyses (once per home)."""
    from mipflow.node.controls.access import AccessRegistry

    registry = AccessRegistry(home)
    if not any(g.researcher == DEMO_RESEARCHER and g.project == DEMO_PROJECT and g.status() == "active"
               for g in registry.grants()):
        registry.grant(researcher=DEMO_RESEARCHER, project=DEMO_PROJECT, data_model="stroke:0.1", datasets="*",
                       algorithms="*", expires="never", note="demo analyses run through dag.test()")


def run_federation(homes: dict[str, Path], dags: dict[str, Any], work_dir: Path) -> bool:
    """Start the node APIs, register them as Airflow connections, run the analyses."""
    import socket
    import subprocess
    import time

    import httpx

    from mipflow.protocol.signing import issue_client
    from mipflow.central.results import ResultStore

    procs = []
    try:
        for hospital, home in homes.items():
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            log = open(home / "serve.log", "wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "mipflow.cli", "node", "serve", str(home),
                                           "--port", str(port)], stdout=log, stderr=subprocess.STDOUT))
            url = f"http://127.0.0.1:{port}"
            cred = issue_client(home, "central")
            _grant_demo(home)
            os.environ[f"AIRFLOW_CONN_MIPFLOW_NODE_{hospital.upper()}"] = json.dumps(
                {"conn_type": "mipflow_node", "host": url, "login": cred.client_id, "password": cred.secret.hex(),
                 "extra": {"node_name": hospital}})
            for _ in range(300):
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            print(f"{hospital}: node API at {url} (OpenAPI: {url}/docs)")
        os.environ["MIPFLOW_CENTRAL_HOME"] = str(work_dir / "central")
        store = ResultStore(work_dir / "central")
        ok = True
        print(f"\nstudy cohort: rows complete in {', '.join(STUDY_VARIABLES)} (every analysis uses the same "
              "cohort; nodes refuse near-duplicate cohorts, docs/adr/0013-differencing.md)")
        for dag_id, form, title in ANALYSES:
            conf = {"data_model": "stroke:0.1", "datasets": list(homes), "filters": STUDY_COHORT,
                    "project": DEMO_PROJECT,
                    "nodes": [f"mipflow_node_{h}" for h in homes], "min_nodes": len(homes), **form}
            print(f"\n== {dag_id}: {title}")
            run = dags[dag_id].test(run_conf=conf)
            stored = store.get(run.run_id)
            if "success" not in str(run.state) or stored is None:
                print(f"{dag_id} ended {run.state}", file=sys.stderr)
                ok = False
                continue
            if dag_id == "federated_linear_regression":
                print(pooled_check(homes, form, stored["result"]))
        return ok
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


def should_serve(flag: bool, environ: Mapping[str, str] | None = None) -> bool:
    """Whether to leave the results pages up after the demo: ``--serve`` or ``MIPFLOW_DEMO_SERVE=1``."""
    env = os.environ if environ is None else environ
    return flag or env.get("MIPFLOW_DEMO_SERVE", "").strip().lower() in ("1", "true", "yes", "on")


def serve_results(central: Path, port: int) -> int:
    """Run the central Airflow api-server (with the results plugin) on the demo's results until interrupted.

    The api-server uses this environment's Airflow home (``make demo`` sets
    ``AIRFLOW_HOME=var/airflow``); Ctrl-C stops it.
    """
    import subprocess

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mipflow.demo.run")
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


def run_demo(args: argparse.Namespace) -> int:
    """The whole demo (nodes, node DAGs, federated analyses); returns the exit code."""
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO_ROOT / "dags"))
    if str(REPO_ROOT / "plugins") not in sys.path:
        sys.path.insert(0, str(REPO_ROOT / "plugins"))

    print(f"== mipflow demo: three hospital nodes under {args.work_dir}")
    homes = prepare_nodes(args.work_dir, n_patients=args.patients, seed=args.seed)
    dags = load_dags()
    summary = {}
    for hospital, home in homes.items():
        print(f"== {hospital}: running node DAGs {' -> '.join(NODE_DAGS)}")
        run_node_dags(home, dags)
        summary[hospital] = node_counts(home)
    print("\n== Row accounting per hospital (rows_in = loaded + quarantined + no_consent + duplicates)")
    ok = True
    for hospital, status in summary.items():
        for batch in status["batches"]:
            total = batch["loaded"] + batch["quarantined"] + batch["no_consent"] + batch["duplicates"]
            ok &= total == batch["rows_in"] and batch["status"] == "loaded"
            print(f"{hospital:12s} {batch['source']:32s} {batch['status']:7s} rows_in={batch['rows_in']:5d} "
                  f"loaded={batch['loaded']:5d} quarantined={batch['quarantined']:3d} "
                  f"no_consent={batch['no_consent']:3d} duplicates={batch['duplicates']:2d}")
        print(f"{'':12s} datasets: " + json.dumps({d['dataset']: d['row_count'] for d in status['datasets']}))
    if not ok:
        print("demo: a batch did not load or its counts do not add up", file=sys.stderr)
        return 1
    print("\n== Federated analyses through the central Airflow DAGs (aggregates only left each node)")
    if not run_federation(homes, dags, args.work_dir):
        return 1
    print(f"\nDemo finished. Results with provenance: {args.work_dir / 'central' / 'results'}; "
          f"node audit logs: {args.work_dir / 'nodes' / '*' / 'audit.log'}")
    print(results_page_hint(args.work_dir / "central", args.port, serving=should_serve(args.serve)))
    return 0


def results_page_hint(central: Path, port: int = 8080, *, serving: bool = False) -> str:
    """Where the results pages are once the central api-server runs on this Airflow home."""
    how = ("now (--serve)" if serving else
           "after `make results-ui` or `make demo DEMO_ARGS=--serve`")
    return (f"Results pages: http://localhost:{port}/mipflow/ (also under Browse in the Airflow UI) {how} "
            f"(the central api-server on MIPFLOW_CENTRAL_HOME={central}; log in as admin "
            "with the password in var/airflow/simple_auth_manager_passwords.json.generated)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
