"""The MoE implementations are one function: ``blocked`` (training and long prefills) equals the
dense reference in value and gradient, also when the routing piles most tokens on one expert and
an expert's group spans several blocks."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pdt_jax.trunk import moe
from pdt_jax.trunk.config import TrunkConfig


def _setup(N=300, D=16, I=8, E=6, k=2, seed=0):
    cfg = dataclasses.replace(TrunkConfig(), hidden_size=D, intermediate_size=I, num_experts=E, experts_per_token=k)
    r = np.random.default_rng(seed)
    p = {"router": r.normal(size=(D, E)).astype(np.float32) * 0.5, "router_bias": np.zeros(E, np.float32),
         "gate_up": r.normal(size=(E, D, 2 * I)).astype(np.float32) * 0.3,
         "gate_up_bias": r.normal(size=(E, 2 * I)).astype(np.float32) * 0.1,
         "down": r.normal(size=(E, I, D)).astype(np.float32) * 0.3, "down_bias": r.normal(size=(E, D)).astype(np.float32) * 0.1}
    p["router_bias"][0] = 4.0   # expert 0 takes almost every token: its group spans many blocks
    x = r.normal(size=(N, D)).astype(np.float32)
    return cfg, jax.tree.map(jnp.asarray, p), jnp.asarray(x)


def test_blocked_equals_dense_values_and_gradients():
    cfg, p, x = _setup()
    _, experts, _ = moe.route(p, x, cfg)
    sizes = np.bincount(np.asarray(experts).reshape(-1), minlength=cfg.num_experts)
    b = moe.block_rows(x.shape[0] * cfg.experts_per_token, cfg.num_experts)
    assert sizes.max() > 2 * b and (sizes == 0).any() | (sizes % b != 0).any()   # multi-block and padded groups

    def loss(impl):
        return lambda p, x: jnp.sum(jnp.sin(moe.moe(p, x, cfg, impl)))
    out_b, out_d = moe.moe(p, x, cfg, "blocked"), moe.moe(p, x, cfg, "dense")
    assert float(jnp.abs(out_d).max()) > 0.5
    np.testing.assert_allclose(out_b, out_d, atol=2e-5, rtol=1e-5)
    gb = jax.grad(loss("blocked"), argnums=(0, 1))(p, x)
    gd = jax.grad(loss("dense"), argnums=(0, 1))(p, x)
    for a, b_ in zip(jax.tree.leaves(gb), jax.tree.leaves(gd)):
        np.testing.assert_allclose(a, b_, atol=5e-5, rtol=1e-4)
    assert float(jnp.abs(gb[0]["gate_up"]).max()) > 0.1


def test_auto_picks_blocked_for_long_inputs_and_refuses_unknown_impls():
    cfg = TrunkConfig()
    assert moe.pick_impl(4096, cfg) == "blocked"
    try:
        moe.pick_impl(10, cfg, "grouped")
    except ValueError as e:
        assert "moe_impl" in str(e) and "blocked" in str(e)
    else:
        raise AssertionError("an unknown impl was accepted")


def test_query_chunked_attention_equals_whole_values_and_gradients():
    """``q_chunk`` (training's memory knob) changes nothing but memory, also when it does not
    divide the sequence and with a sliding window."""
    from pdt_jax.trunk import attention
    r = np.random.default_rng(1)
    B, T, H, K, D = 2, 37, 4, 2, 8
    q = jnp.asarray(r.normal(size=(B, T, H, D)), jnp.float32)
    k = jnp.asarray(r.normal(size=(B, K, T, D)), jnp.float32)
    v = jnp.asarray(r.normal(size=(B, K, T, D)), jnp.float32)
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    mask = attention.causal_mask(pos, pos, jnp.arange(T)[None, :] < jnp.array([[T], [30]]), 9)
    sinks = jnp.asarray(r.normal(size=(H,)), jnp.float32)

    def f(chunk):
        return lambda q, k, v: jnp.sum(jnp.cos(attention.attend(q, k, v, mask, sinks, 0.3, q_chunk=chunk)))
    whole = attention.attend(q, k, v, mask, sinks, 0.3)
    np.testing.assert_allclose(attention.attend(q, k, v, mask, sinks, 0.3, q_chunk=8), whole, atol=1e-6)
    for a, b in zip(jax.grad(f(8), argnums=(0, 1, 2))(q, k, v), jax.grad(f(None), argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(a, b, atol=1e-5)
        assert float(jnp.abs(b).max()) > 1e-2
