"""`pmopt bon` under `accelerate launch` with two CPU processes == one process (docs/ARCHITECTURE.md §6, §10).

Two launch lines are run against a plain one-process run:

- `accelerate launch --cpu --num_processes 2 -m pmopt.cli bon ...`, the documented line. With
  accelerate 1.x on CPUs this starts ONE process unless an MPI hostfile is given (its simple launcher
  only uses mpirun for multi-CPU; huggingface/accelerate#2741), so it checks the launcher path only;
- `accelerate launch --multi_gpu --num_processes 2 ...` with CUDA hidden: accelerate starts two
  processes through torchrun and `pmopt.bon.sweep.process_state` joins them in a gloo group on CPU.
  This one really splits the shards, which `samples/ranks/rank-00001.json` proves.

Every file derived from the samples must be byte-identical to the one-process run, and with two
processes the PM scoring is split between them: the PM's batch_size of 1 makes chunks of 32 samples
(`pmopt.bon.scoring`), so the 64 samples are two chunks, one per process, which the manifest's
`bon/scores/pm` `per_process` counts prove.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

COMPARED = ("samples/shard-00000.jsonl", "samples/shard-00001.jsonl", "samples/shard-00002.jsonl",
            "samples/shard-00003.jsonl", "scores/pm.jsonl", "scores/gold.jsonl", "grades.jsonl", "curves.jsonl",
            "curves.csv")


@pytest.fixture(scope="module")
def config(tiny_world, seeded_world_pm, tmp_path_factory):
    """A real sequence-classification PM (the world policy with a seeded score head) and a sweep config."""
    root = tmp_path_factory.mktemp("bon_accelerate")
    path = root / "bon.yaml"
    path.write_text(json.dumps({
        "world": str(tiny_world), "n_max": 4, "n_boot": 20, "shard_size": 4, "max_prompts_per_probe": 4,
        "sampling": {"max_new_tokens": 12},
        "pms": [{"name": "pm", "path": str(seeded_world_pm), "batch_size": 1}, {"name": "gold", "kind": "gold"}]}))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(command: list[str], out, env_extra: dict | None = None) -> None:
    # One thread per process, so both runs do the same float arithmetic (and two processes do not
    # oversubscribe a 2-core machine); CUDA hidden so every launch stays on the CPU.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env_extra or {})}
    result = subprocess.run(command + ["--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def processes(out) -> int:
    manifest = json.loads((out / "manifest.json").read_text())
    return manifest["stages"]["bon/samples"]["processes"]


def scored_per_process(out) -> list[int]:
    return json.loads((out / "manifest.json").read_text())["stages"]["bon/scores/pm"]["per_process"]


def assert_same(a, b) -> None:
    for name in COMPARED:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_two_processes_equal_one(config, tmp_path):
    single = tmp_path / "single"
    run([sys.executable, "-m", "pmopt.cli", "bon", str(config)], single)
    assert processes(single) == 1
    assert scored_per_process(single) == [64]

    torchrun = tmp_path / "torchrun"
    run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(free_port()), "-m", "pmopt.cli", "bon", str(config)], torchrun)
    assert processes(torchrun) == 2
    shares = [json.loads((torchrun / "samples" / "ranks" / f"rank-{r:05d}.json").read_text())["shards"] for r in (0, 1)]
    assert shares == [[0, 2], [1, 3]]
    assert scored_per_process(torchrun) == [32, 32], "both processes score half of the samples"
    assert_same(single, torchrun)

    cpu_flag = tmp_path / "cpu_flag"
    run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(free_port()), "-m", "pmopt.cli", "bon", str(config)], cpu_flag)
    assert processes(cpu_flag) in (1, 2)
    assert_same(single, cpu_flag)


@pytest.fixture(scope="module")
def judged_config(tmp_path_factory):
    """Best-of-N on SycophancyEval answer records (real data) graded by an LM judge: a tiny Qwen2 instruct-style
    policy (ChatML BPE tokenizer trained on the records) that is also the judge, and a BERT reward model."""
    from builders import bpe_tokenizer, save_bert_seq_cls, save_qwen2_causal_lm, wordpiece_tokenizer
    from conftest import require_shared

    from pmopt.io import read_jsonl

    answer = require_shared("sycophancy-eval/answer.sample.jsonl")
    texts = [turn["content"] for record in read_jsonl(answer) for turn in record["prompt"]] * 20
    texts += ["You are a helpful assistant. user assistant system yes no correct incorrect"] * 5
    root = tmp_path_factory.mktemp("bon_judged")
    policy = save_qwen2_causal_lm(root / "policy", bpe_tokenizer(texts, "chatml", vocab_size=500), seed=0)
    rm = save_bert_seq_cls(root / "rm", wordpiece_tokenizer(texts, vocab_size=400))
    path = root / "bon.yaml"
    path.write_text(json.dumps({
        "policy": str(policy), "probes": ["answer"], "probe_sources": {"answer": str(answer)}, "n_max": 16,
        "n_boot": 20, "shard_size": 2, "sampling": {"max_new_tokens": 8},
        "judge": {"kind": "lm", "path": str(policy), "batch_size": 1},
        "pms": [{"name": "rm", "path": str(rm), "batch_size": 1}]}))
    return path


def test_an_lm_judge_split_across_two_processes_grades_as_one(judged_config, tmp_path):
    """The judge's queries are split across two real processes (chunks of judge.batch_size * 32 queries, every
    P-th chunk per process): grades, scores and curves byte-identical to one process."""
    single = tmp_path / "single"
    run([sys.executable, "-m", "pmopt.cli", "bon", str(judged_config)], single)
    stages = json.loads((single / "manifest.json").read_text())["stages"]
    asked = stages["bon/grades"]["judge_queries_per_process"]
    assert len(asked) == 1 and asked[0] > 32, asked  # more than one chunk, so two processes can split them
    two = tmp_path / "two"
    run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(free_port()), "-m", "pmopt.cli", "bon", str(judged_config)], two)
    split = json.loads((two / "manifest.json").read_text())["stages"]["bon/grades"]
    assert split["processes"] == 2 and len(split["judge_queries_per_process"]) == 2
    assert min(split["judge_queries_per_process"]) > 0 and sum(split["judge_queries_per_process"]) == asked[0]
    for name in ("grades.jsonl", "scores/rm.jsonl", "curves.jsonl", "curves.csv"):
        assert (single / name).read_bytes() == (two / name).read_bytes(), name
