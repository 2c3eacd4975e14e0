"""Descriptive statistics per dataset and over all datasets.

For every requested variable and dataset: the number of rows, of missing
values and of data points, and either mean and standard deviation (numerical)
or counts per category (nominal).  ``variable_based`` counts each variable on
its own rows; ``model_based`` uses only rows complete on every requested
variable.  The ``dataset`` variable itself is used for grouping and not
described.

Unlike Exareme2, no minimum, maximum or quartile is released: each of those
is one patient's value.

This algorithm counts missing values, so the node must **not** drop
incomplete rows (``complete_case = False``).  The local step returns, per
dataset and variable, the row count and either the moments (count, mean,
centred sum of squares) or the counts per enumeration code.

"all datasets" merges only the datasets in which the variable has at least
one data point (so ``num_na`` / ``num_total`` there ignore datasets that do
not collect the variable), as Exareme2 does.

Secure aggregation (``docs/adr/0014-secure-aggregation.md``), only when
requested explicitly: a dataset's own rows are one node's aggregates (a
dataset lives at one node), so no masking can hide them.  Under secure
aggregation the node runs its disclosure controls on its per-dataset records
as always (small counts suppressed), then :meth:`DescriptiveStats.secure_aggregates`
pools them over its own datasets (the same "has data" rule, a suppressed
cell counting 0, with a 0/1 ``hidden`` flag per nominal level saying whether
the node hid it) into one record per variable, which is masked.  The central
side sees only the sum (per level, the number of nodes that hid it, not
which): the result has the "all datasets" rows and says under
``per_dataset`` that the per-dataset rows are withheld.  A level some node
hid is suppressed exactly as in the plain result.  Those rows equal the
plain ones, except where a dataset is split over nodes and one node's part
has no value of a variable: that part's rows then stay out of ``num_na`` /
``num_total`` of the variable.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from mipflow.algorithms.contract import Step
from mipflow.algorithms.spec import NOMINAL, NUMERICAL, InputSpec, SpecAlgorithm
from mipflow.algorithms.design import category_codes, numeric_values
from mipflow.algorithms.dp_release import DPRelease, Noise, Released, declared_bounds, moments_from_sums
from mipflow.algorithms.moments import Moments, compute_moments, merge_moments, streamed_column_moments
from mipflow.algorithms.streamed import COUNT_ROWS, level_counts_on_disk, on_disk
from mipflow.algorithms.noise_error import NoiseTerm, noisy_count_error, noisy_mean_and_std, pool_sums
from mipflow.exceptions import FederationError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd

DATASET = "dataset"
ALL_DATASETS = "all datasets"
KINDS = ("variable_based", "model_based")
#: Key of a node's records pooled over its datasets (the form summed under secure aggregation).
POOLED = "pooled_over_datasets"
#: What a secure result says in place of the per-dataset rows.
WITHHELD = ("withheld under secure aggregation: a dataset's own rows are one node's aggregates; "
            "only the rows pooled over all datasets (summed over the nodes) are released")


# --------------------------------------------------------------------------- differential privacy
# The noisy release a node with dp_enabled makes (DescriptiveStats.dp_release, ADR 0015).


def _dp_blocks(algo: DescriptiveStats, request: AnalysisRequest, model: DataModel) -> int:
    described = algo.described(request)
    numeric = sum(1 for c in described if not model.variable(c).is_categorical)
    return 2 + 5 * numeric + 2 * (len(described) - numeric)


def _dp_release(algo: DescriptiveStats, data: pd.DataFrame, request: AnalysisRequest, model: DataModel,
                noise: Noise) -> Released:
    """Per dataset: noisy row counts, category counts and clamped centred sums.

    Released in the algorithm's own shape (moments rebuilt from the noisy
    sums), so its global step runs unchanged.
    """
    described = algo.described(request)
    bounds = {c: declared_bounds(model, c, algo.name) for c in described if not model.variable(c).is_categorical}
    out: dict[str, Any] = {}
    # one block for every dataset of the request, rows or not: which blocks a reply holds must not
    # tell whether the cohort has a row in a dataset (an outside review found that the blocks of
    # the datasets with rows only were an exact membership oracle; ADR 0032).  The node narrows the
    # request to the datasets it holds (public metadata) before the release.
    labels = data[DATASET].astype(str).to_numpy() if DATASET in data.columns else np.array([], dtype=str)
    for part in sorted(set(request.datasets)):
        frame = data.loc[labels == part]
        complete = frame.dropna(subset=described, how="any")
        record: dict[str, Any] = {}
        for kind, rows in (("variable_based", frame), ("model_based", complete)):
            # signed noisy counts and sums leave the node; clamping them is the central side's display
            # (a pooled sum of counts clamped per node would be biased upwards)
            n_signed = _noisy_count(noise, len(rows), block=f"{kind}/n_total", part=part)
            n_total = max(n_signed, 0)
            items: dict[str, Any] = {}
            for code in described:
                var = model.variable(code)
                if var.is_categorical:
                    counts = category_codes(rows[code], var).value_counts()
                    exact = [int(counts.get(c, 0)) for c in var.enumeration_codes]
                    noisy = noise.add(exact, 1, block=f"{kind}/{code}/counts", part=part, integer=True)
                    items[code] = {"n_total": max(n_total, int(noisy.sum())), "counts": noisy.tolist(),
                                   "noise": {"terms": [[noise.mechanism, noise.sd(1)]]}}
                    continue
                lo, hi = bounds[code]
                values = numeric_values(rows[code])
                clamped = np.clip(values[~np.isnan(values)], lo, hi) - (lo + hi) / 2.0
                half = (hi - lo) / 2.0
                # model-based rows are complete: every variable's count is the row count
                n = n_signed if kind == "model_based" else _noisy_count(noise, len(clamped), block=f"{kind}/{code}/n",
                                                                         part=part)
                s1 = float(noise.add([math.fsum(clamped)], half, block=f"{kind}/{code}/sum", part=part)[0])
                s2 = float(noise.add([math.fsum(clamped * clamped)], half * half, block=f"{kind}/{code}/sumsq",
                                     part=part)[0])
                terms = [NoiseTerm("n", noise.mechanism, noise.sd(1)), NoiseTerm("s1", noise.mechanism, noise.sd(half)),
                         NoiseTerm("s2", noise.mechanism, noise.sd(half * half))]
                items[code] = {"n_total": max(n_total, n), "moments": moments_from_sums(max(n, 0), s1, s2, lo, hi),
                               "noisy_sums": {"n": int(n), "s1": s1, "s2": s2, "centre": (lo + hi) / 2.0,
                                              "terms": [t.to_list() for t in terms]}}
            record[kind] = items
        record["group_n"] = [r["moments"]["n"] for kind in ("variable_based", "model_based")
                             for r in record[kind].values() if "moments" in r]
        out[part] = record
    return {"datasets": out}, {c: [lo, hi] for c, (lo, hi) in bounds.items()}


def _noisy_count(noise: Noise, value: int, *, block: str, part: str) -> int:
    """A signed noisy count (sensitivity 1): the same draw as ``noise.count``, not clamped."""
    return int(noise.add([value], 1, block=block, part=part, integer=True)[0])


def _dp_rows(aggregates: dict[str, Any]) -> int:
    return sum(max((item["n_total"] for item in record["variable_based"].values()), default=0)
               for record in aggregates["datasets"].values())


class DescriptiveStats(SpecAlgorithm):
    name = "descriptive_stats"
    #: Sums only (ADR 0063) when every variable is numerical (the node's step decides: a nominal level's small
    #: count is hidden, and hidden beside 0 over a cohort one row apart tells that row's level: round 23, hole 2).
    sums_only = True
    #: ... and with a nominal variable, its level counts hidden when small are all it adds: a release of class
    #: ``HIDDEN``, whose pairs with releases of numerical sums the chain rule decides (ADR 0063, nominal amendment)
    hides_small_counts = True
    # each dataset's variable is released with its count, mean and centred sum of squares over the rows
    # holding it (fewer than the dataset's when values are missing; ADR 0050, the class)
    group_count_setting = "min_row_count"
    label = "Descriptive statistics"
    description = ("Counts, missing values, means and standard deviations (counts per level for nominal "
                   "variables) per dataset and overall, per variable and on the complete cases; no "
                   "minimum, maximum or quartile is released.")
    complete_case = False
    released_by = ("dataset",)  # per-dataset statistics: each dataset's rows are a cohort
    y_spec = InputSpec(types=("int", "real", "text"), stattypes=(NUMERICAL, NOMINAL),
                       notblank=True, multiple=True, label="Variables", description="Variables to describe.")
    x_spec = InputSpec(types=("int", "real", "text"), stattypes=(NUMERICAL, NOMINAL),
                       notblank=False, multiple=True, label="More variables (optional)",
                       description="More variables to describe.")

    def described(self, request: AnalysisRequest) -> list[str]:
        """The variables described: x then y, without ``dataset``."""
        return [v for v in dict.fromkeys(request.x + request.y) if v != DATASET]

    def variables(self, request: AnalysisRequest) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.described(request), DATASET]))

    # -- local ------------------------------------------------------------------

    @staticmethod
    def _describe(frame: pd.DataFrame, code: str, model: DataModel) -> dict[str, Any]:
        var = model.variable(code)
        if var.is_categorical:
            codes = category_codes(frame[code], var)
            counts = codes.value_counts()
            return {"n_total": len(frame),
                    "counts": [int(counts.get(c, 0)) for c in var.enumeration_codes]}
        values = numeric_values(frame[code])
        values = values[~np.isnan(values)]
        return {"n_total": len(frame), "moments": compute_moments(values).to_dict()}

    #: Its local step also takes a node's selection left on disk, missing values kept and ``dataset``
    #: among its columns (:mod:`mipflow.algorithms.streamed`, ADR 0062): the same records bit for bit.
    streams_rows = True

    @staticmethod
    def _describe_on_disk(rows: Any, code: str, model: DataModel) -> dict[str, Any]:
        var = model.variable(code)
        if var.is_categorical:
            return {"n_total": len(rows), "counts": level_counts_on_disk(rows, code, var.enumeration_codes)}
        present = rows.narrowed([code], lambda v: ~np.isnan(v[0]))
        return {"n_total": len(rows), "moments": streamed_column_moments(present, [code]).to_dict()}

    def _local_on_disk(self, rows: Any, request: AnalysisRequest, model: DataModel) -> dict:
        """:meth:`local_step` over rows on disk: each dataset's rows, its complete rows and each variable's
        present rows narrowed from the selection (a bit a snapshot row each), their sums a block at a time."""
        described = self.described(request)
        names = rows.levels_of(DATASET)
        held: set[int] = set()
        n = len(rows)
        if n:
            next_rows = rows.reader([DATASET])
            for start in range(0, n, COUNT_ROWS):
                held.update(np.unique(next_rows(min(COUNT_ROWS, n - start))[0]).tolist())
        wanted = set(request.datasets)
        out: dict[str, Any] = {}
        for position in sorted((i for i in held if i >= 0), key=lambda i: names[i]):  # groupby's sorted order
            if str(names[position]) not in wanted:
                continue
            part = rows.narrowed([DATASET], lambda v, at=position: v[0] == at)

            def complete_of(values: list[np.ndarray]) -> np.ndarray:
                keep = np.ones(len(values[0]) if values else 0, dtype=bool)
                for code, v in zip(described, values):
                    keep &= (v >= 0) if model.variable(code).is_categorical else ~np.isnan(v)
                return keep

            complete = part.narrowed(described, complete_of)
            record = {
                "variable_based": {c: self._describe_on_disk(part, c, model) for c in described},
                "model_based": {c: self._describe_on_disk(complete, c, model) for c in described},
            }
            record["group_n"] = [r["moments"]["n"] for kind in ("variable_based", "model_based")
                                 for r in record[kind].values() if "moments" in r]
            out[str(names[position])] = record
        return {"datasets": out}

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        if on_disk(data):
            return self._local_on_disk(data, request, model)
        described = self.described(request)
        out: dict[str, Any] = {}
        wanted = set(request.datasets)
        for dataset, frame in data.groupby(DATASET, sort=True):
            if str(dataset) not in wanted:
                continue
            complete = frame.dropna(subset=described, how="any")
            record = {
                "variable_based": {c: self._describe(frame, c, model) for c in described},
                "model_based": {c: self._describe(complete, c, model) for c in described},
            }
            # group_n: rows behind each released mean / standard deviation
            record["group_n"] = [r["moments"]["n"] for kind in ("variable_based", "model_based")
                                 for r in record[kind].values() if "moments" in r]
            out[str(dataset)] = record
        return {"datasets": out}

    def secure_aggregates(self, aggregates: dict[str, Any], request: AnalysisRequest,
                          model: DataModel) -> dict[str, Any]:
        """The node's released records pooled over its datasets: what it masks under secure aggregation.

        Runs after the node's disclosure controls, on what they released.  Per
        kind and variable: the records of the node's datasets where the variable
        has at least one (released) data point or a hidden cell (the plain "all
        datasets" rule), merged.  A nominal record also carries ``hidden``, one
        0/1 flag per level: 1 where the controls hid the level (``None``) in any
        of those records, whose count then enters as 0 (its value never leaves
        the node, masked or not).  Summed, ``hidden`` is the number of nodes that
        hid each level, and the central shows such a level as suppressed, as in
        the plain path (ADR 0005 amendment, ADR 0014).  Every node sends the same
        layout, fixed by the request and the data model (zero records where it
        holds no data), and no dataset name.
        """
        described = self.described(request)
        records = list(aggregates["datasets"].values())
        out: dict[str, dict[str, Any]] = {}
        for kind in KINDS:
            out[kind] = {}
            for code in described:
                merged = self._merge([r[kind][code] for r in records if self._has_data(r[kind][code])])
                if merged is not None:  # the masked sum holds numbers only (no noise terms: ADR 0057's gap)
                    merged = {k: v for k, v in merged.items() if k not in ("noisy_sums", "noise")}
                if merged is None:
                    var = model.variable(code)
                    merged = ({"n_total": 0, "counts": [0] * len(var.enumeration_codes)} if var.is_categorical
                              else {"n_total": 0, "moments": {"n": 0, "mean": [0.0], "m2": [0.0]}})
                if "counts" in merged:
                    merged["hidden"] = [int(c is None) for c in merged["counts"]]
                    merged["counts"] = [0 if c is None else int(c) for c in merged["counts"]]
                out[kind][code] = merged
        return {POOLED: out}

    @classmethod
    def _has_data(cls, record: dict[str, Any] | None) -> bool:
        """A record "all datasets" pools: a (released) data point, or a level a node hid."""
        return cls._count(record) > 0 or None in (record or {}).get("counts", ())

    @staticmethod
    def _unhidden(record: dict[str, Any]) -> dict[str, Any]:
        """A secure pooled record in the plain form: a level some node hid (``hidden`` > 0) is ``None``.

        Raises
        ------
        FederationError
            If a nominal record has no ``hidden`` flags (a node from before ADR 0005's 2026-12-07
            amendment): a level such a node hid would read as the others' sum, unmarked.
        """
        if "counts" not in record:
            return record
        if "hidden" not in record:
            raise FederationError("secure descriptive statistics: the summed nominal counts carry no hidden-level "
                                  "flags (a node older than ADR 0005's 2026-12-07 amendment), so a level a node "
                                  "suppressed cannot be told apart: upgrade the nodes or run without secure "
                                  "aggregation")
        out = {k: v for k, v in record.items() if k != "hidden"}
        out["counts"] = [None if h else c for c, h in zip(record["counts"], record["hidden"])]
        return out

    # -- global -----------------------------------------------------------------

    @staticmethod
    def _merge(records: list[dict[str, Any]]) -> dict[str, Any] | None:
        if not records:
            return None
        n_total = sum(int(r["n_total"]) for r in records)
        if "counts" in records[0]:
            # a node's disclosure control may have replaced small counts by None: the pooled cell is then
            # unknown (None), never the other records' partial sum (ADR 0005 amendment, as histograms)
            counts = [None if any(c is None for c in cells) else sum(int(c) for c in cells)
                      for cells in zip(*(r["counts"] for r in records))]
            out: dict[str, Any] = {"n_total": n_total, "counts": counts}
            noisy = [r["noise"] for r in records if "noise" in r]
            if noisy:  # one independent draw per node record on every cell
                out["noise"] = {"terms": [term for v in noisy for term in v["terms"]]}
            return out
        mom = merge_moments(Moments.from_dict(r["moments"]) for r in records)
        out = {"n_total": n_total, "moments": mom.to_dict()}
        if any("noisy_sums" in r for r in records):
            out["noisy_sums"] = pool_sums(records)
        return out

    @staticmethod
    def _count(record: dict[str, Any] | None) -> int:
        if record is None:
            return 0
        if "counts" in record:  # noisy cells are signed
            return max(int(sum(c for c in record["counts"] if c is not None)), 0)
        return int(record["moments"]["n"])

    def _render(self, record: dict[str, Any] | None, code: str, model: DataModel) -> dict | None:
        n = self._count(record)
        if n == 0 and not (record is not None and any(c is None for c in record.get("counts", ()))):
            return None
        assert record is not None
        out: dict[str, Any] = {"num_dtps": n, "num_na": record["n_total"] - n,
                               "num_total": record["n_total"]}
        if "counts" in record:
            var = model.variable(code)
            # a noisy pooled cell is shown clamped to >= 0, with its error (ADR 0057)
            out["counts"] = {c: max(k, 0) for c, k in zip(var.enumeration_codes, record["counts"]) if k and k > 0}
            hidden = [c for c, k in zip(var.enumeration_codes, record["counts"]) if k is None]
            if hidden:  # a node hid these levels' counts: the data points are known from below only
                out.update({"num_dtps": None, "num_na": None, "num_dtps_at_least": n, "suppressed": hidden,
                            "note": "the counts of the levels in 'suppressed' are hidden because at least one "
                                    "participating node suppressed them (fewer than nfilter_tab rows there); "
                                    "num_dtps and num_na are then unknown, num_dtps_at_least is a lower bound"})
            if "noise" in record:
                out.update(noisy_count_error(record["noise"]["terms"]))
        elif "noisy_sums" in record:
            var = model.variable(code)
            out.update(noisy_mean_and_std(record["noisy_sums"], float(var.min_value), float(var.max_value)))
        else:
            mom = Moments.from_dict(record["moments"])
            out["mean"] = float(mom.mean[0])
            out["std"] = math.sqrt(float(mom.m2[0]) / (n - 1)) if n > 1 else None
        return out

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        described = self.described(request)
        if aggregates and all(POOLED in a for a in aggregates):  # secure aggregation: the nodes' sum
            pooled: dict[str, Any] = {kind: [
                {"variable": code, "dataset": ALL_DATASETS,
                 "data": self._render(self._merge([self._unhidden(a[POOLED][kind][code]) for a in aggregates]),
                                      code, model)}
                for code in described] for kind in KINDS}
            pooled["per_dataset"] = WITHHELD
            return Step(done=True, result=json_ready(pooled))
        result: dict[str, list[dict[str, Any]]] = {"variable_based": [], "model_based": []}
        for kind in KINDS:
            per_dataset: dict[str, dict[str, dict | None]] = {}
            for dataset in request.datasets:
                per_dataset[dataset] = {
                    code: self._merge([a["datasets"][dataset][kind][code]
                                       for a in aggregates if dataset in a["datasets"]])
                    for code in described
                }
                for code in described:
                    result[kind].append({
                        "variable": code, "dataset": dataset,
                        "data": self._render(per_dataset[dataset][code], code, model),
                    })
            for code in described:
                records = [per_dataset[d][code] for d in request.datasets if self._has_data(per_dataset[d][code])]
                result[kind].append({
                    "variable": code, "dataset": ALL_DATASETS,
                    "data": self._render(self._merge(records), code, model),
                })
        return Step(done=True, result=json_ready(result))

    # -- privacy capabilities (mipflow.algorithms.contract) ------------------------------------

    secure_aggregation = "explicit_only"  # pooled rows only: see the module docstring
    dp_release = DPRelease(_dp_blocks, _dp_release, _dp_rows)
