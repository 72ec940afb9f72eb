"""Converted trunk checkpoints (ARCHITECTURE.md D11): one read-only Orbax checkpoint + its config.

    DIR/pdt_trunk.json   {"format": "pdt-jax-trunk", "version": 1, "config": {TrunkConfig fields}}
    DIR/params/          Orbax StandardSave of the parameter pytree

Written to a temporary sibling directory and renamed at the end, so a killed save leaves nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from pdt_jax.trunk.config import ConfigError, TrunkConfig
from pdt_jax.trunk.hf_layout import CheckpointError
from pdt_jax.trunk.params import abstract_from_specs, is_spec, path_str, trunk_specs

MARKER = "pdt_trunk.json"
FORMAT = "pdt-jax-trunk"


def save_converted(path: str, cfg: TrunkConfig, params) -> None:
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    if os.path.exists(path):
        raise FileExistsError(f"{path}: already exists; choose a new destination")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=parent)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(tmp, "params"), params)
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump({"format": FORMAT, "version": 1, "config": cfg.to_mapping()}, f, indent=1)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_converted_config(path: str) -> TrunkConfig:
    marker = os.path.join(path, MARKER)
    try:
        with open(marker) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{marker}: expected a JSON trunk manifest ({e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{marker}: field 'format': expected {FORMAT!r}, found {meta.get('format')!r}")
    try:
        return TrunkConfig.from_mapping(meta["config"])
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"{marker}: {e}") from e


def load_converted(path: str, dtype: str | None = None, shardings=None):
    """Returns (cfg, params). Checks every tensor's name, shape and dtype against the config."""
    import orbax.checkpoint as ocp

    cfg = read_converted_config(path)
    specs = trunk_specs(cfg)
    target = abstract_from_specs(specs)
    if shardings is not None:
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), target, shardings)
    params_dir = os.path.join(path, "params")
    with ocp.StandardCheckpointer() as ckptr:
        try:
            meta = ckptr.metadata(params_dir)
            stored = getattr(meta, "item_metadata", meta)
            stored = getattr(stored, "tree", stored)
            _check_tree(stored, target, params_dir)
            params = ckptr.restore(params_dir, target)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{params_dir}: could not restore the trunk parameters ({type(e).__name__}: {e})") from e
    if dtype is not None and dtype != cfg.dtype:
        cfg = cfg.replace(dtype=dtype)
        params = jax.tree.map(lambda s, p: p.astype(s.dtype), trunk_specs(cfg), params, is_leaf=is_spec)
    return cfg, params


def _check_tree(stored, target, where: str) -> None:
    flat_target = {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(target)[0]}
    flat_stored = {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(
        stored, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))[0]}
    for name in sorted(set(flat_stored) - set(flat_target)):
        raise CheckpointError(f"{where}: unknown tensor '{name}' (not part of the configured trunk)")
    for name in sorted(set(flat_target) - set(flat_stored)):
        raise CheckpointError(f"{where}: missing tensor '{name}', expected shape {flat_target[name].shape}")
    for name, want in flat_target.items():
        got = flat_stored[name]
        if tuple(got.shape) != tuple(want.shape):
            raise CheckpointError(f"{where}: tensor '{name}' has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        if np.dtype(got.dtype) != np.dtype(want.dtype):
            raise CheckpointError(f"{where}: tensor '{name}' has dtype {np.dtype(got.dtype)}, expected {np.dtype(want.dtype)}")
