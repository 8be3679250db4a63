"""Confidence intervals for probe metrics: the percentile bootstrap over prompt clusters.

A probe's prompts are not independent units: the four templates of one question, or the five
framings of one text, share the question. The bootstrap therefore resamples whole clusters
(`probe.cluster(record)`) with replacement. Every probe metric is a function of sums of additive
per-record statistics (`probe.statistics`, combined by `probe.combine`), so a resample's totals are
the sums of its drawn clusters' rows of S, the C x K matrix of per-cluster sums: the same numbers as
recomputing `probe.metrics` on the resampled records. The draws and totals are pmopt's one cluster
bootstrap (`pmopt.stats.statistic_intervals`, with its determinism rule). The 95% interval is the
2.5th-97.5th percentile of the resampled values; NaN draws (e.g. a resample without an initially
correct answer) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pmopt.stats import LEVEL, statistic_intervals


def cluster_sums(probe, records: Sequence[dict], outcomes: Sequence[dict]) -> tuple[list[str], np.ndarray]:
    """(statistic names, C x K matrix of each cluster's summed statistics), clusters in first-seen order."""
    stats = probe.statistics(records, outcomes)
    names = list(dict.fromkeys(k for s in stats for k in s))
    column = {k: i for i, k in enumerate(names)}
    row_of: dict[str, int] = {}
    for record in records:
        row_of.setdefault(probe.cluster(record), len(row_of))
    sums = np.zeros((len(row_of), len(names)))
    for record, s in zip(records, stats, strict=True):
        row = row_of[probe.cluster(record)]
        for k, v in s.items():
            sums[row, column[k]] += v
    return names, sums


def bootstrap_metrics(probe, records: Sequence[dict], outcomes: Sequence[dict], n_boot: int = 1000,
                      seed: int = 0, level: float = LEVEL) -> dict[str, tuple[float, float, float]]:
    """{metric: (value, low, high)}: the point estimate and its percentile-bootstrap interval."""
    point = probe.metrics(records, outcomes)
    names, sums = cluster_sums(probe, records, outcomes)
    if sums.shape[0] == 0 or n_boot <= 0:
        return {k: (v, math.nan, math.nan) for k, v in point.items()}
    intervals = statistic_intervals(sums, names, probe.combine, n_boot, seed, level)
    out = {}
    for k, value in point.items():
        low, high = intervals.get(k, (math.nan, math.nan))
        if math.isnan(value) or math.isnan(low):
            out[k] = (value, math.nan, math.nan)
        else:
            out[k] = (value, low, high)
    return out
