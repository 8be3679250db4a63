"""`pmopt report RUN_DIR`: a run's curves to PNG plots, a summary CSV and one self-contained HTML page.

Reads (DESIGN §4, §9):
    RUN/bon/curves.jsonl, RUN/ppo/curves.jsonl   curve rows (at least one file must exist); or
    RUN/curves.jsonl                             when RUN is one stage's output (`pmopt bon --out RUN`)
    RUN/world/world_stats.json, RUN/probes/metrics.json   optional JSON objects, shown as tables
    RUN/config.yaml                              optional, shown verbatim
Writes (default OUT = RUN/report):
    OUT/plots/*.png, OUT/summary.csv, OUT/report.html (PNGs embedded as base64 data URIs, so the page can
    be mailed or attached on its own).
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import json
import math
from pathlib import Path

from pmopt.io import PmoptError, atomic_write_text, prepare_out_dir, read_json_file, read_jsonl
from pmopt.report.plots import plot_all, plot_fits

CURVE_FILES = ("bon/curves.jsonl", "ppo/curves.jsonl", "curves.jsonl")
JSON_TABLES = (("World statistics", "world/world_stats.json"), ("Probe metrics", "probes/metrics.json"),
               ("World statistics over seeds", "aggregate/world_stats.json"),
               ("Probe metrics over seeds", "aggregate/probe_metrics.json"))
X_KEY = {"bon": "n", "ppo": "step"}
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
    rows = load_curves(run_dir)
    tables = [(title, _read_json_dict(run_dir / name)) for title, name in JSON_TABLES
              if (run_dir / name).is_file()]
    config_path = run_dir / "config.yaml"
    config_text = config_path.read_text(encoding="utf-8", errors="replace") if config_path.is_file() else None
    claims = _read_json_dict(run_dir / "claims.json") if (run_dir / "claims.json").is_file() else None

    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    fits = _read_json_dict(run_dir / "fits.json").get("fits", []) if (run_dir / "fits.json").is_file() else []
    plots = plot_all(rows, out_dir / "plots")
    fit_plots = plot_fits(fits, out_dir / "plots" / "fits")
    summary = summary_rows(rows)
    atomic_write_text(out_dir / "summary.csv", summary_csv(summary))
    page = render_html(run_dir, summary, plots, tables, config_text, fits, fit_plots, claims)
    return atomic_write_text(out_dir / "report.html", page)


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


def validate_curve_row(record: dict, error) -> None:
    """Curve row: {method: bon|ppo, pm, n (bon) | step (ppo), kl, metric, value, ci_low, ci_high}.

    `kl`, `ci_low` and `ci_high` may be null (no KL estimate / no interval); `value` must be a number.
    """
    method = record.get("method")
    if method not in X_KEY:
        raise error("method", f"expected 'bon' or 'ppo', got {method!r}")
    for field in ("pm", "metric"):
        if not isinstance(record.get(field), str) or not record[field]:
            raise error(field, "expected a non-empty string")
    x_key = X_KEY[method]
    x = record.get(x_key)
    lowest = 1 if method == "bon" else 0
    if isinstance(x, bool) or not isinstance(x, int) or x < lowest:
        raise error(x_key, f"expected an integer >= {lowest} for a {method} row, got {x!r}")
    if not _is_number(record.get("value")):
        raise error("value", f"expected a number, got {record.get('value')!r}")
    for field in ("kl", "ci_low", "ci_high"):
        if field not in record:
            raise error(field, "missing (use null when there is no value)")
        if record[field] is not None and not _is_number(record[field]):
            raise error(field, f"expected a number or null, got {record[field]!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
        x_key = X_KEY[method]
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
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; } tr:nth-child(even) td { background: #fafafa; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figure img { max-width: 640px; width: 100%; border: 1px solid #eee; }
figcaption { font-size: .8em; color: #666; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; font-size: .85em; }
.note { color: #666; font-size: .85em; }
"""


def render_html(run_dir: Path, summary: list[dict], plots: list[Path], tables: list[tuple[str, dict]],
                config_text: str | None, fits: list[dict] = (), fit_plots: list[Path] = (),
                claims: dict | None = None) -> str:
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>pmopt report: {_e(run_dir.name)}</title><style>{STYLE}</style></head><body>",
        f"<h1>pmopt report: {_e(run_dir.name)}</h1>",
        f'<p class="note">Run directory {_e(str(run_dir.resolve()))}; generated '
        f"{_dt.datetime.now().isoformat(timespec='seconds')}.</p>",
        *(_key_result(claims) if claims else []),
        "<h2>Summary</h2>", _summary_table(summary),
        '<p class="note">first / last = the smallest and largest n (best-of-N) or step (PPO); change = '
        "last − first. Intervals and KL are those written by the stage (best-of-N: bootstrap over prompts; "
        "KL is the bound log n − (n−1)/n unless the sweep reports the exact value).</p>",
        "<h2>Plots</h2>", _plots_section(plots),
    ]
    if fits:
        parts += ["<h2>Functional-form fits (Gao et al. 2022)</h2>", _fits_table(fits),
                  '<p class="note">From fits.json (<code>pmopt fit</code>): gold − gold(0) = d(α − βd) for best-of-n, '
                  "d(α − β log d) for RL, d = sqrt(KL); 95% bootstrap intervals; peak KL where the fitted curve "
                  "turns over inside the measured range.</p>", _plots_section(fit_plots)]
    for title, data in tables:
        parts += [f"<h2>{_e(title)}</h2>", _dict_table(data)]
    if config_text is not None:
        parts += ["<h2>Config (config.yaml)</h2>", f"<pre>{_e(config_text)}</pre>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _key_result(claims: dict) -> list[str]:
    """The answer first: the claim's headline numbers, the sentence the seeds support, each seed's verdict."""
    from pmopt.analysis.claims import headline

    parts = ['<h2 id="key-result">Key result</h2>']
    if claims.get("claim"):
        parts.append("<p>" + "<br>".join(_e(line) for line in headline(claims["claim"])) + "</p>")
    parts.append(f"<p><strong>{_e(claims.get('verdict', ''))}</strong></p>")
    per_seed = {k: c for k, c in claims.get("per_seed", {}).items() if c}
    if per_seed:
        head = ("<tr><th>seed</th><th>proxy, n = 1</th><th>proxy, n = max</th><th>prefixed, n = max</th>"
                "<th>rise</th><th>holds</th></tr>")
        body = "".join(
            f"<tr><td>{_e(k)}</td>" + "".join(f'<td class="num">{_point(c[p])}</td>' for p in ("proxy_1", "proxy_n", "prefixed_n"))
            + f'<td class="num">{c["proxy_rise"]:+.3f}</td><td>{"yes" if c["holds"] else "no"}</td></tr>'
            for k, c in per_seed.items())
        parts.append(f"<table>{head}{body}</table>")
    return parts


def _point(point: dict) -> str:
    text = fmt(point["value"], 3)
    interval = _ci(point.get("ci_low"), point.get("ci_high"))
    return f"{text} {interval}".strip()


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _summary_table(summary: list[dict]) -> str:
    head = ("<tr><th>method</th><th>PM</th><th>metric</th><th>at</th><th>value</th><th>CI</th>"
            "<th>KL</th><th>at</th><th>value</th><th>CI</th><th>KL</th><th>change</th></tr>")
    body = []
    for s in summary:
        cells = [_e(s["method"]), _e(s["pm"]), _e(s["metric"])]
        for tag in ("first", "last"):
            cells += [f'{s["x"]} = {s[f"{tag}_x"]}', fmt(s[f"{tag}_value"]),
                      _ci(s[f"{tag}_ci_low"], s[f"{tag}_ci_high"]), fmt(s[f"{tag}_kl"])]
        cells.append(fmt(s["change"]))
        body.append("<tr>" + "".join(_td(c, i) for i, c in enumerate(cells)) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _fits_table(fits: list[dict]) -> str:
    head = ("<tr><th>PM</th><th>metric</th><th>KL</th><th>points</th><th>α</th><th>CI</th><th>β</th><th>CI</th>"
            "<th>R²</th><th>peak KL</th></tr>")
    body = []
    for f in fits:
        peak = fmt(f["peak"]["kl"]) if f["peak"]["kl"] is not None else "none within range"
        cells = [_e(f["label"]), _e(f["metric"]), _e(f["kl_kind"]), str(f["n_points"]), fmt(f["alpha"]),
                 _ci(*f["alpha_ci"]), fmt(f["beta"]), _ci(*f["beta_ci"]), fmt(f["r2"]), peak]
        body.append("<tr>" + "".join(_td(c, i) for i, c in enumerate(cells)) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _td(cell: str, index: int) -> str:
    return f"<td>{cell}</td>" if index < 3 else f'<td class="num">{cell}</td>'


def _ci(low, high) -> str:
    if fmt(low) == "" or fmt(high) == "":
        return ""
    return f"[{fmt(low)}, {fmt(high)}]"


def _plots_section(plots: list[Path]) -> str:
    figures = []
    for path in plots:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        figures.append(f'<figure><img alt="{_e(path.stem)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{_e(path.name)}</figcaption></figure>")
    return f'<div class="plots">{"".join(figures)}</div>'


def _dict_table(data: dict) -> str:
    """A JSON object as a key/value table; nested objects are flattened to dotted keys."""
    rows = "".join(f"<tr><td>{_e(key)}</td><td>{_e(value)}</td></tr>" for key, value in _flatten(data))
    return f"<table><tr><th>key</th><th>value</th></tr>{rows}</table>"


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += _flatten(value, f"{name}.")
        elif isinstance(value, float):
            out.append((name, fmt(value)))
        elif isinstance(value, str):
            out.append((name, value))
        else:
            out.append((name, json.dumps(value)))
    return out
