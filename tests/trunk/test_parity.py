"""Logits parity with transformers' GptOssForCausalLM (eager attention, float32)."""
import numpy as np
import pytest

from pdt_jax.trunk import Trunk
from hf_reference import TINY_CONFIGS, build_hf_model, hf_logits, save_hf


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_logits_match_transformers(name, tmp_path):
    model = build_hf_model(name)
    cfg = TINY_CONFIGS[name]
    trunk = Trunk.from_pretrained(save_hf(model, tmp_path / name))
    T = 3 * cfg["sliding_window"] + 5  # several windows long
    ids = np.random.RandomState(1).randint(0, cfg["vocab_size"], (2, T))
    ours, ref = trunk.logits(ids), hf_logits(model, ids)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.abs(ref).max() > 1.0  # the comparison is not between near-zero logits
    np.testing.assert_array_less(np.abs(ours - ref).max(), 1e-4)


@pytest.mark.parametrize("impl", ["gather", "dense", "blocked", "ragged"])
def test_moe_implementations_agree(impl, tmp_path):
    model = build_hf_model("gqa2_top3_e5", seed=3)
    trunk = Trunk.from_pretrained(save_hf(model, tmp_path / "m"), moe_impl=impl)
    ids = np.random.RandomState(2).randint(0, 128, (2, 12))
    np.testing.assert_array_less(np.abs(trunk.logits(ids) - hf_logits(model, ids)).max(), 1e-4)
