"""Benchmark: what the drift measurements cost over the best-of-N pass that feeds them.

    python benchmarks/drift_cost.py BON_DIR [--repeats 3] [--json F]

BON_DIR is a finished sweep (`pmopt bon`, or RUN/seed-<k>/bon of `pmopt run`). In one process, on that
sweep's own samples, grades and scores (read from its files), it times:

- the curves step the sweep already runs (`pmopt.bon.curves.curve_rows`: the estimator for every n and PM,
  the probes' cluster bootstrap per n) against `drift.json` (`pmopt.bon.drift.drift_report`: per PM, the
  covariance slope, the exact best-of-2 drift and the change at N_max of every metric, one paired bootstrap,
  and the own-sample preference);
- one PM pass over every sample (the proxy PM, what a penalty would cost if it rescored) against the
  agreement penalty's scores from the proxy's score file (`pmopt.bon.scoring.penalty_scores`: the grade and
  the fit only);
- and sets both against the pass's sampling time (the manifest's `bon/samples` seconds, when this sweep
  drew its samples itself).

Timings are the minimum over `--repeats` runs (CPU time of this process: the machine may be shared).
Prints a Markdown table for benchmarks/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch


def cpu_seconds(fn, repeats: int) -> tuple[float, float, object]:
    """(min CPU seconds, min wall seconds, last result) of `repeats` calls."""
    best_cpu, best_wall, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        result = fn()
        best_cpu, best_wall = min(best_cpu, time.process_time() - cpu), min(best_wall, time.perf_counter() - wall)
    return best_cpu, best_wall, result


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bon_dir", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from pmopt.bon.curves import curve_rows
    from pmopt.bon.drift import drift_report
    from pmopt.bon.grades import read_grades
    from pmopt.bon.scoring import _score_with_reward, penalty_scores, read_scores
    from pmopt.bon.shards import read_samples
    from pmopt.bon.sweep import BonConfig, PMEntry, plan_sweep
    from pmopt.config import load_config

    bon = args.bon_dir
    cfg = load_config(BonConfig, bon / "config.yaml")
    plan = plan_sweep(cfg)
    samples = read_samples(bon, plan.records, cfg)
    grades = read_grades(bon / "grades.jsonl", samples)
    scores = {e.name: read_scores(bon / "scores" / f"{e.name}.jsonl", samples, e.name) for e in cfg.pms}
    gold = scores.get("gold")
    n_samples = len(plan.records) * cfg.n_max
    timings = {}
    timings["curves"] = cpu_seconds(lambda: curve_rows(plan, scores, grades, gold, samples), args.repeats)[:2]
    timings["drift"] = cpu_seconds(lambda: drift_report(plan, scores, grades, gold), args.repeats)[:2]

    proxy = next(e for e in cfg.pms if e.name == "proxy")
    timings["pm_pass"] = cpu_seconds(lambda: _score_with_reward(plan.rewards["proxy"], plan, samples, None,
                                                                members=False), 1)[:2]
    penalty = PMEntry(name="bench-penalty", kind="agreement_penalty", path=proxy.path)
    penalty_cfg = load_config(BonConfig, bon / "config.yaml")
    penalty_cfg.pms = [*penalty_cfg.pms, penalty]
    penalty_plan = plan_sweep(penalty_cfg)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        shutil.copytree(bon / "scores", scratch / "scores")
        timings["penalty"] = cpu_seconds(lambda: penalty_scores(scratch, penalty, penalty_plan, samples, None),
                                         args.repeats)[:2]
    manifest = json.loads((bon / "manifest.json").read_text())["stages"]
    sampling = manifest.get("bon/samples", {}).get("seconds") if manifest.get("bon/samples", {}).get("generated") else None

    machine = (f"{cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
               f"(1 thread), load average {os.getloadavg()[0]:.2f}")
    print(f"machine: {machine}; {len(plan.records)} prompts x N = {cfg.n_max} ({n_samples} samples), "
          f"{len(cfg.pms)} rewards, n_boot {cfg.n_boot}; CPU s = min of {args.repeats} (PM pass: 1 run)\n")
    print("| step | CPU s | wall s | vs the curves step |")
    print("|---|---:|---:|---:|")
    for name, label in (("curves", "curves (the sweep's step 5: estimator + probe bootstraps, every n and PM)"),
                        ("drift", "drift.json (slope, best-of-2, change at N_max, own-sample preference, every PM)")):
        cpu, wall = timings[name]
        print(f"| {label} | {cpu:.2f} | {wall:.2f} | {cpu / timings['curves'][0]:.2f} |")
    print("\n| scoring | CPU s | wall s | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| one PM pass over every sample (proxy) | {timings['pm_pass'][0]:.2f} | {timings['pm_pass'][1]:.2f} | 1.00 |")
    print(f"| agreement penalty from the proxy's scores (grade + fit) | {timings['penalty'][0]:.2f} | "
          f"{timings['penalty'][1]:.2f} | {timings['penalty'][0] / timings['pm_pass'][0]:.3f} |")
    if sampling is not None:
        print(f"\nsampling pass (manifest, wall s): {sampling:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "n_samples": n_samples, "timings": timings,
                                         "sampling_wall": sampling}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
