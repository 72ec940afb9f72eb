"""Sidecar configuration: the trainable PDT modules around the frozen trunk, and the protocol
constants they are trained for (paper notation in brackets; ARCHITECTURE.md D8)."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from pdt_jax.trunk.config import ConfigError, TrunkConfig, dataclass_from_mapping


@dataclasses.dataclass(frozen=True)
class SidecarConfig:
    stream_names: tuple[str, ...] = ("stream_1", "stream_2", "stream_3")  # K streams
    notes_dim: int = 2048                  # N: width of a note on the bus
    instrumented_layers: tuple[int, ...] = ()  # empty: the top `top_k_layers` trunk layers
    top_k_layers: int = 8
    adapter_bottleneck: int = 512          # per-stream adapter width
    snc_heads: int = 32
    snc_head_dim: int = 64
    gate_init: float = -4.0                # λ_l = sigmoid(gate param); sigmoid(-4) ≈ 0.018
    planner_slots: int = 16                # S
    plan_vocab_size: int = 65536           # V_p (id 0 = null slot)
    plan_dim: int = 1024                   # width of the plan embedding E_plan
    plan_hash_salt: str = "pdt-plan-v1"         # must equal the dataset's (pdt_jax.records.PlanHashing)
    coverage_heads: int = 8
    coverage_dim: int = 512
    agree_hidden: int = 256
    block_size: int = 4                    # τ (README: stride B)
    lag: int = 1                           # Δ, in rounds
    commit_horizon: int = 32               # H (README: commit L)
    bus_capacity: int = 4                  # live notes per producer on the bus
    readiness_threshold: float = 0.5       # γ: a block commits when sigmoid(readiness) ≥ γ

    def __post_init__(self):
        object.__setattr__(self, "stream_names", tuple(self.stream_names))
        object.__setattr__(self, "instrumented_layers", tuple(int(i) for i in self.instrumented_layers))
        positive = ("notes_dim", "top_k_layers", "adapter_bottleneck", "snc_heads", "snc_head_dim",
                    "planner_slots", "plan_vocab_size", "plan_dim", "coverage_heads", "coverage_dim",
                    "agree_hidden", "block_size", "commit_horizon", "bus_capacity")
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"sidecar config field '{name}': expected a positive integer, found {v!r}")
        if len(self.stream_names) < 1 or len(set(self.stream_names)) != len(self.stream_names):
            raise ConfigError(f"sidecar config field 'stream_names': expected distinct names, found {self.stream_names}")
        if self.lag < 0:
            raise ConfigError(f"sidecar config field 'lag': expected >= 0, found {self.lag}")
        if self.coverage_dim % self.coverage_heads:
            raise ConfigError(f"sidecar config field 'coverage_dim': expected a multiple of coverage_heads="
                              f"{self.coverage_heads}, found {self.coverage_dim}")
        if not 0.0 <= self.readiness_threshold <= 1.0:
            raise ConfigError(f"sidecar config field 'readiness_threshold': expected in [0, 1], found {self.readiness_threshold}")

    @property
    def num_streams(self) -> int:
        return len(self.stream_names)

    def layers_for(self, trunk: TrunkConfig) -> tuple[int, ...]:
        layers = self.instrumented_layers or tuple(
            range(max(0, trunk.num_layers - self.top_k_layers), trunk.num_layers))
        bad = [l for l in layers if not 0 <= l < trunk.num_layers]
        if bad:
            raise ConfigError(f"sidecar config field 'instrumented_layers': layers {bad} outside the trunk's "
                              f"0..{trunk.num_layers - 1}")
        return tuple(sorted(set(layers)))

    def stream_index(self, name: str) -> int:
        try:
            return self.stream_names.index(name)
        except ValueError:
            raise ConfigError(f"unknown stream {name!r}; valid streams: {list(self.stream_names)}") from None

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> "SidecarConfig":
        return dataclass_from_mapping(cls, cfg, "sidecar")

    def to_mapping(self) -> dict:
        d = dataclasses.asdict(self)
        d["stream_names"] = list(self.stream_names)
        d["instrumented_layers"] = list(self.instrumented_layers)
        return d

    def hashing_metadata(self) -> dict:
        """Travels with every manifest and checkpoint (D5): tools refuse to mix mismatched hashing."""
        return {"plan_vocab_size": self.plan_vocab_size, "plan_hash_buckets": self.plan_vocab_size,
                "plan_hash_salt": self.plan_hash_salt}
