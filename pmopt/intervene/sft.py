"""Supervised fine-tuning of the policy on the intervention data, with TRL's `SFTTrainer`.

As `pmopt.pm.train` drives `RewardTrainer`: examples are tokenized here with the renderings the sampler
and the PMs use (`pmopt.text`), so the policy is trained on exactly the token sequences it is later
prompted with; TRL gets a pre-tokenized dataset with a `completion_mask` and `completion_only_loss=True`
(the loss is on the answer, not on the user's turn); Trainer checkpoints in OUT/checkpoints/ are the unit
of resume; LoRA adapters (`pmopt.lora`) are merged into the weights before saving, so OUT/policy is a
plain causal LM (safetensors + tokenizer) that `pmopt probe` and `pmopt bon` load like any other.
`pmopt_sft.json`, written last, marks the policy as complete.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from pmopt import console
from pmopt.faults import fault_point
from pmopt.intervene.config import InterventionConfig
from pmopt.io import PmoptError, append_jsonl, atomic_write_json, read_jsonl
from pmopt.lora import lora_config
from pmopt.pm.train import (
    checkpointing_kwargs,
    latest_trainer_checkpoint,
    logged_training_loss,
    tracking_kwargs,
    use_cpu,
)
from pmopt.text import encode, encode_scored, has_chat_template, join, render_prompt, scored_text

DONE_FILE = "pmopt_sft.json"


def tokenize_example(tokenizer, prompt, completion: str) -> tuple[list[int], list[int]]:
    """(input_ids, completion_mask): the prompt as the sampler renders it, then the completion and its end
    (the chat template's end of turn, or EOS as the world's policy was pretrained)."""
    prompt_ids = encode(tokenizer, render_prompt(prompt, tokenizer))
    if has_chat_template(tokenizer):
        full = encode_scored(tokenizer, scored_text(prompt, completion, tokenizer))
    else:
        full = encode(tokenizer, join(render_prompt(prompt, tokenizer), completion)) + [tokenizer.eos_token_id]
    if full[:len(prompt_ids)] != prompt_ids or len(full) == len(prompt_ids):
        raise ValueError("the prompt's tokens are not a prefix of the prompt + completion's")
    return full, [0] * len(prompt_ids) + [1] * (len(full) - len(prompt_ids))


def tokenize_examples(path: Path, tokenizer, max_length: int) -> dict[str, list]:
    """Columns `input_ids`, `completion_mask`; an example longer than `max_length` is an error naming its line."""
    columns: dict[str, list] = {"input_ids": [], "completion_mask": []}
    for line, record in enumerate(read_jsonl(path), start=1):
        try:
            ids, mask = tokenize_example(tokenizer, record["prompt"], record["completion"])
        except ValueError as exc:
            raise PmoptError(f"{path}:{line}: completion: {exc}") from None
        if len(ids) > max_length:
            raise PmoptError(f"{path}:{line}: prompt + completion: {len(ids)} tokens > max_length={max_length}")
        columns["input_ids"].append(ids)
        columns["completion_mask"].append(mask)
    return columns


def sft_config(cfg: InterventionConfig, output_dir: Path):
    from trl import SFTConfig

    t = cfg.train
    return SFTConfig(
        output_dir=str(output_dir), seed=cfg.seed, data_seed=cfg.seed,
        num_train_epochs=t.epochs, max_steps=t.max_steps, learning_rate=t.learning_rate,
        per_device_train_batch_size=t.batch_size, gradient_accumulation_steps=t.gradient_accumulation_steps,
        weight_decay=t.weight_decay, warmup_steps=t.warmup_ratio, lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm, logging_steps=t.logging_steps, save_strategy="steps", save_steps=t.save_steps,
        save_total_limit=t.save_total_limit, bf16=t.mixed_precision == "bf16", fp16=t.mixed_precision == "fp16",
        completion_only_loss=True, max_length=None, packing=False,  # lengths were checked in tokenize_examples
        **checkpointing_kwargs(SFTConfig, False), disable_tqdm=True, use_cpu=use_cpu(),
        **tracking_kwargs(SFTConfig, t.report_to, "pmopt-intervene", output_dir.parent),
        dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(), remove_unused_columns=False,
    )


def train_policy(cfg: InterventionConfig, base_policy: Path, data: Path, out: Path) -> Path:
    """Fine-tune `base_policy` on `data` (sft.jsonl) into OUT/policy; resumes from OUT/checkpoints/."""
    from datasets import Dataset
    from transformers import TrainerCallback, set_seed
    from trl import SFTTrainer

    from pmopt.policy import load_policy

    set_seed(cfg.seed)
    model, tokenizer = load_policy(base_policy, dtype="float32", device="cpu" if use_cpu() else None)
    dataset = Dataset.from_dict(tokenize_examples(data, tokenizer, cfg.max_length))
    metrics = out / "metrics.jsonl"

    class Metrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                append_jsonl(metrics, {"step": state.global_step,
                                       **{f"sft/{k}": v for k, v in logs.items() if isinstance(v, (int, float))}})

        def on_step_end(self, args, state, control, **kwargs):
            fault_point("sft.step")

    trainer = SFTTrainer(model=model.train(), args=sft_config(cfg, out / "checkpoints"), train_dataset=dataset,
                         processing_class=tokenizer, callbacks=[Metrics()],
                         peft_config=lora_config(cfg.lora, "CAUSAL_LM") if cfg.lora.enabled else None)
    console.quiet_trainer(trainer, "intervene: SFT", {"loss": "loss"})
    checkpoint = latest_trainer_checkpoint(out / "checkpoints")
    if checkpoint is not None:
        console.info(f"intervene: resuming SFT from {checkpoint}")
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    loss = logged_training_loss(trainer.state.log_history, result.training_loss)
    return save_policy(cfg, trainer, tokenizer, out / "policy", base_policy, loss, len(dataset))


def save_policy(cfg: InterventionConfig, trainer, tokenizer, directory: Path, base_policy: Path, loss: float,
                n_examples: int) -> Path:
    model = trainer.model
    if cfg.lora.enabled:
        model = model.merge_and_unload()  # a plain causal LM: probes and best-of-N load it like the base
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    atomic_write_json(directory / DONE_FILE, {
        "format": "pmopt-sft", "base_policy": str(Path(base_policy).resolve()), "n_examples": n_examples,
        "global_step": trainer.state.global_step, "train_loss": loss, "seed": cfg.seed,
        "lora": dataclasses.asdict(cfg.lora) if cfg.lora.enabled else None,
    })
    console.info(f"intervene: SFT done: {trainer.state.global_step} steps, mean training loss {loss:.4f}")
    return directory


__all__ = ["tokenize_example", "tokenize_examples", "train_policy", "DONE_FILE"]
