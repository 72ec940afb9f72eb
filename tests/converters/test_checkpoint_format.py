"""The converted-checkpoint format: streamed writes, checks on read, sharded restore, atomicity."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from pdt_jax.trunk import CheckpointError, TrunkConfig
from pdt_jax.trunk.checkpoint import ConvertedWriter, load_converted, open_converted, save_converted
from pdt_jax.trunk.params import init_trunk

CFG = TrunkConfig(vocab_size=40, hidden_size=16, intermediate_size=8, num_layers=1, num_heads=2, num_kv_heads=1,
                  head_dim=8, num_experts=2, experts_per_token=1, pad_token_id=0, dtype="float32")


@pytest.fixture(scope="module")
def params():
    return init_trunk(CFG, jax.random.key(0), 0.5)


def test_round_trip_and_cast(params, tmp_path):
    save_converted(str(tmp_path / "c"), CFG, params)
    cfg, back = load_converted(str(tmp_path / "c"))
    assert cfg == CFG
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    cfg16, low = load_converted(str(tmp_path / "c"), dtype="bfloat16")
    assert cfg16.dtype == "bfloat16" and low["layers"][0]["q"].dtype == jax.numpy.bfloat16
    assert low["layers"][0]["attn_norm"].dtype == np.float32  # norms stay float32


def test_sharded_restore(params, tmp_path):
    save_converted(str(tmp_path / "c"), CFG, params)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("fsdp",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    _, back = load_converted(str(tmp_path / "c"), shardings=jax.tree.map(lambda _: sharding, params))
    assert back["embed"].sharding == sharding
    np.testing.assert_array_equal(np.asarray(back["embed"]), np.asarray(params["embed"]))


def test_writer_streams_regions_and_requires_completeness(params, tmp_path):
    with ConvertedWriter(str(tmp_path / "c"), CFG) as w:
        for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p)
            if name == "unembed":
                for a in range(0, 40, 16):  # column blocks, as the converters write it
                    w.write(name, np.asarray(leaf)[:, a:a + 16], (slice(None), slice(a, a + 16)))
            elif name != "layers/0/down":
                w.write(name, np.asarray(leaf))
        w.write("layers/0/down", np.asarray(params["layers"][0]["down"][0]), (0,))
        with pytest.raises(CheckpointError, match="'layers/0/q' has dtype float64, expected float32"):
            w.write("layers/0/q", np.zeros((16, 2, 8)))
        with pytest.raises(CheckpointError, match=r"'layers/0/q' has shape \(16, 2\), expected \(16, 2, 8\)"):
            w.write("layers/0/q", np.zeros((16, 2), np.float32))
        with pytest.raises(CheckpointError, match="unknown tensor 'layers/0/qq'"):
            w.write("layers/0/qq", np.zeros((1,), np.float32))
        with pytest.raises(CheckpointError, match="'layers/0/down' is incomplete: 128 of 256 elements"):
            w.finish()
    assert not (tmp_path / "c").exists() and os.listdir(tmp_path) == []


def corrupt(src, dst, how):
    shutil.copytree(src, dst)
    root = os.path.join(dst, "params")
    if how == "missing":
        shutil.rmtree(os.path.join(root, "layers/0/sinks"))
    elif how == "unknown":
        shutil.copytree(os.path.join(root, "layers/0/sinks"), os.path.join(root, "layers/0/extra"))
    else:
        meta_path = os.path.join(root, "layers/0/sinks/zarr.json")
        meta = json.load(open(meta_path))
        if how == "shape":
            meta["shape"] = [3]
            meta["chunk_grid"]["configuration"]["chunk_shape"] = [3]
        else:
            meta["data_type"] = "float16"
        json.dump(meta, open(meta_path, "w"))
    return str(dst)


@pytest.mark.parametrize("how,message", [
    ("missing", r"missing tensor 'layers/0/sinks', expected shape \(2,\)"),
    ("unknown", "unknown tensor 'layers/0/extra'"),
    ("shape", r"tensor 'layers/0/sinks' has shape \(3,\), expected \(2,\)"),
    ("dtype", "tensor 'layers/0/sinks' has dtype float16, expected float32"),
])
def test_bad_checkpoint(params, tmp_path, how, message):
    save_converted(str(tmp_path / "c"), CFG, params)
    bad = corrupt(str(tmp_path / "c"), tmp_path / "bad", how)
    with pytest.raises(CheckpointError, match=message) as e:
        load_converted(bad)
    assert "params" in str(e.value)
    with pytest.raises(CheckpointError, match=message):
        open_converted(bad)
