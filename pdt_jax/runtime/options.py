"""Everything the inference runtime can be told, as one frozen dataclass (the CLI fills it)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Counterfactuals:
    """Interventions on a consumer's notes window before SNC reads it (seed README flags)."""
    ablate: tuple[str, ...] = ()               # zero the window ("all" = every stream)
    swap: tuple[tuple[str, str], ...] = ()     # swap producers a and b in every window
    shuffle: tuple[str, ...] = ()              # permute the window's note vectors
    freeze: tuple[str, ...] = ()               # keep reading the first window ever seen
    stale: tuple[tuple[str, int], ...] = ()    # drop the newest d published entries
    tag: str | None = None                     # a label only, recorded in the manifest

    def active(self) -> bool:
        return bool(self.ablate or self.swap or self.shuffle or self.freeze or self.stale)


@dataclasses.dataclass(frozen=True)
class GateAnnealing:
    enabled: bool = True
    decay: float = 0.6
    min_value: float = 0.1
    recovery: float = 0.05
    stability_margin: float = 0.05
    cooldown: int = 1


@dataclasses.dataclass(frozen=True)
class Cadence:
    mode: str = "deterministic"                # deterministic | stochastic | adaptive
    every: tuple[tuple[str, int], ...] = ()    # per-stream M (tokens between notes); default τ
    max_interval: int = 0                      # stochastic/adaptive: force a note after this many tokens
    min_probability: float = 1e-4
    agreement_low: float = 0.25
    agreement_high: float = 0.6
    multiplier_min: float = 0.5
    multiplier_max: float = 2.0

    def __post_init__(self):
        if self.mode not in ("deterministic", "stochastic", "adaptive"):
            raise ValueError(f"cadence mode: expected deterministic|stochastic|adaptive, found {self.mode!r}")


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    max_new_tokens: int = 512
    lag: int | None = None                     # Δ; None = the model config's
    gate_g: float = 1.0
    alpha: float = 1.0                         # 1 = attended logits only
    readiness_threshold: float | None = None   # γ; None = the model config's
    max_retries: int = 2                       # per round, then a recorded forced commit
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    cadence: Cadence = Cadence()
    gate_annealing: GateAnnealing = GateAnnealing()
    counterfactuals: Counterfactuals = Counterfactuals()
    log_margins: bool = False
    sync_profile: bool = False
    memory_report: bool = False
    run_ahead: bool = True                     # dispatch round v + 1 before round v is decided (orchestrator.py)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected >= 1, found {self.max_new_tokens}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha: expected in [0, 1], found {self.alpha}")
        if self.gate_g < 0:
            raise ValueError(f"gate_g: expected >= 0, found {self.gate_g}")
        if self.lag is not None and self.lag < 0:
            raise ValueError(f"read lag delta: expected >= 0, found {self.lag}")
        if self.top_k < 0:
            raise ValueError(f"top_k: expected >= 0 (0 = off), found {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: expected in (0, 1], found {self.top_p}")
        if self.temperature < 0:
            raise ValueError(f"temperature: expected >= 0 (0 = greedy), found {self.temperature}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries: expected >= 0, found {self.max_retries}")
