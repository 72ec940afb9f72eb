"""The Dynamic Notes Bus (ARCHITECTURE.md D1, D2): a pytree of fixed-size arrays for P prompts × K streams.

Paper: W_v = Window({snapshot 0} ∪ {notes of every stream with round ≤ v − Δ}, budget).

Conventions (the reference's bugs this avoids are in pdt_pytorch_digest.md §3 and §10):
  * **Snapshot 0 is pinned.** It lives in its own per-producer slot (`snap0`), outside the ring, is
    never evicted or rolled back, and is visible to every consumer at every round regardless of Δ.
    In windows it carries version 0 and round 0. A single shared vector ([P, N], the planner seed)
    is filed once, under producer 0, so a consumer sees it exactly once.
  * **Round stamps.** A note published during round u carries `round = u` (u ≥ 0) and is visible to
    a consumer at round v iff u ≤ v − Δ. Lag counts rounds, never snapshots.
  * **Versions** are per producer: 1, 2, 3, ... in publish order (0 = empty slot / snapshot 0).
    `count[p, k]` is the newest version; version c lives in ring slot (c − 1) mod S, so the write
    pointer is `count mod S` and restoring `count` restores the pointer.
  * **Capacity (eviction).** Each producer keeps its newest `capacity` notes *live* (`valid`);
    a note is evicted once `capacity` newer notes of the same producer exist. Notes are never
    read-once: a live note stays visible in every later window until evicted or outranked by the
    budget. The ring has S = capacity + slack slots: the `slack` evicted notes it still holds
    (valid = False, data kept) are what a rollback brings back (same idea as the KV cache's slack).
  * **Budget** counts published notes only: a window holds every valid snapshot 0 (≤ K entries) plus
    the newest `budget` visible published notes of all producers, own notes included (order key
    (round, producer, version)). Window width W = K + budget, static.
  * **Window order** (deterministic): valid entries first — snapshot 0 by producer, then published
    notes ascending by (round, producer, version) — then padding (mask False, everything zero).

Rollback limit: `rollback_to` undoes the newest notes of a producer exactly (bit for bit in every
field) as long as the ring never wrapped (count ≤ S). After a wrap, the *live* view (`live_view`,
and therefore every window) is still restored exactly while a rollback undoes ≤ `slack` notes per
producer; the evicted-but-retained slots then differ from a bus that never published those notes —
no finite ring can avoid that, since the undone publishes overwrote the oldest retained notes. A
rollback that needs an overwritten note sets the sticky `inexact` flag of that producer (the runtime
must keep slack ≥ notes published per producer within its rollback horizon; `assert_exact` raises).
Publish rounds must be non-decreasing per producer (a decrease also sets `inexact`).
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax


@flax.struct.dataclass
class Bus:
    notes: jax.Array        # [P, K, S, N]  ring of published notes (zero in empty slots)
    version: jax.Array      # [P, K, S] int32, 0 = empty
    round: jax.Array        # [P, K, S] int32, round the note was published in (0 when empty)
    producer: jax.Array     # [P, K, S] int32, always k (kept so gathered entries carry it)
    valid: jax.Array        # [P, K, S] bool, live = stored and among the producer's newest `capacity`
    count: jax.Array        # [P, K] int32, newest version per producer (write pointer = count mod S)
    snap0: jax.Array        # [P, K, N]  pinned snapshot 0 per producer
    snap0_valid: jax.Array  # [P, K] bool
    inexact: jax.Array      # [P, K] bool, sticky: a rollback or publish broke the documented semantics
    capacity: int = flax.struct.field(pytree_node=False, default=4)

    @property
    def slots(self) -> int:
        return self.notes.shape[2]


@flax.struct.dataclass
class Window:
    notes: jax.Array     # [P, Kc, W, N], zero where ~mask
    mask: jax.Array      # [P, Kc, W] bool
    producer: jax.Array  # [P, Kc, W] int32 (0 where ~mask)
    version: jax.Array   # [P, Kc, W] int32 (0 for snapshot 0 and padding)
    round: jax.Array     # [P, Kc, W] int32 (0 for snapshot 0 and padding)


def init_bus(P: int, K: int, capacity: int, notes_dim: int, dtype=jnp.float32, slack: int = 1) -> Bus:
    """Empty bus. `capacity` live notes per producer, `slack` extra ring slots for exact rollback."""
    if capacity < 1 or slack < 0:
        raise ValueError(f"need capacity >= 1 and slack >= 0, got {capacity}, {slack}")
    S = capacity + slack
    zeros_i = jnp.zeros((P, K, S), jnp.int32)
    return Bus(notes=jnp.zeros((P, K, S, notes_dim), dtype), version=zeros_i, round=zeros_i,
               producer=jnp.broadcast_to(jnp.arange(K, dtype=jnp.int32)[None, :, None], (P, K, S)),
               valid=jnp.zeros((P, K, S), bool), count=jnp.zeros((P, K), jnp.int32),
               snap0=jnp.zeros((P, K, notes_dim), dtype), snap0_valid=jnp.zeros((P, K), bool),
               inexact=jnp.zeros((P, K), bool), capacity=capacity)


def pad_or_truncate_l2(vectors_xD: jax.Array, notes_dim: int, eps: float = 1e-6) -> jax.Array:
    """[..., D] -> [..., notes_dim]: cut or zero-pad the last axis, then L2-normalise, so the result
    has unit norm whatever D is (seed texts pooled from the trunk: D = hidden size)."""
    D = vectors_xD.shape[-1]
    x = vectors_xD[..., :notes_dim].astype(jnp.float32)
    if D < notes_dim:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, notes_dim - D)])
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return (x / jnp.maximum(norm, eps)).astype(vectors_xD.dtype)


def seed_snapshot0(bus: Bus, vectors: jax.Array) -> Bus:
    """Set snapshot 0. vectors [P, K, N]: one per producer (per-stream plan contracts / seed texts);
    [P, N]: one shared vector (planner seed), filed under producer 0 only."""
    P, K = bus.count.shape
    if vectors.ndim == 2:
        snap0 = jnp.zeros_like(bus.snap0).at[:, 0].set(vectors.astype(bus.snap0.dtype))
        valid = jnp.zeros((P, K), bool).at[:, 0].set(True)
    else:
        snap0, valid = vectors.astype(bus.snap0.dtype), jnp.ones((P, K), bool)
    return bus.replace(snap0=snap0, snap0_valid=valid)


def _per_row(x, P: int, K: int) -> jax.Array:
    """Scalar, [P] or [P, K] -> [P, K] (round values, masks, lags)."""
    x = jnp.asarray(x)
    return jnp.broadcast_to(x.reshape(x.shape + (1,) * (2 - x.ndim)), (P, K))


def _liveness(version_PxKxS, count_PxK, capacity: int) -> jax.Array:
    return (version_PxKxS >= 1) & (version_PxKxS > count_PxK[..., None] - capacity)


def publish(bus: Bus, notes_PxKxN: jax.Array, round, mask_PxK: jax.Array | None = None) -> Bus:
    """Every selected stream appends its note for `round` (traced: scalar, [P] or [P, K]) to its own
    ring; the producer's note `capacity` versions older stops being live. mask False = no publish."""
    P, K, S = bus.version.shape
    rnd = _per_row(round, P, K).astype(jnp.int32)
    m = jnp.ones((P, K), bool) if mask_PxK is None else _per_row(mask_PxK, P, K).astype(bool)
    last_round = jnp.max(jnp.where(bus.version >= 1, bus.round, jnp.iinfo(jnp.int32).min), axis=-1)
    write_PxKxS = m[..., None] & (jnp.arange(S) == (bus.count % S)[..., None])
    count = bus.count + m.astype(jnp.int32)
    version = jnp.where(write_PxKxS, count[..., None], bus.version)
    return bus.replace(
        notes=jnp.where(write_PxKxS[..., None], notes_PxKxN.astype(bus.notes.dtype)[:, :, None], bus.notes),
        version=version,
        round=jnp.where(write_PxKxS, rnd[..., None], bus.round),
        valid=_liveness(version, count, bus.capacity),
        count=count,
        inexact=bus.inexact | (m & (rnd < last_round)))


def rollback_to(bus: Bus, round, streams_mask: jax.Array | None = None) -> Bus:
    """Remove every note with round ≥ `round` (scalar, [P] or [P, K]) of the selected producers
    ([P, K] bool, default all) and rewind their version counters (hence write pointers). Evicted
    notes still held in the ring become live again. Snapshot 0 is never touched."""
    P, K, S = bus.version.shape
    r = _per_row(round, P, K).astype(jnp.int32)
    sel = jnp.ones((P, K), bool) if streams_mask is None else _per_row(streams_mask, P, K).astype(bool)
    undo = sel[..., None] & (bus.version >= 1) & (bus.round >= r[..., None])
    n_undone = jnp.sum(undo, axis=-1, dtype=jnp.int32)
    count = bus.count - n_undone
    version = jnp.where(undo, 0, bus.version)
    # Stored versions are contiguous, [oldest_held, count_before] (an earlier undo may have freed slots
    # whose old notes were overwritten, so this is not simply count_before - S + 1). After the undo the
    # live set must be [count - capacity + 1, count]; a needed version below oldest_held is lost.
    oldest_held = jnp.min(jnp.where(bus.version >= 1, bus.version, jnp.iinfo(jnp.int32).max), axis=-1)
    oldest_needed = jnp.maximum(count - bus.capacity + 1, 1)
    return bus.replace(
        notes=jnp.where(undo[..., None], jnp.zeros((), bus.notes.dtype), bus.notes),
        version=version,
        round=jnp.where(undo, 0, bus.round),
        valid=_liveness(version, count, bus.capacity),
        count=count,
        inexact=bus.inexact | ((count > 0) & (oldest_needed < oldest_held)))


def live_view(bus: Bus) -> Bus:
    """The bus with every non-live slot zeroed: what windows can ever see. Equal for a rolled-back
    bus and a bus that never published the undone notes, even after the ring wrapped (within slack)."""
    v = bus.valid
    return bus.replace(notes=jnp.where(v[..., None], bus.notes, 0), version=jnp.where(v, bus.version, 0),
                       round=jnp.where(v, bus.round, 0))


def assert_exact(bus: Bus) -> None:
    """Host-side check (call outside jit): raise if any producer's bus state left the documented
    semantics (rollback deeper than slack after a wrap, or non-monotonic publish rounds)."""
    bad = jax.device_get(bus.inexact)
    if bad.any():
        raise ValueError(f"bus inexact for (prompt, producer) {list(zip(*bad.nonzero()))}: a rollback "
                         "needed notes the ring had overwritten (raise slack) or rounds went backwards")


def visible_window(bus: Bus, round, lag, budget: int | None = None, ordered: bool = True) -> Window:
    """The window every consumer reads at `round` (traced: scalar, [P] or [P, K_consumer]) with lag Δ
    (traced): all valid snapshot 0 entries plus the newest `budget` (static; default K·capacity) live
    notes of every producer with round ≤ v − Δ. W = K + budget. Returns [P, K, W, ...] arrays.

    ``ordered=False`` (default budget only, one horizon for the whole prompt: ``round`` scalar or
    [P]) gives the same entries in storage order — snapshot-0 slots, then ring slots, W = K + K·S —
    without the two sorts: SNC is blind to entry order, so the runtime reads it this way unless a
    counterfactual needs the canonical order."""
    P, K, S = bus.version.shape
    N = bus.notes.shape[-1]
    if not ordered:
        if budget is not None:
            raise ValueError("visible_window(ordered=False) serves the default budget (every live note) only")
        return _storage_order_window(bus, round, lag)
    budget = K * bus.capacity if budget is None else int(budget)
    M = K * S
    L = K + max(M, budget)   # candidates: K snapshot-0 entries, K·S ring slots, invalid padding
    pad = L - K - M
    horizon = (_per_row(round, P, K) - _per_row(lag, P, K)).astype(jnp.int32)  # [P, Kc]

    def flat(x_PxKxS, fill):
        return jnp.pad(x_PxKxS.reshape(P, M), ((0, 0), (0, pad)), constant_values=fill)

    k_ids = jnp.broadcast_to(jnp.arange(K, dtype=jnp.int32), (P, K))
    rnd = jnp.concatenate([jnp.zeros((P, K), jnp.int32), flat(bus.round, 0)], axis=1)        # [P, L]
    ver = jnp.concatenate([jnp.zeros((P, K), jnp.int32), flat(bus.version, 0)], axis=1)
    prod = jnp.concatenate([k_ids, flat(bus.producer, 0)], axis=1)
    is_pub = jnp.broadcast_to(jnp.arange(L) >= K, (P, L))
    live = jnp.concatenate([bus.snap0_valid, flat(bus.valid, False)], axis=1)
    # Class 0: snapshot 0 (always visible), 1: visible published, 2: neither.
    visible = live[:, None] & (~is_pub[:, None] | (rnd[:, None] <= horizon[..., None]))       # [P, Kc, L]
    cls = jnp.where(visible, is_pub[:, None].astype(jnp.int32), 2)
    bc = lambda x: jnp.broadcast_to(x[:, None], (P, K, L))
    idx = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (P, K, L))
    # Pass 1: newest first within each class, so the budget keeps the newest published notes.
    cls1, _, _, _, idx1 = lax.sort((cls, -bc(rnd), -bc(prod), -bc(ver), idx), dimension=2, num_keys=4)
    n_snap0 = jnp.sum(cls == 0, axis=-1, keepdims=True)
    pos = jnp.arange(L)
    keep = (cls1 == 0) | ((cls1 == 1) & (pos - n_snap0 < budget))
    W = K + budget
    keep, idx1 = keep[..., :W], idx1[..., :W]
    # Pass 2: canonical ascending order, kept entries first.
    take = lambda x: jnp.take_along_axis(bc(x), idx1, axis=2)
    r2, v2, p2 = take(rnd), take(ver), take(prod)
    g2 = jnp.take_along_axis(bc(is_pub), idx1, axis=2).astype(jnp.int32)
    _, _, r2, p2, v2, idx2 = lax.sort(((~keep).astype(jnp.int32), g2, r2, p2, v2, idx1), dimension=2, num_keys=5)
    mask = jnp.arange(W) < jnp.sum(keep, axis=-1, keepdims=True)  # kept entries are now the prefix
    cand = jnp.concatenate([bus.snap0, bus.notes.reshape(P, M, N),
                            jnp.zeros((P, pad, N), bus.notes.dtype)], axis=1)          # [P, L, N]
    notes = jnp.take_along_axis(cand[:, None], idx2[..., None], axis=2)
    z = lambda x: jnp.where(mask, x, 0)
    return Window(notes=jnp.where(mask[..., None], notes, 0), mask=mask, producer=z(p2),
                  version=z(v2), round=z(r2))


def _storage_order_window(bus: Bus, round, lag) -> Window:
    P, K, S, N = bus.notes.shape
    horizon = (jnp.asarray(round) - jnp.asarray(lag)).astype(jnp.int32).reshape(-1, 1, 1)   # [1 or P, 1, 1]
    vis = bus.valid & (bus.round <= horizon)                                                  # [P, K, S]
    mask = jnp.concatenate([bus.snap0_valid, vis.reshape(P, K * S)], axis=1)                 # [P, W]
    notes = jnp.concatenate([bus.snap0, bus.notes.reshape(P, K * S, N)], axis=1)
    producer = jnp.concatenate([jnp.broadcast_to(jnp.arange(K, dtype=jnp.int32), (P, K)),
                                bus.producer.reshape(P, K * S)], axis=1)
    version = jnp.concatenate([jnp.zeros((P, K), jnp.int32), bus.version.reshape(P, K * S)], axis=1)
    rnd = jnp.concatenate([jnp.zeros((P, K), jnp.int32), bus.round.reshape(P, K * S)], axis=1)
    every = lambda x: jnp.broadcast_to(jnp.where(mask, x, 0)[:, None], (P, K) + x.shape[1:])
    return Window(notes=jnp.broadcast_to(jnp.where(mask[..., None], notes, 0)[:, None], (P, K) + notes.shape[1:]),
                  mask=jnp.broadcast_to(mask[:, None], (P, K, mask.shape[1])), producer=every(producer),
                  version=every(version), round=every(rnd))


def retry_window(before: Bus, after: Bus, round, lag) -> Window:
    """The window each consumer retries its block of the last round with when it alone failed the
    readiness gate (``runtime/orchestrator.py``): ``after`` is the bus with the round's notes
    published, ``before`` without them. A consumer reads its siblings' entries from ``after`` and
    its own from ``before`` — its rolled-back note is off the bus, and an own note that one had
    evicted is live again. Storage order (``visible_window(ordered=False)``), whose entries sit at
    fixed positions per producer, so the two windows combine entry by entry."""
    a, b = _storage_order_window(after, round, lag), _storage_order_window(before, round, lag)
    P, K, S = after.version.shape
    owner = jnp.concatenate([jnp.full((K,), -1, jnp.int32), jnp.repeat(jnp.arange(K, dtype=jnp.int32), S)])
    own = owner[None, None, :] == jnp.arange(K, dtype=jnp.int32)[None, :, None]          # [1, K, W]
    return jax.tree.map(lambda x, y: jnp.where(own.reshape(own.shape + (1,) * (x.ndim - 3)), y, x), a, b)


def bus_axes(bus: Bus) -> Bus:
    """Logical axes of every leaf (pdt_jax/sharding.py): prompts over ``batch``, producers over
    ``streams``, the ring over ``bus_slots``, note vectors over ``notes``."""
    per_slot = ("batch", "streams", "bus_slots")
    per_producer = ("batch", "streams")
    return Bus(notes=per_slot + ("notes",), version=per_slot, round=per_slot, producer=per_slot, valid=per_slot,
               count=per_producer, snap0=per_producer + ("notes",), snap0_valid=per_producer, inexact=per_producer,
               capacity=bus.capacity)


def window_axes(window: Window) -> Window:
    per_entry = ("batch", "streams", None)
    return Window(notes=per_entry + ("notes",), mask=per_entry, producer=per_entry, version=per_entry,
                  round=per_entry)


# --- Counterfactuals: pure edits of the consumers' windows before SNC (digest §4 "Counterfactuals").
# `consumers` is [P, K] or [K] bool (None = every consumer).

def _consumer_mask(window: Window, consumers) -> jax.Array:
    P, K = window.mask.shape[:2]
    if consumers is None:
        return jnp.ones((P, K), bool)
    c = jnp.asarray(consumers, bool)
    return jnp.broadcast_to(c if c.ndim == 2 else c[None], (P, K))


def _keep_only(window: Window, keep_PxKxW: jax.Array) -> Window:
    keep = keep_PxKxW & window.mask
    z = lambda x: jnp.where(keep, x, 0)
    return Window(notes=jnp.where(keep[..., None], window.notes, 0), mask=keep,
                  producer=z(window.producer), version=z(window.version), round=z(window.round))


def ablate(window: Window, consumers=None, keep_seed: bool = False) -> Window:
    """Selected consumers read nothing (notes zeroed, mask False); with ``keep_seed`` they keep
    snapshot 0 (the planner's notes, version 0) and lose every published note."""
    hide = _consumer_mask(window, consumers)[..., None]
    if keep_seed:
        hide = hide & (window.version > 0)
    return _keep_only(window, ~hide)


def stale(window: Window, drop, consumers=None) -> Window:
    """Selected consumers lose their `drop` (traced: scalar, [K] or [P, K]) newest published notes;
    snapshot 0 always stays. Relies on the window's ascending order (newest published last)."""
    P, K, _ = window.mask.shape
    d = jnp.asarray(drop, jnp.int32)
    d = jnp.broadcast_to(d if d.ndim != 1 else d[None], (P, K))
    pub = window.mask & (window.version > 0)
    rank_from_newest = jnp.sum(pub, -1, keepdims=True) - jnp.cumsum(pub, -1)  # 0 = newest
    drop_here = pub & (rank_from_newest < d[..., None]) & _consumer_mask(window, consumers)[..., None]
    return _keep_only(window, ~drop_here)


def swap_producers(window: Window, a: int, b: int, consumers=None) -> Window:
    """Selected consumers see producer a's notes attributed to b and vice versa (re-sorted into the
    canonical order, so positions move as well as labels)."""
    sel = _consumer_mask(window, consumers)[..., None] & window.mask
    p = window.producer
    p = jnp.where(sel & (p == a), b, jnp.where(sel & (p == b), a, p))
    pub = (window.version > 0).astype(jnp.int32)
    idx = jnp.broadcast_to(jnp.arange(p.shape[-1], dtype=jnp.int32), p.shape)
    *_, order = lax.sort(((~window.mask).astype(jnp.int32), pub, window.round, p, window.version, idx),
                         dimension=2, num_keys=5)
    take = lambda x: jnp.take_along_axis(x, order, axis=2)
    return Window(notes=jnp.take_along_axis(window.notes, order[..., None], axis=2),
                  mask=take(window.mask), producer=take(p), version=take(window.version),
                  round=take(window.round))


def shuffle(window: Window, key: jax.Array, consumers=None) -> Window:
    """Selected consumers get their valid note vectors randomly permuted among their valid entries;
    metadata (producer, round, version) stays in place, so "who said what" is scrambled."""
    P, K, W = window.mask.shape
    u = jax.random.uniform(key, (P, K, W))
    # Valid entries form the prefix; sorting their random keys permutes exactly that prefix.
    perm = jnp.argsort(jnp.where(window.mask, u, 2.0), axis=-1)
    shuffled = jnp.take_along_axis(window.notes, perm[..., None], axis=2)
    sel = _consumer_mask(window, consumers)[..., None, None]
    return window.replace(notes=jnp.where(sel, shuffled, window.notes))


def freeze(window: Window, frozen: Window, consumers=None) -> Window:
    """Selected consumers read `frozen` (a window stored earlier) instead of the current one."""
    sel = _consumer_mask(window, consumers)
    return jax.tree.map(lambda f, w: jnp.where(sel.reshape(sel.shape + (1,) * (w.ndim - 2)), f, w),
                        frozen, window)
