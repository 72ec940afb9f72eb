"""Tiny GPT-OSS models built with transformers: the independent reference for our trunk."""
from __future__ import annotations

import numpy as np

# Three shapes that between them cover: sequences longer than the window, GQA groups of 1, 2 and 6,
# top-k of 1, 2 and 3, odd expert counts, custom layer patterns and plain (non-YaRN) RoPE.
TINY_CONFIGS = {
    "gqa2_top3_e5": dict(num_hidden_layers=2, hidden_size=64, intermediate_size=48, head_dim=16,
                         num_attention_heads=4, num_key_value_heads=2, num_local_experts=5,
                         num_experts_per_tok=3, sliding_window=8, vocab_size=128,
                         layer_types=["sliding_attention", "full_attention"]),
    "mqa6_top1_e4": dict(num_hidden_layers=3, hidden_size=48, intermediate_size=32, head_dim=8,
                         num_attention_heads=6, num_key_value_heads=1, num_local_experts=4,
                         num_experts_per_tok=1, sliding_window=4, vocab_size=96,
                         layer_types=["full_attention", "sliding_attention", "sliding_attention"]),
    "mha_top2_e3_norope_scaling": dict(num_hidden_layers=4, hidden_size=32, intermediate_size=24, head_dim=16,
                                       num_attention_heads=2, num_key_value_heads=2, num_local_experts=3,
                                       num_experts_per_tok=2, sliding_window=16, vocab_size=80,
                                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
}


def build_hf_model(name: str, seed: int = 0, perturb: float = 0.2):
    """A float32 GptOssForCausalLM with random weights; sinks, biases and norm weights perturbed so
    that none of them sits at its trivial initial value."""
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(seed)
    cfg = GptOssConfig(**TINY_CONFIGS[name], attn_implementation="eager", max_position_embeddings=131072)
    model = GptOssForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            p.add_(torch.randn_like(p) * perturb)
    return model


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids), dtype=torch.long)).logits.float().numpy()


def save_hf(model, directory) -> str:
    model.save_pretrained(str(directory))
    return str(directory)
