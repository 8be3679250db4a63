"""`method: rloo`: TRL's RLOOTrainer behind PPO's config, probes and curve rows (pmopt/rl/rloo.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pmopt.config import ConfigError, load_config
from pmopt.io import read_jsonl, read_metrics
from pmopt.records import validate_curve_row
from pmopt.rl.command import run_rl
from pmopt.rl.config import PPOConfig
from pmopt.rl.rloo import check_rloo_config, reward_funcs, rloo_args, updates_per_step


@pytest.fixture(scope="module")
def seeded_pm(seeded_world_pm):
    return seeded_world_pm


def rloo_config(world, pm, *overrides) -> PPOConfig:
    data = {
        "method": "rloo", "policy": {"path": str(world / "policy")}, "reward": {"kind": "pm", "path": str(pm)},
        "prompts": {"world": str(world), "n_prompts": 64}, "sampling": {"max_new_tokens": 16},
        "rloo": {"num_generations": 4}, "kl": {"beta": 0.05},
        "train": {"steps": 2, "rollout_batch_size": 8, "minibatch_size": 4, "ppo_epochs": 1, "learning_rate": 3e-4},
        "probes": {"every": 1, "samples_per_prompt": 1, "max_prompts": 8, "n_boot": 20},
        "checkpoint": {"every": 1}, "threads": 1,
    }
    return load_config(PPOConfig, data=data, overrides=list(overrides))


def test_rloo_optimises_the_pm_and_logs_gold_with_zero_weight(tmp_path, tiny_world, seeded_pm):
    from pmopt.policy import load_policy

    out = run_rl(rloo_config(tiny_world, seeded_pm), tmp_path / "run")
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "rloo/reward" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert math.isfinite(row["rloo/kl"]) and math.isfinite(row["rloo/rewards/gold/mean"])
        # the reward TRL optimises is the PM alone: gold enters with weight 0
        assert row["rloo/reward"] == pytest.approx(row["rloo/rewards/pm/mean"], abs=1e-5)
    curves = read_jsonl(out / "curves.jsonl", validate_curve_row)
    assert {r["step"] for r in curves} == {0, 1, 2}
    assert {r["rl_method"] for r in curves} == {"rloo"} and {r["pm"] for r in curves} == {"pm"}
    assert {"probe/answer/syco_rate", "pm/score", "gold/reward"} <= {r["metric"] for r in curves}
    assert all(r["kl"] == 0.0 for r in curves if r["step"] == 0)
    assert json.loads((out / "manifest.json").read_text())["stages"]["ppo"]["status"] == "done"
    trained, base = load_policy(out / "policy", device="cpu")[0], load_policy(tiny_world / "policy", device="cpu")[0]
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), base.state_dict().values(),
                                                      strict=True))
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert updates_per_step(rloo_config(tiny_world, seeded_pm)) == 2


def test_reward_functions_penalise_missing_eos_and_grade_gold(tiny_world, seeded_pm):
    from pmopt.world.config import WorldConfig
    from pmopt.world.raters import gold_reward

    cfg = rloo_config(tiny_world, seeded_pm)
    records = read_jsonl(tiny_world / "probes" / "answer.jsonl")[:2]
    pm, gold = reward_funcs(cfg, lambda prompts, responses, metas: torch.zeros(len(prompts)), records, eos_id=1)
    assert (pm.__name__, gold.__name__) == ("pm", "gold")
    completions = [" the answer is 7 .", "the answer is"]
    scores = pm(prompts=None, completions=completions, completion_ids=[[5, 1], [5, 6]], prompt_index=[0, 1])
    assert scores == [0.0, -cfg.reward.missing_eos_penalty]  # the second was cut before EOS
    raters = load_config(WorldConfig, tiny_world / "config.yaml").raters
    expected = [gold_reward(r["meta"], c.strip(), raters) for r, c in zip(records, completions, strict=True)]
    assert gold(prompts=None, completions=completions, prompt_index=[0, 1]) == expected


def test_rloo_config_errors(tiny_world, seeded_pm):
    with pytest.raises(ConfigError, match="kl.adaptive"):
        check_rloo_config(rloo_config(tiny_world, seeded_pm, "kl.adaptive=true"), 1)
    with pytest.raises(ConfigError, match="num_generations"):
        check_rloo_config(rloo_config(tiny_world, seeded_pm, "rloo.num_generations=3"), 1)
    with pytest.raises(ConfigError, match="minibatch_size"):
        check_rloo_config(rloo_config(tiny_world, seeded_pm), 3)


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_rloo_warms_up_the_learning_rate_as_configured(tiny_world, seeded_pm, tmp_path, schedule):
    from transformers import get_scheduler

    cfg = rloo_config(tiny_world, seeded_pm, f"train.lr_schedule={schedule}", "train.warmup_steps=3",
                      "train.learning_rate=0.01")
    args = rloo_args(cfg, tmp_path, 1)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.warmup_steps,
                              num_training_steps=args.max_steps)
    rates = []
    for _ in range(5):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[:4] == pytest.approx([0.0, 0.01 / 3, 0.02 / 3, 0.01])  # warmup, then the configured rate
    if schedule == "constant":
        assert rates[4] == pytest.approx(0.01)
    else:
        assert rates[4] < rates[3]
