"""Token sampling: greedy, temperature, top-k and top-p (nucleus), as one jittable function.

``temperature`` and ``top_p`` are traced values (changing them never recompiles); ``top_k`` is
static because it sets a shape. temperature == 0 means greedy.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def sample(logits_BxV: jax.Array, key: jax.Array, temperature, top_p=1.0, top_k: int = 0) -> jax.Array:
    """Returns int32 [B]. Greedy decoding skips the sort/softmax work at run time (lax.cond)."""
    logits = logits_BxV.astype(jnp.float32)
    t = jnp.asarray(temperature, jnp.float32)
    return jax.lax.cond(t > 0, lambda: _draw(logits, key, t, top_p, top_k),
                        lambda: jnp.argmax(logits, axis=-1).astype(jnp.int32))


def _draw(logits, key, t, top_p, top_k):
    scaled = logits / jnp.maximum(t, 1e-6)
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
        scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    # Nucleus: keep the smallest set of tokens whose probability reaches top_p (the top token always).
    order = jnp.argsort(-scaled, axis=-1)
    sorted_logits = jnp.take_along_axis(scaled, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = before < jnp.asarray(top_p, jnp.float32)
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    scaled = jnp.where(keep, scaled, -jnp.inf)
    return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)


def top2_margin(logits_BxV: jax.Array) -> jax.Array:
    """float32 [B]: the gap between the two largest logits (a confidence diagnostic)."""
    top = jax.lax.top_k(logits_BxV.astype(jnp.float32), 2)[0]
    return top[:, 0] - top[:, 1]
