"""MXFP4 dequantisation is bit-identical to transformers'; the quantizer inverts it on the grid."""
import ml_dtypes
import numpy as np
import pytest
import torch
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

from converters import mxfp4


def random_packed(seed, E=3, out=40, G=5):
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (E, out, G, 16), dtype=np.uint8)
    scales = rng.integers(0, 256, (E, out, G), dtype=np.uint8)
    # The extremes: subnormal results (0, 1), no scaling (127), the largest finite (254), overflow (255).
    scales[0, :8, :] = np.array([0, 1, 2, 126, 127, 128, 254, 255, 255, 0], np.uint8)[:8, None]
    blocks[0, 7, 0] = 0x00  # ±0 times 2^128 must stay zero, not nan
    blocks[0, 7, 1] = 0x88
    return blocks, scales


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("seed", [0, 1])
def test_dequantize_matches_transformers_bit_for_bit(seed, dtype):
    blocks, scales = random_packed(seed)
    torch_dtype, np_dtype, bits = {"float32": (torch.float32, np.float32, np.uint32),
                                   "bfloat16": (torch.bfloat16, ml_dtypes.bfloat16, np.uint16)}[dtype]
    ref = convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch_dtype)
    ref_bits = ref.view(torch.int16 if bits is np.uint16 else torch.int32).numpy().view(bits)
    ours = mxfp4.dequantize(blocks, scales, np_dtype).transpose(0, 2, 1)  # HF returns [E, in, out]
    assert ours.shape == tuple(ref.shape)
    np.testing.assert_array_equal(ours.view(bits), ref_bits)
    as_f32 = ours.astype(np.float32)
    assert np.isinf(as_f32).any() and (as_f32[:, :, :8][as_f32[:, :, :8] != 0] != 0).any()


def test_nibble_order_and_scale():
    blocks = np.zeros((1, 16), np.uint8)
    blocks[0, 0] = 0x71  # low nibble 1 (+0.5) → index 0, high nibble 7 (+6) → index 1
    blocks[0, 1] = 0xF9  # low 9 (−0.5), high 15 (−6)
    w = mxfp4.dequantize(blocks, np.array([128], np.uint8))
    np.testing.assert_array_equal(w[:4], [1.0, 12.0, -1.0, -12.0])


def test_quantize_is_exact_on_the_grid():
    blocks, scales = random_packed(2)
    scales = np.clip(scales, 1, 250).astype(np.uint8)
    w = mxfp4.dequantize(blocks, scales)
    b2, s2 = mxfp4.quantize(w)
    np.testing.assert_array_equal(mxfp4.dequantize(b2, s2), w)


def test_quantize_rounds_to_nearest_grid_value():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(7, 64)).astype(np.float32)
    q = mxfp4.dequantize(*mxfp4.quantize(w)).reshape(7, 2, 32)
    w = w.reshape(7, 2, 32)
    # Every weight lands on the nearest of its block's 15 representable values.
    scale = 2.0 ** np.ceil(np.log2(np.abs(w).max(-1, keepdims=True) / 6))
    grid = np.concatenate([mxfp4.FP4_VALUES[:8], -mxfp4.FP4_VALUES[1:8]]) * scale[..., None]
    best = np.abs(w[..., None] - grid).min(-1)
    np.testing.assert_allclose(np.abs(w - q), best, rtol=0, atol=1e-6)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="expected"):
        mxfp4.dequantize(np.zeros((2, 3, 16), np.uint8), np.zeros((2, 4), np.uint8))
    with pytest.raises(ValueError, match="multiple of 32"):
        mxfp4.quantize(np.zeros((2, 48), np.float32))
