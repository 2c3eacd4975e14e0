"""The MIP's longitudinal transformer at a node: two visits of each patient turned into one row.

The request's transformer (``preprocessing.longitudinal_transformer``, Exareme2's shape) is parsed
and checked by :mod:`mipflow.protocol.longitudinal`.  A node applies it to its own rows after
reading them and before the local step (:func:`transform_rows`): per patient (``_pid`` within a
dataset) the one row of each visit; a patient without exactly one row at each visit, or without a
value its strategies need, is dropped.  The algorithm then sees one row per patient, its variables
under ``diff`` named ``<code>_diff`` in the data model's view (:func:`model_view`).  Only the
algorithms in :data:`COMPATIBLE` take it (:func:`check_compatible`).

This module is imported by the catalogue (and so by DAG files): pandas is imported inside
:func:`transform_rows` only.  Where it runs and what it releases:
``docs/adr/0034-longitudinal-transformer.md``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.longitudinal import NAME, STRATEGIES, VISIT_VARIABLE, LongitudinalTransformer

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

#: The algorithms that take a transformer (its spec's ``compatible_algorithms``).
COMPATIBLE = ("anova", "anova_oneway", "linear_regression", "linear_regression_cv", "logistic_regression",
              "logistic_regression_cv", "naive_bayes_gaussian_cv", "naive_bayes_categorical_cv")

#: The transformer's specification in Exareme2's form (forms and ``mipflow algorithms list``).
SPEC: dict[str, Any] = {
    "name": NAME,
    "label": "Longitudinal Transformer",
    "desc": "Longitudinal transformation between two visits: per patient, each variable's value at the "
            "first or the second visit, or (numerical variables) their difference, second - first. "
            "Patients without both visits are left out and counted.",
    "parameters": {
        "visit1": {"label": "1st Visit", "desc": "The earlier visit identifier.", "types": ["text"],
                   "notblank": True, "multiple": False,
                   "enums": {"type": "fixed_var_CDE_enums", "source": [VISIT_VARIABLE]}},
        "visit2": {"label": "2nd Visit", "desc": "The later visit identifier.", "types": ["text"],
                   "notblank": True, "multiple": False,
                   "enums": {"type": "fixed_var_CDE_enums", "source": [VISIT_VARIABLE]}},
        "strategies": {"label": "Strategies", "desc": "Select a strategy for each variable.", "types": ["dict"],
                       "notblank": True, "multiple": False,
                       "dict_keys_enums": {"type": "input_var_names", "source": ["x", "y"]},
                       "dict_values_enums": {"type": "list", "source": list(STRATEGIES)}},
    },
    "compatible_algorithms": list(COMPATIBLE),
}


def check_compatible(algorithm: str, transformer: LongitudinalTransformer | None) -> None:
    """Refuse a transformer for an algorithm that does not take one.

    Raises
    ------
    RequestError
        ``algorithm`` is not in :data:`COMPATIBLE`.
    """
    if transformer is not None and algorithm not in COMPATIBLE:
        raise RequestError(f"transformer {NAME!r} is not available for algorithm {algorithm!r}; "
                           f"it is for {', '.join(COMPATIBLE)}")


def model_view(model: DataModel, request: Any) -> DataModel:
    """The data model the algorithm of ``request`` sees: ``model`` itself without a transformer."""
    transformer = getattr(request, "longitudinal", None)
    return model if transformer is None else transformer.model_view(model)


def result_block(transformer: LongitudinalTransformer, rows: dict[str, int],
                 dropped_by: dict[str, int | None]) -> dict[str, Any]:
    """What a result says of the transformation applied (``longitudinal_transformer``).

    Parameters
    ----------
    rows : dict
        Node -> rows its local step used (one per patient kept).
    dropped_by : dict
        Node -> patients it dropped, as released (None: under its thresholds, not released).

    Returns
    -------
    dict
        The transformer (visits, strategies, each variable's name in the result), ``patients_used``
        (the sum of the nodes' rows), ``patients_dropped`` (the sum, when every node contributing
        released its count, else None) and ``dropped_by_node``.
    """
    counts = [dropped_by.get(name) for name in rows]
    total = sum(c for c in counts if c is not None) if all(c is not None for c in counts) else None
    return {**transformer.describe(), "patients_used": int(sum(rows.values())), "patients_dropped": total,
            "dropped_by_node": {name: dropped_by.get(name) for name in rows},
            "note": "one row per patient with one row at each visit and the values its strategies need; "
                    "a node's count of dropped patients is released only at or above its thresholds"}


# --------------------------------------------------------------------------- the rows


@dataclass(frozen=True)
class Transformed:
    """The rows of one node after the transformation (they stay at the node).

    Attributes
    ----------
    data : pandas.DataFrame
        One row per patient kept: ``dataset``, the row identity ``_pid`` and ``_visit``
        (``"<visit1>><visit2>"``), and the transformed variables under the names the algorithm
        uses; ordered by ``_pid`` then ``dataset``.
    used : numpy.ndarray of bool
        Over the input rows: the rows of both visits of the patients kept.
    candidates : numpy.ndarray of bool
        Over the input rows: the rows of either visit (every patient the transformation looked at).
    patients_seen : int
        Patients with a row at either visit.
    """

    data: pd.DataFrame
    used: np.ndarray
    candidates: np.ndarray
    patients_seen: int

    @property
    def patients_used(self) -> int:
        return len(self.data)

    @property
    def patients_dropped(self) -> int:
        return self.patients_seen - len(self.data)


def transform_rows(frame: pd.DataFrame, transformer: LongitudinalTransformer) -> Transformed:
    """Apply ``transformer`` to one node's rows.

    Parameters
    ----------
    frame : pandas.DataFrame
        The selection (datasets and filters applied, incomplete rows kept) with columns ``dataset``,
        ``_pid``, ``visitid`` and the transformer's variables (numerical ones as float64,
        nominal ones as codes), as :func:`mipflow.node.query.read.select_frame` gives them with
        ``row_identity=True``.

    Returns
    -------
    Transformed
        A patient is kept when they have exactly one row at ``visit1`` and one at ``visit2`` and
        every value their strategies read is present.
    """
    import numpy as np
    import pandas as pd

    visits = frame[VISIT_VARIABLE].astype(object).to_numpy()
    at1 = visits == transformer.visit1
    at2 = visits == transformer.visit2
    candidates = at1 | at2
    patient = pd.Series(frame["dataset"].astype(str).to_numpy() + "\x1f" + frame["_pid"].astype(str).to_numpy(),
                        index=frame.index)
    counts1 = patient[at1].value_counts()
    counts2 = patient[at2].value_counts()
    seen = patient[candidates].nunique()
    both = counts1.index[counts1.eq(1)].intersection(counts2.index[counts2.eq(1)])
    first = frame[at1 & patient.isin(both).to_numpy()].set_index(patient[at1 & patient.isin(both).to_numpy()])
    second = frame[at2 & patient.isin(both).to_numpy()].set_index(patient[at2 & patient.isin(both).to_numpy()])
    second = second.loc[first.index]
    out = {"dataset": first["dataset"].to_numpy(dtype=object), "_pid": first["_pid"].to_numpy(dtype=object)}
    complete = np.ones(len(first), dtype=bool)
    for var, strategy in transformer.strategies:
        v1, v2 = first[var].to_numpy(), second[var].to_numpy()
        if strategy == "first":
            value, needed = v1, pd.notna(v1)
        elif strategy == "second":
            value, needed = v2, pd.notna(v2)
        else:
            value = v2.astype(np.float64) - v1.astype(np.float64)
            needed = pd.notna(v1) & pd.notna(v2)
        out[transformer.name(var)] = value
        complete &= np.asarray(needed, dtype=bool)
    data = pd.DataFrame(out, index=first.index)[complete]
    kept = patient.isin(data.index).to_numpy()
    data = data.sort_values(["_pid", "dataset"], kind="stable").reset_index(drop=True)
    data.insert(2, "_visit", f"{transformer.visit1}>{transformer.visit2}")
    for var, strategy in transformer.strategies:  # a nominal column stays object (codes), a number float64
        name = transformer.name(var)
        if strategy == "diff" or frame[var].dtype == np.float64:
            data[name] = data[name].astype(np.float64)
        else:
            data[name] = data[name].astype(object)
    return Transformed(data=data, used=candidates & kept, candidates=candidates, patients_seen=int(seen))
