"""TLS between the central site and the nodes: certificates, contexts and clear errors.

A federation's certificates come from one CA (a hospital's PKI, or for development the CA
``mipflow tls ca`` makes): each node serves HTTPS with a server certificate naming its host
(DNS and/or IP subject alternative names), and the central site verifies it against that CA
pinned in its connection (``ca_cert``), with hostname verification on.  With mutual TLS the
node also requires a client certificate issued by the CA it is given (``--tls-client-ca``).

* :func:`make_ca`, :func:`issue_certificate`: a development CA and the certificates it
  issues (ECDSA P-256; keys written mode 0600), with the ``cryptography`` library.
* :func:`client_context`: the central side's :class:`ssl.SSLContext` (pinned CA or
  certificate, optional client certificate).
* :func:`explain_tls_failure`: a transport error as one sentence that names the certificate
  or CA at fault, or ``None`` when it is no TLS failure.

See ``docs/adr/0039-tls.md``.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

from mipflow.exceptions import ConfigError

CA_CERT, CA_KEY = "ca.crt", "ca.key"


@dataclass(frozen=True)
class CertificateFiles:
    """A certificate and its private key on disk (the key mode 0600)."""

    cert: Path
    key: Path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by the owner only (mode 0600, also when it existed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mipflow"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(directory: str | Path, *, common_name: str = "mipflow development CA", days: int = 825,
            overwrite: bool = False) -> CertificateFiles:
    """Make a CA (``DIR/ca.crt``, ``DIR/ca.key`` mode 0600) that issues a federation's certificates.

    Raises
    ------
    ConfigError
        If ``DIR/ca.key`` exists and ``overwrite`` is false (certificates it issued would stop
        verifying against a new CA).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    directory = Path(directory)
    files = CertificateFiles(directory / CA_CERT, directory / CA_KEY)
    if files.key.exists() and not overwrite:
        raise ConfigError(f"{files.key} exists: a new CA would invalidate every certificate the old one issued "
                          "(remove it first to start over)")
    key = _new_key()
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    write_private(files.key, _key_pem(key))
    directory.mkdir(parents=True, exist_ok=True)
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


def issue_certificate(ca_dir: str | Path, cert_path: str | Path, key_path: str | Path, *, common_name: str,
                      usage: Literal["server", "client"], dns_names: Iterable[str] = (),
                      ip_addresses: Iterable[str] = (), days: int = 397,
                      not_before: dt.datetime | None = None,
                      not_after: dt.datetime | None = None) -> CertificateFiles:
    """Issue a server (node) or client (central) certificate signed by the CA in ``ca_dir``.

    Parameters
    ----------
    usage : {"server", "client"}
        Extended key usage: a node's certificate is a server's, the central site's a client's.
    dns_names, ip_addresses : iterable of str
        Subject alternative names the client's hostname verification checks (a server's needs one).
    days : int
        Validity from ``not_before`` (default now) unless ``not_after`` is given.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_dir = Path(ca_dir)
    try:
        ca_cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
        ca_key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise ConfigError(f"no CA in {ca_dir} ({exc.filename} missing): make one with mipflow tls ca {ca_dir}") from None
    sans = [x509.DNSName(name) for name in dns_names]
    try:
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    except ValueError as exc:
        raise ConfigError(f"not an IP address: {exc}") from None
    if usage == "server" and not sans:
        raise ConfigError("a node's certificate needs at least one DNS name or IP address (hostname verification)")
    key = _new_key()
    start = not_before or dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    end = not_after or start + dt.timedelta(days=days)
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if usage == "server"
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    files = CertificateFiles(Path(cert_path), Path(key_path))
    write_private(files.key, _key_pem(key))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


@dataclass(frozen=True)
class CertificateInfo:
    """What an admin needs to know about a certificate file (no key material)."""

    subject: str
    not_after: dt.datetime
    names: tuple[str, ...]

    def expired(self, now: dt.datetime | None = None) -> bool:
        return (now or dt.datetime.now(dt.timezone.utc)) >= self.not_after


def certificate_info(path: str | Path) -> CertificateInfo:
    """Subject, expiry and subject alternative names of a PEM certificate (the first in the file)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"certificate file {path} does not exist") from None
    except ValueError:
        raise ConfigError(f"{path} is not a PEM certificate") from None
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(str(v) for v in sans.get_values_for_type(x509.DNSName)) + tuple(
            str(v) for v in sans.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        names = ()
    return CertificateInfo(cert.subject.rfc4514_string(), cert.not_valid_after_utc, names)


def client_context(ca_cert: str | Path | None = None, client_cert: str | Path | None = None,
                   client_key: str | Path | None = None) -> ssl.SSLContext:
    """The central site's TLS context for a node: hostname verification on, TLS 1.2 or later.

    Parameters
    ----------
    ca_cert : path, optional
        The pinned trust anchor: the federation's CA certificate, or the node's own certificate
        (partial chains are accepted, so a pinned leaf verifies).  Default: the system's trust store.
    client_cert, client_key : path, optional
        The central site's certificate for nodes that require mutual TLS (``client_key`` defaults
        to the key inside ``client_cert``).

    Raises
    ------
    ConfigError
        If a file is missing or unusable (the message names it).
    """
    if ca_cert:  # the pinned anchor alone: the system's store is not loaded beside it
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_cert))
        except FileNotFoundError:
            raise ConfigError(f"CA file ca_cert={ca_cert} does not exist") from None
        except ssl.SSLError:
            raise ConfigError(f"CA file ca_cert={ca_cert} holds no PEM certificate") from None
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    else:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_key and not client_cert:
        raise ConfigError("client_key given without client_cert")
    if client_cert:
        try:
            ctx.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
        except FileNotFoundError as exc:
            raise ConfigError(f"client certificate or key file {exc.filename or client_cert} does not exist") from None
        except ssl.SSLError as exc:
            raise ConfigError(f"client certificate {client_cert} and key {client_key} do not load as a pair "
                              f"({exc.reason or 'invalid PEM'})") from None
    return ctx


#: OpenSSL's verify codes (``X509_V_ERR_*``) a client sees for a node's certificate.
_EXPIRED, _NOT_YET_VALID = 10, 9
_UNTRUSTED = {2, 18, 19, 20, 21, 27}
_HOSTNAME_MISMATCH = {62, 64}


def explain_tls_failure(exc: BaseException, *, node: str, url: str, ca_cert: str | Path | None = None,
                        client_cert: str | Path | None = None) -> str | None:
    """One sentence for a TLS failure on the way to a node, naming the certificate or CA at fault.

    ``exc`` is the transport error (its causes are searched for the :class:`ssl.SSLError`);
    ``None`` if it is no TLS failure.  The sentence holds no data, only file names and the URL.
    """
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen and not isinstance(error, ssl.SSLError):
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    if not isinstance(error, ssl.SSLError):
        return None
    anchor = f"the pinned CA {ca_cert}" if ca_cert else "the system trust store (no ca_cert pinned)"
    if isinstance(error, ssl.SSLCertVerificationError):
        code = error.verify_code
        if code == _EXPIRED:
            return (f"{node}: the node's TLS certificate at {url} has expired; the node's admin must issue a new "
                    "one (mipflow tls node)")
        if code == _NOT_YET_VALID:
            return f"{node}: the node's TLS certificate at {url} is not valid yet (check both clocks)"
        if code in _UNTRUSTED:
            return (f"{node}: the node's TLS certificate at {url} is not issued by {anchor} "
                    f"({error.verify_message}); pin the federation's CA in the connection's ca_cert")
        if code in _HOSTNAME_MISMATCH:
            return (f"{node}: the node's TLS certificate does not name the host of {url} "
                    f"({error.verify_message}); use a URL with a name or IP the certificate lists")
        return f"{node}: the node's TLS certificate at {url} was refused ({error.verify_message})"
    reason = (error.reason or "").upper()
    if "CERTIFICATE_REQUIRED" in reason or ("HANDSHAKE_FAILURE" in reason and not client_cert):
        return (f"{node}: the node at {url} requires a client certificate (mutual TLS) and none was sent; "
                "set client_cert and client_key in the connection")
    if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason or "CERTIFICATE_UNKNOWN" in reason:
        return (f"{node}: the node at {url} refused the client certificate {client_cert}: it is not issued by a "
                "CA the node trusts (its --tls-client-ca)")
    if "CERTIFICATE_EXPIRED" in reason:
        return f"{node}: the node at {url} refused the client certificate {client_cert}: it has expired"
    if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER" in reason or "PACKET_LENGTH" in reason:
        return (f"{node}: {url} does not answer TLS: the node serves plain HTTP (--insecure-http, development "
                "only) or something else listens there")
    return f"{node}: TLS handshake with {url} failed ({error.reason or type(error).__name__})"


def mutual_tls_refusal(node: str, url: str, client_cert: str | Path | None) -> str:
    """The sentence for a node that closed the connection after the handshake (see :func:`closes_after_handshake`)."""
    if not client_cert:
        return (f"{node}: the node at {url} requires a client certificate (mutual TLS) and none was sent; "
                "set client_cert and client_key in the connection")
    return (f"{node}: the node at {url} refused the client certificate {client_cert}: it is not issued by a CA the "
            "node trusts (its --tls-client-ca), or it has expired")


def closes_after_handshake(host: str, port: int, context: ssl.SSLContext, timeout: float = 2.0) -> bool:
    """Whether a node completes the TLS handshake, then closes on a ``GET /health`` without a byte.

    That is how a TLS 1.3 node behind asyncio refuses a client certificate (missing, or from a CA
    it does not trust): the server checks it after the client's handshake ended and closes the
    connection without sending the alert.  A node that answers anything is no such refusal.
    """
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with context.wrap_socket(sock, server_hostname=host) as tls:
                tls.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                return tls.recv(1) == b""
    except ssl.SSLCertVerificationError:
        return False
    except ssl.SSLError as exc:
        reason = (exc.reason or "").upper()
        return any(word in reason for word in ("CERTIFICATE_REQUIRED", "UNKNOWN_CA", "BAD_CERTIFICATE",
                                               "CERTIFICATE_EXPIRED", "UNEXPECTED_EOF"))
    except OSError:
        return False


def speaks_tls(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether ``host:port`` completes a TLS handshake (certificate not checked): used only to explain
    why a plain-HTTP request to a node was cut off."""
    import socket

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with ctx.wrap_socket(sock, server_hostname=host):
                return True
    except ssl.SSLError as exc:  # a node requiring a client certificate still spoke TLS
        return "CERTIFICATE_REQUIRED" in (exc.reason or "").upper()
    except OSError:
        return False
