"""The stages of a step's chain that bind it to its analysis's transcript (ADR 0029) and to the other
participants: verifying the round, opening what the others sealed to this node (ADR 0046), sealing and
masking what it releases (ADR 0014, 0046, 0052, 0055) and tagging the reply.  Split from
:mod:`mipflow.node.api.step`, whose ``CHAIN`` names them in order."""
from __future__ import annotations

from typing import TYPE_CHECKING

from mipflow.exceptions import RequestError

if TYPE_CHECKING:
    from mipflow.node.api.context import StepContext
    from mipflow.node.api.step import StepRequest, StepWork


def verify_round(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """Verifiable rounds (ADR 0029): round 0 takes no state; round k > 0 is answered only for the
    state the algorithm's global step gives on the tagged contributions of round k - 1 of the same
    participants (all pinned), and the local step computes on the node's own recomputation."""
    from mipflow.secagg import transcript as rounds

    if request.transcript is None:
        if request.round == 0 and request.state is None:
            return  # a single-round call: its reply carries no tags, so no later round can follow it
        raise rounds.refuse(f"round {request.round} needs a transcript: the tagged contributions of the "
                            "previous round, from which this node recomputes the state")
    work.transcript, work.chain, work.state = rounds.verify_step(
        request.transcript, root=context.home.root, own_name=context.name, analysis_id=request.analysis_id,
        algorithm=work.algo, algorithm_name=request.algorithm, round_no=request.round,
        request=request.analysis, model=work.model, state=request.state,
        secure_aggregation=request.secure_aggregation)
    work.record["chain"] = work.chain


def open_sealed(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """Sealed sums (ADR 0046): after the round is verified, the node opens what every participant
    sealed to it in the previous round, pools it (the algorithm's ``pool_sealed``) and hands the sum
    to its local step in the state it computes on (:data:`~mipflow.algorithms.sealed.POOLED`), never
    from the request (control ``round_verification`` for a ciphertext missing, extra or unopenable)."""
    from mipflow.algorithms.sealed import POOLED, SEALED
    from mipflow.exceptions import FederationError
    from mipflow.secagg import sealing
    from mipflow.secagg import transcript as rounds
    from mipflow.secagg.crypto import cached_keypair

    if isinstance(work.state, dict) and POOLED in work.state:  # (a global step never sets it)
        raise rounds.refuse(f"the state may not carry {POOLED!r}: the node pools the sealed sums itself")
    if work.transcript is None:
        return
    parts = sealing.open_previous(work.transcript, own=cached_keypair(context.home.root), own_name=context.name,
                                  analysis_id=str(request.analysis_id), algorithm=request.algorithm,
                                  round_no=request.round, sealed_key=SEALED)
    if parts is None:
        return
    try:
        pooled = work.algo.pool_sealed(parts)
    except (RequestError, FederationError) as exc:
        raise rounds.refuse(f"the sealed sums of round {request.round - 1} do not pool ({exc})") from None
    work.state = {**(work.state or {}), POOLED: pooled}


def seal(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """Sealed sums (ADR 0046): what the local step released under :data:`~mipflow.algorithms.sealed.SEALED`,
    seen in the clear by the controls above, replaced by one ciphertext per participant (the node
    itself included), which the tags below cover.  Without a transcript there is no one to seal
    to: refused (control ``round_verification``)."""
    from mipflow.algorithms.sealed import SEALED

    if not isinstance(work.aggregates, dict) or SEALED not in work.aggregates:
        return
    from mipflow.secagg import sealing
    from mipflow.secagg import transcript as rounds
    from mipflow.secagg.crypto import cached_keypair

    if work.transcript is None:
        raise rounds.refuse("this step's sums are for the participating nodes only, sealed to each of them: "
                            "it needs a transcript naming the participants")
    sums = work.aggregates[SEALED]
    scheme = work.algo.sealed_mask_scheme(len(work.transcript.participants))
    if scheme is not None:  # the peers learn only the pool (ADR 0052; Cox's real sums, ADR 0055)
        from mipflow.secagg.sealed_masks import mask_step_sums

        sums = mask_step_sums(cached_keypair(context.home.root), work.transcript.participants, sums,
                              analysis_id=str(request.analysis_id), algorithm=request.algorithm,
                              round_no=request.round, request=request.analysis.to_dict(), state=request.state,
                              scheme=scheme)
    work.aggregates = {**work.aggregates, SEALED: sealing.seal(
        cached_keypair(context.home.root), context.name, work.transcript.participants, sums,
        analysis_id=str(request.analysis_id), algorithm=request.algorithm, chain=str(work.chain),
        round_no=request.round)}


def mask(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """Secure aggregation (ADR 0014): the released aggregates masked, last thing before the reply; a
    round the algorithm releases in the clear (Cox regression's round 0 and sums rounds, ADR 0048;
    decided on the node's verified state) is left as it is."""
    if request.secure_aggregation is None:
        return
    from mipflow.secagg import node_side
    from mipflow.secagg.policy import masked_round

    if not masked_round(work.algo, request.round, work.state):
        work.record["secure_aggregation"] = "clear_round"
        return

    work.record["secure_aggregation"] = True
    state = request.state
    if work.pool_chain is not None and work.pool_chain.get("context"):
        # ADR 0060: bins derived against a chain of earlier pools; nodes whose chains differ derive other
        # bins, and their masks must then not cancel (the sum would mix counts on different bins)
        state = {**(state or {}), "pool_chain": work.pool_chain["context"]}
    work.aggregates = node_side.mask_release(context.home.root, context.name, request.algorithm, request.analysis,
                                             request.round, state, request.analysis_id,
                                             request.secure_aggregation, work.aggregates, model=work.model)


def tag_release(request: StepRequest, context: StepContext, work: StepWork) -> None:
    """Verifiable rounds (ADR 0029): the reply in its wire form, tagged for every participant."""
    if work.transcript is None:
        return
    from mipflow.secagg import transcript as rounds

    work.aggregates, work.tags = rounds.tag_reply(
        work.transcript, root=context.home.root, own_name=context.name, chain=work.chain,
        analysis_id=request.analysis_id, algorithm=request.algorithm, round_no=request.round,
        request=request.analysis, state=request.state, aggregates=work.aggregates)
