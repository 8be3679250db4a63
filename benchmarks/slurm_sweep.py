"""Benchmark: one sweep as a SLURM job array (`--launcher slurm`) against the local process pool, side by side.

    python benchmarks/slurm_sweep.py [--config configs/experiments/rater_bias_sweep_tiny.yaml] [--out DIR] [--json F]

Runs the sweep twice from scratch: submitted to the SLURM that `sbatch` reaches (scripts/slurm_local.sh starts a
one-node one), timed from the submission to the aggregation job's end, and then in this machine's process pool
(`pmopt run` as a user starts it). Reports each launcher's wall time and CPU time (the local run: the run and every
process it waited for; SLURM: the sum of what each task and the aggregation job log as their CPU time), each
cell's CPU and wall time under SLURM (what docs/cluster.md sizes `slurm.time` by), and whether the two runs wrote
the same results byte for byte. A run already complete in OUT is measured from its files, not run again.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASK_LINE = re.compile(r"run: this task: (\d+) s of CPU, (\d+) s since it started")
CELL_LINE = re.compile(r"run: .+ done in (\d+) s")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pmopt_run(config: Path, out: Path, *extra: str) -> tuple[float, float]:
    """(wall, CPU) of one `pmopt run`; its console kept as OUT.console.txt."""
    start, cpu_start = time.perf_counter(), children_cpu()
    result = subprocess.run([sys.executable, "-m", "pmopt.cli", "run", str(config), "--out", str(out), *extra],
                            check=True, stdout=subprocess.PIPE, text=True, cwd=REPO)
    out.with_suffix(".console.txt").write_text(result.stdout, encoding="utf-8")
    return time.perf_counter() - start, children_cpu() - cpu_start


def wait_for(job_ids: set[str]) -> None:
    while True:
        queue = subprocess.run(["squeue", "-h", "-r", "-o", "%F %i"], capture_output=True, text=True).stdout
        if not any(set(line.split()) & job_ids for line in queue.splitlines()):
            return
        time.sleep(5)


def slurm_run(config: Path, out: Path) -> dict:
    """Submit (unless OUT holds a finished run), wait, and read every task's figures from its SLURM log."""
    if not (out / "dose_response.json").is_file():
        pmopt_run(config, out, "--launcher", "slurm")
        jobs = json.loads((out / "slurm" / "jobs.json").read_text())[-1]
        wait_for({jobs["cells"], jobs["aggregate"]})
    submissions = json.loads((out / "slurm" / "jobs.json").read_text())
    logs = out / "slurm" / "logs"
    cells = {}
    for submission in submissions:
        for task, cell in submission["tasks"].items():
            text = (logs / f"cells-{submission['cells']}_{task}.log").read_text()
            task_line, cell_line = TASK_LINE.findall(text), CELL_LINE.findall(text)
            if task_line:
                cells[cell] = {"cpu": int(task_line[-1][0]), "task_wall": int(task_line[-1][1]),
                               "cell_wall": int(cell_line[-1])}
    aggregate_log = logs / f"aggregate-{submissions[-1]['aggregate']}.log"
    aggregate = [int(v) for v in TASK_LINE.findall(aggregate_log.read_text())[-1]]
    started = datetime.fromisoformat(submissions[0]["submitted"]).timestamp()
    return {"wall": aggregate_log.stat().st_mtime - started, "cpu": sum(c["cpu"] for c in cells.values()) + aggregate[0],
            "cells": cells, "aggregate": {"cpu": aggregate[0], "wall": aggregate[1]}, "submissions": len(submissions)}


def result_files(run: Path) -> list[Path]:
    """The sweep's results that hold no path and no time."""
    names = [Path("dose_response.json"), Path("dose_response.csv")]
    for value_dir in sorted(p for p in run.iterdir() if (p / "claims.json").is_file()):
        names += [value_dir.relative_to(run) / "bon" / "curves.jsonl", value_dir.relative_to(run) / "claims.json"]
        for cell in sorted(value_dir.glob("seed-*")):
            names += [cell.relative_to(run) / name for name in ("bon/curves.jsonl", "pms/sycophancy_preference.json",
                                                                 "pms/proxy/model.safetensors")]
    return names


def same_results(a: Path, b: Path) -> dict:
    names = result_files(a)
    differ = [str(n) for n in names if (a / n).read_bytes() != (b / n).read_bytes()]
    return {"files_compared": len(names), "differ": differ}


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "experiments" / "rater_bias_sweep_tiny.yaml"))
    parser.add_argument("--out", default="bench-slurm-sweep")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    out, config = Path(args.out).resolve(), Path(args.config).resolve()
    out.mkdir(parents=True, exist_ok=True)
    load_start = load_average()
    slurm = slurm_run(config, out / "slurm")
    local_wall, local_cpu = (None, None)
    if not (out / "local" / "dose_response.json").is_file():
        local_wall, local_cpu = pmopt_run(config, out / "local")
    result = {"config": str(config), "load_average": [load_start, load_average()], "slurm": slurm,
              "local": {"wall": local_wall, "cpu": local_cpu}, "same": same_results(out / "slurm", out / "local")}
    cpu = [c["cpu"] for c in slurm["cells"].values()]
    print(f"| launcher | wall | CPU | per cell (SLURM task CPU) |\n|---|---:|---:|---|\n"
          f"| SLURM array + aggregation | {slurm['wall'] / 60:.1f} min | {slurm['cpu'] / 60:.1f} min | "
          f"{min(cpu)}-{max(cpu)} s |")
    if local_wall is not None:
        print(f"| local pool | {local_wall / 60:.1f} min | {local_cpu / 60:.1f} min | |")
    print(f"same results: {not result['same']['differ']} ({result['same']['files_compared']} files compared)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
