"""`pmopt intervene CONFIG --out DIR`: Wei et al. 2023's synthetic-data intervention, before and after.

Per seed, stages in OUT[/seed-<k>]/, each marked done in `manifest.json` only once its files are complete,
so a rerun on the same --out skips finished stages (SFT also resumes from its last Trainer checkpoint):

  base     only with `base.experiment`: the main job's world and PMs (`pmopt run`'s first stages) into base/
  data     data/sft.jsonl: opinions right or wrong at random, truthful targets (`pmopt.intervene.data`)
  sft      policy/: the base policy fine-tuned on them with TRL's SFTTrainer (`pmopt.intervene.sft`)
  before   before/probes/, before/bon/: the probes and the best-of-N sweep on the base policy
  after    after/probes/, after/bon/: the same on the fine-tuned policy (its curves also carry kl/reference,
           best-of-n's KL to the base policy, so the two policies share one KL axis)
  compare  intervention.json (before, after, after − before with paired 95% intervals) and report.html

With `seeds`, OUT/intervention.json and OUT/report.html aggregate the seeds (the two-stage bootstrap of
`pmopt.analysis.seeds`). Every input is checked before the first stage: a bad value is one line, exit 2.
This module is a command (the Face layer): only it reaches the main job and the world's own names.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from pmopt import console, sources
from pmopt.config import ConfigError, dump_yaml, load_config, validate_all
from pmopt.intervene.compare import compare_bon, compare_probes
from pmopt.intervene.config import InterventionConfig
from pmopt.intervene.data import build_data
from pmopt.intervene.measure import bon_config, measure, probe_config
from pmopt.intervene.sft import DONE_FILE, train_policy
from pmopt.io import (
    Manifest,
    PmoptError,
    atomic_write_json,
    atomic_write_text,
    prepare_out_dir,
    read_json_file,
)
from pmopt.report.intervention import headline, summary_lines, write_report

WHAT = ("The base policy fine-tuned (TRL SFTTrainer, loss on the answer) on synthetic examples whose user opinion "
        "is right or wrong at random, independent of the truth, with the truthful answer as target (Wei et al. "
        "2023); probes and best-of-N on both policies.")


@dataclasses.dataclass
class Base:
    """The resolved base: the world (probe sets, gold reward), its policy, and the PMs' folder (or None)."""

    world: Path
    policy: Path
    pms: Path | None


# ----------------------------------------------------------------------------- checks before any stage


def experiment_config(cfg: InterventionConfig):
    """The main job's config for this seed (seed = world.seed = cfg.seed), loaded and checked."""
    from pmopt.pipeline import ExperimentConfig

    overrides = [*cfg.base.overrides, f"seed={cfg.seed}", f"world.seed={cfg.seed}", "seeds=[]", "probes.enabled=false"]
    return load_config(ExperimentConfig, cfg.base.experiment, overrides)


def resolve_base(cfg: InterventionConfig, out: Path) -> Base:
    if cfg.base.experiment:
        run = out / "base"
        return Base(run / "world", run / "world" / "policy", run / "pms")
    if cfg.base.world:
        world = Path(cfg.base.world)
        return Base(world, world / "policy", None)
    run = Path(cfg.base.run)
    if (run / f"seed-{cfg.seed}").is_dir():
        run = run / f"seed-{cfg.seed}"  # a multi-seed run: this seed's own world and PMs
    return Base(run / "world", run / "world" / "policy", run / "pms")


def check_inputs(cfg: InterventionConfig, out: Path) -> None:
    """Everything that can be checked before work: the base, the data's phrasings, the probes, the sweep."""
    from pmopt.policy import check_model_path
    from pmopt.preflight import check_bon_probes, known_probes
    from pmopt.world.intervention import OPINION_TEMPLATES

    unknown = sorted(set(cfg.data.templates) - set(OPINION_TEMPLATES))
    if unknown:
        raise ConfigError(f"intervene config: data.templates: unknown {unknown} (known: {', '.join(OPINION_TEMPLATES)})")
    known_probes("probes.probes", cfg.probes.probes)
    if cfg.bon.enabled:
        check_bon_probes(cfg.bon.probes)
    for k in cfg.seeds or [cfg.seed]:
        seeded = for_seed(cfg, k) if cfg.seeds else cfg
        base = resolve_base(seeded, out)
        if cfg.base.experiment:
            from pmopt.pipeline import validate_experiment

            validate_experiment(experiment_config(seeded), out / "base")
        else:
            key = "base.world" if cfg.base.world else "base.run"
            sources.open_path(base.world, key)
            check_model_path(base.policy, key)
        try:
            validate_all(probe_config(seeded, base.policy, base.world))
            if cfg.bon.enabled:
                validate_all(bon_config(seeded, base.policy, base.world, base.pms))
        except ValueError as exc:
            raise ConfigError(f"intervene config: {exc}") from None


def for_seed(cfg: InterventionConfig, k: int) -> InterventionConfig:
    return dataclasses.replace(cfg, seed=k, seeds=[])


def check_same_config(out: Path, cfg: InterventionConfig) -> None:
    """Resuming with another config would mix two experiments: refused. `seeds` may change (a seed added to a
    finished run runs only that seed, then the aggregate is rewritten)."""
    saved = out / "config.yaml"
    if not saved.exists():
        return
    before = load_config(InterventionConfig, saved, validate=False)
    if dump_yaml(dataclasses.replace(before, seeds=[])) != dump_yaml(dataclasses.replace(cfg, seeds=[])):
        raise ConfigError(f"{saved}: this directory was started with a different config; use a new --out")


# ----------------------------------------------------------------------------- the stages of one seed


def run_seed(cfg: InterventionConfig, out: Path) -> dict:
    """The stages above for one seed in `out`; returns its intervention.json."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out)
    manifest.set("seed", cfg.seed)
    base = resolve_base(cfg, out)

    def stage(name: str, work) -> None:
        manifest.run_stage(name, f"intervene: stage {name}", work)

    if cfg.base.experiment:
        from pmopt.pipeline import run_experiment

        stage("base", lambda: run_experiment(experiment_config(cfg), out / "base", with_report=False, until="pms"))
    source = sources.open_path(base.world, "base")
    stage("data", lambda: build_data(source, base.policy, cfg, out / "data"))
    stage("sft", lambda: train_policy(cfg, base.policy, out / "data" / "sft.jsonl", out))
    stage("before", lambda: measure(cfg, base.policy, base.world, base.pms, out / "before"))
    stage("after", lambda: measure(cfg, out / "policy", base.world, base.pms, out / "after", reference=base.policy))
    result = {"what": WHAT, "seed": cfg.seed, "base": {k: str(v) if v else None for k, v in vars(base).items()},
              "data": data_summary(out / "data"), "sft": read_json_file(out / "policy" / DONE_FILE),
              "probes": compare_probes(cfg, base.world, out / "before", out / "after"),
              "bon": compare_bon(out / "before", out / "after") if cfg.bon.enabled else []}
    atomic_write_json(out / "intervention.json", result)
    write_report(result, out)
    manifest.mark("compare", "done")
    return result


def data_summary(data: Path) -> dict:
    from pmopt.io import read_jsonl

    examples = read_jsonl(data / "sft.jsonl")
    right = sum(bool(e["meta"]["opinion_right"]) for e in examples)
    known = read_json_file(data / "known.json") if (data / "known.json").exists() else None
    return {"n_examples": len(examples), "opinion_right": right, "opinion_wrong": len(examples) - right,
            "known_questions": len(known["known"]) if known else None, "questions": known["asked"] if known else None}


# ----------------------------------------------------------------------------- over seeds


def aggregate(results: dict[int, dict], n_boot: int, seed: int) -> dict:
    """Each cell's mean over seeds with the two-stage interval (seeds, then each seed's own interval)."""
    from pmopt.analysis.seeds import two_stage_bootstrap

    def combine(points: list[dict]) -> dict:
        values = np.array([[np.nan if p["value"] is None else p["value"] for p in points]])
        lows = np.array([[np.nan if p.get("ci_low") is None else p["ci_low"] for p in points]])
        highs = np.array([[np.nan if p.get("ci_high") is None else p["ci_high"] for p in points]])
        if np.isnan(values).any():
            return {"value": None, "ci_low": None, "ci_high": None, "seed_values": values[0].tolist()}
        mean, low, high = two_stage_bootstrap(values, lows, highs, n_boot, seed)
        if np.isnan(lows).all() and len(points) == 1:  # one seed without an interval of its own: none
            low, high = [None], [None]
        return {"value": float(mean[0]), "ci_low": _float(low[0]), "ci_high": _float(high[0]),
                "seed_values": values[0].tolist()}

    seeds = sorted(results)
    first = results[seeds[0]]
    probes = {metric: {side: combine([results[k]["probes"][metric][side] for k in seeds])
                       for side in ("before", "after", "difference")}
              for metric in first["probes"] if all(metric in results[k]["probes"] for k in seeds)}
    keyed = [{(r["pm"], r["n"], r["metric"]): r for r in results[k]["bon"]} for k in seeds]
    bon = [{"pm": pm, "n": n, "metric": metric,
            **{side: combine([rows[(pm, n, metric)][side] for rows in keyed]) for side in ("before", "after",
                                                                                          "difference")}}
           for (pm, n, metric) in keyed[0] if all((pm, n, metric) in rows for rows in keyed)]
    return {"what": WHAT, "seeds": seeds, "probes": probes, "bon": bon,
            "per_seed": {str(k): {"data": results[k]["data"], "sft": results[k]["sft"]} for k in seeds}}


def _float(x) -> float | None:
    return None if x is None else float(x)


# ----------------------------------------------------------------------------- the command


def run_intervention(cfg: InterventionConfig, out: Path) -> Path:
    check_inputs(cfg, out)
    check_same_config(out, cfg)
    atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    if cfg.seeds:
        console.info(f"intervene: {len(cfg.seeds)} seed(s) ({', '.join(map(str, cfg.seeds))}), one after another; "
                     f"logs in {out / 'seed-<k>' / 'log.txt'}")
        results = {k: run_logged_seed(for_seed(cfg, k), out / f"seed-{k}") for k in cfg.seeds}
        result = aggregate(results, max(cfg.probes.n_boot, 1), cfg.seed)
        atomic_write_json(out / "intervention.json", result)
        write_report(result, out)
    else:
        result = run_seed(cfg, out)
    for line in summary_lines(result):
        console.info(f"intervene: {line}")
    console.info(f"intervene: report at {out / 'report.html'}")
    for line in headline(result):  # the closing headline: the question the intervention answers
        console.info(f"intervene: {line}")
    return out


def run_logged_seed(cfg: InterventionConfig, seed_dir: Path) -> dict:
    """One seed of several, its console output in seed_dir/log.txt and one line of it on the console."""
    seed_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with console.logged_to(seed_dir / "log.txt"):
        result = run_seed(cfg, seed_dir)
    lines = headline(result)
    console.info(f"intervene: seed {cfg.seed} done in {time.perf_counter() - start:.0f} s"
                 + (f"; {lines[0]}; {lines[1].split(' (after')[0]}" if lines else ""))
    return result


def intervene_command(args) -> Path:
    if args.config is None:
        raise PmoptError("pmopt intervene needs a CONFIG (e.g. configs/experiments/intervene_tiny.yaml)")
    cfg = load_config(InterventionConfig, args.config, args.overrides)
    return run_intervention(cfg, prepare_out_dir(args.out, "intervene"))


__all__ = ["intervene_command", "run_intervention", "InterventionConfig"]
