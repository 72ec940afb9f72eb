"""Bad input fails with a non-zero exit naming the file, tensor, expected and found — and leaves
nothing at --dst (no destination, no temporary sibling)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from converters import gpt_oss


def copy_layout(src, dst, edit_tensors=None, edit_config=None):
    shutil.copytree(src, dst)
    path = os.path.join(dst, "model.safetensors")
    if edit_tensors:
        tensors = load_file(path)
        edit_tensors(tensors)
        save_file(tensors, path, metadata={"format": "pt"})
    if edit_config:
        config = json.load(open(os.path.join(dst, "config.json")))
        edit_config(config)
        json.dump(config, open(os.path.join(dst, "config.json"), "w"))
    return dst


def run_import(src, tmp_path, capsys):
    dst = tmp_path / "out" / "trunk"
    code = gpt_oss.main(["import", "--src", str(src), "--dst", str(dst), "--quiet"])
    err = capsys.readouterr().err
    assert code != 0
    assert not dst.exists()
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []
    return err


def drop(name):
    return lambda t: t.pop(name)


def set_to(name, value):
    return lambda t: t.__setitem__(name, value)


CASES = {
    "missing": ("hf", drop("model.layers.1.self_attn.sinks"),
                ["missing tensor 'model.layers.1.self_attn.sinks'", "expected shape (4,)", "found no such tensor",
                 "model.safetensors"]),
    "shape": ("hf", set_to("model.layers.0.self_attn.q_proj.weight", np.zeros((64, 63), np.float32)),
              ["model.safetensors", "'model.layers.0.self_attn.q_proj.weight'", "shape (64, 63)", "expected (64, 64)"]),
    "dtype": ("hf", set_to("model.norm.weight", np.zeros((64,), np.int32)),
              ["model.safetensors", "'model.norm.weight'", "dtype I32", "expected F32 or BF16 or F16"]),
    "unknown": ("hf", set_to("model.layers.2.self_attn.sinks", np.zeros((4,), np.float32)),
                ["model.safetensors", "unknown tensor 'model.layers.2.self_attn.sinks'", "2-layer",
                 "expected only hf GPT-OSS tensors"]),
    "scales dtype": ("hf-mxfp4", set_to("model.layers.0.mlp.experts.down_proj_scales", np.zeros((3, 64, 1), np.float32)),
                     ["'model.layers.0.mlp.experts.down_proj_scales'", "dtype F32", "expected U8"]),
    "blocks shape": ("original", set_to("block.1.mlp.mlp1_weight.blocks", np.zeros((3, 64, 3, 16), np.uint8)),
                     ["model.safetensors", "'block.1.mlp.mlp1_weight.blocks'", "shape (3, 64, 3, 16)",
                      "expected (3, 64, 2, 16)"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_tensors(case, layouts_dir, tmp_path, capsys):
    layout, edit, needles = CASES[case]
    src = copy_layout(layouts_dir[layout], tmp_path / "src", edit)
    err = run_import(src, tmp_path, capsys)
    for needle in needles:
        assert needle in err, (needle, err)


def test_truncated_file(layouts_dir, tmp_path, capsys):
    src = copy_layout(layouts_dir["hf"], tmp_path / "src")
    path = os.path.join(src, "model.safetensors")
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[: len(blob) - 1000])
    err = run_import(src, tmp_path, capsys)
    assert "model.safetensors" in err and "truncated" in err and "expected it inside the file" in err


def test_not_a_safetensors_file(layouts_dir, tmp_path, capsys):
    src = copy_layout(layouts_dir["hf"], tmp_path / "src")
    open(os.path.join(src, "model.safetensors"), "wb").write(b"PK\x03\x04 this is a zip file, not safetensors")
    err = run_import(src, tmp_path, capsys)
    assert "model.safetensors: not a safetensors file" in err and "expected" in err and "found" in err


def test_unknown_quantization_method(layouts_dir, tmp_path, capsys):
    src = copy_layout(layouts_dir["hf-mxfp4"], tmp_path / "src",
                      edit_config=lambda c: c["quantization_config"].__setitem__("quant_method", "gptq"))
    err = run_import(src, tmp_path, capsys)
    assert "config.json" in err and "quantization_config.quant_method" in err and "expected 'mxfp4'" in err
    assert "found 'gptq'" in err


def test_unrecognised_config(layouts_dir, tmp_path, capsys):
    src = copy_layout(layouts_dir["original"], tmp_path / "src", edit_config=lambda c: c.pop("num_experts"))
    err = run_import(src, tmp_path, capsys)
    assert "config.json" in err and "expected a GPT-OSS config" in err


def test_existing_destination_is_not_touched(layouts_dir, tmp_path, capsys):
    dst = tmp_path / "taken"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert gpt_oss.main(["import", "--src", layouts_dir["hf"], "--dst", str(dst), "--quiet"]) != 0
    assert "already exists" in capsys.readouterr().err
    assert os.listdir(dst) == ["keep.txt"]


def test_failure_midway_removes_the_partial_checkpoint(layouts_dir, tmp_path, monkeypatch):
    """A crash after some leaves were written (here: reading the last tensor fails) leaves nothing."""
    from converters import safetensors_io

    real = safetensors_io.read

    def failing(info, *a):
        if info.name == "model.layers.1.mlp.experts.down_proj_bias":
            raise OSError("disk went away")
        return real(info, *a)

    monkeypatch.setattr(gpt_oss.st, "read", failing)
    dst = tmp_path / "out" / "trunk"
    with pytest.raises(OSError, match="disk went away"):
        gpt_oss.import_checkpoint(layouts_dir["hf"], str(dst), progress=False)
    assert not dst.exists() and os.listdir(tmp_path / "out") == []


def test_command_line_exit_code_and_mesh(layouts_dir, converted, tmp_path):
    """The real entry point: an error exits non-zero; --mesh over 2 CPU devices places and writes
    each leaf from its shards, giving the same checkpoint."""
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "converters.gpt_oss", "import", "--src", layouts_dir["original"], "--quiet",
           "--dtype", "float32", "--mesh", "fsdp=2", "--dst"]
    cwd = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    bad = subprocess.run(cmd[:5] + [str(tmp_path), "--dst", str(tmp_path / "x")], cwd=cwd, env=env,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "config.json" in bad.stderr and not (tmp_path / "x").exists()
    ok = subprocess.run(cmd + [str(tmp_path / "meshed")], cwd=cwd, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    from pdt_jax.trunk.checkpoint import load_converted

    _, ref = load_converted(converted)
    _, got = load_converted(str(tmp_path / "meshed"))
    import jax

    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
