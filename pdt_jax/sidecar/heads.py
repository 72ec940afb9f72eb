"""The sidecar's heads: planner, plan → snapshot 0, notes and speculation heads, agreement
(readiness) and the stream classifier (coverage has its own module, ``coverage.py``). All read the
trunk's final hidden states.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _l2(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def planner_logits(p: dict, plan_embed: jax.Array, hidden_PxLxD: jax.Array, mask_PxL: jax.Array) -> jax.Array:
    """Each of the S slots attends over the prompt tokens (of all the prompt's stream rows) and its
    summary is scored against every plan embedding (D4: tied to E_plan, no H → S·V_p layer).
    Returns float32 [P, S, V_p]."""
    h = hidden_PxLxD.astype(jnp.float32)
    keys = jnp.einsum("pld,de->ple", h, p["key"])
    values = jnp.einsum("pld,de->ple", h, p["value"])
    scores = jnp.einsum("se,ple->psl", p["slot_query"], keys) * keys.shape[-1] ** -0.5
    scores = jnp.where(mask_PxL[:, None, :], scores, -1e30)
    slots = jnp.einsum("psl,ple->pse", jax.nn.softmax(scores, axis=-1), values) + p["out_bias"]
    return jnp.einsum("pse,ve->psv", slots, plan_embed)


def plan_snapshot(plan_embed: jax.Array, plan_to_notes: jax.Array, plan_ids_PxS: jax.Array) -> jax.Array:
    """Snapshot 0: the L2-normalised masked mean of the active slots' plan embeddings (id 0 = null),
    projected to notes space. A plan with no active slot gives the zero vector. [P, N]."""
    active = (plan_ids_PxS != 0).astype(jnp.float32)
    e = plan_embed[plan_ids_PxS] * active[..., None]
    mean = e.sum(axis=1) / jnp.maximum(active.sum(axis=1, keepdims=True), 1.0)
    return _l2(mean @ plan_to_notes) * (active.sum(axis=1, keepdims=True) > 0)


def note_head(p: dict, pooled_xD: jax.Array) -> jax.Array:
    """Notes / speculation head: a pooled block summary → a note [.., N]."""
    return pooled_xD.astype(jnp.float32) @ p["w"] + p["b"]


def block_pool(hidden_BxTxD: jax.Array, block_BxT: jax.Array, num_blocks: int) -> tuple[jax.Array, jax.Array]:
    """Mean hidden state of each block (block id −1 = not part of any block).
    Returns (pooled [B, U, D] float32, present [B, U] bool)."""
    onehot = (block_BxT[:, :, None] == jnp.arange(num_blocks)[None, None, :]).astype(jnp.float32)
    counts = onehot.sum(axis=1)
    pooled = jnp.einsum("btu,btd->bud", onehot, hidden_BxTxD.astype(jnp.float32))
    return pooled / jnp.maximum(counts, 1.0)[..., None], counts > 0


def readiness_logit(p: dict, hidden_xD, window_xN, coverage_xS, note_xN) -> jax.Array:
    """The paper's r = AgreeHead(H, W, c, n): block summary, visible-window summary, coverage
    logits and the stream's provisional note → one readiness logit (sigmoid ≥ γ commits)."""
    x = jnp.concatenate([hidden_xD.astype(jnp.float32), window_xN.astype(jnp.float32),
                         coverage_xS.astype(jnp.float32), note_xN.astype(jnp.float32)], axis=-1)
    z = jax.nn.gelu(x @ p["w1"] + p["b1"])
    return z @ p["w2"] + p["b2"]


def window_summary(notes_xWxN: jax.Array, mask_xW: jax.Array) -> jax.Array:
    m = mask_xW.astype(jnp.float32)
    return jnp.einsum("...wn,...w->...n", notes_xWxN.astype(jnp.float32), m) / jnp.maximum(m.sum(-1, keepdims=True), 1.0)


def stream_logits(p: dict, hidden_BxTxD: jax.Array, mask_BxT: jax.Array) -> jax.Array:
    m = mask_BxT.astype(jnp.float32)
    pooled = jnp.einsum("btd,bt->bd", hidden_BxTxD.astype(jnp.float32), m) / jnp.maximum(m.sum(-1, keepdims=True), 1.0)
    return jnp.tanh(pooled @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
