"""How a node serves its API: HTTPS (the default), mutual TLS, or plain HTTP for development only.

The files come from ``mipflow node serve`` options, else from the node home::

    HOME/tls/node.crt       the node's server certificate (with its chain)
    HOME/tls/node.key       its private key, mode 0600 (the node refuses a key others may read)
    HOME/tls/client-ca.crt  optional: the CA of the central site's client certificates; present,
                            the node requires one (mutual TLS)

Without a certificate the node refuses to start unless plain HTTP is asked for explicitly
(``--insecure-http``), and then says so in its log.  See ``docs/adr/0039-tls.md``.
"""
from __future__ import annotations

import datetime as dt
import logging
import ssl
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from mipflow.exceptions import ConfigError

log = logging.getLogger(__name__)

TLS_DIR = "tls"
NODE_CERT, NODE_KEY, CLIENT_CA = "node.crt", "node.key", "client-ca.crt"
#: A certificate closer to its end than this is announced at every start.
RENEW_WARNING = dt.timedelta(days=30)


@dataclass(frozen=True)
class ServerTls:
    """The files a node serves HTTPS with; ``client_ca`` set means mutual TLS (CERT_REQUIRED)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def uvicorn_options(self) -> dict:
        options = {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key)}
        if self.client_ca is not None:
            options |= {"ssl_ca_certs": str(self.client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        return options


def resolve_server_tls(home_root: str | Path, *, cert: str | Path | None = None, key: str | Path | None = None,
                       client_ca: str | Path | None = None, insecure_http: bool = False) -> ServerTls | None:
    """The TLS files a node serves with, checked; ``None`` for plain HTTP (only with ``insecure_http``).

    Options win over the home's ``tls/`` files.  Raises :class:`ConfigError` (with what to do) for
    a missing certificate without ``insecure_http``, a certificate given together with
    ``insecure_http``, a key others may read, or files that do not load as a pair.
    """
    folder = Path(home_root) / TLS_DIR
    if (cert is None) != (key is None):
        raise ConfigError("give --tls-cert and --tls-key together")
    if insecure_http:
        if cert is not None or client_ca is not None:
            raise ConfigError("--insecure-http cannot be combined with --tls-cert/--tls-key/--tls-client-ca")
        return None
    if cert is None and (folder / NODE_CERT).is_file():
        cert, key = folder / NODE_CERT, folder / NODE_KEY
    if client_ca is None and (folder / CLIENT_CA).is_file():
        client_ca = folder / CLIENT_CA
    if cert is None:
        raise ConfigError(f"no TLS certificate: put the node's certificate and key in {folder / NODE_CERT} and "
                          f"{folder / NODE_KEY} (mipflow tls node CA_DIR {home_root}), or give --tls-cert and "
                          "--tls-key; plain HTTP only for development, with --insecure-http")
    tls = ServerTls(Path(cert), Path(key), Path(client_ca) if client_ca is not None else None)
    _check(tls)
    return tls


def _check(tls: ServerTls) -> None:
    from mipflow.protocol.tls import certificate_info

    for path, what in ((tls.cert, "certificate"), (tls.key, "key"), (tls.client_ca, "client CA")):
        if path is not None and not path.is_file():
            raise ConfigError(f"TLS {what} file {path} does not exist")
    mode = stat.S_IMODE(tls.key.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"TLS key {tls.key} may be read by others (mode {mode:04o}); chmod 600 {tls.key}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
    except ssl.SSLError as exc:
        raise ConfigError(f"TLS certificate {tls.cert} and key {tls.key} do not load as a pair "
                          f"({exc.reason or 'invalid PEM'})") from None
    if tls.client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(tls.client_ca))
        except ssl.SSLError:
            raise ConfigError(f"client CA file {tls.client_ca} holds no PEM certificate") from None
    info = certificate_info(tls.cert)
    now = dt.datetime.now(dt.timezone.utc)
    if info.expired(now):  # served all the same: clients then say exactly what is wrong (ADR 0039)
        log.error("TLS certificate %s expired on %s: clients will refuse this node until it has a new one "
                  "(mipflow tls node)", tls.cert, info.not_after.date())
    elif info.not_after - now < RENEW_WARNING:
        log.warning("TLS certificate %s expires on %s: issue a new one", tls.cert, info.not_after.date())


def announce(tls: ServerTls | None, host: str, port: int) -> None:
    """The start-up log line: how the node serves (plain HTTP stands out)."""
    if tls is None:
        log.warning("serving PLAIN HTTP on %s:%d (--insecure-http): aggregates cross the network unencrypted "
                    "(requests stay signed); for development only", host, port)
        return
    from mipflow.protocol.tls import certificate_info

    info = certificate_info(tls.cert)
    mutual = f"; mutual TLS: client certificates from {tls.client_ca} required" if tls.client_ca else ""
    print(f"mipflow node: serving HTTPS on {host}:{port} with {tls.cert} ({info.subject}; names "
          f"{', '.join(info.names) or 'none'}; until {info.not_after.date()}){mutual}", file=sys.stderr, flush=True)
