"""`pmopt bon CONFIG --out DIR`: the best-of-N sweep (docs/ARCHITECTURE.md §6), read top to bottom.

One sampling pass feeds every n and every PM (Nakano et al. 2021 App. G; Gao et al. 2022 §2.2):

1. plan     check the whole config, load every prompt record and probe, find every PM (nothing is
            written before this passes);
2. sample   N_max samples per prompt, batched across prompts, written in shards
            (`samples/shard-00000.jsonl`, atomic). Under `accelerate launch` the missing shards are
            split across processes; keyed sampling (`pmopt.sampling`) makes the result identical to
            one process, and an interrupted sweep resumes from its last finished shard;
3. grade    every sample once with its probe -> `grades.jsonl`;
4. score    every sample with every PM -> `scores/<pm>.jsonl`; a PM whose score file exists is not
            rescored, so adding a PM to a finished sweep scores only it and generates nothing;
5. curves   for every PM and n in the grid: the probes' metrics of the per-prompt expectations
            E[f(BoN_n)], `pm/score`, `gold/reward` (on the world) and the KL bound, with bootstrap CIs
            over prompts -> `curves.jsonl` and `curves.csv` (docs/ARCHITECTURE.md §4 curve rows, method "bon");
            with `reference_policy`, `kl/reference`: the KL to that policy (`pmopt.bon.reference`);
6. drift    per PM, the drift its scores predict before any optimisation (within-prompt covariances, exact
            best-of-2 drift, the PM's preference on the policy's own samples) -> `drift.json` (`pmopt.bon.drift`).

Under several processes, PM scoring (step 4) and an LM judge's grading (step 3) are split across them
in chunks that do not depend on the process count (`pmopt.bon.distribute`), so the files are
byte-identical to one process's; the manifest's `bon/scores/<pm>` records the samples each process
scored (`per_process`). Exact grading, the gold reward and the curves (step 5) run on the main process,
which alone writes files. Probes whose responses are not plain samples of their prompts
(`probe.samples_directly` is False: are_you_sure's second turn, TruthfulQA MC1's option log-likelihoods)
cannot be read off one sampling pass and are refused here: run them with `pmopt probe`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pmopt import console, sources
from pmopt.bon import reference
from pmopt.bon.curves import curve_rows, support_mass
from pmopt.bon.drift import DRIFT_FILE, drift_report
from pmopt.bon.estimator import default_n_grid
from pmopt.bon.grades import load_or_grade
from pmopt.bon.scoring import gold_rewards, load_or_score
from pmopt.bon.shards import (
    check_samples_meta,
    generate_shards,
    missing_shards,
    read_samples,
    shard_count,
    write_samples_meta,
)
from pmopt.config import ConfigError, dump_yaml, load_config, to_dict
from pmopt.faults import fault_point
from pmopt.io import (
    Manifest,
    PmoptError,
    agreed_out_dir,
    atomic_write_json,
    atomic_write_text,
    prepare_out_dir,
)
from pmopt.pm.loading import PMLoadOptions
from pmopt.policy import AttnImplementation
from pmopt.probes.judges import JudgeConfig
from pmopt.records import write_curves
from pmopt.rewards import AGGREGATES, PENALTY_KIND, PM_KINDS, RewardSpec, registered_kinds
from pmopt.sampling import SamplingConfig
from pmopt.sources import OpenSource

DEFAULT_PROBES = ("answer", "feedback", "mimicry", "truthfulness")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a PM name is a file name: scores/<name>.jsonl

# ============================================================================ 1. config


@dataclass
class PMEntry(RewardSpec):
    """One reward the samples are scored with: a `pmopt.rewards.RewardSpec`, its fields read from `pms[]`.

    `kind` is a PM kind (pm, prefixed, ensemble), a kind added with `pmopt.rewards.register_kind`, or a
    reward of the data source at `path` (default: `world`), such as the world's gold reward.
    """

    name: str = ""  # label of its curves and of scores/<name>.jsonl (letters, digits, _ - .)

    def validate(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"pms: name {self.name!r} must be letters, digits, '_', '-', '.' (it names a file)")
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError(f"pms.{self.name}: kind must be a non-empty string")
        if self.kind in PM_KINDS and not self.path:
            raise ValueError(f"pms.{self.name}: path is required for kind {self.kind}")
        if self.kind != "ensemble" and self.aggregate is not None:
            raise ValueError(f"pms.{self.name}: aggregate applies to kind ensemble only")
        if self.kind not in ("ensemble", PENALTY_KIND) and self.lam is not None:
            raise ValueError(f"pms.{self.name}: lam applies to kinds ensemble and {PENALTY_KIND} only")
        if self.kind == PENALTY_KIND and not self.path:
            raise ValueError(f"pms.{self.name}: path (the PM the penalty corrects) is required for kind {PENALTY_KIND}")
        if self.aggregate is not None and self.aggregate not in AGGREGATES:
            raise ValueError(f"pms.{self.name}: aggregate must be one of {list(AGGREGATES)}, got {self.aggregate!r}")
        if self.lam is not None and self.lam < 0:
            raise ValueError(f"pms.{self.name}: lam must be >= 0")
        if self.batch_size < 1:
            raise ValueError(f"pms.{self.name}: batch_size must be >= 1")


@dataclass
class BonSettings:
    """How a sweep samples and summarises: the part of `BonConfig` that `pmopt run` embeds as `bon`."""

    # probe sets whose prompts are sampled (are_you_sure and MC1 need `pmopt probe`)
    probes: list[str] = field(default_factory=lambda: list(DEFAULT_PROBES))
    max_prompts_per_probe: int | None = None  # the first k records of each probe set
    n_max: int = 32  # samples per prompt (the paper's N)
    n_grid: list[int] | None = None  # default 1, 2, 4, ..., n_max
    # how the N_max samples per prompt are drawn
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    shard_size: int = 64  # prompts per sample shard (the unit of resume and of work per process)
    n_boot: int = 1000  # bootstrap resamples (of prompt clusters) for the CIs


@dataclass
class BonConfig(BonSettings):
    policy: str | None = None  # HF causal LM dir or hub id; default WORLD/policy
    world: str | None = None  # a `pmopt world` dir (a data source): default probe source, and the gold reward
    probe_sources: dict[str, str] = field(default_factory=dict)  # probe -> file or dir (default: world)
    seed: int = 0  # sampling streams and bootstrap resamples
    ci: float = 0.95  # level of the bootstrap intervals
    pms: list[PMEntry] = field(default_factory=list)  # every sample is scored by each; --set replaces the list
    # exact, or an LM judge (free-form real feedback): `pmopt probe`'s judge section; a process's unit of work
    # is 32 judge batches
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    # dtype the policy is loaded in; null = auto (the checkpoint's)
    policy_dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = None
    attn_implementation: AttnImplementation | None = None  # policy and PMs; None = transformers' default
    trust_remote_code: bool = False  # allow the model repos' own Python code
    pm_load: PMLoadOptions = field(default_factory=PMLoadOptions)  # how every PM loads (dtype, max_length, ...)
    # a policy the KL is also measured to, e.g. the base a sampled policy was fine-tuned from: curves get kl/reference
    # (the bound plus the selected sample's expected log-ratio, pmopt.bon.reference); needs temperature 1
    reference_policy: str | None = None

    def validate(self) -> None:
        if not self.policy and not self.world:
            raise ValueError("policy: required (or give world, whose policy/ is then used)")
        if self.reference_policy and (self.sampling.temperature != 1.0 or self.sampling.top_k
                                      or self.sampling.top_p < 1.0):
            raise ValueError("reference_policy: the KL to a reference is measured on the policy's own samples "
                             "(sampling.temperature 1, top_k 0, top_p 1)")
        if self.n_max < 1:
            raise ValueError("n_max must be >= 1")
        grid = self.grid()
        if any(not 1 <= n <= self.n_max for n in grid) or grid != sorted(set(grid)):
            raise ValueError(f"n_grid must be increasing integers in [1, n_max={self.n_max}], got {grid}")
        if not self.probes or len(set(self.probes)) != len(self.probes):
            raise ValueError(f"probes must be a non-empty list without repeats, got {self.probes}")
        extra = sorted(set(self.probe_sources) - set(self.probes))
        if extra:
            raise ValueError(f"probe_sources: {extra} not in probes {self.probes}")
        if not self.world and set(self.probe_sources) != set(self.probes):
            missing = sorted(set(self.probes) - set(self.probe_sources))
            raise ValueError(f"probe_sources: no source for {missing} (and no world to take them from)")
        if not self.pms:
            raise ValueError("pms: at least one PM entry is required")
        names = [pm.name for pm in self.pms]
        if len(set(names)) != len(names):
            raise ValueError(f"pms: names must be unique, got {names}")
        for pm in self.pms:
            if pm.kind not in registered_kinds() and not pm.path and not self.world:
                raise ValueError(f"pms.{pm.name}: kind {pm.kind} needs world (or a path): it is a reward of the "
                                 "data source there, such as the world's gold reward")
        checks = [(self.shard_size >= 1, "shard_size must be >= 1"), (self.n_boot >= 1, "n_boot must be >= 1"),
                  (0.0 < self.ci < 1.0, "ci must be in (0, 1)"),
                  (self.max_prompts_per_probe is None or self.max_prompts_per_probe >= 1,
                   "max_prompts_per_probe must be >= 1")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.pm_load.validate("pm_load")

    def grid(self) -> list[int]:
        return list(self.n_grid) if self.n_grid is not None else default_n_grid(self.n_max)

    def policy_path(self) -> str:
        return self.policy or str(Path(self.world) / "policy")


# ============================================================================ 2. plan


@dataclass
class SweepPlan:
    """Everything the sweep needs, loaded and checked before any file is written."""

    cfg: BonConfig
    records: list[dict]  # prompt records of every probe, in config order
    probe_of: list[str]  # the probe of each record
    probes: dict  # name -> Probe
    source: OpenSource | None  # the data source at `world` (its gold reward), or None
    prefixes: dict[str, list[dict] | None]  # PM name -> resolved prefix messages
    rewards: dict[str, RewardSpec]  # PM name -> what `pmopt.rewards.build_reward` builds for it
    sourced: frozenset[str]  # names of the entries that are a data source's reward (no model)
    gold: RewardSpec | None  # the source's gold reward, for the `gold/reward` curves (None without one)

    @property
    def grid(self) -> list[int]:
        return self.cfg.grid()

    def samples_meta(self) -> dict:
        """What the samples depend on; a resumed sweep must match it exactly."""
        prompts = json.dumps([[r["id"], r["prompt"]] for r in self.records], sort_keys=True)
        return {"format": "pmopt-bon-samples", "version": 1, "policy": self.cfg.policy_path(),
                "policy_dtype": self.cfg.policy_dtype, "seed": self.cfg.seed, "n_max": self.cfg.n_max,
                "sampling": sampling_identity(self.cfg.sampling), "shard_size": self.cfg.shard_size,
                "n_prompts": len(self.records), "prompts_sha256": hashlib.sha256(prompts.encode()).hexdigest()}

    def samples_key(self) -> str:
        """A short hash of `samples_meta`: the key of everything derived from the samples."""
        return hashlib.sha256(json.dumps(self.samples_meta(), sort_keys=True).encode()).hexdigest()[:16]


def sampling_identity(sampling: SamplingConfig) -> dict:
    """The sampling settings samples depend on. Settings added later are left out at their old default (empty
    chat_template_kwargs, backend pmopt), so samples drawn before they existed keep their meta and key; of
    the vLLM engine's settings only its dtype changes the draws (its memory and batch sizes do not)."""
    settings = to_dict(sampling)
    if not settings.get("chat_template_kwargs"):
        settings.pop("chat_template_kwargs", None)
    engine = settings.pop("vllm")
    if settings["backend"] == "pmopt":
        settings.pop("backend")
    else:
        settings["vllm_dtype"] = engine["dtype"]
    return settings


def plan_sweep(cfg: BonConfig) -> SweepPlan:
    """Check paths, load probe sets and open the data source at `world`; errors name the file and field."""
    from pmopt.policy import check_model_path
    from pmopt.probes.registry import get_probe

    _validate(cfg)
    check_model_path(cfg.policy_path(), "policy")
    if cfg.sampling.backend == "vllm":
        from pmopt.sampling_vllm import check_policy

        check_policy(cfg.policy_path(), trust_remote_code=cfg.trust_remote_code)
    if cfg.reference_policy:
        check_model_path(cfg.reference_policy, "reference_policy")
    source = sources.open_path(cfg.world, "world") if cfg.world else None
    probes = {name: get_probe(name) for name in cfg.probes}
    records, probe_of = [], []
    for name, probe in probes.items():
        loaded = probe.load(cfg.probe_sources.get(name) or cfg.world)
        if cfg.max_prompts_per_probe is not None:
            loaded = loaded[:cfg.max_prompts_per_probe]
        if not loaded:
            raise PmoptError(f"probe '{name}': no prompt records in {cfg.probe_sources.get(name) or cfg.world}")
        if not probe.samples_directly(loaded):
            raise ConfigError(f"probes: '{name}' does not grade plain samples of its prompts (a second turn, or "
                              "options scored by log-likelihood), so best-of-N cannot select among them; run it "
                              "with `pmopt probe` instead")
        records += loaded
        probe_of += [name] * len(loaded)
    _check_unique_ids(records, probe_of)
    _check_judge(cfg, probes, records, probe_of)
    prefixes, specs, sourced = {}, {}, set()
    for entry in cfg.pms:
        specs[entry.name] = entry
        if entry.kind in PM_KINDS or entry.kind == PENALTY_KIND:
            _check_pm_path(entry)
        elif entry.kind not in registered_kinds():  # a data source's own reward, e.g. the world's gold
            specs[entry.name] = _source_reward_spec(entry, source, records)
            sourced.add(entry.name)
        prefixes[entry.name] = _resolved_prefix(entry)
    gold = None
    if source is not None and "gold" in source.reward_kinds():
        gold = RewardSpec("gold", "gold", path=str(cfg.world))
    return SweepPlan(cfg, records, probe_of, probes, source, prefixes, specs, frozenset(sourced), gold)


def _validate(cfg: BonConfig) -> None:
    """A config built in Python (not through `load_config`) gets the same checks as one from YAML."""
    try:
        for part in (cfg, cfg.sampling, cfg.judge, *cfg.pms):
            part.validate()
    except ValueError as exc:
        raise ConfigError(f"<bon config>: {exc}") from None


def _check_judge(cfg: BonConfig, probes: dict, records: list[dict], probe_of: list[str]) -> None:
    for name, probe in probes.items():
        mine = [r for r, p in zip(records, probe_of, strict=True) if p == name]
        if cfg.judge.kind == "exact" and probe.needs_lm_judge(mine):
            raise ConfigError(f"probes: '{name}' grades these records with an LM judge; set judge.kind: lm and "
                              "judge.path: an HF causal LM directory")
    if cfg.judge.kind == "lm":
        from pmopt.policy import check_model_path

        check_model_path(cfg.judge.path, "judge.path")


def _check_unique_ids(records: list[dict], probe_of: list[str]) -> None:
    seen: dict[str, str] = {}
    for record, probe in zip(records, probe_of, strict=True):
        if record["id"] in seen:
            raise PmoptError(f"prompt id '{record['id']}' appears twice (probes '{seen[record['id']]}' and "
                             f"'{probe}'): sample streams and score files are keyed by id")
        seen[record["id"]] = probe


def _resolved_prefix(entry: PMEntry) -> list[dict] | None:
    try:
        return entry.resolved_prefix()
    except PmoptError as exc:  # RewardSpec names the entry; the config key is pms.<name>
        raise PmoptError(f"pms.{exc}") from None


def _check_pm_path(entry: PMEntry) -> None:
    from pmopt.hub import looks_like_hub_id

    path = Path(entry.path)
    if not path.exists() and not looks_like_hub_id(entry.path):
        raise PmoptError(f"pms.{entry.name}: path {entry.path} does not exist (and is not a hub id)")
    if entry.kind == "ensemble" and not (path / "ensemble.json").is_file():
        raise PmoptError(f"pms.{entry.name}: {path} has no ensemble.json (kind ensemble needs an ensemble dir)")


def _source_reward_spec(entry: PMEntry, default: OpenSource | None, records: list[dict]) -> RewardSpec:
    """The spec of a data source's reward (path: the source dir, default `world`), checked against the
    source's reward kinds and the prompts: it scores only that source's own records."""
    source = sources.open_path(entry.path, f"pms.{entry.name}.path") if entry.path else default
    if source is None:  # BonConfig.validate requires world or a path
        raise PmoptError(f"pms.{entry.name}: kind {entry.kind} needs world (or a path)")
    if entry.kind not in source.reward_kinds():
        raise PmoptError(f"pms.{entry.name}: unknown kind {entry.kind!r}: not a PM kind ({', '.join(PM_KINDS)}) "
                         f"nor a reward of the source '{source.source.name}' at {source.path} (it has: "
                         f"{', '.join(source.reward_kinds()) or 'none'})")
    if entry.prefix is not None:
        raise PmoptError(f"pms.{entry.name}: kind {entry.kind} takes no prefix (it is not a PM)")
    for record in records:
        if record.get("meta", {}).get("source") != source.source.name:
            raise PmoptError(f"prompt '{record['id']}': kind {entry.kind} scores {source.source.name} prompts "
                             f"only (meta.source is {record.get('meta', {}).get('source')!r})")
    return RewardSpec(entry.name, entry.kind, path=str(source.path), batch_size=entry.batch_size)


# ============================================================================ 3. the sweep


def run_bon(cfg: BonConfig, out: str | Path, accelerator=None) -> Path:
    """The whole sweep into `out` (resumes what is there); returns `out`.

    `accelerator` is anything with process_index, num_processes, is_main_process, wait_for_everyone()
    and device (an `accelerate.Accelerator` or `PartialState`); by default the current process group.
    """
    state = accelerator if accelerator is not None else process_state()
    out = Path(out)
    plan = plan_sweep(cfg)
    meta = plan.samples_meta()
    check_samples_meta(out, meta)  # every process: samples drawn under another config are an error
    if state.is_main_process:
        _start(out, cfg, meta)
    state.wait_for_everyone()
    n_shards = shard_count(len(plan.records), cfg.shard_size)
    missing = missing_shards(out, n_shards)
    state.wait_for_everyone()  # every process lists the same missing shards before any is written
    mine = missing[state.process_index::state.num_processes]
    started = time.perf_counter()
    generate_shards(out, plan.records, mine, cfg, device=state.device, rank=state.process_index,
                    world_size=state.num_processes)
    state.wait_for_everyone()
    if state.is_main_process:
        _mark(out, "samples", shards=n_shards, generated=len(missing), processes=state.num_processes,
              seconds=round(time.perf_counter() - started, 2))
    return _finish(out, plan, state)


def _start(out: Path, cfg: BonConfig, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    write_samples_meta(out, meta)
    manifest = Manifest(out)
    manifest.set("seed", cfg.seed)
    manifest.mark("bon", "running")


def _finish(out: Path, plan: SweepPlan, state) -> Path:
    """Every process: gather the shards, grade (an LM judge split across processes, exact graders on the
    main process), score with every PM (split across processes); the main process writes the curves."""
    main, device = state.is_main_process, state.device
    samples = read_samples(out, plan.records, plan.cfg)
    grades, per_process = None, []  # judge queries each process answered (rank order)
    if plan.cfg.judge.kind == "lm":
        grades = load_or_grade(out, plan, samples, _judge(plan.cfg, device), state, per_process)
    elif main:
        grades = load_or_grade(out, plan, samples)
    if main:
        _mark(out, "grades", processes=state.num_processes if plan.cfg.judge.kind == "lm" else 1,
              judge_queries_per_process=per_process)
    gold = gold_rewards(plan, samples) if plan.gold is not None and main else None
    scores = {}
    for entry in plan.cfg.pms:
        tally: list[int] = []
        scores[entry.name] = load_or_score(out, entry, plan, samples, device, state, tally)
        if main:
            _mark(out, f"scores/{entry.name}", per_process=tally)
        fault_point("bon.score")
    state.wait_for_everyone()
    if not main:
        return out
    rows = curve_rows(plan, scores, grades, gold, samples)
    if plan.cfg.reference_policy:
        ratio = reference.load_or_compute(out, plan, samples, device)
        rows += [row for pm, pm_scores in scores.items() for row in reference.reference_rows(
            pm, pm_scores, ratio, plan.grid, plan.cfg.n_boot, plan.cfg.seed, plan.cfg.ci)]
    write_curves(out, rows, "bon")
    _mark(out, "curves", rows=len(rows), support_mass=support_mass(samples))
    write_drift(out, plan, scores, grades, gold)
    Manifest(out).mark("bon", "done")
    console.info(f"bon: {len(plan.records)} prompts x {plan.cfg.n_max} samples, {len(scores)} PMs, "
          f"n in {plan.grid}: {len(rows)} curve rows in {out / 'curves.jsonl'}")
    return out


def write_drift(out: Path, plan: SweepPlan, scores: dict, grades: list[list[dict]], gold) -> None:
    """drift.json: the drift each reward predicts from these base samples (`pmopt.bon.drift`)."""
    penalties = {}
    for entry in plan.cfg.pms:
        path = out / "scores" / f"{entry.name}.penalty.json"
        if entry.kind == PENALTY_KIND and path.is_file():
            penalties[entry.name] = json.loads(path.read_text(encoding="utf-8"))
    started = time.perf_counter()
    atomic_write_json(out / DRIFT_FILE, drift_report(plan, scores, grades, gold, penalties))
    _mark(out, "drift", seconds=round(time.perf_counter() - started, 2))


def _judge(cfg: BonConfig, device):
    from pmopt.probes.judges import make_judge

    judge = dataclasses.replace(cfg.judge, trust_remote_code=cfg.judge.trust_remote_code or cfg.trust_remote_code)
    return make_judge(judge, device=str(device) if device is not None else None)


def _mark(out: Path, stage: str, **info) -> None:
    Manifest(out).mark(f"bon/{stage}", "done", **info)


def process_state():
    """The current process group (a single process when not launched distributed).

    On a machine without CUDA, `cpu=True` makes accelerate form a gloo group from torchrun's
    environment (`accelerate launch --multi_gpu`/`torchrun` on CPUs); without it each process would
    believe it is alone and sample every shard.
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


# ============================================================================ CLI


def bon_command(args) -> Path:
    """`pmopt bon CONFIG [--set k=v] [--out DIR]`."""
    if args.config is None:
        raise PmoptError("pmopt bon needs a CONFIG (e.g. configs/bon/world.yaml)")
    cfg = load_config(BonConfig, args.config, args.overrides)
    state = process_state()
    return run_bon(cfg, prepare_out_dir(agreed_out_dir(args.out, "bon", lambda: state), "bon"), accelerator=state)


__all__ = ["BonConfig", "BonSettings", "PMEntry", "SweepPlan", "plan_sweep", "run_bon", "bon_command", "process_state"]
