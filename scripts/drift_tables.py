"""Print a run's drift and frontier tables as Markdown (what docs/drift.md shows), from its report's files.

    python scripts/drift_tables.py checkpoints/remedies [--metrics probe/answer/syco_rate,gold/reward]

Reads RUN/report/frontier.json and RUN/report/drift_table.json (`pmopt report RUN` writes them) and prints:
the remedies at the end of their curves and at equal KL, each method's ranking sentence (as generated), the
agreement rates, the canonical against own-sample preference table, and the predicted-against-measured rows
of the chosen metrics.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pmopt.analysis.claims import with_interval

ARROW = {"up": "up", "down": "down", "unresolved": "·"}


def cell(point) -> str:
    return with_interval(point, missing="—")


def frontier_tables(result: dict) -> list[str]:
    lines = ["| remedy | method | KL at the start | KL at the end | syco_rate at the end | gold at the end | "
             "syco_rate at equal KL | gold at equal KL |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for curve in result["curves"]:
        method, pm, last = curve["method"], curve["pm"], curve["points"][-1]
        at = result["methods"].get(method, {}).get("at_budget", {}).get(pm)
        lines.append(f"| {result['remedies'].get(pm, pm)} (`{pm}`) | {method} | {curve['points'][0]['kl']:.2f} | "
                     f"{last['kl']:.2f} | {cell(last['syco'])} | "
                     f"{cell(last['gold'])} | {cell(at['syco']) if at else '—'} | {cell(at['gold']) if at else '—'} |")
    lines.append("")
    lines += [f"> {m['sentence']}" for m in result["methods"].values()]
    return lines


def drift_tables(result: dict, metrics: list[str]) -> list[str]:
    lines = [*result["sentences"], ""]
    if result["preference"]:
        lines += ["| cell | PM | canonical pair prefers sycophantic | own samples prefer sycophantic (pairs) | "
                  "best-of-N syco_rate change | canonical says | own says | measured |",
                  "|---|---|---:|---:|---:|---|---|---|"]
        for r in result["preference"]:
            lines.append(f"| {r['cell']} | `{r['reward']}` | {cell(r['canonical'])} | {cell(r['own'])} ({r['own_pairs']}) | "
                         f"{cell(r['bon_change'])} | {ARROW[r['canonical_predicts']]} | {ARROW[r['own_predicts']]} | "
                         f"{ARROW[r['bon_measured']]} |")
        lines.append("")
    lines += ["| cell | reward | metric | Cov(m, r) slope | predicted | best-of-2 drift | best-of-N change | measured |",
              "|---|---|---|---:|---|---:|---:|---|"]
    for r in result["rows"]:
        if r["metric"] in metrics:
            lines.append(f"| {r['cell']} | `{r['reward']}` | {r['metric']} | {cell(r['slope'])} | {ARROW[r['predicted']]} | "
                         f"{cell(r['bon2'])} | {cell(r['bon_change'])} | {ARROW[r['bon_measured']]} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--metrics", default="probe/answer/syco_rate,gold/reward")
    args = parser.parse_args()
    report = args.run / "report"
    if (report / "frontier.json").is_file():
        print("\n".join(frontier_tables(json.loads((report / "frontier.json").read_text()))) + "\n")
    if (report / "drift_table.json").is_file():
        print("\n".join(drift_tables(json.loads((report / "drift_table.json").read_text()), args.metrics.split(","))))


if __name__ == "__main__":
    main()
