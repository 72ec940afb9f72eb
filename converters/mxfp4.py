"""MXFP4 (OCP microscaling FP4) as stored by GPT-OSS checkpoints: dequantize and quantize.

A block of 32 weights along the input axis is 16 bytes of E2M1 codes plus one E8M0 scale byte:

    blocks uint8 [..., G, 16]: byte j holds value 2j in its low nibble and 2j+1 in its high nibble
    scales uint8 [..., G]:     the block's power of two, biased by 127
    value = FP4[code] · 2^(scale − 127)  →  weights [..., G·32]

The arithmetic follows transformers' ``convert_moe_packed_tensors`` exactly (a float32 look-up, an exact
``ldexp``, then one rounding to the target dtype), so results agree bit for bit, including the
extremes: scale 0 gives float32 subnormals (0.5 · 2^-127 = 2^-128), scale 255 gives 0.5 · 2^128 = 2^127
and ±inf from 1.0 up, and zero stays (signed) zero — ``ldexp`` never forms 2^128 on its own.
"""
from __future__ import annotations

import numpy as np

FP4_VALUES = np.array([+0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
                       -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)
BLOCK = 32  # weights per scale


def dequantize(blocks: np.ndarray, scales: np.ndarray, dtype=np.float32) -> np.ndarray:
    """blocks uint8 [..., G, 16], scales uint8 [..., G] → dtype [..., G·32] (no transpose)."""
    if blocks.dtype != np.uint8 or scales.dtype != np.uint8:
        raise ValueError(f"MXFP4 blocks/scales: expected uint8, found {blocks.dtype}/{scales.dtype}")
    if blocks.shape[-1:] != (BLOCK // 2,) or blocks.shape[:-1] != scales.shape:
        raise ValueError(f"MXFP4 blocks {blocks.shape} and scales {scales.shape}: expected [..., G, 16] and [..., G]")
    *prefix, G, B = blocks.shape
    out = np.empty((*prefix, G, 2 * B), np.float32)
    out[..., 0::2] = FP4_VALUES[blocks & 0x0F]
    out[..., 1::2] = FP4_VALUES[blocks >> 4]
    with np.errstate(over="ignore"):
        np.ldexp(out, (scales.astype(np.int32) - 127)[..., None], out=out)
    return out.reshape(*prefix, G * 2 * B).astype(dtype, copy=False)


_MAGNITUDES = FP4_VALUES[:8]
_MIDPOINTS = (_MAGNITUDES[1:] + _MAGNITUDES[:-1]) / 2


def quantize(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float [..., N] (N a multiple of 32) → (blocks uint8 [..., N/32, 16], scales uint8 [..., N/32]).

    Each block takes the smallest power of two that brings its largest magnitude within ±6, and
    every weight rounds to the nearest FP4 value (ties to the smaller magnitude; overflow clamps to
    ±6). Weights already on the MXFP4 grid come back exactly: ``dequantize(*quantize(w)) == w``."""
    w = np.asarray(weights, np.float32)
    if w.shape[-1] % BLOCK:
        raise ValueError(f"MXFP4 quantize: expected the last axis to be a multiple of {BLOCK}, found {w.shape}")
    w = w.reshape(*w.shape[:-1], w.shape[-1] // BLOCK, BLOCK)
    amax = np.abs(w).max(axis=-1)
    with np.errstate(divide="ignore"):
        exponent = np.ceil(np.log2(amax / 6.0))
    exponent = np.clip(np.where(amax > 0, exponent, -127), -127, 127).astype(np.int32)
    scaled = np.abs(w) / np.ldexp(np.float32(1.0), exponent)[..., None].astype(np.float64)
    codes = np.searchsorted(_MIDPOINTS, scaled, side="left").astype(np.uint8)  # 0..7 magnitude codes
    codes |= np.signbit(w).astype(np.uint8) << 3
    blocks = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    return blocks, (exponent + 127).astype(np.uint8)
