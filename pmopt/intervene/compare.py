"""Before against after: each metric on both policies, and their difference with a paired interval.

Both policies answer the same probe prompts, so the difference's interval comes from a paired cluster
bootstrap (Efron & Tibshirani 1993, ch. 13, on the units of docs/ARCHITECTURE.md §4): a resample draws
question clusters once and recomputes the metric on both policies' outcomes of those clusters; the
percentile interval of after − before then carries the correlation between the two (a question both find
hard stays in or out of both). Best-of-N curve points are compared point by point, each with its own
interval from the sweep (no paired interval: the samples differ).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from pmopt.intervene.config import InterventionConfig
from pmopt.io import read_json_file, read_jsonl
from pmopt.probes.base import mean_outcomes
from pmopt.probes.run import load_probe_sets, resolve_sources
from pmopt.probes.stats import cluster_sums
from pmopt.stats import statistic_intervals


def per_prompt_outcomes(grades: Path) -> dict[str, dict[str, float]]:
    """prompt id -> its expected outcomes under the policy (the mean over its graded samples)."""
    rows: dict[str, list[dict]] = defaultdict(list)
    for row in read_jsonl(grades):
        rows[row["prompt_id"]].append(row["outcomes"])
    return {prompt: mean_outcomes(outcomes) for prompt, outcomes in rows.items()}


def _aligned(names: list[str], sums: np.ndarray, columns: list[str]) -> np.ndarray:
    out = np.zeros((sums.shape[0], len(columns)))
    for j, name in enumerate(names):
        out[:, columns.index(name)] = sums[:, j]
    return out


def paired_differences(probe, records: list[dict], before: dict, after: dict, n_boot: int,
                       seed: int) -> dict[str, tuple[float, float, float]]:
    """{metric: (after − before, low, high)} from the paired cluster bootstrap over the probe's clusters."""
    outcomes = [[side[r["id"]] for r in records] for side in (before, after)]
    (names_b, sums_b), (names_a, sums_a) = (cluster_sums(probe, records, o) for o in outcomes)
    columns = list(dict.fromkeys(names_b + names_a))
    stacked = np.hstack([_aligned(names_b, sums_b, columns), _aligned(names_a, sums_a, columns)])
    labels = [f"before/{c}" for c in columns] + [f"after/{c}" for c in columns]

    def difference(totals: dict[str, float]) -> dict[str, float]:
        b = probe.combine({c: totals[f"before/{c}"] for c in columns})
        a = probe.combine({c: totals[f"after/{c}"] for c in columns})
        return {k: a[k] - b[k] for k in b if k in a}

    point = difference(dict(zip(labels, stacked.sum(axis=0).tolist(), strict=True)))
    intervals = statistic_intervals(stacked, labels, difference, n_boot, seed) if n_boot > 0 else {}
    return {k: (v, *intervals.get(k, (math.nan, math.nan))) for k, v in point.items()}


def _row(value, low, high) -> dict:
    def clean(x):
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else x

    return {"value": clean(value), "ci_low": clean(low), "ci_high": clean(high)}


def compare_probes(cfg: InterventionConfig, world: Path, before: Path, after: Path) -> dict[str, dict]:
    """{metric: {before, after, difference}}, each `{value, ci_low, ci_high}` (95%)."""
    from pmopt.probes.run import ProbeRunConfig

    sources = resolve_sources(ProbeRunConfig(probes=list(cfg.probes.probes), world=str(world)))
    sets = load_probe_sets(cfg.probes.probes, sources, cfg.probes.max_prompts)
    metrics = {side: read_json_file(d / "probes" / "metrics.json") for side, d in (("before", before), ("after", after))}
    outcomes = {side: per_prompt_outcomes(d / "probes" / "grades.jsonl") for side, d in (("before", before),
                                                                                         ("after", after))}
    out = {}
    for probe, records in sets.values():
        for metric, diff in paired_differences(probe, records, outcomes["before"], outcomes["after"],
                                               cfg.probes.n_boot, cfg.seed).items():
            out[metric] = {"before": metrics["before"][metric], "after": metrics["after"][metric],
                           "difference": _row(*diff)}
    return out


def compare_bon(before: Path, after: Path) -> list[dict]:
    """Every best-of-N curve point on both policies: `{pm, n, metric, before, after, difference}`."""
    rows = {side: {(r["pm"], r["n"], r["metric"]): r for r in read_jsonl(d / "bon" / "curves.jsonl")}
            for side, d in (("before", before), ("after", after))}
    out = []
    for key, b in rows["before"].items():
        a = rows["after"].get(key)
        if a is None:
            continue
        pm, n, metric = key
        diff = None if b["value"] is None or a["value"] is None else a["value"] - b["value"]
        out.append({"pm": pm, "n": n, "metric": metric, "before": _row(b["value"], b["ci_low"], b["ci_high"]),
                    "after": _row(a["value"], a["ci_low"], a["ci_high"]), "difference": _row(diff, None, None)})
    return out


__all__ = ["compare_probes", "compare_bon", "paired_differences", "per_prompt_outcomes"]
