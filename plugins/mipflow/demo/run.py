"""The demo federation's steps that need no Airflow (``make demo`` runs them through the DAGs).

``python -m mipflow_airflow.demo`` (:mod:`mipflow_airflow.demo`) drives the demo:

1. :func:`prepare_nodes`: three hospitals export synthetic stroke-registry CSVs
   (fake names, MRNs, birth dates, addresses, some deliberately bad rows) into
   their node's landing folder; each node's Airflow DAGs (capture ->
   depersonalise -> validate -> load) then run through ``dag.test()`` and
   :func:`row_accounting` checks each hospital's counts and words the report.
2. :func:`serve_nodes`: each node's aggregate API starts on loopback and issues
   the central site a credential; the three :data:`ANALYSES` run through the
   central DAGs (:func:`analysis_conf`) and the linear regression is compared
   with the pooled computation it must equal (:func:`pooled_check`).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

REPO_ROOT = Path(__file__).resolve().parents[3]


def prepare_nodes(work_dir: Path, *, n_patients: int, seed: int) -> dict[str, Path]:
    """Create one node home per hospital with its data model, profile, export and consent registry."""
    from mipflow.node.home import NodeHome
    from mipflow.protocol.datamodel import bundled_data_model_path
    from mipflow.node.ops import add_data_model
    from mipflow.demo.formats import HOSPITALS
    from mipflow.demo.synth import write_demo_exports

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


def node_counts(home: Path) -> dict[str, Any]:
    from mipflow.node.home import NodeHome
    from mipflow.node.ops import node_status

    return node_status(NodeHome(home))


#: The demo's study project and its exploratory project (no study: the nodes' default mode,
#: explore); ``dag.test()`` runs as the Airflow user ``dag_test``.
DEMO_PROJECT = "stroke-demo"
EXPLORE_PROJECT = "stroke-explore"
DEMO_RESEARCHER = "dag_test"
#: (DAG, form, title): three exact analyses in the study, one in the exploratory project.
ANALYSES = (
    ("federated_linear_regression", {"y": "mrs_90d", "x": ["age", "nihss_admission", "thrombolysis"]},
     "mRS at 90 days ~ age + NIHSS + thrombolysis"),
    ("federated_logistic_regression", {"y": "death_90d", "x": ["age", "nihss_admission"],
                                       "positive_class": "yes"},
     "death within 90 days ~ age + NIHSS"),
    ("federated_anova_oneway", {"y": "nihss_admission", "x": "stroke_type"}, "NIHSS by stroke type"),
    ("federated_descriptive_stats", {"y": ["age", "nihss_admission"], "project": EXPLORE_PROJECT},
     "age and NIHSS, explored without a study (the nodes' default mode: perturbed answers)"),
)
#: Every variable the demo's study analyses use.
STUDY_VARIABLES = ("age", "nihss_admission", "thrombolysis", "mrs_90d", "death_90d", "stroke_type")
#: The demo's study protocol, approved by each hospital's node admin (``mipflow study approve``,
#: ADR 0028): exact answers for these algorithms on the rows complete in every study variable, the
#: same rows for every analysis.  A project without a study is answered in the nodes' default mode,
#: explore (perturbed answers; docs/adr/0038-safe-default-mode.md).
DEMO_STUDY = "stroke-outcomes-demo"


def study_protocol(hospitals: list[str]) -> dict[str, Any]:
    """The protocol every hospital's admin approves for :data:`DEMO_PROJECT`."""
    return {"name": DEMO_STUDY, "data_model": "stroke:0.1", "datasets": list(hospitals),
            "variables": list(STUDY_VARIABLES), "population": {"filter": None}, "subgroups": [],
            "algorithms": ["linear_regression", "logistic_regression", "anova_oneway"],
            "note": "demo: approved by each hospital's steering committee"}


def approve_study(homes: Mapping[str, Path]) -> list[str]:
    """Each hospital's node admin approves :func:`study_protocol` for the demo project; report lines."""
    from mipflow.node.controls.study_approval import approve
    from mipflow.node.home import NodeHome

    lines = []
    for hospital, root in homes.items():
        done = approve(NodeHome(root), DEMO_PROJECT, study_protocol(list(homes)))
        lines.append(f"{hospital:12s} study {done['study']} approved for project {DEMO_PROJECT} "
                     f"(snapshot {done['snapshot']})")
    return lines


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
    data = pd.concat(frames).dropna()  # the study population: complete in every study variable
    fit = smf.ols(f"{form['y']} ~ {' + '.join(form['x'])}", data).fit()
    ours = np.array(result["coefficients"])
    rel = np.max(np.abs(ours - fit.params.to_numpy()) / np.abs(fit.params.to_numpy()))
    return (f"pooled check (demo only, reads all stores): statsmodels OLS on {len(data)} pooled rows; "
            f"max relative difference of coefficients = {rel:.1e}")




def _grant_demo(home: Path) -> None:
    """The node admin's approval for the demo analyses (once per home)."""
    from mipflow.node.controls.access import AccessRegistry

    registry = AccessRegistry(home)
    for project in (DEMO_PROJECT, EXPLORE_PROJECT):
        if not any(g.researcher == DEMO_RESEARCHER and g.project == project and g.status() == "active"
                   for g in registry.grants()):
            registry.grant(researcher=DEMO_RESEARCHER, project=project, data_model="stroke:0.1", datasets="*",
                           algorithms="*", expires="never", note="demo analyses run through dag.test()")


@contextmanager
def serve_nodes(homes: Mapping[str, Path], timeout: float = 30.0, *,
                tls_dir: Path | None = None) -> Iterator[dict[str, dict[str, str]]]:
    """Serve each node's aggregate API on loopback, each with a credential for the central site.

    With ``tls_dir`` the nodes serve HTTPS with mutual TLS: a development CA there (made once,
    ``mipflow tls ca``) issues each node a loopback certificate and the central site a client
    certificate; without it they serve plain HTTP (``--insecure-http``).

    Yields
    ------
    dict
        Hospital -> ``{"url", "client_id", "secret"}`` (secret in hex), with ``tls_dir`` also
        ``ca_cert``, ``client_cert`` and ``client_key`` (paths); the
        services stop when the block ends.  Each node also approves the demo
        researcher in the demo project (:data:`DEMO_RESEARCHER`, :data:`DEMO_PROJECT`),
        and pins every other node's secure-aggregation key (:func:`mipflow.secagg.trust.pin_each_other`).
    """
    import socket
    import time

    import httpx

    from mipflow.protocol.signing import issue_client
    from mipflow.secagg.trust import pin_each_other

    # each hospital's admin pins the others' secure-aggregation keys (in a real federation after
    # comparing fingerprints out of band: `mipflow secagg key`, then `mipflow secagg pin`; ADR 0014)
    for hospital, shown in pin_each_other(homes).items():
        print(f"{hospital}: secure-aggregation key {shown}, pinned by the other hospitals")
    central_tls = _demo_certificates(tls_dir, homes) if tls_dir is not None else {}
    verify: Any = True
    if central_tls:
        from mipflow.protocol.tls import client_context

        verify = client_context(**central_tls)
    procs: list[subprocess.Popen] = []
    nodes: dict[str, dict[str, str]] = {}
    try:
        for hospital, home in homes.items():
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            log = open(home / "serve.log", "wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "mipflow.cli", "node", "serve", str(home),
                                           "--port", str(port), *(() if central_tls else ("--insecure-http",))],
                                          stdout=log, stderr=subprocess.STDOUT))
            url = f"{'https' if central_tls else 'http'}://127.0.0.1:{port}"
            cred = issue_client(home, "central")
            _grant_demo(home)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    if httpx.get(url + "/health", timeout=1, verify=verify).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            print(f"{hospital}: node API at {url}" + (" (mutual TLS)" if central_tls else f" (OpenAPI: {url}/docs)"))
            nodes[hospital] = {"url": url, "client_id": cred.client_id, "secret": cred.secret.hex(), **central_tls}
        yield nodes
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


def _demo_certificates(tls_dir: Path, homes: Mapping[str, Path]) -> dict[str, str]:
    """A development CA in ``tls_dir`` (made once), a loopback server certificate for each node that
    requires client certificates from it, and the central site's client certificate."""
    from mipflow.node.api.tls import CLIENT_CA, NODE_CERT, NODE_KEY, TLS_DIR
    from mipflow.protocol.tls import CA_CERT, CA_KEY, issue_certificate, make_ca

    if not (tls_dir / CA_KEY).exists():
        make_ca(tls_dir, common_name="mipflow demo CA")
    for hospital, home in homes.items():
        folder = Path(home) / TLS_DIR
        issue_certificate(tls_dir, folder / NODE_CERT, folder / NODE_KEY, common_name=hospital, usage="server",
                          dns_names=["localhost"], ip_addresses=["127.0.0.1"])
        (folder / CLIENT_CA).write_bytes((tls_dir / CA_CERT).read_bytes())
    central = issue_certificate(tls_dir, tls_dir / "central.crt", tls_dir / "central.key", common_name="central",
                                usage="client")
    print(f"TLS: demo CA {tls_dir / CA_CERT}; every node requires the central site's client certificate")
    return {"ca_cert": str(tls_dir / CA_CERT), "client_cert": str(central.cert), "client_key": str(central.key)}


def analysis_conf(hospitals: list[str], form: Mapping[str, Any], conn_ids: list[str]) -> dict[str, Any]:
    """The trigger form of one demo analysis: every hospital's dataset, the study project unless the
    form names another, all nodes required."""
    return {"data_model": "stroke:0.1", "datasets": list(hospitals), "project": DEMO_PROJECT,
            "nodes": list(conn_ids), "min_nodes": len(conn_ids), **form}


def row_accounting(summary: Mapping[str, Mapping[str, Any]]) -> tuple[bool, list[str]]:
    """Each hospital's batches as report lines, and whether every batch loaded with counts that add up.

    Parameters
    ----------
    summary : mapping
        Hospital -> :func:`node_counts` of its home.
    """
    ok = True
    lines = []
    for hospital, status in summary.items():
        for batch in status["batches"]:
            total = batch["loaded"] + batch["quarantined"] + batch["no_consent"] + batch["duplicates"]
            ok &= total == batch["rows_in"] and batch["status"] == "loaded"
            lines.append(f"{hospital:12s} {batch['source']:32s} {batch['status']:7s} rows_in={batch['rows_in']:5d} "
                         f"loaded={batch['loaded']:5d} quarantined={batch['quarantined']:3d} "
                         f"no_consent={batch['no_consent']:3d} duplicates={batch['duplicates']:2d}")
        lines.append(f"{'':12s} datasets: " + json.dumps({d["dataset"]: d["row_count"] for d in status["datasets"]}))
    return ok, lines


def should_serve(flag: bool, environ: Mapping[str, str] | None = None) -> bool:
    """Whether to leave the results pages up after the demo: ``--serve`` or ``MIPFLOW_DEMO_SERVE=1``."""
    env = os.environ if environ is None else environ
    return flag or env.get("MIPFLOW_DEMO_SERVE", "").strip().lower() in ("1", "true", "yes", "on")


def results_page_hint(central: Path, port: int = 8080, *, serving: bool = False) -> str:
    """Where the results pages are once the central api-server runs on this Airflow home."""
    how = ("now (--serve)" if serving else
           "after `make results-ui` or `make demo DEMO_ARGS=--serve`")
    return (f"Results pages: http://localhost:{port}/mipflow/ (also under Browse in the Airflow UI) {how} "
            f"(the central api-server on MIPFLOW_CENTRAL_HOME={central}; log in as admin "
            "with the password in var/airflow/simple_auth_manager_passwords.json.generated)")
