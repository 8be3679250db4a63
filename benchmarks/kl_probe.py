"""Benchmark: what RL's probe KL costs per probe step, the Rao-Blackwellised estimate (exact per-position KL over
the vocabulary, summed over each response) against the k1 / k3 sample estimates TRL logs, side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/kl_probe.py [--vocab 0,32000,151936] [--sequences 880] [--tokens 10]

Both ways run the same two forward passes (policy and reference, teacher-forced on the sampled responses, in
chunks of `--chunk` rows, as `pmopt.rl.batches.sequence_kl` does at a probe step):

- k1 / k3 (the peer: TRL's PPO / RLOO `kl_estimator`, and pmopt's probe KL before): gather each sampled
  token's log-probability under both models, sum k1 = log p - log q and k3 = (q/p - 1) - log(q/p);
- Rao-Blackwellised (pmopt now): the same, plus the exact KL of the two next-token distributions at every
  position (`ppo_math.kl_from_logits`: two log-softmaxes and a product over the vocabulary).

Vocabulary 0 is the default world's policy (a 2-layer Llama, hidden 96, 92 tokens; built in-process, untrained
weights: the cost does not depend on them); the others are a tiny Qwen2 (hidden 64, 2 layers) with a 32k and a
152k vocabulary, where the vocabulary-wide work dominates. The reference is the same architecture with other
weights. `--sequences` responses of `--tokens` tokens after a 20-token prompt: 880 x 10 is the default world's
probe step (440 single-turn probe prompts x 2 samples, ~10 tokens each). Timings are the minimum over
`--repeats` interleaved runs, of the process's CPU time (`time.process_time`: on a shared machine, other jobs
stretch the wall time but not it; the ratio uses it) and of the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from pmopt.rl.batches import pack, policy_outputs, reference_of, sequence_kl
from pmopt.rl.ppo_math import kl_penalty, masked_sum

REPO = Path(__file__).resolve().parents[1]
PROMPT_TOKENS = 20


def world_models(seed: int):
    """Two models of the default world policy's architecture and vocabulary (configs/world/default.yaml)."""
    from transformers import AutoModelForCausalLM

    from pmopt.config import load_config
    from pmopt.world.config import WorldConfig
    from pmopt.world.models import tiny_llama_config, word_tokenizer

    cfg = load_config(WorldConfig, REPO / "configs" / "world" / "default.yaml")
    tok = word_tokenizer([" ".join(f"w{i}" for i in range(88))])  # 88 words + 4 specials: the default world's 92
    policy = cfg.policy
    models = []
    for s in (seed, seed + 1):
        torch.manual_seed(s)
        config = tiny_llama_config(tok, hidden_size=policy.hidden_size, num_layers=policy.num_layers,
                                   num_heads=policy.num_heads, intermediate_size=policy.intermediate_size)
        models.append(AutoModelForCausalLM.from_config(config).eval())
    return models, len(tok)


def qwen_models(vocab: int, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512,
                         tie_word_embeddings=True, pad_token_id=0, eos_token_id=2)
    models = []
    for s in (seed, seed + 1):
        torch.manual_seed(s)
        models.append(Qwen2ForCausalLM(config).eval())
    return models, vocab


@torch.no_grad()
def sample_kl(policy, reference, batch, chunk: int) -> dict[str, torch.Tensor]:
    """The peer: per-sequence k1 and k3 sums from the sampled tokens' log-probabilities only."""
    k1, k3 = [], []
    for start in range(0, batch.input_ids.shape[0], chunk):
        part = batch.rows(torch.arange(start, min(start + chunk, batch.input_ids.shape[0])))
        logprobs, _ = policy_outputs(policy, part, 1.0)
        with reference_of(policy, reference) as ref:
            ref_logprobs, _ = policy_outputs(ref, part, 1.0)
        k1.append(masked_sum(kl_penalty(logprobs, ref_logprobs, "k1"), part.response_mask, dim=1))
        k3.append(masked_sum(kl_penalty(logprobs, ref_logprobs, "k3"), part.response_mask, dim=1))
    return {"k1": torch.cat(k1), "k3": torch.cat(k3)}


def timed(fn) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(vocab: int, sequences: int, tokens: int, chunk: int, repeats: int) -> dict:
    (policy, reference), size = world_models(0) if vocab == 0 else qwen_models(vocab, 0)
    generator = torch.Generator().manual_seed(1)
    queries = torch.randint(4, size, (sequences, PROMPT_TOKENS), generator=generator).tolist()
    responses = torch.randint(4, size, (sequences, tokens), generator=generator).tolist()
    batch = pack(queries, responses, 0, "cpu")
    runs = {"k1/k3": [], "rao-blackwell": []}
    for _ in range(repeats):  # interleaved, so a change in the machine's load hits both alike
        runs["k1/k3"].append(timed(lambda: sample_kl(policy, reference, batch, chunk)))
        runs["rao-blackwell"].append(timed(lambda: sequence_kl(policy, reference, batch, 1.0, chunk)))
    out = {"vocab": size, "sequences": sequences, "tokens": tokens}
    for name, times in runs.items():
        out[f"{name} cpu s"], out[f"{name} wall s"] = min(t[0] for t in times), min(t[1] for t in times)
    return {**out, "ratio": out["rao-blackwell cpu s"] / out["k1/k3 cpu s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", default="0,32000,151936", help="0: the default world's policy")
    parser.add_argument("--sequences", type=int, default=880, help="responses per probe step")
    parser.add_argument("--tokens", type=int, default=10, help="tokens per response")
    parser.add_argument("--chunk", type=int, default=64, help="rows per forward pass (reward.batch_size)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    meta = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "load_average_start": os.getloadavg()}
    results = [measure(int(v), args.sequences, args.tokens, args.chunk, args.repeats) for v in args.vocab.split(",")]
    meta["load_average_end"] = os.getloadavg()
    print(json.dumps(meta))
    print("| vocab | sequences x tokens | k1/k3 CPU s (wall) | Rao-Blackwellised CPU s (wall) | ratio (CPU) |")
    print("|---:|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['vocab']:,} | {r['sequences']} x {r['tokens']} | {r['k1/k3 cpu s']:.2f} ({r['k1/k3 wall s']:.2f}) | "
              f"{r['rao-blackwell cpu s']:.2f} ({r['rao-blackwell wall s']:.2f}) | {r['ratio']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
