"""A bad checkpoint fails loudly, naming the tensor or field, what was expected and what was found."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from pdt_jax.trunk import CheckpointError, Trunk
from hf_reference import build_hf_model, save_hf


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_hf(build_hf_model("gqa2_top3_e5"), tmp_path_factory.mktemp("hf"))


def rewrite(src, dst, edit_tensors=None, edit_config=None):
    tensors = load_file(f"{src}/model.safetensors")
    cfg = json.load(open(f"{src}/config.json"))
    if edit_tensors:
        edit_tensors(tensors)
    if edit_config:
        edit_config(cfg)
    dst.mkdir()
    save_file(tensors, f"{dst}/model.safetensors", metadata={"format": "pt"})
    json.dump(cfg, open(f"{dst}/config.json", "w"))
    return str(dst)


def test_missing_tensor(hf_dir, tmp_path):
    d = rewrite(hf_dir, tmp_path / "m", lambda t: t.pop("model.layers.1.self_attn.sinks"))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) \['model.layers.1.self_attn.sinks'\]"):
        Trunk.from_pretrained(d)


def test_wrong_shape(hf_dir, tmp_path):
    def edit(t):
        t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 64), np.float32)
    d = rewrite(hf_dir, tmp_path / "m", edit)
    with pytest.raises(CheckpointError, match=r"'model.layers.0.self_attn.k_proj.weight' has shape \(16, 64\), expected \(32, 64\)"):
        Trunk.from_pretrained(d)


def test_unknown_tensor(hf_dir, tmp_path):
    def edit(t):
        t["model.layers.0.mlp.shared_expert.weight"] = np.zeros((4,), np.float32)
    d = rewrite(hf_dir, tmp_path / "m", edit)
    with pytest.raises(CheckpointError, match=r"unknown tensor 'model.layers.0.mlp.shared_expert.weight'"):
        Trunk.from_pretrained(d)


def test_extra_layer_is_reported_as_unknown(hf_dir, tmp_path):
    def edit(t):
        t["model.layers.2.self_attn.sinks"] = np.zeros((4,), np.float32)
    d = rewrite(hf_dir, tmp_path / "m", edit)
    with pytest.raises(CheckpointError, match=r"the config has 2 layers"):
        Trunk.from_pretrained(d)


def test_unknown_layer_type(hf_dir, tmp_path):
    d = rewrite(hf_dir, tmp_path / "m", edit_config=lambda c: c.update(layer_types=["sliding_attention", "chunked_attention"]))
    with pytest.raises(CheckpointError, match=r"config.json.*'layer_types\[1\]'.*expected one of .*found 'chunked_attention'"):
        Trunk.from_pretrained(d)


def test_integer_tensor_is_rejected(hf_dir, tmp_path):
    def edit(t):
        t["model.norm.weight"] = np.zeros((64,), np.int32)
    d = rewrite(hf_dir, tmp_path / "m", edit)
    with pytest.raises(CheckpointError, match=r"'model.norm.weight' has dtype int32, expected a floating dtype"):
        Trunk.from_pretrained(d)


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="expected a checkpoint directory, found nothing"):
        Trunk.from_pretrained(str(tmp_path / "absent"))


def test_truncated_file(hf_dir, tmp_path):
    d = rewrite(hf_dir, tmp_path / "m")
    blob = open(f"{d}/model.safetensors", "rb").read()
    open(f"{d}/model.safetensors", "wb").write(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Trunk.from_pretrained(d)


def test_converted_checkpoint_round_trip(hf_dir, tmp_path):
    trunk = Trunk.from_pretrained(hf_dir)
    trunk.save(str(tmp_path / "conv"))
    again = Trunk.from_pretrained(str(tmp_path / "conv"))
    ids = np.arange(20).reshape(2, 10)
    np.testing.assert_array_equal(trunk.logits(ids), again.logits(ids))
    low = Trunk.from_pretrained(str(tmp_path / "conv"), dtype="bfloat16")
    assert low.cfg.dtype == "bfloat16" and str(low.params["embed"].dtype) == "bfloat16"


def test_bf16_hf_directory_loads_in_its_own_dtype(tmp_path):
    import torch

    model = build_hf_model("gqa2_top3_e5").to(torch.bfloat16)
    trunk = Trunk.from_pretrained(save_hf(model, tmp_path / "bf16"))
    assert trunk.cfg.dtype == "bfloat16" and str(trunk.params["embed"].dtype) == "bfloat16"
    assert str(trunk.params["layers"][0]["attn_norm"].dtype) == "float32"
    as_f32 = Trunk.from_pretrained(str(tmp_path / "bf16"), dtype="float32")
    ids = np.arange(12).reshape(1, 12)
    # The same bf16 weights computed in f32 and in bf16 agree to bf16 precision.
    a, b = as_f32.logits(ids), trunk.logits(ids)
    assert np.abs(a - b).max() <= 0.05 * np.abs(a).max()
