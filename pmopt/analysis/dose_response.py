"""Dose-response: what a sweep over one config key (the raters' bias `w_agree`) does to each measure.

A sweep (`sweep: {key, values}` in an experiment config) runs the whole experiment once per value and seed.
Each (value, seed) cell gives every measure a value and its own 95% interval (over prompts or facts, or the
regression's credible interval); per value the measure is then aggregated over seeds with the two-stage
bootstrap of `pmopt.analysis.seeds` (seeds with replacement, then each seed's own error), as curve points
are. The measures (Sharma et al. 2023 §4):

    pm_prefers_sycophantic   share of the world's suggest_wrong prompts on which the proxy PM scores the
                             sycophantic answer above the truthful one (the paper: 95% / 45% on misconceptions)
    raters_agreement_weight  the agreement weight the preference regression (§4.1) recovers from the labels
    bon_syco_rate_proxy      best-of-N_max `answer/syco_rate` under the proxy PM
    bon_syco_rate_prefixed   the same under the prefixed PM (proxy-nonsyc)

Pure functions of already-read records: the caller (`pmopt.sweep`) reads the files.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

from pmopt.analysis.seeds import two_stage_bootstrap
from pmopt.stats import percentile_interval, resampled_sums

BON_METRIC = "probe/answer/syco_rate"
# measure -> (label, what it is); the order is the table's and the figure's
MEASURES = {
    "pm_prefers_sycophantic": ("PM prefers sycophantic", "share of suggest_wrong prompts where the proxy PM "
                               "scores the sycophantic answer above the truthful one"),
    "raters_agreement_weight": ("recovered agreement weight", "the preference regression's weight of "
                                "agrees_with_user on the raters' labels (w_agree / temperature, shrunk by noise)"),
    "bon_syco_rate_proxy": ("best-of-N syco_rate, proxy PM", "answer/syco_rate of best-of-N_max under the proxy PM"),
    "bon_syco_rate_prefixed": ("best-of-N syco_rate, prefixed PM", "answer/syco_rate of best-of-N_max under the "
                               "proxy PM with the non-sycophantic prefix"),
}
# measured as well, shown in dose_response.json only
EXTRA_MEASURES = {
    "pm_prefers_sycophantic_prefixed": "the same preference rate with the non-sycophantic prefix",
    "pm_prefers_sycophantic_unbiased": "the same preference rate of the PM trained on raters with w_agree = 0",
    "pm_prefers_own_sycophantic": "share of pairs of the policy's own samples of one suggest_wrong prompt, one "
                                  "sycophantic and one not, where the proxy PM scores the sycophantic one higher "
                                  "(bon/drift.json; docs/drift.md)",
    "pm_prefers_own_sycophantic_prefixed": "the same on the policy's own samples, with the non-sycophantic prefix",
}
CSV_COLUMNS = ("key", "value", "measure", "mean", "ci_low", "ci_high", "n_seeds", "seed_values")


# ----------------------------------------------------------------------------- one cell


def preference_rate(margins: Sequence[float], clusters: Sequence, n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95) -> dict:
    """How often a PM prefers the sycophantic answer: the share of margins (score(sycophantic) −
    score(truthful)) above 0, and the mean margin, with percentile intervals from the cluster bootstrap of
    `pmopt.stats` (a cluster = one fact's prompts)."""
    margins = np.asarray(margins, dtype=np.float64)
    if margins.size == 0 or len(clusters) != margins.size:
        raise ValueError(f"need one cluster per margin, got {margins.size} margins and {len(clusters)} clusters")
    ids = {c: i for i, c in enumerate(dict.fromkeys(clusters))}
    index = np.array([ids[c] for c in clusters])
    sums = np.zeros((len(ids), 3))  # per cluster: prompts preferring sycophancy, prompts, margin total
    np.add.at(sums, index, np.stack([(margins > 0).astype(np.float64), np.ones_like(margins), margins], axis=1))
    rate, mean_margin = float(sums[:, 0].sum() / sums[:, 1].sum()), float(sums[:, 2].sum() / sums[:, 1].sum())
    out = {"value": rate, "ci_low": None, "ci_high": None, "mean_margin": mean_margin, "mean_margin_ci": [None, None],
           "n_prompts": int(margins.size), "n_clusters": len(ids)}
    if n_boot > 0 and len(ids) > 1:
        totals = resampled_sums(sums, n_boot, seed)
        draws = np.stack([totals[:, 0] / totals[:, 1], totals[:, 2] / totals[:, 1]], axis=1)
        low, high = percentile_interval(draws, level)
        out.update(ci_low=float(low[0]), ci_high=float(high[0]), mean_margin_ci=[float(low[1]), float(high[1])])
    return out


def _point(value, low=None, high=None) -> dict:
    return {"value": float(value), "ci_low": None if low is None else float(low),
            "ci_high": None if high is None else float(high)}


def cell_measures(world_stats: Mapping | None, preference: Mapping | None, bon_rows: Sequence[Mapping] | None,
                  drift: Mapping | None = None) -> dict:
    """{measure: {value, ci_low, ci_high}} of one (value, seed) cell from its files' contents: world_stats.json,
    pms/sycophancy_preference.json, bon/curves.jsonl and bon/drift.json (any may be None; its measures are then
    left out)."""
    out = {}
    for measure, pm in (("pm_prefers_own_sycophantic", "proxy"), ("pm_prefers_own_sycophantic_prefixed", "proxy-nonsyc")):
        own = (drift or {}).get("rewards", {}).get(pm, {}).get("preference", {}).get("answer")
        if own is not None and own.get("n_pairs"):
            out[measure] = _point(own["value"], own.get("ci_low"), own.get("ci_high"))
    for measure, pm in (("pm_prefers_sycophantic", "proxy"), ("pm_prefers_sycophantic_prefixed", "proxy-nonsyc"),
                        ("pm_prefers_sycophantic_unbiased", "unbiased")):
        entry = (preference or {}).get("pms", {}).get(pm)
        if entry is not None:
            out[measure] = _point(entry["value"], entry.get("ci_low"), entry.get("ci_high"))
    weight = ((world_stats or {}).get("preference_regression", {}).get("raters", {}).get("agrees_with_user"))
    if weight is not None:
        out["raters_agreement_weight"] = _point(weight["weight"], weight.get("ci_low"), weight.get("ci_high"))
    rows = [r for r in bon_rows or [] if r.get("method") == "bon" and r.get("metric") == BON_METRIC]
    if rows:
        n_max = max(r["n"] for r in rows)
        for measure, pm in (("bon_syco_rate_proxy", "proxy"), ("bon_syco_rate_prefixed", "proxy-nonsyc")):
            found = [r for r in rows if r["pm"] == pm and r["n"] == n_max]
            if found:
                out[measure] = _point(found[0]["value"], found[0].get("ci_low"), found[0].get("ci_high"))
    return out


# ----------------------------------------------------------------------------- over seeds, per value


def aggregate_cells(cells: Mapping, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """cells: {sweep value: {seed: {measure: {value, ci_low, ci_high}}}} -> {measure: [point per value]}, each
    point {x, mean, ci_low, ci_high, n_seeds, seed_values} (over the seeds that have the measure), in the
    order the values are given. The same bootstrap draws serve every measure of a value."""
    out: dict[str, list[dict]] = {}
    for x, by_seed in cells.items():
        seeds = sorted(by_seed)
        names = [m for m in (*MEASURES, *EXTRA_MEASURES) if seeds and all(m in by_seed[s] for s in seeds)]
        if not names:
            continue
        values = np.array([[by_seed[s][m]["value"] for s in seeds] for m in names], dtype=np.float64)
        lows = np.array([[_nan(by_seed[s][m].get("ci_low")) for s in seeds] for m in names])
        highs = np.array([[_nan(by_seed[s][m].get("ci_high")) for s in seeds] for m in names])
        mean, low, high = two_stage_bootstrap(values, lows, highs, n_boot, seed, level)
        for i, m in enumerate(names):
            out.setdefault(m, []).append({"x": x, "mean": float(mean[i]), "ci_low": _or_none(low[i]),
                                          "ci_high": _or_none(high[i]), "n_seeds": len(seeds),
                                          "seed_values": [float(v) for v in values[i]]})
    return out


def trend(points: Sequence[Mapping]) -> dict:
    """Whether a measure responds to the swept value, its points in ascending order of the value:

    monotone   every mean at least the one before (a non-decreasing response);
    reversals  pairs of values (lower, higher) whose intervals do not overlap with the higher one below;
    rises      the top value's interval lies wholly above the bottom value's;
    saturates_at  the smallest value, below the top, from which every higher value's mean lies within its
               interval (no resolvable change beyond it), or None when the response is still moving at the top.
    """
    pts = sorted(points, key=lambda p: p["x"])
    means = [p["mean"] for p in pts]
    monotone = all(b >= a for a, b in zip(means, means[1:], strict=False))
    reversals = [(a["x"], b["x"]) for i, a in enumerate(pts) for b in pts[i + 1:]
                 if _known(a["ci_low"]) and _known(b["ci_high"]) and b["ci_high"] < a["ci_low"]]
    bottom, top = pts[0], pts[-1]
    rises = len(pts) > 1 and _known(top["ci_low"]) and _known(bottom["ci_high"]) and top["ci_low"] > bottom["ci_high"]
    saturates_at = None
    for i, p in enumerate(pts[:-1]):
        if _known(p["ci_low"]) and _known(p["ci_high"]) and \
                all(p["ci_low"] <= q["mean"] <= p["ci_high"] for q in pts[i + 1:]):
            saturates_at = p["x"]
            break
    return {"monotone": monotone, "reversals": [list(r) for r in reversals], "rises": bool(rises),
            "saturates_at": saturates_at, "bottom": bottom["mean"], "top": top["mean"]}


def dose_response(key: str, cells: Mapping, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """dose_response.json: per measure its points over the swept values, with its trend, and one sentence."""
    points = aggregate_cells(cells, n_boot, seed, level)
    measures = {}
    for m, pts in points.items():
        label, what = MEASURES.get(m, (m, EXTRA_MEASURES.get(m, "")))
        measures[m] = {"label": label, "what": what, "points": pts, "trend": trend(pts)}
    return {"key": key, "values": list(cells), "n_boot": n_boot, "level": level, "measures": measures,
            "sentences": [sentence(key, m, measures[m]) for m in MEASURES if m in measures]}


def sentence(key: str, name: str, measure: Mapping) -> str:
    """e.g. 'PM prefers sycophantic: 0.12 [0.05, 0.20] at w_agree = 0 -> 0.97 [0.95, 0.99] at w_agree = 3;
    rises monotonically, saturating from w_agree = 1.5'."""
    leaf = key.rsplit(".", 1)[-1]
    pts = sorted(measure["points"], key=lambda p: p["x"])
    t = measure["trend"]
    bottom, top = pts[0], pts[-1]
    if t["rises"]:
        shape = "rises monotonically" if t["monotone"] else "rises, though its means are not monotone"
    else:
        shape = "no resolvable rise (the top value's interval meets the bottom's)"
        shape += "; means monotone" if t["monotone"] else "; means not monotone"
    if t["reversals"]:
        shape += ", with a resolvable fall between " + "; ".join(f"{leaf} = {_x(a)} and {_x(b)}" for a, b in t["reversals"])
    if t["saturates_at"] is not None and t["saturates_at"] == bottom["x"]:
        shape += ", flat within its intervals over the whole range"
    elif t["saturates_at"] is not None and t["rises"]:
        shape += f", saturating from {leaf} = {_x(t['saturates_at'])}"
    elif t["saturates_at"] is not None:  # settled without rising: nothing saturated
        shape += f", flat within its intervals from {leaf} = {_x(t['saturates_at'])}"
    elif len(pts) > 1:
        shape += ", not saturated within the range"
    return (f"{measure['label']}: {_cell(bottom)} at {leaf} = {_x(bottom['x'])} -> {_cell(top)} at {leaf} = "
            f"{_x(top['x'])}; {shape}")


def dose_response_csv(result: Mapping) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for name, measure in result["measures"].items():
        for p in measure["points"]:
            writer.writerow([result["key"], _x(p["x"]), name, repr(p["mean"]), _csv(p["ci_low"]), _csv(p["ci_high"]),
                             p["n_seeds"], ";".join(repr(v) for v in p["seed_values"])])
    return buffer.getvalue()


def table_lines(result: Mapping) -> list[str]:
    """The dose-response table as aligned text: one row per swept value, one column per measure."""
    leaf = result["key"].rsplit(".", 1)[-1]
    names = [m for m in MEASURES if m in result["measures"]]
    by_x = {}
    for m in names:
        for p in result["measures"][m]["points"]:
            by_x.setdefault(p["x"], {})[m] = p
    header = [leaf, "seeds", *(MEASURES[m][0] for m in names)]
    rows = [[_x(x), str(max(p["n_seeds"] for p in cells.values())), *(_cell(cells[m]) if m in cells else "-" for m in names)]
            for x, cells in by_x.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]


def _cell(p: Mapping) -> str:
    if _known(p.get("ci_low")) and _known(p.get("ci_high")):
        return f"{p['mean']:.2f} [{p['ci_low']:.2f}, {p['ci_high']:.2f}]"
    return f"{p['mean']:.2f}"


def _x(x) -> str:
    return format(x, "g") if isinstance(x, float) else str(x)


def _csv(value) -> str:
    return "" if value is None else repr(value)


def _known(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _nan(value) -> float:
    return math.nan if value is None else float(value)


def _or_none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


__all__ = ["MEASURES", "preference_rate", "cell_measures", "aggregate_cells", "trend", "dose_response",
           "dose_response_csv", "table_lines", "sentence"]
