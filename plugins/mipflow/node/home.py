"""A node's home folder: configuration, secret key, landing and staging areas.

Layout of ``HOME``::

    node.json        name, store URL, disclosure and ingest settings (no secrets)
    secret.key       the node's HMAC key (hex, mode 0600); never logged, never stored in the DB
    landing/         where EHR CSV exports arrive (``landing/dicom/`` for imaging)
    staging/         per-batch intermediate files between pipeline stages
    profiles/        source profiles (depersonalisation + harmonisation)
    data_models/     copies of the CDE data models the node holds
    consent.csv      optional consent registry (patient_id, consent[, updated_at])
    store.sqlite     the feature store when no URL is given
"""
from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mipflow.exceptions import ConfigError

CONFIG_FILE = "node.json"
KEY_FILE = "secret.key"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")


@dataclass
class NodeSettings:
    """Settings a node admin may change (``mipflow node config HOME KEY VALUE``).

    Disclosure defaults follow the MIP (``min_row_count`` 10) and DataSHIELD
    (``nfilter.*``); see ``docs/adr/0002-disclosure-controls.md``.
    """

    #: Smallest number of rows (after filters and complete-case) an aggregate may describe.
    min_row_count: int = 10
    #: DataSHIELD nfilter.tab: smallest non-zero count cell released in a table or histogram.
    nfilter_tab: int = 3
    #: DataSHIELD nfilter.subset: smallest subset a filter may select.
    nfilter_subset: int = 3
    #: DataSHIELD nfilter.glm: largest ratio of model parameters to rows.
    nfilter_glm: float = 0.33
    #: DataSHIELD nfilter.levels.max: most levels a categorical variable may have in a result.
    nfilter_levels_max: int = 40
    #: DataSHIELD nfilter.string: longest string accepted in a request.
    nfilter_string: int = 80
    #: Release per-node minima/maxima for histogram bin edges (off: raw extremes never leave).
    #: Exareme2's validation suite, run with its privacy threshold at 1, needs it on.
    release_extremes: int = 0
    #: Largest share of failing rows before a batch is held back whole.
    max_failure_rate: float = 0.2
    #: Rows read per chunk while ingesting (bounds memory).
    chunk_rows: int = 100_000
    #: MiB of data selections the node API keeps between the rounds of analyses (at most 4
    #: selections; a larger one is used once and not kept). 0 keeps none.
    frame_cache_mb: int = 1024
    #: Read SQLite selections from a columnar snapshot of each data model's rows kept in the node home
    #: (``snapshots/``, written again whenever the rows change; 1 = on; ADR 0049). 0 reads the store.
    #: On PostgreSQL the streamed algorithms' rows come from such a snapshot too (ADR 0062): a copy of
    #: the rows in the node home.
    columnar_snapshot: int = 1
    #: A landing file modified less than this many seconds ago is still being written.
    settle_seconds: float = 5.0
    #: Data model used for landing files when none is named.
    default_data_model: str = ""
    #: DICOM de-identification options (PS3.15 Annex E), 1 = on.
    dicom_retain_longitudinal_modified_dates: int = 1
    dicom_retain_patient_characteristics: int = 0
    dicom_retain_device_identity: int = 0
    dicom_retain_safe_private: int = 0
    dicom_clean_descriptors: int = 0
    #: Words always removed from cleaned DICOM descriptions (comma-separated).
    dicom_descriptor_deny_words: str = ""
    #: If set, cleaned DICOM descriptions keep only these words (comma-separated).
    dicom_descriptor_allow_words: str = ""
    #: Images whose burned-in text was removed upstream (otherwise US/SC/... are quarantined).
    dicom_pixels_cleaned: int = 0
    #: UID root for remapped UIDs (empty: 2.25.<128-bit integer>).
    dicom_uid_root: str = ""
    #: Distinct analyses one researcher may run at this node in any 24 hours, answered or refused
    #: (0 = unlimited; docs/adr/0025-budgets.md). An honest day's work is 10-20.
    query_budget: int = 100
    #: Distinct analyses all researchers of one project may run at this node in any 24 hours, so that
    #: fresh researcher ids under a project grant do not reset the budget (0 = unlimited).
    query_budget_project: int = 300
    #: Algorithms the node admin has switched off, comma-separated (refused with a reason).
    disabled_algorithms: str = ""
    # -- differential privacy (docs/adr/0015-differential-privacy.md; off by default) --
    #: Add OpenDP noise to what supported algorithms release (1 = on).
    dp_enabled: int = 0
    #: ``laplace`` (pure epsilon-DP) or ``gaussian`` (zCDP, stated at dp_budget_delta).
    dp_mechanism: str = "laplace"
    #: Epsilon each noisy step costs.
    dp_epsilon: float = 0.5
    #: Total epsilon one researcher may spend at this node (all time).
    dp_budget_epsilon: float = 5.0
    #: Delta of the budget (Gaussian mechanism; Laplace spends none).
    dp_budget_delta: float = 1e-6
    #: Total epsilon all researchers of one project may spend at this node (all time); by default
    #: the per-researcher budget, so new researcher ids under one project share it.
    dp_project_budget_epsilon: float = 5.0
    #: Delta of the project's budget.
    dp_project_budget_delta: float = 1e-6
    #: Algorithms a DP node may still run without noise, comma-separated (others without a DP mechanism are refused).
    dp_exempt_algorithms: str = ""
    # -- modes (docs/adr/0038-safe-default-mode.md) --
    #: How the node answers a project that has no approved study and no mode of its own
    #: (``mipflow mode set``): ``explore`` (perturbed answers with keyed noise, charged per release;
    #: ADR 0032) or ``standard`` (exact answers under per-request controls, whose refusals read the
    #: rows: docs/privacy.md section 4).  Exact answers otherwise need a study (``mipflow study``).
    default_mode: str = "explore"
    # -- explore mode (docs/adr/0032-explore-mode.md; per project, mipflow explore enable) --
    #: ``laplace`` or ``gaussian`` (stated at dp_budget_delta): the keyed noise of explore answers.
    explore_mechanism: str = "laplace"
    #: Epsilon each explore release costs (split over the blocks it releases).
    explore_epsilon: float = 1.0
    #: Total epsilon one researcher may spend in explore mode at this node (all time; one ledger with DP).
    explore_budget_epsilon: float = 20.0
    #: Total epsilon all researchers of one explore project may spend at this node (all time).
    explore_project_budget_epsilon: float = 50.0
    #: Refuse cohorts that differ from an answered one by fewer than min_row_count rows, and
    #: k-means rounds a few rows away from a released one (1 = on; docs/adr/0013-differencing.md).
    differencing_check: int = 1
    #: Distinct k-means cluster assignments the node releases on one cohort; every one is kept on disk
    #: and checked against, never forgotten, so at the limit the cohort takes no new one (ADR 0027).
    partitions_per_cohort: int = 128
    #: Answer steps only under secure aggregation with at least one other participant (1 = on; ADR 0027).
    secure_aggregation_required: int = 0

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "NodeSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ConfigError(f"unknown node setting(s) {unknown}; known: {sorted(known)}")
        settings = cls()
        for key, value in doc.items():
            settings = settings.with_value(key, value)
        return settings

    def with_value(self, key: str, value: Any) -> "NodeSettings":
        """Return a copy with ``key`` set to ``value`` (a string from the CLI is converted)."""
        types = {f.name: f.type for f in fields(self)}
        if key not in types:
            raise ConfigError(f"unknown node setting {key!r}; known: {sorted(types)}")
        kind = types[key]
        try:
            if kind == "int":
                converted: Any = int(value)
            elif kind == "float":
                converted = float(value)
            else:
                converted = str(value)
        except (TypeError, ValueError):
            raise ConfigError(f"setting {key!r} needs a {kind}, got {value!r}") from None
        if kind in ("int", "float") and converted < 0:
            raise ConfigError(f"setting {key!r} must not be negative")
        if key in ("min_row_count", "chunk_rows") and converted < 1:
            raise ConfigError(f"setting {key!r} must be at least 1")
        if key in ("max_failure_rate", "nfilter_glm") and converted > 1:
            raise ConfigError(f"setting {key!r} is a fraction between 0 and 1")
        if key == "default_mode" and converted not in ("explore", "standard"):
            raise ConfigError(f"setting {key!r} is explore (perturbed answers, the default) or standard (exact "
                              "answers under per-request controls; docs/adr/0038-safe-default-mode.md)")
        if key in ("dp_mechanism", "explore_mechanism") and converted not in ("laplace", "gaussian"):
            raise ConfigError(f"setting {key!r} is laplace or gaussian")
        if key in ("dp_epsilon", "dp_budget_epsilon", "dp_project_budget_epsilon", "explore_epsilon",
                   "explore_budget_epsilon", "explore_project_budget_epsilon") \
                and not 0 < converted < float("inf"):
            raise ConfigError(f"setting {key!r} must be a positive number")
        if key in ("dp_budget_delta", "dp_project_budget_delta") and converted >= 1:
            raise ConfigError(f"setting {key!r} is a probability below 1")
        if key == "dp_exempt_algorithms":
            names = sorted({n.strip() for n in converted.split(",") if n.strip()})
            if any(not re.match(r"^[A-Za-z0-9_]+$", n) for n in names):
                raise ConfigError(f"setting {key!r} is a comma-separated list of algorithm names")
            converted = ",".join(names)
        if key == "disabled_algorithms":
            names = sorted({n.strip() for n in converted.split(",") if n.strip()})
            if any(not re.match(r"^[A-Za-z0-9_]+$", n) for n in names):
                raise ConfigError(f"setting {key!r} is a comma-separated list of algorithm names")
            converted = ",".join(names)
        data = asdict(self)
        data[key] = converted
        return NodeSettings(**data)


@dataclass
class NodeConfig:
    """Contents of ``node.json``."""

    name: str
    db_url: str = ""
    settings: NodeSettings = field(default_factory=NodeSettings)
    created_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "db_url": self.db_url, "created_at": self.created_at,
                "settings": asdict(self.settings)}


class NodeHome:
    """A node's home folder (see module docstring for the layout)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        path = self.root / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"{self.root} is not a node home (no {CONFIG_FILE}); "
                              f"create one with: mipflow node init {root} --name NAME")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            self.config = NodeConfig(
                name=doc["name"], db_url=doc.get("db_url", ""),
                settings=NodeSettings.from_dict(doc.get("settings", {})),
                created_at=doc.get("created_at", ""),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is not a valid node config: {exc}") from None

    # -- creation ---------------------------------------------------------
    @classmethod
    def init(cls, root: str | Path, name: str, db_url: str = "", *, exist_ok: bool = False) -> "NodeHome":
        """Create a node home with a fresh secret key.

        Raises
        ------
        ConfigError
            If ``name`` is not a plain identifier or the home already exists.
        """
        if not _NAME_RE.match(name or ""):
            raise ConfigError(f"node name {name!r} must be letters, digits, '_', '-' or '.'")
        root = Path(root).resolve()
        if (root / CONFIG_FILE).exists():
            if exist_ok:
                return cls(root)
            raise ConfigError(f"{root} is already a node home")
        for sub in ("landing", "landing/dicom", "staging", "profiles", "data_models"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        key_path = root / KEY_FILE
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        config = NodeConfig(name=name, db_url=db_url,
                            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        (root / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
        return cls(root)

    # -- properties -------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def settings(self) -> NodeSettings:
        return self.config.settings

    @property
    def db_url(self) -> str:
        """The feature store URL: ``node.json``'s, else SQLite in the home (``store.sqlite``)."""
        return self.config.db_url or f"sqlite:///{self.root / 'store.sqlite'}"

    @property
    def landing_dir(self) -> Path:
        return self.root / "landing"

    @property
    def staging_dir(self) -> Path:
        return self.root / "staging"

    @property
    def profiles_dir(self) -> Path:
        return self.root / "profiles"

    @property
    def data_models_dir(self) -> Path:
        return self.root / "data_models"

    @property
    def consent_path(self) -> Path:
        return self.root / "consent.csv"

    def key(self) -> bytes:
        """The node's secret HMAC key. Never log or store the result."""
        path = self.root / KEY_FILE
        try:
            text = path.read_text(encoding="ascii").strip()
            key = bytes.fromhex(text)
        except FileNotFoundError:
            raise ConfigError(f"secret key {path} is missing; pseudonyms cannot be made without it") from None
        except ValueError:
            raise ConfigError(f"secret key {path} is not hex") from None
        if len(key) < 32:
            raise ConfigError(f"secret key {path} is shorter than 32 bytes")
        return key

    # -- changes ----------------------------------------------------------
    def set_setting(self, key: str, value: Any) -> NodeSettings:
        """Change one setting and save ``node.json``."""
        if key == "db_url":
            self.config.db_url = str(value)
        elif key == "name":
            if not _NAME_RE.match(str(value)):
                raise ConfigError(f"node name {value!r} is not valid")
            self.config.name = str(value)
        else:
            self.config.settings = self.config.settings.with_value(key, value)
        self.save()
        return self.config.settings

    def save(self) -> None:
        path = self.root / CONFIG_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.config.to_dict(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
