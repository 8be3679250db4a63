"""One cluster bootstrap for every interval in pmopt (docs/ARCHITECTURE.md §4).

Units that are not independent (the four templates of one question, the samples of one prompt) are
resampled together as clusters, with replacement (the percentile bootstrap; Efron & Tibshirani 1993,
ch. 13). Every statistic pmopt reports is a function of sums over clusters, so a resample is C cluster
indices drawn uniformly and its totals are the sums of the drawn clusters' rows.

The determinism rule: the totals are numpy reductions over gathered rows, never BLAS products, so the
draws and their totals are bitwise identical whatever the thread count or chunk size (same seed, same
intervals: docs/ARCHITECTURE.md §9). Draws are made in chunks of rows from one generator; a chunk of
b rows takes the next b x C integers of the stream, so chunking does not change them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

LEVEL = 0.95
# resampled cells (draws x clusters x columns) held in memory at once
_CELLS_PER_CHUNK = 4_000_000


def resampled_sums(sums: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, K) totals of `n_boot` cluster resamples of the (C, K) per-cluster sums (C, or (C,) -> (n_boot,))."""
    sums = np.asarray(sums, dtype=np.float64)
    flat = sums.reshape(sums.shape[0], -1)
    C, K = flat.shape
    out = np.empty((n_boot, K))
    if C == 0:
        out.fill(0.0)
        return out.reshape((n_boot,) + sums.shape[1:])
    rng = np.random.default_rng(seed)
    chunk = max(1, _CELLS_PER_CHUNK // (C * K))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        draws = rng.integers(0, C, size=(b, C))
        # (K, b, C) summed over the contiguous last axis: numpy's pairwise summation, row by row
        out[start:start + b] = flat.T[:, draws].sum(axis=-1).T
    return out.reshape((n_boot,) + sums.shape[1:])


def resampled_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, ...) means over axis 0 of `n_boot` resamples of the rows of `values` (one row per cluster)."""
    values = np.asarray(values, dtype=np.float64)
    return resampled_sums(values, n_boot, seed) / values.shape[0]


def percentile_interval(draws: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) percentiles of `draws` along axis 0 (NaN draws left out column by column)."""
    alpha = (1.0 - level) / 2.0
    draws = np.asarray(draws, dtype=np.float64)
    if not np.isnan(draws).any():
        low, high = np.quantile(draws, [alpha, 1.0 - alpha], axis=0)
        return low, high
    low, high = np.full(draws.shape[1:], math.nan), np.full(draws.shape[1:], math.nan)
    for index in np.ndindex(draws.shape[1:]):
        column = draws[(slice(None),) + index]
        finite = column[~np.isnan(column)]
        if finite.size:
            low[index], high[index] = np.quantile(finite, [alpha, 1.0 - alpha])
    return low, high


def mean_interval(values: Sequence[float], n_boot: int, seed: int, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high) of independent units (e.g. prompts): NaN bounds with fewer than 2 units."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    if n_boot <= 0 or x.size == 1:
        return float(x.mean()), math.nan, math.nan
    low, high = percentile_interval(resampled_means(x, n_boot, seed), level)
    return float(x.mean()), float(low), float(high)


def statistic_intervals(sums: np.ndarray, names: Sequence[str], combine: Callable[[dict], dict],
                        n_boot: int, seed: int, level: float = LEVEL) -> dict[str, tuple[float, float]]:
    """{metric: (low, high)} of metrics `combine({name: total})` over cluster resamples of `sums` (C, K)."""
    totals = resampled_sums(sums, n_boot, seed)
    draws: dict[str, np.ndarray] = {}
    for b in range(n_boot):
        for metric, value in combine(dict(zip(names, totals[b].tolist(), strict=True))).items():
            draws.setdefault(metric, np.full(n_boot, math.nan))[b] = value
    return {metric: tuple(float(v) for v in percentile_interval(column, level))
            for metric, column in draws.items()}


__all__ = ["resampled_sums", "resampled_means", "percentile_interval", "mean_interval", "statistic_intervals",
           "LEVEL"]
