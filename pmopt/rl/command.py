"""`pmopt ppo CONFIG --out DIR`: optimise a policy against a reward with the RL method the config names
(docs/ARCHITECTURE.md §7): `method: ppo`, pmopt's own loop (`pmopt.rl.ppo`), or `method: rloo`, TRL's
RLOOTrainer (`pmopt.rl.rloo`). A new method is a module of its own and one line in `run_rl`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pmopt.config import load_config
from pmopt.io import PmoptError, agreed_out_dir, prepare_out_dir
from pmopt.rl.config import PPOConfig
from pmopt.rl.setup import STAGE, torch_threads


def ppo_command(args) -> Path:
    """`pmopt ppo CONFIG [--set k=v] [--out DIR]`."""
    if args.config is None:
        raise PmoptError("pmopt ppo needs a CONFIG (e.g. configs/ppo/world.yaml)")
    cfg = load_config(PPOConfig, args.config, args.overrides)
    return run_rl(cfg, prepare_out_dir(agreed_out_dir(args.out, STAGE, _process_state), STAGE))


def _process_state():
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def run_rl(cfg: PPOConfig, out: str | Path, reward_fn=None) -> Path:
    """Optimise `cfg.policy` against the reward into `out` with `cfg.method` (resuming if `out` has checkpoints);
    returns `out`. `reward_fn(prompts, responses, metas) -> Tensor` replaces the configured reward (tests,
    custom rewards)."""
    with torch_threads(cfg.threads):
        if cfg.method == "rloo":
            from pmopt.rl.rloo import run_rloo  # TRL is imported only by the runs that use it

            return run_rloo(cfg, out, reward_fn)
        from pmopt.rl.ppo import train

        return train(cfg, Path(out), reward_fn)


__all__ = ["ppo_command", "run_rl"]
