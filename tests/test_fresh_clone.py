"""A fresh clone installs with the lock and reproduces the tiny world's documented headline (docs/reproduce.md).

Clones this repository's HEAD (committed files only, as a newcomer gets them) into a temporary directory,
makes a venv, installs `torch==2.13.0` and `-e ".[dev]" -c constraints/cpu-py311.txt`, checks that the venv
holds exactly the lock, runs `OMP_NUM_THREADS=1 pmopt run configs/experiments/tiny.yaml` there and compares its
headline with the documented one through `scripts/reference_numbers.py check-tiny`: equal where the CPU model,
torch's CPU kernels, Python, packages and thread count are the documented ones, within the documented bounds
anywhere else (CI's CPU model varies). Slow: about 2 minutes of installing (pip's cache warm, as after
.ci/run's own install) and 2-3 of the tiny run on an idle 2-core machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow

LOCK = "constraints/cpu-py311.txt"


def run(argv: list[str], cwd, env=None, timeout: int = 1200) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def locked_lines(path) -> list[str]:
    return sorted(line.strip().lower() for line in path.read_text(encoding="utf-8").splitlines()
                  if line.strip() and not line.startswith("#"))


def test_a_fresh_clone_installed_with_the_lock_reproduces_the_tiny_headline(tmp_path):
    if sys.version_info[:2] != (3, 11):
        pytest.skip(f"{LOCK} is the lock for Python 3.11 (this is {sys.version.split()[0]})")
    clone, venv = tmp_path / "pmopt", tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    python = str(venv / "bin" / "python")

    start = time.perf_counter()
    run(["git", "clone", "--quiet", str(REPO), str(clone)], tmp_path)
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    run([python, "-m", "pip", "install", "-q", "torch==2.13.0"], clone, env)
    run([python, "-m", "pip", "install", "-q", "-e", ".[dev]", "-c", LOCK], clone, env)
    installed = run([python, "-m", "pip", "freeze", "--exclude-editable"], clone, env).stdout
    installed = sorted(line.strip().lower().replace("+cpu", "") for line in installed.splitlines() if line.strip())
    assert installed == locked_lines(clone / LOCK)
    install_s = time.perf_counter() - start

    start = time.perf_counter()
    run([str(venv / "bin" / "pmopt"), "-q", "run", "configs/experiments/tiny.yaml", "--out", "checkpoints/tiny"],
        clone, env)
    run_s = time.perf_counter() - start
    check = subprocess.run([python, "scripts/reference_numbers.py", "check-tiny", "checkpoints/tiny"], cwd=clone,
                           env=env, capture_output=True, text=True, timeout=300)
    print(f"install {install_s:.0f} s, tiny run {run_s:.0f} s\n{check.stdout}{check.stderr}")
    assert check.returncode == 0, check.stdout + check.stderr
