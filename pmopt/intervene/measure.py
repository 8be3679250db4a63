"""What the intervention is judged by, measured the same way on the policy before and after it: the probes
(`pmopt probe`'s evaluation) and the best-of-N sweep (`pmopt bon`'s), each with the seed of the run, so the
two policies answer the same prompts from the same random streams."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from pmopt.bon.sweep import BonConfig, BonSettings, PMEntry, run_bon
from pmopt.intervene.config import InterventionConfig
from pmopt.probes.run import ProbeRunConfig, ProbeSettings, run_probe_config


def settings(section, settings_cls) -> dict:
    """The fields of `settings_cls` (a command's embedded settings) taken from a config section."""
    return {f.name: copy.deepcopy(getattr(section, f.name)) for f in dataclasses.fields(settings_cls)}


def probe_config(cfg: InterventionConfig, policy: Path, world: Path) -> ProbeRunConfig:
    return ProbeRunConfig(**settings(cfg.probes, ProbeSettings), policy=str(policy), world=str(world), seed=cfg.seed)


def bon_pms(pms_dir: Path | None) -> list[PMEntry]:
    """The main job's PMs where the base came from a run (proxy, its prefixed form, unbiased), and gold."""
    pms = []
    if pms_dir is not None and (pms_dir / "proxy").is_dir():
        pms += [PMEntry(name="proxy", path=str(pms_dir / "proxy")),
                PMEntry(name="proxy-nonsyc", path=str(pms_dir / "proxy"), kind="prefixed")]
    if pms_dir is not None and (pms_dir / "unbiased").is_dir():
        pms.append(PMEntry(name="unbiased", path=str(pms_dir / "unbiased")))
    return pms + [PMEntry(name="gold", kind="gold")]


def bon_config(cfg: InterventionConfig, policy: Path, world: Path, pms_dir: Path | None,
               reference: Path | None = None) -> BonConfig:
    """The sweep on `policy`; with `reference` (the base, for the fine-tuned policy) its curves also carry
    `kl/reference`, the KL of best-of-n to the base, so both policies' curves share one KL axis."""
    return BonConfig(**settings(cfg.bon, BonSettings), policy=str(policy), world=str(world), seed=cfg.seed,
                     pms=bon_pms(pms_dir), reference_policy=str(reference) if reference is not None else None)


def measure(cfg: InterventionConfig, policy: Path, world: Path, pms_dir: Path | None, out: Path,
            reference: Path | None = None) -> None:
    """OUT/probes/ (metrics.json, grades.jsonl) and, with bon.enabled, OUT/bon/ (curves.jsonl)."""
    run_probe_config(probe_config(cfg, policy, world), out / "probes")
    if cfg.bon.enabled:
        run_bon(bon_config(cfg, policy, world, pms_dir, reference), out / "bon")


__all__ = ["measure", "probe_config", "bon_config", "bon_pms"]
