#!/usr/bin/env bash
# One prepared GPU check, under 8 minutes in all (not a test; never run by CI):
#   flops          training FLOPs per image of ResNet-50 at 224 (FlopCounterMode, fwd + bwd), GPU name, bf16 peak
#   syncs          host-device synchronisations per training step (torch.cuda.set_sync_debug_mode), and where
#   imnet          train.py --fake-data, resnet50 recipe, bf16 + channels_last: img/s, fraction of the bf16 peak
#   plain          the same model the plain way (float workers, fp32, NCHW, bare loop): img/s
#   data           input pipeline img/s with all cores on the real JPEG sample (imnet, then torchvision's)
#   imnet_start    as imnet at the progressive ramp's first size (160): what a low-resolution epoch gains
#   imnet_compile  as imnet, with --compile (compile gain = its img/s over imnet's)
#   compile_steps  bench/compile.py: training step eager vs compiled, compile time at 160 then 224 (the
#                  recompilation at a new size that progressive resolution causes), steady-state speedup
# Each section runs under its own time limit; one that times out or fails is reported as such and the rest go on.
# Results: one JSON object in $OUT/gpu_check.json when $OUT is set, else on stdout.
#
#   bash bench/gpu_check.sh
#   IMNET_GPU_CHECK_SMOKE=1 bash bench/gpu_check.sh   # tiny sizes on a CPU: checks the script end to end
# Settings (IMNET_GPU_CHECK_MODEL, _BATCH, _STEPS, ..., IMNET_PEAK_TFLOPS): see bench/gpu_train.py.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
BUDGET=${IMNET_GPU_CHECK_BUDGET:-460}  # seconds for all sections; the merge takes a few more
work=$(mktemp -d /tmp/imnet-gpu-check.XXXXXX)
smoke=${IMNET_GPU_CHECK_SMOKE:-0}

section() {  # section NAME LIMIT_SECONDS
  local name=$1 limit=$2 left=$((BUDGET - SECONDS))
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  if [ "$limit" -lt 5 ]; then
    echo "skipped 0 0" > "$work/$name.status"; echo "skipped: no time left in the budget" > "$work/$name.log"; return
  fi
  local t0=$SECONDS
  echo "[gpu_check] $name (limit ${limit}s)" >&2
  timeout -k 5 "$limit" "$PY" bench/gpu_train.py "$name" --json "$work/$name.json" > "$work/$name.log" 2>&1
  local rc=$?
  echo "$rc $limit $((SECONDS - t0))" > "$work/$name.status"
  echo "[gpu_check] $name: rc $rc in $((SECONDS - t0))s" >&2
}

if [ "$smoke" = "0" ] && command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv > "$work/nvidia-smi.txt" 2>&1
fi
section flops 25
section syncs "$([ "$smoke" = "0" ] && echo 25 || echo 60)"  # a slow CPU needs longer in the smoke test
section imnet 60
section plain 55
section data 40
section imnet_start 50
if [ "$smoke" = "0" ] || [ "${IMNET_GPU_CHECK_SMOKE_COMPILE:-0}" != "0" ]; then
  section imnet_compile 150
  section compile_steps 170  # whatever is left of the budget
fi

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  "$PY" bench/gpu_train.py merge "$work" > "$OUT/gpu_check.json"
  cp "$work"/*.log "$OUT"/ 2>/dev/null
  [ -f "$work/nvidia-smi.txt" ] && cp "$work/nvidia-smi.txt" "$OUT"/
  echo "[gpu_check] wrote $OUT/gpu_check.json in ${SECONDS}s" >&2
  cat "$OUT/gpu_check.json"
else
  "$PY" bench/gpu_train.py merge "$work"
  echo "[gpu_check] done in ${SECONDS}s; section logs in $work" >&2
fi
