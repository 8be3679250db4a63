#!/usr/bin/env bash
# Regenerate the lock, constraints/cpu-py311.txt: a fresh venv, the CPU torch wheel, `pip install -e ".[dev]"`
# unpinned (so the newest releases pyproject.toml allows), then `pip freeze`. torch is written without its
# local label (`+cpu`), so the same lock also admits the CUDA build of the same release.
#
# The lock and the reference numbers go together: after a new lock, rerun the quickstart under it and
# rewrite the README's blocks (docs/reproduce.md: `scripts/reference_numbers.py`), in the same commit.
#   bash scripts/make_lock.sh            # PYTHON=python3.11 by default
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3.11}"
venv="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$venv")"' EXIT
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q torch==2.13.0
"$venv/bin/python" -m pip install -q -e ".[dev]"
{
  echo "# The lock: every package of \`pip install -e \".[dev]\"\` at the version the documented numbers were made with"
  echo "# ($("$venv/bin/python" --version), $(uname -m) Linux, CPU torch). Install with"
  echo "#   pip install torch==2.13.0 && pip install -e \".[dev]\" -c constraints/cpu-py311.txt"
  echo "# Regenerate with scripts/make_lock.sh (docs/reproduce.md); do not edit by hand."
  "$venv/bin/python" -m pip freeze --exclude-editable | sed -E 's/^torch==([^+]+)\+cpu$/torch==\1/'
} > constraints/cpu-py311.txt
echo "wrote constraints/cpu-py311.txt ($(grep -vc '^#' constraints/cpu-py311.txt) packages)"
