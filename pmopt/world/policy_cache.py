"""One pretraining shared by the runs that would repeat it (docs/ARCHITECTURE.md §5).

A sweep over a key that pretraining does not read (the raters, the pairs, the PMs, best-of-N) would pretrain the
same base policy once per value: about 40% of a default-world cell. Its cells share RUN/policy_cache/: the first
cell that needs a policy pretrains it while holding the entry's lock and files a copy; a cell that needs the same
policy waits on the lock, then copies it. An entry is named by what the training trajectory depends on (the
pretraining checkpoints' fingerprint: config less execution knobs, seed and tokenized corpus) and the vocabulary,
so a cached policy is the one the cell would have trained itself: byte for byte on the same machine and software.
An entry appears by one rename after it is complete, so a killed cell leaves none half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from pmopt.io import atomic_write_json, exclusive_lock
from pmopt.world.checkpoints import fingerprint

STATS = "pretraining.json"  # the pretraining stats of the cell that trained the entry


def policy_key(policy_cfg, seed: int, examples: list, vocabulary: dict[str, int]) -> str:
    digest = hashlib.sha256(fingerprint(policy_cfg, seed, examples).encode())
    digest.update(json.dumps(sorted(vocabulary.items())).encode())
    return digest.hexdigest()[:16]


def cached_pretrain(cache: Path, key: str, out_dir: Path, pretrain: Callable[[], dict]) -> dict:
    """The policy of entry `key` in `out_dir`: copied from the cache, or pretrained by `pretrain()` (which writes
    `out_dir` and returns its stats) and then filed; returns the pretraining stats."""
    cache.mkdir(parents=True, exist_ok=True)
    entry = cache / key
    with exclusive_lock(cache / f"{key}.lock"):
        if (entry / STATS).is_file():
            _copy_dir(entry, out_dir, skip=STATS)
            return json.loads((entry / STATS).read_text(encoding="utf-8"))
        stats = pretrain()
        partial = cache / f"{key}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(out_dir, partial)
        atomic_write_json(partial / STATS, stats)
        os.replace(partial, entry)
    return stats


def _copy_dir(source: Path, target: Path, skip: str) -> None:
    """`source` (less `skip`) as `target`, replacing whatever a killed copy left there."""
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, ignore=shutil.ignore_patterns(skip))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
