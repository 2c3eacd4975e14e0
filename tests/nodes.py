"""Start real node API processes on loopback for tests."""
from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import httpx


def standard_home(root, name: str, db_url: str = "", **kwargs):
    """A new node home that answers projects without a study in **standard** mode (exact answers under
    the per-request controls), for the tests of those controls and of the exact algorithms.

    The shipped default is explore mode (``default_mode``, ADR 0038): tests of the default build their
    homes with ``NodeHome.init`` (``tests/privacy/test_default_mode.py``).
    """
    from mipflow.node.home import NodeHome

    home = NodeHome.init(root, name, db_url, **kwargs)
    home.set_setting("default_mode", "standard")
    return home


def published(home, data_model: str, dataset: str, count: int):
    """What a node's metadata says of ``count`` rows of ``dataset`` (approximate; ADR 0038's review):
    the test holds the node home, so it recomputes the keyed value the node publishes."""
    from mipflow.node.controls.metadata_counts import count_key, published_count
    from mipflow.node.home import NodeHome
    from mipflow.node.store.feature_store import open_store

    home = home if isinstance(home, NodeHome) else NodeHome(home)
    store = open_store(home)
    try:
        epoch = store.consent_applied()
    finally:
        store.dispose()
    return published_count(count, key=count_key(home.key()), data_model=data_model, dataset=dataset,
                           min_row_count=home.settings.min_row_count, epoch=epoch)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _ForkedNode:
    """A node process forked by the zygote (:mod:`tests.node_zygote`), with the part of
    ``subprocess.Popen`` that :func:`running_nodes` uses; watched through a pidfd (the zygote is its
    parent, not this process)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        try:
            self._fd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:  # already ended (and reaped)
            self._fd, self.returncode = None, -1

    def _ended(self, timeout: float) -> bool:
        import select

        if self._fd is not None and select.select([self._fd], [], [], timeout)[0]:
            os.close(self._fd)
            self._fd, self.returncode = None, -1  # the zygote reaped it: its status is not ours to read
        return self._fd is None

    def poll(self) -> int | None:
        return self.returncode if self._ended(0) else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended(timeout):
            raise subprocess.TimeoutExpired(f"node {self.pid}", timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self._fd is not None:
            try:
                signal.pidfd_send_signal(self._fd, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


_ZYGOTE: list = []  # this process's zygote (subprocess.Popen), started by the first node
_ZYGOTE_LOCK = threading.Lock()


def _end_zygote(zygote) -> None:
    """At this process's exit: close the zygote's input (it ends) and wait for it."""
    try:
        zygote.stdin.close()
        zygote.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        zygote.kill()


def _node_process(argv: list[str], env: dict[str, str], log: Path):
    """``python -m mipflow.cli ARGV`` with ``env``, output to ``log``: forked by this process's zygote
    (:mod:`tests.node_zygote`, which has imported the node service once), or spawned where fork is not
    offered or ``MIPFLOW_TEST_SPAWN_NODES=1`` asks for it."""
    if os.environ.get("MIPFLOW_TEST_SPAWN_NODES") == "1" or not hasattr(os, "pidfd_open"):
        with open(log, "wb") as out:
            return subprocess.Popen([sys.executable, "-m", "mipflow.cli", *argv], stdout=out,
                                    stderr=subprocess.STDOUT, env=env)
    with _ZYGOTE_LOCK:
        if not _ZYGOTE or _ZYGOTE[0].poll() is not None:
            zygote = subprocess.Popen([sys.executable, str(Path(__file__).with_name("node_zygote.py"))],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            if zygote.stdout.readline().strip() != "ready":
                raise RuntimeError("the node zygote did not start")
            _ZYGOTE[:] = [zygote]
            atexit.register(_end_zygote, zygote)
        zygote = _ZYGOTE[0]
        zygote.stdin.write(json.dumps({"argv": argv, "env": env, "cwd": os.getcwd(), "log": str(log)}) + "\n")
        zygote.stdin.flush()
        return _ForkedNode(int(zygote.stdout.readline()))


@contextmanager
def running_nodes(homes: list[Path], timeout: float = 60.0, *, https: bool = False,
                  verify: ssl.SSLContext | None = None) -> Iterator[list[str]]:
    """Run ``mipflow node serve`` for each home; yield their URLs; stop them afterwards.

    By default the nodes serve plain HTTP (``--insecure-http``, the development setting); with
    ``https`` each serves the certificate in its home's ``tls/`` (:func:`tls_federation`), and
    ``verify`` (the central side's context, with a client certificate for mutual TLS) checks
    that each answers.
    """
    procs, urls = [], []
    verify = verify or httpx.create_ssl_context()  # one context for every probe (loading it costs ~20 ms)
    try:
        for home in homes:
            port = free_port()
            procs.append(_node_process(["node", "serve", str(home), "--port", str(port),
                                        *(() if https else ("--insecure-http",))],
                                       {**os.environ, "PYTHONUNBUFFERED": "1"}, Path(home) / "serve.log"))
            urls.append(f"{'https' if https else 'http'}://127.0.0.1:{port}")
        deadline = time.monotonic() + timeout
        for url, proc, home in zip(urls, procs, homes):
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"node at {home} exited: {(Path(home) / 'serve.log').read_text()[-2000:]}")
                try:
                    if httpx.get(url + "/health", timeout=1, verify=verify).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node at {home} did not start")
                time.sleep(0.1)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def tls_federation(ca_dir: Path, homes, *, mutual: bool = False, client: str = "central") -> dict[str, str]:
    """A development CA in ``ca_dir`` that issues each node home a loopback server certificate
    (``HOME/tls/``; DNS localhost, IP 127.0.0.1) and the central site a client certificate;
    with ``mutual`` each node also requires client certificates from that CA.

    Returns the central side's files: ``ca_cert``, ``client_cert``, ``client_key`` (paths as text),
    as a connection's extra or a :class:`~mipflow.central.client.NodeEndpoint` takes them.
    """
    from mipflow.node.api.tls import CLIENT_CA, NODE_CERT, NODE_KEY, TLS_DIR
    from mipflow.node.home import NodeHome
    from mipflow.protocol.tls import CA_CERT, issue_certificate, make_ca

    ca = make_ca(ca_dir)
    for home in homes:
        folder = Path(home) / TLS_DIR
        issue_certificate(ca_dir, folder / NODE_CERT, folder / NODE_KEY, common_name=NodeHome(home).name,
                          usage="server", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
        if mutual:
            (folder / CLIENT_CA).write_bytes((Path(ca_dir) / CA_CERT).read_bytes())
    central = issue_certificate(ca_dir, Path(ca_dir) / f"{client}.crt", Path(ca_dir) / f"{client}.key",
                                common_name=client, usage="client")
    return {"ca_cert": str(ca.cert), "client_cert": str(central.cert), "client_key": str(central.key)}


@contextmanager
def served_clients(roots: Mapping[str, Path], *, retries: int = 0) -> Iterator[dict]:
    """Serve every node home (:func:`running_nodes`), each with a fresh credential for the central
    site; yield a :class:`mipflow.central.client.NodeClient` per node, by name; close them afterwards."""
    from mipflow.protocol.signing import issue_client
    from mipflow.central.client import NodeClient, NodeEndpoint

    credentials = {name: issue_client(root, "central") for name, root in roots.items()}
    with running_nodes(list(roots.values())) as urls:
        clients = {name: NodeClient(NodeEndpoint(name, url, credentials[name].client_id,
                                                 credentials[name].secret.hex()), retries=retries)
                   for name, url in zip(roots, urls)}
        try:
            yield clients
        finally:
            for client in clients.values():
                client.close()

#: Identity the test fixtures analyse as, and the one ``dag.test()`` runs as.
RESEARCHER = "tester"
PROJECT = "mipflow-tests"
DAG_TEST_USER = "dag_test"


def grant_all(home, researcher: str = RESEARCHER, project: str = PROJECT, *, data_model: str = "*",
              datasets: str = "*", algorithms: str = "*", expires: str = "never"):
    """The node admin's approval for a test identity (wildcards on purpose); returns the grant."""
    from mipflow.node.controls.access import AccessRegistry

    return AccessRegistry(home).grant(researcher=researcher, project=project, data_model=data_model,
                                      datasets=datasets, algorithms=algorithms, expires=expires,
                                      note="test fixture")


def load_frame(home, model, frame, pid_column: str = "subjectcode", visit_column: str | None = None) -> int:
    """Put rows straight into a node's store (for API tests; ingestion has its own tests).

    ``frame`` holds data-model columns with string cells as in the CSVs; ``visit_column`` (e.g.
    ``"visitid"``) gives the rows' visit key ``_visit``, else every row's is empty.
    """
    import pandas as pd

    from mipflow.node.home import NodeHome
    from mipflow.node.store.feature_store import FeatureStore

    store = FeatureStore(NodeHome(home).db_url)
    store.add_data_model(model)
    columns = {"_pid": frame[pid_column].astype(str), "dataset": frame["dataset"].astype(str),
               "_visit": (frame[visit_column].astype(str) if visit_column else pd.Series("", index=frame.index))}
    for var in model:
        if var.code in frame.columns and var.code not in ("dataset",):
            col = frame[var.code]
            if var.sql_type in ("int", "real"):
                col = pd.to_numeric(col, errors="coerce")
                if var.sql_type == "int" and col.dropna().mod(1).eq(0).all():  # PostgreSQL's bigint
                    col = col.astype("Int64")
            columns[var.code] = col
    df = pd.DataFrame(columns)
    with store.begin() as conn:
        store.upsert_rows(conn, model, df, batch_id="test", sha256="0" * 64)
        store.refresh_datasets(conn, model)
    store.dispose()
    return len(df)


def apply_consent(home, people, status: str = "withdrawn") -> int:
    """The consent path of every ingest (``apply_withdrawals``) with a registry listing ``people`` as ``status``
    (written to ``consent.csv`` in the node home); returns the rows deleted."""
    from mipflow.node.home import NodeHome
    from mipflow.node.ingest.capture import ConsentRegistry
    from mipflow.node.ingest.pipeline import apply_withdrawals
    from mipflow.node.store.feature_store import FeatureStore

    path = Path(home) / "consent.csv"
    path.write_text("patient_id,consent\n" + "".join(f"{person},{status}\n" for person in people))
    store = FeatureStore(NodeHome(home).db_url)
    try:
        return apply_withdrawals(store, ConsentRegistry.load(path), NodeHome(home).key())
    finally:
        store.dispose()


#: A small linear regression on the dementia CSVs (one dataset), as the governance tests send it.
LINREG = {"inputdata": {"data_model": "dementia:0.1", "datasets": ["edsd0"], "x": ["leftamygdala"],
                        "y": ["lefthippocampus"], "filters": None}, "parameters": {}}


def linreg(*datasets: str) -> dict:
    doc = json.loads(json.dumps(LINREG))
    doc["inputdata"]["datasets"] = list(datasets)
    return doc


def in_process_node(root: Path, name: str, *, seed: int, rows: int, patients: str):
    """A node home holding ``rows`` synthetic rows (patients ``<patients>_<k:04d>``), reached in-process
    through its real signed API (a FastAPI ``TestClient`` in place of the HTTP transport).

    Returns ``(client, home)``; the caller closes the client.
    """
    from fastapi.testclient import TestClient

    from mipflow.central.client import NodeClient, NodeEndpoint
    from mipflow.node.api.app import create_app
    from mipflow.protocol.signing import issue_client
    from tests.mipflow.algorithms.synthetic import MODEL, make_data

    home = standard_home(root, name)
    grant_all(home.root)
    frame = make_data(seed, rows)
    frame.insert(0, "subjectcode", [f"{patients}_{k:04d}" for k in range(len(frame))])
    load_frame(home.root, MODEL, frame)
    cred = issue_client(home.root, "central")
    client = NodeClient(NodeEndpoint(home.name, "http://testserver", cred.client_id, cred.secret.hex()), retries=0)
    client._http.close()
    client._http = TestClient(create_app(home), base_url="http://testserver")
    return client, home


def pin_each_other(homes) -> dict[str, str]:
    """Each node's admin pins every other node's secure-aggregation key, as hospitals' admins do
    after exchanging fingerprints out of band (``mipflow secagg key`` / ``mipflow secagg pin``).

    Parameters
    ----------
    homes : mapping or iterable
        Node name -> home, or homes (paths or :class:`~mipflow.node.home.NodeHome`) named by their config.

    Returns
    -------
    dict
        Node name -> its key's fingerprint.
    """
    from mipflow.node.home import NodeHome
    from mipflow.secagg.trust import pin_each_other as pin

    def root(home) -> Path:
        return home.root if isinstance(home, NodeHome) else Path(home)

    if isinstance(homes, Mapping):
        roots = {name: root(home) for name, home in homes.items()}
    else:
        roots = {NodeHome(root(h)).name: root(h) for h in homes}
    return pin(roots)


def unverified_chain() -> tuple:
    """The node's control chain without round verification (ADR 0029): how tests and benchmarks reach
    the controls behind it with a later round's state of their own making."""
    from mipflow.node.api.step import CHAIN, tag_release, verify_round

    return tuple(c for c in CHAIN if c not in (verify_round, tag_release))


class UnverifiedNode:
    """A node's control chain without round verification (ADR 0029), in process, with the
    :meth:`mipflow.central.client.NodeClient.step` signature: for the tests of the controls behind
    verification (k-means partition memory, state checks), reached with states of the test's own
    making as if verification were broken.  Refusals raise ``NodeRefused`` as the client does;
    a new instance on the same home is a restarted node."""

    def __init__(self, root: Path) -> None:
        from mipflow.node.api.context import StepContext
        from mipflow.node.home import NodeHome

        self.home = NodeHome(root)
        self.context = StepContext.open(self.home)
        self.name = self.home.name

    def step(self, algorithm: str, request: Mapping, round_no: int, state, *, researcher=None, project=None,
             analysis_id=None) -> dict:
        import json

        from mipflow.central.client import NodeRefused
        from mipflow.exceptions import DisclosureError, MipflowError
        from mipflow.node.api.step import answer_step

        chain = unverified_chain()
        raw = json.dumps({"request": dict(request), "round": round_no, "state": state, "researcher": researcher,
                          "project": project, "analysis_id": analysis_id}).encode()
        try:
            return answer_step(self.context, "central", algorithm, raw, chain=chain)
        except DisclosureError as exc:
            raise NodeRefused(self.name, str(exc), exc.control, 403) from None
        except MipflowError as exc:
            raise NodeRefused(self.name, str(exc), "request", 400) from None

    def close(self) -> None:
        if hasattr(self.context, "close"):
            self.context.close()


def csv_nodes(base: Path, prefix: str, folder: Path, datasets, model, *, db_urls=None, **settings):
    """One node home per dataset CSV of ``folder`` (a ../shared data model folder, read in place),
    each holding its CSV with patients (``subjectid``) and visits (``visitid``), every analysis
    granted, the secure-aggregation keys pinned by each other, query budgets off and ``settings``
    applied; ``db_urls`` (one per dataset): the nodes' feature stores (default: SQLite in the home).
    Returns ``(roots, raw)``: node name -> home, and the CSVs' rows (text) concatenated."""
    import pandas as pd

    roots, raws = {}, []
    for i, dataset in enumerate(datasets):
        node = f"{prefix}{i}"
        roots[node] = Path(base) / node
        home = standard_home(roots[node], node, db_urls[i] if db_urls else "")
        for key, value in {"query_budget": 0, "query_budget_project": 0, **settings}.items():
            home.set_setting(key, value)
        frame = pd.read_csv(Path(folder) / f"{dataset}.csv", dtype=str)
        load_frame(roots[node], model, frame, pid_column="subjectid", visit_column="visitid")
        raws.append(frame)
        grant_all(roots[node])
    pin_each_other(roots)
    return roots, pd.concat(raws, ignore_index=True)


@contextmanager
def postgresql_databases(count: int, *, icu_locale: str | None = None) -> Iterator[list[str]]:
    """``count`` fresh PostgreSQL databases (URLs), dropped afterwards; as the ``pg_url`` fixture,
    skips when no server is reachable except in CI (``CI=true``), where it fails.  ``icu_locale``:
    the databases collate text by that ICU locale (``"und"``: ``"a" < "B"``), as a hospital's may."""
    import uuid

    import pytest
    import sqlalchemy as sa

    from tests.conftest import PG_ADMIN_URL, _pg_reachable

    if not _pg_reachable():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but no PostgreSQL server at 127.0.0.1:5432")
        pytest.skip("no PostgreSQL server at 127.0.0.1:5432")
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    names = [f"mipflow_test_{uuid.uuid4().hex[:12]}" for _ in range(count)]
    try:
        with admin.connect() as conn:
            for name in names:
                locale = f" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE '{icu_locale}'" if icu_locale else ""
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"{locale}')
        yield [PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name for name in names]
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@contextmanager
def recording_clients(clients) -> Iterator[tuple[list, list]]:
    """Clients on the same nodes as ``clients`` that record what the central site receives: yields
    ``(recording, seen)``, ``seen`` filled with ``(node, round, reply)`` for every step reply."""
    from mipflow.central.client import NodeClient

    seen: list[tuple[str, int, dict]] = []

    class Recording(NodeClient):
        def step(self, algorithm, request, round_no, state, **kwargs):
            reply = super().step(algorithm, request, round_no, state, **kwargs)
            seen.append((self.name, round_no, reply))
            return reply

    recording = [Recording(c.endpoint, retries=0) for c in clients]
    try:
        yield recording, seen
    finally:
        for client in recording:
            client.close()


def assert_only_masked(seen, node_names, datasets) -> None:
    """Every reply in ``seen`` (:func:`recording_clients`) carries ring elements and a layout, no
    statistic: each element decodes (as a fixed-point number) to a magnitude above 1e20, where no
    statistic of the tests' data lies; no two are equal; the layout names no dataset."""
    from mipflow.secagg.codec import SCHEME, decode

    assert seen and {node for node, _, _ in seen} == set(node_names)
    for node, round_no, reply in seen:
        assert set(reply["aggregates"]) == {"secure_aggregation"}, (node, round_no)
        release = reply["aggregates"]["secure_aggregation"]
        assert release["scheme"] == SCHEME and not set(datasets) & set(layout_strings(release["layout"]))
        masked = [int(v, 16) for v in release["masked"]]
        assert masked and all(abs(decode(m)) > 1e20 for m in masked), (node, round_no)
        assert len(set(masked)) == len(masked)


def layout_strings(doc) -> list[str]:
    """Every key and string of a secure-aggregation layout."""
    if isinstance(doc, dict):
        return [*map(str, doc), *(t for v in doc.values() for t in layout_strings(v))]
    if isinstance(doc, list):
        return [t for v in doc for t in layout_strings(v)]
    return [doc] if isinstance(doc, str) else []


def assert_round_zero_is_the_plain_sum(seen_masked, seen_plain, algorithm: str, doc: dict, model) -> None:
    """Round 0 (no state, so the same question in both runs) as the central site saw it masked and in
    the clear: each node's masked vector is far from its own plain release element by element, and
    the unmasked sum of the three is the sum of the plain releases (counts exactly)."""
    from mipflow.protocol.request import AnalysisRequest
    from mipflow.secagg.central_side import unmask_sum
    from mipflow.secagg.codec import additive_form, decode
    from mipflow.secagg.node_side import secure_form

    masked = {node: reply["aggregates"] for node, r, reply in seen_masked if r == 0}
    plain = {node: reply["aggregates"] for node, r, reply in seen_plain if r == 0}
    assert set(masked) == set(plain) and len(masked) >= 3
    request = AnalysisRequest.from_dict(doc)
    vectors = {}
    for node, release in masked.items():
        layout, vector = additive_form(secure_form(algorithm, plain[node], request, model))
        assert layout == release["secure_aggregation"]["layout"]
        elements = [int(v, 16) for v in release["secure_aggregation"]["masked"]]
        assert len(elements) == len(vector) and all(abs(decode(m) - v) > 1e20 for m, v in zip(elements, vector))
        vectors[node] = vector
    total = unmask_sum(list(masked.values()))
    exact_layout, _ = additive_form(plain[next(iter(plain))])
    from mipflow.secagg.codec import from_additive

    expected = from_additive(exact_layout, [sum(column) for column in zip(*vectors.values())])
    assert total == expected


@contextmanager
def pinned_nodes(base: Path, frames: Mapping, model) -> Iterator[tuple[dict, dict]]:
    """One standard node per entry of ``frames`` under ``base`` holding that frame's rows, granted to
    every identity, pinning each other's keys and served: ``(roots, clients)``.  Differencing and the
    query budgets are off: such federations analyse one cohort many times, and those controls have their
    own tests."""
    roots = {}
    for hospital, frame in frames.items():
        roots[hospital] = base / hospital
        home = standard_home(roots[hospital], hospital)
        home.set_setting("differencing_check", 0)
        home.set_setting("query_budget", 0)
        home.set_setting("query_budget_project", 0)
        load_frame(roots[hospital], model, frame)
        grant_all(roots[hospital])
    pin_each_other(roots)
    with served_clients(roots) as served:
        yield roots, served


@contextmanager
def pinned_federation(base: Path, data, model, hospitals) -> Iterator[tuple[dict, dict, dict]]:
    """:func:`pinned_nodes`, one per hospital holding its rows of ``data`` (column ``dataset``):
    ``(roots, clients, frames)``."""
    frames = {hospital: data[data["dataset"] == hospital].reset_index(drop=True) for hospital in hospitals}
    with pinned_nodes(base, frames, model) as (roots, served):
        yield roots, served, frames
