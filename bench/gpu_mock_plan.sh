#!/usr/bin/env bash
# The 8-GPU training memory plan on one GPU (under 10 minutes):
#
#     bash bench/gpu_mock_plan.sh [OUT_DIR]      # default OUT_DIR: experiments/gpu_mock_plan
#
# bench/memory_plan.py --mock-gpus=8: the real GPU poses as one of eight one-GPU hosts (jax's mock
# NCCL topology), so XLA:GPU compiles the production FSDP train step for the whole mesh — sharded
# parameters and AdamW state, FSDP all-gathers and reduce-scatters, remat, 24 layers, 8 examples ×
# 3 streams × 2048 tokens per micro-batch, 2 micro-batches — and reports one device's plan; nothing
# runs. Stage 4 (the whole trunk trainable) first, then stages 2, 3, 0, 1 (STAGES="4 2" to choose;
# LIMIT=seconds per plan, default 540: the 24-layer stage-4 step did not compile within 175 s on an
# H200). SMOKE=1 first checks the mechanism on a 2-layer stage-4 plan (about 60 s). Each plan has its
# own time limit and writes OUT_DIR/<name>.json and .log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-experiments/gpu_mock_plan}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0"
if ! "$PY" -c "import ml_collections" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/pdt-site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/pdt-site"
fi
run() {  # name, seconds, args...
  local name=$1 limit=$2; shift 2
  echo "== $name ($limit s): bench/memory_plan.py $*" | tee -a "$OUT/summary.txt"
  local t0=$SECONDS
  timeout "$limit" "$PY" bench/memory_plan.py --mock-gpus=8 --train-seq=2048 "$@" --json "$OUT/$name.json" \
      > "$OUT/$name.log" 2>&1
  local rc=$?
  grep -vE "^(W|I)[0-9]{4}|Warning|warn" "$OUT/$name.log" | tail -n 12 | tee -a "$OUT/summary.txt"
  echo "   rc $rc, $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
}
[ "${SMOKE:-0}" = 1 ] && run smoke_stage4_L2 90 --plans=stage4 --config.trunk.num_layers=2
for s in ${STAGES:-4 2 3 0 1}; do
  run "stage${s}_L24" "${LIMIT:-540}" --plans="stage$s" --config.trunk.num_layers=24
done
echo "results in $OUT" | tee -a "$OUT/summary.txt"
