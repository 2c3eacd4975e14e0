"""The privacy label of differentially private releases, as the node states it and the central side sums it up.

A node that adds noise (:mod:`mipflow.node.controls.dp`) sends with its step
reply a ``privacy`` label (:func:`noise_label`: mechanism, epsilon, delta, rho,
clamped ranges, the neighbouring relation, what the researcher spent and the
budget, and a ``note`` on what the noisy result is); the central site turns
the labels of the nodes that contributed into the result's ``privacy`` block
(:func:`privacy_block`).  Both sides read the same shape from here.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

#: The neighbouring relation and unit every guarantee is stated for.
NEIGHBOURING = "add or remove one row"


def noise_label(*, mechanism: str, epsilon: float, delta: float, rho: float | None,
                clamped: dict[str, list[float]], spent: dict[str, Any], budget: dict[str, Any],
                note: str = "", mode: str | None = None, keyed: bool = False,
                noise_sd: dict[str, dict[str, Any]] | None = None, repeat: bool | None = None,
                decision: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``privacy`` label of one noisy step reply.

    Parameters
    ----------
    mechanism : str
        ``"laplace"`` or ``"gaussian"``.
    epsilon, delta : float
        What the step cost (delta 0 for Laplace).
    rho : float or None
        The step's zCDP cost (Gaussian only).
    clamped : dict
        Declared ``[lo, hi]`` of each variable whose values were clamped.
    spent, budget : dict
        The researcher's spending at the node after this step, and the node's budget.
    note : str
        What the noisy result is (and is not); left out when empty.
    mode : str, optional
        ``"explore"`` for a step answered in explore mode (ADR 0032); left out otherwise.
    keyed : bool
        The noise is keyed by the query and the rows (explore mode): the same request on the
        same rows gets the same noise.
    noise_sd : dict, optional
        Block -> ``{"sd", "unit"}``: the standard deviation of the noise on one released value of
        the block (before rounding to integers).
    repeat : bool, optional
        Explore mode: the release was charged before (the same request on the same rows).
    decision : dict, optional
        Explore mode: the noisy row count the thresholds were decided on (its block, epsilon, sd and
        stated false-refusal rate: settings only; ADR 0032, "a decision count of its own").
    """
    label = {"mechanism": mechanism, "library": "opendp", "epsilon": epsilon, "delta": delta, "rho": rho,
             "neighbouring": NEIGHBOURING, "clamped": clamped, "spent": spent, "budget": budget}
    if note:
        label["note"] = note
    if mode is not None:
        label.update(mode=mode, keyed=bool(keyed), library="mipflow keyed noise (OpenDP privacy maps)")
    if noise_sd is not None:
        label["noise_sd"] = noise_sd
    if repeat is not None:
        label["repeat"] = bool(repeat)
    if decision is not None:
        label["decision"] = decision
    return label


def privacy_block(labels: dict[str, list[dict[str, Any]]], contributed: Sequence[str]) -> dict[str, Any]:
    """The ``privacy`` block of a central result: which nodes added noise, how, at what cost.

    Parameters
    ----------
    labels : dict
        Node name -> the ``privacy`` labels of its step replies (one per round that added noise).
    contributed : sequence of str
        The nodes whose aggregates made the result.

    Returns
    -------
    dict
        Empty when no contributing node added noise (the result is exact).
    """
    noisy = {name: labels[name] for name in contributed if labels.get(name)}
    if not noisy:
        return {}
    nodes = {}
    for name, items in noisy.items():
        first = items[0]
        nodes[name] = {"mechanism": first["mechanism"], "epsilon": math.fsum(i["epsilon"] for i in items),
                       "delta": max(i["delta"] for i in items), "rho": first.get("rho"),
                       "clamped": first.get("clamped", {}), "neighbouring": first.get("neighbouring", NEIGHBOURING),
                       "releases": len(items)}
        if first.get("note"):
            nodes[name]["note"] = first["note"]
        if first.get("mode"):  # explore mode (ADR 0032): keyed noise, its sd per block
            nodes[name].update(mode=first["mode"], keyed=bool(first.get("keyed")))
        if first.get("noise_sd"):
            nodes[name]["noise_sd"] = first["noise_sd"]
        if first.get("decision"):  # explore mode: the noisy row count its thresholds were decided on
            nodes[name]["decision"] = first["decision"]
    block = {"approximate": True, "method": "differential privacy, noise added at the nodes",
             "noisy_nodes": nodes, "exact_nodes": sorted(set(contributed) - set(noisy)),
             "note": "statistics are approximate: each listed node added random noise calibrated to its epsilon "
                     "(and delta); numerical values were clamped to the data model's declared ranges"}
    pooled = pooled_noise_sd(nodes)
    if pooled:
        block["pooled_noise_sd"] = pooled
    derived = sorted({item["note"] for items in noisy.values() for item in items if item.get("note")})
    if derived:  # what the derived statistics are (e.g. standard errors that leave out the noise)
        block["derived"] = derived
    return block


def pooled_noise_sd(nodes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Block -> the sd of the noise on one released value summed over the nodes that released it.

    The nodes' noises are independent, so the variances add: ``sqrt(sum sd_i**2)``.  For a count
    block this is the error of one pooled cell (a histogram bin, a level's count); a total over
    ``k`` cells of a node carries ``sqrt(k)`` times that node's sd.  Empty when no node stated
    its noise's sd.
    """
    variances: dict[str, list[float]] = {}
    units: dict[str, str] = {}
    for item in nodes.values():
        for block, value in (item.get("noise_sd") or {}).items():
            variances.setdefault(block, []).append(float(value["sd"]) ** 2)
            units.setdefault(block, str(value.get("unit", "")))
    return {block: {"sd": math.sqrt(math.fsum(v)), "unit": units[block], "nodes": len(v)}
            for block, v in sorted(variances.items())}
