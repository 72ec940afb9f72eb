"""Does this backend's XLA honour rematerialisation? A toy stack of L layers, each with a [T, T]
float32 intermediate, differentiated three ways: a Python loop of layers (the trunk's form), the
same loop with ``jax.checkpoint`` per layer, and ``lax.scan`` over the layers with a checkpointed
body. Prints the compiled program's temporary bytes per L: with working remat the temporaries do
not grow with L.

    python bench/remat_probe.py [--T 4096] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def _layer(h, w):
    p = jax.nn.softmax(jnp.einsum("td,sd->ts", h, h), axis=-1)     # the [T, T] intermediate
    return h + jnp.tanh(p @ h @ w)


def temp_bytes(L: int, form: str, T: int, d: int = 64) -> int:
    def loss(h, ws):
        if form == "scan":
            h, _ = jax.lax.scan(lambda h, w: (jax.checkpoint(_layer)(h, w), None), h, ws)
        else:
            f = jax.checkpoint(_layer) if form == "loop_remat" else _layer
            for i in range(L):
                h = f(h, ws[i])
        return h.sum()
    h = jax.ShapeDtypeStruct((T, d), jnp.float32)
    ws = jax.ShapeDtypeStruct((L, d, d), jnp.float32)
    return int(jax.jit(jax.grad(loss)).lower(h, ws).compile().memory_analysis().temp_size_in_bytes)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    d = jax.devices()[0]
    print(f"remat probe on {d.platform} ({d.device_kind}); one [T, T] f32 = {args.T * args.T * 4 / 1e6:.0f} MB")
    out = {"platform": d.platform, "device_kind": d.device_kind, "T": args.T}
    for form in ("loop", "loop_remat", "scan"):
        row = {L: temp_bytes(L, form, args.T) for L in (2, 4, 8)}
        out.update({f"temp_bytes_{form}_L{L}": v for L, v in row.items()})
        growth = (row[8] - row[2]) / 6
        out[f"growth_per_layer_bytes_{form}"] = growth
        print(f"  {form:<11}" + "".join(f"  L={L}: {v / 1e6:8.1f} MB" for L, v in row.items())
              + f"   per extra layer {growth / 1e6:7.1f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
