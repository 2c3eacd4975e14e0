"""What the node keeps for the requests it answers: settings, stores, ledgers, caches, audit.

One :class:`StepContext` per node process (the API handles one request at a time,
``docs/adr/0019-node-request-path-caching.md``).  Nothing here knows about HTTP.
"""
from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mipflow.exceptions import DataModelNotHeld, RequestError  # noqa: F401 (DataModelNotHeld: re-exported for the node API)
from mipflow.node.controls.access import AccessRegistry
from mipflow.node.controls.audit import AUDIT_FILE, AuditLog
from mipflow.node.controls.differencing import Cohorts, DifferencingGuard
from mipflow.node.controls.dp import NodePrivacy
from mipflow.node.controls.explore import ExploreRegistry
from mipflow.node.controls.folds import fold_key
from mipflow.node.controls.query_budget import QueryBudget
from mipflow.node.controls.study import StudyRegistry
from mipflow.node.freshness import DataVersion, file_signature
from mipflow.node.home import NodeHome, NodeSettings

log = logging.getLogger(__name__)
#: Data selections kept in node memory between rounds (see :class:`SelectionCache`).
FRAME_CACHE_SIZE = 4


def selection_bytes(data: Any, cohorts: Any) -> int:
    """Memory a cached selection holds: the frame's arrays (object columns as their pointers; their
    values are shared codes), the cohorts' row keys and the used rows' keys in order (rows, patients)."""
    if not hasattr(data, "memory_usage"):  # rows left on disk (SnapshotRows): their mask
        size = int(data.nbytes)
    else:
        size = int(data.memory_usage(index=True, deep=False).sum())
    ordered = (getattr(cohorts, "order", None), getattr(cohorts, "patient_order", None))
    return size + sum(int(keys.nbytes) for keys in getattr(cohorts, "sets", ())) + sum(
        int(keys.nbytes) for keys in ordered if keys is not None)


def _still_there(data: Any) -> bool:
    """A kept selection can still be used: a frame always, rows left on disk while their snapshot's
    folder is in place (a newer snapshot replaces it; its files are never changed in place)."""
    snapshot = getattr(data, "snapshot", None)
    return snapshot is None or Path(snapshot.path).is_dir()


class SettingsFile:
    """The node's settings, parsed again when the admin changed ``node.json`` (no restart needed).

    Parameters
    ----------
    home : NodeHome
        The node home; its settings are the ones read at start.
    """

    def __init__(self, home: NodeHome) -> None:
        self.root = Path(home.root)
        self.path = self.root / "node.json"
        self._seen = (file_signature(self.path), home.settings)

    def current(self) -> NodeSettings:
        """The settings now in force (one ``stat`` per call)."""
        signature = file_signature(self.path)
        if signature != self._seen[0]:
            self._seen = (signature, NodeHome(self.root).settings)
        return self._seen[1]


class SelectionCache:
    """The rows a step uses, kept in node memory between the rounds of one analysis.

    Iterative algorithms call the node once per round with the same data
    selection; re-reading the store each time would dominate.  A selection is
    keyed on what selects it and used while the node's data version
    (:class:`mipflow.node.freshness.DataVersion`, read before the rows are) is
    the one it was read at: every load and consent deletion changes it.  At most
    :data:`FRAME_CACHE_SIZE` selections and ``frame_cache_mb`` MiB are kept,
    least recently used dropped first.  Nothing cached ever leaves the node, nor
    do the row keys of the cohorts (:mod:`mipflow.node.controls.differencing`)
    cached with the rows.
    """

    def __init__(self, store: Any, differencing: DifferencingGuard, fold_key: str) -> None:
        self.store = store
        self.differencing = differencing
        self.fold_key = fold_key  # cross-validation folds (mipflow.node.controls.folds)
        self.version = DataVersion(store)
        self._kept: OrderedDict[str, tuple[Any, Any, Cohorts, int]] = OrderedDict()  # key -> (version, data, cohorts, bytes)

    def _total(self) -> int:
        return sum(v[3] for v in self._kept.values())

    def rows(self, algo: Any, analysis: Any, model: Any, variables: Sequence[str],
             frame_cache_mb: int, study: Any = None, columnar: bool = True,
             streamed: bool = False) -> tuple[Any, Cohorts]:
        """``(data, cohorts)``: the local step's rows (no row keys; the node's fold keys for a
        cross-validated algorithm) and the cohorts they form.

        ``study`` (a :class:`mipflow.node.controls.study.StudySelection`): the rows are the study
        snapshot's (ADR 0028) instead of the request's datasets and filters.  ``columnar``: keyed reads
        may come from the data model's columnar snapshot (setting ``columnar_snapshot``, ADR 0049).
        ``streamed``: the caller's step takes rows left on disk (no differential privacy, no explore
        mode): for an algorithm that ``streams_rows`` (complete-case if it releases groups, nothing split
        by a level but ``dataset``'s), a selection of numerical and nominal variables from the snapshot is kept as
        :class:`mipflow.node.query.snapshot_rows.SnapshotRows` (a bit a snapshot row) and its cohorts
        computed from the snapshot's keys (ADR 0049 amended, ADR 0062: no copy of the rows; a
        complete-case selection split by nothing keeps no key column per row either)."""
        from mipflow.algorithms.local import prepare_local_data
        from mipflow.node.controls.folds import add_fold_keys, fold_hashes, needs_fold_keys
        from mipflow.node.query.read import select_frame

        variables = list(variables)
        transformer = getattr(analysis, "longitudinal", None)
        by = tuple(getattr(algo, "released_by", ()))
        streamed = bool(streamed and columnar and study is None and transformer is None
                        and getattr(algo, "streams_rows", False) and set(by) <= {"dataset"}
                        and not getattr(algo, "row_identity", False)
                        and (algo.complete_case  # groups from its level codes a block at a time (ADR 0062)
                             or not (hasattr(algo, "released_groups") and algo.released_groups(analysis, model))))
        key = json.dumps([model.key, sorted(analysis.datasets), variables, analysis.filters,
                          algo.complete_case, algo.name, study and study.token, streamed]
                         + ([transformer.to_dict()] if transformer is not None else []),
                         sort_keys=True, default=str)
        version = self.version.token(model.key)
        for old in [k for k, v in self._kept.items() if v[0] != version and json.loads(k)[0] == model.key]:
            del self._kept[old]  # read before a change of the rows: never used again, its memory freed now
        budget = int(frame_cache_mb) * 1024 ** 2
        while self._kept and self._total() > budget:  # the admin lowered it
            self._kept.popitem(last=False)
        hit = self._kept.get(key)
        if hit is not None and not _still_there(hit[1]):  # rows left on disk whose snapshot was replaced
            self._kept.pop(key)  # (an admin's SQL moves the rows' stamp, not the data version): read again
            hit = None
        if hit is not None and hit[0] == version:
            self._kept.move_to_end(key)
            return hit[1], hit[2]
        if streamed:
            from mipflow.node.query.read import select_rows

            rows = select_rows(self.store, model, datasets=analysis.datasets, variables=variables,
                               filters=analysis.filters, row_key=self.differencing.key,
                               complete_case=algo.complete_case, dataset="dataset" in variables)
            if rows is not None:  # the cohorts of its frame (ADR 0062), from the snapshot's keys
                if needs_fold_keys(algo):  # the frame's fold keys, of the snapshot's row keys (amendment 11)
                    rows.fold_keys = fold_hashes(rows.keys("row_key"), self.fold_key)
                cohorts = self.differencing.cohorts_of_rows(model.key, rows, variables, algo.complete_case, by)
                return self._keep(key, version, budget, rows,
                                  self._pinned(algo, analysis, model, variables, columnar, True, cohorts))
        if transformer is not None:
            if study is not None:
                raise RequestError("the longitudinal transformer is not offered in study mode")
            frame, cohorts = self._transformed(transformer, analysis, model)
        else:
            visit_order = bool(getattr(algo, "visit_order", False))  # gee: the visits' order
            if study is not None:
                frame = study.frame(self.store, model, self.differencing.key, visit_order=visit_order)
            else:
                # the ledger's keys computed as the rows are read (ADR 0044), unless the algorithm keeps the
                # patient's identity beside its rows (gee)
                frame = select_frame(self.store, model, datasets=analysis.datasets, variables=variables,
                                     filters=analysis.filters, complete_case=algo.complete_case,
                                     row_identity=True, visit_order=visit_order,
                                     row_key=None if getattr(algo, "row_identity", False) else self.differencing.key,
                                     snapshot=columnar)
            cohorts = self.differencing.cohorts(model.key, frame, variables, algo.complete_case,
                                                getattr(algo, "released_by", ()))
            if study is None:  # a study's cohorts are checked at approval
                cohorts = self._pinned(algo, analysis, model, variables, columnar, False, cohorts)
        if needs_fold_keys(algo):  # folds fixed by the node's secret, never by the request (ADR 0026)
            frame = add_fold_keys(frame, self.fold_key, self.differencing.key)
        data = prepare_local_data(algo, frame, analysis)  # keeps the variables (and fold keys): no row keys
        del frame
        return self._keep(key, version, budget, data, cohorts)

    def _pinned(self, algo: Any, analysis: Any, model: Any, variables: Sequence[str], columnar: bool,
                streamed: bool, cohorts: Cohorts) -> Cohorts:
        """``cohorts`` with the cohorts its filter pins (ADR 0064,
        :func:`mipflow.node.query.pinning.pinning_filters`): the same datasets, variables, complete cases and
        splits under each widened or narrowed filter, read as the request's rows are (rows left on disk when
        ``streamed``), one family of cohorts per filter (its non-empty ones), beside the request's."""
        import dataclasses

        from mipflow.node.query.pinning import pinning_filters
        from mipflow.node.query.read import select_frame, select_rows

        filters = pinning_filters(analysis.filters, variables, model)
        if not filters:
            return cohorts
        by = tuple(getattr(algo, "released_by", ()))
        families: list[Cohorts] = []
        for relaxed in filters:
            rows = select_rows(self.store, model, datasets=analysis.datasets, variables=variables, filters=relaxed,
                               row_key=self.differencing.key, complete_case=algo.complete_case,
                               dataset="dataset" in variables) if streamed else None
            if rows is not None:
                found = self.differencing.cohorts_of_rows(model.key, rows, variables, algo.complete_case, by)
            else:
                frame = select_frame(self.store, model, datasets=analysis.datasets, variables=variables,
                                     filters=relaxed, complete_case=algo.complete_case, row_identity=True,
                                     row_key=self.differencing.key, snapshot=columnar)
                found = self.differencing.cohorts(model.key, frame, variables, algo.complete_case, by)
                del frame
            keep = [i for i, rows_of in enumerate(found.sets) if len(rows_of)]
            if keep and all(f.digests != found.digests for f in families) and found.digests != cohorts.digests:
                families.append(Cohorts(model.key, tuple(found.sets[i] for i in keep),
                                        tuple(found.digests[i] for i in keep),
                                        patients=None if found.patients is None else tuple(
                                            found.patients[i] for i in keep)))
        return dataclasses.replace(cohorts, pinned=tuple(families)) if families else cohorts

    def _keep(self, key: str, version: Any, budget: int, data: Any, cohorts: Cohorts) -> tuple[Any, Cohorts]:
        """Keep a selection read at ``version`` under ``key`` if it fits the budget; ``(data, cohorts)``."""
        self._kept.pop(key, None)  # a stale version
        size = selection_bytes(data, cohorts)
        if size <= budget:
            self._kept[key] = (version, data, cohorts, size)
            while len(self._kept) > FRAME_CACHE_SIZE or self._total() > budget:
                self._kept.popitem(last=False)
        else:
            log.info("a selection of %.0f MiB is larger than frame_cache_mb (%d): used once, not kept",
                     size / 1024 ** 2, budget // 1024 ** 2)
        return data, cohorts


    def _transformed(self, transformer: Any, analysis: Any, model: Any) -> tuple[Any, Cohorts]:
        """The longitudinal transformer's rows (one per patient kept, with a row identity of their
        own for fold keys) and their cohorts (ADR 0034): the rows of both visits of the patients
        kept, then the rows of either visit of every patient looked at (whose count a release of
        the patients dropped gives away)."""
        from mipflow.algorithms.longitudinal import transform_rows
        from mipflow.node.query.read import select_frame
        from mipflow.protocol.longitudinal import VISIT_VARIABLE

        raw = list(dict.fromkeys([*(v for v, _ in transformer.strategies), VISIT_VARIABLE]))
        rows = select_frame(self.store, model, datasets=analysis.datasets, variables=raw,
                            filters=analysis.filters, complete_case=False, row_identity=True)
        done = transform_rows(rows, transformer)
        cohorts = self.differencing.cohorts_of(model.key, rows, [done.used, done.candidates],
                                               seen=done.patients_seen, variables=raw)
        return done.data, cohorts


@dataclass
class StepContext:
    """Everything a request is answered with, other than the request itself.

    Attributes
    ----------
    home : NodeHome
        The node home (name, root, key).
    settings_file : SettingsFile
        ``settings_file.current()`` gives the settings in force.
    store : mipflow.node.store.feature_store.FeatureStore
        The feature store.
    audit : AuditLog
        The hash-chained audit log (one record per request answered or refused).
    access : AccessRegistry
        The node's grants.
    budget : QueryBudget
        Distinct analyses per researcher (rebuilt from the audit log at start).
    privacy : NodePrivacy
        Differential privacy and its ledger (ADR 0015).
    differencing : DifferencingGuard
        The cohort ledger and k-means partition memory (ADR 0013).
    selections : SelectionCache
        Rows kept between rounds (ADR 0019).
    studies : StudyRegistry
        The projects' approved studies (study mode, ADR 0028).
    explore : ExploreRegistry
        The projects in explore mode, the explore noise key and the releases charged (ADR 0032).
    """

    home: NodeHome
    settings_file: SettingsFile
    store: Any
    audit: AuditLog
    access: AccessRegistry
    budget: QueryBudget
    privacy: NodePrivacy
    differencing: DifferencingGuard
    selections: SelectionCache
    studies: StudyRegistry | None = None
    explore: ExploreRegistry | None = None
    _models: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.studies is None:  # every node answers its projects' studies
            self.studies = StudyRegistry(self.home.root)
        if self.explore is None:  # and its explore projects (the key is read at the first explore step)
            self.explore = ExploreRegistry(self.home.root, self.home.key)

    @classmethod
    def open(cls, home: NodeHome) -> "StepContext":
        """The context of a node process serving ``home``."""
        from mipflow.node.store.feature_store import FeatureStore

        store = FeatureStore(home.db_url, home.root)  # a PostgreSQL store's snapshots live in the home
        audit = AuditLog(home.root / AUDIT_FILE)
        differencing = DifferencingGuard(home.root, home.key())  # cohorts answered (docs/adr/0013)
        return cls(home=home, settings_file=SettingsFile(home), store=store, audit=audit,
                   access=AccessRegistry(home.root), budget=QueryBudget(audit.records()),
                   privacy=NodePrivacy(home.root), differencing=differencing,
                   selections=SelectionCache(store, differencing, fold_key(home.key())))

    def close(self) -> None:
        """Release the files this context holds open: the store's connections, the audit log, every control's
        SQLite connection, those shared per home (:meth:`~mipflow.node.controls.sqlite_state.SqliteState.of_home`)
        included.  A node process keeps its context for its life; an embedding (a test) that opens many closes
        each.  Everything reopens on next use."""
        from mipflow.node.controls import sqlite_state

        self.store.dispose()
        self.audit.close()
        parts = [*vars(self).values(), *vars(self.differencing).values()]
        for part in parts:
            if isinstance(part, sqlite_state.SqliteState):
                part.close()
        root = str(Path(self.home.root).resolve())
        for key in [k for k in sqlite_state._HOMES if k[1] == root]:
            sqlite_state._HOMES.pop(key).close()

    @property
    def name(self) -> str:
        """The node's name, as its replies give it."""
        return self.home.name

    def settings(self) -> NodeSettings:
        """The node's settings now in force."""
        return self.settings_file.current()

    def data_model(self, key: str) -> Any:
        """The data model ``key`` (``code:version``) the node holds data of.

        Raises
        ------
        DataModelNotHeld
            If the node holds none.
        """
        if key not in self._models:
            self._models.clear()
            self._models.update({m.key: m for m in self.store.data_models()})
        if key not in self._models:
            raise DataModelNotHeld(f"data model {key} is not held at node {self.home.name}")
        return self._models[key]

    def disabled_algorithms(self, settings: NodeSettings | None = None) -> set[str]:
        """The algorithms the node admin switched off (``disabled_algorithms`` of ``settings``,
        by default the settings now in force)."""
        text = (settings or self.settings()).disabled_algorithms
        return {name.strip() for name in text.split(",") if name.strip()}
