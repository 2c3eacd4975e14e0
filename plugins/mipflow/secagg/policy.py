"""Which analyses secure aggregation can run, from what each algorithm declares.

An algorithm states its support itself (``Algorithm.secure_aggregation``,
``secure_aggregation_refusal``: :mod:`mipflow.algorithms.contract`):
``"automatic"`` algorithms are masked by default from :data:`AUTO_MIN_NODES`
nodes, ``"explicit_only"`` ones (descriptive statistics, whose secure result is
narrower than the plain one) only when asked for, ``"unsupported"`` ones never.
"""
from __future__ import annotations

from typing import Any

from mipflow.algorithms.contract import Algorithm
from mipflow.exceptions import RequestError
from mipflow.protocol.request import AnalysisRequest

#: Automatic mode switches secure aggregation on from this many nodes.
AUTO_MIN_NODES = 3


def algorithm_of(name: str) -> Algorithm | None:
    """The catalogue's algorithm called ``name`` (None: no such algorithm)."""
    from mipflow.algorithms import ALGORITHMS

    return ALGORITHMS.get(name)


def supported() -> list[str]:
    """The algorithms whose aggregates can be masked (automatic or explicit only), sorted."""
    from mipflow.algorithms import ALGORITHMS

    return sorted(name for name, algorithm in ALGORITHMS.items() if algorithm.secure_aggregation != "unsupported")


def as_request(request: Any) -> AnalysisRequest:
    """``request`` as an :class:`AnalysisRequest` (parsed from its JSON form when needed)."""
    return request if isinstance(request, AnalysisRequest) else AnalysisRequest.from_dict(request)


def unsupported_message(algorithm: str) -> str:
    """The refusal for an algorithm whose aggregates are not all sums, naming those that are."""
    return (f"secure aggregation is not available for {algorithm}: its aggregates are not all sums. "
            f"Algorithms that support it: {', '.join(supported())}")


def refusal(algorithm: str, request: Any = None) -> str | None:
    """Why secure aggregation cannot run ``algorithm`` on ``request`` (``None``: it can).

    ``request`` (an :class:`~mipflow.protocol.request.AnalysisRequest` or its
    JSON form) is checked by the algorithm's ``secure_aggregation_refusal``;
    without a request only the algorithm is checked.
    """
    declared = algorithm_of(algorithm)
    if declared is None or declared.secure_aggregation == "unsupported":
        return unsupported_message(algorithm)
    if request is None:
        return None
    reason = declared.secure_aggregation_refusal(as_request(request))
    return None if reason is None else f"secure aggregation is not available for this {algorithm} request: {reason}"


def masked_round(algorithm: str | Algorithm, round_no: int, state: Any) -> bool:
    """Whether round ``round_no`` of a secure analysis, sent ``state``, is masked: the algorithm's
    ``masked_round`` (default every round; Cox regression masks its score rounds only, ADR 0048).

    The central site asks it to sum a round, each node to mask its release and to recompute the
    previous round's state (:mod:`mipflow.secagg.transcript`), so all decide alike: on the round and
    the state (which every node verifies), never on data.
    """
    declared = algorithm_of(algorithm) if isinstance(algorithm, str) else algorithm
    if declared is None:
        return True
    return bool(declared.masked_round(round_no, state))


def automatic_refusal(algorithm: str, request: Any = None) -> str | None:
    """Why automatic mode leaves secure aggregation off for this analysis (``None``: it switches on,
    given enough nodes): :func:`refusal`, or the algorithm is masked only when asked for
    (``secure_aggregation = "explicit_only"``)."""
    declared = algorithm_of(algorithm)
    if declared is None or declared.secure_aggregation == "unsupported":
        return f"{algorithm} does not support secure aggregation"
    reason = refusal(algorithm, request)
    if reason is not None:
        return reason
    if declared.secure_aggregation == "explicit_only":
        return (f"automatic: {algorithm} under secure aggregation releases only the rows pooled over all "
                "datasets (each dataset's own rows are one node's aggregates); request it explicitly")
    return None


def resolve(requested: bool | None, algorithm: str, request: Any = None) -> str:
    """The mode of an analysis, checked before any node is called.

    Returns ``"on"`` / ``"off"`` for an explicit choice and ``"auto"`` for
    ``None`` (on when at least :data:`AUTO_MIN_NODES` nodes take part, the
    algorithm supports it for this ``request`` and is not explicit-only).

    Raises
    ------
    RequestError
        If secure aggregation is requested for an algorithm (or a request of
        it, see :func:`refusal`) that does not support it.
    """
    if requested is None:
        return "auto"
    if not isinstance(requested, bool):
        raise RequestError("secure_aggregation must be true, false or null (automatic)")
    if requested:
        reason = refusal(algorithm, request)
        if reason is not None:
            raise RequestError(reason)
    return "on" if requested else "off"
