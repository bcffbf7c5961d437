#!/usr/bin/env bash
# One prepared GPU check of the distillation step (bench/gpu_check.py says what it measures).
#   bash bench/gpu_check.sh              on one H100 / H200 (<= 8 min; needs torch with CUDA and
#                                        transformers, as the device image has; nothing is downloaded)
#   bash bench/gpu_check.sh --dry-run    on CPU, tiny sizes: every part runs (tests/test_gpu_check.py)
# Writes bench/results/gpu_check.md (--out FILE to write elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec timeout 480 "$PY" bench/gpu_check.py "$@"
