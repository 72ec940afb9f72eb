"""The KV cache: an explicit pytree of fixed-size per-layer rings plus one length per batch row.

Every layer stores its keys/values in a ring of R slots; position p lives in slot p mod R.
  * full-attention layers: R = max_len, so slot == position;
  * sliding layers: R = window + slack. The slack lets a row be rolled back by up to ``slack``
    tokens (ARCHITECTURE.md D2): the positions the window needs after a rollback have not been
    overwritten yet. Rolling a row back is nothing more than lowering its ``length``.
A slot's position is not stored; it is recomputed from the row's last position, which makes stale
slots (left by a rollback, or never written) fall outside the causal window by construction.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from pdt_jax.trunk.config import TrunkConfig


@flax.struct.dataclass
class KVCache:
    k: list  # per layer [B, Hkv, R_l, hd] (KV-head major: attention reads it without a transpose)
    v: list  # per layer [B, Hkv, R_l, hd]
    length: jax.Array  # [B] int32: tokens held by each row (positions 0 .. length-1)
    max_len: int = flax.struct.field(pytree_node=False, default=0)

    @property
    def batch(self) -> int:
        return self.length.shape[0]


def cache_axes(cache: KVCache) -> KVCache:
    """Logical axes of every leaf (pdt_jax/sharding.py): rows over ``batch``, KV heads over
    ``kv_heads``, slots over ``kv_seq``."""
    kv = ("batch", "kv_heads", "kv_seq", "head_dim")
    return cache.replace(k=[kv] * len(cache.k), v=[kv] * len(cache.v), length=("batch",))


def ring_sizes(cfg: TrunkConfig, max_len: int, slack: int) -> list[int]:
    return [min(max_len, cfg.sliding_window + slack) if cfg.is_sliding(i) else max_len
            for i in range(cfg.num_layers)]


def init_cache(cfg: TrunkConfig, batch: int, max_len: int, slack: int = 64, dtype=None) -> KVCache:
    dtype = dtype or jnp.dtype(cfg.dtype)
    shapes = [(batch, cfg.num_kv_heads, r, cfg.head_dim) for r in ring_sizes(cfg, max_len, slack)]
    return KVCache(k=[jnp.zeros(s, dtype) for s in shapes], v=[jnp.zeros(s, dtype) for s in shapes],
                   length=jnp.zeros((batch,), jnp.int32), max_len=max_len)


def slot_positions(last_pos_B: jnp.ndarray, ring: int) -> jnp.ndarray:
    """[B, ring] int32: the position held by each slot, given each row's newest position
    (negative = never written)."""
    slots = jnp.arange(ring, dtype=jnp.int32)
    return last_pos_B[:, None] - jnp.mod(last_pos_B[:, None] - slots[None, :], ring)


def fill_from_sequence(k_BxKxTxD: jnp.ndarray, lengths_B: jnp.ndarray, ring: int) -> jnp.ndarray:
    """Build a ring from a freshly encoded sequence: slot j takes the newest position ≡ j (mod ring)
    below the row's length, or zeros."""
    pos = slot_positions(lengths_B - 1, ring)
    idx = jnp.clip(pos, 0, k_BxKxTxD.shape[2] - 1)[:, None, :, None]
    taken = jnp.take_along_axis(k_BxKxTxD, idx, axis=2)
    return jnp.where((pos >= 0)[:, None, :, None], taken, 0).astype(k_BxKxTxD.dtype)


def write(ring_BxKxRxD: jnp.ndarray, new_BxKxTxD: jnp.ndarray, positions_BxT: jnp.ndarray,
          active_B: jnp.ndarray) -> jnp.ndarray:
    """Scatter new keys at their slots; rows that are not active are left untouched."""
    B, K, R = ring_BxKxRxD.shape[:3]
    slots = jnp.where(active_B[:, None], jnp.mod(positions_BxT, R), R)  # R is out of range: dropped
    rows = jnp.arange(B)[:, None, None]
    heads = jnp.arange(K)[None, :, None]
    return ring_BxKxRxD.at[rows, heads, slots[:, None, :]].set(new_BxKxTxD.astype(ring_BxKxRxD.dtype), mode="drop")


def rollback(cache: KVCache, new_length_B: jnp.ndarray) -> KVCache:
    """Forget every token at or beyond ``new_length`` (never more than the sliding slack)."""
    return cache.replace(length=jnp.minimum(cache.length, new_length_B.astype(jnp.int32)))
