"""Dataset row counts in the node's metadata: approximate, keyed by the count and the consent epoch.

``GET /v1/metadata`` tells a researcher which datasets a node holds and about how many rows each
has.  An exact count is a free, unbudgeted release: differenced across a load or a consent
deletion it tells whether one patient arrived or left, and in a standard-mode project it is the
"everyone" half of a differencing pair that no ledger records (the second outside review of
ADR 0038's default).  So the node publishes

    round_to(count + noise, COUNT_STEP)   (``None`` when that is below ``min_row_count``)

where the noise is a two-sided geometric draw of scale :data:`COUNT_SCALE` whose uniforms are an
HMAC under a key derived from the node secret, over the data model, the dataset, **the exact
count and the node's consent epoch** (the digest of the consent registry last applied, ADR 0061).
The same count always publishes the same value (asking again, or after a reload that changed
nothing, averages nothing out); a different count gets an independent draw, so a change of one row
moves the published value by a fresh draw of about ±5 rounded to tens, not by one.  What a long
series of counts still tells is their trend, which is what a researcher needs.

The epoch is in the draw because applying a consent registry is an event at every node, whoever it
concerned (ADR 0059 section 2): keyed by the count alone, a node that held none of the withdrawn
patients kept its value while a holder's count got a fresh draw, so "which node's count moved" told
where the patients were treated (the fourteenth outside review, hole 3).  Now every node applying the
registry redraws; the holder's and a non-holder's chance to move differ only as the noise's law at
``n`` and ``n - k`` does (a likelihood ratio of at most ``exp(k / COUNT_SCALE)`` before rounding).
Each application is one more draw of an unchanged count; applications are the admins' events,
rare and not the requester's to cause.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math

#: the published count is rounded to a multiple of this
COUNT_STEP = 10
#: the scale of the two-sided geometric noise added before rounding (its sd is about 4.2)
COUNT_SCALE = 3.0
#: the HMAC label of the key (changing it redraws every published count)
KEY_LABEL = b"mipflow metadata counts v1"


def count_key(node_secret: bytes) -> bytes:
    """The key of the published counts, derived from the node secret under its own label."""
    return hmac.new(node_secret, KEY_LABEL, hashlib.sha256).digest()


def _uniforms(key: bytes, data_model: str, dataset: str, count: int, epoch: str) -> tuple[float, float]:
    message = [data_model, dataset, int(count)] + ([str(epoch)] if epoch else [])  # before any registry: as v1
    digest = hmac.new(key, json.dumps(message).encode("utf-8"), hashlib.sha256).digest()
    # two uniforms in (0, 1) from 2 x 53 bits
    first = (int.from_bytes(digest[:8], "big") >> 11) + 0.5
    second = (int.from_bytes(digest[8:16], "big") >> 11) + 0.5
    return first / 2.0 ** 53, second / 2.0 ** 53


def noisy_count(count: int, *, key: bytes, data_model: str, dataset: str, epoch: str = "") -> int:
    """``count`` plus keyed two-sided geometric noise (the difference of two geometric draws); ``epoch`` is the
    node's consent epoch (``FeatureStore.consent_applied``, "" before any registry was applied)."""
    u, v = _uniforms(key, data_model, dataset, count, epoch)
    p = math.exp(-1.0 / COUNT_SCALE)
    draw = math.floor(math.log(u) / math.log(p)) - math.floor(math.log(v) / math.log(p))
    return int(count) + int(draw)


def published_count(count: int, *, key: bytes, data_model: str, dataset: str, min_row_count: int,
                    epoch: str = "") -> int | None:
    """What the metadata says of a dataset's ``count`` rows under consent epoch ``epoch``: the keyed noisy
    count rounded to :data:`COUNT_STEP`, or ``None`` when that is below ``min_row_count`` (decided on the
    noisy value)."""
    noisy = noisy_count(count, key=key, data_model=data_model, dataset=dataset, epoch=epoch)
    rounded = COUNT_STEP * int(math.floor(noisy / COUNT_STEP + 0.5))
    return rounded if rounded >= max(int(min_row_count), 1) else None
