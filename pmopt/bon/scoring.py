"""Scoring every sample of a sweep with every PM, cached in `scores/<pm>.jsonl` (docs/ARCHITECTURE.md §4 score rows).

A PM whose score file exists is not rescored: adding a PM to a finished sweep costs only its own
scoring. `scores/<pm>.json`, written before the score file, records what the scores depend on (kind,
path, prefix, aggregate); a later config that reuses the name for another PM is an error, not a silent
reuse. A score file without that sidecar (scores computed outside pmopt) is accepted once its rows
check out.

PM kinds (Sharma et al. 2023 §4; Coste et al. 2023 for ensembles):
- pm        `PreferenceModel.load(path).score(prompts, responses)`;
- prefixed  the same with the non-sycophantic prefix (or the entry's own prefix messages);
- ensemble  member scores (K, B) are computed once per (ensemble dir, prefix) and cached in
            `scores/members/`; each entry aggregates them (mean, worst, mean - lam * variance);
- gold      the world's gold reward (rater utility with w_agree = 0), no model.
NaN or infinite scores are an error naming the PM and the sample.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
from functools import partial
from pathlib import Path

import numpy as np

from pmopt import console
from pmopt.io import PmoptError, RecordError, atomic_write_json, atomic_write_jsonl, iter_jsonl
from pmopt.records import check_text, validate_score

SCORES_DIR = "scores"
MEMBERS_DIR = "members"
PREFIX_NAMES = ("non_sycophantic",)
# PMs are called on this many batches at a time, so the progress bar moves; the PM sorts by length
# within a call, so a larger chunk only trims padding a little further.
_BATCHES_PER_CALL = 32


def resolve_prefix(entry) -> list[dict] | None:
    """An entry's prefix as messages: 'non_sycophantic' is Sharma et al.'s truthfulness request."""
    from pmopt.pm.model import NON_SYCOPHANTIC_PREFIX

    prefix = entry.prefix
    if prefix is None:
        return list(NON_SYCOPHANTIC_PREFIX) if entry.kind == "prefixed" else None
    if isinstance(prefix, str):
        if prefix not in PREFIX_NAMES:
            raise PmoptError(f"pms.{entry.name}: prefix {prefix!r}: expected one of {list(PREFIX_NAMES)} or a "
                             "list of {role, content} messages")
        return list(NON_SYCOPHANTIC_PREFIX)

    def error(field, message):
        return PmoptError(f"pms.{entry.name}: {field}: {message}")

    check_text(prefix, "prefix", error)
    return prefix


def identity(entry, prefix: list[dict] | None) -> dict:
    """What an entry's scores depend on (besides the samples)."""
    return {"kind": entry.kind, "path": entry.path, "prefix": prefix, "aggregate": entry.aggregate,
            "lam": entry.lam}


def loading_identity(entry, options) -> dict:
    """The `pm_load` options that change a PM's scores, only where they differ from the defaults, so
    score files written before these options existed stay valid."""
    if entry.kind == "gold":
        return {}
    changed = {"dtype": options.dtype != "float32", "max_length": options.max_length is not None,
               "chat_template_kwargs": options.chat_template_kwargs is not None}
    return {f"pm_load.{key}": getattr(options, key) for key, differs in changed.items() if differs}


# ----------------------------------------------------------------------------- the cache


def load_or_score(out: str | Path, entry, plan, samples, device=None, gold: np.ndarray | None = None) -> np.ndarray:
    """(P, N) scores of `entry`: read from `scores/<name>.jsonl` if present, else computed and written."""
    out = Path(out)
    path, sidecar = out / SCORES_DIR / f"{entry.name}.jsonl", out / SCORES_DIR / f"{entry.name}.json"
    ident = {**identity(entry, plan.prefixes[entry.name]), **loading_identity(entry, plan.cfg.pm_load),
             "samples": plan.samples_key()}
    if path.is_file():
        _check_sidecar(sidecar, ident, entry.name)
        return read_scores(path, samples, entry.name)
    scores = compute_scores(out, entry, plan, samples, device, gold)
    atomic_write_json(sidecar, ident)
    atomic_write_jsonl(path, score_rows(samples, scores, entry.name))
    return scores


def _check_sidecar(sidecar: Path, ident: dict, name: str) -> None:
    if not sidecar.is_file():
        return
    old = json.loads(sidecar.read_text(encoding="utf-8"))
    changed = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
    if changed:
        raise PmoptError(f"{sidecar}: the scores of PM '{name}' were computed for another PM entry or sample "
                         f"set (changed: {', '.join(changed)}); rename the entry or delete "
                         f"{sidecar.with_suffix('.jsonl')}")


def score_rows(samples, scores: np.ndarray, name: str) -> list[dict]:
    return [{"prompt_id": pid, "sample_idx": j, "pm": name, "score": float(scores[i, j])}
            for i, pid in enumerate(samples.prompt_ids) for j in range(samples.n)]


def read_scores(path: Path, samples, name: str) -> np.ndarray:
    """A score file back into (P, N); every sample must have exactly one finite score."""
    index = {pid: i for i, pid in enumerate(samples.prompt_ids)}
    scores = np.full((len(index), samples.n), np.nan)
    for line, row in iter_jsonl(path, validate_score):
        i, j = index.get(row["prompt_id"]), row["sample_idx"]
        if i is None or not 0 <= j < samples.n:
            raise RecordError(path, line, "prompt_id", f"sample {j} of '{row['prompt_id']}' is not in this sweep")
        if row["pm"] != name:
            raise RecordError(path, line, "pm", f"expected '{name}', got {row['pm']!r}")
        if not np.isnan(scores[i, j]):
            raise RecordError(path, line, "sample_idx", f"sample {j} of '{row['prompt_id']}' scored twice")
        scores[i, j] = row["score"]
    missing = np.argwhere(np.isnan(scores))
    if missing.size:
        i, j = missing[0]
        raise RecordError(path, None, None, f"no score for sample {j} of '{samples.prompt_ids[i]}' "
                                            f"({len(missing)} missing)")
    return scores


# ----------------------------------------------------------------------------- computing


def compute_scores(out: Path, entry, plan, samples, device, gold: np.ndarray | None) -> np.ndarray:
    if entry.kind == "gold":
        return gold
    prefix = plan.prefixes[entry.name]
    if entry.kind == "ensemble":
        from pmopt.pm.ensemble import aggregate, read_ensemble_spec

        members = member_scores(out, entry, plan, samples, device, prefix)  # (K, P, N)
        spec = read_ensemble_spec(Path(entry.path))
        method = entry.aggregate or spec.get("aggregate", "mean")
        lam = entry.lam if entry.lam is not None else float(spec.get("uwo_lambda", 0.0))
        import torch

        flat = torch.as_tensor(members.reshape(members.shape[0], -1))
        scores = aggregate(flat, method, lam).numpy().reshape(members.shape[1:])
        check_finite(scores, samples, f"PM '{entry.name}' ({method} of {entry.path})")
        return scores
    scores = _score_with_pm(entry, plan, samples, device, prefix, members=False)[0]
    check_finite(scores, samples, f"PM '{entry.name}' ({entry.path})")
    return scores


def member_scores(out: Path, entry, plan, samples, device, prefix) -> np.ndarray:
    """(K, P, N) ensemble member scores, cached per (ensemble dir, prefix) for every entry that shares it."""
    what = [str(Path(entry.path).resolve()), prefix, plan.samples_key()]
    if loading_identity(entry, plan.cfg.pm_load):
        what.append(loading_identity(entry, plan.cfg.pm_load))
    key = hashlib.sha256(json.dumps(what).encode()).hexdigest()[:12]
    path = out / SCORES_DIR / MEMBERS_DIR / f"{Path(entry.path).name}-{key}.jsonl"
    if path.is_file():
        return _read_members(path, samples)
    scores = _score_with_pm(entry, plan, samples, device, prefix, members=True)
    for k, member in enumerate(scores):
        check_finite(member, samples, f"PM '{entry.name}' member {k} ({entry.path})")
    atomic_write_jsonl(path, [{"prompt_id": pid, "sample_idx": j, "scores": [float(s) for s in scores[:, i, j]]}
                              for i, pid in enumerate(samples.prompt_ids) for j in range(samples.n)])
    return scores


def _read_members(path: Path, samples) -> np.ndarray:
    index = {pid: i for i, pid in enumerate(samples.prompt_ids)}
    rows = [row for _, row in iter_jsonl(path)]
    if len(rows) != len(index) * samples.n:
        raise RecordError(path, None, None, f"{len(rows)} rows, expected {len(index) * samples.n}")
    scores = np.empty((len(rows[0]["scores"]), len(index), samples.n))
    for row in rows:
        scores[:, index[row["prompt_id"]], row["sample_idx"]] = row["scores"]
    return scores


def _score_all(score_fn, plan, samples, batch_size: int, label: str) -> np.ndarray:
    """(K, P, N) from `score_fn(prompts, responses) -> (B,) or (K, B)`, called on chunks of the samples."""
    pairs = [(plan.records[i]["prompt"], response) for i, row in enumerate(samples.responses) for response in row]
    chunk = batch_size * _BATCHES_PER_CALL
    parts = []
    bar = console.bar(total=len(pairs), desc=f"bon: score with {label}", unit="sample")
    total, done = 0.0, 0
    for start in range(0, len(pairs), chunk):
        prompts, responses = zip(*pairs[start:start + chunk], strict=True)
        try:
            scores = score_fn(list(prompts), list(responses))
        except PmoptError as exc:  # the PM numbers records within this chunk: say where the chunk starts
            p, j = divmod(start, samples.n)
            raise PmoptError(f"PM '{label}': {exc} (records counted from sample {j} of prompt "
                             f"'{samples.prompt_ids[p]}', in sweep order)") from None
        parts.append(np.atleast_2d(scores.detach().cpu().double().numpy()))
        total, done = total + float(parts[-1].mean(axis=0).sum()), done + len(prompts)  # member mean per sample
        bar.update(len(prompts))
        bar.set_postfix(mean_score=f"{total / done:.3f}", refresh=False)
    bar.close()
    flat = np.concatenate(parts, axis=1)
    return flat.reshape(flat.shape[0], len(samples.responses), samples.n)


def check_finite(scores: np.ndarray, samples, what: str) -> None:
    bad = np.argwhere(~np.isfinite(scores))
    if bad.size:
        i, j = bad[0]
        raise PmoptError(f"{what}: score {scores[i, j]} for sample {j} of prompt '{samples.prompt_ids[i]}' "
                         f"(response {samples.responses[i][j]!r}); {len(bad)} non-finite scores in all")


def _score_with_pm(entry, plan, samples, device, prefix, members: bool) -> np.ndarray:
    """(K, P, N): load the PM, score everything, and drop it (one PM resident at a time).

    K = 1 for a single PM; an ensemble's `score_members` gives all K members' scores.
    """
    import torch

    from pmopt.pm.model import PreferenceModel

    cfg = plan.cfg
    pm = PreferenceModel.load(entry.path, cfg.pm_load.for_run(device, cfg.trust_remote_code, cfg.attn_implementation))
    fn = partial(pm.score_members if members else pm.score, prefix=prefix, batch_size=entry.batch_size)
    try:
        scores = _score_all(fn, plan, samples, entry.batch_size, f"{entry.name}{' members' if members else ''}")
        if cfg.pm_load.max_length is not None:
            print(f"pmopt bon: PM '{entry.name}': {pm.n_truncated} scored sequences truncated to "
                  f"pm_load.max_length={cfg.pm_load.max_length} tokens")
        return scores
    finally:
        del pm, fn
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- gold


def gold_rewards(plan, samples) -> np.ndarray:
    """(P, N) gold reward (Gao et al. 2022's gold RM: the raters' utility with w_agree = 0);
    NaN for prompts that are not from the world."""
    from pmopt.world.raters import gold_reward

    gold = np.full((len(samples.responses), samples.n), math.nan)
    for i, (record, row) in enumerate(zip(plan.records, samples.responses, strict=True)):
        if record.get("meta", {}).get("source") == "world":
            gold[i] = [gold_reward(record["meta"], response, plan.raters) for response in row]
    return gold


__all__ = ["resolve_prefix", "load_or_score", "read_scores", "score_rows", "compute_scores", "member_scores",
           "check_finite", "gold_rewards", "SCORES_DIR"]
