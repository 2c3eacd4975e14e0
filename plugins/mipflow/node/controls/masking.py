"""A node that answers only masked steps: the ``secure_aggregation_required`` control.

Every control of the node applies to a masked release exactly as to a plain
one, and a masked release is recorded in the differencing ledger like a plain
one (``docs/adr/0027-masked-releases-and-durable-partitions.md``): masking is
protection against an honest-but-curious central site and defence in depth,
never a reason to relax a control.  A node admin may want more: that the
central site never sees this node's aggregates one by one, not even the ones
its controls would let out in the clear.  With ``secure_aggregation_required``
set, the node answers a step only when it is to be masked among at least two
participants (itself and at least one other node), and only in a round the
algorithm masks (Cox regression releases its round 0 and "sums" rounds in the
clear, ADR 0048); anything else is refused (control ``secure_aggregation``)
before any row is read, so the decision depends on the request, its round and
state, and the setting only.  The same ``analysis_id`` asked
again in the clear is refused like any plain step.

Whether the other participants are pinned peers, and whether the node is among
them under its own key, is checked when the release is masked
(:func:`mipflow.secagg.node_side.mask_release`).
"""
from __future__ import annotations

from typing import Any, Mapping

from mipflow.exceptions import DisclosureError
from mipflow.secagg.policy import masked_round, refusal as secagg_refusal


def other_participants(spec: Any, node: str) -> set[str]:
    """The node names other than ``node`` that a ``secure_aggregation`` block lists (empty if malformed).

    Only counted here; the list's form, the keys and the trust in each peer are
    checked when the release is masked.
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get("participants"), list):
        return set()
    names = {item.get("node") for item in spec["participants"] if isinstance(item, Mapping)}
    return {name for name in names if isinstance(name, str) and name and name != node}


def _refusal(node: str, what: str) -> DisclosureError:
    return DisclosureError(
        f"node {node} answers only under secure aggregation with at least one other node "
        f"(secure_aggregation_required): {what}", control="secure_aggregation")


def require_secure_aggregation(request: Any, context: Any, work: Any) -> None:
    """Refuse a plain step, or a masked step without another participant, at a node that requires masking.

    A control of the node's step chain (:data:`mipflow.node.api.step.CHAIN`): ``request`` is the
    parsed ``StepRequest``, ``context`` the ``StepContext`` (its ``name``), ``work`` the
    ``StepWork`` (its ``settings``); typed loosely because controls sit below the API layer.

    Raises
    ------
    DisclosureError
        Control ``secure_aggregation``, naming what the central site must change.
    """
    if not work.settings.secure_aggregation_required:
        return
    node = context.name
    if request.secure_aggregation is None:
        raise _refusal(node, "ask the central site to run the analysis with secure aggregation on "
                             "(secure_aggregation true) among at least two nodes")
    reason = secagg_refusal(request.algorithm, request.analysis)
    if reason is not None:
        raise _refusal(node, f"{reason}, so this node cannot answer it")
    if not other_participants(request.secure_aggregation, node):
        raise _refusal(node, "the step lists no other participant; ask the central site to run it with "
                             "more nodes")
    if not masked_round(getattr(work, "algo", None) or request.algorithm, request.round, request.state):
        raise _refusal(node, f"round {request.round} of {request.algorithm} is released in the clear even under "
                             "secure aggregation (ADR 0048), so this node cannot answer it")
