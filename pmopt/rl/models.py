"""The models of an RL run: the policy, its frozen reference (a copy, or under LoRA the same base with its
adapters disabled) and the value model, each with dropout off."""

from __future__ import annotations

import torch

from pmopt.config import ConfigError
from pmopt.lora import lora_config
from pmopt.rl.config import PPOConfig


def disable_dropout(model) -> None:
    """Dropout off: the rollout's log-probs are then exactly those of the first update (ratio = 1)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def load_policy_and_reference(cfg: PPOConfig, device):
    """(policy, reference or None under LoRA, tokenizer)."""
    from transformers import AutoModelForCausalLM

    from pmopt.policy import attn_kwargs, load_tokenizer

    p = cfg.policy
    tokenizer = load_tokenizer(p.path, p.trust_remote_code)

    def load():
        model = AutoModelForCausalLM.from_pretrained(p.path, dtype=getattr(torch, p.dtype),
                                                     trust_remote_code=p.trust_remote_code,
                                                     **attn_kwargs(p.attn_implementation))
        disable_dropout(model)
        return model

    policy = load()
    if p.lora.enabled:
        from peft import get_peft_model

        return get_peft_model(policy, lora_config(p.lora, "CAUSAL_LM")), None, tokenizer
    reference = load().to(device).eval().requires_grad_(False)
    return policy, reference, tokenizer


def load_value_model(cfg: PPOConfig, tokenizer):
    """A sequence classifier over the policy's tokens; its head is read at every position."""
    from pmopt.pm.model import PreferenceModel, load_seq_cls

    source = cfg.value.path or (cfg.policy.path if cfg.value.init == "policy" else cfg.reward.path)
    if cfg.value.init == "pm" and not cfg.value.path:
        if cfg.reward.kind != "pm":
            raise ConfigError("value.init: 'pm' needs reward.kind 'pm' (or value.path)")
        pm = PreferenceModel.load(source, cfg.pm_options(None), device="cpu", device_map=None)  # trained as a value model
        members = getattr(pm, "members", [pm])  # an ensemble: its first member
        model, pm_tokenizer = members[0].model, members[0].tokenizer
        if pm_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ConfigError(f"value.init: 'pm': the PM at {source} has another vocabulary than the policy; "
                              "use value.init: policy")
    else:
        model = load_seq_cls(source, getattr(torch, cfg.policy.dtype), cfg.policy.trust_remote_code,
                             cfg.policy.attn_implementation, new_head=True)  # the value head is new
    model.config.pad_token_id = tokenizer.pad_token_id
    disable_dropout(model)
    if cfg.policy.lora.enabled:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(cfg.policy.lora, "SEQ_CLS", ["score"]))
    return model


__all__ = ["disable_dropout", "load_policy_and_reference", "load_value_model"]
