"""Best-of-n without resampling: the unbiased estimator, bootstrap CIs and KL (docs/ARCHITECTURE.md §6).

Sample N responses per prompt once; for every n <= N the expected outcome of best-of-n (the sample with
the highest PM score among n drawn uniformly without replacement from the N) is a weighted sum over the
N samples sorted by score. The i-th smallest sample (1-based, ascending) is the max of a uniformly random
n-subset with probability

    w_i = C(i-1, n-1) / C(N, n)  for i >= n, else 0

(choose the other n-1 members among the i-1 smaller samples). This is the U-statistic used by Nakano et
al. 2021 (WebGPT, App. G) and Gao et al. 2022 §2.2 to draw smooth best-of-n curves from one sampling pass.

Tie rule (everywhere in this module): samples are ordered by score and, among equal scores, by sample
index, the LATER index counting as larger. So among tied top scores best-of-n picks the tied sample with
the highest index. `sort_order` implements it; the brute-force tests use the same rule.

KL(BoN_n || base) <= log n - (n-1)/n (Beirami et al. 2024, "Theoretical guarantees on the best-of-n
alignment policy"); it is an upper bound, exact only for continuous score distributions without ties.
`exact_bon_kl` gives the exact value for a discrete base distribution with known probabilities;
`support_bon_kl` applies it to a prompt's sampled outputs, whose base probabilities the sampler knows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pmopt.stats import percentile_interval, resampled_means

# Base probabilities must sum to 1 within this tolerance (they are renormalised afterwards).
_PROB_SUM_TOL = 1e-6


# ----------------------------------------------------------------------------- weights and ordering


def bon_weights(N: int, n: int) -> np.ndarray:
    """Weights (length N) of the ascending-sorted samples in E[f(BoN_n)]; they sum to 1.

    w_i = C(i-1, n-1) / C(N, n) for i >= n else 0, computed by the recursion w_N = n/N,
    w_{i-1} = w_i (i-n)/(i-1), which never forms the (huge) binomial coefficients.
    """
    N, n = _check_int(N, "N"), _check_int(n, "n")
    if not 1 <= n <= N:
        raise ValueError(f"best-of-n needs 1 <= n <= N, got n={n}, N={N}")
    weights = np.zeros(N, dtype=np.float64)
    weights[N - 1] = n / N
    for i in range(N, n, -1):  # i is 1-based: fills w_{i-1} for i = N .. n+1
        weights[i - 2] = weights[i - 1] * (i - n) / (i - 1)
    return weights


def sort_order(scores: np.ndarray, tie_break: np.ndarray | None = None) -> np.ndarray:
    """Indices that sort `scores` ascending along the last axis, deterministically.

    Ties are broken by `tie_break` (same shape, ascending) when given, and then by sample index: the
    later index counts as larger, so it sorts after (and wins best-of-n over) an earlier tied sample.
    """
    scores = np.asarray(scores)
    index = np.broadcast_to(np.arange(scores.shape[-1]), scores.shape)
    if tie_break is None:
        # lexsort sorts by the last key first: score, then index.
        return np.lexsort((index, scores), axis=-1)
    tie_break = np.asarray(tie_break)
    if tie_break.shape != scores.shape:
        raise ValueError(f"tie_break has shape {tie_break.shape}, scores have shape {scores.shape}")
    return np.lexsort((index, tie_break, scores), axis=-1)


# ----------------------------------------------------------------------------- the estimator


def bon_expectation(scores, values, n: int, mask=None) -> np.ndarray:
    """Per-prompt E[f(BoN_n)] from N samples per prompt: `scores` and `values` are (P, N).

    `values` holds f(sample) (float or bool). A prompt whose values contain NaN (an outcome that does not
    apply to it) is an error unless `mask` (P,) bool marks it False; masked-out prompts get NaN and are
    not checked. Returns a (P,) float array.
    """
    scores, values, mask = _check_inputs(scores, values, mask)
    return _expectations(scores, values, mask, [n])[0]


def bon_expectations(scores, values, n_grid: Sequence[int], mask=None) -> np.ndarray:
    """(G, P) matrix of per-prompt E[f(BoN_n)] for every n in `n_grid`: one sort per prompt for all n."""
    grid = [_check_int(n, "n_grid entry") for n in n_grid]
    if not grid:
        raise ValueError("n_grid is empty")
    scores, values, mask = _check_inputs(scores, values, mask)
    return _expectations(scores, values, mask, grid)


def bon_curve(scores, values, n_grid: Sequence[int], n_boot: int = 1000, seed: int = 0,
              ci: float = 0.95, mask=None) -> list[dict]:
    """Mean over prompts of E[f(BoN_n)] for every n in `n_grid`, with bootstrap CIs over prompts.

    Each row: {"n", "mean", "ci_low", "ci_high", "kl_bound", "n_prompts"}. The CI is the percentile
    bootstrap: prompts are resampled with replacement `n_boot` times; per-prompt expectations are
    computed once and only their means are resampled. The same resamples serve every n, so the curve's
    CIs are coherent across n. Prompts with `mask` False are left out.
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    n_boot = _check_int(n_boot, "n_boot")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    grid = [_check_int(n, "n_grid entry") for n in n_grid]
    if not grid:
        raise ValueError("n_grid is empty")
    scores, values, mask = _check_inputs(scores, values, mask)
    if not mask.any():
        raise ValueError("every prompt is masked out: nothing to average")
    per_prompt = _expectations(scores, values, mask, grid)[:, mask]  # (G, P_kept)
    means = per_prompt.mean(axis=1)
    # prompts are the clusters: (n_boot, G) means of the same prompt resamples for every n (pmopt.stats)
    low, high = percentile_interval(resampled_means(per_prompt.T, n_boot, seed), ci)
    return [
        {"n": n, "mean": float(means[g]), "ci_low": float(low[g]), "ci_high": float(high[g]),
         "kl_bound": kl_bound(n), "n_prompts": int(per_prompt.shape[1])}
        for g, n in enumerate(grid)
    ]


def default_n_grid(N_max: int) -> list[int]:
    """1, 2, 4, ... up to N_max, with N_max appended when it is not a power of 2."""
    N_max = _check_int(N_max, "N_max")
    if N_max < 1:
        raise ValueError(f"N_max must be >= 1, got {N_max}")
    grid, n = [], 1
    while n <= N_max:
        grid.append(n)
        n *= 2
    if grid[-1] != N_max:
        grid.append(N_max)
    return grid


def _expectations(scores: np.ndarray, values: np.ndarray, mask: np.ndarray, grid: list[int]) -> np.ndarray:
    """(G, P) matrix of E[f(BoN_n)]: sort each prompt's values by score once, then one matmul per n."""
    N = scores.shape[1]
    order = sort_order(scores)
    sorted_values = np.take_along_axis(values, order, axis=1)
    sorted_values[~mask] = 0.0  # masked rows may hold NaN; their result is overwritten below
    weights = np.stack([bon_weights(N, n) for n in grid])  # (G, N)
    out = weights @ sorted_values.T
    out[:, ~mask] = np.nan
    return out


def _check_inputs(scores, values, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    try:
        values = np.array(values, dtype=np.float64)  # a copy: bool -> 0/1
    except (TypeError, ValueError) as exc:
        raise ValueError(f"values must be numbers or booleans: {exc}") from None
    if scores.ndim != 2:
        raise ValueError(f"scores must be a (prompts, samples) array, got shape {scores.shape}")
    if values.shape != scores.shape:
        raise ValueError(f"values have shape {values.shape}, scores have shape {scores.shape}")
    if scores.shape[1] == 0:
        raise ValueError("no samples per prompt (N = 0)")
    mask = np.ones(scores.shape[0], dtype=bool) if mask is None else np.asarray(mask)
    if mask.dtype != bool or mask.shape != (scores.shape[0],):
        raise ValueError(f"mask must be a bool array of shape ({scores.shape[0]},), got {mask.dtype} {mask.shape}")
    _reject_bad_rows(~np.isfinite(scores) & mask[:, None], "scores", "NaN or inf score")
    _reject_bad_rows(np.isnan(values) & mask[:, None], "values",
                     "NaN value (outcome not applicable?): mask this prompt out with mask=...")
    _reject_bad_rows(np.isinf(values) & mask[:, None], "values", "infinite value")
    return scores, values, mask


def _reject_bad_rows(bad: np.ndarray, name: str, what: str) -> None:
    rows = np.flatnonzero(bad.any(axis=1))
    if rows.size:
        row, col = int(rows[0]), int(np.flatnonzero(bad[rows[0]])[0])
        more = f" ({rows.size} prompt rows in all)" if rows.size > 1 else ""
        raise ValueError(f"{name}: prompt row {row}, sample {col}: {what}{more}")


def _check_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- KL


def kl_bound(n: int) -> float:
    """log n - (n-1)/n: upper bound on KL(BoN_n || base) (Beirami et al. 2024), in nats."""
    n = _check_int(n, "n")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def bon_probs(base_probs, scores, n: int) -> np.ndarray:
    """Exact best-of-n distribution over K distinct outputs with base probabilities `base_probs`.

    With F the base CDF in score order (same tie rule as `sort_order`), the max of n iid draws is y with
    probability F(y)^n - F(y^-)^n. Computed as F^n (-expm1(n log1p(-p/F))) to keep precision when
    p << F and n is large. Returned in the caller's output order.
    """
    probs, scores = _check_discrete(base_probs, scores)
    n = _check_int(n, "n")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    order = sort_order(scores)
    p = probs[order]
    cdf = np.cumsum(p)
    cdf[-1] = 1.0
    out_sorted = np.zeros_like(p)
    pos = p > 0
    with np.errstate(divide="ignore"):
        ratio = np.log1p(-np.minimum(p[pos] / cdf[pos], 1.0))  # log(F(y^-)/F(y)), -inf when F(y^-)=0
    out_sorted[pos] = cdf[pos] ** n * -np.expm1(n * ratio)
    out = np.empty_like(out_sorted)
    out[order] = out_sorted
    return out


def exact_bon_kl(base_probs, scores, n: int) -> float:
    """Exact KL(BoN_n || base) = sum_y P_bon(y) log(P_bon(y) / P_base(y)) for a discrete base.

    n = 1 is the base policy itself, so the KL is exactly 0 (returned without rounding noise).
    """
    probs, _ = _check_discrete(base_probs, scores)
    p_bon = bon_probs(probs, scores, n)
    if n == 1:
        return 0.0
    keep = p_bon > 0  # p_bon > 0 implies p_base > 0; 0 log 0 = 0
    return float(np.sum(p_bon[keep] * np.log(p_bon[keep] / probs[keep])))


def support_bon_kl(outputs: Sequence[Sequence], logprobs, scores, n_grid: Sequence[int],
                   same_sequence_tol: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """KL(BoN_n || base) per prompt on the base restricted to the outputs that were sampled.

    The sampler records each sample's exact log-probability, so a prompt's distinct sampled outputs
    y_1..y_K have known base probabilities p_k; covered = sum_k p_k is the share of the base policy's
    mass that was seen. With the base renormalised on that support, `exact_bon_kl` is exact; it equals
    KL(BoN_n || base) when covered = 1 and is a plug-in estimate otherwise (the unseen outputs are the
    base's rarest, which best-of-n seldom picks). Unlike the bound it is 0 on a prompt whose samples are
    all the same output, and it is at most log(1 / p_min) whatever n.

    `outputs[p][j]` identifies sample j's output (its text); samples with the same text and log-probs
    within `same_sequence_tol` are one token sequence drawn twice, otherwise the text's probability is
    the sum over its distinct token sequences. An output's score is the mean of its samples' scores.
    Returns ((G, P) KL per n and prompt, (P,) covered mass).
    """
    logprobs = np.asarray(logprobs, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    grid = [_check_int(n, "n_grid entry") for n in n_grid]
    if logprobs.shape != scores.shape or logprobs.ndim != 2 or len(outputs) != logprobs.shape[0]:
        raise ValueError(f"outputs, logprobs and scores must be (P, N), got {len(outputs)} rows, "
                         f"{logprobs.shape} and {scores.shape}")
    if not (np.all(np.isfinite(logprobs)) and np.all(logprobs <= 0)):
        raise ValueError("logprobs must be finite and <= 0")
    kl, covered = np.zeros((len(grid), logprobs.shape[0])), np.zeros(logprobs.shape[0])
    for p, row in enumerate(outputs):
        probs, out_scores = _distinct_outputs(row, logprobs[p], scores[p], same_sequence_tol)
        covered[p] = min(1.0, float(probs.sum()))
        for g, n in enumerate(grid):
            kl[g, p] = exact_bon_kl(probs / probs.sum(), out_scores, n)
    return kl, covered


def _distinct_outputs(row: Sequence, logprobs: np.ndarray, scores: np.ndarray,
                      tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Base probability and mean score of each distinct output among one prompt's samples."""
    sequences: dict = {}  # output -> log-probs of its distinct token sequences
    score_lists: dict = {}
    if len(row) != len(logprobs):
        raise ValueError(f"a prompt has {len(row)} outputs but {len(logprobs)} log-probs")
    for output, logprob, score in zip(row, logprobs, scores, strict=True):
        seen = sequences.setdefault(output, [])
        if not any(abs(logprob - other) <= tol for other in seen):
            seen.append(float(logprob))
        score_lists.setdefault(output, []).append(float(score))
    probs = np.array([sum(math.exp(lp) for lp in sequences[o]) for o in sequences])
    return probs, np.array([np.mean(score_lists[o]) for o in sequences])


def _check_discrete(base_probs, scores) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(base_probs, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if probs.ndim != 1 or probs.size == 0 or probs.shape != scores.shape:
        raise ValueError(f"base_probs and scores must be 1-D of equal length, got {probs.shape} and {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"scores: output {int(np.flatnonzero(~np.isfinite(scores))[0])} is NaN or inf")
    if not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise ValueError("base_probs must be finite and non-negative")
    total = probs.sum()
    if abs(total - 1.0) > _PROB_SUM_TOL:
        raise ValueError(f"base_probs must sum to 1, got {total}")
    return probs / total, scores
