#!/usr/bin/env bash
# Every GPU figure of docs/gpu.md in one command, from the bare GPU image (Python 3.12, torch, transformers,
# accelerate, peft, pyarrow; no trl, no datasets) and the repo root, with nothing downloaded there:
#
#   benchmarks/gpu_device.sh                      # on the GPU: real sizes, bf16, files under $OUT, <= 8 min
#   benchmarks/gpu_device.sh --sizes tiny --cpu --out /tmp/dry   # the dry run on a CPU machine
#
# It installs the wheels benchmarks/gpu_wheels.sh put in .whl/ (trl, datasets and their needs the image
# lacks) and pmopt itself, each with --no-deps, into a folder on PYTHONPATH, then runs
# benchmarks/gpu_device.py (its --help lists the other flags). --no-install uses the Python environment as
# it is (a machine where pmopt and its dependencies are installed already, as in the test).
set -uo pipefail
cd "$(dirname "$0")/.."
export PMOPT_DEVICE_T0="$(date +%s.%N)" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# The GPU machine reaches no network: a library that tried the hub would wait for a timeout, not fail fast.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

install=1
args=()
for arg in "$@"; do
  if [ "$arg" = "--no-install" ]; then install=0; else args+=("$arg"); fi
done

if [ "$install" = 1 ]; then
  site="${PMOPT_SITE:-/tmp/pmopt-site}"
  shopt -s nullglob
  wheels=(.whl/*.whl)
  shopt -u nullglob
  if [ "${#wheels[@]}" = 0 ]; then
    echo "gpu_device.sh: no wheels in .whl/: run benchmarks/gpu_wheels.sh here first (or pass --no-install)" >&2
    exit 2
  fi
  pip=(python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site")
  "${pip[@]}" "${wheels[@]}" || { echo "gpu_device.sh: installing .whl/ failed" >&2; exit 3; }
  # pmopt from this checkout, built with the image's setuptools (no index to fetch a build backend from);
  # should that fail, the checkout on PYTHONPATH still imports (env.json then shows pmopt not installed)
  "${pip[@]}" --no-build-isolation . || echo "gpu_device.sh: installing pmopt failed; using the checkout" >&2
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  echo "gpu_device.sh: installed ${#wheels[@]} wheels and pmopt into $site in $(python3 -c \
    "import time; print(round(time.time() - $PMOPT_DEVICE_T0, 1))") s"
fi

exec python3 benchmarks/gpu_device.py "${args[@]}"
