"""`pmopt ppo` under `accelerate launch` (docs/ARCHITECTURE.md §10): two CPU processes share each step's prompts.

As in tests/test_bon_accelerate.py, two launch lines run: the documented `accelerate launch --cpu
--num_processes 2` (with accelerate 1.x on CPUs this starts one process unless MPI is set up,
huggingface/accelerate#2741, so it checks the launcher path) and `--multi_gpu --num_processes 2` with CUDA
hidden, which starts two torchrun processes that join one gloo group: each samples and scores half the
prompts, DDP averages the gradients, the checkpoint holds both processes' RNG states.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from pmopt.io import read_jsonl, read_metrics
from pmopt.records import validate_curve_row

pytestmark = pytest.mark.slow

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no"]


@pytest.fixture(scope="module")
def config(tiny_world, tmp_path_factory):
    path = tmp_path_factory.mktemp("ppo_accelerate") / "ppo.yaml"
    path.write_text(json.dumps({
        "policy": {"path": str(tiny_world / "policy")}, "reward": {"kind": "gold"},
        "prompts": {"world": str(tiny_world), "n_prompts": 64}, "sampling": {"max_new_tokens": 16},
        "train": {"steps": 2, "rollout_batch_size": 8, "minibatch_size": 4, "ppo_epochs": 2, "learning_rate": 3e-4},
        "probes": {"every": 1, "samples_per_prompt": 1, "max_prompts": 8, "n_boot": 20},
        "checkpoint": {"every": 1}, "threads": 1}))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(command: list[str], out) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command + ["--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def step_rows(out) -> list[dict]:
    return [r for r in read_metrics(out / "metrics.jsonl") if "ppo/kl" in r]


def test_two_processes_split_the_prompts(config, tmp_path):
    single = tmp_path / "single"
    run([sys.executable, "-m", "pmopt.cli", "ppo", str(config)], single)
    two = tmp_path / "two"
    run(LAUNCH + ["--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port()),
                  "-m", "pmopt.cli", "ppo", str(config)], two)
    manifest = json.loads((two / "manifest.json").read_text())["stages"]["ppo"]
    assert manifest["status"] == "done" and manifest["processes"] == 2
    assert sorted(p.name for p in (two / "checkpoints" / "step-000002").iterdir()) == [
        "optimizer.pt", "rng-0.safetensors", "rng-1.safetensors", "state.json", "trainable.safetensors"]
    a, b = step_rows(single), step_rows(two)
    assert [r["step"] for r in b] == [1, 2]
    # Step 1 samples from the reference: keyed streams make the two shards' samples those of one process.
    for key in ("ppo/reward", "ppo/gold_reward", "ppo/response_length", "ppo/kl"):
        assert b[0][key] == pytest.approx(a[0][key], abs=1e-6), key
    assert {r["step"] for r in read_jsonl(two / "curves.jsonl", validate_curve_row)} == {0, 1, 2}
    assert (two / "policy" / "model.safetensors").is_file()


def test_documented_cpu_launch_line(config, tmp_path):
    out = tmp_path / "cpu_flag"
    run(LAUNCH + ["--cpu", "--num_processes", "2", "--main_process_port", str(free_port()),
                  "-m", "pmopt.cli", "ppo", str(config)], out)
    assert json.loads((out / "manifest.json").read_text())["stages"]["ppo"]["processes"] in (1, 2)
    assert [r["step"] for r in step_rows(out)] == [1, 2]
