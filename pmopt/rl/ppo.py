"""PPO against a preference model with a KL leash to the reference (docs/ARCHITECTURE.md §7); the `pmopt ppo`
command that runs it (or RLOO) is `pmopt.rl.command`.

Read top to bottom (cleanrl style); the math lives in `ppo_math.py`, batches in `batches.py`, the models in
`models.py`, prompts in `prompts.py`, probes in `evaluation.py`, what both RL methods set up in `setup.py`:

1. setup: config, accelerator, every input validated before anything is written
2. models: policy (full or LoRA), frozen reference (a copy, or the base with adapters disabled), value
   model (scalar head initialised from the policy or the PM), the reward (PM, ensemble or gold)
3. optimizer, LR schedule, `accelerator.prepare`; resume from the newest complete checkpoint
4. per iteration:
   a. rollout: sample one response per prompt (streams keyed by seed, step and prompt position), with
      pmopt's sampler or a colocated vLLM engine that loads the policy's weights after every update;
      the log-probs PPO trains on are the policy's own, recomputed in 4b, never the engine's
   b. score: PM score at the end of the response - beta * per-token KL; EOS penalty (Ziegler et al. 2019)
   c. advantages: GAE (gamma = 1, lambda = 0.95), whitened (Schulman et al. 2016)
   d. update: `ppo_epochs` passes over shuffled minibatches, clipped policy and value losses
      (Schulman et al. 2017), gradient accumulation and clipping; a non-finite loss stops the run
   e. log `ppo/*` metrics; adapt beta
   f. probes every k steps -> curve rows against step and measured KL
   g. checkpoint every k steps
5. export the policy (`OUT/policy`, a plain HF directory), curves.csv; mark the stage done

Under `accelerate launch` each process samples and scores its shard of the step's prompts; gradients
are averaged by DDP / DeepSpeed; statistics are reduced across processes; only the main process
writes files and runs probes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pmopt import console
from pmopt.config import ConfigError
from pmopt.faults import fault_point
from pmopt.io import Manifest, PmoptError, append_jsonl
from pmopt.records import write_curves_csv
from pmopt.rl import ppo_math
from pmopt.rl.batches import (
    Batch,
    PolicyAndValue,
    encode_queries,
    pack,
    reference_of,
    response_logits,
    token_values,
)
from pmopt.rl.checkpoint import export_policy, latest_step_checkpoint, resume, save_checkpoint
from pmopt.rl.config import PPOConfig
from pmopt.rl.evaluation import ProbeSchedule, write_probes
from pmopt.rl.models import load_policy_and_reference, load_value_model
from pmopt.rl.prompts import load_training_prompts, step_prompt_indices
from pmopt.rl.setup import (
    STAGE,
    check_inputs,
    finite_scores,
    gold_reward_at,
    load_reward,
    start_run,
)
from pmopt.sampling import close_engines, sample, weights_changed


class NonFiniteError(PmoptError):
    """A NaN or Inf in a reward or a loss: the run stops before the bad update."""


@dataclass
class Sizes:
    """Per-process batch sizes derived from the global ones in the config."""

    rollout: int  # prompts this process samples per iteration
    minibatch: int  # sequences this process contributes to one optimizer update
    micro: int  # sequences per forward/backward (minibatch / gradient_accumulation_steps)


def batch_sizes(cfg: PPOConfig, num_processes: int) -> Sizes:
    t = cfg.train
    for name in ("rollout_batch_size", "minibatch_size"):
        if getattr(t, name) % num_processes:
            raise ConfigError(f"train.{name} ({getattr(t, name)}) must be a multiple of the number of "
                              f"processes ({num_processes})")
    minibatch = t.minibatch_size // num_processes
    if minibatch % t.gradient_accumulation_steps:
        raise ConfigError(f"train.minibatch_size per process ({minibatch}) must be a multiple of "
                          f"train.gradient_accumulation_steps ({t.gradient_accumulation_steps})")
    return Sizes(t.rollout_batch_size // num_processes, minibatch, minibatch // t.gradient_accumulation_steps)


# ============================================================================ entry points


# ============================================================================ the loop


def train(cfg: PPOConfig, out: Path, reward_fn=None) -> Path:
    # ---------------------------------------------------------------- 1. setup
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    check_inputs(cfg)
    # cpu=True without CUDA: processes started by torchrun (`accelerate launch --multi_gpu` on CPUs) then
    # join one gloo group instead of each believing it is alone.
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
                              mixed_precision=cfg.train.mixed_precision, log_with=cfg.report_to or None,
                              project_dir=str(out))
    sizes = batch_sizes(cfg, accelerator.num_processes)
    set_seed(cfg.seed)
    prompts = load_training_prompts(cfg)

    # ---------------------------------------------------------------- 2. models
    policy, ref_model, tokenizer = load_policy_and_reference(cfg, accelerator.device)
    value_model = load_value_model(cfg, tokenizer)
    reward_fn = reward_fn or load_reward(cfg, accelerator.device)
    probes = ProbeSchedule(cfg, tokenizer, reward_fn, gold_reward_at(cfg.probe_world))
    gold_fn = gold_reward_at(cfg.prompts.world)  # the training prompts' gold reward, logged (not optimised)

    # ---------------------------------------------------------------- 3. optimizer, schedule, resume
    model = PolicyAndValue(policy, value_model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
    scheduler = lr_schedule(cfg, optimizer)
    configure_deepspeed(accelerator, cfg, sizes)
    model, optimizer = accelerator.prepare(model, optimizer)
    core = accelerator.unwrap_model(model)
    if ref_model is not None:  # the same dtype as the (possibly bf16) trained copy: KL is 0 at step 0
        ref_model.to(next(core.policy.parameters()).dtype)
    kl_ctl = (ppo_math.AdaptiveKLController(cfg.kl.beta, cfg.kl.target, cfg.kl.horizon) if cfg.kl.adaptive
              else ppo_math.FixedKLController(cfg.kl.beta))
    manifest = start_run(cfg, out, accelerator)
    start = resume(out, accelerator, core, optimizer, scheduler, kl_ctl, cfg.train.steps)
    weights_changed(core.policy, cfg.sampling)  # a vLLM rollout engine starts from the policy's directory
    if accelerator.is_main_process and start == 0:
        write_probes(out, probes.evaluate(core.policy, ref_model, 0), accelerator)
    accelerator.wait_for_everyone()
    bar = progress_bar(cfg, start) if accelerator.is_main_process else None

    for step in range(start + 1, cfg.train.steps + 1):
        fault_point("ppo.step")
        timer = Timer()
        # ------------------------------------------------------------ 4a. rollout
        idx = step_prompt_indices(len(prompts), cfg.train.rollout_batch_size, step, cfg.seed)
        local = range(accelerator.process_index * sizes.rollout, (accelerator.process_index + 1) * sizes.rollout)
        records = [prompts[idx[i]] for i in local]
        gens = [row[0] for row in sample(core.policy, tokenizer, [r["prompt"] for r in records], 1, cfg.sampling,
                                         seed=cfg.seed * 100_003 + step, keys=[f"{r['id']}@{i}" for r, i in
                                                                               zip(records, local, strict=True)])]
        timer.lap("generation")

        # ------------------------------------------------------------ 4b. score: PM - beta * KL
        batch = pack(encode_queries(tokenizer, [r["prompt"] for r in records], cfg.sampling.chat_template_kwargs),
                     [g.token_ids for g in gens],
                     tokenizer.pad_token_id, accelerator.device)
        with torch.no_grad(), accelerator.autocast():
            old_logprobs, old_values, ref_logprobs, token_kl = rollout_forward(core, ref_model, batch, sizes.micro,
                                                                               cfg.sampling.temperature)
        metas = [r.get("meta", {}) for r in records]
        scores = reward_fn([r["prompt"] for r in records], [g.response for g in gens], metas)
        scores = scores.to(accelerator.device, torch.float32)
        stop_if_not_finite(accelerator, scores, f"step {step}: reward (PM score)", out)
        mask = batch.response_mask
        has_eos = torch.tensor([g.finished for g in gens], device=accelerator.device)
        kl = ppo_math.kl_penalty(old_logprobs, ref_logprobs, cfg.kl.estimator)
        rewards = ppo_math.per_token_rewards(scores, kl, mask, kl_ctl.value, cfg.reward.missing_eos_penalty, has_eos)
        if cfg.train.whiten_rewards:
            rewards = ppo_math.masked_whiten(rewards, mask, shift_mean=False)
        timer.lap("scoring")

        # ------------------------------------------------------------ 4c. advantages
        advantages, returns = ppo_math.gae(rewards, old_values, mask, cfg.train.gamma, cfg.train.lam)
        advantages = ppo_math.masked_whiten(advantages, mask)

        # ------------------------------------------------------------ 4d. update
        rollout = {"old_logprobs": old_logprobs, "old_values": old_values, "advantages": advantages,
                   "returns": returns}
        lr = scheduler.get_last_lr()[0]  # the learning rate of this step's first update
        stats = update(cfg, accelerator, model, optimizer, scheduler, batch, rollout, sizes, step, out)
        weights_changed(core.policy, cfg.sampling)  # a vLLM engine loads them before the next rollout
        timer.lap("update")

        # ------------------------------------------------------------ 4e. log; adapt beta
        gold = finite_scores(gold_fn, [r["prompt"] for r in records], [g.response for g in gens], metas)
        metrics = step_metrics(accelerator, cfg, step, batch, gens, scores, (old_logprobs, ref_logprobs, token_kl),
                               rewards, kl_ctl.value, stats, timer, lr, gold)
        metrics.update(global_means(accelerator, getattr(reward_fn, "extra", {}), 1.0))  # e.g. ensemble spread
        kl_ctl.update(metrics["ppo/kl"], cfg.train.rollout_batch_size)
        if accelerator.is_main_process:
            append_jsonl(out / "metrics.jsonl", metrics)
            show_progress(bar, metrics)
        # the step is the trackers' x axis, not a metric (trackio reserves the name)
        accelerator.log({k: v for k, v in metrics.items() if k != "step"}, step=step)

        # ------------------------------------------------------------ 4f. probes
        if accelerator.is_main_process and probes.due(step):
            write_probes(out, probes.evaluate(core.policy, ref_model, step), accelerator)
        accelerator.wait_for_everyone()

        # ------------------------------------------------------------ 4g. checkpoint
        if step % cfg.checkpoint.every == 0 or step == cfg.train.steps:
            state = {"kl_ctl": kl_ctl.state_dict(), "scheduler": scheduler.state_dict(), "seed": cfg.seed}
            save_checkpoint(accelerator, out / "checkpoints", step, core, optimizer, state, cfg.checkpoint.keep)

    # ---------------------------------------------------------------- 5. export
    if accelerator.is_main_process:
        export_policy(core.policy, tokenizer, out / "policy")
        write_curves_csv(out, STAGE)
        manifest.mark(STAGE, "done", steps=cfg.train.steps)
    accelerator.wait_for_everyone()
    close_engines()  # before end_training, which takes down the process group the engine joined
    accelerator.end_training()
    return out


# ============================================================================ 3. schedule, resume


def configure_deepspeed(accelerator, cfg: PPOConfig, sizes: Sizes) -> None:
    """DeepSpeed sizes its engine from a dataloader, which this loop does not have: set them from the config
    (micro-batch per GPU, accumulation, clipping) so that DeepSpeed's counters match the loop's."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    plugin.deepspeed_config.update({"train_micro_batch_size_per_gpu": sizes.micro,
                                    "gradient_accumulation_steps": cfg.train.gradient_accumulation_steps,
                                    "gradient_clipping": cfg.train.max_grad_norm})


def lr_schedule(cfg: PPOConfig, optimizer):
    """Linear warmup over `warmup_steps` updates, then constant or linear decay to 0 over all updates."""
    t = cfg.train
    total = t.steps * t.ppo_epochs * (t.rollout_batch_size // t.minibatch_size)

    def factor(update: int) -> float:
        if update < t.warmup_steps:
            return (update + 1) / t.warmup_steps
        if t.lr_schedule == "linear":
            return max(0.0, 1.0 - (update - t.warmup_steps) / max(1, total - t.warmup_steps))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ============================================================================ 4. rollout, update, metrics


class Timer:
    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self.last
        self.last = now


def rollout_forward(core, ref_model, batch: Batch, chunk: int, temperature: float):
    """log pi_old, V_old and log pi_ref of the sampled responses, and the exact KL(pi_old || ref) of each
    position's next-token distributions (`ppo_math.kl_from_logits`), `chunk` rows at a time."""
    logprobs, values, ref_logprobs, token_kl = [], [], [], []
    for rows in torch.arange(batch.input_ids.shape[0], device=batch.input_ids.device).split(chunk):
        part = batch.rows(rows)
        logits = response_logits(core.policy, part, temperature)
        logprobs.append(ppo_math.logprobs_from_logits(logits, part.response_ids))
        values.append(token_values(core.value_model, part))
        with reference_of(core.policy, ref_model) as ref:
            ref_logits = response_logits(ref, part, temperature)
        ref_logprobs.append(ppo_math.logprobs_from_logits(ref_logits, part.response_ids))
        token_kl.append(ppo_math.kl_from_logits(logits, ref_logits))
    return torch.cat(logprobs), torch.cat(values), torch.cat(ref_logprobs), torch.cat(token_kl)


def stop_if_not_finite(accelerator, value: torch.Tensor, what: str, out: Path) -> None:
    """Every process agrees, then stops before the update; the last good checkpoint stays."""
    bad = (~torch.isfinite(value.detach())).sum().float().reshape(1)
    if float(accelerator.reduce(bad, reduction="sum")) == 0:
        return
    checkpoint = latest_step_checkpoint(out / "checkpoints")
    kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint had been written yet"
    message = f"{what} is NaN or Inf; stopped before updating the policy; {kept}"
    if accelerator.is_main_process:
        Manifest(out).mark(STAGE, "failed", error=message)
    raise NonFiniteError(message)


def update(cfg: PPOConfig, accelerator, model, optimizer, scheduler, batch: Batch, rollout: dict,
           sizes: Sizes, step: int, out: Path) -> dict[str, float]:
    """`ppo_epochs` passes over shuffled minibatches; returns mean statistics over micro-batches.

    With `train.target_kl`, the remaining passes are skipped once a minibatch's approx_kl (averaged over
    processes, so every process stops together) exceeds it (the early stop of cleanrl / OpenAI baselines).
    `ppo/early_stop` is 1 only when updates were skipped: after the last minibatch nothing is left to stop.
    """
    t = cfg.train
    totals: dict[str, float] = {}
    n_micro = updates = 0
    planned = t.ppo_epochs * -(-sizes.rollout // sizes.minibatch)
    for epoch in range(t.ppo_epochs):
        # A generator seeded by (seed, step, epoch): a resumed run shuffles exactly as an uninterrupted one.
        generator = torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) * 1_009 + epoch)
        order = torch.randperm(sizes.rollout, generator=generator).to(batch.response_mask.device)
        for minibatch in order.split(sizes.minibatch):
            mb_kl = 0.0
            for micro in minibatch.split(sizes.micro):
                stats = micro_step(cfg, accelerator, model, optimizer, scheduler, batch, rollout, micro, step, epoch,
                                   out)
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                mb_kl += stats["ppo/approx_kl"] / t.gradient_accumulation_steps
                n_micro += 1
            updates += 1
            if (t.target_kl is not None and updates < planned
                    and global_means(accelerator, {"kl": mb_kl}, 1.0)["kl"] > t.target_kl):
                return {**{k: v / n_micro for k, v in totals.items()}, "ppo/updates": updates, "ppo/early_stop": 1.0}
    return {**{k: v / n_micro for k, v in totals.items()}, "ppo/updates": updates, "ppo/early_stop": 0.0}


def micro_step(cfg: PPOConfig, accelerator, model, optimizer, scheduler, batch: Batch, rollout: dict,
               micro: torch.Tensor, step: int, epoch: int, out: Path) -> dict[str, float]:
    """Clipped policy + value loss on one micro-batch; the optimizer steps once per minibatch."""
    t, mask = cfg.train, batch.response_mask[micro]
    with accelerator.accumulate(model):
        logprobs, entropy, values = model(batch.rows(micro), cfg.sampling.temperature)
        pg_loss, clipfrac, approx_kl = ppo_math.policy_loss(logprobs, rollout["old_logprobs"][micro],
                                                      rollout["advantages"][micro], mask, t.clip_range)
        vf_loss, vf_clipfrac = ppo_math.value_loss(values, rollout["old_values"][micro], rollout["returns"][micro], mask,
                                             t.clip_range_value)
        loss = pg_loss + t.vf_coef * vf_loss
        stop_if_not_finite(accelerator, loss, f"step {step}, PPO epoch {epoch}: the loss", out)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
        optimizer.step()
        if accelerator.sync_gradients:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    stats = {"ppo/policy_loss": pg_loss, "ppo/value_loss": vf_loss, "ppo/clipfrac": clipfrac,
             "ppo/approx_kl": approx_kl, "ppo/value_clipfrac": vf_clipfrac, "ppo/entropy": ppo_math.masked_mean(entropy, mask)}
    return {key: float(value.detach()) for key, value in stats.items()}


def global_means(accelerator, sums: dict[str, float], count: float) -> dict[str, float]:
    """Sums over this process's rows -> means over all processes' rows."""
    keys = sorted(sums)
    local = torch.tensor([sums[k] for k in keys] + [count], dtype=torch.float64, device=accelerator.device)
    total = accelerator.reduce(local, reduction="sum")
    return {k: float(total[i] / total[-1]) for i, k in enumerate(keys)}


def step_metrics(accelerator, cfg: PPOConfig, step: int, batch: Batch, gens, scores, kl_terms, rewards,
                 beta: float, stats: dict, timer: Timer, lr: float, gold: list[float] | None) -> dict:
    """One metrics.jsonl row: rollout statistics (means over every process's sequences), update statistics,
    timings. `ppo/kl` is the mean per-sequence KL(pi_old || ref) on the rollout, Rao-Blackwellised (the exact
    per-position KL summed over each response; what the adaptive controller tracks); `ppo/kl_k1` and
    `ppo/kl_k3` are the sample estimates, and `ppo/non_score_reward` is -beta times the configured
    estimator's sum (the penalty in the reward)."""
    mask, (logprobs, ref_logprobs, token_kl) = batch.response_mask, kl_terms
    seq = {est: ppo_math.masked_sum(ppo_math.kl_penalty(logprobs, ref_logprobs, est), mask, dim=1) for est in ("k1", "k3")}
    penalised = seq[cfg.kl.estimator]
    lengths = mask.sum(1)
    sums = {"ppo/reward": scores.sum(), "ppo/reward_sq": (scores**2).sum(),
            "ppo/kl": ppo_math.masked_sum(token_kl, mask), "ppo/kl_k1": seq["k1"].sum(), "ppo/kl_k3": seq["k3"].sum(),
            "ppo/non_score_reward": -beta * penalised.sum(),
            "ppo/reward_total": ppo_math.masked_sum(rewards, mask, dim=1).sum(), "ppo/response_length": lengths.sum(),
            "ppo/eos_rate": float(sum(g.finished for g in gens))}
    if gold is not None:
        sums["ppo/gold_reward"] = float(sum(gold))
    means = global_means(accelerator, {k: float(v) for k, v in sums.items()}, float(len(gens)))
    means["ppo/reward_std"] = max(0.0, means.pop("ppo/reward_sq") - means["ppo/reward"] ** 2) ** 0.5
    stats = global_means(accelerator, stats, 1.0) if accelerator.num_processes > 1 else stats
    seconds = time.perf_counter() - timer.start
    tokens = float(accelerator.reduce(lengths.sum().reshape(1), reduction="sum"))
    return {"step": step, **means, **stats, "ppo/beta": beta, "ppo/lr": lr,
            **{f"time/{k}": v for k, v in timer.laps.items()}, "time/step": seconds,
            "ppo/tokens_per_second": tokens / seconds}


def progress_bar(cfg: PPOConfig, start: int):
    """One bar over the PPO steps (a resumed run starts at its checkpoint's step)."""
    bar = console.bar(total=cfg.train.steps, desc=f"ppo: {cfg.reward_label}", unit="step")
    bar.update(start)
    return bar


def show_progress(bar, metrics: dict) -> None:
    """The step's PM reward and KL to the reference on the bar (every metric is in metrics.jsonl)."""
    bar.update()
    bar.set_postfix(reward=f"{metrics['ppo/reward']:.3f}", kl=f"{metrics['ppo/kl']:.3f}", refresh=False)
    if metrics["step"] == bar.total:
        bar.close()


__all__ = ["train", "PPOConfig", "NonFiniteError", "batch_sizes", "Sizes"]
