"""What the node says about itself: data held, algorithms offered, secure-aggregation key.

The answers of the node API's read-only endpoints, as plain functions over a
:class:`~mipflow.node.api.context.StepContext` (the transport,
:mod:`mipflow.node.api.app`, authenticates first).  Each writes one audit record,
allowed or refused.  No answer holds a row; dataset row counts are approximate (keyed noise,
rounded to tens, :mod:`mipflow.node.controls.metadata_counts`) and released only at or above
``min_row_count``.
"""
from __future__ import annotations

from typing import Any

from mipflow.node.api.context import StepContext
from mipflow.node.controls.access import AccessDenied, check_identity


def describe_data(context: StepContext, client: str, researcher: str | None,
                  project: str | None) -> dict[str, Any]:
    """Data models, their variables, their data version, and the datasets ``researcher`` in
    ``project`` may use.

    Without a researcher and project the datasets are not listed.  Each data model's
    ``data_version`` (:mod:`mipflow.node.versions`) is the project's study snapshot's when the
    project has an approved study of that data model, else the live data's.

    Raises
    ------
    AccessDenied
        If only one of researcher and project is given, or one is not an identity
        (audited before it is raised).
    """
    record = {"client": client, "endpoint": "/v1/metadata", "what": "metadata",
              "researcher": (researcher or "")[:128], "project": (project or "")[:128]}
    on_behalf = researcher is not None or project is not None
    try:
        if on_behalf:
            check_identity(researcher, "researcher")
            check_identity(project, "project")
    except AccessDenied as exc:
        context.audit.append(**record, decision="refused", control="access", reason=str(exc))
        raise
    from mipflow.node.versions import data_version, version_key

    from mipflow.node.controls.metadata_counts import count_key, published_count

    min_rows = context.settings().min_row_count
    counts_key = count_key(context.home.key())
    epoch = context.store.consent_applied()  # every node applying a registry redraws (ADR 0061)
    key = version_key(context.home.key())
    study = context.studies.for_project(project) if on_behalf and context.studies is not None else None
    out: dict[str, Any] = {"node": context.name, "data_models": [],
                           "datasets_for": {"researcher": researcher, "project": project} if on_behalf else None}
    for model in context.store.data_models():
        datasets = []
        if on_behalf:  # only what this researcher is approved for; nothing without a researcher
            every, names = context.access.visible_datasets(researcher, project, model.key)
            datasets = [{"dataset": d["dataset"], "row_count_approximate": True,
                         "row_count": published_count(d["row_count"], key=counts_key, data_model=model.key,
                                                      dataset=d["dataset"], min_row_count=min_rows, epoch=epoch)}
                        for d in context.store.datasets(model.key) if every or d["dataset"] in names]
        in_study = study if study is not None and study.protocol.data_model == model.key else None
        out["data_models"].append({"data_model": model.key, "label": model.label,
                                   "variables": [{**v.to_dict(), **({"group": v.group} if v.group else {})}
                                                 for v in model], "datasets": datasets,
                                   # what standing analyses follow (ADR 0043): changes with the answers
                                   "data_version": data_version(context.store, model.key, key, in_study)})
    context.audit.append(**record, decision="allowed")
    return out


def describe_algorithms(context: StepContext, client: str) -> dict[str, Any]:
    """The catalogue of vetted local steps: offered, disabled by the node admin, code digests."""
    from mipflow.algorithms import ALGORITHMS
    from mipflow.algorithms.provenance import catalogue

    context.audit.append(client=client, endpoint="/v1/algorithms", what="algorithms", decision="allowed")
    disabled = context.disabled_algorithms()
    cat = catalogue()
    return {"node": context.name, "algorithms": sorted(set(ALGORITHMS) - disabled),
            "disabled": sorted(disabled & set(ALGORITHMS)),
            "catalogue": {"version": cat["version"], "sha256": cat["sha256"],
                          "algorithms": {name: {"sha256": item["sha256"], "modules": item["modules"]}
                                         for name, item in cat["algorithms"].items()}}}


def describe_secagg_key(context: StepContext, client: str, pair: Any) -> dict[str, Any]:
    """The node's secure-aggregation public key and its fingerprint (:mod:`mipflow.secagg`, ADR 0014).

    ``pair`` is the node's :class:`mipflow.secagg.crypto.KeyPair`; its private part stays here.
    """
    from mipflow.secagg.codec import SCHEME
    from mipflow.secagg.crypto import fingerprint

    context.audit.append(client=client, endpoint="/v1/secagg/key", what="secagg_key", decision="allowed")
    return {"node": context.name, "scheme": SCHEME, "public_key": pair.public_hex,
            "fingerprint": fingerprint(pair.public_bytes)}
