"""The PDT model: exact trunk reproduction at init, SNC reads exactly the visible notes, gradients
reach sibling note writers, the trunk stays frozen, and all of it runs jitted over P×K rows."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pdt_jax import bus as bus_lib
from pdt_jax import model as pdt
from pdt_jax.sidecar import SidecarConfig
from pdt_jax.trunk import TrunkConfig
from pdt_jax.trunk import model as trunk_model
from pdt_jax.trunk.params import init_trunk

TRUNK = TrunkConfig(vocab_size=61, hidden_size=32, intermediate_size=16, num_layers=3, num_heads=4,
                    num_kv_heads=2, head_dim=8, num_experts=3, experts_per_token=2, sliding_window=6,
                    dtype="float32", eos_token_ids=(1,), pad_token_id=0)
SIDE = SidecarConfig(notes_dim=16, top_k_layers=2, adapter_bottleneck=8, snc_heads=2, snc_head_dim=8,
                     planner_slots=4, plan_vocab_size=64, plan_dim=16, coverage_heads=2, coverage_dim=16,
                     agree_hidden=16, block_size=2, lag=1, bus_capacity=2)
CFG = pdt.PDTConfig(TRUNK, SIDE)
P, K, T = 2, 3, 14


@pytest.fixture(scope="module")
def trunk_params():
    return init_trunk(TRUNK, jax.random.key(0), 0.1)


@pytest.fixture(scope="module")
def fresh_sidecar():
    return pdt.init_sidecar(CFG, jax.random.key(1))


def open_sidecar(params, seed=2, gate=2.0):
    """Non-zero SNC and adapter output projections, open gates: the sidecar now acts."""
    keys = iter(jax.random.split(jax.random.key(seed), 64))
    layers = []
    for lp in params["layers"]:
        lp = jax.tree.map(lambda x: x, lp)
        lp["snc"]["o"] = 0.3 * jax.random.normal(next(keys), lp["snc"]["o"].shape)
        lp["adapter"]["up"] = 0.3 * jax.random.normal(next(keys), lp["adapter"]["up"].shape)
        lp["snc_gate"] = jnp.float32(gate)
        lp["adapter_gate"] = jnp.float32(gate)
        layers.append(lp)
    return dict(params, layers=layers)


def make_batch(seed=0):
    rng = np.random.RandomState(seed)
    tokens = rng.randint(2, TRUNK.vocab_size, (P, K, T)).astype(np.int32)
    start = rng.randint(2, 5, (P, K)).astype(np.int32)
    lengths = np.array([[T, T - 2, T - 1], [T - 3, T, T]], np.int32)
    plan_ids = np.array([[5, 9, 0, 0], [7, 0, 0, 0]], np.int32)
    return {"tokens": tokens, "lengths": lengths, "target_start": start, "plan_ids": plan_ids}


FWD = jax.jit(pdt.forward_train, static_argnames=("cfg", "stop_grad_notes", "pass_a"))
DECODE = jax.jit(pdt.decode_step, static_argnames=("cfg",))
PREFILL = jax.jit(pdt.prefill, static_argnames=("cfg", "max_len", "slack"))


def trunk_logits(trunk_params, batch):
    ids = batch["tokens"].reshape(P * K, T)
    lengths = batch["lengths"].reshape(-1)
    h, _ = trunk_model.prefill(trunk_params, ids, lengths, cfg=TRUNK)
    return np.asarray(trunk_model.unembed(trunk_params, h))


# Logits of magnitude ~1 from two programs that fuse differently agree to a few float32 ulps.
EXACT = 2e-6


def test_untrained_pdt_reproduces_the_trunk(trunk_params, fresh_sidecar):
    batch = make_batch()
    out = FWD(trunk_params, fresh_sidecar, batch, cfg=CFG)
    assert np.abs(np.asarray(out["lm_logits"]) - trunk_logits(trunk_params, batch)).max() <= EXACT


def test_gate_zero_reproduces_the_trunk_with_any_sidecar(trunk_params, fresh_sidecar):
    batch = make_batch()
    active = open_sidecar(fresh_sidecar)
    out = FWD(trunk_params, active, batch, cfg=CFG, gate=0.0)
    assert np.abs(np.asarray(out["lm_logits"]) - trunk_logits(trunk_params, batch)).max() <= EXACT
    moved = FWD(trunk_params, active, batch, cfg=CFG, gate=1.0)
    assert np.abs(np.asarray(moved["lm_logits"]) - trunk_logits(trunk_params, batch)).max() > 1e-3


def test_forward_train_shapes_and_single_compile(trunk_params, fresh_sidecar):
    traces = []

    def f(tp, sp, batch):
        traces.append(1)  # runs once per trace, i.e. per compilation
        return pdt.forward_train(tp, sp, batch, cfg=CFG)

    fwd = jax.jit(f)
    out = fwd(trunk_params, fresh_sidecar, make_batch(0))
    fwd(trunk_params, fresh_sidecar, make_batch(1))
    assert len(traces) == 1
    U = (T - 1) // SIDE.block_size + 1
    assert out["lm_logits"].shape == (P * K, T, TRUNK.vocab_size)
    assert out["planner_logits"].shape == (P, SIDE.planner_slots, SIDE.plan_vocab_size)
    assert out["bus_notes"].shape == out["notes"].shape == (P, K, U, SIDE.notes_dim)
    assert out["coverage_logits"].shape == (P, K, U, SIDE.planner_slots)
    assert out["readiness_logits"].shape == (P, K, U)
    assert out["stream_logits"].shape == (P, K, K)
    for v in jax.tree.leaves(out):
        assert np.isfinite(np.asarray(v)).all()


@pytest.mark.parametrize("lag", [0, 1, 2])
def test_training_windows_follow_the_bus_rules(lag):
    """The teacher-forced window mask equals what the runtime bus shows when block u's note is
    published with stamp u + 1 and read at round v with lag Δ and the producer capacity — at every
    token of every block, for every consumer, including a consumer restricted to one producer."""
    import dataclasses

    side = dataclasses.replace(SIDE, lag=lag)
    U = 6
    start = jnp.array([3, 1, 2])
    block = pdt.block_index(3 + 2 * U, start, side.block_size)
    present = jnp.ones((1, K, U), bool).at[0, 2, 4:].set(False)   # stream 3 wrote only 4 blocks
    mask = np.asarray(pdt.training_window_mask(block, present, side))
    only = jnp.zeros((K, K), bool).at[1, 2].set(True)             # stream 2 may read stream 3 only
    restricted = np.asarray(pdt.training_window_mask(block, present, side, only))
    bus = bus_lib.init_bus(1, K, side.bus_capacity, 4, slack=U)
    bus = bus_lib.seed_snapshot0(bus, jnp.ones((1, 4)))
    for v in range(U):
        win = bus_lib.visible_window(bus, v, side.lag)
        expect = np.zeros(1 + K * U, bool)
        expect[0] = True
        for w in range(win.mask.shape[-1]):
            if win.mask[0, 0, w] and win.version[0, 0, w] > 0:
                j, u = int(win.producer[0, 0, w]), int(win.round[0, 0, w]) - 1
                expect[1 + j * U + u] = True
        for row in range(K):
            for i in range(side.block_size):
                t = int(start[row]) + v * side.block_size + i
                np.testing.assert_array_equal(mask[row, t], expect, err_msg=f"round {v} row {row} token {i}")
        t = int(start[1]) + v * side.block_size
        only_3 = expect.copy()
        only_3[1: 1 + 2 * U] = False                                 # producers 1 and 2 hidden
        np.testing.assert_array_equal(restricted[1, t], only_3)
        t0 = int(start[0]) + v * side.block_size                     # stream 1 reads no producer: snapshot 0 only
        np.testing.assert_array_equal(restricted[0, t0], np.eye(1 + K * U, dtype=bool)[0])
        bus = bus_lib.publish(bus, jnp.ones((1, K, 4)), v + 1, mask_PxK=present[:, :, v])
    for row in range(K):  # prompt tokens read nothing
        assert not mask[row, : int(start[row])].any()


def test_snc_reads_visible_sibling_notes_and_ignores_hidden_ones(trunk_params, fresh_sidecar):
    side = open_sidecar(fresh_sidecar)
    rng = np.random.RandomState(3)
    prompts = rng.randint(2, 61, (P * K, 5)).astype(np.int32)
    gate = jnp.ones((P * K,), jnp.float32)
    _, cache = PREFILL(trunk_params, side, prompts, jnp.full((P * K,), 5), cfg=CFG, max_len=16, slack=4, gate_B=gate)
    bus = bus_lib.init_bus(P, K, SIDE.bus_capacity, SIDE.notes_dim, slack=2)
    bus = bus_lib.seed_snapshot0(bus, jnp.asarray(rng.randn(P, SIDE.notes_dim), jnp.float32))
    notes = [jnp.asarray(rng.randn(P, K, SIDE.notes_dim), jnp.float32) for _ in range(3)]
    for stamp, n in enumerate(notes, start=1):
        bus = bus_lib.publish(bus, n, stamp)
    v = 3  # lag 1: stamps <= 2 visible, stamp 3 hidden

    def logits_for(b):
        w = bus_lib.visible_window(b, v, SIDE.lag)
        N = SIDE.notes_dim
        _, logits, _ = DECODE(trunk_params, side, cache, jnp.full((P * K,), 7), w.notes.reshape(P * K, -1, N),
                              w.mask.reshape(P * K, -1), gate, jnp.ones((P * K,), bool), cfg=CFG,
                              entries_BxW=pdt.window_entries(w, K))
        return np.asarray(logits).reshape(P, K, -1)

    base = logits_for(bus)
    # Sibling stream 2 (index 1) changes its stamp-2 note: every consumer of prompt 0 sees it.
    changed = bus.replace(notes=bus.notes.at[0, 1, 1].add(1.0))
    diff = np.abs(logits_for(changed) - base).max(axis=-1)
    assert (diff[0] > 1e-4).all() and (diff[1] == 0).all()
    # Its stamp-3 note is still hidden by the lag: nothing changes, bit for bit.
    hidden = bus.replace(notes=bus.notes.at[0, 1, 2].add(1.0))
    np.testing.assert_array_equal(logits_for(hidden), base)
    # Snapshot 0 is read from round 0 by every stream.
    w0 = bus_lib.visible_window(bus_lib.seed_snapshot0(bus_lib.init_bus(P, K, 2, SIDE.notes_dim), bus.snap0[:, 0]), 0, SIDE.lag)
    assert np.asarray(w0.mask).sum(axis=-1).tolist() == [[1] * K] * P
    # With g = 0 the notes do nothing.
    N = SIDE.notes_dim
    w = bus_lib.visible_window(changed, v, SIDE.lag)
    _, off, _ = DECODE(trunk_params, side, cache, jnp.full((P * K,), 7), w.notes.reshape(P * K, -1, N),
                                w.mask.reshape(P * K, -1), jnp.zeros((P * K,)), jnp.ones((P * K,), bool), cfg=CFG)
    w = bus_lib.visible_window(bus, v, SIDE.lag)
    _, off2, _ = DECODE(trunk_params, side, cache, jnp.full((P * K,), 7), w.notes.reshape(P * K, -1, N),
                                 w.mask.reshape(P * K, -1), jnp.zeros((P * K,)), jnp.ones((P * K,), bool), cfg=CFG)
    np.testing.assert_array_equal(np.asarray(off), np.asarray(off2))


def lm_loss_of_stream(trunk_params, side, batch, stream, visible):
    out = pdt.forward_train(trunk_params, side, batch, cfg=CFG, visible_producers=visible)
    logits = out["lm_logits"].reshape(P, K, T, -1)[:, stream, :-1]
    labels = jnp.asarray(batch["tokens"])[:, stream, 1:]
    start = jnp.asarray(batch["target_start"])[:, stream]
    mask = jnp.arange(T - 1)[None, :] >= start[:, None] - 1
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1)[..., 0]
    return (nll * mask).sum() / mask.sum()


def test_lm_loss_reaches_sibling_note_writer(trunk_params, fresh_sidecar):
    side = open_sidecar(fresh_sidecar)
    batch = make_batch(4)
    k, j = 0, 2
    only_j = jnp.zeros((K, K), bool).at[k, j].set(True)  # consumer k reads producer j's notes only
    grad = jax.jit(jax.grad(lambda s, vis: lm_loss_of_stream(trunk_params, s, batch, k, vis)))
    g = grad(side, only_j)
    assert float(jnp.abs(g["spec_head"]["w"]).max()) > 1e-6
    none = grad(side, jnp.zeros((K, K), bool))  # no notes read: the note writer gets no LM gradient
    assert float(jnp.abs(none["spec_head"]["w"]).max()) == 0.0


def test_frozen_trunk_gets_no_update(trunk_params, fresh_sidecar):
    side = open_sidecar(fresh_sidecar)
    params = {"trunk": trunk_params, "sidecar": side}
    batch = make_batch(5)
    trainable = jax.tree_util.tree_map_with_path(lambda path, _: path[0].key == "sidecar", params)
    opt = optax.chain(optax.masked(optax.adam(1e-2), trainable),
                      optax.masked(optax.set_to_zero(), jax.tree.map(lambda t: not t, trainable)))
    state = opt.init(params)
    loss = lambda p: lm_loss_of_stream(p["trunk"], p["sidecar"], batch, 1, None)

    @jax.jit
    def step(params, state):
        updates, state = opt.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates)

    new = step(params, state)
    jax.tree.map(np.testing.assert_array_equal, new["trunk"], params["trunk"])
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new["sidecar"], params["sidecar"])
    assert any(jax.tree.leaves(changed))


def test_training_coverage_is_the_exact_prefix_softmax():
    """Per-block coverage equals a plain softmax over each prefix, even when a later token's score
    dwarfs the earlier ones (a single global max would underflow the early prefixes)."""
    rng = np.random.RandomState(0)
    B, T, D, S, C, H, Vp = 2, 9, 8, 3, 8, 2, 11
    p = {"query": jnp.asarray(rng.randn(4, C), jnp.float32), "key": jnp.asarray(rng.randn(D, C), jnp.float32),
         "value": jnp.asarray(rng.randn(D, C), jnp.float32), "score": jnp.asarray(rng.randn(C), jnp.float32),
         "bias": jnp.float32(0.1)}
    embed = jnp.asarray(rng.randn(Vp, 4), jnp.float32)
    items = jnp.asarray(rng.randint(1, Vp, (B, S)))
    hidden = rng.randn(B, T, D).astype(np.float32)
    hidden[:, 7] *= 300.0  # a late token with enormous scores
    mask = np.ones((B, T), bool)
    mask[1, :2] = False
    ends = np.array([[1, 4, 8], [3, 6, -1]])
    side = {"coverage": p, "plan_embed": embed}
    got = np.asarray(pdt.coverage_logits(side, items, jnp.asarray(hidden), jnp.asarray(mask), jnp.asarray(ends), H))
    q = (np.asarray(embed)[np.asarray(items)] @ np.asarray(p["query"])).reshape(B, S, H, C // H)
    k = (hidden @ np.asarray(p["key"])).reshape(B, T, H, C // H)
    v = (hidden @ np.asarray(p["value"])).reshape(B, T, H, C // H)
    for b in range(B):
        for u, end in enumerate(ends[b]):
            if end < 0:
                assert np.all(got[b, u] == 0)
                continue
            keep = np.nonzero(mask[b, :end + 1])[0]
            s = np.einsum("shk,thk->hst", q[b], k[b, keep]) / np.sqrt(C // H)
            w = np.exp(s - s.max(-1, keepdims=True))
            ctx = np.einsum("hst,thk->shk", w / w.sum(-1, keepdims=True), v[b, keep]).reshape(S, C)
            np.testing.assert_allclose(got[b, u], ctx @ np.asarray(p["score"]) + 0.1, rtol=2e-4, atol=2e-4)


def test_incremental_decoding_equals_the_teacher_forced_pass(trunk_params, fresh_sidecar):
    """One decode path: the decode step (``trunk.decode.forward``, what a round scans and what
    ``Trunk.generate`` loops over) fed the teacher's tokens one at a time gives the logits of the
    teacher-forced pass (``forward_train``: the same layers over the whole sequence at once), with
    the sidecar acting — stream adapters, and SNC reading snapshot 0 (notes hidden by the lag)."""
    import dataclasses

    side = open_sidecar(fresh_sidecar)
    cfg = pdt.PDTConfig(TRUNK, dataclasses.replace(SIDE, lag=1000))
    batch = make_batch(6)
    forced = np.asarray(FWD(trunk_params, side, batch, cfg=cfg)["lm_logits"]).reshape(P, K, T, -1)
    snap = np.asarray(FWD(trunk_params, side, batch, cfg=cfg)["snapshot0"])                  # [P, N]
    B = P * K
    tokens = batch["tokens"].reshape(B, T)
    start, length = batch["target_start"].reshape(B), batch["lengths"].reshape(B)
    gate = jnp.ones((B,), jnp.float32)
    prompt = np.where(np.arange(T)[None, :] < start[:, None], tokens, 0)
    hidden, cache = PREFILL(trunk_params, side, prompt, jnp.asarray(start), cfg=cfg, max_len=T + 2, slack=4, gate_B=gate)
    last = np.asarray(trunk_model.unembed(trunk_params, hidden))[np.arange(B), start - 1]
    window = jnp.repeat(jnp.asarray(snap)[:, None, :], K, axis=0)                          # [B, 1, N]
    seen = jnp.ones((B, 1), bool)
    checked = 0
    for i in range(T - int(start.min())):
        pos = start + i                                       # row b decodes its token at position start + i
        for b in range(B):
            if pos[b] - 1 < length[b] - 1:
                np.testing.assert_allclose(last[b], forced.reshape(B, T, -1)[b, pos[b] - 1], atol=2e-5, rtol=0)
                checked += 1
        go = jnp.asarray(pos < length)
        tok = jnp.asarray(tokens[np.arange(B), np.minimum(pos, T - 1)])
        _, logits, cache = DECODE(trunk_params, side, cache, tok, window, seen, gate, go, cfg=cfg)
        last = np.asarray(logits)
    assert checked > 3 * B
