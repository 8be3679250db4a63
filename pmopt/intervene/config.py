"""`pmopt intervene`'s typed config: the base policy, the synthetic data, SFT, what is measured."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Literal

from pmopt.bon.sweep import BonSettings
from pmopt.config import LoraSection
from pmopt.probes.run import ProbeSettings


@dataclass
class BaseSection:
    """Where the base policy (and the PMs of the best-of-N sweep) come from: exactly one of the three."""

    run: str | None = None  # a `pmopt run` dir: its world/policy, world/ and pms/ (with seeds: RUN/seed-<k>/)
    world: str | None = None  # a `pmopt world` dir: its policy/; best-of-N then under the gold reward only
    # an experiment config (`pmopt run`'s): its stages run first into OUT[/seed-<k>]/base/, seed = world.seed = k
    experiment: str | None = None
    overrides: list[str] = field(default_factory=list)  # `key=value` overrides for that experiment config

    def validate(self) -> None:
        given = [name for name in ("run", "world", "experiment") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(f"base: set exactly one of run, world, experiment (got {given or 'none'})")


@dataclass
class OpinionDataSection:
    """The synthetic data of Wei et al. 2023: a user opinion right or wrong at random, the truthful answer."""

    n_examples: int = 1200  # examples; opinions are exactly half right per phrasing when 2 x phrasings divides it
    # the phrasings of the opinion (the source's; the world has opinion_first, opinion_plain, doubt_first); [] = all
    templates: list[str] = field(default_factory=list)
    # keep only questions the base policy answers correctly when asked plainly (Wei et al. 2023 §3 filter)
    filter_known: bool = True
    known_samples: int = 4  # samples per plain question; a question is known when all of them are correct

    def validate(self) -> None:
        if self.n_examples < 1 or self.known_samples < 1:
            raise ValueError("data.n_examples and data.known_samples must be >= 1")


@dataclass
class SFTTrainSection:
    """TRL SFTTrainer's optimizer and schedule; the loss is on the completion only."""

    epochs: float = 2.0  # passes over the examples
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 1e-3  # peak AdamW learning rate
    batch_size: int = 32  # examples per device per step
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step (transformers' name)
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_ratio: float = 0.05  # share of all steps spent in linear warmup
    lr_scheduler: str = "linear"  # transformers scheduler name (linear, cosine, constant, ...)
    max_grad_norm: float = 1.0  # gradient clipping norm
    logging_steps: int = 10  # steps between metrics.jsonl rows
    save_steps: int = 50  # steps between Trainer checkpoints (the unit of resume)
    save_total_limit: int | None = 2  # Trainer checkpoints kept (null = all)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # autocast precision (bf16 / fp16 need a GPU)
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = "none"  # also log there (metrics.jsonl always)

    def validate(self) -> None:
        if self.report_to != "none" and importlib.util.find_spec(self.report_to) is None:
            raise ValueError(f"train.report_to: {self.report_to!r} is not installed (pip install {self.report_to})")
        if not (self.epochs > 0 or self.max_steps > 0):
            raise ValueError("train.epochs: must be > 0")
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError("train.batch_size and train.gradient_accumulation_steps must be >= 1")
        if self.learning_rate <= 0:
            raise ValueError("train.learning_rate: must be > 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError("train.warmup_ratio: must be in [0, 1)")
        if self.logging_steps < 1 or self.save_steps < 1:
            raise ValueError("train.logging_steps / train.save_steps: must be >= 1")


def _probe_defaults() -> ProbeSettings:
    return ProbeSettings(probes=["answer", "are_you_sure", "feedback", "mimicry", "truthfulness"])


@dataclass
class BonStage(BonSettings):
    enabled: bool = True  # the best-of-N sweep on both policies (with the run's PMs, and the gold reward)


@dataclass
class InterventionConfig:
    seed: int = 0  # seeds the data, SFT, sampling and bootstraps (a base experiment's seed and world.seed too)
    # run the intervention once per seed k under OUT/seed-<k>/ (seed = k), then aggregate over seeds
    seeds: list[int] = field(default_factory=list)
    base: BaseSection = field(default_factory=BaseSection)  # the base policy (and the PMs)
    data: OpinionDataSection = field(default_factory=OpinionDataSection)  # the synthetic fine-tuning data
    train: SFTTrainSection = field(default_factory=SFTTrainSection)  # SFT on the data (TRL's SFTTrainer)
    lora: LoraSection = field(default_factory=LoraSection)  # LoRA adapters instead of full fine-tuning (merged)
    max_length: int = 128  # tokens of prompt + completion + EOS; a longer example is an error
    # the probes run on both policies (`pmopt probe`'s settings; policy, world and seed filled in)
    probes: ProbeSettings = field(default_factory=_probe_defaults)
    # the best-of-N sweep on both policies (`pmopt bon`'s settings; policy, world, PMs and seed filled in)
    bon: BonStage = field(default_factory=BonStage)

    def validate(self) -> None:
        if len(set(self.seeds)) != len(self.seeds) or any(k < 0 for k in self.seeds):
            raise ValueError(f"seeds: must be distinct non-negative integers, got {self.seeds}")
        if self.max_length < 1:
            raise ValueError("max_length: must be >= 1")


__all__ = ["InterventionConfig", "BaseSection", "OpinionDataSection", "SFTTrainSection", "BonStage"]
