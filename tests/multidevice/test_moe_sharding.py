"""Training's MoE on an FSDP mesh of 8 fake CPU devices (a subprocess: the device count is set
before jax starts): ``PerShard`` runs the blocked MoE on each device's own rows — the sort sees
only local token–expert pairs and the output stays split by rows — with the values and the
gradients (tokens and expert weights) of the unsharded dense MoE."""
import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import dataclasses, json, os, re
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    from jax.sharding import NamedSharding, PartitionSpec as P
    from pdt_jax import sharding
    from pdt_jax.trunk import moe
    from pdt_jax.trunk.config import TrunkConfig
    cfg = dataclasses.replace(TrunkConfig(), hidden_size=16, intermediate_size=8, num_experts=6, experts_per_token=2)
    r = np.random.default_rng(0)
    E, D, I, N = 6, 16, 8, 8 * 80
    p = {"router": r.normal(size=(D, E)) * 0.5, "router_bias": np.zeros(E), "gate_up": r.normal(size=(E, D, 2 * I)) * 0.3,
         "gate_up_bias": r.normal(size=(E, 2 * I)) * 0.1, "down": r.normal(size=(E, I, D)) * 0.3,
         "down_bias": r.normal(size=(E, D)) * 0.1}
    p = {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}
    x = jnp.asarray(r.normal(size=(N, D)), jnp.float32)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    # FSDP: the weights split along the model dimension, the tokens (rows) over data x fsdp.
    fsdp = lambda a: NamedSharding(mesh, P(*([None] * (a.ndim - 1) + ["fsdp"])) if a.shape[-1] == D else P())
    ps = {k: jax.device_put(v, fsdp(v)) for k, v in p.items()}
    xs = jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"), None)))
    spec = moe.PerShard(mesh, ("data", "fsdp"), "blocked")
    loss = lambda impl: (lambda p, x: jnp.sum(jnp.sin(moe.moe(p, x, cfg, impl))))
    f = jax.jit(jax.value_and_grad(loss(spec), argnums=(0, 1)))
    (val, (gp, gx)) = f(ps, xs)
    (rv, (rgp, rgx)) = jax.value_and_grad(loss("dense"), argnums=(0, 1))(p, x)
    out = {"val": float(abs(val - rv)), "gx": float(jnp.abs(gx - rgx).max()),
           "gp": max(float(jnp.abs(gp[k] - rgp[k]).max()) for k in p), "gp_scale": float(jnp.abs(rgp["gate_up"]).max())}
    y = jax.jit(lambda p, x: moe.moe(p, x, cfg, spec))(ps, xs)
    out["y_diff"] = float(jnp.abs(y - moe.moe(p, x, cfg, "dense")).max())
    out["y_spec"] = str(y.sharding.spec)
    hlo = jax.jit(lambda p, x: moe.moe(p, x, cfg, spec)).lower(ps, xs).compile().as_text()
    sizes = [int(np.prod([int(d) for d in m.split(",") if d])) for m in re.findall(r"\\[([0-9,]*)\\][^ ]* sort\\(", hlo)]
    out["sort_sizes"] = sizes
    print("RESULT" + json.dumps(out))
""")


def test_per_shard_moe_sorts_local_tokens_and_equals_dense():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))[len("RESULT"):])
    assert r["val"] <= 1e-3 and r["gx"] <= 1e-5 and r["gp"] <= 1e-4 and r["gp_scale"] > 0.1, r
    assert r["y_diff"] <= 1e-5, r
    assert "data" in r["y_spec"] and "fsdp" in r["y_spec"], r          # the output stays split by rows
    # Each device sorts its own 80 tokens x 2 experts, never the 640 x 2 of every device.
    assert r["sort_sizes"] and max(r["sort_sizes"]) <= 80 * 2, r
