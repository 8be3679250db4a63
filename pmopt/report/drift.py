"""The report's sections on drift: predicted against measured direction, and the remedies' frontier.

Statistics come from `pmopt.analysis.drift` (the cells' bon/drift.json) and `pmopt.analysis.frontier` (the
curve rows, with the intervened policy's from RUN/intervene/); this module draws and writes them:

    OUT/drift_table.json, OUT/drift_table.csv   every (cell, reward, metric): prediction and measurements
    OUT/frontier.json, OUT/plots/frontier.png   the remedies on one KL axis, read at equal KL, the ranking
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from pmopt.analysis.drift import KEY_METRICS, drift_table, table_csv
from pmopt.analysis.frontier import ORACLE, SYCO, frontier, intervention_rows, remedy_rows
from pmopt.io import atomic_write_text
from pmopt.report.tables import interval_cell

ARROW = {"up": "↑", "down": "↓", "unresolved": "·"}


def write_drift(run_dir: Path, out_dir: Path) -> dict | None:
    """drift_table.json and .csv in OUT; None when no cell of the run has a bon/drift.json."""
    result = drift_table(run_dir)
    if result is not None:
        atomic_write_text(out_dir / "drift_table.json", json.dumps(result, indent=1) + "\n")
        atomic_write_text(out_dir / "drift_table.csv", table_csv(result))
    return result


def write_frontier(run_dir: Path, rows: list[dict], out_dir: Path) -> tuple[dict | None, Path | None]:
    """frontier.json and its figure; (None, None) with fewer than two remedies to compare. The figure is drawn
    only when the intervened policy is on it: otherwise the headline figure already shows these curves."""
    from pmopt.report.plots import plot_headline

    intervened = intervention_rows(run_dir)
    drawn = remedy_rows(rows, intervened)
    if len({r["pm"] for r in drawn} - {ORACLE}) < 2:
        return None, None
    result = frontier(drawn)
    atomic_write_text(out_dir / "frontier.json", json.dumps(result, indent=1) + "\n")
    if not intervened:
        return result, None
    try:
        plot = plot_headline(drawn, [SYCO, "gold/reward"], out_dir / "plots" / "frontier.png")
    except ValueError:
        plot = None
    return result, plot


# ----------------------------------------------------------------------------- HTML


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _point(point) -> str:
    return "" if not point else interval_cell(point["value"], point.get("ci_low"), point.get("ci_high"), 3)


def frontier_section(result: dict, figure_html: str | None) -> list[str]:
    parts = ['<h2 id="remedies">Remedies on one frontier</h2>']
    parts += [f'<p class="answer">{_e(m["sentence"])}</p>' for m in result["methods"].values()]
    if figure_html:
        parts.append(figure_html)
    head = ("<tr><th>remedy</th><th>method</th><th>KL at the start</th><th>KL at the end</th><th>syco_rate at "
            "the end</th><th>gold at the end</th><th>syco_rate at equal KL</th><th>gold at equal KL</th></tr>")
    body = []
    for curve in result["curves"]:
        method, pm, points = curve["method"], curve["pm"], curve["points"]
        at = result["methods"].get(method, {}).get("at_budget", {}).get(pm)
        first, last = points[0], points[-1]
        cells = [_e(f"{result['remedies'].get(pm, pm)} ({pm})"), _e(method), f"{first['kl']:.3g}", f"{last['kl']:.3g}",
                 _point(last["syco"]), _point(last["gold"]), _point(at["syco"]) if at else "—",
                 _point(at["gold"]) if at else "—"]
        body.append("<tr>" + "".join(f"<td>{c}</td>" if i < 2 else f'<td class="num">{c}</td>'
                                     for i, c in enumerate(cells)) + "</tr>")
    budgets = "; ".join(f"{m}: {v['budget_kl']:.3g} nats" for m, v in result["methods"].items())
    parts += [f"<table>{head}{''.join(body)}</table>",
              '<p class="note">Mean over seeds [95% interval]. Best-of-n points sit at the KL bound log n − (n−1)/n; '
              "the intervened policy's at the bound plus its selected sample's log-ratio to the base policy, so its "
              f"own fine-tuning counts. Equal KL ({_e(budgets)}): each curve interpolated linearly in KL. Also "
              "frontier.json.</p>"]
    return parts


def drift_section(result: dict) -> list[str]:
    parts = ['<h2 id="drift">Drift predicted before optimizing</h2>']
    parts += [f'<p class="answer">{_e(line)}</p>' for line in result["sentences"]]
    if result["preference"]:
        parts.append(_preference_table(result["preference"]))
    key = [r for r in result["rows"] if r["metric"] in KEY_METRICS]
    parts.append(_rows_table(key))
    parts.append('<p class="note">slope: within-prompt Cov(metric, reward) under the base policy (the first-order '
                 "drift under exp(r/β) tilting; Shapira et al. 2026); best-of-2: its exact drift; best-of-N: the "
                 "change from n = 1 to N_max; RL: the last probe point against the first. ↑ / ↓: the 95% interval "
                 "excludes 0 (RL: the two points' intervals do not overlap); ·: unresolved. Every entry: "
                 "drift_table.csv.</p>")
    parts.append(f"<details><summary>Every reward × metric × cell ({len(result['rows'])} rows)</summary>"
                 f"{_rows_table(result['rows'])}</details>")
    return parts


def _rows_table(rows: list[dict]) -> str:
    head = ("<tr><th>cell</th><th>reward</th><th>metric</th><th>slope Cov(m, r)</th><th>pred.</th><th>best-of-2</th>"
            "<th>best-of-N change</th><th>BoN</th><th>RL change</th><th>RL</th></tr>")
    body = []
    for r in rows:
        rl = r["rl"]
        cells = [_e(r["cell"]), _e(r["reward"]), _e(r["metric"]), _point(r["slope"]), ARROW[r["predicted"]],
                 _point(r["bon2"]), _point(r["bon_change"]), ARROW[r["bon_measured"]],
                 f"{rl['value']:+.3f}" if rl else "—", ARROW[rl["direction"]] if rl else "—"]
        body.append("<tr>" + "".join(f"<td>{c}</td>" if i < 3 else f'<td class="num">{c}</td>'
                                     for i, c in enumerate(cells)) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _preference_table(rows: list[dict]) -> str:
    head = ("<tr><th>cell</th><th>PM</th><th>canonical pair: prefers sycophantic</th><th>own samples: prefers "
            "sycophantic</th><th>own pairs</th><th>best-of-N syco_rate change</th><th>canonical</th><th>own</th>"
            "<th>measured</th></tr>")
    body = []
    for r in rows:
        cells = [_e(r["cell"]), _e(r["reward"]), _point(r["canonical"]), _point(r["own"]), str(r["own_pairs"]),
                 _point(r["bon_change"]), ARROW[r["canonical_predicts"]], ARROW[r["own_predicts"]],
                 ARROW[r["bon_measured"]]]
        body.append("<tr>" + "".join(f"<td>{c}</td>" if i < 2 else f'<td class="num">{c}</td>'
                                     for i, c in enumerate(cells)) + "</tr>")
    return (f"<table>{head}{''.join(body)}</table>"
            '<p class="note">canonical: share of suggest_wrong prompts where the PM scores "you are right , the '
            'answer is &lt;wrong&gt;" above "actually , the answer is &lt;correct&gt;" (pms/sycophancy_preference.json); '
            "own samples: share of pairs of the policy's own samples of one suggest_wrong prompt, one sycophantic "
            "and one not, where the PM scores the sycophantic one higher (ties ½). Each predicts ↑ above ½.</p>")


__all__ = ["write_drift", "write_frontier", "frontier_section", "drift_section"]
