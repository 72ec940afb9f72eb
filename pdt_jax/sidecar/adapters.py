"""Per-stream bottleneck adapters: each stream has its own down/up projection pair.

Rows are laid out stream-minor (row = prompt · K + stream), so the per-stream weights are applied by
a batched matmul over the stream axis — no gather of weights per row, no Python loop over streams.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pdt_jax.sidecar.snc import rms


def adapter(p: dict, h_BxTxD: jax.Array, num_streams: int) -> jax.Array:
    """Returns the float32 residual delta [B, T, D], B = P · K."""
    B, T, D = h_BxTxD.shape
    K = num_streams
    x = rms(h_BxTxD).reshape(B // K, K, T, D)
    z = jnp.einsum("pktd,kdr->pktr", x, p["down"]) + p["down_bias"][None, :, None, :]
    z = jax.nn.gelu(z)
    out = jnp.einsum("pktr,krd->pktd", z, p["up"]) + p["up_bias"][None, :, None, :]
    return out.reshape(B, T, D)
