"""pmopt on a real SLURM cluster (docs/cluster.md): a sweep's cells as an array job, a cancelled task resumed,
jobs/slurm_multinode.sbatch across two SLURM tasks, and the errors a user meets before anything is submitted.

The cluster is the one-node SLURM of scripts/slurm_local.sh (CI starts it): its two tasks on one machine stand in
for two machines. Tests that need it skip where no SLURM answers (a laptop) and fail under PMOPT_REQUIRE_SLURM=1
(CI). The node has as many CPUs as the machine, so these jobs queue behind each other and behind anything else
submitted to it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pmopt.cli import main

REPO = Path(__file__).resolve().parents[1]
MICRO = REPO / "configs" / "experiments" / "rater_bias_sweep_micro.yaml"
MULTINODE = REPO / "jobs" / "slurm_multinode.sbatch"


def slurm_up() -> str | None:
    """None when a SLURM node answers, else why not."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "SLURM's client (sbatch, sinfo) is not on PATH (scripts/slurm_local.sh start sets up a one-node SLURM)"
    states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    if states.returncode != 0 or not {"idle", "mix", "alloc"} & set(states.stdout.split()):
        return f"no SLURM node is up (sinfo: {(states.stdout + states.stderr).strip() or 'nothing'})"
    return None


@pytest.fixture(scope="module")
def slurm():
    why = slurm_up()
    if why is not None:
        if os.environ.get("PMOPT_REQUIRE_SLURM") == "1":
            pytest.fail(why)
        pytest.skip(why)


def env_for_jobs() -> dict:
    """What jobs inherit from the submitting process (sbatch exports it): this checkout first on the path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}


@pytest.fixture
def jobs_env(monkeypatch):
    """This process's environment as the jobs it submits inherit it (sbatch exports it): `env_for_jobs()`."""
    for name, value in env_for_jobs().items():
        monkeypatch.setenv(name, value)


def pmopt_run(capsys, *args: str) -> str:
    """`pmopt run ARGS` in this process (no second start-up of torch); returns what it printed."""
    capsys.readouterr()
    code = main(["run", *args])
    printed = capsys.readouterr()
    assert code == 0, printed.out[-3000:] + printed.err[-3000:]
    return printed.out


def submission(run: Path) -> dict:
    return json.loads((run / "slurm" / "jobs.json").read_text())[-1]


def wait_for_jobs(*job_ids: str, timeout: float = 600) -> None:
    """Until none of the jobs (array tasks included) is in SLURM's queue."""
    deadline = time.monotonic() + timeout
    ids = set(job_ids)
    while time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h", "-o", "%F %i"], capture_output=True, text=True, timeout=30).stdout
        if not any(set(line.split()[:1]) & ids or line.split()[1].split("_")[0] in ids
                   for line in queue.splitlines() if line.strip()):
            return
        time.sleep(0.5)
    raise AssertionError(f"SLURM jobs {job_ids} still queued after {timeout} s")


def stages_of(cell_dir: Path) -> dict:
    path = cell_dir / "manifest.json"
    try:
        return json.loads(path.read_text())["stages"] if path.is_file() else {}
    except json.JSONDecodeError:  # never: manifests are written by rename; kept so a poll cannot fail
        return {}


# ----------------------------------------------------------------------------- before anything is submitted


@pytest.mark.parametrize("setting, named", [
    ("slurm.time=4 hours", "slurm.time"),
    ("slurm.time=4:00:00", "quote the limit"),  # YAML reads it as 14400
    ("slurm.mem=16GB", "slurm.mem"),
    ("slurm.gpus=-1", "slurm.gpus"),
    ("slurm.partition=gpu queue", "slurm.partition"),
    ("slurm.extra=[qos=high]", "slurm.extra[0]"),
    ("slurm.extra=[--qos=high, --array=0-3]", "slurm.extra[1]"),
    ("slurm.cpus_per_task=two", "slurm.cpus_per_task"),
    ("slurm.nodes=2", "slurm.nodes"),
])
def test_a_bad_slurm_section_is_one_line_before_anything_is_submitted(tmp_path, capsys, setting, named):
    out = tmp_path / "run"
    assert main(["run", str(MICRO), "--launcher", "slurm", "--set", setting, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("pmopt run: error:") and named in err, err
    assert str(MICRO) in err  # the file whose section it is
    assert not out.exists()  # nothing written, so nothing submitted: the job scripts are written before sbatch


def test_launcher_slurm_without_sbatch_names_the_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "run"
    assert main(["run", str(MICRO), "--launcher", "slurm", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "`sbatch` is not on PATH" in err, err
    assert "--launcher local" in err and "--dry-run" in err
    assert not out.exists()


def test_launcher_slurm_needs_cells_to_fan_out(tmp_path, capsys):
    assert main(["run", str(MICRO), "--launcher", "slurm", "--set", "sweep.key=null", "--set", "seeds=[]",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "neither" in err and "--launcher local" in err, err


def test_dry_run_prints_the_job_scripts_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """No SLURM needed: the scripts carry the slurm section's resources and one array task per cell."""
    bash = shutil.which("bash")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch: --dry-run does not need one
    out = tmp_path / "run"
    settings = ["slurm.partition=gpu", "slurm.time='2:00:00'", "slurm.gpus=1", "slurm.mem=16G",
                "slurm.account=lab", "slurm.max_running=1", "slurm.extra=[--qos=high]", "threads_per_seed=2"]
    args = ["run", str(MICRO), "--launcher", "slurm", "--dry-run", "--out", str(out)]
    for setting in settings:
        args += ["--set", setting]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert not out.exists()
    for line in ("#SBATCH --array=0-1%1", "#SBATCH --partition=gpu", "#SBATCH --time=2:00:00", "#SBATCH --gres=gpu:1",
                 "#SBATCH --mem=16G", "#SBATCH --account=lab", "#SBATCH --qos=high", "#SBATCH --cpus-per-task=2",
                 "#SBATCH --requeue", f"#SBATCH --output={out}/slurm/logs/cells-%A_%a.log",
                 "  w_agree-0/seed-0\n  w_agree-3/seed-0\n", f"-m pmopt.slurm cell {out} ",
                 "#SBATCH --kill-on-invalid-dep=yes", f"-m pmopt.slurm aggregate {out}\n"):
        assert line in printed, line
    cells_script = printed.split("#!/bin/bash")[1]
    scripts = subprocess.run([bash, "-n"], input=cells_script, text=True, capture_output=True)
    assert scripts.returncode == 0, scripts.stderr


def test_a_multi_seed_run_is_one_task_per_seed(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(MICRO), "--launcher", "slurm", "--dry-run", "--set", "sweep.key=null", "--seeds", "0,1,2",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "#SBATCH --array=0-2\n" in printed and "cells=(\n  seed-0\n  seed-1\n  seed-2\n)\n" in printed, printed
    assert not out.exists()


def test_tasks_start_with_one_cell_per_seed(tmp_path):
    """A sweep's cells of one seed share a pretraining: SLURM starts tasks by index, so each seed's first unfinished
    cell comes first and no task waits idle on another's pretraining while a seed has none running."""
    from pmopt.config import load_config
    from pmopt.pipeline import ExperimentConfig
    from pmopt.slurm import task_order
    from pmopt.sweep import cells_of

    cfg = load_config(ExperimentConfig, MICRO, ["sweep.values=[0, 1, 3]", "seeds=[0, 1]"])
    cells = cells_of(cfg, tmp_path)
    assert [c.name for c in cells][:3] == ["w_agree-0/seed-0", "w_agree-1/seed-0", "w_agree-3/seed-0"]
    ordered = [cells[i].name for i in task_order(cells, list(range(len(cells))))]
    assert ordered == ["w_agree-0/seed-0", "w_agree-0/seed-1", "w_agree-1/seed-0", "w_agree-1/seed-1",
                       "w_agree-3/seed-0", "w_agree-3/seed-1"]
    unfinished = [1, 2, 4]  # w_agree-1/seed-0, w_agree-3/seed-0, w_agree-1/seed-1
    assert [cells[i].name for i in task_order(cells, unfinished)] == \
        ["w_agree-1/seed-0", "w_agree-1/seed-1", "w_agree-3/seed-0"]


# ----------------------------------------------------------------------------- array jobs on the real cluster


def result_files(run: Path) -> list[Path]:
    """Every file of a sweep's results that holds no path and no time: what a launcher must not change."""
    names = ["dose_response.json", "dose_response.csv"]
    for value in ("w_agree-0", "w_agree-3"):
        names += [f"{value}/bon/curves.jsonl", f"{value}/claims.json"]
        cell = f"{value}/seed-0"
        names += [f"{cell}/{name}" for name in ("bon/curves.jsonl", "bon/scores/proxy.jsonl", "bon/scores/gold.jsonl",
                                                 "pms/sycophancy_preference.json", "pms/proxy/model.safetensors",
                                                 "world/policy/model.safetensors", "world/pairs/train.jsonl")]
    return [Path(name) for name in names]


@pytest.mark.slow
@pytest.mark.slurm
def test_a_sweep_as_an_array_job_with_a_cancelled_task_ends_as_the_local_pool(slurm, jobs_env, tmp_path, capsys):
    """The micro sweep (2 values x 1 seed) run by the local pool, then as a SLURM array job + aggregation job in
    which one task is cancelled (`scancel`) once its world is built. The aggregation job is then cancelled by
    SLURM (its afterok can no longer be met); running `pmopt run` again submits only the cancelled cell, which
    resumes after its world (not rebuilt), while the finished cell never runs again; the aggregation job then
    writes the same results as the local pool, byte for byte."""
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    pmopt_run(capsys, str(MICRO), "--out", str(local))

    first = pmopt_run(capsys, str(MICRO), "--launcher", "slurm", "--out", str(cluster))
    jobs = submission(cluster)
    assert jobs["tasks"] == {"0": "w_agree-0/seed-0", "1": "w_agree-3/seed-0"}
    assert f"squeue -j {jobs['cells']},{jobs['aggregate']}" in first
    victim = cluster / "w_agree-3" / "seed-0"
    deadline = time.monotonic() + 300
    while stages_of(victim).get("world", {}).get("status") != "done":
        assert time.monotonic() < deadline, "the task never built its world"
        time.sleep(0.2)
    subprocess.run(["scancel", f"{jobs['cells']}_1"], check=True, timeout=30)
    world_built = stages_of(victim)["world"]["time"]
    wait_for_jobs(jobs["cells"], jobs["aggregate"])
    manifest = json.loads((cluster / "manifest.json").read_text())["stages"]
    assert manifest.get("w_agree-0/seed-0", {}).get("status") == "done"
    assert "w_agree-3/seed-0" not in manifest, "the task was cancelled before its cell was done"
    assert not (cluster / "dose_response.json").exists()  # the aggregation job never ran
    assert "CANCELLED" in (cluster / "slurm" / "logs" / f"cells-{jobs['cells']}_1.log").read_text()

    again = pmopt_run(capsys, str(MICRO), "--launcher", "slurm", "--out", str(cluster))
    assert "w_agree = 0, seed 0: done earlier, skipped" in again
    resubmitted = submission(cluster)
    assert resubmitted["tasks"] == {"0": "w_agree-3/seed-0"}
    assert "#SBATCH --array=0-0\n" in (cluster / "slurm" / "cells.sbatch").read_text()
    wait_for_jobs(resubmitted["cells"], resubmitted["aggregate"])
    assert "w_agree = 3, seed 0 done in" in (cluster / "slurm" / "logs" / f"cells-{resubmitted['cells']}_0.log").read_text()

    log = (victim / "log.txt").read_text()
    assert log.count("run: stage world ...") == 1 and "run: stage world: done earlier, skipped" in log
    assert stages_of(victim)["world"]["time"] == world_built
    assert (cluster / "w_agree-0" / "seed-0" / "log.txt").read_text().count("run: stage world ...") == 1
    aggregate_log = (cluster / "slurm" / "logs" / f"aggregate-{resubmitted['aggregate']}.log").read_text()
    assert f"pmopt run: results in {cluster}" in aggregate_log, aggregate_log[-2000:]
    for name in result_files(cluster):
        assert (cluster / name).read_bytes() == (local / name).read_bytes(), name

    finished = pmopt_run(capsys, str(MICRO), "--launcher", "slurm", "--out", str(cluster))  # all done: aggregated here
    assert "submitted" not in finished and f"pmopt run: results in {cluster}" in finished
    assert (cluster / "dose_response.json").read_bytes() == (local / "dose_response.json").read_bytes()
    assert len(json.loads((cluster / "slurm" / "jobs.json").read_text())) == 2


@pytest.mark.slurm
def test_a_run_whose_jobs_are_queued_is_refused(slurm, jobs_env, tmp_path, capsys):
    """While a run's jobs wait in the queue, `pmopt run` on its --out (either launcher) would run cells twice."""
    run = tmp_path / "run"
    # held jobs (--hold through the extra lines) wait until released: nothing runs, nothing costs CPU
    assert main(["run", str(MICRO), "--launcher", "slurm", "--set", "slurm.extra=[--hold]", "--out", str(run)]) == 0
    jobs = submission(run)
    try:
        for launcher in ("slurm", "local"):
            capsys.readouterr()
            assert main(["run", str(MICRO), "--launcher", launcher, "--out", str(run)]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "still queued or running (3 pending)" in err, err
            assert f"squeue -j {jobs['cells']},{jobs['aggregate']}" in err
    finally:
        subprocess.run(["scancel", jobs["cells"], jobs["aggregate"]], timeout=30)
    wait_for_jobs(jobs["cells"], jobs["aggregate"])
    assert not (run / "w_agree-0").exists()


# ----------------------------------------------------------------------------- multi-node accelerate


def sbatch_multinode(tmp_path: Path, name: str, *args: str) -> Path:
    """jobs/slurm_multinode.sbatch with 2 tasks of 1 CPU on the one node: 2 "machines" x 1 process, on CPU."""
    out = tmp_path / name
    env = {**env_for_jobs(), "GPUS_PER_NODE": "1", "ACCEL_CONFIG": str(REPO / "configs/accelerate/cpu_2proc.yaml")}
    result = subprocess.run(["sbatch", "--wait", "--nodes=1", "--ntasks=2", "--ntasks-per-node=2", "--gpus-per-node=0",
                             "--cpus-per-task=1", "--time=15", f"--output={tmp_path / name}.log", str(MULTINODE),
                             *args, str(out)], env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    logs = "".join(path.read_text() for path in sorted((out / "slurm" / "logs").glob("*.log"))) \
        if (out / "slurm" / "logs").is_dir() else ""
    assert result.returncode == 0, result.stderr + (tmp_path / f"{name}.log").read_text()[-2000:] + logs[-4000:]
    return out


def local_run(command: list[str], out: Path) -> None:
    result = subprocess.run(command + ["--out", str(out)], env=env_for_jobs(), capture_output=True, text=True,
                            timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.slurm
def test_multinode_job_trains_a_pm_across_two_tasks(slurm, tmp_path, tiny_pm_setup):
    """train-pm as 2 SLURM tasks x 1 process (one process group over loopback gloo) gives the PM that 1 machine x 2
    processes gives, byte for byte: half the optimizer steps of one process, data sharded across the tasks."""
    config = tmp_path / "pm.yaml"
    config.write_text(yaml.safe_dump(
        {"model": {"name_or_path": str(tiny_pm_setup.base)},
         "data": {"train": str(tiny_pm_setup.pairs_file), "max_length": 64, "eval_fraction": 0.25},
         "train": {"epochs": 2, "batch_size": 4, "learning_rate": 3e-3, "logging_steps": 2, "save_steps": 100}}))
    cluster = sbatch_multinode(tmp_path, "pm-2tasks", "train-pm", str(config))
    one_machine = tmp_path / "pm-1machine"
    local_run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "configs/accelerate/cpu_2proc.yaml"), "--main_process_port", str(free_port()),
               "-m", "pmopt.cli", "train-pm", str(config)], one_machine)
    info = json.loads((cluster / "pmopt_pm.json").read_text())
    assert info["global_step"] == 12 and info["n_train"] == 48  # 48 pairs, 4 per process per step, 2 processes
    assert (cluster / "model.safetensors").read_bytes() == (one_machine / "model.safetensors").read_bytes()
    logs = sorted(p.name for p in (cluster / "slurm" / "logs").glob("*.log"))
    assert len(logs) == 2 and logs[0].endswith("-task-0.log") and logs[1].endswith("-task-1.log")
    task_logs = [(cluster / "slurm" / "logs" / name).read_text() for name in logs]
    assert all("pmopt train-pm: results in" in text for text in task_logs), task_logs
    # global rank 0, the process that writes the files and holds the lock on --out, ran in task 0
    assert "train-pm: PM pm-2tasks done" in task_logs[0] and "PM pm-2tasks done" not in task_logs[1], task_logs
    assert not (cluster / ".pmopt.lock").exists()  # released by the rank that took it


@pytest.mark.slow
@pytest.mark.slurm
def test_multinode_job_runs_best_of_n_as_one_process(slurm, tmp_path, tiny_world, seeded_world_pm):
    """bon as 2 SLURM tasks x 1 process: sampling shards and PM scoring split across the tasks, every file byte-
    identical to one process (as tests/test_bon_accelerate.py checks for 2 processes on one machine)."""
    config = tmp_path / "bon.yaml"
    config.write_text(json.dumps({
        "world": str(tiny_world), "n_max": 4, "n_boot": 20, "shard_size": 4, "max_prompts_per_probe": 4,
        "sampling": {"max_new_tokens": 12},
        "pms": [{"name": "pm", "path": str(seeded_world_pm), "batch_size": 1}, {"name": "gold", "kind": "gold"}]}))
    cluster = sbatch_multinode(tmp_path, "bon-2tasks", "bon", str(config))
    single = tmp_path / "bon-1process"
    local_run([sys.executable, "-m", "pmopt.cli", "bon", str(config)], single)
    stages = json.loads((cluster / "manifest.json").read_text())["stages"]
    assert stages["bon/samples"]["processes"] == 2 and stages["bon/scores/pm"]["per_process"] == [32, 32]
    for name in ("samples/shard-00000.jsonl", "samples/shard-00003.jsonl", "scores/pm.jsonl", "scores/gold.jsonl",
                 "grades.jsonl", "curves.jsonl", "curves.csv"):
        assert (cluster / name).read_bytes() == (single / name).read_bytes(), name


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
