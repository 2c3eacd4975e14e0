"""The analysis request in the MIP / Exareme2 form, parsed and checked once.

Both sides use it: the central side builds requests from the researcher's input, a node parses the
body of every step into an :class:`AnalysisRequest` before any control looks at it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from mipflow.exceptions import RequestError
from mipflow.protocol.longitudinal import NAME as LONGITUDINAL, LongitudinalTransformer, parse_preprocessing

# --------------------------------------------------------------------------- request


def _names(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise RequestError(f"inputdata.{what} must be a list of variable codes, got {value!r}")
    out = []
    for item in value:
        if not isinstance(item, str) or not item:
            raise RequestError(f"inputdata.{what} holds {item!r}, which is not a variable code")
        out.append(item)
    return tuple(out)


@dataclass(frozen=True)
class AnalysisRequest:
    """One analysis request in the MIP / Exareme2 form.

    Attributes
    ----------
    data_model : str
        ``code:version`` of the data model, e.g. ``"dementia:0.1"``.
    datasets : tuple of str
        Datasets (values of the ``dataset`` variable) to analyse.
    x, y : tuple of str
        Covariates and variables of interest (variable codes).
    filters : dict or None
        A jQuery QueryBuilder rule group, applied by the node before the
        local step.
    parameters : Mapping
        Algorithm parameters as sent; see :meth:`SpecAlgorithm.params` for the
        resolved values with defaults.
    longitudinal : LongitudinalTransformer or None
        The request's ``preprocessing.longitudinal_transformer``
        (:mod:`mipflow.protocol.longitudinal`).  With one, ``x`` and ``y`` are the variables as
        the algorithm sees them (``<code>_diff`` under ``diff``), as Exareme2's controller
        rewrites them; :meth:`to_dict` gives the request as sent.
    """

    data_model: str
    datasets: tuple[str, ...]
    x: tuple[str, ...] = ()
    y: tuple[str, ...] = ()
    filters: dict | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    longitudinal: LongitudinalTransformer | None = None

    def __post_init__(self) -> None:
        # own copies, so that the caller's dicts cannot change the request
        object.__setattr__(self, "datasets", tuple(self.datasets))
        object.__setattr__(self, "x", tuple(self.x))
        object.__setattr__(self, "y", tuple(self.y))
        object.__setattr__(self, "parameters", copy.deepcopy(dict(self.parameters)))
        if self.filters is not None:
            object.__setattr__(self, "filters", copy.deepcopy(dict(self.filters)))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "AnalysisRequest":
        """Parse ``{"inputdata": {...}, "parameters": {...}}``.

        Unknown top-level keys (``type``, ``test_case_num``...) are ignored.

        Raises
        ------
        RequestError
            If a field is missing or has the wrong type.
        """
        if not isinstance(doc, Mapping):
            raise RequestError("an analysis request must be a JSON object")
        inputdata = doc.get("inputdata")
        if not isinstance(inputdata, Mapping):
            raise RequestError("an analysis request needs an 'inputdata' object")
        data_model = inputdata.get("data_model")
        if not isinstance(data_model, str) or ":" not in data_model:
            raise RequestError(
                f"inputdata.data_model must be written CODE:VERSION, got {data_model!r}"
            )
        datasets = _names(inputdata.get("datasets"), "datasets")
        if not datasets:
            raise RequestError("inputdata.datasets must name at least one dataset")
        filters = inputdata.get("filters")
        if filters is not None and not isinstance(filters, Mapping):
            raise RequestError("inputdata.filters must be a QueryBuilder rule group or null")
        parameters = doc.get("parameters") or {}
        if not isinstance(parameters, Mapping):
            raise RequestError("'parameters' must be a JSON object")
        x, y = _names(inputdata.get("x"), "x"), _names(inputdata.get("y"), "y")
        transformer = parse_preprocessing(doc.get("preprocessing"), x, y)
        return cls(
            data_model=data_model,
            datasets=datasets,
            x=x if transformer is None else transformer.x,
            y=y if transformer is None else transformer.y,
            filters=filters,  # __post_init__ takes deep copies
            parameters=parameters,
            longitudinal=transformer,
        )

    def to_dict(self) -> dict[str, Any]:
        """The request in its JSON form (round-trips through :meth:`from_dict`); with a transformer,
        its ``preprocessing`` and the variables as sent."""
        transformer = self.longitudinal
        doc: dict[str, Any] = {
            "inputdata": {
                "data_model": self.data_model,
                "datasets": list(self.datasets),
                "x": list(self.x if transformer is None else transformer.raw_x),
                "y": list(self.y if transformer is None else transformer.raw_y),
                "filters": copy.deepcopy(self.filters),
            },
            "parameters": copy.deepcopy(dict(self.parameters)),
        }
        if transformer is not None:
            doc["preprocessing"] = {LONGITUDINAL: transformer.to_dict()}
        return doc
