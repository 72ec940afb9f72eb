"""The device programs of a PDT run — start (prefill, planner, bus), round, publish, rollback — as
pure functions, and ``Programs``: those functions jitted once per shape with explicit in/out
shardings on the model's mesh (ARCHITECTURE.md D9, D14). The host loop (``orchestrator.py``)
decides; this module computes.

State kept on device between rounds: the KV cache (and a second, sidecar-free cache when α < 1
blends attended and base logits), the next-token logits, the bus, the running coverage state (an
online softmax over every token the stream wrote), the running sum of hidden states since the
stream's last note, and each row's latest provisional note (a publish writes it from there, so
the host never sends notes back). A rollback needs only the small fields saved at the round's
start: cache lengths, logits, coverage and note accumulators; cache slots past a row's length are
dead by construction.

Sharding: rows (prompts × streams, stream-minor) and the bus's prompts lie over the ``batch`` rule,
KV heads over ``kv_heads``, parameters by their declared logical axes; every leaf's sharding comes
from the model's ``ShardingRules``. The host receives only the two packed decision arrays per round.
"""
from __future__ import annotations

import collections
import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp

from pdt_jax import bus as bus_lib
from pdt_jax import model as pdt
from pdt_jax import sharding
from pdt_jax.runtime import fields
from pdt_jax.sidecar import coverage, heads
from pdt_jax.sidecar.hooks import HookContext
from pdt_jax.sidecar.params import sidecar_specs
from pdt_jax.trunk import decode
from pdt_jax.trunk import model as trunk_model
from pdt_jax.trunk.cache import KVCache, cache_axes
from pdt_jax.trunk.params import abstract_from_specs, axes_from_specs, trunk_specs

# Incremented when a program is traced (= compiled): tests assert that rounds, retries and prompts
# of the same padded shape reuse one program.
TRACE_COUNTS: collections.Counter = collections.Counter()


@flax.struct.dataclass
class Small:
    """Per-row state that a rollback restores (everything but the caches and the bus)."""
    length: jax.Array        # [B] int32 cache length
    base_length: jax.Array   # [B] int32 (base cache; equals length)
    logits: jax.Array        # [B, V] float32 next-token logits (already α-blended)
    cov_max: jax.Array       # [B, H, S] coverage state (sidecar/coverage.py): running max,
    cov_den: jax.Array       # [B, H, S] denominator,
    cov_num: jax.Array       # [B, H, S, hd] numerator
    note_sum: jax.Array      # [B, D] float32 hidden-state sum since the last note
    note_count: jax.Array    # [B] int32
    note: jax.Array          # [B, N] float32 the provisional note of the row's latest round (what a publish writes)


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
    ablate_keep_seed: bool = False           # ... of its published notes only (snapshot 0 stays)
    unroll: int = 1                          # lax.scan unroll of the τ decode steps


def top2_margin(logits_NxV: jax.Array) -> jax.Array:
    """The gap between the two largest logits, without ``lax.top_k`` (a full sort of every row on
    XLA:CPU): the top value minus the largest of the others — 0 when the top value occurs twice."""
    x = logits_NxV.astype(jnp.float32)
    first = jnp.argmax(x, axis=-1)
    top = jnp.take_along_axis(x, first[:, None], axis=-1)[:, 0]
    others = jnp.where(jnp.arange(x.shape[-1])[None, :] == first[:, None], -jnp.inf, x)
    return top - others.max(-1)


def coverage_step(side_p, item_ids_BxS, hidden_BxTxD, written_BxT, small: Small, num_heads: int):
    """Merges this round's written tokens into each row's coverage state; returns the coverage
    logits [B, S] after the round and the updated state."""
    scores, values = coverage.project(side_p["coverage"], side_p["plan_embed"], item_ids_BxS, hidden_BxTxD, num_heads)
    cov = coverage.merge((small.cov_max, small.cov_den, small.cov_num),
                         coverage.tokens_state(scores, values, written_BxT))
    return coverage.readout(side_p["coverage"], cov), small.replace(cov_max=cov[0], cov_den=cov[1], cov_num=cov[2])


def _window(bus, static: RoundStatic, window_round, lag, cf, key, given=None):
    cfg = static.cfg
    if given is None:
        w = bus_lib.visible_window(bus, window_round, lag, ordered=static.canonical_window)
    else:
        w = given
    P, K = w.mask.shape[:2]
    if static.freeze:
        w = bus_lib.freeze(w, cf["frozen"], cf["freeze"])
    if static.canonical_window:
        w = bus_lib.stale(w, cf["stale"])
        w = bus_lib.shuffle(w, key, cf["shuffle"])
    for a, b in static.swap:
        w = bus_lib.swap_producers(w, a, b)
    if static.ablate:
        w = bus_lib.ablate(w, cf["ablate"], keep_seed=static.ablate_keep_seed)
    N = cfg.sidecar.notes_dim
    return w, w.notes.reshape(P * K, -1, N), w.mask.reshape(P * K, -1), pdt.window_entries(w, K)


def round_fn(static: RoundStatic, trunk_p, side_p, cache: KVCache, base_cache, small: Small, bus, item_ids,
             window_round, lag, active, remaining, gate, alpha, temperature, top_p, key, cf, forced=None, window=None):
    """Decode up to τ tokens for every active row (a lax.scan of ``trunk.decode.step``), then write
    the provisional note, coverage and readiness. ``remaining`` [B]: tokens a row may still write
    this round; ``forced`` [B, τ]: teacher-forced tokens (training's exact form) instead of choices;
    ``window``: the window every consumer reads, when the caller built it (training's retry pairs)
    instead of the bus's at ``window_round``.
    Returns the window read this round only when a freeze counterfactual may need it; ``out`` also
    holds every step's hidden state [B, τ, D] and the logits each token was chosen from [B, τ, V]
    (dropped by the runtime's packing, read by training)."""
    TRACE_COUNTS["round"] += 1
    cfg = static.cfg
    sc = cfg.sidecar
    hooks = cfg.hooks()
    sampling = decode.Sampling(greedy=static.greedy, top_k=static.top_k)
    key, wkey = jax.random.split(key)
    window, notes, mask, entries = _window(bus, static, window_round, lag, cf, wkey, window)
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
        i, sub, forced_B = xs
        go = alive & (i < budget)
        token, hidden, new_logits, cache = decode.step(
            trunk_p, cache, logits, go, sub, sampling, cfg=cfg.trunk, temperature=temperature, top_p=top_p,
            hooks=hooks, ctx=ctx, moe_impl=static.moe_impl, forced_B=forced_B)
        delta = jnp.zeros(token.shape, jnp.float32)
        if static.blend:
            # g = 0 makes both sidecar residuals exactly zero: the base stream is the bare trunk.
            _, base_logits, base_cache = decode.forward(trunk_p, token, base_cache, go, cfg=cfg.trunk,
                                                        moe_impl=static.moe_impl)
            delta = jnp.linalg.norm(new_logits - base_logits, axis=-1)
            new_logits = alpha * new_logits + (1 - alpha) * base_logits
        alive = alive & ~(go & jnp.isin(token, eos))
        return (cache, base_cache, jnp.where(go[:, None], new_logits, logits), alive), (token, go, logits, hidden, delta)

    carry = (cache, base_cache, small.logits, jnp.ones_like(active))
    xs = (jnp.arange(static.block_size), step_keys, None if forced is None else forced.T)
    (cache, base_cache, logits, _), (tokens, produced, step_logits, hidden, delta) = jax.lax.scan(
        step, carry, xs, unroll=static.unroll)
    tau, B, V = step_logits.shape
    margins = top2_margin(step_logits.reshape(tau * B, V)).reshape(tau, B)   # every step's at once
    tokens, produced, margins = tokens.T, produced.T, margins.T              # [B, τ]
    hidden = hidden.transpose(1, 0, 2)                                       # [B, τ, D]
    f = produced.astype(jnp.float32)
    cov_logits, small = coverage_step(side_p, item_ids, hidden, produced, small, sc.coverage_heads)
    small = small.replace(length=cache.length, base_length=base_cache.length if static.blend else cache.length,
                          logits=logits,
                          note_sum=small.note_sum + jnp.einsum("btd,bt->bd", hidden.astype(jnp.float32), f),
                          note_count=small.note_count + produced.sum(-1).astype(jnp.int32))
    pooled = small.note_sum / jnp.maximum(small.note_count, 1)[:, None]
    note = heads.note_head(side_p["spec_head"], pooled)
    small = small.replace(note=jnp.where(active[:, None], note, small.note))
    summary = heads.window_summary(notes, mask)
    readiness = heads.readiness_logit(side_p["agree"], pooled, summary, cov_logits, note)
    out = {"tokens": tokens, "produced": produced, "margins": margins, "note": note, "coverage": cov_logits,
           "readiness": readiness, "window_size": mask.sum(-1).astype(jnp.int32), "attended_delta": delta[-1],
           "hidden": hidden, "step_logits": step_logits.transpose(1, 0, 2)}
    return cache, base_cache, small, key, out, (window if static.freeze else None)


def publish(bus, small: Small, stamp, rows_PxK):
    """The selected rows publish their latest provisional note (kept on device) with ``stamp`` and
    start pooling afresh."""
    P, K = rows_PxK.shape
    bus = bus_lib.publish(bus, small.note.reshape(P, K, -1), stamp, rows_PxK)
    return bus, reset_notes(small, rows_PxK.reshape(-1))


def reset_notes(small: Small, rows_B) -> Small:
    return small.replace(note_sum=jnp.where(rows_B[:, None], 0.0, small.note_sum),
                         note_count=jnp.where(rows_B, 0, small.note_count))


def round_program(static: RoundStatic, pub_rows, pub_stamp, trunk_p, side_p, cache, base_cache, small, bus,
                  item_ids, window_round, lag, active, remaining, gate, alpha, temperature, top_p, key_data, cf):
    """One round in one dispatch: first the publish the host asked for after the previous round
    (rows all False = none: an exact no-op), then ``round_fn``; the outputs packed by dtype
    (``fields.pack``)."""
    bus, small = publish(bus, small, pub_stamp, pub_rows)
    cache, base_cache, small, key, out, window = round_fn(
        static, trunk_p, side_p, cache, base_cache, small, bus, item_ids, window_round, lag, active, remaining, gate,
        alpha, temperature, top_p, jax.random.wrap_key_data(key_data), cf)
    floats, ints = fields.pack(out)
    return cache, base_cache, small, jax.random.key_data(key), bus, floats, ints, window


def start_program(static: RoundStatic, max_len: int, slack: int, bus_slack: int, trunk_p, side_p, ids, lengths,
                  gate_g, alpha, plan_ids, seed_vectors):
    """Prefill every row, take the planner's plan (argmax per slot) unless one is given, and build
    the bus with its snapshot 0 (the plan's projection, or the seed vectors when given).
    Returns (cache, base_cache, small, planner logits [P, S, V_p], plan ids [P, S], item ids [B, S],
    bus, snapshot 0)."""
    TRACE_COUNTS["start"] += 1
    cfg = static.cfg
    sc, K = cfg.sidecar, cfg.K
    B, T = ids.shape
    P = B // K
    gate = jnp.full((B,), gate_g, jnp.float32)
    hidden, cache = pdt.prefill(trunk_p, side_p, ids, lengths, cfg=cfg, max_len=max_len, slack=slack, gate_B=gate,
                                moe_impl=static.moe_impl)
    last = lambda h: jnp.take_along_axis(h, (lengths - 1)[:, None, None], axis=1)
    logits = trunk_model.unembed(trunk_p, last(hidden))[:, 0]
    base_cache = None
    if static.blend:
        base_hidden, base_cache = pdt.prefill(trunk_p, side_p, ids, lengths, cfg=cfg, max_len=max_len, slack=slack,
                                              gate_B=jnp.zeros_like(gate), moe_impl=static.moe_impl)
        logits = alpha * logits + (1 - alpha) * trunk_model.unembed(trunk_p, last(base_hidden))[:, 0]
    D = hidden.shape[-1]
    H, S = sc.coverage_heads, sc.planner_slots
    prompt_mask = (jnp.arange(T)[None, :] < lengths[:, None]).reshape(P, K * T)
    planner = heads.planner_logits(side_p["planner"], side_p["plan_embed"], hidden.reshape(P, K * T, D), prompt_mask)
    cov_max, cov_den, cov_num = coverage.empty(B, H, S, sc.coverage_dim // H)
    small = Small(length=cache.length, base_length=(base_cache or cache).length, logits=logits,
                  cov_max=cov_max, cov_den=cov_den, cov_num=cov_num,
                  note_sum=jnp.zeros((B, D), jnp.float32), note_count=jnp.zeros((B,), jnp.int32),
                  note=jnp.zeros((B, sc.notes_dim), jnp.float32))
    if plan_ids is None:
        plan_ids = jnp.argmax(planner, axis=-1).astype(jnp.int32)
    plan_ids = jnp.asarray(plan_ids, jnp.int32)
    bus = bus_lib.init_bus(P, K, sc.bus_capacity, sc.notes_dim, slack=bus_slack)
    if seed_vectors is None:
        snap = heads.plan_snapshot(side_p["plan_embed"], side_p["plan_to_notes"], plan_ids)
    else:
        snap = seed_vectors.astype(jnp.float32)
    bus = bus_lib.seed_snapshot0(bus, snap)
    return cache, base_cache, small, planner, plan_ids, jnp.repeat(plan_ids, K, axis=0), bus, snap


def restore_rows(rows_B, start: Small, now: Small, cache: KVCache, base_cache):
    """Rollback: the selected rows go back to their round-start state (the KV cache only needs its
    length reset: slots past a row's length are never read)."""
    pick = lambda a, b: jnp.where(rows_B.reshape(rows_B.shape + (1,) * (a.ndim - 1)), a, b)
    small = jax.tree.map(pick, start, now)
    base_cache = None if base_cache is None else base_cache.replace(length=small.base_length)
    return small, cache.replace(length=small.length), base_cache


def rollback(rows_B, start: Small, now: Small, cache, base_cache, bus, stamp):
    """Selected rows return to their round-start state; their notes with stamp ≥ ``stamp`` leave the bus."""
    small, cache, base_cache = restore_rows(rows_B, start, now, cache, base_cache)
    P, K = bus.count.shape
    return small, cache, base_cache, bus_lib.rollback_to(bus, stamp, rows_B.reshape(P, K))


def pooled_text_vectors(trunk_p, ids, lengths, *, cfg: pdt.PDTConfig):
    """Seed texts → notes-space vectors (``model.text_vectors``, the recipe teacher notes share)."""
    return pdt.text_vectors(trunk_p, ids, lengths, trunk_cfg=cfg.trunk, notes_dim=cfg.sidecar.notes_dim)


# ---- shardings ------------------------------------------------------------------------------------

def small_axes(small: Small) -> Small:
    return jax.tree.map(sharding.leading_batch, small)


def state_axes(x):
    """Logical axes of a runtime state pytree (cache, bus, window, Small, or a batch-major array)."""
    if x is None:
        return None
    if isinstance(x, KVCache):
        return cache_axes(x)
    if isinstance(x, bus_lib.Bus):
        return bus_lib.bus_axes(x)
    if isinstance(x, bus_lib.Window):
        return bus_lib.window_axes(x)
    if isinstance(x, Small):
        return small_axes(x)
    return sharding.leading_batch(x)


def param_shardings(cfg: pdt.PDTConfig, mesh, rules):
    """(trunk, sidecar) parameter shardings from their declarations."""
    t_specs, s_specs = trunk_specs(cfg.trunk), sidecar_specs(cfg.trunk, cfg.sidecar)
    return (rules.tree(abstract_from_specs(t_specs), axes_from_specs(t_specs), mesh, prefix="trunk"),
            rules.tree(abstract_from_specs(s_specs), axes_from_specs(s_specs), mesh, prefix="sidecar"))


class Programs:
    """The start/round/publish/rollback programs of one static configuration and shape (P prompts,
    T prompt tokens, max_len), each jitted once with explicit shardings; a new batch of prompts with
    the same shape reuses them (``programs``)."""

    def __init__(self, static: RoundStatic, mesh, rules, P: int, T: int, max_len: int, slack: int, bus_slack: int,
                 cf_example: dict):
        cfg = static.cfg
        self.static, self.mesh, self.rules = static, mesh, rules
        K, sc = cfg.K, cfg.sidecar
        B = P * K
        rep = sharding.replicated(mesh)
        trunk_sh, side_sh = param_shardings(cfg, mesh, rules)
        t_abs = abstract_from_specs(trunk_specs(cfg.trunk))
        s_abs = abstract_from_specs(sidecar_specs(cfg.trunk, cfg.sidecar))
        ids = jax.ShapeDtypeStruct((B, T), jnp.int32)
        lengths = jax.ShapeDtypeStruct((B,), jnp.int32)
        f32 = jax.ShapeDtypeStruct((), jnp.float32)
        start = functools.partial(start_program, static, max_len, slack, bus_slack)
        # The state's shapes (and so its shardings) without running anything.
        shapes = jax.eval_shape(start, t_abs, s_abs, ids, lengths, f32, f32, None, None)
        cache, base, small, planner, plan_ids, item_ids, bus, snap = shapes
        sh = lambda tree, name: rules.tree(tree, state_axes(tree), mesh, prefix=name)
        self.shardings = {
            "trunk": trunk_sh, "sidecar": side_sh, "cache": sh(cache, "kv_cache"), "base_cache": sh(base, "base_cache"),
            "small": sh(small, "small"), "bus": sh(bus, "bus"), "rows": sh(lengths, "rows"),
            "prompts": rules.tree(jax.ShapeDtypeStruct((P, K), bool), ("batch", "streams"), mesh, prefix="prompts"),
            "replicated": rep,
        }
        s = self.shardings
        row_ids = rules.tree(ids, sharding.leading_batch(ids), mesh, prefix="prompt ids")
        per_prompt = lambda x: rules.tree(x, sharding.leading_batch(x), mesh, prefix="per-prompt")
        start_out = (s["cache"], s["base_cache"], s["small"], per_prompt(planner), per_prompt(plan_ids),
                     per_prompt(item_ids), s["bus"], per_prompt(snap))
        given_plan = rules.sharding((P, sc.planner_slots), ("batch", None), mesh, "plan ids")
        given_seeds = rules.sharding((P, K, sc.notes_dim), ("batch", "streams", "notes"), mesh, "seed vectors")
        self.start = jax.jit(start, in_shardings=(trunk_sh, side_sh, row_ids, s["rows"], rep, rep, given_plan,
                                                  given_seeds), out_shardings=start_out)
        self.round_cf_shardings = cf_sh = {k: sh(v, f"counterfactual {k}") for k, v in cf_example.items()}
        window_sh = None
        if static.freeze:
            window_sh = cf_sh["frozen"]
        packed = lambda n: rules.tree(jax.ShapeDtypeStruct((B, n), jnp.float32), ("batch", None), mesh, prefix="round out")
        n_float = sum(1 for f in fields.ROUND_FIELDS if f.kind == "float")
        round_in = (s["prompts"], rep, trunk_sh, side_sh, s["cache"], s["base_cache"], s["small"], s["bus"],
                    per_prompt(item_ids), rep, rep, s["rows"], s["rows"], s["rows"], rep, rep, rep, rep, cf_sh)
        round_out = (s["cache"], s["base_cache"], s["small"], rep, s["bus"], packed(n_float), packed(1), window_sh)
        self.round = jax.jit(functools.partial(round_program, static), in_shardings=round_in,
                             out_shardings=round_out, donate_argnums=(4, 5))
        self.publish = jax.jit(publish, in_shardings=(s["bus"], s["small"], rep, s["prompts"]),
                               out_shardings=(s["bus"], s["small"]))
        self.reset_notes = jax.jit(reset_notes, in_shardings=(s["small"], s["rows"]), out_shardings=s["small"])
        self.rollback = jax.jit(rollback, in_shardings=(s["rows"], s["small"], s["small"], s["cache"], s["base_cache"],
                                                        s["bus"], rep),
                                out_shardings=(s["small"], s["cache"], s["base_cache"], s["bus"]))


@functools.lru_cache(maxsize=16)
def seed_program(cfg: pdt.PDTConfig, mesh, rules):
    """``pooled_text_vectors`` jitted on the mesh (the texts and the result replicated)."""
    rep = sharding.replicated(mesh)
    return jax.jit(functools.partial(pooled_text_vectors, cfg=cfg),
                   in_shardings=(param_shardings(cfg, mesh, rules)[0], rep, rep), out_shardings=rep)


@functools.lru_cache(maxsize=16)
def programs(static: RoundStatic, mesh, rules, P: int, T: int, max_len: int, slack: int, bus_slack: int,
             cf_key: tuple) -> Programs:
    """Programs shared by every engine with the same static configuration, mesh and shapes.
    ``cf_key``: (name, shape, dtype) of the counterfactual inputs the round reads."""
    return Programs(static, mesh, rules, P, T, max_len, slack, bus_slack, _cf_example(cf_key))


def _cf_example(cf_key: tuple) -> dict:
    out = {}
    for name, value in cf_key:
        if name == "frozen":
            out[name] = bus_lib.Window(**{k: jax.ShapeDtypeStruct(shape, dt) for k, shape, dt in value})
        else:
            shape, dt = value
            out[name] = jax.ShapeDtypeStruct(shape, dt)
    return out
