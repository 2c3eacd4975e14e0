"""The node's EHR watermark watch: which database sources have changes no capture has registered yet.

What the node's asset watcher (:class:`mipflow_airflow.triggers.ehr_watermark.EhrWatermarkTrigger`,
in the node's triggerer) asks every few seconds, so that ``node_capture`` runs soon after a row is
committed at an EHR database instead of at the nightly capture (ADR 0043, "Latency").  One check
reads, per database source profile (``profiles/<source>.json`` with a ``database`` section, ADR 0040):

* the source's current watermark(s): the capture's own query ``include/sql/ehr_max_watermark.sql``
  (``SELECT MAX(<watermark column>)``: one indexed query; a deleted-rows table adds one more), on a
  connection kept open between checks (at most one per source);
* the feature store's committed watermark and batch records (:func:`mipflow.node.ingest.stages.capture_due`).

A source is due when a capture now would register a new batch: its watermark lies beyond the
committed one, no batch of it is in the chain, and that range was not captured before (a failed or
held batch's range is the nightly capture's to try again).  Each value is reported at most once
per watch (a capture that did not run yet is not asked for twice); a watch started afresh (a
triggerer restart) reports a value again only if the store shows it still uncaptured.

Nothing read from the source is logged or returned but the fact that it changed: no watermark
value, no row, no URL (errors name the source and the exception's class only).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from mipflow.exceptions import ConfigError, MipflowError
from mipflow.node.home import NodeHome

if TYPE_CHECKING:  # pragma: no cover
    from mipflow.node.ingest.database import ConnectionResolver
    from mipflow.node.ingest.profile import SourceProfile
    from mipflow.node.store.feature_store import FeatureStore

log = logging.getLogger(__name__)

#: Seconds a kept source connection lives before it is opened again (a server may drop idle ones).
RECYCLE_SECONDS = 300


class WatermarkWatch:
    """Checks a node's database sources for changes not captured yet (call :meth:`close` when done).

    Parameters
    ----------
    home : NodeHome or path
        The node home (its profiles, connection secrets and feature store).
    """

    def __init__(self, home: NodeHome | str | Path) -> None:
        self.home = home if isinstance(home, NodeHome) else NodeHome(home)
        self._store: FeatureStore | None = None
        self._engines: dict[str, tuple[str, sa.Engine]] = {}  # source -> (URL digest, engine)
        self._reported: dict[str, tuple[str | None, str | None]] = {}  # source -> watermarks last reported
        self._problems: dict[str, str] = {}  # source -> last problem logged (each logged once)

    def profiles(self) -> list["SourceProfile"]:
        """The node's database source profiles now (a profile that cannot be read is logged once)."""
        from mipflow.node.ingest.profile import database_profiles

        profiles, problems = database_profiles(self.home)
        for problem in problems:
            self._problem(problem, problem)
        return profiles

    def check(self, profiles: list["SourceProfile"] | None = None,
              connections: "ConnectionResolver | None" = None) -> list[str]:
        """The sources a capture would register a new batch for now, each watermark reported once.

        Parameters
        ----------
        profiles : list of SourceProfile, optional
            The database sources (default: :meth:`profiles`).
        connections : callable, optional
            Resolves an ``airflow_conn_id`` to its URL (the trigger passes the connections it read).
        """
        from mipflow.node.ingest.database import current_watermarks
        from mipflow.node.ingest.stages import capture_due

        due: list[str] = []
        for profile in self.profiles() if profiles is None else profiles:
            source = profile.source
            try:
                engine = self._engine(profile, connections)
                upto, del_upto = current_watermarks(source, engine, profile.database)
                if self._reported.get(source) != (upto, del_upto) and capture_due(self.store, profile, upto,
                                                                                    del_upto):
                    self._reported[source] = (upto, del_upto)
                    due.append(source)
            except MipflowError as exc:  # messages name the source and a class, never the URL or a value
                self._problem(source, str(exc))
                continue
            except sa.exc.SQLAlchemyError as exc:  # the feature store
                self._problem(source, f"source {source}: cannot read the feature store ({type(exc).__name__})")
                continue
            self._problems.pop(source, None)
        return due

    @property
    def store(self) -> "FeatureStore":
        if self._store is None:
            from mipflow.node.store.feature_store import FeatureStore

            self._store = FeatureStore(self.home.db_url, self.home.root)
        return self._store

    def _engine(self, profile: "SourceProfile", connections: "ConnectionResolver | None") -> sa.Engine:
        """The source's engine, kept between checks (one pooled connection); a new one when its URL changed."""
        from mipflow.node.ingest.database import source_url

        assert profile.database is not None
        url = source_url(profile.source, profile.database, self.home, connections)
        digest = hashlib.sha256(url.encode("utf-8")).hexdigest()
        kept = self._engines.get(profile.source)
        if kept is not None and kept[0] == digest:
            return kept[1]
        if kept is not None:
            kept[1].dispose()
        try:
            engine = sa.create_engine(url, pool_size=1, max_overflow=0, pool_recycle=RECYCLE_SECONDS)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise ConfigError(f"source {profile.source}: the database connection URL is not usable "
                              f"({type(exc).__name__})") from None
        self._engines[profile.source] = (digest, engine)
        return engine

    def _problem(self, key: str, message: str) -> None:
        if self._problems.get(key) != message:
            self._problems[key] = message
            log.warning("EHR watermark watch: %s", message)

    def close(self) -> None:
        for _, engine in self._engines.values():
            engine.dispose()
        self._engines.clear()
        if self._store is not None:
            self._store.dispose()
            self._store = None
