"""Common data models in the MIP CDE metadata format.

A data model is a JSON document (``CDEsMetadata.json``) with a ``code``, a
``version``, a ``label`` and nested ``groups`` whose ``variables`` each carry a
``code``, an ``sql_type`` (``int``, ``real`` or ``text``), ``isCategorical``,
optional ``enumerations`` (``[{"code", "label"}]``) and optional
``minValue``/``maxValue``.  This module loads such a document into typed,
immutable objects that the rest of mipflow (validation, feature store, request
checking, dummy coding) works from.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from mipflow.exceptions import DataModelError

SQL_TYPES = ("int", "real", "text")
#: Variable codes must be plain identifiers: they become column names.
_CODE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class Enumeration:
    """One allowed value of a categorical variable."""

    code: str
    label: str


@dataclass(frozen=True)
class Variable:
    """One common data element (a column of the feature store)."""

    code: str
    label: str
    sql_type: str
    is_categorical: bool
    enumerations: tuple[Enumeration, ...] = ()
    min_value: float | None = None
    max_value: float | None = None
    units: str = ""
    description: str = ""
    group: str = ""

    @property
    def is_numerical(self) -> bool:
        """True for non-categorical int/real variables."""
        return self.sql_type in ("int", "real") and not self.is_categorical

    @property
    def enumeration_codes(self) -> tuple[str, ...]:
        return tuple(e.code for e in self.enumerations)

    def to_dict(self) -> dict[str, Any]:
        """The variable in CDE JSON form (for metadata endpoints)."""
        out: dict[str, Any] = {
            "code": self.code,
            "label": self.label,
            "sql_type": self.sql_type,
            "isCategorical": self.is_categorical,
        }
        if self.enumerations:
            out["enumerations"] = [{"code": e.code, "label": e.label} for e in self.enumerations]
        if self.min_value is not None:
            out["minValue"] = self.min_value
        if self.max_value is not None:
            out["maxValue"] = self.max_value
        if self.units:
            out["units"] = self.units
        return out


@dataclass(frozen=True)
class DataModel:
    """A versioned common data model: an ordered set of variables."""

    code: str
    version: str
    label: str
    variables: Mapping[str, Variable] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> str:
        """``code:version``, the form used in analysis requests."""
        return f"{self.code}:{self.version}"

    @property
    def table_name(self) -> str:
        """Feature-store table that holds this data model's rows."""
        return "dm_" + re.sub(r"[^A-Za-z0-9]", "_", f"{self.code}_{self.version}").lower()

    def __contains__(self, code: object) -> bool:
        return code in self.variables

    def __iter__(self) -> Iterator[Variable]:
        return iter(self.variables.values())

    def __len__(self) -> int:
        return len(self.variables)

    def variable(self, code: str) -> Variable:
        """Return the variable ``code`` or raise :class:`DataModelError`."""
        try:
            return self.variables[code]
        except KeyError:
            raise DataModelError(f"variable {code!r} is not in data model {self.key}") from None

    @property
    def dataset_codes(self) -> tuple[str, ...]:
        """Datasets the model enumerates (its ``dataset`` variable), if any."""
        if "dataset" in self.variables:
            return self.variables["dataset"].enumeration_codes
        return ()

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "DataModel":
        """Build a data model from a parsed CDE JSON document."""
        if not isinstance(doc, Mapping):
            raise DataModelError("a data model must be a JSON object")
        code = doc.get("code")
        version = doc.get("version")
        if not isinstance(code, str) or not _CODE_RE.match(code):
            raise DataModelError(f"data model code {code!r} must be an identifier")
        if not isinstance(version, (str, int, float)) or not _VERSION_RE.match(str(version)):
            raise DataModelError(f"data model version {version!r} is not valid")
        variables: dict[str, Variable] = {}
        for group, var in _walk(doc, path=""):
            parsed = _parse_variable(var, group)
            if parsed.code in variables:
                raise DataModelError(f"variable {parsed.code!r} is declared twice in {code}")
            variables[parsed.code] = parsed
        if not variables:
            raise DataModelError(f"data model {code}:{version} declares no variables")
        return cls(code=code, version=str(version), label=str(doc.get("label", code)),
                   variables=variables, raw=dict(doc))

    def to_dict(self) -> dict[str, Any]:
        """The original CDE JSON document."""
        return dict(self.raw)


def _walk(group: Mapping[str, Any], path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for var in group.get("variables", []) or []:
        yield path, var
    for sub in group.get("groups", []) or []:
        if not isinstance(sub, Mapping):
            raise DataModelError(f"group under {path or 'root'} is not an object")
        sub_path = f"{path}/{sub.get('code', '?')}" if path else str(sub.get("code", "?"))
        yield from _walk(sub, sub_path)


def _number(value: Any, what: str, code: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataModelError(f"variable {code!r}: {what} {value!r} is not a number") from None


def _parse_variable(var: Any, group: str) -> Variable:
    if not isinstance(var, Mapping):
        raise DataModelError(f"a variable in group {group!r} is not an object")
    code = var.get("code")
    if not isinstance(code, str) or not _CODE_RE.match(code):
        raise DataModelError(f"variable code {code!r} in group {group!r} must be an identifier")
    sql_type = var.get("sql_type")
    if sql_type not in SQL_TYPES:
        raise DataModelError(f"variable {code!r}: sql_type {sql_type!r} is not one of {SQL_TYPES}")
    is_categorical = bool(var.get("isCategorical", False))
    enums = []
    for item in var.get("enumerations", []) or []:
        if not isinstance(item, Mapping) or "code" not in item:
            raise DataModelError(f"variable {code!r}: enumeration {item!r} lacks a code")
        enums.append(Enumeration(code=str(item["code"]), label=str(item.get("label", item["code"]))))
    if is_categorical and not enums:
        raise DataModelError(f"categorical variable {code!r} has no enumerations")
    min_value = _number(var.get("minValue"), "minValue", code)
    max_value = _number(var.get("maxValue"), "maxValue", code)
    if min_value is not None and max_value is not None and min_value > max_value:
        raise DataModelError(f"variable {code!r}: minValue {min_value} > maxValue {max_value}")
    return Variable(
        code=code,
        label=str(var.get("label", code)),
        sql_type=sql_type,
        is_categorical=is_categorical,
        enumerations=tuple(enums),
        min_value=min_value,
        max_value=max_value,
        units=str(var.get("units", "") or ""),
        description=str(var.get("description", "") or ""),
        group=group,
    )


def load_data_model(path: str | Path) -> DataModel:
    """Load a ``CDEsMetadata.json`` file.

    Raises
    ------
    DataModelError
        If the file cannot be read or is not a valid CDE document.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataModelError(f"data model file {path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataModelError(f"data model file {path} is not valid JSON: {exc}") from None
    return DataModel.from_dict(doc)


def parse_data_model_key(key: str) -> tuple[str, str]:
    """Split ``"code:version"`` into its parts, with a clear error."""
    code, sep, version = str(key).partition(":")
    if not sep or not code or not version:
        raise DataModelError(f"data model {key!r} must be written CODE:VERSION, e.g. dementia:0.1")
    return code, version


def bundled_data_model_path(name: str) -> Path:
    """Path of a data model shipped in ``include/schemas/`` (e.g. ``stroke_v_0_1``)."""
    root = Path(__file__).resolve().parents[3] / "include" / "schemas" / name / "CDEsMetadata.json"
    if not root.exists():
        raise DataModelError(f"no bundled data model {name!r} at {root}")
    return root
