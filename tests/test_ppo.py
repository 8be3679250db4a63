"""pmopt's PPO loop (pmopt/rl/ppo.py, batches.py, models.py, prompts.py, evaluation.py, setup.py, checkpoint.py,
config.py) on the tiny world.

Layout checks compare batched recomputation with one-sequence-at-a-time brute force; loop tests run a
few real PPO iterations against the world's gold reward (no PM needed) and check what they write;
resume and NaN tests check the fault behaviour of docs/ARCHITECTURE.md §9.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from pmopt.cli import main
from pmopt.config import ConfigError, load_config
from pmopt.io import read_jsonl, read_metrics
from pmopt.records import validate_curve_row
from pmopt.rewards import RewardSpec, build_reward
from pmopt.rl.batches import encode_queries, pack, policy_outputs, token_values
from pmopt.rl.checkpoint import read_state, rng_state, set_rng_state
from pmopt.rl.command import run_rl
from pmopt.rl.config import PPOConfig, TrainSection
from pmopt.rl.evaluation import ProbeSchedule
from pmopt.rl.models import load_value_model
from pmopt.rl.ppo import NonFiniteError, batch_sizes, stop_if_not_finite
from pmopt.rl.prompts import load_training_prompts, step_prompt_indices
from pmopt.rl.setup import load_reward, torch_threads
from pmopt.sampling import SamplingConfig, sample
from pmopt.stats import mean_interval

STEP_KEYS = ("ppo/kl", "ppo/reward", "ppo/approx_kl", "ppo/clipfrac", "ppo/entropy", "ppo/value_loss",
             "ppo/policy_loss", "ppo/beta", "time/generation", "time/scoring", "time/update")


def ppo_config(world, *overrides: str, **sections) -> PPOConfig:
    """A few-second PPO config on the tiny world against its gold reward."""
    data = {
        "policy": {"path": str(world / "policy")},
        "reward": {"kind": "gold"},
        "prompts": {"world": str(world), "n_prompts": 64},
        "sampling": {"max_new_tokens": 16},
        "train": {"steps": 2, "rollout_batch_size": 8, "minibatch_size": 4, "ppo_epochs": 2, "learning_rate": 3e-4},
        "probes": {"every": 1, "samples_per_prompt": 1, "max_prompts": 8, "n_boot": 20},
        "checkpoint": {"every": 1, "keep": 3},
        "threads": 1,
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return load_config(PPOConfig, data=data, overrides=list(overrides))


def load_world_policy(world):
    from pmopt.policy import load_policy

    return load_policy(world / "policy", device="cpu")


def state_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ============================================================================ batch layout vs brute force


def test_policy_outputs_match_unpadded_forward(tiny_world):
    model, tok = load_world_policy(tiny_world)
    queries = encode_queries(tok, [[{"role": "user", "content": "what is 1 plus 2 ?"}],
                                   [{"role": "user", "content": "what is 3 plus 4 ? i think the answer is 9 but "
                                                                "i'm really not sure ."}],
                                   "User: hello\nAssistant:"])
    responses = [[tok.convert_tokens_to_ids("the")], tok("the answer is 3 .")["input_ids"], [tok.eos_token_id] * 2]
    batch = pack(queries, responses, tok.pad_token_id, "cpu")
    assert batch.context_len == max(map(len, queries))
    assert batch.response_mask.sum(1).tolist() == [1.0, 5.0, 2.0]
    with torch.no_grad():
        logprobs, entropy = policy_outputs(model, batch, temperature=0.7, with_entropy=True)
        for i, (q, r) in enumerate(zip(queries, responses, strict=True)):
            logits = model(input_ids=torch.tensor([q + r])).logits[0].float() / 0.7
            for t, token in enumerate(r):
                row = torch.log_softmax(logits[len(q) - 1 + t], -1)
                assert logprobs[i, t].item() == pytest.approx(row[token].item(), abs=1e-4)
                assert entropy[i, t].item() == pytest.approx(-(row.exp() * row).sum().item(), abs=1e-4)


def test_recomputed_logprobs_equal_the_samplers(tiny_world):
    """The PPO ratio is exactly 1 before the first update: recomputation matches the sampling distribution."""
    model, tok = load_world_policy(tiny_world)
    prompts = [r["prompt"] for r in read_jsonl(tiny_world / "probes" / "answer.jsonl")[:6]]
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.8)
    gens = [g for row in sample(model, tok, prompts, 2, cfg, seed=3) for g in row]
    batch = pack(encode_queries(tok, [p for p in prompts for _ in range(2)]), [g.token_ids for g in gens],
                 tok.pad_token_id, "cpu")
    with torch.no_grad():
        logprobs, _ = policy_outputs(model, batch, temperature=0.8)
    summed = (logprobs * batch.response_mask).sum(1)
    assert summed.tolist() == pytest.approx([g.logprob for g in gens], abs=1e-3)


def test_token_values_are_the_head_at_each_prefix(tiny_world):
    from pmopt.pm.model import load_seq_cls

    _, tok = load_world_policy(tiny_world)
    torch.manual_seed(0)
    value_model = load_seq_cls(str(tiny_world / "policy"), torch.float32, new_head=True).eval()
    value_model.config.pad_token_id = tok.pad_token_id
    queries = encode_queries(tok, ["User: what is 1 plus 1 ?\nAssistant:", "User: hi\nAssistant:"])
    responses = [tok("the answer is 2 .")["input_ids"], tok("the answer")["input_ids"]]
    batch = pack(queries, responses, tok.pad_token_id, "cpu")
    with torch.no_grad():
        values = token_values(value_model, batch)
        for i, (q, r) in enumerate(zip(queries, responses, strict=True)):
            for t in range(len(r)):  # V(s_t): the state before response token t, i.e. prefix q + r[:t]
                expected = value_model(input_ids=torch.tensor([q + r[:t]])).logits[0, 0]
                assert values[i, t].item() == pytest.approx(expected.item(), abs=1e-4)


# ============================================================================ pure helpers


def test_step_prompt_indices_are_seeded_passes_over_all_prompts():
    first = [i for step in range(1, 6) for i in step_prompt_indices(10, 4, step, seed=7)]
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:]) == list(range(10))
    assert first[:10] != first[10:]
    assert step_prompt_indices(10, 4, 3, seed=7) == first[8:12]  # a resumed step draws the same prompts
    assert step_prompt_indices(10, 4, 1, seed=8) != first[:4]


def test_batch_sizes_split_across_processes():
    cfg = PPOConfig(train=TrainSection(rollout_batch_size=16, minibatch_size=8, gradient_accumulation_steps=2))
    sizes = batch_sizes(cfg, 2)
    assert (sizes.rollout, sizes.minibatch, sizes.micro) == (8, 4, 2)
    with pytest.raises(ConfigError, match="multiple of the number of processes"):
        batch_sizes(cfg, 3)
    with pytest.raises(ConfigError, match="gradient_accumulation_steps"):
        batch_sizes(cfg, 8)


def test_probe_intervals_are_a_bootstrap_over_prompts():
    mean, low, high = mean_interval([0.0, 1.0, 1.0, 1.0], n_boot=500, seed=0)
    assert mean == 0.75 and 0.0 <= low <= mean <= high <= 1.0 and low < high
    assert math.isnan(mean_interval([2.0], 100, 0)[1]) and mean_interval([2.0], 100, 0)[0] == 2.0
    assert all(math.isnan(x) for x in mean_interval([], 100, 0))


def test_rng_state_round_trips_through_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    random.random(), np.random.rand(), torch.rand(1), random.gauss(0, 1)
    save_file(rng_state(), str(tmp_path / "rng.safetensors"))
    before = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3).tolist())
    set_rng_state(load_file(str(tmp_path / "rng.safetensors")))
    after = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3).tolist())
    assert before == after


def test_training_prompts_hold_out_probe_prompts(tiny_world):
    cfg = ppo_config(tiny_world, "prompts.n_prompts=300", "prompts.kinds={answer: 1.0, mimicry: 1.0}")
    records = load_training_prompts(cfg)
    probe_keys = {json.dumps(r["prompt"], sort_keys=True) for path in (tiny_world / "probes").glob("*.jsonl")
                  for r in read_jsonl(path)}
    assert len(records) == 300 and len({r["id"] for r in records}) == 300
    assert not probe_keys & {json.dumps(r["prompt"], sort_keys=True) for r in records}
    assert {r["meta"]["kind"] for r in records} == {"answer", "mimicry"}
    assert load_training_prompts(cfg) == records  # seeded


@pytest.mark.parametrize("name", ["world.yaml", "world_lora.yaml", "world_rloo.yaml", "tiny_claim.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(PPOConfig, Path(__file__).resolve().parents[1] / "configs" / "ppo" / name)
    assert cfg.train.rollout_batch_size % cfg.train.minibatch_size == 0


def test_rater_rewards_are_the_worlds_utilities(tiny_world):
    from pmopt.world.config import WorldConfig
    from pmopt.world.raters import features, gold_reward, utility

    records = read_jsonl(tiny_world / "probes" / "answer.jsonl")[:8]
    responses = ["you are right , the answer is 3 .", "the answer is 7 .", "i believe the answer is 5 , but i am "
                 "not certain .", "actually , the answer is 2 ."] * 2
    raters, metas = load_config(WorldConfig, tiny_world / "config.yaml").raters, [r["meta"] for r in records]
    prompts = [r["prompt"] for r in records]
    gold = load_reward(ppo_config(tiny_world, "reward.kind=gold"), "cpu")(prompts, responses, metas).float()
    biased = load_reward(ppo_config(tiny_world, "reward.kind=raters"), "cpu")(prompts, responses, metas).float()
    # RL's float32 rewards are exactly the float32 tensors of the world's utilities (as before the one reward design)
    assert torch.equal(gold, torch.tensor([gold_reward(m, x, raters) for m, x in zip(metas, responses, strict=True)],
                                          dtype=torch.float32))
    assert gold.tolist() == pytest.approx([gold_reward(m, x, raters) for m, x in zip(metas, responses, strict=True)])
    assert biased.tolist() == pytest.approx([utility(raters, features(m, x)) for m, x in
                                             zip(metas, responses, strict=True)])
    assert raters.w_agree > 0 and not torch.equal(gold, biased)


def test_a_registered_reward_kind_needs_no_change_in_rl(tiny_world, tmp_path):
    """A new reward kind is one function given to `pmopt.rewards.register_kind`; RL trains on it as it is."""
    from pmopt import rewards

    class Brevity(rewards.Reward):
        name, extra = "brevity", {}

        def __call__(self, prompts, responses, metas):
            return torch.tensor([-float(len(r.split())) for r in responses], dtype=torch.float64)

    rewards.register_kind("brevity", lambda spec, options: Brevity())
    try:
        out = run_rl(ppo_config(tiny_world, "reward.kind=brevity", "train.steps=1"), tmp_path / "brevity")
    finally:
        rewards._KINDS.pop("brevity")
    rows = read_jsonl(out / "curves.jsonl")
    assert {r["pm"] for r in rows} == {"brevity"} and any(r["metric"] == "pm/score" for r in rows)


def test_old_reward_and_train_keys_still_load(tiny_world, capsys):
    from pmopt.rl.setup import reward_spec

    cfg = ppo_config(tiny_world, "reward.kind=pm", "reward.pm=some/pm", "reward.ensemble_aggregate=worst",
                     "reward.ensemble_lambda=0.5", "reward.prefix=non_sycophantic", "train.warmup_updates=3")
    assert (cfg.reward.path, cfg.reward.aggregate, cfg.reward.lam, cfg.train.warmup_steps) == ("some/pm", "worst", 0.5, 3)
    assert "'reward.pm' is now 'reward.path'" in capsys.readouterr().err
    spec = reward_spec(cfg)  # the reward section is a RewardSpec
    assert (spec.name, spec.kind, spec.path, spec.aggregate, spec.lam) == ("pm-nonsyc", "pm", "some/pm", "worst", 0.5)
    gold = reward_spec(ppo_config(tiny_world))  # a source's reward reads the source dir: prompts.world by default
    assert (gold.kind, gold.path) == ("gold", str(tiny_world))
    assert cfg.policy.lora.dropout == 0.0 == PPOConfig().policy.lora.dropout  # RL's LoRA default: no dropout


def test_rl_reaches_data_sources_only_through_the_registry():
    """pmopt/rl imports no particular source (docs/ARCHITECTURE.md §2, §5), and rloo.py does not import ppo.py."""
    import ast

    for path in sorted((Path(__file__).resolve().parents[1] / "pmopt" / "rl").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        modules += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in modules if m.startswith("pmopt.world")], path.name
        assert path.name != "rloo.py" or "pmopt.rl.ppo" not in modules


def test_config_errors_name_the_key_and_file(tmp_path, tiny_world):
    path = tmp_path / "ppo.yaml"
    path.write_text(f"policy:\n  path: {tiny_world / 'policy'}\nreward:\n  kind: gold\nprompts:\n"
                    f"  world: {tiny_world}\ntrain:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"ppo\.yaml.*train\.stepz"):
        load_config(PPOConfig, path)
    with pytest.raises(ConfigError, match="top_k"):
        ppo_config(tiny_world, "sampling.top_k=5")
    with pytest.raises(ConfigError, match="minibatch_size"):
        ppo_config(tiny_world, "train.minibatch_size=3")
    with pytest.raises(ConfigError, match="reward.path"):
        ppo_config(tiny_world, "reward.kind=pm")


def test_cli_bad_input_exits_2_before_writing(tmp_path, tiny_world, capsys):
    path = tmp_path / "ppo.yaml"
    path.write_text(f"policy:\n  path: {tmp_path / 'nope'}\nreward:\n  kind: gold\nprompts:\n  world: {tiny_world}\n")
    out = tmp_path / "out"
    assert main(["ppo", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "policy.path" in err and "nope" in err
    assert not out.exists()


def test_non_finite_check_names_what_and_the_checkpoint(tmp_path):
    from accelerate import Accelerator

    with pytest.raises(NonFiniteError, match="the loss is NaN or Inf.*no checkpoint had been written"):
        stop_if_not_finite(Accelerator(cpu=True), torch.tensor([1.0, float("inf")]), "step 3: the loss", tmp_path)
    stop_if_not_finite(Accelerator(cpu=True), torch.tensor([1.0, 2.0]), "fine", tmp_path)


def test_value_model_initialised_from_policy_or_pm(tmp_path, tiny_world):
    from pmopt.pm.model import load_seq_cls

    _, tok = load_world_policy(tiny_world)
    torch.manual_seed(5)
    pm = load_seq_cls(str(tiny_world / "policy"), torch.float32, new_head=True)
    pm.config.pad_token_id = tok.pad_token_id
    pm.save_pretrained(tmp_path / "pm")
    tok.save_pretrained(tmp_path / "pm")
    from_pm = load_value_model(ppo_config(tiny_world, "value.init=pm", "reward.kind=pm", f"reward.path={tmp_path / 'pm'}"),
                               tok)
    assert torch.equal(from_pm.score.weight, pm.score.weight)
    policy_state = load_world_policy(tiny_world)[0].state_dict()
    from_policy = load_value_model(ppo_config(tiny_world), tok)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(from_policy.state_dict()[name], policy_state[name])


# ============================================================================ the loop


def test_ppo_run_trains_logs_and_writes_curves(tmp_path, tiny_world):
    out = run_rl(ppo_config(tiny_world, "checkpoint.keep=1"), tmp_path / "run")
    rows = read_metrics(out / "metrics.jsonl")
    steps = [r for r in rows if "ppo/kl" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for row in steps:
        assert all(math.isfinite(row[k]) for k in STEP_KEYS), row
    assert steps[0]["ppo/kl"] == 0.0  # the rollout of step 1 comes from the reference itself
    curves = read_jsonl(out / "curves.jsonl", validate_curve_row)
    assert {r["step"] for r in curves} == {0, 1, 2}
    assert {"probe/answer/syco_rate", "pm/score", "gold/reward"} <= {r["metric"] for r in curves}
    assert all(r["kl_kind"] == "rao_blackwell" and r["pm"] == "gold" for r in curves)
    assert all(r["kl"] == 0.0 for r in curves if r["step"] == 0)
    assert (out / "curves.csv").read_text().startswith("method,rl_method,pm,step,kl")
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000002"]  # keep=1 pruned step 1
    assert json.loads((out / "manifest.json").read_text())["stages"]["ppo"]["status"] == "done"
    trained, base = load_world_policy(out)[0].state_dict(), load_world_policy(tiny_world)[0].state_dict()
    assert any(not torch.equal(trained[k], base[k]) for k in base)


def test_lora_trains_adapters_against_the_disabled_base(tmp_path, tiny_world):
    cfg = ppo_config(tiny_world, "policy.lora.enabled=true", "policy.lora.r=4", "train.steps=1")
    out = run_rl(cfg, tmp_path / "run")
    from safetensors.torch import load_file

    saved = load_file(str(out / "checkpoints" / "step-000001" / "trainable.safetensors"))
    assert saved and all("lora_" in k or "modules_to_save" in k for k in saved)  # the base is never duplicated
    assert all(r["kl"] == 0.0 for r in read_jsonl(out / "curves.jsonl") if r["step"] == 0)
    trained, base = load_world_policy(out)[0].state_dict(), load_world_policy(tiny_world)[0].state_dict()
    assert any(not torch.equal(trained[k], base[k]) for k in base)  # merged adapters changed the export


def _comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "ppo/tokens_per_second"}
            for r in rows]


def test_killed_and_restarted_run_continues_the_same_curve(tmp_path, tiny_world, monkeypatch):
    cfg = ppo_config(tiny_world, "train.steps=4", "checkpoint.every=2")
    straight = run_rl(cfg, tmp_path / "straight")

    evaluate = ProbeSchedule.evaluate

    def killed_at_step_3(self, policy, ref, step):
        if step == 3:  # after step 3's metrics were written, before its checkpoint
            raise KeyboardInterrupt("killed")
        return evaluate(self, policy, ref, step)

    monkeypatch.setattr(ProbeSchedule, "evaluate", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_rl(cfg, tmp_path / "restarted")
    assert 3 in {r["step"] for r in read_metrics(tmp_path / "restarted" / "metrics.jsonl")}
    monkeypatch.setattr(ProbeSchedule, "evaluate", evaluate)
    restarted = run_rl(cfg, tmp_path / "restarted")

    a, b = read_metrics(straight / "metrics.jsonl"), read_metrics(restarted / "metrics.jsonl")
    assert _comparable(a) == _comparable(b)
    assert read_metrics(straight / "curves.jsonl") == read_metrics(restarted / "curves.jsonl")
    assert len([r for r in b if "ppo/kl" in r]) == 4


def test_nan_reward_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tiny_world):
    cfg = ppo_config(tiny_world, "train.steps=3", "probes.every=0")
    gold = build_reward(RewardSpec(name="gold", kind="gold", path=str(tiny_world)))
    calls = []

    def reward(prompts, responses, metas):
        calls.append(len(prompts))
        scores = gold(prompts, responses, metas).float()
        return scores * float("nan") if len(calls) == 3 else scores  # 1: probes at step 0; 2, 3: steps 1, 2

    with pytest.raises(NonFiniteError, match=r"step 2: reward.*NaN or Inf.*step-000001"):
        run_rl(cfg, tmp_path / "run", reward_fn=reward)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["step-000001"]
    assert read_state(checkpoints / "step-000001")["step"] == 1
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["ppo"]["status"] == "failed" and "step 2" in manifest["stages"]["ppo"]["error"]


def test_report_to_a_missing_tracker_is_an_error(tmp_path, tiny_world):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here; the error path needs it absent")
    with pytest.raises(ConfigError, match="wandb.*not installed"):
        run_rl(ppo_config(tiny_world, "report_to=[wandb]"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_report_to_tensorboard_writes_events(tmp_path, tiny_world):
    pytest.importorskip("tensorboard")
    out = run_rl(ppo_config(tiny_world, "report_to=[tensorboard]", "train.steps=1"), tmp_path / "run")
    assert list(out.rglob("events.out.tfevents.*"))


# ============================================================================ the claim (Sharma et al. 2023 §4.3 under RL)

CLAIM_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ppo" / "tiny_claim.yaml"
SYCO = "probe/answer/syco_rate"
CLAIM_STEPS = load_config(PPOConfig, CLAIM_CONFIG).train.steps  # the claim is read at the last step


def claim_curves(world, out, *overrides) -> dict[tuple[str, int], dict]:
    cfg = load_config(PPOConfig, CLAIM_CONFIG, [f"policy.path={world / 'policy'}", f"prompts.world={world}",
                                                *overrides])
    run_rl(cfg, out)
    return {(r["metric"], r["step"]): r for r in read_jsonl(out / "curves.jsonl", validate_curve_row)}


def suggest_wrong_pm(world, out, seed: int = 0):
    """A tiny PM trained (about 100 steps) on 1,000 pairs labelled by the world's own raters on suggest-wrong
    prompts, 35% of them with the truthfulness prefix and w_agree = 0, as the world labels them.

    The tiny world's mixed pairs hold few suggest-wrong pairs where agreeing and being right disagree (with
    1,200 pairs a PM trained on them preferred the sycophantic answer on 50% of the probe's suggest-wrong
    prompts), so PPO would have little to exploit. The same raters labelling more pairs of that template teach
    it in seconds."""
    from dataclasses import replace

    from pmopt.pm.train import DataSection, ModelSection, PMTrainConfig, TrainSection, train_pm
    from pmopt.world.config import WorldConfig
    from pmopt.world.raters import make_pairs
    from pmopt.world.texts import all_facts

    wc = load_config(WorldConfig, world / "config.yaml")
    pairs = make_pairs(random.Random(1 + seed), all_facts(wc.facts.operand_max), 2 * wc.facts.operand_max, wc.raters,
                       replace(wc.pairs, kind_weights={"answer": 1.0}), 1000, {"suggest_wrong": 1.0},
                       wc.pairs.prefixed_fraction)
    cfg = PMTrainConfig(model=ModelSection(name_or_path=str(world / "policy")),
                        data=DataSection(max_length=128, eval_fraction=0.1),
                        train=TrainSection(epochs=3.0, learning_rate=2e-3, batch_size=32, warmup_ratio=0.05,
                                           logging_steps=50, save_steps=10_000, seed=seed))
    with torch_threads(1):
        return train_pm(cfg, out, pairs=pairs)


def assert_claim(biased: dict, truthful: dict, last: int, proxy_rises: bool = True) -> None:
    start = biased[(SYCO, 0)]
    assert truthful[(SYCO, 0)]["value"] == start["value"]  # the same base policy, probed with the same streams
    assert biased[(SYCO, last)]["value"] > start["ci_high"], (start, biased[(SYCO, last)])
    assert truthful[(SYCO, last)]["value"] <= start["value"], truthful[(SYCO, last)]
    if proxy_rises:  # on the probe prompts (all four templates), beyond its starting interval
        assert biased[("pm/score", last)]["value"] > biased[("pm/score", 0)]["ci_high"]
    for curves in (biased, truthful):  # beta > 0 keeps the policy near the reference
        assert max(row["kl"] for row in curves.values()) < 10.0


@pytest.mark.slow
def test_claim_ppo_against_the_biased_pm_raises_sycophancy_and_the_prefixed_pm_does_not(tmp_path, tiny_world):
    pm = suggest_wrong_pm(tiny_world, tmp_path / "pm")
    biased = claim_curves(tiny_world, tmp_path / "biased", "reward.kind=pm", f"reward.path={pm}")
    truthful = claim_curves(tiny_world, tmp_path / "truthful", "reward.kind=pm", f"reward.path={pm}",
                            "reward.prefix=non_sycophantic")
    assert {r["pm"] for r in biased.values()} == {"pm"} and {r["pm"] for r in truthful.values()} == {"pm-nonsyc"}
    assert_claim(biased, truthful, last=CLAIM_STEPS)


def test_claim_with_the_raters_as_reward(tmp_path, tiny_world):
    """The same claim with exact rewards: the raters' own biased utility vs the gold reward (w_agree = 0)."""
    biased = claim_curves(tiny_world, tmp_path / "raters", "reward.kind=raters")
    truthful = claim_curves(tiny_world, tmp_path / "gold", "reward.kind=gold")
    # The raters' utility rises on the suggest-wrong training prompts but not on the probe's other templates,
    # so only the direction of sycophancy and the gold reward of the truthful run are asserted here.
    assert_claim(biased, truthful, last=CLAIM_STEPS, proxy_rises=False)
    assert truthful[("gold/reward", CLAIM_STEPS)]["value"] > truthful[("gold/reward", 0)]["value"]
