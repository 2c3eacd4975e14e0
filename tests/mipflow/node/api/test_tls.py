"""How ``mipflow node serve`` picks HTTPS, mutual TLS or plain HTTP (:mod:`mipflow.node.api.tls`),
and what it refuses before it listens."""
from __future__ import annotations

import re
import ssl

import pytest

from mipflow.cli import main
from mipflow.exceptions import ConfigError
from mipflow.node.api.tls import CLIENT_CA, NODE_CERT, NODE_KEY, TLS_DIR, ServerTls, resolve_server_tls
from mipflow.node.home import NodeHome
from mipflow.protocol.tls import issue_certificate


@pytest.fixture
def home(tmp_path):
    return NodeHome.init(tmp_path / "home", "hospital_a").root


@pytest.fixture
def certified(home, tmp_path):
    """The home with a node certificate from a CA in ``tmp_path/ca`` (``mipflow tls ca`` / ``tls node``)."""
    assert main(["tls", "ca", str(tmp_path / "ca")]) == 0
    assert main(["tls", "node", str(tmp_path / "ca"), str(home)]) == 0
    return home


def test_the_home_certificate_is_served_and_client_ca_turns_on_mutual_tls(certified, tmp_path):
    folder = certified / TLS_DIR
    assert resolve_server_tls(certified) == ServerTls(folder / NODE_CERT, folder / NODE_KEY, None)
    assert main(["tls", "node", str(tmp_path / "ca"), str(certified), "--require-client-cert"]) == 0
    tls = resolve_server_tls(certified)
    assert tls.client_ca == folder / CLIENT_CA
    assert tls.uvicorn_options()["ssl_cert_reqs"] == ssl.CERT_REQUIRED


def test_options_win_over_the_home(certified, tmp_path):
    other = issue_certificate(tmp_path / "ca", tmp_path / "o.crt", tmp_path / "o.key", common_name="o",
                              usage="server", dns_names=["node.example"])
    tls = resolve_server_tls(certified, cert=other.cert, key=other.key, client_ca=tmp_path / "ca" / "ca.crt")
    assert (tls.cert, tls.key, tls.client_ca) == (other.cert, other.key, tmp_path / "ca" / "ca.crt")


def test_plain_http_only_when_asked(certified):
    assert resolve_server_tls(certified, insecure_http=True) is None
    with pytest.raises(ConfigError, match="--insecure-http cannot be combined"):
        resolve_server_tls(certified, cert=certified / TLS_DIR / NODE_CERT, key=certified / TLS_DIR / NODE_KEY,
                           insecure_http=True)


def test_serve_refuses_to_start_without_a_certificate_and_says_how(home, capsys):
    assert main(["node", "serve", str(home)]) == 2
    err = capsys.readouterr().err
    assert "no TLS certificate" in err and "mipflow tls node" in err and "--insecure-http" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("damage, message", [
    pytest.param(lambda f: (f / NODE_KEY).chmod(0o644), "may be read by others .mode 0644.; chmod 600",
                 id="key-readable-by-others"),
    pytest.param(lambda f: (f / NODE_KEY).write_bytes((f.parent.parent / "ca" / "ca.key").read_bytes()),
                 "do not load as a pair", id="key-of-another-certificate"),
    pytest.param(lambda f: (f / CLIENT_CA).write_text("not a certificate"), "client CA file .* holds no PEM",
                 id="client-ca-not-pem"),
    pytest.param(lambda f: (f / NODE_KEY).unlink(), "TLS key file .*node.key does not exist", id="key-missing"),
])
def test_serve_refuses_unusable_tls_files_with_the_file_named(certified, capsys, damage, message):
    damage(certified / TLS_DIR)
    assert main(["node", "serve", str(certified)]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_cert_without_key_is_a_usage_error(certified, capsys):
    assert main(["node", "serve", str(certified), "--tls-cert", str(certified / TLS_DIR / NODE_CERT)]) == 2
    assert "give --tls-cert and --tls-key together" in capsys.readouterr().err
