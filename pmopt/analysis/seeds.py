"""Curves over seeds: one value and one interval per curve point from several independent runs.

Each seed's run gives a curve point a value v_s and a percentile interval [l_s, h_s] from its own cluster
bootstrap over prompts. Across seeds the point is the mean of the v_s, and its interval comes from a
two-stage bootstrap (Davison & Hinkley 1997, "Bootstrap Methods and their Application", §3.8): draw S seeds
with replacement (the seed-to-seed variation: world, PM training and sampling all change with the seed),
then perturb each drawn seed's value by its own prompt-level sampling error, and average. The second stage
draws from a split normal matched to the seed's interval (sd (v - l)/z below the value, (h - v)/z above,
z = the normal quantile of the level), so an interval that is one-sided at a bound (a rate of 1.0 with
[0.95, 1.0]) stays one-sided. Resampling both stages is slightly conservative (the seed stage already
carries some of the prompt-level noise), which we prefer to an interval that is too narrow.

Why not re-bootstrap the prompts of every seed: the rows are all that every stage (best-of-N, PPO, probes)
writes, and the split normal reproduces each seed's interval; with 3-5 seeds the seed stage dominates.
All draws are numpy gathers and sums of float64 (no BLAS), so the aggregate is bitwise the same whatever
the thread count, and the same draws are used for every curve point so curves compare point by point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np

# which fields make two rows "the same curve point" across seeds
POINT_KEYS = ("method", "pm", "metric", "kl_kind", "n", "step", "rl_method", "beta")  # beta: an RL β sweep


def point_key(row: Mapping) -> tuple:
    return tuple(row.get(k) for k in POINT_KEYS)


def split_normal_sds(values: np.ndarray, lows: np.ndarray, highs: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """(sd below, sd above) of each value from its interval; a missing interval means no prompt-level error."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    below = np.where(np.isnan(lows), 0.0, np.maximum(values - lows, 0.0) / z)
    above = np.where(np.isnan(highs), 0.0, np.maximum(highs - values, 0.0) / z)
    return below, above


def two_stage_bootstrap(values: np.ndarray, lows: np.ndarray, highs: np.ndarray, n_boot: int = 2000,
                        seed: int = 0, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """values, lows, highs: (P, S) per curve point and seed (NaN interval = none). Returns the across-seed
    mean and the interval's (low, high), each (P,)."""
    values = np.asarray(values, dtype=np.float64)
    points, n_seeds = values.shape
    below, above = split_normal_sds(values, np.asarray(lows, np.float64), np.asarray(highs, np.float64), level)
    mean = values.mean(axis=1)
    if n_boot <= 0:
        return mean, np.full(points, np.nan), np.full(points, np.nan)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_seeds, size=(n_boot, n_seeds))  # the same seed resamples for every point
    z = rng.standard_normal(size=(n_boot, n_seeds))
    draws = np.empty((n_boot, points))
    for p in range(points):
        sd = np.where(z > 0, above[p][picks], below[p][picks])
        draws[:, p] = (values[p][picks] + z * sd).sum(axis=1) / n_seeds
    alpha = (1.0 - level) / 2
    low, high = np.quantile(draws, [alpha, 1.0 - alpha], axis=0)
    return mean, low, high


def aggregate_rows(rows_by_seed: Mapping[int, Sequence[Mapping]], n_boot: int = 2000, seed: int = 0,
                   level: float = 0.95) -> list[dict]:
    """Curve rows over seeds: every point present in every seed's rows, in the first seed's order, with the
    across-seed mean value (and mean `kl`: the bound is the same for every seed, RL's measured KL is not),
    a two-stage bootstrap interval, `n_seeds` and each seed's own value (`seed_values`, in seed order).
    Rows that carry a KL interval (RL's `kl_ci_low` / `kl_ci_high`) get the KL's two-stage interval over
    seeds too, from the same seed draws, and each seed's KL (`kl_seed_values`)."""
    seeds = sorted(rows_by_seed)
    if not seeds:
        return []
    indexed = {s: {point_key(r): r for r in rows_by_seed[s]} for s in seeds}
    keys = [point_key(r) for r in rows_by_seed[seeds[0]] if all(point_key(r) in indexed[s] for s in seeds)]
    if not keys:
        return []
    table = [[indexed[s][k] for s in seeds] for k in keys]
    values = np.array([[r["value"] for r in seed_rows] for seed_rows in table], dtype=np.float64)
    lows = np.array([[_nan(r.get("ci_low")) for r in seed_rows] for seed_rows in table])
    highs = np.array([[_nan(r.get("ci_high")) for r in seed_rows] for seed_rows in table])
    mean, low, high = two_stage_bootstrap(values, lows, highs, n_boot, seed, level)
    kl_intervals = _kl_intervals(table, n_boot, seed, level)
    out = []
    for i, seed_rows in enumerate(table):
        row = dict(seed_rows[0])
        kls = [r.get("kl") for r in seed_rows]
        row.update(value=float(mean[i]), ci_low=_or_none(low[i]), ci_high=_or_none(high[i]),
                   kl=None if any(k is None for k in kls) else float(np.mean(kls)), n_seeds=len(seeds),
                   seed_values=[float(v) for v in values[i]])
        if i in kl_intervals:
            row.update(kl_ci_low=kl_intervals[i][0], kl_ci_high=kl_intervals[i][1],
                       kl_seed_values=[float(k) for k in kls])
        out.append(row)
    return out


def _kl_intervals(table: list[list[Mapping]], n_boot: int, seed: int, level: float) -> dict[int, tuple]:
    """{point index: (low, high)} of the KL over seeds for the points whose rows carry a KL interval (RL's);
    the same two-stage bootstrap (and seed draws) as the values."""
    points = [i for i, rows in enumerate(table)
              if all(r.get("kl") is not None and "kl_ci_low" in r for r in rows)]
    if not points:
        return {}
    kls = np.array([[table[i][s]["kl"] for s in range(len(table[i]))] for i in points], dtype=np.float64)
    lows = np.array([[_nan(r.get("kl_ci_low")) for r in table[i]] for i in points])
    highs = np.array([[_nan(r.get("kl_ci_high")) for r in table[i]] for i in points])
    _, low, high = two_stage_bootstrap(kls, lows, highs, n_boot, seed, level)
    return {i: (_or_none(low[k]), _or_none(high[k])) for k, i in enumerate(points)}


def _nan(value) -> float:
    return math.nan if value is None else float(value)


def _or_none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def aggregate_scalars(dicts_by_seed: Mapping[int, Mapping], level: float = 0.95) -> dict:
    """Numbers of a per-seed JSON object (world statistics, probe metrics), nested keys flattened with dots:
    {key: {"mean", "min", "max", "per_seed"}}. Only keys that are numbers in every seed are kept."""
    seeds = sorted(dicts_by_seed)
    flat = {s: dict(_flatten_numbers(dicts_by_seed[s])) for s in seeds}
    keys = [k for k in flat[seeds[0]] if all(k in flat[s] for s in seeds)] if seeds else []
    return {k: {"mean": float(np.mean([flat[s][k] for s in seeds])), "min": min(flat[s][k] for s in seeds),
                "max": max(flat[s][k] for s in seeds), "per_seed": [flat[s][k] for s in seeds]} for k in keys}


def _flatten_numbers(data: Mapping, prefix: str = ""):
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten_numbers(value, f"{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield name, float(value)


__all__ = ["aggregate_rows", "aggregate_scalars", "two_stage_bootstrap", "split_normal_sds", "point_key"]
