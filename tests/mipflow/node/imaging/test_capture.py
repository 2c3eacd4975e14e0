"""The imaging capture stage: the manifest holds keyed path hashes and content hashes, never paths."""
from __future__ import annotations

import hashlib

import sqlalchemy as sa

from mipflow.node.files import landing_path_key
from mipflow.node.imaging.capture import capture_dicom
from mipflow.node.imaging.stages import KIND
from mipflow.node.store.feature_store import open_store
from mipflow.node.store.tables import files_table

from .conftest import build_landing


def test_manifest_holds_keyed_path_hashes_and_content_hashes(home):
    build_landing(home)
    capture_dicom(home)
    store = open_store(home)
    root = home.landing_dir / "dicom"
    with store.engine.connect() as conn:
        rows = {r.sha256: r.path for r in conn.execute(sa.select(files_table))}
    registered: dict[str, object] = {}
    for p in sorted(root.rglob("*")):        # capture's order: the first of equal bytes is registered
        if p.is_file() and not p.name.startswith("."):
            registered.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), p)
    consented = {sha: p for sha, p in registered.items() if sha in rows}
    assert len(consented) >= 6   # the series of consented patients and the quarantined junk
    for sha, path in consented.items():
        assert rows[sha] == landing_path_key(home.key(), root, path, kind=KIND)
        assert rows[sha].startswith("hmac-sha256:") and len(rows[sha]) == 12 + 64
        assert path.name not in rows[sha]
    # another key gives other names: the hash is keyed, not a plain digest of the path
    some = next(iter(consented.values()))
    assert landing_path_key(bytes(32), root, some, kind=KIND) != \
        landing_path_key(home.key(), root, some, kind=KIND)
