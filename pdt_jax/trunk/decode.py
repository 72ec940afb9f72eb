"""The one decode step: choose a token from the previous logits, append it to every active row,
return the new hidden state and logits. It is what ``Trunk.generate`` loops over (no sidecar), what
a PDT round scans (with the sidecar's hooks), and what teacher-forced training is checked against
(``model.prefill`` over the whole sequence is the teacher-forced form of the same layers; a test
asserts the two agree).

    token, hidden, logits, cache = step(params, cache, logits, go, key, sampling, cfg=cfg)

``Sampling`` splits the sampling settings into what shapes the program (greedy or not, top-k: static)
and what does not (temperature, top-p: traced, so changing them never recompiles).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from pdt_jax import sampling as sampling_lib
from pdt_jax.trunk import model
from pdt_jax.trunk.cache import KVCache
from pdt_jax.trunk.config import TrunkConfig


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Static sampling choices. Greedy decoding has no sampling branch at all in the program."""
    greedy: bool = True
    top_k: int = 0


def choose(logits_BxV: jax.Array, key: jax.Array | None, sampling: Sampling, temperature=1.0,
           top_p=1.0) -> jax.Array:
    """int32 [B]: argmax when greedy, else a draw at ``temperature`` with top-k / top-p."""
    if sampling.greedy:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    return sampling_lib.sample(logits_BxV, key, temperature, top_p, sampling.top_k)


def forward(params: dict, token_B: jax.Array, cache: KVCache, go_B: jax.Array, *, cfg: TrunkConfig,
            hooks: Any = None, ctx: Any = None, moe_impl: str = "auto"):
    """Appends one token to every row with ``go`` (the others keep their cache and length).
    Returns (hidden [B, D], float32 logits [B, V], cache)."""
    hidden, cache = model.extend(params, token_B[:, None], cache, cfg=cfg, active_B=go_B, hooks=hooks, ctx=ctx,
                                 moe_impl=moe_impl)
    return hidden[:, 0], model.unembed(params, hidden)[:, 0], cache


def step(params: dict, cache: KVCache, logits_BxV: jax.Array, go_B: jax.Array, key: jax.Array | None,
         sampling: Sampling, *, cfg: TrunkConfig, temperature=1.0, top_p=1.0, hooks: Any = None, ctx: Any = None,
         moe_impl: str = "auto", forced_B: jax.Array | None = None):
    """One generation step for every row: rows without ``go`` write the pad token and stay as they
    are; ``forced`` [B] (teacher forcing, training's exact form) replaces the choice.
    Returns (token [B], hidden [B, D], logits [B, V], cache)."""
    chosen = choose(logits_BxV, key, sampling, temperature, top_p) if forced_B is None else forced_B
    token = jnp.where(go_B, chosen, cfg.pad_token_id)
    hidden, logits, cache = forward(params, token, cache, go_B, cfg=cfg, hooks=hooks, ctx=ctx, moe_impl=moe_impl)
    return token, hidden, logits, cache
