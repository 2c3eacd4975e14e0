"""Certificates and the central side's TLS context (:mod:`mipflow.protocol.tls`), without a network."""
from __future__ import annotations

import datetime as dt
import ssl
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from mipflow.exceptions import ConfigError
from mipflow.protocol.tls import certificate_info, client_context, explain_tls_failure, issue_certificate, make_ca


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_ca_and_the_certificates_it_issues_with_private_keys_0600(tmp_path):
    ca = make_ca(tmp_path / "ca")
    node = issue_certificate(tmp_path / "ca", tmp_path / "n" / "node.crt", tmp_path / "n" / "node.key",
                             common_name="hospital_a", usage="server", dns_names=["localhost"],
                             ip_addresses=["127.0.0.1"])
    central = issue_certificate(tmp_path / "ca", tmp_path / "c.crt", tmp_path / "c.key", common_name="central",
                                usage="client")
    assert mode(ca.key) == mode(node.key) == mode(central.key) == 0o600
    cert = x509.load_pem_x509_certificate(node.cert.read_bytes())
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH])
    assert certificate_info(node.cert).names == ("localhost", "127.0.0.1")
    client_cert = x509.load_pem_x509_certificate(central.cert.read_bytes())
    assert ExtendedKeyUsageOID.CLIENT_AUTH in client_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    client_cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert.read_bytes()))
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert.read_bytes()))


def test_a_key_file_that_existed_readable_by_others_is_rewritten_0600(tmp_path):
    make_ca(tmp_path)
    key = tmp_path / "n.key"
    key.write_text("old")
    key.chmod(0o644)
    issue_certificate(tmp_path, tmp_path / "n.crt", key, common_name="n", usage="server", dns_names=["localhost"])
    assert mode(key) == 0o600 and key.read_text().startswith("-----BEGIN PRIVATE KEY-----")


def test_a_ca_is_not_replaced_by_accident(tmp_path):
    make_ca(tmp_path)
    with pytest.raises(ConfigError, match="would invalidate every certificate"):
        make_ca(tmp_path)


@pytest.mark.parametrize("kwargs, message", [
    pytest.param({}, "needs at least one DNS name or IP address", id="server-without-names"),
    pytest.param({"ip_addresses": ["localhost"]}, "not an IP address", id="bad-ip"),
])
def test_a_server_certificate_needs_names_for_hostname_verification(tmp_path, kwargs, message):
    make_ca(tmp_path)
    with pytest.raises(ConfigError, match=message):
        issue_certificate(tmp_path, tmp_path / "n.crt", tmp_path / "n.key", common_name="n", usage="server", **kwargs)


def test_certificate_info_tells_expiry(tmp_path):
    make_ca(tmp_path)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    issue_certificate(tmp_path, tmp_path / "n.crt", tmp_path / "n.key", common_name="n", usage="server",
                      dns_names=["localhost"], not_before=now - dt.timedelta(days=3), not_after=now - dt.timedelta(days=1))
    info = certificate_info(tmp_path / "n.crt")
    assert info.expired() and info.not_after == now - dt.timedelta(days=1) and "CN=n" in info.subject


def test_the_client_context_verifies_host_names_against_the_pinned_ca_only(tmp_path):
    ca = make_ca(tmp_path)
    ctx = client_context(ca.cert)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.cert_store_stats()["x509_ca"] == 1  # the pinned CA, not the system's store


@pytest.mark.parametrize("files, message", [
    pytest.param({"ca_cert": "missing.crt"}, "CA file ca_cert=.*missing.crt does not exist", id="missing-ca"),
    pytest.param({"ca_cert": "ca.key"}, "ca.key holds no PEM certificate", id="ca-is-a-key"),
    pytest.param({"client_cert": "c.crt", "client_key": "ca.key"}, "c.crt and key .*ca.key do not load as a pair",
                 id="key-of-another-certificate"),
    pytest.param({"client_key": "c.key"}, "client_key given without client_cert", id="key-without-cert"),
])
def test_unusable_tls_files_are_named(tmp_path, files, message):
    make_ca(tmp_path)
    issue_certificate(tmp_path, tmp_path / "c.crt", tmp_path / "c.key", common_name="central", usage="client")
    with pytest.raises(ConfigError, match=message):
        client_context(**{k: str(tmp_path / v) for k, v in files.items()})


def test_only_tls_failures_are_explained():
    assert explain_tls_failure(ConnectionRefusedError(111, "refused"), node="a", url="https://x:1") is None
    wrapped = RuntimeError("transport")
    wrapped.__cause__ = ssl.SSLCertVerificationError(1, "certificate verify failed")
    wrapped.__cause__.verify_code, wrapped.__cause__.verify_message = 10, "certificate has expired"
    assert "has expired" in explain_tls_failure(wrapped, node="a", url="https://x:1")
