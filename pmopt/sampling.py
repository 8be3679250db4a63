"""Batched sampling across prompts: the one place in pmopt that samples from a policy.

Why not `model.generate`: its sampler draws from the global RNG, so a sample depends on which other
prompts share its batch and on how prompts are sharded across processes. Here each sequence gets its
own stream of uniforms, keyed by (seed, prompt key, sample index), and tokens are drawn by inverse-CDF
sampling from those uniforms; batching, bucketing and sharding then change nothing but speed (up to
float round-off in the logits). The decode loop uses the KV cache and left-pads prompts, passing
explicit position ids so a padded prompt is positioned exactly as an unpadded one. Each distinct prompt
of a batch is prefilled once and its cache copied to its samples; finished sequences leave the batch.

`sampling.backend: vllm` hands the same call to vLLM's offline engine (`pmopt.sampling_vllm`, docs/vllm.md):
the same prompts, stop ids, response text and log-probabilities of the distribution sampled, drawn by vLLM.

A sequence finishes on any stop id (`stop_token_ids`): the tokenizer's EOS, every id of the model's
`generation_config.eos_token_id` (an int or a list: Llama 3 lists <|eot_id|> beside <|end_of_text|>) and the
token the chat template closes an assistant turn with (ChatML's <|im_end|>, Gemma's <end_of_turn>), so an
instruct policy stops where its chat format says the reply ends.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass, field
from typing import Literal

import torch

from pmopt.text import Text, encode, end_of_turn_ids, render_prompt


@dataclass
class VllmSection:
    """How vLLM's offline engine is built when `sampling.backend` is vllm (docs/vllm.md)."""

    # engine weights; auto = the checkpoint's (vLLM's own auto runs float32 checkpoints in 16 bits)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    tensor_parallel_size: int = 1  # GPUs one engine splits the model across (1 on CPU)
    gpu_memory_utilization: float = 0.9  # GPU: share of the GPU's memory the engine may take (weights + KV cache)
    max_model_len: int | None = None  # longest prompt + response in tokens; null = the model's own limit
    max_num_seqs: int | None = None  # sequences decoded together; null = vLLM's default
    # true: no CUDA graphs / torch.compile (faster start, slower decoding); null: true on CPU (compiling
    # took 100 s of a start there, benchmarks/BENCHMARKS.md), false on GPUs
    enforce_eager: bool | None = None
    # CPU only: the KV cache in GiB (VLLM_CPU_KVCACHE_SPACE); vLLM's own default takes most of the memory
    cpu_kvcache_space_gib: int = 1
    # CPU only: VLLM_CPU_OMP_THREADS_BIND; nobind leaves threads to the OS (vLLM's auto pins them and keeps
    # one core per NUMA node for itself, which starves a small machine)
    cpu_omp_threads_bind: str = "nobind"

    def validate(self) -> None:
        if self.tensor_parallel_size < 1:
            raise ValueError("sampling.vllm.tensor_parallel_size must be >= 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("sampling.vllm.gpu_memory_utilization must be in (0, 1]")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError("sampling.vllm.max_model_len must be >= 2")
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise ValueError("sampling.vllm.max_num_seqs must be >= 1")
        if self.cpu_kvcache_space_gib < 1:
            raise ValueError("sampling.vllm.cpu_kvcache_space_gib must be >= 1")


@dataclass
class SamplingConfig:
    max_new_tokens: int = 24  # longest response in tokens (a response cut here has no EOS)
    temperature: float = 1.0  # softmax temperature (1 = the policy's own distribution)
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    batch_size: int = 256  # sequences per forward pass
    # passed to the chat template's apply_chat_template (e.g. {enable_thinking: false})
    chat_template_kwargs: dict = field(default_factory=dict)
    # pmopt: pmopt's own sampler (keyed random streams); vllm: vLLM's offline engine (docs/vllm.md)
    backend: Literal["pmopt", "vllm"] = "pmopt"
    vllm: VllmSection = field(default_factory=VllmSection)  # the engine, when backend is vllm

    def validate(self) -> None:
        if self.backend not in ("pmopt", "vllm"):
            raise ValueError(f"sampling.backend must be pmopt or vllm, got {self.backend!r}")
        self.vllm.validate()
        if self.temperature <= 0:
            raise ValueError("sampling.temperature must be > 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("sampling.top_p must be in (0, 1]")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("sampling.max_new_tokens and sampling.batch_size must be >= 1")


@dataclass
class Generation:
    response: str
    token_ids: list[int] = field(repr=False)
    logprob: float  # sum of log-probabilities of the sampled tokens under the sampling distribution
    n_tokens: int
    finished: bool  # ended with a stop id (EOS, a generation_config EOS id or the template's end of turn)


def stream_seed(seed: int, key: str, sample_idx: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{key}/{sample_idx}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _uniforms(seed: int, key: str, sample_idx: int, length: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(stream_seed(seed, key, sample_idx))
    return torch.rand(length, generator=generator, dtype=torch.float64)


def _filter_probs(probs: torch.Tensor, top_k: int, top_p: float, inplace: bool = False) -> torch.Tensor:
    """Top-k / top-p filtered and renormalised probabilities. `inplace` lets the renormalisation reuse
    `probs` (the sampler's own (batch, vocab) buffer) instead of allocating another one."""
    filtered = False
    if top_k and top_k < probs.shape[-1]:
        kth = probs.topk(top_k, dim=-1).values[:, -1:]
        probs, filtered = torch.where(probs < kth, torch.zeros_like(probs), probs), True
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest set whose mass reaches top_p (the first token is always kept)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs, filtered = torch.zeros_like(probs).scatter(-1, order, sorted_p), True
    total = probs.sum(-1, keepdim=True)
    return probs.div_(total) if inplace or filtered else probs / total


def _draw(logits: torch.Tensor, u: torch.Tensor, cfg: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF sampling: token = first index whose cumulative probability exceeds u.

    Per step this is a fixed number of vectorised (batch, vocab) float64 passes and no Python loop over
    the vocabulary; the buffers are reused in place (x / 1.0 and in-place ops give the same bits as the
    out-of-place ones), so a 150k vocabulary costs three (batch, vocab) float64 buffers, not six.
    """
    scaled = logits.to(torch.float64, copy=True)
    if cfg.temperature != 1.0:
        scaled.div_(cfg.temperature)
    probs = _filter_probs(torch.log_softmax(scaled, dim=-1).exp_(), cfg.top_k, cfg.top_p, inplace=True)
    del scaled
    cdf = probs.cumsum(-1)
    u = u.to(cdf.dtype).unsqueeze(-1).contiguous()
    tokens = torch.searchsorted(cdf, u).squeeze(-1).clamp(max=probs.shape[-1] - 1)
    chosen_logp = probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).log()
    return tokens, chosen_logp


def _left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


def _cache_kwarg(model) -> str:
    """The forward keyword of the KV cache: transformers 5 renamed `past_key_values` to `cache` (the old name
    warns, and goes in 5.40); older 5.x releases only know `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(out):
    return out["cache"] if "cache" in out else out["past_key_values"]


# Drop finished sequences from the batch (and the KV cache) once this share of the rows is done:
# decoding cost then follows the unfinished rows rather than the longest sequence of the batch.
COMPACT_WHEN_FINISHED = 0.25


def _prefill_shared(model, prompt_rows: list[list[int]], row_prompt: list[int], pad_id: int, device):
    """Run each distinct prompt through the model once, then give every sequence its prompt's KV cache.

    The N samples of a prompt share its prefix, so prefilling it N times (as `generate` with
    `num_return_sequences=N` does) repeats the same computation; the cache rows are copied instead.
    """
    ids, mask = _left_pad(prompt_rows, pad_id, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    # logits_to_keep=1: only the last position's logits are needed (a full prefill's logits cost GBs at scale)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    expand = torch.tensor(row_prompt, dtype=torch.long, device=device)
    cache = _cache_of(out)
    cache.batch_select_indices(expand)
    return cache, out.logits[expand, -1, :], mask[expand], positions[expand]


def stop_token_ids(model, tokenizer, chat_template_kwargs: dict | None = None) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS, the model's generation_config EOS ids (an int or
    a list) and the chat template's end-of-turn token."""
    generation_config = getattr(model, "generation_config", None)
    configured = getattr(generation_config, "eos_token_id", None)
    configured = configured if isinstance(configured, (list, tuple)) else [configured]
    ids = [tokenizer.eos_token_id, *configured, *end_of_turn_ids(tokenizer, chat_template_kwargs)]
    return sorted({int(i) for i in ids if i is not None})


@torch.inference_mode()
def _decode_batch(model, prompt_rows: list[list[int]], row_prompt: list[int], uniforms: torch.Tensor,
                  cfg: SamplingConfig, stop_ids: torch.Tensor,
                  pad_id: int) -> tuple[list[list[int]], list[float], list[bool]]:
    """Decode one sequence per entry of `row_prompt` (an index into the distinct `prompt_rows`)."""
    device = next(model.parameters()).device
    cache, logits, mask, positions = _prefill_shared(model, prompt_rows, row_prompt, pad_id, device)
    cache_kwarg = _cache_kwarg(model)
    batch = len(row_prompt)
    tokens_out = torch.full((batch, cfg.max_new_tokens), -1, dtype=torch.long)
    total_logp = torch.zeros(batch, dtype=torch.float64)
    finished_out = torch.zeros(batch, dtype=torch.bool)
    rows = torch.arange(batch)  # original index of each row still in the batch
    uniforms, next_pos = uniforms.to(device), positions[:, -1:]
    alive = torch.ones(batch, dtype=torch.bool)  # per row still in the batch: not yet past its EOS
    for t in range(cfg.max_new_tokens):
        tokens, logp = _draw(logits.float(), uniforms[:, t], cfg)
        tokens_cpu = torch.where(alive, tokens.cpu(), torch.full_like(alive, -1, dtype=torch.long))
        tokens_out[rows, t] = tokens_cpu
        total_logp[rows] += torch.where(alive, logp.cpu(), torch.zeros_like(total_logp[rows]))
        alive &= ~torch.isin(tokens_cpu, stop_ids)
        finished_out[rows] |= ~alive
        if not bool(alive.any()) or t == cfg.max_new_tokens - 1:
            break
        if (~alive).float().mean() >= COMPACT_WHEN_FINISHED:
            keep = alive.nonzero().squeeze(-1)
            on_device = keep.to(device)
            cache.batch_select_indices(on_device)
            rows, alive, tokens, mask = rows[keep], alive[keep], tokens[on_device], mask[on_device]
            uniforms, next_pos = uniforms[on_device], next_pos[on_device]
        else:  # finished rows ride along, fed padding, until enough of them justify a compaction
            tokens = torch.where(alive.to(device), tokens, torch.full_like(tokens, pad_id))
        mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], dim=1)
        next_pos = next_pos + 1
        out = model(input_ids=tokens.unsqueeze(-1), attention_mask=mask, position_ids=next_pos,
                    use_cache=True, **{cache_kwarg: cache})
        cache, logits = _cache_of(out), out.logits[:, -1, :]
    return _collect(tokens_out, total_logp, finished_out, set(stop_ids.tolist()))


def _collect(tokens_out: torch.Tensor, total_logp: torch.Tensor, finished: torch.Tensor,
             stop_ids: set[int]) -> tuple[list[list[int]], list[float], list[bool]]:
    """Each row's tokens up to and including its stop id."""
    out_rows = []
    for row in tokens_out.tolist():
        kept = []
        for token in row:
            if token < 0:
                break
            kept.append(token)
            if token in stop_ids:
                break
        out_rows.append(kept)
    return out_rows, total_logp.tolist(), finished.tolist()


def sample(model, tokenizer, prompts: list[Text], n: int, cfg: SamplingConfig, seed: int,
           keys: list[str] | None = None) -> list[list[Generation]]:
    """`n` samples for every prompt, batched across prompts; `out[i][j]` is sample j of prompt i.

    `keys` name the prompts' random streams (default: their index); give stable ids so a prompt's
    samples are the same whichever subset or shard of prompts it is sampled with. With backend vllm,
    `model` may be the policy's path instead of a loaded model (the engine loads it itself).
    """
    keys = keys if keys is not None else [str(i) for i in range(len(prompts))]
    if len(keys) != len(prompts):
        raise ValueError("keys and prompts differ in length")
    if cfg.backend == "vllm":
        from pmopt.sampling_vllm import sample as sample_with_vllm

        return sample_with_vllm(model, tokenizer, prompts, n, cfg, seed, keys)
    stops = stop_token_ids(model, tokenizer, cfg.chat_template_kwargs)
    stop_ids = torch.tensor(stops, dtype=torch.long)
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, stops[0]) if i is not None)
    encoded = [encode(tokenizer, render_prompt(p, tokenizer, chat_template_kwargs=cfg.chat_template_kwargs))
               for p in prompts]
    jobs = sorted(((i, j) for i in range(len(prompts)) for j in range(n)), key=lambda ij: (len(encoded[ij[0]]), ij))
    results: list[list[Generation | None]] = [[None] * n for _ in prompts]
    was_training = model.training
    model.eval()
    for start in range(0, len(jobs), cfg.batch_size):
        chunk = jobs[start:start + cfg.batch_size]
        uniforms = torch.stack([_uniforms(seed, keys[i], j, cfg.max_new_tokens) for i, j in chunk])
        distinct = list(dict.fromkeys(i for i, _ in chunk))
        slot = {i: k for k, i in enumerate(distinct)}
        rows, logps, done = _decode_batch(model, [encoded[i] for i in distinct], [slot[i] for i, _ in chunk],
                                          uniforms, cfg, stop_ids, pad_id)
        for (i, j), row, logp, fin in zip(chunk, rows, logps, done, strict=True):
            text_ids = row[:-1] if fin else row
            response = tokenizer.decode(text_ids, skip_special_tokens=True).strip()
            results[i][j] = Generation(response, row, logp, len(row), fin)
    model.train(was_training)
    return results  # type: ignore[return-value]


def weights_changed(model, cfg: SamplingConfig) -> None:
    """Tell the sampler that `model`'s weights changed in memory (an optimizer step, a resumed checkpoint):
    a vLLM engine serving it loads them before it samples again. pmopt's own sampler reads the model."""
    if cfg.backend == "vllm":
        from pmopt.sampling_vllm import weights_changed as engine_is_stale

        engine_is_stale(model)


def close_engines() -> None:
    """Stop the vLLM engine of this process, if one was started (frees its weights and KV cache)."""
    import sys

    engine_module = sys.modules.get("pmopt.sampling_vllm")
    if engine_module is not None:
        engine_module.shutdown()
