"""All three published layouts import to the same parameters; every export loads in transformers."""
import json
import os

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from converters import gpt_oss
from pdt_jax.trunk.checkpoint import load_converted


def flat(params):
    import jax
    from pdt_jax.trunk.params import path_str

    return {path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def load_hf_dir(files):
    out = {}
    for f in files:
        out.update(load_file(f))
    return out


def test_import_matches_transformers(trunk, hf_model, token_ids):
    np.testing.assert_allclose(trunk.logits(token_ids), hf_logits(hf_model, token_ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("layout", ["hf-mxfp4", "original"])
def test_every_layout_imports_to_the_same_parameters(layout, layouts_dir, converted, tmp_path):
    source = gpt_oss.Source(layouts_dir[layout], "float32")
    assert source.layout == layout
    dst = str(tmp_path / layout)
    gpt_oss.import_checkpoint(layouts_dir[layout], dst, "float32", progress=False)
    _, ref = load_converted(converted)
    _, got = load_converted(dst)
    ref, got = flat(ref), flat(got)
    assert ref.keys() == got.keys()
    for name in ref:
        assert got[name].dtype == ref[name].dtype, name
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)


def test_in_memory_load_matches_checkpoint(layouts_dir, converted):
    cfg, params = gpt_oss.load_params(layouts_dir["original"], "float32", progress=False)
    _, ref = load_converted(converted)
    for name, value in flat(ref).items():
        np.testing.assert_array_equal(flat(params)[name], value, err_msg=name)


def test_hf_round_trip_is_bit_exact_and_loads_in_transformers(layouts_dir, converted, trunk, token_ids, tmp_path):
    from transformers import GptOssForCausalLM

    out = str(tmp_path / "hf")
    assert gpt_oss.main(["export", "--src", converted, "--dst", out, "--format", "hf", "--quiet"]) == 0
    src = load_file(os.path.join(layouts_dir["hf"], "model.safetensors"))
    got = load_file(os.path.join(out, "model.safetensors"))
    assert src.keys() == got.keys()
    for name in src:
        assert got[name].dtype == src[name].dtype and got[name].tobytes() == src[name].tobytes(), name
    model = GptOssForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    np.testing.assert_allclose(hf_logits(model, token_ids), trunk.logits(token_ids), atol=1e-4, rtol=0)


def test_hf_export_shards_with_an_index(layouts_dir, converted, tmp_path):
    from transformers import GptOssForCausalLM

    out = str(tmp_path / "hf")
    gpt_oss.export_checkpoint(converted, out, "hf", max_shard_bytes=100_000, progress=False)
    index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2
    tensors = load_hf_dir([os.path.join(out, f) for f in files])
    src = load_file(os.path.join(layouts_dir["hf"], "model.safetensors"))
    assert set(tensors) == set(index["weight_map"]) == set(src)
    for name in src:
        assert tensors[name].tobytes() == src[name].tobytes(), name
    model = GptOssForCausalLM.from_pretrained(out, attn_implementation="eager")
    assert torch.equal(model.lm_head.weight, torch.from_numpy(src["lm_head.weight"]))


@pytest.mark.parametrize("experts", ["dense", "mxfp4"])
def test_original_export(experts, hf_model, converted, trunk, token_ids, tmp_path, ref):
    """The original/ export equals the independent mapping of the transformers weights, re-imports
    to the same parameters, and — converted back the way transformers' script does — gives the same
    logits in transformers."""
    from transformers import GptOssConfig, GptOssForCausalLM

    out = str(tmp_path / "orig")
    assert gpt_oss.main(["export", "--src", converted, "--dst", out, "--format", "original", "--experts", experts,
                         "--quiet"]) == 0
    TINY = ref.TINY
    got = load_file(os.path.join(out, "model.safetensors"))
    want = ref.hf_to_original(ref.state_dict(hf_model), TINY["num_hidden_layers"], quantized=experts == "mxfp4")
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["num_experts"] == TINY["num_local_experts"] and "model_type" not in config

    q_rows, kv_rows = TINY["num_attention_heads"] * TINY["head_dim"], TINY["num_key_value_heads"] * TINY["head_dim"]
    sd = ref.original_to_hf(got, TINY["num_hidden_layers"], q_rows, kv_rows)
    model = GptOssForCausalLM(GptOssConfig(**TINY, dtype="float32")).eval()
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=True)
    np.testing.assert_allclose(hf_logits(model, token_ids), trunk.logits(token_ids), atol=1e-4, rtol=0)

    again = str(tmp_path / "again")
    gpt_oss.import_checkpoint(out, again, "float32", progress=False)
    _, expected = load_converted(converted)
    _, back = load_converted(again)
    for name, value in flat(expected).items():
        np.testing.assert_array_equal(flat(back)[name], value, err_msg=name)


def test_torch_export_loads_strict(converted, trunk, token_ids, tmp_path):
    from transformers import GptOssConfig, GptOssForCausalLM

    out = str(tmp_path / "pt")
    assert gpt_oss.main(["export", "--src", converted, "--dst", out, "--format", "torch", "--quiet"]) == 0
    state = torch.load(os.path.join(out, "pytorch_model.pt"), weights_only=True)
    config = GptOssConfig(**json.load(open(os.path.join(out, "config.json"))))
    model = GptOssForCausalLM(config).eval()
    model.load_state_dict(state, strict=True)
    np.testing.assert_allclose(hf_logits(model, token_ids), trunk.logits(token_ids), atol=1e-4, rtol=0)


def test_bfloat16_import_and_export(layouts_dir, converted, tmp_path):
    """bf16 import casts once (round to nearest even); a bf16 HF export reloads to the same bits."""
    import ml_dtypes

    dst = str(tmp_path / "bf16")
    gpt_oss.import_checkpoint(layouts_dir["original"], dst, "bfloat16", progress=False)
    cfg, low = load_converted(dst)
    _, ref = load_converted(converted)
    assert cfg.dtype == "bfloat16"
    for name, value in flat(ref).items():
        want = value.astype(ml_dtypes.bfloat16) if value.dtype != np.float32 or name.split("/")[-1] not in (
            "attn_norm", "mlp_norm", "final_norm", "sinks") else value
        np.testing.assert_array_equal(flat(low)[name], want, err_msg=name)
    out = str(tmp_path / "hf_bf16")
    gpt_oss.export_checkpoint(dst, out, "hf", progress=False)
    again = str(tmp_path / "again")
    gpt_oss.import_checkpoint(out, again, progress=False)
    _, back = load_converted(again)
    for name, value in flat(low).items():
        assert flat(back)[name].tobytes() == value.tobytes(), name


@pytest.mark.parametrize("layout", ["hf", "hf-mxfp4"])
def test_a_config_naming_no_dtype_keeps_the_tensors_dtype(layout, layouts_dir, converted, tmp_path):
    """transformers may write a config.json without ``dtype``: float32 tensors must not be imported
    (or loaded) as bfloat16 — the parameters equal the float32 import bit for bit."""
    import json
    import shutil

    from pdt_jax.trunk import Trunk

    src = tmp_path / "src"
    shutil.copytree(layouts_dir[layout], src)
    config = json.loads((src / "config.json").read_text())
    for key in ("dtype", "torch_dtype"):
        config.pop(key, None)
    (src / "config.json").write_text(json.dumps(config))
    dst = str(tmp_path / "imported")
    cfg = gpt_oss.import_checkpoint(str(src), dst, progress=False)
    assert cfg.dtype == "float32"
    _, ref = load_converted(converted)
    _, got = load_converted(dst)
    for name, value in flat(ref).items():
        np.testing.assert_array_equal(flat(got)[name], value, err_msg=name)
    if layout == "hf":  # loaded directly, too
        trunk = Trunk.from_pretrained(str(src))
        assert trunk.cfg.dtype == "float32" and trunk.params["embed"].dtype == np.float32
