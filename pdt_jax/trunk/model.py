"""The GPT-OSS decoder as pure functions over (params, tokens, cache).

    h = embed(tokens)
    per layer: h = h + attn(rms(h));  h = hooks.after_attention(layer, h, ctx)
               h = h + moe(rms(h));   h = hooks.after_mlp(layer, h, ctx)
    hidden = rms(h);  logits = hidden @ unembed

``hooks`` is where the PDT sidecar plugs in (SNC after attention, stream adapters after the MLP):
a static object whose methods get the layer index, the residual stream and a pytree ``ctx`` passed
through jit. ``hooks=None`` adds nothing to the traced computation.

Two entry points share the layer code:
  * ``prefill``: a fresh right-padded batch [B, T] with per-row lengths; attention within the batch
    only; optionally builds a KV cache sized ``max_len``.
  * ``extend``: T ≤ slack+1 new tokens per row appended to an existing cache (decode: T = 1);
    the keys are written first, then every query attends over the cache.
"""
from __future__ import annotations

import functools
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from pdt_jax.trunk import attention, cache as kv, moe as moe_lib, rope
from pdt_jax.trunk.config import TrunkConfig


class LayerHooks(Protocol):
    def after_attention(self, layer: int, h_BxTxD: jax.Array, ctx: Any) -> jax.Array: ...
    def after_mlp(self, layer: int, h_BxTxD: jax.Array, ctx: Any) -> jax.Array: ...


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (scale.astype(jnp.float32) * xf).astype(x.dtype)


def _qkv(lp: dict, x: jax.Array, cos, sin):
    """q [B, T, Hq, hd]; k, v [B, Hkv, T, hd] (the cache layout)."""
    q = jnp.einsum("btd,dhk->bthk", x, lp["q"]) + lp["q_bias"]
    k = jnp.einsum("btd,dhk->bthk", x, lp["k"]) + lp["k_bias"]
    v = jnp.einsum("btd,dhk->bthk", x, lp["v"]) + lp["v_bias"]
    return rope.apply(q, cos, sin), rope.apply(k, cos, sin).transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)


def _out(lp: dict, o_BxTxHxD: jax.Array) -> jax.Array:
    B, T, H, K = o_BxTxHxD.shape
    return jnp.einsum("btf,fd->btd", o_BxTxHxD.reshape(B, T, H * K), lp["o"].reshape(H * K, -1)) + lp["o_bias"]


def _mlp(lp: dict, h: jax.Array, cfg: TrunkConfig, moe_impl: str) -> jax.Array:
    B, T, D = h.shape
    x = rms_norm(h, lp["mlp_norm"], cfg.rms_norm_eps).reshape(B * T, D)
    return moe_lib.moe(lp, x, cfg, moe_impl).reshape(B, T, D)


def _window(cfg: TrunkConfig, layer: int) -> int | None:
    return cfg.sliding_window if cfg.is_sliding(layer) else None


def embed(params: dict, tokens_BxT: jax.Array) -> jax.Array:
    return jnp.take(params["embed"], tokens_BxT, axis=0)


def final_hidden(params: dict, h_BxTxD: jax.Array, cfg: TrunkConfig) -> jax.Array:
    return rms_norm(h_BxTxD, params["final_norm"], cfg.rms_norm_eps)


def unembed(params: dict, hidden_BxTxD: jax.Array) -> jax.Array:
    """float32 logits [B, T, V]."""
    return jnp.einsum("btd,dv->btv", hidden_BxTxD, params["unembed"], preferred_element_type=jnp.float32)


def prefill(params: dict, tokens_BxT: jax.Array, lengths_B: jax.Array, *, cfg: TrunkConfig,
            max_len: int | None = None, slack: int = 64, hooks: LayerHooks | None = None,
            ctx: Any = None, moe_impl: str = "auto", remat: bool = False, q_chunk: int | None = None,
            layer_sharding=None):
    """Returns (hidden [B, T, D] after the final norm, KVCache or None when max_len is None).

    Training's memory knobs (same values): ``remat`` recomputes each layer in the backward pass
    from its input; ``q_chunk`` computes attention that many queries at a time;
    ``layer_sharding`` (per layer, the shardings of its parameters) holds each layer's parameters to
    their own (FSDP) sharding inside the layer, so the partitioner gathers them there — inside the
    rematerialised region — and not once for the whole pass (measured on XLA:GPU's 8-GPU plan of
    the 20B stage-4 step: 5.9 → 3.5 GB per layer, bench/memory_plan.py --gpu-target)."""
    B, T = tokens_BxT.shape
    pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    cos, sin = rope.cos_sin(cfg, pos)
    valid = jnp.ones((B, T), bool)  # causality alone keeps real queries off right padding
    rings = kv.ring_sizes(cfg, max_len, slack) if max_len is not None else None
    if max_len is not None and T > max_len:
        raise ValueError(f"prefill: {T} tokens do not fit a cache of max_len={max_len}")
    h = embed(params, tokens_BxT)
    ks, vs = [], []

    def layer(i, h, lp, ctx):
        if layer_sharding is not None:
            lp = jax.tree.map(jax.lax.with_sharding_constraint, lp, layer_sharding[i])
        x = rms_norm(h, lp["attn_norm"], cfg.rms_norm_eps)
        q, k, v = _qkv(lp, x, cos, sin)
        mask = attention.causal_mask(pos, pos, valid, _window(cfg, i))
        h = h + _out(lp, attention.attend(q, k, v, mask, lp["sinks"], cfg.head_dim ** -0.5, q_chunk=q_chunk))
        if hooks is not None:
            h = hooks.after_attention(i, h, ctx)
        h = h + _mlp(lp, h, cfg, moe_impl)
        if hooks is not None:
            h = hooks.after_mlp(i, h, ctx)
        return h, k, v

    for i, lp in enumerate(params["layers"]):
        body = functools.partial(layer, i)
        if remat:   # the backward pass keeps each layer's input and recomputes the rest
            body = jax.checkpoint(body)
        h, k, v = body(h, lp, ctx)
        if rings is not None:
            ks.append(kv.fill_from_sequence(k, lengths_B, rings[i]))
            vs.append(kv.fill_from_sequence(v, lengths_B, rings[i]))
    cache = None
    if max_len is not None:
        cache = kv.KVCache(k=ks, v=vs, length=lengths_B.astype(jnp.int32), max_len=max_len)
    return final_hidden(params, h, cfg), cache


def extend(params: dict, tokens_BxT: jax.Array, cache: kv.KVCache, *, cfg: TrunkConfig,
           active_B: jax.Array | None = None, hooks: LayerHooks | None = None, ctx: Any = None,
           moe_impl: str = "auto"):
    """Append T tokens to every active row. Returns (hidden [B, T, D], updated cache).

    Inactive rows compute garbage that the caller ignores; their cache and length are unchanged.
    """
    B, T = tokens_BxT.shape
    if active_B is None:
        active_B = jnp.ones((B,), bool)
    pos = cache.length[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]
    cos, sin = rope.cos_sin(cfg, pos)
    last = cache.length + T - 1
    h = embed(params, tokens_BxT)
    new_k, new_v = [], []
    for i, lp in enumerate(params["layers"]):
        x = rms_norm(h, lp["attn_norm"], cfg.rms_norm_eps)
        q, k, v = _qkv(lp, x, cos, sin)
        k_ring = kv.write(cache.k[i], k, pos, active_B)
        v_ring = kv.write(cache.v[i], v, pos, active_B)
        slot_pos = kv.slot_positions(last, k_ring.shape[2])
        mask = attention.causal_mask(pos, slot_pos, slot_pos >= 0, _window(cfg, i))
        h = h + _out(lp, attention.attend(q, k_ring, v_ring, mask, lp["sinks"], cfg.head_dim ** -0.5))
        if hooks is not None:
            h = hooks.after_attention(i, h, ctx)
        h = h + _mlp(lp, h, cfg, moe_impl)
        if hooks is not None:
            h = hooks.after_mlp(i, h, ctx)
        new_k.append(k_ring)
        new_v.append(v_ring)
    length = cache.length + jnp.where(active_B, T, 0).astype(jnp.int32)
    return final_hidden(params, h, cfg), cache.replace(k=new_k, v=new_v, length=length)
