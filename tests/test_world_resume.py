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


# ----------------------------------------------------------------------------- one pretraining shared by runs


def test_a_cached_policy_is_the_one_pretraining_would_write(setup, tmp_path):
    from pmopt.world.policy_cache import cached_pretrain, policy_key

    tokenizer, examples, policy = setup
    key = policy_key(policy, 0, examples, tokenizer.get_vocab())
    calls = []

    def train(root):
        def run():
            calls.append(root)
            return pretrain(setup, root)
        return run

    first = cached_pretrain(tmp_path / "cache", key, tmp_path / "a" / "policy", train(tmp_path / "a"))
    again = cached_pretrain(tmp_path / "cache", key, tmp_path / "b" / "policy", train(tmp_path / "b"))
    assert calls == [tmp_path / "a"] and again == first  # the second run copied, with the first run's stats
    fresh = pretrain(setup, tmp_path / "fresh")
    assert fresh == first
    names = sorted(p.name for p in (tmp_path / "fresh" / "policy").iterdir())
    assert sorted(p.name for p in (tmp_path / "b" / "policy").iterdir()) == names
    for name in names:
        assert (tmp_path / "b" / "policy" / name).read_bytes() == (tmp_path / "fresh" / "policy" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [key, f"{key}.lock"]  # no partial copies


def test_the_cache_key_is_what_the_trajectory_depends_on(setup):
    from pmopt.world.policy_cache import policy_key

    tokenizer, examples, policy = setup
    vocab = tokenizer.get_vocab()
    key = policy_key(policy, 0, examples, vocab)
    assert policy_key(replace(policy, threads=3, checkpoint_every=7), 0, examples, vocab) == key  # how, not what
    assert policy_key(replace(policy, learning_rate=1e-3), 0, examples, vocab) != key
    assert policy_key(policy, 1, examples, vocab) != key
    assert policy_key(policy, 0, examples[1:], vocab) != key
    assert policy_key(policy, 0, examples, {**vocab, "extra": len(vocab)}) != key


def test_a_run_that_needs_a_policy_being_pretrained_waits_for_it(setup, tmp_path):
    import threading

    from pmopt.io import exclusive_lock
    from pmopt.world.policy_cache import cached_pretrain

    pretrain(setup, tmp_path / "a")
    filed = {}

    def waiting_run():
        filed["stats"] = cached_pretrain(tmp_path / "cache", "k", tmp_path / "b" / "policy",
                                         lambda: pretrain(setup, tmp_path / "b"))

    (tmp_path / "cache").mkdir()
    with exclusive_lock(tmp_path / "cache" / "k.lock"):  # another run pretraining entry k
        thread = threading.Thread(target=waiting_run)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive() and not (tmp_path / "b").exists()
    thread.join(60)
    assert not thread.is_alive() and (tmp_path / "cache" / "k" / "model.safetensors").is_file()
