"""The KL coefficient as RL's pressure axis: one run per fixed β, each to its last step, and the end point
of every run one point of an "RL β sweep" curve against the measured KL (Gao et al. 2022, Fig. 1 and §3:
each RL point there is a run at one KL penalty, overlaid on best-of-n on one KL axis).

A run's end point is the mean of its last `end_evaluations` probe evaluations (the last step is always
probed; `probes.every` spaces the others): for every metric the mean value, the mean KL (the
Rao-Blackwellised probe KL of `pmopt.rl.evaluation`) and, as the 95% interval of each, the mean of the
evaluations' interval bounds. The evaluations probe the same prompts with the same random streams, so their
prompt-level errors are strongly correlated, and the mean of the bounds is the interval of the mean when
they are perfectly correlated and wider otherwise (conservative). Averaging steadies a point against the
step-to-step movement of a policy that has levelled off; the rows say which steps they average (`steps`;
`step` is the last), and `sweep_summary` puts the first and last of those KLs beside the mean, so a run
still moving shows. With `end_evaluations: 1` a point is exactly the run's last probe rows. The curve
starts at the base policy: the step-0 rows of the first run (every run probes the same base policy with
the same streams, so they agree).
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
END_EVALUATIONS = 3  # probe evaluations a run's end point averages, by default (pmopt run's ppo.end_evaluations)


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
                   on_run_done: Callable[[float, Path], None] | None = None,
                   end_evaluations: int = END_EVALUATIONS) -> list[dict]:
    """One run of `cfg` per beta under OUT/beta-<b>/ (finished runs skipped, an interrupted one resumed from
    its checkpoint); returns the sweep curve's rows, each run's point the mean of its last `end_evaluations`
    probe evaluations. `on_run_done(beta, run_dir)` follows each finished run."""
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
    rows = sweep_rows(runs, end_evaluations)
    for line in sweep_summary(runs, rows):
        console.info(line)
    return rows


# ----------------------------------------------------------------------------- the sweep curve


def probe_steps(run_dir: Path) -> list[int]:
    """The steps a run has probe rows for, in order."""
    return sorted({row["step"] for row in read_metrics(Path(run_dir) / "curves.jsonl")})


def rows_at(run_dir: Path, step: int) -> list[dict]:
    return [row for row in read_metrics(Path(run_dir) / "curves.jsonl") if row["step"] == step]


def sweep_rows(runs: Sequence[tuple[float, Path]], end_evaluations: int = END_EVALUATIONS) -> list[dict]:
    """The sweep curve: the first run's step-0 rows (the base policy), then each run's end point (the mean of
    its last `end_evaluations` probe evaluations, `end_point`), in the order of `runs`, with `rl_method`
    marked as a sweep and the run's `beta` (null at the base)."""
    if not runs:
        return []
    out = [as_sweep_row({**row, "steps": [0]}, None) for row in rows_at(runs[0][1], 0)]
    for beta, run_dir in runs:
        steps = [s for s in probe_steps(run_dir) if s > 0][-end_evaluations:]
        out += [as_sweep_row(row, beta) for row in end_point({s: rows_at(run_dir, s) for s in steps})]
    return out


def end_point(rows_by_step: dict[int, list[dict]]) -> list[dict]:
    """One row per metric probed at every given step: value, KL and both intervals averaged over the steps
    (the module docstring says why the mean of the bounds is a conservative interval), `step` the last step
    and `steps` all of them. A bound missing at any step is missing in the mean."""
    steps = sorted(rows_by_step)
    by_metric = [{r["metric"]: r for r in rows_by_step[s]} for s in steps]
    out = []
    for metric, last in by_metric[-1].items():
        members = [rows[metric] for rows in by_metric if metric in rows]
        if len(members) < len(steps):
            continue  # a metric undefined at some step (no prompt of its kind then) has no averaged point
        out.append({**last, **{field: _mean([r.get(field) for r in members])
                               for field in ("value", "ci_low", "ci_high", "kl", "kl_ci_low", "kl_ci_high")},
                    "steps": steps})
    return out


def _mean(values: list) -> float | None:
    return None if any(v is None for v in values) else sum(values) / len(values)


def as_sweep_row(row: dict, beta: float | None) -> dict:
    return {**row, "rl_method": row["rl_method"] + SWEEP_SUFFIX, "beta": beta}


def sweep_summary(runs: Sequence[tuple[float, Path]], rows: list[dict]) -> list[str]:
    """One line per run: β, its end point's KL with its interval, the steps it averages and the KL at the
    first and last of them (to judge convergence), and the end value of the metrics in SHOWN."""
    lines = []
    for beta, run_dir in runs:
        final = [r for r in rows if r["beta"] == beta]
        steps = final[0]["steps"]
        first, last = (rows_at(run_dir, s)[0]["kl"] for s in (steps[0], steps[-1]))
        interval = (f" [{final[0]['kl_ci_low']:.3g}, {final[0]['kl_ci_high']:.3g}]"
                    if final[0].get("kl_ci_low") is not None and final[0].get("kl_ci_high") is not None else "")
        values = ", ".join(f"{r['metric']} {r['value']:.3g}" for r in final if r["metric"] in SHOWN)
        lines.append(f"{STAGE}: {final[0]['pm']} beta={beta!r}: KL {final[0]['kl']:.3g}{interval}, mean of steps "
                     f"{', '.join(map(str, steps))} ({first:.3g} at step {steps[0]}, {last:.3g} at {steps[-1]}); "
                     f"{values}")
    return lines


__all__ = ["run_beta_sweep", "sweep_rows", "end_point", "END_EVALUATIONS", "check_betas", "with_beta", "run_dir_name", "is_finished",
           "SWEEP_SUFFIX"]
