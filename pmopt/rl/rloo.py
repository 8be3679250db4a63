"""`method: rloo`: TRL's RLOOTrainer behind the same config, probes and curve rows as pmopt's PPO.

RLOO (Ahmadian et al. 2024, "Back to Basics") samples `rloo.num_generations` completions per prompt and
uses the mean reward of the other completions of the same prompt as the baseline; the KL to the
reference enters the sequence reward as beta * sum_t k1 (TRL's choice). The reward functions are

  pm    the PM (or ensemble) being optimised, wrapping `PreferenceModel.score` (weight 1; minus the
        missing-EOS penalty for truncated completions, as in pmopt's PPO)
  gold  the world's gold reward (weight 0: logged by TRL as `rewards/gold/mean`, never optimised)

Units are mapped so that one pmopt "step" is one RLOO iteration over `train.rollout_batch_size` sampled
sequences (the same number PPO samples per step): `generation_batch_size = rollout_batch_size`,
`num_iterations = ppo_epochs`, one optimizer update per `minibatch_size` sequences. The probe schedule
(a TrainerCallback) and the curve rows are PPO's, with `rl_method: "rloo"`.

`sampling.backend: vllm` generates the rollouts with TRL's own vLLM integration (colocate mode, one engine in
each training process, weights loaded from the policy after each optimizer step; docs/vllm.md).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from transformers import TrainerCallback

from pmopt import console
from pmopt.config import ConfigError
from pmopt.io import append_jsonl
from pmopt.lora import lora_config
from pmopt.records import write_curves_csv
from pmopt.rl.checkpoint import export_policy, truncate_logs
from pmopt.rl.config import PPOConfig
from pmopt.rl.evaluation import ProbeSchedule, write_probes
from pmopt.rl.models import disable_dropout, load_policy_and_reference
from pmopt.rl.prompts import load_training_prompts
from pmopt.rl.setup import STAGE, check_inputs, finite_scores, gold_reward_at, load_reward, start_run
from pmopt.sampling import stop_token_ids
from pmopt.text import render_prompt


def updates_per_step(cfg: PPOConfig) -> int:
    """Optimizer updates TRL makes per pmopt step (one generation batch, `ppo_epochs` passes)."""
    return cfg.train.ppo_epochs * (cfg.train.rollout_batch_size // cfg.train.minibatch_size)


def check_rloo_config(cfg: PPOConfig, num_processes: int) -> None:
    t, g = cfg.train, cfg.rloo.num_generations
    if cfg.kl.adaptive:
        raise ConfigError("kl.adaptive: TRL's RLOOTrainer has a fixed beta; set kl.adaptive: false for method rloo")
    if t.rollout_batch_size % g:
        raise ConfigError(f"train.rollout_batch_size ({t.rollout_batch_size}) must be a multiple of "
                          f"rloo.num_generations ({g}): every prompt's group is sampled together")
    per_update = t.minibatch_size // num_processes
    if t.minibatch_size % num_processes or per_update % t.gradient_accumulation_steps:
        raise ConfigError(f"train.minibatch_size ({t.minibatch_size}) must split into {num_processes} processes x "
                          f"train.gradient_accumulation_steps ({t.gradient_accumulation_steps})")


# our schedule names -> transformers' (whose "constant" ignores warmup_steps; "constant_with_warmup" with 0
# warmup steps is constant). transformers' warmup factor is step / warmup, ours (PPO) (update + 1) / warmup.
TRANSFORMERS_SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear"}


def rloo_args(cfg: PPOConfig, out: Path, num_processes: int, stop_ids: list[int] | None = None):
    from trl import RLOOConfig

    from pmopt.pm.train import checkpointing_kwargs, tracking_kwargs

    t, upi = cfg.train, updates_per_step(cfg)
    return RLOOConfig(
        **vllm_kwargs(cfg, stop_ids),
        output_dir=str(out / "checkpoints"), seed=cfg.seed, data_seed=cfg.seed,
        max_steps=t.steps * upi, learning_rate=t.learning_rate, lr_scheduler_type=TRANSFORMERS_SCHEDULES[t.lr_schedule],
        warmup_steps=t.warmup_steps, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        per_device_train_batch_size=t.minibatch_size // num_processes // t.gradient_accumulation_steps,
        gradient_accumulation_steps=t.gradient_accumulation_steps, generation_batch_size=t.rollout_batch_size,
        num_generations=cfg.rloo.num_generations, num_iterations=t.ppo_epochs, epsilon=t.clip_range,
        beta=cfg.kl.beta, max_completion_length=cfg.sampling.max_new_tokens, temperature=cfg.sampling.temperature,
        top_k=cfg.sampling.top_k, top_p=cfg.sampling.top_p, reward_weights=[1.0, 0.0],
        logging_steps=upi, save_strategy="steps", save_steps=cfg.checkpoint.every * upi,
        save_total_limit=cfg.checkpoint.keep, bf16=t.mixed_precision == "bf16", fp16=t.mixed_precision == "fp16",
        **checkpointing_kwargs(RLOOConfig, False), **tracking_kwargs(RLOOConfig, cfg.report_to, "pmopt-rloo", out),
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(), remove_unused_columns=False, disable_dropout=True,
        trust_remote_code=cfg.policy.trust_remote_code, dataloader_num_workers=0,
    )


def vllm_kwargs(cfg: PPOConfig, stop_ids: list[int] | None) -> dict:
    """TRL's own vLLM generation (colocate mode: an engine in each training process) when
    `sampling.backend` is vllm, stopping on pmopt's stop ids (EOS ids and the template's end of turn)."""
    if cfg.sampling.backend != "vllm":
        return {}
    engine = cfg.sampling.vllm
    return {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": engine.gpu_memory_utilization,
            "vllm_tensor_parallel_size": engine.tensor_parallel_size, "vllm_max_model_length": engine.max_model_len,
            "generation_kwargs": {"stop_token_ids": list(stop_ids or [])}}


def use_vllm_engine(cfg: PPOConfig, trainer) -> None:
    """On CPU, TRL's colocated engine takes new weights through vLLM's layerwise reload (see
    `pmopt.sampling_vllm.push_weights`): TRL's own per-tensor `load_weights` fails there."""
    if cfg.sampling.backend != "vllm":
        return
    from pmopt.sampling_vllm import push_weights

    generation = trainer.vllm_generation

    def sync_weights():
        push_weights(generation.llm, trainer.accelerator.unwrap_model(trainer.model))

    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        generation.sync_weights = sync_weights


# ----------------------------------------------------------------------------- reward functions


def reward_funcs(cfg: PPOConfig, reward_fn, records: list[dict], eos_id: int):
    """[pm, gold] as TRL reward callables; `prompt_index` (a dataset column) finds each prompt's record."""
    gold_fn = gold_reward_at(cfg.prompts.world)
    penalty = cfg.reward.missing_eos_penalty

    def lookup(prompt_index):
        rows = [records[i] for i in prompt_index]
        return [r["prompt"] for r in rows], [r.get("meta", {}) for r in rows]

    def pm(prompts, completions, completion_ids, prompt_index, **_):
        messages, metas = lookup(prompt_index)
        scores = reward_fn(messages, [c.strip() for c in completions], metas).float().tolist()
        if penalty is not None:  # a completion without EOS was cut at max_completion_length
            scores = [s - penalty * (not ids or ids[-1] != eos_id) for s, ids in zip(scores, completion_ids,
                                                                                       strict=True)]
        return scores

    def gold(prompts, completions, prompt_index, **_):
        messages, metas = lookup(prompt_index)
        values = finite_scores(gold_fn, messages, [c.strip() for c in completions], metas)
        return values if values is not None else [None] * len(completions)

    return [pm, gold]


# ----------------------------------------------------------------------------- callbacks


class CurvesCallback(TrainerCallback):
    """Every pmopt step: TRL's logs -> metrics.jsonl (`rloo/*`); probes when due -> curve rows."""

    def __init__(self, cfg: PPOConfig, out: Path, probes: ProbeSchedule, reference):
        self.cfg, self.out, self.probes, self.reference = cfg, out, probes, reference
        self.upi = updates_per_step(cfg)
        self.trainer = None  # set after the trainer exists (the callback needs its model)

    def _policy(self):
        return self.trainer.accelerator.unwrap_model(self.trainer.model)

    def _probe(self, step: int) -> None:
        policy = self._policy()
        reference = self.reference if self.reference is not None else getattr(self.trainer, "ref_model", None)
        write_probes(self.out, self.probes.evaluate(policy, reference, step))

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step == 0:
            self._probe(0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "reward" in logs:
            row = {"step": state.global_step // self.upi}
            row.update({f"rloo/{k}": v for k, v in logs.items() if isinstance(v, (int, float))})
            append_jsonl(self.out / "metrics.jsonl", row)

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step // self.upi
        if state.is_world_process_zero and state.global_step % self.upi == 0 and self.probes.due(step):
            self._probe(step)


# ----------------------------------------------------------------------------- the run


def run_rloo(cfg: PPOConfig, out: str | Path, reward_fn=None) -> Path:
    from accelerate import PartialState
    from datasets import Dataset
    from trl import RLOOTrainer

    from pmopt.pm.train import latest_trainer_checkpoint

    out = Path(out)
    state = PartialState(cpu=not torch.cuda.is_available())
    check_inputs(cfg)
    check_rloo_config(cfg, state.num_processes)
    records = load_training_prompts(cfg)
    torch.manual_seed(cfg.seed)
    policy, reference, tokenizer = load_policy_and_reference(replace(cfg, policy=_no_lora(cfg)), state.device)
    reward_fn = reward_fn or load_reward(cfg, state.device)
    # TRL keeps its own reference when beta > 0 (or disables the adapters under LoRA); the probes need one too.
    reference = reference if (cfg.kl.beta == 0 and not cfg.policy.lora.enabled) else None
    # probes sample with pmopt's sampler: TRL's engine serves the rollouts, and a second one would not fit
    probe_cfg = replace(cfg, sampling=replace(cfg.sampling, backend="pmopt"))
    probes = ProbeSchedule(probe_cfg, tokenizer, reward_fn, gold_reward_at(cfg.probe_world), rl_method="rloo")
    kwargs = cfg.sampling.chat_template_kwargs
    dataset = Dataset.from_dict({"prompt": [render_prompt(r["prompt"], tokenizer, chat_template_kwargs=kwargs)
                                            for r in records],
                                 "prompt_index": list(range(len(records)))})
    callback = CurvesCallback(cfg, out, probes, reference)
    if cfg.sampling.backend == "vllm":
        from pmopt.sampling_vllm import cpu_environment

        cpu_environment(cfg.sampling.vllm)
    stops = stop_token_ids(policy, tokenizer, kwargs)
    trainer = RLOOTrainer(
        model=policy, reward_funcs=reward_funcs(cfg, reward_fn, records, tokenizer.eos_token_id),
        args=rloo_args(cfg, out, state.num_processes, stops), train_dataset=dataset, processing_class=tokenizer,
        peft_config=_peft_config(cfg), callbacks=[callback],
    )
    use_vllm_engine(cfg, trainer)
    disable_dropout(trainer.model)
    console.quiet_trainer(trainer, f"rloo: {cfg.reward_label}", {"reward": "reward", "kl": "kl"})
    callback.trainer = trainer
    manifest = start_run(cfg, out, trainer.accelerator)
    checkpoint = latest_trainer_checkpoint(out / "checkpoints")
    if state.is_main_process:
        truncate_logs(out, None if checkpoint is None else int(checkpoint.name.split("-")[-1]) // updates_per_step(cfg))
    state.wait_for_everyone()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    if cfg.sampling.backend == "vllm":  # TRL's engine: its memory and process group go back now
        from pmopt.sampling_vllm import close_llm

        close_llm(trainer.vllm_generation.llm)
    if state.is_main_process:
        export_policy(trainer.accelerator.unwrap_model(trainer.model), tokenizer, out / "policy")
        write_curves_csv(out, STAGE)
        manifest.mark(STAGE, "done", steps=cfg.train.steps, method="rloo")
    state.wait_for_everyone()
    return out


def _no_lora(cfg: PPOConfig):
    """The policy section without LoRA: TRL wraps the model itself from `peft_config`."""
    return replace(cfg.policy, lora=replace(cfg.policy.lora, enabled=False))


def _peft_config(cfg: PPOConfig):
    return lora_config(cfg.policy.lora, "CAUSAL_LM") if cfg.policy.lora.enabled else None


__all__ = ["run_rloo", "rloo_args", "reward_funcs", "CurvesCallback", "updates_per_step", "check_rloo_config"]
