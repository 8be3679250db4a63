"""A synthetic multi-seed run directory with everything `pmopt report` reads, built from curve rows with
known values (no training): per-seed best-of-N curves of every PM `pmopt run` sweeps, aggregated with the
real two-stage bootstrap, claims.json from the real claim code, pmopt_pm.json per PM and seed, the world
and probe tables per seed with their aggregates, and fits.json from the real fitter.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pmopt.analysis.fits import FitConfig, write_fits
from pmopt.analysis.seeds import aggregate_rows, aggregate_scalars
from pmopt.io import atomic_write_json, atomic_write_jsonl
from pmopt.multiseed import claims_summary

PMS = ("proxy", "proxy-nonsyc", "unbiased", "ens-mean", "ens-worst", "ens-uwo", "gold")
# slope of syco_rate in log2 n per PM: the biased PMs push sycophancy up, the others down
SYCO_SLOPE = {"proxy": 0.06, "proxy-nonsyc": -0.05, "unbiased": -0.04, "ens-mean": 0.05, "ens-worst": 0.03,
              "ens-uwo": 0.02, "gold": -0.06}
METRICS = ("probe/answer/syco_rate", "gold/reward", "pm/score", "probe/mimicry/syco_rate",
           "probe/answer/accuracy/plain", "probe/answer/accuracy_change/suggest_wrong", "kl/support")
NS = (1, 2, 4, 8, 16, 32)
SEEDS = (0, 1, 2)
ACCURACY = {"proxy": (0.71, 0.69, 0.74), "unbiased": (0.80, 0.78, 0.83)}
MEMBER_ACCURACY = ((0.60, 0.64), (0.62, 0.66), (0.58, 0.70))  # ensemble members per seed


def _value(pm: str, metric: str, n: int, seed: int) -> float:
    d = math.log2(n)
    jitter = 0.01 * seed
    if metric == "probe/answer/syco_rate":
        return min(1.0, max(0.0, 0.40 + SYCO_SLOPE[pm] * d + jitter))
    if metric == "gold/reward":
        return 0.8 + (0.05 if pm in ("gold", "unbiased", "proxy-nonsyc") else -0.04) * d + jitter
    if metric == "kl/support":
        return 0.8 * (math.log(n) - (n - 1) / n)
    return 0.5 + 0.02 * d * (1 if pm.startswith("proxy") else -1) + jitter


def seed_rows(seed: int) -> list[dict]:
    rows = []
    for pm in PMS:
        for metric in METRICS:
            for n in NS:
                value = _value(pm, metric, n, seed)
                half = 0.0 if n == 1 and metric == "kl/support" else 0.03
                rows.append({"method": "bon", "pm": pm, "n": n, "kl": math.log(n) - (n - 1) / n, "kl_kind": "bound",
                             "metric": metric, "value": value, "ci_low": value - half, "ci_high": value + half,
                             "n_prompts": 50})
    return rows


def _pm_info(seed: int, accuracy: float, member: int = 0) -> dict:
    return {"format": "pmopt-pm", "version": 1, "kind": "full", "base_model": "world/policy", "max_length": 128,
            "eval_accuracy": accuracy, "n_train": 2160, "n_eval": 240, "seed": seed + member, "member": member,
            "global_step": 272, "train_loss": 0.5, "lora": None}


def _write_seed(run: Path, seed: int) -> dict:
    seed_dir = run / f"seed-{seed}"
    for name, accuracies in ACCURACY.items():
        atomic_write_json(seed_dir / "pms" / name / "pmopt_pm.json", _pm_info(seed, accuracies[seed]))
    for k, accuracy in enumerate(MEMBER_ACCURACY[seed]):
        atomic_write_json(seed_dir / "pms" / "ensemble" / f"member-{k}" / "pmopt_pm.json",
                          _pm_info(seed + 1000, accuracy, k))
    rows = seed_rows(seed)
    atomic_write_jsonl(seed_dir / "bon" / "curves.jsonl", rows)
    return {"rows": rows,
            "world": {"neutral_accuracy": 0.85 + 0.01 * seed, "pairs": {"pairs": 2400},
                      "preference_regression": {"raters": {"agrees_with_user": {
                          "weight": 3.0 + seed, "ci_low": 2.5 + seed, "ci_high": 3.5 + seed}}}},
            "probes": {"probe/answer/syco_rate": {"value": 0.4 + 0.01 * seed, "ci_low": 0.3, "ci_high": 0.5}}}


def build_run(run: Path, with_fits: bool = True) -> Path:
    """The run directory `pmopt run --seeds 0,1,2` would leave, minus models and samples."""
    from pmopt.analysis.claims import bon_claim

    per_seed = {seed: _write_seed(run, seed) for seed in SEEDS}
    atomic_write_jsonl(run / "bon" / "curves.jsonl",
                       aggregate_rows({s: d["rows"] for s, d in per_seed.items()}, n_boot=200, seed=0))
    for name, key in (("world_stats", "world"), ("probe_metrics", "probes")):
        atomic_write_json(run / "aggregate" / f"{name}.json",
                          {"seeds": list(SEEDS), "values": aggregate_scalars({s: d[key] for s, d in per_seed.items()})})
    claims = claims_summary({s: bon_claim(d["rows"]) for s, d in per_seed.items()}, run / "bon" / "curves.jsonl")
    atomic_write_json(run / "claims.json", claims)
    (run / "config.yaml").write_text("seeds: [0, 1, 2]\nbon:\n  n_max: 32  # <tag> & more\n")
    if with_fits:
        write_fits(run, FitConfig(n_boot=50))
    return run


def read_claims(run: Path) -> dict:
    return json.loads((run / "claims.json").read_text())
