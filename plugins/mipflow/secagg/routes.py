"""The node API's secure-aggregation route: ``GET /v1/secagg/key``.

Kept in one module so that it can move to :mod:`mipflow.node.api` as it is.
"""
from __future__ import annotations

from typing import Any

from mipflow.secagg.codec import SCHEME
from mipflow.secagg.crypto import fingerprint, load_keypair


def add_routes(app: Any, home: Any, authenticate: Any, audit: Any) -> None:
    """Add ``GET /v1/secagg/key`` (the node's public key, signed requests only) to the node API."""
    from fastapi import Request

    pair = load_keypair(home.root)  # created at start, so its first use cannot race

    async def secagg_key(request: Request) -> dict[str, Any]:
        client = await authenticate(request, b"", "secagg_key")
        audit.append(client=client, endpoint="/v1/secagg/key", what="secagg_key", decision="allowed")
        return {"node": home.name, "scheme": SCHEME, "public_key": pair.public_hex,
                "fingerprint": fingerprint(pair.public_bytes)}

    # this module postpones annotations; FastAPI needs the class itself to inject the request
    secagg_key.__annotations__["request"] = Request
    app.get("/v1/secagg/key", responses={401: {"description": "not authenticated"}})(secagg_key)
