"""World pretraining: checkpoints every K steps, and a crash (injected) resumed to identical weights."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from conftest import tiny_world_config

from pmopt.faults import InjectedFault, reset_faults
from pmopt.io import PmoptError
from pmopt.world.build import build_corpus
from pmopt.world.models import word_tokenizer
from pmopt.world.pretrain import pretrain_policy, tokenize_dialogue
from pmopt.world.texts import vocabulary_texts


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_world_config()
    cfg = replace(cfg, corpus=replace(cfg.corpus, n_dialogues=200))
    tokenizer = word_tokenizer(vocabulary_texts(2 * cfg.facts.operand_max))
    examples = [tokenize_dialogue(tokenizer, row["prompt"], row["response"])
                for row in build_corpus(random.Random(0), cfg)]
    policy = replace(cfg.policy, hidden_size=32, intermediate_size=64, steps=12, batch_size=8, warmup_steps=2,
                     checkpoint_every=4, threads=0)
    return tokenizer, examples, policy


def pretrain(setup, root, **changes):
    tokenizer, examples, policy = setup
    return pretrain_policy(tokenizer, examples, replace(policy, **changes), 0, root / "policy", progress=False,
                           checkpoint_dir=root / "ckpt")


def test_interrupted_pretraining_resumes_to_identical_weights(setup, tmp_path, monkeypatch, capsys):
    straight = pretrain(setup, tmp_path / "straight")
    assert [p.name for p in (tmp_path / "straight" / "ckpt").iterdir()] == ["step-000012"]  # only the newest

    monkeypatch.setenv("PMOPT_FAULT", "pretrain.step:7")  # dies in step 7, after the checkpoint at step 4
    reset_faults()
    with pytest.raises(InjectedFault):
        pretrain(setup, tmp_path / "crashed")
    assert [p.name for p in (tmp_path / "crashed" / "ckpt").iterdir()] == ["step-000004"]
    assert not (tmp_path / "crashed" / "policy").exists()
    monkeypatch.delenv("PMOPT_FAULT")
    resumed = pretrain(setup, tmp_path / "crashed")
    assert "pretraining resumes from" in capsys.readouterr().out
    assert resumed == straight  # same loss history, hence the same final_loss
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "crashed" / "policy" / name).read_bytes() == \
            (tmp_path / "straight" / "policy" / name).read_bytes(), name


def test_checkpoint_of_another_config_is_refused(setup, tmp_path):
    pretrain(setup, tmp_path, steps=4)
    with pytest.raises(PmoptError, match=r"step-000004: a pretraining checkpoint of another world config"):
        pretrain(setup, tmp_path, learning_rate=1e-3)
    pretrain(setup, tmp_path, steps=4, threads=1)  # an execution knob is not a different trajectory


def test_no_checkpoints_when_off(setup, tmp_path):
    pretrain(setup, tmp_path, checkpoint_every=0)
    assert not (tmp_path / "ckpt").exists() and (tmp_path / "policy" / "model.safetensors").is_file()
