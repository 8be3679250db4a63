"""`pmopt run CONFIG --seeds 0,1,2`: the whole experiment once per seed, then curves over seeds.

Seed k runs the experiment with `seed = k` and `world.seed = k` (a new world, new PMs, new samples) in
`RUN/seed-<k>/`, with the single-seed job's resume rules. Seeds run in parallel processes, each with
`threads_per_seed` torch threads however many run at once: torch's CPU kernels may round differently
with another thread count, so fixing it per seed keeps every seed's results, and so the aggregate,
independent of the parallelism. The aggregate (`pmopt.analysis.seeds`) is written where a single run
keeps its results, so `pmopt report` and the claim read a multi-seed run like any other:

    RUN/bon/curves.jsonl, RUN/ppo/curves.jsonl   curve points over seeds (value, interval, seed_values; RL's KL
                                                 with its interval over seeds too), and their curves.csv
    RUN/aggregate/world_stats.json, RUN/aggregate/probe_metrics.json   per-seed numbers with mean/min/max
    RUN/claims.json                              each seed's verdict on the claim and the sentence they support
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import as_completed
from dataclasses import dataclass, replace
from pathlib import Path

from pmopt import console
from pmopt.analysis.claims import bon_claim, headline, rl_headline, rl_result, summary_line, verdict_sentence
from pmopt.analysis.seeds import aggregate_rows, aggregate_scalars
from pmopt.io import Manifest, atomic_write_json, read_jsonl
from pmopt.records import write_curves
from pmopt.workers import pool as worker_pool

SEED_DIR = "seed-{}"


def seed_config(cfg, seed: int):
    """The experiment as seed `seed` runs it: one seed, world seed included, no further seeds."""
    return replace(cfg, seed=seed, seeds=[], world=replace(cfg.world, seed=seed))


# Seeds at once per core, by default. A one-thread process does not spin-wait for others, so running more
# seeds than cores shares the cores at the same total throughput and finishes sooner (3 seeds on 2 cores:
# 1.5 seed-times instead of 2); the cap bounds memory (each seed's process holds its own models).
SEEDS_PER_CORE = 4


def worker_count(cfg) -> int:
    return worker_count_for(cfg, len(cfg.seeds))


def worker_count_for(cfg, cells: int) -> int:
    """Processes at once for `cells` independent runs: `parallel_seeds`, or up to SEEDS_PER_CORE per core."""
    if cfg.parallel_seeds > 0:
        return max(1, min(cfg.parallel_seeds, cells))
    slots = SEEDS_PER_CORE * (os.cpu_count() or 1) // max(cfg.threads_per_seed, 1)
    return max(1, min(cells, slots))


@dataclass
class Cell:
    """One independent run of the experiment: a seed, or a (sweep value, seed) pair (pmopt.sweep)."""

    name: str  # its mark in RUN's manifest and its folder under RUN: seed-<k>, <leaf>-<value>/seed-<k>
    label: str  # how the console names it: "seed 1", "w_agree = 1.5, seed 1"
    cfg: object  # the experiment it runs (one seed, no sweep)
    dir: Path
    policy_cache: Path | None = None  # pretrained base policies shared with other cells (pmopt.world.policy_cache)


def seed_cells(cfg, run: Path) -> list[Cell]:
    """Every seed of a multi-seed run as a cell."""
    return [Cell(f"seed-{k}", f"seed {k}", seed_config(cfg, k), run / SEED_DIR.format(k)) for k in cfg.seeds]


def run_seeds(cfg, run: Path, manifest: Manifest) -> bool:
    """Every unfinished seed by the config's launcher; True when all are done (see `launch_cells`)."""
    return launch_cells(cfg, run, seed_cells(cfg, run), manifest)


def launch_cells(cfg, run: Path, cells: list[Cell], manifest: Manifest) -> bool:
    """The unfinished cells by `cfg.launcher`: here, `worker_count_for` at a time (`run_cells`), then True; or
    as one SLURM job array followed by the aggregation job (pmopt.slurm), then False unless every cell was done
    already (the aggregate is then written here, now)."""
    if cfg.launcher == "slurm":
        from pmopt.slurm import submit_cells

        return submit_cells(cfg, run, cells, manifest)
    run_cells(cells, manifest, worker_count_for(cfg, len(cells)), cfg.threads_per_seed)
    return True


def run_cells(cells: list[Cell], manifest: Manifest, workers: int, threads: int) -> dict[str, float]:
    """Every cell not marked done in `manifest`, `workers` at a time in spawned processes (in this process when
    one), each with `threads` torch threads; marks each done as it finishes; returns {name: seconds}."""
    todo = [c for c in cells if not manifest.is_done(c.name)]
    for cell in cells:
        if cell not in todo:
            console.info(f"run: {cell.label}: done earlier, skipped")
    if todo:
        swept = "/" in cells[0].name  # <leaf>-<value>/seed-<k>
        names = ", ".join(c.name if swept else c.name.removeprefix("seed-") for c in todo)
        logs = (cells[0].dir.parent.parent / "<cell>" if swept else cells[0].dir.parent / "seed-<k>") / "log.txt"
        console.info(f"run: {len(todo)} {'cell' if swept else 'seed'}(s) to run ({names}), {workers} at a time, "
                     f"{threads} torch thread(s) each; logs in {logs}")
    timings = {}
    if workers == 1:
        for cell in todo:
            timings[cell.name] = run_one_seed(cell.cfg, cell.dir, threads, cell.policy_cache)
            _cell_done(manifest, cell, timings[cell.name])
        return timings
    with worker_pool(workers) as pool:  # workers that print like this process and die with it
        futures = {pool.submit(run_one_seed, cell.cfg, cell.dir, threads, cell.policy_cache): cell for cell in todo}
        for future in as_completed(futures):
            cell = futures[future]
            timings[cell.name] = future.result()
            _cell_done(manifest, cell, timings[cell.name])
    return timings


def _cell_done(manifest: Manifest, cell: Cell, seconds: float) -> None:
    manifest.mark(cell.name, "done", seconds=seconds)
    claim = claim_of(cell.dir)
    verdict = "" if claim is None else f"; claim {'holds' if claim['holds'] else 'does NOT hold'}: {summary_line(claim)}"
    console.info(f"run: {cell.label} done in {seconds:.0f} s{verdict}")


def run_one_seed(cfg, seed_dir: Path, threads: int, policy_cache: Path | None = None) -> float:
    """One seed's experiment (one cell) with a fixed torch thread count, its console output in seed_dir/log.txt:
    the code every launcher runs a cell with (a worker of the local pool, a SLURM array task: pmopt.slurm).
    The cell's folder is locked while it runs, so two launches of one cell never write it at once."""
    import torch

    from pmopt.io import OutDirLock
    from pmopt.pipeline import run_experiment

    seed_dir.mkdir(parents=True, exist_ok=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        with OutDirLock(seed_dir), console.logged_to(seed_dir / "log.txt"):
            run_experiment(cfg, seed_dir, with_report=False, policy_cache=policy_cache)
    finally:
        torch.set_num_threads(previous)
    return round(time.perf_counter() - start, 1)


def claim_of(run: Path) -> dict | None:
    """The claim on one run's best-of-N curves (None before the sweep has written them)."""
    path = run / "bon" / "curves.jsonl"
    return bon_claim(read_jsonl(path)) if path.is_file() else None


def aggregate(cfg, run: Path) -> dict:
    """Curves, statistics and the claim over seeds, written into RUN; returns the claims object."""
    dirs = {k: run / SEED_DIR.format(k) for k in cfg.seeds}
    for stage in ("bon", "ppo"):
        per_seed = {k: read_jsonl(d / stage / "curves.jsonl") for k, d in dirs.items()
                    if (d / stage / "curves.jsonl").is_file()}
        if len(per_seed) == len(dirs):
            write_curves(run / stage, aggregate_rows(per_seed, n_boot=cfg.bon.n_boot, seed=0), stage)
    for name, relative in (("world_stats", "world/world_stats.json"), ("probe_metrics", "probes/metrics.json")):
        per_seed = {k: json.loads((d / relative).read_text(encoding="utf-8")) for k, d in dirs.items()
                    if (d / relative).is_file()}
        if per_seed:
            atomic_write_json(run / "aggregate" / f"{name}.json", {"seeds": sorted(per_seed),
                                                                   "values": aggregate_scalars(per_seed)})
    claims = claims_summary({k: claim_of(d) for k, d in dirs.items()}, run / "bon" / "curves.jsonl")
    atomic_write_json(run / "claims.json", claims)
    return claims


def claims_summary(per_seed: dict[int, dict | None], curves: Path) -> dict:
    """claims.json: the claim on the (aggregated) best-of-N curves, each seed's verdict, the sentence, and RL's
    result on the same metric from the run's ppo/curves.jsonl beside bon/ (null without a PPO stage)."""
    overall = bon_claim(read_jsonl(curves)) if curves.is_file() else None
    rl_curves = curves.parent.parent / "ppo" / "curves.jsonl"
    return {"claim": overall, "per_seed": {str(k): c for k, c in sorted(per_seed.items())},
            "verdict": verdict_sentence(per_seed), "rl": rl_result(read_jsonl(rl_curves)) if rl_curves.is_file() else None}


def print_headline(claims: dict) -> None:
    """The run's closing lines: the claim's numbers with intervals, RL's beside them, then the verdict over seeds."""
    if claims.get("claim") is not None:
        for line in headline(claims["claim"]):
            console.result(f"run: {line}")
    if claims.get("rl") is not None:
        for line in rl_headline(claims["rl"]):
            console.result(f"run: {line}")
    console.result(f"run: {claims['verdict']}")


__all__ = ["Cell", "run_cells", "launch_cells", "seed_cells", "worker_count_for", "run_seeds", "aggregate", "claims_summary", "print_headline", "seed_config", "worker_count", "claim_of"]
