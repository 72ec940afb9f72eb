"""The few-row CPU decode kernels (pdt_jax/kernels/cpu.py) against XLA's own ops."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdt_jax.kernels import cpu
from pdt_jax.trunk import Trunk, TrunkConfig
from pdt_jax.trunk import moe as moe_lib

# The kernels are optional (no compiler: XLA's ops, with a warning). Where a compiler exists they
# must build, so that these tests never pass by skipping on a machine that should run them.
if shutil.which(os.environ.get("CXX") or "g++") is None:
    pytest.skip("no C++ compiler: the CPU kernels fall back to XLA", allow_module_level=True)


def test_kernels_build_and_apply_to_few_float32_rows():
    assert cpu.available()
    assert cpu.applies(1, jnp.float32) and cpu.applies(cpu.MAX_ROWS, jnp.float32)
    assert not cpu.applies(cpu.MAX_ROWS + 1, jnp.float32)
    assert not cpu.applies(3, jnp.bfloat16)
    with cpu.disabled():
        assert not cpu.applies(3, jnp.float32)


@pytest.mark.parametrize("K,N", [(256, 512), (100, 77), (32, 16), (48, 200)])
def test_matmul_matches_float64(K, N):
    rng = np.random.RandomState(K + N)
    w = rng.randn(K, N).astype(np.float32)
    f = jax.jit(cpu.matmul)
    for rows in range(1, cpu.MAX_ROWS + 1):
        x = rng.randn(rows, 1, K).astype(np.float32)
        want = np.einsum("rtk,kn->rtn", x.astype(np.float64), w.astype(np.float64))
        got = np.asarray(f(x, w))
        assert got.shape == (rows, 1, N)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(K))


# swiglu_limit 7.0 and swiglu_alpha 1.702 (the defaults) are all the reference reads from it.
EXPERTS_CFG = TrunkConfig(dtype="float32")


def reference(*args):
    return moe_lib.all_experts(*args, EXPERTS_CFG)


def kernel(*args):
    return cpu.experts(*args, EXPERTS_CFG.swiglu_limit, EXPERTS_CFG.swiglu_alpha, reference=reference)


def experts_args(seed, N=3, E=5, D=48, I=40):
    """Odd expert count and widths that are not multiples of 16 (the kernels' edge paths)."""
    rng = np.random.RandomState(seed)
    return (rng.randn(N, D).astype(np.float32), rng.randn(E, D, 2 * I).astype(np.float32) * 0.6,
            rng.randn(E, 2 * I).astype(np.float32), rng.randn(E, I, D).astype(np.float32) * 0.2,
            rng.randn(E, D).astype(np.float32))


@pytest.mark.parametrize("N", [1, 3, 4])
def test_experts_match_the_xla_reference_with_the_clamp_active(N):
    args = experts_args(N, N=N)
    h = np.einsum("nd,edf->enf", args[0], args[1]) + args[2][:, None]
    assert (h[..., ::2] > 7.0).any() and (np.abs(h[..., 1::2]) > 7.0).any()  # both clamps bite
    want = np.asarray(jax.jit(reference)(*args))
    got = np.asarray(jax.jit(kernel)(*args))
    assert got.shape == want.shape == (5, N, 48)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5 * np.abs(want).max())


def test_gradients_go_through_the_reference():
    args = experts_args(7)

    def loss(fn, x, gu):
        return jnp.sum(jnp.tanh(fn(x, gu, *args[2:])))
    got = jax.grad(lambda x, gu: loss(kernel, x, gu), argnums=(0, 1))(*args[:2])
    want = jax.grad(lambda x, gu: loss(reference, x, gu), argnums=(0, 1))(*args[:2])
    for g, w in zip(got, want):
        g, w = np.asarray(g), np.asarray(w)
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * np.abs(w).max())
    x, w = args[0], args[1][0]
    got = np.asarray(jax.grad(lambda w: jnp.sum(cpu.matmul(x, w) ** 2))(w))
    want = np.asarray(jax.grad(lambda w: jnp.sum((x @ w) ** 2))(w))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def tiny_trunk():
    cfg = TrunkConfig(vocab_size=97, hidden_size=48, intermediate_size=40, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=12, num_experts=5, experts_per_token=3, sliding_window=8,
                      max_position_embeddings=256, eos_token_ids=(0,), pad_token_id=0, dtype="float32")
    return Trunk.random(cfg, seed=3, init_std=0.2)


def test_moe_picks_the_kernel_for_few_tokens_only():
    trunk = tiny_trunk()
    lp, cfg = trunk.params["layers"][0], trunk.cfg

    def hlo(n):
        return jax.jit(lambda x: moe_lib.moe(lp, x, cfg)).lower(jnp.zeros((n, cfg.hidden_size))).as_text()
    assert "pdt_cpu_moe_experts" in hlo(3)
    assert "pdt_cpu_moe_experts" not in hlo(cpu.MAX_ROWS + 1)
    with pytest.raises(ValueError, match="moe_impl='cpu_kernel' needs .* found 5 tokens of float32"):
        moe_lib.pick_impl(5, cfg, "cpu_kernel")


def test_decode_with_kernels_matches_xla_ops():
    trunk = tiny_trunk()
    xla = Trunk(trunk.cfg, trunk.params)
    prompts = [[5, 6, 7, 8, 9], [11, 12], [13, 14, 15]]
    got, got_logits = trunk.generate(prompts, 20, eos_ids=[], return_logits=True)
    with cpu.disabled():
        want, want_logits = xla.generate(prompts, 20, eos_ids=[], return_logits=True)
    assert got.tokens == want.tokens
    np.testing.assert_allclose(got_logits, want_logits, rtol=1e-5, atol=1e-5)


def test_a_failed_build_names_the_compiler_and_is_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PDT_JAX_KERNEL_CACHE", str(tmp_path))
    with pytest.raises(cpu.KernelBuildError, match="/nonexistent/c\\+\\+"):
        cpu.build(compiler="/nonexistent/c++")
    assert list(tmp_path.iterdir()) == []
