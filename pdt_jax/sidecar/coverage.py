"""Plan coverage: how much of each plan item a stream has written so far.

Plan-item queries (from E_plan) attend over everything the stream wrote; the attention read-out is
scored per item. "So far" is a prefix, so the softmax is kept as an online-softmax state
(running max m, denominator d, numerator n) that two pieces of text combine with ``merge`` — an
associative operation. Training reads every block end of a teacher-forced stream at once with an
associative scan of per-token states; the runtime merges each round's tokens into the state it
carries from round to round. Both use the same ``project``, ``merge`` and ``readout``, so they
compute the same function (tests check both against a plain softmax per prefix).

Shapes: B rows, S plan items, H heads of width hd (C = H · hd); a state is
m [B, H, S, ...], d [B, H, S, ...], n [B, H, S, ..., hd].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

EMPTY = -1e30  # the running max of a state that has seen no token (exp(EMPTY - m) underflows to 0)


def project(p: dict, plan_embed: jax.Array, item_ids_BxS: jax.Array, hidden_BxTxD: jax.Array, num_heads: int):
    """Scores [B, H, S, T] (scaled) and values [B, T, H, hd] of every token for every plan item."""
    B, T, _ = hidden_BxTxD.shape
    C = p["key"].shape[-1]
    hd = C // num_heads
    h = hidden_BxTxD.astype(jnp.float32)
    q = (plan_embed[item_ids_BxS] @ p["query"]).reshape(B, -1, num_heads, hd)
    k = (h @ p["key"]).reshape(B, T, num_heads, hd)
    v = (h @ p["value"]).reshape(B, T, num_heads, hd)
    return jnp.einsum("bshk,bthk->bhst", q, k) * hd ** -0.5, v


def empty(B: int, H: int, S: int, hd: int):
    return (jnp.full((B, H, S), EMPTY, jnp.float32), jnp.zeros((B, H, S), jnp.float32),
            jnp.zeros((B, H, S, hd), jnp.float32))


def merge(a, b):
    """The online-softmax state of two pieces of text, one after the other (associative)."""
    (ma, da, na), (mb, db, nb) = a, b
    m = jnp.maximum(ma, mb)
    sa, sb = jnp.exp(ma - m), jnp.exp(mb - m)
    return m, da * sa + db * sb, na * sa[..., None] + nb * sb[..., None]


def tokens_state(scores_BxHxSxT: jax.Array, values_BxTxHxK: jax.Array, valid_BxT: jax.Array):
    """The state of a set of tokens (the ``valid`` ones), reduced over T."""
    valid = valid_BxT[:, None, None, :]
    s = jnp.where(valid, scores_BxHxSxT, EMPTY)
    m = s.max(-1)
    w = jnp.where(valid, jnp.exp(s - m[..., None]), 0.0)
    return m, w.sum(-1), jnp.einsum("bhst,bthk->bhsk", w, values_BxTxHxK)


def prefix_states(scores_BxHxSxT: jax.Array, values_BxTxHxK: jax.Array, valid_BxT: jax.Array):
    """The state of every prefix [0, t] of the tokens: m, d [B, H, S, T], n [B, H, S, T, hd]."""
    valid = valid_BxT[:, None, None, :]
    m = jnp.where(valid, scores_BxHxSxT, EMPTY)
    d = valid.astype(jnp.float32) * jnp.ones_like(m)
    n = jnp.einsum("bhst,bthk->bhstk", d, values_BxTxHxK)
    return jax.lax.associative_scan(merge, (m, d, n), axis=3)


def readout(p: dict, state) -> jax.Array:
    """Coverage logits [B, ..., S] from a state (0 where the stream has written nothing yet)."""
    _, d, n = state
    ctx = n / jnp.maximum(d, 1e-30)[..., None]                     # [B, H, S, ..., hd]
    ctx = jnp.moveaxis(ctx, 1, -2)                                  # [B, S, ..., H, hd]
    ctx = ctx.reshape(ctx.shape[:-2] + (-1,))
    ctx = jnp.moveaxis(ctx, 1, -2)                                  # [B, ..., S, C]
    logits = ctx @ p["score"] + p["bias"]
    seen = jnp.moveaxis((d > 0).any(1), 1, -1)                      # [B, ..., S]
    return jnp.where(seen, logits, 0.0)
