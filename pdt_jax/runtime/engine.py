"""The device side of inference: one jitted call per round for every row, plus prefill, planner,
publish and rollback. The host loop (``orchestrator.py``) decides; this module computes.

State kept on device between rounds: the KV cache (and a second, sidecar-free cache when α < 1
blends attended and base logits), the next-token logits, the bus, the running coverage attention
(an online softmax over every token the stream wrote), the running sum of hidden states since the
stream's last note (the note pools the tokens since its last emission), and each row's latest
provisional note: a publish writes it from there, so the host never sends notes back.
Rollback needs only the small fields saved at the round's start: cache lengths, logits, coverage
and note accumulators; cache slots beyond a row's length are dead by construction.
"""
from __future__ import annotations

import collections
import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

from pdt_jax import bus as bus_lib
from pdt_jax import model as pdt
from pdt_jax import sampling
from pdt_jax.sidecar import heads
from pdt_jax.sidecar.hooks import HookContext
from pdt_jax.trunk import model as trunk_model
from pdt_jax.trunk.cache import KVCache


# Incremented when a program is traced (= compiled): tests assert rounds, retries and prompts of the
# same padded shape reuse one program.
TRACE_COUNTS: collections.Counter = collections.Counter()


@flax.struct.dataclass
class Small:
    """Per-row state that a rollback restores (everything but the caches and the bus)."""
    length: jax.Array        # [B] int32 cache length
    base_length: jax.Array   # [B] int32 (base cache; equals length)
    logits: jax.Array        # [B, V] float32 next-token logits (already α-blended)
    cov_max: jax.Array       # [B, H, S] running max of coverage scores
    cov_den: jax.Array       # [B, H, S]
    cov_num: jax.Array       # [B, H, S, hd]
    note_sum: jax.Array      # [B, D] float32 hidden-state sum since the last note
    note_count: jax.Array    # [B] int32
    note: jax.Array          # [B, N] float32 the provisional note of the row's latest round (what a publish writes)


@flax.struct.dataclass
class RoundOut:
    tokens: jax.Array        # [B, τ] int32 (pad where not produced)
    produced: jax.Array      # [B, τ] bool
    margins: jax.Array       # [B, τ] float32 top-2 logit margin of each sampling step
    note: jax.Array          # [B, N] provisional note (speculation head over tokens since last note)
    coverage: jax.Array      # [B, S] coverage logits after this round
    readiness: jax.Array     # [B] readiness logit r = AgreeHead(H, W, c, n)
    window_size: jax.Array   # [B] int32 notes visible to each row this round
    attended_delta: jax.Array  # [B] float32 ‖attended − base‖ of the last step's logits (0 when α = 1)


@dataclasses.dataclass(frozen=True)
class RoundStatic:
    cfg: pdt.PDTConfig
    block_size: int
    top_k: int
    blend: bool                              # α < 1: also run the sidecar-free trunk
    swap: tuple[tuple[int, int], ...]        # counterfactual producer swaps
    moe_impl: str = "auto"
    canonical_window: bool = False           # build the bus's sorted window (stale/shuffle need its order)
    # Host-known facts that remove work from the traced round (each False/True keeps the general path):
    greedy: bool = False                     # temperature == 0: argmax, no sampling branch in the scan
    freeze: bool = True                      # some consumer may read a frozen window (cf["frozen"] used)
    ablate: bool = True                      # some consumer's window is ablated (cf["ablate"] used)
    unroll: int = 1                          # lax.scan unroll of the τ decode steps


def _coverage_update(p, plan_embed, item_ids_BxS, hidden_BxTxD, valid_BxT, small: Small, num_heads: int):
    """Online-softmax accumulation of the coverage attention over newly written tokens."""
    B, T, _ = hidden_BxTxD.shape
    C = p["key"].shape[-1]
    hd = C // num_heads
    h = hidden_BxTxD.astype(jnp.float32)
    q = (plan_embed[item_ids_BxS] @ p["query"]).reshape(B, -1, num_heads, hd)
    k = (h @ p["key"]).reshape(B, T, num_heads, hd)
    v = (h @ p["value"]).reshape(B, T, num_heads, hd)
    scores = jnp.einsum("bshk,bthk->bhst", q, k) * hd ** -0.5
    scores = jnp.where(valid_BxT[:, None, None, :], scores, -1e30)
    new_max = jnp.maximum(small.cov_max, scores.max(-1))
    old_scale = jnp.exp(small.cov_max - new_max)
    w = jnp.where(valid_BxT[:, None, None, :], jnp.exp(scores - new_max[..., None]), 0.0)
    den = small.cov_den * old_scale + w.sum(-1)
    num = small.cov_num * old_scale[..., None] + jnp.einsum("bhst,bthk->bhsk", w, v)
    ctx = (num / jnp.maximum(den, 1e-30)[..., None]).transpose(0, 2, 1, 3).reshape(B, -1, C)
    logits = jnp.where((den > 0).any(1), ctx @ p["score"] + p["bias"], 0.0)
    return logits, small.replace(cov_max=new_max, cov_den=den, cov_num=num)


def _top2_margin(logits_NxV: jax.Array) -> jax.Array:
    """``sampling.top2_margin`` without ``lax.top_k`` (a full sort of every row on XLA:CPU): the top
    value, minus the largest of the others — 0 when the top value occurs twice, as top_k gives."""
    x = logits_NxV.astype(jnp.float32)
    first = jnp.argmax(x, axis=-1)
    top = jnp.take_along_axis(x, first[:, None], axis=-1)[:, 0]
    others = jnp.where(jnp.arange(x.shape[-1])[None, :] == first[:, None], -jnp.inf, x)
    return top - others.max(-1)


def _unsorted_window(bus, window_round, lag) -> bus_lib.Window:
    """The same entries as ``bus.visible_window`` with the default budget (every live note), but in
    storage order: snapshot-0 slots, then ring slots. SNC is blind to entry order, so the runtime
    skips the two sorts of the canonical window unless a counterfactual needs that order."""
    P, K, S, N = bus.notes.shape
    horizon = window_round - lag
    vis = bus.valid & (bus.round <= horizon)                                          # [P, K, S]
    mask = jnp.concatenate([bus.snap0_valid, vis.reshape(P, K * S)], axis=1)          # [P, W]
    notes = jnp.concatenate([bus.snap0, bus.notes.reshape(P, K * S, N)], axis=1)
    producer = jnp.concatenate([jnp.broadcast_to(jnp.arange(K, dtype=jnp.int32), (P, K)),
                                bus.producer.reshape(P, K * S)], axis=1)
    version = jnp.concatenate([jnp.zeros((P, K), jnp.int32), bus.version.reshape(P, K * S)], axis=1)
    rnd = jnp.concatenate([jnp.zeros((P, K), jnp.int32), bus.round.reshape(P, K * S)], axis=1)
    z = lambda x: jnp.broadcast_to(jnp.where(mask, x, 0)[:, None], (P, K) + x.shape[1:])
    return bus_lib.Window(notes=jnp.broadcast_to(jnp.where(mask[..., None], notes, 0)[:, None], (P, K) + notes.shape[1:]),
                          mask=jnp.broadcast_to(mask[:, None], (P, K, mask.shape[1])), producer=z(producer),
                          version=z(version), round=z(rnd))


def _window(bus, static: RoundStatic, window_round, lag, cf, key):
    cfg = static.cfg
    P, K = bus.count.shape
    if static.canonical_window:
        w = bus_lib.visible_window(bus, window_round, lag)
    else:
        w = _unsorted_window(bus, window_round, lag)
    if static.freeze:
        w = bus_lib.freeze(w, cf["frozen"], cf["freeze"])
    if static.canonical_window:
        w = bus_lib.stale(w, cf["stale"])
        w = bus_lib.shuffle(w, key, cf["shuffle"])
    for a, b in static.swap:
        w = bus_lib.swap_producers(w, a, b)
    if static.ablate:
        w = bus_lib.ablate(w, cf["ablate"])
    N = cfg.sidecar.notes_dim
    return w, w.notes.reshape(P * K, -1, N), w.mask.reshape(P * K, -1), pdt.window_entries(w, K)


def round_fn(static: RoundStatic, trunk_p, side_p, cache: KVCache, base_cache, small: Small, bus, item_ids,
             window_round, lag, active, remaining, gate, alpha, temperature, top_p, key, cf):
    """Decode up to τ tokens for every active row (lax.scan), then write the provisional note,
    coverage and readiness. ``remaining`` [B]: tokens a row may still write this round.
    Returns the window read this round only when a freeze counterfactual may need it (else None)."""
    TRACE_COUNTS["round"] += 1
    cfg = static.cfg
    hooks = cfg.hooks()
    key, wkey = jax.random.split(key)
    window, notes, mask, entries = _window(bus, static, window_round, lag, cf, wkey)
    # The window is fixed for the whole round: SNC's keys and values are projected once here, not
    # once per token and layer inside the scan.
    ctx = HookContext(params=side_p, notes=notes, mask=mask[:, None, :], entries=entries, gate=gate).with_snc_kv(hooks)
    eos = jnp.asarray(cfg.trunk.eos_token_ids or (-1,), jnp.int32)
    # One key per step, split off in sequence (greedy steps ignore theirs; the key returned for the
    # next round evolves the same way whatever the temperature).
    subs = []
    for _ in range(static.block_size):
        key, sub = jax.random.split(key)
        subs.append(sub)
    step_keys = None if static.greedy else jnp.stack(subs)
    budget = jnp.where(active, remaining, 0)  # a row writes token i iff i < budget and it has not ended

    def step(carry, xs):
        cache, base_cache, logits, alive = carry
        i, sub = xs
        go = alive & (i < budget)
        if static.greedy:
            sampled = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # = sampling.sample at temperature 0
        else:
            sampled = sampling.sample(logits, sub, temperature, top_p, static.top_k)
        token = jnp.where(go, sampled, cfg.trunk.pad_token_id)
        hidden, cache = trunk_model.extend(trunk_p, token[:, None], cache, cfg=cfg.trunk, active_B=go,
                                           hooks=hooks, ctx=ctx, moe_impl=static.moe_impl)
        new_logits = trunk_model.unembed(trunk_p, hidden)[:, 0]
        delta = jnp.zeros(token.shape, jnp.float32)
        if static.blend:
            # g = 0 makes both sidecar residuals exactly zero: the base stream is the bare trunk.
            base_hidden, base_cache = trunk_model.extend(trunk_p, token[:, None], base_cache, cfg=cfg.trunk,
                                                         active_B=go, moe_impl=static.moe_impl)
            base_logits = trunk_model.unembed(trunk_p, base_hidden)[:, 0]
            delta = jnp.linalg.norm(new_logits - base_logits, axis=-1)
            new_logits = alpha * new_logits + (1 - alpha) * base_logits
        alive = alive & ~(go & jnp.isin(token, eos))
        return (cache, base_cache, jnp.where(go[:, None], new_logits, logits), alive), (token, go, logits, hidden[:, 0], delta)

    carry = (cache, base_cache, small.logits, jnp.ones_like(active))
    xs = (jnp.arange(static.block_size), step_keys)
    (cache, base_cache, logits, _), (tokens, produced, step_logits, hidden, delta) = jax.lax.scan(
        step, carry, xs, unroll=static.unroll)
    # Top-2 margin of the logits each step sampled from, for all steps at once.
    tau, B, V = step_logits.shape
    margins = _top2_margin(step_logits.reshape(tau * B, V)).reshape(tau, B)
    tokens, produced, margins = tokens.T, produced.T, margins.T            # [B, τ]
    hidden = hidden.transpose(1, 0, 2)                                     # [B, τ, D]
    f = produced.astype(jnp.float32)
    small = small.replace(length=cache.length, base_length=base_cache.length if static.blend else cache.length,
                          logits=logits,
                          note_sum=small.note_sum + jnp.einsum("btd,bt->bd", hidden.astype(jnp.float32), f),
                          note_count=small.note_count + produced.sum(-1).astype(jnp.int32))
    coverage, small = _coverage_update(side_p["coverage"], side_p["plan_embed"], item_ids, hidden, produced, small,
                                       cfg.sidecar.coverage_heads)
    pooled = small.note_sum / jnp.maximum(small.note_count, 1)[:, None]
    note = heads.note_head(side_p["spec_head"], pooled)
    small = small.replace(note=jnp.where(active[:, None], note, small.note))
    summary = heads.window_summary(notes, mask)
    readiness = heads.readiness_logit(side_p["agree"], pooled, summary, coverage, note)
    out = RoundOut(tokens=tokens, produced=produced, margins=margins, note=note, coverage=coverage,
                   readiness=readiness, window_size=mask.sum(-1).astype(jnp.int32), attended_delta=delta[-1])
    return cache, base_cache, small, key, out, (window if static.freeze else None)


def prefill_fn(cfg: pdt.PDTConfig, blend: bool, max_len: int, slack: int, trunk_p, side_p, ids, lengths, gate,
               alpha, item_ids, moe_impl: str = "auto"):
    """Encode all rows; returns caches, the initial Small state and the planner logits [P, S, V_p]."""
    TRACE_COUNTS["prefill"] += 1
    hidden, cache = pdt.prefill(trunk_p, side_p, ids, lengths, cfg=cfg, max_len=max_len, slack=slack, gate_B=gate,
                                moe_impl=moe_impl)
    last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]
    logits = trunk_model.unembed(trunk_p, last[:, None])[:, 0]
    base_cache = None
    if blend:
        base_hidden, base_cache = pdt.prefill(trunk_p, side_p, ids, lengths, cfg=cfg, max_len=max_len, slack=slack,
                                              gate_B=jnp.zeros_like(gate), moe_impl=moe_impl)
        base_last = jnp.take_along_axis(base_hidden, (lengths - 1)[:, None, None], axis=1)
        logits = alpha * logits + (1 - alpha) * trunk_model.unembed(trunk_p, base_last)[:, 0]
    B, T, D = hidden.shape
    K, sc = cfg.K, cfg.sidecar
    P = B // K
    H, S = sc.coverage_heads, sc.planner_slots
    prompt_mask = (jnp.arange(T)[None, :] < lengths[:, None]).reshape(P, K * T)
    planner = heads.planner_logits(side_p["planner"], side_p["plan_embed"], hidden.reshape(P, K * T, D), prompt_mask)
    small = Small(length=cache.length, base_length=(base_cache or cache).length, logits=logits,
                  cov_max=jnp.full((B, H, S), -1e30, jnp.float32), cov_den=jnp.zeros((B, H, S), jnp.float32),
                  cov_num=jnp.zeros((B, H, S, sc.coverage_dim // H), jnp.float32),
                  note_sum=jnp.zeros((B, D), jnp.float32), note_count=jnp.zeros((B,), jnp.int32),
                  note=jnp.zeros((B, sc.notes_dim), jnp.float32))
    return cache, base_cache, small, planner


def restore_rows(rows_B, start: Small, now: Small, cache: KVCache, base_cache):
    """Rollback: the selected rows go back to their round-start state (the KV cache only needs its
    length reset: slots past a row's length are never read)."""
    pick = lambda a, b: jnp.where(rows_B.reshape(rows_B.shape + (1,) * (a.ndim - 1)), a, b)
    small = jax.tree.map(pick, start, now)
    base_cache = None if base_cache is None else base_cache.replace(length=small.base_length)
    return small, cache.replace(length=small.length), base_cache


def reset_notes(small: Small, rows_B) -> Small:
    """Rows that just published a note start pooling afresh."""
    return small.replace(note_sum=jnp.where(rows_B[:, None], 0.0, small.note_sum),
                         note_count=jnp.where(rows_B, 0, small.note_count))


def pooled_text_vectors(trunk_p, cfg: pdt.PDTConfig, ids, lengths):
    """Seed texts → the trunk's last-hidden mean over each text, L2-normalised, padded/truncated to
    notes_dim (the README's recipe for seed texts; D6 uses the same for teacher notes)."""
    hidden, _ = trunk_model.prefill(trunk_p, ids, lengths, cfg=cfg.trunk)
    m = (jnp.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(jnp.float32)
    mean = jnp.einsum("btd,bt->bd", hidden.astype(jnp.float32), m) / jnp.maximum(m.sum(-1, keepdims=True), 1)
    return bus_lib.pad_or_truncate_l2(mean, cfg.sidecar.notes_dim)
