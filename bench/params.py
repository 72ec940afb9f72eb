"""Parameter counts of the frozen trunk and the trainable sidecar (from the declarations; nothing
is allocated, so the 20B config counts instantly).

    python bench/params.py --config=configs/model/pdt.py [--json out.json]

The README claims the trainable part is < 5% of the total for GPT-OSS-20B; this prints the ratio,
per sidecar module, for the 20B config and the tiny one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from pdt_jax import config_files  # noqa: E402
from pdt_jax.sidecar.params import sidecar_specs  # noqa: E402
from pdt_jax.trunk.params import is_spec, trunk_specs  # noqa: E402


def count(tree) -> int:
    return int(sum(np.prod(s.shape, dtype=np.int64) for s in jax.tree.leaves(tree, is_leaf=is_spec)))


def report(spec: str) -> dict:
    cfg = config_files.pdt_config(config_files.load(spec))
    trunk = count(trunk_specs(cfg.trunk))
    side_specs = sidecar_specs(cfg.trunk, cfg.sidecar)
    side = count(side_specs)
    modules = {name: count(sub) for name, sub in side_specs.items() if name != "layers"}
    layers = side_specs["layers"]
    modules["snc (all layers)"] = count([l["snc"] for l in layers]) + len(layers)
    modules["adapters (all layers)"] = count([l["adapter"] for l in layers]) + len(layers)
    out = {"config": spec, "trunk_params": trunk, "sidecar_params": side, "total_params": trunk + side,
           "trainable_fraction": side / (trunk + side), "instrumented_layers": len(layers)}
    out.update({f"sidecar_{k.split(' ')[0]}_params": v for k, v in modules.items()})
    print(f"{spec}: trunk {trunk / 1e6:,.1f} M (frozen), sidecar {side / 1e6:,.1f} M (trainable), "
          f"trainable fraction {100 * out['trainable_fraction']:.2f}% of {(trunk + side) / 1e9:.2f} B")
    for k, v in sorted(modules.items(), key=lambda kv: -kv[1]):
        print(f"    {k:<24} {v / 1e6:>10.2f} M")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/model/pdt.py")
    ap.add_argument("--tiny-config", default="configs/model/pdt.py:tiny")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    big, tiny = report(args.config), report(args.tiny_config)
    flat = {f"big_{k}": v for k, v in big.items()} | {f"tiny_{k}": v for k, v in tiny.items()}
    flat["big_trainable_under_5_percent"] = big["trainable_fraction"] < 0.05
    if args.json:
        with open(args.json, "w") as f:
            json.dump(flat, f, indent=1)


if __name__ == "__main__":
    main()
