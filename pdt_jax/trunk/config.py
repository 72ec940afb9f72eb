"""The trunk's configuration: one frozen, hashable dataclass read by every trunk function.

It is built from an ml_collections file (``configs/model/gpt_oss_20b.py``) or from a Hugging Face
``config.json`` (``TrunkConfig.from_hf``), and written back to that layout (``to_hf``) so that
transformers can load what we export.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

LAYER_TYPES = ("sliding_attention", "full_attention")


class ConfigError(ValueError):
    """A configuration field is missing or has an invalid value."""


def dataclass_from_mapping(cls, cfg: Mapping[str, Any], what: str):
    """Build a frozen config dataclass from a dict/ConfigDict, naming unknown fields."""
    cfg = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg) - names)
    if unknown:
        raise ConfigError(f"unknown {what} config field(s) {unknown}; valid fields: {sorted(names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})


@dataclasses.dataclass(frozen=True)
class TrunkConfig:
    vocab_size: int = 201088
    hidden_size: int = 2880
    intermediate_size: int = 2880  # per-expert width I; gate_up is 2I wide
    num_layers: int = 24
    num_heads: int = 64
    num_kv_heads: int = 8
    head_dim: int = 64
    num_experts: int = 32
    experts_per_token: int = 4
    sliding_window: int = 128
    layer_types: tuple[str, ...] = ()  # empty: sliding on even layers, full on odd (GPT-OSS)
    rms_norm_eps: float = 1e-5
    rope_theta: float = 150000.0
    rope_scaling_factor: float = 32.0  # YaRN; 1.0 disables YaRN
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    rope_original_max_position: int = 4096
    rope_truncate: bool = False
    max_position_embeddings: int = 131072
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702
    attention_bias: bool = True
    eos_token_ids: tuple[int, ...] = (200002, 199999, 200012)
    pad_token_id: int = 199999
    dtype: str = "bfloat16"  # parameter and compute dtype; norms stay float32

    def __post_init__(self):
        if not self.layer_types:
            object.__setattr__(
                self, "layer_types",
                tuple(LAYER_TYPES[i % 2] for i in range(self.num_layers)))
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        object.__setattr__(self, "eos_token_ids", tuple(int(t) for t in self.eos_token_ids))
        self.validate()

    def validate(self) -> None:
        def need(cond, field, expected, found):
            if not cond:
                raise ConfigError(f"trunk config field '{field}': expected {expected}, found {found!r}")

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "num_experts", "experts_per_token", "sliding_window"):
            value = getattr(self, name)
            need(isinstance(value, int) and value > 0, name, "a positive integer", value)
        need(len(self.layer_types) == self.num_layers, "layer_types",
             f"{self.num_layers} entries (one per layer)", len(self.layer_types))
        for i, kind in enumerate(self.layer_types):
            need(kind in LAYER_TYPES, f"layer_types[{i}]", f"one of {LAYER_TYPES}", kind)
        need(self.num_heads % self.num_kv_heads == 0, "num_kv_heads",
             f"a divisor of num_heads={self.num_heads}", self.num_kv_heads)
        need(self.experts_per_token <= self.num_experts, "experts_per_token",
             f"<= num_experts={self.num_experts}", self.experts_per_token)
        need(self.head_dim % 2 == 0, "head_dim", "an even number (half-split RoPE)", self.head_dim)
        need(self.dtype in ("float32", "bfloat16"), "dtype", "'float32' or 'bfloat16'", self.dtype)
        need(0 <= self.pad_token_id < self.vocab_size, "pad_token_id", f"in [0, {self.vocab_size})", self.pad_token_id)
        need(self.rope_scaling_factor >= 1.0, "rope_scaling_factor", ">= 1", self.rope_scaling_factor)

    @property
    def q_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == "sliding_attention"

    def replace(self, **kw) -> "TrunkConfig":
        return dataclasses.replace(self, **kw)

    # ---- interchange -------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> "TrunkConfig":
        """From our own field names (an ml_collections ConfigDict or a dict)."""
        return dataclass_from_mapping(cls, cfg, "trunk")

    def to_mapping(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], dtype: str | None = None) -> "TrunkConfig":
        """From a Hugging Face GPT-OSS ``config.json`` (transformers 4.5x and 5.x spellings)."""
        if hf.get("model_type", "gpt_oss") != "gpt_oss":
            raise ConfigError(f"config.json field 'model_type': expected 'gpt_oss', found {hf.get('model_type')!r}")
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        rope_type = rope.get("rope_type", rope.get("type", "yarn"))
        if rope_type not in ("yarn", "default"):
            raise ConfigError(f"config.json field 'rope_parameters.rope_type': expected 'yarn' or 'default', found {rope_type!r}")
        theta = rope.get("rope_theta", hf.get("rope_theta", 150000.0))
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "num_local_experts")
        missing = [k for k in required if k not in hf]
        if missing:
            raise ConfigError(f"config.json is missing field(s) {missing}")
        torch_dtype = dtype or hf.get("dtype") or hf.get("torch_dtype") or "bfloat16"
        eos = hf.get("eos_token_id", cls.eos_token_ids)
        eos = tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
        yarn = rope_type == "yarn"
        return cls(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"], num_kv_heads=hf["num_key_value_heads"],
            head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
            num_experts=hf["num_local_experts"],
            experts_per_token=hf.get("num_experts_per_tok", hf.get("experts_per_token", 4)),
            sliding_window=hf.get("sliding_window") or 128,
            layer_types=tuple(hf.get("layer_types") or ()),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-5), rope_theta=float(theta),
            rope_scaling_factor=float(rope.get("factor", 1.0)) if yarn else 1.0,
            rope_beta_fast=float(rope.get("beta_fast", 32.0)),
            rope_beta_slow=float(rope.get("beta_slow", 1.0)),
            rope_original_max_position=int(rope.get("original_max_position_embeddings", 4096)),
            rope_truncate=bool(rope.get("truncate", False)),
            max_position_embeddings=hf.get("max_position_embeddings", 131072),
            swiglu_limit=float(hf.get("swiglu_limit", 7.0)),
            swiglu_alpha=float(hf.get("swiglu_alpha", 1.702)),
            attention_bias=bool(hf.get("attention_bias", True)),
            eos_token_ids=tuple(int(e) for e in eos if e is not None),
            pad_token_id=int(hf["pad_token_id"]) if hf.get("pad_token_id") is not None
            else (cls.pad_token_id if hf["vocab_size"] > cls.pad_token_id else 0),
            dtype={"float32": "float32", "bfloat16": "bfloat16", "float16": "bfloat16"}.get(str(torch_dtype), "bfloat16"),
        )

    def to_hf(self) -> dict[str, Any]:
        """A ``config.json`` that transformers' ``GptOssConfig`` reads."""
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling_factor > 1.0:
            rope = {"rope_type": "yarn", "factor": self.rope_scaling_factor,
                    "beta_fast": self.rope_beta_fast, "beta_slow": self.rope_beta_slow,
                    "truncate": self.rope_truncate,
                    "original_max_position_embeddings": self.rope_original_max_position,
                    "rope_theta": self.rope_theta}
        return {
            "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim, "num_local_experts": self.num_experts,
            "num_experts_per_tok": self.experts_per_token, "sliding_window": self.sliding_window,
            "layer_types": list(self.layer_types), "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": rope, "max_position_embeddings": self.max_position_embeddings,
            "swiglu_limit": self.swiglu_limit, "attention_bias": self.attention_bias,
            "tie_word_embeddings": False, "eos_token_id": list(self.eos_token_ids),
            "pad_token_id": self.pad_token_id, "dtype": self.dtype,
        }


def yarn_concentration(cfg: TrunkConfig) -> float:
    """YaRN's attention factor: cos and sin are both scaled by it (0.1·ln f + 1)."""
    if cfg.rope_scaling_factor <= 1.0:
        return 1.0
    return 0.1 * math.log(cfg.rope_scaling_factor) + 1.0
