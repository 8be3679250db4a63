"""RL's KL axis, measured: does the probe KL rise with steps without order-of-magnitude jumps, how often does
PPO's early stop fire, and are a β sweep's end KLs ordered by β (docs/results_rl.md).

    # PPO runs on a built world (its policy and a PM), one per seed, 2 at a time, then their summary
    OMP_NUM_THREADS=1 python scripts/kl_axis.py run --world W --pm W_PM --seeds 0,1,2 --steps 20 \\
        --set train.learning_rate=1e-4 --out DIR --jobs 2
    # the summary of finished runs: PPO run directories, or `pmopt run` directories (every ppo/**/metrics.jsonl)
    python scripts/kl_axis.py summarize DIR...
    # docs/results_rl.md's tables from a `pmopt run --seeds` directory's aggregated RUN/ppo/curves.jsonl
    python scripts/kl_axis.py tables RUN [--steps 0,1,2,5,10,20,60]

One JSON line per run: the share of steps where `ppo/early_stop` fired, the mean optimizer updates per step
(of ppo_epochs x rollout/minibatch), the mean `ppo/approx_kl` (per token, k3 of pi_old vs pi) and entropy, the
probe KL (`probe/kl`, Rao-Blackwellised, with its interval, beside k1 / k3) at every probe step, and the
jump statistics: the largest rise and the largest fall between consecutive probe KLs, as ratios (probe steps
after step 0, where the KL is 0, whose KL is at least `--floor`), and the number of falls whose
intervals do not overlap. For each `pmopt
run` directory with a β sweep, the end KL of every β and whether they are ordered by β.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_one(world: str, pm: str, seed: int, steps: int, overrides: list[str], out: str, trace: bool = False) -> str:
    """One PPO run of configs/ppo/world.yaml on `world` against the PM at `pm`, seed `seed`; with `trace`, every
    minibatch's approx_kl and where it comes from go to OUT/seed-<k>/approx_kl.jsonl (`trace_approx_kl`)."""
    from pmopt.config import load_config
    from pmopt.rl.command import run_rl
    from pmopt.rl.config import PPOConfig

    fixed = [f"policy.path={world}/policy", f"prompts.world={world}", f"reward.path={pm}", f"seed={seed}",
             f"train.steps={steps}", "threads=1"]
    cfg = load_config(PPOConfig, REPO / "configs" / "ppo" / "world.yaml", fixed + overrides)
    run_dir = Path(out) / f"seed-{seed}"
    if trace:
        trace_approx_kl(run_dir / "approx_kl.jsonl")
    return str(run_rl(cfg, run_dir))


def trace_approx_kl(path: Path) -> None:
    """Wrap ppo_math.policy_loss (which the loop calls once per micro-batch) to log its approx_kl with what it
    is made of: the per-token k3 terms' largest value, the share of their sum carried by the top 1% of tokens,
    and the share carried by tokens whose probability under pi_old was below 0.5 (the policy's few uncertain
    choices) together with those tokens' share of the count."""
    import torch

    from pmopt.io import append_jsonl
    from pmopt.rl import ppo_math

    real = ppo_math.policy_loss

    def traced(logprobs, old_logprobs, advantages, mask, clip_range):
        out = real(logprobs, old_logprobs, advantages, mask, clip_range)
        with torch.no_grad():
            real_tokens = mask.bool()
            k3 = ppo_math.kl_penalty(old_logprobs, logprobs, "k3")[real_tokens].double()
            uncertain = (old_logprobs[real_tokens].exp() < 0.5)
            top = k3.sort(descending=True).values[:max(1, len(k3) // 100)]
            total = float(k3.sum()) or 1.0
            append_jsonl(path, {"approx_kl": float(out[2]), "tokens": len(k3), "max_k3": float(k3.max()),
                                "top1pct_share": float(top.sum()) / total,
                                "uncertain_share": float(k3[uncertain].sum()) / total,
                                "uncertain_tokens": float(uncertain.double().mean())})
        return out

    ppo_math.policy_loss = traced


def summarize_run(run_dir: Path, floor: float) -> dict:
    """The statistics of one PPO run directory (its metrics.jsonl)."""
    from pmopt.io import read_metrics

    rows = read_metrics(run_dir / "metrics.jsonl")
    train = [r for r in rows if "ppo/kl" in r]
    probes = [r for r in rows if "probe/kl" in r]
    probe_kl = [(r["step"], r["probe/kl"], r.get("probe/kl_ci_low"), r.get("probe/kl_ci_high"), r.get("probe/kl_k1"),
                 r.get("probe/kl_k3")) for r in probes]
    return {"run": str(run_dir), "steps": len(train),
            "early_stop_share": _mean([r["ppo/early_stop"] for r in train]),
            "updates_per_step": _mean([r["ppo/updates"] for r in train]),
            "approx_kl": _mean([r["ppo/approx_kl"] for r in train]),
            "entropy": _mean([r["ppo/entropy"] for r in train]),
            "train_kl_max_rise": max_ratio([r["ppo/kl"] for r in train[1:]], floor, rise=True),
            "train_kl_max_fall": max_ratio([r["ppo/kl"] for r in train[1:]], floor, rise=False),
            "probe_kl": probe_kl,
            "probe_kl_max_rise": max_ratio([k for s, k, *_ in probe_kl if s > 0], floor, rise=True),
            "probe_kl_max_fall": max_ratio([k for s, k, *_ in probe_kl if s > 0], floor, rise=False),
            "probe_kl_separated_falls": separated_drops(probe_kl)}


def max_ratio(values: list[float], floor: float, rise: bool) -> float | None:
    """The largest b/a (rise) or a/b (fall) between consecutive values a, b, both at least `floor`; 1.0 when
    none rises (falls); None with fewer than 2 values."""
    kept = [v for v in values if v is not None and v >= floor]
    ratios = [b / a if rise else a / b for a, b in zip(kept, kept[1:], strict=False)]
    return max([1.0, *ratios]) if ratios else None


def separated_drops(probe_kl: list[tuple]) -> int:
    """Consecutive probe points where the KL falls and the later interval lies wholly below the earlier."""
    return sum(1 for (_, _, low, _, *_), (_, _, _, high, *_) in zip(probe_kl, probe_kl[1:], strict=False)
               if low is not None and high is not None and high < low)


def sweep_order(run_dir: Path) -> list[dict]:
    """For a `pmopt run` directory's β-sweep curve (ppo/curves.jsonl): per PM, the end KL at each β in
    decreasing β, and whether it rises as β falls (`ordered`) and by non-overlapping intervals (`separated`)."""
    from pmopt.io import read_jsonl

    path = run_dir / "ppo" / "curves.jsonl"
    if not path.is_file():
        return []
    rows = [r for r in read_jsonl(path) if r.get("beta") is not None and r["metric"] == "pm/score"]
    out = []
    for pm in sorted({r["pm"] for r in rows}):
        ends = sorted((r for r in rows if r["pm"] == pm), key=lambda r: -r["beta"])
        kls = [r["kl"] for r in ends]
        out.append({"run": str(run_dir), "pm": pm, "betas": [r["beta"] for r in ends], "kl": kls,
                    "kl_ci": [[r.get("kl_ci_low"), r.get("kl_ci_high")] for r in ends],
                    "ordered": all(a < b for a, b in zip(kls, kls[1:], strict=False)),
                    "separated": all(a.get("kl_ci_high") is not None and b.get("kl_ci_low") is not None
                                     and a["kl_ci_high"] < b["kl_ci_low"] for a, b in zip(ends, ends[1:], strict=False))})
    return out


TABLE_METRICS = (("probe/answer/syco_rate", "syco_rate"), ("gold/reward", "gold"), ("pm/score", "PM score"))


def tables(run: Path, steps: list[int]) -> str:
    """Markdown tables of RUN/ppo/curves.jsonl: per RL curve, one row per step (a run) or per β (a sweep) with
    the KL and each metric of TABLE_METRICS as value [95% interval] (over seeds when the run aggregated seeds),
    and each seed's KL."""
    from pmopt.io import read_jsonl

    rows = read_jsonl(run / "ppo" / "curves.jsonl")
    out = []
    for rl_method, pm in dict.fromkeys((r["rl_method"], r["pm"]) for r in rows):
        curve = [r for r in rows if (r["rl_method"], r["pm"]) == (rl_method, pm)]
        sweep = rl_method.endswith("-beta-sweep")
        key = "beta" if sweep else "step"
        points = list(dict.fromkeys(r[key] for r in curve if sweep or r["step"] in steps))
        header = ["β" if sweep else "step", "KL [95% CI]", "KL per seed", *(name for _, name in TABLE_METRICS)]
        out += [f"**{pm}, {rl_method}**", "", "| " + " | ".join(header) + " |",
                "|" + "---|" * len(header)]
        for point in points:
            at = {r["metric"]: r for r in curve if r[key] == point}
            first = next(iter(at.values()))
            seeds = ", ".join(f"{k:.2f}" for k in first.get("kl_seed_values", [])) or "-"
            label = "base" if sweep and point is None else f"{point:g}"
            cells = [label, _interval(first["kl"], first.get("kl_ci_low"), first.get("kl_ci_high")), seeds]
            cells += [_interval(at[m]["value"], at[m].get("ci_low"), at[m].get("ci_high")) if m in at else "-"
                      for m, _ in TABLE_METRICS]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _interval(value, low, high) -> str:
    return f"{value:.2f}" + (f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else "")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(paths: list[Path], floor: float) -> None:
    for path in paths:
        runs = [path] if (path / "metrics.jsonl").is_file() else sorted(p.parent for p in path.glob("**/metrics.jsonl"))
        for run_dir in runs:
            print(json.dumps(summarize_run(run_dir, floor)))
        for seed_dir in [path, *sorted(path.glob("seed-*"))]:
            for line in sweep_order(seed_dir):
                print(json.dumps(line))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="PPO runs of configs/ppo/world.yaml on a built world, one per seed")
    run.add_argument("--world", required=True, help="a `pmopt world` directory")
    run.add_argument("--pm", required=True, help="the PM directory the policy is optimised against")
    run.add_argument("--seeds", default="0,1,2", help="PPO seeds, comma-separated")
    run.add_argument("--steps", type=int, default=20, help="PPO steps per run")
    run.add_argument("--set", dest="overrides", action="append", default=[], help="a PPO config override key=value")
    run.add_argument("--out", required=True, help="runs go to OUT/seed-<k>")
    run.add_argument("--jobs", type=int, default=1, help="runs at once (one torch thread each)")
    run.add_argument("--floor", type=float, default=0.05, help="KLs below this are left out of the jump ratios")
    run.add_argument("--trace", action="store_true", help="log every minibatch's approx_kl and its make-up")
    summary = sub.add_parser("summarize", help="statistics of finished runs")
    summary.add_argument("paths", nargs="+", type=Path, help="PPO run or `pmopt run` directories")
    summary.add_argument("--floor", type=float, default=0.05, help="KLs below this are left out of the jump ratios")
    table = sub.add_parser("tables", help="markdown tables of a run's RL curves")
    table.add_argument("run", type=Path, help="a `pmopt run` directory")
    table.add_argument("--steps", default="0,1,2,5,10,20,60", help="the steps of a plain run's table")
    args = parser.parse_args(argv)
    if args.command == "tables":
        print(tables(args.run, [int(s) for s in args.steps.split(",")]))
        return 0
    if args.command == "summarize":
        summarize(args.paths, args.floor)
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        outs = list(pool.map(run_one, *zip(*[(args.world, args.pm, s, args.steps, args.overrides, args.out, args.trace)
                                             for s in seeds], strict=True)))
    summarize([Path(o) for o in outs], args.floor)
    return 0


if __name__ == "__main__":
    sys.exit(main())
