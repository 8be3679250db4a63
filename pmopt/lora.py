"""LoRA adapters (peft) from the one `LoraSection` of the configs: PM training, the RL policy and its value
model all build their `LoraConfig` here."""

from __future__ import annotations

from collections.abc import Sequence

from pmopt.config import LoraSection


def lora_config(section: LoraSection, task_type: str, modules_to_save: Sequence[str] | None = None):
    """peft's `LoraConfig` for `section` on a model of `task_type` ("CAUSAL_LM", "SEQ_CLS"); the modules in
    `modules_to_save` (e.g. a fresh `score` head) are trained in full and saved with the adapters."""
    from peft import LoraConfig

    extra = {"modules_to_save": list(modules_to_save)} if modules_to_save else {}
    return LoraConfig(task_type=task_type, r=section.r, lora_alpha=section.alpha, lora_dropout=section.dropout,
                      target_modules=section.target_modules, **extra)


__all__ = ["lora_config"]
