"""The host side of a PDT run: rounds, commit / selective rollback, cadence, gate annealing, EOS,
telemetry. It talks to an engine (``DeviceEngine``, or ``ReplayEngine`` which serves recorded
tensors) through a few calls (start; submit, which dispatches a round and returns the function that
fetches its results; publish; rollback; mark and revert, for run-ahead), and every decision it
makes depends only on what those calls return, the options and a seeded generator — which is what
makes CPU replay exact.

Per round v (ARCHITECTURE.md data flow "Infer"):
  1. ``round``: every active row decodes up to τ tokens reading its window at round v, and returns
     its provisional note, coverage and readiness r.
  2. Cadence decides which streams write their note; they are published with stamp v + 1.
  3. Streams with sigmoid(r) < γ are rolled back: their tokens are discarded, their cache length,
     logits and accumulators return to the block start and their note leaves the bus. They retry
     the block reading the window at horizon v + 1 + Δ, which now holds what their siblings published
     at the end of the failed block (the paper's "fresher shared context"). After ``max_retries`` the
     block is force-committed and recorded as such.
  4. Everything left is committed; a stream that wrote EOS (or reached max_new_tokens) stops, the
     others go on. Gate annealing lowers g for streams whose block was volatile and lets it recover.
  5. Round v + 1 is dispatched now, and round v's records (token log, blocks, gate trace, commit
     events, the ``on_round`` callback) are written while the device decodes it.

Run-ahead (``opts.run_ahead``): so that the device never waits for the host's decisions, round
v + 1 is dispatched *before* round v's results are fetched, on the assumption that round v goes as
planned — every active row writes its tokens, none ends, none is rolled back, the gate follows its
stable course and the (deterministic) cadence publishes the notes it predicts. When the decisions
differ, the engine reverts to the state it marked before that dispatch, and the run continues
exactly as without run-ahead (the same programs on the same inputs: the output is identical, and a
test compares both). It is not attempted after a round with rollbacks (a likely miss), nor with
stochastic or adaptive cadence (their decisions cannot be predicted). The run record counts the
rounds dispatched ahead, accepted and reverted.
"""
from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np

from pdt_jax.runtime.cadence import CadencePolicy
from pdt_jax.runtime.options import RuntimeOptions


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


@dataclasses.dataclass
class _Ahead:
    """A round dispatched before the previous round was decided, and what it assumed."""
    fetch: object
    active: np.ndarray
    remaining: np.ndarray
    gate: np.ndarray
    emit: np.ndarray   # the previous round's publishes it applied first


class Orchestrator:
    def __init__(self, engine, stream_names, opts: RuntimeOptions, block_size: int, readiness_threshold: float,
                 eos_ids, decode=None, lag: int = 1):
        self.engine, self.opts = engine, opts
        self.lag = lag
        self.names = list(stream_names)
        self.K = len(self.names)
        self.tau = block_size
        self.gamma = readiness_threshold if opts.readiness_threshold is None else opts.readiness_threshold
        self.eos = set(int(e) for e in eos_ids)
        self.decode = decode or (lambda ids: " ".join(map(str, ids)))
        self.token_text = functools.lru_cache(maxsize=65536)(lambda t: self.decode([t]))
        self.cadence = CadencePolicy(opts.cadence, self.names, block_size, opts.seed)

    def run(self, ids, lengths, plan_ids=None, seed_vectors=None, on_round=None) -> dict:
        """ids [P·K, T] prompt rows (stream-minor). Returns the run record (per-row results and
        event lists); ``manifest.build`` turns it into one manifest per prompt. ``on_round(entries)``
        receives each round's committed token-log entries as soon as the round is decided."""
        opts, K = self.opts, self.K
        t_start = time.perf_counter()
        start = self.engine.start(ids, lengths, plan_ids, seed_vectors)
        B = ids.shape[0]
        bootstrap_s = time.perf_counter() - t_start
        committed = [[] for _ in range(B)]
        margins = [[] for _ in range(B)]
        blocks = [[] for _ in range(B)]
        finished = np.zeros(B, bool)
        generated = np.zeros(B, np.int64)
        since_note = np.zeros(B, np.int64)
        gate = np.full(B, opts.gate_g, np.float64)
        cooldown = np.zeros(B, np.int64)
        rec = {"rollbacks": [], "stride_commit_events": [], "cadence_events": [], "gate_trace": [],
               "token_log": [], "stride_durations": [], "sync_overhead": [], "memory": [],
               "coverage": [None] * B, "notes_versions": np.zeros(B, np.int64), "emissions": [[] for _ in range(B)]}
        ahead_stats = {"dispatched": 0, "accepted": 0, "reverted": 0}
        run_ahead = opts.run_ahead and self.cadence.predictable
        calm = True  # the last round rolled nothing back: worth dispatching the next one ahead
        v = 0
        # Round v + 1 is dispatched as soon as round v's decisions are made (or, with run-ahead,
        # before round v is fetched), before round v's records are written, so that host
        # bookkeeping overlaps the device's next round.
        nxt = self._submit(v, finished, generated, gate)
        while nxt is not None:
            fetch, active, remaining, t0 = nxt
            ahead = None
            if run_ahead and calm:
                ahead = self._dispatch_ahead(v, active, remaining, finished, generated, since_note, gate, cooldown)
                ahead_stats["dispatched"] += ahead is not None
            out = fetch()
            t_fetched = time.perf_counter()
            attempt = {b: out for b in np.nonzero(active)[0]}
            retries = np.zeros(B, np.int64)
            emit = self._cadence(out, active, since_note, v, rec["cadence_events"])
            pending = active & (_sigmoid(out["readiness"]) < self.gamma)
            if ahead is not None and (pending.any() or not np.array_equal(emit, ahead.emit)):
                self.engine.revert()
                ahead_stats["reverted"] += 1
                ahead = None
            if ahead is None:  # (else the round dispatched ahead has published exactly these)
                self._publish(active & emit, v)
            forced = np.zeros(B, bool)
            waits = [out["_wait_s"]]
            while pending.any():
                can_retry = pending & (retries < opts.max_retries)
                forced |= pending & ~can_retry
                if not can_retry.any():
                    break
                for b in np.nonzero(can_retry)[0]:
                    prod = attempt[b]["produced"][b]
                    removed = attempt[b]["tokens"][b][prod].tolist()
                    rec["rollbacks"].append({
                        "stream": self.names[b % K], "prompt_index": int(b // K), "stride_index": v,
                        "attempt": int(retries[b]), "tokens_removed": len(removed), "removed_token_ids": removed,
                        "removed_text": self.decode(removed), "remaining_tokens": int(generated[b]),
                        "readiness": float(_sigmoid(attempt[b]["readiness"][b])), "note_removed": bool(emit[b])})
                self.engine.rollback(can_retry, v + 1)
                retries += can_retry
                # The fresher window: read at the horizon where the notes just published (stamp v + 1)
                # are visible whatever Δ is, so the retry sees its siblings' notes of the failed block.
                out_r = self.engine.submit(v + 1 + self.lag, can_retry, remaining, gate)()
                waits.append(out_r["_wait_s"])
                for b in np.nonzero(can_retry)[0]:
                    attempt[b] = out_r
                self._publish(can_retry & emit, v)
                pending = can_retry & (_sigmoid(out_r["readiness"]) < self.gamma)
            calm = not (retries.any() or forced.any())
            # What the next round depends on: tokens, EOS, counters, the annealed gate.
            rows = np.nonzero(active)[0].tolist()
            toks, readiness = {}, {}
            for b in rows:
                o = attempt[b]
                toks[b] = o["tokens"][b][o["produced"][b]].tolist()
                generated[b] += len(toks[b])
                since_note[b] = 0 if emit[b] else since_note[b] + len(toks[b])
                if any(t in self.eos for t in toks[b]):
                    finished[b] = True
                readiness[b] = float(_sigmoid(o["readiness"][b]))
                self._anneal(b, gate, cooldown, readiness[b], volatile=bool(retries[b] or forced[b]))
            if ahead is not None:
                next_active, next_remaining = self._next_inputs(finished, generated)
                if (np.array_equal(next_active, ahead.active) and np.array_equal(next_remaining, ahead.remaining)
                        and np.array_equal(gate, ahead.gate)):
                    ahead_stats["accepted"] += 1
                else:
                    self.engine.revert()
                    ahead_stats["reverted"] += 1
                    ahead = None
                    self._publish(active & emit, v)
            elapsed = time.perf_counter() - t0
            if opts.memory_report:  # the state after round v (a round dispatched ahead may be running)
                rec["memory"].append({"stride_index": v, "rss_bytes": _rss(), **self.engine.memory_bytes()})
            if ahead is not None:  # it becomes the current round now that its inputs are confirmed
                nxt = (ahead.fetch, ahead.active, ahead.remaining, t_fetched)
            else:
                nxt = self._submit(v + 1, finished, generated, gate)
            # The records of round v, while the device runs round v + 1.
            if opts.sync_profile:
                rec["sync_overhead"].append(float(sum(waits)))
            round_tokens = max(1, sum(len(toks[b]) for b in rows))
            names = self.names
            token_log = rec["token_log"]
            log_start = len(token_log)
            for b in rows:
                o = attempt[b]
                tok_margins = o["margins"][b][o["produced"][b]].tolist()
                committed[b] += toks[b]
                margins[b] += tok_margins
                n_toks = len(toks[b])
                rec["notes_versions"][b] += int(emit[b])  # a rolled-back note was removed and re-written
                rec["coverage"][b] = o["coverage"][b]
                blocks[b].append({"stride_id": v, "committed": not forced[b], "forced": bool(forced[b]),
                                  "retries": int(retries[b]), "token_ids": toks[b]})
                stream, prompt_index = names[b % K], b // K
                rec["gate_trace"].append({"stride_index": v, "stream": stream, "prompt_index": prompt_index,
                                          "value": float(gate[b])})
                # Per-token records are expanded from this compact row only when a manifest or the
                # JSONL stream asks (``token_records``): decoding itself never needs them.
                token_log.append((v, prompt_index, stream, int(generated[b]) - n_toks, toks[b], tok_margins,
                                  readiness[b], bool(emit[b]), bool(retries[b]), bool(finished[b]),
                                  elapsed / round_tokens))
            for p in range(B // K):
                prows = [b for b in range(p * K, p * K + K) if active[b]]
                if not prows:  # every stream of this prompt has finished
                    continue
                rec["stride_commit_events"].append({
                    "prompt_index": p, "stride_id": v, "commit_id": f"stride-{v:04d}-commit-{p:04d}",
                    "committed": all(not retries[b] and not forced[b] for b in prows),
                    "min_readiness": min(readiness[b] for b in prows),
                    "readiness_by_stream": {self.names[b % K]: readiness[b] for b in prows},
                    "rolled_back_streams": [self.names[b % K] for b in prows if retries[b]],
                    "forced_commit_streams": [self.names[b % K] for b in prows if forced[b]]})
            rec["stride_durations"].append(elapsed)
            if on_round is not None:
                on_round(token_log[log_start:])
            v += 1
        rec.update(start=start, committed=committed, margins=margins, blocks=blocks, finished=finished,
                   generated=generated, gate=gate, rounds=v, bootstrap_s=bootstrap_s, run_ahead=ahead_stats,
                   total_s=time.perf_counter() - t_start)
        return rec

    def _next_inputs(self, finished, generated):
        """(active, remaining) of the next round: the rows still decoding, and their token budget."""
        active = ~finished & (generated < self.opts.max_new_tokens)
        remaining = np.minimum(self.tau, self.opts.max_new_tokens - generated).astype(np.int32)
        return active, remaining

    def _submit(self, v, finished, generated, gate):
        """Dispatches round v for every row still decoding; None when none is left."""
        active, remaining = self._next_inputs(finished, generated)
        if not active.any():
            return None
        t0 = time.perf_counter()
        return self.engine.submit(v, active, remaining, gate.copy()), active, remaining, t0

    def _dispatch_ahead(self, v, active, remaining, finished, generated, since_note, gate, cooldown):
        """Marks the engine's state and dispatches round v + 1 as it will be if round v goes as
        planned (module docstring); None when that round would have no active row."""
        produced = np.where(active, remaining, 0)
        next_active, next_remaining = self._next_inputs(finished, generated + produced)
        if not next_active.any():
            return None
        emit = np.array([bool(a) and self.cadence.predict(self.names[b % self.K], int(since_note[b] + produced[b]))
                         for b, a in enumerate(active)])
        next_gate = gate.copy()
        cool = cooldown.copy()
        for b in np.nonzero(active)[0]:
            self._anneal(b, next_gate, cool, np.inf, volatile=False)
        self.engine.mark()
        self._publish(emit, v)
        fetch = self.engine.submit(v + 1, next_active, next_remaining, next_gate.copy())
        return _Ahead(fetch, next_active, next_remaining, next_gate, emit)

    def _cadence(self, out, active, since_note, v, events) -> np.ndarray:
        emit = np.zeros(len(active), bool)
        for b in np.nonzero(active)[0]:
            produced = int(out["produced"][b].sum())
            d = self.cadence.decide(self.names[b % self.K], int(since_note[b]) + produced, produced,
                                    float(_sigmoid(out["readiness"][b])))
            emit[b] = d["emitted"]
            events.append(dict(d, stream=self.names[b % self.K], prompt_index=int(b // self.K), stride_index=v))
        return emit

    def _publish(self, rows, v):
        """The selected rows publish the note of their latest round, stamped v + 1."""
        if rows.any():
            self.engine.publish(rows, v + 1)

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
            if log_margins:
                timing["top2_margin"] = margins[i]
            per_token.append(timing)
            events.append({"prompt_index": p, "stream": stream, "token_id": t, "token_text": token_text(t),
                           "stride_index": v, "agreement": r, "notes_emitted": emitted and i == last,
                           "rollback_performed": rolled_back, "stream_completed": completed,
                           "top2_margin": margins[i]})
    return per_token, events


def _rss() -> int:
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
