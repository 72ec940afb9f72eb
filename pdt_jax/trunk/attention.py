"""Grouped-query attention with one learned sink logit per query head.

The sink is an extra logit in each softmax row whose value column is dropped, so a head can put
probability mass "nowhere": p_ij = exp(s_ij) / (Σ_k exp(s_ik) + exp(sink_h)). Scores, the sink and
the softmax are float32 whatever the model dtype; the maximum is taken over keys *and* sink so that
exp never overflows. This XLA dot-product path is the reference everywhere (ARCHITECTURE.md D10).
"""
from __future__ import annotations

import jax.numpy as jnp

NEG_INF = -1e30  # finite: a fully masked row (a padding query) must not produce NaN


def attend(q_BxTxHxD: jnp.ndarray, k_BxKxSxD: jnp.ndarray, v_BxKxSxD: jnp.ndarray,
           mask_BxTxS: jnp.ndarray, sinks_H: jnp.ndarray, scale: float) -> jnp.ndarray:
    """Returns [B, T, H, D] in q's dtype. Query head h reads KV head h // (H // K) (as HF repeat_kv).

    Keys and values are [B, K, S, D] — batch and KV-head major, the layout the KV cache keeps — so
    both dots are plain batched matmuls and XLA never transposes the cache."""
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


def causal_mask(q_pos_BxT: jnp.ndarray, k_pos_BxS: jnp.ndarray, k_valid_BxS: jnp.ndarray,
                window: int | None) -> jnp.ndarray:
    """[B, T, S] bool: key position ≤ query position, within the window (the window counts the
    query itself: a window of W keeps W keys), and the key slot holds a real token."""
    diff = q_pos_BxT[:, :, None] - k_pos_BxS[:, None, :]
    mask = (diff >= 0) & k_valid_BxS[:, None, :]
    if window is not None:
        mask &= diff < window
    return mask
