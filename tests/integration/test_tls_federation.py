"""TLS between the central site and real node processes (``mipflow node serve`` on loopback, uvicorn).

Node processes serve HTTPS with certificates from a development CA (:func:`tests.nodes.tls_federation`):

* ``node0``, ``node1``: mutual TLS (client certificates from the CA required);
* ``named``: a certificate naming ``localhost`` only (no IP address), no client certificate asked;
* ``expired``: a certificate that expired yesterday (the node serves it and says so in its log);
* ``plain``: plain HTTP (``--insecure-http``, the development setting).

A signed federated analysis runs over mutual TLS and gives the in-process federation's result;
each wrong set-up fails at once (no retry) with a sentence naming the certificate or CA at fault.
"""
from __future__ import annotations

import datetime as dt
import ssl
import time
from pathlib import Path

import pytest

from mipflow.central.client import NodeClient, NodeEndpoint, NodeTlsError
from mipflow.central.rounds import run_analysis
from mipflow.node.api.tls import NODE_CERT, NODE_KEY, TLS_DIR
from mipflow.protocol.signing import issue_client
from mipflow.protocol.tls import issue_certificate, make_ca
from tests.nodes import (PROJECT, RESEARCHER, grant_all, in_process_node, load_frame, running_nodes, standard_home,
                         tls_federation)

pytestmark = pytest.mark.xdist_group("tls")

REQUEST = {"inputdata": {"data_model": "synth:1", "datasets": ["d0", "d1", "d2"], "x": ["x1", "age"],
                         "y": ["y"], "filters": None}, "parameters": {}}
ROWS = {"node0": (71, 150), "node1": (72, 130), "named": (73, 60), "expired": (74, 60), "plain": (75, 60)}


def _home(root: Path, name: str) -> Path:
    from tests.mipflow.algorithms.synthetic import MODEL, make_data

    seed, rows = ROWS[name]
    home = standard_home(root / name, name)
    grant_all(home.root)
    frame = make_data(seed, rows)
    frame.insert(0, "subjectcode", [f"{name}_{k:04d}" for k in range(len(frame))])
    load_frame(home.root, MODEL, frame)
    return home.root


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Every node of the module docstring running; yields name -> {url, home, credential} and the
    central side's files (``ca_cert``, ``client_cert``, ``client_key``) under ``"central"``."""
    root = tmp_path_factory.mktemp("tls")
    homes = {name: _home(root, name) for name in ROWS}
    central = tls_federation(root / "ca", [homes["node0"], homes["node1"]], mutual=True)
    issue_certificate(root / "ca", homes["named"] / TLS_DIR / NODE_CERT, homes["named"] / TLS_DIR / NODE_KEY,
                      common_name="named", usage="server", dns_names=["localhost"])
    now = dt.datetime.now(dt.timezone.utc)
    issue_certificate(root / "ca", homes["expired"] / TLS_DIR / NODE_CERT, homes["expired"] / TLS_DIR / NODE_KEY,
                      common_name="expired", usage="server", dns_names=["localhost"], ip_addresses=["127.0.0.1"],
                      not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1))
    probe = ssl.create_default_context()  # the start-up probe only: it must also reach the expired node
    probe.check_hostname, probe.verify_mode = False, ssl.CERT_NONE
    probe.load_cert_chain(central["client_cert"], central["client_key"])
    https = ["node0", "node1", "named", "expired"]
    with running_nodes([homes[n] for n in https], https=True, verify=probe) as urls, \
            running_nodes([homes["plain"]]) as (plain_url,):
        nodes = {name: {"url": url, "home": homes[name], "credential": issue_client(homes[name], "central")}
                 for name, url in zip(https + ["plain"], [*urls, plain_url])}
        yield {**nodes, "central": central, "root": root}


def client(federation, name: str, *, url: str | None = None, **tls) -> NodeClient:
    node = federation[name]
    cred = node["credential"]
    return NodeClient(NodeEndpoint(name, url or node["url"], cred.client_id, cred.secret.hex(), **tls),
                      retries=2, backoff=3.0)


def call_fails(client: NodeClient, match: str) -> str:
    """The health call fails with a :class:`NodeTlsError` matching ``match``, without retries."""
    started = time.monotonic()
    try:
        with pytest.raises(NodeTlsError, match=match) as caught:
            client.health()
    finally:
        client.close()
    assert time.monotonic() - started < 2.5  # not retried (backoff 3 s): a retry cannot fix a certificate
    assert "Traceback" not in str(caught.value)
    return str(caught.value)


def test_a_signed_analysis_runs_over_mutual_tls_and_matches_the_in_process_federation(federation, tmp_path):
    central = federation["central"]
    clients = [client(federation, name, **central) for name in ("node0", "node1")]
    local = [in_process_node(tmp_path / name, name, seed=ROWS[name][0], rows=ROWS[name][1], patients=name)[0]
             for name in ("node0", "node1")]
    try:
        over_tls = run_analysis("linear_regression", REQUEST, clients, researcher=RESEARCHER, project=PROJECT,
                                secure_aggregation=False)
        in_process = run_analysis("linear_regression", REQUEST, local, researcher=RESEARCHER, project=PROJECT,
                                  secure_aggregation=False)
    finally:
        for c in clients + local:
            c.close()
    assert set(over_tls.contributed) == {"node0", "node1"} and not over_tls.excluded
    assert over_tls.contributed == in_process.contributed
    assert over_tls.result == in_process.result
    log = (federation["node0"]["home"] / "serve.log").read_text()
    assert "serving HTTPS" in log and "mutual TLS: client certificates from" in log


def test_the_node_is_verified_by_name_a_pinned_certificate_works_too(federation):
    named = federation["named"]
    port = named["url"].rsplit(":", 1)[1]
    ca = federation["central"]["ca_cert"]
    by_name = client(federation, "named", url=f"https://localhost:{port}", ca_cert=ca)
    pinned_leaf = client(federation, "named", url=f"https://localhost:{port}",
                         ca_cert=str(named["home"] / TLS_DIR / NODE_CERT))
    try:
        assert by_name.health()["node"] == "named" == pinned_leaf.health()["node"]
    finally:
        by_name.close()
        pinned_leaf.close()
    message = call_fails(client(federation, "named", ca_cert=ca), "does not name the host")
    assert named["url"] in message


def test_a_node_certificate_from_another_ca_is_refused_by_the_client(federation):
    other = make_ca(federation["root"] / "other-ca", common_name="someone else's CA")
    message = call_fails(client(federation, "named", url=federation["named"]["url"].replace("127.0.0.1", "localhost"),
                                ca_cert=str(other.cert)), "is not issued by the pinned CA")
    assert str(other.cert) in message
    call_fails(client(federation, "named", url=federation["named"]["url"].replace("127.0.0.1", "localhost")),
               "is not issued by the system trust store")


def test_an_expired_node_certificate_is_refused_by_the_client(federation):
    message = call_fails(client(federation, "expired", ca_cert=federation["central"]["ca_cert"]), "has expired")
    assert federation["expired"]["url"] in message
    assert "expired on" in (federation["expired"]["home"] / "serve.log").read_text()  # the admin is told too


@pytest.mark.parametrize("with_cert", [pytest.param(False, id="no-client-certificate"),
                                       pytest.param(True, id="client-certificate-of-another-ca")])
def test_a_node_requiring_mutual_tls_refuses_a_client_without_a_valid_certificate(federation, with_cert):
    tls = {"ca_cert": federation["central"]["ca_cert"]}
    if with_cert:
        other = federation["root"] / "rogue-ca"
        if not (other / "ca.key").exists():
            make_ca(other)
        rogue = issue_certificate(other, other / "rogue.crt", other / "rogue.key", common_name="central",
                                  usage="client")
        tls |= {"client_cert": str(rogue.cert), "client_key": str(rogue.key)}
        call_fails(client(federation, "node0", **tls), "refused the client certificate .*rogue.crt.*not issued by")
    else:
        call_fails(client(federation, "node0", **tls), "requires a client certificate .mutual TLS.")


@pytest.mark.parametrize("name", ["named", "node0"])
def test_a_plain_http_client_is_told_the_node_serves_https(federation, name):
    url = federation[name]["url"].replace("https://", "http://")
    call_fails(client(federation, name, url=url), "serves HTTPS, not plain HTTP: use an https:// URL")


def test_an_https_client_is_told_a_node_serves_plain_http(federation):
    plain = federation["plain"]
    assert "serving PLAIN HTTP" in (plain["home"] / "serve.log").read_text()
    call_fails(client(federation, "plain", url=plain["url"].replace("http://", "https://"),
                      ca_cert=federation["central"]["ca_cert"]), "does not answer TLS: the node serves plain HTTP")


def test_a_federation_file_carries_the_tls_files(federation, tmp_path):
    from mipflow.central.federation_file import add_node, load_federation

    fed = tmp_path / "federation.json"
    for name in ("node0", "node1"):
        add_node(fed, name=name, url=federation[name]["url"], credentials_from=federation[name]["home"],
                 **federation["central"])
    endpoints = load_federation(fed)
    assert [(e.ca_cert, e.client_cert, e.client_key) for e in endpoints] == [tuple(federation["central"].values())] * 2
    for endpoint in endpoints:
        c = NodeClient(endpoint, retries=0)
        try:
            assert c.health()["node"] == endpoint.name
        finally:
            c.close()
