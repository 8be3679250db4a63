"""KL to a reference policy when the sampled policy is not the base (docs/drift.md, "one KL axis").

Best-of-n on a policy π′ that was itself fine-tuned from a base π₀ (Wei et al. 2023's intervention) sits at
a KL from π₀ that the bound log n − (n−1)/n does not see. By the chain rule of log-ratios,

    KL(BoN_n(π′) ‖ π₀) = KL(BoN_n(π′) ‖ π′) + E_{y ~ BoN_n(π′)}[log π′(y) − log π₀(y)],

the first term bounded by log n − (n−1)/n (Beirami et al. 2024) and the second the expected log-ratio of the
sample best-of-n selects, which the best-of-n estimator computes exactly from the N samples per prompt
(`bon_expectations` of ℓ = log π′ − log π₀). The curves' `kl/reference` is their sum, an upper bound of the
same kind as every best-of-n row's `kl`, so a fine-tuned policy's curves share the base policy's axis.

ℓ is computed by teacher forcing both policies on each sample's tokens: the response re-encoded after its
prompt (as `pmopt.probes.judges.option_logprobs` joins a reply) plus the stop token when the sampler recorded
one. `reference.json` records how many re-encodings reproduce the sampler's token count and, over those, the
largest gap between the sampler's recorded log-probability and the teacher-forced one and how many exceed
1e-3 (0 up to float round-off when the tokens are the sampled ones; on the default world 0-7 of 14,080 samples
a seed re-encode into other tokens of the same count, and their ℓ is that of the re-encoded sequence). Needs temperature 1 and no top-k / top-p (samples from π′ itself).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pmopt import console
from pmopt.bon.estimator import bon_curve, kl_bound
from pmopt.io import PmoptError, atomic_write_json, atomic_write_jsonl, iter_jsonl
from pmopt.records import bon_curve_row

REFERENCE_FILE, REFERENCE_META = "reference.jsonl", "reference.json"
METRIC = "kl/reference"
_BATCH = 64


def check_sampling(cfg) -> None:
    """The log-ratio's expectation is over π′'s own samples: the sampling distribution must be π′."""
    s = cfg.sampling
    if s.temperature != 1.0 or s.top_k or s.top_p < 1.0:
        raise PmoptError("reference_policy: the KL to a reference needs samples from the policy itself "
                         "(sampling.temperature 1, top_k 0, top_p 1)")


def load_or_compute(out: Path, plan, samples, device=None) -> np.ndarray:
    """(P, N) ℓ = log π′(y) − log π₀(y) of every sample, cached in reference.jsonl (keyed by the samples and
    both policies)."""
    cfg = plan.cfg
    meta = {"samples": plan.samples_key(), "policy": cfg.policy_path(), "reference": cfg.reference_policy}
    path, meta_path = out / REFERENCE_FILE, out / REFERENCE_META
    if path.is_file() and meta_path.is_file():
        saved = json.loads(meta_path.read_text(encoding="utf-8"))
        if {k: saved.get(k) for k in meta} == meta:
            return _read(path, samples)
    policy_lp, reference_lp, report = _teacher_forced(plan, samples, device)
    rows = [{"prompt_id": pid, "sample_idx": j, "policy_logprob": policy_lp[i, j], "reference_logprob": reference_lp[i, j]}
            for i, pid in enumerate(samples.prompt_ids) for j in range(samples.n)]
    atomic_write_jsonl(path, rows)
    atomic_write_json(meta_path, {**meta, **report})  # last: marks reference.jsonl complete
    return policy_lp - reference_lp


def _read(path: Path, samples) -> np.ndarray:
    index = {pid: i for i, pid in enumerate(samples.prompt_ids)}
    ratio = np.full((len(index), samples.n), np.nan)
    for _, row in iter_jsonl(path):
        ratio[index[row["prompt_id"]], row["sample_idx"]] = row["policy_logprob"] - row["reference_logprob"]
    if np.isnan(ratio).any():
        raise PmoptError(f"{path}: a sample has no log-ratio (delete the file to recompute it)")
    return ratio


def _teacher_forced(plan, samples, device) -> tuple[np.ndarray, np.ndarray, dict]:
    from pmopt.policy import load_policy
    from pmopt.sampling import stop_token_ids
    from pmopt.text import encode, join, render_prompt

    cfg = plan.cfg
    where = str(device) if device is not None else None
    model, tokenizer = load_policy(cfg.policy_path(), dtype=cfg.policy_dtype, device=where,
                                   trust_remote_code=cfg.trust_remote_code, attn_implementation=cfg.attn_implementation)
    stops = stop_token_ids(model, tokenizer, cfg.sampling.chat_template_kwargs)
    stop = tokenizer.eos_token_id if tokenizer.eos_token_id in stops else stops[0]
    rows, matches = [], []
    for i, record in enumerate(plan.records):
        text = render_prompt(record["prompt"], tokenizer, chat_template_kwargs=cfg.sampling.chat_template_kwargs)
        context = encode(tokenizer, text)
        for j, response in enumerate(samples.responses[i]):
            ids = encode(tokenizer, join(text, response)[len(text):]) if response else []
            n_drawn, finished = samples.n_tokens[i][j], samples.finished[i][j]
            if finished is None:  # an older shard: a stop id was drawn when the count leaves room for it
                finished = n_drawn == len(ids) + 1
            ids = ids + [stop] if finished else ids
            matches.append(len(ids) == n_drawn)
            rows.append((context, ids or [stop]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop
    policy = np.array(_forced(model, rows, pad, "policy"))
    del model
    reference, _ = load_policy(cfg.reference_policy, dtype=cfg.policy_dtype, device=where,
                               trust_remote_code=cfg.trust_remote_code, attn_implementation=cfg.attn_implementation)
    ref = np.array(_forced(reference, rows, pad, "reference"))
    shape = (len(plan.records), samples.n)
    recorded = np.asarray(samples.logprobs, dtype=np.float64).reshape(-1)
    gap = np.abs(recorded - policy)[np.array(matches)]  # where the re-encoding has the sampled token count
    report = {"n_samples": len(rows), "token_count_matches": int(sum(matches)),
              "max_recorded_logprob_gap": None if np.isnan(gap).all() else float(np.nanmax(gap)),
              "recorded_logprob_gaps_over_1e-3": int((gap > 1e-3).sum())}  # re-encoded into other tokens
    return policy.reshape(shape), ref.reshape(shape), report


def _forced(model, rows, pad, label: str) -> list[float]:
    from pmopt.probes.judges import token_logprobs

    out: list[float] = []
    for start in console.bar(range(0, len(rows), _BATCH * 16), desc=f"bon: log-probs under the {label}", unit="chunk"):
        out += token_logprobs(model, rows[start:start + _BATCH * 16], pad, _BATCH)
    return out


def reference_rows(pm: str, scores: np.ndarray, ratio: np.ndarray, grid: list[int], n_boot: int, seed: int,
                   ci: float) -> list[dict]:
    """`kl/reference` per n: log n − (n−1)/n + mean over prompts of E[ℓ(BoN_n)], the interval that of the
    second term (bootstrap over prompts)."""
    rows = []
    for point in bon_curve(scores, ratio, grid, n_boot=n_boot, seed=seed, ci=ci):
        bound = kl_bound(point["n"])
        low, high = (None if point[k] is None or math.isnan(point[k]) else bound + point[k] for k in ("ci_low", "ci_high"))
        rows.append(bon_curve_row(pm, point["n"], bound, METRIC, bound + point["mean"], low, high, point["n_prompts"]))
    return rows


__all__ = ["load_or_compute", "reference_rows", "check_sampling", "METRIC", "REFERENCE_FILE"]
