"""The host side of a PDT run: rounds, commit / selective rollback, cadence, gate annealing, EOS,
telemetry. It talks to an engine (``DeviceEngine``, or ``ReplayEngine`` which serves recorded
tensors) through four calls, and every decision it makes depends only on what those calls return,
the options and a seeded generator — which is what makes CPU replay exact.

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
        opts, K, tau = self.opts, self.K, self.tau
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
        while True:
            active = ~finished & (generated < opts.max_new_tokens)
            if not active.any():
                break
            remaining = np.minimum(tau, opts.max_new_tokens - generated).astype(np.int32)
            t0 = time.perf_counter()
            out = self.engine.round(v, active, remaining, gate)
            attempt = {b: out for b in np.nonzero(active)[0]}
            retries = np.zeros(B, np.int64)
            emit = self._cadence(out, active, since_note, v, rec["cadence_events"])
            self._publish(out, active & emit, v)
            pending = active & (_sigmoid(out["readiness"]) < self.gamma)
            forced = np.zeros(B, bool)
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
                out_r = self.engine.round(v + 1 + self.lag, can_retry, remaining, gate)
                for b in np.nonzero(can_retry)[0]:
                    attempt[b] = out_r
                self._publish(out_r, can_retry & emit, v)
                pending = can_retry & (_sigmoid(out_r["readiness"]) < self.gamma)
            elapsed = time.perf_counter() - t0
            if opts.sync_profile:
                rec["sync_overhead"].append(sum(a["_total_s"] - a["_dispatch_s"] for a in {id(a): a for a in attempt.values()}.values()))
            readiness = {}
            round_tokens = max(1, sum(int(attempt[b]["produced"][b].sum()) for b in np.nonzero(active)[0]))
            names, eos = self.names, self.eos
            token_log = rec["token_log"]
            log_start = len(token_log)
            for b in np.nonzero(active)[0].tolist():
                o = attempt[b]
                prod = o["produced"][b]
                toks = o["tokens"][b][prod].tolist()
                tok_margins = o["margins"][b][prod].tolist()
                committed[b] += toks
                margins[b] += tok_margins
                n_toks = len(toks)
                generated[b] += n_toks
                since_note[b] = 0 if emit[b] else since_note[b] + n_toks
                rec["notes_versions"][b] += int(emit[b])  # a rolled-back note was removed and re-written
                if any(t in eos for t in toks):
                    finished[b] = True
                readiness[b] = r_b = float(_sigmoid(o["readiness"][b]))
                rec["coverage"][b] = o["coverage"][b]
                blocks[b].append({"stride_id": v, "committed": not forced[b], "forced": bool(forced[b]),
                                  "retries": int(retries[b]), "token_ids": toks})
                self._anneal(b, gate, cooldown, r_b, volatile=bool(retries[b] or forced[b]))
                stream, prompt_index = names[b % K], b // K
                rec["gate_trace"].append({"stride_index": v, "stream": stream, "prompt_index": prompt_index,
                                          "value": float(gate[b])})
                # Per-token records are expanded from this compact row only when a manifest or the
                # JSONL stream asks (``token_records``): decoding itself never needs them.
                token_log.append((v, prompt_index, stream, int(generated[b]) - n_toks, toks, tok_margins, r_b,
                                  bool(emit[b]), bool(retries[b]), bool(finished[b]), elapsed / round_tokens))
            for p in range(B // K):
                rows = [b for b in range(p * K, p * K + K) if active[b]]
                if not rows:  # every stream of this prompt has finished
                    continue
                rec["stride_commit_events"].append({
                    "prompt_index": p, "stride_id": v, "commit_id": f"stride-{v:04d}-commit-{p:04d}",
                    "committed": all(not retries[b] and not forced[b] for b in rows),
                    "min_readiness": min(readiness[b] for b in rows) if rows else None,
                    "readiness_by_stream": {self.names[b % K]: readiness[b] for b in rows},
                    "rolled_back_streams": [self.names[b % K] for b in rows if retries[b]],
                    "forced_commit_streams": [self.names[b % K] for b in rows if forced[b]]})
            rec["stride_durations"].append(elapsed)
            if opts.memory_report:
                rec["memory"].append({"stride_index": v, "rss_bytes": _rss(), **self.engine.memory_bytes()})
            if on_round is not None:
                on_round(token_log[log_start:])
            v += 1
        rec.update(start=start, committed=committed, margins=margins, blocks=blocks, finished=finished,
                   generated=generated, gate=gate, rounds=v, bootstrap_s=bootstrap_s,
                   total_s=time.perf_counter() - t_start)
        return rec

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
