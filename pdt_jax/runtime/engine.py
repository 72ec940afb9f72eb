"""The engine protocol: the few calls the orchestrator makes, which every engine implements —
``DeviceEngine`` (computes on the mesh), ``RecordingEngine`` (passes calls through to another
engine and writes what came back) and ``ReplayEngine`` (serves a recording, without weights).

The orchestrator's decisions depend only on what these calls return, its options and a seeded
generator; that is what makes a replay exact.
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

# ``submit`` returns this: calling it waits for the round's results, a dict with one numpy array
# per ``fields.ROUND_FIELDS`` entry, plus "_dispatch_s" and "_wait_s" (timings).
Fetch = Callable[[], dict]


class Engine(Protocol):
    def start(self, ids: np.ndarray, lengths: np.ndarray, plan_ids: np.ndarray | None,
              seed_vectors: np.ndarray | None) -> dict:
        """Prefill the P·K prompt rows [B, T]; plan (given ids [P, S] or the planner's argmax); seed
        the bus's snapshot 0 (given vectors [P, K, N] or the plan's projection). Returns
        {"plan_ids", "planner_logits", "plan_source", "snapshot0"}."""

    def submit(self, window_round: int, active: np.ndarray, remaining: np.ndarray, gate: np.ndarray) -> Fetch:
        """Dispatch a round: every ``active`` row [B] decodes up to ``remaining`` [B] tokens reading its
        window at ``window_round`` (with the run's lag), with runtime gate ``gate`` [B]."""

    def publish(self, rows: np.ndarray, stamp: int) -> None:
        """The selected rows [B] publish the note of their latest round with round stamp ``stamp``."""

    def rollback(self, rows: np.ndarray, stamp: int) -> None:
        """The selected rows [B] return to their state at the start of the last round; their notes
        with stamp ≥ ``stamp`` leave the bus."""

    def mark(self) -> None:
        """Remember the state (before a round dispatched ahead of the host's decisions)."""

    def revert(self) -> None:
        """Return to the marked state, undoing every publish and round since."""

    def memory_bytes(self) -> dict:
        """{"estimate_bytes", "device_bytes_in_use"} for ``--memory-report``."""
