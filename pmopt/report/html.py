"""`pmopt report RUN_DIR`: a run's curves to plots, a summary CSV and one HTML page whose first screen is the answer.

Reads (docs/ARCHITECTURE.md §4, §9):
    RUN/bon/curves.jsonl, RUN/ppo/curves.jsonl   curve rows (at least one file must exist); or
    RUN/curves.jsonl                             when RUN is one stage's output (`pmopt bon --out RUN`)
    RUN/claims.json                              optional: the claim, per-seed verdicts, the sentence
    RUN/[seed-<k>/]pms/<name>/pmopt_pm.json      optional: how each PM was trained, its held-out accuracy
    RUN/fits.json                                optional: Gao et al. 2022 fits (`pmopt fit`)
    RUN/world/world_stats.json, RUN/probes/metrics.json, RUN/aggregate/*.json   optional tables
    RUN/config.yaml                              optional, shown verbatim
    RUN/dose_response.json                       a sweep's dose-response (pmopt.sweep): then the page opens
                                                 with it, and curve files are optional
    RUN/[<value>/][seed-<k>/]bon/drift.json      optional: the drift each reward predicts (pmopt.bon.drift)
    RUN/intervene/[seed-<k>/]after/bon/curves.jsonl  optional: `pmopt intervene --set base.run=RUN` into it
Writes (default OUT = RUN/report):
    OUT/plots/*.png (every metric), OUT/plots/headline.png, OUT/summary.csv, OUT/report.html; with drift
    files OUT/drift_table.json, .csv; with two remedies or more OUT/frontier.json, OUT/plots/frontier.png.
The page opens with the key result (the claim in words with its intervals, the headline figure: the claim's
metric and gold reward against KL for every PM, the per-seed verdicts), then a legend of the PMs, the fits
and a few curated figures, embedded so the page stands alone; every other plot is a link in a collapsed
section, which keeps the page small (well under 2 MB).
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path

from pmopt.io import PmoptError, atomic_write_text, prepare_out_dir, read_json_file, read_jsonl
from pmopt.records import CURVE_X, validate_curve_row
from pmopt.report.drift import drift_section, frontier_section, write_drift, write_frontier
from pmopt.report.key_result import check_claims, key_sentences
from pmopt.report.plots import plot_all, plot_dose_response, plot_fits, plot_headline
from pmopt.report.pm_legend import LegendRow, legend_rows
from pmopt.report.tables import aggregate_rows, check_aggregate, interval_cell, is_aggregate, json_rows

CURVE_FILES = ("bon/curves.jsonl", "ppo/curves.jsonl", "curves.jsonl")
DOSE_FILE = "dose_response.json"
JSON_TABLES = (("World statistics", "world/world_stats.json"), ("Probe metrics", "probes/metrics.json"),
               ("World statistics over seeds", "aggregate/world_stats.json"),
               ("Probe metrics over seeds", "aggregate/probe_metrics.json"))
CLAIM_METRIC = "probe/answer/syco_rate"
HEADLINE_METRICS = (CLAIM_METRIC, "gold/reward")
# Figures embedded after the headline, in order: per group the first plot that exists (exact-on-support KL
# preferred to the bound). With the headline that is at most 8 on the page; the rest are links.
CURATED = (("probe_answer_syco_rate_vs_n",), ("gold_reward_vs_n",),
           ("pm_score_vs_kl_support", "pm_score_vs_kl"),
           ("probe_mimicry_syco_rate_vs_kl_support", "probe_mimicry_syco_rate_vs_kl"),
           ("probe_answer_accuracy_change_suggest_wrong_vs_kl_support", "probe_answer_accuracy_change_suggest_wrong_vs_kl"),
           ("kl_support_vs_n",),
           ("fit_gold_reward_support", "fit_gold_reward_bound", "fit_gold_reward_measured"))
FRONTIER_CAPTION = ("Each remedy's answer syco_rate and gold reward against KL to the base policy (best-of-n solid at "
                    "its bound; the intervened policy's curve shifted by its own KL; PPO dashed; bands: 95% intervals).")
SIG_DIGITS = 4  # numbers shown in the HTML tables (summary.csv keeps full precision)
SUMMARY_COLUMNS = ("method", "pm", "metric", "x", "first_x", "first_value", "first_ci_low", "first_ci_high",
                   "first_kl", "last_x", "last_value", "last_ci_low", "last_ci_high", "last_kl", "change")


# ----------------------------------------------------------------------------- entry points


def report_command(args) -> Path:
    """CLI: `pmopt report RUN_DIR [--out DIR]`; returns the HTML path."""
    run_dir = check_run_dir(args.run_dir)
    out = prepare_out_dir(args.out if args.out is not None else run_dir / "report", "report")
    path = build_report(run_dir, out)
    print(f"pmopt report: HTML report at {path.resolve()} (plots and summary.csv beside it)")
    return path


def build_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Plots, summary.csv and report.html for `run_dir`; everything is read and checked before writing."""
    run_dir = check_run_dir(run_dir)
    dose = _read_json_dict(run_dir / DOSE_FILE) if (run_dir / DOSE_FILE).is_file() else None
    has_curves = any((run_dir / name).is_file() for name in CURVE_FILES)
    rows = load_curves(run_dir) if dose is None or has_curves else []
    tables = [(title, run_dir / name, _read_json_dict(run_dir / name)) for title, name in JSON_TABLES
              if (run_dir / name).is_file()]
    for _, path, data in tables:
        if is_aggregate(data):
            check_aggregate(data, path)
    config_path = run_dir / "config.yaml"
    config_text = config_path.read_text(encoding="utf-8", errors="replace") if config_path.is_file() else None
    claims = _read_json_dict(run_dir / "claims.json") if (run_dir / "claims.json").is_file() else None
    if claims is not None:
        check_claims(claims, run_dir / "claims.json")
    legend = legend_rows(run_dir, {r["pm"] for r in rows})
    fits = _read_json_dict(run_dir / "fits.json").get("fits", []) if (run_dir / "fits.json").is_file() else []

    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    plots = plot_all(rows, out_dir / "plots") + plot_fits(fits, out_dir / "plots" / "fits")
    headline = _headline_plot(rows, claims, out_dir / "plots" / "headline.png")
    dose_plot = _dose_plot(dose, out_dir / "plots" / "dose_response.png")
    summary = summary_rows(rows)
    atomic_write_text(out_dir / "summary.csv", summary_csv(summary))
    drift = write_drift(run_dir, out_dir)
    remedies, remedies_plot = write_frontier(run_dir, rows, out_dir) if rows else (None, None)
    page = render_html(Page(run_dir, out_dir, rows, summary, plots, headline, legend, tables, config_text,
                            fits, claims, dose, dose_plot, drift, remedies, remedies_plot))
    return atomic_write_text(out_dir / "report.html", page)


def _headline_plot(rows: list[dict], claims: dict | None, path: Path) -> Path | None:
    """The claim's metric and gold reward against KL, one panel each; None when no row has a KL."""
    claim = (claims or {}).get("claim") or {}
    metrics = [claim.get("metric", CLAIM_METRIC), *[m for m in HEADLINE_METRICS[1:] if m != claim.get("metric")]]
    try:
        return plot_headline(rows, metrics, path)
    except ValueError:
        return None


def _dose_plot(dose: dict | None, path: Path) -> Path | None:
    if dose is None:
        return None
    try:
        return plot_dose_response(dose, path)
    except (ValueError, KeyError):
        return None


def curated_plots(plots: list[Path]) -> list[Path]:
    """The figures the page embeds below the headline (CURATED order, at most one per group)."""
    by_stem = {p.stem: p for p in plots}
    return [by_stem[next(s for s in group if s in by_stem)] for group in CURATED if any(s in by_stem for s in group)]


# ----------------------------------------------------------------------------- reading


def check_run_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PmoptError(f"{run_dir}: run directory not found")
    return run_dir


def load_curves(run_dir: str | Path) -> list[dict]:
    """All curve rows of a run, validated (errors name file, line and field)."""
    run_dir = Path(run_dir)
    present = [run_dir / name for name in CURVE_FILES if (run_dir / name).is_file()]
    if not present:
        expected = " and/or ".join(str(run_dir / name) for name in CURVE_FILES)
        raise PmoptError(f"{run_dir}: no curves to report: expected {expected}")
    rows = [row for path in present for row in read_jsonl(path, validate_curve_row)]
    if not rows:
        raise PmoptError(f"{run_dir}: curve files are empty: {', '.join(map(str, present))}")
    return rows


def _read_json_dict(path: Path) -> dict:
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise PmoptError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------- summary table


def summary_rows(rows: list[dict]) -> list[dict]:
    """Per (method, pm, metric): the value (with CI and KL) at the smallest and largest n or step."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["pm"], row["metric"]), []).append(row)
    out = []
    for (method, pm, metric), members in sorted(groups.items()):
        x_key = CURVE_X[method]
        members = sorted(members, key=lambda r, k=x_key: r[k])
        first, last = members[0], members[-1]
        entry = {"method": method, "pm": pm, "metric": metric, "x": x_key}
        for tag, row in (("first", first), ("last", last)):
            entry[f"{tag}_x"] = row[x_key]
            for field in ("value", "ci_low", "ci_high", "kl"):
                entry[f"{tag}_{field}"] = row[field]
        entry["change"] = last["value"] - first["value"]
        out.append(entry)
    return out


def fmt(value, digits: int | None = SIG_DIGITS) -> str:
    """Numbers to `digits` significant digits (None: shortest exact repr); None/NaN as empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and digits is not None:
        return f"{value:.{digits}g}"
    return str(value)


def summary_csv(summary: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    for entry in summary:
        writer.writerow([fmt(entry[column], digits=None) for column in SUMMARY_COLUMNS])
    return buffer.getvalue()


# ----------------------------------------------------------------------------- HTML

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; margin: .2em 0; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.4em; }
#key-result h2 { margin-top: .4em; }
.answer { font-size: 1.02em; line-height: 1.45; max-width: 1150px; margin: .3em 0; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th { background: #f4f4f4; } tr:nth-child(even) td { background: #fafafa; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 1em; }
figure { margin: 0; } figure img { max-width: 640px; width: 100%; border: 1px solid #eee; }
figure.headline img { max-width: 1100px; }
figcaption { font-size: .8em; color: #666; }
details { margin: .8em 0; } summary { cursor: pointer; font-weight: 600; }
ul.files { columns: 3; font-size: .85em; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; font-size: .85em; }
.note { color: #666; font-size: .85em; margin: .2em 0; }
"""


@dataclass
class Page:
    """Everything report.html shows, read and checked before anything is written."""

    run_dir: Path
    out_dir: Path
    rows: list[dict]
    summary: list[dict]
    plots: list[Path]  # every plot written (linked; the curated ones embedded)
    headline: Path | None
    legend: list[LegendRow]
    tables: list[tuple[str, Path, dict]]
    config_text: str | None
    fits: list[dict]
    claims: dict | None
    dose: dict | None = None  # a sweep's dose_response.json
    dose_plot: Path | None = None
    drift: dict | None = None  # predicted against measured drift (pmopt.analysis.drift)
    remedies: dict | None = None  # the remedies' frontier (pmopt.analysis.frontier)
    remedies_plot: Path | None = None


def render_html(page: Page) -> str:
    name = _e(page.run_dir.name)
    curated = curated_plots(page.plots)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>pmopt report: {name}</title><style>{STYLE}</style></head><body>",
        f"<h1>pmopt report: {name}</h1>",
        f'<p class="note">Run directory {_e(str(page.run_dir.resolve()))}; generated '
        f"{_dt.datetime.now().isoformat(timespec='seconds')}.</p>",
        *(_dose_section(page) if page.dose is not None else _key_result(page)),
        *(_legend_section(page.legend) if page.legend else []),
        *_fits_section(page.fits),
    ]
    if curated:
        parts += ["<h2>Figures</h2>", _plots_section(curated)]
    if page.remedies:
        parts += frontier_section(page.remedies, _figure(page.remedies_plot, "headline", FRONTIER_CAPTION)
                                  if page.remedies_plot else None)
    if page.drift:
        parts += drift_section(page.drift)
    parts += _details_sections(page, curated)
    for title, _, data in page.tables:
        parts += [f"<h2>{_e(title)}</h2>", _json_table(data)]
    if page.config_text is not None:
        parts.append(f"<details><summary>Config (config.yaml)</summary><pre>{_e(page.config_text)}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _key_result(page: Page) -> list[str]:
    """The answer first: the claim in words with its intervals, the headline figure, each seed's verdict."""
    if page.claims is None and page.headline is None:
        return []
    parts = ['<section id="key-result">', "<h2>Key result</h2>"]
    if page.claims is not None:
        parts += [f'<p class="answer">{_e(line)}</p>' for line in key_sentences(page.claims, page.rows)]
    if page.headline is not None:
        parts.append(_figure(page.headline, "headline", "The claim's metric and gold reward against KL to the "
                             "base policy, every PM (best-of-n solid, PPO dashed; bands: 95% intervals)."))
    parts += _per_seed_table(page.claims or {})
    parts.append("</section>")
    return parts


def _dose_section(page: Page) -> list[str]:
    """A sweep's answer first: does each measure respond to the swept value, the figure, then the table."""
    from pmopt.analysis.dose_response import MEASURES

    dose = page.dose
    leaf = dose["key"].rsplit(".", 1)[-1]
    parts = ['<section id="key-result">', f"<h2>Key result: dose-response over {_e(dose['key'])}</h2>"]
    parts += [f'<p class="answer">{_e(line)}</p>' for line in dose.get("sentences", [])]
    if page.dose_plot is not None:
        parts.append(_figure(page.dose_plot, "headline", f"Each measure against {leaf}: mean over seeds (line), "
                             "95% two-stage bootstrap interval (band), each seed (dots)."))
    names = [m for m in MEASURES if m in dose["measures"]]
    xs = sorted({p["x"] for m in names for p in dose["measures"][m]["points"]})
    head = f"<tr><th>{_e(leaf)}</th>" + "".join(f"<th>{_e(dose['measures'][m]['label'])}</th>" for m in names) + "</tr>"
    body = []
    for x in xs:
        cells = []
        for m in names:
            point = next((p for p in dose["measures"][m]["points"] if p["x"] == x), None)
            cells.append("" if point is None else interval_cell(point["mean"], point["ci_low"], point["ci_high"], 3))
        body.append(f"<tr><td>{_e(format(x, 'g') if isinstance(x, float) else str(x))}</td>"
                    + "".join(f'<td class="num">{c}</td>' for c in cells) + "</tr>")
    folders = ", ".join(_e(f) for f in dose.get("folders", {}).values())
    parts += [f"<table>{head}{''.join(body)}</table>",
              f'<p class="note">Mean over seeds {_e(str(dose.get("seeds", "")))} [95% two-stage bootstrap interval]; '
              f"each value's curves, claim and statistics over seeds are in its folder ({folders}); "
              "<code>pmopt report</code> on one of them draws its curves. Also dose_response.csv.</p>",
              "</section>"]
    return parts


def _per_seed_table(claims: dict) -> list[str]:
    """What changed across seeds: each seed's claim points and verdict."""
    per_seed = {k: c for k, c in claims.get("per_seed", {}).items() if c}
    if not per_seed:
        return []
    head = ("<tr><th>seed</th><th>proxy, n = 1</th><th>proxy, n = max</th><th>prefixed, n = max</th>"
            "<th>rise</th><th>holds</th></tr>")
    body = "".join(
        f"<tr><td>{_e(k)}</td>" + "".join(f'<td class="num">{_point(c[p])}</td>' for p in ("proxy_1", "proxy_n", "prefixed_n"))
        + f'<td class="num">{c["proxy_rise"]:+.3f}</td><td>{"yes" if c["holds"] else "no"}</td></tr>'
        for k, c in per_seed.items())
    return [f"<table>{head}{body}</table>"]


def _legend_section(legend: list[LegendRow]) -> list[str]:
    head = "<tr><th>PM</th><th>what it is</th><th>how it was trained</th><th>held-out accuracy</th></tr>"
    body = "".join(f"<tr><td>{_e(r.name)}</td><td>{_e(r.what)}</td><td>{_e(r.training)}</td>"
                   f"<td>{_e(r.accuracy)}</td></tr>" for r in legend)
    return ['<h2 id="pms">The PMs</h2>', f"<table>{head}{body}</table>",
            '<p class="note">Held-out accuracy: share of the PM\'s own eval pairs (labelled by the raters it was '
            "trained on) where it scores the chosen response above the rejected one.</p>"]


def _fits_section(fits: list[dict]) -> list[str]:
    if not fits:
        return []
    return ["<h2>Functional-form fits (Gao et al. 2022)</h2>", _fits_table(fits),
            '<p class="note">From fits.json (<code>pmopt fit</code>): gold − gold(0) = d(α − βd) for best-of-n, '
            "d(α − β log d) for RL, d = sqrt(KL); 95% bootstrap intervals; peak KL where the fitted curve "
            "turns over inside the measured range.</p>"]


def _details_sections(page: Page, curated: list[Path]) -> list[str]:
    """Everything else, collapsed: the summary of every curve and links to every other plot."""
    others = [p for p in page.plots if p not in curated]
    links = "".join(f'<li><a href="{_e(_relative(p, page.out_dir))}">{_e(_relative(p, page.out_dir))}</a></li>'
                    for p in others)
    return [f"<details><summary>Summary of every curve ({len(page.summary)} rows; also summary.csv)</summary>",
            _summary_table(page.summary),
            '<p class="note">first / last = the smallest and largest n (best-of-N) or step (PPO); change = '
            "last − first. Intervals and KL are those written by the stage (best-of-N: bootstrap over prompts; "
            "KL is the bound log n − (n−1)/n unless the sweep reports the exact value).</p></details>",
            f"<details><summary>All other plots ({len(others)} files, every metric against n and KL)</summary>"
            f'<ul class="files">{links}</ul></details>']


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.resolve().as_uri()


def _point(point: dict) -> str:
    return interval_cell(point["value"], point.get("ci_low"), point.get("ci_high"), 3)


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _summary_table(summary: list[dict]) -> str:
    head = ("<tr><th>method</th><th>PM</th><th>metric</th><th>at</th><th>value [95% CI]</th>"
            "<th>KL</th><th>at</th><th>value [95% CI]</th><th>KL</th><th>change</th></tr>")
    body = []
    for s in summary:
        cells = [_e(s["method"]), _e(s["pm"]), _e(s["metric"])]
        for tag in ("first", "last"):
            cells += [f'{s["x"]} = {s[f"{tag}_x"]}',
                      interval_cell(s[f"{tag}_value"], s[f"{tag}_ci_low"], s[f"{tag}_ci_high"]), fmt(s[f"{tag}_kl"])]
        cells.append(fmt(s["change"]))
        body.append("<tr>" + "".join(_td(c, i) for i, c in enumerate(cells)) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _fits_table(fits: list[dict]) -> str:
    head = ("<tr><th>PM</th><th>metric</th><th>KL</th><th>points</th><th>α [95% CI]</th><th>β [95% CI]</th>"
            "<th>R²</th><th>peak KL</th></tr>")
    body = []
    for f in fits:
        peak = fmt(f["peak"]["kl"]) if f["peak"]["kl"] is not None else "none within range"
        cells = [_e(f["label"]), _e(f["metric"]), _e(f["kl_kind"]), str(f["n_points"]),
                 interval_cell(f["alpha"], *f["alpha_ci"]), interval_cell(f["beta"], *f["beta_ci"]), fmt(f["r2"]), peak]
        body.append("<tr>" + "".join(_td(c, i) for i, c in enumerate(cells)) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _td(cell: str, index: int) -> str:
    return f"<td>{cell}</td>" if index < 3 else f'<td class="num">{cell}</td>'


def _figure(path: Path, css_class: str = "", caption: str | None = None) -> str:
    """A PNG embedded as a data URI, so the page can be mailed or attached on its own."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cls = f' class="{css_class}"' if css_class else ""
    return (f'<figure{cls}><img alt="{_e(path.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(caption or path.name)}</figcaption></figure>")


def _plots_section(plots: list[Path]) -> str:
    return f'<div class="plots">{"".join(_figure(p) for p in plots)}</div>'


def _json_table(data: dict) -> str:
    """A JSON object as a table, each estimate with its interval in one cell; an aggregate over seeds as
    one row per quantity with mean [min, max] and each seed's value."""
    if is_aggregate(data):
        seeds = "".join(f"<th>seed {_e(str(s))}</th>" for s in data["seeds"])
        rows = "".join(f"<tr><td>{_e(key)}</td><td class=\"num\">{summary}</td>"
                       + "".join(f'<td class="num">{c}</td>' for c in per_seed) + "</tr>"
                       for key, summary, per_seed in aggregate_rows(data))
        return f"<table><tr><th>quantity</th><th>mean [min, max] over seeds</th>{seeds}</tr>{rows}</table>"
    rows = "".join(f'<tr><td>{_e(key)}</td><td class="num">{_e(value)}</td></tr>' for key, value in json_rows(data))
    return f"<table><tr><th>key</th><th>value [95% CI]</th></tr>{rows}</table>"
