"""Benchmark: pmopt's sampler, vLLM's engine (`sampling.backend: vllm`) and transformers' `generate` batched
across prompts, side by side on CPU, at three model shapes and two N.

    python benchmarks/sampler_engines.py [--shapes world,llama-32k,vocab-152k] [--n 16,64] [--prompts 16]
        [--tokens 32] [--json out.json]

Run it in vLLM's environment (docs/vllm.md). Each (shape, method) runs in a fresh subprocess, so its peak
RSS and CPU time are its own: it loads the model (pmopt, generate) or starts the engine (vLLM), draws a
one-sequence warm-up, then `prompts x N` samples for each N. Reported per N: generated tokens per CPU second
(the process's user + system time: the measure that holds on a shared machine, and the ratio's basis) and per
wall second, the time to the first sample (import and load or engine start, plus that call: every method
returns the whole batch at once); per method its start seconds and peak RSS.

Shapes (random weights, built here, saved with save_pretrained; a word-level tokenizer of exactly `vocab`):
- world: the world policy's shape (2 layers, hidden 96) with 3 heads, not 4: vLLM's CPU attention has no
  kernel for the world's head size 24 (it takes 32, 64, 80, ...); vocab 128;
- llama-32k: a 4-layer, 512-wide Llama (8 heads of 64) with a 32,000 vocabulary;
- vocab-152k: a 2-layer, 256-wide Llama (4 heads of 64, tied embeddings) with Qwen's 151,936 vocabulary (a
  Llama, not a Qwen2: transformers 5 loads a saved Qwen2 tokenizer as Qwen's BPE class, not this word-level one).
Every method samples at temperature 1 with no top-k / top-p, up to `tokens` new tokens, stopping on EOS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    "world": dict(arch="llama", vocab=128, hidden=96, layers=2, heads=3, intermediate=256),
    "llama-32k": dict(arch="llama", vocab=32_000, hidden=512, layers=4, heads=8, intermediate=1376),
    "vocab-152k": dict(arch="llama", vocab=151_936, hidden=256, layers=2, heads=4, intermediate=512, tied=True),
}
METHODS = ("pmopt", "vllm", "generate")


def build(directory: Path, arch: str, vocab: int, hidden: int, layers: int, heads: int, intermediate: int,
          tied: bool = False) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    words = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    words.update({f"w{i}": i for i in range(len(words), vocab)})
    core = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    common = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=heads, intermediate_size=intermediate, max_position_embeddings=512,
                  pad_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    model = (LlamaForCausalLM(LlamaConfig(**common, bos_token_id=1, tie_word_embeddings=tied)) if arch == "llama"
             else Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True)))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def prompt_texts(count: int, vocab: int) -> list[str]:
    return [" ".join(f"w{4 + (7 * i + 3 * j) % (min(vocab, 600) - 4)}" for j in range(8 + i % 5)) for i in range(count)]


# ----------------------------------------------------------------------------- one method, in its own process


def run_method(method: str, path: str, ns: list[int], n_prompts: int, tokens: int, vocab: int) -> dict:
    start = time.perf_counter()
    texts = prompt_texts(n_prompts, vocab)
    draw, started = _sampler(method, path, tokens), time.perf_counter() - start
    draw(texts[:1], 1)  # warm-up: first-call costs (allocations, vLLM's first step) are not the steady rate
    rows = {}
    for n in ns:
        t0, c0 = time.perf_counter(), _cpu_seconds()
        produced = draw(texts, n)
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        rows[n] = {"wall_s": wall, "cpu_s": cpu, "tokens": produced, "tokens_per_s": produced / wall,
                   "tokens_per_cpu_s": produced / cpu, "first_sample_s": started + wall}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"start_s": started, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_gib": usage.ru_maxrss / 2**20,
            "by_n": rows}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sampler(method: str, path: str, tokens: int):
    """draw(texts, n) -> generated token count, for one method (its model loaded or engine started)."""
    import torch

    from pmopt.policy import load_policy
    from pmopt.sampling import SamplingConfig, VllmSection, sample

    if method in ("pmopt", "vllm"):
        cfg = SamplingConfig(max_new_tokens=tokens, batch_size=256, backend=method,
                             vllm=VllmSection(max_model_len=512))
        if method == "vllm":
            from pmopt.policy import load_tokenizer
            from pmopt.sampling_vllm import engine_for

            model, tokenizer = path, load_tokenizer(path)
            engine_for(path, cfg.vllm)
        else:
            model, tokenizer = load_policy(path, device="cpu")

        def draw(texts, n):
            return sum(g.n_tokens for row in sample(model, tokenizer, texts, n, cfg, seed=0) for g in row)

        return draw
    model, tokenizer = load_policy(path, device="cpu")
    tokenizer.padding_side = "left"

    @torch.inference_mode()
    def generate(texts, n):
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**batch, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=tokens,
                             num_return_sequences=n, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        new = out[:, batch["input_ids"].shape[1]:]
        finished = (new == tokenizer.eos_token_id).int().cumsum(-1)
        return int(((finished == 0) | ((finished == 1) & (new == tokenizer.eos_token_id))).sum())

    return generate


# ----------------------------------------------------------------------------- the table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--n", default="16,64")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "PATH", "VOCAB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    ns = [int(n) for n in args.n.split(",")]
    if args.child:
        method, path, vocab = args.child
        print(json.dumps(run_method(method, path, ns, args.prompts, args.tokens, int(vocab))))
        return
    results, load = {}, [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            path = build(Path(tmp) / shape, **SHAPES[shape])
            for method in args.methods.split(","):
                command = [sys.executable, __file__, "--child", method, str(path), str(SHAPES[shape]["vocab"]),
                           "--n", args.n, "--prompts", str(args.prompts), "--tokens", str(args.tokens)]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode:
                    sys.exit(f"{shape} / {method} failed:\n{done.stderr[-3000:]}")
                results[(shape, method)] = json.loads(done.stdout.strip().splitlines()[-1])
                load.append(os.getloadavg()[0])
                print(f"{shape:10s} {method:8s} " + json.dumps(results[(shape, method)]), flush=True)
    print_table(results, ns, args, load)
    if args.json:
        Path(args.json).write_text(json.dumps({f"{s}/{m}": r for (s, m), r in results.items()}, indent=1))


def print_table(results: dict, ns: list[int], args, load: list[float]) -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if line.startswith("Model name")), platform.processor())
    import torch
    import vllm

    print(f"\nmachine: {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, vLLM {vllm.__version__}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average {min(load):.1f}-{max(load):.1f}; "
          f"{args.prompts} prompts x N, up to {args.tokens} new tokens")
    print("\n| shape | N | method | tokens/CPU s | vs pmopt | tokens/s | sample s | sample CPU s | first sample s "
          "| start s | peak RSS GiB |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for shape in dict.fromkeys(s for s, _ in results):
        for n in ns:
            base = results.get((shape, "pmopt"), {}).get("by_n", {}).get(str(n)) or \
                results.get((shape, "pmopt"), {}).get("by_n", {}).get(n)
            for method in METHODS:
                if (shape, method) not in results:
                    continue
                r = results[(shape, method)]
                row = r["by_n"].get(str(n)) or r["by_n"].get(n)
                ratio = f"{row['tokens_per_cpu_s'] / base['tokens_per_cpu_s']:.2f}x" if base else ""
                print(f"| {shape} | {n} | {method} | {row['tokens_per_cpu_s']:.0f} | {ratio} | {row['tokens_per_s']:.0f} | "
                      f"{row['wall_s']:.2f} | {row['cpu_s']:.2f} | {row['first_sample_s']:.1f} | {r['start_s']:.1f} | "
                      f"{r['peak_rss_gib']:.2f} |")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
