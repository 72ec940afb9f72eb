"""A trained sidecar for PyTorch users, and back.

    python -m converters.sidecar export --checkpoint runs/curriculum/stage3_commit_control/export \\
        --format torch --out sidecar.pt
    python -m converters.sidecar import --torch sidecar.pt --out restored/sidecar.safetensors

``export`` reads a PDT checkpoint's ``sidecar.safetensors`` (a directory holding it, or the file)
and writes a torch ``state_dict`` (``converters/torch_interop.py`` naming: ``layers.0.snc.q``, …;
arrays as stored, kernels [in, out]) plus ``<out>.json`` with everything the safetensors metadata
carried (sidecar config, plan hashing, the trunk's hidden size, the calibrated γ). ``import``
reads both back, checks every tensor's name, shape and dtype against the config, and writes a
``sidecar.safetensors`` that ``launch/infer.py --checkpoint`` loads. A round trip is bit-exact.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from converters.torch_interop import load_torch, save_state_dict
from pdt_jax.sidecar.checkpoint import read_sidecar_config, save_sidecar
from pdt_jax.sidecar.config import SidecarConfig
from pdt_jax.sidecar.params import sidecar_specs
from pdt_jax.trunk.hf_layout import CheckpointError
from pdt_jax.trunk.params import is_spec


class _Trunk:
    """What the sidecar's parameter shapes need of a trunk config."""

    def __init__(self, hidden_size: int, num_layers: int):
        self.hidden_size, self.num_layers = hidden_size, num_layers


def _metadata(path: str) -> dict:
    from safetensors import safe_open
    with safe_open(path, framework="numpy") as f:
        return dict(f.metadata() or {})


def _template(meta: dict, cfg: SidecarConfig):
    """Zeros shaped like the sidecar's parameters (names, shapes, dtypes to check against)."""
    import jax
    # Files written before trunk_num_layers was recorded: any depth that holds the layers will do
    # (only the number of instrumented layers shapes the parameters).
    depth = meta.get("trunk_num_layers") or max(max(cfg.instrumented_layers, default=-1) + 1, cfg.top_k_layers)
    trunk = _Trunk(int(meta["trunk_hidden_size"]), int(depth))
    specs = sidecar_specs(trunk, cfg)
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), specs, is_leaf=is_spec), trunk


def export(checkpoint: str, out: str, fmt: str) -> None:
    from safetensors.numpy import load_file

    if fmt != "torch":
        raise SystemExit(f"--format: only 'torch' is built (found {fmt!r})")
    path = os.path.join(checkpoint, "sidecar.safetensors") if os.path.isdir(checkpoint) else checkpoint
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: not found (expected a PDT checkpoint directory or sidecar.safetensors)")
    read_sidecar_config(path)   # refuses anything that is not a PDT sidecar file
    meta = _metadata(path)
    save_state_dict(load_file(path), out)   # the safetensors names are already torch's dotted names
    tmp = out + ".json.tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    os.replace(tmp, out + ".json")


def import_(torch_path: str, out: str) -> None:
    meta_path = torch_path + ".json"
    if not os.path.exists(meta_path):
        raise CheckpointError(f"{meta_path}: not found (export writes it next to the .pt: the sidecar's config)")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != "pdt-jax-sidecar" or "sidecar_config" not in meta:
        raise CheckpointError(f"{meta_path}: not the metadata of a PDT sidecar export")
    cfg = SidecarConfig.from_mapping(json.loads(meta["sidecar_config"]))
    like, trunk = _template(meta, cfg)
    params = load_torch(torch_path, like=like)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_sidecar(out, params, trunk, cfg)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="sidecar.safetensors -> torch .pt (+ .json)")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--format", default="torch")
    e.add_argument("--out", required=True)
    i = sub.add_parser("import", help="torch .pt (+ .json) -> sidecar.safetensors")
    i.add_argument("--torch", required=True)
    i.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "export":
            export(args.checkpoint, args.out, args.format)
        else:
            import_(args.torch, args.out)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
