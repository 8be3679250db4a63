"""The sequence-KL estimators of RL's pressure axis (pmopt/rl/batches.py `sequence_kl`, pmopt/rl/ppo_math.py
`kl_from_logits`) against brute-force enumeration.

Two real tiny Llamas over a 6-token vocabulary and responses of at most 3 tokens have 156 possible responses,
so the exact KL(policy || reference) of the tempered sampling distributions is a finite sum. Each estimator's
exact expectation under the policy is that sum (the Rao-Blackwellised one with variance at most k1's), and the
estimator's mean over the sampler's own draws agrees with it. About 3 s on one thread.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pmopt.rl.batches import encode_queries, pack, policy_outputs, sequence_kl
from pmopt.rl.ppo_math import kl_from_logits
from pmopt.sampling import SamplingConfig, sample

PROMPT = "a b"
MAX_NEW = 3
TEMPERATURE = 0.8


@pytest.fixture(scope="module")
def pair():
    """(policy, reference, tokenizer): two differently initialised tiny Llamas with peaked next-token
    distributions (initializer_range 0.15: exact KL about 2 nats at T = 0.8), so the KL is far from 0 and the estimators' variances differ."""
    from transformers import AutoModelForCausalLM

    from pmopt.world.models import tiny_llama_config, word_tokenizer

    tok = word_tokenizer(["a b"])
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        config = tiny_llama_config(tok, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                                   initializer_range=0.15)
        models.append(AutoModelForCausalLM.from_config(config).eval())
    return models[0], models[1], tok


def every_response(tok) -> list[list[int]]:
    """All responses the sampler can produce: up to MAX_NEW - 1 non-stop tokens then EOS, or MAX_NEW
    non-stop tokens (cut at the length limit)."""
    others = [i for i in range(len(tok)) if i != tok.eos_token_id]
    out = []
    for length in range(MAX_NEW):
        out += [list(body) + [tok.eos_token_id] for body in itertools.product(others, repeat=length)]
    return out + [list(body) for body in itertools.product(others, repeat=MAX_NEW)]


def packed(tok, responses):
    return pack(encode_queries(tok, [PROMPT] * len(responses)), responses, tok.pad_token_id, "cpu")


@pytest.fixture(scope="module")
def enumerated(pair):
    """(p(y), log p(y) - log q(y), estimates) over every response y, at TEMPERATURE."""
    policy, reference, tok = pair
    batch = packed(tok, every_response(tok))
    with torch.no_grad():
        logp = (policy_outputs(policy, batch, TEMPERATURE)[0] * batch.response_mask).sum(1).double()
        logq = (policy_outputs(reference, batch, TEMPERATURE)[0] * batch.response_mask).sum(1).double()
    estimates = sequence_kl(policy, reference, batch, TEMPERATURE, chunk=64)
    return logp.exp(), logp - logq, {k: v.double() for k, v in estimates.items()}


def test_enumeration_covers_the_whole_distribution(enumerated):
    probs, _, _ = enumerated
    assert len(probs) == 1 + 5 + 25 + 125
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)


def test_every_estimator_has_the_exact_kl_as_its_expectation(enumerated):
    probs, log_ratio, estimates = enumerated
    exact = float((probs * log_ratio).sum())
    assert exact > 0.5  # the two models differ: the test can tell a biased estimator from an unbiased one
    for name in ("rb", "k1", "k3"):
        assert float((probs * estimates[name]).sum()) == pytest.approx(exact, rel=1e-4), name


def test_the_rao_blackwellised_estimator_varies_less_than_k1(enumerated):
    probs, log_ratio, estimates = enumerated
    exact = float((probs * log_ratio).sum())
    variance = {name: float((probs * (estimates[name] - exact) ** 2).sum()) for name in ("rb", "k1")}
    assert variance["rb"] < 0.5 * variance["k1"], variance
    assert bool((estimates["rb"] >= 0).all())  # a sum of KLs, never negative; k1 is, on some responses
    assert bool((estimates["k1"] < 0).any())


def test_mean_over_the_samplers_draws_matches_the_exact_kl(pair, enumerated):
    """The estimator measures the distribution the sampler draws from (softmax at the sampling temperature):
    its mean over 3000 real draws is within 4 standard errors of the exact KL."""
    policy, reference, tok = pair
    probs, log_ratio, _ = enumerated
    exact = float((probs * log_ratio).sum())
    cfg = SamplingConfig(max_new_tokens=MAX_NEW, temperature=TEMPERATURE, batch_size=1000)
    draws = [g.token_ids for g in sample(policy, tok, [PROMPT], 3000, cfg, seed=11)[0]]
    rb = sequence_kl(policy, reference, packed(tok, draws), TEMPERATURE, chunk=1000)["rb"].double()
    error = float(rb.std()) / math.sqrt(len(draws))
    assert abs(float(rb.mean()) - exact) < 4 * error, (float(rb.mean()), exact, error)


def test_per_position_kl_is_the_vocabulary_sum_and_zero_on_identical_rows():
    torch.manual_seed(0)
    z, z_ref = torch.randn(3, 4, 7), torch.randn(3, 4, 7)
    z[0, 0, 2] = -math.inf  # a banned token has probability 0 and contributes nothing
    p, q = torch.softmax(z, -1), torch.softmax(z_ref, -1)
    expected = torch.where(p > 0, p * (p.log() - q.log()), torch.zeros_like(p)).sum(-1)
    torch.testing.assert_close(kl_from_logits(z, z_ref), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(kl_from_logits(z_ref, z_ref), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="do not match"):
        kl_from_logits(z, z_ref[:, :2])
