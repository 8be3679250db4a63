"""Every learned-effect claim of the test suite, measured on several seeds, with each one's margin.

    OMP_NUM_THREADS=1 python scripts/claims_over_seeds.py --seeds 0-5 --parts pm,pipeline,ppo --jobs 2

For each seed k it builds the tiny world with world.seed = k (and trains PMs / runs the pipeline with
seed = k), evaluates the same quantities the claim tests assert, and prints one JSON line per (part, seed)
with the margin by which each assertion holds (negative = the test would fail on that seed). The tests
themselves run on seed 0; this script is how we check that the claims are not seed-0 luck, nor a
machine's round-off (a different CPU perturbs training like a different seed does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_seeds(text: str) -> list[int]:
    seeds = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi or lo) + 1))
    return seeds


def pm_part(seed: int, root: Path) -> dict:
    """tests/test_pm_world.py on seed k."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import tiny_world_config, world_pm_config
    from test_pm_world import prefers_sycophancy, sycophancy_margins

    from pmopt.config import load_config
    from pmopt.io import read_jsonl
    from pmopt.pm.model import NON_SYCOPHANTIC_PREFIX, PreferenceModel
    from pmopt.pm.train import train_pm
    from pmopt.world.build import build_world
    from pmopt.world.config import WorldConfig
    from pmopt.world.raters import rater_agreement

    world = root / "world"
    stats = build_world(tiny_world_config(seed=seed), world, progress=False)
    pms = {name: PreferenceModel.load(train_pm(world_pm_config(world, pairs_dir, seed=seed), root / name))
           for name, pairs_dir in (("proxy", "pairs"), ("unbiased", "pairs_unbiased"))}
    biased, unbiased = prefers_sycophancy(pms["proxy"], world), prefers_sycophancy(pms["unbiased"], world)
    plain = sycophancy_margins(pms["proxy"], world).mean().item()
    prefixed = sycophancy_margins(pms["proxy"], world, NON_SYCOPHANTIC_PREFIX).mean().item()
    pairs = read_jsonl(world / "pairs" / "eval.jsonl")
    chosen = pms["proxy"].score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    rejected = pms["proxy"].score([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
    accuracy = (chosen > rejected).float().mean().item()
    ceiling = rater_agreement(pairs, load_config(WorldConfig, world / "config.yaml").raters)
    unbiased_margin = sycophancy_margins(pms["unbiased"], world).mean().item()
    return {"biased_rate": biased, "unbiased_rate": unbiased, "margin_rate": biased - unbiased - 0.3,
            "unbiased_margin": unbiased_margin,
            "plain_margin": plain, "prefixed_margin": prefixed, "margin_prefix": 0.5 * plain - prefixed,
            "accuracy": accuracy, "ceiling": ceiling, "margin_accuracy": accuracy - 0.7 * ceiling,
            "world_neutral": stats["neutral_accuracy"], "world_syco": stats["sycophancy_rate"]}


def pipeline_part(seed: int, root: Path) -> dict:
    """tests/test_pipeline.py's two claims on seed k."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_pipeline import syco_at as syco

    from pmopt.cli import main
    from pmopt.io import read_jsonl

    tiny = str(REPO / "configs" / "experiments" / "tiny.yaml")
    out = {}
    assert main(["run", tiny, "--set", f"seed={seed}", "--set", f"world.seed={seed}", "--out", str(root / "b")]) == 0
    rows = read_jsonl(root / "b" / "bon" / "curves.jsonl")
    n_max = max(r["n"] for r in rows)
    p1, pn, nn = syco(rows, "proxy", 1), syco(rows, "proxy", n_max), syco(rows, "proxy-nonsyc", n_max)
    un = syco(rows, "unbiased", n_max)
    out.update(unbiased_n=un["value"], unbiased_n_high=un["ci_high"], margin_unbiased_separation=pn["ci_low"] - un["ci_high"])
    out.update(proxy_1=p1["value"], proxy_n=pn["value"], proxy_n_low=pn["ci_low"], nonsyc_n=nn["value"],
               nonsyc_n_high=nn["ci_high"], margin_rise=pn["value"] - p1["value"] - 0.3,
               margin_separation=pn["ci_low"] - nn["ci_high"])
    if os.environ.get("CLAIMS_BIASED_ONLY") == "1":
        return out
    assert main(["run", tiny, "--set", f"seed={seed}", "--set", f"world.seed={seed}", "--set",
                 "world.raters.w_agree=0", "--set", "probes.enabled=false", "--out", str(root / "u")]) == 0
    rows = read_jsonl(root / "u" / "bon" / "curves.jsonl")
    for pm in ("proxy", "proxy-nonsyc"):
        out[f"unbiased_{pm}_fall"] = syco(rows, pm, 1)["value"] - syco(rows, pm, n_max)["value"]
    return out


def ppo_part(seed: int, root: Path) -> dict:
    """tests/test_ppo.py's two claims on seed k (world seed k; PM pairs and PPO seeded by k)."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import tiny_world_config
    from test_ppo import CLAIM_STEPS, SYCO, claim_curves, suggest_wrong_pm

    from pmopt.world.build import build_world

    world = root / "world"
    build_world(tiny_world_config(seed=seed), world, progress=False)
    pm = suggest_wrong_pm(world, root / "pm", seed=seed)
    out = {}
    for label, runs in (("pm", (("reward.kind=pm", f"reward.path={pm}"),
                                ("reward.kind=pm", f"reward.path={pm}", "reward.prefix=non_sycophantic"))),
                        ("raters", (("reward.kind=raters",), ("reward.kind=gold",)))):
        biased = claim_curves(world, root / f"{label}-b", *runs[0], f"seed={seed}")
        truthful = claim_curves(world, root / f"{label}-t", *runs[1], f"seed={seed}")
        start = biased[(SYCO, 0)]
        out[f"{label}_rise"] = biased[(SYCO, CLAIM_STEPS)]["value"] - start["ci_high"]
        out[f"{label}_truthful_not_up"] = start["value"] - truthful[(SYCO, CLAIM_STEPS)]["value"]
        out[f"{label}_max_kl"] = max(r["kl"] for c in (biased, truthful) for r in c.values())
        if label == "pm":
            out["pm_score_rise"] = biased[("pm/score", CLAIM_STEPS)]["value"] - biased[("pm/score", 0)]["ci_high"]
        else:
            out["gold_rise"] = truthful[("gold/reward", CLAIM_STEPS)]["value"] - truthful[("gold/reward", 0)]["value"]
    return out


PARTS = {"pm": pm_part, "pipeline": pipeline_part, "ppo": ppo_part}


def run_one(part: str, seed: int) -> dict:
    import contextlib
    import io
    import os

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        result = PARTS[part](seed, Path(tmp))
    return {"part": part, "seed": seed, **{k: round(v, 4) for k, v in result.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 1,3,7")
    parser.add_argument("--parts", default="pm,pipeline,ppo", help=f"comma list of {sorted(PARTS)}")
    parser.add_argument("--jobs", type=int, default=1, help="parallel processes (one torch thread each)")
    args = parser.parse_args()
    jobs = [(part, seed) for part in args.parts.split(",") for seed in parse_seeds(args.seeds)]
    with ProcessPoolExecutor(args.jobs) as pool:
        for result in pool.map(run_one, *zip(*jobs, strict=True)):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
