"""PPO math for RLHF as small pure torch functions (docs/ARCHITECTURE.md §7), each tested against a reference loop.

Shapes: per-token tensors are (batch, response_len); `mask` (float or bool, same shape) is 1 on real
response tokens and 0 on padding. Responses are right-padded, so a row's episode ends at its last real
token. Sources: PPO (Schulman et al. 2017), GAE (Schulman et al. 2016), the KL-penalised reward and the
adaptive KL controller (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences"), the
k1/k2/k3 KL estimators (J. Schulman, "Approximating KL divergence", 2020), the exact per-position KL over the
vocabulary whose sum over a sampled response is the Rao-Blackwellised sequence-KL estimator (Amini, Vieira &
Cotterell 2025, "Better Estimation of the KL Divergence Between Language Models", arXiv 2504.10637).
"""

from __future__ import annotations

from typing import Literal

import torch

# Added to the variance before the inverse square root in whitening, so a constant batch does not divide by 0.
_WHITEN_EPS = 1e-8
# Rows of flattened logits processed at once by the vocabulary-wide reductions: bounds the float32 temporaries
# to chunk x vocab instead of batch x len x vocab.
_LOGIT_CHUNK_ROWS = 1024
# Ziegler et al. 2019 §2.2 clip the proportional error of the adaptive KL controller to this magnitude.
_KL_ERROR_CLIP = 0.2

KLEstimator = Literal["k1", "k2", "k3"]

# ----------------------------------------------------------------------------- masked statistics


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum_i m_i x_i over all entries (dim=None) or along `dim`; padding values never leak in (even nan)."""
    masked = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return masked.sum() if dim is None else masked.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum_i m_i x_i / sum_i m_i; a slice without real tokens has mean 0 (its denominator is clamped to 1)."""
    count = masked_sum(torch.ones_like(x), mask, dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries; unbiased applies Bessel's correction n / (n - 1)."""
    n = int(mask.bool().sum())
    if n < (2 if unbiased else 1):
        raise ValueError(f"masked_var needs at least {2 if unbiased else 1} real tokens, got {n}")
    var = masked_mean((x - masked_mean(x, mask)) ** 2, mask)
    return var * n / (n - 1) if unbiased else var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mu) / sqrt(var + eps) with mu, var over real tokens only; padding is 0 in the output.

    shift_mean=False adds mu back (scale only), as done for rewards in Ziegler et al.'s lm-human-preferences.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + _WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


# ----------------------------------------------------------------------------- KL and rewards


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from tokens sampled from pi (Schulman's note).

    With log p = logprobs (pi) and log q = ref_logprobs:
      k1 = log p - log q                     unbiased, can be negative per token
      k2 = 0.5 (log p - log q)^2             biased (low bias when p ~ q), >= 0
      k3 = (r - 1) - log r, r = q / p        unbiased and >= 0 (log r <= r - 1)
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        # r - 1 - log r with log r = -log_ratio; expm1 keeps precision when r ~ 1.
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of 'k1', 'k2', 'k3'")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(batch,) index of the last real token of each row; raises if a row has no real token."""
    real = mask.bool()
    if not bool(real.any(dim=1).all()):
        raise ValueError("every response needs at least one real token (a row of the mask is all 0)")
    positions = torch.arange(real.shape[1], device=real.device).expand_as(real)
    return torch.where(real, positions, -1).amax(dim=1)


def per_token_rewards(
    score: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    missing_eos_penalty: float | None = None,
    has_eos: torch.Tensor | None = None,
) -> torch.Tensor:
    """r_t = -beta * kl_t on every real token, plus the sequence score at the last real token (Ziegler et al.
    2019 eq. 2: R(x, y) = r(x, y) - beta log(pi(y|x) / rho(y|x)), spread over tokens).

    Rows with has_eos False first lose `missing_eos_penalty` from their score (truncated responses).
    Returns (batch, len) with zeros on padding.
    """
    if missing_eos_penalty is not None:
        if has_eos is None:
            raise ValueError("missing_eos_penalty needs has_eos (a bool per row)")
        score = score - missing_eos_penalty * (~has_eos.bool()).to(score.dtype)
    real = mask.bool()
    rewards = torch.where(real, -beta * kl, torch.zeros_like(kl))
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(mask)] += score.to(rewards.dtype)
    return rewards


# ----------------------------------------------------------------------------- advantages


@torch.no_grad()
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16), backwards over time.

    delta_t = r_t + gamma V_{t+1} - V_t,  A_t = delta_t + gamma lam A_{t+1}, where V_{t+1} and A_{t+1} are 0
    after the last real token (the episode ends there). Returns (advantages, returns = A + V), both 0 on
    padding. Regression targets, so computed without grad.
    """
    real = mask.to(values.dtype)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    # Padding entries (even nan) never enter the recursion.
    rewards, values = torch.where(mask.bool(), rewards, zero), torch.where(mask.bool(), values, zero)
    advantages = torch.zeros_like(values)
    next_value = next_adv = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * real[:, t]
        advantages[:, t] = next_adv
        next_value = values[:, t]
    return advantages, (advantages + values) * real


# ----------------------------------------------------------------------------- losses


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7) as a loss, masked mean over tokens:

        L = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps)),  rho_t = exp(logp_t - old_t)

    clipfrac: share of real tokens where the clipped term is the larger (the clip binds and zeroes the
    gradient), as in lm-human-preferences and TRL. approx_kl: masked mean of k3 for KL(pi_old || pi) on the
    tokens sampled from pi_old, (rho - 1) - log rho (unbiased, >= 0; cleanrl's choice).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).to(ratio.dtype), mask)
        approx_kl = masked_mean(kl_penalty(old_logprobs, logprobs, "k3"), mask)
    return loss, clipfrac, approx_kl


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss 0.5 * max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2), masked mean
    (the value clipping of the OpenAI baselines PPO2 and lm-human-preferences). clipfrac: share of real
    tokens where the clipped term is the larger."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    unclipped_err, clipped_err = (values - returns) ** 2, (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_err > unclipped_err).to(values.dtype), mask)
    return loss, clipfrac


# ----------------------------------------------------------------------------- logits


def _chunked_rows(logits: torch.Tensor) -> list[torch.Tensor]:
    """(..., V) logits as float32 chunks of at most _LOGIT_CHUNK_ROWS rows each (views until upcast)."""
    flat = logits.reshape(-1, logits.shape[-1])
    return [chunk.float() for chunk in flat.split(_LOGIT_CHUNK_ROWS)]


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-token entropy H = logsumexp(z) - sum_v softmax(z)_v z_v (float32); shape logits.shape[:-1].

    Logits of -inf (banned tokens) have probability 0 and contribute 0, not nan.
    """
    out = []
    for z in _chunked_rows(logits):
        p = torch.softmax(z, dim=-1)
        z_safe = torch.where(p > 0, z, torch.zeros_like(z))
        out.append(torch.logsumexp(z, dim=-1) - (p * z_safe).sum(-1))
    return torch.cat(out).reshape(logits.shape[:-1])


def kl_from_logits(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Exact per-position KL(softmax(z) || softmax(z_ref)) = sum_v p_v (log p_v - log q_v) over the whole
    vocabulary (float32); shape logits.shape[:-1].

    Summed over the positions of a response y ~ pi this is the Rao-Blackwellised estimate of the sequence KL:
    by the chain rule KL(pi || ref) = E_y sum_t KL(pi(.|x, y<t) || ref(.|x, y<t)), so it is unbiased, and it
    is the conditional expectation of k1 at every position given the prefix, so its variance is at most k1's
    (Amini et al. 2025). Tokens with p_v = 0 (logit -inf) contribute 0; round-off below 0
    is clipped (a KL is >= 0, and two identical rows give exactly 0).
    """
    if logits.shape != ref_logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and ref_logits {tuple(ref_logits.shape)} do not match")
    out = []
    for z, z_ref in zip(_chunked_rows(logits), _chunked_rows(ref_logits), strict=True):
        logp, logq = torch.log_softmax(z, dim=-1), torch.log_softmax(z_ref, dim=-1)
        p = logp.exp()
        terms = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))
        out.append(terms.sum(-1).clamp(min=0.0))
    return torch.cat(out).reshape(logits.shape[:-1])


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(z)[token] = z[token] - logsumexp(z) (float32), shape tokens.shape.

    Never materialises the full log_softmax: per chunk of rows it gathers one logit and reduces the rest.
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} do not match")
    flat_tokens = tokens.reshape(-1, 1).split(_LOGIT_CHUNK_ROWS)
    out = [
        z.gather(-1, tok).squeeze(-1) - torch.logsumexp(z, dim=-1)
        for z, tok in zip(_chunked_rows(logits), flat_tokens, strict=True)
    ]
    return torch.cat(out).reshape(tokens.shape)


# ----------------------------------------------------------------------------- KL coefficient


class AdaptiveKLController:
    """beta tracking a target KL (Ziegler et al. 2019 §2.2): e = clip(KL / target - 1, -0.2, 0.2),
    beta <- beta (1 + e n_steps / horizon), where n_steps is the number of samples (episodes) just seen."""

    def __init__(self, init_beta: float, target_kl: float, horizon: float):
        if init_beta < 0 or target_kl <= 0 or horizon <= 0:
            raise ValueError(
                f"need init_beta >= 0, target_kl > 0, horizon > 0; got {init_beta}, {target_kl}, {horizon}"
            )
        self.value, self.target_kl, self.horizon = float(init_beta), float(target_kl), float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(float(current_kl) / self.target_kl - 1.0, -_KL_ERROR_CLIP), _KL_ERROR_CLIP)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = _beta_from_state(state)


class FixedKLController:
    """Constant beta with the AdaptiveKLController interface (update is a no-op)."""

    def __init__(self, beta: float):
        if beta < 0:
            raise ValueError(f"need beta >= 0, got {beta}")
        self.value = float(beta)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = _beta_from_state(state)


def _beta_from_state(state: dict[str, float]) -> float:
    if not isinstance(state.get("value"), (int, float)):
        raise ValueError(f"KL controller state needs a float 'value', got {state!r}")
    return float(state["value"])
