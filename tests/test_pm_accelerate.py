"""`pmopt train-pm` under `accelerate launch` (docs/ARCHITECTURE.md §10): subprocesses, tiny model and pairs in tmp files.

Note on the launcher: `accelerate launch --cpu --num_processes 2` starts ONE process unless MPI is set
up (`--mpirun_hostfile`); accelerate's simple launcher ignores --num_processes there. Two real CPU
processes in one gloo process group come from the torchrun launcher (`--multi_gpu`) on a machine whose
GPUs are hidden; pmopt then builds its state with cpu=True (MULTI_CPU). Both launches are tested: the
second proves the data really was sharded (half the optimizer steps of one process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pmopt.pm import PreferenceModel

REPO = Path(__file__).resolve().parents[1]
COMMON = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def launch(tmp_path: Path, tiny_pm_setup, launcher_flags: list[str], out: Path, lora: bool = False):
    config = {"model": {"name_or_path": str(tiny_pm_setup.base)},
              "data": {"train": str(tiny_pm_setup.pairs_file), "max_length": 64, "eval_fraction": 0.25},
              "lora": {"enabled": lora, "r": 4, "alpha": 8},
              "train": {"epochs": 2, "batch_size": 4, "learning_rate": 3e-3, "logging_steps": 2,
                        "save_steps": 100}}
    config_file = tmp_path / "pm.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf_home")}  # no user accelerate default_config.yaml
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher_flags, *COMMON,
               "-m", "pmopt.cli", "train-pm", str(config_file), "--out", str(out)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def check_loadable(out: Path):
    pm = PreferenceModel.load(out, device="cpu")
    scores = pm.score(["question dog ?"] * 2, ["good cat tree", "bad cat tree"])
    assert torch.isfinite(scores).all() and scores[0] > scores[1]
    return json.loads((out / "pmopt_pm.json").read_text())


def test_two_cpu_processes_share_the_data(tmp_path, tiny_pm_setup):
    out = tmp_path / "ddp"
    result = launch(tmp_path, tiny_pm_setup, ["--multi_gpu", "--num_processes", "2"], out)
    assert result.stdout.count("pmopt train-pm: results in") == 2, "expected two processes"
    info = check_loadable(out)
    # 48 training pairs, 4 per process per step, 2 processes: 6 steps an epoch, 12 in all (24 alone).
    assert info["global_step"] == 12 and info["n_train"] == 48
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if r.get("final")]) == 1, "only the main process writes pmopt's files"


def test_accelerate_launch_cpu_flag(tmp_path, tiny_pm_setup):
    out = tmp_path / "cpu"
    launch(tmp_path, tiny_pm_setup, ["--cpu", "--num_processes", "2"], out)
    info = check_loadable(out)
    assert info["global_step"] == 24  # accelerate's simple launcher ran a single process (see above)


@pytest.mark.slow
def test_two_cpu_processes_lora(tmp_path, tiny_pm_setup):
    out = tmp_path / "ddp_lora"
    launch(tmp_path, tiny_pm_setup, ["--multi_gpu", "--num_processes", "2"], out, lora=True)
    info = check_loadable(out)
    assert info["kind"] == "lora" and info["global_step"] == 12
