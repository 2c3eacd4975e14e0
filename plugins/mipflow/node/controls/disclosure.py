"""A node's disclosure controls, applied before anything leaves the node.

The thresholds are node settings (:class:`mipflow.node.home.NodeSettings`), with
the MIP's ``min_row_count`` (10) and DataSHIELD's ``nfilter.*`` defaults; see
``docs/adr/0002-disclosure-controls.md`` for what each one protects against.

Checks run in three places:

1. :meth:`DisclosureControls.check_strings` / :meth:`check_request` on the
   request itself (string lengths, number of categorical levels);
2. :meth:`check_rows` on the number of rows the step would use (after
   filters and complete-case), and the parameters-per-row ratio of models;
3. :meth:`release` on the aggregates: small non-zero count cells are
   suppressed (``None``), raw extremes are refused, groups smaller than
   ``nfilter_tab`` (or the setting the algorithm's ``group_count_setting`` names, when larger:
   groups released with their mean and spread, k-means clusters among them, ADR 0050) refuse
   the whole step; a grouped histogram's cells are
   suppressed consistently with its overall bins and row count
   (:mod:`mipflow.node.controls.suppression`, ADR 0031); a weighted sum that fewer than
   ``min_row_count`` rows dominate refuses the step (``dominated_sums``, ADR 0053; across releases,
   :mod:`mipflow.node.controls.weighted_ledger`, ADR 0058).  An algorithm may first coarsen its
   aggregates to the node's ``nfilter_tab`` (``coarsen_for_release``, e.g.
   survival time bins merged until no count is small); the checks still run.

What each algorithm needs checked it states itself (privacy capabilities of
:class:`mipflow.algorithms.contract.Algorithm`): ``parameter_count`` (for
``nfilter_glm``), ``fold_sizes`` and ``coarsen_for_release``.
"""
from __future__ import annotations

from typing import Any, Iterable

from mipflow.algorithms.contract import Algorithm
from mipflow.algorithms.weighted import WEIGHTED_ROWS
from mipflow.node.controls.suppression import is_histogram_release, suppress_histograms
from mipflow.node.home import NodeSettings
from mipflow.protocol.datamodel import DataModel
from mipflow.exceptions import DisclosureError, RequestError

#: The key of counts the node checks against ``nfilter_tab`` and does not send: the joint cells
#: of categorical covariates that a model's co-moments hold (ADR 0031).
CHECKED_ONLY = "cell_n"

#: Keys that would carry a raw extreme value of one patient.
RAW_EXTREME_KEYS = frozenset({"min", "max", "minimum", "maximum", "q1", "q2", "q3", "median", "quantiles"})


class DisclosureControls:
    """The disclosure rules of one node, from its settings."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings

    # -- metadata -------------------------------------------------------------
    def released_count(self, count: int) -> int | None:
        """A dataset row count, or ``None`` when it is below ``min_row_count``."""
        return int(count) if count >= self.settings.min_row_count else None

    # -- the request ------------------------------------------------------------
    def check_strings(self, doc: Any) -> None:
        """Refuse any string longer than ``nfilter_string`` anywhere in the request."""
        limit = self.settings.nfilter_string
        for value in _strings(doc):
            if len(value) > limit:
                raise DisclosureError(f"a string in the request is longer than nfilter_string ({limit})",
                                      control="nfilter_string")

    def check_request(self, algorithm: Algorithm, request: Any, model: DataModel) -> None:
        """Refuse categorical variables with more levels than ``nfilter_levels_max``, and releases
        shaped by a range the data model does not declare (issue 14.4).

        An algorithm whose release is binned over a variable's range names the variables whose
        ``minValue``/``maxValue`` it needs in ``undeclared_ranges(request, model)`` (e.g.
        :class:`~mipflow.algorithms.multiple_histograms.MultipleHistograms`).  Without a declared
        range the bins would be laid over the rows' own extremes, or over a range the central site
        chooses; a node that does not release extremes (``release_extremes`` 0) refuses such a
        request before reading a row.  Both decisions depend on the request, the data model and
        the settings only.
        """
        limit = self.settings.nfilter_levels_max
        for code in algorithm.variables(request):
            var = model.variable(code)
            if var.is_categorical and len(var.enumerations) > limit:
                raise DisclosureError(f"variable {code!r} has {len(var.enumerations)} levels, more than "
                                      f"nfilter_levels_max ({limit})", control="nfilter_levels_max")
        undeclared_ranges = getattr(algorithm, "undeclared_ranges", None)
        if undeclared_ranges is not None and not self.settings.release_extremes:
            missing = undeclared_ranges(request, model)
            if missing:
                raise RequestError(
                    f"{algorithm.name} bins {', '.join(map(repr, missing))} over the range the data model "
                    "declares (minValue and maxValue), and the data model declares none: ask the data "
                    "model's maintainers to declare it, or analyse another variable")

    def check_rows(self, algorithm: Algorithm, request: Any, model: DataModel, n_rows: int) -> None:
        """Refuse a step on fewer than ``min_row_count`` rows, a filter selecting fewer than
        ``nfilter_subset`` rows, or a model with more than ``nfilter_glm`` parameters per row.

        The messages state the rule, its threshold (a setting) and what the researcher can
        change, never the number of rows or a fold's size (issue 14.2): two nodes refusing for
        the same reason answer the same bytes, whatever their data.  The exact count stays in
        the node's audit record (``rows``).
        """
        s = self.settings
        if n_rows < s.min_row_count:
            raise DisclosureError(f"fewer rows match than min_row_count ({s.min_row_count}): widen the filter, "
                                  "add datasets or choose variables with fewer missing values",
                                  control="min_row_count")
        if request.filters and 0 < n_rows < s.nfilter_subset:
            raise DisclosureError(f"the filter selects fewer than nfilter_subset ({s.nfilter_subset}) rows: "
                                  "widen the filter", control="nfilter_subset")
        n_params = algorithm.parameter_count(request, model)
        if n_params is not None and n_params > s.nfilter_glm * n_rows:
            raise DisclosureError(f"the model has more parameters than nfilter_glm ({s.nfilter_glm}) per matching "
                                  "row allows: use fewer covariates (or ones with fewer levels), or select more "
                                  "rows", control="nfilter_glm")
        fold_sizes = algorithm.fold_sizes(request, n_rows)
        if fold_sizes is not None:
            # cross-validation releases statistics of every fold: each fold is checked as a step
            smallest = min(fold_sizes)
            if smallest < s.min_row_count:
                raise DisclosureError(f"a cross-validation fold would hold fewer rows than min_row_count "
                                      f"({s.min_row_count}): use fewer splits (n_splits) or select more rows",
                                      control="min_row_count")
            if n_params is not None and n_params > s.nfilter_glm * smallest:
                raise DisclosureError(f"a cross-validation fold would hold too few rows for the model under "
                                      f"nfilter_glm ({s.nfilter_glm} parameters per row): use fewer splits "
                                      "(n_splits) or fewer covariates, or select more rows", control="nfilter_glm")

    def check_clusters(self, algorithm: Algorithm, request: Any, model: DataModel, data: Any) -> None:
        """For an algorithm whose rows are clustered by patient (``cluster_count``, e.g. ``gee``):
        ``min_row_count`` and ``nfilter_glm`` count the patients as well as the rows (issue 17.4).
        The messages carry no count."""
        count = getattr(algorithm, "cluster_count", None)
        n_clusters = count(data) if count is not None else None
        if n_clusters is None:
            return
        s = self.settings
        if n_clusters < s.min_row_count:
            raise DisclosureError(f"fewer patients match than min_row_count ({s.min_row_count}): widen the "
                                  "filter, add datasets or choose variables with fewer missing values",
                                  control="min_row_count")
        n_params = algorithm.parameter_count(request, model)
        if n_params is not None and n_params > s.nfilter_glm * n_clusters:
            raise DisclosureError(f"the model has more parameters than nfilter_glm ({s.nfilter_glm}) per matching "
                                  "patient allows: use fewer covariates (or ones with fewer levels), or select "
                                  "more patients", control="nfilter_glm")

    # -- the aggregates -----------------------------------------------------------
    def release(self, algorithm: Algorithm, request: Any, model: DataModel, round_no: int,
                aggregates: dict[str, Any]) -> dict[str, Any]:
        """Check and clean aggregates before they leave the node."""
        # e.g. survival: time bins merged until no count is below nfilter_tab (default: as they are)
        # (Cox regression: bins as large as min_row_count, ADR 0046)
        tab = self.settings.nfilter_tab
        bins = max(tab, int(getattr(self.settings, getattr(algorithm, "bin_count_setting", "nfilter_tab"))))
        aggregates = (algorithm.coarsen_for_release(round_no, aggregates, tab, bins) if bins > tab
                      else algorithm.coarsen_for_release(round_no, aggregates, tab))
        if not self.settings.release_extremes:
            _refuse_raw_extremes(aggregates)
        tab = self.settings.nfilter_tab
        # groups released with n, sum and squares (k-means clusters, t-test and ANOVA groups...):
        # min_row_count (ADR 0050)
        control, smallest = group_threshold(algorithm, self.settings)
        for n in _group_sizes(aggregates):
            if 0 < n < smallest:
                # the size itself stays at the node: "a group of 1 row" would disclose it
                raise DisclosureError(f"a group or cell is non-empty but smaller than {control} ({smallest}). "
                                      f"{small_group_hint(algorithm)}", control=control)
        # weighted sums (the exponential of a variable) hold sum w / max w rows: min_row_count (ADR 0053)
        if any(held < self.settings.min_row_count for held in _weighted_rows(aggregates)):
            raise dominated_refusal(self.settings.min_row_count)
        # joint cells checked above are the node's business only: never sent (ADR 0031), nor weighted rows
        aggregates = _without_checked_only(aggregates)
        if is_histogram_release(aggregates):
            # cells and their sums in one result: consistent secondary suppression (ADR 0031)
            aggregates = suppress_histograms(aggregates, tab)
        return _suppress_cells(aggregates, tab)


#: Said by every refusal of the memories of releases (ADR 0061), the same words at every node.
STALE_HINT = ("An earlier answer is no longer repeated exactly once the node has applied a changed consent "
              "registry (whoever the change concerned) or a load has corrected, in place, values this analysis "
              "reads in its rows: after such a change, wait until at least min_row_count new rows are loaded "
              "into the cohort, then re-run")


# the group memory's refusals (ADR 0051; mipflow.node.controls.groups)
def complement_refusal(setting: str, threshold: int) -> DisclosureError:
    return DisclosureError(
        "the rows of this analysis's cohort outside the groups it releases (levels it does not compare) would "
        f"be a group of fewer than {setting} ({threshold}) rows, which the cohort's statistics less these "
        "groups' would single out (differencing control). Filter the rows to the levels compared, or compare "
        "levels that leave none or many rows out", control="differencing")


def group_refusal(setting: str, threshold: int) -> DisclosureError:
    return DisclosureError(
        "a group this analysis releases (the rows of a level of a grouping variable, of a cell of two, or of a "
        "k-means cluster) and "
        "a group or cohort this node released before (of any variable, level, algorithm or data model) would be "
        f"the same rows but for fewer than {setting} ({threshold}), or combine into a group that small: their "
        "statistics would single out those patients (group memory, differencing control). Use the same filters "
        "and datasets as the earlier analysis, group by a variable rather than filter on one of its levels (a "
        "two-way analysis answers both), or use filters that change each group by many rows; for subgroups "
        "that must all be answered exactly, ask the node's admin for a study protocol; for k-means, cluster "
        f"other rows or variables, or use the clusters' counts and centres already released. {STALE_HINT}",
        control="differencing")


def cohort_refusal() -> DisclosureError:
    return DisclosureError(
        "the selected rows and a group this node released before (the rows of a level of a grouping variable "
        "or of a k-means cluster, under this or another data model) are the same rows but for a few: their "
        "statistics would combine "
        "into a group of fewer rows than the group threshold, which could single out patients (group memory, "
        "differencing control). Use a filter that selects many more or many fewer rows, the same rows as the "
        "earlier group, or group by the variable instead of filtering on its level; a k-means cluster is "
        f"described by its released count and centre, not by a filter that nearly selects it. {STALE_HINT}",
        control="differencing")


def stamp_refusal() -> DisclosureError:
    """The refusal of a value stamp's change (ADR 0061, "Value stamps"): the same rows as an earlier cohort or
    group, under this consent epoch, holding other values in a column both releases read.  Said first, since the
    researcher repeated an earlier analysis as advised; the same words for a cohort and a group, no size."""
    return DisclosureError(
        "a load has corrected, in place, values this analysis reads in rows this node already answered for (as "
        "a cohort, or as the group of a level of a grouping variable): this answer and the earlier one would be "
        "the same rows holding other values, and their difference those patients' old and new values "
        "(differencing control). After such a correction an earlier answer is no longer repeated exactly, "
        "whatever filter or grouping selects the same rows: wait until at least min_row_count new rows are "
        "loaded into the cohort, then re-run", control="differencing")


def dominated_refusal(min_row_count: int) -> DisclosureError:
    """The refusal of a dominated weighted sum (control ``dominated_sums``): one message whether the
    release alone (ADR 0053) or its difference with an earlier release of the same weighted sums
    (ADR 0058) is dominated, naming the rule and the setting only."""
    return DisclosureError(
        "a weighted sum of the release (e.g. of an exp transformation), alone or less the same weighted sum of "
        "an earlier release of this node over overlapping rows, is dominated by fewer rows than min_row_count "
        f"({min_row_count}) (dominated_sums control): analyse the variable without that transformation, or "
        "repeat an earlier analysis's filters and datasets exactly; for several cohorts with the transformation, "
        f"ask the node's admin for a study protocol that fixes it. {STALE_HINT}", control="dominated_sums")


def small_group_hint(algorithm: Algorithm) -> str:
    """The algorithm's static words on its checked groups and what makes them larger (issue 14: a refusal's
    text is a function of the request and the settings only)."""
    from mipflow.algorithms.spec import SMALL_GROUP_HINT

    hint = getattr(algorithm, "small_group_hint", SMALL_GROUP_HINT)
    return hint if isinstance(hint, str) else SMALL_GROUP_HINT


def group_threshold(algorithm: Algorithm, settings: NodeSettings) -> tuple[str, int]:
    """The fewest rows a released group of ``algorithm`` must hold, and the setting that says so.

    ``nfilter_tab``, or the setting the algorithm's ``group_count_setting`` names when that is
    larger (groups released with their mean and spread: ``min_row_count``, ADR 0050).  Also the
    smallest difference two of its released partitions of the same rows may give (the partition
    check, ADR 0013 and 0050): every group a release lets anyone form is held to the same standard.
    """
    tab = int(settings.nfilter_tab)
    setting = getattr(algorithm, "group_count_setting", "nfilter_tab")
    smallest = max(tab, int(getattr(settings, setting)))
    return (setting if smallest > tab else "nfilter_tab"), smallest


def _strings(doc: Any) -> Iterable[str]:
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, dict):
        for key, value in doc.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(doc, (list, tuple)):
        for value in doc:
            yield from _strings(value)


def _refuse_raw_extremes(doc: Any) -> None:
    if isinstance(doc, dict):
        for key, value in doc.items():
            if str(key).lower() in RAW_EXTREME_KEYS:
                raise DisclosureError("the step would release a raw extreme or quantile", control="raw_extremes")
            _refuse_raw_extremes(value)
    elif isinstance(doc, list):
        for value in doc:
            _refuse_raw_extremes(value)


def _group_sizes(doc: Any) -> Iterable[int]:
    """Row counts of groups whose statistics are released (keys ``group_n`` / ``group_counts``), and of
    the joint cells of categorical covariates a model's co-moments release (``cell_n``, ADR 0031)."""
    return (int(v) for v in _numbers_under(doc, ("group_n", "group_counts", CHECKED_ONLY)))


def _weighted_rows(doc: Any) -> Iterable[float]:
    """The rows each weighted sum of the release holds (key ``weighted_n``, ADR 0053), at any depth."""
    return (float(v) for v in _numbers_under(doc, (WEIGHTED_ROWS,)))


def _numbers_under(doc: Any, keys: tuple[str, ...]) -> Iterable[int | float]:
    """The numbers of every list under one of ``keys``, at any depth of ``doc`` (other keys are walked)."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in keys and isinstance(value, list):
                yield from (v for v in value if isinstance(v, (int, float)))
            else:
                yield from _numbers_under(value, keys)
    elif isinstance(doc, list):
        for value in doc:
            yield from _numbers_under(value, keys)


def _without_checked_only(doc: Any) -> Any:
    """``doc`` without the counts under :data:`CHECKED_ONLY` and :data:`WEIGHTED_ROWS`, at any depth
    (e.g. per fold)."""
    if isinstance(doc, dict):
        return {k: _without_checked_only(v) for k, v in doc.items() if k not in (CHECKED_ONLY, WEIGHTED_ROWS)}
    if isinstance(doc, list):
        return [_without_checked_only(v) for v in doc]
    return doc


def _suppress_cells(doc: Any, tab: int) -> Any:
    """Replace count cells (lists under a ``counts`` key) in ``(0, tab)`` by ``None``."""
    if isinstance(doc, dict):
        out = {}
        for key, value in doc.items():
            if key == "counts" and isinstance(value, list):
                out[key] = _suppress_vector(value, tab)
            else:
                out[key] = _suppress_cells(value, tab)
        return out
    if isinstance(doc, list):
        return [_suppress_cells(v, tab) for v in doc]
    return doc


def _suppress_vector(values: list, tab: int) -> list:
    """Suppress small cells of one count vector, with complementary suppression.

    When exactly one cell is small, the next smallest positive cell is suppressed too, so the
    small cell cannot be recovered by subtracting the others from a released total.
    """
    if values and all(isinstance(v, list) for v in values):
        return [_suppress_vector(v, tab) for v in values]
    out = [hide_small(v, tab) for v in values]
    suppressed = [i for i, (a, b) in enumerate(zip(values, out)) if a is not None and b is None]
    if len(suppressed) == 1:
        others = [(v, i) for i, v in enumerate(out) if isinstance(v, (int, float)) and v > 0]
        if others:
            out[min(others)[1]] = None
    return out


def hide_small(value: Any, tab: int) -> Any:
    """``value`` (a count, or nested lists of counts) with every count in ``(0, tab)`` as ``None``."""
    if isinstance(value, list):
        return [hide_small(v, tab) for v in value]
    if isinstance(value, (int, float)) and 0 < value < tab:
        return None
    return value
