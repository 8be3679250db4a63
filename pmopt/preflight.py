"""Checks `pmopt run` makes on every stage's config before the first stage starts (no work done).

Each stage validates its own config when it starts; these run the same checks up front, on the configs
the pipeline builds for its stages, and name the experiment key at fault.
"""

from __future__ import annotations

import importlib.util

from pmopt.config import ConfigError, validate_all
from pmopt.io import PmoptError, read_jsonl

WHERE = "experiment config"


def check_section(section: str, config) -> None:
    """`validate()` of a stage's config and of everything nested in it, the message prefixed by the stage."""
    try:
        validate_all(config)
    except ValueError as exc:
        raise ConfigError(f"{WHERE}: {section}.{exc} (checked before the first stage)") from None


def known_probes(key: str, names: list[str]) -> list:
    from pmopt.probes.registry import get_probes

    try:
        return get_probes(names)
    except PmoptError as exc:
        raise ConfigError(f"{WHERE}: {key}: {exc}") from None


def check_bon_probes(names: list[str]) -> None:
    """Best-of-N selects among plain samples; probes with a second turn run in the probes stage only."""
    for probe in known_probes("bon.probes", names):
        if not probe.samples_directly([]):
            raise ConfigError(f"{WHERE}: bon.probes: '{probe.name}' does not grade plain samples of its prompts, "
                              "so best-of-N cannot select among them (list it under probes.probes)")


def check_ppo_inputs(ppo_cfg) -> None:
    """What a PPO stage reads that exists before the run (its policy, PM and world come from the run)."""
    from pmopt.policy import check_model_path
    from pmopt.probes.registry import get_probe
    from pmopt.records import validate_prompt
    from pmopt.rl.ppo import batch_sizes

    batch_sizes(ppo_cfg, 1)
    known_probes("ppo probes.names", ppo_cfg.probes.names)
    if ppo_cfg.prompts.file and not read_jsonl(ppo_cfg.prompts.file, validate_prompt):
        raise PmoptError(f"{ppo_cfg.prompts.file}: no prompt records (ppo prompts.file)")
    for name, source in ppo_cfg.probes.sources.items():
        get_probe(name).load(source)
    if ppo_cfg.value.path:
        check_model_path(ppo_cfg.value.path, "ppo value.path")
    for tracker in ppo_cfg.report_to:
        if importlib.util.find_spec(tracker) is None:
            raise ConfigError(f"ppo report_to: {tracker!r} is not installed (pip install {tracker})")
