"""Dynamic Notes Bus: visibility by round stamps, eviction, rollback, counterfactuals, jit/vmap."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdt_jax import bus as B

P, K, N = 2, 3, 8
publish = jax.jit(B.publish)
rollback_to = jax.jit(B.rollback_to)
visible_window = jax.jit(B.visible_window, static_argnames="budget")


def rand_notes(seed, shape=(P, K, N)):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def entries(window, p, k):
    """Valid entries of consumer k as (producer, version, round, note bytes), in window order."""
    w = jax.device_get(window)
    m = w.mask[p, k]
    assert (np.diff(m.astype(int)) <= 0).all(), "valid entries must form a prefix"
    return [(int(w.producer[p, k, i]), int(w.version[p, k, i]), int(w.round[p, k, i]),
             w.notes[p, k, i].tobytes()) for i in np.nonzero(m)[0]]


def assert_tree_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert jax.tree.structure(a) == jax.tree.structure(b)


def published(rounds, capacity=4, slack=1, seed=0):
    bus = B.init_bus(P, K, capacity, N, slack=slack)
    for i, r in enumerate(rounds):
        bus = publish(bus, rand_notes(seed + i), r)
    return bus


# --- snapshot 0 -------------------------------------------------------------------------------

@pytest.mark.parametrize("lag", [0, 1, 3])
def test_snapshot0_visible_to_every_stream_from_round_0(lag):
    seeds = rand_notes(7)
    bus = B.seed_snapshot0(B.init_bus(P, K, 4, N), seeds)
    w = visible_window(bus, 0, lag, budget=5)
    assert w.notes.shape == (P, K, K + 5, N)
    for p in range(P):
        for k in range(K):
            got = entries(w, p, k)
            assert [(e[0], e[1], e[2]) for e in got] == [(j, 0, 0) for j in range(K)]
            for j in range(K):
                np.testing.assert_array_equal(w.notes[p, k, j], seeds[p, j])
    # Pinned: a rollback to round 0 removes published notes but never snapshot 0.
    rolled = rollback_to(publish(bus, rand_notes(1), 0), 0)
    assert_tree_equal(rolled, bus)


def test_shared_snapshot0_seen_once_by_every_consumer():
    vec = rand_notes(3, (P, N))
    w = visible_window(B.seed_snapshot0(B.init_bus(P, K, 4, N), vec), 0, 1)
    assert np.asarray(w.mask.sum(-1)).tolist() == [[1] * K] * P
    np.testing.assert_array_equal(w.notes[:, :, 0], jnp.broadcast_to(vec[:, None], (P, K, N)))


def test_pad_or_truncate_l2():
    x = rand_notes(4, (P, 12))
    cut = B.pad_or_truncate_l2(x, 5)
    padded = B.pad_or_truncate_l2(x, 20)
    np.testing.assert_allclose(jnp.linalg.norm(cut, axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(jnp.linalg.norm(padded, axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(cut, x[:, :5] / jnp.linalg.norm(x[:, :5], axis=-1, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(padded[:, 12:], 0)
    assert np.isfinite(np.asarray(B.pad_or_truncate_l2(jnp.zeros((2, 3)), 4))).all()


# --- visibility, lag, eviction, budget --------------------------------------------------------

@pytest.mark.parametrize("lag", [0, 1, 2])
def test_note_visible_from_u_plus_lag_until_evicted(lag):
    capacity = 2
    window = visible_window
    bus = B.init_bus(P, K, capacity, N)
    # Only stream 1 publishes, one note per round; its round-u note must be visible for rounds
    # u+lag .. (evicted when `capacity` newer notes exist), own note included (consumer 1).
    for u in range(6):
        only1 = jnp.zeros((P, K), bool).at[:, 1].set(True)
        bus = publish(bus, rand_notes(u), u, only1)
        for v in range(u, u + 4):
            w = window(bus, v, lag, budget=K * capacity)
            for k in range(K):
                seen = {(e[0], e[2]) for e in entries(w, 1, k)}
                live_rounds = {x for x in range(u + 1) if x > u - capacity}
                assert seen == {(1, x) for x in live_rounds if x <= v - lag}, (u, v, k)


def test_own_notes_visible_and_order_deterministic():
    bus = published([0, 1])
    w = visible_window(bus, 5, 1)
    for k in range(K):
        got = [(e[0], e[1], e[2]) for e in entries(w, 0, k)]
        assert got == [(j, 1, 0) for j in range(K)] + [(j, 2, 1) for j in range(K)]


def test_budget_keeps_newest_published_notes():
    bus = B.seed_snapshot0(published([0, 1, 2]), rand_notes(9))
    w = visible_window(bus, 9, 0, budget=4)
    got = [(e[0], e[2]) for e in entries(w, 1, 2)]
    # snapshot 0 of every producer is outside the budget; then the 4 newest by (round, producer).
    assert got == [(0, 0), (1, 0), (2, 0), (2, 1), (0, 2), (1, 2), (2, 2)]
    assert w.mask.shape[-1] == K + 4
    assert not np.asarray(w.notes[~w.mask]).any()


def test_per_consumer_rounds():
    bus = published([0, 1, 2])
    w = visible_window(bus, jnp.array([[1, 2, 3], [3, 3, 3]]), 1)
    assert [len(entries(w, 0, k)) for k in range(K)] == [K, 2 * K, 3 * K]


# --- rollback ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n_rounds,r,capacity,slack", [(5, 2, 4, 1), (3, 0, 2, 1), (4, 4, 2, 2),
                                                       (9, 7, 3, 2), (12, 10, 2, 2)])
def test_rollback_restores_bus(n_rounds, r, capacity, slack):
    full = published(range(n_rounds), capacity, slack)
    ref = published(range(r), capacity, slack)
    rolled = rollback_to(full, r)
    assert not np.asarray(rolled.inexact).any()
    if n_rounds <= capacity + slack:     # the ring never wrapped: every field, bit for bit
        assert_tree_equal(rolled, ref)
    else:                                # wrapped: the live view is exact (undo depth <= slack)
        assert_tree_equal(B.live_view(rolled), B.live_view(ref))
    for v in range(n_rounds + 2):
        assert_tree_equal(visible_window(rolled, v, 1), visible_window(ref, v, 1))
    # And the restored bus keeps working: the same later publishes give the same bus.
    again = publish(rolled, rand_notes(99), r)
    assert_tree_equal(B.live_view(again), B.live_view(publish(ref, rand_notes(99), r)))


def test_selective_rollback_only_touches_selected_producers():
    sel = jnp.array([[True, False, True], [False, False, True]])
    full = published(range(4))
    ref = B.init_bus(P, K, 4, N, slack=1)
    for i in range(4):
        ref = publish(ref, rand_notes(i), i, None if i < 2 else ~sel)
    assert_tree_equal(rollback_to(full, 2, sel), ref)


def test_rollback_deeper_than_slack_is_flagged():
    full = published(range(4), capacity=2, slack=0)
    rolled = rollback_to(full, 3)
    assert np.asarray(rolled.inexact).all()
    with pytest.raises(ValueError, match="inexact"):
        B.assert_exact(rolled)
    # The note of round 1 was overwritten by round 3's: only round 2 remains visible.
    assert {e[2] for e in entries(visible_window(rolled, 9, 0), 0, 0)} == {2}
    B.assert_exact(rollback_to(published(range(4), capacity=2, slack=1), 3))
    # Two rollbacks, each within slack, but deeper than slack together: flagged on the second.
    bus = published(range(7), capacity=3, slack=2)
    bus = rollback_to(bus, 5)
    assert not np.asarray(bus.inexact).any()
    assert np.asarray(rollback_to(bus, 4).inexact).all()
    # Rounds going backwards break rollback semantics: flagged too.
    assert np.asarray(publish(published([3]), rand_notes(0), 2).inexact).all()


# --- property test against a plain-Python bus --------------------------------------------------

class ModelBus:
    """Unbounded per-producer histories; eviction by count; `lost` tracks notes a finite ring of S
    slots would have overwritten (version c overwrites version c - S)."""

    def __init__(self, capacity, slack):
        self.C, self.S = capacity, capacity + slack
        self.hist = [[[] for _ in range(K)] for _ in range(P)]  # entries: [version, round, note, lost]
        self.flag = np.zeros((P, K), bool)

    def last_round(self, p):
        return max([h[-1][1] for h in self.hist[p] if h], default=0)

    def publish(self, notes, rounds, mask):
        for p in range(P):
            for k in range(K):
                if mask[p][k]:
                    h = self.hist[p][k]
                    c = len(h) + 1
                    if c > self.S:
                        h[c - self.S - 1][3] = True
                    h.append([c, rounds[p], np.asarray(notes[p, k]).tobytes(), False])

    def rollback(self, rounds, sel):
        for p in range(P):
            for k in range(K):
                h = self.hist[p][k]
                keep = [e for e in h if not (sel[p][k] and e[1] >= rounds[p])]
                removed_lost = any(e[3] for e in h[len(keep):])
                self.hist[p][k] = keep
                self.flag[p, k] |= removed_lost or any(e[3] for e in keep[-self.C:])

    def window(self, p, v, lag, budget, snap0):
        live = [(k, e[0], e[1], e[2]) for k in range(K) for e in self.hist[p][k][-self.C:] if not e[3]]
        vis = sorted((e for e in live if e[2] <= v - lag), key=lambda e: (e[2], e[0], e[1]))
        return [(k, 0, 0, snap0[p, k].tobytes()) for k in range(K)] + vis[-budget:]


OPS = st.lists(st.one_of(
    st.tuples(st.just("publish"), st.lists(st.booleans(), min_size=P * K, max_size=P * K),
              st.integers(0, 2)),
    st.tuples(st.just("rollback"), st.lists(st.booleans(), min_size=P * K, max_size=P * K),
              st.integers(0, 3)),
    st.tuples(st.just("window"), st.integers(0, 2), st.integers(-1, 2))), min_size=1, max_size=25)



@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# A few ring shapes (each compiles once): no slack, slack 1, slack 2; budget 4 < K·capacity cuts.
@given(ops=OPS, shape=st.sampled_from([(1, 0), (2, 1), (3, 2)]))
def test_bus_matches_python_model(ops, shape):
    (capacity, slack), budget = shape, 4
    snap0 = np.asarray(rand_notes(123))
    bus = B.seed_snapshot0(B.init_bus(P, K, capacity, N, slack=slack), jnp.asarray(snap0))
    model = ModelBus(capacity, slack)
    for i, op in enumerate(ops):
        if op[0] == "publish":
            mask = np.array(op[1]).reshape(P, K)
            rounds = [model.last_round(p) + op[2] for p in range(P)]
            notes = rand_notes(i)
            bus = publish(bus, notes, jnp.array(rounds, jnp.int32), jnp.asarray(mask))
            model.publish(notes, rounds, mask)
        elif op[0] == "rollback":
            sel = np.array(op[1]).reshape(P, K)
            rounds = [max(model.last_round(p) - op[2], 0) for p in range(P)]
            bus = rollback_to(bus, jnp.array(rounds, jnp.int32), jnp.asarray(sel))
            model.rollback(rounds, sel)
        np.testing.assert_array_equal(np.asarray(bus.inexact), model.flag)
        lag, dv = (op[1], op[2]) if op[0] == "window" else (1, 1)
        v = [model.last_round(p) + dv for p in range(P)]
        w = visible_window(bus, jnp.array(v, jnp.int32), lag, budget=budget)
        for p in range(P):
            if model.flag[p].any():
                continue  # the flag is the contract once the ring lost notes
            expect = model.window(p, v[p], lag, budget, snap0)
            for k in range(K):
                assert entries(w, p, k) == expect
            counts = [len(h) for h in model.hist[p]]
            assert np.asarray(bus.count[p]).tolist() == counts


# --- counterfactuals --------------------------------------------------------------------------

@pytest.fixture
def window():
    bus = B.seed_snapshot0(published([0, 1, 2]), rand_notes(5))
    return visible_window(bus, 3, 1, budget=10)   # snapshot 0 ×3 + rounds 0..2 ×3 + 1 padding


def test_ablate(window):
    out = B.ablate(window, jnp.array([False, True, False]))
    assert not np.asarray(out.mask[:, 1]).any() and not np.asarray(out.notes[:, 1]).any()
    assert_tree_equal(jax.tree.map(lambda x: x[:, ::2], out), jax.tree.map(lambda x: x[:, ::2], window))


def test_ablate_keep_seed_hides_published_notes_only(window):
    out = B.ablate(window, jnp.array([False, True, False]), keep_seed=True)
    kept = entries(out, 0, 1)
    assert kept and [e[1] for e in kept] == [0] * len(kept)            # snapshot 0 only ...
    assert kept == [e for e in entries(window, 0, 1) if e[1] == 0]     # ... all of it, unchanged
    assert len(entries(window, 0, 1)) > len(kept)                      # published notes were there
    assert_tree_equal(jax.tree.map(lambda x: x[:, ::2], out), jax.tree.map(lambda x: x[:, ::2], window))


def test_stale_drops_newest_published_keeps_snapshot0(window):
    out = B.stale(window, jnp.array([0, 2, 10]))
    assert entries(out, 0, 0) == entries(window, 0, 0)
    assert entries(out, 0, 1) == entries(window, 0, 1)[:-2]
    assert [e[1] for e in entries(out, 0, 2)] == [0, 0, 0]


def test_swap_producers(window):
    out = B.swap_producers(window, 0, 2, jnp.array([True, False, False]))
    assert entries(out, 1, 1) == entries(window, 1, 1)
    before = {(e[0], e[1], e[2]): e[3] for e in entries(window, 1, 0)}
    after = {(e[0], e[1], e[2]): e[3] for e in entries(out, 1, 0)}
    swap = {0: 2, 2: 0, 1: 1}
    assert after == {(swap[p], v, r): n for (p, v, r), n in before.items()}
    keys = [(e[1] > 0, e[2], e[0], e[1]) for e in entries(out, 1, 0)]
    assert keys == sorted(keys)   # re-sorted into the canonical order


def test_shuffle_permutes_notes_not_metadata(window):
    out = B.shuffle(window, jax.random.PRNGKey(0), jnp.array([True, True, False]))
    assert_tree_equal(out.replace(notes=window.notes), window)
    for k in range(K):
        a, b = entries(window, 0, k), entries(out, 0, k)
        assert sorted(e[3] for e in a) == sorted(e[3] for e in b)
        assert (a == b) == (k == 2)


def test_freeze(window):
    frozen = B.ablate(window)
    out = B.freeze(window, frozen, jnp.array([[True, False, False], [False, False, True]]))
    assert entries(out, 0, 0) == [] and entries(out, 1, 2) == []
    assert entries(out, 0, 1) == entries(window, 0, 1)


# --- jit / vmap -------------------------------------------------------------------------------

def test_no_recompile_for_new_round_values():
    traces = []

    @jax.jit
    def step(bus, notes, r):
        traces.append(1)
        bus = B.publish(bus, notes, r)
        w = B.visible_window(bus, r, 1, budget=4)
        return B.rollback_to(bus, r), w

    bus = B.init_bus(P, K, 4, N)
    for r in range(5):
        step(bus, rand_notes(r), jnp.int32(r))
        step(bus, rand_notes(r), jnp.array([r, r + 1], jnp.int32))
    assert len(traces) == 2   # one trace per round shape (scalar, [P]), none per value


def test_vmap_over_rounds_and_over_buses():
    bus = published([0, 1, 2])
    ws = jax.jit(jax.vmap(lambda r: B.visible_window(bus, r, 1)))(jnp.arange(4))
    for i in range(4):
        assert_tree_equal(jax.tree.map(lambda x: x[i], ws), visible_window(bus, i, 1))
    stacked = jax.tree.map(lambda *x: jnp.stack(x), published([0]), published([0, 1]))
    out = jax.jit(jax.vmap(B.publish))(stacked, jnp.stack([rand_notes(5), rand_notes(6)]), jnp.array([3, 4]))
    assert_tree_equal(jax.tree.map(lambda x: x[1], out), publish(published([0, 1]), rand_notes(6), 4))


@pytest.mark.parametrize("capacity", [1, 3])
@pytest.mark.parametrize("lag", [0, 1, 2])
def test_retry_windows_of_both_training_forms_hold_the_runtimes_entries(capacity, lag):
    """The window a stream retries block v with when it alone failed (``retry_window``: siblings as
    round v + 1 sees them, its own notes without block v's, an evicted one live again) holds exactly
    the entries the passes form's ``model.retry_window_mask`` marks — streams that stop early,
    producers that publish nothing, notes evicted by capacity."""
    from pdt_jax import model as pdt
    from pdt_jax.sidecar.config import SidecarConfig
    K, U, tau = 3, 6, 2
    rng = np.random.default_rng(10 * capacity + lag)
    sc = SidecarConfig(lag=lag, bus_capacity=capacity, block_size=tau)
    block = np.tile(np.arange(U * tau) // tau, (K, 1))
    for _ in range(3):
        written = np.arange(U)[None] < rng.integers(2, U + 1, K)[:, None]          # [K, U] blocks a stream wrote
        pub = (written & (rng.random(K) > 0.3)[:, None])[None]                     # ... and published
        marks = np.asarray(pdt.retry_window_mask(jnp.asarray(block), jnp.asarray(pub), sc))
        bus = B.seed_snapshot0(B.init_bus(1, K, capacity, 2, slack=0), jnp.ones((1, 2)))
        note = lambda v: jnp.asarray([[[k, v] for k in range(K)]], jnp.float32)   # (producer, block)
        for v in range(U):
            if v:
                bus = B.publish(bus, note(v - 1), v, jnp.asarray(pub[:, :, v - 1]))
            w = B.retry_window(bus, B.publish(bus, note(v), v + 1, jnp.asarray(pub[:, :, v])), v + 1, lag)
            for c in np.nonzero(written[:, v])[0]:
                seen = {("seed",) if w.version[0, c, i] == 0 else tuple(int(x) for x in w.notes[0, c, i])
                        for i in np.nonzero(np.asarray(w.mask[0, c]))[0]}
                row = marks[c, v * tau]
                want = {("seed",)} | {(j, u) for j in range(K) for u in range(U) if row[1 + j * U + u]}
                assert seen == want, (v, c, sorted(seen, key=str), sorted(want, key=str))
