"""Best-of-n curves from one sampling pass: docs/ARCHITECTURE.md §4 curve rows (method "bon") for every PM and n.

For a PM with scores s (P, N) and a per-sample outcome f (from the grades), the per-prompt expectation
E[f(BoN_n)] is the estimator of `pmopt.bon.estimator` (sort by score, binomial weights). A probe's
metrics are computed by the probe's own `metrics` from one expected outcome dict per prompt, so each
metric is aggregated the probe's way (answer's syco_rate over suggest_wrong prompts only, feedback's
framing differences, ...). CIs are the probe's cluster bootstrap (`pmopt.probes.stats`), with the
same resamples for every n and every PM (one seed), so curves can be compared point by point.

Besides the probe metrics, every PM gets
- `pm/score`: the expected score, under that PM, of the sample best-of-n selects (all prompts);
- `gold/reward`: on the prompts of the source at `world` that has a gold reward (the synthetic world's),
  the expected gold reward of that selection (Gao et al. 2022).
- `kl/support`: KL(BoN_n || base) computed exactly on each prompt's sampled outputs, whose base
  probabilities the sampler recorded (`estimator.support_bon_kl`, docs/ARCHITECTURE.md §6 "where the world makes it
  exact"), averaged over prompts; the share of base mass the samples cover is in the manifest.
Every row's `kl` is the bound log n - (n-1)/n (Beirami et al. 2024), labelled `kl_kind: "bound"`.
"""

from __future__ import annotations

import math

import numpy as np

from pmopt.bon.estimator import bon_curve, bon_expectations, kl_bound, support_bon_kl
from pmopt.records import bon_curve_row
from pmopt.stats import percentile_interval, resampled_means


def curve_rows(plan, scores: dict[str, np.ndarray], grades: list[list[dict]], gold: np.ndarray | None,
               samples=None) -> list[dict]:
    """Every row of the sweep: per PM (config order), the probes' metrics, pm/score, gold/reward and,
    given the samples with their log-probabilities, kl/support."""
    cfg, grid = plan.cfg, plan.grid
    with_support_kl = samples is not None and samples.has_logprobs
    rows = []
    for pm, pm_scores in scores.items():
        if with_support_kl:
            rows += support_kl_rows(pm, samples, pm_scores, grid, cfg.n_boot, cfg.seed, cfg.ci)
        for name, probe in plan.probes.items():
            index = [i for i, p in enumerate(plan.probe_of) if p == name]
            rows += probe_rows(pm, probe, [plan.records[i] for i in index], pm_scores[index],
                               [grades[i] for i in index], grid, cfg.n_boot, cfg.seed, cfg.ci)
        rows += scalar_rows(pm, "pm/score", pm_scores, pm_scores, None, grid, cfg.n_boot, cfg.seed, cfg.ci)
        if gold is not None:
            scored = ~np.isnan(gold).any(axis=1)  # the prompts of the source whose gold reward it is
            if scored.any():
                rows += scalar_rows(pm, "gold/reward", pm_scores, gold, scored, grid, cfg.n_boot, cfg.seed, cfg.ci)
    return rows


def expected_outcomes(scores: np.ndarray, grades: list[list[dict]], grid: list[int]) -> list[list[dict]]:
    """[g][p]: prompt p's E[f(BoN_n)] for every outcome key f, n = grid[g].

    A key that some sample of a prompt lacks (not applicable) is left out of that prompt's dict.
    """
    keys = list(dict.fromkeys(k for row in grades for outcome in row for k in outcome))
    out: list[list[dict]] = [[{} for _ in grades] for _ in grid]
    for key in keys:
        values = np.array([[o.get(key, math.nan) for o in row] for row in grades], dtype=np.float64)
        applies = ~np.isnan(values).any(axis=1)
        if not applies.any():
            continue
        expectations = bon_expectations(scores, values, grid, mask=applies)  # (G, P)
        for g in range(len(grid)):
            for p in np.flatnonzero(applies):
                out[g][p][key] = float(expectations[g, p])
    return out


def probe_rows(pm: str, probe, records: list[dict], scores: np.ndarray, grades: list[list[dict]],
               grid: list[int], n_boot: int, seed: int, ci: float) -> list[dict]:
    from pmopt.probes.stats import bootstrap_metrics

    rows = []
    for g, expected in enumerate(expected_outcomes(scores, grades, grid)):
        stats = bootstrap_metrics(probe, records, expected, n_boot=n_boot, seed=seed, level=ci)
        for metric, (value, low, high) in stats.items():
            if value is None or math.isnan(value):
                continue  # the metric is undefined on this prompt set (e.g. no records of a template)
            rows.append(curve_row(pm, grid[g], metric, value, low, high, len(records)))
    return rows


def scalar_rows(pm: str, metric: str, scores: np.ndarray, values: np.ndarray, mask, grid: list[int],
                n_boot: int, seed: int, ci: float) -> list[dict]:
    """Mean over prompts of E[value(BoN_n)], with the estimator's bootstrap over prompts."""
    return [curve_row(pm, point["n"], metric, point["mean"], point["ci_low"], point["ci_high"], point["n_prompts"])
            for point in bon_curve(scores, values, grid, n_boot=n_boot, seed=seed, ci=ci, mask=mask)]


def support_kl_rows(pm: str, samples, scores: np.ndarray, grid: list[int], n_boot: int, seed: int,
                    ci: float) -> list[dict]:
    """`kl/support` per n: mean over prompts of the exact KL on the sampled support, bootstrap CI."""
    kl, _ = support_bon_kl(samples.responses, samples.logprobs, scores, grid)
    low, high = percentile_interval(resampled_means(kl.T, n_boot, seed), ci)  # prompts are the clusters
    return [curve_row(pm, n, "kl/support", float(kl[g].mean()), low[g], high[g], kl.shape[1])
            for g, n in enumerate(grid)]


def support_mass(samples) -> float | None:
    """Mean over prompts of the base probability mass that the sampled outputs cover (None without log-probs)."""
    if not samples.has_logprobs:
        return None
    logprobs = np.asarray(samples.logprobs, dtype=np.float64)
    return float(support_bon_kl(samples.responses, logprobs, np.zeros_like(logprobs), [1])[1].mean())


def curve_row(pm: str, n: int, metric: str, value: float, low: float, high: float, n_prompts: int) -> dict:
    """A best-of-n row of `pmopt.records` (its x: n, its KL: the bound at n)."""
    return bon_curve_row(pm, n, kl_bound(int(n)), metric, value, low, high, n_prompts)


__all__ = ["curve_rows", "expected_outcomes", "probe_rows", "scalar_rows", "support_kl_rows", "support_mass",
           "curve_row"]
