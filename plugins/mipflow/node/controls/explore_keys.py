"""The keys of explore noise (ADR 0032): what a release is keyed on, known before any row is read.

Explore mode (:mod:`mipflow.node.controls.explore`) draws its noise as HMAC-SHA256 under
:func:`noise_key` (derived from the node secret) over

* the **canonical query** (:func:`canonical_query`): the algorithm, the Exareme2 request without
  ``analysis_id``, researcher or project, and without the parameters only the central side reads
  (:func:`release_parameters`), its filters in canonical form, the declared metadata of its
  variables and the noise's own parameters;
* the data model's **version** (:func:`data_version`, :func:`version_of`): a digest of the
  datasets registry, which every load and every consent deletion rewrites, and of the consent
  registry's digest as last applied (which moves at every node that applies a change, ADR 0059).

:func:`release_key` names a release by the two: the same query on the same version is the same
release (the same bytes, charged once per project).  Nothing here reads a row or keeps a value.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Sequence

#: The HMAC label of the explore noise key (changing it redraws every explore answer).
NOISE_KEY_LABEL = b"mipflow explore noise v1"


def noise_key(node_secret: bytes) -> bytes:
    """The HMAC key of explore noise, derived from the node secret under its own label (independent
    of the cohort ledger's and the folds' keys)."""
    return hmac.new(node_secret, NOISE_KEY_LABEL, hashlib.sha256).digest()


def canonical_query(algorithm: str, analysis: Any, model: Any, variables: Sequence[str], *, mechanism: str,
                    epsilon: float, delta: float) -> bytes:
    """The query as the noise is keyed on: canonical JSON of the algorithm, the Exareme2 request
    (datasets as a set; no ``analysis_id``, researcher or project), the declared metadata of its
    variables (ranges and levels shape the release) and the noise's own parameters.

    Two requests that differ in any of these get independent noise; the same request sent again,
    by anyone of the project, gets the same bytes.
    """
    request = analysis.to_dict()
    request["inputdata"]["datasets"] = sorted(request["inputdata"]["datasets"])
    request["parameters"] = release_parameters(algorithm, request.get("parameters"))
    # filters that differ only in writing (rule order, 65 against 65.0, nesting) are one query
    from mipflow.node.controls.study_protocol import canonical_filter

    request["inputdata"]["filters"] = canonical_filter(request["inputdata"].get("filters"))
    meta = {code: model.variable(code).to_dict() for code in sorted(set(variables))}
    doc = {"algorithm": algorithm, "request": request, "variables": meta, "data_model": model.key,
           "noise": [mechanism, repr(float(epsilon)), repr(float(delta))]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


def release_parameters(algorithm: str, parameters: Any) -> Any:
    """The request's parameters less those only the central side reads (``ParamSpec.central_only``,
    e.g. a confidence level): the node's release does not depend on them, so neither does its
    noise (a sixth outside review drew fresh noise by changing ``alpha`` and averaged a cell)."""
    if not isinstance(parameters, dict):
        return parameters
    from mipflow.algorithms import get_algorithm

    specs = getattr(get_algorithm(algorithm), "parameter_specs", {}) or {}
    return {k: v for k, v in parameters.items() if not getattr(specs.get(k), "central_only", False)}


def data_version(store: Any, data_model: str) -> bytes:
    """What explore noise is keyed on beside the query: the data model's datasets registry (each
    dataset's row count and the time of its last load or deletion), which every load and every
    consent deletion rewrites, kept in the store (the same across node processes and restarts).

    Two requests of the same query on the same version read the same rows and get the same noise;
    any load or deletion of the data model gives every query fresh noise, charged again.  Keying on
    the version rather than on the selected rows themselves keeps "did this cohort change?" out of
    the answers (equal answers tell only that the data model's registry is unchanged).
    """
    return version_of(store.datasets(data_model), store.consent_applied())


def version_of(registry: Sequence[dict[str, Any]], consent: str = "") -> bytes:
    """:func:`data_version` of a datasets registry already read, and of the consent registry's digest as
    last applied (:meth:`~mipflow.node.store.feature_store.FeatureStore.consent_applied`): a consent
    deletion rewrites the registry only where it deleted rows, so the digest moves every node's noise
    (fresh, charged) alike, whether or not the withdrawn person was held (ADR 0059)."""
    text = json.dumps([list(registry), consent] if consent else list(registry), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).digest()


def release_key(key: bytes, query: bytes, version: bytes) -> str:
    """The key of a release: the same for the same query on the same data version (then the same
    bytes), whatever the rows; known before any row is read."""
    return hmac.new(key, b"release|" + hashlib.sha256(query).digest() + version, hashlib.sha256).hexdigest()
