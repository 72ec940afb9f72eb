"""The host side of a PDT run: rounds, commit / selective rollback, cadence, gate annealing, EOS,
telemetry. It talks to an engine (``DeviceEngine``, or ``ReplayEngine`` which serves recorded
tensors) through four calls (start; submit, which dispatches a round and returns the function that
fetches its results; publish; rollback), and every decision it makes depends only on what those
calls return, the options and a seeded generator — which is what makes CPU replay exact.

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
"""
from __future__ import annotations

import functools
import time

import numpy as np

from pdt_jax.runtime.cadence import CadencePolicy
from pdt_jax.runtime.options import RuntimeOptions


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


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
        v = 0
        # Round v + 1 is dispatched as soon as round v's decisions are made, before round v's
        # records are written, so that host bookkeeping overlaps the device's next round.
        nxt = self._submit(v, finished, generated, gate)
        while nxt is not None:
            fetch, active, remaining, t0 = nxt
            out = fetch()
            attempt = {b: out for b in np.nonzero(active)[0]}
            retries = np.zeros(B, np.int64)
            emit = self._cadence(out, active, since_note, v, rec["cadence_events"])
            self._publish(out, active & emit, v)
            pending = active & (_sigmoid(out["readiness"]) < self.gamma)
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
                self._publish(out_r, can_retry & emit, v)
                pending = can_retry & (_sigmoid(out_r["readiness"]) < self.gamma)
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
            elapsed = time.perf_counter() - t0
            if opts.memory_report:  # measured before the next round changes the state
                rec["memory"].append({"stride_index": v, "rss_bytes": _rss(), **self.engine.memory_bytes()})
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
                   generated=generated, gate=gate, rounds=v, bootstrap_s=bootstrap_s,
                   total_s=time.perf_counter() - t_start)
        return rec

    def _submit(self, v, finished, generated, gate):
        """Dispatches round v for every row still decoding; None when none is left."""
        active = ~finished & (generated < self.opts.max_new_tokens)
        if not active.any():
            return None
        remaining = np.minimum(self.tau, self.opts.max_new_tokens - generated).astype(np.int32)
        t0 = time.perf_counter()
        return self.engine.submit(v, active, remaining, gate.copy()), active, remaining, t0

    def _cadence(self, out, active, since_note, v, events) -> np.ndarray:
        emit = np.zeros(len(active), bool)
        for b in np.nonzero(active)[0]:
            produced = int(out["produced"][b].sum())
            d = self.cadence.decide(self.names[b % self.K], int(since_note[b]) + produced, produced,
                                    float(_sigmoid(out["readiness"][b])))
            emit[b] = d["emitted"]
            events.append(dict(d, stream=self.names[b % self.K], prompt_index=int(b // self.K), stride_index=v))
        return emit

    def _publish(self, out, rows, v):
        if rows.any():
            self.engine.publish(rows, out["note"], v + 1)

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
