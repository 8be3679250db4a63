"""Fault injection for tests of crash and resume: `PMOPT_FAULT=<site>:<count>` makes the count-th pass
through `fault_point(site)` in this process raise `InjectedFault`, as a crash at that point would;
`PMOPT_FAULT=<site>:<count>:kill` makes the process SIGKILL itself there instead (no unwinding, no
cleanup, no atexit: what `kill -9` does), so a test can kill a subprocess at an exact point.

Unset (the normal case) it costs one environment lookup per call. Sites:
  pretrain.step   the start of each world-pretraining step
  pm.step         the end of each PM-training optimizer step (a Trainer callback)
  pm.save         inside a PM Trainer checkpoint: model written, optimizer and trainer state not yet
  bon.shard       after each best-of-N sample shard is written
  bon.score       after each PM's best-of-N score file is written
  probe.write     `pmopt probe`: after grades.jsonl, before metrics.json
  ppo.step        the start of each PPO step
  ppo.save        inside a PPO checkpoint: files in its temporary folder, not yet renamed into place
  report.write    `pmopt run`'s report stage: after fits.json, before the HTML report
  sft.step        the end of each `pmopt intervene` SFT optimizer step (a Trainer callback)
"""

from __future__ import annotations

import os
import signal

ENV = "PMOPT_FAULT"
_hits: dict[str, int] = {}


class InjectedFault(RuntimeError):
    """A simulated crash; deliberately not a PmoptError (it is not the user's input)."""


def fault_point(site: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, rest = spec.partition(":")
    if target != site:
        return
    count, _, action = rest.partition(":")
    _hits[site] = _hits.get(site, 0) + 1
    if _hits[site] == int(count or 1):
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise InjectedFault(f"{ENV}={spec}: injected fault at {site} (pass {_hits[site]})")


def reset_faults() -> None:
    """Forget how often each site was reached (tests run several 'processes' in one)."""
    _hits.clear()
