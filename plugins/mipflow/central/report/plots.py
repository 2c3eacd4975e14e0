"""Plots that fit a result's shape, drawn with matplotlib (Agg) and inlined as SVG strings."""
from __future__ import annotations

import io
import math
from typing import Any, Mapping, Sequence

from mipflow.central.report.tables import is_number, matrix_table

#: Most plots of one kind (histograms, survival curves) drawn for one result.
MAX_PLOTS = 12


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: inline in HTML


def _figure(width: float = 6.4, height: float = 3.6, **subplots: Any) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "mipflow"  # stable element ids
    return plt.subplots(figsize=(width, height), **subplots)


def _finite(values: Sequence[Any]) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, str):
            v = {"Infinity": math.inf, "-Infinity": -math.inf}.get(v, math.nan)
        out.append(math.nan if v is None else float(v))
    return out


def coefficient_plot(result: Mapping[str, Any]) -> str | None:
    """Coefficients with their confidence intervals (needs ``indep_vars``, ``coefficients``,
    ``lower_ci``, ``upper_ci``)."""
    names, coef = result.get("indep_vars"), result.get("coefficients")
    lower, upper = result.get("lower_ci"), result.get("upper_ci")
    if not (isinstance(names, list) and isinstance(coef, list) and isinstance(lower, list)
            and isinstance(upper, list) and len(names) == len(coef) == len(lower) == len(upper) and names):
        return None
    coef, lower, upper = _finite(coef), _finite(lower), _finite(upper)
    fig, ax = _figure(6.4, 0.45 * len(names) + 1.2)
    ys = list(range(len(names)))[::-1]
    ax.errorbar(coef, ys, xerr=[[c - lo for c, lo in zip(coef, lower)], [hi - c for c, hi in zip(coef, upper)]],
                fmt="o", color="#1f5f99", ecolor="#7aa6cf", capsize=3)
    ax.axvline(0, color="#888", linewidth=0.8, linestyle="--")
    ax.set_yticks(ys, [str(n) for n in names])
    ax.set_xlabel("coefficient (confidence interval)")
    ax.set_title(f"{result.get('dependent_var', 'y')}: coefficients")
    return _svg(fig)


def histogram_plots(result: Mapping[str, Any]) -> list[str]:
    """One bar chart per histogram; a suppressed bin (``bin_status`` "suppressed", or ``None`` without a
    status) is marked "hidden", not drawn as 0; an empty bin (``None`` with status "empty") is drawn as 0."""
    out = []
    for item in (result.get("histogram") or [])[:MAX_PLOTS]:
        bins, counts = item.get("bins") or [], item.get("counts") or []
        if not counts:
            continue
        fig, ax = _figure(5.2, 2.8)
        heights = [0 if c is None else c for c in counts]
        if len(bins) == len(counts) + 1 and all(is_number(b) for b in bins):
            widths = [bins[i + 1] - bins[i] for i in range(len(counts))]
            ax.bar(bins[:-1], heights, width=widths, align="edge", color="#4c8bc4", edgecolor="white")
            positions = [b + w / 2 for b, w in zip(bins, widths)]
        else:
            labels = [str(b) for b in bins] if len(bins) == len(counts) else [str(i) for i in range(len(counts))]
            ax.bar(labels, heights, color="#4c8bc4", edgecolor="white")
            positions = list(range(len(counts)))
        status = item.get("bin_status") if isinstance(item.get("bin_status"), list) else []
        for i, (pos, count) in enumerate(zip(positions, counts)):
            if count is None and (status[i] if i < len(status) else "suppressed") != "empty":
                ax.annotate("hidden", (pos, 0), ha="center", va="bottom", color="#b00", fontsize=7,
                            rotation=90)
        group = f" | {item.get('grouping_var')} = {item.get('grouping_enum')}" if item.get("grouping_var") else ""
        ax.set_title(f"{item.get('var')}{group}", fontsize=10)
        ax.set_ylabel("count")
        out.append(_svg(fig))
    return out


def correlation_heatmap(result: Mapping[str, Any]) -> str | None:
    """Heat-map of ``correlations`` (Exareme2's ``{"variables": [...], name: [...]}``)."""
    matrix = result.get("correlations")
    table = matrix_table("", matrix) if isinstance(matrix, Mapping) else None
    if table is None or len(table.rows) < 2:
        return None
    names = [r[0] for r in table.rows]
    values = [_finite(r[1:]) for r in table.rows]
    size = min(9.0, 1.2 + 0.6 * len(names))
    fig, ax = _figure(size + 1.2, size)
    image = ax.imshow(values, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(table.columns) - 1), table.columns[1:], rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    if len(names) <= 12:
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if abs(v) > 0.6 else "black")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_title("Pearson correlation")
    return _svg(fig)


#: Keys of a curve's times (``timeline``: mipflow's Kaplan-Meier; ``time``: other tools).
TIME_KEYS = ("timeline", "time")
#: Keys of a curve's confidence band: (lower, upper).
BAND_KEYS = (("lower_ci", "upper_ci"), ("ci_lower", "ci_upper"))


def _times(curve: Mapping[str, Any]) -> Any:
    return next((curve[k] for k in TIME_KEYS if isinstance(curve.get(k), list)), None)


def _survival_curves(value: Any, label: str = "") -> list[tuple[str, Mapping[str, Any]]]:
    """Every mapping holding equal-length ``timeline`` (or ``time``) and ``survival`` lists, with a label."""
    found: list[tuple[str, Mapping[str, Any]]] = []
    if isinstance(value, Mapping):
        t, s = _times(value), value.get("survival")
        if isinstance(t, list) and isinstance(s, list) and len(t) == len(s) and t:
            name = value.get("group", value.get("group_level", value.get("name", label)))
            found.append((str(name) if name not in (None, "") else "all", value))
        else:
            for key, item in value.items():
                found.extend(_survival_curves(item, str(key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found.extend(_survival_curves(item, str(i)))
    return found


def survival_plot(result: Mapping[str, Any]) -> str | None:
    """Kaplan-Meier step curves, from 1 at time 0 (with ``lower_ci``/``upper_ci`` bands where present)."""
    curves = _survival_curves(result)
    if not curves:
        return None
    fig, ax = _figure(6.4, 3.8)
    for name, curve in curves[:MAX_PLOTS]:
        times = _times(curve)
        time, surv = _finite(times), _finite(curve["survival"])
        if time[0] > 0:
            time, surv = [0.0, *time], [1.0, *surv]
        line, = ax.step(time, surv, where="post", label=name)
        for lo_key, hi_key in BAND_KEYS:
            lo, hi = curve.get(lo_key), curve.get(hi_key)
            if isinstance(lo, list) and isinstance(hi, list) and len(lo) == len(hi) == len(times):
                ax.fill_between(_finite(times), _finite(lo), _finite(hi), step="post",
                                alpha=0.15, color=line.get_color())
                break
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(str(result.get("time_variable") or "time"))
    ax.set_ylabel("survival probability")
    ax.set_title("Kaplan-Meier estimate")
    if len(curves) > 1:
        ax.legend(fontsize=8)
    return _svg(fig)


def ratio_plot(table: Any) -> str | None:
    """Odds or hazard ratios with their confidence intervals on a log scale, a line at 1
    (``table``: :func:`mipflow.central.report.readable.ratio_table`)."""
    if table is None or not table.rows:
        return None
    rows = [r for r in table.rows if all(is_number(v) and math.isfinite(v) and v > 0 for v in r[1:4])]
    if not rows:
        return None
    fig, ax = _figure(6.4, 0.45 * len(rows) + 1.2)
    ys = list(range(len(rows)))[::-1]
    ratio = [r[1] for r in rows]
    ax.errorbar(ratio, ys, xerr=[[v - r[2] for v, r in zip(ratio, rows)], [r[3] - v for v, r in zip(ratio, rows)]],
                fmt="s", color="#7a3d99", ecolor="#b99acb", capsize=3)
    ax.axvline(1, color="#888", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    ax.set_yticks(ys, [str(r[0]) for r in rows])
    ax.set_xlabel(f"{table.columns[1]} (confidence interval, log scale)")
    ax.set_title(table.title)
    return _svg(fig)


def scree_plot(result: Mapping[str, Any]) -> str | None:
    """PCA scree plot: eigenvalues and cumulative share of variance."""
    values = result.get("eigen_vals")
    if not (isinstance(values, list) and values and all(is_number(v) for v in values)):
        return None
    total = sum(values) or 1.0
    fig, ax = _figure(5.2, 3.0)
    xs = list(range(1, len(values) + 1))
    ax.bar(xs, values, color="#4c8bc4")
    ax.set_xlabel("component")
    ax.set_ylabel("eigenvalue")
    share = ax.twinx()
    running = 0.0
    cumulative = []
    for v in values:
        running += v
        cumulative.append(running / total)
    share.plot(xs, cumulative, color="#c44e52", marker="o")
    share.set_ylim(0, 1.05)
    share.set_ylabel("cumulative share")
    ax.set_title("Scree plot")
    return _svg(fig)


#: Words that mark a numerical covariate as the time axis of a GEE's (or a random-intercept model's)
#: fitted trajectories, when the result names no time variable among its covariates.
TIME_WORDS = ("time", "visit", "year", "month", "week", "day", "follow")
#: Points along the time axis of a fitted trajectory (straight lines on the linear scale).
TRAJECTORY_POINTS = 50
#: The fitted mean from the linear predictor, by the result's ``link`` (GEE; a mixed model is linear).
INVERSE_LINKS = {"identity": lambda eta: eta, "logit": lambda eta: 1.0 / (1.0 + math.exp(-eta)),
                 "log": lambda eta: math.exp(min(eta, 700.0))}


def _is_longitudinal(result: Mapping[str, Any]) -> bool:
    return "random_effects" in result or "cov_struct" in result


def _time_covariate(result: Mapping[str, Any], covariates: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The numerical covariate on the time axis: the result's ``time`` (the mixed model's random
    slope) when it is a covariate, else the first numerical covariate named like a time."""
    numerical = [c for c in covariates if c.get("type") == "numerical" and c.get("code") in result["indep_vars"]]
    named = result.get("time")
    chosen = next((c for c in numerical if c["code"] == named), None)
    if chosen is None:
        chosen = next((c for c in numerical if any(w in str(c["code"]).lower() for w in TIME_WORDS)), None)
    return chosen


def trajectory_plot(result: Mapping[str, Any]) -> str | None:
    """Fitted trajectories by group (``gee``, ``linear_mixed_model``): the model's fitted mean over the
    time covariate, one line per level of the first nominal covariate, from the coefficients and the
    result's ``covariates`` block only (no row).  The other covariates are held at values the caption
    names: nominal ones at their reference level, numerical ones at 0 (the result carries no means
    and says nothing of centring).  None without a time covariate among the fixed effects."""
    names, coef, covariates = result.get("indep_vars"), result.get("coefficients"), result.get("covariates")
    if not (_is_longitudinal(result) and isinstance(names, list) and isinstance(coef, list)
            and len(names) == len(coef) and isinstance(covariates, list)):
        return None
    time = _time_covariate(result, covariates)
    inverse = INVERSE_LINKS.get(str(result.get("link") or "identity"))
    if time is None or inverse is None:
        return None
    beta = dict(zip(names, _finite(coef)))
    group = next((c for c in covariates if c.get("type") == "nominal" and len(c.get("levels") or []) > 1), None)
    span = time.get("range")
    if isinstance(span, list) and len(span) == 2 and all(is_number(v) for v in span) and span[1] > span[0]:
        low, high, span_text = float(span[0]), float(span[1]), "its range in the data model"
    else:
        low, high, span_text = 0.0, 1.0, "0 to 1 (the data model declares no range)"
    held = []
    for c in covariates:
        if c is time or c is group:
            continue
        if c.get("type") == "nominal":
            held.append(f"{c['code']} at its reference level {c.get('reference')}")
        else:
            held.append(f"{c['code']} = 0")
    ts = [low + (high - low) * i / (TRAJECTORY_POINTS - 1) for i in range(TRAJECTORY_POINTS)]
    base = beta.get("Intercept", 0.0)
    levels = list(group["levels"]) if group is not None else [None]
    fig, ax = _figure(6.4, 3.9)
    for level in levels:
        shift = 0.0 if level is None else beta.get(f"{group['code']}[{level}]", 0.0)  # the reference: 0
        values = [inverse(base + shift + beta[time["code"]] * t) for t in ts]
        label = "all" if level is None else f"{group['code']} = {level}"
        line, = ax.plot(ts, values, label=label)
        line.set_gid(f"trajectory-{level if level is not None else 'all'}")
    y = result.get("dependent_var", "y")
    ax.set_xlabel(str(time["code"]))
    ax.set_ylabel(f"fitted mean of {y}")
    ax.set_title(f"{y}: fitted trajectories" + (f" by {group['code']}" if group is not None else ""))
    if group is not None:
        ax.legend(fontsize=8)
    caption = (f"Fitted mean of {y} (fixed effects) over {time['code']}, {span_text}"
               + (f", one line per level of {group['code']}" if group is not None else "")
               + ". Other covariates: " + ("; ".join(held) if held else "none")
               + ("" if not held else " (they shift every line alike on the linear scale)") + ".")
    fig.text(0.0, -0.02, caption, ha="left", va="top", fontsize=7.5, wrap=True, color="#444")
    return _svg(fig)


def variance_plot(result: Mapping[str, Any]) -> str | None:
    """``linear_mixed_model``: the variance components as bars with their values (random intercept,
    random slope, residual), and the random effects' correlation beside them (with a slope)."""
    cov, names = result.get("cov_re"), result.get("random_effects")
    scale = result.get("scale")
    if not (isinstance(cov, list) and isinstance(names, list) and len(cov) == len(names) and names
            and is_number(scale)):
        return None
    matrix = [_finite(row) for row in cov]
    labels = [f"{'random intercept' if i == 0 else f'random slope ({n})'}" for i, n in enumerate(names)]
    values = [matrix[i][i] for i in range(len(names))]
    labels.append("residual")
    values.append(float(scale))
    correlation = None
    if len(names) == 2 and values[0] > 0 and values[1] > 0:
        correlation = matrix[0][1] / math.sqrt(values[0] * values[1])
    if correlation is not None:
        fig, (ax, right) = _figure(7.2, 3.4, ncols=2, gridspec_kw={"width_ratios": [3, 1]})
    else:
        fig, ax = _figure(5.2, 3.4)
    bars = ax.bar(labels, values, color=["#4c8bc4"] * (len(labels) - 1) + ["#9a9a9a"])
    ax.bar_label(bars, labels=[f"{v:.4g}" for v in values], fontsize=8)
    ax.set_ylabel("variance")
    ax.set_title("Variance components")
    ax.tick_params(axis="x", labelsize=8)
    if correlation is not None:
        bar = right.bar(["correlation"], [correlation], color="#c44e52")
        right.bar_label(bar, labels=[f"{correlation:.3f}"], fontsize=8)
        right.set_ylim(-1.05, 1.05)
        right.axhline(0, color="#888", linewidth=0.8)
        right.set_title("intercept x slope")
    caption = (f"Variances of the random effects per patient and of the residual ({result.get('method', '')}); "
               + ("their correlation on the right" if correlation is not None else "a random intercept only")
               + (" (on the boundary: a variance of 0 or a correlation of +-1)" if result.get("boundary") else "")
               + ".")
    fig.text(0.0, -0.02, caption, ha="left", va="top", fontsize=7.5, wrap=True, color="#444")
    return _svg(fig)


def result_plots(result: Mapping[str, Any]) -> list[str]:
    """Every plot that fits the result's shape, as inline SVG strings."""
    plots = [coefficient_plot(result), trajectory_plot(result), variance_plot(result), correlation_heatmap(result),
             survival_plot(result), scree_plot(result)]
    return [p for p in plots if p] + histogram_plots(result)
