"""Grouped-query attention with one learned sink logit per query head.

The sink is an extra logit in each softmax row whose value column is dropped, so a head can put
probability mass "nowhere": p_ij = exp(s_ij) / (Σ_k exp(s_ik) + exp(sink_h)). Scores, the sink and
the softmax are float32 whatever the model dtype; the maximum is taken over keys *and* sink so that
exp never overflows. This XLA dot-product path is the reference everywhere (ARCHITECTURE.md D10).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e30  # finite: a fully masked row (a padding query) must not produce NaN


def attend(q_BxTxHxD: jnp.ndarray, k_BxKxSxD: jnp.ndarray, v_BxKxSxD: jnp.ndarray,
           mask_BxTxS: jnp.ndarray, sinks_H: jnp.ndarray, scale: float, q_chunk: int | None = None) -> jnp.ndarray:
    """Returns [B, T, H, D] in q's dtype. Query head h reads KV head h // (H // K) (as HF repeat_kv).

    Keys and values are [B, K, S, D] — batch and KV-head major, the layout the KV cache keeps — so
    both dots are plain batched matmuls and XLA never transposes the cache. With ``q_chunk`` < T
    the queries go ``q_chunk`` at a time (a scan whose steps are recomputed in the backward pass):
    the float32 scores are [B, H, q_chunk, S] instead of [B, H, T, S], same values."""
    T = q_BxTxHxD.shape[1]
    if q_chunk is not None and q_chunk < T and mask_BxTxS.shape[1] == T:
        return over_query_chunks(lambda q, m: attend(q, k_BxKxSxD, v_BxKxSxD, m, sinks_H, scale), q_chunk,
                                 q_BxTxHxD, mask_BxTxS)
    B, T, H, D = q_BxTxHxD.shape
    K = k_BxKxSxD.shape[1]
    G = H // K
    q = q_BxTxHxD.reshape(B, T, K, G, D).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, D)
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k_BxKxSxD, preferred_element_type=jnp.float32)
    scores = scores.reshape(B, K, G, T, -1) * scale
    scores = jnp.where(mask_BxTxS[:, None, None, :, :], scores, NEG_INF)
    sinks = sinks_H.astype(jnp.float32).reshape(1, K, G, 1, 1)
    peak = jnp.maximum(scores.max(axis=-1, keepdims=True), sinks)
    weights = jnp.exp(scores - peak)
    denom = weights.sum(axis=-1, keepdims=True) + jnp.exp(sinks - peak)
    probs = (weights / denom).astype(v_BxKxSxD.dtype).reshape(B, K, G * T, -1)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v_BxKxSxD, preferred_element_type=jnp.float32)
    out = out.reshape(B, K, G, T, D).transpose(0, 3, 1, 2, 4)
    return out.reshape(B, T, H, D).astype(q_BxTxHxD.dtype)


def over_query_chunks(f, chunk: int, *xs_BxT):
    """``f(*xs)`` for a function that treats each query position (axis 1 of every ``xs``, e.g.
    queries and their mask rows) independently, computed ``chunk`` positions at a time: a scan
    whose steps are recomputed in the backward pass, so only one chunk's intermediates (attention
    scores) are live. Positions are padded to a multiple of ``chunk``; the padding is dropped."""
    T = xs_BxT[0].shape[1]
    n = -(-T // chunk)
    pad = n * chunk - T

    def split(x):
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(x.shape[0], n, chunk, *x.shape[2:]), 1, 0)
    _, out = jax.lax.scan(jax.checkpoint(lambda _, xs: (None, f(*xs))), None, tuple(split(x) for x in xs_BxT))
    out = jnp.moveaxis(out, 0, 1)
    return out.reshape(out.shape[0], n * chunk, *out.shape[3:])[:, :T]


def causal_mask(q_pos_BxT: jnp.ndarray, k_pos_BxS: jnp.ndarray, k_valid_BxS: jnp.ndarray,
                window: int | None) -> jnp.ndarray:
    """[B, T, S] bool: key position ≤ query position, within the window (the window counts the
    query itself: a window of W keeps W keys), and the key slot holds a real token."""
    diff = q_pos_BxT[:, :, None] - k_pos_BxS[:, None, :]
    mask = (diff >= 0) & k_valid_BxS[:, None, :]
    if window is not None:
        mask &= diff < window
    return mask
