"""``DeviceEngine``: the engine (``engine.Engine``) that runs on devices. It owns the device state
of a batch of P prompts × K streams on the model's mesh and serves the orchestrator's calls with the
compiled programs of ``program.py`` (one dispatch per call; shapes are fixed per (P, prompt bucket),
so rounds, retries and prompts of the same padded shape never recompile)."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from pdt_jax import bus as bus_lib
from pdt_jax import model as pdt
from pdt_jax import sharding
from pdt_jax.runtime import fields
from pdt_jax.runtime import program as prog
from pdt_jax.runtime.options import RuntimeOptions

# lax.scan unroll of a round's τ decode steps (on XLA:CPU, unroll 2 or 4 measured slower than 1).
ROUND_UNROLL = 1


def _stream_mask(names, selected, P) -> np.ndarray:
    sel = set(selected)
    row = np.array([("all" in sel) or (n in sel) for n in names], bool)
    return np.broadcast_to(row, (P, len(names))).copy()


class DeviceEngine:
    """``mesh``: default the model config's (``PDTConfig.make_mesh``). Parameters are placed on
    their shardings (a no-op when they were loaded onto them)."""

    def __init__(self, cfg: pdt.PDTConfig, trunk_params, sidecar_params, opts: RuntimeOptions, num_prompts: int,
                 max_len: int, mesh=None):
        opts = opts.resolve(cfg.sidecar)
        self.cfg, self.opts = cfg, opts
        self.mesh = mesh if mesh is not None else cfg.make_mesh()
        self.rules = cfg.rules
        sc, K = cfg.sidecar, cfg.K
        self.P, self.K, self.B = num_prompts, K, num_prompts * K
        groups = self.rules.size("batch", self.mesh)
        if self.P % groups:
            raise sharding.ShardingError(f"{self.P} prompts do not divide over the {groups} row groups of the mesh "
                                         f"{dict(self.mesh.shape)} (rule batch={self.rules.batch}); pad the prompts "
                                         f"(runtime.run does)")
        self.tau = sc.block_size
        self.lag = opts.lag
        names = sc.stream_names
        cf = opts.counterfactuals
        swap = tuple((sc.stream_index(a), sc.stream_index(b)) for a, b in cf.swap)
        canonical = bool(cf.stale or cf.shuffle or cf.freeze)
        self.static = prog.RoundStatic(cfg, self.tau, int(opts.top_k), opts.alpha < 1.0, swap, cfg.moe_impl(self.mesh),
                                       canonical_window=canonical, greedy=not opts.temperature > 0,
                                       freeze=bool(cf.freeze), ablate=bool(cf.ablate),
                                       ablate_keep_seed=bool(cf.ablate_keep_seed), unroll=ROUND_UNROLL)
        stale = np.zeros((self.P, K), np.int32)
        for name, d in cf.stale:
            stale[:, [names.index(name)] if name != "all" else slice(None)] = int(d)
        self.cf_base = {"ablate": _stream_mask(names, cf.ablate, self.P), "stale": stale,
                        "shuffle": _stream_mask(names, cf.shuffle, self.P),
                        "freeze": _stream_mask(names, cf.freeze, self.P)}
        # Rollback reaches back one block (plus retries of it), or two when a round dispatched ahead
        # is reverted and then the block before it rolled back; the ring slack covers it.
        self.slack = 2 * self.tau + 1
        self.max_len = max_len
        self.bus_slack = opts.max_retries + 1
        trunk_sh, side_sh = prog.param_shardings(cfg, self.mesh, self.rules)
        self.trunk_p = sharding.shard(trunk_params, trunk_sh)
        self.side_p = sharding.shard(sidecar_params, side_sh)
        self._progs = None
        self.key = None

    def _cf_inputs(self):
        """What the traced round reads of the counterfactuals (on device once, not per round)."""
        cf = self.opts.counterfactuals
        used = {}
        if cf.ablate:
            used["ablate"] = self.cf_base["ablate"]
        if self.static.canonical_window:
            used["stale"], used["shuffle"] = self.cf_base["stale"], self.cf_base["shuffle"]
        if cf.freeze:  # a zero window of the right shape, read until the first round captures one
            P, K, S = self.P, self.K, self.cfg.sidecar.bus_capacity
            W = K + K * S
            z = lambda dt: np.zeros((P, K, W), dt)
            used["freeze"] = np.zeros((P, K), bool)
            used["frozen"] = bus_lib.Window(notes=np.zeros((P, K, W, self.cfg.sidecar.notes_dim), np.float32),
                                            mask=z(bool), producer=z(np.int32), version=z(np.int32),
                                            round=z(np.int32))
        key = []
        for name, v in sorted(used.items()):
            if name == "frozen":
                key.append((name, tuple((f, getattr(v, f).shape, getattr(v, f).dtype.name)
                                        for f in ("notes", "mask", "producer", "version", "round"))))
            else:
                key.append((name, (v.shape, v.dtype.name)))
        return used, tuple(key)

    # ---- calls ---------------------------------------------------------------------------------
    def start(self, ids: np.ndarray, lengths: np.ndarray, plan_ids: np.ndarray | None,
              seed_vectors: np.ndarray | None) -> dict:
        """Prefill, the planner's plan (unless given), the bus and its snapshot 0: one dispatch."""
        ids = np.asarray(ids, np.int32)
        cf, cf_key = self._cf_inputs()
        self._progs = p = prog.programs(self.static, self.mesh, self.rules, self.P, ids.shape[1], self.max_len,
                                        self.slack, self.bus_slack, cf_key)
        sh = p.shardings
        rep = sh["replicated"]
        self._cf = jax.device_put(cf, {k: p.round_cf_shardings[k] for k in cf})
        # Scalars fixed for the engine's life, on device once.
        self._lag, self._alpha, self._temperature, self._top_p = jax.device_put(
            (np.int32(self.lag), np.float32(self.opts.alpha), np.float32(self.opts.temperature),
             np.float32(self.opts.top_p)), rep)
        self._no_publish = jax.device_put((np.zeros((self.P, self.K), bool), np.int32(0)), (sh["prompts"], rep))
        # raw key data: a typed key output costs a Python unflatten per round
        self.key = jax.device_put(jax.random.key_data(jax.random.key(self.opts.seed)), rep)
        (self.cache, self.base_cache, self.small, planner, model_plan, self.item_ids, self.bus, snap) = p.start(
            self.trunk_p, self.side_p, ids, np.asarray(lengths, np.int32), np.float32(self.opts.gate_g),
            np.float32(self.opts.alpha), None if plan_ids is None else np.asarray(plan_ids, np.int32),
            None if seed_vectors is None else np.asarray(seed_vectors, np.float32))
        source = "external"
        if plan_ids is None:  # the planner decided: argmax per slot (0 = null slot)
            plan_ids = np.asarray(model_plan)
            source = "model"
        if seed_vectors is not None:
            source = source + "+seed_texts"
        self._pending, self._start, self._mark, self.frozen = None, None, None, None
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
        self.cache, self.base_cache, self.small, self.key, self.bus, floats, ints, window = self._progs.round(
            *pub, self.trunk_p, self.side_p, self.cache, self.base_cache, self.small, self.bus, self.item_ids,
            np.int32(window_round), self._lag, np.asarray(active, bool), np.asarray(remaining, np.int32),
            np.asarray(gate, np.float32), self._alpha, self._temperature, self._top_p, self.key, self._cf)
        dispatch = time.perf_counter() - t0
        if self.frozen is None and self.static.freeze:
            self.frozen = window  # the first window ever read; the freeze streams keep reading it
            freeze = jax.device_put(self.cf_base["freeze"], self._progs.round_cf_shardings["freeze"])
            self._cf = dict(self._cf, frozen=window, freeze=freeze)
        sc = self.cfg.sidecar

        def fetch() -> dict:
            t1 = time.perf_counter()
            result = fields.unpack(np.asarray(floats), np.asarray(ints), self.tau, sc.notes_dim, sc.planner_slots)
            result["_dispatch_s"] = dispatch
            result["_wait_s"] = time.perf_counter() - t1  # blocked on the device (plus the unpack)
            return result
        return fetch

    def publish(self, rows: np.ndarray, stamp: int) -> None:
        """The selected rows publish the note of their latest round (it never leaves the device).
        The publish rides in the next round's dispatch unless something reads the bus before."""
        self._flush()
        self._pending = (np.asarray(rows, bool).reshape(self.P, self.K), np.int32(stamp))

    def _flush(self) -> None:
        if self._pending is not None:
            rows, stamp = self._pending
            self._pending = None
            self.bus, self.small = self._progs.publish(self.bus, self.small, stamp, rows)

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
        rows = self._progs.shardings["rows"]
        self.cache = self.cache.replace(length=jax.device_put(jnp.copy(self.small.length), rows))
        if self.base_cache is not None:
            self.base_cache = self.base_cache.replace(length=jax.device_put(jnp.copy(self.small.base_length), rows))

    def rollback(self, rows: np.ndarray, stamp: int) -> None:
        """Selected rows return to their state at the start of the last round; their notes with
        stamp ≥ ``stamp`` leave the bus."""
        self._flush()
        start, reset_rows = self._start
        if reset_rows is not None:
            start = self._progs.reset_notes(start, reset_rows.reshape(-1))
            self._start = (start, None)
        self.small, self.cache, self.base_cache, self.bus = self._progs.rollback(
            np.asarray(rows, bool), start, self.small, self.cache, self.base_cache, self.bus, np.int32(stamp))

    def bus_state(self) -> dict:
        self._flush()
        return jax.tree.map(np.asarray, {"notes": self.bus.notes, "round": self.bus.round, "valid": self.bus.valid,
                                         "count": self.bus.count})

    def memory_bytes(self) -> dict:
        """Device bytes of the run's state (caches, bus, per-row state) on the most loaded device,
        and what the first device reports in use (where the backend reports it)."""
        self._flush()
        leaves = jax.tree.leaves((self.cache, self.base_cache, self.small, self.bus))
        per_device = sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in leaves)
        try:
            stats = self.mesh.devices.flat[0].memory_stats() or {}
        except Exception:  # not every backend reports
            stats = {}
        return {"estimate_bytes": int(per_device), "device_bytes_in_use": int(stats.get("bytes_in_use", 0))}

    def seed_vectors(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Seed texts (rows of token ids) → notes-space vectors via the trunk's last-hidden mean."""
        seed = prog.seed_program(self.cfg, self.mesh, self.rules)
        return np.asarray(seed(self.trunk_p, np.asarray(ids, np.int32), np.asarray(lengths, np.int32)))
