"""Design-matrix encoding shared by the algorithms: category codes of nominal variables,
dummy (treatment) columns with the patsy / Exareme2 names, per-level counts."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from mipflow.exceptions import DataModelError, RequestError
from mipflow.protocol.datamodel import DataModel, Variable

if TYPE_CHECKING:
    import pandas as pd

    from mipflow.algorithms.contract import ReleasedGroups

#: Name of the constant column of a design matrix (patsy / Exareme2 spelling).
INTERCEPT = "Intercept"
#: Safety stop for :func:`run_in_process`.


# --------------------------------------------------------------------------- data helpers


def category_codes(series: pd.Series, variable: Variable) -> pd.Series:
    """The values of a categorical column as enumeration codes (str), NA kept.

    Integer-valued numbers become ``"1"`` rather than ``"1.0"``.

    Raises
    ------
    DataModelError
        If a value is not one of the variable's enumeration codes.
    """
    import pandas as pd

    def as_code(value: Any) -> Any:
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            return None
        if isinstance(value, (bool, np.bool_)):
            return str(value)
        if isinstance(value, (int, np.integer)):
            return str(int(value))
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return str(int(value))
        return str(value)

    # convert each distinct value once (columns have few levels, many rows)
    positions, uniques = pd.factorize(series, use_na_sentinel=True)
    unique_codes = np.array([as_code(v) for v in uniques] + [None], dtype=object)
    codes = pd.Series(unique_codes[positions], index=series.index, dtype=object)  # -1 -> the None slot
    allowed = set(variable.enumeration_codes)
    bad = sorted({c for c in unique_codes if c is not None and c not in allowed})
    if bad:
        # the values themselves are rows' data: neither the reply nor the audit record names them
        raise DataModelError(
            f"variable {variable.code!r} holds values outside its enumerations in the data model: the node's "
            "admin must correct the data or the data model"
        )
    return codes


def numeric_values(series: pd.Series) -> np.ndarray:
    """A numeric column as a float array (NA become NaN), shape (n,)."""
    if series.dtype == np.float64:  # what the node's queries return: already numbers
        return series.to_numpy(dtype=np.float64, copy=True)
    import pandas as pd

    return pd.to_numeric(series, errors="raise").to_numpy(dtype=float, na_value=np.nan)


def sorted_levels(variable: Variable) -> tuple[str, ...]:
    """Enumeration codes in the order design matrices use (sorted, like patsy)."""
    return tuple(sorted(variable.enumeration_codes))


def design_columns(x: Sequence[str], model: DataModel, *, intercept: bool = True) -> list[str]:
    """Every candidate design column for covariates ``x``.

    Order (as in Exareme2's results, i.e. patsy's): ``Intercept``, then for
    each categorical covariate (in ``x`` order) one indicator ``var[level]``
    per enumeration code in sorted order, then the numerical covariates in
    ``x`` order.  The list is the same on every node, whatever levels a node
    holds; :func:`select_design_columns` drops the reference and absent levels.
    """
    cols = [INTERCEPT] if intercept else []
    for code in x:
        var = model.variable(code)
        if var.is_categorical:
            cols.extend(f"{code}[{level}]" for level in sorted_levels(var))
    cols.extend(code for code in x if not model.variable(code).is_categorical)
    return cols


def design_matrix(
    data: pd.DataFrame,
    x: Sequence[str],
    model: DataModel,
    *,
    columns: Sequence[str] | None = None,
    intercept: bool = True,
    center: Sequence[float] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Dummy-coded design matrix of complete-case rows.

    Parameters
    ----------
    data : pandas.DataFrame, n rows
        Complete case on ``x``.
    x : sequence of str
        Covariate codes; categorical ones are indicator-coded against the data
        model's enumerations, so every node builds the same columns.
    model : DataModel
    columns : sequence of str, optional
        Keep only these columns (names from :func:`design_columns`), in this
        order, e.g. the columns :func:`select_design_columns` chose.  Without
        it all candidate columns are returned (one indicator per level, which
        is not of full rank together with the intercept).
    intercept : bool
        Include the ``Intercept`` column.
    center : sequence of float, optional
        Subtracted from every column after the first (the intercept of a centred design), in order,
        as each column is written: the values of ``matrix[:, 1:] -= center`` after, in one pass.

    Returns
    -------
    matrix : numpy.ndarray, shape (n, p), Fortran-ordered
    names : list of str, length p
    """
    makers, names, n = _column_makers(data, x, model, columns=columns, intercept=intercept)
    if not names:
        return np.zeros((n, 0)), []
    if not n:
        return np.zeros((0, len(names))), names
    shifts = [None] * len(names)
    if center is not None:
        if len(center) != len(names) - 1:
            raise ValueError("center must have one value per design column after the first")
        shifts[1:] = [float(c) for c in center]
    # column-major: each column is one contiguous copy (a row-major stack gathers every value)
    matrix = np.empty((n, len(names)), order="F")
    for j, name in enumerate(names):
        if shifts[j] is None:
            matrix[:, j] = makers[name]()
        else:
            np.subtract(makers[name](), shifts[j], out=matrix[:, j])
    return matrix, names


def design_columns_of(
    data: pd.DataFrame,
    x: Sequence[str],
    model: DataModel,
    *,
    columns: Sequence[str] | None = None,
    intercept: bool = True,
) -> tuple[list[np.ndarray], list[str]]:
    """The columns of :func:`design_matrix` (same arguments, same values), each its own float64
    array: a numerical covariate already float64 is the frame's column itself (a read-only view, no
    copy), so sums over the design need not copy the selection (e.g.
    :func:`mipflow.algorithms.moments.column_moments`).

    Returns
    -------
    columns : list of numpy.ndarray, each shape (n,), read-only
    names : list of str
    """
    makers, names, _ = _column_makers(data, x, model, columns=columns, intercept=intercept)
    out = []
    for name in names:
        column = makers[name]()
        if column.flags.writeable:  # the frame's own column is never written through
            column = column.view()
            column.setflags(write=False)
        out.append(column)
    return out, names


def _column_makers(data: pd.DataFrame, x: Sequence[str], model: DataModel, *, columns: Sequence[str] | None,
                   intercept: bool) -> tuple[dict[str, Callable[[], np.ndarray]], list[str], int]:
    """A function making each design column (when called), the columns' names, the rows."""
    n = len(data)
    # each column is made when it is asked for (no second copy of the whole design)
    makers: dict[str, Callable[[], np.ndarray]] = {}
    if intercept:
        makers[INTERCEPT] = lambda: np.ones(n)
    for code in x:
        var = model.variable(code)
        if var.is_categorical:
            codes = category_codes(data[code], var).to_numpy()  # checked here, used or not
            for level in sorted_levels(var):
                makers[f"{code}[{level}]"] = lambda codes=codes, level=level: (codes == level).astype(float)
        else:
            makers[code] = lambda code=code: _numeric_view(data[code])
    names = design_columns(x, model, intercept=intercept)
    if columns is not None:
        missing = [c for c in columns if c not in makers]
        if missing:
            raise RequestError(f"unknown design columns: {', '.join(missing)}")
        names = list(columns)
    return makers, names, n


def _numeric_view(series: pd.Series) -> np.ndarray:
    """:func:`numeric_values` without its copy when the column is float64 already (it is copied into
    the design matrix at once)."""
    if series.dtype == np.float64:
        return series.to_numpy(dtype=np.float64)
    return numeric_values(series)


# --------------------------------------------------------------------------- rows read a block at a time


def level_positions(source: Any, variable: Variable) -> np.ndarray:
    """For rows left on disk (:class:`mipflow.node.query.snapshot_rows.SnapshotRows`): each of a
    categorical variable's stored level codes (``source.levels_of``) as its position in
    :func:`sorted_levels` (every stored level is one of the variable's enumeration codes).

    Returns
    -------
    numpy.ndarray of intp, shape (stored levels,)
    """
    order = {level: i for i, level in enumerate(sorted_levels(variable))}
    return np.array([order[level] for level in source.levels_of(variable.code)], dtype=np.intp)


class DesignSource:
    """The design columns of covariates ``x`` (:func:`design_columns` names, ``Intercept`` included)
    over rows read a block at a time: a :class:`mipflow.algorithms.moments.ColumnSource` of
    :func:`design_columns_of`'s values, bit for bit (a numerical covariate is its stored float64
    value, an indicator ``(level == ...)`` as 0.0 / 1.0), without the rows ever whole in memory.

    Parameters
    ----------
    source : SnapshotRows-like
        ``len()``, ``reader(codes)`` (float64 values of numerical variables, stored level codes of
        categorical ones) and ``levels_of(code)``; complete on ``x``.
    x : sequence of str
    model : DataModel
    indicators : mapping of str to (str, numpy.ndarray of bool), optional
        Further 0.0 / 1.0 columns by name: ``(variable code, stored level code -> bool)``, e.g. a
        logistic regression's response.
    """

    def __init__(self, source: Any, x: Sequence[str], model: DataModel,
                 indicators: Mapping[str, tuple[str, np.ndarray]] | None = None) -> None:
        self.source = source
        self.model = model
        self.x = list(x)
        self.indicators = dict(indicators or {})
        self.positions = {code: level_positions(source, model.variable(code))
                          for code in dict.fromkeys(self.x) if model.variable(code).is_categorical}

    def __len__(self) -> int:
        return len(self.source)

    def _spec(self, name: str) -> tuple[str, str | None, Any] | None:
        if name in self.indicators:
            code, table = self.indicators[name]
            return "lookup", code, np.asarray(table)
        if name == INTERCEPT:
            return "ones", None, None
        for code in dict.fromkeys(self.x):
            var = self.model.variable(code)
            if var.is_categorical and name.startswith(f"{code}[") and name.endswith("]"):
                level = name[len(code) + 1:-1]
                if level in var.enumeration_codes:
                    return "level", code, sorted_levels(var).index(level)
            elif not var.is_categorical and name == code:
                return "value", code, None
        return None

    def reader(self, names: Sequence[str]) -> Callable[[int], list[np.ndarray]]:
        """A pass over the rows: a function giving the next ``m`` values of each design column of
        ``names`` (float64 arrays, valid until its next call)."""
        found = [self._spec(name) for name in names]
        missing = [name for name, spec in zip(names, found) if spec is None]
        if missing:  # as design_matrix says it
            raise RequestError(f"unknown design columns: {', '.join(missing)}")
        specs = [spec for spec in found if spec is not None]
        codes = list(dict.fromkeys(code for _, code, _ in specs if code is not None))
        inner = self.source.reader(codes)

        def next_rows(m: int) -> list[np.ndarray]:
            raw = dict(zip(codes, inner(m)))
            positions = {code: self.positions[code][raw[code]] for code in codes if code in self.positions}
            out = []
            for kind, code, arg in specs:
                if kind == "ones":
                    out.append(np.ones(m))
                elif kind == "value":
                    out.append(raw[code])
                elif kind == "level":
                    out.append((positions[code] == arg).astype(float))
                else:
                    out.append(arg[raw[code]].astype(float))
            return out

        return next_rows


#: Rows asked of a source at a time by :func:`streamed_counts`.
COUNT_BLOCK = 262_144


def streamed_counts(source: Any, x: Sequence[str], model: DataModel,
                    response: tuple[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The counts of categorical covariates over rows read a block at a time (one pass over their
    stored level codes), as the frame's functions give them: ``level_counts`` (:func:`level_counts`),
    ``joint`` (:func:`mipflow.algorithms.linear_regression.joint_cell_counts`) and, with a
    ``response`` ``(variable code, stored level code -> is positive)``, ``positives`` (rows of the
    positive class) and ``class_cells`` (positive and other rows per level of each covariate, the
    logistic regression's ``_class_cells``)."""
    cats = [code for code in dict.fromkeys(x) if model.variable(code).is_categorical]
    sizes = {code: len(sorted_levels(model.variable(code))) for code in cats}
    positions = {code: level_positions(source, model.variable(code)) for code in cats}
    pairs = [(a, b) for i, a in enumerate(cats) for b in cats[i + 1:]]
    rows = {code: np.zeros(sizes[code], dtype=np.int64) for code in cats}
    positive_rows = {code: np.zeros(sizes[code], dtype=np.int64) for code in cats}
    joint = {pair: np.zeros(sizes[pair[0]] * sizes[pair[1]], dtype=np.int64) for pair in pairs}
    positives = 0
    codes = cats + ([response[0]] if response is not None else [])
    if codes:
        next_rows = source.reader(codes)
        for start in range(0, len(source), COUNT_BLOCK):
            blocks = next_rows(min(COUNT_BLOCK, len(source) - start))
            at = {code: positions[code][block] for code, block in zip(cats, blocks)}
            is_positive = np.asarray(response[1])[blocks[-1]] if response is not None else None
            if is_positive is not None:
                positives += int(np.count_nonzero(is_positive))
            for code in cats:
                rows[code] += np.bincount(at[code], minlength=sizes[code])
                if is_positive is not None:
                    positive_rows[code] += np.bincount(at[code][is_positive], minlength=sizes[code])
            for a, b in pairs:
                joint[(a, b)] += np.bincount(at[a] * sizes[b] + at[b], minlength=sizes[a] * sizes[b])
    class_cells: list[int] = []
    for code in cats:
        for level in range(sizes[code]):
            class_cells += [int(positive_rows[code][level]), int(rows[code][level] - positive_rows[code][level])]
    return {"level_counts": {code: [int(c) for c in rows[code]] for code in x if code in rows},
            "joint": [int(c) for pair in pairs for c in joint[pair]],
            "positives": positives, "class_cells": class_cells}


def level_counts(data: pd.DataFrame, codes: Sequence[str], model: DataModel) -> dict[str, list[int]]:
    """Rows per level (sorted enumeration order) of each categorical variable."""
    out: dict[str, list[int]] = {}
    for code in codes:
        var = model.variable(code)
        if var.is_categorical:
            values = category_codes(data[code], var)
            counts = values.value_counts()
            out[code] = [int(counts.get(level, 0)) for level in sorted_levels(var)]
    return out


def dummy_level_groups(x: Sequence[str], model: DataModel) -> tuple[ReleasedGroups, ...]:
    """The released groups of a dummy-encoded design (``Algorithm.released_groups``, ADR 0051): the joint
    cells of each pair of nominal covariates of ``x`` (every level of each; their margins are each covariate's
    levels), or the one nominal covariate's levels.

    A dummy column's sums in a design's moments, Gram matrix, score or information are sums over its level's
    rows (the level's count, and sums of the response and of every numerical covariate, weighted or not):
    first moments over a set of rows, held to ``nfilter_tab`` across releases.  The product of two dummy
    columns of two covariates is the indicator of their joint cell, so a design's co-moments (a Gram matrix,
    ``X' W X`` at a constant weight, a risk set's ``S2``) hold every joint cell's count (``cell_n``, checked
    per release at ``nfilter_tab``): a count over a set of rows, held the same way across releases (ADR 0051
    amended for the sixteenth review; a cell less a cohort of all but one of its rows counts that one).
    Declared by every algorithm that dummy-encodes ``x`` (linear and logistic regression, GEE, linear mixed
    model, Cox regression).  No product of three dummies enters a design's sums: no three-way cell.
    """
    from mipflow.algorithms.contract import ReleasedGroups

    nominal = [code for code in dict.fromkeys(x) if model.variable(code).is_categorical]
    if len(nominal) < 2:
        return tuple(ReleasedGroups((code,)) for code in nominal)
    return tuple(ReleasedGroups((a, b)) for i, a in enumerate(nominal) for b in nominal[i + 1:])


def declared_cell_counts(data: pd.DataFrame, groupings: Sequence[ReleasedGroups], model: DataModel) -> list[int]:
    """Rows in each non-empty cell (every column) of each of ``groupings`` on the frame ``data``: the sizes of
    the finest groups a release declares (``Algorithm.released_groups``), for its ``cell_n`` (checked at the
    group threshold, never sent, ADR 0031).

    The group memory leaves a release holding a group under the threshold to the release check (ADR 0051,
    "Where"): every declared cell's size must be among the release's checked counts, or that release would
    skip the group rules.  Margins are sums of cells (0 or at least the threshold when every cell is)."""
    import pandas as pd

    out: list[int] = []
    for grouping in groupings:
        codes = [grouping_codes(data, grouping, i, model) for i in range(len(grouping.columns))]
        released = np.ones(len(data), dtype=bool)
        for column_codes in codes:
            released &= pd.notna(column_codes)
        if not released.any():
            continue
        frame = pd.DataFrame({str(i): column_codes[released] for i, column_codes in enumerate(codes)})
        out += [int(n) for n in frame.groupby(list(frame.columns), sort=True).size()]
    return out


def class_level_counts(data: pd.DataFrame, x: Sequence[str], model: DataModel, positive: np.ndarray) -> list[int]:
    """Rows of the class ``positive`` (a boolean per row of ``data``) and of the rest within each level of every
    nominal covariate of ``x``: the class x level cells a release holds when the class is not the declared one's
    rows exactly (Cox's events up to the end of follow-up: a row followed beyond it is censored there, so its event
    is not in ``event_x``), for ``cell_n`` beside :func:`declared_cell_counts`."""
    positive = np.asarray(positive, dtype=bool)
    out: list[int] = []
    for code in dict.fromkeys(x):
        var = model.variable(code)
        if not var.is_categorical:
            continue
        codes = category_codes(data[code], var).to_numpy(dtype=object)
        for level in sorted_levels(var):
            at = codes == level
            out += [int(np.count_nonzero(at & positive)), int(np.count_nonzero(at & ~positive))]
    return out


def class_groups(y: str, x: Sequence[str], model: DataModel, classes: Sequence[str] | None = None,
                 edges: Sequence[float] | None = None) -> tuple[ReleasedGroups, ...]:
    """The released groups of a binary response (``Algorithm.released_groups``, ADR 0051 amended for the
    fifteenth review): its classes, and each class within each level of every nominal covariate of ``x``.

    A model's score at its starting point (logistic regression's gradient at zero, a GEE's first IRLS
    sums ``X' W z``, Cox's ``event_x``) is ``X' y`` up to sums over the whole cohort: the positive class's
    count, its sums of every numerical covariate and its count in every level of a nominal one (a joint
    cell).  ``classes``: the levels of a nominal ``y`` that are positive (every other level is the rest,
    the negative class); ``edges``: instead, a numerical 0/1 ``y``'s classes as bins (``(0, 0.5, 1)``).
    Both classes are cells (the negative class is the cohort less the positive one), held, like the
    dummy levels, to ``nfilter_tab``.
    """
    from mipflow.algorithms.contract import ReleasedGroups

    nominal = [c for c in x if model.variable(c).is_categorical]
    if edges is not None:
        cut = tuple(float(e) for e in edges)
        if not nominal:
            return (ReleasedGroups((y,), bins=(cut,)),)
        return tuple(ReleasedGroups((y, c), bins=(cut, None)) for c in nominal)
    positive = tuple(str(c) for c in classes or ())
    if not nominal:
        return (ReleasedGroups((y,), (positive,), rest=True),)
    return tuple(ReleasedGroups((y, c), (positive, None), rest=True) for c in nominal)


def bin_labels(edges: Sequence[float]) -> list[str]:
    """Each bin's level in a released group's kind (ADR 0051): ``[lo, hi)``, the last ``[lo, hi]``
    (``numpy.histogram``'s bins)."""
    cut = [float(e) for e in edges]
    last = len(cut) - 2
    return [f"[{lo!r}, {hi!r}{']' if i == last else ')'}" for i, (lo, hi) in enumerate(zip(cut[:-1], cut[1:]))]


#: The level of a column's rows outside its declared levels (``ReleasedGroups.rest``) in a group's kind:
#: the declared levels after this mark (no enumeration code starts with it).
REST = "\u2260"


def grouping_codes(data: pd.DataFrame, grouping: ReleasedGroups, i: int, model: DataModel) -> np.ndarray:
    """Column ``i`` of ``grouping``: each row's level (an enumeration code, a bin's label or the rest's),
    None for a row in no released cell of it (missing, a level not declared, a value outside the bins)."""
    column = grouping.columns[i]
    cut = None if grouping.bins is None else grouping.bins[i]
    if cut is not None:
        values = numeric_values(data[column])
        labels = np.array([*bin_labels(cut), None], dtype=object)
        at = np.searchsorted(np.asarray(cut, dtype=float), values, side="right") - 1
        at[values == cut[-1]] = len(cut) - 2  # the last bin is closed
        at[(at < 0) | (at > len(cut) - 2) | np.isnan(values)] = -1
        return labels[at]
    codes = category_codes(data[column], model.variable(column)).to_numpy(dtype=object)
    wanted = None if grouping.levels is None else grouping.levels[i]
    if wanted is None:
        return codes
    allowed = set(map(str, wanted))
    other = REST + "|".join(sorted(allowed)) if grouping.rest else None
    return np.array([c if c is None or c in allowed else other for c in codes], dtype=object)


def sum_level_counts(parts: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, list[int]]:
    """Element-wise sum of :func:`level_counts` from several nodes."""
    total: dict[str, list[int]] = {}
    for part in parts:
        for code, counts in part.items():
            prev = total.setdefault(code, [0] * len(counts))
            total[code] = [a + int(b) for a, b in zip(prev, counts)]
    return total


def select_design_columns(
    x: Sequence[str],
    model: DataModel,
    counts: Mapping[str, Sequence[int]],
    *,
    intercept: bool = True,
) -> list[str]:
    """Full-rank treatment coding from pooled level counts.

    For each categorical covariate the levels present in the pooled data are
    sorted; the first is the reference and gets no column, and absent levels
    get none either (Exareme2's / patsy's coding of the pooled data).
    """
    keep = set(design_columns(x, model, intercept=intercept))
    for code in x:
        var = model.variable(code)
        if var.is_categorical:
            levels = sorted_levels(var)
            present = [lvl for lvl, c in zip(levels, counts.get(code, [0] * len(levels))) if c > 0]
            for level in levels:
                if level not in present[1:]:
                    keep.discard(f"{code}[{level}]")
    return [c for c in design_columns(x, model, intercept=intercept) if c in keep]


def reference_levels(x: Sequence[str], model: DataModel, counts: Mapping[str, Sequence[int]]) -> dict[str, str]:
    """Each nominal covariate's reference level in :func:`select_design_columns`' coding: the first
    level (sorted) present in the pooled level counts."""
    out: dict[str, str] = {}
    for code in x:
        var = model.variable(code)
        if var.is_categorical:
            levels = sorted_levels(var)
            present = [lvl for lvl, c in zip(levels, counts.get(code, [0] * len(levels))) if c > 0]
            if present:
                out[code] = present[0]
    return out


def covariates_block(x: Sequence[str], model: DataModel, columns: Sequence[str],
                     references: Mapping[str, str]) -> list[dict[str, Any]]:
    """What a regression result says of its covariates, from the data model and the chosen coding
    only (no row): for readers and the results pages' plots (fitted trajectories by group).

    Returns
    -------
    list of dict
        Per covariate in ``x`` order: ``{"code", "type": "nominal", "reference", "levels"}`` (the
        reference first, then the levels with a design column) or ``{"code", "type": "numerical",
        "range"}`` (the data model's declared ``[min, max]``, or None), and ``"label"``.
    """
    out: list[dict[str, Any]] = []
    present = set(columns)
    for code in x:
        var = model.variable(code)
        if var.is_categorical:
            reference = references.get(code)
            levels = ([reference] if reference is not None else []) + [
                lvl for lvl in sorted_levels(var) if f"{code}[{lvl}]" in present]
            out.append({"code": code, "label": var.label, "type": "nominal", "reference": reference,
                        "levels": levels})
        else:
            declared = var.min_value is not None and var.max_value is not None
            out.append({"code": code, "label": var.label, "type": "numerical",
                        "range": [float(var.min_value), float(var.max_value)] if declared else None})
    return out
