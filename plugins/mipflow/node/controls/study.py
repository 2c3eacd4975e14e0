"""Study mode at the node: approved studies, the family check of a step, the snapshot's rows.

A project whose node admin approved a study protocol (:mod:`mipflow.node.controls.study_protocol`,
``mipflow study approve``; the checks that look at the data are in
:mod:`mipflow.node.controls.study_approval`) is answered in **study mode** (ADR 0023, 0028):

* :func:`check_study`, a control of the step chain placed before any row is read, decides from
  the request and the protocol alone: a request inside the study's family is admitted, anything
  else is refused (control ``study``) with a message naming what the study allows.  Every
  researcher of the project is bound by it: a new researcher id does not leave the study.
* An admitted request is answered on the study's **snapshot**: the rows of the population (and
  of the request's subgroup) recorded at approval, read from the store by their row keys, so a
  new export loaded since does not change an answer.  If a row of the snapshot changed or left
  the store (a correction, a withdrawal of consent), every request of the study is refused until
  the admin refreshes it (the same answer for every request; ``mipflow study refresh``).  So is it
  once the node applied a changed consent registry, whether or not the person withdrawn was held
  here (ADR 0059: a stop only where she was treated would tell where).
* The per-request ``min_row_count`` and differencing decisions were taken at approval; the
  release controls (``nfilter_tab``, ``nfilter_glm``, DP) still apply to every step.

A study lives in ``HOME/studies/<project>.json`` (the protocol, its approval and snapshot date, and
admin-facing counts) beside ``HOME/studies/<project>.npz`` (the snapshot's keyed row hashes, a hash
of each row's study values, each subgroup's row hashes).  No pseudonym, no value is kept there.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from mipflow.exceptions import ConfigError, DisclosureError, RequestError
from mipflow.node.controls.study_protocol import Protocol, canonical_filter, describe_filter, parse_protocol

#: Folder of the node home holding the approved studies.
STUDIES_DIR = "studies"


#: The federation's partition column: which dataset (export) a row belongs to.
PARTITION = "dataset"
#: The refusal of a request naming ``dataset`` as a variable when the protocol does not list it (static words).
PARTITION_REFUSAL = ("'dataset' (which dataset a row belongs to) is not among the study variables, so a request "
                     "may not analyse or group by it; leave it out of the variables (descriptive_stats reports "
                     "each dataset already) and compare datasets by requesting them one at a time, or ask the "
                     "node admin to list 'dataset' among the protocol's variables")


class StudyRefusal(DisclosureError):
    """A request outside its project's study, or a study whose snapshot must be refreshed (403, ``study``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, control="study")


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def value_hashes(frame: pd.DataFrame, variables: Sequence[str]) -> np.ndarray:
    """A 64-bit hash of each row's study values (for telling changed rows; never leaves the node)."""
    if not len(frame):
        return np.zeros(0, dtype=np.uint64)
    return pd.util.hash_pandas_object(frame[list(dict.fromkeys(variables))], index=False).to_numpy(np.uint64)


# --------------------------------------------------------------------------- an approved study


@dataclass(frozen=True)
class Study:
    """One project's approved study at this node.

    Attributes
    ----------
    project : str
    protocol : Protocol
    snapshot : str
        When the rows the study answers on were fixed (ISO date-time, UTC).
    population : numpy.ndarray of uint64, shape (n,)
        Sorted keyed row hashes of the population (:func:`mipflow.node.controls.differencing.row_keys`).
    values : numpy.ndarray of uint64, shape (n,)
        :func:`value_hashes` of those rows, in the same order.
    subgroups : dict
        Subgroup name -> sorted row hashes.
    record : dict
        The JSON record (approval, refreshes, admin-facing counts).
    """

    project: str
    protocol: Protocol
    snapshot: str
    population: np.ndarray
    values: np.ndarray
    subgroups: Mapping[str, np.ndarray]
    record: Mapping[str, Any] = field(default_factory=dict)

    @property
    def mode(self) -> dict[str, str]:
        """What a reply says about the mode that answered it."""
        return {"study": self.protocol.name, "snapshot": self.snapshot}

    def _refuse(self, what: str) -> StudyRefusal:
        p = self.protocol
        return StudyRefusal(f"project {self.project!r} analyses in study mode (study {p.name!r}, approved by the "
                            f"node admin): {what}")

    def stale(self) -> StudyRefusal:
        """The one refusal of a study whose snapshot must be refreshed: a row changed or left, or the
        node applied a changed consent registry since the snapshot (whether or not it held anyone in it:
        the same words either way, ADR 0059)."""
        return self._refuse(f"rows of the study's snapshot of {self.snapshot} changed at this node (a "
                            "correction or a withdrawal of consent); it is answered again once its node admin "
                            "refreshes it (mipflow study refresh)")

    @property
    def consent_applied(self) -> str:
        """The consent registry's digest the snapshot was taken under ("" for a study recorded before ADR
        0059: such a study stops at the first registry applied after all, until refreshed)."""
        return str(self.record.get("consent_applied", ""))

    def admit(self, algorithm: str, analysis: Any, variables: Sequence[str]) -> "StudySelection":
        """The request's place in the study's family, or a refusal naming what to change.

        Decided from the request and the protocol only: two nodes holding other rows under the
        same protocol give the same answer, byte for byte.

        Raises
        ------
        StudyRefusal
            Control ``study``, for a request outside the family.
        """
        p = self.protocol
        if analysis.data_model != p.data_model:
            raise self._refuse(f"the study is on data model {p.data_model}; request that data model")
        if algorithm not in p.algorithms:
            raise self._refuse(f"algorithm {algorithm!r} is not in the study; it allows "
                               f"{', '.join(p.algorithms)}")
        outside = [d for d in analysis.datasets if d not in p.datasets]
        if outside:
            raise self._refuse(f"dataset(s) {', '.join(map(repr, outside[:5]))} are not in the study; request "
                               f"datasets among {', '.join(p.datasets)}")
        named = set(analysis.x) | set(analysis.y)
        if PARTITION in named and PARTITION not in p.variables:
            raise self._refuse(PARTITION_REFUSAL)
        # the partition column an algorithm reads on its own (descriptive_stats: per-dataset statistics) is
        # public metadata, not a clinical variable: each dataset's rows are a cohort the study already admits
        # (a request naming that one dataset), so it needs no place in the protocol
        extra = [v for v in dict.fromkeys(variables) if v not in p.variables and v != PARTITION]
        if extra:
            raise self._refuse(f"variable(s) {', '.join(map(repr, extra[:5]))} are not study variables; use "
                               f"variables among {', '.join(p.variables)}")
        try:
            wanted = canonical_filter(analysis.filters)
        except RequestError:
            wanted = "malformed"
        subgroup = None
        if wanted is not None and wanted != canonical_filter(p.population_filter):
            matches = [s for s in p.subgroups if s.canonical == wanted]
            if not matches:
                named = "; ".join(f"{s.name}: {describe_filter(s.filter)}" for s in p.subgroups) or "none"
                raise self._refuse("the filter is not one of the study's subgroups; send no filter (the whole "
                                   f"study population) or exactly one subgroup's filter ({named})")
            subgroup = matches[0].name
        datasets = tuple(d for d in p.datasets if d in analysis.datasets)
        return StudySelection(self, subgroup, datasets)


@dataclass(frozen=True)
class StudySelection:
    """An admitted request: which of the study's cohorts it is answered on."""

    study: Study
    subgroup: str | None
    datasets: tuple[str, ...]

    @property
    def token(self) -> list[Any]:
        """What identifies the selection in the node's cache of rows."""
        s = self.study
        return ["study", s.project, s.protocol.name, s.snapshot, self.subgroup, list(self.datasets)]

    def frame(self, store: Any, model: Any, hash_key: str, *, visit_order: bool = False) -> pd.DataFrame:
        """The selection's rows with their identity columns, as ``select_frame(row_identity=True)``
        (and ``visit_order``).

        The rows are the snapshot's: the population's rows now in the store, restricted to the
        snapshot's row keys (rows loaded since are left out), to the subgroup and to the
        request's datasets.

        Raises
        ------
        StudyRefusal
            If a row of the snapshot left the store or changed its study values.
        """
        from mipflow.node.controls.differencing import row_keys
        from mipflow.node.query.read import select_frame

        study, p = self.study, self.study.protocol
        frame = select_frame(store, model, datasets=list(p.datasets), variables=list(p.variables),
                             filters=p.population_filter, complete_case=True, row_identity=True,
                             visit_order=visit_order)
        keys = row_keys(frame, hash_key)
        in_snapshot = np.isin(keys, study.population)
        order = np.argsort(keys[in_snapshot], kind="stable")
        current = value_hashes(frame.loc[in_snapshot], p.variables)[order]
        if len(current) != len(study.population) or not np.array_equal(current, study.values):
            raise study.stale()
        allowed = study.population if self.subgroup is None else study.subgroups[self.subgroup]
        keep = np.isin(keys, allowed) & frame["dataset"].isin(self.datasets).to_numpy()
        return frame.loc[keep].reset_index(drop=True)


# --------------------------------------------------------------------------- storage


def _paths(root: Path, project: str) -> tuple[Path, Path]:
    from mipflow.protocol.identity import IDENTITY_RE

    if not isinstance(project, str) or not IDENTITY_RE.match(project):
        raise ConfigError(f"project {str(project)[:40]!r} is not a valid identity")
    folder = root / STUDIES_DIR
    return folder / f"{project}.json", folder / f"{project}.npz"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)


def write_study(root: str | Path, study: Study) -> None:
    """Store a study: the snapshot's arrays first, then the record that points at them."""
    import io

    record_path, arrays_path = _paths(Path(root), study.project)
    buffer = io.BytesIO()
    np.savez(buffer, population=study.population, values=study.values,
             **{f"subgroup:{name}": keys for name, keys in study.subgroups.items()})
    _write_private(arrays_path, buffer.getvalue())
    record = {**study.record, "project": study.project, "protocol": study.protocol.to_dict(),
              "snapshot": study.snapshot}
    _write_private(record_path, (json.dumps(record, indent=2) + "\n").encode())


def read_record(root: str | Path, project: str) -> dict[str, Any] | None:
    record_path, _ = _paths(Path(root), project)
    if not record_path.is_file():
        return None
    try:
        return json.loads(record_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{record_path} is not a valid study record: {exc}") from None


def read_study(root: str | Path, project: str) -> Study | None:
    """The project's study as stored (approved or withdrawn: see ``record['status']``), or None."""
    record = read_record(root, project)
    if record is None:
        return None
    _, arrays_path = _paths(Path(root), project)
    with np.load(arrays_path) as arrays:
        subgroups = {name.split(":", 1)[1]: arrays[name] for name in arrays.files if name.startswith("subgroup:")}
        population, values = arrays["population"], arrays["values"]
    return Study(project=project, protocol=parse_protocol(record["protocol"]), snapshot=record["snapshot"],
                 population=population, values=values, subgroups=subgroups, record=record)


def list_records(root: str | Path) -> list[dict[str, Any]]:
    folder = Path(root) / STUDIES_DIR
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]


class StudyRegistry:
    """The node's approved studies, re-read when a study's record changes (no restart needed)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[Any, Study | None]] = {}

    def for_project(self, project: str | None) -> Study | None:
        """The approved (not withdrawn) study of ``project``, or None (standard controls)."""
        from mipflow.node.freshness import file_signature

        if not project:
            return None
        try:
            record_path, _ = _paths(self.root, project)
        except ConfigError:
            return None
        signature = file_signature(record_path)
        with self._lock:
            seen = self._seen.get(project)
            if seen is not None and seen[0] == signature:
                return seen[1]
            study = read_study(self.root, project) if signature is not None else None
            if study is not None and study.record.get("status") != "approved":
                study = None
            self._seen[project] = (signature, study)
            return study


# --------------------------------------------------------------------------- the step's control


def check_study(request: Any, context: Any, work: Any) -> None:
    """Study mode (ADR 0028): a request of a project with an approved study must lie inside the
    study's family (control ``study``, decided from the request alone); it is then answered on
    the study's snapshot (``work.study``), and the reply says so (``mode``).  A consent registry
    applied since the snapshot (its digest moved) stops the study until refreshed (ADR 0059)."""
    from mipflow.node.controls.study_suppression import check_layout
    from mipflow.node.controls.study_transforms import check_transformations

    study = context.studies.for_project(request.project)
    if study is None:
        return
    work.study = study.admit(request.algorithm, request.analysis, work.variables)
    if context.store.consent_applied() != study.consent_applied:
        # a consent registry applied since the snapshot stops the study at every node that applied it,
        # holder of the withdrawn person or not (ADR 0059): decided here, before any row is read
        raise study.stale()
    check_layout(study, request.algorithm, request.analysis, work.model)  # the study's bins (ADR 0035)
    check_transformations(study, request.algorithm, request.analysis)  # and transformations (ADR 0053)
    work.record["study"] = {**study.mode, "subgroup": work.study.subgroup}
