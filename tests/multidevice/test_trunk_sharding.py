"""Sharded trunk on 8 fake CPU devices (run in a subprocess so the device count is set before jax
starts): same logits as unsharded, and the real GPT-OSS-20B widths AOT-compile with the trunk
split across devices, never replicated."""
import json
import os
import subprocess
import sys
import textwrap


SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    from functools import partial
    from pdt_jax import sharding
    from pdt_jax.trunk import TrunkConfig, model
    from pdt_jax.trunk.params import trunk_specs, axes_from_specs, abstract_from_specs, init_trunk
    from configs.model.gpt_oss_20b import get_config
    out = {}
    # 1) numerics: a tiny trunk sharded over fsdp x tensor gives the unsharded logits.
    cfg = TrunkConfig.from_mapping(get_config("tiny").to_dict())
    params = init_trunk(cfg, jax.random.key(0), 0.1)
    ids = np.random.RandomState(0).randint(0, cfg.vocab_size, (4, 16)).astype(np.int32)
    lens = np.full((4,), 16, np.int32)
    fwd = jax.jit(lambda p, i, l: model.unembed(p, model.prefill(p, i, l, cfg=cfg)[0]))
    ref = np.asarray(fwd(params, ids, lens))
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 2, "expert": 2})
    shardings = sharding.ShardingRules().tree(params, axes_from_specs(trunk_specs(cfg)), mesh)
    sharded = sharding.shard(params, shardings)
    out["n_sharded_leaves"] = sum(len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated
                                  for x in jax.tree.leaves(sharded))
    out["max_diff"] = float(np.abs(np.asarray(fwd(sharded, ids, lens)) - ref).max())
    # 2) the real 20B widths (2 of 24 layers to keep compile time small) compile with FSDP x 8.
    big = TrunkConfig.from_mapping(dict(get_config().to_dict(), num_layers=2))
    specs = trunk_specs(big)
    mesh8 = sharding.make_mesh({"fsdp": 8})
    sh = sharding.ShardingRules().tree(abstract_from_specs(specs), axes_from_specs(specs), mesh8)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_from_specs(specs), sh)
    total = sum(np.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(abstract))
    per_device = sum(np.prod(s.shard_shape(a.shape)) * a.dtype.itemsize for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(sh)))
    step = jax.jit(lambda p, i, l: model.prefill(p, i, l, cfg=big)[0][:, -1])
    compiled = step.lower(abstract, jax.ShapeDtypeStruct((8, 32), jnp.int32), jax.ShapeDtypeStruct((8,), jnp.int32)).compile()
    out["param_bytes_total"] = int(total)
    out["param_bytes_per_device"] = int(per_device)
    mem = compiled.memory_analysis()
    out["argument_bytes_per_device"] = int(getattr(mem, "argument_size_in_bytes", -1)) if mem is not None else -1
    print("RESULT" + json.dumps(out))
""")


def test_sharded_trunk_on_eight_fake_devices():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    r = json.loads(line[len("RESULT"):])
    assert r["max_diff"] <= 1e-5
    assert r["n_sharded_leaves"] > 10
    # FSDP over 8 devices: every device holds 1/8 of the trunk (no replication).
    assert r["param_bytes_per_device"] * 8 <= r["param_bytes_total"] * 1.01
    if r["argument_bytes_per_device"] > 0:
        assert r["argument_bytes_per_device"] < r["param_bytes_total"] / 4
