"""The inference runtime on a tiny model: rollback really removes tokens and notes, EOS stops one
stream while the others go on, counterfactuals and gates act on the computation, replay is exact,
and nothing recompiles across rounds, rollbacks or prompts of the same padded shape."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from acting import Spy, tiny_model, with_readiness_bias

from pdt_jax import model as pdt
from pdt_jax.runtime import program
from pdt_jax.runtime.device import DeviceEngine
from pdt_jax.runtime.manifest import deterministic_view
from pdt_jax.runtime.options import Cadence, Counterfactuals, RuntimeOptions
from pdt_jax.runtime.replay import replay
from pdt_jax.runtime.run import run_pdt

PROMPTS = ["Tell me about Velmora.", "Where is Port Salvine?"]
PREFIXES = {"stream_1": "Part 1: history. ", "stream_2": "Part 2: places. ", "stream_3": "Part 3: people. "}


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def low_readiness(side):
    return with_readiness_bias(side, -50.0)


def run(model, opts, prompts=PROMPTS, side=None, cfg=None, spy=False, **kw):
    c, trunk, s, tok = model
    cfg = cfg or c
    engine = None
    if spy:
        engine = Spy(DeviceEngine(cfg, trunk, side or s, opts, len(prompts), 64))
    out = run_pdt(cfg, trunk, side or s, tok, prompts, opts, stream_prefixes=PREFIXES, engine=engine, **kw)
    return (out, engine) if spy else out


def tokens(manifests):
    return [[s["token_ids"] for s in m["streams"].values()] for m in manifests]


def test_a_rollback_removes_tokens_and_notes_and_the_retry_reads_fresher_notes(model):
    """Greedy, readiness always low, Δ = 1. Round 0's retries could only repeat their attempts (the
    notes they would add are the failed block's own, removed by the rollback): committed without
    recomputing. From round 1 the retry reads the notes published at the end of the previous block,
    which its attempt could not see yet: it is recomputed, reads a larger window, and — SNC acting —
    writes different tokens; the failed attempts' notes are gone from the bus."""
    opts = RuntimeOptions(max_new_tokens=12, max_retries=1, lag=1,
                          gate_annealing=dataclasses.replace(RuntimeOptions().gate_annealing, enabled=False))
    manifests, spy = run(model, opts, side=low_readiness(model[2]), spy=True)
    changed = 0
    for m in manifests:
        blocks = m["committed_blocks_by_stream"]
        for name, stream_blocks in blocks.items():
            assert stream_blocks[0]["forced_reason"] == "retry_identical" and stream_blocks[0]["retries"] == 0
            for blk in stream_blocks[1:]:
                assert blk["retries"] == 1 and blk["forced_reason"] == "max_retries"
        assert not any(r["stride_index"] == 0 for r in m["rollbacks"])
        assert len(m["rollbacks"]) == 3 * 2  # 3 streams × rounds 1 and 2
        for r in m["rollbacks"]:
            assert r["tokens_removed"] == 4 and r["note_removed"]
            block = blocks[r["stream"]][r["stride_index"]]
            changed += block["token_ids"] != r["removed_token_ids"]
        assert m["stride_commit_events"][0]["forced_commit_reasons"] == {n: "retry_identical" for n in blocks}
    assert changed > 0
    # Rounds: 3 first attempts + a retry of rounds 1 and 2; every retry read more notes than its attempt.
    assert len(spy.rounds) == 5
    for attempt, retry in ((spy.rounds[1], spy.rounds[2]), (spy.rounds[3], spy.rounds[4])):
        assert (retry["window_size"] > attempt["window_size"]).all()
    # Every rolled-back attempt's note left the bus.
    bus = spy.engine.bus_state()
    live = bus["notes"][bus["valid"]]
    for o in (spy.rounds[1], spy.rounds[3]):
        for note in o["note"]:
            assert not np.any(np.all(live == note[None], axis=-1))
    assert len(live) > 0  # the committed blocks' notes are there


def test_a_retry_that_cannot_differ_is_committed_without_recomputing(model):
    """γ = 1 and Δ = 0, greedy: every stream fails every block; a retry would restore the same state
    and read the same window (its siblings' notes of the block are rolled back with it), so it
    would repeat the attempt token for token. No round is recomputed: each block is committed,
    recorded as forced with reason retry_identical, and its note stays published."""
    opts = RuntimeOptions(max_new_tokens=12, readiness_threshold=1.0, lag=0, max_retries=2)
    manifests, spy = run(model, opts, spy=True)
    assert len(spy.rounds) == 3  # one dispatch per round: nothing recomputed
    for m in manifests:
        assert m["rollbacks"] == []
        for blocks in m["committed_blocks_by_stream"].values():
            assert [b["forced_reason"] for b in blocks] == ["retry_identical"] * 3
        assert all(e["forced_commit_streams"] == list(m["streams"]) for e in m["stride_commit_events"])
    assert spy.engine.bus_state()["valid"].sum() == 2 * 3 * 3  # every block's note is on the bus

    # The lag holds for retries: with Δ = 1000 a retry reads the window round v + 1 would read,
    # which holds no note either, so no retry can differ — none is run, whatever was published.
    opts = RuntimeOptions(max_new_tokens=12, readiness_threshold=1.0, lag=1000, max_retries=2)
    manifests, spy = run(model, opts, spy=True)
    assert len(spy.rounds) == 3 and all(r["window_size"].max() == 1 for r in spy.rounds)
    for m in manifests:
        assert m["rollbacks"] == []
        assert all(b["forced_reason"] == "retry_identical" for bl in m["committed_blocks_by_stream"].values() for b in bl)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_a_rolled_back_round_is_regenerated_from_exactly_the_same_state(model, alpha):
    """After a few committed rounds (the sliding-window rings have wrapped), a round is rolled back
    and dispatched again with the same window: tokens, notes, coverage and readiness are identical —
    caches, logits and accumulators (and the base cache when α < 1) are restored exactly."""
    cfg, trunk, side, tok = model
    opts = RuntimeOptions(max_new_tokens=64, alpha=alpha)
    engine = DeviceEngine(cfg, trunk, side, opts, 1, 128)
    rows = [tok.prompt(PROMPTS[0], prefix=PREFIXES[n]) for n in cfg.sidecar.stream_names]
    from pdt_jax.trunk.api import pad_batch
    ids, lengths = pad_batch(rows)
    engine.start(ids, lengths, None, None)
    every = np.ones(3, bool)
    args = lambda v: (v, every, np.full(3, 4, np.int32), np.ones(3, np.float32))
    for v in range(5):
        engine.submit(*args(v))()
        engine.publish(every, v + 1)
    first = engine.submit(*args(5))()
    engine.rollback(every, 6)
    again = engine.submit(*args(5))()
    assert lengths.max() + 5 * 4 > cfg.trunk.sliding_window
    for name in ("tokens", "produced", "note", "coverage", "readiness", "margins"):
        np.testing.assert_array_equal(first[name], again[name], err_msg=name)


def test_eos_stops_one_stream_while_the_others_continue(model):
    cfg = model[0]
    opts = RuntimeOptions(max_new_tokens=10)
    dry = run(model, opts, prompts=PROMPTS[:1])[0]["streams"]
    first = dry["stream_1"]["token_ids"][0]
    others = dry["stream_2"]["token_ids"] + dry["stream_3"]["token_ids"]
    if first in others:
        pytest.skip("the tiny random model repeats the token across streams")
    cfg_eos = pdt.PDTConfig(cfg.trunk.replace(eos_token_ids=(first,)), cfg.sidecar)
    m = run(model, opts, prompts=PROMPTS[:1], cfg=cfg_eos)[0]
    assert m["streams"]["stream_1"]["finished_eos"] and m["streams"]["stream_1"]["num_tokens"] == 1
    assert m["streams"]["stream_2"]["num_tokens"] == 10 and m["streams"]["stream_3"]["num_tokens"] == 10


def test_ablating_notes_acts_through_snc_only(model):
    """Every block commits (γ = 0) and the gate is fixed, so nothing but SNC can carry the notes:
    hiding them changes the tokens; with SNC's output projection zero (adapters still acting) or
    with g = 0, hiding them changes nothing, bit for bit."""
    base = RuntimeOptions(max_new_tokens=12, readiness_threshold=0.0,
                          gate_annealing=dataclasses.replace(RuntimeOptions().gate_annealing, enabled=False))
    ablate = dataclasses.replace(base, counterfactuals=Counterfactuals(ablate=("all",), tag="ablate-all"))
    assert tokens(run(model, base)) != tokens(run(model, ablate))
    side = model[2]
    no_snc = dict(side, layers=[dict(lp, snc=dict(lp["snc"], o=jnp.zeros_like(lp["snc"]["o"]))) for lp in side["layers"]])
    assert tokens(run(model, base, side=no_snc)) == tokens(run(model, ablate, side=no_snc))
    assert tokens(run(model, base, side=no_snc)) != tokens(run(model, dataclasses.replace(base, gate_g=0.0)))  # adapters act
    closed = dataclasses.replace(base, gate_g=0.0)
    assert tokens(run(model, closed)) == tokens(run(model, dataclasses.replace(ablate, gate_g=0.0)))
    m = run(model, ablate)[0]
    assert m["counterfactual_tags"] == ["ablate-all"] and m["counterfactuals"]["ablate_streams"] == ["all"]


def test_alpha_zero_decodes_with_base_logits_only(model):
    closed = RuntimeOptions(max_new_tokens=8, gate_g=0.0)
    alpha0 = RuntimeOptions(max_new_tokens=8, alpha=0.0)
    assert tokens(run(model, alpha0)) == tokens(run(model, closed))


def test_gate_annealing_lowers_the_gate_after_volatile_blocks(model):
    opts = RuntimeOptions(max_new_tokens=8, max_retries=1)
    m = run(model, opts, side=low_readiness(model[2]))[0]
    values = [g["value"] for g in m["gate_trace"] if g["stream"] == "stream_1"]
    assert values[0] == pytest.approx(0.6) and values[1] == pytest.approx(0.36)


def test_replay_reproduces_the_manifest(model, tmp_path):
    opts = RuntimeOptions(max_new_tokens=10, temperature=1.0, seed=5, max_retries=1,
                          cadence=Cadence(mode="stochastic", every=(("all", 3),), max_interval=6))
    side = dict(model[2], agree=dict(model[2]["agree"], b2=jnp.float32(0.3)))  # some blocks fail, some pass
    original = run(model, opts, side=side, replay_dir=str(tmp_path / "art"), replay_chunk_size=2)
    replayed, events = replay(str(tmp_path / "art"))
    assert any(m["rollbacks"] for m in original) and any(m["cadence_events"] for m in original)
    for a, b in zip(original, replayed):
        assert deterministic_view(a) == deterministic_view(b)
    assert len(list((tmp_path / "art").glob("rounds-*.npz"))) > 1  # chunked


def test_run_ahead_changes_nothing_but_the_waiting(model, tmp_path):
    """Dispatching round v + 1 before round v is decided, and reverting when the decisions differ
    (rollbacks, an EOS, a gate that anneals), writes exactly what a run that waits writes; a
    recording made with run-ahead replays exactly."""
    cfg = model[0]
    side = dict(model[2], agree=dict(model[2]["agree"], b2=jnp.float32(0.3)))  # some blocks fail, some pass
    opts = RuntimeOptions(max_new_tokens=24, temperature=1.0, seed=5, max_retries=1)
    wait_opts = dataclasses.replace(opts, run_ahead=False)
    dry = run(model, wait_opts, side=side)[0]["streams"]
    eos = dry["stream_2"]["token_ids"][9]  # stream 2 (at least) ends mid-run
    cfg_eos = pdt.PDTConfig(cfg.trunk.replace(eos_token_ids=(eos,)), cfg.sidecar)
    waited = run(model, wait_opts, side=side, cfg=cfg_eos)
    ahead = run(model, opts, side=side, cfg=cfg_eos, replay_dir=str(tmp_path / "art"))
    assert waited[0]["streams"]["stream_2"]["finished_eos"] and any(m["rollbacks"] for m in waited)
    for a, b in zip(waited, ahead):
        assert deterministic_view(a) == deterministic_view(b)
    stats = ahead[0]["timings"]["run_ahead"]
    assert stats["accepted"] > 0 and stats["reverted"] > 0, stats
    assert stats["dispatched"] == stats["accepted"] + stats["reverted"]
    assert waited[0]["timings"]["run_ahead"]["dispatched"] == 0
    replayed, _ = replay(str(tmp_path / "art"))
    for a, b in zip(ahead, replayed):
        assert deterministic_view(a) == deterministic_view(b)


def test_no_recompilation_across_rounds_rollbacks_and_prompts(model):
    opts = RuntimeOptions(max_new_tokens=9, temperature=1.0, max_retries=2)
    side = low_readiness(model[2])
    run(model, opts, side=side)  # compiles (or reuses) the programs
    before = dict(program.TRACE_COUNTS)
    m = run(model, opts, prompts=["Who founded Kestrel Academy?", "Name a river."], side=side)
    assert sum(len(x["rollbacks"]) for x in m) > 0 and m[0]["rounds"] >= 3
    assert dict(program.TRACE_COUNTS) == before


def test_runtime_decodes_what_teacher_forced_training_predicts(model):
    """With the sidecar acting (adapters, SNC on snapshot 0) and notes hidden by a long lag, the
    runtime's greedy tokens are the argmax of forward_train on the same text, at every position:
    windows, blocks, caches and hooks agree between the two paths."""
    cfg, trunk, side, tok = model
    always = dict(side, agree=dict(side["agree"], b2=jnp.float32(50.0)))
    opts = RuntimeOptions(max_new_tokens=12, lag=1000)
    m = run(model, opts, prompts=PROMPTS[:1], side=always)[0]
    names = cfg.sidecar.stream_names
    rows = [tok.prompt(PROMPTS[0], prefix=PREFIXES[n]) for n in names]
    gen = [m["streams"][n]["token_ids"] for n in names]
    T = max(len(r) + len(g) for r, g in zip(rows, gen))
    toks, lens, start = np.zeros((1, 3, T), np.int32), np.zeros((1, 3), np.int32), np.zeros((1, 3), np.int32)
    for k, (r, g) in enumerate(zip(rows, gen)):
        toks[0, k, :len(r) + len(g)], lens[0, k], start[0, k] = r + g, len(r) + len(g), len(r)
    batch = {"tokens": toks, "lengths": lens, "target_start": start,
             "plan_ids": np.asarray(m["plan"]["slot_ids"], np.int32)[None]}
    train_cfg = pdt.PDTConfig(cfg.trunk, dataclasses.replace(cfg.sidecar, lag=1000))
    logits = np.asarray(jax.jit(pdt.forward_train, static_argnames="cfg")(trunk, always, batch, cfg=train_cfg)["lm_logits"])
    for k in range(3):
        predicted = logits[k, start[0, k] - 1: lens[0, k] - 1].argmax(-1).tolist()
        assert predicted == gen[k], f"stream {k}"
