"""Predicted against measured drift over a run's cells (docs/drift.md).

A cell is one finished single-seed experiment: the run itself, each `seed-<k>/` of a multi-seed run, or each
`<value>/seed-<k>/` of a sweep. Its best-of-N sweep wrote `bon/drift.json` (`pmopt.bon.drift`): for every
reward and metric, the within-prompt covariance slope (the prediction, made before any optimisation), the
exact best-of-2 drift and the measured change at N_max; its PPO stage, if any, wrote `ppo/curves.jsonl`. A
direction is `up` or `down` when the 95% interval excludes 0 (for RL: when the last probe point's interval
and the first's do not overlap), else `unresolved`. The agreement rate is over the (cell, reward, metric)
entries where both directions are resolved.

The same cells compare two diagnostics of a PM's sycophancy preference as predictors of best-of-N's answer
`syco_rate`: the canonical pair (`pms/sycophancy_preference.json`: two fixed strings per prompt, Sharma et al.
2023 §4.1) and the PM's preference on pairs of the policy's own samples that differ in the outcome
(drift.json's `preference.answer`). Each predicts `up` when its rate exceeds ½.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path

from pmopt.io import read_jsonl

DRIFT = "bon/drift.json"
CANONICAL = "pms/sycophancy_preference.json"
PPO_CURVES = "ppo/curves.jsonl"
CLAIM_METRIC = "probe/answer/syco_rate"
KEY_METRICS = ("probe/answer/syco_rate", "probe/mimicry/syco_rate", "probe/feedback/sycophancy", "gold/reward")
CSV_COLUMNS = ("cell", "reward", "metric", "slope", "slope_low", "slope_high", "predicted", "bon2", "bon2_low",
               "bon2_high", "bon_change", "bon_change_low", "bon_change_high", "bon_measured", "rl_change",
               "rl_measured")


def find_cells(run: Path) -> dict[str, Path]:
    """{label: cell dir} of every cell under `run` with a bon/drift.json (label: the path below `run`)."""
    run = Path(run)
    found = {}
    for pattern in (DRIFT, f"seed-*/{DRIFT}", f"*/seed-*/{DRIFT}"):
        for path in sorted(run.glob(pattern)):
            cell = path.parent.parent
            found[cell.relative_to(run).as_posix() if cell != run else "run"] = cell
    return found


def direction(point: Mapping | None) -> str:
    """up / down when the interval excludes 0, else unresolved."""
    if not point or point.get("ci_low") is None or point.get("ci_high") is None:
        return "unresolved"
    if point["ci_low"] > 0:
        return "up"
    if point["ci_high"] < 0:
        return "down"
    return "unresolved"


def rl_changes(rows: list[Mapping]) -> dict[tuple[str, str], dict]:
    """{(reward, metric): {value, direction, rl_method}} from a PPO stage's curve rows: the last probe point
    against the first of each run (β-sweep curves are left out: their points are different runs)."""
    groups: dict[tuple, list[Mapping]] = {}
    for row in rows:
        method = row.get("rl_method") or row.get("method")
        if row.get("method") != "ppo" or str(method).endswith("-beta-sweep"):
            continue
        groups.setdefault((row["pm"], row["metric"], method), []).append(row)
    out = {}
    for (pm, metric, method), points in groups.items():
        points = sorted(points, key=lambda r: r["step"])
        first, last = points[0], points[-1]
        if first["step"] == last["step"]:
            continue
        moved = "unresolved"
        if None not in (first.get("ci_low"), first.get("ci_high"), last.get("ci_low"), last.get("ci_high")):
            moved = "up" if last["ci_low"] > first["ci_high"] else "down" if last["ci_high"] < first["ci_low"] else moved
        out[(pm, metric)] = {"value": last["value"] - first["value"], "direction": moved, "rl_method": method,
                             "steps": [first["step"], last["step"]]}
    return out


def cell_rows(label: str, drift: Mapping, ppo_rows: list[Mapping] | None) -> list[dict]:
    """One row per (reward, metric) of one cell: the prediction, best-of-2, best-of-N_max and RL."""
    rl = rl_changes(ppo_rows or [])
    rows = []
    for reward, entry in drift.get("rewards", {}).items():
        for metric, q in entry.get("metrics", {}).items():
            moved = rl.get((reward, metric))
            rows.append({"cell": label, "reward": reward, "metric": metric, "slope": q["slope"], "bon2": q["bon2"],
                         "bon_change": q["change"], "predicted": direction(q["slope"]),
                         "bon2_direction": direction(q["bon2"]), "bon_measured": direction(q["change"]),
                         "rl": moved})
    return rows


def agreement(rows: list[Mapping], measured_key: str, predicted_key: str = "predicted") -> dict:
    """How often a resolved prediction matches a resolved measurement: {n, agree, rate}, and the
    predictions that were resolved ({predicted_resolved}) or contradicted by a resolved measurement."""
    both = [r for r in rows if r[predicted_key] != "unresolved" and _measured(r, measured_key) in ("up", "down")]
    agree = sum(r[predicted_key] == _measured(r, measured_key) for r in both)
    return {"n": len(both), "agree": agree, "rate": agree / len(both) if both else None,
            "predicted_resolved": sum(r[predicted_key] != "unresolved" for r in rows
                                      if _measured(r, measured_key) is not None),
            "entries": sum(_measured(r, measured_key) is not None for r in rows)}


def _measured(row: Mapping, key: str) -> str | None:
    if key == "rl":
        return None if row["rl"] is None else row["rl"]["direction"]
    return row[key]


def preference_rows(label: str, drift: Mapping, canonical: Mapping | None) -> list[dict]:
    """Per reward with a canonical preference: canonical rate, own-sample rate, and best-of-N's measured
    syco_rate direction at N_max."""
    out = []
    for reward, entry in drift.get("rewards", {}).items():
        canon = (canonical or {}).get("pms", {}).get(reward)
        own = entry.get("preference", {}).get("answer")
        change = entry.get("metrics", {}).get(CLAIM_METRIC, {}).get("change")
        if canon is None or own is None or change is None:
            continue
        out.append({"cell": label, "reward": reward, "canonical": _pick(canon), "own": _pick(own),
                    "own_pairs": own.get("n_pairs"), "bon_change": change, "bon_measured": direction(change),
                    "canonical_predicts": _half(canon), "own_predicts": _half(own),
                    "own_resolved": _half_resolved(own)})
    return out


def _pick(point: Mapping) -> dict:
    return {"value": point["value"], "ci_low": point.get("ci_low"), "ci_high": point.get("ci_high")}


def _half(point: Mapping) -> str:
    value = point.get("value")
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == 0.5:
        return "unresolved"
    return "up" if value > 0.5 else "down"


def _half_resolved(point: Mapping) -> str:
    low, high = point.get("ci_low"), point.get("ci_high")
    if low is not None and low > 0.5:
        return "up"
    if high is not None and high < 0.5:
        return "down"
    return "unresolved"


def preference_agreement(rows: list[Mapping]) -> dict:
    """Over the entries whose measured direction is resolved: how often each diagnostic predicted it."""
    resolved = [r for r in rows if r["bon_measured"] != "unresolved"]
    out = {"n": len(resolved)}
    for name in ("canonical", "own"):
        hits = sum(r[f"{name}_predicts"] == r["bon_measured"] for r in resolved)
        out[name] = {"agree": hits, "rate": hits / len(resolved) if resolved else None}
    return out


def drift_table(run: Path) -> dict | None:
    """Every cell's rows, the agreement rates and the preference comparison; None without any drift.json."""
    cells = find_cells(run)
    if not cells:
        return None
    rows, prefs = [], []
    for label, cell in cells.items():
        drift = json.loads((cell / DRIFT).read_text(encoding="utf-8"))
        ppo = read_jsonl(cell / PPO_CURVES) if (cell / PPO_CURVES).is_file() else None
        canonical = json.loads((cell / CANONICAL).read_text(encoding="utf-8")) if (cell / CANONICAL).is_file() else None
        rows += cell_rows(label, drift, ppo)
        prefs += preference_rows(label, drift, canonical)
    result = {"cells": list(cells), "rows": rows, "preference": prefs,
              "agreement": {"bon": agreement(rows, "bon_measured"), "bon2": agreement(rows, "bon2_direction"),
                            "bon_from_bon2": agreement(rows, "bon_measured", "bon2_direction"),
                            "rl": agreement(rows, "rl"),
                            "bon_key_metrics": agreement([r for r in rows if r["metric"] in KEY_METRICS],
                                                         "bon_measured")},
              "preference_agreement": preference_agreement(prefs)}
    result["sentences"] = sentences(result)
    return result


def _rate(a: Mapping) -> str:
    return "no entry resolved on both sides" if not a["n"] else f"{a['agree']} of {a['n']} ({a['agree'] / a['n']:.0%})"


def sentences(result: Mapping) -> list[str]:
    """The table's findings in words, from its numbers."""
    a = result["agreement"]
    cells = len(result["cells"])
    out = [f"Over {cells} cell(s) × every reward × metric: the sign of Cov(metric, reward) under the base policy, "
           f"where its 95% interval excludes 0, matched best-of-N's resolved change at N_max in {_rate(a['bon'])} "
           f"(the claim's and the other key metrics: {_rate(a['bon_key_metrics'])}); it matched the exact "
           f"best-of-2 drift in {_rate(a['bon2'])}, and best-of-2's direction matched best-of-N_max's in "
           f"{_rate(a['bon_from_bon2'])}."]
    if a["rl"]["entries"]:
        out.append(f"Against RL's last probe point versus its first: {_rate(a['rl'])}.")
    p = result["preference_agreement"]
    if p["n"]:
        out.append(f"As predictors of best-of-N's answer syco_rate direction ({p['n']} PM × cell entries with a "
                   f"resolved change): the canonical pair's preference rate (> ½ predicts up) was right "
                   f"{p['canonical']['agree']} of {p['n']} times, the preference on the policy's own samples "
                   f"{p['own']['agree']} of {p['n']} times.")
    return out


def table_csv(result: Mapping) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in result["rows"]:
        rl = r["rl"] or {}
        writer.writerow([r["cell"], r["reward"], r["metric"], *_triple(r["slope"]), r["predicted"], *_triple(r["bon2"]),
                         *_triple(r["bon_change"]), r["bon_measured"], _csv(rl.get("value")), rl.get("direction", "")])
    return buffer.getvalue()


def _triple(point: Mapping) -> list[str]:
    return [_csv(point.get("value")), _csv(point.get("ci_low")), _csv(point.get("ci_high"))]


def _csv(value) -> str:
    return "" if value is None else repr(float(value))


__all__ = ["find_cells", "direction", "rl_changes", "cell_rows", "agreement", "preference_rows",
           "preference_agreement", "drift_table", "sentences", "table_csv", "KEY_METRICS"]
