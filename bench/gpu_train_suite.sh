#!/usr/bin/env bash
# Training on one GPU, in one command (under 9 minutes):
#
#     bash bench/gpu_train_suite.sh [OUT_DIR]      # default OUT_DIR: experiments/gpu_train_suite
#
# 1. bench/remat_probe.py: does XLA:GPU keep rematerialised layers' intermediates (XLA:CPU does, in
#    a Python loop of layers)?
# 2. bench/memory_plan.py --devices=0 --train-examples=1: XLA:GPU's own plan for one device's share
#    of the 8-GPU FSDP train step (one example = 3 rows × 2048 tokens, the whole, unsharded trunk as
#    arguments): stage 0 at 4 and 8 layers (growth per layer), stages 0 and 2 at 24 layers (stage 4
#    cannot be planned this way: the whole trunk and its AdamW state exceed one GPU's arguments);
# 3. bench/train_step.py on configs/stage2.py:small (tokens/s, frozen vs full-trunk backward);
# 4. bench/parallel_decode.py at :small and at the GPT-OSS shape (8 of 24 layers): PDT vs the
#    sequential baseline and the machinery overhead.
# Each step has its own time limit and writes OUT_DIR/<name>.json and .log; a step that fails or
# times out is reported and the next one runs. Python and wheels as in bench/gpu_suite.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-experiments/gpu_train_suite}
PY=${PYTHON:-python3}
DRY=${GPU_SUITE_DRY_RUN:-0}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$PY" -c "import ml_collections" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/pdt-site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/pdt-site"
fi
"$PY" -c "import jax; d = jax.devices()[0]; print('jax', jax.__version__, d.platform, d.device_kind)"
if [ "$DRY" = 1 ]; then
  L4=1; L8=2; L24=2; SEQ=256; NT=8; NB=4; REP=1; DEV=1
else
  L4=4; L8=8; L24=24; SEQ=2048; NT=256; NB=128; REP=3; DEV=0
fi
run() {  # name, seconds, script, args...
  local name=$1 limit=$2 script=$3; shift 3
  echo "== $name ($limit s): $script $*" | tee -a "$OUT/summary.txt"
  local t0=$SECONDS
  timeout "$limit" "$PY" "$script" "$@" --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1
  local rc=$?
  grep -vE "^(W|I)[0-9]{4}|Warning|warn" "$OUT/$name.log" | tail -n 14 | tee -a "$OUT/summary.txt"
  echo "   rc $rc, $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
}
PLAN=(--devices="$DEV" --plans=stage0 --train-examples=1 --train-accum=1 --train-seq="$SEQ")
run remat_probe 60 bench/remat_probe.py
XLA_FLAGS="--xla_gpu_autotune_level=0" run plan_stage0_L4 90 bench/memory_plan.py "${PLAN[@]}" --config.trunk.num_layers="$L4"
XLA_FLAGS="--xla_gpu_autotune_level=0" run plan_stage0_L8 100 bench/memory_plan.py "${PLAN[@]}" --config.trunk.num_layers="$L8"
for s in 0 2; do
  XLA_FLAGS="--xla_gpu_autotune_level=0" run "plan_stage${s}_L24" 150 bench/memory_plan.py --devices="$DEV" \
      --plans="stage$s" --train-examples=1 --train-accum=1 --train-seq="$SEQ" --config.trunk.num_layers="$L24"
done
run train_step_small 100 bench/train_step.py --repeats "$REP"
run parallel_gptoss 120 bench/parallel_decode.py --config=configs/model/pdt.py --config.trunk.num_layers="$L8" \
    --new-tokens "$NB" --repeats "$REP"
echo "results in $OUT" | tee -a "$OUT/summary.txt"
