"""Scoring every sample of a sweep with every PM, cached in `scores/<pm>.jsonl` (docs/ARCHITECTURE.md §4 score rows).

A PM whose score file exists is not rescored: adding a PM to a finished sweep costs only its own
scoring. `scores/<pm>.json`, written before the score file, records what the scores depend on (kind,
path, prefix, aggregate); a later config that reuses the name for another PM is an error, not a silent
reuse. A score file without that sidecar (scores computed outside pmopt) is accepted once its rows
check out.

Every entry is a `pmopt.rewards.RewardSpec`, scored by the `Reward` that `build_reward` makes of it
(Sharma et al. 2023 §4; Coste et al. 2023 for ensembles):
- pm        `PreferenceModel.load(path).score(prompts, responses)`;
- prefixed  the same with the non-sycophantic prefix (or the entry's own prefix messages);
- ensemble  member scores (K, B) (`Reward.members`) are computed once per (ensemble dir, prefix) and
            cached in `scores/members/`; each entry aggregates them (mean, worst, mean - lam * variance);
- agreement_penalty  the PM's scores (reused from an entry of the same PM and prefix already scored) minus
            μ times the agreement grade, μ = the entry's lam or, when null, fitted on these base samples
            (`pmopt.bon.drift.penalty_coefficient`), recorded in `scores/<name>.penalty.json`;
- a data source's reward, no model (kind gold: the world's gold reward, rater utility with w_agree = 0);
- any kind added with `pmopt.rewards.register_kind`.
NaN or infinite scores are an error naming the PM and the sample.

Under `accelerate launch` every process calls `load_or_score` with its process `state`: the samples
are cut into chunks of `batch_size * 32` (boundaries independent of the process count), each process
scores every P-th chunk (`pmopt.bon.distribute`), the scores are gathered on every process, and the
main process alone writes the files, exactly as one process would. A data source's reward (no model)
is computed whole on each process that asks for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from pmopt import console
from pmopt.bon.distribute import all_gather, sharded_map
from pmopt.io import PmoptError, RecordError, atomic_write_json, atomic_write_jsonl, iter_jsonl
from pmopt.records import validate_score
from pmopt.rewards import PENALTY_KIND, RewardSpec, agreement_grade, build_reward

SCORES_DIR = "scores"
MEMBERS_DIR = "members"
# PMs are called on this many batches at a time, so the progress bar moves; the PM sorts by length
# within a call, so a larger chunk only trims padding a little further.
_BATCHES_PER_CALL = 32


def identity(entry, prefix: list[dict] | None) -> dict:
    """What an entry's scores depend on (besides the samples)."""
    return {"kind": entry.kind, "path": entry.path, "prefix": prefix, "aggregate": entry.aggregate,
            "lam": entry.lam}


def loading_identity(entry, plan) -> dict:
    """The `pm_load` options that change a PM's scores, only where they differ from the defaults, so
    score files written before these options existed stay valid; none for a data source's reward."""
    if entry.name in plan.sourced:
        return {}
    options = plan.cfg.pm_load
    changed = {"dtype": options.dtype != "float32", "max_length": options.max_length is not None,
               "chat_template_kwargs": options.chat_template_kwargs is not None}
    return {f"pm_load.{key}": getattr(options, key) for key, differs in changed.items() if differs}


# ----------------------------------------------------------------------------- the cache


def load_or_score(out: str | Path, entry, plan, samples, device=None, state=None,
                  tally: list[int] | None = None) -> np.ndarray:
    """(P, N) scores of `entry`: read from `scores/<name>.jsonl` if present, else computed and written.

    `state` (an accelerate state, or None for one process): the scoring is split across its processes
    and every process must call this for the same entries in the same order; only the main process
    writes. `tally` is extended with the number of samples each process scored (rank order).
    """
    out = Path(out)
    path, sidecar = out / SCORES_DIR / f"{entry.name}.jsonl", out / SCORES_DIR / f"{entry.name}.json"
    ident = {**identity(entry, plan.prefixes[entry.name]), **loading_identity(entry, plan),
             "samples": plan.samples_key()}
    if path.is_file():
        _check_sidecar(sidecar, ident, entry.name)
        return read_scores(path, samples, entry.name)
    scores = compute_scores(out, entry, plan, samples, device, state, tally)
    if state is None or state.is_main_process:
        atomic_write_json(sidecar, ident)
        atomic_write_jsonl(path, score_rows(samples, scores, entry.name))
    if state is not None:
        state.wait_for_everyone()  # the files exist for every process before it looks at the next entry
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


def compute_scores(out: Path, entry, plan, samples, device, state=None, tally: list[int] | None = None) -> np.ndarray:
    reward = plan.rewards[entry.name]
    if entry.name in plan.sourced:
        scores = source_scores(reward, plan, samples)
        check_finite(scores, samples, f"PM '{entry.name}' (kind {reward.kind} of {reward.path})")
        return scores
    if entry.kind == PENALTY_KIND:
        return penalty_scores(out, entry, plan, samples, device, state, tally)
    if entry.kind == "ensemble":
        from pmopt.pm.ensemble import aggregate, read_ensemble_spec

        members = member_scores(out, entry, plan, samples, device, plan.prefixes[entry.name],
                                state, tally)  # (K, P, N)
        spec = read_ensemble_spec(Path(entry.path))
        method = entry.aggregate or spec.get("aggregate", "mean")
        lam = entry.lam if entry.lam is not None else float(spec.get("uwo_lambda", 0.0))
        import torch

        flat = torch.as_tensor(members.reshape(members.shape[0], -1))
        scores = aggregate(flat, method, lam).numpy().reshape(members.shape[1:])
        check_finite(scores, samples, f"PM '{entry.name}' ({method} of {entry.path})")
        return scores
    scores = _score_with_reward(reward, plan, samples, device, members=False, state=state, tally=tally)[0]
    check_finite(scores, samples, f"PM '{entry.name}' ({entry.path})")
    return scores


def penalty_scores(out: Path, entry, plan, samples, device, state=None, tally: list[int] | None = None) -> np.ndarray:
    """(P, N) r − μ·a of an agreement_penalty entry; μ and the covariances it was fitted from go to
    `scores/<name>.penalty.json` (read by the sweep's drift.json)."""
    from pmopt.bon.drift import penalty_coefficient

    base, reused = reused_base_scores(out, entry, plan, samples)
    if base is None:
        spec = dataclasses.replace(plan.rewards[entry.name], kind="pm", lam=None)
        base = _score_with_reward(spec, plan, samples, device, members=False, state=state, tally=tally)[0]
    check_finite(base, samples, f"PM '{entry.name}' ({entry.path})")
    _, responses, metas = zip(*_triples(plan, samples), strict=True)
    agreement = np.array([agreement_grade(m, r) for m, r in zip(metas, responses, strict=True)],
                         dtype=np.float64).reshape(base.shape)
    fit = penalty_coefficient(base, agreement, entry.lam)
    if state is None or state.is_main_process:
        atomic_write_json(out / SCORES_DIR / f"{entry.name}.penalty.json", {**fit, "base_scores_from": reused})
    return base - fit["mu"] * agreement


def reused_base_scores(out: Path, entry, plan, samples) -> tuple[np.ndarray | None, str | None]:
    """The scores of an entry of the same PM, prefix and load options already on disk (the proxy's, for the
    penalty on the proxy), so the penalty costs no PM pass; (None, None) when there is none."""
    want = {**identity(dataclasses.replace(entry, kind="pm", lam=None), plan.prefixes[entry.name]),
            **loading_identity(entry, plan), "samples": plan.samples_key()}
    for other in plan.cfg.pms:
        if other.name == entry.name or other.kind not in ("pm", "prefixed") or other.name in plan.sourced:
            continue
        path, sidecar = out / SCORES_DIR / f"{other.name}.jsonl", out / SCORES_DIR / f"{other.name}.json"
        if path.is_file() and sidecar.is_file():
            have = json.loads(sidecar.read_text(encoding="utf-8"))
            if {**have, "kind": "pm"} == want:
                return read_scores(path, samples, other.name), other.name
    return None, None


def member_scores(out: Path, entry, plan, samples, device, prefix, state=None,
                  tally: list[int] | None = None) -> np.ndarray:
    """(K, P, N) ensemble member scores, cached per (ensemble dir, prefix) for every entry that shares it."""
    what = [str(Path(entry.path).resolve()), prefix, plan.samples_key()]
    if loading_identity(entry, plan):
        what.append(loading_identity(entry, plan))
    key = hashlib.sha256(json.dumps(what).encode()).hexdigest()[:12]
    path = out / SCORES_DIR / MEMBERS_DIR / f"{Path(entry.path).name}-{key}.jsonl"
    if path.is_file():
        return _read_members(path, samples)
    scores = _score_with_reward(plan.rewards[entry.name], plan, samples, device, members=True, state=state,
                                tally=tally)
    for k, member in enumerate(scores):
        check_finite(member, samples, f"PM '{entry.name}' member {k} ({entry.path})")
    if state is None or state.is_main_process:
        atomic_write_jsonl(path, [{"prompt_id": pid, "sample_idx": j, "scores": [float(s) for s in scores[:, i, j]]}
                                  for i, pid in enumerate(samples.prompt_ids) for j in range(samples.n)])
    if state is not None:
        state.wait_for_everyone()
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


def _triples(plan, samples) -> list[tuple]:
    """(prompt, response, meta) of every sample, in sweep order (prompt by prompt, sample by sample)."""
    return [(plan.records[i]["prompt"], response, plan.records[i].get("meta", {}))
            for i, row in enumerate(samples.responses) for response in row]


def _score_all(score_fn, plan, samples, batch_size: int, label: str, state=None,
               tally: list[int] | None = None) -> np.ndarray:
    """(K, P, N) from `score_fn(prompts, responses, metas) -> (B,) or (K, B)`, called on chunks of the
    samples; under several processes each scores every P-th chunk and all chunks are gathered."""
    triples = _triples(plan, samples)
    chunk = batch_size * _BATCHES_PER_CALL
    rank, world = (0, 1) if state is None else (state.process_index, state.num_processes)
    mine = sum(min(chunk, len(triples) - start) for start in range(rank * chunk, len(triples), world * chunk))
    suffix = f" (process {rank}/{world})" if world > 1 else ""
    bar = console.bar(total=mine, desc=f"bon: score with {label}{suffix}", unit="sample")
    running = {"total": 0.0, "done": 0}

    def score_chunk(start: int, stop: int) -> np.ndarray:
        prompts, responses, metas = zip(*triples[start:stop], strict=True)
        try:
            scores = score_fn(list(prompts), list(responses), list(metas))
        except PmoptError as exc:  # the PM numbers records within this chunk: say where the chunk starts
            p, j = divmod(start, samples.n)
            raise PmoptError(f"PM '{label}': {exc} (records counted from sample {j} of prompt "
                             f"'{samples.prompt_ids[p]}', in sweep order)") from None
        part = np.atleast_2d(scores.detach().cpu().double().numpy())
        running["total"] += float(part.mean(axis=0).sum())  # member mean per sample
        running["done"] += len(prompts)
        bar.update(len(prompts))
        bar.set_postfix(mean_score=f"{running['total'] / running['done']:.3f}", refresh=False)
        return part

    try:
        parts = sharded_map(state, score_chunk, len(triples), chunk, tally)
    finally:
        bar.close()
    flat = np.concatenate(parts, axis=1)
    return flat.reshape(flat.shape[0], len(samples.responses), samples.n)


def check_finite(scores: np.ndarray, samples, what: str) -> None:
    bad = np.argwhere(~np.isfinite(scores))
    if bad.size:
        i, j = bad[0]
        raise PmoptError(f"{what}: score {scores[i, j]} for sample {j} of prompt '{samples.prompt_ids[i]}' "
                         f"(response {samples.responses[i][j]!r}); {len(bad)} non-finite scores in all")


def _score_with_reward(spec: RewardSpec, plan, samples, device, members: bool, state=None,
                       tally: list[int] | None = None) -> np.ndarray:
    """(K, P, N): build the reward (load the PM), score everything, and drop it (one PM resident at a time).

    K = 1 for a single PM; an ensemble's `Reward.members` gives all K members' scores.
    """
    cfg = plan.cfg
    reward = build_reward(spec, cfg.pm_load.for_run(device, cfg.trust_remote_code, cfg.attn_implementation))
    try:
        scores = _score_all(reward.members if members else reward, plan, samples, spec.batch_size,
                            f"{spec.name}{' members' if members else ''}", state, tally)
        if cfg.pm_load.max_length is not None:
            truncated = sum(all_gather(state, getattr(reward, "n_truncated", 0)))  # over every process
            if state is None or state.is_main_process:
                print(f"pmopt bon: PM '{spec.name}': {truncated} scored sequences truncated "
                      f"to pm_load.max_length={cfg.pm_load.max_length} tokens")
        return scores
    finally:
        reward.close()


# ----------------------------------------------------------------------------- a data source's rewards


def source_scores(spec: RewardSpec, plan, samples) -> np.ndarray:
    """(P, N) float64 scores of a data source's reward (no model); NaN for another source's prompts."""
    prompts, responses, metas = zip(*_triples(plan, samples), strict=True)
    scores = build_reward(spec)(list(prompts), list(responses), list(metas))
    return scores.detach().cpu().double().numpy().reshape(len(samples.responses), samples.n)


def gold_rewards(plan, samples) -> np.ndarray:
    """(P, N) gold reward of the source at `world` (Gao et al. 2022's gold RM; the world's: the raters'
    utility with w_agree = 0); NaN for prompts of another source."""
    return source_scores(plan.gold, plan, samples)


__all__ = ["load_or_score", "read_scores", "score_rows", "compute_scores", "member_scores", "penalty_scores", "check_finite",
           "source_scores", "gold_rewards", "SCORES_DIR"]
