"""The sampler: exact inverse-CDF draws, filtering, and independence from batching and sharding."""

from __future__ import annotations

import torch

from pmopt.sampling import SamplingConfig, _draw, _filter_probs, sample
from pmopt.text import render_prompt
from pmopt.world.models import tiny_llama_config, word_tokenizer


def test_inverse_cdf_draw_is_exact():
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    logits = probs.log()
    cfg = SamplingConfig()
    # cumulative: 0.1, 0.3, 0.6, 1.0 -> u picks the first index whose cdf exceeds u
    for u, expected in [(0.05, 0), (0.15, 1), (0.35, 2), (0.61, 3), (0.999, 3)]:
        token, logp = _draw(logits, torch.tensor([u], dtype=torch.float64), cfg)
        assert token.item() == expected
        assert abs(logp.item() - probs[0, expected].log().item()) < 1e-6


def test_top_k_and_top_p_filtering():
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    assert torch.allclose(_filter_probs(probs, 2, 1.0), torch.tensor([[0, 0, 3 / 7, 4 / 7]], dtype=torch.float64))
    # top_p = 0.5: keep 0.4 then 0.3 (mass reaches 0.7 >= 0.5), drop the rest
    assert torch.allclose(_filter_probs(probs, 0, 0.5), torch.tensor([[0, 0, 3 / 7, 4 / 7]], dtype=torch.float64))


def _tiny_policy():
    texts = ["User: Assistant: what is one two three four five ? the answer is yes no ."]
    tok = word_tokenizer(texts)
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_llama_config(tok)).eval(), tok


PROMPTS = [[{"role": "user", "content": "what is one ?"}],
           [{"role": "user", "content": "what is one two three four five ? what is two ?"}],
           "User: the answer is\nAssistant:",
           [{"role": "user", "content": "two"}, {"role": "assistant", "content": "the answer"}]]


def test_samples_do_not_depend_on_batching_or_shards():
    model, tok = _tiny_policy()
    keys = [f"p{i}" for i in range(len(PROMPTS))]
    cfg_big, cfg_one = SamplingConfig(max_new_tokens=8, batch_size=64), SamplingConfig(max_new_tokens=8, batch_size=1)
    full = sample(model, tok, PROMPTS, 3, cfg_big, seed=7, keys=keys)
    one_by_one = sample(model, tok, PROMPTS, 3, cfg_one, seed=7, keys=keys)
    shard = sample(model, tok, PROMPTS[2:], 3, cfg_big, seed=7, keys=keys[2:])
    as_text = lambda rows: [[(g.response, g.n_tokens) for g in row] for row in rows]  # noqa: E731
    assert as_text(full) == as_text(one_by_one)
    assert as_text(full[2:]) == as_text(shard)
    for row_a, row_b in zip(full, one_by_one, strict=True):
        for a, b in zip(row_a, row_b, strict=True):
            assert abs(a.logprob - b.logprob) < 1e-4
    other_seed = sample(model, tok, PROMPTS, 3, cfg_big, seed=8, keys=keys)
    assert as_text(other_seed) != as_text(full)


def test_sample_logprob_matches_model_likelihood():
    """The returned log-probability equals the model's log-likelihood of the sampled tokens (T = 1)."""
    model, tok = _tiny_policy()
    gen = sample(model, tok, PROMPTS[:1], 1, SamplingConfig(max_new_tokens=6), seed=1)[0][0]
    prompt_ids = tok(render_prompt(PROMPTS[0], tok), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + gen.token_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
    targets = ids[0, 1:]
    token_logp = logp.gather(-1, targets[:, None]).squeeze(-1)[len(prompt_ids) - 1:]
    assert abs(token_logp.sum().item() - gen.logprob) < 1e-4
    assert gen.n_tokens == len(gen.token_ids) and gen.n_tokens <= 6


def test_each_prompt_is_prefilled_once_and_every_sample_scores_under_the_model():
    """N samples of a prompt share one prefill (its KV cache is copied), yet each sample's log-probability
    is still the model's likelihood of its own tokens after its own (left-padded) prompt."""
    model, tok = _tiny_policy()
    prefill_rows = []

    def record_prefill(_module, _args, kwargs):
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is None:  # either name of the KV cache
            prefill_rows.append(kwargs["input_ids"].shape[0])

    handle = model.register_forward_pre_hook(record_prefill, with_kwargs=True)
    try:
        gens = sample(model, tok, PROMPTS[:2], 5, SamplingConfig(max_new_tokens=6, batch_size=64), seed=3)
    finally:
        handle.remove()
    assert prefill_rows == [2]  # two distinct prompts, ten sequences
    for prompt, row in zip(PROMPTS[:2], gens, strict=True):
        prompt_ids = tok(render_prompt(prompt, tok), add_special_tokens=False)["input_ids"]
        for gen in row:
            ids = torch.tensor([prompt_ids + gen.token_ids])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            token_logp = logp.gather(-1, ids[0, 1:, None]).squeeze(-1)[len(prompt_ids) - 1:]
            assert abs(token_logp.sum().item() - gen.logprob) < 1e-4


def test_draw_leaves_its_inputs_untouched():
    """The draw reuses its own (batch, vocab) buffers in place, never the caller's logits or probabilities."""
    torch.manual_seed(0)
    logits, probs = torch.randn(3, 50), torch.rand(3, 50, dtype=torch.float64)
    logits_copy, probs_copy = logits.clone(), probs.clone()
    for cfg in (SamplingConfig(), SamplingConfig(temperature=0.5, top_k=5), SamplingConfig(top_p=0.8)):
        _draw(logits, torch.rand(3, dtype=torch.float64), cfg)
        _filter_probs(probs, cfg.top_k, cfg.top_p)
    assert torch.equal(logits, logits_copy) and torch.equal(probs, probs_copy)
