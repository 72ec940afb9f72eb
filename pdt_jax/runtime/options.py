"""Everything the inference runtime can be told, as one frozen dataclass, and how it is filled from
the inference config (``configs/infer.py``) and checked against the model — once, before anything
runs: after ``resolve`` the lag Δ and threshold γ are numbers and every stream name is known."""
from __future__ import annotations

import dataclasses
from typing import Any

from pdt_jax.trunk.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Counterfactuals:
    """Interventions on a consumer's notes window before SNC reads it (seed README flags)."""
    ablate: tuple[str, ...] = ()               # zero the window ("all" = every stream)
    ablate_keep_seed: bool = False             # ... except snapshot 0: only published notes are hidden
    swap: tuple[tuple[str, str], ...] = ()     # swap producers a and b in every window
    shuffle: tuple[str, ...] = ()              # permute the window's note vectors
    freeze: tuple[str, ...] = ()               # keep reading the first window ever seen
    stale: tuple[tuple[str, int], ...] = ()    # drop the newest d published entries
    tag: str | None = None                     # a label only, recorded in the manifest

    def active(self) -> bool:
        return bool(self.ablate or self.swap or self.shuffle or self.freeze or self.stale)

    def touches(self, kind: str, stream: str) -> bool:
        """Whether the ``ablate`` / ``shuffle`` / ``freeze`` intervention applies to ``stream``."""
        names = getattr(self, kind)
        return "all" in names or stream in names


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
    lag: int | None = None                     # Δ; None = the model config's (until ``resolve``)
    gate_g: float = 1.0
    alpha: float = 1.0                         # 1 = attended logits only
    readiness_threshold: float | None = None   # γ; None = the model config's (until ``resolve``)
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
        if self.readiness_threshold is not None and not 0.0 <= self.readiness_threshold <= 1.0:
            raise ValueError(f"readiness_threshold: expected in [0, 1], found {self.readiness_threshold}")
        if self.top_k < 0:
            raise ValueError(f"top_k: expected >= 0 (0 = off), found {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: expected in (0, 1], found {self.top_p}")
        if self.temperature < 0:
            raise ValueError(f"temperature: expected >= 0 (0 = greedy), found {self.temperature}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries: expected >= 0, found {self.max_retries}")

    @property
    def greedy(self) -> bool:
        return not self.temperature > 0

    def resolve(self, sidecar) -> "RuntimeOptions":
        """Fills Δ and γ from the model's sidecar config where unset and checks every stream name
        (counterfactuals, cadence) against the model's streams. Idempotent."""
        names = list(sidecar.stream_names)
        cf = self.counterfactuals

        def check(values, flag, allow_all=True):
            bad = sorted(set(values) - set(names) - ({"all"} if allow_all else set()))
            if bad:
                raise ValueError(f"{flag}: unknown stream(s) {bad}; valid streams: {names}"
                                 + (" or 'all'" if allow_all else ""))

        check([s for pair in cf.swap for s in pair], "--cf-swap", allow_all=False)
        check([s for s, _ in cf.stale], "--cf-stale")
        for flag, values in (("--cf-shuffle", cf.shuffle), ("--cf-freeze", cf.freeze), ("--cf-ablate", cf.ablate),
                             ("--cadence-M", [s for s, _ in self.cadence.every])):
            check(values, flag)
        if cf.ablate_keep_seed and not cf.ablate:
            raise ValueError("--cf-ablate-keep-seed: says which part of an ablated window stays; give --cf-ablate "
                             "STREAM|all too")
        for s, d in cf.stale:
            if d < 0:
                raise ValueError(f"--cf-stale {s}:{d}: expected a number of notes >= 0")
        for s, m in self.cadence.every:
            if m < 1:
                raise ValueError(f"--cadence-M {s}={m}: expected a positive number of tokens")
        return dataclasses.replace(
            self, lag=sidecar.lag if self.lag is None else self.lag,
            readiness_threshold=sidecar.readiness_threshold if self.readiness_threshold is None
            else self.readiness_threshold)

    def to_mapping(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, o: dict) -> "RuntimeOptions":
        """The inverse of ``to_mapping`` (JSON lists back to tuples), as a replay artifact stores it."""
        o = dict(o)
        tup = lambda xs: tuple(tuple(x) if isinstance(x, list) else x for x in xs)
        o["cadence"] = Cadence(**{k: tup(v) if k == "every" else v for k, v in o["cadence"].items()})
        o["gate_annealing"] = GateAnnealing(**o["gate_annealing"])
        o["counterfactuals"] = Counterfactuals(**{k: tup(v) if isinstance(v, list) else v
                                                  for k, v in o["counterfactuals"].items()})
        return cls(**o)


def _pairs(values, sep, flag, convert=str):
    out = []
    for v in values:
        left, found, right = str(v).partition(sep)
        if not found or not left or not right:
            raise ValueError(f"{flag} {v!r}: expected NAME{sep}VALUE")
        try:
            out.append((left, convert(right)))
        except ValueError:
            raise ValueError(f"{flag} {v!r}: {right!r} is not a valid value") from None
    return tuple(out)


def from_config(c: Any) -> RuntimeOptions:
    """``configs/infer.py``'s ConfigDict → RuntimeOptions (values checked; names checked by ``resolve``)."""
    try:
        cf, cad, ga = c.counterfactuals, c.cadence, c.gate_annealing
        return RuntimeOptions(
            max_new_tokens=int(c.max_new_tokens), lag=c.read_lag_delta, gate_g=float(c.gate_g), alpha=float(c.alpha),
            readiness_threshold=c.readiness_threshold, max_retries=int(c.max_retries),
            temperature=float(c.temperature), top_p=float(c.top_p), top_k=int(c.top_k), seed=int(c.seed),
            cadence=Cadence(mode=cad.mode, every=_pairs(cad.every, "=", "--cadence-M", int),
                            max_interval=int(cad.max_interval)),
            gate_annealing=GateAnnealing(enabled=bool(ga.enabled), decay=float(ga.decay),
                                         min_value=float(ga.min_value), recovery=float(ga.recovery),
                                         stability_margin=float(ga.stability_margin), cooldown=int(ga.cooldown)),
            counterfactuals=Counterfactuals(ablate=tuple(cf.ablate), ablate_keep_seed=bool(cf.get("ablate_keep_seed", False)),
                                            swap=_pairs(cf.swap, ":", "--cf-swap"),
                                            shuffle=tuple(cf.shuffle), freeze=tuple(cf.freeze),
                                            stale=_pairs(cf.stale, ":", "--cf-stale", int), tag=cf.tag or None),
            log_margins=bool(c.log_margins), sync_profile=bool(c.sync_profile), memory_report=bool(c.memory_report),
            run_ahead=bool(c.run_ahead))
    except AttributeError as e:
        raise ConfigError(f"inference config: missing field ({e})") from e
