"""Trunk parameters, declared once: shape, dtype, logical axes and initializer for every tensor.

The same declaration builds random parameters (tests, untrained runs), abstract shapes (AOT
compilation, checkpoint restore) and shardings (``pdt_jax.sharding``). The pytree is a plain nested
dict/list of arrays:

    embed [V, D]; final_norm [D]; unembed [D, V]
    layers[i]: attn_norm [D], q [D, Hq, hd], q_bias [Hq, hd], k/v [D, Hkv, hd], k_bias/v_bias [Hkv, hd],
               o [Hq, hd, D], o_bias [D], sinks [Hq]; mlp_norm [D], router [D, E], router_bias [E],
               gate_up [E, D, 2I] (gate/up interleaved: even columns gate, odd columns up, as in HF),
               gate_up_bias [E, 2I], down [E, I, D], down_bias [E, D]

Norm scales and sinks are float32 whatever the model dtype (GPT-OSS keeps norms in fp32).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from pdt_jax.trunk.config import TrunkConfig

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    dtype: Any
    axes: tuple[str | None, ...]  # one logical axis name per dimension
    init: Initializer

    def __post_init__(self):
        assert len(self.shape) == len(self.axes), (self.shape, self.axes)


def normal(std: float) -> Initializer:
    return lambda key, shape, dtype: (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def ones(key, shape, dtype):
    return jnp.ones(shape, dtype)


def zeros(key, shape, dtype):
    return jnp.zeros(shape, dtype)


def dtype_of(cfg: TrunkConfig):
    return jnp.dtype(cfg.dtype)


def trunk_specs(cfg: TrunkConfig, init_std: float = 0.02) -> dict:
    dt = dtype_of(cfg)
    D, V, Hq, Hkv, hd = cfg.hidden_size, cfg.vocab_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    E, I = cfg.num_experts, cfg.intermediate_size
    w = normal(init_std)

    def layer() -> dict:
        return {
            "attn_norm": ParamSpec((D,), jnp.float32, ("embed",), ones),
            "q": ParamSpec((D, Hq, hd), dt, ("embed", "heads", "head_dim"), w),
            "q_bias": ParamSpec((Hq, hd), dt, ("heads", "head_dim"), zeros),
            "k": ParamSpec((D, Hkv, hd), dt, ("embed", "kv_heads", "head_dim"), w),
            "k_bias": ParamSpec((Hkv, hd), dt, ("kv_heads", "head_dim"), zeros),
            "v": ParamSpec((D, Hkv, hd), dt, ("embed", "kv_heads", "head_dim"), w),
            "v_bias": ParamSpec((Hkv, hd), dt, ("kv_heads", "head_dim"), zeros),
            "o": ParamSpec((Hq, hd, D), dt, ("heads", "head_dim", "embed"), w),
            "o_bias": ParamSpec((D,), dt, ("embed",), zeros),
            "sinks": ParamSpec((Hq,), jnp.float32, ("heads",), zeros),
            "mlp_norm": ParamSpec((D,), jnp.float32, ("embed",), ones),
            "router": ParamSpec((D, E), dt, ("embed", None), w),
            "router_bias": ParamSpec((E,), dt, (None,), zeros),
            "gate_up": ParamSpec((E, D, 2 * I), dt, ("experts", "embed", "mlp"), w),
            "gate_up_bias": ParamSpec((E, 2 * I), dt, ("experts", "mlp"), zeros),
            "down": ParamSpec((E, I, D), dt, ("experts", "mlp", "embed"), w),
            "down_bias": ParamSpec((E, D), dt, ("experts", "embed"), zeros),
        }

    return {
        "embed": ParamSpec((V, D), dt, ("vocab", "embed"), w),
        "layers": [layer() for _ in range(cfg.num_layers)],
        "final_norm": ParamSpec((D,), jnp.float32, ("embed",), ones),
        "unembed": ParamSpec((D, V), dt, ("embed", "vocab"), w),
    }


def is_spec(x) -> bool:
    return isinstance(x, ParamSpec)


def init_from_specs(specs, key: jax.Array):
    leaves, treedef = jax.tree.flatten(specs, is_leaf=is_spec)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [s.init(k, s.shape, s.dtype) for s, k in zip(leaves, keys)])


def abstract_from_specs(specs):
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), specs, is_leaf=is_spec)


def axes_from_specs(specs):
    return jax.tree.map(lambda s: s.axes, specs, is_leaf=is_spec)


def init_trunk(cfg: TrunkConfig, key: jax.Array, init_std: float = 0.02) -> dict:
    return init_from_specs(trunk_specs(cfg, init_std), key)


def path_str(path) -> str:
    """'layers/3/q' for a jax key path: the name used in errors, freeze regexes and checkpoints."""
    parts = []
    for p in path:
        parts.append(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))))
    return "/".join(parts)
