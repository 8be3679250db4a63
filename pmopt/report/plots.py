"""Curve rows (docs/ARCHITECTURE.md §4) to PNG plots: a metric against n (best-of-N) and against KL (BoN and PPO).

Figures are built with the object-oriented matplotlib API on an Agg canvas (no pyplot, no global state,
no display needed), rendered into memory and written atomically, so a killed report never leaves a
truncated PNG. Each PM keeps one style across every plot of a report (`pm_styles`): a PM family shares a
hue (the proxy PM and its prefixed form; the ensemble's aggregates, drawn thicker; the unbiased PM; gold in
black) and every PM has its own marker, so lines stay apart in print and for colour-blind readers. PPO lines
are dashed so both methods can share the KL axes (Gao et al. 2022 Fig. 1 style: optimisation pressure
measured in KL).
"""

from __future__ import annotations

import io
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from pmopt.io import atomic_open

FIG_SIZE = (6.4, 4.2)  # inches
HEADLINE_SIZE = (11.0, 3.9)  # two panels side by side, legend on the right; fits a 1280 px wide screen
DPI = 100  # modest: the report embeds its curated figures, and the page should stay well under 2 MB
BAND_ALPHA = {"bon": 0.18, "ppo": 0.10}  # CI band transparency; PPO lighter so overlaid bands stay legible
LINE_WIDTH, ENSEMBLE_LINE_WIDTH = 1.6, 3.0
# Families of PMs (matched by name) share a hue, lighter shades for later members; PMs outside a family
# take the other hues in turn. Markers are per PM, in order, so no two lines of a plot share one.
FAMILY_SHADES = {"proxy": ("#1f4e9c", "#6ea6dc", "#0e9aa7"), "ensemble": ("#5b2a86", "#8e63b8", "#b79ad6"),
                 "unbiased": ("#2a8a3e", "#7cc68a"), "gold": ("#111111",)}
OTHER_HUES = ("#d62728", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
# an RL β sweep (pmopt.rl.beta_sweep) is a curve of its own: each point the final one of a run at one fixed β
METHOD_LABEL = {"bon": "BoN", "ppo": "PPO", "rloo": "RLOO", "ppo-beta-sweep": "PPO β sweep",
                "rloo-beta-sweep": "RLOO β sweep"}
KL_LABEL = "KL(policy ‖ base) [nats]; best-of-n: the bound log n − (n−1)/n"
SUPPORT_KL = "kl/support"  # best-of-n KL computed exactly on the sampled outputs (pmopt.bon.curves)
SUPPORT_KL_LABEL = "KL(policy ‖ base) [nats]; best-of-n: exact on the sampled outputs"


# ----------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class PMStyle:
    colour: str
    marker: str
    linewidth: float


def plot_metric_vs_n(rows: list[dict], metric: str, path: str | Path) -> Path:
    """Best-of-N rows of `metric` against n (log2 axis), one line per PM with its CI band."""
    series = _series(rows, metric, "bon", "n")
    if not series:
        raise ValueError(f"no best-of-N rows for metric '{metric}'")
    fig, ax = _new_figure(metric)
    styles = pm_styles(rows)
    for (_, _, pm), points in sorted(series.items(), key=lambda item: pm_order(item[0][2])):
        _draw(ax, points, "n", styles[pm], "bon", pm)
    ns = sorted({p["n"] for pts in series.values() for p in pts})
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ns))  # label exactly the n of the grid, as integers
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(n) for n in ns])
    ax.set_xlabel("n (best-of-n samples, log scale)")
    return _save(fig, ax, path)


def plot_metric_vs_kl(rows: list[dict], metric: str, path: str | Path, xlabel: str = KL_LABEL) -> Path:
    """`metric` against KL to the base policy: BoN solid, PPO dashed, on the same axes."""
    series = _series(rows, metric, None, "kl")
    if not series:
        raise ValueError(f"no rows with a KL value for metric '{metric}'")
    fig, ax = _new_figure(metric)
    _draw_vs_kl(ax, series, pm_styles(rows))
    ax.set_xlabel(xlabel)
    return _save(fig, ax, path)


def plot_headline(rows: list[dict], metrics: list[str], path: str | Path) -> Path:
    """The report's headline figure: each of `metrics` against KL, one panel per metric, every PM a line.

    Best-of-n points sit at their exact-on-support KL where the sweep computed it (else at the bound), so
    the x axis means the same in both panels; one legend for both, on the right.
    """
    on_support = rows_on_support_kl(rows)
    use_support = any(r["method"] == "bon" for r in on_support)
    plotted = on_support if use_support else rows
    panels = [(m, _series(plotted, m, None, "kl")) for m in metrics]
    panels = [(m, s) for m, s in panels if s]
    if not panels:
        raise ValueError(f"no rows with a KL value for metrics {', '.join(metrics)}")
    fig = Figure(figsize=HEADLINE_SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    styles = pm_styles(rows)
    for i, (metric, series) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        _style_axes(ax, metric)
        _draw_vs_kl(ax, series, styles)
        ax.set_xlabel("KL(policy ‖ base) [nats]" + ("; best-of-n exact on the samples" if use_support else
                                                     "; best-of-n: the bound"))
    legend = {}  # label -> handle, over both panels (a PM may lack one metric)
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.legend(legend.values(), legend.keys(), loc="outside right center", frameon=False, fontsize="small")
    return _write_png(fig, path)


DOSE_SIZE = (11.0, 3.3)  # four panels in a row: the sweep's first screen
DOSE_PANELS = (("pm_prefers_sycophantic",), ("raters_agreement_weight",),
               ("bon_syco_rate_proxy", "bon_syco_rate_prefixed"))


def plot_dose_response(result: dict, path: str | Path) -> Path:
    """Each dose-response measure against the swept value (pmopt.analysis.dose_response): the mean over seeds
    with its 95% interval as a band, each seed's value as a small dot; best-of-N under the proxy and the
    prefixed PM share a panel, in the proxy family's two shades."""
    measures = result["measures"]
    panels = [[m for m in group if m in measures] for group in DOSE_PANELS]
    panels = [group for group in panels if group]
    if not panels:
        raise ValueError("no dose-response measures to plot")
    fig = Figure(figsize=DOSE_SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    leaf = result["key"].rsplit(".", 1)[-1]
    shades = {"bon_syco_rate_proxy": (FAMILY_SHADES["proxy"][0], "o", "proxy PM"),
              "bon_syco_rate_prefixed": (FAMILY_SHADES["proxy"][1], "s", "prefixed PM (proxy-nonsyc)")}
    for i, group in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.grid(True, color="#dddddd", linewidth=0.8)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        for m in group:
            colour, marker, label = shades.get(m, (FAMILY_SHADES["proxy"][0], "o", None))
            points = sorted(measures[m]["points"], key=lambda p: p["x"])
            xs = [p["x"] for p in points]
            ax.plot(xs, [p["mean"] for p in points], marker=marker, color=colour, linewidth=LINE_WIDTH, label=label)
            band = [p for p in points if _finite(p.get("ci_low")) and _finite(p.get("ci_high"))]
            if band:
                ax.fill_between([p["x"] for p in band], [p["ci_low"] for p in band], [p["ci_high"] for p in band],
                                color=colour, alpha=BAND_ALPHA["bon"], linewidth=0)
            for p in points:
                ax.scatter([p["x"]] * len(p["seed_values"]), p["seed_values"], s=9, color=colour, alpha=0.5,
                           linewidths=0)
        title = measures[group[0]]["label"] if len(group) == 1 else "best-of-N syco_rate (answer probe)"
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel(leaf)
        ax.set_xticks(sorted({p["x"] for m in group for p in measures[m]["points"]}))
        if group[0] != "raters_agreement_weight":
            ax.set_ylim(-0.03, 1.03)
        if len(group) > 1:
            ax.legend(frameon=False, fontsize="small")
    return _write_png(fig, path)


def plot_all(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """One PNG per metric for each axis that has data: `<metric>_vs_n.png`, `<metric>_vs_kl.png` and,
    where the sweep computed `kl/support`, `<metric>_vs_kl_support.png`."""
    out_dir = Path(out_dir)
    paths = []
    on_support = rows_on_support_kl(rows)
    for metric in sorted({r["metric"] for r in rows}):
        stem = slug(metric)
        if _series(rows, metric, "bon", "n"):
            paths.append(plot_metric_vs_n(rows, metric, out_dir / f"{stem}_vs_n.png"))
        if _series(rows, metric, None, "kl"):
            paths.append(plot_metric_vs_kl(rows, metric, out_dir / f"{stem}_vs_kl.png"))
        if metric != SUPPORT_KL and _series(on_support, metric, "bon", "kl"):
            paths.append(plot_metric_vs_kl(on_support, metric, out_dir / f"{stem}_vs_kl_support.png",
                                           xlabel=SUPPORT_KL_LABEL))
    return paths


def plot_fits(fits: list[dict], out_dir: str | Path) -> list[Path]:
    """Gao et al. 2022 fits (`pmopt.analysis.fits`): per metric and KL kind, each curve's measured points
    with its fitted gold(0) + d(α − βd) (best-of-n) or gold(0) + d(α − β log d) (RL) drawn over them."""
    from pmopt.analysis.fits import features

    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for fit in fits:
        groups[(fit["metric"], fit["kl_kind"])].append(fit)
    styles = pm_styles(fits)
    paths = []
    for (metric, kl_kind), members in sorted(groups.items()):
        fig, ax = _new_figure(metric)
        ax.set_title(f"{metric}: Gao et al. 2022 form fitted")
        for fit in members:
            style = styles[fit["pm"]]
            kl = [p["kl"] for p in fit["points"]]
            ax.plot(kl, [p["value"] for p in fit["points"]], linestyle="none", marker=style.marker,
                    color=style.colour, label=f"{fit['label']} measured")
            grid = [fit["kl_max"] * i / 200 for i in range(201)]
            curve = features(fit["form"], [math.sqrt(k) for k in grid]) @ [fit["alpha"], fit["beta"]]
            ax.plot(grid, fit["baseline"] + curve, linestyle="-" if fit["method"] == "bon" else "--",
                    color=style.colour, linewidth=style.linewidth, label=f"{fit['label']} fit (R² {_r2(fit['r2'])})")
        ax.set_xlabel(f"KL(policy ‖ base) [nats] ({kl_kind})")
        paths.append(_save(fig, ax, Path(out_dir) / f"fit_{slug(metric)}_{kl_kind}.png"))
    return paths


def rows_on_support_kl(rows: list[dict]) -> list[dict]:
    """The rows with each best-of-n point moved from the KL bound to its PM's `kl/support` at that n.

    PPO rows keep their measured KL, so both methods share a KL axis that is not an upper bound.
    Best-of-n rows of a PM without `kl/support` rows are left out.
    """
    support = {(r["pm"], r["n"]): r["value"] for r in rows if r["method"] == "bon" and r["metric"] == SUPPORT_KL}
    out = []
    for row in rows:
        if row["method"] != "bon":
            out.append(row)
        elif (row["pm"], row["n"]) in support:
            out.append({**row, "kl": support[(row["pm"], row["n"])], "kl_kind": "support"})
    return out


def slug(metric: str) -> str:
    """File-name-safe form of a namespaced metric: 'probe/answer/syco_rate' -> 'probe_answer_syco_rate'."""
    return re.sub(r"[^A-Za-z0-9]+", "_", metric).strip("_") or "metric"


def pm_family(name: str) -> str:
    """The family a PM's name puts it in: its hue in every plot (and its group in the report's legend)."""
    if name == "gold":
        return "gold"
    if name.startswith("ens-") or name.startswith("ensemble"):
        return "ensemble"
    for family in ("proxy", "unbiased"):
        if name.startswith(family):
            return family
    return name


def pm_order(name: str) -> tuple:
    """Proxy family first, then unbiased, ensemble, others, gold last; by name within a family."""
    rank = {"proxy": 0, "unbiased": 1, "ensemble": 2, "gold": 4}
    return rank.get(pm_family(name), 3), name


def pm_styles(rows: list[dict]) -> dict[str, PMStyle]:
    """A fixed style per PM of `rows` (anything with a "pm" key), the same in every plot of a report."""
    names = sorted({r["pm"] for r in rows}, key=pm_order)
    in_family: dict[str, int] = defaultdict(int)
    others = 0
    styles = {}
    for i, name in enumerate(names):
        family = pm_family(name)
        shades = FAMILY_SHADES.get(family)
        if shades is not None:
            colour = shades[min(in_family[family], len(shades) - 1)]
            in_family[family] += 1
        else:
            colour, others = OTHER_HUES[others % len(OTHER_HUES)], others + 1
        width = ENSEMBLE_LINE_WIDTH if family == "ensemble" else LINE_WIDTH
        styles[name] = PMStyle(colour, MARKERS[i % len(MARKERS)], width)
    return styles


# ----------------------------------------------------------------------------- helpers


def _series(rows: list[dict], metric: str, method: str | None, x_key: str) -> dict[tuple, list[dict]]:
    """Rows of `metric` (and `method` if given) with a finite `x_key`, grouped by (method, algorithm, pm)."""
    out = defaultdict(list)
    for row in rows:
        if row["metric"] != metric or (method is not None and row["method"] != method):
            continue
        x = row.get(x_key)
        if isinstance(x, (int, float)) and math.isfinite(x):
            # RL rows name their algorithm (rl_method: ppo | rloo): a PPO and an RLOO run against the
            # same PM are two lines, not one
            out[(row["method"], row.get("rl_method") or row["method"], row["pm"])].append(row)
    return dict(out)


def _new_figure(metric: str):
    fig = Figure(figsize=FIG_SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    _style_axes(ax, metric)
    return fig, ax


def _style_axes(ax, metric: str) -> None:
    ax.set_title(metric)
    ax.set_ylabel(metric.rsplit("/", 1)[-1].replace("_", " "))
    ax.grid(True, color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _draw_vs_kl(ax, series: dict[tuple, list[dict]], styles: dict[str, PMStyle]) -> None:
    for (method, algorithm, pm), points in sorted(series.items(), key=lambda item: (pm_order(item[0][2]), item[0])):
        x_key = "n" if method == "bon" else "step"
        # along optimisation; a β sweep's final points share their step and are ordered by their KL
        ordered = sorted(points, key=lambda p, k=x_key: (p[k], p["kl"]))
        label = METHOD_LABEL.get(algorithm, algorithm.upper())
        _draw(ax, ordered, "kl", styles[pm], method, f"{pm} ({label})", sort=False)


def _draw(ax, points: list[dict], x_key: str, style: PMStyle, method: str, label: str, sort: bool = True) -> None:
    """A line with markers (BoN solid, PPO dashed), plus the CI band where the rows have finite bounds."""
    if sort:
        points = sorted(points, key=lambda p: p[x_key])
    xs = [p[x_key] for p in points]
    ys = [p["value"] for p in points]
    colour = style.colour
    ax.plot(xs, ys, linestyle="-" if method == "bon" else "--", marker=style.marker, markersize=5,
            linewidth=style.linewidth, color=colour, label=label)
    band = [p for p in points if _finite(p.get("ci_low")) and _finite(p.get("ci_high"))]
    if len(band) >= 2:
        ax.fill_between([p[x_key] for p in band], [p["ci_low"] for p in band], [p["ci_high"] for p in band],
                        color=colour, alpha=BAND_ALPHA[method], linewidth=0)
    elif len(band) == 1:  # a lone point: an error bar instead of a zero-width band
        p = band[0]
        ax.errorbar([p[x_key]], [p["value"]], yerr=[[p["value"] - p["ci_low"]], [p["ci_high"] - p["value"]]],
                    color=colour, capsize=3, linewidth=1)


def _r2(value) -> str:
    return f"{value:.2f}" if _finite(value) else "n/a"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _save(fig: Figure, ax, path: str | Path) -> Path:
    ax.legend(frameon=False, fontsize="small")
    return _write_png(fig, path)


def _write_png(fig: Figure, path: str | Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    with atomic_open(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return Path(path)
