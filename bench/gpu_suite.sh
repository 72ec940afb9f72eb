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
# Python: $PYTHON (default python3) must import jax with a GPU backend and the project's packages:
# on a fresh machine with internet, `pip install -e '.[gpu]'` first. Without internet, wheels of the
# pure-Python packages the accelerator image lacks (ml-collections) are installed from ./.whl when
# present (bench/gpu_wheels.sh downloads them where pip can reach an index). Nothing else is installed.
# GPU_SUITE_DRY_RUN=1 runs the whole suite at toy sizes on any backend (a check of the script itself).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-experiments/gpu_suite}
LAYERS=${GPU_SUITE_LAYERS:-8}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if ! "$PY" -c "import ml_collections" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/pdt-site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/pdt-site"
fi
"$PY" -c "import jax, flax, ml_collections, safetensors, tokenizers" 2>/dev/null || {
  echo "bench/gpu_suite.sh: $PY lacks the project's packages: pip install -e '.[gpu]' (or carry wheels in .whl/," \
       "bench/gpu_wheels.sh), or set PYTHON=..." >&2; exit 2; }
DRY=${GPU_SUITE_DRY_RUN:-0}
"$PY" - "$DRY" <<'EOF'
import sys
import jax
d = jax.devices()[0]
print(f"jax {jax.__version__} on {d.platform}: {d.device_kind} x{jax.device_count()}")
if d.platform == "cpu" and sys.argv[1] != "1":
    raise SystemExit("bench/gpu_suite.sh: jax sees no accelerator (install jax[cuda12] or run on a GPU machine)")
EOF
if [ "$DRY" = 1 ]; then LAYERS=1; N_SMALL=8; N_BIG=4; REP=1; else N_SMALL=256; N_BIG=128; REP=3; fi
BIG=(--config.trunk.num_layers="$LAYERS")
run() {  # name, script, args...
  local name=$1 script=$2; shift 2
  echo "== $name: $script $*" | tee -a "$OUT/summary.txt"
  local t0=$SECONDS
  "$PY" "$script" "$@" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log" | grep -E "^ *[0-9]|x |%|tok/s|^PDT|^sequential|^batched" \
    | tee -a "$OUT/summary.txt" || true
  echo "   ($((SECONDS - t0)) s)" | tee -a "$OUT/summary.txt"
  test -s "$OUT/$name.json" || { echo "$name wrote no JSON" >&2; exit 1; }
}

run trunk_small bench/trunk_decode.py --config=configs/model/gpt_oss_20b.py:small --no-reference \
    --dtype bfloat16 --new-tokens "$N_SMALL" --repeats "$REP"
run trunk_gptoss bench/trunk_decode.py --config=configs/model/gpt_oss_20b.py --config.num_layers="$LAYERS" \
    --no-reference --dtype bfloat16 --prompt-len 128 --new-tokens "$N_BIG" --repeats "$REP"
run parallel_small bench/parallel_decode.py --config=configs/model/pdt.py:small --config.trunk.dtype=bfloat16 \
    --new-tokens "$N_SMALL" --repeats "$REP"
run parallel_gptoss bench/parallel_decode.py --config=configs/model/pdt.py "${BIG[@]}" --new-tokens "$N_BIG" \
    --repeats "$REP"
echo "results in $OUT" | tee -a "$OUT/summary.txt"
