"""Cached decoding: equals full prefill, handles ragged batches and rollback, compiles once."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdt_jax.trunk import Trunk, TrunkConfig
from pdt_jax.trunk import cache as kv
from pdt_jax.trunk import model

CFG = TrunkConfig(vocab_size=97, hidden_size=32, intermediate_size=24, num_layers=3, num_heads=4,
                  num_kv_heads=2, head_dim=8, num_experts=5, experts_per_token=2, sliding_window=5,
                  dtype="float32", eos_token_ids=(3,), pad_token_id=0)


@pytest.fixture(scope="module")
def trunk():
    return Trunk.random(CFG, seed=0, init_std=0.1)


def full_logits(trunk, ids):
    return np.asarray(trunk.logits(np.asarray([ids])))[0]


def step_fn(params, cache, tok, active):
    h, cache = model.extend(params, tok[:, None], cache, cfg=CFG, active_B=active)
    return model.unembed(params, h)[:, 0], cache


STEP = jax.jit(step_fn)
PREFILL = jax.jit(lambda params, ids, lengths, max_len, slack: model.prefill(
    params, ids, lengths, cfg=CFG, max_len=max_len, slack=slack), static_argnames=("max_len", "slack"))


def decode_logits(trunk, ids, n_prompt, slack):
    """Prefill n_prompt tokens, then feed the rest one at a time; logits at every position."""
    prompt = np.asarray([ids[:n_prompt]], np.int32)
    h, cache = PREFILL(trunk.params, prompt, np.array([n_prompt], np.int32), max_len=64, slack=slack)
    out = [np.asarray(model.unembed(trunk.params, h))[0]]
    for t in ids[n_prompt:]:
        logits, cache = STEP(trunk.params, cache, jnp.array([t], jnp.int32), jnp.ones((1,), bool))
        out.append(np.asarray(logits))
    return np.concatenate(out, axis=0), cache


@pytest.mark.parametrize("n_prompt,slack", [(1, 0), (4, 2), (9, 7)])
def test_token_by_token_equals_prefill(trunk, n_prompt, slack):
    ids = np.random.RandomState(0).randint(0, 97, 30).tolist()  # 30 ≫ window + slack: the ring wraps
    got, cache = decode_logits(trunk, ids, n_prompt, slack)
    ref = full_logits(trunk, ids)
    assert np.abs(got - ref).max() <= 1e-5
    assert int(cache.length[0]) == 30
    assert cache.k[0].shape[2] == CFG.sliding_window + slack and cache.k[1].shape[2] == 64


def test_rollback_then_regenerate_equals_fresh_prefill(trunk):
    rng = np.random.RandomState(1)
    ids = rng.randint(0, 97, 20).tolist()
    _, cache = decode_logits(trunk, ids, 5, slack=6)
    cache = kv.rollback(cache, jnp.array([14]))  # drop 6 tokens (== slack)
    new = rng.randint(0, 97, 6).tolist()
    outs = []
    for t in new:
        logits, cache = STEP(trunk.params, cache, jnp.array([t], jnp.int32), jnp.ones((1,), bool))
        outs.append(np.asarray(logits)[0])
    ref = full_logits(trunk, ids[:14] + new)[14:]
    assert np.abs(np.stack(outs) - ref).max() <= 1e-5


def test_rows_of_different_lengths_match_rows_alone(trunk):
    rng = np.random.RandomState(2)
    seqs = [rng.randint(0, 97, n).tolist() for n in (3, 11, 7)]
    ids = np.zeros((3, 11), np.int32)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
    lengths = np.array([len(s) for s in seqs], np.int32)
    h, cache = PREFILL(trunk.params, ids, lengths, max_len=64, slack=4)
    batch_logits = np.asarray(model.unembed(trunk.params, h))
    cont = rng.randint(0, 97, (3, 6))
    steps = []
    for t in range(6):
        logits, cache = STEP(trunk.params, cache, jnp.asarray(cont[:, t], jnp.int32), jnp.ones((3,), bool))
        steps.append(np.asarray(logits))
    steps = np.stack(steps, axis=1)
    for i, s in enumerate(seqs):
        alone = full_logits(trunk, s + cont[i].tolist())
        assert np.abs(batch_logits[i, :len(s)] - alone[:len(s)]).max() <= 1e-5
        assert np.abs(steps[i] - alone[len(s):]).max() <= 1e-5


def test_inactive_rows_keep_their_cache(trunk):
    ids = np.random.RandomState(3).randint(0, 97, (2, 6)).astype(np.int32)
    _, cache = PREFILL(trunk.params, ids, np.array([6, 6], np.int32), max_len=16, slack=2)
    before = jax.tree.map(lambda x: np.asarray(x[1]), (cache.k, cache.v))
    _, cache2 = STEP(trunk.params, cache, jnp.array([5, 5], jnp.int32), jnp.array([True, False]))
    after = jax.tree.map(lambda x: np.asarray(x[1]), (cache2.k, cache2.v))
    assert np.asarray(cache2.length).tolist() == [7, 6]
    jax.tree.map(np.testing.assert_array_equal, before, after)


def test_generate_greedy_matches_argmax_of_full_logits(trunk):
    prompts = [[5, 6, 7, 8], [9, 10]]
    out = trunk.generate(prompts, max_new_tokens=12, eos_ids=[])
    for prompt, gen in zip(prompts, out.tokens):
        assert len(gen) == 12
        # Teacher-forcing the generated text must reproduce every greedy choice.
        logits = full_logits(trunk, prompt + gen)
        assert logits[len(prompt) - 1:-1].argmax(-1).tolist() == gen


def test_generate_returns_the_logits_each_token_was_chosen_from(trunk):
    prompt = [5, 6, 7]
    out, logits = trunk.generate([prompt], max_new_tokens=20, eos_ids=[], return_logits=True)  # 16 + 4
    gen = out.tokens[0]
    assert logits.shape == (1, 20, trunk.cfg.vocab_size) and logits[0].argmax(-1).tolist() == gen
    np.testing.assert_allclose(logits[0], full_logits(trunk, prompt + gen)[len(prompt) - 1:-1], atol=1e-4)


def test_generation_compiles_the_decode_step_once(trunk):
    t = Trunk(trunk.cfg, trunk.params)  # fresh jit caches
    t.generate([[1, 2, 3]], max_new_tokens=40, eos_ids=[])  # 16 + 16 + 8 tokens: one program
    assert t._decode._cache_size() == 1 and t._prefill._cache_size() == 1
    t.generate([[4, 5, 6]], max_new_tokens=7, eos_ids=[])
    assert t._decode._cache_size() == 1
    # Sampling is a second program (greedy skips the sampling branch and the key), shared by every
    # temperature and top-p.
    t.generate([[4, 5, 6]], max_new_tokens=7, eos_ids=[], temperature=0.7, top_p=0.9)
    t.generate([[4, 5, 6]], max_new_tokens=23, eos_ids=[], temperature=1.3, top_p=0.5)
    assert t._decode._cache_size() == 2


def test_generate_logits_follow_each_row_until_its_eos(trunk):
    out, logits = trunk.generate([[5, 6, 7], [8, 9]], max_new_tokens=40, temperature=1.0, seed=4,
                                 eos_ids=list(range(0, 97, 3)), return_logits=True)
    assert logits.shape[1] == max(len(r) for r in out.tokens)  # not the steps run after every row ended
    for b, row in enumerate(out.tokens):
        assert np.isfinite(logits[b, :len(row)]).all()
    with pytest.raises(ValueError, match="top_k"):
        trunk.generate([[5]], max_new_tokens=2, temperature=1.0, top_k=-1)


def test_generate_stops_each_row_at_eos(trunk):
    out = trunk.generate([[5, 6, 7], [8, 9]], max_new_tokens=16, temperature=1.0, seed=4, eos_ids=list(range(0, 97, 3)))
    for row, done in zip(out.tokens, out.finished):
        if done:
            assert row[-1] % 3 == 0 and all(t % 3 for t in row[:-1])
        else:
            assert len(row) == 16


def test_bf16_parameters_run_close_to_f32(trunk):
    ids = np.random.RandomState(5).randint(0, 97, (2, 16))
    ref = trunk.logits(ids)
    low = trunk.astype("bfloat16")
    assert low.params["layers"][0]["q"].dtype == jnp.bfloat16
    assert low.params["layers"][0]["attn_norm"].dtype == jnp.float32  # norms stay fp32
    got = low.logits(ids)
    assert np.isfinite(got).all()
    # bf16 keeps 8 mantissa bits; through 3 layers the logits move by a few percent of their scale.
    deviation = np.abs(got - ref).max() / np.abs(ref).max()
    assert deviation < 0.05, deviation
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.8
