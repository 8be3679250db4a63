"""Checkpoints of world pretraining: model, optimizer, RNG state and losses every K steps.

A checkpoint is a folder `step-NNNNNN/` under the world's `policy_checkpoints/`, written as
`step-NNNNNN.tmp/` and renamed when complete, so a kill mid-save leaves the previous one usable; only
the newest is kept. Resuming restores everything the remaining steps depend on (weights, AdamW moments,
the batch-sampling `random.Random`, torch's RNG, the loss history; the learning rate is a function of
the step), so on the same machine a resumed pretraining ends with the same weights, byte for byte, as
one never stopped. A checkpoint written under another config or corpus is refused, not resumed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from pmopt.io import PmoptError, atomic_write_json, read_json_file
from pmopt.world.config import PolicyModelConfig

# knobs that change how a run is executed, not what it computes
_EXECUTION_ONLY = ("threads", "checkpoint_every")


def fingerprint(cfg: PolicyModelConfig, seed: int, examples: list) -> str:
    """What the training trajectory depends on: the config (less execution knobs), seed and corpus."""
    knobs = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _EXECUTION_ONLY}
    digest = hashlib.sha256(json.dumps([knobs, seed], sort_keys=True).encode())
    digest.update(json.dumps(examples).encode())
    return digest.hexdigest()[:16]


class PretrainCheckpoints:
    def __init__(self, directory: str | Path, key: str):
        self.directory, self.key = Path(directory), key

    def latest(self) -> Path | None:
        done = [p for p in self.directory.glob("step-*") if p.is_dir() and p.name[5:].isdigit()
                and (p / "state.json").is_file()]
        return max(done, key=lambda p: int(p.name[5:]), default=None)

    def save(self, step: int, model, optimizer, rng: random.Random, losses: list[float]) -> Path:
        final = self.directory / f"step-{step:06d}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(model, str(tmp / "model.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, tmp / "trainer.pt")
        atomic_write_json(tmp / "state.json", {"step": step, "key": self.key, "python_rng": rng.getstate(),
                                               "losses": losses})  # last: marks the folder complete
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in self.directory.glob("step-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def resume(self, model, optimizer, rng: random.Random) -> tuple[int, list[float]]:
        """(step to start from, losses so far); (0, []) when there is no checkpoint."""
        path = self.latest()
        if path is None:
            return 0, []
        state = read_json_file(path / "state.json")
        if state.get("key") != self.key:
            raise PmoptError(f"{path}: a pretraining checkpoint of another world config or corpus; delete "
                             f"{self.directory} or use another --out")
        load_model(model, str(path / "model.safetensors"))
        trainer = torch.load(path / "trainer.pt", weights_only=True)
        optimizer.load_state_dict(trainer["optimizer"])
        torch.set_rng_state(trainer["torch_rng"])
        version, internal, gauss = state["python_rng"]
        rng.setstate((version, tuple(internal), gauss))
        print(f"world: pretraining resumes from {path} (step {state['step']})")
        return int(state["step"]), list(state["losses"])
