"""`pmopt run CONFIG --launcher slurm`: a sweep's cells or a multi-seed run's seeds as one SLURM job array, and
the aggregate over them as a job that starts once every task has ended well (docs/cluster.md).

    RUN/slurm/cells.sbatch       the array: task i runs cell i of its list (`python -m pmopt.slurm cell RUN NAME`)
    RUN/slurm/aggregate.sbatch   curves over seeds, dose-response, fits, report (`python -m pmopt.slurm aggregate RUN`)
    RUN/slurm/jobs.json          every submission: job ids and which task ran which cell
    RUN/slurm/logs/              SLURM's log of each task (cells-<job>_<task>.log) and of the aggregation

A task runs its cell with the local pool's code (`pmopt.multiseed.run_one_seed`: the cell's folder locked, its
stages resumed from their files) and marks it done in RUN's manifest, so a cancelled, failed or preempted task
(`--requeue`) continues where it stopped when it runs again, and a finished cell never runs again. Running
`pmopt run` again on the same --out submits only the unfinished cells, or, when every cell is done, writes the
aggregate at once.

Why plain `sbatch` and not submitit: the job is a readable script in RUN that `--dry-run` prints, that a user
can read, edit and resubmit by hand, and that needs nothing but SLURM's own client on the login node. What
submitit adds (pickled Python calls, its own requeue-on-timeout checkpointing) pmopt already has in another
form: every stage resumes from its files, so a requeued task needs no pickled state, and tasks that call
pmopt's own entry point keep working across a change of environment that would break an unpickle.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pmopt import console
from pmopt.io import Manifest, PmoptError, atomic_write_json, atomic_write_text, read_json_file

SLURM_DIR = "slurm"
JOBS_FILE = "jobs.json"

# SLURM's --time forms: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS (sbatch(1))
TIME_FORM = re.compile(r"(\d+|\d+:\d\d|\d+:\d\d:\d\d|\d+-\d+|\d+-\d+:\d\d|\d+-\d+:\d\d:\d\d|UNLIMITED|INFINITE)")
MEM_FORM = re.compile(r"\d+[KMGT]?")  # sbatch --mem: megabytes, or with a unit suffix
WORD = re.compile(r"[^\s'\"#\\]+")  # a partition, account or job name: one word that needs no quoting
# options pmopt writes itself: setting them again would break the array, its logs or the aggregation job
OWN_OPTIONS = ("--array", "-a", "--output", "-o", "--error", "-e", "--open-mode", "--dependency", "-d",
               "--chdir", "-D", "--wrap", "--parsable", "--kill-on-invalid-dep")


@dataclass
class SlurmSection:
    """What each cell asks SLURM for under `launcher: slurm` (sbatch's own options; null = the cluster's default)."""

    partition: str | None = None  # --partition: the queue the cells run in
    account: str | None = None  # --account charged for the cells
    # --time limit per cell, quoted (SLURM's forms: '90' minutes, '4:00:00', '1-12:00:00'); sizing: docs/cluster.md
    time: str | int | None = None
    cpus_per_task: int = 0  # --cpus-per-task per cell; 0 = threads_per_seed (results never depend on it)
    gpus: int = 0  # GPUs per cell (--gres=gpu:N); 0 = none
    mem: str | None = None  # --mem per cell (megabytes, or with a unit: 16G)
    max_running: int = 0  # most tasks of the array running at once (--array=...%N); 0 = as many as SLURM starts
    job_name: str = "pmopt"  # the jobs' names in squeue: <job_name>-cells and <job_name>-aggregate
    # further sbatch options, one per item, written as `#SBATCH <item>` into both jobs (e.g. --qos=high,
    # --constraint=a100); options pmopt sets itself (--array, --output, --dependency, ...) are refused
    extra: list[str] = field(default_factory=list)

    def validate(self) -> None:
        for name in ("partition", "account", "job_name"):
            value = getattr(self, name)
            if value is not None and not WORD.fullmatch(value):
                raise ValueError(f"slurm.{name}: expected one word without spaces, quotes or '#', got {value!r}")
        if isinstance(self.time, int):  # YAML 1.1 reads an unquoted 4:00:00 as 14400 (base 60), 90 as 90
            raise ValueError(f"slurm.time: got the number {self.time}; quote the limit, as YAML reads an unquoted "
                             "4:00:00 as a number: time: '4:00:00' (or '90' for minutes)")
        if self.time is not None and not TIME_FORM.fullmatch(self.time):
            raise ValueError(f"slurm.time: {self.time!r} is not a SLURM time limit (minutes, HH:MM:SS or "
                             "D-HH:MM:SS, e.g. 4:00:00)")
        if self.mem is not None and not MEM_FORM.fullmatch(self.mem):
            raise ValueError(f"slurm.mem: {self.mem!r} is not a SLURM memory size (megabytes, or 16G, 512M)")
        for name in ("cpus_per_task", "gpus", "max_running"):
            if getattr(self, name) < 0:
                raise ValueError(f"slurm.{name}: must be >= 0, got {getattr(self, name)}")
        for i, line in enumerate(self.extra):
            check_extra(f"slurm.extra[{i}]", line)


def check_extra(key: str, line: str) -> None:
    if not line.startswith("-") or "\n" in line or "\r" in line:
        raise ValueError(f"{key}: expected one sbatch option such as --qos=high, got {line!r}")
    option = line.split("=", 1)[0].split()[0]
    if option in OWN_OPTIONS:
        raise ValueError(f"{key}: pmopt sets {option} itself (the array, its logs and the aggregation job need it)")


# ----------------------------------------------------------------------------- checks before anything is written


def check_launcher(cfg, source: str, dry_run: bool) -> None:
    """`launcher: slurm` needs cells to fan out and, unless only printing, SLURM's sbatch: one line each."""
    if cfg.launcher != "slurm":
        return
    if cfg.sweep.key is None and not cfg.seeds:
        raise PmoptError(f"{source}: launcher: slurm runs the cells of a sweep or the seeds of a multi-seed run, and "
                         "this config has neither: add seeds (--seeds 0,1,2) or a sweep, or use --launcher local")
    if not dry_run and shutil.which("sbatch") is None:
        raise PmoptError("--launcher slurm: SLURM's `sbatch` is not on PATH; run pmopt on the cluster's login node "
                         "(or `module load slurm`), print the job scripts with --dry-run, or run here with "
                         "--launcher local")


def check_no_active_jobs(run: Path) -> None:
    """Refuse to touch a run whose SLURM jobs are still queued or running: a second submission would run cells
    twice, and a local run would write the manifest under the tasks. Nothing to check without squeue."""
    jobs = last_submission(run)
    if jobs is None or shutil.which("squeue") is None:
        return
    active = active_tasks(jobs)
    if active:
        ids = f"{jobs['cells']},{jobs['aggregate']}"
        states = ", ".join(f"{n} {state.lower()}" for state, n in sorted(active.items()))
        raise PmoptError(f"{run}: its SLURM jobs are still queued or running ({states}); watch them with "
                         f"`squeue -j {ids}`, and rerun once they end (or `scancel {ids}` to stop them)")


def last_submission(run: Path) -> dict | None:
    path = run / SLURM_DIR / JOBS_FILE
    if not path.is_file():
        return None
    submissions = read_json_file(path)
    return submissions[-1] if isinstance(submissions, list) and submissions else None


def active_tasks(jobs: dict) -> dict[str, int]:
    """{state: tasks} of the submission's jobs still in SLURM's queue (pending, running, requeued...)."""
    ids = {str(jobs["cells"]), str(jobs["aggregate"])}
    result = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%F|%i|%T"],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise PmoptError(f"squeue failed, so whether this run's jobs still run is unknown: "
                         f"{first_line(result.stderr)}")
    counts: dict[str, int] = {}
    for line in result.stdout.splitlines():
        array_id, job_id, state = (line.split("|") + ["", "", ""])[:3]
        if array_id in ids or job_id.split("_")[0] in ids:
            counts[state] = counts.get(state, 0) + 1
    return counts


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no message")


# ----------------------------------------------------------------------------- the job scripts


def cpus_of(cfg) -> int:
    return cfg.slurm.cpus_per_task or cfg.threads_per_seed


def resource_lines(section: SlurmSection) -> list[str]:
    """The #SBATCH lines both jobs share: where they run and whom they charge."""
    lines = []
    if section.partition:
        lines.append(f"--partition={section.partition}")
    if section.account:
        lines.append(f"--account={section.account}")
    if section.time:
        lines.append(f"--time={section.time}")
    return lines


def header(options: list[str], extra: list[str]) -> str:
    return "".join(f"#SBATCH {option}\n" for option in options + list(extra))


def quoted_option(name: str, path: Path) -> str:
    """An #SBATCH option whose value is a path: sbatch reads double quotes in #SBATCH lines."""
    text = str(path)
    return f'{name}="{text}"' if re.search(r"\s", text) else f"{name}={text}"


def task_order(cells: list, todo: list[int]) -> list[int]:
    """The unfinished cells in the order SLURM starts array tasks (by index): each seed's first cell, then each
    seed's second, and so on. A sweep's cells of one seed share one pretraining (pmopt.world.policy_cache): with
    the local pool's seed-major order, the second task would hold its CPUs idle while the first pretrains."""
    nth: dict[int, int] = {}
    order = {}
    for i in todo:
        seed = cells[i].cfg.seed
        order[i] = (nth.get(seed, 0), i)
        nth[seed] = nth.get(seed, 0) + 1
    return sorted(todo, key=order.__getitem__)


def cells_script(cfg, run: Path, tasks: list) -> str:
    """The array job: task i runs the cell tasks[i]."""
    section = cfg.slurm
    indices = f"0-{len(tasks) - 1}" + (f"%{section.max_running}" if section.max_running else "")
    options = [f"--job-name={section.job_name}-cells", f"--array={indices}", "--ntasks=1",
               f"--cpus-per-task={cpus_of(cfg)}", *resource_lines(section)]
    if section.mem:
        options.append(f"--mem={section.mem}")
    if section.gpus:
        options.append(f"--gres=gpu:{section.gpus}")
    # append: a requeued or resubmitted task's log goes on after its earlier attempts
    options += [quoted_option("--output", run / SLURM_DIR / "logs" / "cells-%A_%a.log"), "--open-mode=append",
                "--requeue", quoted_option("--chdir", Path.cwd())]
    names = "".join(f"  {shlex.quote(cell.name)}\n" for cell in tasks)
    return (f"#!/bin/bash\n"
            f"# The cells of the pmopt run {run} as one SLURM job array, written by `pmopt run --launcher slurm`.\n"
            f"# Task i runs cells[i] with the local pool's resumable cell code; the cell's own log is RUN/<cell>/log.txt.\n"
            f"# To resubmit what did not finish, run the same `pmopt run` again: it rewrites this file.\n"
            f"{header(options, section.extra)}"
            f"set -euo pipefail\n"
            f"cells=(\n{names})\n"
            f"exec {shlex.quote(sys.executable)} -m pmopt.slurm cell {shlex.quote(str(run))} "
            f'"${{cells[$SLURM_ARRAY_TASK_ID]}}"\n')


def aggregate_script(cfg, run: Path) -> str:
    """The aggregation job; submitted with --dependency=afterok:<array job>, so it starts once every task has
    ended well, and SLURM cancels it (--kill-on-invalid-dep) when one fails or is cancelled."""
    section = cfg.slurm
    options = [f"--job-name={section.job_name}-aggregate", "--ntasks=1", "--cpus-per-task=1",
               *resource_lines(section), quoted_option("--output", run / SLURM_DIR / "logs" / "aggregate-%j.log"),
               "--kill-on-invalid-dep=yes", quoted_option("--chdir", Path.cwd())]
    return (f"#!/bin/bash\n"
            f"# Curves over seeds, dose-response, fits and report of the pmopt run {run}, once its cells are done.\n"
            f"{header(options, section.extra)}"
            f"set -euo pipefail\n"
            f"exec {shlex.quote(sys.executable)} -m pmopt.slurm aggregate {shlex.quote(str(run))}\n")


# ----------------------------------------------------------------------------- submission


def submit_cells(cfg, run: Path, cells: list, manifest: Manifest) -> bool:
    """Submit the unfinished cells as one array job and the aggregation after it; True (nothing submitted)
    when every cell is done already, so the caller writes the aggregate now."""
    todo = [i for i, cell in enumerate(cells) if not manifest.is_done(cell.name)]
    for cell in cells:
        if manifest.is_done(cell.name):
            console.info(f"run: {cell.label}: done earlier, skipped")
    if not todo:
        return True
    run = run.resolve()  # the jobs may start in another directory
    slurm_dir = run / SLURM_DIR
    (slurm_dir / "logs").mkdir(parents=True, exist_ok=True)
    tasks = [cells[i] for i in task_order(cells, todo)]
    cells_file = atomic_write_text(slurm_dir / "cells.sbatch", cells_script(cfg, run, tasks))
    aggregate_file = atomic_write_text(slurm_dir / "aggregate.sbatch", aggregate_script(cfg, run))
    array_job = sbatch([str(cells_file)])
    try:
        aggregate_job = sbatch([f"--dependency=afterok:{array_job}", str(aggregate_file)])
    except PmoptError:
        subprocess.run(["scancel", array_job], capture_output=True, timeout=60)
        raise
    record_submission(run, array_job, aggregate_job, {str(i): cell.name for i, cell in enumerate(tasks)})
    names = ", ".join(cell.name for cell in tasks)
    console.info(f"run: {len(tasks)} cell(s) ({names}) submitted as SLURM array job {array_job}, {cpus_of(cfg)} CPU(s) "
                 f"each; the aggregate is job {aggregate_job}, after them")
    console.info(f"run: watch with `squeue -j {array_job},{aggregate_job}`; SLURM's log of task i: "
                 f"{slurm_dir / 'logs' / f'cells-{array_job}_<i>.log'}; each cell's log: {run / '<cell>' / 'log.txt'}")
    console.result(f"run: submitted; results will be in {run} (rerun this command to resubmit what did not finish)")
    return False


def sbatch(arguments: list[str]) -> str:
    """`sbatch --parsable ARGS`: the job id, or a one-line error with sbatch's own reason."""
    try:
        result = subprocess.run(["sbatch", "--parsable", *arguments], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise PmoptError("--launcher slurm: SLURM's `sbatch` is not on PATH") from None
    if result.returncode != 0:
        raise PmoptError(f"sbatch {arguments[-1]} refused the job: {first_line(result.stderr)}")
    return result.stdout.strip().split(";")[0]


def record_submission(run: Path, array_job: str, aggregate_job: str, tasks: dict[str, str]) -> None:
    path = run / SLURM_DIR / JOBS_FILE
    submissions = read_json_file(path) if path.is_file() else []
    submissions.append({"cells": array_job, "aggregate": aggregate_job, "tasks": tasks,
                        "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname()})
    atomic_write_json(path, submissions)


def dry_run(cfg, run: Path, cells: list) -> None:
    """Print the job scripts `pmopt run` would submit for the unfinished cells; write and submit nothing."""
    done = Manifest(run).data["stages"] if (run / "manifest.json").is_file() else {}
    todo = [i for i, cell in enumerate(cells) if done.get(cell.name, {}).get("status") != "done"]
    if not todo:
        console.result(f"run: every cell of {run} is done: `pmopt run` would write the aggregate here, now")
        return
    console.result(f"# {run / SLURM_DIR / 'cells.sbatch'}: sbatch --parsable {run / SLURM_DIR / 'cells.sbatch'}")
    console.result(cells_script(cfg, run, [cells[i] for i in task_order(cells, todo)]))
    console.result(f"# {run / SLURM_DIR / 'aggregate.sbatch'}: sbatch --parsable --dependency=afterok:<array job> "
                   f"{run / SLURM_DIR / 'aggregate.sbatch'}")
    console.result(aggregate_script(cfg, run))


# ----------------------------------------------------------------------------- inside the jobs


def run_cells_of(cfg, run: Path) -> list:
    """Every cell of the run: a sweep's (value, seed) cells, or a multi-seed run's seeds."""
    from pmopt.multiseed import seed_cells
    from pmopt.sweep import cells_of

    return cells_of(cfg, run) if cfg.sweep.key is not None else seed_cells(cfg, run)


def load_run(run: Path):
    from pmopt.config import load_config
    from pmopt.pipeline import ExperimentConfig

    return load_config(ExperimentConfig, run / "config.yaml")


STARTED = time.monotonic()  # when this process imported pmopt.slurm: about when the task started


def cpu_seconds() -> float:
    """User + system CPU time of this process and of the processes it waited for (a pool's workers)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cell_task(run: Path, name: str) -> None:
    """One array task: the cell `name` of RUN, unless it is done; then its mark in RUN's shared manifest."""
    from pmopt.multiseed import _cell_done, run_one_seed

    cfg = load_run(run)
    cell = next((c for c in run_cells_of(cfg, run) if c.name == name), None)
    if cell is None:
        raise PmoptError(f"{run / 'config.yaml'}: the run has no cell '{name}'")
    manifest = Manifest(run, shared=True)
    if manifest.is_done(name):
        console.info(f"run: {cell.label}: done earlier, skipped")
        return
    task = f"task {os.environ.get('SLURM_ARRAY_TASK_ID', '?')} of job {os.environ.get('SLURM_ARRAY_JOB_ID', '?')}"
    console.info(f"run: {cell.label} ({task}) on {socket.gethostname()}; its log: {cell.dir / 'log.txt'}")
    seconds = run_one_seed(cell.cfg, cell.dir, cfg.threads_per_seed, cell.policy_cache)
    _cell_done(manifest, cell, seconds)
    console.info(f"run: this task: {cpu_seconds():.0f} s of CPU, {time.monotonic() - STARTED:.0f} s since it started "
                 "(imports included): what to size slurm.time and the cells by (docs/cluster.md)")


def aggregate_task(run: Path) -> None:
    """The aggregation job: with every cell done, what `pmopt run` writes after its cells, with the RUN lock."""
    from pmopt.io import prepare_out_dir
    from pmopt.pipeline import finish_cells

    cfg = load_run(run)
    prepare_out_dir(run, "run")
    manifest = Manifest(run)
    missing = [c.name for c in run_cells_of(cfg, run) if not manifest.is_done(c.name)]
    if missing:
        raise PmoptError(f"{run}: {len(missing)} cell(s) not done ({', '.join(missing)}); rerun `pmopt run` with "
                         f"--out {run} to resubmit them")
    finish_cells(cfg, run, manifest)
    console.info(f"run: this task: {cpu_seconds():.0f} s of CPU, {time.monotonic() - STARTED:.0f} s since it started")


def main(argv: list[str] | None = None) -> int:
    """`python -m pmopt.slurm cell RUN NAME` | `python -m pmopt.slurm aggregate RUN`: what the job scripts run."""
    from pmopt.io import release_out_dirs

    argv = sys.argv[1:] if argv is None else argv
    console.configure("normal")
    try:
        if len(argv) == 3 and argv[0] == "cell":
            cell_task(Path(argv[1]), argv[2])
        elif len(argv) == 2 and argv[0] == "aggregate":
            aggregate_task(Path(argv[1]))
            print(f"pmopt run: results in {argv[1]}")
        else:
            print("usage: python -m pmopt.slurm cell RUN NAME | aggregate RUN", file=sys.stderr)
            return 2
    except PmoptError as exc:
        print(f"pmopt run: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    finally:
        release_out_dirs()
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["SlurmSection", "check_launcher", "check_no_active_jobs", "submit_cells", "dry_run", "cells_script",
           "aggregate_script", "cell_task", "aggregate_task"]
