"""Fault injection for tests of crash and resume: `PMOPT_FAULT=<site>:<count>` makes the count-th pass
through `fault_point(site)` in this process raise `InjectedFault`, as a crash at that point would.

Unset (the normal case) it costs one environment lookup per call. Sites: `pretrain.step` (the start of
each world-pretraining step).
"""

from __future__ import annotations

import os

ENV = "PMOPT_FAULT"
_hits: dict[str, int] = {}


class InjectedFault(RuntimeError):
    """A simulated crash; deliberately not a PmoptError (it is not the user's input)."""


def fault_point(site: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != site:
        return
    _hits[site] = _hits.get(site, 0) + 1
    if _hits[site] == int(count or 1):
        raise InjectedFault(f"{ENV}={spec}: injected fault at {site} (pass {_hits[site]})")


def reset_faults() -> None:
    """Forget how often each site was reached (tests run several 'processes' in one)."""
    _hits.clear()
