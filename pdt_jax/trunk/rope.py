"""Rotary position embedding with YaRN frequency interpolation, half-split (NeoX) layout.

Matches GPT-OSS: inv_freq ramps between 1/(f·θ^(2i/d)) (interpolated, low frequencies) and
1/θ^(2i/d) (extrapolated, high frequencies) over the correction range [low, high], and cos/sin are
both multiplied by the concentration 0.1·ln f + 1.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from pdt_jax.trunk.config import TrunkConfig, yarn_concentration


def inv_frequencies(cfg: TrunkConfig) -> np.ndarray:
    """[head_dim // 2] float32 inverse frequencies (computed once on the host, in float32 like HF)."""
    d = cfg.head_dim
    pos_freqs = (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d))).astype(np.float32)
    extrapolated = (1.0 / pos_freqs).astype(np.float32)
    if cfg.rope_scaling_factor <= 1.0:
        return extrapolated
    interpolated = (1.0 / (cfg.rope_scaling_factor * pos_freqs)).astype(np.float32)

    def correction_dim(rotations: float) -> float:
        return (d * math.log(cfg.rope_original_max_position / (rotations * 2 * math.pi))) / (2 * math.log(cfg.rope_theta))

    low, high = correction_dim(cfg.rope_beta_fast), correction_dim(cfg.rope_beta_slow)
    if cfg.rope_truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = np.clip((np.arange(d // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(np.float32)
    # ramp = 0 → extrapolate (keep the original high frequency), ramp = 1 → interpolate.
    return (interpolated * ramp + extrapolated * (1 - ramp)).astype(np.float32)


def cos_sin(cfg: TrunkConfig, positions: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """positions int [...]: returns cos, sin float32 [..., head_dim // 2], YaRN-scaled."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_frequencies(cfg))
    scale = yarn_concentration(cfg)
    return jnp.cos(freqs) * scale, jnp.sin(freqs) * scale


def apply(x_BxTxHxD: jnp.ndarray, cos_BxTxF: jnp.ndarray, sin_BxTxF: jnp.ndarray) -> jnp.ndarray:
    """Rotate the two halves of the head dimension (not interleaved pairs)."""
    dtype = x_BxTxHxD.dtype
    cos = cos_BxTxF[:, :, None, :].astype(dtype)
    sin = sin_BxTxF[:, :, None, :].astype(dtype)
    first, second = jnp.split(x_BxTxHxD, 2, axis=-1)
    return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
