"""Benchmark: one RL step of pmopt's PPO, split into generation, scoring and update, against TRL's
RLOOTrainer on the same tiny setup, in one run.

    OMP_NUM_THREADS=1 python benchmarks/ppo_step.py [--world DIR] [--steps 6] [--rollout 64] [--json out.json]

Both methods run through `pmopt ppo` (`method: ppo` and `method: rloo`) on the world policy (builds the tiny
world, configs/world/tiny.yaml, when no --world is given) against the same PM (the world policy as a
sequence classifier with a seeded head: a real PM directory; its training does not change the timings),
with the same prompts, `--rollout` sampled sequences per step (PPO: one per prompt; RLOO: 4 per prompt),
one optimizer update per 16 sequences and one pass over the rollout (`ppo_epochs: 1`; PPO is also run
with its default 4 passes). A step's phases:

- generation: sampling the step's responses (pmopt: `pmopt.sampling.sample`; TRL: `model.generate`);
- scoring: everything between sampling and the first update: PM scores, log-probs of the policy and the
  reference (and, for PPO, the values), the KL-penalised rewards, GAE / leave-one-out advantages;
- update: the optimizer passes (forward + backward + AdamW step per minibatch).

pmopt's phases are its own `time/*` metrics; TRL's are measured by wrapping `RLOOTrainer._generate` and
`_generate_and_score_completions`, the step as the time between step ends. The first step of each run
(warm-up) is left out; the figures are means over the other steps (probes run outside the timed phases). Tokens per second
= sampled response tokens of a step / the step's time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from pmopt.config import load_config
from pmopt.io import read_metrics
from pmopt.rl.command import run_rl
from pmopt.rl.config import PPOConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from helpers import save_seeded_pm  # noqa: E402 (test helpers: tests/ is not a package)


def tiny_world(root: Path) -> Path:
    from pmopt.world.build import build_world
    from pmopt.world.config import WorldConfig

    out = root / "world"
    build_world(load_config(WorldConfig, REPO / "configs" / "world" / "tiny.yaml"), out, progress=False)
    return out


def config(world: Path, pm: Path, method: str, steps: int, rollout: int, epochs: int, threads: int) -> PPOConfig:
    return load_config(PPOConfig, data={
        "method": method, "policy": {"path": str(world / "policy")}, "reward": {"kind": "pm", "path": str(pm)},
        "prompts": {"world": str(world), "n_prompts": 1024}, "sampling": {"max_new_tokens": 24},
        "kl": {"beta": 0.05}, "rloo": {"num_generations": 4},
        "train": {"steps": steps, "rollout_batch_size": rollout, "minibatch_size": 16, "ppo_epochs": epochs,
                  "learning_rate": 1e-4},
        "probes": {"every": 0, "samples_per_prompt": 1, "max_prompts": 8, "n_boot": 10},
        "checkpoint": {"every": 1000}, "threads": threads})


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def ppo_timings(cfg: PPOConfig, out: Path) -> dict:
    run_rl(cfg, out)
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "ppo/kl" in r][1:]  # step 1: warm-up
    phases = {p: mean([r[f"time/{p}"] for r in rows]) for p in ("generation", "scoring", "update")}
    step = mean([r["time/step"] for r in rows])
    tokens = mean([r["ppo/response_length"] for r in rows]) * cfg.train.rollout_batch_size
    return {**phases, "step": step, "tokens_per_step": tokens, "tokens_per_second": tokens / step,
            "steps_timed": len(rows)}


class RLOOTimers:
    """Wraps RLOOTrainer's generation and scoring methods and the step-end callback with timers."""

    def __init__(self, upi: int):
        from trl import RLOOTrainer

        from pmopt.rl.rloo import CurvesCallback

        self.upi, self.events = upi, []
        self.patched = [(RLOOTrainer, "_generate"), (RLOOTrainer, "_generate_and_score_completions"),
                        (CurvesCallback, "on_step_end")]
        self.originals = [getattr(cls, name) for cls, name in self.patched]

    def __enter__(self):
        for (cls, name), original in zip(self.patched, self.originals, strict=True):
            setattr(cls, name, self._timed(name, original))
        return self

    def __exit__(self, *exc):
        for (cls, name), original in zip(self.patched, self.originals, strict=True):
            setattr(cls, name, original)

    def _timed(self, name, original):
        def wrapper(obj, *args, **kwargs):
            if name == "on_step_end":
                if args[1].global_step % self.upi == 0:  # (args, state, control): a pmopt step ended
                    self.events.append(("step_end", time.perf_counter(), 0.0))
                return original(obj, *args, **kwargs)
            start = time.perf_counter()
            result = original(obj, *args, **kwargs)
            self.events.append((name, start, time.perf_counter() - start))
            return result

        return wrapper

    def per_step(self) -> list[dict]:
        """Phases of each pmopt step (from one step end to the next)."""
        ends = [t for kind, t, _ in self.events if kind == "step_end"]
        steps = []
        for begin, end in zip(ends, ends[1:], strict=False):
            inside = [(k, d) for k, t, d in self.events if k != "step_end" and begin <= t < end]
            generation = sum(d for k, d in inside if k == "_generate")
            scoring = sum(d for k, d in inside if k == "_generate_and_score_completions") - generation
            steps.append({"generation": generation, "scoring": scoring, "update": end - begin - generation - scoring,
                          "step": end - begin})
        return steps


def rloo_timings(cfg: PPOConfig, out: Path) -> dict:
    from pmopt.rl.rloo import updates_per_step

    with RLOOTimers(updates_per_step(cfg)) as timers:
        run_rl(cfg, out)
    # Step ends 1..S give the intervals of steps 2..S (step 1, the warm-up, is left out as for PPO); each end is
    # stamped before the probes of that step run.
    steps = timers.per_step()
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "rloo/reward" in r][1:]
    tokens = mean([r["rloo/completions/mean_length"] for r in rows]) * cfg.train.rollout_batch_size
    step = mean([s["step"] for s in steps])
    return {**{p: mean([s[p] for s in steps]) for p in ("generation", "scoring", "update")}, "step": step,
            "tokens_per_step": tokens, "tokens_per_second": tokens / step, "steps_timed": len(steps)}


def markdown(results: dict) -> str:
    lines = ["| method | passes | generation s | scoring s | update s | step s | tokens/step | tokens/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['passes']} | {r['generation']:.3f} | {r['scoring']:.3f} | {r['update']:.3f} | "
                     f"{r['step']:.3f} | {r['tokens_per_step']:.0f} | {r['tokens_per_second']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=None, help="a `pmopt world` directory (default: build tiny)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rollout", type=int, default=64, help="sampled sequences per step")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world = args.world or tiny_world(root)
        pm = save_seeded_pm(world / "policy", root / "pm")
        runs = {"pmopt PPO": ("ppo", 1), "pmopt PPO (4 passes)": ("ppo", 4), "TRL RLOOTrainer": ("rloo", 1)}
        results = {}
        for name, (method, epochs) in runs.items():
            cfg = config(world, pm, method, args.steps, args.rollout, epochs, args.threads)
            timing = ppo_timings if method == "ppo" else rloo_timings
            results[name] = {**timing(cfg, root / name.replace(" ", "_")), "passes": epochs}
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    meta = {"device": device, "torch": torch.__version__, "threads": args.threads, "python": platform.python_version(),
            "steps": args.steps, "rollout": args.rollout, "load_average": os.getloadavg()}
    print(json.dumps(meta))
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
