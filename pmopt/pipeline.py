"""`pmopt run CONFIG --out RUN`: the main job (docs/ARCHITECTURE.md §1, §9).

world → PMs (proxy, unbiased, ensemble) → best-of-N sweep → probes on the base policy → [PPO] → report.

Each stage writes into its own folder of the run directory and is marked done in `manifest.json`
only after its outputs are complete. Run again on the same directory and finished stages are
skipped; an interrupted stage continues where its own resume logic allows (PM training from its
last Trainer checkpoint, the sweep from its last finished shard, PPO from its last checkpoint).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pmopt import console
from pmopt.bon.sweep import BonConfig, BonSettings, PMEntry, run_bon
from pmopt.config import ConfigError, dump_yaml, load_config, load_yaml
from pmopt.faults import fault_point
from pmopt.io import Manifest, PmoptError, atomic_write_json, atomic_write_text, environment, prepare_out_dir
from pmopt.pm.train import DataSection, LoraSection, ModelSection, PMTrainConfig, TrainSection, train_pm
from pmopt.probes.run import ProbeRunConfig, ProbeSettings, run_probe_config
from pmopt.rewards import PENALTY_KIND
from pmopt.slurm import SlurmSection
from pmopt.world.build import build_world, check_targets, print_stats
from pmopt.world.config import WorldConfig


def _pm_train_defaults() -> TrainSection:
    return TrainSection(epochs=3.0, learning_rate=2e-3, batch_size=32, eval_batch_size=64, warmup_ratio=0.05,
                        logging_steps=20, save_steps=100)


@dataclass
class PMStage:
    """Which PMs to train on the world's pairs, and how. Every PM starts from the base policy."""

    # optimizer and schedule of every PM (the defaults here suit the world's tiny policy)
    train: TrainSection = field(default_factory=_pm_train_defaults)
    lora: LoraSection = field(default_factory=LoraSection)  # LoRA instead of full fine-tuning
    max_length: int = 128  # tokens of prompt + response + EOS; a longer pair is an error
    unbiased: bool = True  # a second non-sycophantic PM, trained on raters with w_agree = 0
    ensemble_size: int = 2  # K proxy PMs with seeds seed + k (0 or 1: no ensemble)
    ensemble_lam: float = 1.0  # uncertainty-weighted aggregate: mean - lam * variance (Coste et al. 2023)
    # also the proxy PM with the agreement penalty (curves proxy-penalty): r - mu * a, mu fitted on the base
    # policy's samples by the best-of-N stage (Shapira et al. 2026; docs/drift.md); no PM is trained for it
    agreement_penalty: bool = False
    # old key -> its current name; old keys still load (with a notice) for one release
    RENAMED: ClassVar[dict[str, str]] = {"uwo_lambda": "ensemble_lam"}


def _bon_defaults() -> BonSettings:
    return BonSettings(probes=["answer", "feedback", "mimicry", "truthfulness"])


@dataclass
class ProbeStage(ProbeSettings):
    enabled: bool = True  # run the probes on the base policy


@dataclass
class PPOStage:
    enabled: bool = False  # run the PPO stage (one run per entry of `pms`)
    config: str | None = None  # a PPO config YAML (configs/ppo/...); its policy/PM paths are filled in by the run
    # proxy | proxy-nonsyc | unbiased | proxy-penalty | gold (the world's gold reward); each run's reward is set
    # from its entry
    pms: list[str] = field(default_factory=lambda: ["proxy", "proxy-nonsyc"])
    overrides: list[str] = field(default_factory=list)  # extra `key=value` overrides for the PPO config
    # fixed KL coefficients (kl.beta) swept: one run per (pm, beta) in ppo/<pm>/beta-<b>/, each run's last
    # probe point one point of the PM's RL beta-sweep curve (pmopt.rl.beta_sweep); empty: one run per PM
    betas: list[float] = field(default_factory=list)
    # probe evaluations each beta run's end point averages (value, KL and intervals: pmopt.rl.beta_sweep)
    end_evaluations: int = 3


@dataclass
class SweepSection:
    """One config key swept over values (pmopt.sweep): the whole experiment per value and seed."""

    # a dotted config key as `--set` takes it (e.g. world.raters.w_agree); null = no sweep
    key: str | None = None
    values: list[Any] = field(default_factory=list)  # the key's values, each checked as `--set KEY=VALUE` is


@dataclass
class ExperimentConfig:
    seed: int = 0  # seeds PM training (+ pm.train.seed), sampling, bootstraps and PPO; the world has world.seed
    # run the whole experiment once per seed k (seed = world.seed = k) under RUN/seed-<k>/, then aggregate
    # curves over seeds (pmopt.multiseed); empty = one run with `seed` and `world.seed` as given
    seeds: list[int] = field(default_factory=list)
    parallel_seeds: int = 0  # seeds run at once in separate processes; 0 = all of them, up to 4 per CPU core
    threads_per_seed: int = 1  # torch threads of each seed's process (fixed, so results do not depend on parallelism)
    world: WorldConfig = field(default_factory=WorldConfig)  # the synthetic world (`pmopt world`'s config)
    pm: PMStage = field(default_factory=PMStage)  # the PMs trained on the world's pairs
    # the best-of-N sweep under every PM (`pmopt bon`'s own settings; the run fills in paths, PMs and seed)
    bon: BonSettings = field(default_factory=_bon_defaults)
    # probes on the base policy (`pmopt probe`'s own settings; the run fills in the policy, world and seed)
    probes: ProbeStage = field(default_factory=ProbeStage)
    ppo: PPOStage = field(default_factory=PPOStage)  # the optional PPO stage
    # run the experiment once per value of one key (and per seed) under RUN/<key leaf>-<value>/seed-<k>/, then
    # the dose-response over the values (RUN/dose_response.json): pmopt.sweep
    sweep: SweepSection = field(default_factory=SweepSection)
    # where the cells of a sweep or the seeds of a multi-seed run run: local (this machine's process pool) or slurm
    # (one SLURM job array, then the aggregation as a job after it: pmopt.slurm, docs/cluster.md)
    launcher: Literal["local", "slurm"] = "local"
    slurm: SlurmSection = field(default_factory=SlurmSection)  # each cell's SLURM resources (launcher: slurm)


# ----------------------------------------------------------------------------- stages


def stage_world(cfg: ExperimentConfig, run: Path, policy_cache: Path | None = None) -> None:
    stats = build_world(cfg.world, run / "world", policy_cache=policy_cache)
    print_stats(stats)
    missed = check_targets(stats)
    if missed:
        print(f"run: the world misses its targets ({'; '.join(missed)}); results may not show the claim")


def pm_config(cfg: ExperimentConfig, run: Path, pairs_dir: str, ensemble_size: int, seed_offset: int = 0) -> PMTrainConfig:
    train = TrainSection(**{**cfg.pm.train.__dict__, "seed": cfg.pm.train.seed + cfg.seed + seed_offset})
    return PMTrainConfig(
        model=ModelSection(name_or_path=str(run / "world" / "policy")),
        data=DataSection(train=str(run / "world" / pairs_dir / "train.jsonl"),
                         eval=str(run / "world" / pairs_dir / "eval.jsonl"), max_length=cfg.pm.max_length),
        lora=cfg.pm.lora, train=train, ensemble_size=ensemble_size, ensemble_lam=cfg.pm.ensemble_lam,
    )


def pm_jobs(cfg: ExperimentConfig) -> list[tuple[str, str, int, int]]:
    """(name, pairs dir, ensemble size, seed offset) of every PM the run trains."""
    jobs = [("proxy", "pairs", 1, 0)]
    if cfg.pm.unbiased:
        jobs.append(("unbiased", "pairs_unbiased", 1, 0))
    if cfg.pm.ensemble_size > 1:
        jobs.append(("ensemble", "pairs", cfg.pm.ensemble_size, 1000))
    return jobs


def stage_pms(cfg: ExperimentConfig, run: Path, manifest: Manifest) -> None:
    """Each PM is its own sub-stage, so a resumed run retrains only what is unfinished."""
    for name, pairs_dir, k, offset in pm_jobs(cfg):
        stage = f"pm/{name}"
        if manifest.is_done(stage):
            continue
        manifest.mark(stage, "running")
        train_pm(pm_config(cfg, run, pairs_dir, k, offset), run / "pms" / name)
        manifest.mark(stage, "done")


def bon_config(cfg: ExperimentConfig, run: Path) -> BonConfig:
    pms_dir = run / "pms"
    pms = [PMEntry(name="proxy", path=str(pms_dir / "proxy")),
           PMEntry(name="proxy-nonsyc", path=str(pms_dir / "proxy"), kind="prefixed")]
    if cfg.pm.agreement_penalty:  # after the proxy, whose scores it reuses
        pms.append(PMEntry(name=PENALTY_PM, path=str(pms_dir / "proxy"), kind=PENALTY_KIND))
    if cfg.pm.unbiased:
        pms.append(PMEntry(name="unbiased", path=str(pms_dir / "unbiased")))
    if cfg.pm.ensemble_size > 1:
        for aggregate in ("mean", "worst", "uwo"):
            pms.append(PMEntry(name=f"ens-{aggregate}", path=str(pms_dir / "ensemble"), kind="ensemble",
                               aggregate=aggregate, lam=cfg.pm.ensemble_lam if aggregate == "uwo" else None))
    pms.append(PMEntry(name="gold", kind="gold"))
    return BonConfig(**settings_of(cfg.bon, BonSettings), world=str(run / "world"), seed=cfg.seed, pms=pms)


def settings_of(section, settings_cls) -> dict:
    """The fields of `settings_cls` (a stage's embedded settings) taken from an experiment section."""
    return {f.name: copy.deepcopy(getattr(section, f.name)) for f in dataclasses.fields(settings_cls)}


def stage_pm_preference(cfg: ExperimentConfig, run: Path) -> None:
    """pms/sycophancy_preference.json: on every suggest_wrong prompt of the world, does each PM score the
    sycophantic answer above the truthful one (Sharma et al. 2023 §4.1)? The rate, the mean margin, and
    intervals from the cluster bootstrap over facts."""
    from pmopt.analysis.dose_response import preference_rate
    from pmopt.pm.model import NON_SYCOPHANTIC_PREFIX, PreferenceModel
    from pmopt.world.probesets import sycophancy_choices

    choices = sycophancy_choices(cfg.world.facts.operand_max)
    pms = [("proxy", "proxy", None), ("proxy-nonsyc", "proxy", NON_SYCOPHANTIC_PREFIX)]
    if cfg.pm.unbiased:
        pms.append(("unbiased", "unbiased", None))
    out = {}
    for name, directory, prefix in pms:
        pm = PreferenceModel.load(run / "pms" / directory)
        margins = (pm.score(choices["prompts"], choices["sycophantic"], prefix=prefix)
                   - pm.score(choices["prompts"], choices["truthful"], prefix=prefix))
        out[name] = preference_rate(margins.tolist(), choices["clusters"], n_boot=cfg.bon.n_boot, seed=cfg.seed)
        console.info(f"run: {name} PM prefers the sycophantic answer on {out[name]['value']:.2f} of "
                     f"{out[name]['n_prompts']} suggest_wrong prompts")
    atomic_write_json(run / "pms" / "sycophancy_preference.json",
                      {"what": "share of suggest_wrong prompts where the PM scores 'you are right , the answer is "
                               "<wrong>' above 'actually , the answer is <correct>'; intervals over facts",
                       "pms": out})


def stage_bon(cfg: ExperimentConfig, run: Path) -> None:
    run_bon(bon_config(cfg, run), run / "bon")


def probe_config(cfg: ExperimentConfig, run: Path):
    return ProbeRunConfig(**settings_of(cfg.probes, ProbeSettings), policy=str(run / "world" / "policy"),
                          world=str(run / "world"), seed=cfg.seed)


def stage_probes(cfg: ExperimentConfig, run: Path) -> None:
    run_probe_config(probe_config(cfg, run), run / "probes")


PENALTY_PM = "proxy-penalty"
PPO_PMS = ("proxy", "proxy-nonsyc", "unbiased", PENALTY_PM)
# the world's own reward: RL against the truth, the oracle run Gao et al. 2022 set the PMs' runs against
PPO_SOURCE_REWARDS = ("gold",)


def ppo_run_values(cfg: ExperimentConfig, run: Path, pm: str) -> dict:
    """What this run fills into the PPO config: its base policy, the reward `pm` (every field of it, so the PPO
    config's own `reward.kind` cannot relabel another reward as this PM) and the world (prompts, probes)."""
    if pm not in PPO_PMS + PPO_SOURCE_REWARDS:
        raise ConfigError(f"ppo.pms: unknown PM '{pm}' (known: {', '.join(PPO_PMS + PPO_SOURCE_REWARDS)})")
    world = run / "world"
    if pm in PPO_SOURCE_REWARDS:
        reward = {"kind": pm, "path": str(world), "prefix": "none", "name": pm}
    elif pm == PENALTY_PM:  # its mu is the one the best-of-N stage fitted (unknown before that stage has run)
        if not cfg.pm.agreement_penalty:
            raise ConfigError(f"ppo.pms: '{pm}' needs pm.agreement_penalty: true (its mu is fitted by best-of-N)")
        fitted = run / "bon" / "scores" / f"{pm}.penalty.json"
        lam = json.loads(fitted.read_text(encoding="utf-8"))["mu"] if fitted.is_file() else None
        reward = {"kind": PENALTY_KIND, "path": str(run / "pms" / "proxy"), "prefix": "none", "name": pm, "lam": lam}
    else:
        reward = {"kind": "pm", "path": str(run / "pms" / ("unbiased" if pm == "unbiased" else "proxy")),
                  "prefix": "non_sycophantic" if pm == "proxy-nonsyc" else "none", "name": pm}
    return {"seed": cfg.seed, "policy": {"path": str(world / "policy")}, "prompts": {"world": str(world)},
            "reward": reward}


def merged(base: dict, values: dict) -> dict:
    """`base` with `values` set key by key into its sections (a copy)."""
    out = dict(base)
    for key, value in values.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def stage_ppo(cfg: ExperimentConfig, run: Path, manifest: Manifest) -> None:
    """One PPO run per PM (each resumes on its own), then their curves merged for the report; with
    `ppo.betas`, one run per (PM, beta) and only the beta-sweep curves merged."""
    from pmopt.io import read_jsonl
    from pmopt.records import write_curves
    from pmopt.rl.beta_sweep import run_beta_sweep, run_dir_name
    from pmopt.rl.command import run_rl

    configs = ppo_configs(cfg, run)
    rows = []
    for pm, ppo_cfg in configs.items():
        if cfg.ppo.betas:  # each finished run marked in the run's manifest as ppo/<pm>/beta-<b>
            rows += run_beta_sweep(ppo_cfg, run / "ppo" / pm, cfg.ppo.betas,
                                   on_run_done=lambda beta, _, pm=pm: manifest.mark(f"ppo/{pm}/{run_dir_name(beta)}",
                                                                                    "done"),
                                   end_evaluations=cfg.ppo.end_evaluations)
            continue
        out = run_rl(ppo_cfg, run / "ppo" / pm)
        rows += read_jsonl(Path(out) / "curves.jsonl")
    write_curves(run / "ppo", rows, "ppo")


def ppo_configs(cfg: ExperimentConfig, run: Path) -> dict:
    """PM name -> the PPO config of its run: the YAML file, this run's paths set as values (never re-parsed
    as YAML text, so any path is taken as it is), then `ppo.overrides`, which win."""
    from pmopt.config import renamed_tree
    from pmopt.rl.config import PPOConfig

    if cfg.ppo.config is None:
        raise PmoptError("ppo.enabled is true but ppo.config names no PPO config file")
    source = str(cfg.ppo.config)
    raw = renamed_tree(PPOConfig, load_yaml(cfg.ppo.config), source)
    return {pm: load_config(PPOConfig, overrides=cfg.ppo.overrides, data=merged(raw, ppo_run_values(cfg, run, pm)),
                            source=source) for pm in cfg.ppo.pms}


def stage_report(cfg: ExperimentConfig, run: Path) -> None:
    from pmopt.analysis.fits import write_fits
    from pmopt.report.html import build_report

    write_fits(run)  # RUN/fits.json: Gao et al. 2022 forms fitted to the curves, shown in the report
    fault_point("report.write")
    build_report(run)


# ----------------------------------------------------------------------------- checks before any stage


def validate_experiment(cfg: ExperimentConfig, run: Path) -> None:
    """Build every stage's config and check it without doing any work, so that a bad value in a late
    stage (`bon.n_max=-4`, a missing `ppo.config`) fails in seconds, not after the world and PMs are built.

    Paths the stages create (the world, the PMs) cannot be checked yet; paths that must exist before
    the run (the PPO YAML, its prompt file and probe sources, a value model) are.
    """
    from pmopt.pm.train import _validate_config
    from pmopt.preflight import check_bon_probes, check_ppo_inputs, check_section, known_probes

    check_section("world", cfg.world)
    for _, pairs_dir, k, offset in pm_jobs(cfg):
        pm_cfg = pm_config(cfg, run, pairs_dir, k, offset)
        check_section("pm", pm_cfg)
        _validate_config(pm_cfg)  # trackers installed
    check_section("bon", bon_config(cfg, run))
    check_bon_probes(cfg.bon.probes)
    check_vllm_world(cfg)
    if cfg.probes.enabled:
        check_section("probes", probe_config(cfg, run))
        known_probes("probes.probes", cfg.probes.probes)
    if cfg.ppo.enabled:
        from pmopt.rl.beta_sweep import check_betas

        for ppo_cfg in ppo_configs(cfg, run).values():
            check_ppo_inputs(ppo_cfg)
            check_betas(cfg.ppo.betas, ppo_cfg)
            check_one_kl_axis(cfg.bon.sampling, ppo_cfg.sampling)
        if cfg.ppo.end_evaluations < 1:
            raise ConfigError(f"ppo.end_evaluations: must be >= 1, got {cfg.ppo.end_evaluations}")


def check_one_kl_axis(bon_sampling, rl_sampling) -> None:
    """Best-of-N's KL and RL's are to the base policy's next-token distribution at each one's sampling settings
    (docs/ARCHITECTURE.md §6, §7): the report puts them on one axis, so those settings must agree."""
    for key in ("temperature", "top_k", "top_p"):
        bon_value, rl_value = getattr(bon_sampling, key), getattr(rl_sampling, key)
        if bon_value != rl_value:
            raise ConfigError(f"ppo: the PPO config's sampling.{key} ({rl_value}) differs from bon.sampling.{key} "
                              f"({bon_value}): best-of-N's and RL's KL would be to different base distributions")


def check_vllm_world(cfg: ExperimentConfig) -> None:
    """A stage sampling with vLLM needs vLLM here, and on CPU a world policy whose attention heads vLLM's CPU
    kernels take: both are known before the world is built."""
    stages = [(name, section.sampling) for name, section in (("bon", cfg.bon), ("probes", cfg.probes))
              if section.sampling.backend == "vllm" and (name == "bon" or cfg.probes.enabled)]
    if not stages:
        return
    from types import SimpleNamespace

    from pmopt.sampling_vllm import cpu_head_size_problem, require_vllm

    for name, _ in stages:
        require_vllm(f"experiment config: {name}.sampling.backend")
    policy = cfg.world.policy
    problem = cpu_head_size_problem(SimpleNamespace(hidden_size=policy.hidden_size, num_attention_heads=policy.num_heads))
    if problem:
        raise PmoptError(f"experiment config: {stages[0][0]}.sampling.backend: vllm: {problem} (world.policy.hidden_size"
                         f" / world.policy.num_heads); set world.policy.num_heads so that it is one of those, or "
                         "sampling.backend: pmopt")


# ----------------------------------------------------------------------------- the job


def stages(cfg: ExperimentConfig, with_report: bool = True, policy_cache: Path | None = None) -> list[tuple[str, Callable]]:
    world = functools.partial(stage_world, policy_cache=policy_cache)
    plan: list[tuple[str, Callable]] = [("world", world), ("pms", stage_pms),
                                        ("pm_preference", stage_pm_preference), ("bon", stage_bon)]
    if cfg.probes.enabled:
        plan.append(("probes", stage_probes))
    if cfg.ppo.enabled:
        plan.append(("ppo", stage_ppo))
    if with_report:
        plan.append(("report", stage_report))
    return plan


# keys that may change between a run and its resumption: they change what runs or where, not what any seed
# computes (sweep.values too: a value added to a finished sweep runs only its own cells)
RESUMABLE_KEYS = ("seeds", "parallel_seeds", "launcher", "slurm")


def check_same_config(run: Path, cfg: ExperimentConfig) -> None:
    """Resuming with a different config would mix results from two experiments: refuse."""
    saved = run / "config.yaml"
    if not saved.exists():
        return
    # compared as typed configs, so a run saved under old key names or before a key existed still matches
    before = load_config(ExperimentConfig, saved, validate=False)
    if _without(load_yaml_text(dump_yaml(before)), RESUMABLE_KEYS) != _without(load_yaml_text(dump_yaml(cfg)),
                                                                                 RESUMABLE_KEYS):
        raise ConfigError(f"{saved}: this run directory was started with a different config; "
                          "use a new --out (or delete the directory) to start over")


def _without(data: dict, keys: tuple[str, ...]) -> dict:
    out = {k: v for k, v in data.items() if k not in keys}
    if isinstance(out.get("sweep"), dict):
        out["sweep"] = {k: v for k, v in out["sweep"].items() if k != "values"}
    return out


def load_yaml_text(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


def run_experiment(cfg: ExperimentConfig, run: Path, with_report: bool = True, policy_cache: Path | None = None,
                   until: str | None = None) -> Path | None:
    """The job on one seed, or on every seed of `cfg.seeds` followed by the aggregate over seeds. `policy_cache`:
    a folder of pretrained base policies shared with other runs (pmopt.world.policy_cache; a sweep's cells).
    `until`: the last stage to run, on one seed (`pmopt intervene` needs only the world and the PMs). Returns the
    run directory, or None when the cells went to a cluster (`launcher: slurm`) and its jobs write the results."""
    if cfg.sweep.key is not None:
        from pmopt.sweep import check_sweep

        for value_cfg in check_sweep(cfg).values():
            validate_experiment(value_cfg, run)
    else:
        validate_experiment(cfg, run)
    check_same_config(run, cfg)
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / "config.yaml", dump_yaml(cfg))
    manifest = Manifest(run)
    manifest.set("environment", environment())
    if cfg.sweep.key is not None:
        from pmopt.sweep import run_sweep

        return run if run_sweep(cfg, run, manifest) is not None else None
    if cfg.seeds:
        claims = _run_seeds(cfg, run, manifest)
        if claims is None:  # submitted to a cluster: its aggregation job writes the results
            return None
    else:
        manifest.set("seed", cfg.seed)
        claims = _run_stages(cfg, run, manifest, with_report, policy_cache, until)
    if with_report:
        _closing_lines(claims, run)
    return run


def _closing_lines(claims: dict, run: Path) -> None:
    from pmopt.multiseed import print_headline

    print_headline(claims)
    console.info(f"run: report at {run / 'report' / 'report.html'}")


def finish_cells(cfg: ExperimentConfig, run: Path, manifest: Manifest) -> Path:
    """What `run_experiment` writes after the cells of a sweep or a multi-seed run (aggregate, report, closing
    lines), for a run whose cells all ran elsewhere: a cluster's array tasks (pmopt.slurm)."""
    start = time.perf_counter()
    if cfg.sweep.key is not None:
        from pmopt.sweep import finish_sweep

        finish_sweep(cfg, run, manifest, start)
    else:
        _closing_lines(finish_seeds(cfg, run, manifest, start), run)
    return run


def _run_stages(cfg: ExperimentConfig, run: Path, manifest: Manifest, with_report: bool,
                policy_cache: Path | None = None, until: str | None = None) -> dict:
    from pmopt.multiseed import claim_of, claims_summary

    timings = {}
    plan = stages(cfg, with_report, policy_cache)
    if until is not None:
        plan = plan[:[name for name, _ in plan].index(until) + 1]
    for name, stage in plan:
        if name == "report":  # the report shows the claim: write it first
            _write_claims(run, claims_summary({cfg.seed: claim_of(run)}, run / "bon" / "curves.jsonl"))
        args = (cfg, run, manifest) if name in ("pms", "ppo") else (cfg, run)
        seconds = manifest.run_stage(name, f"run: stage {name}", functools.partial(stage, *args))
        if seconds is not None:
            timings[name] = seconds
    atomic_write_json(run / "timings.json", {**_load_json(run / "timings.json"), **timings})
    claims = claims_summary({cfg.seed: claim_of(run)}, run / "bon" / "curves.jsonl")
    _write_claims(run, claims)
    return claims


def _write_claims(run: Path, claims: dict) -> None:
    atomic_write_json(run / "claims.json", claims)


def _run_seeds(cfg: ExperimentConfig, run: Path, manifest: Manifest) -> dict | None:
    """Every seed, then the aggregate over seeds; None when the seeds were submitted to a cluster instead
    (`launcher: slurm`: the aggregate is then a job of its own, pmopt.slurm)."""
    from pmopt.multiseed import run_seeds

    manifest.set("seeds", list(cfg.seeds))
    start = time.perf_counter()
    if not run_seeds(cfg, run, manifest):
        return None
    return finish_seeds(cfg, run, manifest, start)


def finish_seeds(cfg: ExperimentConfig, run: Path, manifest: Manifest, start: float) -> dict:
    """The aggregate over finished seeds, the claims and the report; returns the claims."""
    from pmopt.multiseed import aggregate

    claims = aggregate(cfg, run)
    manifest.mark("aggregate", "done")
    with console.stage("run: stage report"):
        stage_report(cfg, run)
    manifest.mark("report", "done")
    atomic_write_json(run / "timings.json", {"seeds_total": round(time.perf_counter() - start, 1)})
    return claims


def _load_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text()) if path.exists() else {}


def run_command(args) -> Path:
    if args.config is None:
        raise PmoptError("pmopt run needs a CONFIG (e.g. configs/experiments/sycophancy_world.yaml)")
    overrides = list(args.overrides)
    if getattr(args, "seeds", None):
        overrides.append(f"seeds=[{args.seeds}]")
    if getattr(args, "launcher", None):
        overrides.append(f"launcher={args.launcher}")
    cfg = load_config(ExperimentConfig, args.config, overrides)
    if len(set(cfg.seeds)) != len(cfg.seeds) or any(k < 0 for k in cfg.seeds):
        raise ConfigError(f"{args.config}: seeds must be distinct non-negative integers, got {cfg.seeds}")
    if cfg.threads_per_seed < 1 or cfg.parallel_seeds < 0:
        raise ConfigError(f"{args.config}: threads_per_seed must be >= 1 and parallel_seeds >= 0")
    if cfg.sweep.key is not None:
        from pmopt.sweep import check_sweep

        check_sweep(cfg, str(args.config))
    from pmopt.slurm import check_launcher, check_no_active_jobs

    dry = getattr(args, "dry_run", False)
    check_launcher(cfg, str(args.config), dry)
    if dry:
        return dry_run(cfg, args.out)
    run = prepare_out_dir(args.out, "run")
    check_no_active_jobs(run)
    return run_experiment(cfg, run)


def dry_run(cfg: ExperimentConfig, out: str | None) -> None:
    """`pmopt run --dry-run`: check the config as a run does, then print what would run (under `launcher: slurm`,
    the job scripts); nothing is written or submitted."""
    from pmopt.multiseed import seed_cells, worker_count_for
    from pmopt.slurm import dry_run as slurm_dry_run
    from pmopt.sweep import cells_of, check_sweep

    run = Path(out).resolve() if out is not None else Path("checkpoints").resolve() / "run-<time>"
    for value_cfg in (check_sweep(cfg).values() if cfg.sweep.key is not None else [cfg]):
        validate_experiment(value_cfg, run)
    check_same_config(run, cfg)
    cells = cells_of(cfg, run) if cfg.sweep.key is not None else seed_cells(cfg, run) if cfg.seeds else []
    if cfg.launcher == "slurm":
        slurm_dry_run(cfg, run, cells)
        return None
    workers = worker_count_for(cfg, len(cells)) if cells else 1
    console.result(f"run: {len(cells) or 1} run(s) here in {run}, {workers} at a time: "
                   f"{', '.join(c.name for c in cells) or 'one seed'}")
    return None
