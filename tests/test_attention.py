"""The attention-kernel knob: every model load takes `attn_implementation`, configs validate it."""

from __future__ import annotations

import pytest
import torch

from pmopt.config import ConfigError, load_config
from pmopt.io import PmoptError
from pmopt.policy import ATTN_IMPLEMENTATIONS, attn_kwargs, load_policy


def test_attn_kwargs():
    assert attn_kwargs(None) == {}
    assert attn_kwargs("eager") == {"attn_implementation": "eager"}
    assert {"sdpa", "eager", "flash_attention_2"} <= set(ATTN_IMPLEMENTATIONS)
    with pytest.raises(PmoptError, match="unknown attn_implementation 'flashy'"):
        attn_kwargs("flashy")


def test_policy_loads_with_the_chosen_kernel_and_the_kernels_agree(tiny_pm_setup):
    default, _ = load_policy(tiny_pm_setup.base, device="cpu")
    eager, _ = load_policy(tiny_pm_setup.base, device="cpu", attn_implementation="eager")
    assert default.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    ids = torch.tensor([[1, 5, 7, 2, 9, 4]])
    with torch.no_grad():
        torch.testing.assert_close(eager(ids).logits, default(ids).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(PmoptError, match="unknown attn_implementation"):
        load_policy(tiny_pm_setup.root / "does-not-exist", attn_implementation="flashy")  # before the path check


def test_pm_loads_with_the_chosen_kernel_and_scores_alike(tiny_pm, tiny_pm_setup):
    from pmopt.pm.model import PreferenceModel

    prompts = [p["prompt"] for p in tiny_pm_setup.pairs[:6]]
    responses = [p["chosen"] for p in tiny_pm_setup.pairs[:6]]
    default = PreferenceModel.load(tiny_pm, device="cpu")
    eager = PreferenceModel.load(tiny_pm, device="cpu", attn_implementation="eager")
    assert eager.model.config._attn_implementation == "eager"
    torch.testing.assert_close(eager.score(prompts, responses), default.score(prompts, responses), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("module,cls,data,key", [
    ("pmopt.pm.train", "PMTrainConfig", {"model": {"name_or_path": "x", "attn_implementation": "flashy"},
                                        "data": {"train": "x.jsonl"}}, "model.attn_implementation"),
    ("pmopt.bon.sweep", "BonConfig", {"world": "w", "attn_implementation": "flashy"}, "attn_implementation"),
    ("pmopt.rl.config", "PPOConfig", {"policy": {"path": "p", "attn_implementation": "flashy"}},
     "policy.attn_implementation"),
    ("pmopt.probes.run", "ProbeRunConfig", {"attn_implementation": "flashy"}, "attn_implementation"),
])
def test_configs_reject_an_unknown_kernel_naming_the_key(module, cls, data, key):
    import importlib

    config_class = getattr(importlib.import_module(module), cls)
    with pytest.raises(ConfigError, match=rf"'{key}': expected one of \['sdpa'"):
        load_config(config_class, data=data)
