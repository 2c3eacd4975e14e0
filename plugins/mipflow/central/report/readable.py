"""What a researcher reads first about a result: its title, its warnings, its ratios.

- :func:`result_title`: ``"mrs_90d ~ age + nihss_admission (linear regression)"`` from the request;
- :func:`result_warnings`: what makes a result weaker than it looks (perturbed by noise, a node
  left out, time bins merged or a single bin, approximations, an analysis stopped early);
- :func:`ratio_table`: odds ratios (logistic regression) and hazard ratios (Cox regression) with
  their confidence intervals, the exponentiated coefficients and bounds;
- :func:`matches`: the list page's search and filters.

Only the stored result and its provenance are read: no row, value or identifier.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from mipflow.central.report.tables import Table, is_number

#: Words of algorithm labels kept capitalised in titles (names, acronyms are kept anyway).
PROPER = {"Pearson", "Kaplan-Meier", "Cox", "Welch", "Tukey", "Bayes", "Gaussian", "Fisher", "Student",
          "Mantel-Haenszel", "Cochran-Mantel-Haenszel"}
#: Design column names of an intercept: no ratio is shown for it.
INTERCEPTS = {"Intercept", "intercept", "const"}


def algorithm_label(name: str) -> str:
    """``"linear regression"`` for ``linear_regression``: the catalogue's label in running text."""
    try:
        from mipflow.algorithms import ALGORITHMS

        label = str(getattr(ALGORITHMS[name], "label", "") or "")
    except (ImportError, KeyError):
        label = ""
    if not label:
        return name.replace("_", " ")
    return " ".join(map(_running, label.split()))


def _running(word: str) -> str:
    """A label's word in running text: ``Regression`` -> ``regression``, ``Cross-validation`` ->
    ``cross-validation``; names (:data:`PROPER`), acronyms (``ANOVA``) and ``T-Test`` unchanged."""
    parts = word.split("-")
    plain = all(p.isalpha() and p[:1].isupper() and p[1:].islower() for p in parts[:1]) and all(
        p.isalpha() and len(p) > 1 and p[1:].islower() for p in parts)
    return word[0].lower() + word[1:].lower() if plain and word not in PROPER else word


def _inputs(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    return (doc.get("request") or {}).get("inputdata") or {}


def _codes(value: Any) -> list[str]:
    if value in (None, ""):
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def formula(doc: Mapping[str, Any]) -> str:
    """``"y ~ x1 + x2"``; ``"y1, y2"`` without covariates; ``""`` without variables."""
    inputs = _inputs(doc)
    ys, xs = _codes(inputs.get("y")), _codes(inputs.get("x"))
    left = ", ".join(ys)
    if xs:
        return f"{left} ~ {' + '.join(xs)}" if left else " + ".join(xs)
    return left


def result_title(doc: Mapping[str, Any]) -> str:
    """The result's title: ``"mrs_90d ~ age + nihss_admission (linear regression)"``."""
    label = algorithm_label(str(doc.get("algorithm") or "analysis"))
    text = formula(doc)
    return f"{text} ({label})" if text else label


@dataclass(frozen=True)
class Warning:
    """One reason to read a result with care.

    ``kind``: ``noise`` (perturbed, approximate numbers), ``left_out`` (a node did not contribute),
    ``bins`` (times merged or a single bin), ``approximate`` (an approximation of the exact
    analysis), ``stopped`` (ended before converging on every round), ``partial`` (a node contributed
    to part of the model only, as the result's ``notes`` say).
    """

    kind: str
    text: str


def _noisy_nodes(doc: Mapping[str, Any]) -> dict[str, str]:
    """Node -> how it perturbed its answers (privacy block, explore mode, the result's noise block)."""
    result = doc.get("result") or {}
    out: dict[str, str] = {}
    privacy = result.get("privacy") if isinstance(result, Mapping) else None
    for node, label in ((privacy or {}).get("noisy_nodes") or {}).items():
        mode = " in explore mode" if label.get("mode") == "explore" else ""
        epsilon = label.get("epsilon")
        out[str(node)] = f"{label.get('mechanism', 'noise')}{mode}" + (
            f", epsilon {float(epsilon):g}" if is_number(epsilon) else "")
    for node, mode in (doc.get("mode") or {}).items():
        if isinstance(mode, Mapping) and mode.get("mode") == "explore" and str(node) not in out:
            epsilon = mode.get("epsilon")
            out[str(node)] = "keyed noise in explore mode" + (
                f", epsilon {float(epsilon):g} per step" if is_number(epsilon) else "")
    return out


def is_perturbed(doc: Mapping[str, Any]) -> bool:
    """Did noise enter the result (differential privacy at some node, explore mode)?"""
    result = doc.get("result") or {}
    noise = result.get("noise") if isinstance(result, Mapping) else None
    return bool(_noisy_nodes(doc)) or bool(isinstance(noise, Mapping) and noise.get("approximate"))


def noise_dominated(result: Any) -> list[str]:
    """``variable (dataset)`` of every record whose ``data`` says ``noise_dominates`` (ADR 0057)."""
    out: list[str] = []
    if not isinstance(result, Mapping):
        return out
    for records in result.values():
        for item in records if isinstance(records, list) else []:
            data = item.get("data") if isinstance(item, Mapping) else None
            if isinstance(data, Mapping) and data.get("noise_dominates"):
                label = f"{item.get('variable')} ({item.get('dataset')})"
                if label not in out:
                    out.append(label)
    return out


def correlations_noise_dominated(result: Any) -> list[str]:
    """``y ~ x`` of every noisy correlation whose noise outweighs its sampling error (ADR 0057)."""
    flags = result.get("noise_dominates") if isinstance(result, Mapping) else None
    if not isinstance(flags, Mapping) or not isinstance(flags.get("variables"), list):
        return []
    rows = flags["variables"]
    return [f"{y} ~ {x}" for y, column in flags.items() if y != "variables" and isinstance(column, list)
            for x, flag in zip(rows, column) if flag is True and x != y]


def coefficients_noise_dominated(result: Any) -> list[str]:
    """The terms of a noisy regression whose noise outweighs their sampling error (ADR 0057): its
    ``noise_dominates`` is a list beside ``indep_vars``."""
    flags = result.get("noise_dominates") if isinstance(result, Mapping) else None
    terms = result.get("indep_vars") if isinstance(result, Mapping) else None
    if not isinstance(flags, list) or not isinstance(terms, list) or len(flags) != len(terms):
        return []
    return [str(term) for term, flag in zip(terms, flags) if flag is True]


def result_warnings(doc: Mapping[str, Any]) -> list[Warning]:
    """Every reason to read this result with care, most important first (none for a failed run)."""
    if str(doc.get("status") or "succeeded") != "succeeded":
        return []
    result = doc.get("result") or {}
    out: list[Warning] = []
    if is_perturbed(doc):
        nodes = _noisy_nodes(doc)
        by = "; ".join(f"{n}: {how}" for n, how in sorted(nodes.items()))
        out.append(Warning("noise", "Perturbed result: random noise was added at the node(s) to protect "
                                    "patients, so every number is approximate" + (f" ({by})" if by else "")
                           + ". Do not report it as exact; ask for an approved study for exact answers."))
    noise = result.get("noise") if isinstance(result, Mapping) else None
    for text in (noise.get("warnings") or []) if isinstance(noise, Mapping) else []:
        out.append(Warning("noise", str(text)))  # e.g. Kaplan-Meier: a group the noise left nobody at risk in
    dominated = noise_dominated(result)
    if dominated:
        out.append(Warning("noise", "The noise dominates the standard deviation of " + ", ".join(dominated)
                           + ": its interval reaches 0, so the std shown (none where the noisy variance is not "
                             "positive) says little; read its std_interval. Each perturbed number carries its "
                             "noise's sd and a 95 % interval (approximate)."))
    pairs = correlations_noise_dominated(result)
    if pairs:
        out.append(Warning("noise", "The noise outweighs the sampling error of the correlation of " + ", ".join(pairs)
                           + ": read r_noise_low / r_noise_high and the intervals, which account for it."))
    terms = coefficients_noise_dominated(result)
    if terms:
        out.append(Warning("noise", "The noise outweighs the sampling error of the coefficient(s) of " + ", ".join(terms)
                           + ": their standard errors, intervals and p-values account for it (std_err_sampling is "
                             "the sampling part, coef_noise_sd the noise's); more rows or a larger epsilon help."))
    excluded = doc.get("excluded") or {}
    if excluded:
        out.append(Warning("left_out", f"{len(excluded)} node(s) left out, the result is from the others only: "
                           + "; ".join(f"{n}: {r}" for n, r in excluded.items())))
    binning = result.get("binning") if isinstance(result, Mapping) else None
    if isinstance(binning, Mapping):
        used, points = binning.get("bins_used"), binning.get("grid_points")
        if used == 1:
            out.append(Warning("bins", "One time bin: every time fell in a single bin (merged for disclosure "
                                       "control or a coarse bin width), so the result has no resolution in time."))
        elif binning.get("merged_for_disclosure"):
            out.append(Warning("bins", f"Time bins merged for disclosure control: {used} of {points} bins used; "
                                       "times are rounded up to the ends of the merged bins."))
        if binning.get("method") == "binned":
            out.append(Warning("approximate", "Approximation: " + str(binning.get("note") or
                                                                    "times rounded up to bin ends")))
    for item in (result.get("histogram") or []) if isinstance(result, Mapping) else []:
        counts = item.get("counts") if isinstance(item, Mapping) else None
        if isinstance(counts, list) and len(counts) == 1:
            out.append(Warning("bins", f"One bin in the histogram of {item.get('var')}: merged for "
                                       "disclosure control, it shows no distribution."))
            break
    if isinstance(result, Mapping) and result.get("approximate") is True:
        out.append(Warning("approximate", "Approximation: " + str(result.get("note") or
                                                                "the federated result approximates the pooled one")))
    notes = result.get("notes") if isinstance(result, Mapping) else None
    for note in notes if isinstance(notes, list) else []:
        out.append(Warning("partial", str(note)))
    if doc.get("stopped"):
        from mipflow.central.report.pages import stopped_text

        out.append(Warning("stopped", "Stopped early: " + stopped_text(doc["stopped"])))
    return out


# -- ratios ------------------------------------------------------------------------


def _parallel(result: Mapping[str, Any], *keys: str) -> list[list[Any]] | None:
    values = [result.get(k) for k in keys]
    if not all(isinstance(v, list) for v in values) or len({len(v) for v in values}) != 1:
        return None
    return values  # type: ignore[return-value]


def _exp(value: Any) -> float | None:
    if not is_number(value):
        return None
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


def ratio_table(algorithm: str, result: Mapping[str, Any]) -> Table | None:
    """Odds ratios for a logistic regression, hazard ratios for a Cox regression (with their CIs).

    Odds ratios are ``exp`` of the coefficients and of their confidence bounds (the intercept has
    none); hazard ratios are the Cox result's own ``hazard_ratios``, ``hr_lower_ci``,
    ``hr_upper_ci``.  None for other results.
    """
    if "hazard_ratios" in result:
        cols = _parallel(result, "indep_vars", "hazard_ratios", "hr_lower_ci", "hr_upper_ci")
        if cols is None:
            return None
        p = result.get("pvalues") if isinstance(result.get("pvalues"), list) else [None] * len(cols[0])
        rows = [[name, hr, lo, hi, pv] for name, hr, lo, hi, pv in zip(*cols, p)]
        return Table("Hazard ratios", ["term", "hazard ratio", "lower CI", "upper CI", "p-value"], rows)
    if "logistic" in algorithm:
        cols = _parallel(result, "indep_vars", "coefficients", "lower_ci", "upper_ci")
        if cols is None:
            return None
        p = result.get("pvalues") if isinstance(result.get("pvalues"), list) else [None] * len(cols[0])
        rows = [[name, _exp(c), _exp(lo), _exp(hi), pv] for name, c, lo, hi, pv in zip(*cols, p)
                if name not in INTERCEPTS]
        return Table("Odds ratios", ["term", "odds ratio", "lower CI", "upper CI", "p-value"], rows)
    return None


# -- search ------------------------------------------------------------------------


def search_text(doc: Mapping[str, Any]) -> str:
    """What the list page's search looks in: title, run, who, project, data model, datasets, status."""
    inputs = _inputs(doc)
    parts = [result_title(doc), str(doc.get("run_id") or ""), str(doc.get("algorithm") or ""),
             str(doc.get("triggered_by") or ""), str(doc.get("project") or ""),
             str(inputs.get("data_model") or ""), " ".join(_codes(inputs.get("datasets"))),
             str(doc.get("status") or "succeeded"), str(doc.get("error") or "")]
    return " ".join(parts).lower()


def matches(doc: Mapping[str, Any], *, text: str = "", status: str = "", algorithm: str = "") -> bool:
    """Does a run match the list page's search (every word of ``text``) and filters?"""
    if status and str(doc.get("status") or "succeeded") != status:
        return False
    if algorithm and doc.get("algorithm") != algorithm:
        return False
    haystack = search_text(doc)
    return all(word in haystack for word in text.lower().split())


def algorithms_of(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted({str(d.get("algorithm")) for d in runs if d.get("algorithm")})
