"""Mesh construction and logical-axis sharding rules (ARCHITECTURE.md D9).

Every parameter declares one logical name per dimension (``embed``, ``vocab``, ``heads``,
``kv_heads``, ``head_dim``, ``experts``, ``mlp``, ``notes``, ...). A rule table maps logical names to
mesh axes (``data``, ``fsdp``, ``expert``, ``tensor``). A dimension is left unsharded when its
rule names no axis, the axis is absent or of size 1, the size does not divide, or the axis is
already used by an earlier dimension of the same tensor (a mesh axis may appear once per spec).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "expert", "tensor")

# GPT-OSS-20B on 8 GPUs: the trunk is sharded (never replicated per device). FSDP over the
# model dimension, experts over ``expert``, heads / expert width / vocabulary over ``tensor``.
DEFAULT_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "experts": "expert",
    "mlp": "tensor",
    "notes": None,
    "plan_vocab": "tensor",
    "bottleneck": None,
    "layers": None,
}


def make_mesh(shape: Mapping[str, int] | None = None, devices=None) -> Mesh:
    """``shape``: sizes per axis of MESH_AXES (missing = 1; one entry may be -1 = the rest)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = dict(shape or {"fsdp": -1})
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh axes {unknown} unknown; valid axes: {MESH_AXES}")
    sizes = [shape.get(a, 1) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError("mesh: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, found {len(devices)}")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def spec_for(shape: Sequence[int], axes: Sequence[str | None], mesh: Mesh,
             rules: Mapping[str, object] = DEFAULT_RULES) -> PartitionSpec:
    used: set[str] = set()
    out = []
    for dim, name in zip(shape, axes):
        target = rules.get(name) if name is not None else None
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        chosen = []
        size = 1
        for t in targets:
            n = mesh.shape.get(t, 1)
            if n > 1 and t not in used and dim % (size * n) == 0:
                chosen.append(t)
                size *= n
        used.update(chosen)
        out.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*out)


def tree_shardings(abstract_tree, axes_tree, mesh: Mesh, rules: Mapping[str, object] = DEFAULT_RULES):
    """NamedShardings for every leaf of ``abstract_tree`` (arrays or ShapeDtypeStructs)."""
    is_axes = lambda x: isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)
    return jax.tree.map(lambda axes, a: NamedSharding(mesh, spec_for(a.shape, axes, mesh, rules)),
                        axes_tree, abstract_tree, is_leaf=is_axes)


def shard(tree, shardings):
    return jax.tree.map(jax.device_put, tree, shardings)
