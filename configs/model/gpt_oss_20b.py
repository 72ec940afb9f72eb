"""GPT-OSS trunk configurations: the real 20B numbers and tiny variants for tests and benchmarks.

    python bench/trunk_decode.py --config=configs/model/gpt_oss_20b.py:small

Variants (``get_config(arg)``): default = GPT-OSS-20B; ``small`` = 4 layers × 256 hidden, 8 experts
(the decode benchmark); ``tiny`` = 2 layers × 64 hidden (unit tests); ``demo`` = 2 layers × 128
hidden (make demo).
"""
from ml_collections import ConfigDict


def get_config(arg: str | None = None) -> ConfigDict:
    cfg = ConfigDict(dict(
        vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_layers=24,
        num_heads=64, num_kv_heads=8, head_dim=64, num_experts=32, experts_per_token=4,
        sliding_window=128, layer_types=(), rms_norm_eps=1e-5,
        rope_theta=150000.0, rope_scaling_factor=32.0, rope_beta_fast=32.0, rope_beta_slow=1.0,
        rope_original_max_position=4096, rope_truncate=False, max_position_embeddings=131072,
        swiglu_limit=7.0, swiglu_alpha=1.702, attention_bias=True,
        eos_token_ids=(200002, 199999, 200012), pad_token_id=199999, dtype="bfloat16",
    ))
    if arg in (None, "", "20b"):
        return cfg
    # Tiny models use the tiny harmony BPE (pdt_jax/assets/tiny_tokenizer.json): 512 ids,
    # <|endoftext|> = 0 (pad), <|end|> = 2, <|return|> = 5, <|call|> = 6.
    tiny_vocab = dict(vocab_size=512, eos_token_ids=(5, 2, 6, 0), pad_token_id=0, dtype="float32")
    if arg == "small":
        cfg.update(num_layers=4, hidden_size=256, intermediate_size=256, num_heads=8, num_kv_heads=2,
                   head_dim=32, num_experts=8, experts_per_token=2, sliding_window=32, **tiny_vocab)
    elif arg == "tiny":
        cfg.update(num_layers=2, hidden_size=64, intermediate_size=64, num_heads=4, num_kv_heads=2,
                   head_dim=16, num_experts=4, experts_per_token=2, sliding_window=16, **tiny_vocab)
    elif arg == "demo":
        # make demo: 2 layers (sliding window, then full attention) × 128 hidden, pretrained on the
        # coordination task with its own 512-id BPE (configs/pretrain_tiny.py).
        cfg.update(num_layers=2, hidden_size=128, intermediate_size=128, num_heads=4, num_kv_heads=2,
                   head_dim=32, num_experts=4, experts_per_token=2, sliding_window=32, **tiny_vocab)
    else:
        raise ValueError(f"configs/model/gpt_oss_20b.py: unknown variant {arg!r}; valid: '', 'small', 'tiny', 'demo'")
    return cfg
