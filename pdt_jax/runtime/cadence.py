"""When does a stream write a note? Decided on the host at every round's end, from a seeded
generator, so a replay makes the same decisions (seed README: deterministic every M tokens by
default; stochastic and adaptive modes with a forced maximum interval)."""
from __future__ import annotations

import numpy as np

from pdt_jax.runtime.options import Cadence


def every_by_stream(cfg: Cadence, stream_names, default_every: int) -> dict[str, int]:
    """M per stream: its own ``--cadence-M``, else ``all=M``, else τ."""
    every = dict(cfg.every)
    base = every.get("all", default_every)
    return {s: int(every.get(s, base)) for s in stream_names}


class CadencePolicy:
    def __init__(self, cfg: Cadence, stream_names, default_every: int, seed: int):
        self.every = every_by_stream(cfg, stream_names, default_every)  # names checked by RuntimeOptions.resolve
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)

    @property
    def predictable(self) -> bool:
        """Deterministic cadence: a decision depends on the token count only (``predict``)."""
        return self.cfg.mode == "deterministic"

    def predict(self, stream: str, tokens_since: int) -> bool:
        """What ``decide`` will answer in deterministic mode, without recording anything."""
        return tokens_since >= self.every[stream]

    def decide(self, stream: str, tokens_since: int, produced: int, agreement: float) -> dict:
        """Returns the decision record (also the manifest's cadence event)."""
        M = self.every[stream]
        if self.predictable:
            emit = self.predict(stream, tokens_since)
            return {"mode": "deterministic", "emitted": bool(emit), "tokens_since": tokens_since, "M": M,
                    "forced": False, "reason": "every_M" if emit else "waiting"}
        forced = self.cfg.max_interval > 0 and tokens_since >= self.cfg.max_interval
        base = min(1.0, max(self.cfg.min_probability, 1.0 / M))
        multiplier = 1.0
        if self.cfg.mode == "adaptive":
            lo, hi = self.cfg.agreement_low, self.cfg.agreement_high
            # Low agreement: write sooner (share what you have); high agreement: write less often.
            frac = min(1.0, max(0.0, (agreement - lo) / max(hi - lo, 1e-9)))
            multiplier = self.cfg.multiplier_max + frac * (self.cfg.multiplier_min - self.cfg.multiplier_max)
        p_token = min(1.0, base * multiplier)
        p_round = 1.0 - (1.0 - p_token) ** max(produced, 0)   # a note within this round's tokens
        sample = float(self.rng.random())
        emit = forced or (produced > 0 and sample < p_round)
        return {"mode": self.cfg.mode, "emitted": bool(emit), "tokens_since": tokens_since, "M": M,
                "forced": bool(forced), "base_probability": base, "multiplier": multiplier,
                "final_probability": p_round, "sample": sample,
                "reason": "max_interval" if forced else ("sampled" if emit else "not_sampled")}
