"""Config files load into the frozen dataclasses, hold the real GPT-OSS-20B numbers, and reject
unknown variants and fields with a message naming them."""
import pytest

from pdt_jax import config_files
from pdt_jax.sidecar import SidecarConfig
from pdt_jax.trunk import ConfigError, TrunkConfig


@pytest.mark.parametrize("variant", ["", "small", "tiny", "demo"])
def test_pdt_config_variants_load(variant):
    cfg = config_files.pdt_config(config_files.load(f"configs/model/pdt.py:{variant}"))
    layers = cfg.sidecar.layers_for(cfg.trunk)
    assert len(layers) == min(cfg.sidecar.top_k_layers, cfg.trunk.num_layers)
    assert layers[-1] == cfg.trunk.num_layers - 1  # the top layers are instrumented


def test_gpt_oss_20b_numbers():
    t = config_files.trunk_config(config_files.load("configs/model/gpt_oss_20b.py"))
    assert (t.num_layers, t.hidden_size, t.num_heads, t.num_kv_heads, t.head_dim) == (24, 2880, 64, 8, 64)
    assert (t.num_experts, t.experts_per_token, t.vocab_size, t.sliding_window) == (32, 4, 201088, 128)
    assert t.layer_types[0] == "sliding_attention" and t.layer_types[1] == "full_attention"
    assert (t.rope_theta, t.rope_scaling_factor, t.rope_original_max_position) == (150000.0, 32.0, 4096)
    # The HF config.json we export reads back to the same config.
    assert TrunkConfig.from_hf(t.to_hf()) == t


def test_bad_configs_name_the_problem():
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        config_files.load("configs/model/pdt.py:huge")
    with pytest.raises(ConfigError, match="not found"):
        config_files.load("configs/model/absent.py")
    with pytest.raises(ConfigError, match=r"unknown sidecar config field\(s\) \['notes_dims'\]"):
        SidecarConfig.from_mapping({"notes_dims": 3})
    with pytest.raises(ConfigError, match="'num_kv_heads': expected a divisor of num_heads=6"):
        TrunkConfig(num_heads=6, num_kv_heads=4, num_layers=2, vocab_size=10, pad_token_id=0)
    with pytest.raises(ConfigError, match="instrumented_layers"):
        SidecarConfig(instrumented_layers=(30,)).layers_for(TrunkConfig())
