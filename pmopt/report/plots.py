"""Curve rows (DESIGN §4) to PNG plots: a metric against n (best-of-N) and against KL (BoN and PPO).

Figures are built with the object-oriented matplotlib API on an Agg canvas (no pyplot, no global state,
no display needed), rendered into memory and written atomically, so a killed report never leaves a
truncated PNG. Each PM keeps one colour across every plot of a report; PPO lines are dashed so both
methods can share the KL axes (Gao et al. 2022 Fig. 1 style: optimisation pressure measured in KL).
"""

from __future__ import annotations

import io
import math
import re
from collections import defaultdict
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from pmopt.io import atomic_open

FIG_SIZE = (6.4, 4.2)  # inches
DPI = 120
BAND_ALPHA = {"bon": 0.18, "ppo": 0.10}  # CI band transparency; PPO lighter so overlaid bands stay legible
MARKER = {"bon": "o", "ppo": "s"}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22")
METHOD_LABEL = {"bon": "BoN", "ppo": "PPO", "rloo": "RLOO"}
KL_LABEL = "KL(policy ‖ base) [nats]; best-of-n: the bound log n − (n−1)/n"
SUPPORT_KL = "kl/support"  # best-of-n KL computed exactly on the sampled outputs (pmopt.bon.curves)
SUPPORT_KL_LABEL = "KL(policy ‖ base) [nats]; best-of-n: exact on the sampled outputs"


# ----------------------------------------------------------------------------- public API


def plot_metric_vs_n(rows: list[dict], metric: str, path: str | Path) -> Path:
    """Best-of-N rows of `metric` against n (log2 axis), one line per PM with its CI band."""
    series = _series(rows, metric, "bon", "n")
    if not series:
        raise ValueError(f"no best-of-N rows for metric '{metric}'")
    fig, ax = _new_figure(metric)
    colours = pm_colours(rows)
    for (_, _, pm), points in sorted(series.items()):
        _draw(ax, points, "n", colours[pm], "bon", pm)
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
    colours = pm_colours(rows)
    for (method, algorithm, pm), points in sorted(series.items()):
        x_key = "n" if method == "bon" else "step"
        ordered = sorted(points, key=lambda p, k=x_key: p[k])  # along optimisation, not along KL
        label = METHOD_LABEL.get(algorithm, algorithm.upper())
        _draw(ax, ordered, "kl", colours[pm], method, f"{pm} ({label})", sort=False)
    ax.set_xlabel(xlabel)
    return _save(fig, ax, path)


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
    colours = pm_colours(fits)
    paths = []
    for (metric, kl_kind), members in sorted(groups.items()):
        fig, ax = _new_figure(metric)
        ax.set_title(f"{metric}: Gao et al. 2022 form fitted")
        for fit in members:
            method = "bon" if fit["method"] == "bon" else "ppo"
            kl = [p["kl"] for p in fit["points"]]
            ax.plot(kl, [p["value"] for p in fit["points"]], linestyle="none", marker=MARKER[method],
                    color=colours[fit["pm"]], label=f"{fit['label']} measured")
            grid = [fit["kl_max"] * i / 200 for i in range(201)]
            curve = features(fit["form"], [math.sqrt(k) for k in grid]) @ [fit["alpha"], fit["beta"]]
            ax.plot(grid, fit["baseline"] + curve, linestyle="-" if method == "bon" else "--",
                    color=colours[fit["pm"]], label=f"{fit['label']} fit (R² {_r2(fit['r2'])})")
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


def pm_colours(rows: list[dict]) -> dict[str, str]:
    """A fixed colour per PM name (sorted), so a PM looks the same in every plot of a report."""
    names = sorted({r["pm"] for r in rows})
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


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
    ax.set_title(metric)
    ax.set_ylabel(metric.rsplit("/", 1)[-1].replace("_", " "))
    ax.grid(True, color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _draw(ax, points: list[dict], x_key: str, colour: str, method: str, label: str, sort: bool = True) -> None:
    """A line with markers (BoN solid, PPO dashed), plus the CI band where the rows have finite bounds."""
    if sort:
        points = sorted(points, key=lambda p: p[x_key])
    xs = [p[x_key] for p in points]
    ys = [p["value"] for p in points]
    ax.plot(xs, ys, linestyle="-" if method == "bon" else "--", marker=MARKER[method], markersize=4, linewidth=1.8, color=colour, label=label)
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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    with atomic_open(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return Path(path)
