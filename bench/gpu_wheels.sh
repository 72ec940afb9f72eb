#!/usr/bin/env bash
# Downloads, into ./.whl, the pure-Python wheels that bench/gpu_suite.sh needs on an accelerator
# machine whose image lacks them and which cannot reach a package index (run this where pip can).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl "ml-collections==1.1.0"
ls .whl
