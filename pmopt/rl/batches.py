"""Packed batches of the RL loops and the forward passes over them: log-probs, entropies, per-token values
and the sequence KL to the reference (exact per position, and the k1 / k3 sample estimates).

Batch layout (the sampler's, TRL PPOv2's): queries are left-padded to a common width Q and responses
right-padded to R, so every response starts at column Q. Positions are `cumsum(mask) - 1`, so a padded
query sits at exactly the positions it has unpadded (as in `pmopt.sampling`). The logits at columns
Q-1 .. Q+R-2 predict the response tokens; the value of response token t is read at the same column
(the state before the token is emitted).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from pmopt.io import PmoptError
from pmopt.rl.ppo_math import (
    entropy_from_logits,
    kl_from_logits,
    kl_penalty,
    logprobs_from_logits,
    masked_sum,
)
from pmopt.text import encode, render_prompt


@dataclass
class Batch:
    """Left-padded queries + right-padded responses; `response_mask` is 1 on real response tokens."""

    input_ids: torch.Tensor  # (B, Q + R)
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    response_ids: torch.Tensor  # (B, R)
    response_mask: torch.Tensor  # (B, R) float
    context_len: int  # Q

    def rows(self, index: torch.Tensor) -> Batch:
        return Batch(self.input_ids[index], self.attention_mask[index], self.position_ids[index],
                     self.response_ids[index], self.response_mask[index], self.context_len)


def pack(queries: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int, device) -> Batch:
    if any(len(r) == 0 for r in responses):
        raise ValueError("every response needs at least one token")
    width_q, width_r = max(map(len, queries)), max(map(len, responses))
    batch = len(queries)
    ids = torch.full((batch, width_q + width_r), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (q, r) in enumerate(zip(queries, responses, strict=True)):
        ids[i, width_q - len(q):width_q] = torch.tensor(list(q), dtype=torch.long)
        ids[i, width_q:width_q + len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width_q - len(q):width_q + len(r)] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    response_ids = ids[:, width_q:]
    response_mask = mask[:, width_q:].float()
    return Batch(ids.to(device), mask.to(device), positions.to(device), response_ids.to(device),
                 response_mask.to(device), width_q)


def encode_queries(tokenizer, prompts: Sequence, chat_template_kwargs: dict | None = None) -> list[list[int]]:
    """The token ids the sampler conditions on: `encode(render_prompt(prompt))`, with its template kwargs."""
    return [encode(tokenizer, render_prompt(p, tokenizer, chat_template_kwargs=chat_template_kwargs))
            for p in prompts]


def response_slice(full: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Columns Q-1 .. Q+R-2 of a (B, Q+R, ...) output: the predictions of the response tokens."""
    start = batch.context_len - 1
    return full[:, start:start + batch.response_ids.shape[1]]


def response_logits(model, batch: Batch, temperature: float) -> torch.Tensor:
    """(B, R, V) float32 logits z / T of the tempered policy at the positions that predict the response tokens."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=batch.position_ids, use_cache=False)
    return response_slice(out.logits, batch).float() / temperature


def policy_outputs(model, batch: Batch, temperature: float, with_entropy: bool = False):
    """(log pi(y_t | ...), entropy or None) of the response tokens under the tempered policy."""
    logits = response_logits(model, batch, temperature)
    logprobs = logprobs_from_logits(logits, batch.response_ids)
    entropy = entropy_from_logits(logits.detach()) if with_entropy else None
    return logprobs, entropy


def value_parts(value_model):
    """(backbone, scalar head) of a sequence-classification model, peft-wrapped or not."""
    model = value_model.get_base_model() if hasattr(value_model, "get_base_model") else value_model
    head = getattr(model, "score", None)
    if head is None:
        raise PmoptError(f"{type(model).__name__}: the value model needs a `score` head "
                         "(an AutoModelForSequenceClassification of a decoder LM)")
    return getattr(model, model.base_model_prefix), head


def token_values(value_model, batch: Batch) -> torch.Tensor:
    """V(s_t) for every response token: the scalar head on each position's last hidden state."""
    backbone, head = value_parts(value_model)
    hidden = backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      position_ids=batch.position_ids, use_cache=False).last_hidden_state
    return response_slice(head(hidden), batch).squeeze(-1).float()


class PolicyAndValue(torch.nn.Module):
    """Policy and value model as one module: one optimizer, one DDP / DeepSpeed wrapper."""

    def __init__(self, policy, value_model):
        super().__init__()
        self.policy, self.value_model = policy, value_model

    def forward(self, batch: Batch, temperature: float):
        logprobs, entropy = policy_outputs(self.policy, batch, temperature, with_entropy=True)
        return logprobs, entropy, token_values(self.value_model, batch)


@contextmanager
def reference_of(policy, ref_model):
    """The frozen reference: a separate copy, or (LoRA) the same base with its adapters disabled."""
    if ref_model is not None:
        yield ref_model
    else:
        with policy.disable_adapter():
            yield policy


# The per-sequence KL estimates `sequence_kl` returns: the exact per-position KL summed over the response
# (Rao-Blackwellised, `ppo_math.kl_from_logits`), and the k1 / k3 sums of the sampled tokens (TRL's kl_estimator).
KL_ESTIMATES = ("rb", "k1", "k3")


def token_kls(logits: torch.Tensor, ref_logits: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token KL(policy || reference) terms of sampled `tokens` from both models' tempered logits: the exact
    KL of the next-token distributions ("rb"), and k1 / k3 of the sampled token."""
    logprobs, ref_logprobs = logprobs_from_logits(logits, tokens), logprobs_from_logits(ref_logits, tokens)
    return {"rb": kl_from_logits(logits, ref_logits), "k1": kl_penalty(logprobs, ref_logprobs, "k1"),
            "k3": kl_penalty(logprobs, ref_logprobs, "k3")}


@torch.no_grad()
def sequence_kl(policy, ref_model, batch: Batch, temperature: float, chunk: int) -> dict[str, torch.Tensor]:
    """Per-sequence KL(policy || reference) estimates on responses sampled from the policy, {"rb", "k1", "k3"}
    each (B,): sum over the response's tokens of `token_kls`. The distributions are both models' softmax at
    `temperature` (the sampling distribution of PPO, which samples from the full softmax); the sum runs over
    every generated token, the stop token included, so a truncated response counts the tokens it has."""
    sums: dict[str, list[torch.Tensor]] = {name: [] for name in KL_ESTIMATES}
    for start in range(0, batch.input_ids.shape[0], chunk):
        part = batch.rows(torch.arange(start, min(start + chunk, batch.input_ids.shape[0])))
        logits = response_logits(policy, part, temperature)
        with reference_of(policy, ref_model) as ref:
            ref_logits = response_logits(ref, part, temperature)
        for name, terms in token_kls(logits, ref_logits, part.response_ids).items():
            sums[name].append(masked_sum(terms, part.response_mask, dim=1))
        del logits, ref_logits
    return {name: torch.cat(parts) for name, parts in sums.items()}


__all__ = ["Batch", "pack", "encode_queries", "response_slice", "response_logits", "policy_outputs", "token_kls",
           "KL_ESTIMATES", "value_parts", "token_values",
           "PolicyAndValue", "reference_of", "sequence_kl"]
