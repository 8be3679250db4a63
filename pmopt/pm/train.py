"""Preference-model training on TRL's `RewardTrainer` (Bradley–Terry loss −log σ(r_chosen − r_rejected)).

Read top to bottom:

1. the config (`PMTrainConfig`, TRL style: a dataclass beside the trainer);
2. `train_pm`: validate everything (pairs, tokenizer, model checkpoint, sequence lengths) before a
   single file is written; then train each of the K ensemble members (seed + k) and write
   `ensemble.json` when K > 1;
3. `train_member`: load `AutoModelForSequenceClassification(num_labels=1)` ourselves, wrap it with LoRA
   (the score head trained and saved through `modules_to_save=["score"]`) when asked, hand TRL a
   pre-tokenized dataset, resume from `checkpoints/checkpoint-*` when one exists, save the final model
   (safetensors) + tokenizer + `pmopt_pm.json` (written last: it marks the member as complete).

Pairs are tokenized here with `pmopt.text.scored_text` + `pmopt.text.encode_scored`, the calls `PreferenceModel`
scores with, so training and scoring see identical token sequences (under a chat template, the ids TRL's
own dataset preparation gives a conversational pair); `pmopt_pm.json` records that rendering. TRL would silently drop pairs longer
than `max_length`; here they are an error naming the pair's file and line.

Under `accelerate launch` every process runs this module; Trainer handles DDP, FSDP and DeepSpeed, and
only the main process writes pmopt's own files (config.yaml, metrics.jsonl, pmopt_pm.json, ensemble.json).
The end of a member runs on EVERY process, as the Trainer expects: under FSDP or ZeRO-3 the weights are
sharded, so `trainer.save_model` (which gathers the full state dict and writes it on the main process)
and the held-out forward passes are collectives that hang if only one process enters them. FSDP must
use `fsdp_state_dict_type: FULL_STATE_DICT` and ZeRO-3 `zero3_save_16bit_model: true`
(`configs/accelerate/`); otherwise no loadable model is written, which is an error here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
from transformers import TrainerCallback

from pmopt import console
from pmopt.config import ConfigError, LoraSection, dump_yaml, load_config
from pmopt.data.preferences import check_pairs, load_pairs, looks_like_hub_id, pair_source, split_pairs
from pmopt.faults import fault_point
from pmopt.io import (
    PmoptError,
    _distributed_rank,
    agreed_out_dir,
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    prepare_out_dir,
)
from pmopt.lora import lora_config
from pmopt.pm.ensemble import METHODS
from pmopt.pm.model import (
    ENSEMBLE_FILE,
    PM_INFO_FILE,
    PreferenceModel,
    check_num_labels,
    load_seq_cls,
    load_tokenizer,
    resolve_dtype,
)
from pmopt.policy import AttnImplementation
from pmopt.text import encode_scored, rendering, scored_text

# ============================================================================ 1. config


@dataclass
class ModelSection:
    name_or_path: str = ""  # a Hugging Face hub id or a local directory (causal LM or seq-cls checkpoint)
    trust_remote_code: bool = False  # allow the model repo's own Python code (hub models that need it)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"  # weights as loaded for training
    attn_implementation: AttnImplementation | None = None  # attention kernel; None = transformers' default (sdpa where supported)


@dataclass
class DataSection:
    train: str = ""  # JSONL (pmopt / TRL explicit prompt / HH-RLHF implicit, .gz ok) or a hub dataset id
    train_split: str = "train"  # split of a hub dataset
    eval: str | None = None  # held-out pairs; when unset, `eval_fraction` of `train` is held out
    eval_split: str = "test"  # split of a hub dataset for held-out pairs
    eval_fraction: float = 0.1  # share of `train` held out when `eval` is unset
    hub_config: str | None = None  # config name of a hub dataset (datasets.load_dataset's `name`)
    hub_data_dir: str | None = None  # subset folder of a hub dataset, e.g. harmless-base for Anthropic/hh-rlhf
    columns: dict[str, str] = field(default_factory=dict)  # pmopt field -> the data set's column, e.g. {chosen: response_j}
    max_pairs: int = 0  # use the first k pairs of `train` (and of `eval`); 0 = all
    max_length: int = 512  # tokens of prompt + response + EOS; longer pairs are an error ...
    drop_overlong: bool = False  # ... unless this is true: then they are dropped, and the count printed
    # passed to apply_chat_template when rendering pairs (e.g. {enable_thinking: false}); recorded in the PM
    chat_template_kwargs: dict = field(default_factory=dict)


@dataclass
class TrainSection:
    epochs: float = 1.0  # passes over the training pairs
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 1e-4  # peak AdamW learning rate
    batch_size: int = 8  # pairs per device per step
    eval_batch_size: int = 16  # pairs per device per held-out batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step (transformers' name)
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_ratio: float = 0.0  # share of all steps spent in linear warmup
    lr_scheduler: str = "linear"  # transformers scheduler name (linear, cosine, constant, ...)
    max_grad_norm: float = 1.0  # gradient clipping norm
    seed: int = 0  # training seed (member k of an ensemble uses seed + k)
    logging_steps: int = 10  # steps between metrics.jsonl rows
    save_steps: int = 500  # steps between Trainer checkpoints (the unit of resume)
    save_total_limit: int | None = 2  # Trainer checkpoints kept (null = all)
    eval_steps: int = 0  # 0: evaluate the held-out pairs once, at the end
    center_rewards_coefficient: float | None = None  # Eisenstein et al. 2023, Eq. 2; TRL suggests 0.01
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # autocast precision (bf16 / fp16 need a GPU)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (less memory, slower)
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = "none"  # also log there (metrics.jsonl always)
    RENAMED: ClassVar[dict[str, str]] = {"grad_accum": "gradient_accumulation_steps"}


@dataclass
class PMTrainConfig:
    model: ModelSection = field(default_factory=ModelSection)  # the model the PM starts from
    data: DataSection = field(default_factory=DataSection)  # preference pairs to train and evaluate on
    lora: LoraSection = field(default_factory=LoraSection)  # LoRA instead of full fine-tuning
    train: TrainSection = field(default_factory=TrainSection)  # optimizer, schedule, logging and checkpoints
    ensemble_size: int = 1  # K members, seeds seed + k, in out/member-k/
    ensemble_aggregate: Literal["mean", "worst", "uwo"] = "mean"  # default aggregate recorded in ensemble.json
    # lambda of the uncertainty-weighted aggregate mean - lambda * variance, recorded in ensemble.json
    ensemble_lam: float = 1.0
    # old key -> its current name; old keys still load (with a notice) for one release
    RENAMED: ClassVar[dict[str, str]] = {"ensemble_uwo_lambda": "ensemble_lam"}

    def validate(self) -> None:
        checks = [
            (bool(self.model.name_or_path), "model.name_or_path: required (hub id or local directory)"),
            (0.0 <= self.data.eval_fraction < 1.0, "data.eval_fraction: must be in [0, 1)"),
            (self.data.max_length > 0, "data.max_length: must be > 0"),
            (self.data.max_pairs >= 0, "data.max_pairs: must be >= 0 (0 = all)"),
            (self.train.epochs > 0 or self.train.max_steps > 0, "train.epochs: must be > 0"),
            (self.train.batch_size >= 1 and self.train.eval_batch_size >= 1, "train.batch_size: must be >= 1"),
            (self.train.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps: must be >= 1"),
            (self.train.learning_rate > 0, "train.learning_rate: must be > 0"),
            (0.0 <= self.train.warmup_ratio < 1.0, "train.warmup_ratio: must be in [0, 1)"),
            (self.train.logging_steps >= 1 and self.train.save_steps >= 1,
             "train.logging_steps / train.save_steps: must be >= 1"),
            (self.train.eval_steps >= 0, "train.eval_steps: must be >= 0"),
            (self.ensemble_size >= 1, "ensemble_size: must be >= 1"),
            (self.ensemble_aggregate in METHODS, f"ensemble_aggregate: one of {list(METHODS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# ============================================================================ 2. train_pm


def train_pm_command(args) -> Path:
    """`pmopt train-pm CONFIG [--set k=v] [--out DIR]`."""
    cfg = load_config(PMTrainConfig, args.config, args.overrides)
    return train_pm(cfg, prepare_out_dir(agreed_out_dir(args.out, "train-pm", _process_state), "train-pm"))


def train_pm(cfg: PMTrainConfig, out: str | Path, pairs: list[dict] | None = None,
             eval_pairs: list[dict] | None = None) -> Path:
    """Train a PM (or K members) into `out`; returns `out`. Pairs may be given in memory."""
    from accelerate import PartialState

    out = Path(out)
    _validate_config(cfg)
    check_fsdp_has_gpus()
    train_pairs, held_out = resolve_pairs(cfg, pairs, eval_pairs)
    check_model_source(cfg.model)
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    kwargs = cfg.data.chat_template_kwargs
    train_ids = tokenize_pairs(train_pairs, tokenizer, cfg.data.max_length, "data.train", cfg.data.drop_overlong, kwargs)
    eval_ids = tokenize_pairs(held_out, tokenizer, cfg.data.max_length, "data.eval", cfg.data.drop_overlong, kwargs)
    if not train_ids["chosen_ids"]:
        raise PmoptError(f"data.train: no training pairs within data.max_length={cfg.data.max_length}")
    check_positions(cfg, train_ids, eval_ids)

    state = PartialState(cpu=use_cpu())
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    state.wait_for_everyone()
    members = [out] if cfg.ensemble_size == 1 else [out / f"member-{k}" for k in range(cfg.ensemble_size)]
    for k, member_dir in enumerate(members):
        if (member_dir / PM_INFO_FILE).is_file():
            console.info(f"train-pm: {member_dir} is already trained; skipped")
            continue
        label = f"PM {out.name}" + (f" {k + 1}/{len(members)}" if len(members) > 1 else "")
        train_member(cfg, k, member_dir, tokenizer, train_ids, eval_ids, out / "metrics.jsonl", label)
    if cfg.ensemble_size > 1 and state.is_main_process:
        write_ensemble_spec(cfg, out, members)
    state.wait_for_everyone()
    return out


def use_cpu() -> bool:
    """Train on CPU when there is no GPU or `accelerate launch --cpu` asked for it.

    On CPU, several processes (`accelerate launch --multi_gpu --num_processes 2` on a machine without
    GPUs, or `torchrun`) form a MULTI_CPU / gloo process group only when the state is built with cpu=True.
    """
    return not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")


def check_fsdp_has_gpus() -> None:
    """An accelerate config with FSDP on CPU processes is an error: accelerate (1.x) turns only a GPU
    process group into FSDP and runs CPU processes as plain DDP, whole weights on every process, so
    such a run would not be the sharded training it was launched as."""
    if use_cpu() and os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        raise PmoptError("accelerate config: distributed_type FSDP needs GPUs; on CPU processes accelerate would "
                         "train plain DDP instead (for CPUs use configs/accelerate/cpu_2proc.yaml)")


def _process_state():
    from accelerate import PartialState

    return PartialState(cpu=use_cpu())


def _validate_config(cfg: PMTrainConfig) -> None:
    try:
        cfg.validate()
    except ValueError as exc:
        raise ConfigError(f"<config>: {exc}") from None
    if cfg.train.report_to != "none" and importlib.util.find_spec(cfg.train.report_to) is None:
        raise ConfigError(f"train.report_to: {cfg.train.report_to!r} is not installed (pip install {cfg.train.report_to})")


def _source_options(data: DataSection) -> dict:
    return {"config_name": data.hub_config, "data_dir": data.hub_data_dir, "columns": data.columns,
            "limit": data.max_pairs}


def resolve_pairs(cfg: PMTrainConfig, pairs, eval_pairs) -> tuple[list[dict], list[dict]]:
    """Training and held-out pairs, all validated; the held-out set is a file or a seeded split."""
    if pairs is not None:
        train = check_pairs(pairs, "pairs")
    elif cfg.data.train:
        train = load_pairs(cfg.data.train, cfg.data.train_split, **_source_options(cfg.data))
    else:
        raise ConfigError("data.train: required (a JSONL path or a hub dataset id) unless pairs are passed")
    if eval_pairs is not None:
        held_out = check_pairs(eval_pairs, "eval_pairs")
    elif cfg.data.eval:
        held_out = load_pairs(cfg.data.eval, cfg.data.eval_split, **_source_options(cfg.data))
    else:
        train, held_out = split_pairs(train, cfg.data.eval_fraction, cfg.train.seed)
    if not train:
        raise PmoptError(f"{cfg.data.train or 'pairs'}: no training pairs")
    return train, held_out


def check_model_source(model: ModelSection) -> None:
    """A local model must be an HF directory whose head (if it is a classifier) has one label."""
    path = Path(model.name_or_path)
    if path.exists():
        if not path.is_dir():
            raise PmoptError(f"model.name_or_path: {path} is not a directory")
        check_num_labels(path / "config.json")
    elif not looks_like_hub_id(model.name_or_path):
        raise PmoptError(f"model.name_or_path: {model.name_or_path}: no such directory "
                         "(and not a hub model id)")


def tokenize_pairs(pairs: list[dict], tokenizer, max_length: int, what: str,
                   drop_overlong: bool = False, chat_template_kwargs: dict | None = None) -> dict[str, list]:
    """The `chosen_ids` / `rejected_ids` columns TRL accepts as a processed dataset (`pmopt.text`'s rule:
    under a chat template, the ids TRL's RewardTrainer itself gives a conversational pair).

    A pair longer than `max_length` is an error naming its file and line (TRL would drop it silently),
    or, with `drop_overlong`, is dropped and counted out loud.
    """
    columns: dict[str, list] = {"chosen_ids": [], "rejected_ids": []}
    dropped = 0
    for index, pair in enumerate(pairs):
        ids = {side: encode_scored(tokenizer, scored_text(pair["prompt"], pair[side], tokenizer,
                                                          chat_template_kwargs=chat_template_kwargs))
               for side in ("chosen", "rejected")}
        side, longest = max(((s, len(v)) for s, v in ids.items()), key=lambda item: item[1])
        if longest > max_length:
            if drop_overlong:
                dropped += 1
                continue
            raise PmoptError(f"{pair_source(pair, index)}: field '{side}': prompt + {side} is {longest} "
                             f"tokens, more than data.max_length={max_length} ({what}); raise "
                             "data.max_length or set data.drop_overlong=true")
        for side_name, side_ids in ids.items():
            columns[f"{side_name}_ids"].append(side_ids)
    if dropped:
        console.info(f"train-pm: dropped {dropped} of {len(pairs)} {what} pairs longer than "
              f"data.max_length={max_length}")
    return columns


def check_positions(cfg: PMTrainConfig, *columns: dict[str, list]) -> None:
    """A local model's position table must hold the longest pair."""
    config_file = Path(cfg.model.name_or_path) / "config.json"
    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text(encoding="utf-8"))
    limit = config.get("max_position_embeddings") or config.get("n_positions")
    longest = max((len(ids) for col in columns for ids in col["chosen_ids"] + col["rejected_ids"]), default=0)
    if limit is not None and longest > limit:
        raise PmoptError(f"{config_file}: field 'max_position_embeddings': the model holds {limit} "
                         f"positions but the longest pair has {longest} tokens; lower data.max_length")


def write_ensemble_spec(cfg: PMTrainConfig, out: Path, members: list[Path]) -> None:
    atomic_write_json(out / ENSEMBLE_FILE, {
        "members": [m.name for m in members], "aggregate": cfg.ensemble_aggregate,
        "uwo_lambda": cfg.ensemble_lam, "base_model": model_source(cfg.model),
        "seeds": [cfg.train.seed + k for k in range(len(members))],
    })


# ============================================================================ 3. one member


def train_member(cfg: PMTrainConfig, k: int, member_dir: Path, tokenizer, train_ids: dict,
                 eval_ids: dict, metrics_path: Path, label: str = "PM") -> Path:
    """Train member k (seed + k) with TRL's RewardTrainer; save it; write pmopt_pm.json last."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import RewardTrainer

    seed = cfg.train.seed + k
    set_seed(seed)  # before loading: the new score head is randomly initialised
    model = load_seq_cls(model_source(cfg.model), resolve_dtype(cfg.model.dtype), cfg.model.trust_remote_code,
                         cfg.model.attn_implementation, new_head=True)  # a base causal LM gets a fresh head
    model.config.pad_token_id = tokenizer.pad_token_id
    has_eval = len(eval_ids["chosen_ids"]) > 0
    trainer = RewardTrainer(
        model=model, args=reward_config(cfg, member_dir / "checkpoints", seed, has_eval),
        train_dataset=Dataset.from_dict(train_ids),
        eval_dataset=Dataset.from_dict(eval_ids) if has_eval else None,
        processing_class=tokenizer,
        # LoRA on the backbone; the fresh score head is fully trained and saved (`modules_to_save`)
        peft_config=lora_config(cfg.lora, "SEQ_CLS", ["score"]) if cfg.lora.enabled else None,
        callbacks=_callbacks(metrics_path, k),
    )
    # the bar shows the training loss (and held-out accuracy when train.eval_steps > 0); all logs -> metrics.jsonl
    console.quiet_trainer(trainer, f"train-pm: {label}", {"loss": "loss", "eval_accuracy": "held-out acc"})
    _fault_inside_checkpoints(trainer)
    checkpoint = latest_trainer_checkpoint(member_dir / "checkpoints")
    if checkpoint is not None and trainer.is_world_process_zero():
        console.info(f"train-pm: resuming member {k} from {checkpoint}")
        append_jsonl(metrics_path, {"event": "resume", "member": k, "checkpoint": checkpoint.name})
    # the path, not True: Trainer's own choice is the newest folder, complete or not
    check_sharded_save(trainer)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    loss = logged_training_loss(trainer.state.log_history, result.training_loss)
    accuracy = save_member(cfg, trainer, tokenizer, member_dir, k, eval_ids, loss, metrics_path)  # every process
    if trainer.is_world_process_zero():
        held_out = "no held-out pairs" if accuracy is None else f"held-out accuracy {accuracy:.3f}"
        console.info(f"train-pm: {label} done: mean training loss {loss:.4f}, {held_out}")
    trainer.accelerator.wait_for_everyone()
    return member_dir


def check_sharded_save(trainer) -> None:
    """FSDP must gather a full state dict at the end (`save_model` writes nothing with SHARDED_STATE_DICT)."""
    if getattr(trainer, "is_fsdp_enabled", False):
        kind = str(trainer.accelerator.state.fsdp_plugin.state_dict_type)
        if "FULL_STATE_DICT" not in kind:
            raise PmoptError(f"FSDP state dict type {kind}: train-pm saves a loadable PM only with "
                             "fsdp_state_dict_type: FULL_STATE_DICT in the accelerate config "
                             "(configs/accelerate/fsdp.yaml)")


def weights_sharded(trainer) -> bool:
    """True when no single process holds the whole model (FSDP, DeepSpeed ZeRO-3): forward passes are
    collectives and must run on every process, through the wrapped model."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    if getattr(trainer, "is_deepspeed_enabled", False):
        plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
        return plugin is not None and getattr(plugin, "zero_stage", None) == 3
    return False


def logged_training_loss(log_history: list[dict], fallback: float) -> float:
    """The mean training loss of the whole run: the logged losses (one per `logging_steps` window, kept in
    every checkpoint's trainer_state.json), each weighted by its window's steps.

    Trainer's own `training_loss` covers only the steps this process ran, so after a resume it would differ
    from an uninterrupted run's; this number does not (when checkpoints fall on logging steps, as with the
    defaults). `fallback` (Trainer's) when nothing was logged.
    """
    total, steps, last = 0.0, 0, 0
    for row in log_history:
        if "loss" in row and "step" in row:
            total += float(row["loss"]) * (row["step"] - last)
            steps += row["step"] - last
            last = row["step"]
    return total / steps if steps else fallback


def model_source(model: ModelSection) -> str:
    """A local base model as an absolute path: a LoRA adapter records it, and is loaded from anywhere."""
    path = Path(model.name_or_path)
    return str(path.resolve()) if path.exists() else model.name_or_path


def reward_config(cfg: PMTrainConfig, output_dir: Path, seed: int, has_eval: bool):
    from trl import RewardConfig

    t = cfg.train
    periodic_eval = has_eval and t.eval_steps > 0
    return RewardConfig(
        output_dir=str(output_dir), seed=seed, data_seed=seed,
        num_train_epochs=t.epochs, max_steps=t.max_steps, learning_rate=t.learning_rate,
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, weight_decay=t.weight_decay, warmup_steps=t.warmup_ratio,
        lr_scheduler_type=t.lr_scheduler, max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps, save_strategy="steps", save_steps=t.save_steps,
        save_total_limit=t.save_total_limit, eval_strategy="steps" if periodic_eval else "no",
        eval_steps=t.eval_steps if periodic_eval else None,
        center_rewards_coefficient=t.center_rewards_coefficient,
        bf16=t.mixed_precision == "bf16", fp16=t.mixed_precision == "fp16",
        **checkpointing_kwargs(RewardConfig, t.gradient_checkpointing),
        **tracking_kwargs(RewardConfig, t.report_to, "pmopt-train-pm", output_dir.parent),
        max_length=None,  # lengths were checked (an error, not a silent filter) in tokenize_pairs
        trust_remote_code=cfg.model.trust_remote_code, disable_tqdm=True, use_cpu=use_cpu(),
        ddp_find_unused_parameters=False,  # every trainable parameter (backbone or LoRA, and the head) is used
        dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(), remove_unused_columns=False,
    )


def checkpointing_kwargs(args_cls: type, enabled: bool) -> dict:
    """Activation checkpointing for a TRL config. Newer transformers renamed `gradient_checkpointing` to
    `activation_checkpointing`, and TRL's configs default the old name to True, so setting only the old name
    (or neither) raises a FutureWarning; older releases know only the old name."""
    names = {f.name for f in dataclasses.fields(args_cls)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": enabled}


def tracking_kwargs(args_cls: type, report_to: str | list[str], project: str, run: Path) -> dict:
    """`report_to` for a transformers / TRL config. trackio files a run under a project (TrainingArguments'
    `project`, read by trackio alone) and a run name: the command's name and the run's directory, so that
    `trackio show --project pmopt-train-pm` lists one run per PM trained."""
    trackers = [t for t in ([report_to] if isinstance(report_to, str) else report_to) if t != "none"]
    out: dict = {"report_to": trackers or "none"}
    names = {f.name for f in dataclasses.fields(args_cls)}
    if "trackio" in trackers and "project" in names:
        out.update(project=project, run_name=str(run))
    return out


def latest_trainer_checkpoint(directory: Path) -> Path | None:
    """The newest complete `checkpoint-N` directory a transformers Trainer wrote under `directory`, or None.

    Trainer writes a checkpoint in place (weights, then optimizer, scheduler and RNG state, then
    `trainer_state.json`), so a kill mid-save leaves a folder without a readable trainer_state.json:
    such a folder is skipped (and removed on the main process), and the run resumes from the one before.
    """
    checkpoints = sorted((p for p in Path(directory).glob("checkpoint-*")
                          if p.is_dir() and p.name.split("-")[-1].isdigit()),
                         key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for path in checkpoints:
        if _complete_checkpoint(path):
            return path
        if _distributed_rank() == 0:
            console.info(f"train-pm: {path} is incomplete (killed while saving?); removed")
            shutil.rmtree(path, ignore_errors=True)
    return None


def _complete_checkpoint(path: Path) -> bool:
    try:
        json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def _fault_inside_checkpoints(trainer) -> None:
    """Test hook: fault site `pm.save` fires inside each Trainer checkpoint, after the weights are written
    and before the optimizer and trainer state are (pmopt.faults). Off unless PMOPT_FAULT names it."""
    from pmopt.faults import ENV

    if not os.environ.get(ENV, "").startswith("pm.save:") or not hasattr(trainer, "_save_optimizer_and_scheduler"):
        return
    save = trainer._save_optimizer_and_scheduler

    def save_with_fault(output_dir):
        fault_point("pm.save")
        return save(output_dir)

    trainer._save_optimizer_and_scheduler = save_with_fault


def save_member(cfg: PMTrainConfig, trainer, tokenizer, member_dir: Path, k: int, eval_ids: dict,
                training_loss: float, metrics_path: Path) -> float | None:
    """Final model (safetensors) + tokenizer, held-out accuracy, then `pmopt_pm.json` (the done marker);
    returns the held-out accuracy.

    Called on EVERY process: `trainer.save_model` gathers sharded weights (FSDP full state dict, ZeRO-3
    16-bit gather) on all of them and writes on the main one; every process scores all held-out pairs
    (the same batches, so a sharded model's forward collectives match up and each gets the same
    accuracy). Only the main process writes the tokenizer, metrics and `pmopt_pm.json`.
    """
    main = trainer.is_world_process_zero()
    trainer.save_model(str(member_dir))
    model = trainer.model_wrapped if weights_sharded(trainer) else trainer.model
    accuracy = heldout_accuracy(PreferenceModel(model, tokenizer, name=member_dir.name), eval_ids,
                                cfg.train.eval_batch_size)
    if not main:
        return accuracy
    (member_dir / "training_args.bin").unlink(missing_ok=True)  # Trainer's; the PM's settings are in pmopt_pm.json
    check_saved_weights(member_dir)
    tokenizer.save_pretrained(str(member_dir))
    step = trainer.state.global_step
    append_jsonl(metrics_path, {"step": step, "member": k, "final": True, "pm/accuracy": accuracy,
                                "pm/n_eval": len(eval_ids["chosen_ids"])})
    atomic_write_json(member_dir / PM_INFO_FILE, {
        "format": "pmopt-pm", "version": 1, "kind": "lora" if cfg.lora.enabled else "full",
        "base_model": model_source(cfg.model), "max_length": cfg.data.max_length,
        "eval_accuracy": accuracy, "n_train": len(trainer.train_dataset), "n_eval": len(eval_ids["chosen_ids"]),
        "seed": cfg.train.seed + k, "member": k, "global_step": step, "train_loss": training_loss,
        "lora": dataclasses.asdict(cfg.lora) if cfg.lora.enabled else None,
        "rendering": rendering(tokenizer, cfg.data.chat_template_kwargs),
    })
    return accuracy


def check_saved_weights(member_dir: Path) -> None:
    """`save_model` writes no safetensors when it cannot gather the weights (ZeRO-3 without
    `zero3_save_16bit_model`): an error, not a PM directory that loads random weights."""
    found = [p for p in member_dir.iterdir() if p.name.endswith((".safetensors", ".safetensors.index.json"))]
    if not found:
        raise PmoptError(f"{member_dir}: the trainer saved no safetensors weights (under DeepSpeed ZeRO-3 set "
                         "zero3_save_16bit_model: true, as configs/accelerate/deepspeed_zero3.yaml does)")


def heldout_accuracy(pm: PreferenceModel, eval_ids: dict, batch_size: int) -> float | None:
    """Share of held-out pairs with score(chosen) > score(rejected), scored as `pmopt score` would."""
    n = len(eval_ids["chosen_ids"])
    if n == 0:
        return None
    scores = pm.score_ids(eval_ids["chosen_ids"] + eval_ids["rejected_ids"], batch_size)
    return int((scores[:n] > scores[n:]).sum()) / n


# ---------------------------------------------------------------------------- logging


def _callbacks(metrics_path: Path, member: int) -> list:
    return [MetricsCallback(metrics_path, member), FaultCallback()]


class FaultCallback(TrainerCallback):
    """Fault site `pm.step` at the end of every optimizer step (pmopt.faults; off unless PMOPT_FAULT is set)."""

    def on_step_end(self, args, state, control, **kwargs):
        fault_point("pm.step")


def _metric_key(key: str) -> str:
    """TRL's log keys, namespaced. `pm/accuracy` is reserved for the exact held-out accuracy, so TRL's
    training-batch accuracy becomes `pm/train_accuracy` (eval_accuracy -> pm/eval_accuracy)."""
    if key == "accuracy":
        return "pm/train_accuracy"
    return f"pm/{key}"


class MetricsCallback(TrainerCallback):
    """Mirror TRL's logs into the run's metrics.jsonl (main process only), keys namespaced `pm/…`."""

    def __init__(self, path: Path, member: int):
        self.path, self.member = path, member

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            record = {"step": state.global_step, "member": self.member}
            record.update({_metric_key(k): v for k, v in logs.items() if isinstance(v, (int, float))})
            append_jsonl(self.path, record)


__all__ = ["PMTrainConfig", "ModelSection", "DataSection", "LoraSection", "TrainSection", "train_pm",
           "train_pm_command", "tokenize_pairs", "heldout_accuracy", "latest_trainer_checkpoint"]
