"""PM training on TRL's RewardTrainer: full and LoRA, ensembles, resume, HH-RLHF, bad input via the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from pmopt.cli import main
from pmopt.config import load_config
from pmopt.data.preferences import load_pairs, split_pairs
from pmopt.io import read_metrics
from pmopt.pm import EnsemblePM, PreferenceModel, aggregate
from pmopt.pm import train as pm_train
from pmopt.pm.train import PMTrainConfig, train_pm

BACKBONE_WEIGHT = "model.layers.0.self_attn.q_proj.weight"


def test_full_pm_trains_learns_and_saves(tiny_pm, tiny_pm_setup):
    before = load_file(tiny_pm_setup.base / "model.safetensors")[BACKBONE_WEIGHT]
    after = load_file(tiny_pm / "model.safetensors")[BACKBONE_WEIGHT]
    assert not torch.allclose(before, after), "backbone weights did not change"

    rows = read_metrics(tiny_pm / "metrics.jsonl")
    losses = [r["pm/loss"] for r in rows if "pm/loss" in r]
    assert losses and all(math.isfinite(v) for v in losses)
    final = [r for r in rows if r.get("final")]
    assert len(final) == 1 and final[0]["pm/n_eval"] == 16 and final[0]["pm/accuracy"] >= 0.9

    info = json.loads((tiny_pm / "pmopt_pm.json").read_text())
    assert info["kind"] == "full" and info["eval_accuracy"] == final[0]["pm/accuracy"]
    assert (info["n_train"], info["n_eval"], info["max_length"]) == (48, 16, 64)
    assert info["base_model"] == str(tiny_pm_setup.base)
    assert not list(tiny_pm.glob("*.bin")), "the final model must be safetensors only"
    assert load_config(PMTrainConfig, tiny_pm / "config.yaml") == tiny_pm_setup.config()

    pm = PreferenceModel.load(tiny_pm)
    scores = pm.score(["question dog ?"] * 2, ["good cat tree", "bad cat tree"])
    assert scores.dtype == torch.float32 and scores[0] > scores[1]


def test_lora_pm_saves_score_head_and_reloads_to_the_same_scores(tiny_pm_setup, tmp_path, monkeypatch):
    captured = {}
    original_save = pm_train.save_member

    def capture(cfg, trainer, tokenizer, *args, **kwargs):
        captured["pm"] = PreferenceModel(trainer.model, tokenizer)
        return original_save(cfg, trainer, tokenizer, *args, **kwargs)

    monkeypatch.setattr(pm_train, "save_member", capture)
    cfg = tiny_pm_setup.config(lora={"enabled": True, "r": 4, "alpha": 8},
                               train={"learning_rate": 1e-2, "batch_size": 16, "epochs": 4})
    out = train_pm(cfg, tmp_path / "lora")

    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
        lora_b = [handle.get_tensor(k) for k in keys if "lora_B" in k]
    assert any(k.endswith("score.weight") for k in keys), f"score head not saved: {keys}"
    assert lora_b and any(t.abs().max() > 0 for t in lora_b), "LoRA B matrices are still zero"
    info = json.loads((out / "pmopt_pm.json").read_text())
    assert info["kind"] == "lora" and info["eval_accuracy"] >= 0.9

    prompts = [p["prompt"] for p in tiny_pm_setup.pairs[:12]]
    responses = [p["chosen"] if i % 2 else p["rejected"] for i, p in enumerate(tiny_pm_setup.pairs[:12])]
    reloaded = PreferenceModel.load(out, device="cpu")
    expected = captured["pm"].score(prompts, responses)
    torch.testing.assert_close(reloaded.score(prompts, responses), expected, atol=1e-4, rtol=1e-4)


def test_ensemble_members_differ_and_aggregate_by_hand(tiny_pm_setup, tmp_path):
    cfg = tiny_pm_setup.config(ensemble_size=2, ensemble_aggregate="uwo", ensemble_lam=0.5,
                               train={"epochs": 2, "batch_size": 16})
    out = train_pm(cfg, tmp_path / "ens")
    spec = json.loads((out / "ensemble.json").read_text())
    assert spec["members"] == ["member-0", "member-1"] and spec["seeds"] == [0, 1]
    heads = [load_file(out / f"member-{k}" / "model.safetensors")["score.weight"] for k in range(2)]
    assert not torch.allclose(heads[0], heads[1]), "members trained with different seeds must differ"

    ensemble = PreferenceModel.load(out)
    assert isinstance(ensemble, EnsemblePM) and (ensemble.method, ensemble.lam) == ("uwo", 0.5)
    prompts, responses = ["question sky ?"] * 3, ["good dog", "bad dog", "good river cat"]
    combined = ensemble.score(prompts, responses)
    members = torch.stack([PreferenceModel.load(out / f"member-{k}").score(prompts, responses)
                           for k in range(2)])
    torch.testing.assert_close(ensemble.member_scores, members)
    for j in range(3):
        a, b = members[0, j].item(), members[1, j].item()
        mean, var = (a + b) / 2, ((a - b) / 2) ** 2
        assert combined[j].item() == pytest.approx(mean - 0.5 * var, abs=1e-5)
        assert aggregate(members, "mean")[j].item() == pytest.approx(mean, abs=1e-6)
        assert aggregate(members, "worst")[j].item() == pytest.approx(min(a, b), abs=1e-6)


class _SimulatedKill(RuntimeError):
    pass


def test_resume_continues_from_the_last_checkpoint(tiny_pm_setup, tmp_path, monkeypatch):
    from transformers import TrainerCallback

    class KillAtStep5(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 5:
                raise _SimulatedKill("killed")

    cfg = tiny_pm_setup.config(train={"epochs": 2, "save_steps": 2, "logging_steps": 1})
    out = tmp_path / "resume"
    original = pm_train._callbacks
    monkeypatch.setattr(pm_train, "_callbacks", lambda *a: original(*a) + [KillAtStep5()])
    with pytest.raises(_SimulatedKill):
        train_pm(cfg, out)
    assert not (out / "pmopt_pm.json").exists()
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    steps_before = [r["step"] for r in read_metrics(out / "metrics.jsonl")]
    assert max(steps_before) == 5

    monkeypatch.setattr(pm_train, "_callbacks", original)
    train_pm(cfg, out)
    rows = read_metrics(out / "metrics.jsonl")
    resume = [r for r in rows if r.get("event") == "resume"]
    assert resume == [{"event": "resume", "member": 0, "checkpoint": "checkpoint-4"}]
    after = rows[rows.index(resume[0]) + 1:]
    logged = [r["step"] for r in after if "pm/loss" in r]
    assert logged[0] == 5 and logged[-1] == 12, "training must continue at step 5, not restart at 1"
    assert json.loads((out / "pmopt_pm.json").read_text())["global_step"] == 12

    train_pm(cfg, out)  # a finished member is skipped, not retrained
    assert read_metrics(out / "metrics.jsonl") == rows


def test_hh_rlhf_tiny_pm_trains(tmp_path, shared_data):
    from pmopt.text import scored_text
    from pmopt.world.models import save_tiny_causal_lm, word_tokenizer

    pairs = load_pairs(shared_data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz")
    short = [p for p in pairs if len((p["prompt"] + p["chosen"] + p["rejected"]).split()) < 60][:300]
    assert len(short) == 300
    train, held = split_pairs(short, 0.1, seed=0)
    tokenizer = word_tokenizer([p["prompt"] + p["chosen"] + p["rejected"] for p in short],
                               split_punctuation=True)
    assert all(len(tokenizer(scored_text(p["prompt"], p["chosen"], tokenizer))["input_ids"]) <= 128
               for p in short)
    base = save_tiny_causal_lm(tmp_path / "base", tokenizer)
    cfg = load_config(PMTrainConfig, data={
        "model": {"name_or_path": str(base)}, "data": {"max_length": 128},
        "train": {"max_steps": 6, "batch_size": 8, "logging_steps": 2, "learning_rate": 1e-3}})
    out = train_pm(cfg, tmp_path / "pm", pairs=train, eval_pairs=held)
    losses = [r["pm/loss"] for r in read_metrics(out / "metrics.jsonl") if "pm/loss" in r]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    info = json.loads((out / "pmopt_pm.json").read_text())
    assert info["global_step"] == 6 and info["n_eval"] == 30 and 0.0 <= info["eval_accuracy"] <= 1.0
    scores = PreferenceModel.load(out).score([p["prompt"] for p in held], [p["chosen"] for p in held])
    assert scores.shape == (30,) and torch.isfinite(scores).all()


# ----------------------------------------------------------------------------- bad input, via the CLI


def _write_config(tmp_path, tiny_pm_setup, **changes):
    data = {"model": {"name_or_path": str(tiny_pm_setup.base)},
            "data": {"train": str(tiny_pm_setup.pairs_file), "max_length": 64},
            "train": {"epochs": 1}}
    for key, value in changes.items():
        section, name = key.split("__")
        data.setdefault(section, {})[name] = value
    path = tmp_path / "pm.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _bad_pairs(tmp_path, line2: str):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "question dog ?", "chosen": "good cat", "rejected": "bad cat"}\n'
                    f"{line2}\n", encoding="utf-8")
    return path


def _seq_cls_with_two_labels(tmp_path, tiny_pm_setup):
    from transformers import AutoModelForSequenceClassification

    from pmopt.world.models import tiny_llama_config

    config = tiny_llama_config(tiny_pm_setup.tokenizer, num_labels=2)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "two_labels")
    tiny_pm_setup.tokenizer.save_pretrained(tmp_path / "two_labels")
    return tmp_path / "two_labels"


BAD_INPUTS = {
    "malformed_json": (lambda t, s: {"data__train": str(_bad_pairs(t, '{"prompt": "q", "chosen": "a"')),
                                     }, ["bad.jsonl:2", "malformed JSON"]),
    "missing_chosen": (lambda t, s: {"data__train": str(_bad_pairs(t, '{"prompt": "q", "rejected": "a"}'))},
                       ["bad.jsonl:2", "field 'chosen'", "missing"]),
    "missing_rejected": (lambda t, s: {"data__train": str(_bad_pairs(t, '{"prompt": "q", "chosen": "a"}'))},
                         ["bad.jsonl:2", "field 'rejected'", "missing"]),
    "empty_text": (lambda t, s: {"data__train": str(_bad_pairs(t, '{"prompt": "q", "chosen": " ", '
                                                                     '"rejected": "a"}'))},
                   ["bad.jsonl:2", "field 'chosen'", "empty text"]),
    "nonexistent_model": (lambda t, s: {"model__name_or_path": str(t / "no_such_model")},
                          ["model.name_or_path", "no_such_model", "no such directory"]),
    "two_labels": (lambda t, s: {"model__name_or_path": str(_seq_cls_with_two_labels(t, s))},
                   ["two_labels/config.json", "field 'architectures'", "2 labels"]),
    "unknown_key": (lambda t, s: {"train__epochz": 3}, ["pm.yaml", "unknown config key 'train.epochz'"]),
    "too_long": (lambda t, s: {"data__max_length": 6}, ["pairs.jsonl:", "field 'chosen'", "data.max_length=6"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_naming_the_problem_and_writes_nothing(case, tmp_path, tiny_pm_setup, capsys):
    make_changes, expected = BAD_INPUTS[case]
    config = _write_config(tmp_path, tiny_pm_setup, **make_changes(tmp_path, tiny_pm_setup))
    out = tmp_path / "out"
    capsys.readouterr()  # drop what building the inputs printed
    assert main(["train-pm", str(config), "--out", str(out)]) == 2
    message = capsys.readouterr().err
    assert message.startswith("pmopt train-pm: error:") and message.count("\n") == 1
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert not out.exists(), "nothing may be written for bad input"


def test_too_long_error_names_the_length(tiny_pm_setup, tmp_path):
    """The over-long message names the exact pair line and its token count."""
    from pmopt.io import PmoptError

    cfg = tiny_pm_setup.config(data={"max_length": 6, "eval_fraction": 0.0})
    first = tiny_pm_setup.pairs[0]
    n_tokens = len((first["prompt"] + " " + first["chosen"]).split()) + 1  # + EOS
    with pytest.raises(PmoptError, match=rf"pairs.jsonl:1: field 'chosen': prompt \+ chosen is {n_tokens} tokens"):
        train_pm(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_overlong_pairs_error_or_are_dropped_and_counted(tiny_pm_setup, capsys):
    from pmopt.io import PmoptError
    from pmopt.pm.train import tokenize_pairs
    from pmopt.text import encode, scored_text

    tokenizer, pairs = tiny_pm_setup.tokenizer, tiny_pm_setup.pairs
    lengths = [max(len(encode(tokenizer, scored_text(p["prompt"], p[s], tokenizer))) for s in ("chosen", "rejected"))
               for p in pairs]
    limit = sorted(lengths)[len(lengths) // 2]
    kept = tokenize_pairs(pairs, tokenizer, limit, "data.train", drop_overlong=True)
    assert len(kept["chosen_ids"]) == sum(n <= limit for n in lengths) < len(pairs)
    assert all(len(ids) <= limit for ids in kept["chosen_ids"] + kept["rejected_ids"])
    assert f"dropped {sum(n > limit for n in lengths)} of 64 data.train pairs" in capsys.readouterr().out
    first_long = next(i for i, n in enumerate(lengths) if n > limit)
    with pytest.raises(PmoptError, match=rf"pair {first_long}: field 'chosen': .* is {lengths[first_long]} tokens"):
        tokenize_pairs(pairs, tokenizer, limit, "data.train")


# ----------------------------------------------------------------------------- sharded training: every rank


class _Wrapped(torch.nn.Module):
    """Stands in for an FSDP / ZeRO-3 wrapper: counts the forward passes that go through it."""

    def __init__(self, inner):
        super().__init__()
        self.module, self.calls = inner, 0

    @property
    def config(self):
        return self.module.config

    def get_input_embeddings(self):
        return self.module.get_input_embeddings()

    def forward(self, **kwargs):
        self.calls += 1
        return self.module(**kwargs)


class _FakeTrainer:
    """What `save_member` uses of a Trainer under FSDP, one per rank; records the calls it gets."""

    def __init__(self, model, rank: int, state_dict_type: str = "StateDictType.FULL_STATE_DICT"):
        import types

        self.model, self.model_wrapped, self.rank = model, _Wrapped(model), rank
        self.is_fsdp_enabled, self.is_deepspeed_enabled = True, False
        fsdp_plugin = types.SimpleNamespace(state_dict_type=state_dict_type)
        self.accelerator = types.SimpleNamespace(state=types.SimpleNamespace(fsdp_plugin=fsdp_plugin))
        self.state = types.SimpleNamespace(global_step=3)
        self.train_dataset = [0] * 5
        self.saved: list[str] = []

    def is_world_process_zero(self) -> bool:
        return self.rank == 0

    def save_model(self, output_dir: str) -> None:  # Trainer gathers on every rank, writes on rank 0
        self.saved.append(output_dir)
        if self.rank == 0:
            self.model.save_pretrained(output_dir, safe_serialization=True)


def test_sharded_save_and_heldout_run_on_every_rank(tiny_pm_setup, tmp_path):
    """Under FSDP / ZeRO-3, save_model and the held-out forwards are collectives: every rank must enter
    them (through the wrapped model, the same number of batches), and only rank 0 writes files."""
    from pmopt.pm.model import load_seq_cls
    from pmopt.pm.train import save_member, tokenize_pairs

    cfg = tiny_pm_setup.config()
    tokenizer = tiny_pm_setup.tokenizer
    model = load_seq_cls(str(tiny_pm_setup.base), torch.float32, False, None, new_head=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    eval_ids = tokenize_pairs(tiny_pm_setup.pairs[:10], tokenizer, 64, "eval")
    member, metrics = tmp_path / "pm", tmp_path / "metrics.jsonl"
    member.mkdir()
    accuracies = {}
    trainers = {rank: _FakeTrainer(model, rank) for rank in (1, 0)}
    for rank, trainer in trainers.items():  # rank 1 first: it must not need rank 0's files
        accuracies[rank] = save_member(cfg, trainer, tokenizer, member, 0, eval_ids, 0.5, metrics)
        if rank == 1:
            assert not (member / "pmopt_pm.json").exists() and not metrics.exists()
    assert [t.saved for t in trainers.values()] == [[str(member)], [str(member)]], "save_model on every rank"
    assert trainers[0].model_wrapped.calls == trainers[1].model_wrapped.calls > 0, "held-out forwards on every rank"
    assert accuracies[0] == accuracies[1] is not None
    info = json.loads((member / "pmopt_pm.json").read_text())
    assert info["eval_accuracy"] == accuracies[0] and not (member / "training_args.bin").exists()
    assert len([r for r in read_metrics(metrics) if r.get("final")]) == 1
    reloaded = PreferenceModel.load(member, device="cpu")
    assert pm_train.heldout_accuracy(reloaded, eval_ids, 4) == accuracies[0]


def test_fsdp_on_cpu_processes_is_refused_before_anything_is_written(tiny_pm_setup, tmp_path, monkeypatch):
    """accelerate runs CPU processes as DDP even under an FSDP config: an error, not a silent DDP run."""
    from pmopt.io import PmoptError

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for distributed_type FSDP
    monkeypatch.setattr(pm_train, "use_cpu", lambda: True)
    with pytest.raises(PmoptError, match="FSDP needs GPUs"):
        train_pm(tiny_pm_setup.config(), tmp_path / "pm")
    assert not (tmp_path / "pm").exists()


def test_sharded_state_dict_and_missing_weights_are_refused(tiny_pm_setup, tmp_path):
    from pmopt.io import PmoptError
    from pmopt.pm.train import check_saved_weights, check_sharded_save

    trainer = _FakeTrainer(torch.nn.Linear(1, 1), 0, "StateDictType.SHARDED_STATE_DICT")
    with pytest.raises(PmoptError, match="FULL_STATE_DICT"):
        check_sharded_save(trainer)
    (tmp_path / "pytorch_model").mkdir()  # ZeRO-3 without the 16-bit gather: a DeepSpeed checkpoint only
    with pytest.raises(PmoptError, match="zero3_save_16bit_model"):
        check_saved_weights(tmp_path)


# ----------------------------------------------------------------------------- scores independent of weight layout


def misalign(path):
    """Rewrite a safetensors file so that its weights start at 8 bytes mod 16 (its header padded with
    metadata): loaded zero-copy from the memory map, they would sit there too."""
    import struct

    from safetensors.torch import save_file

    weights = load_file(path)
    for pad in range(16):  # the header is padded to 8 bytes, so one of two consecutive lengths works
        save_file(weights, path, metadata={"format": "pt", "padding": "x" * pad})
        if (8 + struct.unpack("<Q", path.read_bytes()[:8])[0]) % 16 == 8:
            return path
    raise AssertionError("no padding put the weights at 8 bytes mod 16")


def test_scores_do_not_depend_on_the_weights_layout_or_a_device_copy(tiny_pm_setup, tmp_path):
    """As loaded (views of the file at 8 mod 16) and moved to 'cpu:0' (a process group's device, which
    copies every weight): the same bits. MKL's products round with a weight's address mod 16, so this
    held only once loading put every weight at the allocator's 64-byte alignment."""
    import shutil

    from helpers import save_seeded_pm

    from pmopt.policy import CPU_ALIGNMENT, load_policy

    pm_dir = save_seeded_pm(tiny_pm_setup.base, tmp_path / "pm")
    misalign(pm_dir / "model.safetensors")
    prompts = [p["prompt"] for p in tiny_pm_setup.pairs[:32]]
    responses = [p["chosen"] if i % 2 else p["rejected"] for i, p in enumerate(tiny_pm_setup.pairs[:32])]
    scores = {}
    for device in ("cpu", "cpu:0"):
        pm = PreferenceModel.load(pm_dir, device=device)
        assert all(t.data_ptr() % CPU_ALIGNMENT == 0 for t in pm.model.parameters())
        scores[device] = [pm.score(prompts, responses, batch_size=b) for b in (1, 8)]
    for one, copied in zip(scores["cpu"], scores["cpu:0"], strict=True):
        assert torch.equal(one, copied)
    policy_dir = shutil.copytree(tiny_pm_setup.base, tmp_path / "policy")
    misalign(policy_dir / "model.safetensors")
    policy, _ = load_policy(policy_dir, device="cpu")
    assert all(t.data_ptr() % CPU_ALIGNMENT == 0 for t in policy.parameters())
