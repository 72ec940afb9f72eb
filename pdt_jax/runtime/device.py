"""``DeviceEngine``: owns the device state of a batch of P prompts × K streams and exposes the
handful of calls the orchestrator makes (start, submit → fetch a round, publish, rollback,
mark/revert). Every call that computes is one compiled program; shapes are fixed per (P, prompt
bucket), so rounds, retries and prompts of the same padded shape never recompile."""
from __future__ import annotations

import functools
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from pdt_jax import bus as bus_lib
from pdt_jax import model as pdt
from pdt_jax.runtime import engine as eng
from pdt_jax.runtime.options import RuntimeOptions
from pdt_jax.sidecar import heads


# lax.scan unroll of a round's τ decode steps (on XLA:CPU, unroll 2 or 4 measured slower than 1).
ROUND_UNROLL = 1


def _stream_mask(names, selected, P) -> np.ndarray:
    sel = set(selected)
    row = np.array([("all" in sel) or (n in sel) for n in names], bool)
    return np.broadcast_to(row, (P, len(names))).copy()


# RoundOut fields come back in two arrays (one per dtype): a host transfer costs ~10 µs per array.
_FLOAT_FIELDS = ("margins", "note", "coverage", "readiness", "attended_delta")
_INT_FIELDS = ("tokens", "produced", "window_size")


def _publish(bus, small, stamp, rows_PxK):
    """The selected rows publish their latest provisional note (kept on device) with ``stamp``."""
    P, K = rows_PxK.shape
    bus = bus_lib.publish(bus, small.note.reshape(P, K, -1), stamp, rows_PxK)
    return bus, eng.reset_notes(small, rows_PxK.reshape(-1))


def _round_program(static: eng.RoundStatic, pub_rows, pub_stamp, trunk_p, side_p, cache, base_cache,
                   small, bus, *args):
    """One round in one dispatch: first the publish the host asked for after the previous round
    (rows all False = none: an exact no-op), then ``engine.round_fn``; the outputs packed by dtype."""
    bus, small = _publish(bus, small, pub_stamp, pub_rows)
    *args, key_data, cf = args
    cache, base_cache, small, key, out, window = eng.round_fn(static, trunk_p, side_p, cache, base_cache, small, bus,
                                                              *args, jax.random.wrap_key_data(key_data), cf)
    key = jax.random.key_data(key)
    cols = lambda x: x.reshape(x.shape[0], -1)
    floats = jnp.concatenate([cols(getattr(out, f).astype(jnp.float32)) for f in _FLOAT_FIELDS], axis=1)
    ints = jnp.concatenate([cols(getattr(out, f).astype(jnp.int32)) for f in _INT_FIELDS], axis=1)
    return cache, base_cache, small, key, bus, floats, ints, window


def _start_program(cfg: pdt.PDTConfig, blend: bool, max_len: int, slack: int, moe_impl: str, bus_slack: int,
                   trunk_p, side_p, ids, lengths, gate_g, alpha, plan_ids, seed_vectors):
    """Prefill every row, take the planner's plan (argmax per slot) unless one is given, and build
    the bus with its snapshot 0 (the plan's projection, or the seed vectors when given)."""
    sc, K = cfg.sidecar, cfg.K
    B = ids.shape[0]
    P = B // K
    gate = jnp.full((B,), gate_g, jnp.float32)
    cache, base_cache, small, planner = eng.prefill_fn(
        cfg, blend, max_len, slack, trunk_p, side_p, ids, lengths, gate, alpha,
        jnp.zeros((B, sc.planner_slots), jnp.int32), moe_impl=moe_impl)
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


def _unpack(floats: np.ndarray, ints: np.ndarray, tau: int, N: int, S: int) -> dict:
    f_sizes = {"margins": tau, "note": N, "coverage": S, "readiness": 1, "attended_delta": 1}
    i_sizes = {"tokens": tau, "produced": tau, "window_size": 1}
    out = {}
    for packed, sizes in ((floats, f_sizes), (ints, i_sizes)):
        at = 0
        for name, n in sizes.items():
            x = packed[:, at:at + n]
            out[name] = x[:, 0] if name in ("readiness", "attended_delta", "window_size") else x
            at += n
    out["produced"] = out["produced"].astype(bool)
    return {name: out[name] for name in ("tokens", "produced", "margins", "note", "coverage", "readiness",
                                         "window_size", "attended_delta")}


@functools.lru_cache(maxsize=16)
def _programs(static: eng.RoundStatic, alpha_blend: bool, max_len: int, slack: int, bus_slack: int = 1):
    """Compiled programs shared by every engine with the same static configuration, so a new batch
    of prompts with the same padded shape reuses them."""
    cfg = static.cfg
    return {
        "round": jax.jit(partial(_round_program, static), donate_argnums=(4, 5)),
        "reset_notes": jax.jit(eng.reset_notes),
        "start": jax.jit(partial(_start_program, cfg, alpha_blend, max_len, slack, static.moe_impl, bus_slack)),
        "publish": jax.jit(_publish),
        "rollback": jax.jit(lambda bus, stamp, m: bus_lib.rollback_to(bus, stamp, m)),
        "restore": jax.jit(eng.restore_rows),
        "seed_vectors": jax.jit(partial(eng.pooled_text_vectors, cfg=cfg)),
    }


class DeviceEngine:
    def __init__(self, cfg: pdt.PDTConfig, trunk_params, sidecar_params, opts: RuntimeOptions, num_prompts: int,
                 max_len: int, moe_impl: str = "auto"):
        self.cfg, self.opts = cfg, opts
        self.trunk_p, self.side_p = trunk_params, sidecar_params
        sc, K = cfg.sidecar, cfg.K
        self.P, self.K, self.B = num_prompts, K, num_prompts * K
        self.tau = sc.block_size
        self.lag = sc.lag if opts.lag is None else opts.lag
        names = sc.stream_names
        cf = opts.counterfactuals
        swap = tuple((sc.stream_index(a), sc.stream_index(b)) for a, b in cf.swap)
        for name in (*cf.ablate, *cf.shuffle, *cf.freeze, *(s for s, _ in cf.stale)):
            if name != "all":
                sc.stream_index(name)  # raises with the list of valid streams
        canonical = bool(cf.stale or cf.shuffle or cf.freeze)
        self.static = eng.RoundStatic(cfg, self.tau, int(opts.top_k), opts.alpha < 1.0, swap, moe_impl,
                                      canonical_window=canonical, greedy=not opts.temperature > 0,
                                      freeze=bool(cf.freeze), ablate=bool(cf.ablate), unroll=ROUND_UNROLL)
        stale = np.zeros((self.P, K), np.int32)
        for name, d in cf.stale:
            stale[:, [names.index(name)] if name != "all" else slice(None)] = int(d)
        self.cf_base = {"ablate": _stream_mask(names, cf.ablate, self.P), "stale": stale,
                        "shuffle": _stream_mask(names, cf.shuffle, self.P),
                        "freeze": _stream_mask(names, cf.freeze, self.P)}
        # What the traced round reads of the counterfactuals, on device once (not converted per round).
        used = (["ablate"] if cf.ablate else []) + (["stale", "shuffle"] if canonical else [])
        self._cf = jax.device_put({k: self.cf_base[k] for k in used})
        self.frozen = None
        if cf.freeze:  # a zero window of the right shape, read until the first round captures one
            P, S = self.P, sc.bus_capacity
            W = K + K * S
            z = lambda dt: jnp.zeros((P, K, W), dt)
            self._cf = dict(self._cf, freeze=jnp.zeros((self.P, K), bool), frozen=bus_lib.Window(
                notes=jnp.zeros((P, K, W, sc.notes_dim), jnp.float32), mask=z(bool), producer=z(jnp.int32),
                version=z(jnp.int32), round=z(jnp.int32)))
        # Scalars fixed for the engine's life, on device once.
        self._lag, self._alpha, self._temperature, self._top_p = jax.device_put(
            (np.int32(self.lag), np.float32(opts.alpha), np.float32(opts.temperature), np.float32(opts.top_p)))
        # Rollback reaches back one block (plus retries of it), or two when a round dispatched ahead
        # is reverted and then the block before it rolled back; the ring slack covers it.
        self.slack = 2 * self.tau + 1
        self.max_len = max_len
        progs = _programs(self.static, opts.alpha < 1.0, max_len, self.slack, opts.max_retries + 1)
        self._round, self._start_prog = progs["round"], progs["start"]
        self._reset_notes = progs["reset_notes"]
        # A publish waits for the next round (which applies it first, in the same dispatch) unless
        # something else reads the bus or the notes state before (``_flush``).
        self._pending = None
        self._no_publish = jax.device_put((np.zeros((self.P, K), bool), np.int32(0)))
        self._mark = None
        self._publish, self._rollback_bus = progs["publish"], progs["rollback"]
        self._restore = progs["restore"]
        self._seed_fn = progs["seed_vectors"]
        self.key = jax.random.key_data(jax.random.key(opts.seed))  # raw: a typed key output costs a Python unflatten

    # ---- calls ---------------------------------------------------------------------------------
    def start(self, ids: np.ndarray, lengths: np.ndarray, plan_ids: np.ndarray | None,
              seed_vectors: np.ndarray | None) -> dict:
        # One dispatch: prefill, the planner's plan (unless given), the bus and its snapshot 0.
        (self.cache, self.base_cache, self.small, planner, model_plan, self.item_ids, self.bus,
         snap) = self._start_prog(
            self.trunk_p, self.side_p, np.asarray(ids), np.asarray(lengths), np.float32(self.opts.gate_g),
            np.float32(self.opts.alpha), None if plan_ids is None else np.asarray(plan_ids),
            None if seed_vectors is None else np.asarray(seed_vectors, np.float32))
        source = "external"
        if plan_ids is None:  # the planner decided: argmax per slot (0 = null slot)
            plan_ids = np.asarray(model_plan)
            source = "model"
        if seed_vectors is not None:
            source = source + "+seed_texts"
        self._pending, self._start, self._mark = None, None, None
        return {"plan_ids": np.asarray(plan_ids), "planner_logits": np.asarray(planner), "plan_source": source,
                "snapshot0": np.asarray(snap)}

    def submit(self, window_round: int, active: np.ndarray, remaining: np.ndarray, gate: np.ndarray):
        """Dispatches one round and returns at once; calling the returned function waits for the
        round's results (a dict of numpy arrays). The host can work in between."""
        pending, self._pending = self._pending, None
        # Rollback returns rows to the state after the pending publish (which resets their notes).
        self._start = (self.small, None if pending is None else pending[0])
        pub = self._no_publish if pending is None else pending
        t0 = time.perf_counter()
        # Host values go in as numpy: jit's argument path converts them far faster than jnp calls.
        self.cache, self.base_cache, self.small, self.key, self.bus, floats, ints, window = self._round(
            *pub, self.trunk_p, self.side_p, self.cache, self.base_cache, self.small, self.bus, self.item_ids,
            np.int32(window_round), self._lag, np.asarray(active, bool), np.asarray(remaining, np.int32),
            np.asarray(gate, np.float32), self._alpha, self._temperature, self._top_p, self.key, self._cf)
        dispatch = time.perf_counter() - t0
        if self.frozen is None and self.static.freeze:
            self.frozen = window  # the first window ever read; the freeze streams keep reading it
            self._cf = dict(self._cf, frozen=window, freeze=jnp.asarray(self.cf_base["freeze"]))
        sc = self.cfg.sidecar

        def fetch() -> dict:
            t1 = time.perf_counter()
            result = _unpack(np.asarray(floats), np.asarray(ints), self.tau, sc.notes_dim, sc.planner_slots)
            result["_dispatch_s"] = dispatch
            result["_wait_s"] = time.perf_counter() - t1  # blocked on the device (plus the unpack)
            return result
        return fetch

    def round(self, window_round: int, active: np.ndarray, remaining: np.ndarray, gate: np.ndarray) -> dict:
        return self.submit(window_round, active, remaining, gate)()

    def publish(self, rows: np.ndarray, stamp: int) -> None:
        """The selected rows publish the note of their latest round (it never leaves the device)."""
        self._flush()
        self._pending = (np.asarray(rows, bool).reshape(self.P, self.K), np.int32(stamp))

    def _flush(self) -> None:
        if self._pending is not None:
            rows, stamp = self._pending
            self._pending = None
            self.bus, self.small = self._publish(self.bus, self.small, stamp, rows)

    def mark(self) -> None:
        """Remembers the current state; ``revert`` returns to it, undoing every publish and round
        since (the orchestrator dispatches a round ahead of its decisions and reverts when they
        differ from what it assumed). Costs nothing: the state is immutable arrays, and a cache
        only needs its lengths back (slots past a row's length are never read; the sliding ring's
        slack keeps what a later rollback needs)."""
        self._flush()
        self._mark = (self.small, self.bus, self.key, self._start, self._pending, self.frozen, self._cf)

    def revert(self) -> None:
        if self._mark is None:
            raise RuntimeError("DeviceEngine.revert() without a mark()")
        (self.small, self.bus, self.key, self._start, self._pending, self.frozen, self._cf), self._mark = self._mark, None
        # Copies: the next round donates the cache, which must not take the marked state's arrays.
        self.cache = self.cache.replace(length=jnp.copy(self.small.length))
        if self.base_cache is not None:
            self.base_cache = self.base_cache.replace(length=jnp.copy(self.small.base_length))

    def rollback(self, rows: np.ndarray, stamp: int) -> None:
        """Selected rows return to their state at the start of the last round; their notes with
        stamp ≥ ``stamp`` leave the bus."""
        self._flush()
        start, reset_rows = self._start
        if reset_rows is not None:
            start = self._reset_notes(start, reset_rows.reshape(-1))
            self._start = (start, None)
        r = np.asarray(rows, bool)
        self.small, self.cache, self.base_cache = self._restore(r, start, self.small, self.cache, self.base_cache)
        self.bus = self._rollback_bus(self.bus, np.int32(stamp), r.reshape(self.P, self.K))

    def bus_state(self) -> dict:
        self._flush()
        return jax.tree.map(np.asarray, {"notes": self.bus.notes, "round": self.bus.round, "valid": self.bus.valid,
                                         "count": self.bus.count})

    def memory_bytes(self) -> dict:
        self._flush()
        leaves = jax.tree.leaves((self.cache, self.base_cache, self.small, self.bus))
        estimate = int(sum(x.size * x.dtype.itemsize for x in leaves))
        stats = {}
        try:
            stats = jax.devices()[0].memory_stats() or {}
        except Exception:  # not every backend reports
            stats = {}
        return {"estimate_bytes": estimate, "device_bytes_in_use": int(stats.get("bytes_in_use", 0))}

    def seed_vectors(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Seed texts (rows of token ids) → notes-space vectors via the trunk's last-hidden mean."""
        return np.asarray(self._seed_fn(self.trunk_p, ids=jnp.asarray(ids), lengths=jnp.asarray(lengths)))
