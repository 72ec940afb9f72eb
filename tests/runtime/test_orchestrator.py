"""The host-side decisions, driven by a scripted engine: gate annealing (decay, cooldown,
recovery), retry horizons, commit events and per-token timings."""
import dataclasses

import numpy as np
import pytest

from pdt_jax.runtime.options import GateAnnealing, RuntimeOptions
from pdt_jax.runtime.orchestrator import Orchestrator, token_records

NAMES = ["stream_1", "stream_2", "stream_3"]


class ScriptedEngine:
    """Returns readiness logits from a script: script[call][row]."""

    def __init__(self, B, script, tau=2, eos_at=None):
        self.B, self.script, self.tau, self.calls, self.eos_at = B, script, tau, [], eos_at or {}
        self.fetched = 0

    def start(self, ids, lengths, plan_ids, seed_vectors):
        return {"plan_ids": np.zeros((self.B // 3, 4), np.int32), "planner_logits": np.zeros((self.B // 3, 4, 8)),
                "plan_source": "model", "snapshot0": np.zeros((self.B // 3, 8))}

    def submit(self, window_round, active, remaining, gate):
        n = len(self.calls)
        self.calls.append({"window_round": window_round, "active": active.copy(), "gate": np.array(gate)})
        produced = np.stack([(np.arange(self.tau) < remaining[b]) & active[b] for b in range(self.B)])
        tokens = np.full((self.B, self.tau), 7, np.int32)
        for b, r in self.eos_at.items():
            if sum(c["active"][b] for c in self.calls) - 1 == r:
                tokens[b, 0] = 1  # EOS
        r = np.asarray(self.script[min(n, len(self.script) - 1)], np.float64)
        out = {"tokens": tokens, "produced": produced, "margins": np.zeros((self.B, self.tau)),
               "note": np.zeros((self.B, 8)), "coverage": np.zeros((self.B, 4)), "readiness": r,
               "window_size": np.ones(self.B, np.int32), "attended_delta": np.zeros(self.B),
               "_dispatch_s": 0.0, "_wait_s": 0.0}

        def fetch():
            self.fetched += 1
            return out
        return fetch

    def publish(self, rows, stamp):
        pass

    def mark(self):
        self.marked = len(self.calls)

    def revert(self):  # a round dispatched ahead is forgotten, as the device forgets its effects
        del self.calls[self.marked:]

    def rollback(self, rows, stamp):
        self.calls[-1]["rolled_back"] = rows.copy()


HIGH, LOW = 10.0, -10.0


def orchestrate(script, opts, B=3, eos_at=None, lag=1):
    engine = ScriptedEngine(B, script, eos_at=eos_at)
    opts = dataclasses.replace(opts, lag=lag, readiness_threshold=0.5)
    orch = Orchestrator(engine, NAMES, opts, 2, eos_ids=[1])
    return orch.run(np.zeros((B, 4), np.int32), np.full(B, 4, np.int32)), engine


def test_gate_decays_on_volatile_blocks_waits_a_cooldown_then_recovers():
    opts = RuntimeOptions(max_new_tokens=12, max_retries=0, gate_annealing=GateAnnealing(cooldown=1))
    # round 0 fails (forced commit: volatile), rounds 1.. are stable
    rec, engine = orchestrate([[LOW] * 3] + [[HIGH] * 3] * 10, opts)
    trace = [g["value"] for g in rec["gate_trace"] if g["stream"] == "stream_1"]
    assert trace[:5] == pytest.approx([0.6, 0.6, 0.65, 0.70, 0.75])  # decay, cooldown, +0.05 ...
    # and the device really ran with the annealed gate
    assert engine.calls[1]["gate"][0] == pytest.approx(0.6)


def test_a_retry_reads_the_window_of_the_next_round_under_the_same_lag():
    """The lag holds for retries: a retry of round v reads window round v + 1 (horizon v + 1 − Δ),
    the window training shows the next block — never one the readiness head was not trained on."""
    for lag in (0, 1, 2):
        # Stream 1 fails round 1 (greedy): its retry reads window round 2 — horizon 2 − Δ.
        opts = RuntimeOptions(max_new_tokens=6, max_retries=1)
        _, engine = orchestrate([[HIGH] * 3, [LOW, HIGH, HIGH]] + [[HIGH] * 3] * 3, opts, lag=lag)
        assert [c["window_round"] for c in engine.calls[:2]] == [0, 1]
        retry = engine.calls[2]
        if lag < 2:   # the retry sees a note its attempt (horizon 1 − Δ) could not: it runs
            assert retry["window_round"] == 2 and retry["active"].tolist() == [True, False, False]
        else:         # horizon 0 holds no note either: it could only repeat the attempt, and is not run
            assert retry["window_round"] == 2 and retry["active"].tolist() == [True, True, True]
            assert len(engine.calls) == 3


def test_finished_prompts_stop_reporting_commit_events():
    opts = RuntimeOptions(max_new_tokens=8)
    eos_first = {0: 0, 1: 0, 2: 0}  # prompt 0's three streams end in round 0
    rec, _ = orchestrate([[HIGH] * 6] * 10, opts, B=6, eos_at=eos_first)
    prompt0 = [e for e in rec["stride_commit_events"] if e["prompt_index"] == 0]
    prompt1 = [e for e in rec["stride_commit_events"] if e["prompt_index"] == 1]
    assert len(prompt0) == 1 and len(prompt1) == 4


def test_per_token_durations_add_up_to_the_round_time():
    opts = RuntimeOptions(max_new_tokens=6)
    rec, _ = orchestrate([[HIGH] * 3] * 5, opts)
    per_token, events = token_records(rec, str, log_margins=False)
    assert len(per_token) == len(events) == 18
    total = sum(t["duration_s"] for t in per_token)
    assert total == pytest.approx(sum(rec["stride_durations"]), rel=1e-6)


def test_rounds_are_reported_as_they_are_decided():
    opts = RuntimeOptions(max_new_tokens=6)
    engine = ScriptedEngine(3, [[HIGH] * 3] * 5)
    orch = Orchestrator(engine, NAMES, dataclasses.replace(opts, lag=1, readiness_threshold=0.5), 2, eos_ids=[1])
    seen = []
    rec = orch.run(np.zeros((3, 4), np.int32), np.full(3, 4, np.int32),
                   on_round=lambda entries: seen.append((len(engine.calls), engine.fetched, len(entries))))
    # Round v's three entries arrive once it is decided: the next round is already dispatched
    # (the host writes records while the device works) but its results are not awaited yet.
    assert seen == [(2, 1, 3), (3, 2, 3), (3, 3, 3)]
    assert len(rec["token_log"]) == 9


@pytest.mark.parametrize("script,eos_at", [
    ([[HIGH] * 3] * 8, None),                                     # every round as planned
    ([[HIGH] * 3, [LOW, HIGH, HIGH], [HIGH] * 3, [0.2, 10.0, 10.0]] + [[HIGH] * 3] * 6, None),  # rollback; unstable gate
    ([[HIGH] * 3] * 8, {1: 2}),                                   # stream 2 ends in its third round
])
def test_run_ahead_makes_the_same_calls_as_waiting(script, eos_at):
    """Rounds dispatched ahead and reverted leave no trace: the engine sees the same rounds with
    the same inputs, and the record is the same, as when every round waits for its decisions."""
    opts = RuntimeOptions(max_new_tokens=12, max_retries=1)
    rec_a, ahead = orchestrate(script, opts, eos_at=eos_at)
    rec_w, waited = orchestrate(script, dataclasses.replace(opts, run_ahead=False), eos_at=eos_at)
    strip = lambda calls: [{k: np.asarray(v).tolist() for k, v in c.items()} for c in calls]
    assert strip(ahead.calls) == strip(waited.calls)
    for key in ("rollbacks", "gate_trace", "cadence_events", "stride_commit_events", "blocks", "committed"):
        assert rec_a[key] == rec_w[key], key
    stats = rec_a["run_ahead"]
    assert stats["dispatched"] == stats["accepted"] + stats["reverted"] > 0
    assert rec_w["run_ahead"]["dispatched"] == 0
    if script[1][0] == LOW or eos_at:
        assert stats["reverted"] > 0
    else:
        assert stats["reverted"] == 0


def test_a_retry_is_skipped_only_when_every_failing_stream_of_the_prompt_would_repeat():
    """Greedy, Δ = 0. Round 0: streams 1 and 2 fail, stream 3 passes and publishes. Stream 1's window
    is ablated (its retry could only repeat itself) but stream 2's retry would read stream 3's new
    note: both retry, so that stream 1's note of the failed block is off the bus while stream 2 retries
    (as when every retry is recomputed). Round 1: all three fail; nothing new is visible to anyone
    (their notes of the block are rolled back together): no retry is run, each block is committed
    with reason retry_identical."""
    from pdt_jax.runtime.options import Counterfactuals

    opts = RuntimeOptions(max_new_tokens=4, max_retries=1, counterfactuals=Counterfactuals(ablate=("stream_1",)),
                          gate_annealing=GateAnnealing(enabled=False))
    rec, engine = orchestrate([[LOW, LOW, HIGH], [HIGH] * 3, [LOW] * 3, [HIGH] * 3], opts, lag=0)
    assert [c["active"].tolist() for c in engine.calls] == [[True] * 3, [True, True, False], [True] * 3]
    assert engine.calls[0]["rolled_back"].tolist() == [True, True, False]
    assert [b[1]["forced_reason"] for b in rec["blocks"]] == ["retry_identical"] * 3
    assert [b[0]["retries"] for b in rec["blocks"]] == [1, 1, 0] and "forced_reason" not in rec["blocks"][0][0]
