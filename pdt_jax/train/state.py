"""Train state and optimiser: what trains is data (a stage's regexes over parameter paths), and only
that carries optimiser state.

Parameters are one pytree ``{"sidecar": ..., "trunk": ...}``; a path reads like
``sidecar/layers/0/snc/o`` or ``trunk/layers/3/attn/q``. A stage's ``trainable`` regexes (full
match) pick the leaves the optimiser updates; the others are frozen — no gradient is computed for
them and AdamW keeps no moments for them. The trainable set is rebuilt at every stage transition
(a new optimiser state for the new set; the parameters carry over).

Optimiser: AdamW with linear warm-up then cosine decay, the full (accumulated) gradient clipped by
its global norm; the schedule counts optimiser steps, never micro-batches.
"""
from __future__ import annotations

import re
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import optax

from pdt_jax.trunk.params import path_str


@flax.struct.dataclass
class TrainState:
    step: jax.Array                 # train steps taken (batches consumed; a skipped update counts)
    params: dict                    # {"sidecar": ..., "trunk": ...}
    opt_state: optax.OptState       # over the trainable leaves only
    rng: jax.Array                  # key data (uint32), split every step
    skipped: jax.Array              # non-finite updates skipped so far
    bad_streak: jax.Array           # consecutive non-finite steps


def paths(tree) -> list[str]:
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def trainable_paths(params, patterns: Sequence[str]) -> tuple[str, ...]:
    """The leaves whose path fully matches one of ``patterns``; a pattern that matches nothing is
    an error (a typo would silently freeze a module)."""
    all_paths = paths(params)
    compiled = []
    for pat in patterns:
        try:
            compiled.append(re.compile(pat))
        except re.error as e:
            raise ValueError(f"stage.trainable: {pat!r} is not a regular expression ({e})") from None
    for pat, rx in zip(patterns, compiled):
        if not any(rx.fullmatch(p) for p in all_paths):
            raise ValueError(f"stage.trainable: {pat!r} matches no parameter (paths look like "
                             f"'sidecar/layers/0/snc/o', 'trunk/layers/0/attn/q')")
    chosen = tuple(p for p in all_paths if any(rx.fullmatch(p) for rx in compiled))
    if not chosen:
        raise ValueError("stage.trainable: the stage trains no parameter")
    return chosen


def select(params, chosen: Sequence[str]) -> dict:
    """{path: leaf} of the chosen leaves (a flat dict: the optimiser's and gradient's pytree)."""
    want = set(chosen)
    return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0] if path_str(p) in want}


def merge(params, trainable: dict):
    """``params`` with the leaves named in ``trainable`` replaced."""
    return jax.tree_util.tree_map_with_path(lambda p, x: trainable.get(path_str(p), x), params)


def schedule(lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float):
    """Linear warm-up from 0 over ``warmup_steps`` optimiser steps, then cosine decay to
    ``lr · min_lr_ratio`` at ``total_steps``."""
    warmup, total = max(int(warmup_steps), 0), max(int(total_steps), 1)
    if warmup == 0:
        return optax.cosine_decay_schedule(lr, total, alpha=min_lr_ratio)
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total, warmup + 1), end_value=lr * min_lr_ratio)


def optimizer(cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """cfg: the config's ``train`` block (lr, warmup_steps, steps, min_lr_ratio, weight_decay, b1, b2,
    clip_norm)."""
    sched = schedule(cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm) if cfg.clip_norm > 0 else optax.identity(),
                     optax.adamw(sched, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))
    return tx, sched


def create(params, chosen: Sequence[str], tx: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(select(params, chosen)),
                      rng=jax.random.key_data(jax.random.key(seed)), skipped=jnp.zeros((), jnp.int32),
                      bad_streak=jnp.zeros((), jnp.int32))
