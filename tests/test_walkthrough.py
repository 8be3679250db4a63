"""docs/walkthrough.md ("Real models: a walkthrough"), run as written on CPU with nothing downloaded.

The four commands of that page (train-pm -> bon -> probe -> report) run through `pmopt.cli.main`
with the configs of configs/walkthrough/; `--set` swaps the hub ids for local directories built here:
randomly initialised models of the real architectures (Qwen2 causal LM for the policy and the PM's base, a
BERT sequence classifier saved as published reward models ship) with tokenizers trained on the shared
data (byte-level BPE with Qwen2's ChatML template; WordPiece with [CLS]/[SEP] for the encoder), and the
data sets' local copies (HH-RLHF harmless-base, SycophancyEval answer records). Sizes are cut for CPU
(pairs, steps, samples); every stage and the files the next one reads are checked.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml
from builders import bpe_tokenizer, save_bert_seq_cls, save_qwen2_causal_lm, wordpiece_tokenizer
from conftest import REPO, require_shared

from pmopt.cli import main
from pmopt.io import read_jsonl

HH = "hh-rlhf/harmless-base/test.jsonl.gz"
ANSWER = "sycophancy-eval/answer.sample.jsonl"
RUN = "checkpoints/walkthrough"
COMMANDS = [  # verbatim from docs/walkthrough.md
    "pmopt train-pm configs/walkthrough/pm_hh.yaml --out checkpoints/walkthrough/pms/hh",
    "pmopt bon configs/walkthrough/bon_answer.yaml --out checkpoints/walkthrough/bon",
    "pmopt probe configs/walkthrough/probe_answer.yaml --out checkpoints/walkthrough/probes",
    "pmopt report checkpoints/walkthrough",
]


def test_page_lists_exactly_these_commands():
    page = (REPO / "docs" / "walkthrough.md").read_text(encoding="utf-8")
    listed = [line.strip() for line in page.splitlines() if line.strip().startswith("pmopt ")]
    assert listed == COMMANDS


@pytest.fixture(scope="module")
def local_models(tmp_path_factory) -> dict[str, Path]:
    """Local stand-ins for the configs' hub ids, all trained / initialised from the shared data."""
    with gzip.open(require_shared(HH), "rt", encoding="utf-8") as f:
        dialogues = [json.loads(line)["chosen"] for _, line in zip(range(400), f, strict=False)]
    questions = [turn["content"] for record in read_jsonl(require_shared(ANSWER)) for turn in record["prompt"]]
    texts = dialogues + questions * 5 + ["You are a helpful assistant. user assistant system"]
    root = tmp_path_factory.mktemp("walkthrough_models")
    chatml = bpe_tokenizer(texts, "chatml", vocab_size=800)
    assert chatml.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    return {
        "Qwen/Qwen2.5-1.5B-Instruct": save_qwen2_causal_lm(root / "policy", chatml, seed=0, hidden_size=48),
        "Qwen/Qwen2.5-0.5B-Instruct": save_qwen2_causal_lm(root / "pm-base", chatml, seed=1),
        "OpenAssistant/reward-model-deberta-v3-large-v2": save_bert_seq_cls(
            root / "published-rm", wordpiece_tokenizer(texts, vocab_size=800)),
    }


def pms_override(config: Path, swap: dict[str, str]) -> str:
    """The config's own `pms` list with hub ids and the run's paths swapped (a --set replaces a list whole)."""
    entries = yaml.safe_load(config.read_text())["pms"]
    for entry in entries:
        entry["path"] = swap.get(entry["path"], entry["path"])
    return "pms=" + json.dumps(entries)


def test_walkthrough_runs_every_stage_on_cpu(local_models, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the configs' paths are relative to the checkout, as on the page
    run = tmp_path / "walkthrough run"  # a space in the path, too
    hh, answer = str(require_shared(HH)), str(require_shared(ANSWER))
    models = {hub_id: str(path) for hub_id, path in local_models.items()}
    policy = models["Qwen/Qwen2.5-1.5B-Instruct"]
    swap = {**models, f"{RUN}/pms/hh": str(run / "pms" / "hh")}
    cpu = {  # per command: local stand-ins, float32 and CPU-sized work
        "train-pm": [f"model.name_or_path={models['Qwen/Qwen2.5-0.5B-Instruct']}", "model.dtype=float32",
                     f"data.train={hh}", "data.eval=null", "data.eval_fraction=0.25", "data.max_pairs=48",
                     "data.max_length=256", "train.max_steps=6", "train.batch_size=4", "train.eval_batch_size=8",
                     'train.mixed_precision="no"', "train.gradient_checkpointing=false", "train.logging_steps=2"],
        "bon": [f"policy={policy}", "policy_dtype=float32", f"probe_sources.answer={answer}", "n_max=4",
                "n_boot=20", "sampling.max_new_tokens=10", "sampling.batch_size=16", "pm_load.dtype=float32",
                "pm_load.max_length=256", pms_override(REPO / "configs/walkthrough/bon_answer.yaml", swap)],
        "probe": [f"policy={policy}", "dtype=float32", f"sources.answer={answer}", "samples_per_prompt=2",
                  "n_boot=20", "sampling.max_new_tokens=10"],
    }
    for command in COMMANDS:
        argv = [str(run) + arg[len(RUN):] if arg.startswith(RUN) else arg for arg in command.split()[1:]]
        for override in cpu.get(argv[0], []):
            argv += ["--set", override]
        assert main(argv) == 0, f"{command}: {capsys.readouterr().err[-2000:]}"

    # train-pm: a LoRA PM on the Qwen2 base, trained and evaluated on HH pairs rendered through ChatML
    info = json.loads((run / "pms" / "hh" / "pmopt_pm.json").read_text())
    assert info["kind"] == "lora" and info["rendering"]["rendering"] == "chat_template", info
    # bon: every sample scored by all three PMs (the published RM is a BERT encoder) and graded
    samples = [row for shard in sorted((run / "bon" / "samples").glob("shard-*.jsonl")) for row in read_jsonl(shard)]
    assert len(samples) == 4 * 4 and all("logprob" in row for row in samples)  # 4 answer records x n_max 4
    for name in ("hh", "hh-nonsyc", "published"):
        scores = read_jsonl(run / "bon" / "scores" / f"{name}.jsonl")
        assert len(scores) == len(samples), name
    rows = read_jsonl(run / "bon" / "curves.jsonl")
    assert {r["pm"] for r in rows} >= {"hh", "hh-nonsyc", "published"}
    assert {"probe/answer/syco_rate", "pm/score"} <= {r["metric"] for r in rows}
    # probe: metrics of the answer probe on the policy itself
    metrics = json.loads((run / "probes" / "metrics.json").read_text())
    assert {"probe/answer/syco_rate", "probe/answer/accuracy/plain"} <= set(metrics), sorted(metrics)
    # report: one page over the run, with the probe table and the PM legend
    page = (run / "report" / "report.html").read_text(encoding="utf-8")
    assert "published" in page and "hh-nonsyc" in page and "Probe metrics" in page
