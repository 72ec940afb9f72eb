"""Any parameter pytree (nested dicts/lists of arrays: the sidecar, heads, the trunk) ↔ a torch
``state_dict`` saved as ``.pt``, so PyTorch users can read what we train.

Naming rule: a leaf's name is its pytree path with dict keys and list indices joined by dots, e.g.
``{"snc": {"layers": [.., {"q": {"weight": w}}]}}`` → ``snc.layers.16.q.weight`` (the PyTorch
``named_parameters`` convention). Keys must therefore be non-empty strings without dots; a level
whose keys are exactly ``0..n-1`` comes back as a list. Arrays keep their shape and dtype (bfloat16
included); nothing is transposed — our kernels are [in, out] where a torch ``Linear`` is [out, in].

Files are plain tensors in a dict, written atomically, and read with ``torch.load(weights_only=True)``
(ARCHITECTURE.md D11: never unpickle arbitrary objects).

    save_torch(params, "sidecar.pt")
    params = load_torch("sidecar.pt")              # nested dicts/lists of numpy arrays
    params = load_torch("sidecar.pt", like=params)  # checked against a template: names, shapes, dtypes
"""
from __future__ import annotations

import os
import tempfile

import ml_dtypes
import numpy as np

from pdt_jax.trunk.hf_layout import CheckpointError


def dotted(path) -> str:
    """The dotted name of a jax key path (DictKey / SequenceKey entries)."""
    parts = []
    for p in path:
        key = str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p))))
        if not key or "." in key:
            raise ValueError(f"pytree key {key!r} under '{'.'.join(parts)}': expected a non-empty name without dots")
        parts.append(key)
    return ".".join(parts)


def flatten(tree) -> dict[str, np.ndarray]:
    """Dotted name → numpy array for every leaf, in jax's leaf order (dict keys sorted)."""
    import jax

    return {dotted(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: dict[str, np.ndarray]):
    """The inverse of ``flatten``: levels keyed exactly 0..n-1 become lists."""
    root: dict = {}
    for name, value in flat.items():
        node = root
        *parents, last = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    def listify(node):
        if not isinstance(node, dict):
            return node
        node = {k: listify(v) for k, v in node.items()}
        if node and sorted(node) == sorted(str(i) for i in range(len(node))):
            return [node[str(i)] for i in range(len(node))]
        return node

    return listify(root)


def to_torch(array: np.ndarray):
    import torch

    shape = np.shape(array)
    array = np.ascontiguousarray(array).reshape(shape)   # ascontiguousarray makes a 0-d array 1-d
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(array.copy())


def from_torch(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return tensor.numpy().copy()


def save_state_dict(state: dict[str, np.ndarray], path: str) -> None:
    """Writes {name: array} as a torch .pt state_dict (temporary file, then rename)."""
    import torch

    path = os.path.abspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=os.path.dirname(path))
    os.close(fd)
    try:
        torch.save({name: to_torch(a) for name, a in state.items()}, tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_torch(tree, path: str) -> None:
    save_state_dict(flatten(tree), path)


def load_torch(path: str, like=None):
    """Reads a .pt state_dict → nested numpy pytree. With ``like`` (a template pytree), every name,
    shape and dtype must match it, and the result has its structure."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a torch state_dict readable with weights_only=True "
                              f"({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
    flat = {name: from_torch(t) for name, t in state.items()}
    if like is None:
        return unflatten(flat)
    want = flatten(like)
    for name in flat:
        if name not in want:
            raise CheckpointError(f"{path}: unknown tensor '{name}'; expected names like '{next(iter(want), '')}'")
    for name, ref in want.items():
        if name not in flat:
            raise CheckpointError(f"{path}: missing tensor '{name}', expected shape {ref.shape} {ref.dtype}")
        got = flat[name]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise CheckpointError(f"{path}: tensor '{name}' is {got.shape} {got.dtype}, expected {ref.shape} {ref.dtype}")
    import jax

    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), [flat[name] for name in want])
