"""Instruct policies in the sampler: every stop id ends a response, and chat_template_kwargs reach the template.

A tiny Qwen2 / Llama policy whose `generation_config.eos_token_id` lists two ids (as Llama 3's and Gemma's
do) and whose tokenizer has a ChatML template (turns closed by <|im_end|>, which is neither EOS id). Its
LM head is replaced by a biased linear layer with zero weights, so every step draws one filler word or
one chosen token with probability 1/2 each: a response is fillers then that token, and its exact
log-probability is n_tokens * log(1/2).
"""

from __future__ import annotations

import math

import pytest
import torch

from pmopt.rl.batches import encode_queries
from pmopt.sampling import SamplingConfig, sample, stop_token_ids
from pmopt.text import render_prompt
from pmopt.world.models import word_tokenizer

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
          "{% if enable_thinking is defined and not enable_thinking %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
          "{% endif %}")
EXTRA = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot|>", "<think>", "</think>"]
PROMPTS = [[{"role": "user", "content": "what is one plus two ?"}], [{"role": "user", "content": "hello"}]]


def instruct_tokenizer():
    tokenizer = word_tokenizer(["user assistant what is one plus two ? hello filler"])
    tokenizer.add_special_tokens({"additional_special_tokens": EXTRA})
    tokenizer.chat_template = CHATML
    return tokenizer


def instruct_policy(arch: str, tokenizer, favoured: str):
    """A 2-layer policy drawing "filler" or `favoured` with probability 1/2 each, whatever the context."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    config_class = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    config = config_class(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=4, intermediate_size=64, max_position_embeddings=128,
                          pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    head = torch.nn.Linear(config.hidden_size, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-1e4)
        head.bias[tokenizer.convert_tokens_to_ids(["filler", favoured])] = 0.0
    model.lm_head = head
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|eot|>"])
    return model


def test_stop_ids_are_eos_generation_config_and_end_of_turn():
    tokenizer = instruct_tokenizer()
    model = instruct_policy("qwen2", tokenizer, "filler")
    expected = tokenizer.convert_tokens_to_ids(["<eos>", "<|endoftext|>", "<|eot|>", "<|im_end|>"])
    assert stop_token_ids(model, tokenizer) == sorted(expected)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|eot|>")  # an int, not a list
    assert stop_token_ids(model, tokenizer) == sorted(expected[:1] + expected[2:])


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("favoured, stops", [("<|endoftext|>", True), ("<|eot|>", True), ("<|im_end|>", True),
                                             ("<|im_start|>", False)])
def test_sampler_stops_on_every_stop_id(arch, favoured, stops):
    tokenizer = instruct_tokenizer()
    model = instruct_policy(arch, tokenizer, favoured)
    favoured_id, filler_id = tokenizer.convert_tokens_to_ids([favoured, "filler"])
    cfg = SamplingConfig(max_new_tokens=12, batch_size=5)
    generations = [g for row in sample(model, tokenizer, PROMPTS, 8, cfg, seed=4) for g in row]
    for g in generations:
        assert abs(g.logprob - g.n_tokens * math.log(0.5)) < 1e-6  # exact log-probabilities
        if stops:  # fillers, then the stop id once, at the end (or cut at max_new_tokens without it)
            assert g.finished == (g.token_ids[-1] == favoured_id)
            assert set(g.token_ids[:-1]) == {filler_id} or g.n_tokens == 1
            assert g.finished or g.n_tokens == cfg.max_new_tokens
        else:  # not a stop id: every response runs to max_new_tokens
            assert not g.finished and g.n_tokens == cfg.max_new_tokens and favoured_id in g.token_ids
    if stops:
        assert sum(g.finished for g in generations) >= 14  # P(no stop in 12 draws) = 2^-12 each
        assert all(g.response.split() == ["filler"] * (g.n_tokens - 1) for g in generations if g.finished)


def test_chat_template_kwargs_reach_the_template_in_the_sampler():
    tokenizer = instruct_tokenizer()
    model = instruct_policy("qwen2", tokenizer, "<|eot|>")
    think = tokenizer.convert_tokens_to_ids("<think>")
    prefills = []

    def record_prefill(_module, _args, kwargs):
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is None:
            prefills.append(kwargs["input_ids"][0].tolist())

    handle = model.register_forward_pre_hook(record_prefill, with_kwargs=True)
    kwargs = {"enable_thinking": False}
    try:
        plain = sample(model, tokenizer, PROMPTS[:1], 2, SamplingConfig(max_new_tokens=4), seed=1)
        thinking_off = sample(model, tokenizer, PROMPTS[:1], 2,
                              SamplingConfig(max_new_tokens=4, chat_template_kwargs=kwargs), seed=1)
    finally:
        handle.remove()
    assert think not in prefills[0] and think in prefills[1]
    assert "<think>" in render_prompt(PROMPTS[0], tokenizer, chat_template_kwargs=kwargs)
    # PPO's query ids are the prompt the sampler conditioned on, kwargs included
    assert encode_queries(tokenizer, PROMPTS[:1], kwargs)[0] == prefills[1]
    # same keyed streams: the same draws whatever the prompt text (the head ignores the context here)
    assert [g.token_ids for g in plain[0]] == [g.token_ids for g in thinking_off[0]]


def test_empty_chat_template_kwargs_keep_a_sweeps_sample_identity():
    """Samples drawn before `chat_template_kwargs` existed keep their meta (and the key of what derives
    from them); set kwargs are part of it."""
    from pmopt.bon.sweep import sampling_identity

    assert sampling_identity(SamplingConfig()) == {"max_new_tokens": 24, "temperature": 1.0, "top_k": 0,
                                                   "top_p": 1.0, "batch_size": 256}
    kwargs = {"enable_thinking": False}
    assert sampling_identity(SamplingConfig(chat_template_kwargs=kwargs))["chat_template_kwargs"] == kwargs
