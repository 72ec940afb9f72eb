"""The Hugging Face GPT-OSS tensor layout and its exact mapping to our parameter pytree.

Each HF tensor maps to one of our leaves through a reshape/transpose that is its own documented
inverse, so import and export are the same table read in two directions. Used by
``Trunk.from_pretrained`` and by ``converters/`` (which adds MXFP4 and the OpenAI ``original/``
layout on top).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from typing import Callable, Iterator

import jax.numpy as jnp
import numpy as np

from pdt_jax.trunk.config import TrunkConfig


class CheckpointError(ValueError):
    """A checkpoint is malformed: the message names the file, tensor, expected and found values."""


@dataclasses.dataclass(frozen=True)
class TensorMap:
    hf_name: str
    path: tuple  # path into our pytree, e.g. ("layers", 3, "q")
    hf_shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


def _identity(x):
    return x


def tensor_maps(cfg: TrunkConfig) -> list[TensorMap]:
    D, V, Hq, Hkv, hd = cfg.hidden_size, cfg.vocab_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    E, I = cfg.num_experts, cfg.intermediate_size
    T = lambda x: np.ascontiguousarray(x.T)
    maps = [
        TensorMap("model.embed_tokens.weight", ("embed",), (V, D), _identity, _identity),
        TensorMap("model.norm.weight", ("final_norm",), (D,), _identity, _identity),
        TensorMap("lm_head.weight", ("unembed",), (V, D), T, T),
    ]
    for n in range(cfg.num_layers):
        pre = f"model.layers.{n}."

        def proj_in(heads):  # HF Linear weight [heads*hd, D] <-> ours [D, heads, hd]
            return (lambda w: np.ascontiguousarray(w.T).reshape(D, heads, hd),
                    lambda w: np.ascontiguousarray(w.reshape(D, heads * hd).T))

        def bias(heads):
            return (lambda b: b.reshape(heads, hd), lambda b: b.reshape(heads * hd))

        for name, heads in (("q", Hq), ("k", Hkv), ("v", Hkv)):
            maps.append(TensorMap(f"{pre}self_attn.{name}_proj.weight", ("layers", n, name), (heads * hd, D), *proj_in(heads)))
            maps.append(TensorMap(f"{pre}self_attn.{name}_proj.bias", ("layers", n, f"{name}_bias"), (heads * hd,), *bias(heads)))
        maps += [
            TensorMap(f"{pre}self_attn.o_proj.weight", ("layers", n, "o"), (D, Hq * hd),
                      lambda w: np.ascontiguousarray(w.T).reshape(Hq, hd, D),
                      lambda w: np.ascontiguousarray(w.reshape(Hq * hd, D).T)),
            TensorMap(f"{pre}self_attn.o_proj.bias", ("layers", n, "o_bias"), (D,), _identity, _identity),
            TensorMap(f"{pre}self_attn.sinks", ("layers", n, "sinks"), (Hq,), _identity, _identity),
            TensorMap(f"{pre}input_layernorm.weight", ("layers", n, "attn_norm"), (D,), _identity, _identity),
            TensorMap(f"{pre}post_attention_layernorm.weight", ("layers", n, "mlp_norm"), (D,), _identity, _identity),
            TensorMap(f"{pre}mlp.router.weight", ("layers", n, "router"), (E, D), T, T),
            TensorMap(f"{pre}mlp.router.bias", ("layers", n, "router_bias"), (E,), _identity, _identity),
            TensorMap(f"{pre}mlp.experts.gate_up_proj", ("layers", n, "gate_up"), (E, D, 2 * I), _identity, _identity),
            TensorMap(f"{pre}mlp.experts.gate_up_proj_bias", ("layers", n, "gate_up_bias"), (E, 2 * I), _identity, _identity),
            TensorMap(f"{pre}mlp.experts.down_proj", ("layers", n, "down"), (E, I, D), _identity, _identity),
            TensorMap(f"{pre}mlp.experts.down_proj_bias", ("layers", n, "down_bias"), (E, D), _identity, _identity),
        ]
    return maps


# ---- safetensors files -------------------------------------------------------------------------

def safetensors_files(directory: str) -> list[str]:
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{index}: expected a JSON object with a 'weight_map', found an error: {e}") from e
        files = sorted(set(weight_map.values()))
        return [os.path.join(directory, f) for f in files]
    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if not files:
        raise CheckpointError(f"{directory}: expected *.safetensors files (or model.safetensors.index.json), found none")
    return files


def iter_tensors(files: list[str]) -> Iterator[tuple[str, str, np.ndarray]]:
    """Yields (file, name, array) one tensor at a time (host memory: one tensor)."""
    from safetensors import safe_open

    for path in files:
        try:
            handle = safe_open(path, framework="numpy")
        except Exception as e:  # the library raises several types for bad headers
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
        with handle as f:
            for name in f.keys():
                try:
                    yield path, name, f.get_tensor(name)
                except Exception as e:
                    raise CheckpointError(f"{path}: tensor '{name}' could not be read, the file may be truncated "
                                          f"({type(e).__name__}: {e})") from e


def stored_float_dtype(dtypes) -> str | None:
    """The model dtype that safetensors header dtypes ('F32', 'BF16', 'F16', 'U8', ...) stand for:
    'float32' when every floating tensor is F32, 'bfloat16' when any is 16-bit; None without any
    floating tensor (quantized blocks and scales are U8)."""
    floats = {d for d in dtypes if d in ("F32", "BF16", "F16", "F64")}
    if not floats:
        return None
    return "float32" if floats <= {"F32", "F64"} else "bfloat16"


def hf_dtype(hf: dict, directory: str) -> str | None:
    """The dtype a checkpoint directory holds: the one its config.json names, else its tensors'
    (a config without ``dtype``/``torch_dtype`` does not make float32 tensors bfloat16)."""
    named = hf.get("dtype") or hf.get("torch_dtype")
    if named:
        return named
    from safetensors import safe_open

    dtypes = set()
    for path in safetensors_files(directory):
        try:
            with safe_open(path, framework="numpy") as f:
                dtypes.update(f.get_slice(name).get_dtype() for name in f.keys())
        except Exception as e:  # the library raises several types for bad headers
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    return stored_float_dtype(dtypes)


def read_hf_config(directory: str) -> dict:
    path = os.path.join(directory, "config.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: expected a config.json, found none") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.")


def load_hf_params(directory: str, cfg: TrunkConfig, dtype: str, place=None) -> dict:
    """Reads every tensor of an HF GPT-OSS directory into our pytree, checking names, shapes and
    completeness. ``place(path, array)`` may move each leaf to a device/sharding as it arrives."""
    from pdt_jax.trunk.params import trunk_specs

    by_name = {m.hf_name: m for m in tensor_maps(cfg)}
    specs = trunk_specs(cfg.replace(dtype=dtype))
    params: dict = {"layers": [dict() for _ in range(cfg.num_layers)]}
    seen: set[str] = set()
    for path, name, array in iter_tensors(safetensors_files(directory)):
        m = by_name.get(name)
        if m is None:
            if "_blocks" in name or "_scales" in name:
                raise CheckpointError(f"{path}: tensor '{name}' is MXFP4-quantized; convert it first with "
                                      f"`python -m converters.gpt_oss import --src {directory} --dst DIR`")
            layer = _LAYER_RE.match(name)
            hint = (f" (the config has {cfg.num_layers} layers)"
                    if layer and int(layer.group(1)) >= cfg.num_layers else "")
            raise CheckpointError(f"{path}: unknown tensor '{name}'{hint}; expected only GPT-OSS tensor names "
                                  f"such as 'model.layers.0.self_attn.q_proj.weight'")
        if tuple(array.shape) != m.hf_shape:
            raise CheckpointError(f"{path}: tensor '{name}' has shape {tuple(array.shape)}, expected {m.hf_shape}")
        if not jnp.issubdtype(array.dtype, jnp.floating):  # bfloat16 (ml_dtypes) has kind 'V'
            raise CheckpointError(f"{path}: tensor '{name}' has dtype {array.dtype}, expected a floating dtype")
        spec = _lookup(specs, m.path)
        value = m.to_ours(array).astype(spec.dtype)
        _assign(params, m.path, place(m.path, value) if place else value)
        seen.add(name)
    missing = [n for n in by_name if n not in seen]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{directory}: missing tensor(s) {missing[:5]}{more}; expected every tensor of a "
                              f"{cfg.num_layers}-layer GPT-OSS checkpoint")
    return params


def _lookup(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _assign(tree, path, value):
    for p in path[:-1]:
        tree = tree[p]
    tree[path[-1]] = value


def hf_state_dict(params: dict, cfg: TrunkConfig) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (HF name, numpy array) for every tensor, one at a time."""
    for m in tensor_maps(cfg):
        yield m.hf_name, m.to_hf(np.asarray(_lookup(params, m.path)))
