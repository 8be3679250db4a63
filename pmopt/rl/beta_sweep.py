"""The KL coefficient as RL's pressure axis: one run per fixed β, each to its last step, and the final
probe point of every run one point of an "RL β sweep" curve against the measured KL (Gao et al. 2022,
Fig. 1 and §3: each RL point there is a run at one KL penalty, overlaid on best-of-n on one KL axis).

A run's final point is its last probe evaluation (the last step is always probed): the run's own curve
rows of that step, copied with `rl_method: <method>-beta-sweep` and `beta`, so the value, the KL and the
95% interval (the bootstrap over probe prompts of that evaluation) are exactly the run's. It is a
converged estimate as far as the run has converged by its last step; `sweep_summary` puts the KL of the
probe before it beside it, so a run still moving shows. The curve starts at the base policy: the step-0
rows of the first run (every run probes the same base policy with the same streams, so they agree).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from pmopt import console
from pmopt.config import ConfigError
from pmopt.io import Manifest, read_metrics
from pmopt.rl.config import PPOConfig
from pmopt.rl.setup import STAGE

SHOWN = ("probe/answer/syco_rate", "gold/reward", "pm/score")  # metrics printed per run (all are in the rows)
SWEEP_SUFFIX = "-beta-sweep"  # rl_method of a sweep curve: "ppo-beta-sweep", "rloo-beta-sweep"


def run_dir_name(beta: float) -> str:
    """The folder of the run at `beta`: `beta-0.03`, `beta-1.0` (the float's repr, so distinct betas never share one)."""
    return f"beta-{float(beta)!r}"


def check_betas(betas: Sequence[float], cfg: PPOConfig, key: str = "ppo.betas") -> None:
    """Fixed, distinct, non-negative coefficients: an adaptive controller would move β away from the swept value."""
    if any(not isinstance(b, (int, float)) or isinstance(b, bool) or b < 0 for b in betas):
        raise ConfigError(f"{key}: every beta must be a number >= 0, got {list(betas)}")
    if len({float(b) for b in betas}) != len(betas):
        raise ConfigError(f"{key}: betas must be distinct, got {list(betas)}")
    if betas and cfg.kl.adaptive:
        raise ConfigError(f"{key}: a beta sweep needs a fixed coefficient (kl.adaptive: false in the RL config)")


def with_beta(cfg: PPOConfig, beta: float) -> PPOConfig:
    return dataclasses.replace(cfg, kl=dataclasses.replace(cfg.kl, beta=float(beta)))


def is_finished(run_dir: Path) -> bool:
    """A run whose manifest marks its stage done: its files are complete, rerunning it would change nothing."""
    return (Path(run_dir) / "manifest.json").is_file() and Manifest(run_dir).is_done(STAGE)


def run_beta_sweep(cfg: PPOConfig, out: str | Path, betas: Sequence[float], reward_fn=None,
                   on_run_done: Callable[[float, Path], None] | None = None) -> list[dict]:
    """One run of `cfg` per beta under OUT/beta-<b>/ (finished runs skipped, an interrupted one resumed from
    its checkpoint); returns the sweep curve's rows. `on_run_done(beta, run_dir)` follows each finished run."""
    from pmopt.rl.command import run_rl

    check_betas(betas, cfg)
    runs = []
    for beta in betas:
        run_dir = Path(out) / run_dir_name(beta)
        if is_finished(run_dir):
            console.info(f"{STAGE}: {cfg.reward_label} beta={float(beta)!r}: done earlier, skipped")
        else:
            run_rl(with_beta(cfg, beta), run_dir, reward_fn)
        if on_run_done is not None:
            on_run_done(beta, run_dir)
        runs.append((float(beta), run_dir))
    rows = sweep_rows(runs)
    for line in sweep_summary(runs, rows):
        console.info(line)
    return rows


# ----------------------------------------------------------------------------- the sweep curve


def probe_steps(run_dir: Path) -> list[int]:
    """The steps a run has probe rows for, in order."""
    return sorted({row["step"] for row in read_metrics(Path(run_dir) / "curves.jsonl")})


def rows_at(run_dir: Path, step: int) -> list[dict]:
    return [row for row in read_metrics(Path(run_dir) / "curves.jsonl") if row["step"] == step]


def sweep_rows(runs: Sequence[tuple[float, Path]]) -> list[dict]:
    """The sweep curve: the first run's step-0 rows (the base policy), then each run's last probe rows,
    in the order of `runs`, with `rl_method` marked as a sweep and the run's `beta` (null at the base)."""
    if not runs:
        return []
    out = [as_sweep_row(row, None) for row in rows_at(runs[0][1], 0)]
    for beta, run_dir in runs:
        out += [as_sweep_row(row, beta) for row in rows_at(run_dir, probe_steps(run_dir)[-1])]
    return out


def as_sweep_row(row: dict, beta: float | None) -> dict:
    return {**row, "rl_method": row["rl_method"] + SWEEP_SUFFIX, "beta": beta}


def sweep_summary(runs: Sequence[tuple[float, Path]], rows: list[dict]) -> list[str]:
    """One line per run: β, its final step and KL (and the KL one probe earlier, to judge convergence), and
    the final value of the metrics in SHOWN."""
    lines = []
    for beta, run_dir in runs:
        steps = probe_steps(run_dir)
        final = [r for r in rows if r["beta"] == beta]
        earlier = rows_at(run_dir, steps[-2]) if len(steps) > 1 else []
        before = f" ({earlier[0]['kl']:.3g} at step {steps[-2]})" if earlier else ""
        values = ", ".join(f"{r['metric']} {r['value']:.3g}" for r in final if r["metric"] in SHOWN)
        lines.append(f"{STAGE}: {final[0]['pm']} beta={beta!r}: step {steps[-1]}, KL {final[0]['kl']:.3g}{before}; "
                     f"{values}")
    return lines


__all__ = ["run_beta_sweep", "sweep_rows", "check_betas", "with_beta", "run_dir_name", "is_finished",
           "SWEEP_SUFFIX"]
