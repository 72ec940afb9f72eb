"""``DeviceEngine``: owns the device state of a batch of P prompts × K streams and exposes the
handful of calls the orchestrator makes (start, round, publish, rollback). Every call is one
compiled program; shapes are fixed per (P, prompt bucket), so rounds, retries and prompts of the
same padded shape never recompile."""
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


def _stream_mask(names, selected, P) -> np.ndarray:
    sel = set(selected)
    row = np.array([("all" in sel) or (n in sel) for n in names], bool)
    return np.broadcast_to(row, (P, len(names))).copy()


@functools.lru_cache(maxsize=16)
def _programs(static: eng.RoundStatic, alpha_blend: bool, max_len: int, slack: int):
    """Compiled programs shared by every engine with the same static configuration, so a new batch
    of prompts with the same padded shape reuses them."""
    cfg = static.cfg
    return {
        "round": jax.jit(partial(eng.round_fn, static), donate_argnums=(2, 3)),
        "prefill": jax.jit(partial(eng.prefill_fn, cfg, alpha_blend, max_len, slack, moe_impl=static.moe_impl)),
        "publish": jax.jit(lambda bus, small, notes, stamp, rows: (
            bus_lib.publish(bus, notes, stamp, rows.reshape(bus.count.shape)), eng.reset_notes(small, rows))),
        "rollback": jax.jit(lambda bus, stamp, m: bus_lib.rollback_to(bus, stamp, m)),
        "restore": jax.jit(eng.restore_rows),
        "snapshot": jax.jit(heads.plan_snapshot),
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
        self.static = eng.RoundStatic(cfg, self.tau, int(opts.top_k), opts.alpha < 1.0, swap, moe_impl,
                                      canonical_window=bool(cf.stale or cf.shuffle or cf.freeze))
        stale = np.zeros((self.P, K), np.int32)
        for name, d in cf.stale:
            stale[:, [names.index(name)] if name != "all" else slice(None)] = int(d)
        self.cf_base = {"ablate": _stream_mask(names, cf.ablate, self.P), "stale": stale,
                        "shuffle": _stream_mask(names, cf.shuffle, self.P),
                        "freeze": _stream_mask(names, cf.freeze, self.P)}
        self.frozen = None
        self._no_window = None  # a zero window of the right shape, passed until a freeze captures one
        # Rollback reaches back one block (plus retries of it); the ring slack covers it.
        self.slack = self.tau + 1
        self.max_len = max_len
        progs = _programs(self.static, opts.alpha < 1.0, max_len, self.slack)
        self._round, self._prefill = progs["round"], progs["prefill"]
        self._publish, self._rollback_bus = progs["publish"], progs["rollback"]
        self._restore = progs["restore"]
        self._snapshot_fn, self._seed_fn = progs["snapshot"], progs["seed_vectors"]
        self.key = jax.random.key(opts.seed)

    # ---- calls ---------------------------------------------------------------------------------
    def start(self, ids: np.ndarray, lengths: np.ndarray, plan_ids: np.ndarray | None,
              seed_vectors: np.ndarray | None) -> dict:
        sc = self.cfg.sidecar
        gate = jnp.full((self.B,), self.opts.gate_g, jnp.float32)
        item_ids = np.zeros((self.P, sc.planner_slots), np.int32) if plan_ids is None else plan_ids
        self.cache, self.base_cache, self.small, planner = self._prefill(
            self.trunk_p, self.side_p, jnp.asarray(ids), jnp.asarray(lengths), gate, jnp.float32(self.opts.alpha),
            jnp.asarray(np.repeat(item_ids, self.K, axis=0)))
        source = "external"
        if plan_ids is None:  # the planner decides: argmax per slot (0 = null slot)
            plan_ids = np.asarray(jnp.argmax(planner, axis=-1)).astype(np.int32)
            source = "model"
        self.item_ids = jnp.asarray(np.repeat(plan_ids, self.K, axis=0))
        bus = bus_lib.init_bus(self.P, self.K, sc.bus_capacity, sc.notes_dim, slack=self.opts.max_retries + 1)
        snap = self._snapshot_fn(self.side_p["plan_embed"], self.side_p["plan_to_notes"], jnp.asarray(plan_ids))
        if seed_vectors is not None:
            snap = jnp.asarray(seed_vectors, jnp.float32)
            source = source + "+seed_texts"
        self.bus = bus_lib.seed_snapshot0(bus, snap)
        return {"plan_ids": np.asarray(plan_ids), "planner_logits": np.asarray(planner), "plan_source": source,
                "snapshot0": np.asarray(snap)}

    def round(self, window_round: int, active: np.ndarray, remaining: np.ndarray, gate: np.ndarray) -> dict:
        self.start_small = self.small
        cf = dict(self.cf_base)
        cf["freeze"] = cf["freeze"] & (self.frozen is not None)
        if self.frozen is None and self._no_window is None:
            P, K = self.P, self.K
            S = self.cfg.sidecar.bus_capacity
            W = K + K * S if self.static.canonical_window else K + K * (S + self.opts.max_retries + 1)
            z = lambda dt: np.zeros((P, K, W), dt)
            self._no_window = bus_lib.Window(notes=np.zeros((P, K, W, self.cfg.sidecar.notes_dim), self.bus.notes.dtype),
                                             mask=z(bool), producer=z(np.int32), version=z(np.int32), round=z(np.int32))
        cf["frozen"] = self.frozen if self.frozen is not None else self._no_window
        t0 = time.perf_counter()
        # Host values go in as numpy: jit's argument path converts them far faster than jnp calls.
        self.cache, self.base_cache, self.small, self.key, out, window = self._round(
            self.trunk_p, self.side_p, self.cache, self.base_cache, self.small, self.bus, self.item_ids,
            np.int32(window_round), np.int32(self.lag), np.asarray(active, bool), np.asarray(remaining, np.int32),
            np.asarray(gate, np.float32), np.float32(self.opts.alpha), np.float32(self.opts.temperature),
            np.float32(self.opts.top_p), self.key, cf)
        dispatch = time.perf_counter() - t0
        if self.frozen is None:
            self.frozen = window
        result = dict(vars(jax.device_get(out)))  # one host transfer per round
        result["_dispatch_s"] = dispatch
        result["_total_s"] = time.perf_counter() - t0
        return result

    def publish(self, rows: np.ndarray, notes: np.ndarray, stamp: int) -> None:
        rows = np.asarray(rows, bool)
        notes = np.asarray(notes).reshape(self.P, self.K, -1)
        self.bus, self.small = self._publish(self.bus, self.small, notes, np.int32(stamp), rows)

    def rollback(self, rows: np.ndarray, stamp: int) -> None:
        """Selected rows return to their state at the start of the last round; their notes with
        stamp ≥ ``stamp`` leave the bus."""
        r = np.asarray(rows, bool)
        self.small, self.cache, self.base_cache = self._restore(r, self.start_small, self.small, self.cache, self.base_cache)
        self.bus = self._rollback_bus(self.bus, np.int32(stamp), r.reshape(self.P, self.K))

    def bus_state(self) -> dict:
        return jax.tree.map(np.asarray, {"notes": self.bus.notes, "round": self.bus.round, "valid": self.bus.valid,
                                         "count": self.bus.count})

    def memory_bytes(self) -> dict:
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
