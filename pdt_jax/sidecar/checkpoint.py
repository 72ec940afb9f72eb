"""Sidecar parameters on disk: one safetensors file whose tensor names are the pytree paths
(``layers.0.snc.q``, ``plan_embed``, ...) and whose metadata carries the sidecar config and the
plan-hashing metadata (D5). Loading checks every name, shape and dtype against the config."""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from pdt_jax.sidecar.config import SidecarConfig
from pdt_jax.sidecar.params import sidecar_specs
from pdt_jax.trunk.config import TrunkConfig
from pdt_jax.trunk.hf_layout import CheckpointError
from pdt_jax.trunk.params import is_spec, path_str


def _flat(tree):
    return {path_str(p).replace("/", "."): v for p, v in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_spec)[0]}


def save_sidecar(path: str, params, trunk: TrunkConfig, cfg: SidecarConfig) -> None:
    from safetensors.numpy import save_file

    tensors = {k: np.asarray(v) for k, v in _flat(params).items()}
    meta = {"format": "pdt-jax-sidecar", "sidecar_config": json.dumps(cfg.to_mapping()),
            "trunk_hidden_size": str(trunk.hidden_size), "trunk_num_layers": str(trunk.num_layers), **{k: str(v) for k, v in cfg.hashing_metadata().items()}}
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)


def read_sidecar_config(path: str) -> SidecarConfig:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    if meta.get("format") != "pdt-jax-sidecar":
        raise CheckpointError(f"{path}: metadata 'format': expected 'pdt-jax-sidecar', found {meta.get('format')!r}")
    return SidecarConfig.from_mapping(json.loads(meta["sidecar_config"]))


def load_sidecar(path: str, trunk: TrunkConfig, cfg: SidecarConfig):
    from safetensors.numpy import load_file

    stored_cfg = read_sidecar_config(path)
    if stored_cfg.hashing_metadata() != cfg.hashing_metadata():
        raise CheckpointError(f"{path}: plan hashing metadata {stored_cfg.hashing_metadata()} differ from the "
                              f"config's {cfg.hashing_metadata()}; refusing to mix them (D5)")
    # Weights are tied to the layers and the stream order they were trained on.
    for what, stored, wanted in (("instrumented layers", stored_cfg.layers_for(trunk), cfg.layers_for(trunk)),
                                 ("stream_names", stored_cfg.stream_names, cfg.stream_names)):
        if stored != wanted:
            raise CheckpointError(f"{path}: {what}: the checkpoint was trained with {list(stored)}, "
                                  f"the config asks for {list(wanted)}")
    tensors = load_file(path)
    specs = sidecar_specs(trunk, cfg)
    flat_specs = _flat(specs)
    for name in sorted(set(tensors) - set(flat_specs)):
        raise CheckpointError(f"{path}: unknown tensor '{name}' for this sidecar config")
    for name, spec in flat_specs.items():
        if name not in tensors:
            raise CheckpointError(f"{path}: missing tensor '{name}', expected shape {spec.shape}")
        if tensors[name].shape != spec.shape:
            raise CheckpointError(f"{path}: tensor '{name}' has shape {tensors[name].shape}, expected {spec.shape}")
    leaves, treedef = jax.tree.flatten(specs, is_leaf=is_spec)
    names = list(flat_specs)
    return jax.tree.unflatten(treedef, [tensors[n].astype(s.dtype) for n, s in zip(names, leaves)])
