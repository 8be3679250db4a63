"""Loading a policy (an HF causal LM + tokenizer) from a local directory or a hub id, in a checked dtype, on a
checked device."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

from pmopt.hub import looks_like_hub_id
from pmopt.io import PmoptError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# The dtypes a model (policy or PM) may be loaded in, by torch's names; "auto" keeps the checkpoint's own.
DTYPES = ("float32", "bfloat16", "float16")
# The attention kernels transformers accepts as `attn_implementation`; None keeps its default (sdpa where the
# architecture supports it). flash_attention_* need the flash-attn package and a GPU.
AttnImplementation = Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"]
ATTN_IMPLEMENTATIONS = get_args(AttnImplementation)


def attn_kwargs(attn_implementation: str | None) -> dict:
    """`from_pretrained` keyword for the attention kernel: {} for the default, else the validated choice."""
    if attn_implementation is None:
        return {}
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise PmoptError(f"unknown attn_implementation {attn_implementation!r} "
                         f"(expected one of {', '.join(ATTN_IMPLEMENTATIONS)})")
    return {"attn_implementation": attn_implementation}


# The device types a model can be placed on and run by pmopt; torch parses more names (meta, hpu, ...) that
# either hold no data or need a vendor plugin pmopt does not drive.
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def check_device(device: str | None, counts: dict[str, int] | None = None) -> None:
    """A PmoptError unless torch can place a model on `device` on this machine: a device string of a known
    type, whose accelerator is present, and whose index (`cuda:N`) is below that accelerator's device count.
    `counts` ({type: number of devices}) replaces what torch reports for this machine (tests); None asks torch."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in DEVICE_TYPES:
        raise PmoptError(f"{device!r} is not a device pmopt can run a model on (expected cpu, cuda, cuda:N, mps "
                         "or xpu)")
    if parsed.type == "cpu":
        return
    count = counts.get(parsed.type, 0) if counts is not None else getattr(torch, parsed.type).device_count()
    name = {"cuda": "CUDA", "mps": "MPS (Apple GPU)", "xpu": "XPU (Intel GPU)"}[parsed.type]
    if count == 0:
        raise PmoptError(f"{device}: this machine has no {name} device{_why_none(parsed.type, counts)}")
    if parsed.index is not None and parsed.index >= count:
        have = f"{parsed.type}:0" if count == 1 else f"{parsed.type}:0 to {parsed.type}:{count - 1}"
        raise PmoptError(f"{device}: no such {name} device (this machine has {count}: {have})")


def _why_none(kind: str, counts: dict[str, int] | None) -> str:
    """Why torch sees no device of `kind`: a torch built without it, or CUDA_VISIBLE_DEVICES hiding them."""
    import torch

    if counts is not None or kind != "cuda":
        return ""
    if torch.version.cuda is None and torch.version.hip is None:
        return f" (torch {torch.__version__} is built without CUDA)"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f" visible (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""


# torch's CPU allocator aligns every tensor it allocates to this many bytes (c10's gAlignment).
CPU_ALIGNMENT = 64


def aligned_weights(model):
    """`model` with every CPU parameter and buffer in memory torch allocated itself (64-byte aligned).

    `from_pretrained` hands out safetensors weights as zero-copy views of the memory-mapped file, so a
    weight's address mod 64 is set by the file's header length (8 + header bytes + the tensor's offset).
    MKL's float32 CPU products round differently with a weight's address mod 16 (a vectorised dot product
    handles a misaligned start apart, which reorders the sum): the score head of one PM gave four
    different last bits at byte offsets 0, 4, 8 and 12. A model scored as loaded and the same model
    copied (`model.to("cpu:0")`, which a process group's device makes) then disagree by ~1e-7. Copied,
    every weight sits at the allocator's alignment in every process, so its outputs do not depend on
    how the file was laid out or whether something moved the model (docs/ARCHITECTURE.md §10).
    """
    import itertools

    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.device.type == "cpu" and tensor.data_ptr() % CPU_ALIGNMENT:
            tensor.data = tensor.data.clone()
    return model


def resolve_dtype(dtype, default="auto"):
    """A dtype as `from_pretrained` takes it: a name in DTYPES -> the torch dtype, "auto" and torch dtypes
    as they are, None -> `default` (a policy: "auto"; `pmopt.pm.loading` gives PMs float32)."""
    if dtype is None:
        dtype = default
    if not isinstance(dtype, str) or dtype == "auto":
        return dtype
    if dtype not in DTYPES:
        raise PmoptError(f"unknown dtype {dtype!r} (expected auto, {', '.join(DTYPES)})")
    import torch

    return getattr(torch, dtype)


def check_model_path(path: str | Path, what: str = "model") -> None:
    path_str = str(path)
    if Path(path_str).exists() or looks_like_hub_id(path_str):
        if Path(path_str).exists() and not (Path(path_str) / "config.json").is_file():
            raise PmoptError(f"{path_str}: {what} directory has no config.json (not a saved HF model)")
        return
    raise PmoptError(f"{path_str}: {what} path does not exist (and is not a hub id such as 'org/name')")


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    local = Path(str(path))
    if local.is_dir() and not any((local / name).exists() for name in TOKENIZER_FILES):
        raise PmoptError(f"{local}: no tokenizer in this directory (expected one of {', '.join(TOKENIZER_FILES)})")
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(path: str | Path, dtype: str | None = None, device: str | None = None,
                trust_remote_code: bool = False, attn_implementation: str | None = None):
    """(model, tokenizer) for sampling; the model is in eval mode on `device` (default: cuda if present)."""
    import torch
    from transformers import AutoModelForCausalLM

    attention = attn_kwargs(attn_implementation)  # a bad choice fails before anything loads
    check_model_path(path, "policy")
    tokenizer = load_tokenizer(path, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code, **attention,
    )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return aligned_weights(model.to(device)).eval(), tokenizer
