"""Shared Notes Cross-Attention (SNC): every token of a stream attends over the notes it may see.

Queries come from the (RMS-normalised) residual stream after self-attention, keys and values from
the notes in the stream's visible window. A token whose window is empty gets exactly zero, so the
residual is untouched (no uniform attention over padding). The caller scales the result by
λ_l · g and adds it to the residual (ARCHITECTURE.md D3).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pdt_jax.trunk.attention import over_query_chunks


def rms(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)


def snc(p: dict, h_BxTxD: jax.Array, notes_BxWxN: jax.Array, mask_BxTxW: jax.Array,
        entry_embed_BxWxN: jax.Array, q_chunk: int | None = None) -> jax.Array:
    """Returns the float32 residual delta [B, T, D]. ``mask`` may be [B, 1, W] (one window per row).
    ``entry_embed`` tells the reader who wrote each note (a learned embedding per producer stream,
    and one for snapshot 0): without it SNC would be blind to authorship, and swapping two
    producers' notes (``--cf-swap``) could never matter."""
    k, v = snc_keys_values(p, notes_BxWxN, entry_embed_BxWxN)
    T = h_BxTxD.shape[1]
    if q_chunk is None or q_chunk >= T or mask_BxTxW.shape[1] != T:
        return snc_attend(p, h_BxTxD, k, v, mask_BxTxW)
    # Training: [B, Hs, q_chunk, W] scores at a time, recomputed in the backward pass.
    return over_query_chunks(lambda h, m: snc_attend(p, h, k, v, m), q_chunk, h_BxTxD, mask_BxTxW)


def snc_keys_values(p: dict, notes_BxWxN: jax.Array, entry_embed_BxWxN: jax.Array):
    """The keys and values of a window ([B, Hs, W, ds] each). They depend on the window only, so a
    decoder that reads one window for several tokens computes them once (``HookContext.snc_kv``)."""
    notes = notes_BxWxN.astype(jnp.float32) + entry_embed_BxWxN
    k = jnp.einsum("bwn,nhk->bhwk", notes, p["k"])
    v = jnp.einsum("bwn,nhk->bhwk", notes, p["v"])
    return k, v


def snc_attend(p: dict, h_BxTxD: jax.Array, k_BxHxWxK: jax.Array, v_BxHxWxK: jax.Array,
               mask_BxTxW: jax.Array) -> jax.Array:
    """SNC given the window's keys and values (``snc_keys_values``)."""
    ds = p["q"].shape[-1]
    q = jnp.einsum("btd,dhk->bhtk", rms(h_BxTxD), p["q"])
    scores = jnp.einsum("bhtk,bhwk->bhtw", q, k_BxHxWxK) * ds ** -0.5
    mask = mask_BxTxW[:, None, :, :]
    scores = jnp.where(mask, scores, -1e30)
    probs = jax.nn.softmax(scores, axis=-1) * jnp.any(mask, axis=-1, keepdims=True)
    ctx = jnp.einsum("bhtw,bhwk->bhtk", probs, v_BxHxWxK)
    return jnp.einsum("bhtk,hkd->btd", ctx, p["o"])
