"""`pmopt probe --policy DIR --probes a,b [CONFIG] [--set k=v] --out DIR`: run probe sets on a policy.

1. plan: resolve the probes (unknown names are an error listing the known ones), load and validate
   every probe set, check the judge, load the policy; nothing is written before all of this passes.
2. respond: each probe's prompts are sampled in one batched call (`pmopt.sampling.sample`);
   are_you_sure adds the challenged second turn; MC1 scores options by log-likelihood.
3. grade: every sample with its probe's pure grader (a batched LM judge where one is needed).
4. metrics: per prompt, the mean outcome over its samples (the expectation under the policy); the
   probe's metrics of those, with 95% bootstrap intervals over prompt clusters.
Writes OUT/grades.jsonl (docs/ARCHITECTURE.md §4 grade rows + response), OUT/metrics.json, config.yaml, manifest.json.

`run_probes(model, tokenizer, probe_names, sources, cfg)` is the same evaluation as a function
(best-of-N and PPO call it on their own policies).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pmopt import console
from pmopt import sources as data_sources  # `sources` is the probe -> file mapping here
from pmopt.config import dump_yaml, load_config
from pmopt.faults import fault_point
from pmopt.io import (
    Manifest,
    PmoptError,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    prepare_out_dir,
)
from pmopt.policy import AttnImplementation, check_device
from pmopt.probes.base import Probe, Sample, mean_outcomes
from pmopt.probes.judges import EXACT, Judge, JudgeConfig, grade_batched, make_judge
from pmopt.probes.registry import DEFAULT_PROBES, get_probes
from pmopt.probes.stats import bootstrap_metrics
from pmopt.sampling import SamplingConfig, close_engines


@dataclass
class ProbeSettings:
    """Which probes and how many samples: the part of `ProbeRunConfig` that `pmopt run` embeds as `probes`."""

    probes: list[str] = field(default_factory=lambda: list(DEFAULT_PROBES))  # `--probes a,b` overrides
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # how responses are sampled
    samples_per_prompt: int = 4  # responses per prompt; a prompt's outcome is their mean
    max_prompts: int = 0  # per probe, rounded down to whole clusters (a question's templates); 0 = all
    n_boot: int = 1000  # bootstrap resamples of prompt clusters for the 95% intervals

    def validate(self) -> None:
        if self.samples_per_prompt < 1:
            raise ValueError("samples_per_prompt must be >= 1")
        if self.max_prompts < 0 or self.n_boot < 0:
            raise ValueError("max_prompts and n_boot must be >= 0")
        if len(set(self.probes)) != len(self.probes):
            raise ValueError(f"probes: repeated names in {self.probes}")


@dataclass
class ProbeRunConfig(ProbeSettings):
    policy: str | None = None  # HF causal LM directory (or hub id); `--policy` overrides
    world: str | None = None  # a `pmopt world` dir: the default source of every probe
    sources: dict[str, str] = field(default_factory=dict)  # probe -> file or dir, overriding `world`
    seed: int = 0  # sampling streams (keyed by prompt id) and bootstrap resamples
    loglik_batch_size: int = 16  # sequences per forward pass when scoring MC1 options
    dtype: str | None = None  # policy weights dtype: auto, float32, bfloat16, float16; null = auto
    device: str | None = None  # policy device, e.g. cuda:0; null = cuda if present, else cpu
    trust_remote_code: bool = False  # allow the policy repo's own Python code
    attn_implementation: AttnImplementation | None = None  # the policy's; None = transformers' default
    # who grades free-form answers without a known truth
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    def validate(self) -> None:
        super().validate()
        try:
            check_device(self.device)
        except PmoptError as exc:
            raise ValueError(f"device: {exc}") from None


# ----------------------------------------------------------------------------- 1. plan


def default_world(policy: str | None) -> str | None:
    """A policy inside a source directory with probe sets (a world: WORLD/policy, WORLD/probes) takes its
    probe sets from that directory."""
    if not policy:
        return None
    parent = Path(policy).parent
    if (parent / "probes").is_dir() and data_sources.is_source_dir(parent):
        return str(parent)
    return None


def resolve_sources(cfg: ProbeRunConfig) -> dict[str, str]:
    """Probe -> source: `sources[probe]`, else `world`, else the world the policy sits in.

    Sources of registered probes that are not being run are ignored (`--probes answer` with a config
    that lists sources for every probe)."""
    get_probes(list(cfg.sources) or cfg.probes)  # a misspelt probe name in `sources` is an error, not ignored
    fallback = cfg.world or default_world(cfg.policy)
    out = {}
    for name in cfg.probes:
        source = cfg.sources.get(name) or fallback
        if not source:
            raise PmoptError(f"no source for probe '{name}': set world=DIR (a `pmopt world` output) "
                             f"or sources.{name}=FILE")
        out[name] = source
    return out


def limit_clusters(probe: Probe, records: list[dict], max_prompts: int) -> list[dict]:
    """The first records up to `max_prompts`, keeping clusters whole (at least one cluster)."""
    if not max_prompts or len(records) <= max_prompts:
        return records
    order: dict[str, list[dict]] = {}
    for record in records:
        order.setdefault(probe.cluster(record), []).append(record)
    kept: list[dict] = []
    for group in order.values():
        if kept and len(kept) + len(group) > max_prompts:
            break
        kept += group
    return kept


def load_probe_sets(probe_names: str | Sequence[str], sources: dict[str, str] | str | Path,
                    max_prompts: int = 0) -> dict[str, tuple[Probe, list[dict]]]:
    """Every probe's validated prompt records (errors name file, line and field), before any model work."""
    probes = get_probes(probe_names)
    sets = {}
    for probe in probes:
        source = sources if isinstance(sources, (str, Path)) else sources.get(probe.name)
        if source is None:
            raise PmoptError(f"no source for probe '{probe.name}'")
        records = limit_clusters(probe, probe.load(source), max_prompts)
        if not records:
            raise PmoptError(f"{source}: no prompt records for probe '{probe.name}'")
        sets[probe.name] = (probe, records)
    return sets


def check_judge(sets: dict[str, tuple[Probe, list[dict]]], judge_cfg: JudgeConfig) -> None:
    for name, (probe, records) in sets.items():
        if judge_cfg.kind == "exact" and probe.needs_lm_judge(records):
            raise PmoptError(f"probe '{name}': free-form feedback needs an LM judge "
                             "(--set judge.kind=lm --set judge.path=DIR)")


# ----------------------------------------------------------------------------- 2-4. respond, grade, metrics


def grade_samples(probe: Probe, records: Sequence[dict], samples: Sequence[Sequence[Sample]],
                  judge: Judge = EXACT, contexts: list[list[dict]] | None = None) -> list[list[dict]]:
    """Outcomes of every sample (`out[i][j]` for sample j of record i); judge queries are batched."""
    contexts = contexts if contexts is not None else probe.grading_context(records, samples)
    calls, shape = [], []
    for record, row, ctx_row in zip(records, samples, contexts, strict=True):
        for s, ctx in zip(row, ctx_row, strict=True):
            calls.append(lambda j, _r=record, _s=s, _c=ctx: probe.grade(_r, _s.response, judge=j, **_c))
        shape.append(len(row))
    flat = iter(grade_batched(calls, judge))
    return [[next(flat) for _ in range(size)] for size in shape]


def grade_rows(probe: Probe, records: Sequence[dict], samples, outcomes, contexts) -> list[dict]:
    """docs/ARCHITECTURE.md §4 grade rows, with the response and the grading context (second turn, baseline, …)."""
    rows = []
    for record, row, graded, ctx_row in zip(records, samples, outcomes, contexts, strict=True):
        for j, (s, o, ctx) in enumerate(zip(row, graded, ctx_row, strict=True)):
            entry = {"prompt_id": record["id"], "sample_idx": j, "probe": probe.name, "outcomes": o,
                     "response": s.response}
            if ctx:
                entry["context"] = ctx
            rows.append(entry)
    return rows


def as_metric_rows(values: dict[str, tuple[float, float, float]]) -> dict[str, dict]:
    return {k: {"value": v, "ci_low": lo, "ci_high": hi} for k, (v, lo, hi) in values.items()}


def evaluate(model, tokenizer, sets: dict[str, tuple[Probe, list[dict]]], cfg: ProbeRunConfig,
             judge: Judge = EXACT, log: Callable[[str], None] | None = None) -> tuple[list[dict], dict[str, dict]]:
    grades, metrics = [], {}
    for name, (probe, records) in sets.items():
        start = time.perf_counter()
        samples = probe.respond(model, tokenizer, records, cfg.samples_per_prompt, cfg.sampling, cfg.seed,
                                cfg.loglik_batch_size)
        contexts = probe.grading_context(records, samples)
        outcomes = grade_samples(probe, records, samples, judge, contexts)
        grades += grade_rows(probe, records, samples, outcomes, contexts)
        per_prompt = [mean_outcomes(row) for row in outcomes]
        metrics.update(as_metric_rows(bootstrap_metrics(probe, records, per_prompt, cfg.n_boot, cfg.seed)))
        if log:
            log(f"probe {name} (v{probe.version}): {len(records)} prompts x {max(map(len, samples))} samples "
                f"in {time.perf_counter() - start:.1f} s")
    return grades, metrics


def run_probes(model, tokenizer, probe_names: str | Sequence[str], sources: dict[str, str] | str | Path,
               cfg: ProbeRunConfig | None = None, judge: Judge | None = None,
               log: Callable[[str], None] | None = None) -> tuple[list[dict], dict[str, dict]]:
    """Probe a loaded policy: (grade rows, {metric: {value, ci_low, ci_high}}).

    `sources` maps probe -> world dir or file (or is one world dir for all). `judge` defaults to the
    one `cfg.judge` describes (loaded here), the exact judge unless configured otherwise.
    """
    cfg = cfg or ProbeRunConfig()
    sets = load_probe_sets(probe_names, sources, cfg.max_prompts)
    if judge is None:
        check_judge(sets, cfg.judge)
        judge = make_judge(cfg.judge)
    return evaluate(model, tokenizer, sets, cfg, judge, log)


# ----------------------------------------------------------------------------- the command


def format_table(metrics: dict[str, dict]) -> str:
    width = max((len(k) for k in metrics), default=10)
    lines = [f"{'metric':<{width}}  {'value':>8}  95% CI"]
    for key, row in metrics.items():
        value = "nan" if _nan(row["value"]) else f"{row['value']:.3f}"
        ci = "" if _nan(row["ci_low"]) else f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
        lines.append(f"{key:<{width}}  {value:>8}  {ci}")
    return "\n".join(lines)


def _nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _json_safe(metrics: dict[str, dict]) -> dict[str, dict]:
    """NaN (an undefined metric, e.g. no initially correct answers) is written as null."""
    return {k: {f: (None if _nan(v) else v) for f, v in row.items()} for k, row in metrics.items()}


def probe_command(args) -> Path:
    cfg = load_config(ProbeRunConfig, args.config, args.overrides)
    if getattr(args, "policy", None):
        cfg.policy = args.policy
    if getattr(args, "probes", None):
        cfg.probes = [n.strip() for n in args.probes.split(",") if n.strip()]
    return run_probe_config(cfg, args.out)


def run_probe_config(cfg: ProbeRunConfig, out: str | Path | None = None) -> Path:
    """Validate everything (probe names, sources, judge, policy), then sample, grade and write `out`."""
    if not cfg.policy:
        raise PmoptError("pmopt probe needs a policy (--policy DIR or policy: in the config)")
    get_probes(cfg.probes)  # unknown names fail first, listing the known ones
    sources = resolve_sources(cfg)
    sets = load_probe_sets(cfg.probes, sources, cfg.max_prompts)
    check_judge(sets, cfg.judge)
    if cfg.sampling.backend == "vllm":
        from pmopt.sampling_vllm import check_policy

        check_policy(cfg.policy, trust_remote_code=cfg.trust_remote_code)

    from pmopt.policy import load_policy

    model, tokenizer = load_policy(cfg.policy, dtype=cfg.dtype, device=cfg.device,
                                   trust_remote_code=cfg.trust_remote_code, attn_implementation=cfg.attn_implementation)
    judge = make_judge(cfg.judge)
    out = prepare_out_dir(out, "probe")
    atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    manifest = Manifest(out)
    manifest.set("seed", cfg.seed)
    manifest.set("probes", {name: {"version": probe.version, "source": str(sources[name]), "prompts": len(records)}
                            for name, (probe, records) in sets.items()})
    manifest.mark("probe", "running")
    grades, metrics = evaluate(model, tokenizer, sets, cfg, judge, log=print)
    close_engines()
    atomic_write_jsonl(out / "grades.jsonl", grades)
    fault_point("probe.write")
    atomic_write_json(out / "metrics.json", _json_safe(metrics))
    manifest.mark("probe", "done")
    console.info(format_table(metrics))
    return out
