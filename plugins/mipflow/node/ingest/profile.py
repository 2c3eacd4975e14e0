"""Source profiles: how one hospital's export is depersonalised and harmonised.

A profile is a JSON file::

    {"source": "hospital_b", "data_model": "stroke:0.1",
     "encoding": "utf-8", "delimiter": ",",
     "dataset": {"value": "hospital_b"} | {"column": "dataset"},
     "visit": {"column": "episode_no"},          # optional; pseudonymised unless "pseudonymise": false
     "deid": {...},                               # see mipflow.node.deid.profile.DeidProfile
     "harmonise": {"columns": {"local": "cde_code"},
                   "values": {"cde_code": {"local value": "cde enumeration code"}},
                   "drop": ["local column"]},
     "database": {...},                           # optional: an EHR database instead of a landing folder,
                                                  # see mipflow.node.ingest.database
     "identity_columns": ["age"]}                 # optional: data-model columns derived from identifying
                                                  # values (default: every "age" date rule's output), ADR 0004

Without a profile file, :func:`default_profile` applies (the MIP CSV layout:
patient identifier ``subjectcode``, dataset column ``dataset``, no direct
identifiers, columns already named after the data model).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from mipflow.node.deid.profile import DeidProfile
from mipflow.exceptions import ConfigError, ProfileError
from mipflow.node.home import NodeHome
from mipflow.node.store.feature_store import FeatureStore
from mipflow.protocol.datamodel import DataModel

if TYPE_CHECKING:  # pragma: no cover
    from mipflow.node.ingest.database import DatabaseSource


@dataclass(frozen=True)
class HarmoniseMap:
    """Renames local columns to CDE codes and recodes local values to enumeration codes."""

    columns: Mapping[str, str] = field(default_factory=dict)
    values: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    drop: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None) -> "HarmoniseMap":
        doc = doc or {}
        if not isinstance(doc, Mapping):
            raise ProfileError("'harmonise' must be an object")
        columns = doc.get("columns", {}) or {}
        values = doc.get("values", {}) or {}
        drop = doc.get("drop", []) or []
        if not isinstance(columns, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in columns.items()):
            raise ProfileError("'harmonise.columns' must map local column names to CDE codes")
        if len(set(columns.values())) != len(columns):
            raise ProfileError("'harmonise.columns' maps two local columns onto the same CDE code")
        if not isinstance(values, Mapping) or not all(isinstance(v, Mapping) for v in values.values()):
            raise ProfileError("'harmonise.values' must map CDE codes to {local value: code} objects")
        if not isinstance(drop, list):
            raise ProfileError("'harmonise.drop' must be a list of column names")
        return cls(columns=dict(columns),
                   values={k: {str(a): str(b) for a, b in v.items()} for k, v in values.items()},
                   drop=tuple(str(d) for d in drop))

    def to_dict(self) -> dict[str, Any]:
        return {"columns": dict(self.columns), "values": {k: dict(v) for k, v in self.values.items()},
                "drop": list(self.drop)}


@dataclass(frozen=True)
class SourceProfile:
    """Everything needed to turn one source's export into data-model rows."""

    source: str
    deid: DeidProfile
    harmonise: HarmoniseMap = field(default_factory=HarmoniseMap)
    data_model: str | None = None
    dataset_column: str | None = None
    dataset_value: str | None = None
    visit_column: str | None = None
    pseudonymise_visit: bool = True
    encoding: str = "utf-8"
    delimiter: str = ","
    database: "DatabaseSource | None" = None
    #: Data-model columns derived from identifying values (``None``: every ``age`` date rule's output).
    identity_columns: tuple[str, ...] | None = None

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "SourceProfile":
        if not isinstance(doc, Mapping):
            raise ProfileError("a source profile must be a JSON object")
        dataset = doc.get("dataset") or {"column": "dataset"}
        if not isinstance(dataset, Mapping) or ("column" in dataset) == ("value" in dataset):
            raise ProfileError("'dataset' must be {\"column\": NAME} or {\"value\": DATASET_CODE}")
        visit = doc.get("visit") or {}
        if not isinstance(visit, Mapping) or (visit and "column" not in visit):
            raise ProfileError("'visit' must be {\"column\": NAME} or absent")
        if "deid" not in doc:
            raise ProfileError("a source profile needs a 'deid' section (at least its patient_id)")
        delimiter = str(doc.get("delimiter", ","))
        if len(delimiter) != 1:
            raise ProfileError("'delimiter' must be one character")
        encoding = str(doc.get("encoding", "utf-8"))
        try:
            "".encode(encoding)
        except LookupError:
            raise ProfileError(f"unknown encoding {encoding!r}") from None
        identity = doc.get("identity_columns")
        if identity is not None and (not isinstance(identity, list)
                                     or not all(isinstance(c, str) and c.strip() for c in identity)):
            raise ProfileError("'identity_columns' must be a list of data-model column names")
        return cls(
            identity_columns=None if identity is None else tuple(c.strip() for c in identity),
            source=str(doc.get("source", "export")),
            deid=DeidProfile.from_dict(doc["deid"]),
            harmonise=HarmoniseMap.from_dict(doc.get("harmonise")),
            data_model=doc.get("data_model"),
            dataset_column=dataset.get("column"),
            dataset_value=dataset.get("value"),
            visit_column=visit.get("column"),
            pseudonymise_visit=bool(visit.get("pseudonymise", True)),
            encoding=encoding,
            delimiter=delimiter,
            database=_database(doc.get("database")),
        )

    @classmethod
    def load(cls, path: str | Path) -> "SourceProfile":
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ProfileError(f"profile file {path} does not exist") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProfileError(f"profile file {path} is not valid JSON: {exc}") from None
        return cls.from_dict(doc)

    def to_dict(self) -> dict[str, Any]:
        dataset = {"column": self.dataset_column} if self.dataset_column else {"value": self.dataset_value}
        out: dict[str, Any] = {"source": self.source, "data_model": self.data_model, "dataset": dataset,
                               "deid": self.deid.to_dict(), "harmonise": self.harmonise.to_dict(),
                               "encoding": self.encoding, "delimiter": self.delimiter}
        if self.visit_column:
            out["visit"] = {"column": self.visit_column, "pseudonymise": self.pseudonymise_visit}
        if self.database is not None:
            out["database"] = self.database.to_dict()
        if self.identity_columns is not None:
            out["identity_columns"] = list(self.identity_columns)
        return out

    def identity_derived_columns(self) -> tuple[str, ...]:
        """The data-model columns derived from identifying values, after harmonisation.

        A re-export that changes one of them for a key already loaded (same
        pseudonym, dataset and visit) is flagged (ADR 0004): the identifier
        may have been reused for another patient, or a birth date corrected.
        The profile's ``identity_columns`` when given; otherwise the output
        of every ``age`` date rule (age at an event, from the birth date: for
        one key, i.e. one patient's visit, it changes only when the birth date
        or the visit's date does), renamed as ``harmonise.columns`` renames
        it.  Other date outputs (days since, shifted dates) follow event dates
        that re-exports legitimately correct, so they are not flagged unless
        listed.
        """
        if self.identity_columns is not None:
            return self.identity_columns
        outputs = [rule.output_column for rule in self.deid.dates if rule.action == "age" and rule.output_column]
        return tuple(dict.fromkeys(self.harmonise.columns.get(c, c) for c in outputs if c))

    @property
    def control_columns(self) -> tuple[str, ...]:
        """Local columns the pipeline reads itself (patient id, dataset, visit)."""
        cols = [self.deid.patient_id]
        if self.dataset_column:
            cols.append(self.dataset_column)
        if self.visit_column:
            cols.append(self.visit_column)
        return tuple(cols)


def _database(doc: Any) -> "DatabaseSource | None":
    if doc is None:
        return None
    from mipflow.node.ingest.database import DatabaseSource

    return DatabaseSource.from_dict(doc)


def database_profiles(home: NodeHome, only: str | None = None) -> tuple[list[SourceProfile], list[str]]:
    """The node's database sources: every ``profiles/<source>.json`` with a ``database`` section.

    A database profile's ``source`` must be its file's name (the later stages
    find the profile again by it).  Returns the profiles and, for each profile
    file that cannot be read or breaks that rule, a problem (so one bad file
    stops neither the other sources nor the landing folder).

    Parameters
    ----------
    only : str, optional
        Just this source (its file name without ``.json``).
    """
    out: list[SourceProfile] = []
    problems: list[str] = []
    paths = sorted(home.profiles_dir.glob("*.json"))
    if only is not None:
        paths = [p for p in paths if p.stem == only]
        if not paths:
            raise ConfigError(f"no source profile {only!r} in {home.profiles_dir}")
    for path in paths:
        try:  # a landing-folder profile is the CSV capture's to read and report
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            doc = None
        if not isinstance(doc, dict) or "database" not in doc:
            if only is not None:
                raise ConfigError(f"source profile {only!r} has no 'database' section")
            continue
        try:
            profile = SourceProfile.from_dict(doc)
        except ProfileError as exc:
            problems.append(f"profile {path.name}: {exc}")
            continue
        if profile.source != path.stem:
            problems.append(f"database profile {path.name}: 'source' must be {path.stem!r}, its file name")
            continue
        out.append(profile)
    return out, problems


def default_profile() -> SourceProfile:
    """The documented default: MIP CSV layout (``subjectcode``, ``dataset``), no identifiers."""
    return SourceProfile(source="mip-csv",
                         deid=DeidProfile.from_dict({"patient_id": "subjectcode"}),
                         dataset_column="dataset")


def resolve_profile(home: NodeHome, profile: str | Path | None, source: str | None = None) -> SourceProfile:
    """The profile named, else ``profiles/<source>.json`` when it exists, else the default."""
    if profile is not None:
        return SourceProfile.load(profile)
    if source:
        candidate = home.profiles_dir / f"{source}.json"
        if candidate.is_file():
            return SourceProfile.load(candidate)
    return default_profile()


def resolve_model(home: NodeHome, store: FeatureStore, data_model: str | None,
                  profile: SourceProfile) -> DataModel:
    """The data model named, else the profile's ``data_model``, else the node's ``default_data_model``."""
    key = data_model or profile.data_model or home.settings.default_data_model
    if not key:
        raise ConfigError("no data model given: pass --data-model CODE:VERSION, set 'data_model' in the "
                          "source profile, or set the node setting default_data_model")
    if profile.data_model and data_model and profile.data_model != data_model:
        raise ProfileError(f"profile is for data model {profile.data_model}, not {data_model}")
    return store.data_model(key)
