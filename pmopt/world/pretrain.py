"""Pretraining the world's base policy from scratch: a tiny Llama-architecture causal LM.

The loss is next-token cross-entropy on the response tokens only (prompt tokens are context), so the
policy's capacity goes to what it says: the facts, and the habits planted by the corpus mix. Saved
with `save_pretrained` (safetensors) next to its tokenizer; it loads with `AutoModelForCausalLM`.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch

from pmopt import console
from pmopt.faults import fault_point
from pmopt.text import encode, join, render_prompt
from pmopt.world.config import PolicyModelConfig
from pmopt.world.models import tiny_llama_config

IGNORE = -100


def tokenize_dialogue(tokenizer, messages: list[dict], response: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one dialogue, labels masked on the prompt: the rendering of pmopt.text."""
    prompt_text = render_prompt(messages, tokenizer)
    prompt_ids = encode(tokenizer, prompt_text)
    full_ids = encode(tokenizer, join(prompt_text, response)) + [tokenizer.eos_token_id]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("prompt tokens are not a prefix of prompt+response tokens")
    return full_ids, [IGNORE] * len(prompt_ids) + full_ids[len(prompt_ids):]


def _batch(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (row, lab) in enumerate(examples):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _lr_at(step: int, cfg: PolicyModelConfig) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain_policy(tokenizer, examples: list[tuple[list[int], list[int]]], cfg: PolicyModelConfig,
                    seed: int, out_dir: Path, progress: bool = True, checkpoint_dir: Path | None = None) -> dict:
    """Train a fresh tiny LM on `examples` and save it to `out_dir`; returns training stats.

    With `checkpoint_dir` and `cfg.checkpoint_every` > 0, state is saved every that many steps and a
    rerun resumes from the newest checkpoint (`pmopt.world.checkpoints`) to the same final weights.
    """
    from transformers import AutoModelForCausalLM, GenerationConfig

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    max_len = max(len(ids) for ids, _ in examples)
    config = tiny_llama_config(tokenizer, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                               num_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                               max_position_embeddings=max(128, 2 * max_len))
    model = AutoModelForCausalLM.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    model.train()
    checkpoints = None
    start, losses = 0, []
    if checkpoint_dir is not None and cfg.checkpoint_every > 0:
        from pmopt.world.checkpoints import PretrainCheckpoints, fingerprint

        checkpoints = PretrainCheckpoints(checkpoint_dir, fingerprint(cfg, seed, examples))
        start, losses = checkpoints.resume(model, optimizer, rng)
    bar = console.bar(total=cfg.steps, desc="world: pretrain policy", unit="step", initial=start) if progress else None
    for step in range(start, cfg.steps):
        fault_point("pretrain.step")
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, cfg)
        batch = _batch(rng.sample(examples, cfg.batch_size), tokenizer.pad_token_id)
        loss = model(**batch).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretraining loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update()
            if step % 10 == 0 or step == cfg.steps - 1:  # loss: mean of the last 50 steps
                bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}", refresh=False)
        if checkpoints is not None and (step + 1) % cfg.checkpoint_every == 0:
            checkpoints.save(step + 1, model, optimizer, rng, losses)
    if bar is not None:
        bar.close()
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    tail = losses[-50:]
    return {"final_loss": sum(tail) / len(tail), "steps": cfg.steps,
            "parameters": sum(p.numel() for p in model.parameters())}
