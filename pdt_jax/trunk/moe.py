"""GPT-OSS mixture of experts: router (linear + bias) → top-k → softmax over the k selected logits →
experts with a fused, interleaved gate/up projection and the clamped SwiGLU (limit 7, alpha 1.702).

Four exact implementations of the same function, chosen by the number of tokens (``pick_impl``):
  * ``gather``: gathers the k selected experts' weights per token — decode (few tokens) reads only
    the experts it uses;
  * ``dense``: every expert on every token, weighted by a dense routing matrix (zeros off the top-k)
    — simple and fast for short prefills on CPU, and the expert-parallel form on a mesh whose
    ``expert`` axis splits the experts: each device runs its own experts on every token and the
    combine sums over devices, where ``gather`` and ``ragged`` would fetch other devices' weights;
  * ``blocked``: tokens sorted by expert into blocks of ``b`` rows that each belong to one expert
    (every expert's group padded to a multiple of ``b``), then a scan over the blocks, each one
    matmul against its expert's weights — long prefills and training. Memory and FLOPs are those
    of the k selected experts plus at most E padded blocks, on every backend;
  * ``ragged``: the same grouping through ``jax.lax.ragged_dot``. XLA:CPU and, without
    experimental flags, XLA:GPU lower ragged_dot to a dense dot against all E experts with a mask
    (measured: an f32[N·k, E·2I] temporary, 18 GB per layer for 6144 GPT-OSS-20B tokens), so it is
    only chosen on request.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec as P

from pdt_jax.trunk.config import TrunkConfig


def route(p: dict, x_NxD: jnp.ndarray, cfg: TrunkConfig):
    """Returns (weights [N, k] float32, experts [N, k] int32, logits [N, E] float32)."""
    logits = jnp.einsum("nd,de->ne", x_NxD, p["router"], preferred_element_type=jnp.float32)
    logits = logits + p["router_bias"].astype(jnp.float32)
    top_vals, top_idx = jax.lax.top_k(logits, cfg.experts_per_token)
    return jax.nn.softmax(top_vals, axis=-1), top_idx, logits


def swiglu(gate_up: jnp.ndarray, cfg: TrunkConfig) -> jnp.ndarray:
    """gate_up [..., 2I] interleaved (even = gate, odd = up) → [..., I]."""
    gate, up = gate_up[..., ::2], gate_up[..., 1::2]
    gate = jnp.minimum(gate, cfg.swiglu_limit)  # the gate is clamped from above only
    up = jnp.clip(up, -cfg.swiglu_limit, cfg.swiglu_limit)
    return (up + 1) * (gate * jax.nn.sigmoid(cfg.swiglu_alpha * gate))


def _gather(p, x, weights, experts, cfg):
    w1 = p["gate_up"][experts]                                   # [N, k, D, 2I]
    h = jnp.einsum("nd,nkdf->nkf", x, w1) + p["gate_up_bias"][experts]
    h = swiglu(h, cfg)
    out = jnp.einsum("nki,nkid->nkd", h, p["down"][experts]) + p["down_bias"][experts]
    return jnp.einsum("nkd,nk->nd", out.astype(jnp.float32), weights)


def _dense(p, x, weights, experts, cfg):
    # Experts as the leading batch dimension of both operands: a batched matmul over the stored
    # [E, D, 2I] / [E, I, D] weights, which XLA then never has to transpose.
    xe = jnp.broadcast_to(x, (cfg.num_experts,) + x.shape)
    h = jnp.einsum("end,edf->enf", xe, p["gate_up"]) + p["gate_up_bias"][:, None, :]
    h = swiglu(h, cfg)
    out = jnp.einsum("eni,eid->end", h, p["down"]) + p["down_bias"][:, None, :]
    return jnp.einsum("end,ne->nd", out.astype(jnp.float32), _combine(x.shape[0], cfg.num_experts, weights, experts))


def _ragged(p, x, weights, experts, cfg):
    N, k = experts.shape
    flat_expert = experts.reshape(-1)
    order = jnp.argsort(flat_expert, stable=True)
    token_of = order // k
    sorted_expert = flat_expert[order]
    group_sizes = jnp.bincount(flat_expert, length=cfg.num_experts).astype(jnp.int32)
    xs = x[token_of]
    h = jax.lax.ragged_dot(xs, p["gate_up"], group_sizes) + p["gate_up_bias"][sorted_expert]
    h = swiglu(h, cfg)
    out = jax.lax.ragged_dot(h, p["down"], group_sizes) + p["down_bias"][sorted_expert]
    out = out.astype(jnp.float32) * weights.reshape(-1)[order][:, None]
    return jnp.zeros((N, x.shape[1]), jnp.float32).at[token_of].add(out)


def block_rows(num_assignments: int, num_experts: int) -> int:
    """Rows per block of ``blocked``: the largest power of two (16 … 512) with E blocks of padding
    at most a quarter of the N·k assignments."""
    b = 16
    while b < 512 and 2 * b * num_experts * 4 <= num_assignments:
        b *= 2
    return b


def _blocked(p, x, weights, experts, cfg):
    N, k = experts.shape
    E, M, D = cfg.num_experts, N * k, x.shape[1]
    b = block_rows(M, E)
    nb = -(-M // b) + E                                      # sum_e ceil(size_e / b) <= this
    flat_expert = experts.reshape(-1)
    order = jnp.argsort(flat_expert, stable=True)
    token_of = order // k
    sorted_expert = flat_expert[order]
    sizes = jnp.bincount(flat_expert, length=E).astype(jnp.int32)
    padded = -(-sizes // b) * b
    start = jnp.cumsum(sizes) - sizes
    padded_start = jnp.cumsum(padded) - padded
    dest = padded_start[sorted_expert] + jnp.arange(M, dtype=jnp.int32) - start[sorted_expert]
    # Block j belongs to the expert whose padded range holds row j·b; blocks past the last
    # expert's range are all padding (zero rows) and run expert E − 1.
    block_expert = jnp.minimum(jnp.searchsorted(jnp.cumsum(padded), jnp.arange(nb) * b, side="right"), E - 1)
    xs = jnp.zeros((nb * b, D), x.dtype).at[dest].set(x[token_of]).reshape(nb, b, D)

    # The backward pass keeps each block's gate/up activations and re-reads the expert's weights
    # (a dynamic slice), instead of a stacked copy of every block's weights as scan residuals.
    @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.save_only_these_names("moe_gate_up"))
    def one_block(_, inputs):
        xb, e = inputs
        h = checkpoint_name(jnp.dot(xb, p["gate_up"][e]) + p["gate_up_bias"][e], "moe_gate_up")
        h = swiglu(h, cfg)
        return None, jnp.dot(h, p["down"][e]) + p["down_bias"][e]

    _, out = jax.lax.scan(one_block, None, (xs, block_expert))
    out = out.reshape(nb * b, D)[dest].astype(jnp.float32) * weights.reshape(-1)[order][:, None]
    return jnp.zeros((N, D), jnp.float32).at[token_of].add(out)


def _combine(N, E, weights, experts):
    """[N, E] routing weights, zero off each token's top-k."""
    return jnp.zeros((N, E), jnp.float32).at[jnp.arange(N)[:, None], experts].add(weights)


IMPLS = {"gather": _gather, "dense": _dense, "blocked": _blocked, "ragged": _ragged}


@dataclasses.dataclass(frozen=True)
class PerShard:
    """Run ``impl`` on each device's own tokens: a ``shard_map`` over the mesh axes that split the
    rows (training's FSDP mesh), with the expert weights gathered whole inside it, as FSDP gathers
    a layer. Without it, ``blocked``/``ragged`` sort the token–expert pairs of every device's rows
    together — an all-gather feeds the sort and every device computes the MoE of every row."""
    mesh: Any
    axes: tuple[str, ...]
    impl: str = "auto"


MOE_KEYS = ("router", "router_bias", "gate_up", "gate_up_bias", "down", "down_bias")


def _per_shard(p, x_NxD, cfg, spec: PerShard):
    rows = P(spec.axes, None)
    fn = jax.shard_map(lambda mp, x: moe(mp, x, cfg, spec.impl), mesh=spec.mesh, in_specs=(P(), rows),
                       out_specs=rows)
    return fn({k: p[k] for k in MOE_KEYS}, x_NxD)


def pick_impl(num_tokens: int, cfg: TrunkConfig, impl: str = "auto") -> str:
    if impl != "auto":
        if impl not in IMPLS:
            raise ValueError(f"moe_impl: expected one of {sorted(IMPLS)} or 'auto', found {impl!r}")
        return impl
    if num_tokens > 256:
        return "blocked"
    # XLA:CPU materialises gathers slowly; on accelerators reading only the selected experts wins
    # while the tokens touch few of them.
    if jax.default_backend() != "cpu" and num_tokens * cfg.experts_per_token <= cfg.num_experts // 2:
        return "gather"
    return "dense"


def moe(p: dict, x_NxD: jnp.ndarray, cfg: TrunkConfig, impl: str = "auto") -> jnp.ndarray:
    """[N, D] → [N, D] in x's dtype. ``impl``: a name of ``IMPLS``, 'auto', or ``PerShard``."""
    if isinstance(impl, PerShard):
        return _per_shard(p, x_NxD, cfg, impl)
    weights, experts, _ = route(p, x_NxD, cfg)
    fn = IMPLS[pick_impl(x_NxD.shape[0], cfg, impl)]
    return fn(p, x_NxD, weights, experts, cfg).astype(x_NxD.dtype)
