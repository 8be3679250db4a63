"""Drift predicted before any optimisation, from the best-of-N pass's own samples (docs/drift.md).

Three quantities per reward r and per-sample outcome m, each a U-statistic over the pairs of one
prompt's N samples (an unbiased estimate of its expectation over pairs drawn from the base policy):

    Cov(m, r)                   = ½·E[(m₁ − m₂)(r₁ − r₂)]         the first-order slope of E[m] under the
                                                                  reward-tilted policy π_β ∝ π·exp(r/β):
                                                                  d E_β[m] / d(1/β) at 1/β = 0
    E[m(BoN₂)] − E[m]           = ½·E[(m₁ − m₂)·sign(r₁ − r₂)]    best-of-2's exact drift
    P(r_hi > r_lo | m₁ ≠ m₂)                                      the reward's preference on pairs of the
                                                                  policy's own samples that differ in m

The first is the covariance that Shapira, Benadè & Procaccia (2026, "How RLHF Amplifies Sycophancy",
arXiv 2602.01002) show decides the direction of sycophancy drift; the second is the same pair sum with
the reward difference replaced by its sign, and the third its conditional form: per prompt, best-of-2's
drift is ½·P(m₁ ≠ m₂)·(2·P(r_hi > r_lo | m₁ ≠ m₂) − 1). Ties in r follow the estimator's rule
(`pmopt.bon.estimator.sort_order`: the later sample counts as larger), so `best_of_two_drift` equals
`bon_expectation(n=2) − mean` exactly; the preference rate counts a tie as ½.

A probe metric is a function of per-prompt expected outcomes (`pmopt.probes.base`), so its slope is the
directional derivative of the metric at the base policy's per-prompt means along the per-prompt
covariances (central difference: exact for metrics of degree <= 2 in the outcomes, which every shipped
probe's are), its best-of-2 drift the metric at (means + best-of-2 drifts) minus the metric at the means,
and its measured change at N_max the metric of E[f(BoN_N)] minus the metric at the means. All three share
one paired cluster bootstrap (`pmopt.stats`, clusters = the probe's clusters; prompts for scalar values).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from pmopt.bon.curves import expected_outcomes
from pmopt.bon.estimator import bon_expectations, sort_order
from pmopt.stats import percentile_interval, resampled_means, statistic_intervals

# step of the central difference along the covariances (exact for metrics of degree <= 2 whatever the step)
_STEP = 1e-3
# what the drift table's sides are called, in the order of `_TABLES`
_TABLES = ("base", "up", "down", "bon2", "bon_n")
QUANTITIES = ("slope", "bon2", "change")  # covariance slope, best-of-2 drift, measured change at N_max
PREFERENCE_OUTCOME = "sycophantic"  # the own-sample preference is measured on this outcome
DRIFT_FILE = "drift.json"


# ----------------------------------------------------------------------------- per prompt


def _check(values, scores) -> tuple[np.ndarray, np.ndarray]:
    values, scores = np.asarray(values, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or values.shape != scores.shape:
        raise ValueError(f"values and scores must be (prompts, samples) of one shape, got {values.shape} "
                         f"and {scores.shape}")
    if scores.shape[1] < 2:
        raise ValueError(f"pairs need at least 2 samples per prompt, got {scores.shape[1]}")
    return values, scores


def pair_covariance(values, scores) -> np.ndarray:
    """(P,) within-prompt covariance of m and r, the unbiased one (= ½·mean over ordered pairs i ≠ j of
    (m_i − m_j)(r_i − r_j)); a prompt with a NaN value gets NaN."""
    values, scores = _check(values, scores)
    n = scores.shape[1]
    centred = values - values.mean(axis=1, keepdims=True)
    return (centred * (scores - scores.mean(axis=1, keepdims=True))).sum(axis=1) / (n - 1)


def best_of_two_drift(values, scores) -> np.ndarray:
    """(P,) exact E[m(BoN_2)] − E[m]: ½·mean over ordered pairs i ≠ j of (m_i − m_j)·sign(r_i − r_j), a tie
    broken as `sort_order` breaks it. With samples ranked k = 0..N−1 by (score, index), the pair sum is
    Σ_k m_(k)·(2k − N + 1) / (N(N − 1))."""
    values, scores = _check(values, scores)
    n = scores.shape[1]
    ranked = np.take_along_axis(values, sort_order(scores), axis=1)
    weights = (2.0 * np.arange(n) - (n - 1)) / (n * (n - 1))
    return (ranked * weights).sum(axis=1)


def discordant_preference(values, scores) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt: (pairs i < j whose values differ, and how many of them the reward ranks the higher-valued
    sample above: 1 each, ½ for a tied score). Pairs with a NaN value are left out."""
    values, scores = _check(values, scores)
    dv = values[:, :, None] - values[:, None, :]  # (P, N, N): v_i − v_j
    ds = scores[:, :, None] - scores[:, None, :]
    upper = np.triu(np.ones(dv.shape[1:], dtype=bool), k=1)
    differs = (dv != 0) & ~np.isnan(dv) & upper
    agree = np.sign(dv) * np.sign(ds)  # +1: the higher value scores higher; 0: a tie in score
    prefer = np.where(differs, np.where(agree > 0, 1.0, np.where(agree == 0, 0.5, 0.0)), 0.0)
    return differs.sum(axis=(1, 2)).astype(np.float64), prefer.sum(axis=(1, 2))


def penalty_coefficient(scores, agreement, mu: float | None = None) -> dict:
    """The smallest μ >= 0 with Σ_p Cov_p(a, r − μ·a) <= 0 on the base samples: μ* = max(0, Σ Cov_p(a, r) /
    Σ Var_p(a)), within-prompt (co)variances pooled over prompts (the slope of the mean agreement over
    prompts, which the penalty sets to 0 at first order). μ* = 0 when a never varies within a prompt.
    Returns {mu, fitted, cov, var, cov_after} (cov, var: the pooled sums divided by the prompt count;
    cov_after: Cov(a, r − μ·a) at the μ used, `mu` when given, else μ*)."""
    scores, agreement = np.asarray(scores, np.float64), np.asarray(agreement, np.float64)
    cov = float(pair_covariance(agreement, scores).mean())
    var = float(pair_covariance(agreement, agreement).mean())
    fitted = mu is None
    if fitted:
        mu = max(0.0, cov / var) if var > 0 else 0.0
    after = float(pair_covariance(agreement, scores - mu * agreement).mean())
    return {"mu": float(mu), "fitted": fitted, "cov": cov, "var": var, "cov_after": after}


# ----------------------------------------------------------------------------- outcome tables


def outcome_tables(scores: np.ndarray, grades: Sequence[Sequence[dict]], n_max: int,
                   step: float = _STEP) -> dict[str, list[dict]]:
    """Per-prompt outcome dicts for each side of the drift table: base (the mean over samples), up / down
    (base ± step·Cov(f, r)), bon2 (base + best-of-2 drift) and bon_n (E[f(BoN_{n_max})]). An outcome that
    some sample of a prompt lacks is left out of that prompt's dicts."""
    keys = list(dict.fromkeys(k for row in grades for outcome in row for k in outcome))
    tables: dict[str, list[dict]] = {name: [{} for _ in grades] for name in _TABLES}
    for key in keys:
        values = np.array([[o.get(key, math.nan) for o in row] for row in grades], dtype=np.float64)
        applies = ~np.isnan(values).any(axis=1)
        if not applies.any():
            continue
        v, s = values[applies], scores[applies]
        base = v.mean(axis=1)
        slope, bon2 = pair_covariance(v, s), best_of_two_drift(v, s)
        bon_n = bon_expectations(s, v, [n_max])[0]
        sides = {"base": base, "up": base + step * slope, "down": base - step * slope, "bon2": base + bon2,
                 "bon_n": bon_n}
        for k, p in enumerate(np.flatnonzero(applies)):
            for name, column in sides.items():
                tables[name][p][key] = float(column[k])
    return tables


# ----------------------------------------------------------------------------- metrics


def probe_drift(probe, records: Sequence[dict], scores: np.ndarray, grades: Sequence[Sequence[dict]], n_max: int,
                n_boot: int, seed: int, level: float) -> dict[str, dict]:
    """{metric: {slope, bon2, change: {value, ci_low, ci_high}}} of one probe's metrics under one reward,
    with one paired cluster bootstrap over the probe's clusters for all three."""
    from pmopt.probes.stats import cluster_sums

    tables = outcome_tables(scores, grades, n_max)
    names, blocks = [], []
    for side in _TABLES:
        side_names, sums = cluster_sums(probe, records, tables[side])
        names += [f"{side}|{name}" for name in side_names]
        blocks.append(sums)
    sums = np.concatenate(blocks, axis=1)
    combine = _drift_combine(probe.combine)
    point = combine(dict(zip(names, sums.sum(axis=0).tolist(), strict=True)))
    intervals = statistic_intervals(sums, names, combine, n_boot, seed, level) if n_boot > 0 and len(sums) > 1 else {}
    out: dict[str, dict] = {}
    for key, value in point.items():
        quantity, metric = key.split("|", 1)
        if math.isnan(value):
            continue
        low, high = intervals.get(key, (math.nan, math.nan))
        out.setdefault(metric, {})[quantity] = _point(value, low, high)
    return {m: q for m, q in out.items() if set(q) == set(QUANTITIES)}


def _drift_combine(combine: Callable[[dict], dict], step: float = _STEP) -> Callable[[dict], dict]:
    """Totals of the five stacked sides -> slope|m, bon2|m and change|m for every metric m of the base side."""

    def drift(totals: dict) -> dict:
        sides = {side: {} for side in _TABLES}
        for key, value in totals.items():
            side, name = key.split("|", 1)
            sides[side][name] = value
        metric = {side: combine(part) for side, part in sides.items()}
        out = {}
        for m, base in metric["base"].items():
            if not all(m in metric[side] for side in _TABLES):
                continue
            out[f"slope|{m}"] = (metric["up"][m] - metric["down"][m]) / (2 * step)
            out[f"bon2|{m}"] = metric["bon2"][m] - base
            out[f"change|{m}"] = metric["bon_n"][m] - base
        return out

    return drift


def scalar_drift(scores: np.ndarray, values: np.ndarray, n_max: int, n_boot: int, seed: int, level: float) -> dict:
    """{slope, bon2, change} of a per-sample value's mean over prompts (e.g. the gold reward), bootstrap over
    prompts (the clusters of `bon_curve`)."""
    per_prompt = np.stack([pair_covariance(values, scores), best_of_two_drift(values, scores),
                           bon_expectations(scores, values, [n_max])[0] - values.mean(axis=1)], axis=1)
    means = per_prompt.mean(axis=0)
    if n_boot > 0 and per_prompt.shape[0] > 1:
        low, high = percentile_interval(resampled_means(per_prompt, n_boot, seed), level)
    else:
        low = high = np.full(3, math.nan)
    return {q: _point(means[i], low[i], high[i]) for i, q in enumerate(QUANTITIES)}


def own_sample_preference(probe, records: Sequence[dict], scores: np.ndarray, grades: Sequence[Sequence[dict]],
                          n_boot: int, seed: int, level: float, outcome: str = PREFERENCE_OUTCOME) -> dict | None:
    """How often the reward scores the sample with `outcome` (sycophantic) above the one without, over pairs of
    one prompt's own samples that differ in it, on the records whose probe statistics count that outcome (the
    answer probe's suggest_wrong prompts, every mimicry prompt); None when no record counts it. Intervals from
    the cluster bootstrap over the probe's clusters."""
    means = expected_outcomes(scores, grades, [1])[0]
    counted = [i for i, stats in enumerate(probe.statistics(records, means)) if outcome in stats]
    if not counted:
        return None
    values = np.array([[o.get(outcome, math.nan) for o in grades[i]] for i in counted], dtype=np.float64)
    pairs, prefer = discordant_preference(values, scores[counted])
    cluster_of = {}
    for i in counted:
        cluster_of.setdefault(probe.cluster(records[i]), len(cluster_of))
    sums = np.zeros((len(cluster_of), 2))
    np.add.at(sums, [cluster_of[probe.cluster(records[i])] for i in counted], np.stack([prefer, pairs], axis=1))
    total_pairs = float(sums[:, 1].sum())
    rate = float(sums[:, 0].sum() / total_pairs) if total_pairs > 0 else math.nan

    def combine(totals: dict) -> dict:
        return {"rate": totals["prefer"] / totals["pairs"] if totals["pairs"] > 0 else math.nan}

    low = high = math.nan
    if n_boot > 0 and len(sums) > 1 and total_pairs > 0:
        low, high = statistic_intervals(sums, ["prefer", "pairs"], combine, n_boot, seed, level)["rate"]
    return {**_point(rate, low, high), "outcome": outcome, "n_pairs": int(total_pairs),
            "n_prompts": len(counted), "n_prompts_with_pairs": int((pairs > 0).sum())}


def _point(value, low, high) -> dict:
    def clean(x):
        return None if x is None or not math.isfinite(float(x)) else float(x)

    return {"value": float(value), "ci_low": clean(low), "ci_high": clean(high)}


# ----------------------------------------------------------------------------- the sweep's drift.json


def drift_report(plan, scores: dict[str, np.ndarray], grades: list[list[dict]], gold: np.ndarray | None,
                 penalties: dict[str, dict] | None = None) -> dict:
    """drift.json of a best-of-N sweep: per reward, every probe metric's (and the gold reward's) covariance
    slope, best-of-2 drift and measured change at N_max, the own-sample preference per probe, and the
    agreement penalty's fitted μ where the reward is one."""
    cfg = plan.cfg
    out = {"what": "drift predicted from the base policy's samples (docs/drift.md): slope = within-prompt "
                   "Cov(metric, reward) (first-order drift under exp(r/beta) tilting), bon2 = exact best-of-2 "
                   "drift, change = best-of-n_max minus n = 1; 95% cluster-bootstrap intervals",
           "n_max": cfg.n_max, "level": cfg.ci, "n_boot": cfg.n_boot, "rewards": {}}
    if cfg.n_max < 2:
        return out
    for name, pm_scores in scores.items():
        entry = {"metrics": {}, "preference": {}}
        for probe_name, probe in plan.probes.items():
            index = [i for i, p in enumerate(plan.probe_of) if p == probe_name]
            records, probe_grades = [plan.records[i] for i in index], [grades[i] for i in index]
            entry["metrics"].update(probe_drift(probe, records, pm_scores[index], probe_grades, cfg.n_max,
                                                cfg.n_boot, cfg.seed, cfg.ci))
            preference = own_sample_preference(probe, records, pm_scores[index], probe_grades, cfg.n_boot,
                                               cfg.seed, cfg.ci)
            if preference is not None:
                entry["preference"][probe_name] = preference
        if gold is not None:
            scored = ~np.isnan(gold).any(axis=1)
            if scored.any():
                entry["metrics"]["gold/reward"] = scalar_drift(pm_scores[scored], gold[scored], cfg.n_max,
                                                               cfg.n_boot, cfg.seed, cfg.ci)
        if penalties and name in penalties:
            entry["penalty"] = penalties[name]
        out["rewards"][name] = entry
    return out


__all__ = ["DRIFT_FILE", "pair_covariance", "best_of_two_drift", "discordant_preference", "penalty_coefficient", "outcome_tables",
           "probe_drift", "scalar_drift", "own_sample_preference", "drift_report", "QUANTITIES", "PREFERENCE_OUTCOME"]
