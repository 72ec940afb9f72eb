"""Converter memory benchmark: one GPT-OSS-20B layer at the real widths, OpenAI original/ layout.

    python bench/convert.py [--vocab 201088] [--layers 1] [--json out.json] [--workdir DIR] [--keep]

Builds a synthetic checkpoint (bf16 embedding/unembedding [V, 2880], attention at 64 q / 8 kv heads ×
64, MXFP4 experts 32 × 5760 × 2880 and 32 × 2880 × 2880, random values), converts it to a bfloat16
trunk checkpoint with ``python -m converters.gpt_oss import`` in a subprocess, and reports the
wall time and the child's peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``: the builder runs in
this process, so only the converter is measured) next to the largest dequantized tensor. Target:
peak RSS ≤ 3 × that tensor. One expert of the result is checked against the dequantized source.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import ml_dtypes
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from converters import export, layouts, mxfp4  # noqa: E402
from converters import safetensors_io as st  # noqa: E402
from pdt_jax.trunk.config import TrunkConfig  # noqa: E402

GiB = 1 << 30


def build(directory: str, cfg: TrunkConfig, seed: int = 0) -> int:
    """Writes the synthetic original/ checkpoint tensor by tensor (bounded memory); returns its bytes."""
    rng = np.random.default_rng(seed)
    dtypes = {"embed": np.dtype(ml_dtypes.bfloat16)}
    entries = export.original_entries(cfg, dtypes, quantized=True)
    writer = st.Writer(directory, entries, max_shard_bytes=64 * GiB)
    for name, shape, dtype in entries:
        if dtype == np.uint8:
            for e in range(shape[0]):  # one expert at a time; scales near 127 keep values O(1)
                part = (rng.integers(0, 256, shape[1:], dtype=np.uint8) if name.endswith(".blocks")
                        else rng.integers(118, 124, shape[1:], dtype=np.uint8))
                writer.put(name, part[None], e)
        else:
            step = max(1, (64 << 20) // (4 * int(np.prod(shape[1:], dtype=np.int64) or 1)))
            for a in range(0, shape[0] if shape else 1, step):
                rows = (min(shape[0], a + step) - a,) + tuple(shape[1:])
                scale = 1.0 if name.endswith("scale") else 0.02
                writer.put(name, (scale * rng.standard_normal(rows, np.float32)).astype(dtype), a)
    writer.close()
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(layouts.config_to_openai(cfg), f)
    return sum(os.path.getsize(p) for p in writer.files)


def spot_check(src: str, dst: str, cfg: TrunkConfig, expert: int) -> bool:
    import tensorstore as ts

    infos = {}
    for path in os.listdir(src):
        if path.endswith(".safetensors"):
            infos.update(st.read_header(os.path.join(src, path)))
    blocks = st.read(infos["block.0.mlp.mlp1_weight.blocks"], expert, expert + 1)[0]
    scales = st.read(infos["block.0.mlp.mlp1_weight.scales"], expert, expert + 1)[0]
    want = mxfp4.dequantize(blocks, scales, ml_dtypes.bfloat16).T
    got = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.join(dst, "params/layers/0/gate_up")}},
                  open=True).result()[expert].read().result()
    return bool(np.array_equal(got.view(np.uint16), want.view(np.uint16)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=201088)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="default: a temporary directory, removed afterwards")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", default=None, help="write one flat JSON object with the results")
    args = parser.parse_args(argv)

    cfg = TrunkConfig(vocab_size=args.vocab, num_layers=args.layers,
                      pad_token_id=min(TrunkConfig.pad_token_id, args.vocab - 1))
    work = args.workdir or tempfile.mkdtemp(prefix="bench-convert-")
    src, dst = os.path.join(work, "original"), os.path.join(work, "trunk")
    os.makedirs(src, exist_ok=True)
    try:
        t0 = time.perf_counter()
        src_bytes = build(src, cfg)
        build_s = time.perf_counter() - t0
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "converters.gpt_oss", "import", "--src", src, "--dst", dst,
                               "--dtype", "bfloat16", "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux reports KiB
        bf16 = 2
        gate_up = cfg.num_experts * cfg.hidden_size * 2 * cfg.intermediate_size * bf16
        embed = cfg.vocab_size * cfg.hidden_size * bf16
        largest = max(gate_up, embed)
        dst_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(dst) for f in fs)
        result = {
            "layers": cfg.num_layers, "vocab": cfg.vocab_size, "hidden": cfg.hidden_size,
            "experts": cfg.num_experts, "expert_width": cfg.intermediate_size, "dtype": "bfloat16",
            "source_gib": src_bytes / GiB, "checkpoint_gib": dst_bytes / GiB, "build_s": build_s,
            "convert_wall_s": wall, "peak_rss_gib": peak / GiB,
            "largest_dequantized_expert_gib": gate_up / GiB, "largest_tensor_gib": largest / GiB,
            "rss_over_expert_tensor": peak / gate_up, "rss_over_largest_tensor": peak / largest,
            "target_ratio": 3.0, "meets_target": peak <= 3 * gate_up,
            "spot_check_expert_exact": spot_check(src, dst, cfg, expert=cfg.num_experts - 1),
        }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    rows = [("source (original/, MXFP4 experts)", f"{result['source_gib']:.2f} GiB"),
            ("converted checkpoint (bf16)", f"{result['checkpoint_gib']:.2f} GiB"),
            ("conversion wall time", f"{wall:.1f} s"),
            ("converter peak RSS", f"{result['peak_rss_gib']:.2f} GiB"),
            ("largest dequantized tensor (gate_up 32×2880×5760 bf16)", f"{gate_up / GiB:.2f} GiB"),
            (f"largest tensor (embedding {cfg.vocab_size}×2880 bf16)", f"{embed / GiB:.2f} GiB"),
            ("peak RSS / gate_up (target ≤ 3)", f"{result['rss_over_expert_tensor']:.2f}"),
            ("peak RSS / largest tensor", f"{result['rss_over_largest_tensor']:.2f}"),
            ("expert 31 equals the dequantized source", str(result["spot_check_expert_exact"]))]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if result["meets_target"] and result["spot_check_expert_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
