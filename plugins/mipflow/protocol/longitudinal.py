"""The MIP's longitudinal transformer as a request carries it (Exareme2's ``preprocessing``).

Exareme2 carries it beside the algorithm's parameters::

    {"inputdata": {...}, "parameters": {...},
     "preprocessing": {"longitudinal_transformer": {
         "visit1": "BL", "visit2": "FL1",
         "strategies": {"lefthippocampus": "diff", "gender": "first"}}}}

and mipflow accepts exactly that shape.  Each variable of ``x`` and ``y`` gets one strategy:
``first`` (its value at ``visit1``), ``second`` (at ``visit2``) or, for a numerical variable only,
``diff`` (``second - first``), which the algorithm then sees as the variable ``<code>_diff``
(Exareme2's name, so results read the same).  This module parses and checks it (from the request
and the data model, no rows); :mod:`mipflow.algorithms.longitudinal` applies it to a node's rows.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel, Variable

#: The transformer's name in ``preprocessing`` (and in Exareme2's catalogue).
NAME = "longitudinal_transformer"
#: The strategies a variable may take; ``diff`` only for numerical variables.
STRATEGIES = ("diff", "first", "second")
#: The data-model variable that names a row's visit (its enumerations are the visits).
VISIT_VARIABLE = "visitid"
#: The suffix of a variable under ``diff``.
DIFF_SUFFIX = "_diff"


@dataclass(frozen=True)
class LongitudinalTransformer:
    """One request's transformer, checked against the request's own variables.

    Attributes
    ----------
    visit1, visit2 : str
        Codes of ``visitid``.
    strategies : tuple of (str, str)
        ``(variable, strategy)`` for every variable of ``raw_y`` then ``raw_x``, once each.
    raw_x, raw_y : tuple of str
        The request's variables as sent (before ``diff`` renames them).
    """

    visit1: str
    visit2: str
    strategies: tuple[tuple[str, str], ...]
    raw_x: tuple[str, ...]
    raw_y: tuple[str, ...]

    @classmethod
    def from_request(cls, params: Any, raw_x: tuple[str, ...], raw_y: tuple[str, ...]) -> "LongitudinalTransformer":
        """The transformer of ``preprocessing.longitudinal_transformer``, checked without the data model.

        Raises
        ------
        RequestError
            Visits missing or not text, equal visits, a strategy not among :data:`STRATEGIES`, or
            strategies not given for exactly the request's variables.
        """
        if not isinstance(params, Mapping):
            raise RequestError(f"preprocessing.{NAME} must be an object with visit1, visit2 and strategies")
        unknown = sorted(set(params) - {"visit1", "visit2", "strategies"})
        if unknown:
            raise RequestError(f"{NAME} has no parameter {', '.join(map(repr, unknown))}; "
                               "known: visit1, visit2, strategies")
        visits = []
        for which in ("visit1", "visit2"):
            value = params.get(which)
            if not isinstance(value, str) or not value:
                raise RequestError(f"{NAME} needs the parameter {which!r}: a visit code of {VISIT_VARIABLE!r}")
            visits.append(value)
        if visits[0] == visits[1]:
            raise RequestError(f"{NAME}: visit1 and visit2 must be two different visits")
        strategies = params.get("strategies")
        if not isinstance(strategies, Mapping) or not strategies:
            raise RequestError(f"{NAME} needs the parameter 'strategies': an object giving each variable of "
                               "x and y one of " + ", ".join(STRATEGIES))
        requested = tuple(dict.fromkeys(raw_y + raw_x))
        if set(strategies) != set(requested):
            raise RequestError(f"{NAME}: a strategy must be given for every variable in x and y, and only "
                               f"for those (missing: {', '.join(sorted(set(requested) - set(strategies))) or 'none'}; "
                               f"not requested: {', '.join(sorted(map(str, set(strategies) - set(requested)))) or 'none'})")
        for var, strategy in strategies.items():
            if strategy not in STRATEGIES:
                raise RequestError(f"{NAME}: the strategy of {var!r} must be one of {', '.join(STRATEGIES)}, "
                                   f"got {strategy!r}")
        return cls(visit1=visits[0], visit2=visits[1],
                   strategies=tuple((var, str(strategies[var])) for var in requested),
                   raw_x=tuple(raw_x), raw_y=tuple(raw_y))

    @property
    def strategy(self) -> dict[str, str]:
        """Variable -> strategy."""
        return dict(self.strategies)

    def name(self, variable: str) -> str:
        """What the algorithm calls ``variable``: ``<code>_diff`` under ``diff``, else its code."""
        return variable + DIFF_SUFFIX if self.strategy.get(variable) == "diff" else variable

    @property
    def x(self) -> tuple[str, ...]:
        """The covariates as the algorithm sees them."""
        return tuple(self.name(v) for v in self.raw_x)

    @property
    def y(self) -> tuple[str, ...]:
        """The variables of interest as the algorithm sees them."""
        return tuple(self.name(v) for v in self.raw_y)

    def to_dict(self) -> dict[str, Any]:
        """The wire form (``preprocessing.longitudinal_transformer``)."""
        return {"visit1": self.visit1, "visit2": self.visit2, "strategies": dict(self.strategies)}

    def describe(self) -> dict[str, Any]:
        """What a result says about the transformation applied."""
        return {**self.to_dict(), "variables": {v: self.name(v) for v, _ in self.strategies}}

    # -- against the data model ----------------------------------------------------------

    def check(self, model: DataModel) -> None:
        """Check the transformer against the data model (from the request alone, no rows).

        Raises
        ------
        RequestError
            The model has no ``visitid``, a visit is not one of its codes, a variable is not in the
            model, a ``diff`` is asked of a variable that is not numerical, or a ``<code>_diff``
            name is taken by a variable of the model.
        """
        if VISIT_VARIABLE not in model or not model.variables[VISIT_VARIABLE].is_categorical:
            raise RequestError(f"{NAME}: data model {model.key} has no categorical {VISIT_VARIABLE!r} "
                               "variable naming the visits")
        codes = model.variables[VISIT_VARIABLE].enumeration_codes
        for which, visit in (("visit1", self.visit1), ("visit2", self.visit2)):
            if visit not in codes:
                raise RequestError(f"{NAME}: {which} {visit!r} is not a visit of {model.key} "
                                   f"({', '.join(codes)})")
        for var, strategy in self.strategies:
            if var not in model:
                raise RequestError(f"variable {var!r} is not in data model {model.key}")
            if var in (VISIT_VARIABLE, "dataset"):
                raise RequestError(f"{NAME}: {var!r} cannot be transformed (it identifies the rows)")
            variable = model.variables[var]
            if strategy == "diff":
                if not variable.is_numerical:
                    raise RequestError(f"{NAME}: cannot take the difference of the nominal variable {var!r}; "
                                       "a nominal variable takes 'first' or 'second' only")
                if self.name(var) in model:
                    raise RequestError(f"{NAME}: {self.name(var)!r} is a variable of {model.key} already")

    def model_view(self, model: DataModel) -> DataModel:
        """The data model as the algorithm sees it: ``model`` with a variable ``<code>_diff`` for each
        ``diff`` (numerical, real, bounds ``[min - max, max - min]`` when the variable has both),
        after :meth:`check`.  Its key and table are ``model``'s."""
        self.check(model)
        added: dict[str, Variable] = {}
        for var, strategy in self.strategies:
            if strategy != "diff":
                continue
            base = model.variables[var]
            span = (None if base.min_value is None or base.max_value is None
                    else base.max_value - base.min_value)
            added[self.name(var)] = replace(
                base, code=self.name(var), label=f"{base.label} ({self.visit2} - {self.visit1})", sql_type="real",
                min_value=None if span is None else -span, max_value=span,
                description=f"{var} at {self.visit2} minus {var} at {self.visit1}")
        return replace(model, variables={**model.variables, **added})


def parse_preprocessing(preprocessing: Any, raw_x: tuple[str, ...],
                        raw_y: tuple[str, ...]) -> LongitudinalTransformer | None:
    """The transformer of a request's ``preprocessing`` (None when there is none).

    Raises
    ------
    RequestError
        ``preprocessing`` is not an object, names another transformer, or its
        :meth:`LongitudinalTransformer.from_request` fails.
    """
    if preprocessing is None or preprocessing == {}:
        return None
    if not isinstance(preprocessing, Mapping):
        raise RequestError("'preprocessing' must be an object such as {\"longitudinal_transformer\": {...}}")
    unknown = sorted(str(k) for k in preprocessing if k != NAME)
    if unknown:
        raise RequestError(f"unknown transformer {', '.join(map(repr, unknown))}; available: {NAME}")
    return LongitudinalTransformer.from_request(preprocessing[NAME], raw_x, raw_y)
