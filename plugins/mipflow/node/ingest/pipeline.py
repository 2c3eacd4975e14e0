"""The node ingest pipeline: capture -> depersonalise -> harmonise/validate -> load.

Every stage is a function of one chunk of rows, so the same code serves the
synchronous CLI (:func:`ingest_file`, one pass, one transaction per batch) and
the Airflow DAGs (:mod:`mipflow.node.ingest.stages`, one DAG per stage with staging files
between them).  Every input row ends up in exactly one of: loaded,
quarantined (with a reason), excluded for lack of consent, or a duplicate;
:class:`BatchCounts` checks that the counts add up.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from mipflow.node.ingest.capture import ConsentRegistry, read_head, sha256_file
from mipflow.node.home import NodeSettings
from mipflow.node.versions import consent_digest
from mipflow.protocol.datamodel import DataModel
from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.node.deid.tabular import depersonalise
from mipflow.exceptions import InputFileError, MipflowError
from mipflow.node.files import EHR_KIND, file_label, file_ref, landing_path_key
from mipflow.node.ingest.profile import SourceProfile
from mipflow.node.ingest.progress import Progress, estimate_rows
from mipflow.node.ingest.outcome import (account_load, decide_status, held_message, identity_notice,
                                       notify_identity_changed)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from mipflow.node.store.feature_store import FeatureStore

log = logging.getLogger(__name__)

ROW_COLUMN = "_row"
KEYS = ("_pid", "dataset", "_visit")


class MalformedCSV(InputFileError):
    """A line has the wrong number of fields: read again with the tolerant parser."""


#: The buckets every input row of a batch ends in (they add up to ``rows_in``).
ROW_BUCKETS = ("loaded", "quarantined", "held", "no_consent", "duplicates")
#: How the loaded rows split (they add up to ``loaded``), counted in the load's transaction.
LOAD_SPLIT = ("inserted", "updated", "unchanged")
#: Every count of a batch, as the batch record stores it.
COUNT_FIELDS = ("rows_in", *ROW_BUCKETS, *LOAD_SPLIT, "identity_changed")


@dataclass
class BatchCounts:
    """Where the rows of one batch went.

    ``rows_in = loaded + quarantined + held + no_consent + duplicates``: a
    quarantined row has a quarantine entry with its reason; ``held`` counts the
    valid rows of a held batch, not loaded for the batch's reason (zero unless
    the batch is held, so ``rows_in = loaded + quarantined + no_consent +
    duplicates`` for every other batch).  The loaded rows split into
    ``inserted`` (new key), ``updated`` (existing key, other values) and
    ``unchanged`` (existing key, same values); ``identity_changed`` counts the
    updated keys whose identifying-derived values (see
    :meth:`ChunkProcessor.identity_columns`) changed.
    """

    rows_in: int = 0
    loaded: int = 0
    quarantined: int = 0
    held: int = 0
    no_consent: int = 0
    duplicates: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    identity_changed: int = 0

    @property
    def split_conserved(self) -> bool:
        """The loaded rows split into inserted, updated and unchanged (and no more changed identities than updates)."""
        return (self.loaded == self.inserted + self.updated + self.unchanged
                and 0 <= self.identity_changed <= self.updated)

    @property
    def conserved(self) -> bool:
        return (self.rows_in == sum(getattr(self, b) for b in ROW_BUCKETS)) and self.split_conserved

    def equation(self) -> str:
        ok = "OK" if self.conserved else "MISMATCH"
        held = f" + held {self.held}" if self.held else ""
        return (f"rows_in={self.rows_in} = loaded {self.loaded} (inserted {self.inserted}, updated {self.updated}, "
                f"unchanged {self.unchanged}) + quarantined {self.quarantined}{held} "
                f"+ no_consent {self.no_consent} + duplicates {self.duplicates} [{ok}]")

    def add(self, other: "BatchCounts") -> None:
        """Add ``other``'s counts to these (totals over batches)."""
        for name in COUNT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @classmethod
    def from_record(cls, batch: Mapping[str, Any]) -> "BatchCounts":
        """The counts of a batch record (a store written before a count existed reads it as 0)."""
        return cls(**{k: int(batch.get(k) or 0) for k in COUNT_FIELDS})


@dataclass
class BatchResult:
    """Outcome of one input file."""

    source: str  # the batch's source: ``<file reference>`` or ``<landing source>/<file reference>``
    sha256: str
    status: str  # loaded | held | failed | skipped | empty
    file: str = ""  # the file reference (:func:`mipflow.node.files.file_ref`), never the file's name
    batch_id: str = ""
    data_model: str = ""
    message: str = ""
    counts: BatchCounts = field(default_factory=BatchCounts)
    validation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["conserved"] = self.counts.conserved
        return out


def batch_id_for(sha256: str, data_model: str) -> str:
    """Deterministic batch id: the same file for the same data model is the same batch."""
    return "b" + hashlib.sha256(f"{data_model}|{sha256}".encode()).hexdigest()[:20]


class ChunkProcessor:
    """The per-chunk stage functions for one batch (one file, one profile, one data model)."""

    def __init__(self, model: DataModel, profile: SourceProfile, pseudonymiser: Pseudonymiser,
                 consent: ConsentRegistry | None, settings: NodeSettings, *, tolerant: bool = False) -> None:
        self.tolerant = tolerant
        self.model = model
        self.profile = profile
        self.pseudonymiser = pseudonymiser
        self.consent = consent
        self.settings = settings
        self._validator: Any = None
        self._seen: dict[int, int] = {}

    @property
    def identity_columns(self) -> tuple[str, ...]:
        """The data model's columns derived from identifying values
        (:meth:`SourceProfile.identity_derived_columns`): a change of one for a loaded key is flagged."""
        return tuple(c for c in self.profile.identity_derived_columns() if c in self.model)

    # -- reading ------------------------------------------------------------
    def read_chunks(self, path: Path, counts: BatchCounts, bad_lines: list[tuple[int, str]],
                    progress: "Progress | None" = None, *, label: str = "the file") -> Iterator["pd.DataFrame"]:
        """Yield chunks of raw rows (all cells strings) with a 1-based ``_row`` column.

        Malformed lines (wrong number of fields) are not yielded: they are
        appended to ``bad_lines`` and counted in ``counts.rows_in``.  With
        ``progress``, every chunk read is logged (rows done of the total).
        Errors name the file by ``label`` (its reference, never its name).
        """
        import pandas as pd

        read_head(path, self.profile.encoding, label)
        options = dict(dtype=str, keep_default_na=False, na_values=[""], encoding=self.profile.encoding,
                       sep=self.profile.delimiter, chunksize=self.settings.chunk_rows)
        try:
            header = pd.read_csv(path, nrows=0, encoding=self.profile.encoding, sep=self.profile.delimiter)
            raw_header = _raw_header(path, self.profile)
        except pd.errors.EmptyDataError:
            raise InputFileError(f"{label}: empty file (no header line)") from None
        except (UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise InputFileError(f"{label}: not a readable CSV ({type(exc).__name__})") from None
        except OSError as exc:  # the exception's message would name the file
            raise InputFileError(f"{label}: cannot be read ({type(exc).__name__})") from None
        n_fields = len(header.columns)
        self._check_columns(label, raw_header, path)
        def on_bad(fields: list[str]) -> None:
            bad_lines.append((-1, f"malformed CSV line: {len(fields)} fields where the header has {n_fields}"))
            return None

        row = 0
        try:
            if self.tolerant:  # slower parser that can set malformed lines aside
                reader = pd.read_csv(path, engine="python", on_bad_lines=on_bad, **options)
            else:
                reader = pd.read_csv(path, **options)
            for chunk in reader:
                chunk.insert(0, ROW_COLUMN, range(row + 1, row + 1 + len(chunk)))
                row += len(chunk)
                counts.rows_in += len(chunk)
                yield chunk
                if progress is not None:
                    progress.advance(len(chunk))
        except UnicodeDecodeError:
            raise InputFileError(f"{label}: not valid {self.profile.encoding} text past the first block; "
                                 "re-export it or set 'encoding' in the source profile") from None
        except pd.errors.ParserError as exc:
            if not self.tolerant:
                raise MalformedCSV(label) from None
            raise InputFileError(f"{label}: malformed CSV ({str(exc).splitlines()[0][:120]})") from None
        except OSError as exc:
            raise InputFileError(f"{label}: cannot be read ({type(exc).__name__})") from None
        counts.rows_in += len(bad_lines)

    def _check_columns(self, label: str, columns: list[str], path: Path | None = None) -> None:
        if len(set(columns)) != len(columns):
            raise InputFileError(f"{label}: the header repeats a column name")
        problems = self.profile.deid.check_columns(columns)
        deid = self.profile.deid
        named = {deid.patient_id, *deid.direct_identifiers, *deid.free_text}
        present = set(columns)
        for column in columns:  # an identifier whose case differs from the profile would pass through
            twins = [n for n in named if n.lower() == column.lower() and n != column and n not in present]
            if twins:
                problems.append(f"column {column!r} differs only in case from identifier column {twins[0]!r} "
                                "named in the profile; fix the profile or the export")
        if self.profile.dataset_column and self.profile.dataset_column not in columns:
            problems.append(f"dataset column {self.profile.dataset_column!r} is missing")
        if self.profile.visit_column and self.profile.visit_column not in columns:
            problems.append(f"visit column {self.profile.visit_column!r} is missing")
        if problems:
            detected = detect_delimiter(path, self.profile.encoding) if path is not None else None
            if detected is not None and detected != self.profile.delimiter:  # the cause, said first
                problems.insert(0, f"the header looks {detected!r}-delimited but the source profile reads "
                                   f"{self.profile.delimiter!r} (so {len(problems)} column problem(s) below); "
                                   "set 'delimiter' in the source profile or re-export the file")
            raise InputFileError(f"{label}: " + "; ".join(problems))

    # -- capture --------------------------------------------------------------
    def capture(self, chunk: "pd.DataFrame") -> tuple["pd.DataFrame", int]:
        """Keep rows of patients with consent; returns (kept rows, rows without consent)."""
        if self.consent is None:
            return chunk, 0
        ids = chunk[self.profile.deid.patient_id]
        # rows without an identifier go on, to be quarantined with that reason by depersonalise
        mask = self.consent.granted(ids) | ids.fillna("").str.strip().eq("")
        return chunk[mask.to_numpy()], int((~mask).sum())

    # -- depersonalise ------------------------------------------------------
    def depersonalise(self, chunk: "pd.DataFrame") -> tuple["pd.DataFrame", list[tuple[int, str, Any]]]:
        """Pseudonymise and strip identifiers; returns (good rows, quarantine entries)."""
        profile = self.profile
        frame = chunk
        visit = None
        if profile.visit_column:
            raw_visit = frame[profile.visit_column]
            visit = (self.pseudonymiser.visit_pseudonyms(raw_visit) if profile.pseudonymise_visit
                     else raw_visit.fillna("").str.strip())
            frame = frame.drop(columns=[profile.visit_column])
        result = depersonalise(frame, profile.deid, self.pseudonymiser)
        out = result.frame
        out["_pid"] = out[profile.deid.pseudonym_column]
        out["_visit"] = visit.fillna("") if visit is not None else ""
        if profile.dataset_value is not None:
            out["dataset"] = profile.dataset_value
        elif profile.dataset_column != "dataset":
            out = out.rename(columns={profile.dataset_column: "dataset"})
        failed = result.row_errors.notna().to_numpy()
        entries = _entries(out[failed], result.row_errors[failed], drop=("_pid", "_visit"))
        return out[~failed], entries

    # -- harmonise + validate -------------------------------------------------
    def harmonise(self, frame: "pd.DataFrame") -> "pd.DataFrame":
        """Rename local columns onto CDE codes and recode local values."""
        rules = self.profile.harmonise
        frame = frame.drop(columns=[c for c in rules.drop if c in frame.columns])
        frame = frame.rename(columns=dict(rules.columns))
        for code, mapping in rules.values.items():
            if code in frame.columns:
                column = frame[code]
                stripped = column.str.strip() if column.dtype == object or str(column.dtype) == "str" else column
                frame[code] = stripped.map(lambda v: mapping.get(v, v) if isinstance(v, str) else v)
        if "visitid" in self.model and "visitid" not in frame.columns and self.profile.visit_column:
            frame["visitid"] = frame["_visit"]
        return frame

    def validate(self, frame: "pd.DataFrame") -> tuple["pd.DataFrame", list[tuple[int, str, Any]], int, dict]:
        """Validate against the data model; returns (rows to load, quarantine entries, duplicates, summary)."""
        import pandas as pd

        from mipflow.node.ingest.validation import FrameValidator

        frame = self.harmonise(frame)
        meta = frame[[ROW_COLUMN, "_pid", "_visit"]]
        data = frame.drop(columns=[ROW_COLUMN, "_pid", "_visit"])
        if self._validator is None:
            required = ["dataset"] + [c for c in (self.profile.deid.pseudonym_column,) if c in self.model]
            self._validator = FrameValidator(self.model, list(data.columns), required=required)
        outcome = self._validator.validate(data)
        valid = outcome.valid_mask
        good = pd.concat([meta, outcome.frame], axis=1)
        entries = _entries(frame[~valid], outcome.row_errors[~valid], drop=("_pid", "_visit"))
        good = good[valid]
        good, dup_entries, duplicates = self._deduplicate(good)
        return good, entries + dup_entries, duplicates, outcome.summary

    def _deduplicate(self, frame: "pd.DataFrame") -> tuple["pd.DataFrame", list[tuple[int, str, Any]], int]:
        """Drop repeated keys within the batch: exact repeats count as duplicates,
        repeats with other values are quarantined (the first occurrence is kept)."""
        import pandas as pd

        if frame.empty:
            return frame, [], 0
        key_hash = pd.util.hash_pandas_object(frame[list(KEYS)], index=False).to_numpy()
        content = frame.drop(columns=[ROW_COLUMN])
        row_hash = pd.util.hash_pandas_object(content, index=False).to_numpy()
        keep = []
        exact = 0
        conflict_rows = []
        for i, (k, h) in enumerate(zip(key_hash.tolist(), row_hash.tolist())):
            seen = self._seen.get(k)
            if seen is None:
                self._seen[k] = h
                keep.append(i)
            elif seen == h:
                exact += 1
            else:
                conflict_rows.append(i)
        entries = [(int(frame[ROW_COLUMN].iloc[i]),
                    "duplicate key (patient, dataset, visit) with different values; first occurrence kept",
                    _record(frame.iloc[i], drop=("_pid", "_visit"))) for i in conflict_rows]
        return frame.iloc[keep], entries, exact


#: Why a header-only file is not ingested (the batch's status is ``empty``).
HEADER_ONLY = "header line only, no data rows: nothing to ingest; re-export it"

#: Delimiters :func:`detect_delimiter` recognises.
DELIMITERS = (",", ";", "\t", "|")


def detect_delimiter(path: Path, encoding: str) -> str | None:
    """The delimiter the header line of a CSV file most likely uses, or ``None``.

    Only the header line is read (column names, never row data): the
    candidate of :data:`DELIMITERS` that occurs most often in it.
    """
    try:
        with open(path, newline="", encoding=encoding) as handle:
            line = handle.readline()
    except (OSError, UnicodeDecodeError):
        return None
    counts = {d: line.count(d) for d in DELIMITERS}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else None


def _raw_header(path: Path, profile: SourceProfile) -> list[str]:
    """The header line as written (pandas renames repeated names, hiding them)."""
    import csv

    with open(path, newline="", encoding=profile.encoding) as handle:
        return next(csv.reader(handle, delimiter=profile.delimiter), [])


def _record(row: "pd.Series", drop: tuple[str, ...]) -> dict[str, Any]:
    import pandas as pd

    out = {}
    for key, value in row.items():
        if key in drop or key == ROW_COLUMN:
            continue
        missing = value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))
        out[str(key)] = None if missing else (value.item() if hasattr(value, "item") else value)
    return out


def _entries(frame: "pd.DataFrame", reasons: "pd.Series", drop: tuple[str, ...]) -> list[tuple[int, str, Any]]:
    return [(int(row[ROW_COLUMN]), str(reason), _record(row, drop))
            for (_, row), reason in zip(frame.iterrows(), reasons)]


def ingest_file(path: str | Path, *, store: "FeatureStore", model: DataModel, profile: SourceProfile,
                key: bytes, consent: ConsentRegistry | None, settings: NodeSettings,
                force: bool = False, landing: Path | None = None, source: str | None = None,
                notify: Path | None = None) -> BatchResult:
    """Run the whole pipeline on one file in one pass and one transaction.

    The same file (same SHA-256) is skipped unless ``force``; nothing is
    written unless the whole batch is processed (a crash leaves no trace but
    the file, which the next run picks up again).

    The file's path and name go nowhere: the manifest keeps a keyed hash of
    its path below ``landing`` (its absolute path when outside it or without
    ``landing``), and the batch record, the result, messages and log lines
    name it by its reference (:mod:`mipflow.node.files`).

    Parameters
    ----------
    landing : Path, optional
        The node's landing folder (the root of the keyed path).
    source : str, optional
        Prefix of the batch's ``source`` (``<source>/<ref>``): the landing
        source whose profile reads the file.  Must not come from a file or
        folder name that has no profile.
    notify : Path, optional
        The node's notification file: a batch whose loaded keys changed
        identifying-derived values is recorded there
        (:func:`~mipflow.node.ingest.outcome.identity_notice`).
    """
    path = Path(path)
    path_key = landing_path_key(key, landing, path, kind=EHR_KIND)
    ref = file_ref(path_key)
    label = file_label(ref)
    source = f"{source}/{ref}" if source else ref
    names = {"source": source, "file": ref}
    try:
        if not path.is_file():
            return BatchResult(**names, sha256="", status="failed",
                               message=f"{label}: no such file (map references to paths with: "
                                       "mipflow node files HOME PATH)")
        sha = sha256_file(path)
        size = path.stat().st_size
    except OSError as exc:  # the exception's message would name the file
        return BatchResult(**names, sha256="", status="failed",
                           message=f"{label}: cannot be read ({type(exc).__name__})")
    data_model = model.key
    batch_id = batch_id_for(sha, data_model)
    name = _ManifestName(path_key=path_key, ref=ref, source=source, size=size)
    if store.file_record(sha) is not None and not force:
        return BatchResult(**names, sha256=sha, status="skipped", batch_id=batch_id, data_model=data_model,
                           message="already ingested (same SHA-256); nothing to do")
    counts = BatchCounts()
    if size == 0:
        result = BatchResult(**names, sha256=sha, status="empty", batch_id=batch_id, data_model=data_model,
                             message="empty file: nothing to ingest", counts=counts)
        _record_outcome(store, result, name)
        return result
    try:
        total: int | None = estimate_rows(path)
    except OSError:  # read_chunks reports it, by the file's label
        total = None
    pseudonymiser = Pseudonymiser(key)
    tolerant, load = False, True
    while True:
        processor = ChunkProcessor(model, profile, pseudonymiser, consent, settings, tolerant=tolerant)
        progress = Progress(f"batch {batch_id} ingest" + ("" if load and not tolerant else " (second pass)"), total)
        try:
            result = _ingest_pass(processor, path, name, store, model, batch_id, sha, load=load,
                                  progress=progress)
        except MalformedCSV:
            tolerant = True  # rolled back: read again, setting malformed lines aside
            continue
        except _Held:
            load = False  # rolled back: record the held batch without loading its rows
            continue
        except InputFileError as exc:
            result = BatchResult(**names, sha256=sha, status="failed", batch_id=batch_id,
                                 data_model=data_model, message=str(exc), counts=BatchCounts())
            _record_outcome(store, result, name)
            return result
        break
    counts, status = result.counts, result.status
    if not counts.conserved:  # a bug, never bad input: refuse to pretend
        raise MipflowError(f"row conservation violated for {label}: {counts.equation()}")
    log.info("batch %s (%s): %s; %s", batch_id, label, status, counts.equation())
    if counts.identity_changed:
        notify_identity_changed(notify, identity_notice(batch_id, result.source, data_model, counts,
                                                        result.message))
    return result


@dataclass(frozen=True)
class _ManifestName:
    """How the store names one input file: its path key and reference, the batch's source, its size."""

    path_key: str
    ref: str
    source: str
    size: int


class _Held(Exception):
    """Internal: the batch must be held back; the load transaction is rolled back."""


def _ingest_pass(processor: ChunkProcessor, path: Path, name: _ManifestName, store: "FeatureStore",
                 model: DataModel, batch_id: str, sha: str, *, load: bool,
                 progress: Progress | None = None) -> BatchResult:
    """One pass over the file in one transaction.

    With ``load`` the valid rows are upserted as they come (no second copy);
    if the batch then turns out to exceed ``max_failure_rate``, :class:`_Held`
    rolls everything back and the caller runs a second pass with ``load=False``
    that records the quarantine and the held batch only.
    """
    from mipflow.node.store.feature_store import LoadCounts

    counts = BatchCounts()
    bad_lines: list[tuple[int, str]] = []
    summaries: list[dict] = []
    ready_rows = 0
    accounting = LoadCounts()
    identity = processor.identity_columns
    with store.begin() as conn:
        _clear_batch(store, conn, batch_id, name, sha, model.key)
        for chunk in processor.read_chunks(path, counts, bad_lines, progress, label=file_label(name.ref)):
            kept, no_consent = processor.capture(chunk)
            counts.no_consent += no_consent
            good, deid_entries = processor.depersonalise(kept)
            ready, val_entries, duplicates, summary = processor.validate(good)
            summaries.append(summary)
            counts.duplicates += duplicates
            counts.quarantined += store.quarantine(conn, batch_id, "depersonalise", deid_entries)
            counts.quarantined += store.quarantine(conn, batch_id, "validate", val_entries)
            if load:
                store.upsert_rows(conn, model, ready.drop(columns=[ROW_COLUMN]), batch_id=batch_id, sha256=sha,
                                  accounting=accounting, identity_columns=identity)
            ready_rows += len(ready)
        if progress is not None:
            progress.finish()
        counts.quarantined += store.quarantine(conn, batch_id, "capture", [(n, r, None) for n, r in bad_lines])
        counts.loaded = ready_rows
        if counts.rows_in == 0:  # a header-only file is empty, not "loaded, no consented rows"
            status, message = "empty", f"{file_label(name.ref)}: {HEADER_ONLY}"
        else:
            status, message = decide_status(counts, processor.settings)
        if status == "held":
            if load:
                raise _Held()
            counts.held, counts.loaded = ready_rows, 0
            message = held_message(message, ready_rows)
        else:
            store.refresh_datasets(conn, model)
            message = account_load(counts, accounting, message)
        result = BatchResult(source=name.source, file=name.ref, sha256=sha, status=status, batch_id=batch_id,
                             data_model=model.key, message=message, counts=counts,
                             validation=merge_summaries(summaries))
        store.update_batch(conn, batch_id, stage="load", status=status, message=message,
                           validation=result.validation, finished_at=_now(), **asdict(counts))
    return result


def _now() -> str:
    from mipflow.node.store.feature_store import utcnow

    return utcnow()


def _clear_batch(store: "FeatureStore", conn: Any, batch_id: str, name: _ManifestName, sha: str,
                 data_model: str) -> None:
    """Register the file and (re)start its batch record, dropping an earlier attempt's quarantine."""
    from mipflow.node.store.tables import batches_table, files_table, quarantine_table

    conn.execute(quarantine_table.delete().where(quarantine_table.c.batch_id == batch_id))
    conn.execute(batches_table.delete().where(batches_table.c.batch_id == batch_id))
    conn.execute(files_table.delete().where(files_table.c.sha256 == sha))
    store.register_file(conn, sha256=sha, path=name.path_key, size=name.size, kind=EHR_KIND, batch_id=batch_id)
    store.start_batch(conn, batch_id=batch_id, data_model=data_model, source=name.source, sha256=sha)


def _record_outcome(store: "FeatureStore", result: BatchResult, name: _ManifestName) -> None:
    """Record a batch that loaded nothing (empty or unreadable file) so the manifest knows it."""
    with store.begin() as conn:
        _clear_batch(store, conn, result.batch_id, name, result.sha256, result.data_model)
        store.update_batch(conn, result.batch_id, stage="capture", status=result.status, message=result.message,
                           finished_at=_now(), **asdict(result.counts))


def merge_summaries(summaries: list[dict]) -> dict[str, Any]:
    """Add up per-chunk validation summaries (counts only)."""
    if not summaries:
        return {}
    total: dict[str, Any] = {"rows": 0, "valid_rows": 0, "failed_rows": 0, "expectations": []}
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    for summary in summaries:
        for key in ("rows", "valid_rows", "failed_rows"):
            total[key] += int(summary.get(key, 0))
        for exp in summary.get("expectations", []):
            k = (exp.get("expectation", ""), exp.get("column", ""))
            acc = by_key.setdefault(k, {"expectation": k[0], "column": k[1], "success": True,
                                        "unexpected_count": 0, "element_count": 0})
            acc["success"] = acc["success"] and bool(exp.get("success", True))
            acc["unexpected_count"] += int(exp.get("unexpected_count", 0) or 0)
            acc["element_count"] += int(exp.get("element_count", 0) or 0)
    total["expectations"] = list(by_key.values())
    for key in ("missing_columns", "extra_columns", "gx_version"):
        if key in summaries[0]:
            total[key] = summaries[0][key]
    json.dumps(total)  # counts only: must serialise
    return total


def apply_withdrawals(store: "FeatureStore", consent: ConsentRegistry | None, key: bytes) -> int:
    """Delete the stored rows of every patient whose consent is withdrawn or refused, and record the
    withdrawn set's digest whether or not rows went: the data version follows it alike at every node
    (ADR 0043, "Consent withdrawals")."""
    if consent is None:
        return 0
    withdrawn = consent.withdrawn()
    pseudonymiser = Pseudonymiser(key)
    pseudonyms = sorted({pseudonymiser.pseudonym(pid) for pid in withdrawn})
    deleted = store.delete_patients(pseudonyms) if pseudonyms else 0
    store.record_consent_applied(consent_digest(key, pseudonyms))
    return deleted

