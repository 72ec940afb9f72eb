"""A tiny GPT-OSS model built with transformers, written in all three published layouts.

The expert weights are projected onto the MXFP4 grid, so the dense (HF), HF MXFP4 and OpenAI
original layouts hold exactly the same model. The original and MXFP4 layouts are written here with
torch ops straight from the transformers state_dict, following the published mapping
(anchors.md §B), independently of ``converters/``' own tables.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

TINY = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=32, head_dim=16, num_attention_heads=4,
            num_key_value_heads=2, num_local_experts=3, num_experts_per_tok=2, sliding_window=8,
            layer_types=["sliding_attention", "full_attention"], vocab_size=96)
OPENAI_CONFIG = dict(num_hidden_layers=2, num_experts=3, experts_per_token=2, vocab_size=96, hidden_size=64,
                     intermediate_size=32, swiglu_limit=7.0, head_dim=16, num_attention_heads=4,
                     num_key_value_heads=2, sliding_window=8, initial_context_length=4096, rope_theta=150000.0,
                     rope_scaling_factor=32.0, rope_ntk_alpha=1.0, rope_ntk_beta=32.0)


def on_mxfp4_grid(w_in_out):
    """[E, in, out] → the nearest MXFP4-representable tensor (blocks of 32 along the input axis)."""
    from converters import mxfp4

    out_in = np.ascontiguousarray(np.swapaxes(w_in_out, 1, 2))
    return np.swapaxes(mxfp4.dequantize(*mxfp4.quantize(out_in)), 1, 2).copy()


@pytest.fixture(scope="session")
def hf_model():
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(0)
    model = GptOssForCausalLM(GptOssConfig(**TINY, dtype="float32")).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.3 * torch.randn_like(p))
            if name.endswith(("gate_up_proj", "down_proj")):
                p.copy_(torch.from_numpy(on_mxfp4_grid(p.numpy())))
    return model


def state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def hf_to_original(sd: dict[str, np.ndarray], layers: int, quantized: bool = True) -> dict[str, np.ndarray]:
    """The OpenAI original/ tensors of an HF state_dict (the inverse of transformers' conversion)."""
    from converters import mxfp4

    out = {"embedding.weight": sd["model.embed_tokens.weight"], "unembedding.weight": sd["lm_head.weight"],
           "norm.scale": sd["model.norm.weight"]}
    for n in range(layers):
        h, o = f"model.layers.{n}.", f"block.{n}."
        a = h + "self_attn."
        out[o + "attn.qkv.weight"] = np.concatenate([sd[a + f"{p}_proj.weight"] for p in "qkv"])
        out[o + "attn.qkv.bias"] = np.concatenate([sd[a + f"{p}_proj.bias"] for p in "qkv"])
        out[o + "attn.out.weight"], out[o + "attn.out.bias"] = sd[a + "o_proj.weight"], sd[a + "o_proj.bias"]
        out[o + "attn.sinks"] = sd[a + "sinks"]
        out[o + "attn.norm.scale"] = sd[h + "input_layernorm.weight"]
        out[o + "mlp.norm.scale"] = sd[h + "post_attention_layernorm.weight"]
        out[o + "mlp.gate.weight"], out[o + "mlp.gate.bias"] = sd[h + "mlp.router.weight"], sd[h + "mlp.router.bias"]
        for ours, theirs in (("mlp1", "gate_up_proj"), ("mlp2", "down_proj")):
            w = np.ascontiguousarray(np.swapaxes(sd[h + f"mlp.experts.{theirs}"], 1, 2))  # out × in
            if quantized:
                out[o + f"mlp.{ours}_weight.blocks"], out[o + f"mlp.{ours}_weight.scales"] = mxfp4.quantize(w)
            else:
                out[o + f"mlp.{ours}_weight"] = w
            out[o + f"mlp.{ours}_bias"] = sd[h + f"mlp.experts.{theirs}_bias"]
    return out


def original_to_hf(orig: dict[str, np.ndarray], layers: int, q_rows: int, kv_rows: int) -> dict[str, np.ndarray]:
    """What transformers' convert_gpt_oss_weights_to_hf does, for dense or MXFP4 experts."""
    import torch
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    sd = {"model.embed_tokens.weight": orig["embedding.weight"], "lm_head.weight": orig["unembedding.weight"],
          "model.norm.weight": orig["norm.scale"]}
    for n in range(layers):
        h, o = f"model.layers.{n}.", f"block.{n}."
        a = h + "self_attn."
        w, b = orig[o + "attn.qkv.weight"], orig[o + "attn.qkv.bias"]
        cuts = [0, q_rows, q_rows + kv_rows, q_rows + 2 * kv_rows]
        for i, p in enumerate("qkv"):
            sd[a + f"{p}_proj.weight"], sd[a + f"{p}_proj.bias"] = w[cuts[i]:cuts[i + 1]], b[cuts[i]:cuts[i + 1]]
        sd[a + "o_proj.weight"], sd[a + "o_proj.bias"] = orig[o + "attn.out.weight"], orig[o + "attn.out.bias"]
        sd[a + "sinks"] = orig[o + "attn.sinks"]
        sd[h + "input_layernorm.weight"] = orig[o + "attn.norm.scale"]
        sd[h + "post_attention_layernorm.weight"] = orig[o + "mlp.norm.scale"]
        sd[h + "mlp.router.weight"], sd[h + "mlp.router.bias"] = orig[o + "mlp.gate.weight"], orig[o + "mlp.gate.bias"]
        for ours, theirs in (("mlp1", "gate_up_proj"), ("mlp2", "down_proj")):
            if o + f"mlp.{ours}_weight.blocks" in orig:
                t = convert_moe_packed_tensors(torch.from_numpy(orig[o + f"mlp.{ours}_weight.blocks"]),
                                               torch.from_numpy(orig[o + f"mlp.{ours}_weight.scales"]),
                                               dtype=torch.float32)
                sd[h + f"mlp.experts.{theirs}"] = t.numpy()
            else:
                sd[h + f"mlp.experts.{theirs}"] = np.ascontiguousarray(np.swapaxes(orig[o + f"mlp.{ours}_weight"], 1, 2))
            sd[h + f"mlp.experts.{theirs}_bias"] = orig[o + f"mlp.{ours}_bias"]
    return sd


def save_dir(directory, tensors: dict[str, np.ndarray], config: dict) -> str:
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(directory, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    return str(directory)


@pytest.fixture(scope="session")
def layouts_dir(hf_model, tmp_path_factory):
    """{'hf': dir, 'hf-mxfp4': dir, 'original': dir} holding the same tiny model."""
    root = tmp_path_factory.mktemp("layouts")
    hf = str(root / "hf")
    hf_model.save_pretrained(hf)
    hf_config = json.load(open(os.path.join(hf, "config.json")))
    sd = state_dict(hf_model)
    L = TINY["num_hidden_layers"]
    orig = hf_to_original(sd, L)
    mx = {k: v for k, v in sd.items() if not k.endswith(("experts.gate_up_proj", "experts.down_proj"))}
    for n in range(L):
        for ours, theirs in (("mlp1", "gate_up_proj"), ("mlp2", "down_proj")):
            for part in ("blocks", "scales"):
                mx[f"model.layers.{n}.mlp.experts.{theirs}_{part}"] = orig[f"block.{n}.mlp.{ours}_weight.{part}"]
    mx_config = dict(hf_config, quantization_config={
        "quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                            "model.embed_tokens", "lm_head"]})
    return {"hf": hf, "hf-mxfp4": save_dir(root / "hf_mxfp4", mx, mx_config),
            "original": save_dir(root / "original", orig, OPENAI_CONFIG)}


@pytest.fixture(scope="session")
def converted(layouts_dir, tmp_path_factory):
    """The HF directory imported (float32) → path of the converted checkpoint."""
    from converters.gpt_oss import import_checkpoint

    dst = str(tmp_path_factory.mktemp("conv") / "trunk")
    import_checkpoint(layouts_dir["hf"], dst, "float32", progress=False)
    return dst


@pytest.fixture(scope="session")
def trunk(converted):
    from pdt_jax.trunk import Trunk

    return Trunk.from_pretrained(converted)


@pytest.fixture(scope="session")
def token_ids():
    return np.random.default_rng(0).integers(0, TINY["vocab_size"], (2, 21))


@pytest.fixture(scope="session")
def ref():
    """The helpers above, for tests (conftest modules are not importable by name here)."""
    import types

    return types.SimpleNamespace(TINY=TINY, OPENAI_CONFIG=OPENAI_CONFIG, hf_to_original=hf_to_original,
                                 original_to_hf=original_to_hf, state_dict=state_dict, save_dir=save_dir)
