"""Training prompts of an RL run: a prompt file, or a data source's own generator (the synthetic world's,
probe prompts held out), and which of them each iteration samples."""

from __future__ import annotations

import torch

from pmopt import sources
from pmopt.io import PmoptError, read_jsonl
from pmopt.records import validate_prompt
from pmopt.rl.config import PPOConfig


def load_training_prompts(cfg: PPOConfig) -> list[dict]:
    """Validated training prompt records {id, prompt, meta}, before any model is loaded."""
    p = cfg.prompts
    if p.file:
        records = read_jsonl(p.file, validate_prompt)
        if not records:
            raise PmoptError(f"{p.file}: no prompt records")
        return records[: p.n_prompts]
    return sources.open_path(p.world, "prompts.world").training_prompts(
        p.n_prompts, cfg.seed, exclude_probe_prompts=p.exclude_probe_prompts, kinds=p.kinds, templates=p.templates)


def step_prompt_indices(n_prompts: int, batch: int, step: int, seed: int) -> list[int]:
    """Prompts of iteration `step` (1-based): consecutive slices of seeded permutations, one per pass
    over the prompts, so a resumed run draws exactly the prompts an uninterrupted one would."""
    out, start, perms = [], (step - 1) * batch, {}
    for position in range(start, start + batch):
        epoch, offset = divmod(position, n_prompts)
        if epoch not in perms:
            generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perms[epoch] = torch.randperm(n_prompts, generator=generator).tolist()
        out.append(perms[epoch][offset])
    return out


__all__ = ["load_training_prompts", "step_prompt_indices"]
