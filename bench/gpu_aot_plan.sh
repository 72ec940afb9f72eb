#!/usr/bin/env bash
# The 8-GPU training memory plan without a GPU (deviceless XLA:GPU, ahead of time):
#
#     bash bench/gpu_aot_plan.sh [OUT_DIR]     # default OUT_DIR: experiments/gpu_aot_plan
#
# bench/memory_plan.py --gpu-target=$TARGET: XLA:GPU compiles the production FSDP train step of each
# stage for 8 GPUs of a described kind (H100 by default) — sharded parameters and AdamW state, FSDP
# all-gathers and reduce-scatters, remat, 24 layers, 8 examples × 3 streams × 2048 tokens per
# micro-batch, 2 micro-batches — and reports one device's plan; nothing runs and no GPU is needed.
# jax's CUDA plugin (jax-cuda13-plugin / -pjrt at the installed jax's version, ~400 MB, no CUDA
# libraries or driver) goes to .gpuaot/site, outside the project's venv, the first time.
# The 24-layer step needs more than 70 GB of host memory to compile (killed on a 23 GB VM with 47 GB
# of swap): by default each stage is planned at 2 and 4 layers and the per-layer growth carried to
# 24 (printed as an extrapolation, not a plan).
# Env: STAGES="4 3" (order), LAYERS="2 4", TARGET=h100|h200, LIMIT=seconds per plan (default 5400).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-experiments/gpu_aot_plan}
PY=${PYTHON:-.venv/bin/python}
SITE=.gpuaot/site
mkdir -p "$OUT"
if [ ! -d "$SITE/jax_plugins" ]; then
  ver=$("$PY" -c "import jax; print(jax.__version__)") || exit 1
  "$PY" -m pip download -q --no-deps --only-binary=:all: -d .gpuaot/wheels \
      "jax-cuda13-plugin==$ver" "jax-cuda13-pjrt==$ver" || exit 1
  "$PY" -m pip install -q --no-deps --no-compile --target "$SITE" .gpuaot/wheels/*.whl || exit 1
fi
export PYTHONPATH="$PWD:$PWD/$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
for s in ${STAGES:-4 3}; do
  for L in ${LAYERS:-2 4}; do
    name="stage${s}_L${L}_${TARGET:-h100}"
    echo "== $name: bench/memory_plan.py --gpu-target=${TARGET:-h100} --plans=stage$s" | tee -a "$OUT/summary.txt"
    t0=$SECONDS
    timeout "${LIMIT:-5400}" "$PY" bench/memory_plan.py --gpu-target="${TARGET:-h100}" --plans="stage$s" \
        --train-seq=2048 --config.trunk.num_layers="$L" --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1
    rc=$?
    grep -vE "^(W|I)[0-9]{4}|Warning|warn" "$OUT/$name.log" | tail -n 8 | tee -a "$OUT/summary.txt"
    echo "   rc $rc, $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
  done
  "$PY" - "$OUT" "$s" "${TARGET:-h100}" ${LAYERS:-2 4} <<'PYEOF' | tee -a "$OUT/summary.txt"
import json, os, sys
out, s, target, layers = sys.argv[1], sys.argv[2], sys.argv[3], [int(x) for x in sys.argv[4:]]
runs = {L: json.load(open(f)) for L in layers if os.path.exists(f := f"{out}/stage{s}_L{L}_{target}.json")}
if len(runs) >= 2:
    (a, ra), (b, rb) = sorted(runs.items())[0], sorted(runs.items())[-1]
    key = f"per_device_bytes_stage{s}"
    slope = (rb[key] - ra[key]) / (b - a)
    print(f"   stage {s}: {slope / 1e9:.2f} GB per layer; carried to 24 layers: {(rb[key] + slope * (24 - b)) / 1e9:.1f} GB "
          f"per device (an extrapolation of XLA:GPU's {a}- and {b}-layer plans; target <= 80 GB)")
PYEOF
done
echo "results in $OUT" | tee -a "$OUT/summary.txt"
