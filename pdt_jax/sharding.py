"""The mesh and the sharding rules (ARCHITECTURE.md D9, D14): one typed object for every program.

Every array the library places — trunk and sidecar parameters, KV caches, the bus, the runtime's
per-row state — declares one *logical* axis name per dimension (``embed``, ``heads``, ``batch``,
``kv_seq``, ...). ``ShardingRules`` has one field per logical name, saying which axes of the mesh
``data × fsdp × expert × tensor`` that dimension is split over (None: not split). The model config
holds the mesh shape and any rule overrides (``configs/model/*.py``: ``mesh`` and ``sharding``
groups); converters, the runtime and training all build their shardings here.

Nothing is silently replicated: a logical name without a field, a mesh axis used by two dimensions
of one array, or a dimension the mesh axes do not divide raises ``ShardingError`` naming the array,
its shape and the rule.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "expert", "tensor")

Axes = tuple[str | None, ...]


class ShardingError(ValueError):
    """A mesh or a sharding rule does not fit an array (the message names both)."""


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """Logical axis → mesh axes (a name, a tuple of names, or None). Defaults: GPT-OSS on GPUs —
    FSDP over the model dimension, experts over ``expert``, heads / expert width / vocabulary over
    ``tensor``, rows (prompts × streams) over ``data`` and ``fsdp``."""
    # rows and runtime state
    batch: Any = ("data", "fsdp")    # rows of a batch or cache; prompts of the bus
    kv_seq: Any = None               # KV-cache slots
    streams: Any = None              # the K streams (per-stream adapters, bus producers)
    bus_slots: Any = None            # a producer's ring of notes
    # trunk parameters
    vocab: Any = "tensor"
    embed: Any = "fsdp"
    heads: Any = "tensor"            # query heads (trunk attention and SNC)
    kv_heads: Any = "tensor"
    head_dim: Any = None
    experts: Any = "expert"
    mlp: Any = "tensor"              # an expert's hidden width
    # sidecar parameters
    notes: Any = None                # notes_dim
    bottleneck: Any = None           # stream-adapter width
    plan_vocab: Any = "tensor"       # V_p
    plan: Any = None                 # plan-embedding width

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            axes = (value,) if isinstance(value, str) else tuple(value or ())
            for a in axes:
                if a not in MESH_AXES:
                    raise ShardingError(f"sharding rule '{f.name}': mesh axis {a!r} unknown; valid: {MESH_AXES}")
            if len(set(axes)) != len(axes):
                raise ShardingError(f"sharding rule '{f.name}': mesh axes {axes} name an axis twice")
            object.__setattr__(self, f.name, axes)

    @classmethod
    def from_mapping(cls, overrides: Mapping[str, Any] | None) -> "ShardingRules":
        """Defaults with ``overrides`` (a dict or ConfigDict: logical axis → mesh axes as a tuple, None,
        or a string of comma-separated names, '' = None — the form config files and flags use)."""
        overrides = dict(overrides.to_dict() if hasattr(overrides, "to_dict") else overrides or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ShardingError(f"sharding rules: unknown logical axis {unknown}; valid: {sorted(names)}")

        def clean(v):
            if isinstance(v, str):
                return tuple(a.strip() for a in v.split(",") if a.strip())
            return tuple(v) if isinstance(v, list) else v
        return cls(**{k: clean(v) for k, v in overrides.items()})

    def to_strings(self) -> dict[str, str]:
        """The rules as config values: 'data,fsdp', 'tensor', '' (not split)."""
        return {f.name: ",".join(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def mesh_axes(self, logical: str, name: str = "array", shape=()) -> tuple[str, ...]:
        if not hasattr(self, logical) or logical.startswith("_"):
            valid = sorted(f.name for f in dataclasses.fields(self))
            raise ShardingError(f"{name} {tuple(shape)}: logical axis {logical!r} has no sharding rule; valid: {valid}")
        return getattr(self, logical)

    def size(self, logical: str, mesh: Mesh) -> int:
        """How many shards the rule for ``logical`` makes on ``mesh`` (e.g. the number of row groups)."""
        return math.prod(mesh.shape.get(a, 1) for a in self.mesh_axes(logical))

    def spec(self, shape: Sequence[int], axes: Axes, mesh: Mesh, name: str = "array") -> PartitionSpec:
        """The PartitionSpec of one array; ``name`` is used in errors."""
        shape = tuple(shape)
        if len(axes) != len(shape):
            raise ShardingError(f"{name} {shape}: {len(axes)} logical axes {tuple(axes)} for {len(shape)} dimensions")
        used: dict[str, str] = {}
        out = []
        for dim, logical in zip(shape, axes):
            if logical is None:
                out.append(None)
                continue
            rule = self.mesh_axes(logical, name, shape)
            for a in rule:  # a conflict is a rules bug even where the axis has size 1 on this mesh
                if a in used:
                    raise ShardingError(f"{name} {shape}: mesh axis {a!r} is used by logical axes {used[a]!r} "
                                        f"and {logical!r} (rules {used[a]}={self.mesh_axes(used[a])}, "
                                        f"{logical}={self.mesh_axes(logical)})")
                used[a] = logical
            mesh_axes = tuple(a for a in rule if mesh.shape.get(a, 1) > 1)
            n = math.prod(mesh.shape[a] for a in mesh_axes)
            if dim % n:
                raise ShardingError(f"{name} {shape}: dimension {logical!r} of size {dim} does not divide over "
                                    f"mesh axes {mesh_axes} of size {n} (rule {logical}={self.mesh_axes(logical)}, "
                                    f"mesh {dict(mesh.shape)})")
            out.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
        return PartitionSpec(*out)

    def sharding(self, shape, axes: Axes, mesh: Mesh, name: str = "array") -> NamedSharding:
        return NamedSharding(mesh, self.spec(shape, axes, mesh, name))

    def tree(self, abstract_tree, axes_tree, mesh: Mesh, prefix: str = ""):
        """NamedShardings for every leaf of ``abstract_tree`` (arrays or ShapeDtypeStructs), given a
        matching tree of logical-axes tuples; errors name the leaf by its path."""
        if abstract_tree is None:
            return None
        leaves = jax.tree_util.tree_flatten_with_path(axes_tree, is_leaf=_is_axes)[0]
        arrays = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
        if len(leaves) != len(arrays):
            raise ShardingError(f"{prefix or 'tree'}: {len(leaves)} logical-axes entries for {len(arrays)} arrays")
        out = []
        for (path, axes), (_, a) in zip(leaves, arrays):
            name = "/".join(x for x in (prefix, _path(path)) if x)
            out.append(self.sharding(a.shape, axes, mesh, name or "array"))
        treedef = jax.tree_util.tree_structure(abstract_tree)
        return jax.tree_util.tree_unflatten(treedef, out)


def _is_axes(x) -> bool:
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def _path(path) -> str:
    return "/".join(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path)


def leading_batch(x) -> Axes:
    """Logical axes of a batch-major array: rows split by the ``batch`` rule, the rest whole."""
    return ("batch",) + (None,) * (len(x.shape) - 1) if len(x.shape) else ()


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


# ---- meshes ------------------------------------------------------------------------------------

def check_mesh(shape: Mapping[str, int] | None) -> dict[str, int]:
    """Every axis of MESH_AXES with its size (missing = 1); names and sizes checked."""
    shape = dict(shape.to_dict() if hasattr(shape, "to_dict") else shape or {})
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise ShardingError(f"mesh: axes {unknown} unknown; valid axes: {MESH_AXES}")
    sizes = {a: int(shape.get(a, 1)) for a in MESH_AXES}
    if sum(n == -1 for n in sizes.values()) > 1 or any(n == 0 or n < -1 for n in sizes.values()):
        raise ShardingError(f"mesh {sizes}: sizes must be positive, and at most one axis may be -1 (the rest)")
    return sizes


def mesh_shape(shape: Mapping[str, int] | None, num_devices: int) -> dict[str, int]:
    """Sizes per axis of MESH_AXES from a partial mapping (missing = 1; one entry may be -1: the
    devices left). Without a -1 the product may be below ``num_devices`` (the first devices are used)."""
    sizes = check_mesh(shape)
    free = [a for a, n in sizes.items() if n == -1]
    known = math.prod(n for n in sizes.values() if n != -1)
    if free:
        if num_devices % known:
            raise ShardingError(f"mesh {sizes}: {num_devices} devices do not divide over the fixed axes ({known})")
        sizes[free[0]] = num_devices // known
    if math.prod(sizes.values()) > num_devices:
        raise ShardingError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, found {num_devices}")
    return sizes


def make_mesh(shape: Mapping[str, int] | None = None, devices=None) -> Mesh:
    """A ``data × fsdp × expert × tensor`` mesh over ``devices`` (default: all local devices).
    ``shape`` as in ``mesh_shape``; default: every device on ``fsdp``."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = mesh_shape(shape if shape is not None else {"fsdp": -1}, len(devices))
    n = math.prod(sizes.values())
    return Mesh(np.asarray(devices[:n]).reshape([sizes[a] for a in MESH_AXES]), MESH_AXES)


def parse_mesh(spec: str, flag: str = "--mesh") -> dict[str, int]:
    """'data=1,fsdp=1,expert=8,tensor=1' → {'data': 1, ...} (validated by ``mesh_shape`` later)."""
    out = {}
    for part in (p for p in spec.split(",") if p.strip()):
        name, eq, size = part.partition("=")
        name = name.strip()
        try:
            value = int(size)
        except ValueError:
            value = None
        if not eq or value is None:
            raise ShardingError(f"{flag} {spec!r}: expected axis=size[,axis=size...] with axes from {MESH_AXES}")
        if name not in MESH_AXES:
            raise ShardingError(f"{flag} {spec!r}: mesh axis {name!r} unknown; valid axes: {MESH_AXES}")
        out[name] = value
    return out


def shard(tree, shardings):
    """Places every leaf on its sharding (a no-op for leaves already there)."""
    return jax.tree.map(jax.device_put, tree, shardings)
