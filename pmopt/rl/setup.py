"""What every RL run does before its loop, whichever the method (`ppo.py`'s own loop, `rloo.py`'s TRL
trainer): check the inputs, write config.yaml and the manifest, set torch's threads, and build the reward
the policy is optimised against and the gold reward it is measured by (docs/ARCHITECTURE.md §7).

Rewards are `pmopt.rewards` rewards, so RL and best-of-N score with the same code; the gold reward is a
data source's own (the synthetic world's, found by its directory through `pmopt.sources`). RL uses
rewards as float32 tensors (`.float()` on a source's float64 scores rounds exactly as building a
float32 tensor from them would).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from pmopt import sources
from pmopt.config import ConfigError, dump_yaml, to_dict
from pmopt.io import Manifest, PmoptError, atomic_write_text
from pmopt.rewards import Reward, RewardSpec, build_reward, registered_kinds
from pmopt.rl.config import PPOConfig
from pmopt.rl.prompts import load_training_prompts

STAGE = "ppo"  # both methods write the `ppo` stage of a run (its curve rows are `method: ppo`)


@contextmanager
def torch_threads(n: int):
    """torch's CPU thread count for the run (0: unchanged), restored afterwards. Tiny models on a busy
    machine run far faster on one thread than on OpenMP threads that spin waiting for a shared core."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_inputs(cfg: PPOConfig) -> None:
    """Fail on bad paths, prompts and probe sets before any model is loaded or file written."""
    from pmopt.policy import check_model_path
    from pmopt.probes.run import load_probe_sets

    check_model_path(cfg.policy.path, "policy.path")
    if cfg.sampling.backend == "vllm":
        from pmopt.sampling_vllm import check_policy

        check_policy(cfg.policy.path, "sampling.backend", cfg.policy.trust_remote_code)
    if cfg.reward.kind == "pm" and not Path(cfg.reward.path).exists():
        raise PmoptError(f"reward.path: {cfg.reward.path} does not exist (a `pmopt train-pm` output directory)")
    if cfg.reward.kind not in registered_kinds():  # a data source's reward: the source must offer it
        spec = reward_spec(cfg)
        if not spec.path:
            raise PmoptError(f"reward.kind: '{cfg.reward.kind}' is not a registered reward kind, so it is a data "
                             "source's reward, and no source directory is given (reward.world or prompts.world)")
        offered = sources.open_path(spec.path, "reward.world").reward_kinds()
        if cfg.reward.kind not in offered:
            raise PmoptError(f"reward.kind: unknown kind '{cfg.reward.kind}' (registered: "
                             f"{', '.join(registered_kinds())}; the source at {spec.path} offers: "
                             f"{', '.join(offered) or 'none'})")
    if cfg.value.path:
        check_model_path(cfg.value.path, "value.path")
    for tracker in cfg.report_to:
        if importlib.util.find_spec(tracker) is None:
            raise ConfigError(f"report_to: {tracker!r} is not installed (pip install {tracker})")
    load_training_prompts(cfg)
    world = cfg.probe_world
    load_probe_sets(cfg.probes.names, {n: cfg.probes.sources.get(n) or world for n in cfg.probes.names},
                    cfg.probes.max_prompts)


def start_run(cfg: PPOConfig, out: Path, accelerator) -> Manifest | None:
    """config.yaml + manifest (main process); trackers when `report_to` asks for them."""
    manifest = None
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dump_yaml(cfg))
        manifest = Manifest(out)
        manifest.set("seed", cfg.seed)
        manifest.mark(STAGE, "running", processes=accelerator.num_processes, method=cfg.method)
    if cfg.report_to:
        # trackio names a run; the others take the project's name alone
        init_kwargs = {"trackio": {"name": str(out)}} if "trackio" in cfg.report_to else {}
        accelerator.init_trackers("pmopt-ppo", config=flat_config(to_dict(cfg)), init_kwargs=init_kwargs)
    accelerator.wait_for_everyone()
    return manifest


def flat_config(data: dict, prefix: str = "") -> dict:
    """Trackers take flat scalar hyper-parameters."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str, bool)):
            out[f"{prefix}{key}"] = value
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


# ============================================================================ rewards


def reward_spec(cfg: PPOConfig) -> RewardSpec:
    """The `reward` section as a `RewardSpec`: a PM's path, or for a source's reward (gold, raters) the
    source directory (`reward.world`, default `prompts.world`)."""
    r = cfg.reward
    path = r.path if r.kind in registered_kinds() else (r.world or cfg.prompts.world)
    return RewardSpec(name=cfg.reward_label, kind=r.kind, path=path or None, prefix=r.prefix, aggregate=r.aggregate,
                      lam=r.lam, batch_size=r.batch_size)


def load_reward(cfg: PPOConfig, device) -> Reward:
    """The reward the policy is optimised against: a PM / ensemble (loaded on `device`), or a source's gold
    or raters reward."""
    return build_reward(reward_spec(cfg), cfg.pm_options(device))


def gold_reward_at(path: str | Path | None) -> Reward | None:
    """The gold reward of the data source at `path` (e.g. a world dir), or None when `path` is not a
    source directory or its source has no gold reward."""
    if not path or not sources.is_source_dir(path):
        return None
    if "gold" not in sources.open_path(path).reward_kinds():
        return None
    return build_reward(RewardSpec(name="gold", kind="gold", path=str(path)))


def finite_scores(reward: Reward | None, prompts: Sequence, responses: Sequence[str],
                  metas: Sequence[dict]) -> list[float] | None:
    """`reward`'s scores as floats when every one is finite (all records are the reward's source's), else None."""
    if reward is None:
        return None
    scores = reward(prompts, responses, metas)
    return scores.tolist() if bool(torch.isfinite(scores).all()) else None


__all__ = ["STAGE", "torch_threads", "check_inputs", "start_run", "flat_config", "reward_spec", "load_reward",
           "gold_reward_at", "finite_scores"]
