"""The host side of a PDT run: rounds, commit / selective rollback, cadence, gate annealing, EOS,
telemetry. It talks to an engine (``engine.Engine``) and every decision depends only on what the
engine returns, the (resolved) options and a seeded generator — which is what makes replay exact.

Per round v (ARCHITECTURE.md data flow "Infer"), three steps, each its own method:
  1. ``_decide``: cadence picks the streams whose note is published (stamp v + 1); streams with
     sigmoid(r) < γ fail the readiness gate.
  2. ``_retry``: a failed stream is rolled back — its tokens discarded, its cache length, logits and
     accumulators back at the block start, its note off the bus — and retries the block reading the
     window round v + 1 would read (``window_round`` v + 1, horizon v + 1 − Δ): the lag holds for
     retries too, and training's retry pairs (``train/forward.py``, losses ``retry``) teach the
     readiness head this very question — the block again under that window, without the stream's
     own rolled-back note (``bus.retry_window``). With Δ = 0 that window holds what the
     siblings published at the end of the failed block (the paper's "fresher shared context"); with
     Δ ≥ 1 it adds the notes published one round earlier. A retry that would
     repeat the attempt exactly — greedy decoding from the same state, reading the same notes —
     is not run: the block is committed, recorded as forced with reason ``retry_identical`` (only
     when every failing stream of the prompt is in that case: ``_would_repeat``). After
     ``max_retries`` the block is force-committed with reason ``max_retries``.
  3. ``_record``: the round's token log, blocks, gate trace and commit events, written while the
     device runs round v + 1 (dispatched as soon as round v's decisions are made).
Everything left is committed; a stream that wrote EOS (or reached max_new_tokens) stops, the others
go on. Gate annealing lowers g for streams whose block was volatile and lets it recover.

Run-ahead (``opts.run_ahead``): so that the device never waits for the host's decisions, round
v + 1 is dispatched *before* round v's results are fetched, on the assumption that round v goes as
planned — every active row writes its tokens, none ends, none fails, the gate follows its stable
course and the (deterministic) cadence publishes the notes it predicts. When the decisions differ,
the engine reverts to the state it marked before that dispatch, and the run continues exactly as
without run-ahead (a test compares both). It is not attempted after a round with rollbacks (a
likely miss), nor with stochastic or adaptive cadence. The run record counts the rounds dispatched
ahead, accepted and reverted.
"""
from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np

from pdt_jax.runtime.cadence import CadencePolicy
from pdt_jax.runtime.options import RuntimeOptions

MAX_RETRIES, RETRY_IDENTICAL = "max_retries", "retry_identical"


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


class BusMirror:
    """The host's account of which notes are on the bus (the engine's publish and rollback calls
    replayed on stamps alone): per (prompt, producer), the stamps of its notes in version order; the
    newest ``capacity`` are live. It tells whether a retry would read the same window as its attempt."""

    def __init__(self, P: int, K: int, capacity: int):
        self.K, self.capacity = K, capacity
        self.stamps = [[[] for _ in range(K)] for _ in range(P)]

    def publish(self, rows_B, stamp: int) -> None:
        for b in np.nonzero(rows_B)[0]:
            self.stamps[b // self.K][b % self.K].append(stamp)

    def rollback(self, rows_B, stamp: int) -> None:
        for b in np.nonzero(rows_B)[0]:
            kept = self.stamps[b // self.K][b % self.K]
            while kept and kept[-1] >= stamp:
                kept.pop()

    def window(self, p: int, horizon: int) -> frozenset:
        """The published notes prompt p's consumers see at ``horizon``: (producer, version, stamp)."""
        out = set()
        for k, stamps in enumerate(self.stamps[p]):
            first = max(0, len(stamps) - self.capacity)
            out.update((k, first + i + 1, s) for i, s in enumerate(stamps[first:]) if s <= horizon)
        return frozenset(out)

    def copy(self) -> "BusMirror":
        other = BusMirror.__new__(BusMirror)
        other.K, other.capacity = self.K, self.capacity
        other.stamps = [[list(s) for s in per_prompt] for per_prompt in self.stamps]
        return other


@dataclasses.dataclass
class _Ahead:
    """A round dispatched before the previous round was decided, and what it assumed."""
    fetch: object
    active: np.ndarray
    remaining: np.ndarray
    gate: np.ndarray
    emit: np.ndarray   # the previous round's publishes it applied first


@dataclasses.dataclass
class _Round:
    """What the host decided about one round."""
    v: int
    active: np.ndarray            # [B] rows that decoded this round
    attempt: dict                 # row → the results of its last attempt
    emit: np.ndarray              # [B] cadence: the row's note is published
    retries: np.ndarray           # [B] rollbacks of the row's block
    forced: dict                  # row → why its block was committed below γ
    waits: list                   # seconds blocked on the device, attempt and retries


class Orchestrator:
    def __init__(self, engine, stream_names, opts: RuntimeOptions, block_size: int, eos_ids, decode=None,
                 bus_capacity: int = 4):
        if opts.lag is None or opts.readiness_threshold is None:
            raise ValueError("Orchestrator needs resolved options (RuntimeOptions.resolve): Δ and γ unset")
        self.engine, self.opts = engine, opts
        self.lag, self.gamma = opts.lag, opts.readiness_threshold
        self.names = list(stream_names)
        self.K = len(self.names)
        self.tau = block_size
        self.capacity = bus_capacity
        self.eos = set(int(e) for e in eos_ids)
        self.decode = decode or (lambda ids: " ".join(map(str, ids)))
        self.token_text = functools.lru_cache(maxsize=65536)(lambda t: self.decode([t]))
        self.cadence = CadencePolicy(opts.cadence, self.names, block_size, opts.seed)

    # ---- engine calls that the bus mirror follows ---------------------------------------------------
    def _submit_rows(self, window_round, active, remaining, gate):
        fetch = self.engine.submit(window_round, active, remaining, gate)
        if self.opts.greedy:  # what each row read (a sampled retry differs anyway)
            for b in np.nonzero(active)[0]:
                self._windows[b] = self._window_of(b, window_round - self.lag)
        self._submitted += 1
        return fetch

    def _publish(self, rows, v):
        """The selected rows publish the note of their latest round, stamped v + 1."""
        if rows.any():
            self.engine.publish(rows, v + 1)
            self.mirror.publish(rows, v + 1)

    def _rollback(self, rows, stamp):
        self.engine.rollback(rows, stamp)
        self.mirror.rollback(rows, stamp)

    def _mark(self):
        self.engine.mark()
        self._marked = (self.mirror.copy(), dict(self._windows), self._submitted)

    def _revert(self):
        self.engine.revert()
        self.mirror, self._windows, self._submitted = self._marked

    def _window_of(self, b, horizon, mirror=None):
        """What row b reads at ``horizon``, as far as it decides the decoding: None when unknown
        (a shuffled window is permuted with the round's key)."""
        cf, stream = self.opts.counterfactuals, self.names[b % self.K]
        if cf.touches("ablate", stream):
            return "ablated"
        if cf.touches("freeze", stream) and self._submitted:  # every round after the first reads the first's
            return "frozen"
        if cf.touches("shuffle", stream):
            return None
        return (mirror or self.mirror).window(b // self.K, horizon)

    # ---- the run ----------------------------------------------------------------------------------
    def run(self, ids, lengths, plan_ids=None, seed_vectors=None, on_round=None) -> dict:
        """ids [P·K, T] prompt rows (stream-minor). Returns the run record (per-row results and
        event lists); ``manifest.build`` turns it into one manifest per prompt. ``on_round(entries)``
        receives each round's committed token-log entries as soon as the round is decided."""
        opts = self.opts
        t_start = time.perf_counter()
        start = self.engine.start(ids, lengths, plan_ids, seed_vectors)
        B = ids.shape[0]
        self.mirror = BusMirror(B // self.K, self.K, self.capacity)
        self._windows, self._submitted = {}, 0
        bootstrap_s = time.perf_counter() - t_start
        st = {"finished": np.zeros(B, bool), "generated": np.zeros(B, np.int64), "since_note": np.zeros(B, np.int64),
              "gate": np.full(B, opts.gate_g, np.float64), "cooldown": np.zeros(B, np.int64)}
        rec = {"rollbacks": [], "stride_commit_events": [], "cadence_events": [], "gate_trace": [],
               "token_log": [], "stride_durations": [], "sync_overhead": [], "memory": [],
               "coverage": [None] * B, "notes_versions": np.zeros(B, np.int64),
               "committed": [[] for _ in range(B)], "margins": [[] for _ in range(B)], "blocks": [[] for _ in range(B)]}
        ahead_stats = {"dispatched": 0, "accepted": 0, "reverted": 0}
        run_ahead = opts.run_ahead and self.cadence.predictable
        calm = True  # the last round rolled nothing back: worth dispatching the next one ahead
        v = 0
        # Round v + 1 is dispatched as soon as round v's decisions are made (or, with run-ahead,
        # before round v is fetched), before round v's records are written, so that host
        # bookkeeping overlaps the device's next round.
        nxt = self._submit(v, st)
        while nxt is not None:
            fetch, active, remaining, t0 = nxt
            ahead = None
            if run_ahead and calm:
                ahead = self._dispatch_ahead(v, active, remaining, st)
                ahead_stats["dispatched"] += ahead is not None
            out = fetch()
            t_fetched = time.perf_counter()
            emit, failing = self._decide(v, out, active, st, rec["cadence_events"])
            if ahead is not None and (failing.any() or not np.array_equal(emit, ahead.emit)):
                self._revert()
                ahead_stats["reverted"] += 1
                ahead = None
            if ahead is None:  # (else the round dispatched ahead has published exactly these)
                self._publish(active & emit, v)
            rnd = self._retry(v, out, active, remaining, emit, failing, st, rec["rollbacks"])
            calm = not (rnd.retries.any() or rnd.forced)
            toks, readiness = self._advance(rnd, st)
            if ahead is not None:
                next_active, next_remaining = self._next_inputs(st)
                if (np.array_equal(next_active, ahead.active) and np.array_equal(next_remaining, ahead.remaining)
                        and np.array_equal(st["gate"], ahead.gate)):
                    ahead_stats["accepted"] += 1
                else:
                    self._revert()
                    ahead_stats["reverted"] += 1
                    ahead = None
                    self._publish(active & emit, v)
            elapsed = time.perf_counter() - t0
            if opts.memory_report:  # the state after round v (a round dispatched ahead may be running)
                rec["memory"].append({"stride_index": v, "rss_bytes": _rss(), **self.engine.memory_bytes()})
            if ahead is not None:  # it becomes the current round now that its inputs are confirmed
                nxt = (ahead.fetch, ahead.active, ahead.remaining, t_fetched)
            else:
                nxt = self._submit(v + 1, st)
            # The records of round v, while the device runs round v + 1.
            entries = self._record(rnd, toks, readiness, elapsed, st, rec)
            if on_round is not None:
                on_round(entries)
            v += 1
        rec.update(start=start, finished=st["finished"], generated=st["generated"], gate=st["gate"], rounds=v,
                   bootstrap_s=bootstrap_s, run_ahead=ahead_stats, total_s=time.perf_counter() - t_start)
        return rec

    # ---- 1. decide ----------------------------------------------------------------------------------
    def _decide(self, v, out, active, st, events):
        """(emit [B], failing [B]): cadence's publishes, and the rows below the readiness gate."""
        emit = np.zeros(len(active), bool)
        for b in np.nonzero(active)[0]:
            produced = int(out["produced"][b].sum())
            d = self.cadence.decide(self.names[b % self.K], int(st["since_note"][b]) + produced, produced,
                                    float(_sigmoid(out["readiness"][b])))
            emit[b] = d["emitted"]
            events.append(dict(d, stream=self.names[b % self.K], prompt_index=int(b // self.K), stride_index=v))
        return emit, active & (_sigmoid(out["readiness"]) < self.gamma)

    # ---- 2. retry -----------------------------------------------------------------------------------
    def _retry(self, v, out, active, remaining, emit, failing, st, rollbacks) -> _Round:
        rnd = _Round(v=v, active=active, attempt={b: out for b in np.nonzero(active)[0]}, emit=emit,
                     retries=np.zeros(len(active), np.int64), forced={}, waits=[out["_wait_s"]])
        pending = failing
        while pending.any():
            can_retry = pending & (rnd.retries < self.opts.max_retries)
            rnd.forced.update((b, MAX_RETRIES) for b in np.nonzero(pending & ~can_retry)[0])
            same = self._would_repeat(can_retry, v)
            rnd.forced.update((b, RETRY_IDENTICAL) for b in np.nonzero(same)[0])
            can_retry &= ~same
            if not can_retry.any():
                break
            for b in np.nonzero(can_retry)[0]:
                o = rnd.attempt[b]
                removed = o["tokens"][b][o["produced"][b]].tolist()
                rollbacks.append({
                    "stream": self.names[b % self.K], "prompt_index": int(b // self.K), "stride_index": v,
                    "attempt": int(rnd.retries[b]), "tokens_removed": len(removed), "removed_token_ids": removed,
                    "removed_text": self.decode(removed), "remaining_tokens": int(st["generated"][b]),
                    "readiness": float(_sigmoid(o["readiness"][b])), "note_removed": bool(emit[b])})
            self._rollback(can_retry, v + 1)
            rnd.retries += can_retry
            # The fresher window: the one round v + 1 reads (the lag holds: module docstring).
            out_r = self._submit_rows(v + 1, can_retry, remaining, st["gate"].copy())()
            rnd.waits.append(out_r["_wait_s"])
            for b in np.nonzero(can_retry)[0]:
                rnd.attempt[b] = out_r
            self._publish(can_retry & emit, v)
            pending = can_retry & (_sigmoid(out_r["readiness"]) < self.gamma)
        return rnd

    def _would_repeat(self, rows, v) -> np.ndarray:
        """[B]: rows whose retry would decode exactly what their last attempt decoded — greedy, from
        the same restored state, reading the same notes with every row in ``rows`` rolled back —
        and may be committed instead. A prompt's rows are skipped all together or not at all: a row
        left on the bus keeps its note of the block, which its retrying siblings would then read
        (a recomputed retry never sees it), so skipping part of a prompt would change the others."""
        same = np.zeros(len(rows), bool)
        if not self.opts.greedy or not rows.any():
            return same
        after = self.mirror.copy()
        after.rollback(rows, v + 1)
        for b in np.nonzero(rows)[0]:
            seen = self._windows.get(b)
            same[b] = seen is not None and self._window_of(b, v + 1 - self.lag, after) == seen
        per_prompt = (same | ~rows).reshape(-1, self.K).all(axis=1)      # every retrying row of the prompt
        return same & np.repeat(per_prompt, self.K)

    # ---- 3. advance and record ----------------------------------------------------------------------
    def _advance(self, rnd: _Round, st):
        """The state the next round depends on: tokens, EOS, counters, the annealed gate."""
        toks, readiness = {}, {}
        for b in np.nonzero(rnd.active)[0]:
            o = rnd.attempt[b]
            toks[b] = o["tokens"][b][o["produced"][b]].tolist()
            st["generated"][b] += len(toks[b])
            st["since_note"][b] = 0 if rnd.emit[b] else st["since_note"][b] + len(toks[b])
            if any(t in self.eos for t in toks[b]):
                st["finished"][b] = True
            readiness[b] = float(_sigmoid(o["readiness"][b]))
            self._anneal(b, st["gate"], st["cooldown"], readiness[b], volatile=bool(rnd.retries[b] or b in rnd.forced))
        return toks, readiness

    def _record(self, rnd: _Round, toks, readiness, elapsed, st, rec) -> list:
        v, K, names = rnd.v, self.K, self.names
        if self.opts.sync_profile:
            rec["sync_overhead"].append(float(sum(rnd.waits)))
        rows = np.nonzero(rnd.active)[0].tolist()
        round_tokens = max(1, sum(len(toks[b]) for b in rows))
        log_start = len(rec["token_log"])
        for b in rows:
            o = rnd.attempt[b]
            tok_margins = o["margins"][b][o["produced"][b]].tolist()
            rec["committed"][b] += toks[b]
            rec["margins"][b] += tok_margins
            n_toks = len(toks[b])
            rec["notes_versions"][b] += int(rnd.emit[b])  # a rolled-back note was removed and re-written
            rec["coverage"][b] = o["coverage"][b]
            block = {"stride_id": v, "committed": b not in rnd.forced, "forced": b in rnd.forced,
                     "retries": int(rnd.retries[b]), "token_ids": toks[b]}
            if b in rnd.forced:
                block["forced_reason"] = rnd.forced[b]
            rec["blocks"][b].append(block)
            stream, prompt_index = names[b % K], b // K
            rec["gate_trace"].append({"stride_index": v, "stream": stream, "prompt_index": prompt_index,
                                      "value": float(st["gate"][b])})
            # Per-token records are expanded from this compact row only when a manifest or the
            # JSONL stream asks (``token_records``): decoding itself never needs them.
            rec["token_log"].append((v, prompt_index, stream, int(st["generated"][b]) - n_toks, toks[b], tok_margins,
                                     readiness[b], bool(rnd.emit[b]), bool(rnd.retries[b]), bool(st["finished"][b]),
                                     elapsed / round_tokens))
        for p in range(len(rnd.active) // K):
            prows = [b for b in range(p * K, p * K + K) if rnd.active[b]]
            if not prows:  # every stream of this prompt has finished
                continue
            rec["stride_commit_events"].append({
                "prompt_index": p, "stride_id": v, "commit_id": f"stride-{v:04d}-commit-{p:04d}",
                "committed": all(not rnd.retries[b] and b not in rnd.forced for b in prows),
                "min_readiness": min(readiness[b] for b in prows),
                "readiness_by_stream": {names[b % K]: readiness[b] for b in prows},
                "rolled_back_streams": [names[b % K] for b in prows if rnd.retries[b]],
                "forced_commit_streams": [names[b % K] for b in prows if b in rnd.forced],
                "forced_commit_reasons": {names[b % K]: rnd.forced[b] for b in prows if b in rnd.forced}})
        rec["stride_durations"].append(elapsed)
        return rec["token_log"][log_start:]

    # ---- dispatch ---------------------------------------------------------------------------------
    def _next_inputs(self, st):
        """(active, remaining) of the next round: the rows still decoding, and their token budget."""
        active = ~st["finished"] & (st["generated"] < self.opts.max_new_tokens)
        remaining = np.minimum(self.tau, self.opts.max_new_tokens - st["generated"]).astype(np.int32)
        return active, remaining

    def _submit(self, v, st):
        """Dispatches round v for every row still decoding; None when none is left."""
        active, remaining = self._next_inputs(st)
        if not active.any():
            return None
        t0 = time.perf_counter()
        return self._submit_rows(v, active, remaining, st["gate"].copy()), active, remaining, t0

    def _dispatch_ahead(self, v, active, remaining, st):
        """Marks the engine's state and dispatches round v + 1 as it will be if round v goes as
        planned (module docstring); None when that round would have no active row."""
        produced = np.where(active, remaining, 0)
        after = dict(st, generated=st["generated"] + produced)
        next_active, next_remaining = self._next_inputs(after)
        if not next_active.any():
            return None
        emit = np.array([bool(a) and self.cadence.predict(self.names[b % self.K],
                                                          int(st["since_note"][b] + produced[b]))
                         for b, a in enumerate(active)])
        next_gate = st["gate"].copy()
        cool = st["cooldown"].copy()
        for b in np.nonzero(active)[0]:
            self._anneal(b, next_gate, cool, np.inf, volatile=False)
        self._mark()
        self._publish(emit, v)
        fetch = self._submit_rows(v + 1, next_active, next_remaining, next_gate.copy())
        return _Ahead(fetch, next_active, next_remaining, next_gate, emit)

    def _anneal(self, b, gate, cooldown, readiness, volatile):
        ga = self.opts.gate_annealing
        if not ga.enabled:
            return
        g0 = self.opts.gate_g
        if volatile or readiness < self.gamma + ga.stability_margin:
            gate[b] = max(ga.min_value * g0, gate[b] * ga.decay)
            cooldown[b] = ga.cooldown
        elif cooldown[b] > 0:
            cooldown[b] -= 1
        else:
            gate[b] = min(g0, gate[b] + ga.recovery * g0)


def token_records(rec_or_entries, token_text, log_margins: bool) -> tuple[list, list]:
    """(per_token timings, per-token events) from a run record's compact token log (or a slice of it)."""
    per_token, events = [], []
    entries = rec_or_entries["token_log"] if isinstance(rec_or_entries, dict) else rec_or_entries
    for (v, p, stream, first, toks, margins, r, emitted, rolled_back, completed, per_tok) in entries:
        last = len(toks) - 1
        for i, t in enumerate(toks):
            timing = {"stride_index": v, "prompt_index": p, "stream": stream, "token_index": first + i,
                      "duration_s": per_tok}
            margin = None if margins is None else margins[i]
            if log_margins and margin is not None:
                timing["top2_margin"] = margin
            per_token.append(timing)
            events.append({"prompt_index": p, "stream": stream, "token_id": t, "token_text": token_text(t),
                           "stride_index": v, "agreement": r, "notes_emitted": emitted and i == last,
                           "rollback_performed": rolled_back, "stream_completed": completed,
                           "top2_margin": margin})
    return per_token, events


def _rss() -> int:
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
