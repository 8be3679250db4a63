"""PM loading that refuses what it cannot trust, and `pmopt score`'s loading options.

Every broken checkpoint is a real tiny PM saved with `save_pretrained` and then damaged one way: weights
renamed, dropped or added, a config that no longer matches the weights' shapes, a corrupt or truncated
weights file, an unsafe or truncated pickle, a classifier config with two labels. Each must give one line
naming the file (exit 2 from the CLI, nothing written); the intact PM, its `.bin` copy and every loading
option must give the scores of the model's own forward pass.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from pmopt.cli import main
from pmopt.io import PmoptError, read_jsonl
from pmopt.pm.loading import PMLoadOptions, load_seq_cls
from pmopt.pm.model import PreferenceModel, length_buckets

WEIGHTS = "model.safetensors"


def copy_pm(tiny_pm, tmp_path):
    target = tmp_path / "pm"
    shutil.copytree(tiny_pm, target, ignore=shutil.ignore_patterns("checkpoints"))
    return target


def rewrite_weights(pm_dir, change):
    tensors = load_file(pm_dir / WEIGHTS)
    save_file(change(dict(tensors)), pm_dir / WEIGHTS, metadata={"format": "pt"})


def rewrite_config(pm_dir, change):
    config = json.loads((pm_dir / "config.json").read_text())
    change(config)
    (pm_dir / "config.json").write_text(json.dumps(config))


class RunsCode:
    """A pickle that would create a file when unpickled unsafely (torch.load(weights_only=False))."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def all_renamed(pm):
    rewrite_weights(pm, lambda t: {f"foo.{k}": v for k, v in t.items()})
    return pm / WEIGHTS, r"\d+ weights the model needs are missing .*model\.embed_tokens\.weight"


def one_missing(pm):
    rewrite_weights(pm, lambda t: {k: v for k, v in t.items() if k != "model.norm.weight"})
    return pm / WEIGHTS, r"1 weights the model needs are missing from the checkpoint \(model\.norm\.weight\)"


def score_head_missing(pm):
    rewrite_weights(pm, lambda t: {k: v for k, v in t.items() if not k.startswith("score.")})
    return pm / WEIGHTS, r"missing from the checkpoint \(score\.weight\)"


def one_unexpected(pm):
    rewrite_weights(pm, lambda t: {**t, "extra.weight": torch.zeros(3)})
    return pm / WEIGHTS, r"1 weights in the checkpoint have no place in the model \(extra\.weight\)"


def shape_mismatch(pm):
    rewrite_config(pm, lambda c: c.update(intermediate_size=96))
    return pm / WEIGHTS, r"weights have the wrong shape \(e\.g\. model\.layers\.0\.mlp\.down_proj\.weight"


def corrupt_file(pm):
    (pm / WEIGHTS).write_bytes(b"not a safetensors file" * 10)
    return pm / WEIGHTS, "could not load as a sequence classifier: .*header"


def truncated_file(pm):
    data = (pm / WEIGHTS).read_bytes()
    (pm / WEIGHTS).write_bytes(data[: len(data) // 2])
    return pm / WEIGHTS, "could not load as a sequence classifier: .*incomplete metadata"


def unsafe_pickle(pm):
    tensors = load_file(pm / WEIGHTS)
    (pm / WEIGHTS).unlink()
    torch.save({**tensors, "payload": RunsCode(pm / "pwned")}, pm / "pytorch_model.bin")
    return pm / "pytorch_model.bin", "could not load as a sequence classifier: Weights only load failed"


def truncated_pickle(pm):
    tensors = load_file(pm / WEIGHTS)
    (pm / WEIGHTS).unlink()
    torch.save(tensors, pm / "pytorch_model.bin")
    data = (pm / "pytorch_model.bin").read_bytes()
    (pm / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    return pm / "pytorch_model.bin", "could not load as a sequence classifier"


def two_labels(pm):
    rewrite_config(pm, lambda c: c.update(id2label={"0": "bad", "1": "good"}))
    return pm / "config.json", "field 'id2label': the checkpoint is a classifier with 2 labels"


def error_lines(stderr: str) -> list[str]:
    """stderr without transformers' progress bars (carriage-return lines): what the user reads as output."""
    return [line for line in stderr.splitlines() if line and "\r" not in line and "it/s]" not in line]


BREAKAGES = [all_renamed, one_missing, score_head_missing, one_unexpected, shape_mismatch, corrupt_file,
             truncated_file, unsafe_pickle, truncated_pickle, two_labels]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda f: f.__name__)
def test_broken_pm_is_refused_in_one_line_naming_the_file(breakage, tiny_pm, tmp_path, capsys):
    pm_dir = copy_pm(tiny_pm, tmp_path)
    named_file, pattern = breakage(pm_dir)
    with pytest.raises(PmoptError, match=pattern) as error:
        PreferenceModel.load(pm_dir, device="cpu")
    message = str(error.value)
    assert message.startswith(f"{named_file}: ") and "\n" not in message
    assert not (pm_dir / "pwned").exists(), "the pickle's code ran"

    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"prompt": "question dog ?", "response": "good cat"}) + "\n")
    capsys.readouterr()
    assert main(["score", "--pm", str(pm_dir), "--input", str(inputs), "--out", str(tmp_path / "out")]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"pmopt score: error: {named_file}: "), lines
    assert not (tmp_path / "out").exists()


def test_causal_lm_is_no_pm_but_can_start_one(tiny_pm_setup, tiny_pm):
    """A base causal LM gets a fresh score head only where a PM or value model starts training."""
    with pytest.raises(PmoptError, match="LlamaForCausalLM checkpoint without a trained score head"):
        PreferenceModel.load(tiny_pm_setup.base, device="cpu")
    model = load_seq_cls(tiny_pm_setup.base, torch.float32, new_head=True)
    assert model.score.weight.shape == (1, 64)
    whole = load_seq_cls(tiny_pm, torch.float32, new_head=True)  # a whole PM keeps its trained head
    torch.testing.assert_close(whole.score.weight, load_file(tiny_pm / WEIGHTS)["score.weight"])


def test_new_head_is_not_allowed_for_a_classifier_checkpoint(tiny_pm, tmp_path):
    pm_dir = copy_pm(tiny_pm, tmp_path)
    score_head_missing(pm_dir)
    with pytest.raises(PmoptError, match=r"missing from the checkpoint \(score\.weight\)"):
        load_seq_cls(pm_dir, torch.float32, new_head=True)


def test_training_from_a_broken_checkpoint_is_refused(tiny_pm_setup, tiny_pm, tmp_path):
    from pmopt.pm.train import train_pm

    pm_dir = copy_pm(tiny_pm, tmp_path)
    one_missing(pm_dir)
    with pytest.raises(PmoptError, match=f"^{pm_dir / WEIGHTS}: 1 weights .* missing"):
        train_pm(tiny_pm_setup.config(model={"name_or_path": str(pm_dir)}), tmp_path / "out")
    assert not (tmp_path / "out" / "pmopt_pm.json").exists()


def test_bin_checkpoint_loads_with_weights_only_and_scores_the_same(tiny_pm, tmp_path):
    pm_dir = copy_pm(tiny_pm, tmp_path)
    torch.save(load_file(pm_dir / WEIGHTS), pm_dir / "pytorch_model.bin")
    (pm_dir / WEIGHTS).unlink()
    prompts, responses = ["question dog ?", "question sky tree ?"], ["good cat", "bad river"]
    expected = PreferenceModel.load(tiny_pm, device="cpu").score(prompts, responses)
    torch.testing.assert_close(PreferenceModel.load(pm_dir, device="cpu").score(prompts, responses), expected)


# ----------------------------------------------------------------------------- LoRA adapters


@pytest.fixture(scope="module")
def lora_pm(tiny_pm_setup, tmp_path_factory):
    from pmopt.pm.train import train_pm

    cfg = tiny_pm_setup.config(lora={"enabled": True, "r": 4, "alpha": 8}, train={"epochs": 1})
    return train_pm(cfg, tmp_path_factory.mktemp("lora_pm") / "lora")


def test_lora_adapter_without_its_score_head_or_corrupt_is_refused(lora_pm, tmp_path):
    adapter = tmp_path / "lora"
    shutil.copytree(lora_pm, adapter, ignore=shutil.ignore_patterns("checkpoints"))
    weights = adapter / "adapter_model.safetensors"
    PreferenceModel.load(adapter, device="cpu")  # intact: loads
    tensors = load_file(weights)
    save_file({k: v for k, v in tensors.items() if ".score." not in k}, weights)
    with pytest.raises(PmoptError, match=rf"^{weights}: 1 weights .* missing .*score"):
        PreferenceModel.load(adapter, device="cpu")
    weights.write_bytes(b"\x00" * 16)
    with pytest.raises(PmoptError, match=rf"^{weights}: could not load the LoRA adapter"):
        PreferenceModel.load(adapter, device="cpu")


# ----------------------------------------------------------------------------- pmopt score options


def test_hub_id_goes_down_the_hub_path(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"prompt": "hi", "response": "there"}) + "\n")
    assert main(["score", "--pm", "some-org/some-reward-model", "--input", str(inputs),
                 "--out", str(tmp_path / "out")]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "some-org/some-reward-model: not found locally; loading it as a hub model id" in lines[0]
    assert "no such directory" not in lines[0] and not (tmp_path / "out").exists()
    assert main(["score", "--pm", str(tmp_path / "nope" / "pm" / "x"), "--input", str(inputs)]) == 2
    assert "no such directory (and not a hub model id" in capsys.readouterr().err


def test_loading_flags_reach_from_pretrained(tiny_pm, tiny_pm_setup, tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    seen = []
    original = AutoModelForSequenceClassification.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", classmethod(spy))
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"prompt": p["prompt"], "response": p["chosen"]}) + "\n"
                              for p in tiny_pm_setup.pairs[:6]))
    assert main(["score", "--pm", str(tiny_pm), "--input", str(inputs), "--out", str(tmp_path / "a")]) == 0
    assert seen[-1]["trust_remote_code"] is False and seen[-1]["device_map"] is None
    assert seen[-1]["weights_only"] is True and seen[-1]["dtype"] == torch.float32
    assert main(["score", "--pm", str(tiny_pm), "--input", str(inputs), "--out", str(tmp_path / "b"),
                 "--trust-remote-code", "--device-map", "auto", "--dtype", "bfloat16"]) == 0
    assert seen[-1]["trust_remote_code"] is True and seen[-1]["device_map"] == "auto"
    assert seen[-1]["dtype"] == torch.bfloat16
    a, b = read_jsonl(tmp_path / "a" / "scores.jsonl"), read_jsonl(tmp_path / "b" / "scores.jsonl")
    assert [r["score"] for r in b] == pytest.approx([r["score"] for r in a], abs=0.05)  # bf16 rounding


def test_device_map_auto_and_dtypes_score_like_the_default(tiny_pm, tiny_pm_setup):
    prompts = [p["prompt"] for p in tiny_pm_setup.pairs[:8]]
    responses = [p["rejected"] for p in tiny_pm_setup.pairs[:8]]
    default = PreferenceModel.load(tiny_pm, device="cpu")
    mapped = PreferenceModel.load(tiny_pm, PMLoadOptions(device_map="auto"))
    torch.testing.assert_close(mapped.score(prompts, responses), default.score(prompts, responses))
    half = PreferenceModel.load(tiny_pm, PMLoadOptions(dtype="bfloat16", device="cpu"))
    assert next(half.model.parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(half.score(prompts, responses), default.score(prompts, responses), atol=0.05, rtol=0)


def test_max_length_keeps_the_last_tokens_and_counts(tiny_pm, tiny_pm_setup, tmp_path, capsys):
    limit = 9
    records = [{"prompt": p["prompt"], "response": p["chosen"]} for p in tiny_pm_setup.pairs[:12]]
    pm = PreferenceModel.load(tiny_pm, device="cpu")
    ids = pm.encode_pairs([r["prompt"] for r in records], [r["response"] for r in records])
    n_long = sum(len(x) > limit for x in ids)
    assert 0 < n_long < len(ids), "need records on both sides of the limit"
    with torch.inference_mode():
        expected = [pm.model(input_ids=torch.tensor([x[-limit:]])).logits[0, 0].item() for x in ids]

    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in records))
    capsys.readouterr()
    assert main(["score", "--pm", str(tiny_pm), "--input", str(inputs), "--out", str(tmp_path / "out"),
                 "--max-length", str(limit), "--batch-size", "5"]) == 0
    assert f"{n_long} of {len(records)} records truncated to --max-length={limit} tokens" in capsys.readouterr().out
    scores = [r["score"] for r in read_jsonl(tmp_path / "out" / "scores.jsonl")]
    assert scores == pytest.approx(expected, abs=1e-4)


def test_token_budget_batches_by_brute_force():
    lengths = [10, 9, 3, 3, 3, 1]
    sequences = [[0] * n for n in lengths]
    assert length_buckets(sequences, 32, max_tokens=20) == [[0, 1], [2, 3, 4, 5]]
    assert length_buckets(sequences, 3, max_tokens=20) == [[0, 1], [2, 3, 4], [5]]
    assert length_buckets(sequences, 32, max_tokens=5) == [[0], [1], [2], [3], [4], [5]]
    assert length_buckets(sequences, 2) == [[0, 1], [2, 3], [4, 5]]
    rng = torch.Generator().manual_seed(0)
    for budget in (1, 7, 30, 100):
        seqs = [[0] * int(n) for n in torch.randint(1, 25, (40,), generator=rng)]
        batches = length_buckets(seqs, 8, budget)
        assert sorted(i for b in batches for i in b) == list(range(40))
        for batch in batches:
            width = max(len(seqs[i]) for i in batch)
            assert len(batch) <= 8 and (len(batch) == 1 or len(batch) * width <= budget)


def test_token_budget_does_not_change_scores(tiny_pm, tiny_pm_setup):
    prompts = [p["prompt"] for p in tiny_pm_setup.pairs[:20]]
    responses = [p["chosen"] + " tree" * (i % 7) for i, p in enumerate(tiny_pm_setup.pairs[:20])]
    plain = PreferenceModel.load(tiny_pm, device="cpu").score(prompts, responses, batch_size=1)
    budget = PreferenceModel.load(tiny_pm, device="cpu", max_batch_tokens=40).score(prompts, responses)
    torch.testing.assert_close(budget, plain, atol=1e-4, rtol=0)


def test_bad_options_are_one_line_errors(tiny_pm, tmp_path, capsys):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"prompt": "hi", "response": "there"}) + "\n")
    for flags, expected in ((["--max-length", "0"], "--max-length: must be >= 1"),
                            (["--max-batch-tokens", "-3"], "--max-batch-tokens: must be >= 1"),
                            (["--device", "cpu", "--device-map", "auto"], "--device and --device-map: give one")):
        assert main(["score", "--pm", str(tiny_pm), "--input", str(inputs), *flags]) == 2
        assert expected in capsys.readouterr().err
    with pytest.raises(PmoptError, match="options.max_length: must be an integer >= 1"):
        PreferenceModel.load(tiny_pm, max_length=0)


# ----------------------------------------------------------------------------- the same options in bon and ppo


def test_bon_and_ppo_configs_take_the_same_loading_section(tmp_path):
    from pmopt.bon.sweep import BonConfig
    from pmopt.config import ConfigError, load_config
    from pmopt.rl.config import PPOConfig

    bon = load_config(BonConfig, data={"world": "w", "pms": [{"name": "p", "path": "x"}], "trust_remote_code": True,
                                       "pm_load": {"dtype": "bfloat16", "max_length": 256, "max_batch_tokens": 4096}})
    ppo = load_config(PPOConfig, data={"policy": {"path": "p"}, "prompts": {"world": "w"},
                                       "reward": {"path": "x", "pm_load": {"max_length": 64}}})
    assert type(bon.pm_load) is type(ppo.reward.pm_load) is PMLoadOptions
    run = bon.pm_load.for_run("cuda:0", bon.trust_remote_code, "eager")
    assert (run.device, run.trust_remote_code, run.attn_implementation, run.dtype) == ("cuda:0", True, "eager",
                                                                                       "bfloat16")
    assert PMLoadOptions(device_map="auto").for_run("cuda:0").device is None  # accelerate places it
    assert PMLoadOptions(device="cuda:1").for_run("cuda:0").device == "cuda:1"
    with pytest.raises(ConfigError, match="pm_load.max_length: must be an integer >= 1"):
        from pmopt.bon.sweep import _validate

        bon.pm_load.max_length = 0
        _validate(bon)
    with pytest.raises(ValueError, match="reward.pm_load.device_map: expected 'auto'"):
        ppo.reward.pm_load.device_map = "balanced"
        ppo.validate()


def test_ppo_reward_pm_loads_with_reward_pm_load(tiny_pm):
    from pmopt.config import load_config
    from pmopt.rl.config import PPOConfig
    from pmopt.rl.setup import load_reward

    cfg = load_config(PPOConfig, data={
        "policy": {"path": "p", "attn_implementation": "eager"}, "prompts": {"world": "w"},
        "reward": {"path": str(tiny_pm), "pm_load": {"dtype": "bfloat16", "max_length": 9}}})
    reward = load_reward(cfg, "cpu")
    options = reward.pm.options
    assert (options.max_length, options.attn_implementation, options.device) == (9, "eager", "cpu")
    assert next(reward.pm.model.parameters()).dtype == torch.bfloat16
    assert reward.pm.model.config._attn_implementation == "eager"
