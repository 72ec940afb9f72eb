"""Sidecar parameter declarations (shape, dtype, logical axes, init), float32 throughout.

    layers[j] (j-th instrumented layer):
        snc_gate, adapter_gate []       learned λ_l = sigmoid(param), init gate_init
        snc: q [D, Hs, ds], k/v [N, Hs, ds], o [Hs, ds, D] (zero init)
        adapter: down [K, D, r], down_bias [K, r], up [K, r, D] (zero init), up_bias [K, D] (zero)
    entry_embed [K + 1, N]              who wrote a note: producer stream k, or K = snapshot 0
    plan_embed [V_p, dp]                 E_plan, shared by planner, snapshot 0 and coverage (D4)
    planner: slot_query [S, dp], key [D, dp], value [D, dp], out_bias [S, dp]
    plan_to_notes [dp, N]                snapshot 0 = normalised masked mean over active slots
    notes_head, spec_head: w [D, N], b [N]
    coverage: query [dp, C], key [D, C], value [D, C], score [C]
    agree: w1 [D + N + S + N, A], b1 [A], w2 [A], b2 []
    stream_cls: w1 [D, D], b1 [D], w2 [D, K], b2 [K]

Zero-initialised output projections (SNC o, adapter up) make an untrained PDT reproduce the trunk
exactly (ARCHITECTURE.md principle 3).
"""
from __future__ import annotations

import jax.numpy as jnp

from pdt_jax.sidecar.config import SidecarConfig
from pdt_jax.trunk.config import TrunkConfig
from pdt_jax.trunk.params import ParamSpec, normal, zeros


def constant(value: float):
    return lambda key, shape, dtype: jnp.full(shape, value, dtype)


def sidecar_specs(trunk: TrunkConfig, cfg: SidecarConfig) -> dict:
    f32 = jnp.float32
    D, N, K = trunk.hidden_size, cfg.notes_dim, cfg.num_streams
    Hs, ds, r = cfg.snc_heads, cfg.snc_head_dim, cfg.adapter_bottleneck
    S, Vp, dp, C, A = cfg.planner_slots, cfg.plan_vocab_size, cfg.plan_dim, cfg.coverage_dim, cfg.agree_hidden
    fan = lambda n: normal(n ** -0.5)

    def layer():
        return {
            "snc_gate": ParamSpec((), f32, (), constant(cfg.gate_init)),
            "adapter_gate": ParamSpec((), f32, (), constant(cfg.gate_init)),
            "snc": {
                "q": ParamSpec((D, Hs, ds), f32, ("embed", "heads", "head_dim"), fan(D)),
                "k": ParamSpec((N, Hs, ds), f32, ("notes", "heads", "head_dim"), fan(N)),
                "v": ParamSpec((N, Hs, ds), f32, ("notes", "heads", "head_dim"), fan(N)),
                "o": ParamSpec((Hs, ds, D), f32, ("heads", "head_dim", "embed"), zeros),
            },
            "adapter": {
                "down": ParamSpec((K, D, r), f32, ("streams", "embed", "bottleneck"), fan(D)),
                "down_bias": ParamSpec((K, r), f32, ("streams", "bottleneck"), zeros),
                "up": ParamSpec((K, r, D), f32, ("streams", "bottleneck", "embed"), zeros),
                "up_bias": ParamSpec((K, D), f32, ("streams", "embed"), zeros),
            },
        }

    return {
        "layers": [layer() for _ in cfg.layers_for(trunk)],
        "entry_embed": ParamSpec((K + 1, N), f32, (None, "notes"), normal(N ** -0.5)),
        "plan_embed": ParamSpec((Vp, dp), f32, ("plan_vocab", "plan"), normal(1.0)),
        "planner": {
            "slot_query": ParamSpec((S, dp), f32, (None, "plan"), normal(1.0)),
            "key": ParamSpec((D, dp), f32, ("embed", "plan"), fan(D)),
            "value": ParamSpec((D, dp), f32, ("embed", "plan"), fan(D)),
            "out_bias": ParamSpec((S, dp), f32, (None, "plan"), zeros),
        },
        "plan_to_notes": ParamSpec((dp, N), f32, ("plan", "notes"), fan(dp)),
        "notes_head": {"w": ParamSpec((D, N), f32, ("embed", "notes"), fan(D)),
                       "b": ParamSpec((N,), f32, ("notes",), zeros)},
        "spec_head": {"w": ParamSpec((D, N), f32, ("embed", "notes"), fan(D)),
                      "b": ParamSpec((N,), f32, ("notes",), zeros)},
        "coverage": {
            "query": ParamSpec((dp, C), f32, ("plan", None), fan(dp)),
            "key": ParamSpec((D, C), f32, ("embed", None), fan(D)),
            "value": ParamSpec((D, C), f32, ("embed", None), fan(D)),
            "score": ParamSpec((C,), f32, (None,), fan(C)),
            "bias": ParamSpec((), f32, (), zeros),
        },
        "agree": {
            "w1": ParamSpec((D + N + S + N, A), f32, (None, None), fan(D + 2 * N + S)),
            "b1": ParamSpec((A,), f32, (None,), zeros),
            "w2": ParamSpec((A,), f32, (None,), fan(A)),
            "b2": ParamSpec((), f32, (), zeros),
        },
        "stream_cls": {
            "w1": ParamSpec((D, D), f32, ("embed", None), fan(D)),
            "b1": ParamSpec((D,), f32, (None,), zeros),
            "w2": ParamSpec((D, K), f32, (None, "streams"), fan(D)),
            "b2": ParamSpec((K,), f32, ("streams",), zeros),
        },
    }


def acting(side: dict, key, scale: float = 0.5, gate_logit: float = 2.0) -> dict:
    """``side`` with SNC output and adapter up-projections drawn at ``scale`` and both gates at
    sigmoid(``gate_logit``): a sidecar whose notes and adapters change the logits, for tests and
    benches that must see an effect (a fresh sidecar's zero-initialised outputs hide every one).
    Layer j draws keys 2j and 2j + 1 of ``split(key, max(16, 2 · layers))``."""
    import jax

    keys = iter(jax.random.split(key, max(16, 2 * len(side["layers"]))))
    layers = []
    for lp in side["layers"]:
        lp = dict(lp, snc=dict(lp["snc"]), adapter=dict(lp["adapter"]), snc_gate=jnp.float32(gate_logit),
                  adapter_gate=jnp.float32(gate_logit))
        lp["snc"]["o"] = scale * jax.random.normal(next(keys), lp["snc"]["o"].shape)
        lp["adapter"]["up"] = scale * jax.random.normal(next(keys), lp["adapter"]["up"].shape)
        layers.append(lp)
    return dict(side, layers=layers)
