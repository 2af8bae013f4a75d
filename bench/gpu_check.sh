#!/usr/bin/env bash
# One command on a GPU node (under 8 minutes on one H200, nothing downloaded):
#   bench/gpu_check.sh                 DIVER recovery vs plain DiT (DiT-XL/2 256 px) and EDITS SD 1.5
#                                      img2img at real sizes with random weights; s/image and peak memory
#                                      (bf16 where the GPU has it, SDPA, channels_last; --compile optional)
#   bench/gpu_check.sh --cpu-smoke     the same code with tiny models on the CPU (seconds; a dry run)
# Results: bench/results/gpu_check.json (read by `semdistill plan`); the last line is `ratio: <number>`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" bench/gpu_check.py "$@"
