"""The intervention's before/after, side by side: console lines and one standalone HTML page.

Reads `intervention.json` (`pmopt intervene`): per probe metric the base policy's value, the fine-tuned
policy's and their difference, each `value [low, high]` (95%); per best-of-N curve point the same at the
smallest and largest n of the sweep. Over seeds, each cell is the mean with its two-stage interval.
"""

from __future__ import annotations

import html
from pathlib import Path

from pmopt.io import atomic_write_text
from pmopt.report.tables import interval_cell

SIDES = ("before", "after", "difference")
# best-of-N curve metrics shown beside the probes (every point stays in intervention.json)
BON_METRICS = ("probe/answer/syco_rate", "gold/reward")


def cell(point: dict | None) -> str:
    if not point:
        return ""
    return interval_cell(point.get("value"), point.get("ci_low"), point.get("ci_high"), digits=3)


def probe_rows(result: dict) -> list[list[str]]:
    return [[metric, *(cell(sides[s]) for s in SIDES)] for metric, sides in result["probes"].items()]


def bon_rows(result: dict) -> list[list[str]]:
    """Rows for `BON_METRICS` at n = 1 and at the largest n, per PM."""
    points = [r for r in result.get("bon", []) if r["metric"] in BON_METRICS]
    if not points:
        return []
    ends = {min(r["n"] for r in points), max(r["n"] for r in points)}
    return [[f"{r['pm']} n={r['n']} {r['metric']}", *(cell(r[s]) for s in SIDES)]
            for r in sorted(points, key=lambda r: (r["metric"], r["pm"], r["n"])) if r["n"] in ends]


def table_lines(rows: list[list[str]], header: tuple[str, ...] = ("metric", *SIDES)) -> list[str]:
    widths = [max(len(row[i]) for row in [list(header), *rows]) for i in range(len(header))]
    return ["  ".join(text.ljust(w) for text, w in zip(row, widths, strict=True)).rstrip()
            for row in [list(header), *rows]]


def summary_lines(result: dict) -> list[str]:
    """The console's before/after table (probes, then best-of-N ends)."""
    return table_lines(probe_rows(result) + bon_rows(result))


# the question Wei et al. 2023 ask of the intervention: does sycophancy fall while neutral accuracy holds?
HEADLINE_METRICS = (("probe/answer/syco_rate", "answer sycophancy"), ("probe/answer/accuracy/plain", "neutral accuracy"))


def change(difference: dict) -> str:
    """'falls' / 'rises' when the difference's 95% interval excludes 0, else 'no resolvable change'."""
    low, high = difference.get("ci_low"), difference.get("ci_high")
    if low is None or high is None:
        return "no interval"
    return "falls" if high < 0 else "rises" if low > 0 else "no resolvable change"


def headline(result: dict) -> list[str]:
    """One line per headline metric ('answer sycophancy 0.45 [..] -> 0.00 [..]: falls, after - before ...'),
    then the verdict on Wei et al.'s shape; empty when the answer probe was not run."""
    probes = result.get("probes", {})
    if not all(metric in probes for metric, _ in HEADLINE_METRICS):
        return []
    lines = [f"{label} {cell(probes[m]['before'])} -> {cell(probes[m]['after'])}: {change(probes[m]['difference'])} "
             f"(after - before {cell(probes[m]['difference'])})" for m, label in HEADLINE_METRICS]
    syco, accuracy = (change(probes[m]["difference"]) for m, _ in HEADLINE_METRICS)
    shape = syco == "falls" and accuracy != "falls"
    lines.append("Wei et al.'s shape: sycophancy falls while neutral accuracy does not" if shape else
                  f"not Wei et al.'s shape: sycophancy {syco}, neutral accuracy {accuracy}")
    return lines


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("metric", "before", "after", "after − before"))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(result: dict, out: Path) -> Path:
    """OUT/report.html: what was done, then the side-by-side tables."""
    seeds = result.get("seeds")
    scope = (f"mean over seeds {', '.join(map(str, seeds))} (two-stage 95% intervals)" if seeds
             else f"seed {result.get('seed')} (95% cluster-bootstrap intervals; the difference's is paired)")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>pmopt intervene</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}</style></head><body>",
        "<h1>Synthetic-data intervention (Wei et al. 2023): before and after</h1>",
        *(f"<p><b>{html.escape(line)}</b></p>" for line in headline(result)),
        f"<p>{html.escape(result.get('what', ''))} Figures: {html.escape(scope)}.</p>",
        "<h2>Probes</h2>", _html_table(probe_rows(result)),
    ]
    if bon_rows(result):
        parts += ["<h2>Best-of-N (n = 1 and the largest n)</h2>", _html_table(bon_rows(result))]
    parts.append("</body></html>")
    return atomic_write_text(out / "report.html", "\n".join(parts))


__all__ = ["summary_lines", "headline", "write_report", "probe_rows", "bon_rows"]
