"""Benchmark: PM training, PM scoring, best-of-N sampling, decoding and a PPO-like step on real-size models.

    python benchmarks/gpu.py --device cuda --dtype bfloat16 --sizes 0.5b,1.5b --out gpu.json
    python benchmarks/gpu.py --device cpu --dtype float32 --sizes tiny --out tiny.json   # smoke run

Models are random-init from real HF configs (Qwen2-0.5B and Qwen2-1.5B shapes; `--sizes tiny` is a
2-layer Qwen2 for CPU). The tokenizer is a real HF fast tokenizer built locally over a generated word
list of the model's vocabulary size (`pmopt.world.models.word_tokenizer`): nothing is downloaded. One run
measures the device's two ceilings once, then for each size:

0. the ceilings: a large square matmul in `--dtype` (2 n^3 FLOPs per call) and a large device-to-device
   copy (bytes read + bytes written per call, the STREAM benchmark's count for Copy, McCalpin 1995);
1. PM training: `AutoModelForSequenceClassification(num_labels=1)`, forward + backward + AdamW step on
   the pairwise Bradley-Terry loss -log sigma(r_chosen - r_rejected), chosen and rejected concatenated
   into one batch as TRL's `RewardTrainer.compute_loss` does; MFU = 6 * N * tokens / (time * peak);
2. PM scoring: `pmopt.pm.model.PreferenceModel.score_ids` (inference_mode); MFU = 2 * N * tokens / ...;
3. best-of-N sampling at each N: `pmopt.sampling.sample` (batched across prompts, at each
   `--sample-batch-sizes`) vs a per-prompt `model.generate(num_return_sequences=N, do_sample=True)` loop
   (over the first `--loop-prompts` prompts: each call is independent, so its rate does not depend on how
   many are timed): generated tokens/s and the ratio;
4. decoding: the policy's forward with its KV cache, one token per row, at each `--decode-batches`; model
   bandwidth utilisation MBU = bytes / (step time * copy bandwidth), bytes = every weight once (the tied
   embedding is read whole by the LM head) + the KV cache read at that context + the logits written: the
   fewest bytes a decode step must move (Pope et al. 2022, "Efficiently Scaling Transformer Inference",
   §2; MBU as defined in Databricks' "LLM Inference Performance Engineering: Best Practices", 2023);
5. a PPO-like step, timed by phase: generation (`pmopt.sampling.sample`), scoring (PM forward) and
   update (policy forward + backward + AdamW on the sampled sequences) - not the full PPO loop;
6. peak GPU memory of each (torch.cuda.max_memory_allocated; null on CPU).

N in the MFU formulas is the number of parameters that take part in matmuls (the weights of every
nn.Linear, which includes a tied LM head): an embedding lookup costs no FLOPs, and counting the
embedding would inflate a 0.5B PM's MFU by ~40% (Kaplan et al. 2020 count non-embedding parameters
too). `mfu_incl_attention` adds the attention score/value matmuls, 4 * layers * d_attn * seq FLOPs per
token forward (PaLM, Chowdhery et al. 2022, App. B). With gradient checkpointing the hardware does
~8N FLOPs per token; MFU still counts 6N (model FLOPs, not hardware FLOPs). MFUs divide by the measured
matmul peak (or `--peak-tflops`), MBUs by the measured copy bandwidth (or `--peak-gbps`).

Training runs with float32 master weights under bf16 autocast when `--dtype bfloat16` (TRL's
`bf16=True`, pmopt's `train.mixed_precision: bf16`); scoring and sampling load weights in `--dtype`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pmopt.io import atomic_write_text
from pmopt.pm.model import PreferenceModel, right_pad
from pmopt.sampling import SamplingConfig, _cache_kwarg, _cache_of, sample
from pmopt.world.models import SPECIAL_TOKENS, word_tokenizer

GIB = 2**30
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
TARGETS = {"pm_train_mfu": 0.40, "pm_score_mfu": 0.50, "bon_ratio_at_64": 5.0, "decode_mbu": 0.50}
TARGET_N = 64
TARGET_DECODE_BATCH = 64  # the decode target holds at batch >= 64
LEARNING_RATE = 1e-5  # any value: the step's cost does not depend on it
MAX_GRAD_NORM = 1.0  # TRL's default; clipping is part of a real step's cost

# Shapes from the published configs (Qwen2-0.5B / Qwen2-1.5B config.json); weights are random.
SHAPES = {
    "tiny": dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096),
    "0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=131072),
    "1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=131072),
}
ROPE_THETA = 1_000_000.0  # both Qwen2 configs


@dataclass
class Setup:
    device: torch.device
    dtype: torch.dtype  # compute dtype: weights for inference, autocast for training
    master_dtype: torch.dtype  # weights being trained
    attn: str
    grad_ckpt: bool
    peak_flops: float  # FLOP/s the MFUs divide by
    peak_bytes: float = 0.0  # bytes/s the MBUs divide by (0: no MBU)

    def autocast(self):
        if self.dtype == self.master_dtype:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


# ----------------------------------------------------------------------------- timing and memory


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Wall time of a block, the device synchronized at both ends (CUDA kernels run asynchronously)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, 0.0

    def __enter__(self):
        sync(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.seconds += time.perf_counter() - self.start


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def timed_repeats(device: torch.device, work, iters: int) -> float:
    """Seconds for `iters` calls of `work` after two warm-ups: CUDA events on a GPU, perf_counter on CPU."""
    for _ in range(2):  # warm-up: kernel selection, clocks, first-touch allocation
        work()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(iters):
            work()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0
    begin = time.perf_counter()
    for _ in range(iters):
        work()
    return time.perf_counter() - begin


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, iters: int) -> dict:
    """Achieved FLOP/s of an n x n x n matmul on random data (zeros run faster than real data)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = timed_repeats(device, lambda: a @ b, iters)
    flops = 2.0 * size**3 * iters / seconds
    return {"size": size, "iters": iters, "dtype": str(dtype).removeprefix("torch."), "tflops": flops / 1e12}


def copy_bandwidth(device: torch.device, mib: int, iters: int) -> dict:
    """Achieved bytes/s of a device-to-device copy of `mib` MiB, counting bytes read + bytes written
    (STREAM's Copy count); sized well past the L2 cache (50-60 MB on an H100/H200) on a GPU."""
    src = torch.randn(mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    seconds = timed_repeats(device, lambda: dst.copy_(src), iters)
    moved = 2.0 * src.numel() * src.element_size() * iters
    return {"mib": mib, "iters": iters, "gbps": moved / seconds / 1e9}


# ----------------------------------------------------------------------------- models


def build_tokenizer(vocab_size: int):
    """A word-level HF tokenizer with exactly `vocab_size` ids: the special tokens + generated words."""
    words = [f"w{i}" for i in range(vocab_size - len(SPECIAL_TOKENS))]
    return word_tokenizer([" ".join(words)], model_max_length=10**6)


def model_config(size: str, tokenizer):
    from transformers import Qwen2Config

    shape = dict(SHAPES[size])
    if shape["vocab_size"] != len(tokenizer):
        raise ValueError(f"tokenizer has {len(tokenizer)} ids, the {size} config {shape['vocab_size']}")
    return Qwen2Config(**shape, rms_norm_eps=1e-6, tie_word_embeddings=True,
                       rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                       bos_token_id=tokenizer.bos_token_id)


def build_model(kind: str, config, setup: Setup, dtype: torch.dtype, train: bool):
    """Random-init `kind` ("pm": seq-cls with 1 label, "lm": causal LM), built on the device directly."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    with torch.device(setup.device):
        if kind == "pm":
            config = copy.deepcopy(config)
            config.num_labels = 1  # the PM's scalar head (from_config takes no num_labels)
            model = AutoModelForSequenceClassification.from_config(
                config, dtype=dtype, attn_implementation=setup.attn)
        else:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=setup.attn)
    if train and setup.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train(train)


def param_counts(model) -> dict:
    """Total (tied weights once) and matmul parameters (every nn.Linear weight, a tied LM head included)."""
    total = sum(p.numel() for p in model.parameters())
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return {"total": total, "matmul": matmul}


def attention_flops_per_token(config, seq_len: int) -> float:
    """Forward FLOPs of QK^T and AV per token at context `seq_len` (PaLM App. B: 2 matmuls x 2 L d T)."""
    head_dim = config.hidden_size // config.num_attention_heads
    return 4.0 * config.num_hidden_layers * config.num_attention_heads * head_dim * seq_len


def mfu(flops: float, seconds: float, peak: float) -> float:
    return flops / seconds / peak


def make_optimizer(model, device: torch.device):
    # fused AdamW on CUDA: what HF Trainer uses by default (optim="adamw_torch_fused")
    return torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, fused=device.type == "cuda")


def random_ids(rows: int, length: int, vocab: int, eos_id: int, device) -> torch.Tensor:
    """Random word ids (never a special token, so never pad) ending with EOS, as a scored sequence does."""
    ids = torch.randint(len(SPECIAL_TOKENS), vocab, (rows, length), device=device)
    ids[:, -1] = eos_id
    return ids


# ----------------------------------------------------------------------------- 1. PM training


def bradley_terry_loss(model, chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """TRL RewardTrainer.compute_loss: one forward over [chosen; rejected], -logsigmoid(r_c - r_r).mean()."""
    input_ids = torch.cat([chosen, rejected])
    logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False).logits
    rewards_chosen, rewards_rejected = torch.chunk(logits.squeeze(-1).float(), chunks=2)
    return -F.logsigmoid(rewards_chosen - rewards_rejected).mean()


def bench_pm_train(config, setup: Setup, args, tokenizer) -> dict:
    reset_memory(setup.device)
    model = build_model("pm", config, setup, setup.master_dtype, train=True)
    optimizer = make_optimizer(model, setup.device)
    chosen, rejected = (random_ids(args.batch_size, args.seq_len, config.vocab_size, tokenizer.eos_token_id,
                                   setup.device) for _ in range(2))
    watch, losses = Stopwatch(setup.device), []
    for step in range(args.warmup + args.steps):
        with watch if step >= args.warmup else contextlib.nullcontext():
            with setup.autocast():
                loss = bradley_terry_loss(model, chosen, rejected)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    tokens = 2 * args.batch_size * args.seq_len * args.steps  # chosen + rejected sequences
    params = param_counts(model)
    result = throughput(tokens, watch.seconds, 3 * (2 * params["matmul"]),
                        3 * attention_flops_per_token(config, args.seq_len), setup.peak_flops)
    result.update(step_s=watch.seconds / args.steps, pairs_per_step=args.batch_size, loss=losses[-1],
                  target_mfu=TARGETS["pm_train_mfu"], params=params, peak_mem_gib=peak_memory_gib(setup.device))
    return result


def throughput(tokens: int, seconds: float, flops_per_token: float, attn_flops_per_token: float,
               peak: float) -> dict:
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "mfu": mfu(flops_per_token * tokens, seconds, peak),
            "mfu_incl_attention": mfu((flops_per_token + attn_flops_per_token) * tokens, seconds, peak)}


# ----------------------------------------------------------------------------- 2. PM scoring


def bench_pm_score(config, setup: Setup, args, tokenizer) -> dict:
    reset_memory(setup.device)
    pm = PreferenceModel(build_model("pm", config, setup, setup.dtype, train=False), tokenizer)
    batch = args.score_batch_size or 2 * args.batch_size
    ids = random_ids(batch * args.steps, args.seq_len, config.vocab_size, tokenizer.eos_token_id, "cpu")
    sequences = ids.tolist()
    pm.score_ids(sequences[:batch] * args.warmup, batch_size=batch)
    with Stopwatch(setup.device) as watch:
        scores = pm.score_ids(sequences, batch_size=batch)
    if not bool(torch.isfinite(scores).all()):
        raise RuntimeError("PM scores are not finite")
    params = param_counts(pm.model)
    result = throughput(len(sequences) * args.seq_len, watch.seconds, 2 * params["matmul"],
                        attention_flops_per_token(config, args.seq_len), setup.peak_flops)
    result.update(batch_size=batch, sequences=len(sequences), target_mfu=TARGETS["pm_score_mfu"], params=params,
                  peak_mem_gib=peak_memory_gib(setup.device))
    return result


# ----------------------------------------------------------------------------- 3. best-of-N sampling


def make_prompts(count: int, length: int, vocab: int, seed: int) -> list[str]:
    """Prompts of exactly `length` tokens each (one generated word = one token)."""
    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(vocab - len(SPECIAL_TOKENS))}" for _ in range(length)) for _ in range(count)]


def new_tokens(rows: torch.Tensor, eos_id: int) -> int:
    """Generated tokens per row up to and including the first EOS (what `sample` counts as n_tokens)."""
    is_eos = rows == eos_id
    first = torch.where(is_eos.any(-1), is_eos.int().argmax(-1) + 1, torch.full_like(rows[:, 0], rows.shape[1]))
    return int(first.sum())


def generate_loop(model, tokenizer, prompts: list[str], n: int, max_new_tokens: int) -> int:
    """The per-prompt way: one `generate(num_return_sequences=n)` call per prompt."""
    device, produced = next(model.parameters()).device, 0
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 num_return_sequences=n, max_new_tokens=max_new_tokens, temperature=1.0,
                                 top_k=0, top_p=1.0, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
        produced += new_tokens(out[:, ids.shape[1]:], tokenizer.eos_token_id)
    return produced


def bench_sampling(config, setup: Setup, args, tokenizer) -> dict:
    reset_memory(setup.device)
    model = build_model("lm", config, setup, setup.dtype, train=False)
    prompts = make_prompts(args.prompts, args.prompt_len, config.vocab_size, args.seed)
    looped_prompts = prompts[:args.loop_prompts or len(prompts)]
    configs = {size: SamplingConfig(max_new_tokens=args.max_new_tokens, batch_size=size)
               for size in args.sample_batch_sizes}
    sample(model, tokenizer, prompts[:1], 2, configs[args.sample_batch_sizes[0]], args.seed)  # warm-up both paths
    generate_loop(model, tokenizer, prompts[:1], 2, args.max_new_tokens)
    results = {}
    for n in args.n_values:
        reset_memory(setup.device)
        torch.manual_seed(args.seed + n)
        with Stopwatch(setup.device) as looped:
            loop_tokens = generate_loop(model, tokenizer, looped_prompts, n, args.max_new_tokens)
        loop_rate = loop_tokens / looped.seconds
        row = {"sequences": n * len(prompts), "loop_sequences": n * len(looped_prompts), "loop_tokens": loop_tokens,
               "loop_s": looped.seconds, "loop_tokens_per_s": loop_rate,
               "loop_peak_mem_gib": peak_memory_gib(setup.device), "batched": {}}
        for size, cfg in configs.items():
            reset_memory(setup.device)
            with Stopwatch(setup.device) as batched:
                gens = sample(model, tokenizer, prompts, n, cfg, args.seed + n)
            tokens = sum(g.n_tokens for gen_row in gens for g in gen_row)
            row["batched"][str(size)] = {"tokens": tokens, "s": batched.seconds, "tokens_per_s": tokens / batched.seconds,
                                         "peak_mem_gib": peak_memory_gib(setup.device),
                                         "ratio": tokens / batched.seconds / loop_rate}
        results[str(n)] = row
    return {"prompts": len(prompts), "loop_prompts": len(looped_prompts), "prompt_len": args.prompt_len,
            "max_new_tokens": args.max_new_tokens, "sample_batch_sizes": args.sample_batch_sizes,
            "target_ratio_at_64": TARGETS["bon_ratio_at_64"], "by_n": results}


# ----------------------------------------------------------------------------- 4. decoding


def kv_bytes_per_token(config, dtype_bytes: int) -> int:
    """K and V of one cached token over all layers (grouped-query attention: num_key_value_heads heads)."""
    head_dim = config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * dtype_bytes


def decode_step_bytes(weight_bytes: int, config, batch: int, context: float, dtype_bytes: int) -> float:
    """The fewest bytes one decode step moves: every weight once, each row's KV cache at `context` tokens
    read once (its new K, V written), and the (batch, vocab) logits written (Pope et al. 2022, §2)."""
    kv = kv_bytes_per_token(config, dtype_bytes) * batch * (context + 1)
    return weight_bytes + kv + batch * config.vocab_size * dtype_bytes


def bench_decode(config, setup: Setup, args, tokenizer) -> dict:
    """The policy's decode step as `pmopt.sampling` runs it (HF forward with its KV cache, one new token per
    row), without the sampler: greedy next tokens fed back, timed over `--decode-steps` steps."""
    reset_memory(setup.device)
    model = build_model("lm", config, setup, setup.dtype, train=False)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # tied weights counted once
    dtype_bytes = torch.finfo(setup.dtype).bits // 8
    cache_kwarg, results = _cache_kwarg(model), {}
    for batch in args.decode_batches:
        reset_memory(setup.device)
        ids = random_ids(batch, args.prompt_len, config.vocab_size, tokenizer.eos_token_id, setup.device)
        with torch.inference_mode():
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            cache, tokens = _cache_of(out), out.logits[:, -1:].argmax(-1)
            watch = Stopwatch(setup.device)
            for step in range(args.warmup + args.decode_steps):
                with watch if step >= args.warmup else contextlib.nullcontext():
                    out = model(input_ids=tokens, use_cache=True, **{cache_kwarg: cache})
                    cache, tokens = _cache_of(out), out.logits[:, -1:].argmax(-1)
        step_s = watch.seconds / args.decode_steps
        context = args.prompt_len + args.warmup + (args.decode_steps - 1) / 2  # mean cached tokens when timed
        moved = decode_step_bytes(weight_bytes, config, batch, context, dtype_bytes)
        results[str(batch)] = {"step_ms": step_s * 1e3, "tokens_per_s": batch / step_s, "bytes_per_step": moved,
                               "gbps": moved / step_s / 1e9,
                               "mbu": moved / step_s / setup.peak_bytes if setup.peak_bytes else None,
                               "floor_ms": moved / setup.peak_bytes * 1e3 if setup.peak_bytes else None,
                               "peak_mem_gib": peak_memory_gib(setup.device)}
    return {"context": args.prompt_len, "steps": args.decode_steps, "weight_bytes": weight_bytes,
            "target_mbu": TARGETS["decode_mbu"], "target_min_batch": TARGET_DECODE_BATCH, "by_batch": results}


# ----------------------------------------------------------------------------- 5. PPO-like step


def response_logprob_loss(policy, sequences: list[list[int]], prompt_lens: list[int], advantages: torch.Tensor,
                          pad_id: int) -> tuple[torch.Tensor, int]:
    """Policy-gradient surrogate -sum_t A * log pi(y_t | ...) / tokens over response tokens: one forward and
    backward over prompt + response, the cost of one PPO minibatch update (the ratio and clip are free)."""
    from trl.trainer.utils import selective_log_softmax

    device = next(policy.parameters()).device
    input_ids, mask = (t.to(device) for t in right_pad(sequences, pad_id))
    logits = policy(input_ids=input_ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    logp = selective_log_softmax(logits, input_ids[:, 1:])  # TRL's row-looped log-softmax: no fp32 copy of all logits
    positions = torch.arange(input_ids.shape[1] - 1, device=device)
    response = (positions[None, :] >= torch.tensor(prompt_lens, device=device)[:, None] - 1) & mask[:, 1:].bool()
    weighted = (logp * advantages.to(device)[:, None]) * response
    return -weighted.sum() / response.sum(), int(mask.sum())


def ppo_step(policy, pm, optimizer, tokenizer, prompts, cfg: SamplingConfig, setup: Setup, seed: int,
             watches: dict) -> int:
    with watches["generation"], setup.autocast():
        gens = sample(policy, tokenizer, prompts, 1, cfg, seed)
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    sequences = [ids + row[0].token_ids for ids, row in zip(prompt_ids, gens, strict=True)]
    with watches["scoring"]:
        scores = pm.score_ids(sequences, batch_size=len(sequences))
    advantages = (scores - scores.mean()) / (scores.std() + 1e-6) if len(scores) > 1 else scores * 0
    with watches["update"]:
        policy.train()
        with setup.autocast():
            loss, tokens = response_logprob_loss(policy, sequences, [len(p) for p in prompt_ids], advantages,
                                                 tokenizer.pad_token_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return tokens


def bench_ppo(config, setup: Setup, args, tokenizer) -> dict:
    reset_memory(setup.device)
    policy = build_model("lm", config, setup, setup.master_dtype, train=True)
    pm = PreferenceModel(build_model("pm", config, setup, setup.dtype, train=False), tokenizer)
    optimizer = make_optimizer(policy, setup.device)
    prompts = make_prompts(args.ppo_batch, args.prompt_len, config.vocab_size, args.seed + 1)
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, batch_size=args.sample_batch_sizes[0])
    idle = {name: contextlib.nullcontext() for name in ("generation", "scoring", "update")}
    watches = {name: Stopwatch(setup.device) for name in idle}
    update_tokens = 0
    for step in range(args.warmup + args.steps):
        timed = step >= args.warmup
        tokens = ppo_step(policy, pm, optimizer, tokenizer, prompts, cfg, setup, args.seed + step,
                          watches if timed else idle)
        update_tokens += tokens if timed else 0
    phases = {name: watch.seconds / args.steps for name, watch in watches.items()}
    params = param_counts(policy)
    update = throughput(update_tokens, watches["update"].seconds, 6 * params["matmul"], 0.0, setup.peak_flops)
    result = {f"{name}_s": seconds for name, seconds in phases.items()}
    result.update(step_s=sum(phases.values()), rollouts=len(prompts), update_tokens_per_s=update["tokens_per_s"],
                  update_mfu=update["mfu"], shares={k: v / sum(phases.values()) for k, v in phases.items()},
                  peak_mem_gib=peak_memory_gib(setup.device))
    return result


# ----------------------------------------------------------------------------- report


def machine(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "load_average": os.getloadavg()}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    return info


def mark(value: float, target: float) -> str:
    return f"target >= {target:g}: {'met' if value >= target else 'missed'}"


def mem(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} GiB"


def train_rows(t: dict, seq_len: int) -> list[str]:
    return [f"PM train (B={t['pairs_per_step']} pairs, L={seq_len}) | {t['tokens_per_s']:,.0f} tok/s | "
            f"{t['mfu']:.1%} | {mark(t['mfu'], t['target_mfu'])} | {mem(t['peak_mem_gib'])}"]


def score_rows(s: dict, seq_len: int) -> list[str]:
    return [f"PM score (batch {s['batch_size']}, L={seq_len}) | {s['tokens_per_s']:,.0f} tok/s | {s['mfu']:.1%} | "
            f"{mark(s['mfu'], s['target_mfu'])} | {mem(s['peak_mem_gib'])}"]


def sampling_rows(r: dict, seq_len: int) -> list[str]:
    rows = []
    for n, b in r["by_n"].items():
        for size, batched in b["batched"].items():
            target = mark(batched["ratio"], TARGETS["bon_ratio_at_64"]) if int(n) == TARGET_N else ""
            rows.append(f"BoN N={n} x {r['prompts']} prompts, batch {size}: batched {batched['tokens_per_s']:,.0f} vs "
                        f"loop {b['loop_tokens_per_s']:,.0f} tok/s | {batched['ratio']:.2f}x | | {target} | "
                        f"{mem(batched['peak_mem_gib'])} / {mem(b['loop_peak_mem_gib'])}")
    return rows


def decode_rows(d: dict, seq_len: int) -> list[str]:
    rows = []
    for batch, b in d["by_batch"].items():
        floor = "" if b["floor_ms"] is None else f" (floor {b['floor_ms']:.2f} ms)"
        mbu = "-" if b["mbu"] is None else f"{b['mbu']:.1%}"
        target = mark(b["mbu"], d["target_mbu"]) if b["mbu"] is not None and int(batch) >= d["target_min_batch"] else ""
        rows.append(f"decode B={batch}, context {d['context']}: {b['step_ms']:.2f} ms/step{floor} | "
                    f"{b['tokens_per_s']:,.0f} tok/s, {b['gbps']:,.1f} GB/s | {mbu} (MBU) | {target} | "
                    f"{mem(b['peak_mem_gib'])}")
    return rows


def ppo_rows(p: dict, seq_len: int) -> list[str]:
    return [f"PPO-like step ({p['rollouts']} rollouts): gen {p['generation_s']:.3f} s, score {p['scoring_s']:.3f} s, "
            f"update {p['update_s']:.3f} s | {p['step_s']:.3f} s | {p['update_mfu']:.1%} (update) | | "
            f"{mem(p['peak_mem_gib'])}"]


ROWS = {"pm_train": train_rows, "pm_score": score_rows, "sampling": sampling_rows, "decode": decode_rows,
        "ppo": ppo_rows}


def table(res: dict) -> str:
    peak, copy, seq_len = res["peak"], res["bandwidth"], res["args"]["seq_len"]
    lines = [f"device: {res['machine'].get('gpu', 'cpu')}; matmul peak {peak['tflops']:.3f} TFLOP/s "
             f"({peak['dtype']}, n = {peak['size']}); copy {copy['gbps']:,.0f} GB/s ({copy['mib']} MiB); "
             f"MFUs divide by {res['peak_tflops_used']:.3f} TFLOP/s, MBUs by {res['peak_gbps_used']:,.0f} GB/s", "",
             "| size | measurement | value | MFU / MBU | target | peak mem |", "|---|---|---:|---:|---|---:|"]
    for size, sections in res["sizes"].items():
        for name, rows in ROWS.items():
            if name not in sections:
                continue
            section = sections[name]
            if "error" in section:
                lines.append(f"| {size} | {name}: {section['error']} | | | | {mem(section['peak_mem_gib'])} |")
                continue
            lines += [f"| {size} | {row} |" for row in rows(section, seq_len)]
    return "\n".join(lines)


SECTION_NAMES = ("pm_train", "pm_score", "sampling", "decode", "ppo")

# Defaults per device: real-size settings on a GPU; on CPU a smoke run (meant for `--sizes tiny`).
DEFAULTS = {
    "cuda": dict(seq_len=1024, batch_size=8, n_values=[16, 64, 256], prompts=16, prompt_len=128, max_new_tokens=128,
                 ppo_batch=64, steps=10, warmup=2, matmul_size=8192, matmul_iters=20, copy_mib=2048, copy_iters=20,
                 decode_batches=[1, 64, 256], decode_steps=32),
    "cpu": dict(seq_len=64, batch_size=2, n_values=[4, 16], prompts=2, prompt_len=16, max_new_tokens=16,
                ppo_batch=4, steps=2, warmup=1, matmul_size=512, matmul_iters=5, copy_mib=64, copy_iters=5,
                decode_batches=[1, 4], decode_steps=4),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--master-dtype", choices=list(DTYPES), default="float32", help="weights being trained")
    parser.add_argument("--sizes", default="0.5b,1.5b", help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--seq-len", type=int, help="tokens per PM sequence, training and scoring (cuda: 1024)")
    parser.add_argument("--batch-size", type=int, help="pairs per PM training step = 2x sequences (cuda: 8)")
    parser.add_argument("--score-batch-size", type=int, default=0, help="sequences per scoring batch (0: 2 x pairs)")
    parser.add_argument("--n-values", type=ints, help="best-of-N sample counts (cuda: 16,64,256)")
    parser.add_argument("--prompts", type=int, help="prompts for the best-of-N comparison (cuda: 16)")
    parser.add_argument("--prompt-len", type=int, help="prompt tokens, best-of-N and PPO (cuda: 128)")
    parser.add_argument("--max-new-tokens", type=int, help="sampled tokens per sequence (cuda: 128)")
    parser.add_argument("--sample-batch-sizes", type=ints, default=[256], help="pmopt.sampling sequences per "
                        "batch, each timed (the first also in the PPO step; default 256, SamplingConfig's)")
    parser.add_argument("--loop-prompts", type=int, default=0, help="time the per-prompt generate loop on the "
                        "first this many prompts (0: all)")
    parser.add_argument("--decode-batches", type=ints, help="rows per decode step, each timed (cuda: 1,64,256)")
    parser.add_argument("--decode-steps", type=int, help="timed decode steps per batch (cuda: 32)")
    parser.add_argument("--ppo-batch", type=int, help="rollouts per PPO step, one sample per prompt (cuda: 64)")
    parser.add_argument("--steps", type=int, help="timed steps: training, scoring batches, PPO (cuda: 10)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (cuda: 2)")
    parser.add_argument("--attn", default="sdpa", help="attn_implementation: sdpa, eager, flash_attention_2")
    parser.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in training")
    parser.add_argument("--matmul-size", type=int, help="n of the peak matmul (cuda: 8192)")
    parser.add_argument("--matmul-iters", type=int)
    parser.add_argument("--copy-mib", type=int, help="MiB of the bandwidth copy (cuda: 2048)")
    parser.add_argument("--copy-iters", type=int)
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="divide MFUs by this (datasheet) peak "
                        "instead of the measured matmul peak")
    parser.add_argument("--peak-gbps", type=float, default=0.0, help="divide MBUs by this (datasheet) bandwidth "
                        "instead of the measured copy bandwidth")
    parser.add_argument("--sections", default=",".join(SECTION_NAMES), help="comma-separated, from "
                        f"{', '.join(SECTION_NAMES)}")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the figures here as JSON")
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.sizes = [s for s in args.sizes.split(",") if s]
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in args.sizes if s not in SHAPES] + [s for s in args.sections if s not in SECTION_NAMES]
    counts = [*args.n_values, *args.sample_batch_sizes, *args.decode_batches, args.steps, args.decode_steps]
    if unknown or args.warmup < 0 or args.loop_prompts < 0 or not all(counts) or min(counts) < 1:
        parser.error(f"bad --sizes/--sections {unknown}, or a count below 1 (--n-values, --sample-batch-sizes, "
                     "--decode-batches, --steps, --decode-steps) or below 0 (--warmup, --loop-prompts)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible to torch")
    return args


SECTIONS = {"pm_train": bench_pm_train, "pm_score": bench_pm_score, "sampling": bench_sampling,
            "decode": bench_decode, "ppo": bench_ppo}


def guarded(bench, config, setup: Setup, args, tokenizer) -> dict:
    """One section; running out of GPU memory is a result (recorded with the peak), not the end of the run."""
    try:
        return bench(config, setup, args, tokenizer)
    except torch.OutOfMemoryError:
        peak = peak_memory_gib(setup.device)
    reset_memory(setup.device)  # out of the except block: its traceback no longer holds the section's tensors
    return {"error": "out of memory", "peak_mem_gib": peak}


def main(argv=None) -> dict:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:  # CPU: on a shared machine, 1 thread avoids OpenMP threads spinning against other jobs
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    peak = matmul_peak(device, DTYPES[args.dtype], args.matmul_size, args.matmul_iters)
    copy = copy_bandwidth(device, args.copy_mib, args.copy_iters)
    peak_tflops, peak_gbps = args.peak_tflops or peak["tflops"], args.peak_gbps or copy["gbps"]
    setup = Setup(device, DTYPES[args.dtype], DTYPES[args.master_dtype], args.attn, args.grad_ckpt, peak_tflops * 1e12,
                  peak_gbps * 1e9)
    res = {"machine": machine(device), "args": {k: v for k, v in vars(args).items() if k != "out"}, "peak": peak,
           "bandwidth": copy, "peak_tflops_used": peak_tflops, "peak_gbps_used": peak_gbps, "targets": TARGETS,
           "sizes": {}}
    for size in args.sizes:
        tokenizer = build_tokenizer(SHAPES[size]["vocab_size"])
        config = model_config(size, tokenizer)
        res["sizes"][size] = {"config": dict(SHAPES[size]), "section_s": {}}
        for name in args.sections:
            begin = time.perf_counter()
            res["sizes"][size][name] = guarded(SECTIONS[name], config, setup, args, tokenizer)
            res["sizes"][size]["section_s"][name] = time.perf_counter() - begin
            write(res, args.out)  # after every section: a run stopped at its time limit keeps what it measured
    res["machine"]["load_average_end"] = os.getloadavg()
    write(res, args.out)
    print(table(res))
    return res


def write(res: dict, out: str | None) -> None:
    if out:
        atomic_write_text(Path(out), json.dumps(res, indent=2, default=str, allow_nan=False) + "\n")


if __name__ == "__main__":
    main()
