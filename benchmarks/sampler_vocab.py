"""Benchmark: `pmopt.sampling.sample`'s per-step cost at a 32k and a 152k (Qwen2-size) vocabulary, against
`model.generate(do_sample=True)` with the same settings, side by side in one process.

    python benchmarks/sampler_vocab.py [--vocab 32000,151936] [--prompts 8] [--n 4] [--tokens 32] [--repeats 3]

The model is a tiny randomly initialised Qwen2 causal LM built in-process (hidden 64, 2 layers, tied
embeddings) with a word-level tokenizer of exactly `vocab` entries: nothing is downloaded, and the LM head
(hidden x vocab) plus the sampler's per-token work over the vocabulary dominate a step, which is what this
measures. Both methods draw `prompts x n` sequences of exactly `tokens` new tokens (no stop id is reachable:
EOS is a token the random model draws with probability ~1/vocab, and `generate` gets `min_new_tokens`), from
the same batch, temperature 1, no top-k / top-p. Per-step cost = wall time / tokens. Each timing is the
minimum over `--repeats` interleaved runs.

It also checks the exact path's memory shape: a torch dispatch mode records every float64 tensor the
sampler creates, and the largest must be (batch, vocab), never (batch, tokens, vocab).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def build(vocab: int, seed: int = 0):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    words = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<unk>": 3}
    words.update({f"w{i}": i for i in range(len(words), vocab)})
    core = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        unk_token="<unk>")
    config = Qwen2Config(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512,
                         tie_word_embeddings=True, pad_token_id=0, eos_token_id=2)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).eval(), tokenizer


def prompts(count: int) -> list[str]:
    return [" ".join(f"w{10 + (7 * i + j) % 500}" for j in range(6 + i % 5)) for i in range(count)]


def run_pmopt(model, tokenizer, texts, n, tokens) -> float:
    from pmopt.sampling import SamplingConfig, sample

    cfg = SamplingConfig(max_new_tokens=tokens, batch_size=len(texts) * n)
    start = time.perf_counter()
    out = sample(model, tokenizer, texts, n, cfg, seed=0)
    elapsed = time.perf_counter() - start
    drawn = [g.n_tokens for row in out for g in row]
    assert min(drawn) >= tokens - 1 or not all(g.finished for row in out for g in row)
    return elapsed


@torch.inference_mode()
def run_generate(model, tokenizer, texts, n, tokens) -> float:
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    start = time.perf_counter()
    out = model.generate(**batch, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=tokens,
                         min_new_tokens=tokens, num_return_sequences=n, pad_token_id=0, eos_token_id=2)
    elapsed = time.perf_counter() - start
    assert out.shape[1] - batch["input_ids"].shape[1] == tokens
    return elapsed


class Float64Shapes(TorchDispatchMode):
    """The shapes of every float64 tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float64:
                self.shapes.append(tuple(tensor.shape))
        return out


def largest_float64(model, tokenizer, texts, n, tokens) -> tuple[int, ...]:
    from pmopt.sampling import SamplingConfig, sample

    with Float64Shapes() as mode:
        sample(model, tokenizer, texts, n, SamplingConfig(max_new_tokens=tokens, batch_size=len(texts) * n), seed=0)
    return max(mode.shapes, key=lambda s: torch.Size(s).numel())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", default="32000,151936")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    texts = prompts(args.prompts)
    batch = args.prompts * args.n
    rows = []
    for vocab in (int(v) for v in args.vocab.split(",")):
        model, tokenizer = build(vocab)
        shape = largest_float64(model, tokenizer, texts[:2], 2, 4)
        assert len(shape) <= 2 and torch.Size(shape).numel() <= 4 * vocab, shape
        run_pmopt(model, tokenizer, texts, args.n, 2)  # warm-up
        run_generate(model, tokenizer, texts, args.n, 2)
        times = {"pmopt": [], "generate": []}
        for _ in range(args.repeats):
            times["pmopt"].append(run_pmopt(model, tokenizer, texts, args.n, args.tokens))
            times["generate"].append(run_generate(model, tokenizer, texts, args.n, args.tokens))
        ours, theirs = (min(times[k]) / args.tokens * 1000 for k in ("pmopt", "generate"))
        rows.append((vocab, batch, ours, theirs, ours / theirs, shape))
    load = os.getloadavg()[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}, load {load:.1f}; torch {torch.__version__}")
    print("| vocab | batch (prompts x n) | pmopt.sample ms/step | generate ms/step | ratio | largest float64 tensor |")
    print("|---|---|---|---|---|---|")
    for vocab, b, ours, theirs, ratio, shape in rows:
        print(f"| {vocab:,} | {b} ({args.prompts} x {args.n}) | {ours:.1f} | {theirs:.1f} | {ratio:.2f}x | "
              f"{shape} (check run: batch 4) |")


if __name__ == "__main__":
    main()
