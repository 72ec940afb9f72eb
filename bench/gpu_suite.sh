#!/usr/bin/env bash
# The accelerator benchmarks in one command (one GPU, under 8 minutes):
#
#     bash bench/gpu_suite.sh [OUT_DIR]          # default OUT_DIR: experiments/gpu_suite
#
# 1. trunk decode at :small and at a GPT-OSS-shaped config (the real 20B widths, bf16, random
#    weights, GPU_SUITE_LAYERS of 24 layers — default 8, large enough to be memory bound):
#    tokens/s at batch 1 and 3, bytes read per step and the fraction of the device's peak HBM
#    bandwidth (bench/trunk_decode.py --no-reference: transformers runs on the CPU only);
# 2. parallel decode at :small and at the same GPT-OSS shape: PDT (3 streams) vs the sequential
#    baseline (the >= 2.5x target), the machinery overhead vs the batched trunk (<= 15%), and the
#    HBM utilisation of both (bench/parallel_decode.py).
# Each writes OUT_DIR/<name>.json (one flat JSON object) and its console output to OUT_DIR/<name>.log;
# OUT_DIR/summary.txt collects the headline lines.
#
# Python: the interpreter on PATH (python3) must import jax with a GPU backend. On a fresh machine
# with internet: `pip install -e '.[gpu]'`. Without internet, wheels of the pure-Python packages the
# accelerator image lacks (ml-collections) are taken from ./.whl when present (bench/gpu_wheels.sh
# downloads them on a machine that has internet).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-experiments/gpu_suite}
LAYERS=${GPU_SUITE_LAYERS:-8}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if ! "$PY" -c "import ml_collections" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/pdt-site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/pdt-site"
  else
    "$PY" -m pip install -q -e '.[gpu]'
  fi
fi
"$PY" - <<'EOF'
import jax
d = jax.devices()[0]
print(f"jax {jax.__version__} on {d.platform}: {d.device_kind} x{jax.device_count()}")
if d.platform == "cpu":
    raise SystemExit("bench/gpu_suite.sh: jax sees no accelerator (install jax[cuda12] or run on a GPU machine)")
EOF

BIG=(--config.trunk.num_layers="$LAYERS")
run() {  # name, script, args...
  local name=$1 script=$2; shift 2
  echo "== $name: $script $*" | tee -a "$OUT/summary.txt"
  local t0=$SECONDS
  "$PY" "$script" "$@" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log" | grep -E "^ *[0-9]|x |%|tok/s" \
    | tee -a "$OUT/summary.txt" || true
  echo "   ($((SECONDS - t0)) s)" | tee -a "$OUT/summary.txt"
  test -s "$OUT/$name.json" || { echo "$name wrote no JSON" >&2; exit 1; }
}

run trunk_small bench/trunk_decode.py --config=configs/model/gpt_oss_20b.py:small --no-reference \
    --dtype bfloat16 --new-tokens 240 --repeats 5
run trunk_gptoss bench/trunk_decode.py --config=configs/model/gpt_oss_20b.py --config.num_layers="$LAYERS" \
    --no-reference --dtype bfloat16 --prompt-len 128 --new-tokens 128 --repeats 3
run parallel_small bench/parallel_decode.py --config=configs/model/pdt.py:small --config.trunk.dtype=bfloat16 \
    --new-tokens 256 --repeats 5
run parallel_gptoss bench/parallel_decode.py --config=configs/model/pdt.py "${BIG[@]}" --new-tokens 128 --repeats 3
echo "results in $OUT" | tee -a "$OUT/summary.txt"
