"""A real Orthanc PACS for tests: Debian's ``Orthanc`` binary with a generated config on loopback.

:func:`running_orthanc` starts ``Orthanc`` with its own JSON config (HTTP and DICOM ports on
127.0.0.1, storage in a temporary folder, a generated password, a short ``StableAge``), waits until
its REST API answers and stops it at the end.  It never touches the system service.  Outside CI the
tests using it are skipped when the binary is missing; with ``CI=true`` they fail instead.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.path.exists("/usr/sbin/Orthanc") else None)


def require_orthanc() -> str:
    """The Orthanc binary; skip (fail under ``CI=true``) when it is not installed."""
    if ORTHANC is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("Orthanc is not installed (apt-get install orthanc; .ci/run does it)")
        pytest.skip("Orthanc is not installed (apt-get install orthanc)")
    return ORTHANC


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Orthanc:
    """A running Orthanc: its REST URL and the generated user's credentials."""

    url: str
    user: str
    password: str
    dicom_port: int
    aet: str

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/json") -> Any:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        if body is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=30) as resp:
            data = resp.read()
        return json.loads(data) if data[:1] in (b"{", b"[") else data

    def upload(self, dicom: bytes) -> dict[str, Any]:
        """``POST /instances`` of one Part 10 file."""
        return self.request("POST", "/instances", dicom, "application/dicom")

    def wait_stable(self, timeout: float = 30.0) -> None:
        """Until every study is stable (its StableStudy change was emitted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            studies = self.request("GET", "/studies?expand")
            if all(s.get("IsStable") for s in studies):
                return
            time.sleep(0.2)
        raise AssertionError("Orthanc's studies did not become stable")


@contextlib.contextmanager
def running_orthanc(workdir: Path, *, stable_age: int = 1) -> Iterator[Orthanc]:
    """Start Orthanc with a config of its own; yield it; stop it."""
    binary = require_orthanc()
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = _free_port(), _free_port()
    password = secrets.token_urlsafe(18)
    config = {
        "Name": "mipflow-test-pacs",
        "StorageDirectory": str(workdir / "db"),
        "IndexDirectory": str(workdir / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "TESTPACS",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {"mipflow": password},
        "StableAge": stable_age,
        "Plugins": [],
        "HttpServerEnabled": True,
        "DicomServerEnabled": True,
        "SslEnabled": False,
        "ExecuteLuaEnabled": False,
        "HttpsVerifyPeers": False,
    }
    (workdir / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = open(workdir / "orthanc.log", "wb")
    proc = subprocess.Popen([binary, str(workdir / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                            cwd=workdir)
    pacs = Orthanc(url=f"http://127.0.0.1:{http_port}", user="mipflow", password=password,
                   dicom_port=dicom_port, aet="TESTPACS")
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"Orthanc exited with {proc.returncode}: "
                                     + (workdir / "orthanc.log").read_text(errors="replace")[-2000:])
            try:
                pacs.request("GET", "/system")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise AssertionError("Orthanc's REST API did not answer within 30 s") from None
                time.sleep(0.1)
        yield pacs
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
