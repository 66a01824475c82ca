#!/usr/bin/env bash
# The GPU check, one table in at most 8 minutes on a bare machine with one GPU (not a test; see bench/README.md):
#   bash bench/gpu_check.sh                          # exits 2 at once when torch sees no CUDA
#   IMNET_GPU_CHECK_SMOKE=1 bash bench/gpu_check.sh  # every row on the CPU at tiny sizes: tests the check itself
# Rows and settings: bench/gpu_train.py's docstring. With $OUT set, also $OUT/gpu_check.json and each command's
# log in $OUT/gpu_check_logs/.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ "${IMNET_GPU_CHECK_SMOKE:-0}" = "0" ] && command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv >&2
fi
exec "$PY" bench/gpu_train.py
