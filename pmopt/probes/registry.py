"""The probe registry: the only registry in pmopt (docs/ARCHITECTURE.md §2). Probes are looked up by name."""

from __future__ import annotations

from pmopt.io import PmoptError
from pmopt.probes import answer, are_you_sure, feedback, mimicry, perez_ab, truthfulness
from pmopt.probes.base import Probe

PROBES: dict[str, Probe] = {}


def register(probe: Probe) -> Probe:
    """Add a probe (e.g. a user's own, built on `pmopt.probes.base.Probe`); names are unique."""
    if not probe.name or not probe.version:
        raise ValueError(f"{type(probe).__name__}: a probe needs a name and a version")
    if probe.name in PROBES and PROBES[probe.name] is not probe:
        raise ValueError(f"a probe named '{probe.name}' is already registered")
    PROBES[probe.name] = probe
    return probe


for _module in (answer, are_you_sure, feedback, mimicry, truthfulness, perez_ab):
    register(_module.PROBE)
register(perez_ab.CHAT_PROBE)  # the same records in the policy's chat template

DEFAULT_PROBES = ("answer", "are_you_sure", "feedback", "mimicry", "truthfulness")


def get_probe(name: str) -> Probe:
    try:
        return PROBES[name]
    except KeyError:
        raise PmoptError(f"unknown probe '{name}' (known probes: {', '.join(sorted(PROBES))})") from None


def get_probes(names) -> list[Probe]:
    """Probes by name; a comma-separated string or a list; every name checked before any work."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise PmoptError(f"no probes given (known probes: {', '.join(sorted(PROBES))})")
    return [get_probe(n) for n in names]


def versions() -> dict[str, str]:
    return {name: probe.version for name, probe in sorted(PROBES.items())}
