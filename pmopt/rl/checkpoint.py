"""Checkpoints of the PPO loop: everything a killed run needs to continue the same curve.

A checkpoint `OUT/checkpoints/step-NNNNNN/` holds
  trainable.safetensors   the trainable parameters of policy + value model (LoRA: adapters and heads only;
                          the frozen base is reloaded from its own directory)
  optimizer.pt            the optimizer's state dict (tensors and plain containers; loaded weights_only=True)
  rng-<rank>.safetensors  every RNG state of every process, as tensors
  state.json              step, KL coefficient, LR scheduler state; written last: a directory without it
                          is incomplete and ignored
Resuming loads the newest complete checkpoint and drops the log rows (metrics.jsonl, curves.jsonl) of later
steps, so the restarted run writes the same curve an uninterrupted one would have.
It is written into a temporary sibling and renamed, so a crash mid-save leaves the previous one intact.
Under DeepSpeed the engine owns model and optimizer partitions; `accelerator.save_state` writes those.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from pmopt import console
from pmopt.faults import fault_point
from pmopt.io import PmoptError, atomic_write_json, atomic_write_jsonl, read_metrics

STATE_FILE = "state.json"
FORMAT, VERSION = "pmopt-ppo-checkpoint", 1
_PREFIX = "step-"


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"{_PREFIX}{step:06d}"


def latest_step_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under `root` (one with state.json), or None."""
    root = Path(root)
    done = [p for p in root.glob(f"{_PREFIX}*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: int(p.name[len(_PREFIX):]), default=None)


# ----------------------------------------------------------------------------- RNG state as tensors


def rng_state() -> dict[str, torch.Tensor]:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    if kind != "MT19937":
        raise ValueError(f"unexpected numpy bit generator {kind}")
    state = {
        "torch": torch.get_rng_state(),
        "python_version": torch.tensor([version], dtype=torch.int64),
        "python_state": torch.tensor(internal, dtype=torch.int64),
        "python_gauss": torch.tensor([math.nan if gauss is None else gauss], dtype=torch.float64),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_meta": torch.tensor([pos, has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor([cached], dtype=torch.float64),
    }
    if torch.cuda.is_available():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda_{i}"] = cuda_state
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    gauss = float(state["python_gauss"][0])
    random.setstate((int(state["python_version"][0]), tuple(int(x) for x in state["python_state"].tolist()),
                     None if math.isnan(gauss) else gauss))
    pos, has_gauss = (int(x) for x in state["numpy_meta"].tolist())
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss,
                         float(state["numpy_gauss"][0])))
    cuda = [state[k] for k in sorted((k for k in state if k.startswith("cuda_")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


# ----------------------------------------------------------------------------- save / load


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name (tied weights appear once: named_parameters deduplicates)."""
    return {name: p.detach().cpu().contiguous() for name, p in module.named_parameters() if p.requires_grad}


def _is_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def save_checkpoint(accelerator, root: Path, step: int, module, optimizer, state: dict, keep: int) -> Path:
    """Write checkpoint `step` (all processes call this); returns its directory."""
    from safetensors.torch import save_file

    final = checkpoint_dir(root, step)
    tmp = final.with_name(f".{final.name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if _is_deepspeed(accelerator):
        accelerator.save_state(str(tmp / "accelerate"))
    elif accelerator.is_main_process:
        save_file(trainable_state(module), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    save_file(rng_state(), str(tmp / f"rng-{accelerator.process_index}.safetensors"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / STATE_FILE, {"format": FORMAT, "version": VERSION, "step": step, **state})
        fault_point("ppo.save")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        prune(root, keep)
    accelerator.wait_for_everyone()
    return final


def prune(root: Path, keep: int) -> None:
    done = sorted((p for p in Path(root).glob(f"{_PREFIX}*") if (p / STATE_FILE).is_file()),
                  key=lambda p: int(p.name[len(_PREFIX):]))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def read_state(path: Path) -> dict:
    state_file = Path(path) / STATE_FILE
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PmoptError(f"{state_file}: malformed JSON ({exc.msg})") from None
    if state.get("format") != FORMAT or state.get("version") != VERSION:
        raise PmoptError(f"{state_file}: field 'format': not a {FORMAT} v{VERSION} checkpoint")
    return state


def load_checkpoint(accelerator, path: Path, module, optimizer) -> dict:
    """Restore parameters, optimizer and this process's RNG from `path`; returns state.json."""
    from safetensors.torch import load_file

    path = Path(path)
    state = read_state(path)
    if _is_deepspeed(accelerator):
        accelerator.load_state(str(path / "accelerate"))
    else:
        load_trainable(module, load_file(str(path / "trainable.safetensors")), path)
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    rng_file = path / f"rng-{accelerator.process_index}.safetensors"
    if rng_file.is_file():  # absent when resuming with more processes than were saved
        set_rng_state(load_file(str(rng_file)))
    return state


def load_trainable(module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    params = {name: p for name, p in module.named_parameters() if p.requires_grad}
    if set(params) != set(tensors):
        missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise PmoptError(f"{path}/trainable.safetensors: does not match the model (missing {missing[:3]}, "
                         f"unexpected {extra[:3]}); was it written with another policy or LoRA setting?")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name].to(p.device, p.dtype))


# ----------------------------------------------------------------------------- resuming a run


LOG_FILES = ("metrics.jsonl", "curves.jsonl")


def truncate_logs(out: Path, step: int | None) -> None:
    """Keep the log rows of steps <= `step` (None: none), so a resumed run appends exactly what an
    uninterrupted one would have written after that step."""
    for name in LOG_FILES:
        if step is None:
            (Path(out) / name).unlink(missing_ok=True)
        else:
            kept = [row for row in read_metrics(Path(out) / name) if row.get("step", 0) <= step]
            atomic_write_jsonl(Path(out) / name, kept)


def resume(out: Path, accelerator, core, optimizer, scheduler, kl_ctl, total_steps: int) -> int:
    """Load the newest complete checkpoint (if any), drop log rows written after it; returns its step
    (0 when there is none: a run restarted before its first checkpoint starts over)."""
    checkpoint = latest_step_checkpoint(Path(out) / "checkpoints")
    step = 0
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint, core, optimizer)
        scheduler.load_state_dict(state["scheduler"])
        kl_ctl.load_state_dict(state["kl_ctl"])
        step = int(state["step"])
    if accelerator.is_main_process:
        truncate_logs(out, step if checkpoint is not None else None)
        if checkpoint is not None:
            console.info(f"ppo: resuming from {checkpoint} (step {step} of {total_steps})")
    accelerator.wait_for_everyone()
    return step


# ----------------------------------------------------------------------------- the final policy


def export_policy(policy, tokenizer, out_dir: Path) -> Path:
    """The trained policy as a plain HF causal LM directory (LoRA merged into a copy of the base)."""
    import copy

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = policy
    if hasattr(policy, "merge_and_unload"):
        model = copy.deepcopy(policy).merge_and_unload()
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


__all__ = ["save_checkpoint", "load_checkpoint", "latest_step_checkpoint", "checkpoint_dir", "rng_state",
           "set_rng_state", "export_policy", "read_state", "resume", "truncate_logs", "STATE_FILE"]
