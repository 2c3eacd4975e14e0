"""A node's data version per data model: what a standing analysis follows (docs/adr/0043-standing-analyses.md).

``GET /v1/metadata`` gives, for every data model, a ``data_version``::

    {"version": "3f9c...",            # 16 hex digits, changes whenever the answers may change
     "answers_from": "live",          # or "study": the project's study snapshot answers
     "batches_loaded": 4,             # how many batches loaded rows (live only)
     "latest_batches": ["b91d...", ...]}  # the most recent of them, newest first (live only)

Live data: the version is a keyed digest (HMAC-SHA-256 with a key derived from the node secret)
of the ids of the batches that loaded rows and of the consent registry's withdrawn set as last
applied (a keyed digest of it, recorded at every application whether or not it deleted rows).  The
digest is keyed because its inputs are guessable (batch ids are in the reply): unkeyed, it would
tell the central site more than "changed".

Consent withdrawals move the version when the *registry's* withdrawn set changes, never because
rows were deleted: a node that held the withdrawn patient and one that never did move at the same
application (before, the version followed the datasets registry's rewrite time, which a deletion
moves and a withdrawal of a stranger does not: a membership channel to a central site that knows
when a person withdrew; eleventh outside review, ``tests/privacy/test_redteam_round11.py``).

A project with an approved study at this node (ADR 0028) is answered on the study's snapshot,
not on the live data, so when metadata is asked on behalf of such a project its version is the
snapshot's (it changes when the node admin refreshes or re-approves the study), and no batch is
listed: batches loaded since the snapshot do not change an answer.

What this reveals: that some load happened or the consent registry's withdrawn set changed, and the ids of loaded batches (opaque
hashes of the file, :func:`mipflow.node.ingest.pipeline.batch_id_for`). No row count, no value.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

#: How many of the latest batch ids a version lists.
LATEST_BATCHES = 10


def version_key(node_secret: bytes) -> bytes:
    """The key of data-version digests, derived from the node secret (never the secret itself)."""
    return hmac.new(node_secret, b"mipflow data version v1", hashlib.sha256).digest()


def _digest(key: bytes, parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, text, hashlib.sha256).hexdigest()[:16]


def consent_digest(key: bytes, pseudonyms: list[str]) -> str:
    """A keyed digest of a sorted withdrawn set, as :func:`mipflow.node.ingest.pipeline.apply_withdrawals`
    records it (never the set itself: the store keeps no list of them); :func:`data_version` follows it."""
    mac = hmac.new(hmac.new(key, b"mipflow consent applied v1", hashlib.sha256).digest(), digestmod=hashlib.sha256)
    for pseudonym in pseudonyms:
        mac.update(pseudonym.encode() + b"\n")
    return mac.hexdigest()[:32]


def data_version(store: Any, data_model: str, key: bytes, study: Any = None) -> dict[str, Any]:
    """The ``data_version`` of ``data_model`` as ``/v1/metadata`` gives it.

    Parameters
    ----------
    store : mipflow.node.store.feature_store.FeatureStore
    data_model : str
        ``code:version``.
    key : bytes
        :func:`version_key` of the node secret.
    study : mipflow.node.controls.study.Study, optional
        The approved study of the project asked for, when its data model is this one.
    """
    if study is not None:
        return {"version": _digest(key, ["study", data_model, study.project, study.protocol.name, study.snapshot]),
                "answers_from": "study", "study": study.protocol.name, "snapshot": study.snapshot}
    changes = store.data_changes(data_model, LATEST_BATCHES)
    return {"version": _digest(key, ["live", data_model, changes["loaded"], changes["consent"]]),
            "answers_from": "live", "batches_loaded": len(changes["loaded"]),
            "latest_batches": changes["latest"]}
