"""Benchmark: the main job's stages, one seed and three seeds, today's defaults against the previous ones.

    python benchmarks/main_job.py [--runs previous-1,current-1,current-3,previous-3] [--out DIR] [--json F]

Each run is a fresh `pmopt run` in its own process (as a user runs it), timed as a whole and per stage
from the run's manifest. "previous" is the default experiment as it was before the multi-seed work
(`benchmarks/main_job_previous.yaml`: one seed, torch's default thread count, a report per run);
"current" is `configs/experiments/sycophancy_world.yaml` as it ships. A 3-seed run executes seeds
0, 1, 2 (`--seeds 0,1,2`; for "previous", the previous job run three times one after another, which is
what a user of the previous version had to do). Prints a Markdown table for benchmarks/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"previous": REPO / "benchmarks" / "main_job_previous.yaml",
           "current": REPO / "configs" / "experiments" / "sycophancy_world.yaml"}
STAGES = ("world", "pms", "bon", "probes", "report")


def pmopt_run(config: Path, out: Path, *extra: str) -> tuple[float, float]:
    """One `pmopt run` as a user starts it: (wall seconds, CPU seconds of the run and every process it
    waited for, the seeds' processes included). Its console (stdout) is kept beside the run as OUT.console.txt."""
    start, cpu_start = time.perf_counter(), _children_cpu()
    result = subprocess.run([sys.executable, "-m", "pmopt.cli", "run", str(config), "--out", str(out), *extra],
                            check=True, stdout=subprocess.PIPE, text=True, cwd=REPO)
    seconds, cpu = time.perf_counter() - start, _children_cpu() - cpu_start
    out.with_suffix(".console.txt").write_text(result.stdout, encoding="utf-8")
    return seconds, cpu


def _children_cpu() -> float:
    """User + system CPU seconds of every finished child process (and the processes they waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stage_seconds(run: Path) -> dict[str, float]:
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    return {name: stages[name]["seconds"] for name in STAGES if "seconds" in stages.get(name, {})}


def one_seed(kind: str, root: Path) -> dict:
    out = root / f"{kind}-1"
    wall, cpu = pmopt_run(CONFIGS[kind], out)
    return {"wall": wall, "cpu": cpu, "stages": stage_seconds(out)}


def three_seeds(kind: str, root: Path) -> dict:
    if kind == "current":
        out = root / "current-3"
        wall, cpu = pmopt_run(CONFIGS[kind], out, "--seeds", "0,1,2")
        per_seed = {k: stage_seconds(out / f"seed-{k}") for k in range(3)}
        return {"wall": wall, "cpu": cpu, "per_seed_stages": per_seed}
    wall, cpu, per_seed = 0.0, 0.0, {}
    for k in range(3):
        out = root / f"previous-3-{k}"
        seconds, used = pmopt_run(CONFIGS[kind], out, "--set", f"seed={k}", "--set", f"world.seed={k}")
        wall, cpu, per_seed[k] = wall + seconds, cpu + used, stage_seconds(out)
    return {"wall": wall, "cpu": cpu, "per_seed_stages": per_seed}


def machine() -> dict:
    from pmopt.io import environment

    return {**environment(), "load_average_start": os.getloadavg()}


def table(results: dict) -> str:
    lines = ["| run | wall | CPU | " + " | ".join(STAGES) + " |", "|---|---:|---:|" + "---:|" * len(STAGES)]
    for name, result in results.items():
        stages = result.get("stages") or _mean_stages(result.get("per_seed_stages", {}))
        cells = [f"{stages[s]:.0f} s" if s in stages else "" for s in STAGES]
        lines.append(f"| {name} | **{result['wall'] / 60:.1f} min** | {result['cpu'] / 60:.1f} min | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_stages(per_seed: dict) -> dict:
    names = {s for stages in per_seed.values() for s in stages}
    return {s: sum(st.get(s, 0.0) for st in per_seed.values()) / max(len(per_seed), 1) for s in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="previous-1,current-1,current-3,previous-3",
                        help="comma list of {previous,current}-{1,3}")
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary directory)")
    parser.add_argument("--json", default=None, help="also write the figures as JSON")
    args = parser.parse_args()
    info = machine()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        for name in args.runs.split(","):
            kind, count = name.rsplit("-", 1)
            results[name] = one_seed(kind, root) if count == "1" else three_seeds(kind, root)
            print(f"{name}: {results[name]['wall']:.0f} s", flush=True)
    info["load_average_end"] = os.getloadavg()
    print(f"\nmachine: {info['cpu']}, {info['cpu_count']} CPUs, load {info['load_average_start']} -> "
          f"{info['load_average_end']}\n(stage columns of 3-seed runs: mean per seed; CPU: user + system time of the run's processes, "
          f"so CPU / {os.cpu_count()} is the least wall time this machine could take when idle)\n")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "results": results}, indent=2))


if __name__ == "__main__":
    main()
