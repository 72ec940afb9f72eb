"""Converted trunk checkpoints (ARCHITECTURE.md D11): one read-only directory, written leaf by leaf.

    DIR/pdt_trunk.json        {"format": "pdt-jax-trunk", "version": 2, "storage": "zarr3",
                               "config": {TrunkConfig fields}}
    DIR/params/<leaf path>/   one zarr v3 array per parameter leaf (tensorstore, uncompressed,
                              little endian), e.g. params/embed, params/layers/3/gate_up. The leaf
                              path is ``params.path_str`` of the pytree path. Chunks are ≤ 64 MiB
                              and split the ``vocab`` axis if the leaf has one, else the ``experts``
                              axis, else axis 0, so that streamed writes never rewrite a chunk.

Why not one Orbax ``StandardSave`` of the whole pytree: that needs the whole model in host memory at
once (≈ 42 GB for GPT-OSS-20B in bf16). Here a writer takes one leaf, or one region of a leaf, at a
time, so a converter's host memory is bounded by the piece it is holding. Orbax itself stores arrays
the same way (tensorstore); reading back places each leaf directly onto its sharding, each device
reading only its own slice.

A save goes to a temporary sibling directory that is renamed at the end, so a failed or killed
write leaves nothing at the destination.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import jax
import numpy as np

from pdt_jax.trunk.config import ConfigError, TrunkConfig
from pdt_jax.trunk.hf_layout import CheckpointError
from pdt_jax.trunk.params import ParamSpec, is_spec, path_str, trunk_specs

MARKER = "pdt_trunk.json"
FORMAT = "pdt-jax-trunk"
VERSION = 2
PARAMS_DIR = "params"
CHUNK_BYTES = 64 << 20


def _flat_specs(cfg: TrunkConfig) -> dict[str, ParamSpec]:
    return {path_str(p): s for p, s in jax.tree_util.tree_flatten_with_path(trunk_specs(cfg), is_leaf=is_spec)[0]}


def _leaf_name(path) -> str:
    return path if isinstance(path, str) else "/".join(str(p) for p in path)


def _chunk_shape(spec: ParamSpec) -> list[int]:
    axis = next((spec.axes.index(a) for a in ("vocab", "experts") if a in spec.axes), 0)
    shape = list(spec.shape)
    per_index = np.dtype(spec.dtype).itemsize * max(1, int(np.prod(shape)) // max(1, shape[axis]))
    shape[axis] = max(1, min(shape[axis], CHUNK_BYTES // per_index))
    return shape


def _zarr_spec(directory: str, spec: ParamSpec | None = None) -> dict:
    out: dict[str, Any] = {"driver": "zarr3", "kvstore": {"driver": "file", "path": directory}}
    if spec is not None:
        out["metadata"] = {
            "shape": list(spec.shape), "data_type": np.dtype(spec.dtype).name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": _chunk_shape(spec)}},
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        }
    return out


class ConvertedWriter:
    """Streams a trunk checkpoint to disk: ``write(path, array, index=None)`` any number of times
    (whole leaves or disjoint regions of them, in any order), then ``finish()`` checks that every
    leaf is complete and publishes the directory atomically. Used as a context manager, an
    exception removes everything written so far.

        with ConvertedWriter("out/", cfg) as w:
            w.write(("layers", 0, "gate_up"), expert_0, index=(0,))
    """

    def __init__(self, path: str, cfg: TrunkConfig):
        self.path = os.path.abspath(path)
        if os.path.exists(self.path):
            raise FileExistsError(f"{self.path}: already exists; choose a new destination")
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        self.cfg = cfg
        self.specs = _flat_specs(cfg)
        self.tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(self.path) + "-", dir=parent)
        self._arrays: dict[str, Any] = {}
        self._written = {name: 0 for name in self.specs}
        self._done = False

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is None and not self._done:
            self.finish()
        elif kind is not None:
            self.abort()
        return False

    def abort(self) -> None:
        self._done = True
        self._arrays.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _array(self, name: str):
        import tensorstore as ts

        if name not in self._arrays:
            spec = self.specs[name]
            self._arrays[name] = ts.open(_zarr_spec(os.path.join(self.tmp, PARAMS_DIR, name), spec),
                                         create=True).result()
        return self._arrays[name]

    def write(self, path, value, index: tuple | None = None) -> None:
        """Writes ``value`` (numpy, or a jax Array whose shards are written from where they live)
        to the whole leaf, or to ``leaf[index]`` (a tuple of ints/slices)."""
        name = _leaf_name(path)
        spec = self.specs.get(name)
        if spec is None:
            raise CheckpointError(f"{self.path}: unknown tensor '{name}' (not part of the configured trunk)")
        if np.dtype(value.dtype) != np.dtype(spec.dtype):
            raise CheckpointError(f"{self.path}: tensor '{name}' has dtype {np.dtype(value.dtype)}, "
                                  f"expected {np.dtype(spec.dtype)}")
        if index is not None:  # clip slices as numpy does (tensorstore refuses out-of-range bounds)
            index = tuple(slice(*i.indices(d)) if isinstance(i, slice) else i for i, d in zip(index, spec.shape))
        region = np.broadcast_to(np.zeros((), np.int8), spec.shape)[index if index is not None else ()].shape
        if tuple(value.shape) != tuple(region):
            where = f"[{index}]" if index is not None else ""
            raise CheckpointError(f"{self.path}: tensor '{name}'{where} has shape {tuple(value.shape)}, "
                                  f"expected {tuple(region)}")
        target = self._array(name)
        if index is not None:
            target = target[index]
        if isinstance(value, jax.Array) and index is None and not value.is_fully_replicated:
            for shard in value.addressable_shards:
                if shard.replica_id == 0:
                    target[shard.index].write(np.asarray(shard.data)).result()
        else:
            target.write(np.asarray(value)).result()
        self._written[name] += int(np.prod(region))

    def finish(self) -> None:
        if self._done:
            raise CheckpointError(f"{self.path}: this writer has already finished or been aborted")
        for name, spec in self.specs.items():
            if self._written[name] != int(np.prod(spec.shape)):
                self.abort()
                raise CheckpointError(f"{self.path}: tensor '{name}' is incomplete: {self._written[name]} of "
                                      f"{int(np.prod(spec.shape))} elements written, expected all")
        self._arrays.clear()
        try:
            with open(os.path.join(self.tmp, MARKER), "w") as f:
                json.dump({"format": FORMAT, "version": VERSION, "storage": "zarr3",
                           "config": self.cfg.to_mapping()}, f, indent=1)
            os.rename(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True


def save_converted(path: str, cfg: TrunkConfig, params) -> None:
    """Writes a whole parameter pytree (leaf by leaf; each leaf goes from host or device as is)."""
    with ConvertedWriter(path, cfg) as writer:
        for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            writer.write(path_str(p), leaf)


def read_converted_config(path: str) -> TrunkConfig:
    marker = os.path.join(path, MARKER)
    try:
        with open(marker) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{marker}: expected a JSON trunk manifest ({e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{marker}: field 'format': expected {FORMAT!r}, found {meta.get('format')!r}")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{marker}: field 'version': expected {VERSION}, found {meta.get('version')!r} "
                              f"(re-convert the source checkpoint with `python -m converters.gpt_oss import`)")
    try:
        return TrunkConfig.from_mapping(meta["config"])
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"{marker}: {e}") from e


def stored_tensors(path: str) -> list[str]:
    """Leaf paths present under DIR/params (every directory holding a zarr.json)."""
    root = os.path.join(path, PARAMS_DIR)
    found = []
    for directory, _, files in os.walk(root):
        if "zarr.json" in files:
            found.append(os.path.relpath(directory, root).replace(os.sep, "/"))
    return sorted(found)


def open_converted(path: str) -> tuple[TrunkConfig, dict]:
    """Checks a checkpoint's tensors (names, shapes, dtypes) without reading their data →
    (cfg, {leaf path: tensorstore array}); ``array[index].read().result()`` reads any region."""
    import tensorstore as ts

    cfg = read_converted_config(path)
    specs = _flat_specs(cfg)
    root = os.path.join(path, PARAMS_DIR)
    stored = stored_tensors(path)
    for name in stored:
        if name not in specs:
            raise CheckpointError(f"{root}: unknown tensor '{name}' (not part of the configured trunk)")
    arrays = {}
    for name, spec in specs.items():
        if name not in stored:
            raise CheckpointError(f"{root}: missing tensor '{name}', expected shape {spec.shape}")
        try:
            array = ts.open(_zarr_spec(os.path.join(root, name)), open=True).result()
        except Exception as e:
            raise CheckpointError(f"{root}: tensor '{name}' could not be opened ({type(e).__name__}: {e})") from e
        if tuple(array.shape) != tuple(spec.shape):
            raise CheckpointError(f"{root}: tensor '{name}' has shape {tuple(array.shape)}, expected {tuple(spec.shape)}")
        found = np.dtype(array.dtype.numpy_dtype)
        if found != np.dtype(spec.dtype):
            raise CheckpointError(f"{root}: tensor '{name}' has dtype {found}, expected {np.dtype(spec.dtype)}")
        arrays[name] = array
    return cfg, arrays


def load_converted(path: str, dtype: str | None = None, shardings=None):
    """Returns (cfg, params). Checks every tensor's name, shape and dtype against the config.
    ``dtype`` casts leaf by leaf as it is read; ``shardings`` (a pytree of ``jax.sharding.Sharding``
    matching the params) places each leaf with every device reading only its slice."""
    cfg, arrays = open_converted(path)
    root = os.path.join(path, PARAMS_DIR)
    out_cfg = cfg.replace(dtype=dtype) if dtype is not None and dtype != cfg.dtype else cfg
    out_specs = _flat_specs(out_cfg)
    flat_shardings = None
    if shardings is not None:
        flat_shardings = {path_str(p): s for p, s in jax.tree_util.tree_flatten_with_path(
            shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))[0]}

    leaves = {}
    for name, array in arrays.items():
        want = np.dtype(out_specs[name].dtype)

        def read(index, array=array, want=want, name=name):
            try:
                return array[index].read().result().astype(want, copy=False)
            except Exception as e:
                raise CheckpointError(f"{root}: tensor '{name}' could not be read "
                                      f"({type(e).__name__}: {e})") from e

        if flat_shardings is not None:
            leaves[name] = jax.make_array_from_callback(tuple(array.shape), flat_shardings[name], read)
        else:
            leaves[name] = jax.numpy.asarray(read(()))
    flat, treedef = jax.tree_util.tree_flatten_with_path(trunk_specs(out_cfg), is_leaf=is_spec)
    params = jax.tree_util.tree_unflatten(treedef, [leaves[path_str(p)] for p, _ in flat])
    return out_cfg, params
