"""The README's real-model walkthrough (train-pm -> bon -> probe -> report), timed stage by stage, on
randomly initialised models of the walkthrough's own architectures and sizes: nothing is downloaded.

    python benchmarks/gpu_walkthrough.py --size real --device cuda --data .whl/data --out walkthrough.json
    python benchmarks/gpu_walkthrough.py --size tiny --device cpu --data ../shared/data --out tiny.json

The configs of configs/walkthrough/ name hub models; here `--set` swaps each for a local directory built
first: Qwen2 causal LMs of Qwen2.5-1.5B-Instruct's shape (the policy) and Qwen2.5-0.5B-Instruct's (the PM's
base), and a DeBERTa-v2 sequence classifier of deberta-v3-large's shape (the published reward model), with
a byte-level BPE tokenizer with Qwen2's ChatML template and a WordPiece one with [CLS]/[SEP], both trained
here on the data (`tests/builders.py`). `--size tiny` builds the CPU test's small models instead. The data
are the local HH-RLHF harmless-base test split and SycophancyEval's answer sample (`--data` holds the
`../shared/data` layout). On CUDA the stages run as the configs say (bf16, LoRA, gradient checkpointing);
only the PM's training is cut to `--pm-steps` steps. On CPU (the dry run) every count is cut as
tests/test_walkthrough.py cuts it, and the rest stays as on CUDA: bf16 weights and autocast, LoRA, gradient
checkpointing.

Each stage runs as its own `python -m pmopt.cli` process (as a person runs the commands), with its log
kept; the JSON holds each stage's wall time and exit code and what the stage wrote (checked as the CPU
test checks it). It is written after every stage, so a run stopped by its time limit keeps what it did.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the model and tokenizer builders the tests use

RUN = "checkpoints/walkthrough"
COMMANDS = [  # the README section's commands, verbatim (tests/test_gpu_benchmark.py keeps them equal)
    "pmopt train-pm configs/walkthrough/pm_hh.yaml --out checkpoints/walkthrough/pms/hh",
    "pmopt bon configs/walkthrough/bon_answer.yaml --out checkpoints/walkthrough/bon",
    "pmopt probe configs/walkthrough/probe_answer.yaml --out checkpoints/walkthrough/probes",
    "pmopt report checkpoints/walkthrough",
]
HH = "hh-rlhf/harmless-base/test.jsonl.gz"
ANSWER = "sycophancy-eval/answer.sample.jsonl"
POLICY, PM_BASE, PUBLISHED = ("Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct",
                              "OpenAssistant/reward-model-deberta-v3-large-v2")

# The hub models' published config.json sizes (weights random). Qwen2.5's embedding has 151,936 rows for
# its 151,665 tokens; here too the embedding keeps its real size over a smaller locally trained vocabulary.
QWEN25 = dict(vocab_size=151936, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
              rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
SHAPES = {
    "real": {
        POLICY: dict(QWEN25, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12),
        PM_BASE: dict(QWEN25, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14),
        PUBLISHED: dict(vocab_size=128100, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                        num_attention_heads=16, max_position_embeddings=512),
    },
    "tiny": {  # tests/test_walkthrough.py's sizes
        POLICY: dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2),
        PM_BASE: dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2),
        PUBLISHED: dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2),
    },
}
TOKENIZER_TEXTS = {"real": 2312, "tiny": 400}  # HH dialogues the tokenizers are trained on
VOCAB = {"real": 32000, "tiny": 800}  # trained tokens (the embeddings keep their SHAPES size)


def stage_overrides(size: str, device: str, models: dict[str, str], data: Path, run: Path, pm_steps: int) -> dict:
    """Per command, the `--set` list: local stand-ins always; CPU-sized counts off CUDA."""
    hh, answer = str(data / HH), str(data / ANSWER)
    swap = {**models, f"{RUN}/pms/hh": str(run / "pms" / "hh")}
    pms = _config_pms()
    for entry in pms:
        entry["path"] = swap.get(entry["path"], entry["path"])
    sets = {
        "train-pm": [f"model.name_or_path={models[PM_BASE]}", f"data.train={hh}", "data.eval=null",
                     "data.eval_fraction=0.1", "data.max_pairs=0", f"train.max_steps={pm_steps}",
                     "train.logging_steps=10"],
        "bon": [f"policy={models[POLICY]}", f"probe_sources.answer={answer}", "pms=" + json.dumps(pms)],
        "probe": [f"policy={models[POLICY]}", f"sources.answer={answer}"],
    }
    if device == "cpu":  # tests/test_walkthrough.py's counts; the configs' precision (bf16), LoRA and checkpointing
        sets["train-pm"] += ["data.max_pairs=48", "data.eval_fraction=0.25", "data.max_length=256",
                             "train.batch_size=4", "train.eval_batch_size=8", "train.logging_steps=2"]
        sets["bon"] += ["n_max=4", "n_boot=20", "sampling.max_new_tokens=10", "sampling.batch_size=16",
                        "pm_load.max_length=256"]
        sets["probe"] += ["samples_per_prompt=2", "n_boot=20", "sampling.max_new_tokens=10"]
    return sets


def _config_pms() -> list[dict]:
    import yaml

    return yaml.safe_load((REPO / "configs/walkthrough/bon_answer.yaml").read_text())["pms"]


def tokenizer_texts(data: Path, dialogues: int) -> list[str]:
    from pmopt.io import read_jsonl

    with gzip.open(data / HH, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(dialogues), f, strict=False)]
    questions = [turn["content"] for record in read_jsonl(data / ANSWER) for turn in record["prompt"]]
    texts = [r["chosen"] for r in rows] + [r["rejected"] for r in rows] + questions * 5
    return texts + ["You are a helpful assistant. user assistant system"]


def build_models(size: str, device: str, data: Path, root: Path) -> dict[str, str]:
    """The local stand-ins for the configs' hub ids, saved as the hub ships them (bf16 safetensors)."""
    import torch
    from builders import bpe_tokenizer, save_deberta_v2_seq_cls, save_qwen2_causal_lm, wordpiece_tokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Writing model shards" bar per save: noise in the device log
    texts = tokenizer_texts(data, TOKENIZER_TEXTS[size])
    chatml = bpe_tokenizer(texts, "chatml", vocab_size=VOCAB[size])
    wordpiece = wordpiece_tokenizer(texts, vocab_size=VOCAB[size])
    dtype = torch.bfloat16  # as the hub ships Qwen2.5 (the configs load bf16 either way)
    shapes = {name: dict(shape) for name, shape in SHAPES[size].items()}
    if size == "tiny":
        shapes[PUBLISHED]["vocab_size"] = len(wordpiece)
    models = {
        POLICY: save_qwen2_causal_lm(root / "policy", chatml, seed=0, shape=shapes[POLICY], dtype=dtype, device=device),
        PM_BASE: save_qwen2_causal_lm(root / "pm-base", chatml, seed=1, shape=shapes[PM_BASE], dtype=dtype,
                                      device=device),
        PUBLISHED: save_deberta_v2_seq_cls(root / "published-rm", wordpiece, seed=2, shape=shapes[PUBLISHED],
                                           dtype=dtype, device=device),
    }
    if device == "cuda":
        torch.cuda.empty_cache()  # the stages run in their own processes: leave them the whole GPU
    return {name: str(path) for name, path in models.items()}


def command_argv(command: str, run: Path, overrides: dict) -> list[str]:
    argv = [str(run) + arg[len(RUN):] if arg.startswith(RUN) else arg for arg in command.split()[1:]]
    for override in overrides.get(argv[0], []):
        argv += ["--set", override]
    return argv


def run_stage(argv: list[str], log: Path, timeout: float, device: str) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path, even on a machine with a GPU
    begin = time.perf_counter()
    rc = run_logged([sys.executable, "-m", "pmopt.cli", *argv], log, timeout, env)
    return {"argv": argv, "rc": rc, "s": time.perf_counter() - begin, "log": log.name}


def run_logged(argv: list[str], log: Path, timeout: float, env: dict | None = None) -> int | str:
    """Run `argv` from the repo root with its output in `log`; past `timeout` seconds its whole process group
    is killed (a stage's own workers too) and "timeout" returned instead of the exit code."""
    with log.open("w") as handle:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            return process.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return "timeout"


def check_run(run: Path) -> dict:
    """What each stage wrote, as tests/test_walkthrough.py checks it (True, or what is wrong)."""
    from pmopt.io import read_jsonl

    checks = {}

    def check(name: str, probe):
        try:
            checks[name] = probe() or "failed"
        except (OSError, ValueError, KeyError) as error:
            checks[name] = f"{type(error).__name__}: {error}"

    def pm_info():
        info = json.loads((run / "pms/hh/pmopt_pm.json").read_text())
        return info["kind"] == "lora" and info["rendering"]["rendering"] == "chat_template"

    def samples_scored():
        samples = [row for shard in sorted((run / "bon/samples").glob("shard-*.jsonl")) for row in read_jsonl(shard)]
        return bool(samples) and all(len(read_jsonl(run / f"bon/scores/{name}.jsonl")) == len(samples)
                                     for name in ("hh", "hh-nonsyc", "published"))

    def curves():
        rows = read_jsonl(run / "bon/curves.jsonl")
        return {r["pm"] for r in rows} >= {"hh", "hh-nonsyc", "published"}

    def probe_metrics():
        return "probe/answer/syco_rate" in json.loads((run / "probes/metrics.json").read_text())

    def report():
        page = (run / "report/report.html").read_text(encoding="utf-8")
        return "published" in page and "Probe metrics" in page

    for name, probe in (("pm_lora_chat_template", pm_info), ("every_sample_scored_by_3_pms", samples_scored),
                        ("curves_of_3_pms", curves), ("probe_metrics", probe_metrics), ("report_page", report)):
        check(name, probe)
    return checks


def machine(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count()}
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return info


def write(res: dict, out: Path) -> None:
    from pmopt.io import atomic_write_text

    atomic_write_text(out, json.dumps(res, indent=2, default=str) + "\n")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SHAPES), default="real", help="the models' sizes")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda if present")
    parser.add_argument("--data", type=Path, required=True, help="a folder with ../shared/data's layout: "
                        f"{HH} and {ANSWER}")
    parser.add_argument("--work", type=Path, required=True, help="models and the run directory go here")
    parser.add_argument("--pm-steps", type=int, default=None, help="train-pm optimizer steps (train.max_steps; "
                        "default 60 on cuda, 6 on cpu)")
    parser.add_argument("--budget-s", type=float, default=600.0, help="stop starting stages after this many "
                        "seconds; a running stage is stopped there")
    parser.add_argument("--out", type=Path, required=True, help="the JSON of stage times and checks")
    args = parser.parse_args(argv)
    for relative in (HH, ANSWER):
        if not (args.data / relative).is_file():
            parser.error(f"--data {args.data}: {relative} not found")
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.pm_steps = args.pm_steps or (60 if args.device == "cuda" else 6)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    run, logs = args.work / "run", args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    res = {"size": args.size, "device": args.device, "machine": machine(args.device), "pm_steps": args.pm_steps,
           "stages": {}}
    begin = time.perf_counter()
    models = build_models(args.size, args.device, args.data, args.work / "models")
    res["build_s"] = time.perf_counter() - begin
    overrides = stage_overrides(args.size, args.device, models, args.data, run, args.pm_steps)
    for command in COMMANDS:
        argv = command_argv(command, run, overrides)
        left = deadline - time.monotonic()
        if left <= 0:
            res["stages"][argv[0]] = {"argv": argv, "rc": "skipped: time budget spent", "s": 0.0}
            continue
        res["stages"][argv[0]] = run_stage(argv, logs / f"{argv[0]}.log", left, args.device)
        write(res, args.out)
    res["checks"] = check_run(run)
    res["ok"] = all(s["rc"] == 0 for s in res["stages"].values()) and all(v is True for v in res["checks"].values())
    write(res, args.out)
    for name, stage in res["stages"].items():
        print(f"{name:<9} {stage['s']:7.1f} s  rc={stage['rc']}")
    print(f"build {res['build_s']:.1f} s; checks: {res['checks']}; ok={res['ok']}")
    return res


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
