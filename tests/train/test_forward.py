"""Training's forward equals inference: the exact (block-recurrent) form reproduces the runtime's
notes, readiness, coverage and token margins at every round, with published notes visible, at
Δ = 0, 1, 2; the two-pass form is exact only through round 2Δ + 1 (and this test sees where it
drifts); the LM loss of one stream reaches the note writer of another only when notes are visible."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from acting import Spy, tiny_model, with_readiness_bias

from pdt_jax import model as pdt
from pdt_jax.runtime import program
from pdt_jax.runtime.device import DeviceEngine
from pdt_jax.runtime.options import RuntimeOptions
from pdt_jax.runtime.run import run_pdt
from pdt_jax.train import forward as train_forward

PROMPT = "Tell me about Velmora."
PREFIXES = {"stream_1": "Part 1: history. ", "stream_2": "Part 2: places. ", "stream_3": "Part 3: people. "}
ROUNDS = 5


@pytest.fixture(scope="module")
def model():
    cfg, trunk, side, tok = tiny_model()
    return cfg, trunk, with_readiness_bias(side, 50.0), tok  # every block commits: no rollback


def runtime_rounds(model, lag, wrap=Spy, **options):
    """The runtime's greedy run (``wrap``: a Spy keeping every round's device output) and its text
    as a training batch."""
    cfg, trunk, side, tok = model
    opts = RuntimeOptions(max_new_tokens=ROUNDS * cfg.sidecar.block_size, lag=lag, **options)
    spy = wrap(DeviceEngine(cfg, trunk, side, opts, 1, 128))
    m = run_pdt(cfg, trunk, side, tok, [PROMPT], opts, stream_prefixes=PREFIXES, engine=spy)[0]
    if wrap is not Spy:
        return spy, m, _batch(cfg, tok, m)
    return spy.rounds, _batch(cfg, tok, m)


def _batch(cfg, tok, m):
    names = cfg.sidecar.stream_names
    rows = [tok.prompt(PROMPT, prefix=PREFIXES[n]) for n in names]
    gen = [m["streams"][n]["token_ids"] for n in names]
    T = max(len(r) for r in rows) + ROUNDS * cfg.sidecar.block_size
    toks, lens, start = np.zeros((1, 3, T), np.int32), np.zeros((1, 3), np.int32), np.zeros((1, 3), np.int32)
    for k, (r, g) in enumerate(zip(rows, gen)):
        toks[0, k, :len(r) + len(g)], lens[0, k], start[0, k] = r + g, len(r) + len(g), len(r)
    return {"tokens": toks, "lengths": lens, "target_start": start,
            "plan_ids": np.asarray(m["plan"]["slot_ids"], np.int32)[None]}


def margins_at(lm_logits, batch, k, v, tau):
    """The runtime's top-2 margins of block v of stream k, from teacher-forced logits: token j of
    the target is chosen from the logits at position start + j − 1."""
    s, n = int(batch["target_start"][0, k]), int(batch["lengths"][0, k])
    pos = np.arange(s + v * tau - 1, min(s + (v + 1) * tau, n) - 1)
    return np.asarray(program.top2_margin(jnp.asarray(lm_logits[k, pos])))


def test_exact_form_equals_the_runtime_at_every_round(model):
    cfg, trunk, side, _ = model
    tau = cfg.sidecar.block_size
    traces = []

    def exact(tp, sp, batch, lag):
        traces.append(1)
        return train_forward.forward_exact(tp, sp, batch, cfg=cfg, lag=lag)
    exact = jax.jit(exact)
    two_pass = {lag: jax.jit(lambda tp, sp, b, c=dataclasses.replace(cfg, sidecar=dataclasses.replace(
        cfg.sidecar, lag=lag)): pdt.forward_train(tp, sp, b, cfg=c)) for lag in (0, 1)}
    for lag in (0, 1, 2):
        rounds, batch = runtime_rounds(model, lag)
        assert len(rounds) == ROUNDS
        out = jax.device_get(exact(trunk, side, batch, jnp.int32(lag)))
        seen_notes = 0
        for v, r in enumerate(rounds):
            # A sibling's note is in the window from round Δ + 1 (snapshot 0 is always there).
            seen_notes += int((r["window_size"] > 1).sum())
            assert (r["window_size"] > 1).all() == (v >= lag + 1), (lag, v)
            for k in range(3):
                produced = r["produced"][k]
                np.testing.assert_allclose(out["bus_notes"][0, k, v], r["note"][k], atol=1e-5, rtol=0)
                np.testing.assert_allclose(out["readiness_logits"][0, k, v], r["readiness"][k], atol=1e-5, rtol=0)
                np.testing.assert_allclose(out["coverage_logits"][0, k, v], r["coverage"][k], atol=1e-5, rtol=0)
                np.testing.assert_allclose(margins_at(out["lm_logits"], batch, k, v, tau),
                                           r["margins"][k][produced], atol=1e-5, rtol=0)
                assert out["window_size"][0, k, v] == r["window_size"][k]
                assert out["published"][0, k, v]
        assert seen_notes > 0
        if lag in two_pass:
            # The two-pass form: exact through round 2Δ + 1, then its notes' contents drift.
            tp = jax.device_get(two_pass[lag](trunk, side, batch))
            diff = [max(np.abs(margins_at(tp["lm_logits"], batch, k, v, tau)
                               - margins_at(out["lm_logits"], batch, k, v, tau)).max() for k in range(3))
                    for v in range(ROUNDS)]
            exact_through = 2 * lag + 1
            assert max(diff[:exact_through + 1]) < 1e-4, diff
            assert max(diff[exact_through + 1:]) > 1e-3, diff
    assert len(traces) == 1  # Δ is traced: one program for every lag


class FailOnce(Spy):
    """Keeps every dispatch's (window round, active rows, output) and fails stream ``row``'s first
    attempt at round ``at`` (its readiness read as −50), so the runtime rolls that stream alone back
    and retries the block."""

    def __init__(self, engine, row=0, at=2):
        super().__init__(engine)
        self.row, self.at, self.dispatched = row, at, []

    def submit(self, window_round, active, remaining, gate):
        fetch = self.engine.submit(window_round, active, remaining, gate)
        first = window_round == self.at and all(w != self.at for w, _, _ in self.dispatched)
        record = [window_round, np.asarray(active).copy(), None]
        self.dispatched.append(record)

        def spied():
            out = fetch()
            record[2] = out
            if first:
                out = dict(out, readiness=np.where(np.arange(len(out["readiness"])) == self.row, -50.0,
                                                   out["readiness"]))
            return out
        return spied


@pytest.mark.parametrize("lag, capacity", [(0, 1), (1, 4)])
def test_the_retry_pair_training_scores_is_the_runtimes_retry(model, lag, capacity):
    """A stream that fails the gate retries its block reading round v + 1's window without its own
    rolled-back note (with one note per producer on the bus, the note that one had evicted is back);
    the exact form's retry pair of that block has the runtime's retry readiness and window size
    (1e-5), and differs from the attempt (the retry window holds the siblings' new notes). The
    passes form's retry windows have the exact form's sizes at every block, also when streams end
    on a partial block (never published). Entries: tests/test_bus.py."""
    cfg, trunk, side, tok = model
    cfg = dataclasses.replace(cfg, sidecar=dataclasses.replace(cfg.sidecar, bus_capacity=capacity))
    model = (cfg, trunk, side, tok)
    at = 2
    spy, m, batch = runtime_rounds(model, lag, wrap=FailOnce, run_ahead=False, max_retries=1)
    assert [r["stride_index"] for r in m["rollbacks"]] == [at] and m["rollbacks"][0]["stream"] == "stream_1"
    (retry,) = [(w, a, o) for w, a, o in spy.dispatched if a.sum() == 1]
    assert retry[0] == at + 1 and retry[1][0]
    out = jax.device_get(jax.jit(lambda b: train_forward.forward_exact(trunk, side, b, cfg=cfg, lag=lag,
                                                                       retry=True))(batch))
    np.testing.assert_allclose(out["retry_readiness_logits"][0, 0, at], retry[2]["readiness"][0], atol=1e-5, rtol=0)
    assert out["retry_window_size"][0, 0, at] == retry[2]["window_size"][0]
    assert out["retry_differs"][0, 0, at]
    assert abs(out["retry_readiness_logits"][0, 0, at] - out["readiness_logits"][0, 0, at]) > 1e-3
    # The streams that did not fail: the attempt is what the runtime ran (their committed blocks).
    attempt = [o for w, a, o in spy.dispatched if w == at and a.all()][0]
    np.testing.assert_allclose(out["readiness_logits"][0, 1:, at], attempt["readiness"][1:], atol=1e-5, rtol=0)
    # The two-pass form's retry windows: the same sizes at every block (entries by the stamp rule).
    c = dataclasses.replace(cfg, sidecar=dataclasses.replace(cfg.sidecar, lag=lag))
    passes = jax.jit(lambda b: pdt.forward_train(trunk, side, b, cfg=c, retry=True))
    exact = jax.jit(lambda b: train_forward.forward_exact(trunk, side, b, cfg=cfg, lag=lag, retry=True))
    tp = jax.device_get(passes(batch))
    real = out["block_present"]
    np.testing.assert_array_equal(tp["retry_window_size"][real], out["retry_window_size"][real])
    np.testing.assert_array_equal(tp["retry_differs"], out["retry_differs"])
    assert out["retry_differs"][..., 1:ROUNDS].all() and (out["retry_window_size"] > out["window_size"])[real].any()
    # Streams 2 and 3 end inside a block (same shapes: no new compile).
    short = dict(batch, lengths=batch["lengths"] - np.array([[0, 2, 5]], np.int32))
    ex, tp = jax.device_get(exact(short)), jax.device_get(passes(short))
    real = ex["block_present"]
    assert not ex["published"][0, 2][real[0, 2]].all()                 # a partial last block: no note
    np.testing.assert_array_equal(tp["retry_window_size"][real], ex["retry_window_size"][real])
    np.testing.assert_array_equal(tp["retry_differs"], ex["retry_differs"])


def test_lm_loss_reaches_a_siblings_note_writer_only_through_visible_notes(model):
    """Stream 1's LM loss has a gradient on the speculation head (which only writes notes) when
    Δ = 0 makes notes visible, and none when Δ = 1000 hides them all."""
    cfg, trunk, side, _ = model
    _, batch = runtime_rounds(model, 0)

    def loss(spec_head, lag):
        out = train_forward.forward_exact(trunk, dict(side, spec_head=spec_head), batch, cfg=cfg, lag=lag)
        s, n = int(batch["target_start"][0, 0]), int(batch["lengths"][0, 0])
        logp = jax.nn.log_softmax(out["lm_logits"][0, s - 1:n - 1])
        return -jnp.take_along_axis(logp, jnp.asarray(batch["tokens"][0, 0, s:n])[:, None], axis=-1).mean()
    grad = jax.jit(jax.grad(loss))
    norm = lambda g: float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(g)))
    assert norm(grad(side["spec_head"], jnp.int32(0))) > 1e-4
    assert norm(grad(side["spec_head"], jnp.int32(1000))) == 0.0


def test_the_bus_regularisers_act_on_what_the_exact_form_publishes(model):
    """Dropped producers publish nothing (windows keep snapshot 0 only); bus mixing publishes the
    teacher's notes instead, which the siblings then read."""
    cfg, trunk, side, _ = model
    _, batch = runtime_rounds(model, 0)
    P, K, T = batch["tokens"].shape
    U = (T - 1) // cfg.sidecar.block_size + 1
    teacher = np.random.default_rng(0).normal(size=(P, K, U, cfg.sidecar.notes_dim)).astype(np.float32)
    base = dict(batch, teacher_notes=teacher, bus_mix=np.zeros(P, bool), producer_keep=np.ones((P, K), bool))
    fwd = jax.jit(lambda b: train_forward.forward_exact(trunk, side, b, cfg=cfg, lag=0))
    plain = jax.device_get(fwd(base))
    dropped = jax.device_get(fwd(dict(base, producer_keep=np.zeros((P, K), bool))))
    mixed = jax.device_get(fwd(dict(base, bus_mix=np.ones(P, bool))))
    assert (plain["window_size"][..., 1:ROUNDS] > 1).all() and (dropped["window_size"][..., :ROUNDS] == 1).all()
    assert plain["published"][..., :ROUNDS].all() and not dropped["published"].any()
    # Round 0 reads no note either way; from round 1 the mixed bus carries the teacher's notes.
    np.testing.assert_array_equal(mixed["lm_logits"][:, :int(batch["target_start"].min())],
                                  plain["lm_logits"][:, :int(batch["target_start"].min())])
    assert np.abs(mixed["readiness_logits"][..., 1:ROUNDS] - plain["readiness_logits"][..., 1:ROUNDS]).max() > 1e-3
    np.testing.assert_allclose(mixed["readiness_logits"][..., 0], plain["readiness_logits"][..., 0], atol=1e-6)


def test_memory_knobs_change_nothing_but_memory(model):
    """remat per layer and query chunks (trunk attention and SNC, a chunk that does not divide T)
    give the two-pass forward's outputs and sidecar gradients unchanged, with sibling notes
    visible to SNC (lag 0) so that the chunked SNC has something to read."""
    cfg, trunk, side, _ = model
    cfg = dataclasses.replace(cfg, sidecar=dataclasses.replace(cfg.sidecar, lag=0))
    r = np.random.default_rng(0)
    T = 23
    batch = {"tokens": r.integers(1, cfg.trunk.vocab_size, (1, 3, T)).astype(np.int32),
             "lengths": np.array([[T, T - 2, T - 5]], np.int32), "target_start": np.array([[6, 5, 7]], np.int32),
             "plan_ids": r.integers(1, cfg.sidecar.plan_vocab_size, (1, cfg.sidecar.planner_slots)).astype(np.int32)}

    def run(remat, q_chunk):
        def loss(sp):
            out = pdt.forward_train(trunk, sp, batch, cfg=cfg, remat=remat, q_chunk=q_chunk)
            return jnp.sum(jnp.sin(out["hidden"])) + jnp.sum(out["readiness_logits"]), out
        return jax.jit(jax.value_and_grad(loss, has_aux=True))(side)
    (l0, out0), g0 = run(False, None)
    (l1, out1), g1 = run(True, 5)
    assert int(out0["window_mask"].sum(-1).max()) > 1        # tokens read sibling notes, not only snapshot 0
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    np.testing.assert_allclose(out1["hidden"], out0["hidden"], atol=1e-5)
    snc_grad = g0["layers"][0]["snc"]["q"]
    assert float(jnp.abs(snc_grad).max()) > 1e-4
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
