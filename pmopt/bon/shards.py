"""The sweep's one sampling pass, in shards: resumable and splittable across processes.

Prompts are cut, in sweep order, into shards of `shard_size` prompts; shard k is written whole to
`samples/shard-0000k.jsonl` (atomically), one docs/ARCHITECTURE.md §4 sample row per line:
{prompt_id, sample_idx, response, logprob, n_tokens, finished}. A shard file that exists is complete,
so a sweep resumes at the first missing shard. Under `accelerate launch` the missing shards are dealt
round-robin to the processes. A shard is always sampled as one `pmopt.sampling.sample` call on the
same prompts, and every sequence draws from its own stream keyed by (seed, prompt id, sample index),
so the samples are the same whichever process, or how many, drew them.

`samples/meta.json` records what the samples depend on (policy, seed, N, sampling settings, the
prompts); reusing an output directory under a different sampling config is an error, never a silent
mix of two sample sets. `samples/ranks/rank-0000r.json` logs which shards process r drew in its last pass.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from pmopt import console
from pmopt.faults import fault_point
from pmopt.io import PmoptError, RecordError, atomic_write_json, atomic_write_jsonl, iter_jsonl
from pmopt.records import validate_sample
from pmopt.sampling import close_engines, sample

SAMPLES_DIR = "samples"
META_FILE = "meta.json"
RANKS_DIR = "ranks"


@dataclass
class Samples:
    """The gathered samples: `responses[p][j]` is sample j of prompt p (sweep order), `logprobs[p][j]`
    its log-probability under the sampling distribution (NaN where a shard row has none)."""

    prompt_ids: list[str]
    responses: list[list[str]]
    logprobs: list[list[float]]
    # tokens drawn (stop id included) and whether a stop id ended the response (None where a row has none)
    n_tokens: list[list[int]] = field(default_factory=list)
    finished: list[list[bool | None]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.responses[0]) if self.responses else 0

    @property
    def has_logprobs(self) -> bool:
        """Every sample row carried its log-probability (older or foreign shards may not)."""
        return not any(math.isnan(lp) for row in self.logprobs for lp in row)


def shard_count(n_prompts: int, shard_size: int) -> int:
    return math.ceil(n_prompts / shard_size)


def shard_path(out: str | Path, k: int) -> Path:
    return Path(out) / SAMPLES_DIR / f"shard-{k:05d}.jsonl"


def shard_records(records: list[dict], k: int, shard_size: int) -> list[dict]:
    return records[k * shard_size:(k + 1) * shard_size]


def missing_shards(out: str | Path, n_shards: int) -> list[int]:
    return [k for k in range(n_shards) if not shard_path(out, k).is_file()]


# ----------------------------------------------------------------------------- meta


def check_samples_meta(out: str | Path, meta: dict) -> None:
    """Existing samples must come from the same sampling config; say which fields differ."""
    path = Path(out) / SAMPLES_DIR / META_FILE
    if not path.is_file():
        if any((Path(out) / SAMPLES_DIR).glob("shard-*.jsonl")):
            raise PmoptError(f"{path.parent}: shard files without {META_FILE}: cannot tell how they were drawn")
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PmoptError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    changed = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
    if changed:
        details = "; ".join(f"{k}: {old.get(k)!r} -> {meta.get(k)!r}" for k in changed if k != "prompts_sha256")
        raise PmoptError(f"{path}: the samples in {Path(out)} were drawn under another config (changed: "
                         f"{', '.join(changed)}{'; ' + details if details else ''}); use a new --out")


def write_samples_meta(out: str | Path, meta: dict) -> None:
    atomic_write_json(Path(out) / SAMPLES_DIR / META_FILE, meta)


# ----------------------------------------------------------------------------- sampling


def sample_rows(model, tokenizer, records: list[dict], n: int, sampling, seed: int) -> list[dict]:
    """`n` sample rows per record: one batched call, streams keyed by record id."""
    generations = sample(model, tokenizer, [r["prompt"] for r in records], n, sampling, seed,
                         keys=[r["id"] for r in records])
    return [{"prompt_id": record["id"], "sample_idx": j, "response": g.response, "logprob": g.logprob,
             "n_tokens": g.n_tokens, "finished": g.finished}
            for record, gens in zip(records, generations, strict=True) for j, g in enumerate(gens)]


def generate_shards(out: str | Path, records: list[dict], shard_ids: list[int], cfg, device=None,
                    rank: int = 0, world_size: int = 1) -> list[int]:
    """Sample and write the given shards (this process's share); the policy loads only if needed."""
    if not shard_ids:
        return []
    model, tokenizer = _sampler_policy(cfg, device, world_size)
    where = f" (process {rank} of {world_size})" if world_size > 1 else ""
    started = time.perf_counter()
    for k in console.bar(shard_ids, desc=f"bon: sample {cfg.n_max} per prompt{where}", unit="shard", position=rank):
        rows = sample_rows(model, tokenizer, shard_records(records, k, cfg.shard_size), cfg.n_max,
                           cfg.sampling, cfg.seed)
        atomic_write_jsonl(shard_path(out, k), rows)
        fault_point("bon.shard")
    # which process drew which shards in the last pass (load balance, and proof of a real split)
    atomic_write_json(Path(out) / SAMPLES_DIR / RANKS_DIR / f"rank-{rank:05d}.json",
                      {"rank": rank, "world_size": world_size, "shards": list(shard_ids),
                       "seconds": round(time.perf_counter() - started, 3)})
    del model
    close_engines()  # a vLLM engine's memory goes back before the PMs load
    return list(shard_ids)


def _sampler_policy(cfg, device, world_size: int):
    """(model, tokenizer) to sample with: the loaded policy, or with backend vllm its path (the engine loads
    the weights itself, so the policy is not held twice)."""
    from pmopt.policy import load_policy, load_tokenizer

    if cfg.sampling.backend != "vllm":
        return load_policy(cfg.policy_path(), dtype=cfg.policy_dtype, attn_implementation=cfg.attn_implementation,
                           device=str(device) if device is not None else None, trust_remote_code=cfg.trust_remote_code)
    if world_size > 1:
        # vLLM's in-process engine joins its own process group and takes the first visible GPU whatever the
        # process's rank; it spreads a model over GPUs itself (tensor_parallel_size)
        raise PmoptError("sampling.backend: vllm runs in one process: drop accelerate launch (on GPUs, set "
                         "sampling.vllm.tensor_parallel_size to the number of GPUs; docs/vllm.md)")
    return cfg.policy_path(), load_tokenizer(cfg.policy_path(), cfg.trust_remote_code)


# ----------------------------------------------------------------------------- gathering


def read_samples(out: str | Path, records: list[dict], cfg) -> Samples:
    """Every shard, validated: each must hold exactly its prompts' samples 0..N-1."""
    responses: list[list[str]] = []
    logprobs: list[list[float]] = []
    n_tokens: list[list[int]] = []
    finished: list[list[bool | None]] = []
    for k in range(shard_count(len(records), cfg.shard_size)):
        path = shard_path(out, k)
        if not path.is_file():
            raise PmoptError(f"{path}: sample shard missing (was the sampling pass interrupted?)")
        shard = _read_shard(path, shard_records(records, k, cfg.shard_size), cfg.n_max)
        responses += [[row["response"] for row in rows] for rows in shard]
        logprobs += [[float(row.get("logprob", math.nan)) for row in rows] for rows in shard]
        n_tokens += [[row["n_tokens"] for row in rows] for rows in shard]
        finished += [[row.get("finished") for row in rows] for rows in shard]
    return Samples([r["id"] for r in records], responses, logprobs, n_tokens, finished)


def _read_shard(path: Path, records: list[dict], n: int) -> list[list[dict]]:
    index = {r["id"]: i for i, r in enumerate(records)}
    grid: list[list[dict | None]] = [[None] * n for _ in records]
    for line, row in iter_jsonl(path, validate_sample):
        i, j = index.get(row["prompt_id"]), row["sample_idx"]
        if i is None:
            raise RecordError(path, line, "prompt_id", f"'{row['prompt_id']}' is not a prompt of this shard")
        if not 0 <= j < n:
            raise RecordError(path, line, "sample_idx", f"{j} outside 0..{n - 1}")
        if grid[i][j] is not None:
            raise RecordError(path, line, "sample_idx", f"sample {j} of '{row['prompt_id']}' appears twice")
        grid[i][j] = row
    for i, row in enumerate(grid):
        if None in row:
            raise RecordError(path, None, None, f"prompt '{records[i]['id']}' lacks sample {row.index(None)}")
    return grid  # type: ignore[return-value]


__all__ = ["Samples", "shard_count", "shard_path", "shard_records", "missing_shards", "check_samples_meta",
           "write_samples_meta", "sample_rows", "generate_shards", "read_samples"]
